"""RTCP (RFC 3550 §6) for one leg: parse, per-packet statistics, our own reports. Sans-I/O.

When a call is transcoded the two legs carry different streams (own SSRC, sequence numbers
and timestamps on another clock), so RTCP cannot be forwarded: each leg's RTCP is terminated
and regenerated here, as rtpengine does. In passthrough the peers' RTCP is forwarded (see
:func:`gateway.media.rtp.map_rtcp`) and only read for statistics.

Pieces:

* :func:`parse` / :func:`serialize`: compound packets of SR, RR, SDES, BYE, APP and RTPFB/PSFB
  feedback (RFC 3550 §6.4-6.7, RFC 4585 §6.1) as frozen dataclasses; unknown packet types
  are skipped (RFC 3550 §6.1). Reduced-size RTCP (RFC 5506: a lone feedback packet) is
  accepted, so the first packet need not be SR/RR.
* :class:`ReceiverStats`: the stream received on a leg: sequence tracking (RFC 3550 §A.1),
  loss (§A.3) and interarrival jitter (§A.8) on the leg's RTP clock, LSR from the peer's SRs.
  :meth:`ReceiverStats.on_rtp` is called per packet: a few integer operations.
* :class:`SenderStats`: what we sent on a leg (packets, payload octets, last timestamp).
* :class:`LegRtcp`: both of those plus what the peer reports about our stream (fraction lost,
  cumulative loss, jitter, round-trip time from LSR/DLSR, §6.4.1), the report schedule
  (§6.2) and the generator of our compound report (SR or RR + SDES CNAME, §6.1).

Exceptions: :class:`RtcpError` (a :class:`ValueError`) is the only exception raised, by
:func:`parse` on malformed input and by :func:`serialize` on values that do not fit.

Time: ``now`` is the adapter's monotonic clock (seconds); ``wallclock`` is UNIX time, used
only for the NTP timestamp of our SRs. Round-trip times are measured on ``now`` alone: the
send time of every SR that left on the leg (ours, or a peer's we forwarded) is kept under its
LSR key, so a returning LSR/DLSR gives ``arrival - sent - DLSR`` without trusting any clock
but ours.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from gateway.sdp.rewrite import STATIC_PAYLOAD_TYPES

__all__ = [
    "RtcpError",
    "ReportBlock",
    "SenderReport",
    "ReceiverReport",
    "SdesChunk",
    "SourceDescription",
    "Bye",
    "App",
    "Feedback",
    "RtcpPacket",
    "parse",
    "serialize",
    "ntp_from_unix",
    "ntp_short",
    "clock_for_payload_type",
    "ReceiverStats",
    "SenderStats",
    "LegRtcp",
    "PT_SR",
    "PT_RR",
    "PT_SDES",
    "PT_BYE",
    "PT_APP",
    "PT_RTPFB",
    "PT_PSFB",
    "SDES_CNAME",
    "MAX_RTCP_SIZE",
    "MAX_PACKETS",
    "MAX_REPORT_BLOCKS",
    "REPORT_INTERVAL",
    "MIN_SEQUENTIAL",
    "MAX_DROPOUT",
    "MAX_MISORDER",
    "MAX_SR_HISTORY",
    "NTP_UNIX_OFFSET",
    "DYNAMIC_CLOCK",
]

PT_SR = 200
"""Sender report (RFC 3550 §6.4.1)."""
PT_RR = 201
"""Receiver report (RFC 3550 §6.4.2)."""
PT_SDES = 202
"""Source description (RFC 3550 §6.5)."""
PT_BYE = 203
"""Goodbye (RFC 3550 §6.6)."""
PT_APP = 204
"""Application-defined (RFC 3550 §6.7)."""
PT_RTPFB = 205
"""Transport-layer feedback (RFC 4585 §6.1)."""
PT_PSFB = 206
"""Payload-specific feedback (RFC 4585 §6.1)."""
SDES_CNAME = 1
"""SDES item type of the canonical name (RFC 3550 §6.5.1)."""

MAX_RTCP_SIZE = 2048
"""Longest compound packet parsed (the media adapter reads at most this many bytes)."""
MAX_PACKETS = 32
"""Most RTCP packets parsed from one compound packet."""
MAX_REPORT_BLOCKS = 31
"""The 5-bit count field's limit (RFC 3550 §6.4.1 RC)."""
MAX_SDES_ITEM = 255
"""Longest SDES item value (8-bit length, RFC 3550 §6.5)."""
REPORT_INTERVAL = 5.0
"""Minimum interval between our reports, seconds (RFC 3550 §6.2 Tmin). The first report
comes after half of it (§6.2 "initial delay"); each interval is randomised 0.5-1.5 ×."""
MIN_SEQUENTIAL = 2
"""Packets in sequence before a source is valid (RFC 3550 §A.1)."""
MAX_DROPOUT = 3000
"""Largest forward sequence jump taken as loss rather than a restart (RFC 3550 §A.1)."""
MAX_MISORDER = 100
"""Largest backward sequence jump taken as reordering (RFC 3550 §A.1)."""
MAX_SR_HISTORY = 8
"""Sender reports remembered per leg for round-trip times (LSR lookups)."""
NTP_UNIX_OFFSET = 2_208_988_800
"""Seconds from the NTP epoch (1900) to the UNIX epoch (1970) (RFC 3550 §4)."""
DYNAMIC_CLOCK = 48000
"""RTP clock assumed for a dynamic payload type when nobody said otherwise: on a WebRTC
audio leg that is Opus, whose RTP clock is always 48 000 (RFC 7587 §4.1)."""

