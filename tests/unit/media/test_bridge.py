"""A whole call through the sans-I/O bridge, with real cores on the browser side.

The "browser" is made of the same real pieces a browser uses on the wire: STUN checks built
with aioice.stun, a DTLS client (:class:`DtlsEndpoint`) with its own certificate, and libsrtp.
Datagrams move through lists; time is an argument.
"""

from __future__ import annotations

import datetime
import math
import struct

import pytest
from aioice import stun

from gateway.media.bridge import RELATCH_SILENCE, Addr, Bridge
from gateway.media.codecs import get_encoder
from gateway.media.codecs.dtmf import unpack_event
from gateway.media.dtls import DtlsCertificate, DtlsEndpoint, DtlsState
from gateway.media.dtmf_receive import DtmfReceiver
from gateway.media.rtcp import (
    ReceiverReport,
    SenderReport,
    SourceDescription,
    ntp_from_unix,
    ntp_short,
)
from gateway.media.rtcp import parse as parse_rtcp
from gateway.media.rtp import parse_header
from gateway.media.srtp import SrtpPair
from gateway.media.transcode import make_transcoder

NOW = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
BROWSER: Addr = ("192.0.2.10", 50000)
SWITCH: Addr = ("198.51.100.20", 30000)
SWITCH_NAT: Addr = ("203.0.113.5", 41234)
GW_UFRAG, GW_PWD = "gwuf", "gateway-password-0123456789"
BR_UFRAG, BR_PWD = "bruf", "browser-password-0123456789"
SSRC_TO_RTP, SSRC_TO_WEBRTC = 0x0A0A0A0A, 0x0B0B0B0B


@pytest.fixture(scope="module")
def gw_cert() -> DtlsCertificate:
    return DtlsCertificate.generate(NOW)


@pytest.fixture(scope="module")
def browser_cert() -> DtlsCertificate:
    return DtlsCertificate.generate(NOW)


def rtp(seq: int, ts: int, ssrc: int, pt: int = 0, payload: bytes = b"\x55" * 160) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, ts, ssrc) + payload


class Call:
    """Bridge plus a browser (STUN/DTLS/SRTP) and captured output per socket."""

    def __init__(
        self,
        gw_cert: DtlsCertificate,
        browser_cert: DtlsCertificate,
        *,
        setup: str = "actpass",
        timeout: float = 10.0,
    ) -> None:
        self.to_browser: list[tuple[bytes, Addr]] = []
        self.to_switch: list[tuple[bytes, Addr]] = []
        self.to_switch_rtcp: list[tuple[bytes, Addr]] = []
        self.bridge = Bridge(
            certificate=gw_cert,
            ice_ufrag=GW_UFRAG,
            ice_pwd=GW_PWD,
            ssrc_to_rtp=SSRC_TO_RTP,
            ssrc_to_webrtc=SSRC_TO_WEBRTC,
            send_webrtc=lambda d, a: self.to_browser.append((bytes(d), a)),
            send_rtp=lambda d, a: self.to_switch.append((bytes(d), a)),
            send_rtcp=lambda d, a: self.to_switch_rtcp.append((bytes(d), a)),
            timeout=timeout,
            now=0.0,
        )
        self.browser_cert = browser_cert
        self.bridge.set_webrtc_remote(
            ice_ufrag=BR_UFRAG,
            ice_pwd=BR_PWD,
            fingerprint=("sha-256", browser_cert.fingerprint_value),
            setup=setup,
            candidates=[("abcd-1234.local", 50000), BROWSER],
            now=0.0,
        )
        self.bridge.set_rtp_remote(address=SWITCH[0], port=SWITCH[1], rtcp_port=None)
        self.dtls = DtlsEndpoint(
            browser_cert,
            is_server=setup == "passive",
            remote_fingerprint=("sha-256", gw_cert.fingerprint_value),
        )
        self.srtp: SrtpPair | None = None

    def check(self, addr: Addr = BROWSER, now: float = 0.0, nominate: bool = True) -> stun.Message:
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        request.attributes["USERNAME"] = f"{GW_UFRAG}:{BR_UFRAG}"
        request.attributes["ICE-CONTROLLING"] = 7
        if nominate:
            request.attributes["USE-CANDIDATE"] = None
        request.add_message_integrity(GW_PWD.encode())
        self.to_browser.clear()
        self.bridge.webrtc_received(bytes(request), addr, now)
        data, dest = self.to_browser.pop(0)
        assert dest == addr
        return stun.parse_message(data)

    def connect(self, now: float = 0.0) -> None:
        assert self.check(now=now).message_class == stun.Class.RESPONSE
        self.dtls.start(now)
        for _ in range(10):
            moved = 0
            for datagram in self.dtls.datagrams_to_send():
                self.bridge.webrtc_received(datagram, BROWSER, now)
                moved += 1
            for datagram, dest in self.to_browser:
                assert dest == BROWSER
                self.dtls.receive_datagram(datagram, now)
                moved += 1
            self.to_browser.clear()
            if not moved:
                break
        assert self.dtls.state is DtlsState.CONNECTED
        assert self.dtls.keys is not None
        self.srtp = SrtpPair(self.dtls.keys)

    def browser_sends(self, packet: bytes, now: float) -> None:
        assert self.srtp is not None
        self.bridge.webrtc_received(self.srtp.protect(packet), BROWSER, now)

    def browser_received(self) -> list[bytes]:
        assert self.srtp is not None
        out = [
            self.srtp.unprotect(d)
            for d, a in self.to_browser
            if a == BROWSER and not 192 <= d[1] <= 223
        ]
        self.to_browser.clear()
        return out


