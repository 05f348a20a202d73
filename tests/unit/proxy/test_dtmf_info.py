"""DTMF INFO bodies as browsers' SIP stacks write them (SIP.js, JsSIP, and the bare form)."""

from __future__ import annotations

import pytest

from gateway.proxy.dtmf_info import DEFAULT_DURATION_MS, MAX_BODY, parse_dtmf_info


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        # SIP.js 0.21 (a space after "="), JsSIP 3.10 (CRLF, trailing newline)
        ("application/dtmf-relay", b"Signal= 5\r\nDuration= 100", ("5", 100)),
        ("application/dtmf-relay", b"Signal=#\r\nDuration=250\r\n", ("#", 250)),
        ("Application/DTMF-Relay; charset=x", b"signal=*\nduration=70\n", ("*", 70)),
        ("application/dtmf-relay", b"Signal=d", ("D", DEFAULT_DURATION_MS)),
        ("application/dtmf-relay", b"Signal=11\r\nDuration=160", ("#", 160)),  # event number
        ("application/dtmf", b"7", ("7", DEFAULT_DURATION_MS)),
        ("application/dtmf", b" * \r\n", ("*", DEFAULT_DURATION_MS)),
    ],
)
def test_dtmf_bodies_are_read(content_type: str, body: bytes, expected: tuple[str, int]) -> None:
    assert parse_dtmf_info(content_type, body) == expected


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (None, b"Signal=5"),
        ("application/sdp", b"Signal=5"),
        ("application/dtmf-relay", b""),
        ("application/dtmf-relay", b"Duration=100"),
        ("application/dtmf-relay", b"Signal=E"),
        ("application/dtmf-relay", b"Signal=16"),
        ("application/dtmf-relay", b"Signal=5\nDuration=-3"),
        ("application/dtmf-relay", b"Signal=5\nDuration=1e3"),
        ("application/dtmf-relay", b"Signal=5\nDuration=" + b"9" * 200),  # bencode-sized
        ("application/dtmf-relay", "Signal=\u0665".encode()),
        ("application/dtmf", b"55"),
        ("application/dtmf-relay", b"Signal=5\n" + b"x" * MAX_BODY),
    ],
)
def test_anything_else_is_not_taken_for_dtmf(content_type: str | None, body: bytes) -> None:
    assert parse_dtmf_info(content_type, body) is None
