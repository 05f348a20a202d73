"""Media worker process: one MediaEngine and its NG socket on loopback.

Started by :class:`gateway.transport.ng.WorkerPool` as ``python -m gateway.media_worker``
with its slice of the port range and the codec policy (``--codecs``). It binds its NG socket on 127.0.0.1 (an ephemeral port),
prints ``READY <port>`` on stdout, and serves until its stdin reaches end of file (the
parent closed the pipe, or died: no orphaned workers), SIGTERM or SIGINT. Then it ends
every call, closes its sockets and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from gateway.transport.media import MediaEngine
from gateway.transport.ng import local_handler, policy_from_json, serve_ng

__all__ = ["main", "run"]

log = logging.getLogger("gateway.media_worker")


def _ports(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway.media_worker")
    parser.add_argument("--index", type=int, default=0, help="worker number, for logs")
    parser.add_argument("--public-ip", required=True, help="address advertised in SDP")
    parser.add_argument("--bind-ip", required=True, help="address media sockets bind to")
    parser.add_argument("--ports", type=_ports, required=True, help="LOW-HIGH port slice")
    parser.add_argument("--timeout", type=float, default=60.0, help="media timeout, seconds")
    parser.add_argument("--control-host", default="127.0.0.1", help="NG socket address")
    parser.add_argument(
        "--codecs",
        type=policy_from_json,
        default=None,
        help="codec policy as JSON (gateway.transport.ng.policy_to_json); none: passthrough only",
    )
    return parser


async def run(args: argparse.Namespace) -> None:
    """Serve until stdin closes or a signal arrives."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    engine = MediaEngine(
        public_ip=args.public_ip, bind_ip=args.bind_ip, port_range=args.ports, timeout=args.timeout
    )
    await engine.start()
    commands, backend, handler = await local_handler(engine, codecs=args.codecs)
    server = await serve_ng(handler, args.control_host, 0, name=f"worker-{args.index}")

    def stdin_readable() -> None:
        # Anything but EOF is ignored; EOF means the parent is gone or wants us to stop.
        try:
            data = os.read(sys.stdin.fileno(), 4096)
        except OSError:
            data = b""
        if not data:
            stop.set()

    loop.add_reader(sys.stdin.fileno(), stdin_readable)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(f"READY {server.address[1]}\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        loop.remove_reader(sys.stdin.fileno())
        await server.close()
        commands.close(time.time())
        await backend.flush()
        await engine.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format=f"media-worker-{args.index} %(levelname)s %(message)s"
    )
    # One line per call's codec mode ("passthrough PCMU" / "transcode opus<->PCMU").
    logging.getLogger("gateway.ng").setLevel(logging.INFO)
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