@pytest.fixture
def call(gw_cert: DtlsCertificate, browser_cert: DtlsCertificate) -> Call:
    c = Call(gw_cert, browser_cert)
    c.connect()
    return c


def test_handshake_as_passive_server(call: Call) -> None:
    b = call.bridge
    assert b.dtls_setup == "passive"
    assert b.dtls_state == "connected" and b.handshakes == 1
    assert b.ice.selected == BROWSER
    assert b.remote_candidates == [BROWSER]  # the mDNS name is ignored (PITFALLS 5)
    assert b.srtp_profile == call.srtp.profile_name  # type: ignore[union-attr]


def test_gateway_as_active_client_starts_after_nomination(
    gw_cert: DtlsCertificate, browser_cert: DtlsCertificate
) -> None:
    c = Call(gw_cert, browser_cert, setup="passive")
    assert c.bridge.dtls_setup == "active"
    c.check(nominate=False)
    assert c.bridge.dtls_state == "new"  # no nominated address yet, so no ClientHello
    c.connect()
    assert c.bridge.dtls_state == "connected"


def test_offer_side_announces_actpass_until_answer(gw_cert: DtlsCertificate) -> None:
    b = Bridge(
        certificate=gw_cert,
        ice_ufrag=GW_UFRAG,
        ice_pwd=GW_PWD,
        ssrc_to_rtp=1,
        ssrc_to_webrtc=2,
        send_webrtc=lambda d, a: None,
        send_rtp=lambda d, a: None,
        send_rtcp=lambda d, a: None,
        timeout=5.0,
        now=0.0,
    )
    assert b.dtls_setup == "actpass" and b.dtls_state == "new"
    with pytest.raises(ValueError, match="invalid setup"):
        b.set_webrtc_remote(
            ice_ufrag="x",
            ice_pwd="y",
            fingerprint=("sha-256", "AA"),
            setup="holdconn",
            candidates=[],
            now=0.0,
        )
    with pytest.raises(ValueError, match="unsupported fingerprint"):
        b.set_webrtc_remote(
            ice_ufrag="x",
            ice_pwd="y",
            fingerprint=("md5", "AA"),
            setup="active",
            candidates=[],
            now=0.0,
        )


def test_relay_both_ways_with_ssrc_rewrite(call: Call) -> None:
    # Switch -> browser: first packet latches the real (NATed) source (PITFALLS 4).
    call.bridge.rtp_received(rtp(65535, 2**32 - 160, 0x5151), SWITCH_NAT, 1.0)
    call.bridge.rtp_received(rtp(0, 0, 0x5151), SWITCH_NAT, 1.02)
    got = call.browser_received()
    assert [parse_header(p)[2:] for p in got] == [
        (65535, 2**32 - 160, SSRC_TO_WEBRTC),
        (0, 0, SSRC_TO_WEBRTC),
    ]
    assert got[0][12:] == b"\x55" * 160
    # Browser -> switch goes to the latched source, not the SDP address.
    call.browser_sends(rtp(10, 1600, 0x7777, payload=b"\x11" * 160), 1.03)
    data, dest = call.to_switch[-1]
    assert dest == SWITCH_NAT
    assert parse_header(data)[2:] == (10, 1600, SSRC_TO_RTP)
    assert data[12:] == b"\x11" * 160
    w, r = call.bridge.w, call.bridge.r
    assert (w.rx_packets, w.tx_packets, r.rx_packets, r.tx_packets) == (1, 2, 2, 1)


def test_sends_to_sdp_address_until_latched_then_drops_other_sources(call: Call) -> None:
    call.browser_sends(rtp(1, 160, 9), 0.1)
    assert call.to_switch[-1][1] == SWITCH
    call.bridge.rtp_received(rtp(1, 160, 5), SWITCH_NAT, 0.2)
    intruder = ("203.0.113.99", 5000)
    call.bridge.rtp_received(rtp(2, 320, 6), intruder, 0.3)
    assert call.bridge.r.drop_source == 1
    assert call.bridge.rtp_latched == SWITCH_NAT
    # After RELATCH_SILENCE of silence from the latched source, a new source takes over.
    call.bridge.rtp_received(rtp(3, 480, 6), intruder, 0.2 + RELATCH_SILENCE + 0.01)
    assert call.bridge.rtp_latched == intruder and call.bridge.relatches == 1
    call.browser_sends(rtp(2, 320, 9), 3.0)
    assert call.to_switch[-1][1] == intruder


