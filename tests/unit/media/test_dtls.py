"""DTLS-SRTP endpoints driven against each other over an in-memory link."""

from __future__ import annotations

import datetime
import os
import struct
import time

import pytest

from gateway.media.dtls import (
    HANDSHAKE_TIMEOUT,
    SRTP_PROFILES,
    DtlsCertificate,
    DtlsEndpoint,
    DtlsState,
    SrtpKeys,
    SrtpProfile,
)
from gateway.media.srtp import SrtpPair

NOW = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def certs() -> tuple[DtlsCertificate, DtlsCertificate]:
    return DtlsCertificate.generate(NOW), DtlsCertificate.generate(NOW)


def pair(
    certs: tuple[DtlsCertificate, DtlsCertificate], wrong_fingerprint: bool = False
) -> tuple[DtlsEndpoint, DtlsEndpoint]:
    gw, browser = certs
    fp = "00:" * 31 + "00" if wrong_fingerprint else browser.fingerprint_value
    server = DtlsEndpoint(gw, is_server=True, remote_fingerprint=("SHA-256", fp.lower()))
    client = DtlsEndpoint(
        browser, is_server=False, remote_fingerprint=("sha-256", gw.fingerprint_value)
    )
    return server, client


def transfer(a: DtlsEndpoint, b: DtlsEndpoint, now: float) -> int:
    sent = 0
    for datagram in a.datagrams_to_send():
        b.receive_datagram(datagram, now)
        sent += 1
    return sent


def handshake(server: DtlsEndpoint, client: DtlsEndpoint) -> None:
    server.start(0.0)
    client.start(0.0)
    for _ in range(10):
        if not (transfer(client, server, 0.0) + transfer(server, client, 0.0)):
            break


def test_certificate_fingerprint_format(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    cert = certs[0]
    algorithm, value = cert.fingerprint.split(" ")
    assert algorithm == "sha-256"
    assert len(value.split(":")) == 32 and value == value.upper()
    assert cert.cert.not_valid_before_utc < NOW < cert.cert.not_valid_after_utc


def test_handshake_exports_matching_keys(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    server, client = pair(certs)
    handshake(server, client)
    assert server.state is DtlsState.CONNECTED and client.state is DtlsState.CONNECTED
    assert server.keys is not None and client.keys is not None
    assert server.keys.profile == client.keys.profile
    assert server.keys.profile.openssl_name in {p.openssl_name for p in SRTP_PROFILES}
    assert server.keys.tx == client.keys.rx and server.keys.rx == client.keys.tx
    assert server.keys.tx != server.keys.rx
    assert server.get_timer() is None


def test_srtp_round_trip_with_exported_keys(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    server, client = pair(certs)
    handshake(server, client)
    assert server.keys is not None and client.keys is not None
    gw, browser = SrtpPair(server.keys), SrtpPair(client.keys)
    packet = struct.pack("!BBHII", 0x80, 0, 1, 160, 0x1234) + os.urandom(160)
    protected = gw.protect(packet)
    assert protected != packet and len(protected) > len(packet)
    assert browser.unprotect(protected) == packet
    rr = struct.pack("!BBHI", 0x80, 201, 1, 0x1234)
    assert gw.unprotect_rtcp(browser.protect_rtcp(rr)) == rr


@pytest.mark.parametrize("profile", SRTP_PROFILES, ids=lambda p: p.openssl_name.decode())
def test_both_profiles_protect(profile: SrtpProfile) -> None:
    p = profile
    key = os.urandom(p.key_length + p.salt_length)
    a = SrtpPair(SrtpKeys(p, tx=key, rx=key))
    packet = struct.pack("!BBHII", 0x80, 0, 7, 1, 2) + b"x" * 40
    assert a.unprotect(a.protect(packet)) == packet


def test_fingerprint_mismatch_fails(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    server, client = pair(certs, wrong_fingerprint=True)
    handshake(server, client)
    assert server.state is DtlsState.FAILED
    assert server.failure == "fingerprint mismatch"
    assert server.keys is None


def test_garbage_records_are_discarded_and_the_handshake_survives(
    certs: tuple[DtlsCertificate, DtlsCertificate],
) -> None:
    # RFC 6347 §4.1.2.7: invalid records SHOULD be silently discarded.
    server, client = pair(certs)
    server.receive_datagram(b"\x16\xfe\xfd" + b"\xff" * 40, 0.0)
    server.receive_datagram(b"\x17", 0.0)
    assert server.state is DtlsState.CONNECTING
    assert server.datagrams_to_send() == []
    handshake(server, client)
    assert server.connected and client.connected
    assert server.records_in >= 4


def test_close_notify_closes_the_peer(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    server, client = pair(certs)
    handshake(server, client)
    client.close()
    client.close()
    assert client.state is DtlsState.CLOSED
    assert transfer(client, server, 1.0) == 1
    assert server.state is DtlsState.CLOSED


def test_lost_flight_is_retransmitted_on_timer(
    certs: tuple[DtlsCertificate, DtlsCertificate],
) -> None:
    server, client = pair(certs)
    server.start(0.0)
    client.start(0.0)
    assert client.datagrams_to_send()  # ClientHello lost
    deadline = client.get_timer()
    assert deadline is not None and 0.5 <= deadline <= 1.5  # RFC 6347 §4.2.4.1: 1 s initial
    client.handle_timer(deadline / 2)
    assert client.datagrams_to_send() == []  # not due yet
    time.sleep(deadline + 0.05)  # OpenSSL's own retransmission clock must expire as well
    client.handle_timer(deadline + 0.05)
    assert transfer(client, server, deadline) == 1  # ClientHello again
    for _ in range(10):
        if not (transfer(server, client, 2.0) + transfer(client, server, 2.0)):
            break
    assert server.state is DtlsState.CONNECTED and client.state is DtlsState.CONNECTED


def test_unfinished_handshake_times_out(certs: tuple[DtlsCertificate, DtlsCertificate]) -> None:
    _, client = pair(certs)
    client.start(0.0)
    client.datagrams_to_send()
    client.handle_timer(HANDSHAKE_TIMEOUT + 1)
    assert client.state is DtlsState.FAILED and client.failure == "handshake timeout"
    assert client.get_timer() is None
