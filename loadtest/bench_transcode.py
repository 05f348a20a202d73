"""Per-packet transcoding cost: µs per 20 ms RTP packet through RtpTranscoder.transcode for
each path, beside the bare codec work (decode + encode of the same payloads, the floor).

Inputs are what the far end would send: Opus encoded at 48 kHz as a browser does, G.711 and
G.729 at 8 kHz, from a speech-like signal (loadtest/bench_codecs.py), as consecutive RTP
packets. The transcoder decodes Opus at 8 kHz and encodes Opus from 8 kHz PCM (DESIGN
"Media"). Each figure is the best of --repeat runs of --packets packets, timed with
time.perf_counter (other processes on a shared machine only ever add time). The ratio column is the gateway's overhead over the codec floor (header
parsing, sequence tracking, re-packetisation, RTP header writing).

Implied calls per core: a call transcodes both ways, so its cost per 20 ms is
(a -> b) + (b -> a); one core has 20 000 µs per 20 ms. That figure is codec and transcoder
work only; the relay hop and SRTP (measured by loadtest/bench_relay.py) come on top, and the
"with relay" column adds DESIGN.md's figures for them (a bare hop plus SRTP, 42 µs per
call), or, given ``--relay-us``, the engine's own per-call relay cost as bench_relay.py
measured it (µs SRTP->RTP + µs RTP->SRTP: the real event loop, demux and SRTP).

    .venv/bin/python -m loadtest.bench_transcode [--packets 500] [--repeat 10] [--relay-us 55]

Bounded: about 15 s with the defaults; repeats stop after --budget seconds (default 40).
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.media.codecs import available_codecs, get_decoder, get_encoder  # noqa: E402
from gateway.media.transcode import CLOCK_RATES, PCM_RATE, make_transcoder  # noqa: E402
from loadtest.bench_codecs import speech_like  # noqa: E402

FRAME_MS = 20
FRAME_BUDGET_US = FRAME_MS * 1000
"""One core has 20 000 µs of CPU per 20 ms packet interval."""
SIGNAL_SECONDS = 4
RELAY_US_PER_PACKET = 8.0 + 2.5
"""DESIGN.md "Media": a uvloop UDP relay hop (~8 µs) plus SRTP protect or unprotect (2-3 µs)
per packet, one of each per direction."""
TARGETS = {"PCMU": 130, "G729": 70}
"""Transcoded calls per core the task sets (Opus complexity 5)."""
PT = {"opus": 111, "PCMU": 0, "PCMA": 8, "G729": 18}
PATHS = [("opus", "PCMU"), ("PCMU", "opus"), ("opus", "G729"), ("G729", "opus"), ("PCMU", "PCMA")]
_RTP = struct.Struct("!BBHII")


def sender_payloads(codec: str, count: int) -> list[bytes]:
    """``count`` payloads as the far end sends them (a browser encodes Opus at 48 kHz)."""
    rate = 48000 if codec == "opus" else PCM_RATE
    pcm = speech_like(rate, SIGNAL_SECONDS).tobytes()
    step = rate * FRAME_MS // 1000 * 2
    frames = [pcm[i : i + step] for i in range(0, len(pcm) - step + 1, step)]
    enc = get_encoder(codec, pcm_rate=rate) if codec == "opus" else get_encoder(codec)
    distinct = [enc.encode(f) for f in frames]
    return [distinct[i % len(distinct)] for i in range(count)]


def rtp_stream(codec: str, payloads: list[bytes]) -> list[bytes]:
    step = CLOCK_RATES[codec] * FRAME_MS // 1000
    return [
        _RTP.pack(0x80, PT[codec], i & 0xFFFF, (i * step) & 0xFFFFFFFF, 0x1234) + p
        for i, p in enumerate(payloads)
    ]


def per_item_us(fn: Callable[[bytes], object], items: list[bytes]) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / len(items) * 1e6


class Bench:
    def __init__(self, packets: int, repeat: int, budget: float) -> None:
        self.packets = packets
        self.repeat = repeat
        self.deadline = time.perf_counter() + budget
        self.rows: list[tuple[str, int, float, float]] = []
        self.cost: dict[tuple[str, str, int], float] = {}

    def path(self, a: str, b: str, complexity: int) -> None:
        payloads = sender_payloads(a, self.packets)
        packets = rtp_stream(a, payloads)
        runs: list[float] = []
        floors: list[float] = []
        for _ in range(self.repeat):
            # Fresh objects per run: the stream's sequence numbers start over.
            t = make_transcoder(a, b, in_pt=PT[a], out_pt=PT[b], opus_complexity=complexity)
            transcode = t.transcode

            def through_transcoder(packet: bytes) -> object:
                return transcode(packet, 0.0)  # noqa: B023 - called before the next iteration

            runs.append(per_item_us(through_transcoder, packets))
            if t.packets_out != self.packets or t.concealed_packets or t.drop_decode:
                raise SystemExit(f"{a}->{b}: unexpected drops or concealment: {t.stats()}")
            dec = get_decoder(a, pcm_rate=PCM_RATE) if a == "opus" else get_decoder(a)
            enc_opts = {"pcm_rate": PCM_RATE, "complexity": complexity} if b == "opus" else {}
            encode, decode = get_encoder(b, **enc_opts).encode, dec.decode

            def codec_only(payload: bytes) -> object:
                return encode(decode(payload))  # noqa: B023 - called before the next iteration

            floors.append(per_item_us(codec_only, payloads))
            if time.perf_counter() > self.deadline:
                break
        # Best of the runs: other processes on the machine only ever add time.
        us, floor = min(runs), min(floors)
        self.rows.append((f"{a} -> {b}", complexity, us, floor))
        self.cost[(a, b, complexity)] = us


def run(packets: int, repeat: int, budget: float) -> Bench:
    bench = Bench(packets, repeat, budget)
    have_g729 = available_codecs()["G729"] is None
    for complexity in (5, 0):
        for a, b in PATHS:
            if "G729" in (a, b) and not have_g729:
                continue
            if "opus" not in (a, b) and complexity != 5:
                continue  # no Opus: complexity does not apply
            bench.path(a, b, complexity)
    return bench


def report(bench: Bench, relay_us: float | None = None) -> bool:
    print(f"µs per {FRAME_MS} ms packet, best of {bench.repeat} runs of {bench.packets} packets")
    print(f"{'path':<16} {'opus cx':>7} {'transcode':>10} {'codec floor':>12} {'ratio':>7}")
    for label, complexity, us, floor in bench.rows:
        cx = str(complexity) if "opus" in label else "-"
        print(f"{label:<16} {cx:>7} {us:10.2f} {floor:12.2f} {us / floor:7.2f}")
    print()
    print("Implied transcoded calls per core (both directions per 20 ms):")
    print(
        f"{'call':<16} {'opus cx':>7} {'µs/call':>9} {'calls':>7} {'with relay':>11} {'target':>7}"
    )
    ok = True
    for other in ("PCMU", "G729"):
        for complexity in (5, 0):
            key_a, key_b = ("opus", other, complexity), (other, "opus", complexity)
            if key_a not in bench.cost or key_b not in bench.cost:
                continue
            cost = bench.cost[key_a] + bench.cost[key_b]
            calls = FRAME_BUDGET_US / cost
            on_top = 2 * 2 * RELAY_US_PER_PACKET if relay_us is None else relay_us
            relay = FRAME_BUDGET_US / (cost + on_top)
            target = TARGETS[other]
            verdict = ""
            if complexity == 5:
                passed = calls >= target
                ok = ok and passed
                verdict = f"{target:>5} {'ok' if passed else 'MISSED'}"
            print(
                f"opus <-> {other:<7} {complexity:>7} {cost:9.1f} {calls:7.0f} {relay:11.0f} "
                f"{verdict}"
            )
    if relay_us is None:
        print(f"(with relay: DESIGN.md's {2 * 2 * RELAY_US_PER_PACKET:.0f} µs per call)")
    else:
        print(f"(with relay: {relay_us:.1f} µs per call, measured by bench_relay.py)")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=500, help="packets per run")
    parser.add_argument("--repeat", type=int, default=10, help="runs per figure (best)")
    parser.add_argument("--budget", type=float, default=40.0, help="stop repeating after s")
    parser.add_argument(
        "--relay-us",
        type=float,
        default=None,
        help="per-call relay cost from bench_relay.py (SRTP->RTP + RTP->SRTP µs)",
    )
    args = parser.parse_args()
    start = time.perf_counter()
    ok = report(run(args.packets, args.repeat, args.budget), args.relay_us)
    print(f"\n(total {time.perf_counter() - start:.1f} s)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
