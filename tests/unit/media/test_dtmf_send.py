"""DtmfSender: RFC 4733 events generated into a running RTP stream (INFO -> RFC 4733).

The stream is a real StreamRewriter fed 20 ms audio packets, as the bridge feeds it; the
sender is polled after every audio packet, as the bridge polls it. The output is judged as
a receiver would: one sequence space without gaps or duplicates, events decoded with
their codes, durations, marker and end bits.
"""

from __future__ import annotations

import struct

import pytest

from gateway.media.codecs.dtmf import unpack_event
from gateway.media.dtmf_send import (
    END_PACKETS,
    MAX_DURATION_MS,
    MAX_QUEUED,
    MIN_DURATION_MS,
    PAUSE,
    DtmfSender,
    event_code,
)
from gateway.media.rtp import StreamRewriter

TE_PT = 101
OUT_SSRC = 0xCAFEBABE


def audio(seq: int, ts: int) -> bytearray:
    return bytearray(struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, ts, 0x1234) + bytes(160))


def run_stream(sender: DtmfSender, packets: int, *, audio_from: int = 0) -> list[bytes]:
    """Send ``packets`` 20 ms audio packets (from index ``audio_from``) through a rewriter,
    polling the sender after each; return everything sent, in order."""
    stream = StreamRewriter(OUT_SSRC)
    sent: list[bytes] = []
    for i in range(packets):
        now = i * 0.02
        if i >= audio_from:
            buf = audio(5000 + i, 80000 + 160 * i)
            assert stream.rewrite(buf)
            sent.append(bytes(buf))
        sent += sender.poll(now, stream)
    return sent


def fields(packet: bytes) -> tuple[int, int, int, int, int]:
    b1 = packet[1]
    seq, ts, ssrc = struct.unpack_from("!HII", packet, 2)
    return b1 >> 7, b1 & 0x7F, seq, ts, ssrc


def test_digits_become_events_inside_the_audio_sequence_space() -> None:
    sender = DtmfSender(clock=8000, payload_type=TE_PT)
    assert sender.queue("5", 100) == 5
    assert sender.queue("#", 60) == 11
    sent = run_stream(sender, 40)
    heads = [fields(p) for p in sent]
    # One stream: one SSRC, consecutive sequence numbers (RFC 3550 §5.1), audio and events.
    assert {h[4] for h in heads} == {OUT_SSRC}
    seqs = [h[2] for h in heads]
    assert [(b - a) & 0xFFFF for a, b in zip(seqs, seqs[1:], strict=False)] == [1] * (len(seqs) - 1)
    events = [(h, unpack_event(p[12:])) for h, p in zip(heads, sent, strict=True) if h[1] == TE_PT]
    by_code: dict[int, list[tuple[tuple[int, int, int, int, int], object]]] = {}
    for h, ev in events:
        by_code.setdefault(ev.event, []).append((h, ev))
    assert list(by_code) == [5, 11]
    for code, ticks in ((5, 800), (11, 480)):
        packets = by_code[code]
        first_head, first = packets[0]
        assert first_head[0] == 1  # marker on the first packet only (RFC 4733 §2.5.1.1)
        assert all(h[0] == 0 for h, _ in packets[1:])
        assert len({h[3] for h, _ in packets}) == 1  # one start timestamp (§2.3.5)
        durations = [ev.duration for _, ev in packets]  # type: ignore[attr-defined]
        assert durations == sorted(durations) and durations[0] == 160
        ends = [ev for _, ev in packets if ev.end]  # type: ignore[attr-defined]
        assert len(ends) == END_PACKETS and {e.duration for e in ends} == {ticks}
        assert not any(ev.end for _, ev in packets[:-END_PACKETS])  # type: ignore[attr-defined]
    # The event starts at an audio frame position, after the audio already sent.
    audio_ts = [h[3] for h in heads if h[1] == 0]
    ts5 = by_code[5][0][0][3]
    assert (ts5 - audio_ts[0]) % 160 == 0 and ts5 > audio_ts[0]
    # The second digit waits for the pause after the first one's last end packet.
    last_end_5 = sent.index(next(p for p in reversed(sent) if fields(p)[1] == TE_PT and p[12] == 5))
    first_11 = sent.index(next(p for p in sent if fields(p)[1] == TE_PT and p[12] == 11))
    audio_between = sum(1 for p in sent[last_end_5:first_11] if fields(p)[1] == 0)
    assert audio_between >= PAUSE / 0.02
    assert not sender.busy and sender.events_sent == 2


def test_events_before_any_audio_start_the_stream_and_audio_continues_after() -> None:
    sender = DtmfSender(clock=8000, payload_type=TE_PT)
    sender.queue(7)
    sent = run_stream(sender, 20, audio_from=12)
    heads = [fields(p) for p in sent]
    assert heads[0][1] == TE_PT and heads[0][0] == 1
    seqs = [h[2] for h in heads]
    assert [(b - a) & 0xFFFF for a, b in zip(seqs, seqs[1:], strict=False)] == [1] * (len(seqs) - 1)
    assert {h[4] for h in heads} == {OUT_SSRC}


def test_durations_are_clamped_and_bad_digits_refused() -> None:
    sender = DtmfSender(clock=8000, payload_type=TE_PT)
    sender.queue("1", 1)
    sender.queue("2", 10**9)
    sent = run_stream(sender, 400)
    ends = {
        p[12]: unpack_event(p[12:]).duration for p in sent if fields(p)[1] == TE_PT and p[13] & 0x80
    }
    assert ends == {1: 8 * MIN_DURATION_MS, 2: 8 * MAX_DURATION_MS}
    for bad in ("x", "", "12", 16, -1, True):
        with pytest.raises(ValueError):
            sender.queue(bad)  # type: ignore[arg-type]
    assert [event_code(c) for c in "0123456789*#ABCDd"] == [*range(16), 15]
    for _ in range(MAX_QUEUED):
        sender.queue("9")
    with pytest.raises(ValueError, match="already queued"):
        sender.queue("9")


def test_construction_limits() -> None:
    with pytest.raises(ValueError, match="payload type"):
        DtmfSender(clock=8000, payload_type=128)
    with pytest.raises(ValueError, match="unsegmented"):
        DtmfSender(clock=48000, payload_type=TE_PT)  # 5 s at 48 kHz exceeds 16 bits