def test_repointing_clears_the_latch(call: Call) -> None:
    call.bridge.rtp_received(rtp(1, 160, 5), SWITCH_NAT, 0.2)
    call.bridge.set_rtp_remote(address=SWITCH[0], port=SWITCH[1], rtcp_port=None)
    assert call.bridge.rtp_latched == SWITCH_NAT  # same SDP address: keep the latch
    call.bridge.set_rtp_remote(address="198.51.100.21", port=30002, rtcp_port=30010)
    assert call.bridge.rtp_latched is None
    assert call.bridge.rtcp_remote == ("198.51.100.21", 30010)
    call.browser_sends(rtp(1, 160, 9), 0.3)
    assert call.to_switch[-1][1] == ("198.51.100.21", 30002)
    call.bridge.set_rtp_remote(address="0.0.0.0", port=30002, rtcp_port=None)  # RFC 2543 hold
    call.browser_sends(rtp(2, 320, 9), 0.4)
    assert call.bridge.r.drop_no_destination == 1


@pytest.mark.parametrize(
    ("webrtc", "rtp_dir", "to_rtp", "to_webrtc"),
    [
        ("sendrecv", "sendrecv", True, True),
        ("sendonly", "sendrecv", True, False),
        ("recvonly", "sendrecv", False, True),
        ("inactive", "sendrecv", False, False),
        ("sendrecv", "sendonly", False, True),
        ("sendrecv", "recvonly", True, False),
        ("sendrecv", "inactive", False, False),
    ],
)
def test_directions(call: Call, webrtc: str, rtp_dir: str, to_rtp: bool, to_webrtc: bool) -> None:
    call.bridge.set_direction("webrtc", webrtc, 0.0)
    call.bridge.set_direction("rtp", rtp_dir, 0.0)
    call.browser_sends(rtp(1, 160, 9), 0.1)
    call.bridge.rtp_received(rtp(1, 160, 5), SWITCH, 0.1)
    assert (len(call.to_switch) == 1) is to_rtp
    assert (len(call.browser_received()) == 1) is to_webrtc
    assert call.bridge.w.drop_direction == (0 if to_rtp else 1)
    assert call.bridge.r.drop_direction == (0 if to_webrtc else 1)
    assert call.bridge.handshakes == 1
    with pytest.raises(ValueError):
        call.bridge.set_direction("webrtc", "hold", 0.0)
    with pytest.raises(ValueError):
        call.bridge.set_direction("sip", "sendrecv", 0.0)


def test_payload_map(call: Call) -> None:
    call.bridge.set_payload_map(to_rtp={111: 0}, to_webrtc={0: 111})
    call.browser_sends(rtp(1, 160, 9, pt=111), 0.1)
    call.browser_sends(rtp(2, 320, 9, pt=8), 0.1)
    assert [parse_header(d)[1] for d, _ in call.to_switch] == [0]
    assert call.bridge.w.drop_payload_type == 1
    call.bridge.rtp_received(rtp(1, 160, 5, pt=0), SWITCH, 0.1)
    call.bridge.rtp_received(rtp(2, 320, 5, pt=18), SWITCH, 0.1)
    assert [parse_header(p)[1] for p in call.browser_received()] == [111]
    assert call.bridge.r.drop_payload_type == 1


def test_rtcp_both_ways_with_ssrc_mapping(call: Call) -> None:
    call.bridge.rtp_received(rtp(1, 160, 0x5151), SWITCH, 0.1)
    call.browser_sends(rtp(1, 160, 0x7777), 0.1)
    # Switch RR about the gateway's stream toward it (SSRC_TO_RTP) -> browser gets an SRTCP
    # RR from SSRC_TO_WEBRTC about the browser's own SSRC.
    rr = struct.pack("!BBHI", 0x81, 201, 7, 0x5151) + struct.pack(
        "!IIIIII", SSRC_TO_RTP, 0, 1, 0, 0, 0
    )
    call.bridge.rtcp_received(rr, (SWITCH[0], SWITCH[1] + 1), 0.2)
    data, dest = call.to_browser[-1]
    assert dest == BROWSER
    assert call.srtp is not None
    plain = call.srtp.unprotect_rtcp(data)
    assert struct.unpack_from("!II", plain, 4) == (SSRC_TO_WEBRTC, 0x7777)
    # Browser RR -> switch RTCP port (port + 1), mapped the other way.
    rr = struct.pack("!BBHI", 0x81, 201, 7, 0x7777) + struct.pack(
        "!IIIIII", SSRC_TO_WEBRTC, 0, 1, 0, 0, 0
    )
    call.bridge.webrtc_received(call.srtp.protect_rtcp(rr), BROWSER, 0.3)
    data, dest = call.to_switch_rtcp[-1]
    assert dest == (SWITCH[0], SWITCH[1] + 1)
    assert struct.unpack_from("!II", data, 4) == (SSRC_TO_RTP, 0x5151)
    # RTCP multiplexed on the RTP port by the switch is handled as RTCP too.
    call.bridge.rtp_received(rr, SWITCH, 0.4)
    assert call.bridge.r.rx_rtcp == 2
    # RTCP from another host than the latched RTP source is dropped.
    call.bridge.rtcp_received(rr, ("203.0.113.99", 9), 0.5)
    assert call.bridge.r.drop_source == 1
    call.bridge.rtcp_received(b"\x80\xc9\x00\x05\x00\x00\x00\x01", SWITCH, 0.5)
    assert call.bridge.r.drop_malformed == 1


