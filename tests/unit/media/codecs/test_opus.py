"""Opus through the system libopus: 8 kHz and 48 kHz paths, PLC, in-band FEC, errors."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.media.codecs import opus
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
    snr_db,
    speech_like,
    to_pcm,
)

LEVEL_TOLERANCE_DB = 1.5
"""Opus is perceptual: a -10 dBFS tone comes back within ~0.6 dB at 8 kHz, 0.1 dB at 48 kHz."""
FREQ_TOLERANCE_HZ = 2.0
TONE_CORRELATION_FLOOR = 0.95
"""Measured 0.98 (8 kHz, complexity 5) and 0.9996 (48 kHz) after delay alignment."""
SPEECH_CORRELATION_FLOOR = 0.93
"""Measured 0.97-0.99 on the speech-like signal after delay alignment."""
FEC_GAIN_DB = 6.0
"""FEC must beat plain PLC on the lost frame by this much (median; measured 10-20 dB)."""
VOICED_DB = -30.0


@pytest.mark.parametrize("rate", [8000, 48000])
def test_1khz_tone_round_trip(rate: int) -> None:
    enc, dec = opus.OpusEncoder(pcm_rate=rate), opus.OpusDecoder(pcm_rate=rate)
    x = sine(1000, -10, rate, 1.0)
    y = run_codec(enc, dec, x)
    assert len(y) == len(x)
    a, b = aligned(x, y, codec_delay(x, y, rate // 50), skip=rate // 10)
    assert abs(peak_frequency(b, rate) - 1000) < FREQ_TOLERANCE_HZ
    assert abs(rms_db(b) - rms_db(a)) < LEVEL_TOLERANCE_DB
    assert correlation(a, b) > TONE_CORRELATION_FLOOR


@pytest.mark.parametrize(("rate", "complexity"), [(8000, 5), (8000, 0), (48000, 5)])
def test_speech_like_round_trip_and_delay(rate: int, complexity: int) -> None:
    enc = opus.OpusEncoder(pcm_rate=rate, complexity=complexity)
    dec = opus.OpusDecoder(pcm_rate=rate)
    x = speech_like(rate, 2.0)
    y = run_codec(enc, dec, x)
    lag = codec_delay(x, y, rate // 50)
    # The whole codec delay is the encoder lookahead (6.5 ms); allow 10 samples at 48 kHz
    # for the phase response of the band limiting.
    assert abs(lag - enc.lookahead) <= rate // 4800
    assert enc.lookahead == rate * 65 // 10000
    a, b = aligned(x, y, lag, skip=rate // 10)
    assert correlation(a, b) > SPEECH_CORRELATION_FLOOR


def test_rtp_clock_is_48000_whatever_the_pcm_rate() -> None:
    enc = opus.OpusEncoder(pcm_rate=8000)
    dec = opus.OpusDecoder(pcm_rate=8000, frame_ms=40)
    assert (enc.name, enc.clock_rate, enc.pcm_rate, enc.frame_ms) == ("opus", 48000, 8000, 20)
    assert (dec.clock_rate, dec.pcm_rate, dec.frame_ms) == (48000, 8000, 40)
    assert isinstance(enc, Encoder) and isinstance(dec, Decoder)
    packet = enc.encode(bytes(320))
    assert dec.packet_samples(packet) == 160
    assert opus.OpusDecoder(pcm_rate=48000).packet_samples(packet) == 960
    # a decoder at another rate decodes the same packet to its own rate
    assert len(opus.OpusDecoder(pcm_rate=48000).decode(packet)) == 960 * 2


@pytest.mark.parametrize(("rate", "samples"), [(8000, 160), (8000, 20), (48000, 960), (48000, 120)])
def test_plc_returns_requested_samples(rate: int, samples: int) -> None:
    enc, dec = opus.OpusEncoder(pcm_rate=rate), opus.OpusDecoder(pcm_rate=rate)
    dec.decode(enc.encode(to_pcm(sine(1000, -10, rate, 0.02))))
    concealed = dec.conceal(samples)
    assert len(concealed) == samples * 2
    assert np.any(from_pcm(concealed))  # continues the tone rather than silence


@pytest.mark.parametrize("samples", [0, 30, 8000 * 121 // 1000])
def test_plc_rejects_lengths_not_multiple_of_2_5_ms(samples: int) -> None:
    with pytest.raises(CodecError, match="multiple of 20"):
        opus.OpusDecoder(pcm_rate=8000).conceal(samples)


def _loss_snr(rate: int, packets: list[bytes], lost: int, use_fec: bool) -> tuple[float, float]:
    """SNR of the lost frame against a lossless decode, and that frame's level."""
    frame = rate // 50
    clean_dec, dec = opus.OpusDecoder(pcm_rate=rate), opus.OpusDecoder(pcm_rate=rate)
    clean, out = [], []
    for i, packet in enumerate(packets[: lost + 2]):
        clean.append(clean_dec.decode(packet))
        if i != lost:
            out.append(dec.decode(packet))
        elif use_fec:
            out.append(dec.decode_fec(packets[i + 1]))
        else:
            out.append(dec.conceal(frame))
    ref = from_pcm(clean[lost])
    got = from_pcm(b"".join(out))[lost * frame : (lost + 1) * frame]
    return snr_db(ref, got), rms_db(ref)


