"""SIP and SIPS URIs (RFC 3261 §19.1, ABNF in §25.1).

:class:`SipURI` keeps the URI as it was written: user, password, parameter values and the
``?headers`` part stay %-escaped exactly as received, so ``str(SipURI.parse(x)) == x`` for
any valid ``x`` (apart from the scheme, which is case-insensitive and kept lower case).
A proxy forwards URIs it does not own untouched, so re-escaping them would be a bug.
Use :func:`unescape` where the decoded value matters (RFC 3261 §19.1.4 comparisons).

The character classes come from ``sipmessage.grammar``; see ``gateway/sip/__init__.py``
for what else was evaluated there and why our own parser replaces its ``URI`` class.
"""

from __future__ import annotations

import ipaddress
import re
import string
from dataclasses import dataclass, field, replace
from urllib.parse import unquote

from sipmessage import grammar

from gateway.sip.errors import ParseError

__all__ = [
    "SIP_SCHEMES",
    "SipURI",
    "format_host",
    "parse_host",
    "parse_port",
    "split_host_port",
    "unescape",
    "uri_scheme",
]

#: Schemes this module parses into :class:`SipURI`; anything else is 416 (RFC 3261 §8.2.2.1).
SIP_SCHEMES = ("sip", "sips")
MAX_PORT = 65535

_HEX = frozenset(string.hexdigits)
_SCHEME_FIRST = frozenset(string.ascii_letters)
_SCHEME_CHARS = frozenset(string.ascii_letters + string.digits + "+-.")
# RFC 3261 §25.1: user = 1*( unreserved / escaped / user-unreserved ).
_USER_CHARS = frozenset(grammar.C_USER_SAFE + "%")
# password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," ). sipmessage's
# C_PASSWORD_SAFE adds "/" (its C_MARK carries a "/" that RFC 3261 "mark" has not).
_PASSWORD_CHARS = frozenset(string.ascii_letters + string.digits + "-_.!~*'()" + "&=+$,%")
# paramchar = param-unreserved / unreserved / escaped.
_PARAM_CHARS = frozenset(grammar.C_URI_PARAM_SAFE + "%")
# headers: hname "=" hvalue *( "&" ... ); hnv-unreserved = "[" / "]" / "/" / "?" / ":" / "+" / "$".
_HEADER_CHARS = frozenset(grammar.C_UNRESERVED + "[]/?:+$%=&")
# hostname labels (RFC 3261 §25.1 hostname). We also accept "_" and a digit-led last
# label: both are common in container and lab names and never ambiguous.
_HOSTNAME_RE = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?)*\.?"
)


def unescape(text: str) -> str:
    """Decode %HH escapes (RFC 3261 §19.1.2); undecodable octets map to surrogates."""
    return unquote(text, errors="surrogateescape")


def uri_scheme(text: str) -> str | None:
    """The lower-cased scheme of an absolute URI, or None if ``text`` does not start with one.

    scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) (RFC 3261 §25.1, absoluteURI).
    """
    colon = text.find(":")
    if colon <= 0 or text[0] not in _SCHEME_FIRST:
        return None
    scheme = text[:colon]
    if not _SCHEME_CHARS.issuperset(scheme):
        return None
    return scheme.lower()


def _check_escapes(text: str) -> bool:
    """True if every "%" in ``text`` starts a valid %HH escape."""
    if "%" not in text:
        return True
    for piece in text.split("%")[1:]:
        if len(piece) < 2 or piece[0] not in _HEX or piece[1] not in _HEX:
            return False
    return True


def _check(text: str, chars: frozenset[str]) -> bool:
    return chars.issuperset(text) and _check_escapes(text)


def parse_host(text: str) -> str:
    """Validate a host (hostname, IPv4 address or [IPv6] reference); return it without [].

    Raises ParseError (400) when ``text`` is not a host.
    """
    if text.startswith("["):
        if not text.endswith("]"):
            raise ParseError("invalid IPv6 reference")
        inner = text[1:-1]
        if "%" in inner:  # zone ids have no place in SIP (RFC 5118 §4)
            raise ParseError("invalid IPv6 reference")
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise ParseError("invalid IPv6 reference") from None
        return inner
    if not _HOSTNAME_RE.fullmatch(text):
        raise ParseError("invalid host")
    return text


def format_host(host: str) -> str:
    """``host`` as written in a URI or Via: IPv6 addresses go back inside []."""
    return f"[{host}]" if ":" in host else host


def parse_port(text: str) -> int:
    """Validate a port number (1*5DIGIT, at most 65535)."""
    if not text.isdigit() or not text.isascii() or len(text) > 5 or int(text) > MAX_PORT:
        raise ParseError("invalid port")
    return int(text)