def test_media_timeout_per_leg(call: Call) -> None:
    b = call.bridge
    for i in range(50):
        t = 0.02 * i
        b.rtp_received(rtp(i, 160 * i, 5), SWITCH, t)
        call.browser_sends(rtp(i, 160 * i, 9), t)
        assert b.tick(t) == ""
    # The switch stops; the browser keeps talking.
    t = 1.0
    while t < 1.0 + b.timeout - 0.1:
        call.browser_sends(rtp(int(t * 50), int(t * 8000), 9), t)
        assert b.tick(t) == ""
        t += 0.1
    assert b.tick(1.0 + b.timeout + 0.05) == "rtp"
    assert b.tick(1.0 + b.timeout + 1.0) == ""  # reported once
    assert b.timed_out == "rtp"


def test_no_timeout_for_a_leg_that_is_not_meant_to_send(call: Call) -> None:
    b = call.bridge
    b.set_direction("rtp", "recvonly", 0.0)  # held: the switch sends nothing
    b.set_direction("webrtc", "recvonly", 0.0)
    assert b.tick(0.0) == ""
    assert b.tick(b.timeout * 3) == ""
    b.set_direction("rtp", "sendrecv", 100.0)  # unhold restarts the clock
    assert b.tick(100.0 + b.timeout - 0.5) == ""
    assert b.tick(100.0 + b.timeout + 0.5) == "rtp"


def test_reoffer_keeps_dtls_new_fingerprint_rehandshakes(
    call: Call, gw_cert: DtlsCertificate
) -> None:
    b = call.bridge
    first = b.dtls
    b.set_webrtc_remote(
        ice_ufrag=BR_UFRAG,
        ice_pwd=BR_PWD,
        fingerprint=("sha-256", call.browser_cert.fingerprint_value.lower()),
        setup="actpass",
        candidates=[BROWSER],
        now=5.0,
    )
    assert b.dtls is first and b.dtls_state == "connected"  # PITFALLS 7
    other = DtlsCertificate.generate(NOW)
    b.set_webrtc_remote(
        ice_ufrag=BR_UFRAG,
        ice_pwd=BR_PWD,
        fingerprint=("sha-256", other.fingerprint_value),
        setup="actpass",
        candidates=[BROWSER],
        now=6.0,
    )
    assert b.dtls is not first and b.dtls_state == "new"
    # Old keys keep media going until the new handshake completes.
    b.rtp_received(rtp(1, 160, 5), SWITCH, 6.1)
    assert len(call.browser_received()) == 1
    call.browser_cert = other
    call.dtls = DtlsEndpoint(
        other, is_server=False, remote_fingerprint=("sha-256", gw_cert.fingerprint_value)
    )
    call.connect(now=7.0)
    assert b.handshakes == 2
    b.rtp_received(rtp(2, 320, 5), SWITCH, 7.1)
    assert len(call.browser_received()) == 1  # decrypted with the new keys


def test_garbage_and_unauthenticated_input_is_counted(call: Call) -> None:
    b = call.bridge
    b.webrtc_received(b"\x50garbage", BROWSER, 1.0)
    b.webrtc_received(b"", BROWSER, 1.0)
    b.webrtc_received(b"\x80\x00short", BROWSER, 1.0)
    b.webrtc_received(rtp(1, 2, 3), BROWSER, 1.0)  # plain RTP: fails SRTP auth
    b.webrtc_received(b"\x81\xc9" + bytes(30), BROWSER, 1.0)  # plain RTCP: fails SRTCP auth
    b.webrtc_received(b"\x16\xfe\xfd" + bytes(30), ("192.0.2.99", 1), 1.0)  # unchecked source
    b.rtp_received(b"\x00" * 40, SWITCH, 1.0)
    b.rtp_received(b"\x80\x00", SWITCH, 1.0)
    b.rtcp_received(b"\x80", SWITCH, 1.0)
    w, r = b.w, b.r
    assert (w.drop_garbage, w.drop_malformed, w.srtp_auth_failures, w.drop_unchecked) == (
        2,
        1,
        2,
        1,
    )
    assert r.drop_malformed == 3
    stats = b.stats()
    assert stats["webrtc"]["drops"]["garbage"] == 2  # type: ignore[index]
    assert stats["webrtc"]["srtp_auth_failures"] == 2  # type: ignore[index]
    assert stats["rtp"]["drops"]["malformed"] == 3  # type: ignore[index]
    assert b.dtls_state == "connected"


def test_media_before_dtls_is_not_forwarded(
    gw_cert: DtlsCertificate, browser_cert: DtlsCertificate
) -> None:
    c = Call(gw_cert, browser_cert)
    c.bridge.rtp_received(rtp(1, 160, 5), SWITCH, 0.0)
    c.bridge.webrtc_received(rtp(1, 160, 5), BROWSER, 0.0)
    assert c.bridge.w.drop_not_ready == 2
    assert c.to_browser == [] and c.to_switch == []


