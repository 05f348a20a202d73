"""Per-packet codec cost: µs per 20 ms frame for each encode and decode through
gateway.media.codecs, beside the bare C call measured the same way (the floor).

For each codec the wrapper (the object the bridge uses) and the bare call (a direct ctypes
call on preallocated buffers for libopus/bcg729, audioop's C loop for G.711 where Python
still has it) run over the same pre-generated speech-like frames, timed with
time.perf_counter; each figure is the median of --repeat runs of --frames frames. Then the
implied transcoded calls per core: one encode + one decode per direction per 20 ms.

    .venv/bin/python -m loadtest.bench_codecs [--frames 2000] [--repeat 3]

Bounded: about 10 s with the defaults, and it stops early if a run exceeds --budget seconds.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.media.codecs import available_codecs, get_decoder, get_encoder  # noqa: E402
from gateway.media.codecs.base import Decoder, Encoder  # noqa: E402

FRAME_MS = 20
FRAME_BUDGET_US = FRAME_MS * 1000
"""One core has 20 000 µs of CPU per 20 ms packet interval."""
SIGNAL_SECONDS = 4
"""Distinct audio cycled through the frames, so encoders see changing speech, not a loop
of one frame."""

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:  # Python 3.13 removed it: G.711 then has no C floor to compare with
        audioop = None  # type: ignore[assignment]


def speech_like(rate: int, seconds: float) -> np.ndarray[Any, np.dtype[np.int16]]:
    """Harmonics of a gliding 110-190 Hz pitch under a 2 Hz syllable envelope, at -12 dBFS."""
    n = int(rate * seconds)
    t = np.arange(n) / rate
    f0 = 150 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    out = np.zeros(n)
    for k in range(1, 30):
        fk = k * f0
        weight = np.exp(-(((fk - 500) / 250) ** 2)) + 0.6 * np.exp(-(((fk - 1500) / 300) ** 2))
        out += np.where(fk < rate / 2 - 200, weight + 0.02, 0.0) * np.sin(k * phase)
    out *= np.clip(1.6 * np.sin(2 * np.pi * 2 * t) + 1.0, 0, 1) ** 0.7
    out += np.random.default_rng(7).normal(0, 30, n)  # background noise: no digital silence
    pcm: np.ndarray[Any, np.dtype[np.int16]] = (out / np.max(np.abs(out)) * 0.25 * 32767).astype(
        "<i2"
    )
    return pcm


def frames_of(rate: int) -> list[bytes]:
    pcm = speech_like(rate, SIGNAL_SECONDS).tobytes()
    step = rate * FRAME_MS // 1000 * 2
    return [pcm[i : i + step] for i in range(0, len(pcm) - step + 1, step)]


def time_per_call(fn: Callable[[bytes], object], inputs: list[bytes], count: int) -> float:
    """µs per call of ``fn`` over ``count`` calls cycling through ``inputs``."""
    n = len(inputs)
    work = [inputs[i % n] for i in range(count)]
    start = time.perf_counter()
    for item in work:
        fn(item)
    return (time.perf_counter() - start) / count * 1e6


class Bench:
    def __init__(self, frames: int, repeat: int, budget: float) -> None:
        self.frames = frames
        self.repeat = repeat
        self.deadline = time.perf_counter() + budget
        self.rows: list[tuple[str, str, float, float | None]] = []
        self.results: dict[tuple[str, str], float] = {}

    def measure(self, fn: Callable[[bytes], object], inputs: list[bytes]) -> float:
        fn(inputs[0])  # warm up: first call allocates inside the library
        runs = []
        for _ in range(self.repeat):
            runs.append(time_per_call(fn, inputs, self.frames))
            if time.perf_counter() > self.deadline:
                break
        return statistics.median(runs)

    def add(
        self,
        label: str,
        op: str,
        wrapper: Callable[[bytes], object],
        inputs: list[bytes],
        floor: Callable[[bytes], object] | None = None,
        floor_inputs: list[bytes] | None = None,
    ) -> None:
        us = self.measure(wrapper, inputs)
        bare = self.measure(floor, floor_inputs or inputs) if floor is not None else None
        self.rows.append((label, op, us, bare))
        self.results[(label, op)] = us


# -- bare C calls, declared here independently of the gateway's bindings ----------------------


class BareOpus:
    """libopus called directly: one ctypes call per frame on preallocated buffers."""

    def __init__(self, rate: int, complexity: int) -> None:
        lib = ctypes.CDLL("libopus.so.0")
        lib.opus_encoder_create.restype = ctypes.c_void_p
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_encode.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int32,
        ]
        lib.opus_decode.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int32,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ]
        err = ctypes.c_int()
        self.enc = lib.opus_encoder_create(rate, 1, 2048, ctypes.byref(err))
        self.dec = lib.opus_decoder_create(rate, 1, ctypes.byref(err))
        ctl = lib.opus_encoder_ctl
        for request, value in ((4010, complexity), (4012, 1), (4014, 10), (4024, 3001)):
            ctl(ctypes.c_void_p(self.enc), ctypes.c_int(request), ctypes.c_int32(value))
        if rate == 8000:  # same target as the wrapper's NARROWBAND_FEC_BITRATE
            ctl(ctypes.c_void_p(self.enc), ctypes.c_int(4002), ctypes.c_int32(20000))
        self.samples = rate * FRAME_MS // 1000
        self.out = ctypes.create_string_buffer(4000)
        self.out_addr = ctypes.addressof(self.out)
        self.pcm = (ctypes.c_int16 * (rate * 120 // 1000))()
        self.pcm_addr = ctypes.addressof(self.pcm)
        self.lib = lib

    def encode(self, pcm: bytes) -> int:
        return int(self.lib.opus_encode(self.enc, pcm, self.samples, self.out_addr, 4000))

    def decode(self, payload: bytes) -> int:
        return int(
            self.lib.opus_decode(self.dec, payload, len(payload), self.pcm_addr, self.samples, 0)
        )


class BareG729:
    """bcg729 called directly: two ctypes calls per 20 ms (two 10 ms frames)."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libbcg729.so.0")
        lib.initBcg729EncoderChannel.restype = ctypes.c_void_p
        lib.initBcg729EncoderChannel.argtypes = [ctypes.c_uint8]
        lib.initBcg729DecoderChannel.restype = ctypes.c_void_p
        vp, u8 = ctypes.c_void_p, ctypes.c_uint8
        lib.bcg729Encoder.argtypes = [vp, ctypes.c_char_p, vp, vp]
        lib.bcg729Decoder.argtypes = [vp, ctypes.c_char_p, u8, u8, u8, u8, vp]
        self.enc = lib.initBcg729EncoderChannel(0)
        self.dec = lib.initBcg729DecoderChannel()
        self.out = (ctypes.c_uint8 * 20)()
        self.out_addr = ctypes.addressof(self.out)
        self.length = ctypes.c_uint8()
        self.len_addr = ctypes.addressof(self.length)
        self.pcm = (ctypes.c_int16 * 160)()
        self.pcm_addr = ctypes.addressof(self.pcm)
        self.lib = lib

    def encode(self, pcm: bytes) -> None:
        # The second half is passed as its own bytes: the slice is the floor's only overhead.
        self.lib.bcg729Encoder(self.enc, pcm, self.out_addr, self.len_addr)
        self.lib.bcg729Encoder(self.enc, pcm[160:], self.out_addr + 10, self.len_addr)

    def decode(self, payload: bytes) -> None:
        self.lib.bcg729Decoder(self.dec, payload, 10, 0, 0, 0, self.pcm_addr)
        self.lib.bcg729Decoder(self.dec, payload[10:], 10, 0, 0, 0, self.pcm_addr + 160)


