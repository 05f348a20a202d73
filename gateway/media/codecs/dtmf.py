"""RFC 4733 telephone-event payloads and their rescaling between RTP clock rates. Sans-I/O.

Payload layout (RFC 4733 §2.3, network byte order)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |     event     |E|R| volume    |          duration             |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

The browser side negotiates ``telephone-event/48000`` next to Opus, the switch side
``telephone-event/8000`` (RFC 4733 §2.1: the event clock is that of the audio stream), so the
bridge rescales the RTP timestamp and the duration of every event packet it relays.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PAYLOAD_BYTES = 4
"""One event: 4 bytes (RFC 4733 §2.3)."""
MAX_EVENT = 255
MAX_VOLUME = 63
"""Volume is 0..63, the power level in -dBm0 (RFC 4733 §2.3.4)."""
MAX_DURATION = 0xFFFF
"""16-bit duration in timestamp units (RFC 4733 §2.3.5); longer events are segmented."""
DTMF_EVENTS = "0123456789*#ABCD"
"""Event codes 0-15 are the DTMF digits in this order (RFC 4733 §3.2, Table 3)."""

_END_BIT = 0x80
_RESERVED_BIT = 0x40
_VOLUME_MASK = 0x3F
_STRUCT = struct.Struct("!BBH")
_U32 = 1 << 32


class DtmfError(ValueError):
    """A telephone-event payload or field value is invalid."""


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One decoded RFC 4733 event report."""

    event: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str | None:
        """The DTMF digit for events 0-15, else None."""
        return DTMF_EVENTS[self.event] if self.event < len(DTMF_EVENTS) else None


def pack_event(event: int, *, end: bool, volume: int, duration: int) -> bytes:
    """Build a 4-byte RFC 4733 §2.3 payload; R is sent as zero (§2.3.3)."""
    if not 0 <= event <= MAX_EVENT:
        raise DtmfError(f"event {event} out of range 0..{MAX_EVENT}")
    if not 0 <= volume <= MAX_VOLUME:
        raise DtmfError(f"volume {volume} out of range 0..{MAX_VOLUME}")
    if not 0 <= duration <= MAX_DURATION:
        raise DtmfError(f"duration {duration} out of range 0..{MAX_DURATION}")
    return _STRUCT.pack(event, (_END_BIT if end else 0) | volume, duration)


def unpack_event(payload: bytes) -> TelephoneEvent:
    """Parse the first event of a payload; R is ignored on receipt (RFC 4733 §2.3.3)."""
    if len(payload) < PAYLOAD_BYTES:
        raise DtmfError(f"telephone-event payload of {len(payload)} bytes, need {PAYLOAD_BYTES}")
    event, flags, duration = _STRUCT.unpack_from(payload)
    return TelephoneEvent(event, bool(flags & _END_BIT), flags & _VOLUME_MASK, duration)


def rescale_duration(duration: int, from_rate: int, to_rate: int) -> int:
    """Convert a duration in ``from_rate`` ticks to ``to_rate`` ticks, rounded to nearest.

    The result may exceed MAX_DURATION when going up in rate; :func:`rescale_event` segments.
    """
    if from_rate <= 0 or to_rate <= 0:
        raise DtmfError(f"clock rates must be positive, got {from_rate} -> {to_rate}")
    return (duration * to_rate + from_rate // 2) // from_rate


def rescale_event(
    timestamp: int, payload: bytes, from_rate: int, to_rate: int, mapped_timestamp: int
) -> tuple[int, bytes]:
    """Rescale one event packet; return (RTP timestamp, payload) for the other leg.

    ``timestamp`` is the event's RTP timestamp (its start) on the incoming leg and
    ``mapped_timestamp`` that start already mapped to the outgoing leg (see TimestampMap).
    When the rescaled duration no longer fits 16 bits, the event continues as a new segment
    whose timestamp is the previous segment's plus MAX_DURATION (RFC 4733 §2.5.2.3); the E
    bit is kept, so only the final segment carries it. Stateless: every retransmission of
    the same report maps to the same output.
    """
    ev = unpack_event(payload)
    total = rescale_duration(ev.duration, from_rate, to_rate)
    segment = (total - 1) // MAX_DURATION if total > MAX_DURATION else 0
    duration = total - segment * MAX_DURATION
    out_ts = (mapped_timestamp + segment * MAX_DURATION) % _U32
    flags = payload[1] & ~_RESERVED_BIT  # keep E and volume, clear R (§2.3.3)
    return out_ts, _STRUCT.pack(ev.event, flags, duration)


class TimestampMap:
    """Maps RTP timestamps of one leg onto another leg's clock rate and random base.

    Keeps a 64-bit extended input position so the 32-bit wrap-around of either side
    (RFC 3550 §5.1) never breaks a rate conversion that is not an integer ratio of 2**32.
    Input timestamps are taken to move by less than 2**31 ticks between calls.
    """

    def __init__(self, from_rate: int, to_rate: int, from_base: int, to_base: int) -> None:
        """Input ``from_base`` (at ``from_rate``) maps to output ``to_base`` (at ``to_rate``)."""
        if from_rate <= 0 or to_rate <= 0:
            raise DtmfError(f"clock rates must be positive, got {from_rate} -> {to_rate}")
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._last = from_base % _U32
        self._extended = 0
        self._to_base = to_base % _U32

    def map(self, timestamp: int) -> int:
        """Output-leg timestamp for an input-leg ``timestamp`` (uint32 in, uint32 out)."""
        delta = (timestamp - self._last + (1 << 31)) % _U32 - (1 << 31)
        self._extended += delta
        self._last = timestamp % _U32
        scaled = self._extended * self.to_rate // self.from_rate
        return (self._to_base + scaled) % _U32
