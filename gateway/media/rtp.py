"""RTP/RTCP header fields and the per-direction header rewriter (RFC 3550).

Everything here works on ``bytes``/``bytearray``/``memoryview`` with precompiled
:class:`struct.Struct` objects: no packet objects are built on the hot path.

RTP fixed header (RFC 3550 §5.1)::

     0                   1                   2                   3
    |V=2|P|X|  CC   |M|     PT      |       sequence number         |
    |                           timestamp                           |
    |           synchronization source (SSRC) identifier            |

Sequence numbers are uint16 and timestamps uint32; arithmetic on them wraps (RFC 3550 §A.1).
"""

from __future__ import annotations

import struct

__all__ = [
    "RTP_HEADER_SIZE",
    "RTCP_HEADER_SIZE",
    "RTP_VERSION",
    "PT_DROP",
    "DEFAULT_TS_STEP",
    "parse_header",
    "payload_offset",
    "seq_add",
    "seq_diff",
    "ts_add",
    "ts_diff",
    "identity_pt_map",
    "pt_map_from_dict",
    "StreamRewriter",
    "map_rtcp",
    "rtcp_sender_ssrc",
]

RTP_HEADER_SIZE = 12
"""Fixed RTP header length (RFC 3550 §5.1)."""
RTCP_HEADER_SIZE = 8
"""Common RTCP header plus the sender SSRC (RFC 3550 §6.4)."""
RTP_VERSION = 2
"""The only RTP version (RFC 3550 §5.1)."""
PT_DROP = 0xFF
"""Payload-type map entry meaning "not negotiated: drop the packet"."""
DEFAULT_TS_STEP = 160
"""Timestamp step assumed across an SSRC change: 20 ms at 8 kHz (G.711 ptime 20)."""

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_RTPFB = 205
RTCP_PSFB = 206

_SEQ_TS_SSRC = struct.Struct("!HII")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_RTCP_COMMON = struct.Struct("!BBH")


def parse_header(data: bytes | bytearray | memoryview) -> tuple[int, int, int, int, int]:
    """Return ``(marker, payload_type, sequence, timestamp, ssrc)`` of an RTP packet.

    Raises:
        ValueError: shorter than the fixed header or not version 2.
    """
    if len(data) < RTP_HEADER_SIZE:
        raise ValueError(f"RTP packet too short ({len(data)} bytes)")
    if data[0] >> 6 != RTP_VERSION:
        raise ValueError(f"RTP version {data[0] >> 6} is not 2")
    seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(data, 2)
    return data[1] >> 7, data[1] & 0x7F, seq, ts, ssrc


def payload_offset(data: bytes | bytearray | memoryview) -> int:
    """Offset of the payload after CSRCs and the header extension (RFC 3550 §5.3.1).

    Returns -1 when the header claims more bytes than the packet holds.
    """
    n = len(data)
    if n < RTP_HEADER_SIZE or data[0] >> 6 != RTP_VERSION:
        return -1
    offset = RTP_HEADER_SIZE + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        if n < offset + 4:
            return -1
        offset += 4 + 4 * _U16.unpack_from(data, offset + 2)[0]
    return offset if offset <= n else -1


def seq_add(seq: int, delta: int) -> int:
    """``seq + delta`` modulo 2**16."""
    return (seq + delta) & 0xFFFF


def seq_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` between two sequence numbers, in ``[-32768, 32767]``."""
    d = (a - b) & 0xFFFF
    return d - 0x10000 if d >= 0x8000 else d


def ts_add(ts: int, delta: int) -> int:
    """``ts + delta`` modulo 2**32."""
    return (ts + delta) & 0xFFFFFFFF


def ts_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` between two timestamps."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d >= 0x80000000 else d


def identity_pt_map() -> bytes:
    """Payload-type table that keeps every payload type as it is."""
    return bytes(range(128))


def pt_map_from_dict(mapping: dict[int, int]) -> bytes:
    """128-entry payload-type table from ``{incoming: outgoing}``; others map to :data:`PT_DROP`.

    An empty dict means "no renumbering": the identity table.

    Raises:
        ValueError: a payload type outside 0-127.
    """
    if not mapping:
        return identity_pt_map()
    table = bytearray([PT_DROP]) * 128
    for src, dst in mapping.items():
        if not (0 <= src <= 127 and 0 <= dst <= 127):
            raise ValueError(f"payload type mapping {src}->{dst} outside 0-127")
        table[src] = dst
    return bytes(table)


