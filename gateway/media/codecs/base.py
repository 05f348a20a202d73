"""Encoder/decoder interfaces shared by every codec binding.

Sans-I/O: PCM and payloads are ``bytes`` in and ``bytes`` out. PCM is always signed 16-bit
little-endian mono at the codec object's ``pcm_rate``; ``clock_rate`` is the RTP timestamp
clock written in SDP (48 000 for Opus whatever ``pcm_rate`` is, RFC 7587 §4.1).

Exceptions (one family for the codec layer)::

    CodecError              bad input to a codec call (wrong frame length, corrupt payload,
                            library error code)
    └── CodecUnavailable    the system library the codec needs is missing or unusable
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

BYTES_PER_SAMPLE = 2
"""PCM is s16le mono: two bytes per sample."""


class CodecError(Exception):
    """A codec call failed: bad input length, corrupt payload or a library error code."""


class CodecUnavailable(CodecError):
    """The shared library behind a codec could not be loaded; ``str()`` says why."""


@runtime_checkable
class Encoder(Protocol):
    """Encodes one packet's worth of PCM into one RTP payload."""

    name: str
    """Encoding name as in SDP ``a=rtpmap`` (``PCMU``, ``PCMA``, ``opus``, ``G729``)."""
    clock_rate: int
    """RTP timestamp clock (Hz)."""
    pcm_rate: int
    """Sample rate (Hz) of the PCM this object takes."""
    frame_ms: int
    """Packet duration (ms) that :meth:`encode` expects."""

    def encode(self, pcm: bytes) -> bytes:
        """Encode exactly ``frame_ms`` of s16le mono PCM at ``pcm_rate`` into one payload."""
        ...


@runtime_checkable
class Decoder(Protocol):
    """Decodes RTP payloads to PCM and conceals lost packets."""

    name: str
    clock_rate: int
    pcm_rate: int
    frame_ms: int

    def decode(self, payload: bytes) -> bytes:
        """Decode one RTP payload to s16le mono PCM at ``pcm_rate``."""
        ...

    def conceal(self, samples: int) -> bytes:
        """Return ``samples`` samples of packet-loss concealment (s16le, ``pcm_rate``)."""
        ...


def frame_samples(pcm_rate: int, frame_ms: int) -> int:
    """Samples in one frame of ``frame_ms`` at ``pcm_rate``."""
    return pcm_rate * frame_ms // 1000