_RTP_SEQ_MOD = 1 << 16
_U32 = 0xFFFFFFFF
_HEADER = struct.Struct("!BBH")
_SSRC = struct.Struct("!I")
_TWO_SSRC = struct.Struct("!II")
_SENDER_INFO = struct.Struct("!IQIII")  # SSRC, NTP, RTP timestamp, packets, octets
_BLOCK = struct.Struct("!IIIIII")  # SSRC, fraction|lost, highest seq, jitter, LSR, DLSR
_SEQ_TS_SSRC = struct.Struct("!HII")
_TS = struct.Struct("!I")
#: RTP clocks of the static audio payload types (RFC 3551 §6, table 4).
_STATIC_CLOCKS = {pt: clock for pt, (_, clock, _) in STATIC_PAYLOAD_TYPES.items()}


class RtcpError(ValueError):
    """A malformed RTCP packet, or values that do not fit the wire format."""


# --------------------------------------------------------------------------- packets


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report (RFC 3550 §6.4.1): what the reporter saw of source ``ssrc``."""

    ssrc: int
    fraction_lost: int
    """Lost fraction since the previous report, in 1/256 (0-255)."""
    packets_lost: int
    """Cumulative lost packets, signed 24 bits (duplicates can make it negative)."""
    highest_seq: int
    """Extended highest sequence number received (cycles << 16 | seq)."""
    jitter: int
    """Interarrival jitter in RTP timestamp units."""
    lsr: int
    """Middle 32 bits of the NTP timestamp of the last SR received from ``ssrc`` (0: none)."""
    dlsr: int
    """Delay since that SR, in 1/65536 s."""


@dataclass(frozen=True, slots=True)
class SenderReport:
    """SR (RFC 3550 §6.4.1): sender info plus reception reports."""

    ssrc: int
    ntp_timestamp: int
    """64-bit NTP timestamp (seconds since 1900 << 32 | fraction)."""
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """RR (RFC 3550 §6.4.2): reception reports from a participant that did not send."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class SdesChunk:
    """One SDES chunk: a source and its ``(item type, value)`` pairs (RFC 3550 §6.5)."""

    ssrc: int
    items: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True, slots=True)
class SourceDescription:
    """SDES (RFC 3550 §6.5)."""

    chunks: tuple[SdesChunk, ...]

    def cname(self, ssrc: int) -> bytes | None:
        """The CNAME item of ``ssrc``, if any."""
        for chunk in self.chunks:
            if chunk.ssrc == ssrc:
                for kind, value in chunk.items:
                    if kind == SDES_CNAME:
                        return value
        return None


@dataclass(frozen=True, slots=True)
class Bye:
    """BYE (RFC 3550 §6.6): sources leaving, optional reason."""

    sources: tuple[int, ...]
    reason: bytes = b""


