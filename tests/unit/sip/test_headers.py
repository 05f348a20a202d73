"""gateway.sip.headers: the header list and the Via, name-addr and CSeq grammars."""

from __future__ import annotations

import pytest

from gateway.sip.errors import ParseError
from gateway.sip.headers import (
    Headers,
    NameAddr,
    Via,
    canonical_name,
    parse_contact,
    parse_cseq,
    parse_name_addr,
    parse_name_addrs,
    parse_via,
    parse_vias,
    quote_string,
    split_commas,
)
from gateway.sip.uri import SipURI

# ------------------------------------------------------------------ Headers


def test_compact_forms_and_case_are_canonicalised() -> None:
    h = Headers([("v", "SIP/2.0/UDP a"), ("call-id", "x"), ("l", "0"), ("CSEQ", "1 INVITE")])
    h.add("X-Custom-thing", "1")
    assert list(h) == [
        ("Via", "SIP/2.0/UDP a"),
        ("Call-ID", "x"),
        ("Content-Length", "0"),
        ("CSeq", "1 INVITE"),
        ("X-Custom-thing", "1"),
    ]
    assert h.get("i") == "x"
    assert h.get("CALL-ID") == "x"
    assert h.get("x-custom-THING") == "1"
    assert "VIA" in h and "v" in h
    assert "Route" not in h
    assert 42 not in h


@pytest.mark.parametrize(
    ("letter", "name"),
    [
        ("v", "Via"),
        ("f", "From"),
        ("t", "To"),
        ("i", "Call-ID"),
        ("m", "Contact"),
        ("l", "Content-Length"),
        ("c", "Content-Type"),
        ("k", "Supported"),
        ("s", "Subject"),
        ("o", "Event"),
        ("u", "Allow-Events"),
        ("r", "Refer-To"),
        ("b", "Referred-By"),
        ("x", "Session-Expires"),
        ("e", "Content-Encoding"),
        ("E", "Content-Encoding"),
    ],
)
def test_canonical_name(letter: str, name: str) -> None:
    assert canonical_name(letter) == name


def test_canonical_name_keeps_unknown_spelling() -> None:
    assert canonical_name("www-authenticate") == "WWW-Authenticate"
    assert canonical_name("NewFangledHeader") == "NewFangledHeader"
    assert canonical_name("C%6Fntact") == "C%6Fntact"  # not Contact (RFC 4475 §3.1.1.5)


def test_multi_value_split_on_commas_outside_quotes_and_angles() -> None:
    h = Headers(
        [
            ("Contact", '"Doe, John" <sip:a@h;x=1,2>;q=0.5, <sip:b@h>'),
            ("Contact", "<sip:c@h>"),
            ("Subject", "hello, world"),
            ("Allow", "INVITE, ACK,,BYE"),
        ]
    )
    assert h.get_all("m") == ['"Doe, John" <sip:a@h;x=1,2>;q=0.5', "<sip:b@h>", "<sip:c@h>"]
    assert h.get("Contact") == '"Doe, John" <sip:a@h;x=1,2>;q=0.5'
    assert h.get_all("Subject") == ["hello, world"]  # not a list header
    assert h.get("Subject") == "hello, world"
    assert h.get_all("Allow") == ["INVITE", "ACK", "BYE"]
    assert h.get_all("Route") == []
    assert h.get("Route") is None


def test_get_skips_empty_elements() -> None:
    h = Headers([("Supported", ""), ("Supported", " , path")])
    assert h.get("Supported") == "path"
    assert h.get_all("k") == ["path"]


