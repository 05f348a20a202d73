"""RFC 7983 §7 demultiplexing of the WebRTC leg's single UDP port by the first byte.

::

                 +----------------+
                 |        [0..3] -+--> STUN
                 |      [16..19] -+--> ZRTP        (dropped: not offered)
    packet -->   |      [20..63] -+--> DTLS
                 |      [64..79] -+--> TURN channel (dropped: no TURN on this socket)
                 |    [128..191] -+--> RTP/RTCP
                 +----------------+    anything else: drop

RTP and RTCP on one port are told apart by the second byte (RFC 5761 §4): payload types
192-223 are RTCP packet types (SR 200, RR 201, SDES 202, BYE 203, APP 204, RTPFB 205,
PSFB 206, XR 207).
"""

from __future__ import annotations

__all__ = [
    "KIND_DROP",
    "KIND_STUN",
    "KIND_DTLS",
    "KIND_RTP",
    "KIND_NAMES",
    "CLASSIFY",
    "classify",
    "is_rtcp",
]

KIND_DROP = 0
"""Not a protocol this port speaks."""
KIND_STUN = 1
"""STUN (RFC 8489): ICE connectivity and consent checks."""
KIND_DTLS = 2
"""DTLS record (handshake, alerts, application data)."""
KIND_RTP = 3
"""SRTP or SRTCP (tell them apart with :func:`is_rtcp`)."""

KIND_NAMES = ("drop", "stun", "dtls", "rtp")
"""Index by kind for labels."""


def _build_table() -> bytes:
    table = bytearray(256)
    for b in range(256):
        if b <= 3:
            table[b] = KIND_STUN
        elif 20 <= b <= 63:
            table[b] = KIND_DTLS
        elif 128 <= b <= 191:
            table[b] = KIND_RTP
        else:
            table[b] = KIND_DROP
    return bytes(table)


CLASSIFY = _build_table()
"""256-entry lookup: ``CLASSIFY[data[0]]`` is the kind; the hot path indexes it directly."""


def classify(data: bytes) -> int:
    """Kind of a datagram received on a WebRTC port (``KIND_DROP`` when empty)."""
    if not data:
        return KIND_DROP
    return CLASSIFY[data[0]]


def is_rtcp(data: bytes) -> bool:
    """True if an RTP-range datagram is RTCP (RFC 5761 §4: second byte 192-223)."""
    return len(data) > 1 and 192 <= data[1] <= 223
