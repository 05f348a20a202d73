"""sipp as the far end in integration tests.

``Sipp`` runs one scenario from tests/integration/sipp/ bound to 127.0.0.3 (the
address the test switch trusts), as UAS (no remote address) or UAC (remote
address given), always with bounds: call count (-m), concurrent calls (-l),
call length (-d, for ``<pause/>``) and a global timeout (-timeout). It collects
the exit code, stdout/stderr, the message trace (-trace_msg), the error log and
the statistics CSV (-trace_stat).

    uas = Sipp("uas_answer.xml", workdir=tmp_path)
    await uas.start()                     # returns once sipp listens
    uac = Sipp("uac_invite.xml", workdir=tmp_path, remote=kamailio_hostport,
               service=f"9{uas.port}")
    await uac.start()
    result = await uac.wait(20)
    assert result.ok, result.describe()
"""

from __future__ import annotations

import asyncio
import csv
import errno
import itertools
import math
import re
import shutil
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.kamailio import LOAD_PASSWORD, LOAD_USER_COUNT, load_user

ROOT = Path(__file__).resolve().parents[2]
SCENARIO_DIR = ROOT / "tests" / "integration" / "sipp"
SIPP_IP = "127.0.0.3"

DEFAULT_TIMEOUT_S = 30.0  # sipp's own -timeout
DEFAULT_CALL_LENGTH_MS = 500  # -d: length of <pause/> in the scenarios
LISTEN_TIMEOUT_S = 5.0  # start() waits at most this long for sipp to bind its port
STOP_GRACE_S = 3.0
# exit codes documented by sipp
EXIT_ALL_CALLS_OK = 0
EXIT_SOME_CALLS_FAILED = 1
EXIT_NO_CALLS = 99

_counter = itertools.count(1)


def free_udp_port(ip: str = SIPP_IP, avoid: set[int] | frozenset[int] = frozenset()) -> int:
    """A UDP port free on ``ip`` right now (also free for TCP), not one in ``avoid``."""
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
    raise RuntimeError(f"no free port on {ip}")


def scenario_path(name: str | Path) -> Path:
    """A scenario by file name (looked up in tests/integration/sipp/) or by path."""
    path = Path(name)
    if not path.is_absolute() and not path.exists():
        path = SCENARIO_DIR / path
    if not path.is_file():
        raise FileNotFoundError(f"sipp scenario {name} not found")
    return path