class Reverser:
    """A stand-in transcoder implementing the interface: reverses the payload bytes and
    changes PT 0 -> 8, emitting one packet per input (a codec engineer's real one goes here)."""

    in_clock = 8000
    out_clock = 8000

    def __init__(self) -> None:
        self.calls = 0

    def transcode(self, packet: bytes, now: float) -> list[bytes]:
        self.calls += 1
        return [bytes([packet[0], 8]) + packet[2:12] + packet[12:][::-1]]


def test_transcoder_slots_in_per_direction(call: Call) -> None:
    t = Reverser()
    call.bridge.set_transcoder("to_rtp", t)
    call.browser_sends(rtp(1, 160, 9, payload=b"ab"), 0.1)
    data, _ = call.to_switch[-1]
    assert (
        data[12:] == b"ba" and parse_header(data)[1] == 8 and parse_header(data)[4] == SSRC_TO_RTP
    )
    call.bridge.set_transcoder("to_webrtc", t)
    call.bridge.rtp_received(rtp(1, 160, 5, payload=b"xyz"), SWITCH, 0.1)
    assert call.browser_received()[0][12:] == b"zyx"
    assert t.calls == 2
    call.bridge.set_transcoder("to_rtp", None)
    call.browser_sends(rtp(2, 320, 9, payload=b"ab"), 0.2)
    assert call.to_switch[-1][0][12:] == b"ab"
    with pytest.raises(ValueError):
        call.bridge.set_transcoder("sideways", None)


def test_close_sends_close_notify(call: Call) -> None:
    call.bridge.close()
    assert len(call.to_browser) == 1
    call.dtls.receive_datagram(call.to_browser[0][0], 9.0)
    assert call.dtls.state is DtlsState.CLOSED
    assert call.bridge.dtls_state == "closed"


def test_wrong_browser_fingerprint_fails_and_is_reported(
    gw_cert: DtlsCertificate, browser_cert: DtlsCertificate
) -> None:
    c = Call(gw_cert, browser_cert)
    c.bridge.set_webrtc_remote(
        ice_ufrag=BR_UFRAG,
        ice_pwd=BR_PWD,
        fingerprint=("sha-256", gw_cert.fingerprint_value),  # not the browser's certificate
        setup="actpass",
        candidates=[],
        now=0.0,
    )
    with pytest.raises(AssertionError):
        c.connect()
    stats = c.bridge.stats()["webrtc"]
    assert isinstance(stats, dict)
    assert stats["dtls_state"] == "failed"
    assert stats["dtls_failures"] == 1 and stats["dtls_failure"] == "fingerprint mismatch"
    assert c.bridge.srtp is None
    # A corrected re-offer replaces the failed association.
    c.bridge.set_webrtc_remote(
        ice_ufrag=BR_UFRAG,
        ice_pwd=BR_PWD,
        fingerprint=("sha-256", browser_cert.fingerprint_value),
        setup="actpass",
        candidates=[],
        now=1.0,
    )
    assert c.bridge.dtls_state == "new"
    c.dtls = DtlsEndpoint(
        browser_cert, is_server=False, remote_fingerprint=("sha-256", gw_cert.fingerprint_value)
    )
    c.connect(now=1.0)
    assert c.bridge.handshakes == 1


# --------------------------------------------------------------------------- RTCP

PT_OPUS = 111
BROWSER_SSRC, SWITCH_SSRC = 0x7777, 0x5151
WALL = 1_700_000_000.0


def tone(rate: int, samples: int, start: int) -> bytes:
    """A 440 Hz tone as s16le PCM (so Opus has something to encode)."""
    return b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * (start + i) / rate)))
        for i in range(samples)
    )


def rtcp_datagrams(sent: list[tuple[bytes, Addr]]) -> list[tuple[bytes, Addr]]:
    return [(d, a) for d, a in sent if 192 <= d[1] <= 223]


def transcoded(call: Call) -> None:
    """Plug the real transcoders as the NG layer does for an Opus browser and a PCMU switch."""
    b = call.bridge
    b.set_payload_map(to_rtp={0: 0}, to_webrtc={PT_OPUS: PT_OPUS})
    b.set_transcoder("to_rtp", make_transcoder("opus", "PCMU", in_pt=PT_OPUS, out_pt=0))
    b.set_transcoder("to_webrtc", make_transcoder("PCMU", "opus", in_pt=0, out_pt=PT_OPUS))


def browser_talks(call: Call, count: int, start: float, seq0: int = 0) -> None:
    encoder = get_encoder("opus", pcm_rate=48000, frame_ms=20)
    for i in range(count):
        payload = encoder.encode(tone(48000, 960, 960 * i))
        packet = rtp(seq0 + i, 960 * (seq0 + i), BROWSER_SSRC, pt=PT_OPUS, payload=payload)
        call.browser_sends(packet, start + 0.02 * i)


def switch_talks(call: Call, seqs: list[int], start: float) -> None:
    for seq in seqs:
        call.bridge.rtp_received(rtp(seq, 160 * seq, SWITCH_SSRC), SWITCH, start + 0.02 * seq)