def run(frames: int, repeat: int, budget: float) -> Bench:
    bench = Bench(frames, repeat, budget)
    narrow, wide = frames_of(8000), frames_of(48000)

    for law, lin2, to_lin in (
        ("PCMU", "lin2ulaw", "ulaw2lin"),
        ("PCMA", "lin2alaw", "alaw2lin"),
    ):
        enc: Encoder = get_encoder(law)
        dec: Decoder = get_decoder(law)
        payloads = [enc.encode(f) for f in narrow]
        floor_enc = floor_dec = None
        if audioop is not None:
            lin2_fn, to_lin_fn = getattr(audioop, lin2), getattr(audioop, to_lin)
            floor_enc = lambda pcm, f=lin2_fn: f(pcm, 2)  # noqa: E731
            floor_dec = lambda data, f=to_lin_fn: f(data, 2)  # noqa: E731
        bench.add(law, "encode", enc.encode, narrow, floor_enc)
        bench.add(law, "decode", dec.decode, payloads, floor_dec)

    for label, rate, complexity, pcm in (
        ("Opus@8k c5", 8000, 5, narrow),
        ("Opus@8k c0", 8000, 0, narrow),
        ("Opus@48k c5", 48000, 5, wide),
    ):
        enc = get_encoder("opus", pcm_rate=rate, complexity=complexity)
        dec = get_decoder("opus", pcm_rate=rate)
        payloads = [enc.encode(f) for f in pcm]
        bare = BareOpus(rate, complexity)
        bench.add(label, "encode", enc.encode, pcm, bare.encode)
        bench.add(label, "decode", dec.decode, payloads, bare.decode)

    if available_codecs()["G729"] is None:
        enc = get_encoder("G729")
        dec = get_decoder("G729")
        payloads = [enc.encode(f) for f in narrow]
        bare_g729 = BareG729()
        bench.add("G.729", "encode", enc.encode, narrow, bare_g729.encode)
        bench.add("G.729", "decode", dec.decode, payloads, bare_g729.decode)

    # The fixed cost of crossing into C through ctypes, for scale.
    labs = ctypes.CDLL(None).labs
    labs.argtypes, labs.restype = [ctypes.c_long], ctypes.c_long
    bench.add("ctypes labs()", "call", lambda _: labs(1), [b""])
    return bench