def write_injection_csv(
    path: Path, rows: Iterable[Sequence[str]], order: str = "SEQUENTIAL"
) -> Path:
    """Write a sipp injection file (-inf): first line the read order, then ``a;b;c`` rows."""
    lines = [order] + [";".join(row) + ";" for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_load_users_csv(path: Path, count: int = LOAD_USER_COUNT) -> Path:
    """Injection file for uac_register_load.xml: ``loadNNNN;loadpw`` for the first ``count`` users."""
    return write_injection_csv(path, [(load_user(i), LOAD_PASSWORD) for i in range(count)])


@dataclass(frozen=True)
class TraceMessage:
    """One message from sipp's -trace_msg log."""

    direction: str  # "sent" or "received"
    transport: str  # "UDP", "TCP", ...
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\r\n", 1)[0].split("\n", 1)[0].strip()

    def header(self, name: str) -> list[str]:
        """Values of header ``name`` (case-insensitive), in order."""
        prefix = name.lower() + ":"
        return [
            line.split(":", 1)[1].strip()
            for line in self.text.splitlines()
            if line.lower().startswith(prefix)
        ]


_TRACE_SEPARATOR = re.compile(r"^-{10,}.*$", re.MULTILINE)
_TRACE_HEAD = re.compile(r"^(UDP|TCP|TLS|SCTP) message (sent|received)\b")


def parse_message_trace(text: str) -> list[TraceMessage]:
    """Split a -trace_msg log into messages (entries start with a dashed timestamp line)."""
    messages: list[TraceMessage] = []
    for chunk in _TRACE_SEPARATOR.split(text):
        chunk = chunk.strip("\r\n")
        head, _, body = chunk.partition("\n")
        match = _TRACE_HEAD.match(head.strip())
        if match is None:
            continue
        messages.append(TraceMessage(match.group(2), match.group(1), body.strip("\r\n")))
    return messages


@dataclass
class SippResult:
    """What one sipp run produced."""

    returncode: int
    stdout: str
    stderr: str
    messages_text: str
    errors_text: str
    stats: dict[str, str] = field(default_factory=dict)
    timed_out: bool = False  # our wait() gave up and killed sipp

    @property
    def ok(self) -> bool:
        """Every call ran the scenario to its end (exit code 0)."""
        return self.returncode == EXIT_ALL_CALLS_OK and not self.timed_out

    @property
    def messages(self) -> list[TraceMessage]:
        return parse_message_trace(self.messages_text)

    def received(self, first_line_prefix: str = "") -> list[TraceMessage]:
        """Messages sipp received whose first line starts with the prefix."""
        return [
            m
            for m in self.messages
            if m.direction == "received" and m.first_line.startswith(first_line_prefix)
        ]

    def sent(self, first_line_prefix: str = "") -> list[TraceMessage]:
        """Messages sipp sent whose first line starts with the prefix."""
        return [
            m
            for m in self.messages
            if m.direction == "sent" and m.first_line.startswith(first_line_prefix)
        ]

    def stat(self, name: str) -> int:
        """A cumulative counter from the stats CSV, e.g. ``SuccessfulCall(C)``."""
        value = self.stats.get(name, "")
        return int(value) if value.strip().isdigit() else 0

    @property
    def successful_calls(self) -> int:
        return self.stat("SuccessfulCall(C)")

    @property
    def failed_calls(self) -> int:
        return self.stat("FailedCall(C)")

    def describe(self, limit: int = 8000) -> str:
        """Text for an assertion message: exit code, errors, stderr, message trace."""
        return (
            f"sipp exit {self.returncode}{' (killed after wait timeout)' if self.timed_out else ''}; "
            f"calls ok={self.successful_calls} failed={self.failed_calls}\n"
            f"--- errors ---\n{self.errors_text[-limit:]}\n"
            f"--- stderr ---\n{self.stderr[-limit:]}\n"
            f"--- messages ---\n{self.messages_text[-limit:]}"
        )


class Sipp:
    """One sipp process running one scenario on 127.0.0.3 (asyncio subprocess)."""

    def __init__(
        self,
        scenario: str | Path,
        *,
        workdir: Path,
        remote: str | None = None,
        port: int = 0,
        ip: str = SIPP_IP,
        transport: str = "udp",
        service: str | None = None,
        calls: int = 1,
        limit: int = 1,
        rate: float | None = None,
        call_length_ms: int = DEFAULT_CALL_LENGTH_MS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        auth: tuple[str, str] | None = None,
        inf: Path | None = None,
        keys: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        """``remote`` ("host:port") makes it a UAC; without it sipp waits as UAS."""
        if shutil.which("sipp") is None:
            raise RuntimeError("sipp must be installed")
        if transport not in ("udp", "tcp"):
            raise ValueError(f"transport {transport!r}: udp or tcp")
        self.scenario = scenario_path(scenario)
        self.workdir = Path(workdir)
        self.remote = remote
        self.ip = ip
        self.port = port or free_udp_port(ip)
        # sipp also binds the RTP echo ports (-mp and -mp + 2)
        self.media_port = free_udp_port(ip, avoid={self.port, self.port - 2})
        # sipp's UDP control socket: on loopback too, not its default 0.0.0.0:8888
        self.control_port = free_udp_port(
            ip, avoid={self.port, self.media_port, self.media_port + 2}
        )
        self.transport = transport
        self.service = service
        self.calls = calls
        self.limit = limit
        self.rate = rate
        self.call_length_ms = call_length_ms
        self.timeout_s = timeout_s
        self.auth = auth
        self.inf = inf
        self.keys = dict(keys or {})
        self.extra_args = list(extra_args)
        self.name = f"sipp-{self.scenario.stem}-{self.port}-{next(_counter)}"
        self.proc: asyncio.subprocess.Process | None = None
        self.result: SippResult | None = None

    @property
    def uri(self) -> str:
        """Where this sipp listens, e.g. ``sip:127.0.0.3:40000;transport=udp``."""
        return f"sip:{self.ip}:{self.port};transport={self.transport}"

    def _file(self, suffix: str) -> Path:
        return self.workdir / f"{self.name}.{suffix}"

    def args(self) -> list[str]:
        """The sipp command line."""
        args = ["sipp"]
        if self.remote:
            args.append(self.remote)
        args += [
            "-sf", str(self.scenario),
            "-i", self.ip,
            "-p", str(self.port),
            "-mi", self.ip,
            "-mp", str(self.media_port),
            "-ci", self.ip,
            "-cp", str(self.control_port),
            "-t", "u1" if self.transport == "udp" else "t1",
            "-m", str(self.calls),
            "-l", str(self.limit),
            "-d", str(self.call_length_ms),
            "-timeout", f"{math.ceil(self.timeout_s)}s",
            "-timeout_error",
            "-nostdin",
            "-trace_msg", "-message_file", str(self._file("messages.log")),
            "-trace_err", "-error_file", str(self._file("errors.log")),
            "-trace_stat", "-stf", str(self._file("stats.csv")), "-fd", "1",
        ]  # fmt: skip
        if self.rate is not None:
            args += ["-r", f"{self.rate:g}"]
        if self.service is not None:
            args += ["-s", self.service]
        if self.auth is not None:
            args += ["-au", self.auth[0], "-ap", self.auth[1]]
        if self.inf is not None:
            args += ["-inf", str(self.inf)]
        for key, value in self.keys.items():
            args += ["-key", key, value]
        return args + self.extra_args

    async def start(self) -> None:
        """Spawn sipp; return once it holds its SIP port (bounded by LISTEN_TIMEOUT_S)."""
        if self.proc is not None:
            raise RuntimeError("already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = self.args()
        with (
            open(self._file("stdout"), "wb") as out,
            open(self._file("stderr"), "wb") as err,
        ):
            self.proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=str(self.workdir),
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LISTEN_TIMEOUT_S
        while loop.time() < deadline:
            if self.proc.returncode is not None or self._port_taken():
                return
            await asyncio.sleep(0.02)
        await self.stop()
        raise RuntimeError(f"{self.name} did not bind {self.ip}:{self.port}\n{self.read_stderr()}")

    def _port_taken(self) -> bool:
        kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((self.ip, self.port))
            except OSError as exc:
                return exc.errno == errno.EADDRINUSE
        return False

    def read_stderr(self) -> str:
        return _read(self._file("stderr"))

    async def wait(self, timeout: float) -> SippResult:
        """Wait for sipp to exit (killing it after ``timeout`` s) and collect its output."""
        if self.proc is None:
            raise RuntimeError("not started")
        timed_out = False
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            timed_out = True
            await self.stop()
        self.result = self._collect(timed_out)
        return self.result

    async def stop(self) -> None:
        """Terminate sipp if it still runs (SIGTERM, then SIGKILL after STOP_GRACE_S)."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    async def run(self, timeout: float | None = None) -> SippResult:
        """start() then wait(); ``timeout`` defaults to sipp's own timeout plus a margin."""
        await self.start()
        return await self.wait(timeout if timeout is not None else self.timeout_s + 5)

    def _collect(self, timed_out: bool) -> SippResult:
        assert self.proc is not None and self.proc.returncode is not None
        return SippResult(
            returncode=self.proc.returncode,
            stdout=_read(self._file("stdout")),
            stderr=self.read_stderr(),
            messages_text=_read(self._file("messages.log")),
            errors_text=_read(self._file("errors.log")),
            stats=_last_stats_row(self._file("stats.csv")),
            timed_out=timed_out,
        )


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _last_stats_row(path: Path) -> dict[str, str]:
    """The last row of sipp's ``;``-separated statistics file, keyed by column name."""
    text = _read(path)
    rows = [row for row in csv.reader(text.splitlines(), delimiter=";") if row]
    if len(rows) < 2:
        return {}
    header, last = rows[0], rows[-1]
    return {name: value for name, value in zip(header, last, strict=False) if name}
