"""gateway.sip.uri: SIP URI grammar (RFC 3261 §19.1, §25.1)."""

from __future__ import annotations

import pytest

from gateway.sip.errors import ParseError
from gateway.sip.uri import (
    SipURI,
    format_host,
    parse_host,
    parse_port,
    split_host_port,
    unescape,
    uri_scheme,
)


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@example.com",
        "sips:alice:secret@example.com:5061;transport=tls",
        "sip:example.com",
        "sip:host4",
        "sip:127.0.0.1:5060;lr",
        "sip:[2001:db8::10]:5070;transport=tcp;lr",
        "sip:[::1]",
        "sip:k3d9f2a1@df7jal23ls0d.invalid;transport=ws;ob",
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
        "sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31",
        "sip:null-%00-null@example.com",
        "sip:user;par=u%40example.net@example.com",
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com",
        "sip:u@h;maddr=[2001:db8::1];lr;lr",
        "sip:u@example.com.",
    ],
)
def test_round_trip(text: str) -> None:
    assert str(SipURI.parse(text)) == text


def test_fields() -> None:
    uri = SipURI.parse("sips:alice:secret@example.com:5061;transport=tls;lr?subject=hi")
    assert uri == SipURI(
        "sips",
        "alice",
        "secret",
        "example.com",
        5061,
        [("transport", "tls"), ("lr", None)],
        "subject=hi",
    )
    assert uri.host_port == "example.com:5061"


def test_scheme_is_case_insensitive_and_kept_lower() -> None:
    uri = SipURI.parse("SIP:Alice@Example.COM")
    assert (uri.scheme, uri.user, uri.host) == ("sip", "Alice", "Example.COM")
    assert str(uri) == "sip:Alice@Example.COM"


def test_ipv6_host_is_stored_without_brackets() -> None:
    uri = SipURI.parse("sip:[2001:db8::10]:5070")
    assert uri.host == "2001:db8::10"
    assert uri.port == 5070
    assert uri.host_port == "[2001:db8::10]:5070"
    assert SipURI.parse("sip:[2001:db8::10]").host_port == "[2001:db8::10]"


def test_user_with_semicolon_and_question_mark() -> None:
    # RFC 4475 §3.1.1.9 / §3.1.1.2: ";" and "?" belong to the user part before "@".
    assert (
        SipURI.parse("sip:user;par=u%40example.net@example.com").user == "user;par=u%40example.net"
    )
    uri = SipURI.parse(
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com"
    )
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"
    assert uri.params == []


def test_escapes_kept_verbatim_and_unescape() -> None:
    uri = SipURI.parse("sip:%75se%72@example.com")
    assert uri.user == "%75se%72"
    assert unescape(uri.user) == "user"
    assert unescape("null-%00-null") == "null-\x00-null"
    # RFC 4475 §3.1.1.3: "value%25%34%31" decodes to "value%41", not "valueA".
    esc = SipURI.parse("sip:caller@h;n%61me=v%61lue%25%34%31")
    assert unescape(esc.params[0][1] or "") == "value%41"


def test_param_lookup_is_case_insensitive() -> None:
    uri = SipURI.parse("sip:h;Transport=TCP;LR")
    assert uri.param("transport") == "TCP"
    assert uri.has_param("lr")
    assert uri.param("lr") is None
    assert not uri.has_param("maddr")
    assert uri.param("maddr") is None


def test_with_and_without_param_return_copies() -> None:
    uri = SipURI.parse("sip:alice@example.com;transport=udp")
    changed = uri.with_param("transport", "tcp").with_param("lr")
    assert str(changed) == "sip:alice@example.com;transport=tcp;lr"
    assert str(uri) == "sip:alice@example.com;transport=udp"
    assert str(changed.without_param("TRANSPORT")) == "sip:alice@example.com;lr"
    assert changed.params == [("transport", "tcp"), ("lr", None)]


def test_str_of_constructed_uri() -> None:
    uri = SipURI("sip", "bob", None, "2001:db8::1", 5060, [("lr", None)])
    assert str(uri) == "sip:bob@[2001:db8::1]:5060;lr"


@pytest.mark.parametrize(
    ("text", "reason", "status"),
    [
        ("tel:+15551234567", "unsupported URI scheme", 416),
        ("http://example.com", "unsupported URI scheme", 416),
        ("<sip:user@example.com>", "invalid URI", 400),
        (" sip:user@example.com", "invalid URI", 400),
        ("sip", "invalid URI", 400),
        ("9sip:x", "invalid URI", 400),
        ("s_p:x", "invalid URI", 400),
        ("sip:@example.com", "invalid URI user", 400),
        ("sip:us er@example.com", "invalid URI user", 400),
        ("sip:user%zz@example.com", "invalid URI user", 400),
        ("sip:user%4@example.com", "invalid URI user", 400),
        ("sip:user:pa/ss@example.com", "invalid URI password", 400),
        ("sip:user@example.com?", "invalid URI headers", 400),
        ("sip:user@example.com?a=<b>", "invalid URI headers", 400),
        ("sip:user@example.com;;lr", "invalid URI parameter", 400),
        ("sip:user@example.com;lr=", "invalid URI parameter", 400),
        ("sip:user@example.com;a b", "invalid URI parameter", 400),
        ("sip:user@example.com;x=a b", "invalid URI parameter", 400),
        ("sip:user@example.com; lr", "invalid URI parameter", 400),
        ("sip:", "invalid host", 400),
        ("sip:exa mple.com", "invalid host", 400),
        ("sip:-bad.example.com", "invalid host", 400),
        ("sip:user@example.com:", "invalid port", 400),
        ("sip:user@example.com:65536", "invalid port", 400),
        ("sip:user@example.com:123456", "invalid port", 400),
        ("sip:user@example.com:5o60", "invalid port", 400),
        ("sip:[2001:db8:::192.0.2.1]", "invalid IPv6 reference", 400),  # RFC 5118 §4.10
        ("sip:[2001:db8::1", "invalid IPv6 reference", 400),
        ("sip:[fe80::1%25eth0]", "invalid IPv6 reference", 400),
        ("sip:[2001:db8::1]x", "invalid host", 400),
        ("sip:[2001:db8::1]:99999", "invalid port", 400),
    ],
)
def test_errors(text: str, reason: str, status: int) -> None:
    with pytest.raises(ParseError) as info:
        SipURI.parse(text)
    assert str(info.value) == reason
    assert info.value.status_hint == status


def test_host_helpers() -> None:
    assert parse_host("[::1]") == "::1"
    assert parse_host("example.com") == "example.com"
    assert format_host("::1") == "[::1]"
    assert format_host("192.0.2.1") == "192.0.2.1"
    assert split_host_port("[::1]:5060") == ("::1", 5060)
    assert split_host_port("h") == ("h", None)
    assert parse_port("0") == 0
    with pytest.raises(ParseError, match="invalid IPv6 reference"):
        parse_host("[::1")
    with pytest.raises(ParseError, match="invalid port"):
        parse_port("٥٠٦٠")  # non-ASCII digits


def test_uri_scheme() -> None:
    assert uri_scheme("SIPS:x") == "sips"
    assert uri_scheme("urn:uuid:1") == "urn"
    assert uri_scheme("soap.beep://h") == "soap.beep"
    assert uri_scheme(":x") is None
    assert uri_scheme("no-colon") is None
    assert uri_scheme("a b:c") is None
