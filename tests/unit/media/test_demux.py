"""RFC 7983 §7 first-byte demultiplexing table."""

from __future__ import annotations

import pytest

from gateway.media.demux import (
    CLASSIFY,
    KIND_DROP,
    KIND_DTLS,
    KIND_NAMES,
    KIND_RTP,
    KIND_STUN,
    classify,
    is_rtcp,
)


@pytest.mark.parametrize(
    ("first", "kind"),
    [
        (0, KIND_STUN),
        (1, KIND_STUN),
        (3, KIND_STUN),
        (4, KIND_DROP),
        (16, KIND_DROP),  # ZRTP: not offered
        (19, KIND_DROP),
        (20, KIND_DTLS),  # change_cipher_spec
        (22, KIND_DTLS),  # handshake
        (23, KIND_DTLS),  # application data
        (63, KIND_DTLS),
        (64, KIND_DROP),  # TURN channel: no TURN on this socket
        (79, KIND_DROP),
        (127, KIND_DROP),
        (128, KIND_RTP),
        (0x90, KIND_RTP),
        (191, KIND_RTP),
        (192, KIND_DROP),
        (255, KIND_DROP),
    ],
)
def test_classification_table(first: int, kind: int) -> None:
    assert classify(bytes([first, 0])) == kind
    assert CLASSIFY[first] == kind


def test_every_byte_has_exactly_one_kind() -> None:
    counts = {k: sum(1 for b in range(256) if CLASSIFY[b] == k) for k in range(4)}
    assert counts == {KIND_DROP: 256 - 4 - 44 - 64, KIND_STUN: 4, KIND_DTLS: 44, KIND_RTP: 64}
    assert KIND_NAMES[KIND_RTP] == "rtp"


def test_empty_datagram_is_dropped() -> None:
    assert classify(b"") == KIND_DROP


@pytest.mark.parametrize(
    ("second", "rtcp"),
    [
        (0, False),
        (0x80, False),
        (127, False),
        (191, False),
        (192, True),
        (200, True),
        (206, True),
        (223, True),
        (224, False),
    ],
)
def test_rtp_rtcp_split_by_second_byte(second: int, rtcp: bool) -> None:
    # RFC 5761 §4: RTCP packet types 192-223 occupy the second byte.
    assert is_rtcp(bytes([0x80, second])) is rtcp


def test_is_rtcp_on_one_byte() -> None:
    assert not is_rtcp(b"\x80")