class StreamRewriter:
    """Rewrites PT, sequence number, timestamp and SSRC of one direction's RTP, in place.

    The outgoing stream has one SSRC for the whole call. When the incoming SSRC changes
    (the far end re-anchors media, PITFALLS 9) the sequence and timestamp offsets are chosen
    so the outgoing stream continues where it stopped (RFC 3550 §8.2 leaves SSRC changes to
    the receiver otherwise, which many endpoints handle badly).
    """

    __slots__ = (
        "out_ssrc",
        "in_ssrc",
        "seq_off",
        "ts_off",
        "last_seq",
        "last_ts",
        "ts_step",
        "pt_map",
        "ssrc_changes",
    )

    def __init__(self, out_ssrc: int, *, ts_step: int = DEFAULT_TS_STEP) -> None:
        self.out_ssrc = out_ssrc & 0xFFFFFFFF
        self.in_ssrc = -1
        self.seq_off = 0
        self.ts_off = 0
        self.last_seq = -1
        self.last_ts = 0
        self.ts_step = ts_step
        self.pt_map = identity_pt_map()
        self.ssrc_changes = 0

    def _resync(self, seq: int, ts: int, ssrc: int) -> None:
        if self.last_seq >= 0:
            # Continue the outgoing stream one packet after the last one sent.
            self.seq_off = (self.last_seq + 1 - seq) & 0xFFFF
            self.ts_off = (self.last_ts + self.ts_step - ts) & 0xFFFFFFFF
            self.ssrc_changes += 1
        self.in_ssrc = ssrc

    def rewrite(self, buf: bytearray) -> bool:
        """Rewrite the header of ``buf`` (a whole RTP packet, >= 12 bytes) in place.

        Returns False (leaving ``buf`` untouched) if its payload type is not mapped.
        """
        b1 = buf[1]
        pt = self.pt_map[b1 & 0x7F]
        if pt == PT_DROP:
            return False
        buf[1] = (b1 & 0x80) | pt
        seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(buf, 2)
        if ssrc != self.in_ssrc:
            self._resync(seq, ts, ssrc)
        seq = (seq + self.seq_off) & 0xFFFF
        ts = (ts + self.ts_off) & 0xFFFFFFFF
        _SEQ_TS_SSRC.pack_into(buf, 2, seq, ts, self.out_ssrc)
        self.last_seq = seq
        self.last_ts = ts
        return True


def rtcp_sender_ssrc(data: bytes | bytearray | memoryview) -> int:
    """SSRC of the sender of the first packet of a compound RTCP packet (-1 if too short)."""
    if len(data) < RTCP_HEADER_SIZE:
        return -1
    ssrc: int = _U32.unpack_from(data, 4)[0]
    return ssrc


def _map_sender(buf: bytearray, offset: int, fwd: StreamRewriter) -> None:
    if _U32.unpack_from(buf, offset)[0] == fwd.in_ssrc:
        _U32.pack_into(buf, offset, fwd.out_ssrc)


def _map_report_block(buf: bytearray, offset: int, rev: StreamRewriter) -> None:
    # A report block describes the stream the reporter receives, i.e. the reverse
    # direction's outgoing stream: give it back the original SSRC and sequence space
    # (RFC 3550 §6.4.1 "SSRC_n", "extended highest sequence number received").
    if _U32.unpack_from(buf, offset)[0] == rev.out_ssrc and rev.in_ssrc >= 0:
        _U32.pack_into(buf, offset, rev.in_ssrc)
        ext = _U32.unpack_from(buf, offset + 8)[0]
        low = ((ext & 0xFFFF) - rev.seq_off) & 0xFFFF
        _U32.pack_into(buf, offset + 8, (ext & 0xFFFF0000) | low)


def map_rtcp(buf: bytearray, fwd: StreamRewriter, rev: StreamRewriter) -> bool:
    """Map the SSRCs of a compound RTCP packet forwarded in ``fwd``'s direction, in place.

    Sender SSRCs (SR/RR/RTPFB/PSFB sender, SDES chunks, BYE sources) that equal ``fwd``'s
    incoming SSRC become its outgoing SSRC; report blocks and feedback "media source" SSRCs
    that name ``rev``'s outgoing SSRC get ``rev``'s incoming SSRC back. SR RTP timestamps get
    ``fwd``'s timestamp offset. Unknown SSRCs pass unchanged.

    Returns False if the compound packet is malformed (RFC 3550 §6.1, §A.2 validity:
    version 2, lengths add up to the datagram); ``buf`` may then be partly rewritten.
    """
    n = len(buf)
    offset = 0
    while offset < n:
        if n - offset < 4:
            return False
        b0, pt, words = _RTCP_COMMON.unpack_from(buf, offset)
        end = offset + 4 * (words + 1)
        if b0 >> 6 != RTP_VERSION or end > n:
            return False
        count = b0 & 0x1F
        if pt == RTCP_SR or pt == RTCP_RR:
            blocks = offset + (28 if pt == RTCP_SR else 8)
            if blocks + 24 * count > end:
                return False
            _map_sender(buf, offset + 4, fwd)
            if pt == RTCP_SR:
                rtp_ts = _U32.unpack_from(buf, offset + 16)[0]
                _U32.pack_into(buf, offset + 16, (rtp_ts + fwd.ts_off) & 0xFFFFFFFF)
            for i in range(count):
                _map_report_block(buf, blocks + 24 * i, rev)
        elif pt == RTCP_SDES:
            # Each chunk: SSRC then items, ended by a null item and padded to 32 bits
            # (RFC 3550 §6.5).
            pos = offset + 4
            for _ in range(count):
                if pos + 4 > end:
                    return False
                _map_sender(buf, pos, fwd)
                pos += 4
                while pos < end and buf[pos] != 0:
                    if pos + 2 > end:
                        return False
                    pos += 2 + buf[pos + 1]
                if pos > end:
                    return False
                pos = (pos + 4) & ~3
        elif pt == RTCP_BYE:
            if offset + 4 + 4 * count > end:
                return False
            for i in range(count):
                _map_sender(buf, offset + 4 + 4 * i, fwd)
        elif pt == RTCP_RTPFB or pt == RTCP_PSFB:
            if end - offset < 12:
                return False
            _map_sender(buf, offset + 4, fwd)
            media = _U32.unpack_from(buf, offset + 8)[0]
            if media == rev.out_ssrc and rev.in_ssrc >= 0:
                _U32.pack_into(buf, offset + 8, rev.in_ssrc)
        elif end - offset >= 8:
            _map_sender(buf, offset + 4, fwd)
        offset = end
    return n > 0
