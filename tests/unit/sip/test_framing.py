"""gateway.sip.framing: stream framing (RFC 3261 §18.3) and CRLF keep-alives (RFC 5626 §3.5.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.sip.errors import ParseError
from gateway.sip.framing import Keepalive, StreamFramer
from gateway.sip.message import MAX_MESSAGE_SIZE, parse

VALID = Path(__file__).resolve().parents[2] / "vectors" / "sip" / "rfc4475" / "valid"

OPTIONS = (
    b"OPTIONS sip:gw.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.7:5060;branch=z9hG4bKopt1\r\n"
    b"To: <sip:gw.example.com>\r\n"
    b"From: <sip:probe@example.com>;tag=p1\r\n"
    b"Call-ID: opt-1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
MESSAGE = (
    b"MESSAGE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.7:5060;branch=z9hG4bKmsg1\r\n"
    b"To: <sip:bob@example.com>\r\n"
    b"From: <sip:alice@example.com>;tag=a1\r\n"
    b"Call-ID: msg-1\r\n"
    b"CSeq: 2 MESSAGE\r\n"
    b"l: 12\r\n"
    b"\r\n"
    b"hello\r\n\r\nbob"
)


def test_two_messages_in_one_chunk() -> None:
    framer = StreamFramer()
    assert framer.feed(MESSAGE + OPTIONS) == [MESSAGE, OPTIONS]
    assert framer.buffered == 0
    assert parse(MESSAGE).body == b"hello\r\n\r\nbob"


def test_one_message_split_byte_by_byte() -> None:
    framer = StreamFramer()
    out: list[bytes | Keepalive] = []
    for i in range(len(MESSAGE)):
        out += framer.feed(MESSAGE[i : i + 1])
        if i < len(MESSAGE) - 1:
            assert out == []
    assert out == [MESSAGE]
    assert framer.buffered == 0


def test_every_rfc4475_valid_message_through_the_stream() -> None:
    # dblreq is left out: octets after Content-Length are a datagram case (§3.1.1.8).
    stream = b"".join(p.read_bytes() for p in sorted(VALID.glob("*.sip")) if p.stem != "dblreq")
    framer = StreamFramer()
    out: list[bytes | Keepalive] = []
    for i in range(0, len(stream), 97):
        out += framer.feed(stream[i : i + 97])
    assert all(isinstance(m, bytes) for m in out)
    assert len(out) == 12
    for raw in out:
        assert isinstance(raw, bytes)
        parse(raw)
    assert framer.buffered == 0


def test_keepalive_ping_and_pong() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == [Keepalive()]
    assert framer.feed(b"\r\n") == []  # could be the start of a ping: wait
    assert framer.buffered == 2
    assert framer.feed(b"\r\n") == [Keepalive()]
    # A lone CRLF (pong) before a message is skipped (RFC 3261 §7.5).
    assert framer.feed(b"\r\n" + OPTIONS) == [OPTIONS]
    assert framer.feed(b"\r\n\r\n" + OPTIONS + b"\r\n\r\n") == [Keepalive(), OPTIONS, Keepalive()]
    assert framer.feed(b"\r\n\r") == []
    assert framer.feed(b"\n") == [Keepalive()]
    assert framer.feed(b"\n" + OPTIONS) == [OPTIONS]  # stray LF from an LF-only peer
    assert framer.buffered == 0


def test_lf_only_message() -> None:
    lf = OPTIONS.replace(b"\r\n", b"\n")
    framer = StreamFramer()
    assert framer.feed(lf[:10]) == []
    assert framer.feed(lf[10:] + lf) == [lf, lf]


def test_missing_content_length() -> None:
    framer = StreamFramer()
    with pytest.raises(ParseError) as info:
        framer.feed(OPTIONS.replace(b"Content-Length: 0\r\n", b""))
    assert str(info.value) == "missing Content-Length on a stream transport"
    assert info.value.status_hint == 400


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"Content-Length: -1\r\n", "invalid Content-Length"),
        (b"Content-Length: 0\r\nl: 0\r\n", "more than one Content-Length header"),
    ],
)
def test_bad_content_length(line: bytes, reason: str) -> None:
    with pytest.raises(ParseError, match=f"^{reason}$"):
        StreamFramer().feed(OPTIONS.replace(b"Content-Length: 0\r\n", line))


def test_folded_line_that_mentions_content_length_is_not_a_header() -> None:
    folded = OPTIONS.replace(b"Call-ID: opt-1\r\n", b"Call-ID: opt-1\r\n l: 99\r\n")
    assert StreamFramer().feed(folded) == [folded]


def test_oversize_buffer_without_end_of_headers() -> None:
    framer = StreamFramer(max_message_size=1000)
    assert framer.feed(b"INVITE sip:a@b SIP/2.0\r\nX: " + b"a" * 900) == []
    with pytest.raises(ParseError) as info:
        framer.feed(b"a" * 200)
    assert str(info.value) == "message headers exceed the size limit"
    assert info.value.status_hint == 413


def test_oversize_declared_content_length() -> None:
    framer = StreamFramer()
    head = OPTIONS.replace(b"Content-Length: 0", f"Content-Length: {MAX_MESSAGE_SIZE}".encode())
    with pytest.raises(ParseError) as info:
        framer.feed(head)
    assert (str(info.value), info.value.status_hint) == ("message exceeds the size limit", 413)


def test_body_arrives_later() -> None:
    framer = StreamFramer()
    head, body = MESSAGE[:-12], MESSAGE[-12:]
    assert framer.feed(head) == []
    assert framer.feed(body[:5]) == []
    assert framer.feed(body[5:]) == [MESSAGE]