@pytest.mark.parametrize("rate", [8000, 48000])
def test_fec_recovers_a_lost_frame_better_than_plc(rate: int) -> None:
    frame = rate // 50
    enc = opus.OpusEncoder(pcm_rate=rate, fec=True, packet_loss_perc=10)
    pcm = to_pcm(speech_like(rate, 1.0))
    packets = [enc.encode(pcm[i * frame * 2 : (i + 1) * frame * 2]) for i in range(49)]
    gains = []
    for lost in range(2, 47, 3):
        fec_snr, level = _loss_snr(rate, packets, lost, use_fec=True)
        plc_snr, _ = _loss_snr(rate, packets, lost, use_fec=False)
        if level > VOICED_DB:  # silent frames carry nothing to recover
            assert fec_snr > plc_snr, f"frame {lost}: FEC {fec_snr:.1f} dB, PLC {plc_snr:.1f} dB"
            gains.append(fec_snr - plc_snr)
    assert len(gains) >= 8
    assert float(np.median(gains)) > FEC_GAIN_DB


def test_fec_without_fec_data_falls_back_to_plc_length() -> None:
    enc = opus.OpusEncoder(pcm_rate=8000, fec=False)
    dec = opus.OpusDecoder(pcm_rate=8000)
    packet = enc.encode(to_pcm(sine(500, -10, 8000, 0.02)))
    assert len(dec.decode_fec(packet)) == 320
    assert len(dec.decode_fec(packet, 80)) == 160


def test_encoder_options_are_accepted() -> None:
    enc = opus.OpusEncoder(
        pcm_rate=48000,
        frame_ms=10,
        bitrate=32000,
        complexity=10,
        fec=False,
        packet_loss_perc=0,
        dtx=True,
        bandwidth="wideband",
        max_bandwidth="superwideband",
        signal_voice=False,
    )
    assert len(opus.OpusDecoder(pcm_rate=48000).decode(enc.encode(bytes(960)))) == 960


def test_dtx_shrinks_silence_packets() -> None:
    enc = opus.OpusEncoder(pcm_rate=8000, dtx=True)
    sizes = [len(enc.encode(bytes(320))) for _ in range(30)]
    assert min(sizes) <= 2  # RFC 6716 DTX: TOC-only packets during silence


def test_cbr_keeps_every_packet_the_same_size() -> None:
    x = to_pcm(speech_like(8000, 1.0))
    sizes = {}
    for cbr in (False, True):
        enc = opus.OpusEncoder(pcm_rate=8000, bitrate=20000, cbr=cbr, fec=False)
        sizes[cbr] = {len(enc.encode(x[i : i + 320])) for i in range(0, len(x) - 319, 320)}
    assert len(sizes[False]) > 1  # VBR follows the signal
    assert sizes[True] == {50}  # 20 kbit/s x 20 ms = 50 bytes, every packet (RFC 7587 §3.1.2)