def tick_until(call: Call, sent: list[tuple[bytes, Addr]], start: float) -> float:
    """Tick every 100 ms (as the adapter does) until an RTCP datagram appears in ``sent``."""
    t = start
    while t < start + 10.0:
        call.bridge.tick(t, wallclock=WALL + t)
        if rtcp_datagrams(sent):
            return t
        t = round(t + 0.1, 3)
    raise AssertionError("no RTCP report within 10 s")


def test_transcoded_rtcp_from_the_switch_is_read_not_forwarded(call: Call) -> None:
    transcoded(call)
    b = call.bridge
    switch_talks(call, list(range(10)), 1.0)
    browser_talks(call, 3, 1.0)
    call.to_browser.clear()
    # The switch reports on the PCMU stream it gets from us (SSRC_TO_RTP): 5 lost, 1/4.
    sr = struct.pack("!BBHIQIII", 0x81, 200, 12, SWITCH_SSRC, 0x1111222233334444, 1600, 10, 1600)
    block = struct.pack("!IIIIII", SSRC_TO_RTP, 64 << 24 | 5, 30, 80, 0, 0)
    b.rtcp_received(sr + block, (SWITCH[0], SWITCH[1] + 1), 1.3)
    assert rtcp_datagrams(call.to_browser) == [] and b.w.tx_rtcp == 0
    assert b.r.rx_rtcp == 1 and b.rtcp_latched == (SWITCH[0], SWITCH[1] + 1)
    stats = b.stats()
    assert stats["rtcp_terminated"] is True
    rtcp = stats["rtp"]["rtcp"]  # type: ignore[index]
    assert (rtcp["remote_packets_lost"], rtcp["remote_fraction_lost"]) == (5, 0.25)
    assert rtcp["remote_jitter_ms"] == 10.0  # 80 units on the PCMU leg's 8000 clock
    # The browser's RTCP does not reach the switch either.
    assert call.srtp is not None
    rr = struct.pack("!BBHI", 0x81, 201, 7, BROWSER_SSRC) + struct.pack(
        "!IIIIII", SSRC_TO_WEBRTC, 0, 1, 0, 0, 0
    )
    b.webrtc_received(call.srtp.protect_rtcp(rr), BROWSER, 1.4)
    assert call.to_switch_rtcp == [] and b.r.tx_rtcp == 0 and b.w.rx_rtcp == 1
    # Garbage is counted as malformed, not forwarded.
    b.rtcp_received(b"\x81\xc9\x00\x07" + bytes(8), (SWITCH[0], SWITCH[1] + 1), 1.5)
    assert b.r.drop_malformed == 1 and stats["rtp"]["rtcp"]["parse_errors"] == 0  # type: ignore[index]
    assert b.stats()["rtp"]["rtcp"]["parse_errors"] == 1  # type: ignore[index]


def test_transcoded_sr_to_the_switch_names_the_pcmu_stream(call: Call) -> None:
    transcoded(call)
    b = call.bridge
    switch_talks(call, [s for s in range(25) if s != 7], 1.0)  # one packet lost
    browser_talks(call, 25, 1.0)
    sent = [d for d, _ in call.to_switch]
    assert len(sent) == 25
    last_seq, last_ts, last_ssrc = parse_header(sent[-1])[2:]
    t = tick_until(call, call.to_switch_rtcp, 1.5)
    ((data, dest),) = rtcp_datagrams(call.to_switch_rtcp)
    assert dest == (SWITCH[0], SWITCH[1] + 1)  # the SDP RTCP port (port + 1)
    sr, sdes = parse_rtcp(data)
    assert isinstance(sr, SenderReport) and isinstance(sdes, SourceDescription)
    assert sr.ssrc == SSRC_TO_RTP == last_ssrc
    assert sr.packet_count == 25 and sr.octet_count == sum(len(d) - 12 for d in sent)
    # RTP timestamp of the SR instant on the 8000 clock, from the last packet sent at 1.48 s.
    assert sr.rtp_timestamp == (last_ts + round((t - 1.48) * 8000)) & 0xFFFFFFFF
    assert sr.ntp_timestamp == ntp_from_unix(WALL + t)
    (block,) = sr.reports
    assert block.ssrc == SWITCH_SSRC and block.packets_lost == 1 and block.highest_seq == 24
    assert sdes.cname(SSRC_TO_RTP) == b.cname
    assert b.stats()["rtp"]["rtcp"]["reports_sent"] == 1  # type: ignore[index]
    # The switch's RR on our SR gives the round-trip time (RFC 3550 §6.4.1).
    rr = struct.pack("!BBHI", 0x81, 201, 7, SWITCH_SSRC) + struct.pack(
        "!IIIIII", SSRC_TO_RTP, 0, 25, 0, ntp_short(sr.ntp_timestamp), 65536 // 10
    )
    b.rtcp_received(rr, (SWITCH[0], SWITCH[1] + 1), t + 0.15)
    assert b.stats()["rtp"]["rtcp"]["rtt_ms"] == pytest.approx(50.0, abs=0.1)  # type: ignore[index]
    # Nothing sent since: the next report is an RR.
    call.to_switch_rtcp.clear()
    tick_until(call, call.to_switch_rtcp, t + 0.2)
    rr_packet, _ = parse_rtcp(call.to_switch_rtcp[0][0])
    assert isinstance(rr_packet, ReceiverReport) and rr_packet.ssrc == SSRC_TO_RTP


