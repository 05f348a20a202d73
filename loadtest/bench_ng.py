"""NG control-plane throughput: offer + answer + delete cycles per second through the NG
socket: our media layer in-process, our media layer in worker processes, and Sipwise
rtpengine driven by the same load tool, printed in one table with ratios against rtpengine.

Each cycle is what a SIP proxy does for one call: ``offer`` with a real Chromium WebRTC offer
(tests/vectors/sdp/chrome_offer.sdp) and the flags a Kamailio ``rtpengine_offer()`` for a
browser caller sends (transport-protocol RTP/AVP, ICE=remove, DTLS=off, rtcp-mux demux),
``answer`` with a plain switch answer (transport-protocol UDP/TLS/RTP/SAVPF, ICE=force),
``delete``. ``--concurrency`` clients run cycles back to back over one NgClient for
``--seconds`` per server; the media sessions are real (sockets bound, DTLS certificate
fingerprint in SDP) but carry no packets. Both servers take every flag above, so the SDPs and
flags are identical for all three runs.

rtpengine (Debian package ``rtpengine-daemon``, binary ``rtpengine``) runs in the foreground
as a child of this process, userspace only (``--table=-1``: no kernel module, no iptables),
no config file (``--config-file=none``), media on :data:`MEDIA_IP` in its own port range,
NG on a free 127.0.0.1 port, log level NOTICE to a file in a temporary directory, no pidfile,
``--delete-delay=0`` so ``delete`` frees the call at once as ours does (rtpengine's default
keeps a deleted call 30 s, which would exhaust the port range during the run). It is
stopped with SIGTERM, then SIGKILL. Without the binary, its row is left out.

    .venv/bin/python -m loadtest.bench_ng [--seconds 8] [--concurrency 16] [--workers 2]
                                          [--rtpengine PATH]

Reading the figures: the load tool is one Python process on the same host, so every server
shares the CPU with it, and the in-process mode shares even its event loop. "mean ms" is
one whole cycle (three requests) as a client sees it; rtpengine's own CPU time per cycle
is printed under the table.

Loopback only. Bounded: three runs of --seconds (capped at :data:`MAX_SECONDS`) plus
start-up and shutdown (each bounded); under 90 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.transport.ng import start_media_control  # noqa: E402
from gateway.transport.ng_client import NgClient, NgTimeout  # noqa: E402

MEDIA_IP = "127.0.0.2"
# Media ports above Linux's default ephemeral range (32768-60999) and outside the gateway's
# default media.port_range (40000-49999), so other processes on this host rarely hold one.
PORT_RANGE = (61000, 61999)
RTPENGINE_PORT_RANGE = (62000, 62999)
MAX_SECONDS = 20.0
RTPENGINE_START_TIMEOUT = 8.0
"""Seconds rtpengine has to answer ``ping`` after it is started."""
RTPENGINE_STOP_TIMEOUT = 5.0
"""Seconds rtpengine has to exit after SIGTERM before it gets SIGKILL."""
RTPENGINE_LOG_LEVEL = 5
"""NOTICE (syslog level): rtpengine's usual production level (one line per new call)."""

