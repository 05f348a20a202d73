"""NG control-plane throughput: offer + answer + delete cycles per second through the NG
socket, media in-process beside media in worker processes, printed side by side.

Each cycle is what a SIP proxy does for one call: ``offer`` with a real Chromium WebRTC offer
(tests/vectors/sdp/chrome_offer.sdp, transport-protocol RTP/AVP), ``answer`` with a plain
switch answer, ``delete``. ``--concurrency`` clients run cycles back to back over one
NgClient for ``--seconds`` per mode; the media sessions are real (sockets bound, DTLS
certificate fingerprint in SDP) but carry no packets.

    .venv/bin/python -m loadtest.bench_ng [--seconds 8] [--concurrency 16] [--workers 2]

Bounded: two runs of --seconds (capped at 25 s each) plus start-up; under 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.transport.ng import start_media_control  # noqa: E402
from gateway.transport.ng_client import NgClient  # noqa: E402

MEDIA_IP = "127.0.0.2"
PORT_RANGE = (48000, 48999)
MAX_SECONDS = 25.0
OFFER = (ROOT / "tests" / "vectors" / "sdp" / "chrome_offer.sdp").read_text()
ANSWER = (
    "v=0\r\no=- 7 1 IN IP4 127.0.0.3\r\ns=-\r\nc=IN IP4 127.0.0.3\r\nt=0 0\r\n"
    "m=audio 30000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)


async def _cycles(client: NgClient, worker: int, deadline: float, counts: list[int]) -> None:
    n = 0
    while time.monotonic() < deadline:
        call_id = f"bench-{worker}-{n}"
        n += 1
        offer = await client.request(
            {
                "command": "offer",
                "call-id": call_id,
                "from-tag": "a",
                "sdp": OFFER,
                "transport-protocol": "RTP/AVP",
                "ICE": "remove",
            }
        )
        answer = await client.request(
            {
                "command": "answer",
                "call-id": call_id,
                "from-tag": "a",
                "to-tag": "b",
                "sdp": ANSWER,
                "transport-protocol": "UDP/TLS/RTP/SAVPF",
                "ICE": "force",
            }
        )
        delete = await client.request({"command": "delete", "call-id": call_id})
        for reply in (offer, answer, delete):
            if reply.get("result") != "ok":
                raise RuntimeError(f"{call_id}: {reply}")
        counts[worker] += 1


async def run_mode(workers: int, seconds: float, concurrency: int) -> tuple[float, float]:
    """(cycles per second, mean ms per cycle) for one mode."""
    handle = await start_media_control(
        control=("127.0.0.1", 0),
        public_ip=MEDIA_IP,
        bind_ip=MEDIA_IP,
        port_range=PORT_RANGE,
        workers=workers,
    )
    client = await NgClient.connect(*handle.address)
    try:
        counts = [0] * concurrency
        start = time.monotonic()
        deadline = start + seconds
        await asyncio.gather(*(_cycles(client, i, deadline, counts) for i in range(concurrency)))
        elapsed = time.monotonic() - start
        total = sum(counts)
        stats = await client.request({"command": "statistics"})
        media = stats.get("media")
        if not isinstance(media, dict) or media.get("sessions") != 0:
            raise RuntimeError(f"sessions left behind: {stats}")
        return total / elapsed, 1000 * elapsed * concurrency / max(total, 1)
    finally:
        await client.close()
        await handle.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    seconds = min(args.seconds, MAX_SECONDS)
    in_process = await run_mode(0, seconds, args.concurrency)
    pooled = await run_mode(args.workers, seconds, args.concurrency)
    print(f"NG offer+answer+delete cycles, {args.concurrency} in flight, {seconds:.0f} s each")
    print(f"{'':24}{'in-process':>14}{f'{args.workers} workers':>14}{'ratio':>8}")
    print(f"{'cycles/s':24}{in_process[0]:14.0f}{pooled[0]:14.0f}{pooled[0] / in_process[0]:8.2f}")
    print(
        f"{'ms per cycle (latency)':24}{in_process[1]:14.1f}{pooled[1]:14.1f}"
        f"{pooled[1] / in_process[1]:8.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
