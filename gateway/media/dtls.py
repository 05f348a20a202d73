"""DTLS-SRTP (RFC 5764) over pyOpenSSL memory BIOs, sans-I/O.

The WebRTC leg's one UDP socket carries STUN, DTLS and SRTP (RFC 7983), so the handshake
is driven from the same datagram handler as media: :meth:`DtlsEndpoint.receive_datagram`
feeds a record in, :meth:`DtlsEndpoint.datagrams_to_send` returns what OpenSSL wrote,
:meth:`DtlsEndpoint.get_timer` / :meth:`DtlsEndpoint.handle_timer` drive retransmission
(RFC 6347 §4.2.4). After the handshake the peer certificate is checked against the SDP
``a=fingerprint`` (RFC 8122 §5) and the SRTP keys are exported (RFC 5764 §4.2).

Roles (RFC 8842 §5): ``setup:passive`` = DTLS server, ``setup:active`` = DTLS client.

Note: OpenSSL keeps its own retransmission clock; ``now`` decides when :meth:`handle_timer`
is worth calling, and OpenSSL then retransmits only if its timer has expired too.
"""

from __future__ import annotations

import binascii
import datetime
import enum
import os
from dataclasses import dataclass

import pylibsrtp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from OpenSSL.crypto import X509

__all__ = [
    "DtlsCertificate",
    "DtlsEndpoint",
    "DtlsState",
    "SrtpProfile",
    "SRTP_PROFILES",
    "SrtpKeys",
    "HANDSHAKE_TIMEOUT",
    "CERT_VALIDITY_DAYS",
    "DTLS_READ_SIZE",
    "fingerprint_of",
]

HANDSHAKE_TIMEOUT = 30.0
"""Seconds after :meth:`DtlsEndpoint.start` before an unfinished handshake fails."""
CERT_VALIDITY_DAYS = 30
"""Lifetime of the per-process self-signed certificate (browsers only pin the fingerprint)."""
DTLS_READ_SIZE = 1500
"""Bytes taken from the memory BIO per outgoing datagram (an ECDSA flight fits in one)."""
EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"
"""RFC 5764 §4.2 keying material exporter label."""
CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA"
)
"""DTLS 1.2 cipher suites usable with an ECDSA certificate (what browsers offer)."""


@dataclass(frozen=True)
class SrtpProfile:
    """An RFC 5764 §4.1.2 / RFC 7714 §14.2 protection profile and its key sizes."""

    openssl_name: bytes
    libsrtp_profile: int
    key_length: int
    salt_length: int


SRTP_PROFILES = (
    SrtpProfile(b"SRTP_AEAD_AES_128_GCM", pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16, 12),
    SrtpProfile(b"SRTP_AES128_CM_SHA1_80", pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16, 14),
)
"""Profiles offered, preferred first."""


@dataclass(frozen=True)
class SrtpKeys:
    """Exported SRTP master key+salt for each direction, from this endpoint's view."""

    profile: SrtpProfile
    tx: bytes
    rx: bytes


class DtlsState(enum.Enum):
    """Life cycle of one DTLS association."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"
    FAILED = "failed"


def fingerprint_of(cert: x509.Certificate) -> str:
    """Upper-case colon-separated SHA-256 digest, as in ``a=fingerprint`` (RFC 8122 §5)."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def _verify_peer(conn: SSL.Connection, cert: X509, errno: int, depth: int, ok: int) -> bool:
    if depth != 0:
        return True
    endpoint = conn.get_app_data()
    if not isinstance(endpoint, DtlsEndpoint):
        return False
    algorithm, value = endpoint.remote_fingerprint
    if algorithm == "sha-256" and fingerprint_of(cert.to_cryptography()) == value:
        return True
    endpoint.fingerprint_rejected = True
    return False


class DtlsCertificate:
    """The process's ECDSA P-256 certificate and the SSL context built on it."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert
        self.fingerprint_value = fingerprint_of(cert)
        self._context: SSL.Context | None = None

    @property
    def fingerprint(self) -> str:
        """``"sha-256 AB:CD:..."``, the value of ``a=fingerprint``."""
        return f"sha-256 {self.fingerprint_value}"

    @classmethod
    def generate(cls, now: datetime.datetime) -> DtlsCertificate:
        """A fresh self-signed ECDSA P-256 certificate valid from ``now`` (minus a day)."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [x509.NameAttribute(x509.NameOID.COMMON_NAME, binascii.hexlify(os.urandom(8)).decode())]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=CERT_VALIDITY_DAYS))
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def context(self) -> SSL.Context:
        """The shared DTLS context: DTLS 1.2, use_srtp, any peer certificate (pinned later)."""
        if self._context is None:
            ctx = SSL.Context(SSL.DTLS_METHOD)
            ctx.set_options(SSL.OP_NO_TICKET)
            # RFC 8827 §6.5: self-signed certificates; identity is the SDP fingerprint.
            # The chain is not checked; the leaf must match the fingerprint, else the
            # handshake aborts with an alert (the peer learns it too).
            ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_peer)
            ctx.use_certificate(self.cert)
            ctx.use_privatekey(self.key)
            ctx.set_cipher_list(CIPHERS)
            ctx.set_tlsext_use_srtp(b":".join(p.openssl_name for p in SRTP_PROFILES))
            self._context = ctx
        return self._context