def test_transcoded_sr_to_the_browser_decrypts_and_names_the_opus_stream(call: Call) -> None:
    transcoded(call)
    b = call.bridge
    browser_talks(call, 20, 1.0)
    switch_talks(call, list(range(25)), 1.0)
    assert call.srtp is not None
    opus = [call.srtp.unprotect(d) for d, _ in call.to_browser if not 192 <= d[1] <= 223]
    call.to_browser.clear()
    assert len(opus) == 25 and all(parse_header(p)[1] == PT_OPUS for p in opus)
    last_ts = parse_header(opus[-1])[3]
    t = tick_until(call, call.to_browser, 1.5)
    ((data, dest),) = rtcp_datagrams(call.to_browser)
    assert dest == BROWSER
    sr, sdes = parse_rtcp(call.srtp.unprotect_rtcp(data))
    assert isinstance(sr, SenderReport) and isinstance(sdes, SourceDescription)
    assert sr.ssrc == SSRC_TO_WEBRTC == parse_header(opus[-1])[4]
    assert sr.packet_count == 25
    # The Opus stream runs on the 48000 clock: last packet sent at 1.48 s.
    assert sr.rtp_timestamp == (last_ts + round((t - 1.48) * 48000)) & 0xFFFFFFFF
    (block,) = sr.reports
    assert block.ssrc == BROWSER_SSRC and block.packets_lost == 0
    assert sdes.cname(SSRC_TO_WEBRTC) == b.cname
    assert b.w.tx_rtcp == 1


def test_reports_wait_for_srtp_and_stop_with_passthrough(
    gw_cert: DtlsCertificate, browser_cert: DtlsCertificate
) -> None:
    c = Call(gw_cert, browser_cert)
    transcoded(c)
    for i in range(100):
        c.bridge.tick(i * 0.1)
    assert rtcp_datagrams(c.to_browser) == []  # no SRTP yet: nothing to the browser
    assert len(c.to_switch_rtcp) >= 1  # the switch leg needs no handshake
    c.connect(now=10.0)
    tick_until(c, c.to_browser, 10.0)
    c.bridge.set_transcoder("to_rtp", None)
    c.bridge.set_transcoder("to_webrtc", None)
    c.to_browser.clear()
    c.to_switch_rtcp.clear()
    for i in range(200):
        c.bridge.tick(11.0 + i * 0.1)
    assert c.to_browser == [] and c.to_switch_rtcp == []


def test_passthrough_forwards_rtcp_and_still_measures(call: Call) -> None:
    b = call.bridge
    assert b.stats()["rtcp_terminated"] is False
    # The switch's stream has one gap and a steady 5 ms transit swing.
    for seq in range(50):
        if seq != 20:
            delay = 0.005 if seq % 2 else 0.0
            b.rtp_received(rtp(seq, 160 * seq, SWITCH_SSRC), SWITCH, 1.0 + 0.02 * seq + delay)
    call.browser_sends(rtp(1, 160, BROWSER_SSRC), 1.0)
    call.browser_sends(rtp(2, 320, BROWSER_SSRC), 1.02)
    # The browser's SR is forwarded to the switch (mapped as before)...
    assert call.srtp is not None
    ntp = ntp_from_unix(WALL)
    sr = struct.pack("!BBHIQIII", 0x80, 200, 6, BROWSER_SSRC, ntp, 320, 2, 320)
    b.webrtc_received(call.srtp.protect_rtcp(sr), BROWSER, 2.0)
    data, _ = call.to_switch_rtcp[-1]
    assert struct.unpack_from("!I", data, 4)[0] == SSRC_TO_RTP
    # ...and the switch's RR about it comes back 80 ms later after holding it 30 ms.
    rr = struct.pack("!BBHI", 0x81, 201, 7, SWITCH_SSRC) + struct.pack(
        "!IIIIII", SSRC_TO_RTP, 0, 2, 16, ntp_short(ntp), 65536 * 3 // 100
    )
    b.rtcp_received(rr, (SWITCH[0], SWITCH[1] + 1), 2.08)
    plain = call.srtp.unprotect_rtcp(call.to_browser[-1][0])
    assert struct.unpack_from("!II", plain, 4) == (SSRC_TO_WEBRTC, BROWSER_SSRC)
    rtcp = b.stats()["rtp"]["rtcp"]  # type: ignore[index]
    assert rtcp["packets_lost"] == 1 and rtcp["packets_received"] == 48
    assert rtcp["jitter_ms"] == pytest.approx(5.0, abs=0.6)  # converging on |D| = 5 ms
    assert rtcp["rtt_ms"] == pytest.approx(50.0, abs=0.1)
    assert rtcp["remote_jitter_ms"] == 2.0  # 16 units at PCMU's 8000 (from PT 0)
    assert rtcp["reports_sent"] == 0
    for i in range(100):  # passthrough never generates reports
        b.tick(3.0 + i * 0.1)
    assert len(call.to_switch_rtcp) == 1 and b.r.tx_rtcp == 1


