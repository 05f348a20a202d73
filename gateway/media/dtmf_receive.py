"""Digits read from a browser's RFC 4733 telephone-events, for a switch that takes SIP INFO.

The other half of PITFALLS 10: a webphone sends DTMF as RFC 4733 (SIP.js and JsSIP in RTP
mode, every browser's ``RTCDTMFSender``) while the switch offered no telephone-event and acts
on SIP INFO only. The media layer then keeps the browser's telephone-event in its answer, and
one :class:`DtmfReceiver` on the browser's stream turns each event into one digit; the
signalling side sends it on as an INFO (``application/dtmf-relay``). Sans-I/O.

An event is one RTP timestamp (RFC 4733 §2.3.5): its first end packet (E bit) reports the
digit with the event's full duration, and the two end retransmissions (§2.5.1.4) and any
late update are ignored. When every end packet of an event is lost, the event is reported
when the next event starts, with the last duration seen. Durations are read in the audio
stream's clock, as the transcoder reads them (Firefox counts its te/8000 beside Opus in the
Opus clock), and reported at no less than ``min_duration_ms``: a digit from Firefox arrives
one sixth as long as asked and the switch must still see a key press.
"""

from __future__ import annotations

import struct
from collections import deque

from gateway.media.codecs.dtmf import DTMF_EVENTS

__all__ = ["DtmfReceiver", "MAX_PENDING", "MIN_DURATION_MS"]

MAX_PENDING = 32
"""Digits held until the signalling side collects them; older ones are dropped (counted)."""
MIN_DURATION_MS = 100
"""Shortest duration reported: what SIP.js and JsSIP send in their own INFO."""

_HEADER = struct.Struct("!BBHII")
_EVENT = struct.Struct("!BBH")
_END_BIT = 0x80


class DtmfReceiver:
    """One browser stream's telephone-events (payload type ``payload_type``) as digits."""

    __slots__ = (
        "payload_type",
        "clock",
        "min_duration_ms",
        "pending",
        "received",
        "dropped",
        "malformed",
        "_ts",
        "_reported",
        "_code",
        "_duration",
    )

    def __init__(
        self, *, payload_type: int, clock: int, min_duration_ms: int = MIN_DURATION_MS
    ) -> None:
        if clock <= 0:
            raise ValueError(f"clock {clock} must be positive")
        self.payload_type = payload_type
        self.clock = clock
        self.min_duration_ms = min_duration_ms
        #: (digit, duration in ms) not yet collected by :meth:`take`
        self.pending: deque[tuple[str, int]] = deque()
        self.received = 0
        self.dropped = 0
        self.malformed = 0
        self._ts = -1  # timestamp of the event being received
        self._reported = True  # that event has been reported (or none yet)
        self._code = 0
        self._duration = 0

    def receive(self, packet: bytes | bytearray) -> None:
        """One RTP packet of :attr:`payload_type` (already decrypted)."""
        n = len(packet)
        if n < 12:
            self.malformed += 1
            return
        b0 = packet[0]
        start = 12 + 4 * (b0 & 0x0F)
        if b0 & 0x10:
            if n < start + 4:
                self.malformed += 1
                return
            start += 4 + 4 * int.from_bytes(packet[start + 2 : start + 4], "big")
        if n < start + 4:
            self.malformed += 1
            return
        ts = _HEADER.unpack_from(packet)[3]
        code, flags, duration = _EVENT.unpack_from(packet, start)
        if ts != self._ts:
            if not self._reported:
                self._report()  # the previous event's end packets were all lost
            self._ts = ts
            self._reported = False
        elif self._reported:
            return  # an end retransmission, or an update after the end
        self._code = code
        self._duration = max(self._duration, duration)
        if flags & _END_BIT:
            self._report()

    def take(self) -> list[tuple[str, int]]:
        """The digits received since the last call, oldest first."""
        out = list(self.pending)
        self.pending.clear()
        return out

    def _report(self) -> None:
        self._reported = True
        code, duration, self._duration = self._code, self._duration, 0
        if code >= len(DTMF_EVENTS):
            return  # not a DTMF digit (e.g. hook flash, event 16): no INFO form for it
        if len(self.pending) >= MAX_PENDING:
            self.pending.popleft()
            self.dropped += 1
        ms = max(self.min_duration_ms, round(duration * 1000 / self.clock))
        self.pending.append((DTMF_EVENTS[code], ms))
        self.received += 1