class DtlsEndpoint:
    """One DTLS-SRTP association (server for ``setup:passive``, client for ``active``)."""

    def __init__(
        self,
        certificate: DtlsCertificate,
        *,
        is_server: bool,
        remote_fingerprint: tuple[str, str],
    ) -> None:
        self.is_server = is_server
        self.remote_fingerprint = (remote_fingerprint[0].lower(), remote_fingerprint[1].upper())
        self.state = DtlsState.NEW
        self.failure = ""
        """Why the handshake failed (empty unless ``state`` is FAILED)."""
        self.keys: SrtpKeys | None = None
        self.records_in = 0
        self.records_out = 0
        self.fingerprint_rejected = False
        self._ssl = SSL.Connection(certificate.context(), None)
        self._ssl.set_app_data(self)
        if is_server:
            self._ssl.set_accept_state()
        else:
            self._ssl.set_connect_state()
        self._out: list[bytes] = []
        self._deadline: float | None = None
        self._started = 0.0

    @property
    def connected(self) -> bool:
        """True once the handshake finished and the peer's fingerprint matched."""
        return self.state is DtlsState.CONNECTED

    def start(self, now: float) -> None:
        """Begin the handshake (the client sends its ClientHello now)."""
        if self.state is not DtlsState.NEW:
            return
        self.state = DtlsState.CONNECTING
        self._started = now
        if not self.is_server:
            self._step(now)

    def _fail(self, reason: str) -> None:
        self.state = DtlsState.FAILED
        self.failure = reason
        self._deadline = None

    def _flush(self) -> None:
        while True:
            try:
                data = self._ssl.bio_read(DTLS_READ_SIZE)
            except SSL.WantReadError:
                return
            if not data:
                return
            self._out.append(data)
            self.records_out += 1

    def _arm(self, now: float) -> None:
        timeout = self._ssl.DTLSv1_get_timeout()
        self._deadline = None if timeout is None else now + float(timeout)

    def _step(self, now: float) -> None:
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            self._flush()
            self._arm(now)
            return
        except SSL.Error as exc:
            self._flush()
            self._fail(
                "fingerprint mismatch" if self.fingerprint_rejected else f"handshake error: {exc}"
            )
            return
        self._flush()
        self._deadline = None
        self._connected()

    def _connected(self) -> None:
        cert = self._ssl.get_peer_certificate(as_cryptography=True)
        algorithm, value = self.remote_fingerprint
        # RFC 8122 §5: the certificate presented MUST match the SDP fingerprint.
        if cert is None or algorithm != "sha-256" or fingerprint_of(cert) != value:
            self._fail("fingerprint mismatch")
            return
        selected = self._ssl.get_selected_srtp_profile()
        for profile in SRTP_PROFILES:
            if profile.openssl_name == selected:
                break
        else:
            self._fail("no SRTP profile negotiated")
            return
        k, s = profile.key_length, profile.salt_length
        material = self._ssl.export_keying_material(EXPORTER_LABEL, 2 * (k + s))
        # RFC 5764 §4.2: client_write_key | server_write_key | client_salt | server_salt.
        client = material[:k] + material[2 * k : 2 * k + s]
        server = material[k : 2 * k] + material[2 * k + s : 2 * k + 2 * s]
        if self.is_server:
            self.keys = SrtpKeys(profile, tx=server, rx=client)
        else:
            self.keys = SrtpKeys(profile, tx=client, rx=server)
        self.state = DtlsState.CONNECTED

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Feed one DTLS datagram received from the peer."""
        if self.state in (DtlsState.CLOSED, DtlsState.FAILED):
            return
        if self.state is DtlsState.NEW:
            self.start(now)
        self.records_in += 1
        self._ssl.bio_write(data)
        if self.state is DtlsState.CONNECTING:
            self._step(now)
            if not self.connected:
                return
        # Connected: alerts (close_notify) or application data we do not use (no SCTP).
        try:
            self._ssl.recv(DTLS_READ_SIZE)
        except SSL.ZeroReturnError:
            self.state = DtlsState.CLOSED
        except SSL.WantReadError:
            pass
        except SSL.Error as exc:
            self._fail(f"record error: {exc}")
        self._flush()

    def datagrams_to_send(self) -> list[bytes]:
        """Datagrams produced since the last call (handshake flights, alerts)."""
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should run next (absolute, in ``now`` units)."""
        return self._deadline

    def handle_timer(self, now: float) -> None:
        """Retransmit the last flight if its timer expired; fail after HANDSHAKE_TIMEOUT."""
        if self.state is not DtlsState.CONNECTING or self._deadline is None:
            return
        if now - self._started > HANDSHAKE_TIMEOUT:
            self._fail("handshake timeout")
            return
        if now < self._deadline:
            return
        try:
            self._ssl.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            self._fail(f"retransmission error: {exc}")
            return
        self._flush()
        self._arm(now)
        if self._deadline is not None and self._deadline <= now:
            # OpenSSL's own clock has not expired yet: look again shortly.
            self._deadline = now + 0.05

    def close(self) -> None:
        """Send close_notify if connected (RFC 5246 §7.2.1); idempotent."""
        if self.state is DtlsState.CONNECTED:
            try:
                self._ssl.shutdown()
            except SSL.Error:
                pass
            self._flush()
        if self.state is not DtlsState.FAILED:
            self.state = DtlsState.CLOSED
        self._deadline = None
        self._ssl.set_app_data(None)  # break the endpoint <-> connection cycle