@pytest.mark.parametrize(
    ("fmtp", "expected"),
    [
        (None, {"fec": False, "dtx": False, "cbr": False}),
        # RFC 7587 §6.1: useinbandfec absent means 0.
        ("minptime=10", {"fec": False, "dtx": False, "cbr": False}),
        ("minptime=10;useinbandfec=1", {"fec": True, "dtx": False, "cbr": False}),
        (
            "useinbandfec=1; usedtx=1;cbr=1;maxaveragebitrate=24000;maxplaybackrate=16000",
            {"fec": True, "dtx": True, "cbr": True, "max_bitrate": 24000,
             "max_bandwidth": "wideband"},
        ),
        ("maxaveragebitrate=1000;maxplaybackrate=8000",
         {"fec": False, "dtx": False, "cbr": False, "max_bitrate": 6000,
          "max_bandwidth": "narrowband"}),
        ("maxaveragebitrate=9999999;maxplaybackrate=48000;stereo=1",
         {"fec": False, "dtx": False, "cbr": False, "max_bitrate": 510000,
          "max_bandwidth": "fullband"}),
        # Malformed values and unknown parameters are ignored, never raised.
        ("useinbandfec=yes;maxaveragebitrate=-5;maxplaybackrate=x;junk;=;a=b=c",
         {"fec": False, "dtx": False, "cbr": False}),
    ],
)  # fmt: skip
def test_encoder_options_from_the_receivers_fmtp(
    fmtp: str | None, expected: dict[str, object]
) -> None:
    options = opus.encoder_options_from_fmtp(fmtp)
    assert options == expected
    cap = options.pop("max_bitrate", None)  # a cap for the caller, not an encoder setting
    enc = opus.OpusEncoder(pcm_rate=8000, bitrate=cap, **options)  # libopus takes them all
    assert (enc.fec, enc.dtx, enc.cbr) == (expected["fec"], expected["dtx"], expected["cbr"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pcm_rate": 44100}, "pcm_rate 44100"),
        ({"frame_ms": 30}, "frame_ms 30"),
        ({"bandwidth": "ultraband"}, "bandwidth 'ultraband'"),
        ({"complexity": 11}, "opus_encoder_ctl\\(4010, 11\\): invalid argument"),
    ],
)
def test_bad_encoder_options(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(CodecError, match=message):
        opus.OpusEncoder(**kwargs)  # type: ignore[arg-type]


def test_wrong_frame_length_and_bad_payloads() -> None:
    enc, dec = opus.OpusEncoder(pcm_rate=8000), opus.OpusDecoder(pcm_rate=8000)
    with pytest.raises(CodecError, match="wants 320 PCM bytes, got 318"):
        enc.encode(bytes(318))
    with pytest.raises(CodecError, match="empty Opus payload"):
        dec.decode(b"")
    with pytest.raises(CodecError, match="empty Opus payload"):
        dec.decode_fec(b"")
    with pytest.raises(CodecError, match="corrupted stream"):
        dec.decode(b"\xff")  # code 3 TOC without its frame-count byte (RFC 6716 §3.2.5)
    with pytest.raises(CodecError, match="opus_packet_get_nb_samples"):
        dec.packet_samples(b"")
    with pytest.raises(CodecError, match="opus_decode: corrupted stream"):
        dec.decode_fec(b"\xff", 160)


def test_use_after_close_raises_instead_of_crashing() -> None:
    enc, dec = opus.OpusEncoder(pcm_rate=8000), opus.OpusDecoder(pcm_rate=8000)
    packet = enc.encode(bytes(320))
    enc.close()
    dec.close()
    enc.close()  # idempotent
    with pytest.raises(CodecError, match="after close"):
        enc.encode(bytes(320))
    with pytest.raises(CodecError, match="after close"):
        dec.decode(packet)
    with pytest.raises(CodecError, match="after close"):
        dec.conceal(160)


def test_available_and_version() -> None:
    assert opus.available() is None
    assert opus.version().startswith("libopus 1.")


def test_missing_library_gives_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulates an absent libopus by pointing the loader at names that do not exist."""
    monkeypatch.setattr(opus, "LIBRARY_NAMES", ("libopus-missing.so.0", "opus-missing"))
    monkeypatch.setattr(opus, "_lib", None)
    monkeypatch.setattr(opus, "_load_error", None)
    reason = opus.available()
    assert reason is not None and reason.startswith("libopus not found (install Debian package")
    assert "libopus-missing.so.0" in reason
    with pytest.raises(CodecUnavailable, match="libopus not found"):
        opus.OpusDecoder()


def test_library_without_opus_symbols_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loads a real library that is not libopus (bcg729) to exercise the symbol check."""
    monkeypatch.setattr(opus, "LIBRARY_NAMES", ("libbcg729.so.0",))
    monkeypatch.setattr(opus, "_lib", None)
    monkeypatch.setattr(opus, "_load_error", None)
    reason = opus.available()
    assert reason is not None and "libbcg729.so.0: missing symbol" in reason
