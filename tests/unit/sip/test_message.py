"""gateway.sip.message: parse(), serialisation, make_response(), limits and robustness."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gateway.sip.errors import ParseError
from gateway.sip.headers import Headers
from gateway.sip.message import (
    MAX_HEADER_LINES,
    MAX_LINE_LENGTH,
    MAX_MESSAGE_SIZE,
    Request,
    Response,
    make_response,
    parse,
    reason_phrase,
)

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "sip"

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK7c4d3a91;rport\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKold\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:bob@example.com>\r\n"
    b'From: "Alice" <sip:alice@example.com>;tag=8h2k3mqv1p\r\n'
    b"Call-ID: 3c26f1a8e7b94d2f\r\n"
    b"CSeq: 6418 INVITE\r\n"
    b"Timestamp: 54\r\n"
    b"Contact: <sip:k3d9f2a1@df7jal23ls0d.invalid;transport=ws;ob>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)

RESPONSE = (
    b"SIP/2.0 180 Ringing\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKold\r\n"
    b"To: <sip:bob@example.com>;tag=b0b\r\n"
    b"From: <sip:alice@example.com>;tag=a1\r\n"
    b"Call-ID: c1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def _request(**replace: bytes) -> bytes:
    """INVITE with some header lines replaced (key = header name, b"" removes it)."""
    out = []
    for line in INVITE.split(b"\r\n"):
        name = line.split(b":", 1)[0]
        if name.decode() in replace:
            if replace[name.decode()]:
                out.append(replace[name.decode()])
            continue
        out.append(line)
    return b"\r\n".join(out)


def test_parse_request() -> None:
    msg = parse(INVITE)
    assert isinstance(msg, Request)
    assert (msg.method, msg.uri, msg.version) == ("INVITE", "sip:bob@example.com", "SIP/2.0")
    assert msg.body == b"v=0\n"
    assert msg.call_id == "3c26f1a8e7b94d2f"
    assert msg.cseq == (6418, "INVITE")
    assert msg.from_tag == "8h2k3mqv1p"
    assert msg.to_tag is None
    assert msg.top_via.branch == "z9hG4bK7c4d3a91"
    assert msg.top_via.transport == "WSS"
    assert msg.headers.get_all("Via")[1] == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKold"


def test_serialise_is_byte_exact_for_canonical_input() -> None:
    assert bytes(parse(INVITE)) == INVITE
    assert bytes(parse(RESPONSE)) == RESPONSE


def test_parse_response() -> None:
    msg = parse(RESPONSE)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (180, "Ringing")
    assert msg.to_tag == "b0b"
    assert msg.cseq == (1, "INVITE")
    no_reason = parse(RESPONSE.replace(b"180 Ringing", b"100"))
    assert isinstance(no_reason, Response)
    assert (no_reason.status, no_reason.reason) == (100, "")
    spaced = parse(RESPONSE.replace(b"180 Ringing", b"480 Temporarily  Unavailable "))
    assert isinstance(spaced, Response)
    assert spaced.reason == "Temporarily  Unavailable "


def test_lf_only_and_leading_crlf_and_folding() -> None:
    lf = b"\r\n\r\n" + INVITE.replace(b"\r\n", b"\n")
    msg = parse(lf)
    assert isinstance(msg, Request)
    assert msg.body == b"v=0\n"
    assert bytes(msg) == INVITE
    mixed = INVITE.replace(b"CSeq: 6418 INVITE\r\n", b"CSeq: 6418 INVITE\n")
    assert parse(mixed).cseq == (6418, "INVITE")
    folded = INVITE.replace(b"CSeq: 6418 INVITE", b"cseq :\r\n\t6418\r\n   INVITE")
    msg = parse(folded)
    assert msg.headers.get("CSeq") == "6418 INVITE"
    assert bytes(msg) == INVITE


def test_compact_forms_and_whitespace() -> None:
    compact = (
        INVITE.replace(b"Via:", b"v :")
        .replace(b"To:", b"t:")
        .replace(b"From:", b"f:   ")
        .replace(b"Call-ID:", b"i:")
        .replace(b"Contact:", b"m:")
        .replace(b"Content-Type:", b"c:")
        .replace(b"Content-Length:", b"l   :")
    )
    assert bytes(parse(compact)) == INVITE


def test_body_is_cut_to_content_length_and_binary_safe() -> None:
    body = bytes(range(256)) + b"\r\n\r\n"
    data = _request(**{"Content-Length": f"Content-Length: {len(body)}".encode()})
    data = data[: data.index(b"\r\n\r\n") + 4] + body + b"garbage after the message"
    msg = parse(data)
    assert msg.body == body
    again = parse(bytes(msg))
    assert again.body == body


def test_missing_content_length_takes_the_rest_of_the_datagram() -> None:
    msg = parse(_request(**{"Content-Length": b""}))
    assert msg.body == b"v=0\n"
    assert bytes(msg).endswith(b"Content-Length: 4\r\n\r\nv=0\n")


def test_serialise_sets_content_length_from_body() -> None:
    msg = parse(INVITE)
    msg.body = b"v=0\r\ns=-\r\n"
    out = bytes(msg)
    assert b"Content-Length: 10\r\n" in out
    assert out.endswith(b"\r\n\r\nv=0\r\ns=-\r\n")
    built = Request("OPTIONS", "sip:a@b", Headers([("l", "1"), ("Content-Length", "2")]))
    assert bytes(built) == b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n"


def test_non_ascii_header_bytes_round_trip() -> None:
    data = _request(**{"Timestamp": b"Subject: caf\xc3\xa9 \xff\xfe"})
    msg = parse(data)
    assert msg.headers.get("Subject") == "caf\u00e9 \udcff\udcfe"
    assert bytes(msg) == data


def test_copy_is_independent() -> None:
    msg = parse(INVITE)
    assert isinstance(msg, Request)
    dup = msg.copy()
    dup.headers.pop_first("Via")
    dup.uri = "sip:carol@example.com"
    assert msg.headers.get("Via") == "SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK7c4d3a91;rport"
    assert msg.uri == "sip:bob@example.com"
    resp = parse(RESPONSE)
    assert isinstance(resp, Response)
    rdup = resp.copy()
    rdup.headers.remove("Via")
    assert "Via" in resp.headers


def test_properties_of_incomplete_messages_raise_parse_error() -> None:
    bare = Request("OPTIONS", "sip:a@b")
    for prop in ("call_id", "cseq", "from_tag", "to_tag", "top_via"):
        with pytest.raises(ParseError):
            getattr(bare, prop)


def test_tel_request_uri_is_accepted() -> None:
    msg = parse(INVITE.replace(b"INVITE sip:bob@example.com", b"INVITE tel:+15551234567"))
    assert isinstance(msg, Request)
    assert msg.uri == "tel:+15551234567"


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("data", "reason", "status", "answerable"),
    [
        (_request(Via=b""), "missing Via header", 400, False),
        (_request(From=b""), "missing From header", 400, False),
        (_request(To=b""), "missing To header", 400, False),
        (_request(**{"Call-ID": b""}), "missing Call-ID header", 400, False),
        (_request(CSeq=b""), "missing CSeq header", 400, False),
        (_request(To=b"To: <sip:a@b>\r\nt: <sip:c@d>"), "more than one To header", 400, True),
        (
            _request(CSeq=b"CSeq: 6418 BYE"),
            "CSeq method does not match the request method",
            400,
            True,
        ),
        (_request(CSeq=b"CSeq: 2147483648 INVITE"), "CSeq number too large", 400, True),
        (_request(**{"Call-ID": b"Call-ID: a b"}), "invalid Call-ID", 400, True),
        (_request(**{"Max-Forwards": b"Max-Forwards: 256"}), "invalid Max-Forwards", 400, True),
        (_request(**{"Max-Forwards": b"Max-Forwards: -1"}), "invalid Max-Forwards", 400, True),
        (
            _request(**{"Content-Length": b"Content-Length: 5"}),
            "Content-Length larger than the body",
            400,
            True,
        ),
        (
            _request(**{"Content-Length": b"Content-Length: 0x4"}),
            "invalid Content-Length",
            400,
            True,
        ),
        (_request(From=b"From: <sip:alice@example.com;tag=1"), "unterminated <", 400, True),
        (_request(Via=b"Via: SIP/2.0/UDP bad host"), "invalid Via", 400, False),
        (_request(Timestamp=b"Timestamp 54"), "malformed header line", 400, True),
        (_request(Timestamp=b"Time stamp: 54"), "malformed header line", 400, True),
        (_request(Timestamp=b": 54"), "malformed header line", 400, True),
        (
            INVITE.replace(b"SIP/2.0\r\n", b"SIP/2.0\r\n folded\r\n", 1),
            "continuation line before the first header",
            400,
            True,
        ),
        (INVITE.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), "unsupported SIP version", 505, True),
        (
            INVITE.replace(b"sip:bob@example.com SIP", b"mailto:bob@example.com SIP"),
            "unsupported URI scheme",
            416,
            True,
        ),
        (
            INVITE.replace(b"sip:bob@example.com SIP", b"sip:bob@@example.com SIP"),
            "invalid host",
            400,
            True,
        ),
        (
            INVITE.replace(b"INVITE sip:bob@example.com", b"INVITE\tsip:bob@example.com"),
            "invalid request line",
            400,
            True,
        ),
        (
            INVITE.replace(b"INVITE sip:bob@example.com", b"INVITE sip:bob@example.com x"),
            "invalid request line",
            400,
            False,
        ),
        (INVITE.replace(b"INVITE sip:", b"INV(TE sip:"), "invalid request line", 400, False),
        (INVITE.replace(b"SIP/2.0\r\n", b"HTTP/1.1\r\n", 1), "invalid request line", 400, False),
        (INVITE.replace(b"\r\n\r\n", b"\r\n"), "no blank line after the headers", 400, False),
        (b"", "no blank line after the headers", 400, False),
        (b"\r\n\r\n\r\n", "no blank line after the headers", 400, False),
    ],
)
def test_request_errors(data: bytes, reason: str, status: int, answerable: bool) -> None:
    with pytest.raises(ParseError) as info:
        parse(data)
    exc = info.value
    assert str(exc) == reason
    assert exc.status_hint == status
    assert (exc.partial is not None) == answerable
    if exc.partial is not None:
        # The answer copies the request's headers as they are (broken ones too).
        resp = make_response(exc.partial, exc.status_hint, to_tag="gw1")
        assert bytes(resp).startswith(f"SIP/2.0 {status} {reason_phrase(status)}\r\n".encode())
        assert resp.headers.get_all("Via") == exc.partial.headers.get_all("Via")
        assert resp.headers.get("Call-ID") == exc.partial.headers.get("Call-ID")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (RESPONSE.replace(b"180 Ringing", b"1800 Ringing"), "invalid status code"),
        (RESPONSE.replace(b"180 Ringing", b"099 Odd"), "invalid status code"),
        (RESPONSE.replace(b"180 Ringing", b"18x Ringing"), "invalid status code"),
        (RESPONSE.replace(b"SIP/2.0 180", b"SIP/2.1 180"), "unsupported SIP version"),
        (RESPONSE.replace(b"CSeq: 1 INVITE\r\n", b""), "missing CSeq header"),
        (RESPONSE.replace(b"\r\n\r\n", b"\r\n"), "no blank line after the headers"),
    ],
)
def test_response_errors_are_dropped(data: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse(data)
    assert str(info.value) == reason
    assert info.value.status_hint == 0
    assert info.value.partial is None


def test_size_limits() -> None:
    big_body = b"x" * MAX_MESSAGE_SIZE
    data = _request(**{"Content-Length": f"Content-Length: {len(big_body)}".encode()})
    data = data[: data.index(b"\r\n\r\n") + 4] + big_body
    with pytest.raises(ParseError) as info:
        parse(data)
    assert (str(info.value), info.value.status_hint) == ("message too large", 413)
    assert info.value.partial is not None
    assert info.value.partial.body == b""
    assert make_response(info.value.partial, 413).reason == "Request Entity Too Large"
    # Too large and no end of headers within the limit: still 413, nothing to answer with.
    with pytest.raises(ParseError) as info:
        parse(b"INVITE sip:a@b SIP/2.0\r\nX: " + b"y" * MAX_MESSAGE_SIZE)
    assert (str(info.value), info.value.status_hint, info.value.partial) == (
        "message too large",
        413,
        None,
    )
    # Only CRLFs, far beyond the limit: 413, found without walking the whole buffer.
    with pytest.raises(ParseError) as info:
        parse(b"\r\n" * MAX_MESSAGE_SIZE)
    assert (str(info.value), info.value.status_hint) == ("message too large", 413)
    # An oversize response is still just dropped.
    resp = RESPONSE.replace(b"Content-Length: 0", f"Content-Length: {MAX_MESSAGE_SIZE}".encode())
    with pytest.raises(ParseError) as info:
        parse(resp + big_body)
    assert (str(info.value), info.value.status_hint) == ("message too large", 0)


def test_line_and_header_count_limits() -> None:
    many = _request(Timestamp=b"\r\n".join(b"X-H: 1" for _ in range(MAX_HEADER_LINES)))
    with pytest.raises(ParseError, match="^too many header lines$") as info:
        parse(many)
    assert info.value.status_hint == 413
    long_line = _request(Timestamp=b"X-Long: " + b"a" * MAX_LINE_LENGTH)
    with pytest.raises(ParseError, match="^header line too long$") as info:
        parse(long_line)
    assert info.value.status_hint == 413
    long_start = INVITE.replace(
        b"sip:bob@example.com SIP", b"sip:" + b"b" * MAX_LINE_LENGTH + b"@example.com SIP"
    )
    with pytest.raises(ParseError, match="^start line too long$"):
        parse(long_start)
    long_resp = RESPONSE.replace(b"Call-ID: c1", b"Call-ID: " + b"c" * MAX_LINE_LENGTH)
    with pytest.raises(ParseError, match="^header line too long$") as info:
        parse(long_resp)
    assert info.value.status_hint == 0
    # The limits are inclusive: a header line of exactly MAX_LINE_LENGTH is fine.
    ok = _request(Timestamp=b"X-Long: " + b"a" * (MAX_LINE_LENGTH - 8))
    assert parse(ok).headers.get("X-Long") == "a" * (MAX_LINE_LENGTH - 8)


# ----------------------------------------------------------- make_response


def test_make_response_copies_the_transaction_headers() -> None:
    req = parse(INVITE)
    assert isinstance(req, Request)
    resp = make_response(req, 180, to_tag="gw42")
    assert resp.reason == "Ringing"
    assert list(resp.headers) == [
        ("Via", "SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK7c4d3a91;rport"),
        ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKold"),
        ("To", "<sip:bob@example.com>;tag=gw42"),
        ("From", '"Alice" <sip:alice@example.com>;tag=8h2k3mqv1p'),
        ("Call-ID", "3c26f1a8e7b94d2f"),
        ("CSeq", "6418 INVITE"),
        ("Content-Length", "0"),
    ]
    assert resp.body == b""
    assert bytes(resp).startswith(b"SIP/2.0 180 Ringing\r\nVia: ")


def test_make_response_keeps_an_existing_to_tag_and_timestamp_on_100() -> None:
    req = parse(INVITE.replace(b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com>;tag=old"))
    assert isinstance(req, Request)
    resp = make_response(req, 100, to_tag="new")
    assert resp.headers.get("To") == "<sip:bob@example.com>;tag=old"
    assert resp.headers.get("Timestamp") == "54"
    assert make_response(req, 200).headers.get("Timestamp") is None
    assert make_response(req, 603, "Go Away").reason == "Go Away"


def test_make_response_on_a_partial_with_a_broken_to() -> None:
    with pytest.raises(ParseError) as info:
        parse(_request(To=b'To: "Mr. J. User <sip:j.user@example.com>'))
    partial = info.value.partial
    assert partial is not None
    resp = make_response(partial, 400, to_tag="t1")
    assert resp.headers.get("To") == '"Mr. J. User <sip:j.user@example.com>;tag=t1'
    tagged = Request("INVITE", "sip:a@b", Headers([("To", "junk;TAG=x")]))
    assert make_response(tagged, 400, to_tag="t2").headers.get("To") == "junk;TAG=x"


def test_reason_phrase() -> None:
    assert reason_phrase(200) == "OK"
    assert reason_phrase(416) == "Unsupported URI Scheme"
    assert reason_phrase(505) == "Version Not Supported"
    assert reason_phrase(299) == "Success"
    assert reason_phrase(499) == "Client Error"
    assert reason_phrase(999) == "Unknown"


# ------------------------------------------------------------- robustness


def _all_vectors() -> list[bytes]:
    return [p.read_bytes() for p in sorted(VECTORS.rglob("*.sip"))] + [INVITE, RESPONSE]


def test_every_truncation_parses_or_raises_parse_error() -> None:
    count = 0
    for data in _all_vectors():
        for cut in range(len(data) + 1):
            try:
                parse(data[:cut])
            except ParseError:
                pass
            count += 1
    assert count > 10_000


def _semantic(msg: Request | Response) -> tuple[object, ...]:
    start = (msg.method, msg.uri) if isinstance(msg, Request) else (msg.status, msg.reason)
    headers = [(n, v) for n, v in msg.headers if n != "Content-Length"]
    return (*start, msg.version, headers, msg.body)


def test_random_mutations_parse_or_raise_parse_error() -> None:
    """Bounded fuzz loop (fixed seed): byte flips, insertions, deletions, CR/LF/colon/quote noise."""
    rng = random.Random(4475)
    seeds = _all_vectors()
    noise = b'\r\n:;,<>"\\ \t\x00\xff%@[]'
    parsed = 0
    for _ in range(4000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data) + 1)
            op = rng.randrange(4)
            if op == 0 and pos < len(data):
                data[pos] = rng.randrange(256)
            elif op == 1:
                data[pos:pos] = bytes([rng.choice(noise)])
            elif op == 2:
                del data[pos : pos + rng.randint(1, 8)]
            else:
                data[pos:pos] = data[: rng.randint(0, 40)]
        try:
            msg = parse(bytes(data))
        except ParseError:
            continue
        parsed += 1
        # Whatever parses must serialise to something that parses to the same thing.
        assert _semantic(parse(bytes(msg))) == _semantic(msg)
    assert parsed > 100  # the loop really exercised the accepting paths too


def test_parse_error_fields() -> None:
    exc = ParseError("invalid CSeq")
    assert (str(exc), exc.reason, exc.status_hint, exc.partial) == (
        "invalid CSeq",
        "invalid CSeq",
        400,
        None,
    )
    assert (
        repr(ParseError("message too large", 413))
        == "ParseError('message too large', status_hint=413)"
    )
