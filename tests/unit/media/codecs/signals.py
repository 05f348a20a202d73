"""Test signals and measurements shared by the codec tests (numpy only, deterministic)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gateway.media.codecs.base import Decoder, Encoder

FULL_SCALE = 32767.0
Signal = npt.NDArray[np.float64]


def sine(freq: float, dbfs: float, rate: int, seconds: float) -> Signal:
    """A sine of peak level ``dbfs`` relative to full scale (so -10 dBFS peaks at 0.316)."""
    t = np.arange(int(rate * seconds)) / rate
    return 10 ** (dbfs / 20) * FULL_SCALE * np.sin(2 * np.pi * freq * t)


def speech_like(rate: int, seconds: float) -> Signal:
    """Voiced-speech stand-in: harmonics of a gliding 110-190 Hz pitch, shaped by two
    formant-like resonances, under a 4 Hz syllable envelope with short pauses."""
    n = int(rate * seconds)
    t = np.arange(n) / rate
    f0 = 150 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    out = np.zeros(n)
    for k in range(1, 30):
        fk = k * f0
        weight = np.exp(-(((fk - 500) / 250) ** 2)) + 0.6 * np.exp(-(((fk - 1500) / 300) ** 2))
        weight = np.where(fk < rate / 2 - 200, weight + 0.02, 0.0)
        out += weight * np.sin(k * phase)
    envelope = np.clip(1.6 * np.sin(2 * np.pi * 2 * t) + 1.0, 0, 1) ** 0.7
    out *= envelope
    return out / np.max(np.abs(out)) * 0.5 * FULL_SCALE


def to_pcm(x: Signal) -> bytes:
    """float samples → s16le bytes (clipped)."""
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


def from_pcm(pcm: bytes) -> Signal:
    """s16le bytes → float samples."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def run_codec(encoder: Encoder, decoder: Decoder, x: Signal) -> Signal:
    """Encode ``x`` frame by frame and decode every payload, as a lossless link would."""
    frame = encoder.pcm_rate * encoder.frame_ms // 1000
    frames = len(x) // frame
    pcm = to_pcm(x[: frames * frame])
    step = frame * 2
    out = b"".join(
        decoder.decode(encoder.encode(pcm[i * step : (i + 1) * step])) for i in range(frames)
    )
    return from_pcm(out)


def peak_frequency(x: Signal, rate: int) -> float:
    """Frequency (Hz) of the largest FFT bin under a Hann window, parabolically refined."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
    shift = 0.5 * (a - c) / (a - 2 * b + c)
    return float((k + shift) * rate / len(x))


def rms_db(x: Signal) -> float:
    """RMS level in dB relative to a full-scale sine's RMS (so a -10 dBFS sine reads -10)."""
    return float(20 * np.log10(np.sqrt(np.mean(x**2)) / (FULL_SCALE / np.sqrt(2))))


def codec_delay(ref: Signal, out: Signal, max_lag: int) -> int:
    """Lag (samples) by which ``out`` trails ``ref``, from the cross-correlation peak."""
    n = min(len(ref), len(out)) - max_lag
    scores = [float(np.dot(ref[:n], out[lag : lag + n])) for lag in range(max_lag + 1)]
    return int(np.argmax(scores))


def aligned(ref: Signal, out: Signal, lag: int, skip: int) -> tuple[Signal, Signal]:
    """``ref`` and ``out`` shifted by ``lag``, both without their first ``skip`` samples."""
    n = min(len(ref), len(out) - lag)
    return ref[skip:n], out[lag + skip : lag + n]


def correlation(a: Signal, b: Signal) -> float:
    """Pearson correlation of two equal-length signals."""
    return float(np.corrcoef(a, b)[0, 1])


def snr_db(ref: Signal, out: Signal) -> float:
    """Signal-to-noise ratio (dB) of ``out`` against ``ref``, noise = the difference."""
    noise = out - ref
    return float(10 * np.log10(np.sum(ref**2) / np.sum(noise**2)))
