"""TLS helpers: the self-signed fallback certificate and the server SSL context.

When ``tls.cert`` and ``tls.key`` are both empty the gateway still serves WSS with
an ECDSA P-256 certificate it generates in ``general.state_dir`` (SAN ``localhost``
and ``127.0.0.1``, valid one year), reused on later starts while it is valid.
Browsers refuse such a certificate for wss:// until the user accepts it, so the
caller logs a warning; this is for demos and tests, not production.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.config import TLS_VERSIONS, ConfigError

__all__ = [
    "SELF_SIGNED_CERT",
    "SELF_SIGNED_KEY",
    "ensure_self_signed",
    "make_server_context",
]

log = logging.getLogger(__name__)

#: File names of the generated pair inside general.state_dir.
SELF_SIGNED_CERT: Final = "self-signed-cert.pem"
SELF_SIGNED_KEY: Final = "self-signed-key.pem"
#: Lifetime of a generated certificate.
SELF_SIGNED_LIFETIME: Final = datetime.timedelta(days=365)
#: A stored certificate expiring sooner than this is replaced at start-up.
RENEW_BEFORE: Final = datetime.timedelta(days=7)
#: Back-dating of notBefore, for peers whose clocks run a little slow.
CLOCK_SKEW: Final = datetime.timedelta(minutes=5)
SELF_SIGNED_NAME: Final = "webrtc-sip-gateway self-signed"

_TLS_VERSION: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _public_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _reusable(cert_path: Path, key_path: Path, now: datetime.datetime) -> bool:
    """True when the stored pair parses, matches, is P-256 and is valid for a while yet."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return False
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        return False
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        return False
    return cert.not_valid_before_utc <= now < cert.not_valid_after_utc - RENEW_BEFORE


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically with permissions ``mode``."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_self_signed(
    state_dir: Path, *, now: datetime.datetime | None = None
) -> tuple[Path, Path]:
    """Return (cert, key) paths of a self-signed ECDSA P-256 pair in ``state_dir``.

    An existing pair is reused while it is valid for more than ``RENEW_BEFORE``;
    otherwise a new one is generated (SAN localhost and 127.0.0.1, one year).
    The key file is written with mode 0600.

    Args:
        state_dir: directory for the pair (created when missing).
        now: the current time (UTC); None reads the clock.

    Raises:
        ConfigError: naming general.state_dir when the directory or files cannot be
            written.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    cert_path = state_dir / SELF_SIGNED_CERT
    key_path = state_dir / SELF_SIGNED_KEY
    if _reusable(cert_path, key_path, now):
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SELF_SIGNED_NAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + SELF_SIGNED_LIFETIME)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        _write(key_path, key_pem, 0o600)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as exc:
        raise ConfigError(
            f"general.state_dir: {str(state_dir)!r} cannot hold the self-signed certificate "
            f"({exc.strerror}); make it writable or set tls.cert and tls.key"
        ) from None
    return cert_path, key_path


def _read(path: str | Path, key: str, what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ConfigError(
            f"{key}: {str(path)!r} cannot be read ({exc.strerror}); expected a readable {what}"
        ) from None


def make_server_context(cert: str | Path, key: str | Path, min_version: str) -> ssl.SSLContext:
    """Server-side TLS context for the WSS and SIP-TLS listeners.

    Args:
        cert: PEM file with the certificate first, then its chain.
        key: PEM file with the certificate's unencrypted private key.
        min_version: "1.2" or "1.3".

    Raises:
        ConfigError: naming tls.min_version, tls.cert or tls.key when the version is
            unknown, a file is unreadable or holds no PEM certificate/key, the key is
            encrypted, or the key does not match the certificate.
    """
    if min_version not in TLS_VERSIONS:
        raise ConfigError(
            f"tls.min_version: {min_version!r} is not a TLS version; expected 1.2 or 1.3"
        )
    cert_pem = _read(cert, "tls.cert", "PEM certificate chain")
    key_pem = _read(key, "tls.key", "PEM private key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ConfigError(
            f"tls.cert: {str(cert)!r} holds no PEM certificate; expected a file starting "
            "with -----BEGIN CERTIFICATE-----"
        ) from None
    private: PrivateKeyTypes
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ConfigError(
            f"tls.key: {str(key)!r} is encrypted; expected an unencrypted PEM key "
            "(decrypt it with 'openssl pkey -in KEY -out KEY.plain')"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            f"tls.key: {str(key)!r} holds no PEM private key; expected a file starting "
            "with -----BEGIN PRIVATE KEY----- (or EC/RSA PRIVATE KEY)"
        ) from None
    if _public_der(private.public_key()) != _public_der(chain[0].public_key()):
        raise ConfigError(
            f"tls.key: {str(key)!r} does not match the certificate in tls.cert "
            f"{str(cert)!r}; expected the key the certificate was issued for"
        )
    now = datetime.datetime.now(datetime.UTC)
    if not chain[0].not_valid_before_utc <= now <= chain[0].not_valid_after_utc:
        log.warning(
            "! tls.cert %s is not valid now (valid %s to %s): browsers will refuse it",
            cert,
            chain[0].not_valid_before_utc.isoformat(),
            chain[0].not_valid_after_utc.isoformat(),
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _TLS_VERSION[min_version]
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"tls.cert: {str(cert)!r} with tls.key {str(key)!r} cannot be loaded ({exc}); "
            "expected a PEM full chain and its key"
        ) from None
    return context