@dataclass(frozen=True, slots=True)
class App:
    """APP (RFC 3550 §6.7)."""

    subtype: int
    ssrc: int
    name: bytes
    """Four ASCII characters."""
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Feedback:
    """RTPFB or PSFB feedback (RFC 4585 §6.1); the FCI is kept opaque."""

    packet_type: int
    """:data:`PT_RTPFB` or :data:`PT_PSFB`."""
    fmt: int
    sender_ssrc: int
    media_ssrc: int
    fci: bytes = b""


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Bye | App | Feedback


def _blocks(data: bytes, offset: int, count: int) -> tuple[ReportBlock, ...]:
    out = []
    for i in range(count):
        ssrc, word, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, offset + 24 * i)
        lost = word & 0xFFFFFF
        if lost & 0x800000:  # signed 24-bit (RFC 3550 §6.4.1)
            lost -= 0x1000000
        out.append(ReportBlock(ssrc, word >> 24, lost, highest, jitter, lsr, dlsr))
    return tuple(out)


def _sdes(data: bytes, start: int, end: int, count: int) -> SourceDescription:
    chunks = []
    pos = start
    for _ in range(count):
        if pos + 4 > end:
            raise RtcpError("SDES chunk truncated")
        ssrc = _SSRC.unpack_from(data, pos)[0]
        pos += 4
        items = []
        # Items until a null octet, then padding to the next 32-bit boundary (§6.5).
        while True:
            if pos >= end:
                raise RtcpError("SDES chunk without a null item")
            kind = data[pos]
            if kind == 0:
                break
            if pos + 2 > end or pos + 2 + data[pos + 1] > end:
                raise RtcpError("SDES item truncated")
            length = data[pos + 1]
            items.append((kind, bytes(data[pos + 2 : pos + 2 + length])))
            pos += 2 + length
        pos = (pos + 4) & ~3
        chunks.append(SdesChunk(ssrc, tuple(items)))
    if pos > end:
        raise RtcpError("SDES chunk padding truncated")
    return SourceDescription(tuple(chunks))


def parse(data: bytes | bytearray | memoryview) -> list[RtcpPacket]:
    """The packets of a compound RTCP packet, in order; unknown types are skipped.

    Validity (RFC 3550 §A.2): version 2, lengths adding up to the datagram, padding only on
    the last packet, counts that fit their packet. SR/RR profile extensions are ignored.

    Raises:
        RtcpError: empty, longer than :data:`MAX_RTCP_SIZE`, more than :data:`MAX_PACKETS`
            packets, or any of the checks above failing.
    """
    data = bytes(data)
    n = len(data)
    if n > MAX_RTCP_SIZE:
        raise RtcpError(f"RTCP datagram of {n} bytes exceeds {MAX_RTCP_SIZE}")
    if n < 4:
        raise RtcpError(f"RTCP datagram of {n} bytes is shorter than a header")
    out: list[RtcpPacket] = []
    offset = 0
    packets = 0
    while offset < n:
        packets += 1
        if packets > MAX_PACKETS:
            raise RtcpError(f"more than {MAX_PACKETS} packets in a compound RTCP packet")
        if n - offset < 4:
            raise RtcpError(f"{n - offset} stray bytes after the last RTCP packet")
        b0, pt, words = _HEADER.unpack_from(data, offset)
        if b0 >> 6 != 2:
            raise RtcpError(f"RTCP version {b0 >> 6} is not 2")
        end = offset + 4 * (words + 1)
        if end > n:
            raise RtcpError(f"RTCP packet type {pt} claims {end - offset} of {n - offset} bytes")
        body_end = end
        if b0 & 0x20:
            # §6.4.1 P bit: the last octet counts the padding; only the last packet pads.
            pad = data[end - 1]
            if end != n or pad == 0 or pad > end - offset - 4:
                raise RtcpError("invalid RTCP padding")
            body_end = end - pad
        count = b0 & 0x1F
        body = offset + 4
        size = body_end - body
        if pt == PT_SR:
            if size < 24 + 24 * count:
                raise RtcpError(f"SR with {count} report blocks truncated")
            ssrc, ntp, ts, pkts, octets = _SENDER_INFO.unpack_from(data, body)
            out.append(SenderReport(ssrc, ntp, ts, pkts, octets, _blocks(data, body + 24, count)))
        elif pt == PT_RR:
            if size < 4 + 24 * count:
                raise RtcpError(f"RR with {count} report blocks truncated")
            ssrc = _SSRC.unpack_from(data, body)[0]
            out.append(ReceiverReport(ssrc, _blocks(data, body + 4, count)))
        elif pt == PT_SDES:
            out.append(_sdes(data, body, body_end, count))
        elif pt == PT_BYE:
            if size < 4 * count:
                raise RtcpError(f"BYE with {count} sources truncated")
            sources = tuple(_SSRC.unpack_from(data, body + 4 * i)[0] for i in range(count))
            pos = body + 4 * count
            reason = b""
            if pos < body_end:
                length = data[pos]
                if pos + 1 + length > body_end:
                    raise RtcpError("BYE reason truncated")
                reason = data[pos + 1 : pos + 1 + length]
            out.append(Bye(sources, reason))
        elif pt == PT_APP:
            if size < 8:
                raise RtcpError("APP packet truncated")
            ssrc = _SSRC.unpack_from(data, body)[0]
            out.append(App(count, ssrc, data[body + 4 : body + 8], data[body + 8 : body_end]))
        elif pt == PT_RTPFB or pt == PT_PSFB:
            if size < 8:
                raise RtcpError("feedback packet truncated")
            sender, media = _TWO_SSRC.unpack_from(data, body)
            out.append(Feedback(pt, count, sender, media, data[body + 8 : body_end]))
        # Any other type (XR, IJ...) is skipped (RFC 3550 §6.1, §A.2).
        offset = end
    return out


