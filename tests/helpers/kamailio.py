"""Kamailio as the real SIP switch for integration tests.

Starts ``kamailio`` in the foreground on loopback with the test configuration in
tests/integration/kamailio/kamailio.cfg, waits until it answers an OPTIONS, and
reads its location table through the ctl module's binrpc socket with ``kamcmd``.

Topology: Kamailio 127.0.0.1, the gateway 127.0.0.2, sipp 127.0.0.3 (trusted by
the switch: no proxy authentication for requests from that address).
"""

from __future__ import annotations

import atexit
import datetime
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CFG_PATH = ROOT / "tests" / "integration" / "kamailio" / "kamailio.cfg"

KAMAILIO_IP = "127.0.0.1"
GATEWAY_IP = "127.0.0.2"
SIPP_IP = "127.0.0.3"
REALM = "example.test"
USERS: dict[str, str] = {"alice": "alicepw", "bob": "bobpw", "carol": "carolpw"}
LOAD_USER_COUNT = 1000
LOAD_PASSWORD = "loadpw"

READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
KAMCMD_TIMEOUT_S = 5.0
PING_TIMEOUT_S = 0.25
START_ATTEMPTS = 3  # a freshly chosen port can be taken by someone else before Kamailio binds it
SHM_MB = 64
PKG_MB = 8
MAX_LOG_BYTES = 20_000_000  # log_text() reads at most this much from the end


def load_user(index: int) -> str:
    """Name of the ``index``-th load-test user (``load0000`` .. ``load0999``)."""
    if not 0 <= index < LOAD_USER_COUNT:
        raise ValueError(f"load user index {index} outside 0..{LOAD_USER_COUNT - 1}")
    return f"load{index:04d}"


def free_port(ip: str = KAMAILIO_IP, avoid: set[int] | frozenset[int] = frozenset()) -> int:
    """A port number free for both UDP and TCP on ``ip`` right now, not one in ``avoid``."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((ip, 0))
            port = int(u.getsockname()[1])
            if port in avoid:
                continue
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    t.bind((ip, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no port free for UDP and TCP on {ip}")


def write_self_signed_cert(workdir: Path, name: str = REALM) -> tuple[Path, Path]:
    """Write a self-signed ECDSA certificate for ``name`` and 127.0.0.1; return (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address(KAMAILIO_IP))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = workdir / "kamailio-cert.pem"
    key_path = workdir / "kamailio-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


