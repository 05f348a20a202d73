"""The browser's RFC 4733 telephone-events read as digits (for SIP INFO toward the switch)."""

from __future__ import annotations

import struct

from gateway.media.dtmf_receive import MAX_PENDING, DtmfReceiver

PT = 110


def packet(ts: int, code: int, *, end: bool, duration: int, seq: int = 1, csrc: int = 0) -> bytes:
    header = struct.pack("!BBHII", 0x80 | csrc, PT, seq, ts, 0xCAFE) + b"\0\0\0\1" * csrc
    return header + struct.pack("!BBH", code, (0x80 if end else 0) | 10, duration)


def test_one_digit_per_event_with_its_duration() -> None:
    """RFC 4733 §2.5.1: updates, then the end packet three times; one digit is reported,
    at the end, with the full duration in ms of the stream's clock."""
    rx = DtmfReceiver(payload_type=PT, clock=48000)
    for seq, duration in enumerate((960, 1920, 4800)):
        rx.receive(packet(48000, 7, end=False, duration=duration, seq=seq))
    assert rx.take() == []
    for seq in range(3):
        rx.receive(packet(48000, 7, end=True, duration=7680, seq=10 + seq))
    rx.receive(packet(48000, 7, end=False, duration=9000, seq=20))  # late update: same event
    assert rx.take() == [("7", 160)]
    # 0-9, *, #, A-D in turn, each its own timestamp.
    for i in range(16):
        rx.receive(packet(100_000 + 9600 * i, i, end=True, duration=9600, seq=30 + i))
    assert rx.take() == [(d, 200) for d in "0123456789*#ABCD"]
    assert rx.received == 17


def test_lost_end_packets_short_events_and_non_digits() -> None:
    rx = DtmfReceiver(payload_type=PT, clock=8000)
    rx.receive(packet(800, 3, end=False, duration=1600))  # every end packet of "3" lost
    rx.receive(packet(8000, 4, end=False, duration=160))  # the next event reports it
    assert rx.take() == [("3", 200)]
    rx.receive(packet(8000, 4, end=True, duration=240))  # 30 ms: reported at the floor
    rx.receive(packet(16000, 16, end=True, duration=800))  # hook flash: no INFO form
    rx.receive(packet(24000, 9, end=True, duration=800, csrc=2))  # CSRCs skipped
    assert rx.take() == [("4", 100), ("9", 100)]


def test_malformed_packets_are_counted_and_the_queue_is_bounded() -> None:
    rx = DtmfReceiver(payload_type=PT, clock=8000)
    rx.receive(b"\x80\x6e\x00")
    rx.receive(packet(1, 1, end=True, duration=800)[:14])  # payload cut short
    rx.receive(b"\x90" + packet(1, 1, end=True, duration=800)[1:14])  # extension cut short
    assert rx.malformed == 3 and rx.take() == []
    for i in range(MAX_PENDING + 5):
        rx.receive(packet(800 * (i + 1), i % 10, end=True, duration=800))
    taken = rx.take()
    assert len(taken) == MAX_PENDING and rx.dropped == 5
    assert taken[0] == ("5", 100)  # the oldest five made room