OFFER = (ROOT / "tests" / "vectors" / "sdp" / "chrome_offer.sdp").read_text()
ANSWER = (
    "v=0\r\no=- 7 1 IN IP4 127.0.0.3\r\ns=-\r\nc=IN IP4 127.0.0.3\r\nt=0 0\r\n"
    "m=audio 30000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)
OFFER_FLAGS: dict[str, object] = {
    "transport-protocol": "RTP/AVP",
    "ICE": "remove",
    "DTLS": "off",
    "rtcp-mux": ["demux"],
}
"""Browser caller toward the switch (Kamailio: ``RTP/AVP ICE=remove DTLS=off rtcp-mux-demux``)."""
ANSWER_FLAGS: dict[str, object] = {"transport-protocol": "UDP/TLS/RTP/SAVPF", "ICE": "force"}
"""The switch's plain answer going back to the browser."""


@dataclass(frozen=True)
class Result:
    """One server's figures."""

    cycles_per_second: float
    mean_ms: float
    p99_ms: float
    cycles: int
    server_cpu_s: float | None = None
    """CPU seconds the server process used during the run (rtpengine only)."""


async def _cycles(
    client: NgClient, worker: int, deadline: float, latencies: list[float], tag: str
) -> None:
    n = 0
    while time.monotonic() < deadline:
        call_id = f"bench-{tag}-{worker}-{n}"
        n += 1
        start = time.monotonic()
        offer = await client.request(
            {"command": "offer", "call-id": call_id, "from-tag": "a", "sdp": OFFER, **OFFER_FLAGS}
        )
        answer = await client.request(
            {
                "command": "answer",
                "call-id": call_id,
                "from-tag": "a",
                "to-tag": "b",
                "sdp": ANSWER,
                **ANSWER_FLAGS,
            }
        )
        delete = await client.request({"command": "delete", "call-id": call_id})
        for reply in (offer, answer, delete):
            if reply.get("result") != "ok":
                raise RuntimeError(f"{call_id}: {reply}")
        latencies.append(time.monotonic() - start)


async def _drive(client: NgClient, seconds: float, concurrency: int, tag: str) -> Result:
    """Run ``concurrency`` cycle loops for ``seconds`` against ``client``'s server."""
    latencies: list[float] = []
    start = time.monotonic()
    deadline = start + seconds
    await asyncio.gather(
        *(_cycles(client, i, deadline, latencies, tag) for i in range(concurrency))
    )
    elapsed = time.monotonic() - start
    total = len(latencies)
    latencies.sort()
    p99 = latencies[min(total - 1, int(total * 0.99))] if total else 0.0
    return Result(total / elapsed, 1000 * sum(latencies) / max(total, 1), 1000 * p99, total)


async def run_ours(workers: int, seconds: float, concurrency: int) -> Result:
    """Our NG server: in-process (``workers=0``) or over ``workers`` worker processes."""
    handle = await start_media_control(
        control=("127.0.0.1", 0),
        public_ip=MEDIA_IP,
        bind_ip=MEDIA_IP,
        port_range=PORT_RANGE,
        workers=workers,
    )
    client = await NgClient.connect(*handle.address)
    try:
        result = await _drive(client, seconds, concurrency, f"ours{workers}")
        stats = await client.request({"command": "statistics"})
        media = stats.get("media")
        if not isinstance(media, dict) or media.get("sessions") != 0:
            raise RuntimeError(f"sessions left behind: {stats}")
        return result
    finally:
        await client.close()
        await handle.close()


def _free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` from /proc (Linux), or None where that is not readable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after :data:`RTPENGINE_STOP_TIMEOUT`; always reaps the child."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), RTPENGINE_STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    await proc.wait()


async def _wait_ping(client: NgClient, proc: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + RTPENGINE_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"rtpengine exited ({proc.returncode}):\n{_log_tail(log)}")
        with contextlib.suppress(NgTimeout):
            reply = await client.request({"command": "ping"}, timeout=0.5)
            if reply.get("result") == "pong":
                return
    raise RuntimeError(f"rtpengine did not answer ping:\n{_log_tail(log)}")


async def run_rtpengine(binary: str, seconds: float, concurrency: int) -> Result:
    """Sipwise rtpengine, userspace only, driven with the same cycles as ours."""
    with tempfile.TemporaryDirectory(prefix="bench-rtpengine-") as tmp:
        log = Path(tmp) / "rtpengine.log"
        port = _free_udp_port("127.0.0.1")
        argv = [
            binary,
            "--config-file=none",
            "--foreground",
            "--log-stderr",
            f"--log-level={RTPENGINE_LOG_LEVEL}",
            "--table=-1",
            f"--interface={MEDIA_IP}",
            f"--listen-ng=127.0.0.1:{port}",
            f"--port-min={RTPENGINE_PORT_RANGE[0]}",
            f"--port-max={RTPENGINE_PORT_RANGE[1]}",
            "--delete-delay=0",
        ]
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, cwd=tmp
            )
        client: NgClient | None = None
        try:
            client = await NgClient.connect("127.0.0.1", port)
            await _wait_ping(client, proc, log)
            cpu_before = _cpu_seconds(proc.pid)
            result = await _drive(client, seconds, concurrency, "rtpengine")
            cpu_after = _cpu_seconds(proc.pid)
            if cpu_before is not None and cpu_after is not None:
                result = replace(result, server_cpu_s=cpu_after - cpu_before)
            stats = await client.request({"command": "statistics"})
            current = stats.get("statistics")
            current = current.get("currentstatistics") if isinstance(current, dict) else None
            if not isinstance(current, dict) or current.get("sessionstotal") != 0:
                raise RuntimeError(f"rtpengine sessions left behind: {current}")
            return result
        except BaseException:
            print(f"rtpengine log tail:\n{_log_tail(log)}", file=sys.stderr)
            raise
        finally:
            if client is not None:
                await client.close()
            await _stop(proc)


def _ratio(value: float, base: Result | None, attr: str) -> str:
    if base is None or getattr(base, attr) == 0:
        return "-"
    return f"{value / getattr(base, attr):.2f}"


def print_table(rows: list[tuple[str, Result]], base: Result | None) -> None:
    """One line per server; ratios are against ``base`` (rtpengine)."""
    head = (
        f"{'':22}{'cycles':>8}{'cycles/s':>10}{'mean ms':>9}{'p99 ms':>8}"
        f"{'cps/rtpe':>10}{'ms/rtpe':>9}"
    )
    print(head)
    for name, r in rows:
        print(
            f"{name:22}{r.cycles:8d}{r.cycles_per_second:10.0f}{r.mean_ms:9.2f}{r.p99_ms:8.2f}"
            f"{_ratio(r.cycles_per_second, base, 'cycles_per_second'):>10}"
            f"{_ratio(r.mean_ms, base, 'mean_ms'):>9}"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rtpengine", default="rtpengine", help="rtpengine binary")
    args = parser.parse_args()
    seconds = min(args.seconds, MAX_SECONDS)
    rows = [
        ("ours in-process", await run_ours(0, seconds, args.concurrency)),
        (f"ours {args.workers} workers", await run_ours(args.workers, seconds, args.concurrency)),
    ]
    binary = shutil.which(args.rtpengine)
    base: Result | None = None
    if binary is None:
        print(f"{args.rtpengine} not found (Debian: rtpengine-daemon); its row is left out")
    else:
        base = await run_rtpengine(binary, seconds, args.concurrency)
        rows.append(("rtpengine (userspace)", base))
    print(
        f"NG offer+answer+delete cycles, {args.concurrency} in flight, {seconds:.0f} s each, "
        "loopback; ratios against rtpengine"
    )
    print_table(rows, base)
    if base is not None and base.server_cpu_s is not None:
        print(
            f"rtpengine used {base.server_cpu_s:.1f} CPU s in {seconds:.0f} s "
            f"({1000 * base.server_cpu_s / max(base.cycles, 1):.2f} ms CPU per cycle; "
            f"{os.cpu_count()} cores here, shared with the load tool)"
        )


if __name__ == "__main__":
    asyncio.run(main())
