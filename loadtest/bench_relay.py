"""Passthrough relay cost: µs of relay-process CPU per packet, SRTP->RTP and RTP->SRTP,
beside a bare uvloop UDP echo hop measured the same way.

A relay process runs the real engine (gateway.transport.media.MediaEngine on uvloop) with one
session. This process plays both ends over loopback: it performs the real ICE check and DTLS
handshake against the session (aioice STUN, a DtlsEndpoint client), then blasts --count
pre-protected SRTP packets at --rate packets/s at the WebRTC port (and, in the second run,
plain RTP at the RTP port) while a thread counts what comes out. The relay reports the CPU
time (time.process_time) it spent during the blast; µs per packet = CPU / packets relayed.
The same is done with a bare uvloop DatagramProtocol that forwards every datagram to a fixed
address (the floor: one loop wake-up, one recvfrom, one sendto).

Implied passthrough calls per core: a call is 50 packets/s each way through one hop each, so
calls = 1e6 / (50 * (µs SRTP->RTP + µs RTP->SRTP)). Target >= 600.

    .venv/bin/python -m loadtest.bench_relay [--rate 20000] [--count 60000]

Bounded: each run stops after its packets plus a one-second drain; about 15-20 s in all.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import multiprocessing as mp
import socket
import struct
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aioice import stun  # noqa: E402

from gateway.media.dtls import DtlsCertificate, DtlsEndpoint, DtlsState  # noqa: E402
from gateway.media.srtp import SrtpPair  # noqa: E402

RELAY_IP = "127.0.0.2"
BROWSER_IP = "127.0.0.1"
SWITCH_IP = "127.0.0.3"
PORT_RANGE = (47000, 47099)
PAYLOAD = b"\xd5" * 160  # 20 ms of PCMU
PACKETS_PER_CALL = 50  # each way, 20 ms ptime
TARGET_CALLS = 600
DRAIN_SECONDS = 1.0
HARD_LIMIT_SECONDS = 50.0


# --------------------------------------------------------------------------- relay process


def _relay_engine(conn: Connection) -> None:
    import uvloop

    from gateway.transport.media import MediaEngine

    async def main() -> None:
        engine = MediaEngine(public_ip=RELAY_IP, bind_ip=RELAY_IP, port_range=PORT_RANGE)
        await engine.start()
        session = engine.create_session("bench")
        conn.send(
            {
                "webrtc": session.webrtc.local_port,
                "rtp": session.rtp.local_port,
                "ufrag": session.webrtc.ice_ufrag,
                "pwd": session.webrtc.ice_pwd,
                "fingerprint": engine.certificate.fingerprint_value,
            }
        )
        remote = conn.recv()
        session.set_webrtc_remote(
            ice_ufrag=remote["ufrag"],
            ice_pwd="unused-by-ice-lite-xxxxx",
            fingerprint=("sha-256", remote["fingerprint"]),
            setup="actpass",
            candidates=[],
        )
        session.set_rtp_remote(address=SWITCH_IP, port=remote["switch_port"], rtcp_port=None)
        loop = asyncio.get_running_loop()
        while True:
            cmd = await loop.run_in_executor(None, conn.recv)
            if cmd == "start":
                cpu0 = time.process_time()
                w0, r0 = session.bridge.w.rx_packets, session.bridge.r.rx_packets
            elif cmd == "stop":
                cpu = time.process_time() - cpu0
                conn.send(
                    {
                        "cpu": cpu,
                        "relayed": (session.bridge.w.rx_packets - w0)
                        + (session.bridge.r.rx_packets - r0),
                        "stats": session.stats,
                    }
                )
            elif cmd == "quit":
                break
        await engine.close()

    uvloop.run(main())


def _relay_echo(conn: Connection) -> None:
    import uvloop

    class Echo(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.count = 0
            self.dest: tuple[str, int] = ("127.0.0.1", 9)
            self.transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.count += 1
            self.transport.sendto(data, self.dest)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, echo = await loop.create_datagram_endpoint(Echo, local_addr=(RELAY_IP, 0))
        conn.send({"port": transport.get_extra_info("sockname")[1]})
        echo.dest = conn.recv()
        while True:
            cmd = await loop.run_in_executor(None, conn.recv)
            if cmd == "start":
                cpu0, n0 = time.process_time(), echo.count
            elif cmd == "stop":
                conn.send({"cpu": time.process_time() - cpu0, "relayed": echo.count - n0})
            elif cmd == "quit":
                break
        transport.close()

    uvloop.run(main())


# --------------------------------------------------------------------------- ends


def _udp(ip: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.bind((ip, 0))
    return s


class Counter(threading.Thread):
    """Counts datagrams arriving on a socket until stopped (bounded by a recv timeout)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.count = 0
        self.sample: bytes = b""
        self.running = True

    def run(self) -> None:
        self.sock.settimeout(0.2)
        while self.running:
            try:
                data = self.sock.recv(2048)
            except TimeoutError:
                continue
            if not 192 <= data[1] <= 223:
                self.count += 1
                self.sample = data


