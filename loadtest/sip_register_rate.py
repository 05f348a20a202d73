"""REGISTER throughput: through the gateway (WebSocket -> gateway -> Kamailio)
beside the same client talking UDP straight to Kamailio, in one run.

Each of N concurrent clients registers a load user (REGISTER, 401 challenge,
REGISTER with digest credentials, 200) over and over for a fixed time or a
fixed count, whichever ends first. Printed: completed registrations per second
(two SIP transactions each), latency percentiles, and the ratio of the
gateway path to the direct path. Everything runs on loopback and stops by
itself.

    .venv/bin/python -m loadtest.sip_register_rate [--clients 20] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import websockets  # noqa: E402

from gateway.sip.message import Response, parse  # noqa: E402
from tests.helpers.gateway import GatewayProcess  # noqa: E402
from tests.helpers.kamailio import Kamailio  # noqa: E402

REALM = "example.test"
PASSWORD = "loadpw"
MAX_REGISTRATIONS = 200_000


def _digest(user: str, method: str, uri: str, challenge: str) -> str:
    params: dict[str, str] = {}
    for part in challenge.split(" ", 1)[1].split(","):
        if "=" in part:
            k, v = part.strip().split("=", 1)
            params[k.lower()] = v.strip('"')
    ha1 = hashlib.md5(f"{user}:{params['realm']}:{PASSWORD}".encode()).hexdigest()
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
    nonce = params["nonce"]
    if "qop" in params:
        cnonce = secrets.token_hex(4)
        resp = hashlib.md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}".encode()).hexdigest()
        return (
            f'Digest username="{user}", realm="{params["realm"]}", nonce="{nonce}", uri="{uri}", '
            f'response="{resp}", algorithm=MD5, qop=auth, nc=00000001, cnonce="{cnonce}"'
        )
    resp = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
    return (
        f'Digest username="{user}", realm="{params["realm"]}", nonce="{nonce}", uri="{uri}", '
        f'response="{resp}", algorithm=MD5'
    )


def _register(user: str, via: str, contact: str, call_id: str, cseq: int, auth: str) -> bytes:
    branch = "z9hG4bK" + secrets.token_hex(8)
    lines = [
        f"REGISTER sip:{REALM} SIP/2.0",
        f"Via: {via};branch={branch}",
        "Max-Forwards: 70",
        f"To: <sip:{user}@{REALM}>",
        f"From: <sip:{user}@{REALM}>;tag={call_id[:8]}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: {contact};expires=600",
        "Expires: 600",
        "Supported: path",
    ]
    if auth:
        lines.append(f"Authorization: {auth}")
    lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


async def _client(
    index: int,
    send: Callable[[bytes], Awaitable[None]],
    recv: Callable[[], Awaitable[bytes]],
    via: str,
    contact_host: str,
    stop_at: float,
    budget: list[int],
    latencies: list[float],
) -> int:
    user = f"load{index:04d}"
    call_id = secrets.token_hex(10)
    contact = f"<sip:{user}@{contact_host}>"
    cseq = 0
    done = 0
    loop = asyncio.get_running_loop()
    while loop.time() < stop_at and budget[0] > 0:
        budget[0] -= 1
        start = time.perf_counter()
        cseq += 1
        await send(_register(user, via, contact, call_id, cseq, ""))
        resp = await _response(recv, cseq)
        if resp.status == 401:
            challenge = resp.headers.get("WWW-Authenticate") or ""
            cseq += 1
            auth = _digest(user, "REGISTER", f"sip:{REALM}", challenge)
            await send(_register(user, via, contact, call_id, cseq, auth))
            resp = await _response(recv, cseq)
        if resp.status != 200:
            raise RuntimeError(f"{user}: REGISTER got {resp.status} {resp.reason}")
        latencies.append(time.perf_counter() - start)
        done += 1
    return done


async def _response(recv: Callable[[], Awaitable[bytes]], cseq: int) -> Response:
    while True:
        msg = parse(await asyncio.wait_for(recv(), 10))
        if isinstance(msg, Response) and msg.cseq[0] == cseq and msg.status >= 200:
            return msg


async def run_via_gateway(
    gw: GatewayProcess, clients: int, seconds: float
) -> tuple[int, float, list[float]]:
    conns = [
        await websockets.connect(gw.ws_url, subprotocols=["sip"])  # type: ignore[list-item]
        for _ in range(clients)
    ]
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    budget = [MAX_REGISTRATIONS]
    start = loop.time()

    def receiver(c: websockets.ClientConnection) -> Callable[[], Awaitable[bytes]]:
        async def recv() -> bytes:
            data = await c.recv()
            return data.encode() if isinstance(data, str) else data

        return recv

    try:
        counts = await asyncio.gather(
            *(
                _client(
                    i,
                    c.send,
                    receiver(c),
                    f"SIP/2.0/WS {secrets.token_hex(6)}.invalid",
                    f"{secrets.token_hex(4)}.invalid;transport=ws",
                    start + seconds,
                    budget,
                    latencies,
                )
                for i, c in enumerate(conns)
            )
        )
    finally:
        for c in conns:
            await c.close()
    return sum(counts), loop.time() - start, latencies


class _Udp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.queue.put_nowait(data)


async def run_direct(kam: Kamailio, clients: int, seconds: float) -> tuple[int, float, list[float]]:
    loop = asyncio.get_running_loop()
    endpoints = []
    for _ in range(clients):
        transport, proto = await loop.create_datagram_endpoint(
            _Udp, local_addr=("127.0.0.3", 0), remote_addr=("127.0.0.1", kam.udp_port)
        )
        endpoints.append((transport, proto))
    latencies: list[float] = []
    budget = [MAX_REGISTRATIONS]
    start = loop.time()

    def sender(t: asyncio.DatagramTransport) -> Callable[[bytes], Awaitable[None]]:
        async def send(data: bytes) -> None:
            t.sendto(data)

        return send

    try:
        counts = await asyncio.gather(
            *(
                _client(
                    i + 500,
                    sender(t),
                    p.queue.get,
                    f"SIP/2.0/UDP 127.0.0.3:{t.get_extra_info('sockname')[1]};rport",
                    f"127.0.0.3:{t.get_extra_info('sockname')[1]}",
                    start + seconds,
                    budget,
                    latencies,
                )
                for i, (t, p) in enumerate(endpoints)
            )
        )
    finally:
        for t, _ in endpoints:
            t.close()
    return sum(counts), loop.time() - start, latencies


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        kam = Kamailio()
        kam.start(Path(tmp) / "kamailio")
        gw = GatewayProcess(
            Path(tmp),
            upstream=kam.uri("udp"),
            extra={
                "log": {"level": "warning", "sip_trace": False},
                "security": {
                    "max_requests_per_second_per_ip": 100000.0,
                    "max_connections_per_ip": 10000,
                },
            },
        )
        try:
            await gw.start()
            # warm up both paths
            await run_direct(kam, 2, 0.5)
            await run_via_gateway(gw, 2, 0.5)
            d_n, d_t, d_lat = await run_direct(kam, args.clients, args.seconds)
            g_n, g_t, g_lat = await run_via_gateway(gw, args.clients, args.seconds)
        finally:
            await gw.stop()
            kam.stop()
    d_rate, g_rate = d_n / d_t, g_n / g_t
    print(
        f"REGISTER with digest auth, {args.clients} concurrent clients, {args.seconds:.0f} s each, loopback, 2-core machine"
    )
    print(f"{'path':<34}{'reg/s':>10}{'SIP tx/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    print(
        f"{'client -> Kamailio (UDP)':<34}{d_rate:>10.0f}{2 * d_rate:>10.0f}{_pct(d_lat, 0.5):>9.2f}{_pct(d_lat, 0.99):>9.2f}"
    )
    print(
        f"{'client -> gateway (WS) -> Kamailio':<34}{g_rate:>10.0f}{2 * g_rate:>10.0f}{_pct(g_lat, 0.5):>9.2f}{_pct(g_lat, 0.99):>9.2f}"
    )
    print(
        f"ratio gateway/direct: {g_rate / d_rate:.2f}  (mean latency {statistics.mean(g_lat) * 1000:.2f} ms vs {statistics.mean(d_lat) * 1000:.2f} ms)"
    )


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
