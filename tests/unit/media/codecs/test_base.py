"""Codec interfaces (gateway/media/codecs/base.py)."""

from __future__ import annotations

from gateway.media.codecs import base


class _Silence:
    """A minimal codec written against the Protocols, as a bridge test double would be."""

    name = "L16"
    clock_rate = 8000
    pcm_rate = 8000
    frame_ms = 20

    def encode(self, pcm: bytes) -> bytes:
        return pcm

    def decode(self, payload: bytes) -> bytes:
        return payload

    def conceal(self, samples: int) -> bytes:
        return bytes(samples * base.BYTES_PER_SAMPLE)


def test_protocols_are_structural() -> None:
    codec = _Silence()
    assert isinstance(codec, base.Encoder) and isinstance(codec, base.Decoder)
    assert not isinstance(object(), base.Encoder)


def test_frame_samples() -> None:
    assert base.frame_samples(8000, 20) == 160
    assert base.frame_samples(48000, 20) == 960
    assert base.frame_samples(8000, 10) == 80


def test_unavailable_is_a_codec_error() -> None:
    assert issubclass(base.CodecUnavailable, base.CodecError)
    assert str(base.CodecUnavailable("libopus not found")) == "libopus not found"