def _packet(b0: int, pt: int, body: bytes) -> bytes:
    return _HEADER.pack(b0, pt, len(body) // 4) + body


def _block_bytes(block: ReportBlock) -> bytes:
    if not -0x800000 <= block.packets_lost <= 0x7FFFFF:
        raise RtcpError(f"cumulative loss {block.packets_lost} does not fit 24 bits")
    if not 0 <= block.fraction_lost <= 255:
        raise RtcpError(f"fraction lost {block.fraction_lost} outside 0-255")
    word = block.fraction_lost << 24 | block.packets_lost & 0xFFFFFF
    return _BLOCK.pack(block.ssrc, word, block.highest_seq, block.jitter, block.lsr, block.dlsr)


def _to_bytes(packet: RtcpPacket) -> bytes:
    if isinstance(packet, (SenderReport, ReceiverReport)):
        if len(packet.reports) > MAX_REPORT_BLOCKS:
            raise RtcpError(f"{len(packet.reports)} report blocks exceed {MAX_REPORT_BLOCKS}")
        blocks = b"".join(_block_bytes(b) for b in packet.reports)
        b0 = 0x80 | len(packet.reports)
        if isinstance(packet, SenderReport):
            info = _SENDER_INFO.pack(
                packet.ssrc,
                packet.ntp_timestamp,
                packet.rtp_timestamp,
                packet.packet_count & _U32,
                packet.octet_count & _U32,
            )
            return _packet(b0, PT_SR, info + blocks)
        return _packet(b0, PT_RR, _SSRC.pack(packet.ssrc) + blocks)
    if isinstance(packet, SourceDescription):
        if len(packet.chunks) > MAX_REPORT_BLOCKS:
            raise RtcpError(f"{len(packet.chunks)} SDES chunks exceed {MAX_REPORT_BLOCKS}")
        parts = []
        for chunk in packet.chunks:
            raw = bytearray(_SSRC.pack(chunk.ssrc))
            for kind, value in chunk.items:
                if not 1 <= kind <= 255 or len(value) > MAX_SDES_ITEM:
                    raise RtcpError(f"SDES item {kind} of {len(value)} bytes does not fit")
                raw += bytes((kind, len(value))) + value
            raw += bytes(4 - len(raw) % 4)  # null item + padding to 32 bits (§6.5)
            parts.append(bytes(raw))
        return _packet(0x80 | len(packet.chunks), PT_SDES, b"".join(parts))
    if isinstance(packet, Bye):
        if len(packet.sources) > MAX_REPORT_BLOCKS or len(packet.reason) > MAX_SDES_ITEM:
            raise RtcpError("BYE with too many sources or too long a reason")
        body = b"".join(_SSRC.pack(s) for s in packet.sources)
        if packet.reason:
            reason = bytes((len(packet.reason),)) + packet.reason
            body += reason + bytes(-len(reason) % 4)
        return _packet(0x80 | len(packet.sources), PT_BYE, body)
    if isinstance(packet, App):
        if len(packet.name) != 4 or len(packet.data) % 4 or not 0 <= packet.subtype <= 31:
            raise RtcpError("APP needs a 4-byte name, 32-bit aligned data, subtype 0-31")
        return _packet(
            0x80 | packet.subtype, PT_APP, _SSRC.pack(packet.ssrc) + packet.name + packet.data
        )
    if len(packet.fci) % 4 or not 0 <= packet.fmt <= 31:
        raise RtcpError("feedback needs 32-bit aligned FCI and FMT 0-31")
    body = _TWO_SSRC.pack(packet.sender_ssrc, packet.media_ssrc) + packet.fci
    return _packet(0x80 | packet.fmt, packet.packet_type, body)


def serialize(packets: Iterable[RtcpPacket]) -> bytes:
    """One compound packet of ``packets`` in order (no padding).

    Raises:
        RtcpError: a count, length or value that does not fit its field.
    """
    out = b"".join(_to_bytes(p) for p in packets)
    if len(out) > MAX_RTCP_SIZE:
        raise RtcpError(f"compound RTCP packet of {len(out)} bytes exceeds {MAX_RTCP_SIZE}")
    return out


def ntp_from_unix(wallclock: float) -> int:
    """64-bit NTP timestamp (RFC 3550 §4) of a UNIX time in seconds."""
    seconds = int(wallclock)
    fraction = int((wallclock - seconds) * 4294967296.0) & _U32
    return ((seconds + NTP_UNIX_OFFSET) & _U32) << 32 | fraction


def ntp_short(ntp: int) -> int:
    """Middle 32 bits of a 64-bit NTP timestamp: the LSR of RFC 3550 §6.4.1."""
    return (ntp >> 16) & _U32


def clock_for_payload_type(pt: int) -> int:
    """RTP clock of a static payload type (RFC 3551 §6); :data:`DYNAMIC_CLOCK` otherwise."""
    return _STATIC_CLOCKS.get(pt, DYNAMIC_CLOCK)


# --------------------------------------------------------------------------- statistics


class ReceiverStats:
    """The RTP stream received on one leg: RFC 3550 §A.1 sequence state, §A.3 loss,
    §A.8 jitter (on :attr:`clock`), and the last SR of its source.

    :meth:`on_rtp` is the hot-path update; the rest runs at RTCP rate. A new SSRC starts a
    new source (§8.2); losses of earlier sources stay in :attr:`lost_before`.
    """

    __slots__ = (
        "ssrc",
        "clock",
        "fixed_clock",
        "base_seq",
        "max_seq",
        "bad_seq",
        "cycles",
        "probation",
        "received",
        "expected_prior",
        "received_prior",
        "transit",
        "jitter",
        "lost_before",
        "received_before",
        "sr_ssrc",
        "sr_lsr",
        "sr_time",
        "fraction_lost",
    )

    def __init__(self, clock: int = 0) -> None:
        self.ssrc = -1
        self.clock = clock
        """RTP clock rate of the received stream; 0 = take it from the first payload type."""
        self.fixed_clock = clock > 0
        self.base_seq = 0
        self.max_seq = 0
        self.bad_seq = _RTP_SEQ_MOD + 1
        self.cycles = 0
        self.probation = 0
        self.received = 0
        """Packets counted for the current source (§A.1 ``received``)."""
        self.expected_prior = 0
        self.received_prior = 0
        self.transit = 0
        self.jitter = 0
        """Interarrival jitter × 16, in timestamp units (§A.8 integer form)."""
        self.lost_before = 0
        self.received_before = 0
        self.sr_ssrc = -1
        self.sr_lsr = 0
        self.sr_time = 0.0
        self.fraction_lost = 0
        """Fraction lost (1/256) in the interval of the last report block made."""

    def set_clock(self, clock: int) -> None:
        """Fix the RTP clock rate (0: infer it from the payload type again)."""
        self.clock = clock
        self.fixed_clock = clock > 0

    def on_rtp(self, packet: bytes | bytearray, now: float) -> None:
        """Account one RTP packet (at least 12 bytes, version 2) that arrived at ``now``."""
        seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(packet, 2)
        if ssrc != self.ssrc:
            self._new_source(seq, ssrc, packet[1] & 0x7F)
        if self.probation:
            if self._probe(seq):
                # The first counted packet only sets the transit reference (§A.8).
                self.received += 1
                self.transit = int(now * self.clock) - ts
            return
        udelta = (seq - self.max_seq) & 0xFFFF
        if udelta < MAX_DROPOUT:
            # In order, possibly after a gap (§A.1); a wrap counts one more cycle.
            if seq < self.max_seq:
                self.cycles += _RTP_SEQ_MOD
            self.max_seq = seq
        elif udelta <= _RTP_SEQ_MOD - MAX_MISORDER:
            # A very large jump: two in sequence mean the sender restarted (§A.1).
            if seq != self.bad_seq:
                self.bad_seq = (seq + 1) & 0xFFFF
                return
            self.lost_before += self.lost
            self.received_before += self.received
            self._restart(seq)
        # else: a duplicate or reordered packet, counted (loss may go negative, §A.3).
        self.received += 1
        # §A.8: D(i-1,i) = (Rj - Ri) - (Sj - Si); J += (|D| - J) / 16, in timestamp units,
        # kept x16 as integers. D is taken modulo 2^32 so a timestamp wrap is no jump.
        transit = int(now * self.clock) - ts
        d = (transit - self.transit) & _U32
        self.transit = transit
        if d & 0x80000000:
            d = 0x100000000 - d
        self.jitter += d - ((self.jitter + 8) >> 4)

    def _new_source(self, seq: int, ssrc: int, pt: int) -> None:
        if self.ssrc != -1:
            self.lost_before += self.lost
            self.received_before += self.received
        self.ssrc = ssrc
        if not self.fixed_clock:
            self.clock = clock_for_payload_type(pt)
        self._restart(seq)
        # §A.1: a new source is on probation until MIN_SEQUENTIAL packets in sequence.
        self.max_seq = (seq - 1) & 0xFFFF
        self.probation = MIN_SEQUENTIAL
        self.jitter = 0

    def _restart(self, seq: int) -> None:
        # §A.1 init_seq().
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = _RTP_SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0

    def _probe(self, seq: int) -> bool:
        """§A.1 probation: True once MIN_SEQUENTIAL packets arrived in sequence."""
        if seq == (self.max_seq + 1) & 0xFFFF:
            self.probation -= 1
            self.max_seq = seq
            if self.probation == 0:
                self._restart(seq)
                return True
            return False
        self.probation = MIN_SEQUENTIAL - 1
        self.max_seq = seq
        return False

    @property
    def valid(self) -> bool:
        """A source has passed probation."""
        return self.ssrc != -1 and self.probation == 0

    @property
    def extended_max(self) -> int:
        """Extended highest sequence number received (§A.3)."""
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        """Packets expected from the current source (§A.3)."""
        return self.extended_max - self.base_seq + 1 if self.valid else 0

    @property
    def lost(self) -> int:
        """Cumulative packets lost from the current source (§A.3), may be negative."""
        return self.expected - self.received if self.valid else 0

    @property
    def packets_lost(self) -> int:
        """Cumulative packets lost over every source the leg received."""
        return self.lost_before + self.lost

    @property
    def packets_received(self) -> int:
        """Packets counted over every source the leg received."""
        return self.received_before + self.received

    @property
    def jitter_units(self) -> int:
        """Interarrival jitter in timestamp units, as reported (§6.4.1)."""
        return self.jitter >> 4

    def on_sender_report(self, ssrc: int, ntp: int, now: float) -> None:
        """Remember an SR from ``ssrc`` for the LSR/DLSR of our next report (§6.4.1)."""
        self.sr_ssrc = ssrc
        self.sr_lsr = ntp_short(ntp)
        self.sr_time = now

    def report_block(self, now: float) -> ReportBlock | None:
        """Reception report of the current source, advancing the §A.3 interval.

        None when no valid source was heard since the last report (§6.4: report blocks
        only for sources heard from since then).
        """
        if not self.valid or self.received == self.received_prior:
            return None
        expected = self.expected
        expected_interval = expected - self.expected_prior
        received_interval = self.received - self.received_prior
        self.expected_prior = expected
        self.received_prior = self.received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        self.fraction_lost = fraction
        lost = max(-0x800000, min(0x7FFFFF, self.lost))
        lsr = dlsr = 0
        if self.sr_ssrc == self.ssrc:
            lsr = self.sr_lsr
            dlsr = min(_U32, max(0, int((now - self.sr_time) * 65536)))
        return ReportBlock(
            self.ssrc, fraction, lost, self.extended_max & _U32, self.jitter >> 4, lsr, dlsr
        )


class SenderStats:
    """What we sent on one leg under one SSRC, for the sender info of our SRs (§6.4.1)."""

    __slots__ = ("packets", "octets", "last_ts", "last_time", "sent_since_report")

    def __init__(self) -> None:
        self.packets = 0
        self.octets = 0
        """Payload octets: headers, CSRCs, extensions and padding excluded (§6.4.1)."""
        self.last_ts = 0
        self.last_time = 0.0
        self.sent_since_report = False

    def on_sent(self, packet: bytes | bytearray, now: float) -> None:
        """Account one RTP packet as sent (at least 12 bytes, the header final)."""
        b0 = packet[0]
        header = 12 + 4 * (b0 & 0x0F)
        if b0 & 0x10 and len(packet) >= header + 4:
            header += 4 + 4 * (packet[header + 2] << 8 | packet[header + 3])
        payload = len(packet) - header - (packet[-1] if b0 & 0x20 else 0)
        self.packets += 1
        self.octets += payload if payload > 0 else 0
        self.last_ts = _TS.unpack_from(packet, 4)[0]
        self.last_time = now
        self.sent_since_report = True

    def rtp_timestamp_at(self, now: float, clock: int) -> int:
        """The stream's RTP timestamp at ``now``: the last one sent, extrapolated on ``clock``
        (§6.4.1: "the same time as the NTP timestamp ... in the same units ... as the RTP
        timestamps in data packets")."""
        return (self.last_ts + round((now - self.last_time) * clock)) & _U32


class LegRtcp:
    """RTCP state of one leg: our statistics, the peer's reports, our report schedule.

    Args:
        interval: minimum report interval (§6.2), :data:`REPORT_INTERVAL` by default.
        rand: source of uniform [0, 1) numbers for the §6.2 randomisation.
    """

    def __init__(
        self, *, interval: float = REPORT_INTERVAL, rand: Callable[[], float] = random.random
    ) -> None:
        self.receiver = ReceiverStats()
        self.sender = SenderStats()
        self.interval = interval
        self._rand = rand
        self.next_report: float | None = None
        """When our next report is due (None: schedule not started)."""
        self.reports_sent = 0
        self.reports_received = 0
        """Report blocks from the peer about our stream."""
        self.parse_errors = 0
        self.remote_fraction_lost = 0
        """The peer's last reported fraction lost of our stream, 1/256."""
        self.remote_packets_lost = 0
        self.remote_jitter = 0
        """The peer's last reported jitter of our stream, timestamp units."""
        self.rtt: float | None = None
        """Last round-trip time to the peer, seconds (§6.4.1 LSR/DLSR), None until known."""
        self._sr_sent: list[tuple[int, float]] = []

    @property
    def clock(self) -> int:
        """RTP clock of this leg's streams (0 while unknown)."""
        return self.receiver.clock

    def set_clock(self, clock: int) -> None:
        """Fix the leg's RTP clock rate (the negotiated codec's)."""
        self.receiver.set_clock(clock)

    # ------------------------------------------------------------------ the peer's RTCP

    def sender_report_sent(self, ntp: int, now: float) -> None:
        """Note that an SR with NTP timestamp ``ntp`` left on this leg at ``now``."""
        history = self._sr_sent
        history.append((ntp_short(ntp), now))
        if len(history) > MAX_SR_HISTORY:
            del history[0]

    def receive(self, packets: Sequence[RtcpPacket], local_ssrc: int, now: float) -> None:
        """Read the peer's RTCP: its SRs (for our LSR/DLSR) and its report blocks about
        ``local_ssrc``, our stream on this leg (loss, jitter, round-trip time)."""
        for packet in packets:
            if isinstance(packet, SenderReport):
                self.receiver.on_sender_report(packet.ssrc, packet.ntp_timestamp, now)
            elif not isinstance(packet, ReceiverReport):
                continue
            for block in packet.reports:
                if block.ssrc != local_ssrc:
                    continue
                self.reports_received += 1
                self.remote_fraction_lost = block.fraction_lost
                self.remote_packets_lost = block.packets_lost
                self.remote_jitter = block.jitter
                if block.lsr:
                    self._round_trip(block.lsr, block.dlsr, now)

    def _round_trip(self, lsr: int, dlsr: int, now: float) -> None:
        # §6.4.1: RTT = A - LSR - DLSR, with A the arrival time; LSR is looked up among the
        # SRs that left on this leg, so A and the send time are both on our clock.
        for key, sent in reversed(self._sr_sent):
            if key == lsr:
                self.rtt = max(0.0, now - sent - dlsr / 65536)
                return

    # ------------------------------------------------------------------ our reports

    def due(self, now: float) -> bool:
        """True when our next report is due; the first call starts the schedule."""
        if self.next_report is None:
            # §6.2: the first report after half the minimum interval, randomised.
            self.next_report = now + self.interval / 2 * (0.5 + self._rand())
            return False
        return now >= self.next_report

    def make_report(self, *, ssrc: int, cname: bytes, now: float, wallclock: float) -> bytes:
        """Our compound report for this leg, and the next one scheduled (§6.1, §6.4).

        An SR if we sent RTP on the leg since the last report, else an RR; one report block
        about the stream we receive (if heard since the last report); SDES with our CNAME.
        ``ssrc`` is the SSRC of our stream on the leg; ``wallclock`` (UNIX time) gives the
        NTP timestamp, and the RTP timestamp is extrapolated to ``now``.

        Raises:
            RtcpError: ``cname`` longer than 255 bytes.
        """
        block = self.receiver.report_block(now)
        blocks = () if block is None else (block,)
        sender = self.sender
        packet: RtcpPacket
        if sender.sent_since_report:
            ntp = ntp_from_unix(wallclock)
            packet = SenderReport(
                ssrc,
                ntp,
                sender.rtp_timestamp_at(now, self.receiver.clock),
                sender.packets,
                sender.octets,
                blocks,
            )
            sender.sent_since_report = False
            self.sender_report_sent(ntp, now)
        else:
            packet = ReceiverReport(ssrc, blocks)
        sdes = SourceDescription((SdesChunk(ssrc, ((SDES_CNAME, cname),)),))
        self.next_report = now + self.interval * (0.5 + self._rand())
        self.reports_sent += 1
        return serialize((packet, sdes))

    def stats(self) -> dict[str, float | int | None]:
        """Loss and jitter both ways and the round-trip time, for the CDR and metrics.

        ``packets_lost``/``jitter_ms``: what we measured on the stream we receive;
        ``remote_*``: what the peer reported about our stream; ms figures are None while
        the clock or the round-trip time is unknown.
        """
        r = self.receiver
        clock = r.clock
        return {
            "packets_received": r.packets_received,
            "packets_lost": r.packets_lost,
            "fraction_lost": r.fraction_lost / 256,
            "jitter_ms": round(r.jitter_units * 1000 / clock, 3) if clock else None,
            "remote_packets_lost": self.remote_packets_lost,
            "remote_fraction_lost": self.remote_fraction_lost / 256,
            "remote_jitter_ms": round(self.remote_jitter * 1000 / clock, 3) if clock else None,
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
            "reports_sent": self.reports_sent,
            "reports_received": self.reports_received,
            "parse_errors": self.parse_errors,
        }
