"""RFC 4475 "SIP Torture Test Messages" against gateway.sip.message.parse().

The vectors in tests/vectors/sip/rfc4475/ are the RFC's own messages, byte for byte, as
carried in its Appendix A archive (https://www.rfc-editor.org/rfc/rfc4475), one file per
message named after the archive's file name: valid/ = §3.1.1, invalid/ = §3.1.2,
semantic/ = §3.2-§3.4 (transaction- and application-layer cases; the parser's part in
them is to read them, or reject what no element can use).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.sip.errors import ParseError
from gateway.sip.headers import parse_contact, parse_name_addr, parse_name_addrs, parse_vias
from gateway.sip.message import Request, Response, make_response, parse
from gateway.sip.uri import SipURI, unescape

ROOT = Path(__file__).resolve().parents[2] / "vectors" / "sip" / "rfc4475"

VALID = [
    "wsinv",
    "intmeth",
    "esc01",
    "escnull",
    "esc02",
    "lwsdisp",
    "longreq",
    "dblreq",
    "semiuri",
    "transports",
    "mpart01",
    "unreason",
    "noreason",
]

# name -> (reason, status_hint, partial available). status 0 = response: discard.
REJECTED = {
    # §3.1.2.1: also no partial: the only Via is the broken one, so no answer can be routed.
    "badinv01": ("empty Via element", 400, False),
    "clerr": ("Content-Length larger than the body", 400, True),  # §3.1.2.2
    "ncl": ("invalid Content-Length", 400, True),  # §3.1.2.3
    "scalar02": ("invalid CSeq", 400, True),  # §3.1.2.4
    "scalarlg": ("invalid CSeq", 0, False),  # §3.1.2.5: a response, discarded
    "quotbal": ("unterminated quoted string", 400, True),  # §3.1.2.6
    "ltgtruri": ("invalid Request-URI", 400, True),  # §3.1.2.7
    "lwsruri": ("invalid request line", 400, False),  # §3.1.2.8: four words, no method/URI
    "lwsstart": ("invalid request line", 400, True),  # §3.1.2.9
    "trws": ("invalid request line", 400, True),  # §3.1.2.10
    "escruri": ("headers are not allowed in the Request-URI", 400, True),  # §3.1.2.11
    "badaspec": ("invalid URI", 400, True),  # §3.1.2.14: we take the "reject" option
    "baddn": ("invalid display name", 400, True),  # §3.1.2.15
    "badvers": ("unsupported SIP version", 505, True),  # §3.1.2.16
    "mismatch01": ("CSeq method does not match the request method", 400, True),  # §3.1.2.17
    "mismatch02": ("CSeq method does not match the request method", 400, True),  # §3.1.2.18
    "bigcode": ("invalid status code", 0, False),  # §3.1.2.19: a response, discarded
}

# §3.1.2 messages parse() accepts by design, with the reason (see the tests below).
ACCEPTED_BY_DESIGN = {
    # §3.1.2.12: the gateway never interprets Date; an element that does not use it may
    # process the request, and a proxy forwards the header unchanged.
    "baddate",
    # §3.1.2.13: parse() does not interpret Contact (a proxy forwards a REGISTER's
    # Contact unchanged to the registrar); the Contact grammar itself rejects it, see
    # test_regbadct_contact_is_rejected_by_the_contact_grammar.
    "regbadct",
}

SEMANTIC_REJECTED = {
    # §3.3.1: 400 is right, but with no From/To/Call-ID no answer can be built: dropped.
    "insuf": ("missing From header", 400, False),
    "unkscm": ("unsupported URI scheme", 416, True),  # §3.3.2
    "novelsc": ("unsupported URI scheme", 416, True),  # §3.3.3: we do not proxy soap.beep
    "multi01": ("more than one From header", 400, True),  # §3.3.8
    "mcl01": ("more than one Content-Length header", 400, True),  # §3.3.9
}
SEMANTIC_ACCEPTED = [
    "badbranch",  # §3.2.1: the transaction layer treats it as RFC 2543 (no magic cookie id)
    "unksm2",  # §3.3.4
    "bext01",  # §3.3.5: Require/Proxy-Require are for the application (420)
    "invut",  # §3.3.6: unknown Content-Type is for the application (415)
    "regaut01",  # §3.3.7
    "bcast",  # §3.3.10
    "zeromf",  # §3.3.11: Max-Forwards 0 is for the proxy (483 / answer OPTIONS)
    "cparam01",  # §3.3.12
    "cparam02",  # §3.3.13
    "regescrt",  # §3.3.14
    "sdp01",  # §3.3.15
    "inv2543",  # §3.4.1: RFC 2543 syntax, no branch, no Content-Length
]


def load(kind: str, name: str) -> bytes:
    return (ROOT / kind / f"{name}.sip").read_bytes()


def test_every_vector_file_is_listed() -> None:
    assert sorted(p.stem for p in (ROOT / "valid").glob("*.sip")) == sorted(VALID)
    assert sorted(p.stem for p in (ROOT / "invalid").glob("*.sip")) == sorted(
        [*REJECTED, *ACCEPTED_BY_DESIGN]
    )
    assert sorted(p.stem for p in (ROOT / "semantic").glob("*.sip")) == sorted(
        [*SEMANTIC_REJECTED, *SEMANTIC_ACCEPTED]
    )


def _semantic(msg: Request | Response) -> tuple[object, ...]:
    start = (msg.method, msg.uri) if isinstance(msg, Request) else (msg.status, msg.reason)
    headers = [(n, v) for n, v in msg.headers if n != "Content-Length"]
    return (*start, msg.version, headers, msg.body)


@pytest.mark.parametrize(
    ("kind", "name"),
    [("valid", n) for n in VALID]
    + [("invalid", n) for n in sorted(ACCEPTED_BY_DESIGN)]
    + [("semantic", n) for n in SEMANTIC_ACCEPTED],
)
def test_accepted_messages_parse_and_round_trip(kind: str, name: str) -> None:
    msg = parse(load(kind, name))
    again = parse(bytes(msg))
    assert _semantic(again) == _semantic(msg)
    assert again.headers.get("Content-Length") == str(len(msg.body))
    assert bytes(again) == bytes(msg)  # serialising is a fixed point after one pass
    # Every element a proxy reads is readable.
    assert msg.call_id
    assert msg.cseq[0] >= 0
    assert [v.transport for v in parse_vias(", ".join(msg.headers.get_all("Via")))]


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_invalid_messages_are_rejected(name: str) -> None:
    reason, status, answerable = REJECTED[name]
    with pytest.raises(ParseError) as info:
        parse(load("invalid", name))
    assert str(info.value) == reason
    assert info.value.status_hint == status
    assert (info.value.partial is not None) == answerable
    if info.value.partial is not None:
        resp = make_response(info.value.partial, status)
        assert resp.status == status
        assert resp.headers.get_all("Via") == info.value.partial.headers.get_all("Via")


@pytest.mark.parametrize("name", sorted(SEMANTIC_REJECTED))
def test_semantic_rejections(name: str) -> None:
    reason, status, answerable = SEMANTIC_REJECTED[name]
    with pytest.raises(ParseError) as info:
        parse(load("semantic", name))
    assert (str(info.value), info.value.status_hint) == (reason, status)
    assert (info.value.partial is not None) == answerable


# ------------------------------------------------------- what the RFC checks


def test_wsinv() -> None:  # §3.1.1.1
    msg = parse(load("valid", "wsinv"))
    assert isinstance(msg, Request)
    assert msg.uri == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert msg.to_tag == "1918181833n"
    assert msg.from_tag == "98asjd8"
    assert parse_name_addr(msg.headers.get("From") or "").display == 'J Rosenberg \\"'
    assert msg.headers.get("Max-Forwards") == "0068"
    assert msg.cseq == (9, "INVITE")
    assert msg.headers.get("Subject") == ""
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    vias = parse_vias(", ".join(msg.headers.get_all("Via")))
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    route = parse_name_addr(msg.headers.get("Route") or "")
    assert isinstance(route.uri, SipURI)
    assert route.uri.params == [("lr", None), ("unknownwith", "value"), ("unknown-no-value", None)]
    (contact,) = parse_name_addrs(msg.headers.get("Contact") or "")
    assert contact.display == 'Quoted string ""'
    assert contact.params == [("newparam", "newvalue"), ("secondparam", None), ("q", "0.33")]
    assert len(msg.body) == 150


def test_intmeth() -> None:  # §3.1.1.2
    msg = parse(load("valid", "intmeth"))
    assert isinstance(msg, Request)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    uri = SipURI.parse(msg.uri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert msg.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    to = parse_name_addr(msg.headers.get("To") or "")
    assert to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    frm = parse_name_addr(msg.headers.get("From") or "")
    assert frm.display == "token1~` token2'+_ token3*%!.-"
    assert (
        frm.param("fromParam''~+*_!.-%")
        == '"\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439"'
    )
    assert frm.tag == "_token~1'+`*%!-."
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff\u5927\u505c\u96fb"


def test_esc01() -> None:  # §3.1.1.3
    msg = parse(load("valid", "esc01"))
    assert isinstance(msg, Request)
    ruri = SipURI.parse(msg.uri)
    assert (unescape(ruri.user or ""), ruri.host) == ("sips:user@example.com", "example.net")
    to = parse_name_addr(msg.headers.get("To") or "")
    assert isinstance(to.uri, SipURI) and unescape(to.uri.user or "") == "user"
    contact = parse_name_addr(msg.headers.get("Contact") or "")
    assert isinstance(contact.uri, SipURI)
    assert [(unescape(k), unescape(v or "")) for k, v in contact.uri.params] == [
        ("lr", ""),
        ("name", "value%41"),
    ]
    assert msg.headers.get("Content-Type") == "application/sdp"


def test_escnull() -> None:  # §3.1.1.4: two distinct contacts, users with NULs
    msg = parse(load("valid", "escnull"))
    contacts = [parse_name_addr(c).uri for c in msg.headers.get_all("Contact")]
    users = [unescape(u.user or "") for u in contacts if isinstance(u, SipURI)]
    assert users == ["\x00", "\x00\x00"]
    to = parse_name_addr(msg.headers.get("To") or "")
    assert isinstance(to.uri, SipURI) and unescape(to.uri.user or "") == "null-\x00-null"


def test_esc02() -> None:  # §3.1.1.5
    msg = parse(load("valid", "esc02"))
    assert isinstance(msg, Request)
    assert msg.method == "RE%47IST%45R"
    assert parse_name_addr(msg.headers.get("To") or "").display == "%Z%45"
    assert msg.headers.get_all("Contact") == [
        "<sip:alias1@host1.example.com>",
        "<sip:alias3@host3.example.com>",
    ]
    assert msg.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert msg.top_via.branch == "z9hG4bK209%fzsnel234"


def test_lwsdisp() -> None:  # §3.1.1.6
    msg = parse(load("valid", "lwsdisp"))
    frm = parse_name_addr(msg.headers.get("From") or "")
    assert (frm.display, frm.tag) == ("caller", "323")


def test_longreq() -> None:  # §3.1.1.7
    msg = parse(load("valid", "longreq"))
    to = parse_name_addr(msg.headers.get("To") or "")
    assert to.display == "I have a user name of " + "extreme" * 10 + " proportion"
    assert isinstance(to.uri, SipURI) and to.uri.port == 6000
    assert to.uri.param("unknownparam1") == "very" + "long" * 20 + "value"
    assert msg.from_tag == "12" + "982" * 50 + "424"
    assert msg.call_id == "longreq.one" + "really" * 20 + "longcallid"
    vias = msg.headers.get_all("Via")
    assert len(vias) == 34
    assert vias[-1].startswith("SIP/2.0/TCP host.example.com;received=192.0.2.5;branch=verylong")
    assert len(msg.body) == 150


def test_dblreq() -> None:  # §3.1.1.8: only the REGISTER, the INVITE octets are dropped
    msg = parse(load("valid", "dblreq"))
    assert isinstance(msg, Request)
    assert msg.method == "REGISTER"
    assert msg.body == b""
    assert b"INVITE" not in bytes(msg)


def test_semiuri() -> None:  # §3.1.1.9
    msg = parse(load("valid", "semiuri"))
    assert isinstance(msg, Request)
    uri = SipURI.parse(msg.uri)
    assert (uri.user, uri.host, uri.params) == ("user;par=u%40example.net", "example.com", [])


def test_transports() -> None:  # §3.1.1.10
    msg = parse(load("valid", "transports"))
    vias = parse_vias(", ".join(msg.headers.get_all("Via")))
    assert [v.transport for v in vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_mpart01() -> None:  # §3.1.1.11: binary body with NULs, exact length
    data = load("valid", "mpart01")
    msg = parse(data)
    assert len(msg.body) == 553
    assert msg.body == data[-553:]
    assert b"\x00" in msg.body
    assert bytes(msg).endswith(msg.body)


def test_unreason_and_noreason() -> None:  # §3.1.1.12, §3.1.1.13
    msg = parse(load("valid", "unreason"))
    assert isinstance(msg, Response)
    assert msg.status == 200
    assert (
        msg.reason
        == "= 2**3 * 5**2 \u043d\u043e \u0441\u0442\u043e \u0434\u0435\u0432\u044f\u043d\u043e\u0441\u0442\u043e \u0434\u0435\u0432\u044f\u0442\u044c - \u043f\u0440\u043e\u0441\u0442\u043e\u0435"
    )
    assert bytes(msg).split(b"\r\n", 1)[0] == load("valid", "unreason").split(b"\r\n", 1)[0]
    empty = parse(load("valid", "noreason"))
    assert isinstance(empty, Response)
    assert (empty.status, empty.reason) == (100, "")


def test_badvers_partial_keeps_its_via() -> None:  # §3.1.2.16: answer 505 to the sender
    with pytest.raises(ParseError) as info:
        parse(load("invalid", "badvers"))
    partial = info.value.partial
    assert partial is not None
    assert partial.version == "SIP/7.0"
    assert partial.top_via.protocol == "SIP/7.0"
    assert partial.top_via.host == "c.example.com"


def test_baddate_date_is_kept_verbatim() -> None:
    msg = parse(load("invalid", "baddate"))
    assert msg.headers.get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"


def test_regbadct_contact_is_rejected_by_the_contact_grammar() -> None:
    msg = parse(load("invalid", "regbadct"))
    contact = msg.headers.get("Contact") or ""
    assert contact == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"
    with pytest.raises(ParseError) as info:
        parse_contact(contact)
    assert (str(info.value), info.value.status_hint) == (
        "URI with headers must be enclosed in <>",
        400,
    )


def test_semantic_details() -> None:
    assert parse(load("semantic", "badbranch")).top_via.branch == "z9hG4bK"
    unksm2 = parse(load("semantic", "unksm2"))
    assert parse_name_addr(unksm2.headers.get("To") or "").uri == "isbn:2983792873"
    assert parse_name_addr(unksm2.headers.get("Contact") or "").uri == "name:John_Smith"
    assert parse(load("semantic", "zeromf")).headers.get("Max-Forwards") == "0"
    regescrt = parse_name_addr(parse(load("semantic", "regescrt")).headers.get("Contact") or "")
    assert isinstance(regescrt.uri, SipURI)
    assert regescrt.uri.headers == "Route=%3Csip:sip.example.com%3E"
    assert parse(load("semantic", "bext01")).headers.get_all("Proxy-Require") == [
        "noProxiesSupportThis",
        "norDoAnyProxiesSupportThis",
    ]
    inv2543 = parse(load("semantic", "inv2543"))
    assert inv2543.top_via.branch is None
    assert inv2543.body.startswith(b"v=0\r\n") and inv2543.body.endswith(b"RTP/AVP 0\r\n")
    bcast = parse(load("semantic", "bcast"))
    assert parse_vias(bcast.headers.get_all("Via")[1])[0].host == "255.255.255.255"