class Kamailio:
    """One Kamailio process on loopback: UDP+TCP on one port, TLS on another."""

    def __init__(self, *, ip: str = KAMAILIO_IP, tls: bool = True, cfg: Path = CFG_PATH) -> None:
        self.ip = ip
        self.tls = tls
        self.cfg = cfg
        self.udp_port = 0
        self.tcp_port = 0
        self.tls_port = 0
        self.workdir: Path | None = None
        self.tls_cert: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._reaped = False

    # ----- paths -------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        """File that receives Kamailio's stderr/stdout."""
        return self._dir() / "kamailio.log"

    @property
    def ctl_path(self) -> Path:
        """The ctl module's binrpc unix socket (``kamcmd -s unix:<path>``)."""
        return self._dir() / "kamailio_ctl"

    def _dir(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("Kamailio not started")
        return self.workdir

    # ----- lifecycle ---------------------------------------------------------------------

    def start(self, workdir: Path, timeout: float = READY_TIMEOUT_S) -> None:
        """Start Kamailio with its files under ``workdir``; return once it answers OPTIONS."""
        if shutil.which("kamailio") is None or shutil.which("kamcmd") is None:
            raise RuntimeError("kamailio and kamcmd must be installed")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        tls_cfg = self._write_tls_cfg() if self.tls else None
        for attempt in range(START_ATTEMPTS):
            self.udp_port = self.tcp_port = free_port(self.ip)
            self.tls_port = free_port(self.ip, avoid={self.udp_port}) if self.tls else 0
            log_start = self.log_size()
            self._spawn(tls_cfg)
            try:
                self._wait_ready(timeout)
                return
            except _StartFailed as exc:
                self.stop()
                log = self.log_text(since=log_start)
                # lost a race for a port: choose new ports and retry; anything else is final
                if "Address already in use" in log and attempt + 1 < START_ATTEMPTS:
                    continue
                raise RuntimeError(f"Kamailio did not start: {exc}\n{log[-5000:]}") from None
        raise AssertionError("unreachable")

    def _write_tls_cfg(self) -> Path:
        workdir = self._dir()
        cert, key = write_self_signed_cert(workdir)
        self.tls_cert = cert
        path = workdir / "tls.cfg"
        path.write_text(
            "[server:default]\n"
            "method = TLSv1.2+\n"
            "verify_certificate = no\n"
            "require_certificate = no\n"
            f"private_key = {key}\n"
            f"certificate = {cert}\n"
            "\n"
            "[client:default]\n"
            "method = TLSv1.2+\n"
            "verify_certificate = no\n"
            "require_certificate = no\n"
        )
        return path

    def _spawn(self, tls_cfg: Path | None) -> None:
        workdir = self._dir()
        if self.ctl_path.exists():
            self.ctl_path.unlink()
        args = [
            "kamailio",
            "-DD",
            "-E",
            "-f",
            str(self.cfg),
            "-Y",
            str(workdir),
            "-w",
            str(workdir),
            "-m",
            str(SHM_MB),
            "-M",
            str(PKG_MB),
            "-l",
            f"udp:{self.ip}:{self.udp_port}",
            "-l",
            f"tcp:{self.ip}:{self.tcp_port}",
            "-A",
            f'KAM_CTL="unix:{self.ctl_path}"',
        ]
        if tls_cfg is not None:
            args += ["-l", f"tls:{self.ip}:{self.tls_port}"]
            args += ["-A", "WITH_TLS", "-A", f'KAM_TLS_CFG="{tls_cfg}"']
        with open(self.log_path, "ab") as log:
            log.write(f"---- {' '.join(args)}\n".encode())
            log.flush()
            # own process group: stop() can reap every child Kamailio forked
            self._reaped = False
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=str(workdir),
                start_new_session=True,
            )
        atexit.register(self.stop)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise _StartFailed(f"kamailio exited with {code}")
            reply = self.options_ping("udp")
            if reply is not None and reply.startswith("SIP/2.0 200"):
                if self.options_ping("tcp") is None:
                    raise _StartFailed("no reply to OPTIONS over TCP")
                if self.ctl_path.exists():
                    return
            time.sleep(0.05)
        raise _StartFailed(f"no reply to OPTIONS within {timeout} s")

    def alive(self) -> bool:
        """True while the Kamailio main process runs."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL the process group after ``timeout``; return the exit code."""
        atexit.unregister(self.stop)
        proc = self.proc
        if proc is None:
            return None
        if self._reaped:
            return proc.returncode
        pgid = proc.pid  # start_new_session: the group id is the main pid
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(pgid)
                proc.wait(timeout)
        # children that outlived the main process (they should not); done once only, so a
        # later call can never signal a group id the system has handed out again
        _kill_group(pgid)
        self._reaped = True
        return proc.returncode

    # ----- addresses ---------------------------------------------------------------------

    def uri(self, transport: str = "udp") -> str:
        """SIP URI of a listener, e.g. ``sip:127.0.0.1:5060;transport=udp``."""
        transport = transport.lower()
        if transport == "udp":
            return f"sip:{self.ip}:{self.udp_port};transport=udp"
        if transport == "tcp":
            return f"sip:{self.ip}:{self.tcp_port};transport=tcp"
        if transport == "tls":
            if not self.tls:
                raise ValueError("Kamailio started without TLS")
            return f"sip:{self.ip}:{self.tls_port};transport=tls"
        raise ValueError(f"unknown transport {transport!r}")

    # ----- probes ------------------------------------------------------------------------

    def options_ping(self, transport: str = "udp", timeout: float = PING_TIMEOUT_S) -> str | None:
        """Send one OPTIONS to the switch itself; return the reply's status line or None."""
        branch = "z9hG4bK" + secrets.token_hex(8)
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        port = self.udp_port if transport == "udp" else self.tcp_port
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.settimeout(timeout)
            sock.bind((self.ip, 0))
            local_port = sock.getsockname()[1]
            message = (
                f"OPTIONS sip:{self.ip}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/{transport.upper()} {self.ip}:{local_port};branch={branch};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:probe@{REALM}>;tag={secrets.token_hex(4)}\r\n"
                f"To: <sip:{self.ip}:{port}>\r\n"
                f"Call-ID: {secrets.token_hex(8)}@{self.ip}\r\n"
                "CSeq: 1 OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
            try:
                if kind == socket.SOCK_DGRAM:
                    sock.sendto(message, (self.ip, port))
                    data = sock.recv(65535)
                else:
                    sock.connect((self.ip, port))
                    sock.sendall(message)
                    data = sock.recv(65535)
            except OSError:
                return None
        if not data:
            return None
        return data.split(b"\r\n", 1)[0].decode(errors="replace")

    # ----- control socket ----------------------------------------------------------------

    def rpc(self, *command: str) -> str:
        """Run one RPC command through ``kamcmd``; return its stdout (raise on failure)."""
        result = subprocess.run(
            ["kamcmd", "-s", f"unix:{self.ctl_path}", *command],
            capture_output=True,
            text=True,
            timeout=KAMCMD_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            raise RpcError(result.returncode, (result.stdout + result.stderr).strip())
        return result.stdout

    def locations(self, aor: str) -> list[dict[str, Any]]:
        """Contacts bound to ``aor`` (``user@example.test``), one dict per contact.

        Keys are the lower-cased field names of ``ul.lookup``: contact, path,
        received, expires, q, call-id, cseq, user-agent, instance, reg-id,
        socket, ... A field Kamailio reports as "[not set]" is "".
        """
        try:
            text = self.rpc("ul.lookup", "location", _bare_aor(aor))
        except RpcError as exc:
            if "404" in exc.output or "not found" in exc.output.lower():
                return []
            raise
        return parse_ul_contacts(text)

    def remove_location(self, aor: str) -> None:
        """Delete every binding of ``aor`` (no error when there is none)."""
        try:
            self.rpc("ul.rm", "location", _bare_aor(aor))
        except RpcError as exc:
            if "404" not in exc.output and "not found" not in exc.output.lower():
                raise

    def log_size(self) -> int:
        """Current length of the log file in bytes (an offset for log_text(since=...))."""
        try:
            return self.log_path.stat().st_size
        except (FileNotFoundError, RuntimeError):
            return 0

    def log_text(self, since: int = 0) -> str:
        """Kamailio's log from byte offset ``since`` (at most the last MAX_LOG_BYTES)."""
        try:
            with open(self.log_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(since, size - MAX_LOG_BYTES))
                return f.read().decode(errors="replace")
        except (FileNotFoundError, RuntimeError):
            return ""


class RpcError(RuntimeError):
    """kamcmd exited non-zero; ``output`` holds what it printed."""

    def __init__(self, code: int, output: str) -> None:
        super().__init__(f"kamcmd exited {code}: {output}")
        self.code = code
        self.output = output


class _StartFailed(RuntimeError):
    pass


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _bare_aor(aor: str) -> str:
    aor = aor.strip().strip("<>")
    for scheme in ("sip:", "sips:"):
        if aor.lower().startswith(scheme):
            aor = aor[len(scheme) :]
    return aor.split(";", 1)[0]


_FIELD = re.compile(r"^\s*([A-Za-z][\w\-]*):\s?(.*)$")


def parse_ul_contacts(text: str) -> list[dict[str, Any]]:
    """Parse ``kamcmd ul.lookup`` / ``ul.dump`` output into one dict per Contact block."""
    contacts: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    depth = 0
    contact_depth = -1
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        match = _FIELD.match(line)
        opens = line.endswith("{")
        if match and match.group(1) == "Contact" and opens:
            current = {}
            contact_depth = depth
        elif match and current is not None and depth == contact_depth + 1 and not opens:
            value = match.group(2).strip()
            current[match.group(1).lower()] = "" if value == "[not set]" else value
        if opens:
            depth += 1
        elif line == "}":
            depth -= 1
            if current is not None and depth == contact_depth:
                current.setdefault("contact", current.get("address", ""))
                contacts.append(current)
                current = None
                contact_depth = -1
    return contacts
