"""Audio codec layer of the media path: registry of encoders and decoders by SDP name.

Names are the ``a=rtpmap`` encoding names, matched case-insensitively (RFC 4566 §6):
``PCMU``, ``PCMA``, ``opus``, ``G729``. Options are passed to the codec's constructor
(for example ``get_encoder("opus", pcm_rate=8000, complexity=5)``).

G.711 is always available (numpy tables); Opus needs the system libopus and G.729 the
optional system bcg729 (GPLv3, loaded at run time): see :func:`available_codecs`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.media.codecs import g711, g729, opus
from gateway.media.codecs.base import CodecError, CodecUnavailable, Decoder, Encoder

__all__ = [
    "CodecError",
    "CodecUnavailable",
    "Decoder",
    "Encoder",
    "available_codecs",
    "codec_names",
    "get_decoder",
    "get_encoder",
]

_ENCODERS: dict[str, Callable[..., Encoder]] = {
    "PCMU": g711.PcmuEncoder,
    "PCMA": g711.PcmaEncoder,
    "OPUS": opus.OpusEncoder,
    "G729": g729.G729Encoder,
}
_DECODERS: dict[str, Callable[..., Decoder]] = {
    "PCMU": g711.PcmuDecoder,
    "PCMA": g711.PcmaDecoder,
    "OPUS": opus.OpusDecoder,
    "G729": g729.G729Decoder,
}
_CANONICAL = {"PCMU": "PCMU", "PCMA": "PCMA", "OPUS": "opus", "G729": "G729"}


def codec_names() -> tuple[str, ...]:
    """Canonical names of every codec this layer knows (available or not)."""
    return tuple(_CANONICAL.values())


def available_codecs() -> dict[str, str | None]:
    """Canonical name → None when usable, else the reason it is not (for the caller to log)."""
    return {"PCMU": None, "PCMA": None, "opus": opus.available(), "G729": g729.available()}


def _key(name: str) -> str:
    key = name.upper()
    if key not in _CANONICAL:
        raise CodecError(f"unknown codec {name!r}; known: {', '.join(codec_names())}")
    return key


def get_encoder(name: str, **opts: Any) -> Encoder:
    """New encoder for SDP encoding ``name``; raises CodecUnavailable if its library is missing."""
    return _ENCODERS[_key(name)](**opts)


def get_decoder(name: str, **opts: Any) -> Decoder:
    """New decoder for SDP encoding ``name``; raises CodecUnavailable if its library is missing."""
    return _DECODERS[_key(name)](**opts)
