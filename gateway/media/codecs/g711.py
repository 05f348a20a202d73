"""G.711 PCMU (μ-law) and PCMA (A-law) via numpy lookup tables built once at import.

Encoding is one table lookup (``ndarray.take``) indexed by the 16-bit sample's bit pattern (65 536 entries per
law); decoding is one lookup of 256 entries. The tables follow ITU-T G.711 (11/88) §2-§3:
μ-law on 14-bit magnitudes with bias 33, A-law on 13-bit magnitudes, eight segments of sixteen
steps, A-law even bits inverted (XOR 0x55), μ-law all bits inverted. Values truncate like the
reference implementation (and Python's ``audioop``): the tests compare all codes.

RTP: payload types 0 (PCMU) and 8 (PCMA), clock 8000, one byte per sample (RFC 3551 §4.5.14).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gateway.media.codecs.base import BYTES_PER_SAMPLE, CodecError, frame_samples

SAMPLE_RATE = 8000
"""G.711 PCM and RTP clock rate (RFC 3551 §4.5.14)."""
DEFAULT_FRAME_MS = 20
PLC_FADE_MS = 60
"""Concealment fades the repeated frame linearly to silence over this many ms (G.711
Appendix I likewise reaches silence 60 ms into a loss)."""

_ULAW_BIAS = 0x84  # 132 = 33 << 2: μ-law bias on the 16-bit scale (G.711 Table 2a)
_ULAW_CLIP = 8159  # largest 14-bit magnitude before the bias (8159 + 33 = 0x2000)
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _build_ulaw_decode() -> npt.NDArray[np.int16]:
    codes = np.arange(256, dtype=np.int32)
    u = ~codes & 0xFF  # μ-law transmits every bit inverted
    magnitude = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    values = np.where(u & 0x80, _ULAW_BIAS - magnitude, magnitude - _ULAW_BIAS)
    return values.astype("<i2")


def _build_alaw_decode() -> npt.NDArray[np.int16]:
    codes = np.arange(256, dtype=np.int32)
    a = codes ^ 0x55  # A-law inverts the even bits
    seg = (a & 0x70) >> 4
    mant = (a & 0x0F) << 4
    # Segment 0 has no implied leading one; its step is the same as segment 1's.
    magnitude = np.where(seg == 0, mant + 8, (mant + 0x108) << np.maximum(seg - 1, 0))
    values = np.where(a & 0x80, magnitude, -magnitude)
    return values.astype("<i2")


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    # Index = the sample's bit pattern as uint16, so view int16 PCM as uint16 to look up.
    pcm = np.arange(65536, dtype=np.int32).astype(np.uint16).view(np.int16).astype(np.int32)
    val = pcm >> 2  # 14-bit linear (G.711 μ-law input range)
    mask = np.where(val < 0, 0x7F, 0xFF)
    val = np.minimum(np.abs(val), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, val, side="left")
    code = (seg << 4) | ((val >> (seg + 1)) & 0x0F)
    code = np.where(seg >= 8, 0x7F, code) ^ mask
    return code.astype(np.uint8)


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    pcm = np.arange(65536, dtype=np.int32).astype(np.uint16).view(np.int16).astype(np.int32)
    val = pcm >> 3  # 13-bit linear (G.711 A-law input range)
    mask = np.where(val >= 0, 0xD5, 0x55)
    val = np.where(val >= 0, val, -val - 1)
    seg = np.searchsorted(_ALAW_SEG_END, val, side="left")
    shift = np.where(seg < 2, 1, seg)
    # |val| <= 4095 = the last segment end, so seg <= 7: A-law needs no overflow clamp.
    code = (seg << 4) | ((val >> shift) & 0x0F)
    return (code ^ mask).astype(np.uint8)


ULAW_DECODE: npt.NDArray[np.int16] = _build_ulaw_decode()
"""PCMU code (0-255) → 16-bit linear sample."""
ALAW_DECODE: npt.NDArray[np.int16] = _build_alaw_decode()
"""PCMA code (0-255) → 16-bit linear sample."""
ULAW_ENCODE: npt.NDArray[np.uint8] = _build_ulaw_encode()
"""16-bit sample bit pattern (uint16 view, 0-65535) → PCMU code."""
ALAW_ENCODE: npt.NDArray[np.uint8] = _build_alaw_encode()
"""16-bit sample bit pattern (uint16 view, 0-65535) → PCMA code."""
for _table in (ULAW_DECODE, ALAW_DECODE, ULAW_ENCODE, ALAW_ENCODE):
    _table.flags.writeable = False


def _check_pcm(pcm: bytes) -> None:
    if len(pcm) % BYTES_PER_SAMPLE:
        raise CodecError(f"PCM length {len(pcm)} is not a whole number of s16 samples")


def ulaw_encode(pcm: bytes) -> bytes:
    """s16le PCM → PCMU payload (one byte per sample)."""
    _check_pcm(pcm)
    out: bytes = ULAW_ENCODE.take(np.frombuffer(pcm, dtype="<u2")).tobytes()
    return out


def alaw_encode(pcm: bytes) -> bytes:
    """s16le PCM → PCMA payload (one byte per sample)."""
    _check_pcm(pcm)
    out: bytes = ALAW_ENCODE.take(np.frombuffer(pcm, dtype="<u2")).tobytes()
    return out


def ulaw_decode(payload: bytes) -> bytes:
    """PCMU payload → s16le PCM."""
    out: bytes = ULAW_DECODE.take(np.frombuffer(payload, dtype=np.uint8)).tobytes()
    return out


def alaw_decode(payload: bytes) -> bytes:
    """PCMA payload → s16le PCM."""
    out: bytes = ALAW_DECODE.take(np.frombuffer(payload, dtype=np.uint8)).tobytes()
    return out


class _G711Encoder:
    name: str
    clock_rate = SAMPLE_RATE
    pcm_rate = SAMPLE_RATE
    _table: npt.NDArray[np.uint8]

    def __init__(self, *, frame_ms: int = DEFAULT_FRAME_MS) -> None:
        self.frame_ms = frame_ms

    def encode(self, pcm: bytes) -> bytes:
        """Encode s16le PCM (any whole number of samples) to one byte per sample."""
        _check_pcm(pcm)
        out: bytes = self._table.take(np.frombuffer(pcm, dtype="<u2")).tobytes()
        return out


class _G711Decoder:
    name: str
    clock_rate = SAMPLE_RATE
    pcm_rate = SAMPLE_RATE
    _table: npt.NDArray[np.int16]

    def __init__(self, *, frame_ms: int = DEFAULT_FRAME_MS) -> None:
        self.frame_ms = frame_ms
        self._last: npt.NDArray[np.int16] | None = None
        self._gain = 1.0
        self._fade_step = 1.0 / (SAMPLE_RATE * PLC_FADE_MS // 1000)

    def decode(self, payload: bytes) -> bytes:
        """Decode a payload (one byte per sample) to s16le PCM; remembers it for PLC."""
        pcm = self._table.take(np.frombuffer(payload, dtype=np.uint8))
        if len(pcm):
            self._last = pcm
            self._gain = 1.0
        return pcm.tobytes()

    def conceal(self, samples: int) -> bytes:
        """Repeat the last decoded packet, fading linearly to silence over PLC_FADE_MS."""
        if samples < 0:
            raise CodecError(f"cannot conceal {samples} samples")
        last = self._last
        if last is None or self._gain <= 0.0:
            return bytes(samples * BYTES_PER_SAMPLE)
        reps = -(-samples // len(last))
        gain = self._gain - self._fade_step * np.arange(samples, dtype=np.float32)
        np.maximum(gain, 0.0, out=gain)
        self._gain = max(0.0, self._gain - self._fade_step * samples)
        out = np.tile(last, reps)[:samples] * gain
        return out.astype("<i2").tobytes()


class PcmuEncoder(_G711Encoder):
    """PCMU (G.711 μ-law) encoder, RTP payload type 0."""

    name = "PCMU"
    _table = ULAW_ENCODE


class PcmaEncoder(_G711Encoder):
    """PCMA (G.711 A-law) encoder, RTP payload type 8."""

    name = "PCMA"
    _table = ALAW_ENCODE


class PcmuDecoder(_G711Decoder):
    """PCMU (G.711 μ-law) decoder with repeat-and-fade concealment."""

    name = "PCMU"
    _table = ULAW_DECODE


class PcmaDecoder(_G711Decoder):
    """PCMA (G.711 A-law) decoder with repeat-and-fade concealment."""

    name = "PCMA"
    _table = ALAW_DECODE


def samples_per_frame(frame_ms: int = DEFAULT_FRAME_MS) -> int:
    """Samples (and payload bytes) in one G.711 frame of ``frame_ms``."""
    return frame_samples(SAMPLE_RATE, frame_ms)