def report(bench: Bench) -> None:
    print(f"µs per {FRAME_MS} ms frame, median of {bench.repeat} runs of {bench.frames} frames")
    print(f"{'codec':<14} {'op':<7} {'wrapper':>9} {'bare C':>9} {'ratio':>7}")
    for label, op, us, bare in bench.rows:
        bare_s = f"{bare:9.2f}" if bare is not None else f"{'-':>9}"
        ratio = f"{us / bare:7.2f}" if bare else f"{'-':>7}"
        print(f"{label:<14} {op:<7} {us:9.2f} {bare_s} {ratio}")
    print()
    print("Implied transcoded calls per core (encode + decode on each side, per 20 ms):")
    r = bench.results
    pairs = [("Opus@8k c5", "PCMU"), ("Opus@8k c0", "PCMU")]
    if ("G.729", "encode") in r:
        pairs += [("Opus@8k c5", "G.729"), ("Opus@8k c0", "G.729")]
    for opus_label, other in pairs:
        cost = sum(r[(c, op)] for c in (opus_label, other) for op in ("encode", "decode"))
        print(
            f"  {opus_label} <-> {other:<6} {cost:7.1f} µs/call  "
            f"-> {FRAME_BUDGET_US / cost:6.0f} calls/core (codec work only)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000, help="frames per run (default 2000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--budget", type=float, default=25.0, help="stop repeating after s")
    args = parser.parse_args()
    start = time.perf_counter()
    report(run(args.frames, args.repeat, args.budget))
    print(f"\n(total {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
