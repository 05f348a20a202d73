"""RtpTranscoder: audio judged after a real encode -> transcode -> decode chain, RTP headers,
re-packetisation, concealment, RFC 4733 relay and bad input.

Every chain uses the real codecs: the sender encodes with the codec a browser or a switch
would use (Opus at 48 kHz like a browser, G.711/G.729 at 8 kHz), the transcoder under test
turns the RTP into the other codec, and the receiver decodes it as the far end would (Opus at
48 kHz again). Audio is judged on the decoded signal: tone frequency and level, correlation
of a speech-like signal with the original after aligning the codec delay.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
import pytest

from gateway.media.bridge import Transcoder
from gateway.media.codecs import get_decoder, get_encoder
from gateway.media.codecs.base import CodecError
from gateway.media.codecs.dtmf import DTMF_EVENTS, pack_event, unpack_event
from gateway.media.transcode import (
    CLOCK_RATES,
    MAX_CONCEAL_MS,
    PT_CN,
    RtpTranscoder,
    make_transcoder,
    pairs,
)
from tests.unit.media.codecs.signals import (
    Signal,
    aligned,
    codec_delay,
    correlation,
    from_pcm,
    peak_frequency,
    rms_db,
    sine,
    speech_like,
    to_pcm,
)

PT = {"PCMU": 0, "PCMA": 8, "G729": 18, "opus": 111}
"""Payload types as a browser (opus 111) and a switch (static types) would use them."""
SENDER_RATE = {"PCMU": 8000, "PCMA": 8000, "G729": 8000, "opus": 48000}
"""PCM rate of the far-end codec: a browser encodes and decodes Opus at 48 kHz."""
IN_SSRC = 0x11223344
OUT_SSRC = 0x55667788
FREQ_TOLERANCE_HZ = 3.0
LEVEL_TOLERANCE_DB = {"PCMU": 0.5, "PCMA": 0.5, "G729": 1.5, "opus": 1.0}
"""Level error of a -10 dBFS 1 kHz tone after the chain, allowed by the lossiest codec in
it (measured: G.711 only 0.06 dB, with Opus up to 0.12 dB, with G.729 0.44-0.74 dB)."""
SPEECH_CORRELATION_FLOOR = {"PCMU": 0.99, "PCMA": 0.99, "G729": 0.78, "opus": 0.92}
"""Correlation of the speech-like signal with the original after delay alignment, floor set
by the lossiest codec in the chain (measured: G.711 only 0.9998, Opus <-> G.711 0.944-0.975,
G.711 <-> G.729 0.902-0.904, Opus <-> G.729 0.828-0.846)."""
WARMUP_S = 0.1
"""Decoded audio skipped before judging (codec start-up)."""
DTMF_IN_PT, DTMF_OUT_PT = 101, 100


def lowpassed_speech(seconds: float) -> tuple[Signal, Signal]:
    """The speech-like signal band-limited to 3.8 kHz at 48 kHz, and the same at 8 kHz.

    Band-limiting first makes the 8 kHz version exactly every sixth sample of the 48 kHz one,
    so one reference serves both sides.
    """
    x = speech_like(48000, seconds)
    spectrum = np.fft.rfft(x)
    spectrum[int(3800 * len(x) / 48000) :] = 0
    x48 = np.fft.irfft(spectrum, len(x))
    return x48, x48[::6]


def rtp(
    pt: int, seq: int, ts: int, payload: bytes, *, marker: bool = False, ssrc: int = IN_SSRC
) -> bytes:
    """One RTP packet (RFC 3550 §5.1), no CSRC, no extension."""
    return (
        struct.pack(
            "!BBHII", 0x80, pt | (0x80 if marker else 0), seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc
        )
        + payload
    )


def header(packet: bytes) -> tuple[int, int, int, int, int]:
    """(marker, pt, seq, ts, ssrc) of an output packet."""
    seq, ts, ssrc = struct.unpack_from("!HII", packet, 2)
    return packet[1] >> 7, packet[1] & 0x7F, seq, ts, ssrc


def send_stream(
    codec: str,
    x: Signal,
    *,
    ptime_ms: int = 20,
    seq0: int = 1000,
    ts0: int = 50_000,
    markers: Sequence[int] = (0,),
) -> list[bytes]:
    """Encode ``x`` (at the sender's rate) as the far end would and packetise it as RTP."""
    rate = SENDER_RATE[codec]
    enc = get_encoder(codec, pcm_rate=rate, frame_ms=ptime_ms) if codec == "opus" else None
    enc = enc or get_encoder(codec, frame_ms=ptime_ms)
    frame = rate * ptime_ms // 1000
    step = CLOCK_RATES[codec] * ptime_ms // 1000
    pcm = to_pcm(x)
    packets = []
    for i in range(len(x) // frame):
        payload = enc.encode(pcm[i * frame * 2 : (i + 1) * frame * 2])
        packets.append(rtp(PT[codec], seq0 + i, ts0 + i * step, payload, marker=i in markers))
    return packets


def run(transcoder: RtpTranscoder, packets: Sequence[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for i, packet in enumerate(packets):
        out += transcoder.transcode(packet, i * 0.02)
    return out


def receive(codec: str, packets: Sequence[bytes]) -> Signal:
    """Decode output packets as the far end would (Opus at 48 kHz, like a browser)."""
    dec = get_decoder(codec, pcm_rate=48000) if codec == "opus" else get_decoder(codec)
    return from_pcm(b"".join(dec.decode(p[12:]) for p in packets))


def transcoder(a: str, b: str, **kw: object) -> RtpTranscoder:
    return make_transcoder(a, b, in_pt=PT[a], out_pt=PT[b], ssrc=OUT_SSRC, **kw)  # type: ignore[arg-type]


def tone_at(codec: str, seconds: float = 1.0) -> Signal:
    return sine(1000, -10, SENDER_RATE[codec], seconds)


def worst(a: str, b: str, table: dict[str, float]) -> float:
    """The larger tolerance of the two codecs of a chain."""
    return max(table[a], table[b])


PAIRS = [pytest.param(a, b, id=f"{a}->{b}") for a, b in pairs()]


# --------------------------------------------------------------------------- audio quality


def test_pairs_lists_the_supported_set() -> None:
    narrow = {"PCMU", "PCMA", "G729"}
    expected = {("opus", n) for n in narrow} | {(n, "opus") for n in narrow}
    expected |= {(a, b) for a in narrow for b in narrow if a != b}
    assert set(pairs()) == expected
    assert len(pairs()) == 12


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_1khz_tone_arrives_at_1khz_and_the_same_level(a: str, b: str) -> None:
    x = tone_at(a)
    out = run(transcoder(a, b), send_stream(a, x))
    assert len(out) == 50
    y = receive(b, out)
    rate = SENDER_RATE[b]
    assert len(y) == rate  # one second in, one second out
    steady = y[int(rate * WARMUP_S) :]
    assert abs(peak_frequency(steady, rate) - 1000) < FREQ_TOLERANCE_HZ
    assert abs(rms_db(steady) - rms_db(tone_at(b))) < worst(a, b, LEVEL_TOLERANCE_DB)


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_speech_like_signal_keeps_its_shape(a: str, b: str) -> None:
    x48, x8 = lowpassed_speech(2.0)
    x_in = x48 if SENDER_RATE[a] == 48000 else x8
    ref = x48 if SENDER_RATE[b] == 48000 else x8
    y = receive(b, run(transcoder(a, b), send_stream(a, x_in)))
    rate = SENDER_RATE[b]
    lag = codec_delay(ref, y, rate // 25)  # the chain delays by well under 40 ms
    r, o = aligned(ref, y, lag, skip=int(rate * WARMUP_S))
    assert correlation(r, o) > min(SPEECH_CORRELATION_FLOOR[a], SPEECH_CORRELATION_FLOOR[b])


# --------------------------------------------------------------------------- RTP headers


@pytest.mark.parametrize(
    ("a", "b", "step"),
    [("opus", "PCMU", 160), ("opus", "G729", 160), ("PCMU", "opus", 960), ("G729", "opus", 960)],
)
def test_headers_seq_ts_ssrc_and_marker(a: str, b: str, step: int) -> None:
    packets = send_stream(a, tone_at(a), markers=(0, 30))
    out = run(transcoder(a, b, initial_seq=65530, initial_ts=2**32 - 3 * step), packets)
    heads = [header(p) for p in out]
    assert len(heads) == 50
    assert [h[2] for h in heads] == [(65530 + i) & 0xFFFF for i in range(50)]  # wraps
    assert [h[3] for h in heads] == [(2**32 - 3 * step + i * step) % 2**32 for i in range(50)]
    assert {h[4] for h in heads} == {OUT_SSRC}
    assert {h[1] for h in heads} == {PT[b]}
    assert [i for i, h in enumerate(heads) if h[0]] == [0, 30]  # talkspurt starts kept


def test_random_ssrc_seq_and_ts_when_not_given() -> None:
    a, b = transcoder("PCMU", "PCMA"), make_transcoder("PCMU", "PCMA", in_pt=0, out_pt=8)
    c = make_transcoder("PCMU", "PCMA", in_pt=0, out_pt=8)
    packet = send_stream("PCMU", tone_at("PCMU", 0.02))[0]
    assert header(a.transcode(packet, 0.0)[0])[4] == OUT_SSRC
    hb, hc = header(b.transcode(packet, 0.0)[0]), header(c.transcode(packet, 0.0)[0])
    assert hb[2:] != hc[2:]  # 80 random bits: equal only by a 2**-80 accident


def test_input_sequence_and_timestamp_wrap_without_loss() -> None:
    packets = send_stream("opus", tone_at("opus"), seq0=65520, ts0=2**32 - 960 * 10)
    t = transcoder("opus", "PCMU", initial_ts=0)
    out = run(t, packets)
    assert [header(p)[3] for p in out] == [160 * i for i in range(50)]
    assert t.concealed_packets == 0 and t.discontinuities == 0


# --------------------------------------------------------------------------- ptime


@pytest.mark.parametrize(
    ("a", "b", "in_ms", "out_ms"),
    [
        ("opus", "PCMU", 20, 40),
        ("opus", "G729", 20, 40),
        ("PCMU", "opus", 30, 20),
        ("PCMA", "G729", 30, 20),
        ("G729", "PCMU", 20, 30),
        ("PCMU", "opus", 20, 60),
    ],
)
def test_repacketisation_between_ptimes(a: str, b: str, in_ms: int, out_ms: int) -> None:
    seconds = 1.2  # a whole number of 20, 30, 40 and 60 ms packets
    packets = send_stream(a, tone_at(a, seconds), ptime_ms=in_ms)
    assert len(packets) == round(seconds * 1000 / in_ms)
    out = run(transcoder(a, b, in_ptime_ms=in_ms, out_ptime_ms=out_ms), packets)
    assert len(out) == round(seconds * 1000 / out_ms)
    step = CLOCK_RATES[b] * out_ms // 1000
    heads = [header(p) for p in out]
    assert [(h[3] - heads[0][3]) % 2**32 for h in heads] == [i * step for i in range(len(out))]
    assert [(h[2] - heads[0][2]) % 2**16 for h in heads] == list(range(len(out)))
    y = receive(b, out)
    rate = SENDER_RATE[b]
    assert len(y) == round(rate * seconds)
    steady = y[int(rate * WARMUP_S) :]
    assert abs(peak_frequency(steady, rate) - 1000) < FREQ_TOLERANCE_HZ
    assert abs(rms_db(steady) - rms_db(tone_at(b))) < worst(a, b, LEVEL_TOLERANCE_DB)


def test_partial_frame_is_flushed_padded_at_a_discontinuity() -> None:
    """30 ms in, 20 ms out: 10 ms is pending when the sender stops; after a silence (ts jump
    with no sequence gap) that remainder goes out padded, then the new talkspurt."""
    t = transcoder("PCMU", "PCMA", in_ptime_ms=30, initial_ts=0)
    pkts = send_stream("PCMU", tone_at("PCMU", 0.03 * 3), ptime_ms=30)  # 3 x 240 samples
    out = run(t, pkts)
    assert [header(p)[3] for p in out] == [0, 160, 320, 480]  # 640 of 720 samples
    later = rtp(0, 1003, 50_000 + 240 * 3 + 8000, bytes([0xFF]) * 240, marker=True)
    more = t.transcode(later, 1.0)
    heads = [header(p) for p in more]
    assert [h[3] for h in heads] == [640, 720 + 8000]
    assert [h[0] for h in heads] == [0, 1]
    assert t.discontinuities == 1 and t.concealed_packets == 0
    padded = from_pcm(get_decoder("PCMA").decode(more[0][12:]))
    assert np.all(padded[80:] == padded[-1]) and abs(padded[-1]) <= 8  # A-law has no zero


# --------------------------------------------------------------------------- loss


@pytest.mark.parametrize(
    ("a", "b"), [("opus", "PCMU"), ("opus", "G729"), ("PCMU", "opus"), ("G729", "PCMA")]
)
@pytest.mark.parametrize("lost", [[20], [20, 21]])
def test_lost_packets_are_concealed_in_sequence(a: str, b: str, lost: list[int]) -> None:
    packets = send_stream(a, tone_at(a))
    t = transcoder(a, b)
    out = run(t, [p for i, p in enumerate(packets) if i not in lost])
    assert len(out) == 50  # one output packet per 20 ms, the lost ones included
    heads = [header(p) for p in out]
    step = CLOCK_RATES[b] // 50
    assert [(h[2] - heads[0][2]) % 2**16 for h in heads] == list(range(50))
    assert [(h[3] - heads[0][3]) % 2**32 for h in heads] == [i * step for i in range(50)]
    assert t.concealed_packets == len(lost)
    assert t.concealed_samples == 160 * len(lost)
    assert t.fec_attempts == (1 if a == "opus" else 0)
    y = receive(b, out)
    frame = SENDER_RATE[b] // 50
    concealed = y[lost[0] * frame : (lost[0] + 1) * frame]
    assert len(concealed) == frame
    # A steady tone is continued through the gap, not replaced by silence or a click.
    assert abs(peak_frequency(concealed, SENDER_RATE[b]) - 1000) < 60
    assert rms_db(concealed) > -20


def test_long_outage_is_a_discontinuity_not_concealment() -> None:
    packets = send_stream("PCMU", tone_at("PCMU"))
    gap = MAX_CONCEAL_MS // 20 + 1  # one packet more than concealment covers
    t = transcoder("PCMU", "opus", initial_ts=0)
    out = run(t, packets[:10] + packets[10 + gap :])
    assert t.concealed_packets == 0 and t.discontinuities == 1
    ts = [header(p)[3] for p in out]
    assert ts[10] - ts[9] == 960 * (gap + 1)  # the output timestamp jumps like the input's
    assert len(out) == 50 - gap


def test_dtx_timestamp_jump_without_sequence_gap_is_not_concealed() -> None:
    packets = send_stream("opus", tone_at("opus"))
    # The sender paused 200 ms (DTX): same sequence run, timestamps 10 packets later.
    shifted = [rtp(111, 1000 + i, 50_000 + 960 * (i + 10), p[12:]) for i, p in enumerate(packets)]
    t = transcoder("opus", "PCMU", initial_ts=0)
    out = run(t, packets[:25] + shifted[25:])
    ts = [header(p)[3] for p in out]
    assert ts[25] - ts[24] == 160 * 11
    assert t.concealed_packets == 0 and t.discontinuities == 1


def test_opus_dtx_sends_nothing_in_silence_and_marks_the_next_talkspurt() -> None:
    """With DTX (the browser's ``usedtx=1``) silence from the switch is not sent as Opus;
    the talkspurt after it starts with the marker bit, at the timestamp the time elapsed."""
    silence = np.zeros(8000)
    x = np.concatenate([tone_at("PCMU", 0.5), silence, tone_at("PCMU", 0.5)])
    packets = send_stream("PCMU", x)  # 100 packets of 20 ms
    t = transcoder("PCMU", "opus", opus_dtx=True, initial_ts=0, initial_seq=0)
    out = run(t, packets)
    assert t.dtx_frames > 25  # most of the 50 silent frames (libopus enters DTX after ~200 ms)
    assert len(out) == 100 - t.dtx_frames
    heads = [header(p) for p in out]
    assert [h[2] for h in heads] == list(range(len(out)))  # no sequence gap (RFC 3550 §5.1)
    resumed = next(i for i in range(1, len(heads)) if heads[i][3] - heads[i - 1][3] > 960)
    assert heads[resumed][0] == 1  # marker: start of a talkspurt (RFC 3551 §4.1)
    # The timestamp kept counting through the silence: every packet sits at 960 x its index.
    assert all(h[3] % 960 == 0 for h in heads) and heads[-1][3] == 960 * 99
    # The tone after the silence decodes as the tone.
    tail = receive("opus", out[resumed + 5 :])
    assert peak_frequency(tail, 48000) == pytest.approx(1000, abs=FREQ_TOLERANCE_HZ)
    # Without DTX every frame is sent.
    plain = transcoder("PCMU", "opus")
    assert len(run(plain, packets)) == 100 and plain.dtx_frames == 0


def test_loss_then_corrupt_packet_then_recovery() -> None:
    """A gap before a corrupt Opus packet: the gap is filled (silence: the corrupt packet
    has no usable FEC), the corrupt packet counts as lost and is concealed in turn."""
    packets = send_stream("opus", tone_at("opus", 0.4))
    corrupt = packets[6][:12] + b"\x03"  # code 3 without its frame count (RFC 6716 §3.2.5)
    t = transcoder("opus", "PCMU")
    out = run(t, packets[:5] + [corrupt] + packets[7:])
    assert len(out) == 20
    assert t.drop_decode == 1
    assert t.concealed_packets == 2 and t.concealed_samples == 320
    heads = [header(p) for p in out]
    assert [(h[2] - heads[0][2]) % 2**16 for h in heads] == list(range(20))
    assert [(h[3] - heads[0][3]) % 2**32 for h in heads] == [160 * i for i in range(20)]


def test_late_and_duplicate_packets_are_dropped() -> None:
    packets = send_stream("PCMU", tone_at("PCMU", 0.2))
    t = transcoder("PCMU", "PCMA")
    out = run(t, packets[:5])
    assert t.transcode(packets[4], 0.1) == []  # duplicate
    assert t.transcode(packets[2], 0.1) == []  # late
    out += run(t, packets[5:])
    assert t.drop_late == 2
    assert len(out) == 10


def test_sender_restart_and_new_ssrc_continue_the_output_stream() -> None:
    packets = send_stream("PCMU", tone_at("PCMU", 0.2))
    t = transcoder("PCMU", "opus", initial_ts=0, initial_seq=0)
    out = run(t, packets[:5])
    # The far end re-anchors: new SSRC, new random seq/ts (PITFALLS 9).
    moved = [rtp(0, 7 + i, 999 + 160 * i, p[12:], ssrc=0xABCDEF) for i, p in enumerate(packets)]
    out += run(t, moved[5:8])
    # The same source jumps its sequence far back (a restart, RFC 3550 §A.1).
    restarted = [
        rtp(0, 40000 + i, 5 + 160 * i, p[12:], ssrc=0xABCDEF) for i, p in enumerate(packets)
    ]
    out += run(t, restarted[8:])
    heads = [header(p) for p in out]
    assert [h[2] for h in heads] == list(range(10))
    assert [h[3] for h in heads][:6] == [960 * i for i in range(6)]
    assert t.drop_late == 0


def test_undecodable_packet_is_concealed_like_a_lost_one() -> None:
    packets = send_stream("G729", tone_at("G729"))
    broken = packets[10][:12] + packets[10][12:19]  # 7 bytes: not N*10 (+2)
    t = transcoder("G729", "PCMU")
    out = run(t, packets[:10] + [broken] + packets[11:])
    assert t.drop_decode == 1
    assert t.concealed_packets == 1
    assert len(out) == 50


# --------------------------------------------------------------------------- RFC 4733


def dtmf_packets(digit_index: int, seq: int, ts: int, step: int, *, frames: int = 5) -> list[bytes]:
    """One digit as a sender emits it (RFC 4733 §2.5.1): M on the first packet, growing
    duration, three end-of-event retransmissions with the final duration."""
    out = []
    for k in range(1, frames + 1):
        payload = pack_event(digit_index, end=False, volume=10, duration=k * step)
        out.append(rtp(DTMF_IN_PT, seq + k - 1, ts, payload, marker=k == 1))
    for r in range(3):
        payload = pack_event(digit_index, end=True, volume=10, duration=frames * step)
        out.append(rtp(DTMF_IN_PT, seq + frames + r, ts, payload))
    return out


@pytest.mark.parametrize(("a", "b"), [("opus", "PCMU"), ("PCMA", "opus"), ("opus", "G729")])
def test_dtmf_digits_are_relayed_with_rescaled_timing(a: str, b: str) -> None:
    in_step, out_step = CLOCK_RATES[a] // 50, CLOCK_RATES[b] // 50
    t = transcoder(a, b, dtmf_in_pt=DTMF_IN_PT, dtmf_out_pt=DTMF_OUT_PT, initial_ts=1000)
    audio = send_stream(a, tone_at(a, 0.04))  # two audio packets anchor the stream
    seq, ts = 1002, 50_000 + 2 * in_step
    relayed: list[bytes] = run(t, audio)
    audio_out = len(relayed)
    digits = "0123456789*#"
    for digit in digits:
        packets = dtmf_packets(DTMF_EVENTS.index(digit), seq, ts, in_step)
        relayed += run(t, packets)
        seq += len(packets)
        ts += 10 * in_step  # the next digit starts 200 ms later
    events = relayed[audio_out:]
    assert len(events) == 8 * len(digits)  # end retransmissions kept
    assert t.dtmf_relayed == len(events)
    heads = [header(p) for p in events]
    assert {h[1] for h in heads} == {DTMF_OUT_PT}
    assert [(h[2] - header(relayed[0])[2]) % 2**16 for h in heads] == [
        audio_out + i for i in range(len(events))
    ]
    for n, digit in enumerate(digits):
        chunk = events[8 * n : 8 * (n + 1)]
        got = [unpack_event(p[12:]) for p in chunk]
        assert {ev.digit for ev in got} == {digit}
        assert [ev.duration for ev in got] == [k * out_step for k in range(1, 6)] + [
            5 * out_step
        ] * 3
        assert [ev.end for ev in got] == [False] * 5 + [True] * 3
        assert {ev.volume for ev in got} == {10}
        assert [header(p)[0] for p in chunk] == [1] + [0] * 7
        # The event's timestamp is its start on the output clock, where the audio would be.
        assert {header(p)[3] for p in chunk} == {1000 + (2 + 10 * n) * out_step}
    assert t.drop_payload_type == 0 and t.concealed_packets == 0


def test_firefox_one_packet_digit_gets_one_marker_and_a_detectable_duration() -> None:
    """Firefox with telephone-event/8000 beside Opus asked for 100 ms: it ends the digit at
    once, as three end packets of 960 (20 ms of Opus clock), each with the marker bit.
    Toward the switch that is one event (one marker) of at least the minimum duration."""
    t = transcoder(
        "opus", "PCMU", dtmf_in_pt=DTMF_IN_PT, dtmf_out_pt=DTMF_OUT_PT, dtmf_min_duration_ms=100
    )
    audio = send_stream("opus", tone_at("opus", 0.04))
    run(t, audio)
    ts = 50_000 + 2 * 960
    digit = [
        rtp(DTMF_IN_PT, 1002 + r, ts, pack_event(5, end=True, volume=10, duration=960), marker=True)
        for r in range(3)
    ]
    out = run(t, digit)
    assert [header(p)[0] for p in out] == [1, 0, 0]
    assert [unpack_event(p[12:]).duration for p in out] == [800] * 3  # 100 ms at 8000
    # A second digit is a new event: its first packet is marked again; a long digit keeps
    # its own duration (the minimum only lengthens).
    ts += 20 * 960
    long = [
        rtp(DTMF_IN_PT, 1005 + k, ts, pack_event(7, end=k == 2, volume=10, duration=d))
        for k, d in enumerate((9600, 19200, 19200))
    ]
    out = run(t, long)
    assert [header(p)[0] for p in out] == [1, 0, 0]
    assert [unpack_event(p[12:]).duration for p in out] == [1600, 3200, 3200]
    with pytest.raises(ValueError):
        transcoder("opus", "PCMU", dtmf_min_duration_ms=5000)


def test_lost_event_packets_do_not_trigger_audio_concealment() -> None:
    t = transcoder("opus", "PCMU", dtmf_in_pt=DTMF_IN_PT, dtmf_out_pt=DTMF_OUT_PT)
    audio = send_stream("opus", tone_at("opus", 0.1))
    run(t, audio[:2])
    events = dtmf_packets(5, 1002, 50_000 + 2 * 960, 960)
    out = run(t, events[:3] + events[5:])  # two event packets lost
    assert len(out) == 6
    assert run(t, events[6:7]) == []  # a duplicate event packet is dropped like audio
    assert t.drop_late == 1
    # Audio resumes after the event with the sequence continuing: no audio was lost.
    resumed = [
        rtp(111, 1002 + len(events) + i, 50_000 + 960 * (2 + i), p[12:])
        for i, p in enumerate(audio[2:])
    ]
    assert len(run(t, resumed)) == 3
    assert t.concealed_packets == 0


def test_events_are_dropped_without_an_outgoing_telephone_event() -> None:
    t = transcoder("opus", "PCMU", dtmf_in_pt=DTMF_IN_PT)
    assert t.transcode(dtmf_packets(1, 1, 1, 960)[0], 0.0) == []
    assert t.drop_payload_type == 1


def test_long_event_going_up_in_rate_is_segmented() -> None:
    """8000 -> 48000: a 2 s event no longer fits 16 bits (RFC 4733 §2.5.2.3)."""
    t = transcoder("PCMU", "opus", dtmf_in_pt=DTMF_IN_PT, dtmf_out_pt=DTMF_OUT_PT, initial_ts=0)
    event = rtp(DTMF_IN_PT, 1, 0, pack_event(3, end=True, volume=0, duration=16000))
    (packet,) = t.transcode(event, 0.0)
    assert header(packet)[3] == 65535
    assert unpack_event(packet[12:]).duration == 96000 - 65535


# --------------------------------------------------------------------------- bad input


def test_malformed_packets_are_dropped_and_counted() -> None:
    good = send_stream("opus", tone_at("opus", 0.02))[0]
    t = transcoder("opus", "PCMU", dtmf_in_pt=DTMF_IN_PT, dtmf_out_pt=DTMF_OUT_PT)
    malformed = [
        b"",
        good[:11],
        good[:12],  # header only: no payload
        b"\x00" + good[1:],  # version 0
        b"\xc0" + good[1:],  # version 3
        b"\x8f" + good[1:20],  # 15 CSRCs announced, 8 bytes present
        b"\x90" + good[1:14],  # extension header cut short
        b"\x90" + good[1:12] + b"\xbe\xde\x00\x10" + b"\x00" * 8,  # extension longer than packet
        b"\xa0" + good[1:12] + b"\x01\x02\x03\x09",  # padding longer than payload
        b"\xa0" + good[1:12] + b"\x01\x02\x03\x00",  # padding count zero
        rtp(DTMF_IN_PT, 5, 5, b"\x01\x02"),  # event payload shorter than 4 bytes
    ]
    for packet in malformed:
        assert t.transcode(packet, 0.0) == []
    assert t.drop_malformed == len(malformed)
    assert t.transcode(rtp(PT_CN, 1, 1, b"\x40"), 0.0) == []
    assert t.transcode(rtp(99, 1, 1, b"\x00" * 10), 0.0) == []
    assert (t.drop_cn, t.drop_payload_type) == (1, 1)
    assert t.transcode(rtp(111, 6, 6, b"\x03\x00"), 0.0) == []  # Opus code 3, zero frames
    assert t.drop_decode == 1
    assert t.packets_in == len(malformed) + 3
    assert t.stats()["drop_malformed"] == len(malformed)
    assert len(t.transcode(good, 0.0)) == 1  # the stream goes on


def test_padding_csrc_and_extension_are_skipped() -> None:
    good = send_stream("PCMU", tone_at("PCMU", 0.02))[0]
    payload = good[12:]
    csrc_ext = (
        bytes([0x80 | 0x20 | 0x10 | 2])
        + good[1:12]
        + b"\x00" * 8
        + b"\xbe\xde\x00\x01"
        + b"\x00" * 4
    )
    packet = csrc_ext + payload + b"\x00\x00\x03"
    t = transcoder("PCMU", "PCMA")
    (out,) = t.transcode(packet, 0.0)
    assert out[12:] == get_encoder("PCMA").encode(get_decoder("PCMU").decode(payload))


@pytest.mark.parametrize("codec", ["opus", "PCMU", "G729"])
def test_every_truncation_and_random_payloads_never_raise(codec: str) -> None:
    out_codec = {"opus": "PCMU", "PCMU": "PCMA", "G729": "PCMA"}[codec]
    t = transcoder(codec, out_codec, dtmf_in_pt=DTMF_IN_PT, dtmf_out_pt=DTMF_OUT_PT)
    packets = send_stream(codec, tone_at(codec, 0.2))
    rng = np.random.default_rng(4733)
    sent = 0
    for packet in packets:
        for cut in range(len(packet)):
            t.transcode(packet[:cut], 0.0)
            sent += 1
        t.transcode(packet, 0.0)
        for _ in range(20):
            body = rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes()
            pt = int(rng.choice([PT[codec], DTMF_IN_PT, PT_CN, 99]))
            t.transcode(
                rtp(pt, int(rng.integers(0, 65536)), int(rng.integers(0, 2**32)), body), 0.0
            )
            t.transcode(body, 0.0)
            sent += 2
        sent += 1
    assert t.packets_in == sent
    assert t.drop_malformed > 0 and t.drop_payload_type > 0
    # Afterwards a clean stream from a new source is transcoded packet for packet.
    fresh = [rtp(PT[codec], i, 160 * i, p[12:], ssrc=0xFEED) for i, p in enumerate(packets)]
    outs = [len(t.transcode(p, 1.0)) for p in fresh]
    # The first may also flush a partial frame that random payload lengths left pending.
    assert outs[0] in (1, 2) and outs[1:] == [1] * (len(fresh) - 1)


# --------------------------------------------------------------------------- construction


def test_construction_errors() -> None:
    with pytest.raises(ValueError, match="not supported"):
        make_transcoder("opus", "opus", in_pt=111, out_pt=111)
    with pytest.raises(ValueError, match="not supported"):
        make_transcoder("PCMU", "pcmu", in_pt=0, out_pt=0)
    with pytest.raises(ValueError, match="unknown codec"):
        make_transcoder("G722", "PCMU", in_pt=9, out_pt=0)
    with pytest.raises(ValueError, match="RTP clock"):
        RtpTranscoder(
            in_codec="opus", in_pt=111, in_clock=8000, out_codec="PCMU", out_pt=0, out_clock=8000
        )
    with pytest.raises(ValueError, match="outside 0-127"):
        make_transcoder("PCMU", "PCMA", in_pt=0, out_pt=128)
    with pytest.raises(ValueError, match="positive"):
        make_transcoder("PCMU", "PCMA", in_pt=0, out_pt=8, out_ptime_ms=0)
    with pytest.raises(CodecError):
        make_transcoder("G729", "PCMU", in_pt=18, out_pt=0, in_ptime_ms=25)
    with pytest.raises(CodecError):
        make_transcoder("PCMU", "opus", in_pt=0, out_pt=111, out_ptime_ms=30)


def test_case_insensitive_names_and_the_bridge_protocol() -> None:
    t: Transcoder = make_transcoder("OPUS", "pcma", in_pt=111, out_pt=8, opus_complexity=0)
    assert isinstance(t, RtpTranscoder)
    assert (t.in_codec, t.out_codec, t.in_clock, t.out_clock) == ("opus", "PCMA", 48000, 8000)
    u = make_transcoder("pcmu", "Opus", in_pt=0, out_pt=111, opus_complexity=0, opus_fec=False)
    assert u.encoder.pcm_rate == 8000 and u.encoder.clock_rate == 48000