def test_pop_first_on_comma_joined_via() -> None:
    h = Headers(
        [
            ("Via", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/TCP b;branch=z9hG4bK2"),
            ("Via", "SIP/2.0/UDP c"),
        ]
    )
    assert h.pop_first("v") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    assert list(h) == [("Via", "SIP/2.0/TCP b;branch=z9hG4bK2"), ("Via", "SIP/2.0/UDP c")]
    assert h.pop_first("Via") == "SIP/2.0/TCP b;branch=z9hG4bK2"
    assert h.pop_first("Via") == "SIP/2.0/UDP c"
    assert h.pop_first("Via") is None
    assert len(h) == 0


def test_pop_first_keeps_the_rest_of_the_line_in_place() -> None:
    h = Headers([("To", "t"), ("Route", "<sip:a;lr>, <sip:b;lr>, <sip:c;lr>"), ("From", "f")])
    assert h.pop_first("Route") == "<sip:a;lr>"
    assert list(h) == [("To", "t"), ("Route", "<sip:b;lr>, <sip:c;lr>"), ("From", "f")]


def test_pop_first_single_and_degenerate_values() -> None:
    h = Headers([("Subject", "a, b"), ("Route", "<sip:a;lr>,"), ("Route", " , ")])
    assert h.pop_first("Subject") == "a, b"
    assert h.pop_first("Route") == "<sip:a;lr>"
    assert h.pop_first("Route") == ""
    assert list(h) == []


def test_prepend_goes_before_the_first_line_of_that_name() -> None:
    h = Headers(
        [("Max-Forwards", "70"), ("Via", "SIP/2.0/UDP b"), ("To", "t"), ("Via", "SIP/2.0/UDP c")]
    )
    h.prepend("v", "SIP/2.0/UDP a")
    assert [name for name, _ in h] == ["Max-Forwards", "Via", "Via", "To", "Via"]
    assert h.get_all("Via") == ["SIP/2.0/UDP a", "SIP/2.0/UDP b", "SIP/2.0/UDP c"]
    h.prepend("Record-Route", "<sip:p;lr>")
    assert list(h)[0] == ("Record-Route", "<sip:p;lr>")


def test_add_goes_after_the_last_line_of_that_name() -> None:
    h = Headers([("Route", "<sip:a>"), ("To", "t"), ("Route", "<sip:b>"), ("From", "f")])
    h.add("route", "<sip:c>")
    assert [v for _, v in h] == ["<sip:a>", "t", "<sip:b>", "<sip:c>", "f"]
    h.add("Supported", "path")
    assert list(h)[-1] == ("Supported", "path")


def test_set_replaces_all_values_at_the_first_position() -> None:
    h = Headers([("X-A", "1"), ("Expires", "10"), ("X-B", "2"), ("expires", "20")])
    h.set("EXPIRES", "30")
    assert list(h) == [("X-A", "1"), ("Expires", "30"), ("X-B", "2")]
    h.set("Flow-Timer", "120")
    assert list(h)[-1] == ("Flow-Timer", "120")


def test_remove_copy_eq_repr() -> None:
    h = Headers([("Contact", "<sip:a>"), ("m", "<sip:b>"), ("To", "t")])
    c = h.copy()
    h.remove("contact")
    assert list(h) == [("To", "t")]
    assert len(c) == 3
    assert c != h
    assert Headers([("t", "t")]) == h
    assert h.__eq__(42) is NotImplemented
    assert repr(h) == "Headers([('To', 't')])"


def test_split_commas() -> None:
    assert split_commas(" a ") == ["a"]
    assert split_commas('"a\\", b", c') == ['"a\\", b"', "c"]
    assert split_commas("<sip:a,b>, c,") == ["<sip:a,b>", "c", ""]


def test_quote_string() -> None:
    assert quote_string('J Rosenberg \\"') == '"J Rosenberg \\\\\\""'
    assert (
        quote_string("BEL:\x07 NUL:\x00 DEL:\x7f tab:\t")
        == '"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f tab:\t"'
    )


# ---------------------------------------------------------------------- Via


def test_parse_via_fields() -> None:
    via = parse_via(
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;received=198.51.100.7;rport=5061"
    )
    assert via == Via(
        "UDP",
        "192.0.2.1",
        5060,
        [("branch", "z9hG4bK776asdhds"), ("received", "198.51.100.7"), ("rport", "5061")],
    )
    assert via.branch == "z9hG4bK776asdhds"
    assert via.received == "198.51.100.7"
    assert via.rport == "5061"
    assert via.sent_by == "192.0.2.1:5060"


def test_via_rport_states() -> None:
    assert parse_via("SIP/2.0/WSS abc.invalid;branch=z9hG4bKx").rport is None
    assert parse_via("SIP/2.0/WSS abc.invalid;branch=z9hG4bKx;rport").rport == ""
    assert parse_via("SIP/2.0/WSS abc.invalid;rport=1").rport == "1"


def test_via_set_param_and_str() -> None:
    via = parse_via("SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK1;rport")
    via.set_param("received", "192.0.2.9")
    via.set_param("RPORT", "43210")
    assert (
        str(via)
        == "SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK1;rport=43210;received=192.0.2.9"
    )
    assert via.has_param("Received")
    assert not via.has_param("maddr")


def test_via_lws_everywhere_and_case() -> None:
    # RFC 4475 §3.1.1.1 (wsinv), after unfolding.
    vias = parse_vias(
        "SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8  , "
        "SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239"
    )
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    low = parse_via("sip/2.0/udp host : 5070")
    assert (low.transport, low.port, str(low)) == ("UDP", 5070, "SIP/2.0/UDP host:5070")


def test_via_ipv6_and_quoted_params() -> None:
    via = parse_via(
        'SIP/2.0/UDP [2001:db8::9:1]:5060;received=2001:db8::9:255;branch=z9hG4bKas3;x="a;b,c"'
    )
    assert via.host == "2001:db8::9:1"
    assert via.sent_by == "[2001:db8::9:1]:5060"
    assert via.received == "2001:db8::9:255"
    assert via.param("x") == '"a;b,c"'
    assert (
        str(via)
        == 'SIP/2.0/UDP [2001:db8::9:1]:5060;received=2001:db8::9:255;branch=z9hG4bKas3;x="a;b,c"'
    )
    assert len(parse_vias('SIP/2.0/UDP a;x="1,2", SIP/2.0/UDP b')) == 2


def test_via_other_version_is_kept() -> None:
    via = parse_via("SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw")
    assert via.protocol == "SIP/7.0"
    assert str(via) == "SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "invalid Via"),
        ("SIP/2.0/UDP", "invalid Via"),
        ("HTTP/1.1/TCP host", "invalid Via"),
        ("SIP/2.0/UDP host junk", "invalid Via"),
        ("SIP/2.0/UDP host:", "invalid port"),
        ("SIP/2.0/UDP host:99999", "invalid port"),
        ("SIP/2.0/UDP [::1", "invalid Via"),
        ("SIP/2.0/UDP [2001:db8:::1]", "invalid IPv6 reference"),
        ("SIP/2.0/UDP bad_host-.com", "invalid host"),
        ("SIP/2.0/UDP 192.0.2.15;;", "invalid header parameter"),
        ("SIP/2.0/UDP h;branch=", "invalid header parameter"),
        ("SIP/2.0/UDP h;branch=a b", "invalid header parameter"),
        ('SIP/2.0/UDP h;x="open', "unterminated quoted string"),
        ('SIP/2.0/UDP h;x="a"b', "invalid header parameter"),
    ],
)
def test_via_errors(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_via(text)
    assert str(info.value) == reason
    assert info.value.status_hint == 400


def test_parse_vias_rejects_empty_elements() -> None:
    # RFC 4475 §3.1.2.1 (badinv01)
    with pytest.raises(ParseError, match="^empty Via element$"):
        parse_vias("SIP/2.0/UDP 192.0.2.15;;,;,,")


# ---------------------------------------------------------------- name-addr


def test_name_addr_quoted_display_with_escapes() -> None:
    na = parse_name_addr('"J Rosenberg \\\\\\""       <sip:jdrosen@example.com> ;  tag = 98asjd8')
    assert na.display == 'J Rosenberg \\"'
    assert na.tag == "98asjd8"
    assert str(na) == '"J Rosenberg \\\\\\"" <sip:jdrosen@example.com>;tag=98asjd8'
    nul = parse_name_addr('"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:a@example.com>')
    assert nul.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert parse_name_addr(str(nul)) == nul


def test_name_addr_token_display_and_no_lws() -> None:
    na = parse_name_addr("token1~` token2'+_   token3*%!.- <sip:mundane@example.com>;fromParam=x")
    assert na.display == "token1~` token2'+_ token3*%!.-"
    assert na.param("FROMPARAM") == "x"
    lws = parse_name_addr("caller<sip:caller@example.com>;tag=323")  # RFC 4475 §3.1.1.6
    assert (lws.display, lws.tag) == ("caller", "323")
    assert str(lws) == '"caller" <sip:caller@example.com>;tag=323'


def test_name_addr_without_display() -> None:
    na = parse_name_addr("<sip:a@h;lr>;foo")
    assert na == NameAddr(
        None, SipURI("sip", "a", None, "h", None, [("lr", None)]), [("foo", None)]
    )
    assert str(na) == "<sip:a@h;lr>;foo"
    assert na.tag is None
    assert na.has_param("foo")
    empty = parse_name_addr('"" <sip:a@h>')
    assert empty.display == ""
    assert str(empty) == '"" <sip:a@h>'


def test_addr_spec_params_are_header_params() -> None:
    # RFC 3261 §20.10; RFC 4475 §3.3.12 (cparam01) vs §3.3.13 (cparam02)
    na = parse_name_addr("sip:+19725552222@gw1.example.net;unknownparam")
    assert isinstance(na.uri, SipURI)
    assert na.uri.params == []
    assert na.params == [("unknownparam", None)]
    bracketed = parse_name_addr("<sip:+19725552222@gw1.example.net;unknownparam>")
    assert isinstance(bracketed.uri, SipURI)
    assert bracketed.uri.params == [("unknownparam", None)]
    assert bracketed.params == []
    folded = parse_name_addr(" sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n")
    assert folded.tag == "1918181833n"
    assert str(folded) == "<sip:vivekg@chair-dnrc.example.com>;tag=1918181833n"


def test_non_sip_uris_are_text() -> None:
    assert parse_name_addr("isbn:2983792873").uri == "isbn:2983792873"
    assert parse_name_addr("<http://www.example.com>;tag=3234233").uri == "http://www.example.com"
    na = parse_name_addr('<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>;x="y"')
    assert str(na) == '<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>;x="y"'


def test_jssip_contact() -> None:
    value = (
        "<sip:k3d9f2a1@df7jal23ls0d.invalid;transport=ws;ob>;+sip.ice;reg-id=1;"
        '+sip.instance="<urn:uuid:6bd0a7a2-2c8f-4b4b-9a69-1b1c0e6f4a10>";expires=600'
    )
    (na,) = parse_name_addrs(value)
    assert na.param("+sip.instance") == '"<urn:uuid:6bd0a7a2-2c8f-4b4b-9a69-1b1c0e6f4a10>"'
    assert na.param("reg-id") == "1"
    assert str(na) == value


def test_with_param_copies() -> None:
    na = parse_name_addr("<sip:bob@example.com>")
    tagged = na.with_param("tag", "abc")
    assert str(tagged) == "<sip:bob@example.com>;tag=abc"
    assert str(tagged.with_param("TAG", "def")) == "<sip:bob@example.com>;tag=def"
    assert na.params == []


def test_parse_name_addrs_and_contact_star() -> None:
    items = parse_name_addrs('"A, B" <sip:a@h>, <sip:b@h>;q=0.1')
    assert [i.display for i in items] == ["A, B", None]
    assert parse_contact(" * ") == "*"
    contacts = parse_contact("<sip:a@h>, <sip:b@h>")
    assert isinstance(contacts, list) and len(contacts) == 2
    with pytest.raises(ParseError, match="^empty address element$"):
        parse_name_addrs("<sip:a@h>,")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty address"),
        ('"Mr. J. User <sip:j.user@example.com>', "unterminated quoted string"),  # quotbal
        ("Bell, Alexander <sip:a.g.bell@example.com>;tag=43", "invalid display name"),  # baddn
        ('"Watson, Thomas" < sip:t.watson@example.org >', "invalid URI"),  # badaspec
        (
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            "URI with headers must be enclosed in <>",
        ),
        ("sip:a@h, sip:b@h", "URI with headers must be enclosed in <>"),
        ('"Joe" <sip:joe@example.org>;;;;', "invalid header parameter"),  # badinv01 Contact
        ('"Joe" sip:joe@example.org', "invalid address"),
        ('"Joe"', "invalid address"),
        ("<sip:a@h", "unterminated <"),
        ("<sip:a@h> junk", "invalid header parameters"),
        ("<tel:+1 555>", "invalid URI"),
        ("<nourischeme>", "invalid URI"),
        ("<sip:a@h>;=x", "invalid header parameter"),
    ],
)
def test_name_addr_errors(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_name_addr(text)
    assert str(info.value) == reason


# --------------------------------------------------------------------- CSeq


def test_parse_cseq() -> None:
    assert parse_cseq("0009 INVITE") == (9, "INVITE")
    assert parse_cseq("  4711\t REGISTER ") == (4711, "REGISTER")
    assert parse_cseq("2147483647 BYE") == (2**31 - 1, "BYE")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "invalid CSeq"),
        ("INVITE", "invalid CSeq"),
        ("1 INVITE x", "invalid CSeq"),
        ("-1 INVITE", "invalid CSeq"),
        ("1x INVITE", "invalid CSeq"),
        ("36893488147419103232 REGISTER", "invalid CSeq"),  # RFC 4475 §3.1.2.4
        ("2147483648 INVITE", "CSeq number too large"),  # RFC 3261 §8.1.1.5
        ("1 INV<ITE", "invalid CSeq"),
    ],
)
def test_parse_cseq_errors(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_cseq(text)
    assert str(info.value) == reason
