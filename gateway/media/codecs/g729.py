"""G.729 (Annex A, with Annex B SID frames) via a ctypes binding to the system bcg729.

Licence: bcg729 is GPLv3. It is not bundled or linked at build time: this module loads the
optional system library (Debian ``libbcg729-0``, ``libbcg729.so.0``) at run time. When it is
missing, :func:`available` returns the reason and G.729 is simply not offered.

Signatures are those of bcg729 1.1.1 (``include/bcg729/encoder.h`` and ``decoder.h``)::

    ctx *initBcg729EncoderChannel(uint8_t enableVAD);
    void bcg729Encoder(ctx *, const int16_t inputFrame[80], uint8_t bitStream[10],
                       uint8_t *bitStreamLength);          /* length 0, 2 (SID) or 10 */
    void closeBcg729EncoderChannel(ctx *);
    ctx *initBcg729DecoderChannel(void);
    void bcg729Decoder(ctx *, const uint8_t bitStream[], uint8_t bitStreamLength,
                       uint8_t frameErasureFlag, uint8_t SIDFrameFlag,
                       uint8_t rfc3389PayloadFlag, int16_t signal[80]);
    void closeBcg729DecoderChannel(ctx *);

Releases before 1.0 had a four-argument ``bcg729Decoder``; calling them with this signature
would corrupt memory, so the library is accepted only if it exports
``bcg729GetRFC3389Payload``, which arrived with the Annex B (VAD/DTX/SID) API.

RTP (RFC 3551 §4.5.6): clock 8000, 10 ms frames of 10 bytes, several per packet, optionally
followed by one 2-byte Annex B SID frame.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

from gateway.media.codecs.base import BYTES_PER_SAMPLE, CodecError, CodecUnavailable

LIBRARY_NAMES = ("libbcg729.so.0", "bcg729")
"""Tried in order: the Debian soname, then ``ctypes.util.find_library`` on the base name."""
ANNEX_B_SYMBOL = "bcg729GetRFC3389Payload"

SAMPLE_RATE = 8000
"""G.729 PCM rate and RTP clock (RFC 3551 §4.5.6)."""
FRAME_SAMPLES = 80
"""One G.729 frame: 10 ms at 8 kHz."""
FRAME_BYTES = 10
"""Encoded speech frame: 80 bits (ITU-T G.729 Table 8)."""
SID_BYTES = 2
"""Annex B silence-insertion-descriptor frame (RFC 3551 §4.5.6)."""
FRAME_MS = 10
DEFAULT_FRAME_MS = 20
MAX_FRAMES_PER_PACKET = 12
"""Longest packet accepted: 120 ms of speech frames (plus a SID frame)."""

_lib: Any = None
_load_error: str | None = None


def _load() -> Any:
    """Load bcg729 once and declare its signatures; raise CodecUnavailable if unusable."""
    global _lib, _load_error
    if _lib is not None:
        return _lib
    if _load_error is not None:
        raise CodecUnavailable(_load_error)
    errors = []
    for name in LIBRARY_NAMES:
        path = name if name.startswith("lib") else ctypes.util.find_library(name)
        if path is None:
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            errors.append(str(exc))
            continue
        if not hasattr(lib, ANNEX_B_SYMBOL):
            errors.append(f"{path} predates bcg729 1.0 (no {ANNEX_B_SYMBOL}); need 1.1")
            continue
        _declare(lib)
        _lib = lib
        return lib
    _load_error = "G.729 unavailable: bcg729 not found (install Debian package libbcg729-0): " + (
        "; ".join(errors) or "no library named bcg729"
    )
    raise CodecUnavailable(_load_error)


def _declare(lib: Any) -> None:
    c_void_p, c_uint8 = ctypes.c_void_p, ctypes.c_uint8
    lib.initBcg729EncoderChannel.argtypes = [c_uint8]
    lib.initBcg729EncoderChannel.restype = c_void_p
    lib.closeBcg729EncoderChannel.argtypes = [c_void_p]
    lib.closeBcg729EncoderChannel.restype = None
    # Pointers are passed as integer addresses into preallocated buffers.
    lib.bcg729Encoder.argtypes = [c_void_p, c_void_p, c_void_p, c_void_p]
    lib.bcg729Encoder.restype = None
    lib.initBcg729DecoderChannel.argtypes = []
    lib.initBcg729DecoderChannel.restype = c_void_p
    lib.closeBcg729DecoderChannel.argtypes = [c_void_p]
    lib.closeBcg729DecoderChannel.restype = None
    lib.bcg729Decoder.argtypes = [c_void_p, c_void_p, c_uint8, c_uint8, c_uint8, c_uint8, c_void_p]
    lib.bcg729Decoder.restype = None


def available() -> str | None:
    """None when bcg729 loads, else the reason G.729 is unavailable (for the caller to log)."""
    try:
        _load()
    except CodecUnavailable as exc:
        return str(exc)
    return None


def _check_frame_ms(frame_ms: int) -> int:
    frames = frame_ms // FRAME_MS
    if frame_ms % FRAME_MS or not 1 <= frames <= MAX_FRAMES_PER_PACKET:
        raise CodecError(f"G.729 frame_ms {frame_ms} must be a multiple of 10 up to 120")
    return frames


class G729Encoder:
    """G.729A encoder: ``frame_ms`` of 8 kHz PCM → that many 10-byte frames in one payload.

    With ``vad=True`` (Annex B) silent frames become a 2-byte SID or nothing at all, so a
    payload may be shorter than ``frame_ms / 10 * 10`` bytes, or empty (send no packet).
    A payload whose first 10 ms went untransmitted holds only the second frame, which on the
    wire belongs 10 ms after the packet's start: leave VAD off (the default) unless the
    caller packetises per 10 ms frame.
    """

    name = "G729"
    clock_rate = SAMPLE_RATE
    pcm_rate = SAMPLE_RATE

    def __init__(self, *, frame_ms: int = DEFAULT_FRAME_MS, vad: bool = False) -> None:
        """Create a bcg729 encoder channel."""
        self._frames = _check_frame_ms(frame_ms)
        lib = _load()
        self.frame_ms = frame_ms
        self._lib = lib
        self._frame_bytes = self._frames * FRAME_SAMPLES * BYTES_PER_SAMPLE
        ctx = lib.initBcg729EncoderChannel(1 if vad else 0)
        if not ctx:  # pragma: no cover - only on allocation failure
            raise CodecError("initBcg729EncoderChannel failed")
        self._ctx: int | None = ctx
        self._in = (ctypes.c_int16 * (self._frames * FRAME_SAMPLES))()
        self._out = (ctypes.c_uint8 * (self._frames * FRAME_BYTES))()
        self._len = ctypes.c_uint8(0)
        self._in_addr = ctypes.addressof(self._in)
        self._out_addr = ctypes.addressof(self._out)
        self._len_addr = ctypes.addressof(self._len)
        self._in_addrs = tuple(
            self._in_addr + i * FRAME_SAMPLES * BYTES_PER_SAMPLE for i in range(self._frames)
        )
        self._encode = lib.bcg729Encoder
        self._memmove = ctypes.memmove
        self._string_at = ctypes.string_at

    def encode(self, pcm: bytes) -> bytes:
        """Encode exactly ``frame_ms`` of s16le PCM at 8 kHz."""
        if len(pcm) != self._frame_bytes:
            raise CodecError(f"G.729 encoder wants {self._frame_bytes} PCM bytes, got {len(pcm)}")
        self._memmove(self._in_addr, pcm, self._frame_bytes)
        ctx, out, length, encode = self._ctx, self._out_addr, self._len, self._encode
        if ctx is None:
            raise CodecError("G.729 encoder used after close()")
        total = 0
        for frame in self._in_addrs:  # one C call per 10 ms frame (2 for 20 ms)
            encode(ctx, frame, out + total, self._len_addr)
            total += length.value
        return self._string_at(out, total)

    def close(self) -> None:
        """Free the bcg729 channel (also done when the object is collected)."""
        ctx, self._ctx = self._ctx, None
        if ctx:
            self._lib.closeBcg729EncoderChannel(ctx)

    def __del__(self) -> None:
        if getattr(self, "_ctx", None):
            self.close()


class G729Decoder:
    """G.729A decoder accepting speech frames and Annex B SID frames; erasure-based PLC."""

    name = "G729"
    clock_rate = SAMPLE_RATE
    pcm_rate = SAMPLE_RATE

    def __init__(self, *, frame_ms: int = DEFAULT_FRAME_MS) -> None:
        """Create a bcg729 decoder channel; ``frame_ms`` is the expected packet duration."""
        _check_frame_ms(frame_ms)
        lib = _load()
        self.frame_ms = frame_ms
        self._lib = lib
        ctx = lib.initBcg729DecoderChannel()
        if not ctx:  # pragma: no cover - only on allocation failure
            raise CodecError("initBcg729DecoderChannel failed")
        self._ctx: int | None = ctx
        max_in = MAX_FRAMES_PER_PACKET * FRAME_BYTES + SID_BYTES
        self._max_in = max_in
        self._in = (ctypes.c_uint8 * max_in)()
        self._out = (ctypes.c_int16 * ((MAX_FRAMES_PER_PACKET + 1) * FRAME_SAMPLES))()
        self._in_addr = ctypes.addressof(self._in)
        self._out_addr = ctypes.addressof(self._out)
        self._decode = lib.bcg729Decoder
        self._memmove = ctypes.memmove
        self._string_at = ctypes.string_at

    def decode(self, payload: bytes) -> bytes:
        """Decode N 10-byte frames, optionally followed by one 2-byte SID frame (RFC 3551 §4.5.6)."""
        size = len(payload)
        frames, rest = divmod(size, FRAME_BYTES)
        if rest not in (0, SID_BYTES) or size == 0 or size > self._max_in:
            raise CodecError(f"G.729 payload of {size} bytes is not N*10 (+2 SID) up to 120 ms")
        ctx, decode, src, dst = self._ctx, self._decode, self._in_addr, self._out_addr
        if ctx is None:
            raise CodecError("G.729 decoder used after close()")
        self._memmove(src, payload, size)
        step = FRAME_SAMPLES * BYTES_PER_SAMPLE
        for i in range(frames):
            decode(ctx, src + i * FRAME_BYTES, FRAME_BYTES, 0, 0, 0, dst + i * step)
        if rest:
            decode(ctx, src + frames * FRAME_BYTES, SID_BYTES, 0, 1, 0, dst + frames * step)
            frames += 1
        return self._string_at(dst, frames * step)

    def conceal(self, samples: int) -> bytes:
        """Frame-erasure concealment (G.729 §4.4) for ``samples``, a multiple of 80.

        After a SID frame the same call continues comfort noise: that is how untransmitted
        Annex B frames (DTX) are decoded (G.729 Annex B §B.27).
        """
        frames, rest = divmod(samples, FRAME_SAMPLES)
        if rest or not 1 <= frames <= MAX_FRAMES_PER_PACKET:
            raise CodecError(f"G.729 concealment length {samples} must be N*80 up to 120 ms")
        ctx, decode, dst = self._ctx, self._decode, self._out_addr
        if ctx is None:
            raise CodecError("G.729 decoder used after close()")
        step = FRAME_SAMPLES * BYTES_PER_SAMPLE
        for i in range(frames):
            # NULL bitstream: after a SID, bcg729 treats a non-NULL one as a new SID frame.
            decode(ctx, None, 0, 1, 0, 0, dst + i * step)
        return self._string_at(dst, frames * step)

    def close(self) -> None:
        """Free the bcg729 channel (also done when the object is collected)."""
        ctx, self._ctx = self._ctx, None
        if ctx:
            self._lib.closeBcg729DecoderChannel(ctx)

    def __del__(self) -> None:
        if getattr(self, "_ctx", None):
            self.close()