def test_rtcp_mux_toward_the_switch_uses_the_rtp_port(call: Call) -> None:
    b = call.bridge
    b.set_rtp_remote(address=SWITCH[0], port=SWITCH[1], rtcp_port=SWITCH[1])
    assert b.stats()["rtp"]["rtcp_mux"] is True  # type: ignore[index]
    assert call.srtp is not None
    rr = struct.pack("!BBHI", 0x80, 201, 1, BROWSER_SSRC)
    b.webrtc_received(call.srtp.protect_rtcp(rr), BROWSER, 1.0)
    assert call.to_switch_rtcp == []
    assert rtcp_datagrams(call.to_switch) == [
        (struct.pack("!BBHI", 0x80, 201, 1, BROWSER_SSRC), SWITCH)
    ]
    call.to_switch.clear()
    transcoded(call)
    tick_until(call, call.to_switch, 2.0)
    assert call.to_switch_rtcp == [] and b.r.tx_rtcp == 2


def test_clock_rates_can_be_set_for_passthrough(call: Call) -> None:
    b = call.bridge
    b.set_clock_rates(webrtc=48000, rtp=48000)
    for seq in range(10):
        b.rtp_received(rtp(seq, 960 * seq, SWITCH_SSRC, pt=0), SWITCH, 1.0 + 0.02 * seq)
    assert b.rtcp_r.clock == 48000  # not the 8000 PT 0 would suggest
    assert b.stats()["rtp"]["rtcp"]["jitter_ms"] == 0.0  # type: ignore[index]


def test_played_dtmf_joins_the_switch_stream_between_audio_packets(call: Call) -> None:
    """INFO -> RFC 4733: digits the gateway plays go out in the switch leg's own stream."""
    transcoded(call)
    b = call.bridge
    browser_talks(call, 5, 1.0)
    b.play_dtmf(5, 100, 101, 1.1)
    browser_talks(call, 20, 1.1, seq0=5)
    packets = [d for d, addr in call.to_switch if addr == SWITCH and not 192 <= d[1] <= 223]
    seqs = [struct.unpack_from("!H", d, 2)[0] for d in packets]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]  # one sequence space
    assert {struct.unpack_from("!I", d, 8)[0] for d in packets} == {SSRC_TO_RTP}
    events = [d for d in packets if d[1] & 0x7F == 101]
    decoded = [unpack_event(d[12:]) for d in events]
    assert [e.event for e in decoded] == [5] * len(events)
    assert events[0][1] & 0x80  # marker on the first packet only
    assert not any(d[1] & 0x80 for d in events[1:])
    ends = [e for e in decoded if e.end]
    assert len(ends) == 3 and {e.duration for e in ends} == {800}  # 100 ms at 8000 Hz, E bit x3
    assert len({struct.unpack_from("!I", d, 4)[0] for d in events}) == 1  # one timestamp
    assert sum(1 for d in packets if d[1] & 0x7F == 0) == 25  # no audio packet lost


def test_played_dtmf_waits_while_the_switch_leg_is_on_hold(call: Call) -> None:
    transcoded(call)
    b = call.bridge
    browser_talks(call, 2, 1.0)
    b.set_direction("rtp", "sendonly", 1.05)  # switch holds: we must not send
    call.to_switch.clear()
    b.play_dtmf(1, 100, 101, 1.1)
    for i in range(10):
        b.tick(1.2 + 0.1 * i)
    assert [d for d, _ in call.to_switch if d[1] & 0x7F == 101] == []
    with pytest.raises(ValueError):
        b.play_dtmf(16, 100, 101, 2.5)  # not a DTMF event


def test_browser_events_read_for_sip_info_are_not_forwarded(call: Call) -> None:
    """With a DtmfReceiver on the browser leg (a switch without telephone-event), the
    browser's event packets become digits and none reaches the switch; audio still does."""
    b = call.bridge
    b.set_payload_map(to_rtp={0: 0}, to_webrtc={0: 0})  # no telephone-event mapped
    b.dtmf_to_info = DtmfReceiver(payload_type=126, clock=8000)
    call.browser_sends(rtp(1, 160, 0x7777), 1.0)
    for seq, end in ((2, False), (3, True), (4, True), (5, True)):
        event = struct.pack("!BBH", 9, (0x80 if end else 0) | 10, 960)
        call.browser_sends(rtp(seq, 320, 0x7777, pt=126, payload=event), 1.02 + seq / 100)
    call.browser_sends(rtp(6, 480, 0x7777), 1.1)
    sent = [d for d, _ in call.to_switch if not 192 <= d[1] <= 223]
    assert [d[1] & 0x7F for d in sent] == [0, 0]
    assert b.dtmf_to_info.take() == [("9", 120)]
    assert b.w.drop_payload_type == 0  # taken, not dropped as unmapped
