"""G.729 through the system bcg729: tone, speech-like signal, Annex B SID, erasure PLC."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.media.codecs import g729
from gateway.media.codecs.base import CodecError, CodecUnavailable, Decoder, Encoder
from tests.unit.media.codecs.signals import (
    aligned,
    codec_delay,
    correlation,
    from_pcm,
    peak_frequency,
    rms_db,
    run_codec,
    sine,
    speech_like,
    to_pcm,
)

RATE = 8000
CODEC_DELAY = 40
"""G.729 look-ahead: 5 ms (ITU-T G.729 §2); encoder + decoder back to back add nothing else."""
LEVEL_TOLERANCE_DB = 2.0
"""Measured -0.6 dB on the -10 dBFS tone and -0.5 dB on the speech-like signal."""
FREQ_TOLERANCE_HZ = 2.0
TONE_CORRELATION_FLOOR = 0.9
"""Measured 0.958: CELP models speech, a pure tone is its weak case."""
SPEECH_CORRELATION_FLOOR = 0.85
"""Measured 0.899 on the speech-like signal after delay alignment."""
NOISE_DBFS = -60.0
COMFORT_NOISE_TOLERANCE_DB = 5.0
"""Comfort noise regenerated from SID frames measured -59.2 dBFS over a -60 dBFS background."""


def test_1khz_tone_round_trip() -> None:
    x = sine(1000, -10, RATE, 1.0)
    y = run_codec(g729.G729Encoder(), g729.G729Decoder(), x)
    assert len(y) == len(x)
    a, b = aligned(x, y, CODEC_DELAY, skip=RATE // 10)
    assert abs(peak_frequency(b, RATE) - 1000) < FREQ_TOLERANCE_HZ
    assert abs(rms_db(b) - rms_db(a)) < LEVEL_TOLERANCE_DB
    assert correlation(a, b) > TONE_CORRELATION_FLOOR


def test_speech_like_signal_round_trip_and_delay() -> None:
    x = speech_like(RATE, 2.0)
    y = run_codec(g729.G729Encoder(), g729.G729Decoder(), x)
    lag = codec_delay(x, y, RATE // 50)
    assert lag == CODEC_DELAY
    a, b = aligned(x, y, lag, skip=RATE // 10)
    assert abs(rms_db(b) - rms_db(a)) < LEVEL_TOLERANCE_DB
    assert correlation(a, b) > SPEECH_CORRELATION_FLOOR


def test_two_10_byte_frames_per_20_ms_packet() -> None:
    enc, dec = g729.G729Encoder(), g729.G729Decoder()
    assert (enc.name, enc.clock_rate, enc.pcm_rate, enc.frame_ms) == ("G729", 8000, 8000, 20)
    assert isinstance(enc, Encoder) and isinstance(dec, Decoder)
    payload = enc.encode(to_pcm(sine(1000, -10, RATE, 0.02)))
    assert len(payload) == 20
    assert len(dec.decode(payload)) == 320
    # one 10 ms frame alone, and a 40 ms packet
    assert len(dec.decode(payload[:10])) == 160
    assert len(dec.decode(payload * 2)) == 640
    enc40 = g729.G729Encoder(frame_ms=40)
    assert len(enc40.encode(to_pcm(sine(1000, -10, RATE, 0.04)))) == 40


def test_vad_sends_sid_then_nothing_and_decoder_makes_comfort_noise() -> None:
    enc, dec = g729.G729Encoder(vad=True), g729.G729Decoder()
    speech = to_pcm(speech_like(RATE, 0.2))
    noise = np.random.default_rng(1).normal(
        0, 10 ** (NOISE_DBFS / 20) * 32767 / np.sqrt(2), 2 * RATE
    )
    background = to_pcm(noise)
    payloads = [enc.encode(speech[i * 320 : (i + 1) * 320]) for i in range(10)]
    payloads += [enc.encode(background[i * 320 : (i + 1) * 320]) for i in range(100)]
    sizes = [len(p) for p in payloads]
    assert sizes[:10] == [20] * 10
    assert all(size % 10 in (0, 2) for size in sizes)
    assert any(size % 10 == 2 for size in sizes)  # at least one SID frame (Annex B)
    assert sizes[-20:] == [0] * 20  # untransmitted frames once the noise is steady
    out = []
    for payload in payloads:
        if payload:
            frames = len(payload) // 10 + (len(payload) % 10 == 2)
            out.append(dec.decode(payload))
            assert len(out[-1]) == frames * 160
        else:
            out.append(dec.conceal(160))  # Annex B: comfort noise continues after a SID
            assert len(out[-1]) == 320
    comfort = from_pcm(b"".join(out[-20:]))
    assert abs(rms_db(comfort) - NOISE_DBFS) < COMFORT_NOISE_TOLERANCE_DB


def test_sid_frame_after_speech_frames_in_one_payload() -> None:
    enc = g729.G729Encoder()
    speech = enc.encode(to_pcm(sine(700, -20, RATE, 0.02)))
    sid = bytes([0x55, 0x40])  # any 2-byte Annex B SID (15 bits + padding)
    out = g729.G729Decoder().decode(speech + sid)
    assert len(out) == 3 * 160


@pytest.mark.parametrize("size", [0, 1, 5, 11, 13, 20 * 10 + 2, 12 * 10 + 10])
def test_malformed_payload_lengths_are_rejected(size: int) -> None:
    with pytest.raises(CodecError, match="is not N\\*10"):
        g729.G729Decoder().decode(bytes(size))


def test_erasure_plc_returns_requested_samples_and_continues_signal() -> None:
    enc, dec = g729.G729Encoder(), g729.G729Decoder()
    pcm = to_pcm(speech_like(RATE, 0.2))
    for i in range(10):
        dec.decode(enc.encode(pcm[i * 320 : (i + 1) * 320]))
    concealed = from_pcm(dec.conceal(160))
    assert len(concealed) == 160
    assert rms_db(concealed) > -40  # extrapolates the speech rather than muting
    assert len(dec.conceal(80)) == 160
    assert len(dec.conceal(960)) == 1920


@pytest.mark.parametrize("samples", [0, 79, 100, 13 * 80])
def test_plc_rejects_lengths_not_multiple_of_10_ms(samples: int) -> None:
    with pytest.raises(CodecError, match="must be N\\*80"):
        g729.G729Decoder().conceal(samples)


def test_encoder_rejects_wrong_frame_length_and_frame_ms() -> None:
    with pytest.raises(CodecError, match="wants 320 PCM bytes, got 160"):
        g729.G729Encoder().encode(bytes(160))
    with pytest.raises(CodecError, match="frame_ms 25"):
        g729.G729Encoder(frame_ms=25)
    with pytest.raises(CodecError, match="frame_ms 130"):
        g729.G729Decoder(frame_ms=130)


def test_use_after_close_raises_instead_of_crashing() -> None:
    enc, dec = g729.G729Encoder(), g729.G729Decoder()
    payload = enc.encode(bytes(320))
    enc.close()
    dec.close()
    dec.close()  # idempotent
    with pytest.raises(CodecError, match="after close"):
        enc.encode(bytes(320))
    with pytest.raises(CodecError, match="after close"):
        dec.decode(payload)
    with pytest.raises(CodecError, match="after close"):
        dec.conceal(80)


def test_channels_keep_separate_state() -> None:
    pcm = to_pcm(speech_like(RATE, 0.1))
    first = [g729.G729Encoder().encode(pcm[:320]) for _ in range(2)]
    assert first[0] == first[1]  # no state shared between encoder channels
    warm, fresh = g729.G729Decoder(), g729.G729Decoder()
    warm.decode(first[0])
    assert warm.decode(first[0]) != fresh.decode(first[0])  # history lives in the channel


def test_available() -> None:
    assert g729.available() is None


def test_missing_library_makes_g729_unavailable_with_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Simulates an absent bcg729 by pointing the loader at names that do not exist."""
    monkeypatch.setattr(g729, "LIBRARY_NAMES", ("libbcg729-missing.so.0", "bcg729-missing"))
    monkeypatch.setattr(g729, "_lib", None)
    monkeypatch.setattr(g729, "_load_error", None)
    reason = g729.available()
    assert reason is not None
    assert reason.startswith("G.729 unavailable: bcg729 not found (install Debian package")
    assert "libbcg729-missing.so.0" in reason
    with pytest.raises(CodecUnavailable, match="G.729 unavailable"):
        g729.G729Encoder()
    # the failure is remembered, not retried per call
    assert g729.available() == reason


def test_library_without_annex_b_api_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loads a real library that lacks the bcg729 symbols (libopus) to exercise the check
    that refuses pre-1.0 bcg729 builds, whose decoder signature differs."""
    monkeypatch.setattr(g729, "LIBRARY_NAMES", ("libopus.so.0",))
    monkeypatch.setattr(g729, "_lib", None)
    monkeypatch.setattr(g729, "_load_error", None)
    reason = g729.available()
    assert reason is not None and "predates bcg729 1.0" in reason