def _handshake(browser: socket.socket, info: dict[str, Any], cert: DtlsCertificate) -> SrtpPair:
    relay = (RELAY_IP, info["webrtc"])
    check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    check.attributes["USERNAME"] = f"{info['ufrag']}:bnch"
    check.attributes["ICE-CONTROLLING"] = 1
    check.attributes["USE-CANDIDATE"] = None
    check.add_message_integrity(info["pwd"].encode())
    browser.settimeout(2.0)
    browser.sendto(bytes(check), relay)
    response = stun.parse_message(browser.recv(2048))
    if response.message_class != stun.Class.RESPONSE:
        raise SystemExit(f"ICE check refused: {response}")
    dtls = DtlsEndpoint(cert, is_server=False, remote_fingerprint=("sha-256", info["fingerprint"]))
    dtls.start(time.monotonic())
    deadline = time.monotonic() + 10
    while dtls.state is DtlsState.CONNECTING and time.monotonic() < deadline:
        for datagram in dtls.datagrams_to_send():
            browser.sendto(datagram, relay)
        try:
            data = browser.recv(4096)
        except TimeoutError:
            dtls.handle_timer(time.monotonic())
            continue
        dtls.receive_datagram(data, time.monotonic())
    for datagram in dtls.datagrams_to_send():
        browser.sendto(datagram, relay)
    if dtls.state is not DtlsState.CONNECTED or dtls.keys is None:
        raise SystemExit(f"DTLS handshake failed: {dtls.state} {dtls.failure}")
    return SrtpPair(dtls.keys)


def _blast(sock: socket.socket, dest: tuple[str, int], packets: list[bytes], rate: int) -> float:
    """Send at ``rate`` packets/s in 1 ms bursts; returns the seconds it took."""
    per_ms = max(1, rate // 1000)
    start = time.perf_counter()
    sendto = sock.sendto
    for i in range(0, len(packets), per_ms):
        for p in packets[i : i + per_ms]:
            sendto(p, dest)
        ahead = start + (i + per_ms) / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
        if time.perf_counter() - start > HARD_LIMIT_SECONDS:
            break
    return time.perf_counter() - start


def _measure(
    conn: Connection,
    send_sock: socket.socket,
    dest: tuple[str, int],
    packets: list[bytes],
    counter: Counter,
    rate: int,
) -> dict[str, Any]:
    before = counter.count
    conn.send("start")
    time.sleep(0.05)
    seconds = _blast(send_sock, dest, packets, rate)
    time.sleep(DRAIN_SECONDS)
    conn.send("stop")
    result: dict[str, Any] = conn.recv()
    result["delivered"] = counter.count - before
    result["sent"] = len(packets)
    result["seconds"] = seconds
    result["us_per_packet"] = 1e6 * result["cpu"] / max(1, result["relayed"])
    return result


def _rtp(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc) + PAYLOAD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=20000, help="packets/s offered")
    parser.add_argument("--count", type=int, default=60000, help="packets per run")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    now = datetime.datetime.now(tz=datetime.UTC)
    cert = DtlsCertificate.generate(now)

    # ---- the engine
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=_relay_engine, args=(child,), daemon=True)
    proc.start()
    info = conn.recv()
    browser, switch = _udp(BROWSER_IP), _udp(SWITCH_IP)
    conn.send(
        {
            "ufrag": "bnch",
            "fingerprint": cert.fingerprint_value,
            "switch_port": switch.getsockname()[1],
        }
    )
    srtp = _handshake(browser, info, cert)
    srtp_packets = [srtp.protect(_rtp(i, 0x0B0B)) for i in range(args.count)]
    rtp_packets = [_rtp(i, 0x0A0A) for i in range(args.count)]
    to_switch, to_browser = Counter(switch), Counter(browser)
    browser.settimeout(None)
    to_switch.start()
    to_browser.start()
    # Latch the RTP leg first so the gateway knows where the switch is.
    switch.sendto(_rtp(0, 0x0A0A), (RELAY_IP, info["rtp"]))
    time.sleep(0.2)
    up = _measure(conn, browser, (RELAY_IP, info["webrtc"]), srtp_packets, to_switch, args.rate)
    down = _measure(conn, switch, (RELAY_IP, info["rtp"]), rtp_packets, to_browser, args.rate)
    srtp.unprotect(to_browser.sample)  # what reached the "browser" authenticates
    conn.send("quit")
    proc.join(5)
    stats = down["stats"]

    # ---- the floor: bare uvloop echo hop
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=_relay_echo, args=(child,), daemon=True)
    proc.start()
    echo_info = conn.recv()
    sink = _udp(SWITCH_IP)
    conn.send(sink.getsockname())
    sink_counter = Counter(sink)
    sink_counter.start()
    echo = _measure(
        conn, browser, (RELAY_IP, echo_info["port"]), rtp_packets, sink_counter, args.rate
    )
    conn.send("quit")
    proc.join(5)
    for c in (to_switch, to_browser, sink_counter):
        c.running = False

    floor = echo["us_per_packet"]
    print(f"offered {args.rate} packets/s, {args.count} packets per run, relay on one core")
    print(f"{'path':<26}{'µs/packet':>10}{'packets/s':>12}{'× echo':>8}{'delivered':>11}")
    for name, r in (
        ("SRTP -> RTP (engine)", up),
        ("RTP -> SRTP (engine)", down),
        ("uvloop echo hop", echo),
    ):
        us = r["us_per_packet"]
        print(
            f"{name:<26}{us:>10.2f}{1e6 / us:>12.0f}{us / floor:>8.2f}"
            f"{r['delivered']:>6}/{r['sent']}"
        )
    calls = 1e6 / (PACKETS_PER_CALL * (up["us_per_packet"] + down["us_per_packet"]))
    floor_calls = 1e6 / (PACKETS_PER_CALL * 2 * floor)
    print(
        f"implied passthrough calls per core: {calls:.0f} "
        f"(echo-hop ceiling {floor_calls:.0f}, target {TARGET_CALLS}: "
        f"{'met' if calls >= TARGET_CALLS else 'NOT met'})"
    )
    webrtc = stats["webrtc"]
    print(
        f"engine counters: srtp_profile={webrtc['srtp_profile']} "
        f"auth_failures={webrtc['srtp_auth_failures']} send_errors={stats['send_errors']}"
    )


if __name__ == "__main__":
    main()
