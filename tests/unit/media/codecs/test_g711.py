"""G.711 tables against the standard's companding rules and audioop; tone quality; PLC."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gateway.media.codecs import g711
from gateway.media.codecs.base import CodecError, Decoder, Encoder
from tests.unit.media.codecs.signals import (
    from_pcm,
    peak_frequency,
    rms_db,
    run_codec,
    sine,
    snr_db,
    speech_like,
    to_pcm,
)

RATE = 8000
SNR_FLOOR_DB = 30.0
"""G.711 gives ~38 dB on a -10 dBFS tone (6 dB per bit of the 7-bit segment mantissa + sign)."""
LEVEL_TOLERANCE_DB = 0.2
FREQ_TOLERANCE_HZ = 1.0

ALL_SAMPLES = np.arange(-32768, 32768, dtype="<i2").tobytes()
ALL_CODES = bytes(range(256))


def itu_ulaw_value(code: int) -> int:
    """G.711 Table 2a, written from the standard's rule rather than from the module:
    the transmitted byte is inverted; segment (exponent) e and step (mantissa) m give the
    14-bit reconstruction value ((2m + 33) << e) - 33, scaled by 4 to 16 bits."""
    u = ~code & 0xFF
    sign, e, m = u >> 7, (u >> 4) & 7, u & 0xF
    magnitude = (((2 * m + 33) << e) - 33) * 4
    return -magnitude if sign else magnitude


def itu_alaw_value(code: int) -> int:
    """G.711 Table 1a: even bits inverted; segment 0 is linear with step 2 (value 2m + 1),
    segment e >= 1 reconstructs at (2m + 33) << (e - 1), in 13-bit units scaled by 8.
    Sign bit 1 is positive in A-law."""
    a = code ^ 0x55
    sign, e, m = a >> 7, (a >> 4) & 7, a & 0xF
    magnitude = (2 * m + 1 if e == 0 else (2 * m + 33) << (e - 1)) * 8
    return magnitude if sign else -magnitude


def test_decode_tables_follow_itu_rules_for_all_256_codes() -> None:
    assert [int(v) for v in g711.ULAW_DECODE] == [itu_ulaw_value(c) for c in range(256)]
    assert [int(v) for v in g711.ALAW_DECODE] == [itu_alaw_value(c) for c in range(256)]


def test_decode_tables_known_values_from_g711_tables() -> None:
    # Extremes and zero as printed in G.711 Tables 1a/2a (scaled to 16 bits).
    assert g711.ULAW_DECODE[0x80] == 8031 * 4 and g711.ULAW_DECODE[0x00] == -8031 * 4
    assert g711.ULAW_DECODE[0xFF] == 0 and g711.ULAW_DECODE[0x7F] == 0  # ±0
    assert g711.ALAW_DECODE[0xAA] == 4032 * 8 and g711.ALAW_DECODE[0x2A] == -4032 * 8
    assert g711.ALAW_DECODE[0xD5] == 8 and g711.ALAW_DECODE[0x55] == -8  # smallest steps


def test_encode_picks_the_code_of_each_reconstruction_value() -> None:
    # Encoding a table value must give back its own code (μ-law 0x7F is -0, which is 0).
    for code in range(256):
        value = np.array([g711.ULAW_DECODE[code]], dtype="<i2").tobytes()
        assert g711.ulaw_encode(value)[0] == (0xFF if code == 0x7F else code)
        value = np.array([g711.ALAW_DECODE[code]], dtype="<i2").tobytes()
        assert g711.alaw_encode(value)[0] == code


def test_encode_is_monotonic_over_all_16_bit_inputs() -> None:
    for encoded, table in (
        (g711.ulaw_encode(ALL_SAMPLES), g711.ULAW_DECODE),
        (g711.alaw_encode(ALL_SAMPLES), g711.ALAW_DECODE),
    ):
        levels = table[np.frombuffer(encoded, dtype=np.uint8)].astype(np.int32)
        assert np.all(np.diff(levels) >= 0)
        # every reconstruction value is within one step of its input: |error| <= 1024
        error = levels - np.arange(-32768, 32768)
        assert np.max(np.abs(error)) <= 1024


def test_tables_equal_audioop_for_all_codes_and_samples() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop", reason="audioop was removed in Python 3.13")
    assert g711.ulaw_decode(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)
    assert g711.alaw_decode(ALL_CODES) == audioop.alaw2lin(ALL_CODES, 2)
    assert g711.ulaw_encode(ALL_SAMPLES) == audioop.lin2ulaw(ALL_SAMPLES, 2)
    assert g711.alaw_encode(ALL_SAMPLES) == audioop.lin2alaw(ALL_SAMPLES, 2)


@pytest.mark.parametrize(
    ("encoder", "decoder"),
    [(g711.PcmuEncoder(), g711.PcmuDecoder()), (g711.PcmaEncoder(), g711.PcmaDecoder())],
    ids=["PCMU", "PCMA"],
)
def test_1khz_tone_at_minus_10_dbfs_round_trip(encoder: Encoder, decoder: Decoder) -> None:
    x = sine(1000, -10, RATE, 1.0)
    y = run_codec(encoder, decoder, x)
    assert len(y) == len(x)
    assert abs(peak_frequency(y, RATE) - 1000) < FREQ_TOLERANCE_HZ
    assert abs(rms_db(y) - rms_db(x)) < LEVEL_TOLERANCE_DB
    assert snr_db(x, y) > SNR_FLOOR_DB


@pytest.mark.parametrize("law", ["PCMU", "PCMA"])
def test_speech_like_signal_snr(law: str) -> None:
    x = speech_like(RATE, 1.0)
    enc, dec = (
        (g711.PcmuEncoder(), g711.PcmuDecoder())
        if law == "PCMU"
        else (g711.PcmaEncoder(), g711.PcmaDecoder())
    )
    assert snr_db(x, run_codec(enc, dec, x)) > SNR_FLOOR_DB


def test_payload_is_one_byte_per_sample_and_attributes() -> None:
    enc = g711.PcmuEncoder()
    assert len(enc.encode(bytes(320))) == 160 == g711.samples_per_frame(20)
    assert (enc.name, enc.clock_rate, enc.pcm_rate, enc.frame_ms) == ("PCMU", 8000, 8000, 20)
    assert g711.PcmaDecoder(frame_ms=30).frame_ms == 30
    assert isinstance(enc, Encoder) and isinstance(g711.PcmaDecoder(), Decoder)


def test_odd_pcm_length_is_rejected() -> None:
    with pytest.raises(CodecError, match="not a whole number of s16 samples"):
        g711.PcmaEncoder().encode(b"\x00\x01\x02")
    with pytest.raises(CodecError):
        g711.ulaw_encode(b"\x00")


def test_plc_repeats_last_frame_then_fades_to_silence() -> None:
    dec = g711.PcmuDecoder()
    frame = g711.ulaw_encode(to_pcm(sine(1000, -10, RATE, 0.02)))
    last = from_pcm(dec.decode(frame))
    first = from_pcm(dec.conceal(160))
    assert len(first) == 160
    # starts as the repeated frame, then fades: gain 1 at sample 0, 2/3 at the end of 20 ms
    assert first[0] == pytest.approx(last[0], abs=1)
    ramp = 1 - np.arange(160) / (RATE * g711.PLC_FADE_MS / 1000)
    assert np.allclose(first, np.trunc(last * ramp), atol=1)
    second = from_pcm(dec.conceal(160))
    assert rms_db(second) < rms_db(first) - 3
    third = from_pcm(dec.conceal(240))  # not a whole frame: still the right count
    assert len(third) == 240
    assert np.any(third[:150]) and not np.any(third[160:])  # silent from 60 ms into the loss
    assert dec.conceal(160) == bytes(320)
    # a good packet resets the fade
    dec.decode(frame)
    assert from_pcm(dec.conceal(80))[0] == pytest.approx(last[0], abs=1)


def test_plc_without_history_is_silence_and_rejects_negative() -> None:
    dec = g711.PcmaDecoder()
    assert dec.conceal(160) == bytes(320)
    assert dec.conceal(0) == b""
    with pytest.raises(CodecError):
        dec.conceal(-1)