def split_host_port(text: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (host may be an [IPv6] reference); validate both parts."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ParseError("invalid IPv6 reference")
        host = parse_host(text[: end + 1])
        rest = text[end + 1 :]
        if not rest:
            return host, None
        if rest[0] != ":":
            raise ParseError("invalid host")
        return host, parse_port(rest[1:])
    colon = text.find(":")
    if colon < 0:
        return parse_host(text), None
    return parse_host(text[:colon]), parse_port(text[colon + 1 :])


def _find_param(params: list[tuple[str, str | None]], name: str) -> int:
    lname = name.lower()
    for i, (key, _) in enumerate(params):
        if key.lower() == lname:
            return i
    return -1


@dataclass
class SipURI:
    """A sip: or sips: URI. Escaped parts are kept verbatim (see the module docstring)."""

    scheme: str
    user: str | None
    password: str | None
    host: str  # without the [] of an IPv6 reference
    port: int | None
    params: list[tuple[str, str | None]] = field(default_factory=list)  # None = flag param
    headers: str = ""  # raw text after "?"

    @classmethod
    def parse(cls, text: str) -> SipURI:
        """Parse ``text``; ParseError(416) for a non-sip scheme, ParseError(400) for bad syntax."""
        scheme = uri_scheme(text)
        if scheme is None:
            raise ParseError("invalid URI")
        if scheme not in SIP_SCHEMES:
            raise ParseError("unsupported URI scheme", 416)
        rest = text[len(scheme) + 1 :]
        user: str | None = None
        password: str | None = None
        # "@" cannot appear unescaped after the userinfo (RFC 3261 §25.1), while the user
        # part may hold ";", "?" and "/" (RFC 4475 §3.1.1.2, §3.1.1.9): split there first.
        at = rest.find("@")
        if at >= 0:
            userinfo = rest[:at]
            rest = rest[at + 1 :]
            colon = userinfo.find(":")
            if colon >= 0:
                user, password = userinfo[:colon], userinfo[colon + 1 :]
                if not _check(password, _PASSWORD_CHARS):
                    raise ParseError("invalid URI password")
            else:
                user = userinfo
            if not user or not _check(user, _USER_CHARS):
                raise ParseError("invalid URI user")
        headers = ""
        q = rest.find("?")
        if q >= 0:
            headers = rest[q + 1 :]
            rest = rest[:q]
            if not headers or not _check(headers, _HEADER_CHARS):
                raise ParseError("invalid URI headers")
        semi = rest.find(";")
        params: list[tuple[str, str | None]] = []
        if semi >= 0:
            for item in rest[semi + 1 :].split(";"):
                name, eq, value = item.partition("=")
                if not name or not _check(name, _PARAM_CHARS):
                    raise ParseError("invalid URI parameter")
                if eq:
                    if not value or not _check(value, _PARAM_CHARS):
                        raise ParseError("invalid URI parameter")
                    params.append((name, value))
                else:
                    params.append((name, None))
            rest = rest[:semi]
        host, port = split_host_port(rest)
        return cls(scheme, user, password, host, port, params, headers)

    def param(self, name: str) -> str | None:
        """Value of parameter ``name`` (case-insensitive, RFC 3261 §19.1.4); None if absent or a flag."""
        i = _find_param(self.params, name)
        return self.params[i][1] if i >= 0 else None

    def has_param(self, name: str) -> bool:
        """True if parameter ``name`` is present, with or without a value."""
        return _find_param(self.params, name) >= 0

    def with_param(self, name: str, value: str | None = None) -> SipURI:
        """A copy with ``name`` set to ``value`` (replaced in place, else appended)."""
        params = list(self.params)
        i = _find_param(params, name)
        if i >= 0:
            params[i] = (name, value)
        else:
            params.append((name, value))
        return replace(self, params=params)

    def without_param(self, name: str) -> SipURI:
        """A copy without parameter ``name``."""
        lname = name.lower()
        return replace(self, params=[p for p in self.params if p[0].lower() != lname])

    @property
    def host_port(self) -> str:
        """``host:port``, or ``host`` without a port; IPv6 hosts in []."""
        host = format_host(self.host)
        return host if self.port is None else f"{host}:{self.port}"

    def __str__(self) -> str:
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts.append(":")
                parts.append(self.password)
            parts.append("@")
        parts.append(self.host_port)
        for name, value in self.params:
            parts.append(";")
            parts.append(name)
            if value is not None:
                parts.append("=")
                parts.append(value)
        if self.headers:
            parts.append("?")
            parts.append(self.headers)
        return "".join(parts)
