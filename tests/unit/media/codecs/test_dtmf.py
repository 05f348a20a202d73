"""RFC 4733 telephone-event payloads and their rescaling between 48 000 and 8 000 Hz clocks."""

from __future__ import annotations

import itertools

import pytest

from gateway.media.codecs import dtmf


def test_rfc4733_section_2_3_field_layout() -> None:
    # event=5, E=1, R=0, volume=10, duration=800: byte 1 is E|R|volume(6), duration big-endian
    payload = dtmf.pack_event(5, end=True, volume=10, duration=800)
    assert payload == bytes([0x05, 0b1000_1010, 0x03, 0x20])
    assert dtmf.pack_event(255, end=False, volume=63, duration=0xFFFF) == b"\xff\x3f\xff\xff"
    assert dtmf.pack_event(0, end=False, volume=0, duration=0) == b"\x00\x00\x00\x00"


def test_pack_unpack_round_trip() -> None:
    for event, end, volume, duration in itertools.product(
        (0, 9, 11, 15, 16, 255), (False, True), (0, 10, 63), (0, 1, 160, 0x8000, 0xFFFF)
    ):
        payload = dtmf.pack_event(event, end=end, volume=volume, duration=duration)
        assert len(payload) == dtmf.PAYLOAD_BYTES
        assert dtmf.unpack_event(payload) == dtmf.TelephoneEvent(event, end, volume, duration)


def test_unpack_ignores_reserved_bit_and_trailing_bytes() -> None:
    # RFC 4733 §2.3.3: R is sent as zero and ignored on receipt.
    ev = dtmf.unpack_event(b"\x0b\xc7\x01\x40" + b"\x00\x00\x00\x00")
    assert ev == dtmf.TelephoneEvent(event=11, end=True, volume=7, duration=320)
    assert ev.digit == "#"


def test_digits_follow_rfc4733_table_3() -> None:
    digits = [dtmf.TelephoneEvent(e, False, 10, 0).digit for e in range(17)]
    assert "".join(d for d in digits if d) == "0123456789*#ABCD"
    assert digits[16] is None  # event 16 is flash, not a digit


def test_unpack_rejects_short_payload() -> None:
    with pytest.raises(dtmf.DtmfError, match="payload of 3 bytes, need 4"):
        dtmf.unpack_event(b"\x01\x02\x03")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"event": 256, "end": False, "volume": 0, "duration": 0}, "event 256"),
        ({"event": -1, "end": False, "volume": 0, "duration": 0}, "event -1"),
        ({"event": 1, "end": False, "volume": 64, "duration": 0}, "volume 64"),
        ({"event": 1, "end": False, "volume": 0, "duration": 0x10000}, "duration 65536"),
    ],
)
def test_pack_rejects_out_of_range(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(dtmf.DtmfError, match=message):
        dtmf.pack_event(**kwargs)  # type: ignore[arg-type]


def test_duration_rescaling_between_48000_and_8000() -> None:
    # 100 ms of DTMF: 800 ticks at 8 kHz, 4800 at 48 kHz
    assert dtmf.rescale_duration(800, 8000, 48000) == 4800
    assert dtmf.rescale_duration(4800, 48000, 8000) == 800
    assert dtmf.rescale_duration(7, 48000, 8000) == 1  # 1.17 rounds to 1
    assert dtmf.rescale_duration(9, 48000, 8000) == 2  # 1.5 rounds up
    assert dtmf.rescale_duration(0, 8000, 48000) == 0
    with pytest.raises(dtmf.DtmfError, match="positive"):
        dtmf.rescale_duration(1, 0, 8000)


def test_rescale_event_keeps_fields_and_clears_reserved_bit() -> None:
    payload = bytes([0x03, 0b1100_1010, 0x0F, 0x00])  # E=1, R=1, volume 10, duration 3840
    ts, out = dtmf.rescale_event(480_000, payload, 48000, 8000, mapped_timestamp=1234)
    assert ts == 1234
    assert dtmf.unpack_event(out) == dtmf.TelephoneEvent(3, True, 10, 640)
    assert out[1] & 0x40 == 0


def test_rescale_event_segments_durations_past_16_bits() -> None:
    # 1.5 s at 8 kHz = 12000 ticks fits 16 bits; at 48 kHz it is 72000 > 65535, so the
    # report becomes the second segment of the event (RFC 4733 §2.5.2.3).
    payload = dtmf.pack_event(1, end=False, volume=10, duration=12000)
    ts, out = dtmf.rescale_event(5000, payload, 8000, 48000, mapped_timestamp=0xFFFF_FF00)
    assert ts == (0xFFFF_FF00 + 0xFFFF) % 2**32  # wraps around 2**32
    assert dtmf.unpack_event(out) == dtmf.TelephoneEvent(1, False, 10, 72000 - 0xFFFF)
    # 10922 ticks -> 65532 still fits the first segment; 10923 -> 65538 is 3 into the second
    ts, out = dtmf.rescale_event(5000, payload[:2] + (10922).to_bytes(2, "big"), 8000, 48000, 100)
    assert (ts, dtmf.unpack_event(out).duration) == (100, 65532)
    end = dtmf.pack_event(1, end=True, volume=10, duration=10923)
    ts, out = dtmf.rescale_event(5000, end, 8000, 48000, 100)
    assert (ts, dtmf.unpack_event(out)) == (100 + 0xFFFF, dtmf.TelephoneEvent(1, True, 10, 3))


def test_timestamp_map_scales_from_random_bases() -> None:
    up = dtmf.TimestampMap(8000, 48000, from_base=1000, to_base=500_000)
    assert up.map(1000) == 500_000
    assert up.map(1160) == 500_000 + 960  # one 20 ms packet
    down = dtmf.TimestampMap(48000, 8000, from_base=960_000, to_base=7)
    assert down.map(960_000 + 4800) == 7 + 800
    assert down.map(960_000) == 7  # going back is allowed (reordered packets)


def test_timestamp_map_survives_32_bit_wraparound() -> None:
    # 48 kHz input starting just below 2**32; 2**32 is not a multiple of 6, so a stateless
    # modulo mapping would jump here.
    base = 2**32 - 960
    down = dtmf.TimestampMap(48000, 8000, from_base=base, to_base=2**32 - 100)
    outputs = [down.map((base + 960 * i) % 2**32) for i in range(5)]
    assert outputs == [(2**32 - 100 + 160 * i) % 2**32 for i in range(5)]
    with pytest.raises(dtmf.DtmfError):
        dtmf.TimestampMap(48000, 0, 0, 0)
