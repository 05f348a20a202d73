"""SIP header fields: the ordered header list and the grammars of Via, name-addr and CSeq.

:class:`Headers` keeps ``(name, value)`` entries in wire order with canonical names
(compact forms expanded, RFC 3261 §7.3.3; known names in their usual case). Values are
stored as received after unfolding (RFC 3261 §7.3.1), so a proxy forwards what it got.

Grammar helpers (RFC 3261 §25.1):

* :func:`parse_via` / :func:`parse_vias` -> :class:`Via`
* :func:`parse_name_addr` / :func:`parse_name_addrs` / :func:`parse_contact` -> :class:`NameAddr`
* :func:`parse_cseq` -> ``(number, method)``

Every parser raises :class:`~gateway.sip.errors.ParseError` (status 400) on bad input.
Parameter values are kept raw (quoted strings keep their quotes) and parameter names are
looked up case-insensitively.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

from sipmessage import grammar

from gateway.sip.errors import ParseError
from gateway.sip.uri import (
    SIP_SCHEMES,
    SipURI,
    format_host,
    parse_port,
    split_host_port,
    uri_scheme,
)

__all__ = [
    "CANONICAL_NAMES",
    "COMPACT_FORMS",
    "HEADER_KEYS",
    "MULTI_VALUE_HEADERS",
    "TOKEN_CHARS",
    "Headers",
    "NameAddr",
    "Via",
    "canonical_name",
    "parse_contact",
    "parse_cseq",
    "parse_name_addr",
    "parse_name_addrs",
    "parse_via",
    "parse_vias",
    "quote_string",
    "split_commas",
]

#: RFC 3261 §7.3.3 and the extensions' compact forms (IANA "Header Fields" registry).
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_KNOWN = [
    *COMPACT_FORMS.values(),
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Authentication-Info",
    "Authorization",
    "Call-Info",
    "Content-Disposition",
    "Content-Language",
    "CSeq",
    "Date",
    "Error-Info",
    "Expires",
    "Flow-Timer",
    "In-Reply-To",
    "Max-Forwards",
    "Min-Expires",
    "Min-SE",
    "MIME-Version",
    "Organization",
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Path",
    "Priority",
    "Privacy",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "RAck",
    "Reason",
    "Record-Route",
    "Reply-To",
    "Require",
    "Retry-After",
    "Route",
    "RSeq",
    "Server",
    "Service-Route",
    "SIP-ETag",
    "SIP-If-Match",
    "Subscription-State",
    "Timestamp",
    "Unsupported",
    "User-Agent",
    "Warning",
    "WWW-Authenticate",
]
#: Lower-case compact letter -> lower-case key of the full name (lookup keys are lower-case
#: full names); CANONICAL_NAMES maps a key to the usual spelling of a known header.
HEADER_KEYS: dict[str, str] = {letter: name.lower() for letter, name in COMPACT_FORMS.items()}
CANONICAL_NAMES: dict[str, str] = {name.lower(): name for name in _KNOWN}

#: Headers whose comma-separated values are separate elements (RFC 3261 §7.3.1).
MULTI_VALUE_HEADERS = frozenset(
    {
        "via",
        "route",
        "record-route",
        "path",
        "contact",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
    }
)

TOKEN_CHARS = frozenset(grammar.C_TOKEN)
# generic-param value = token / host / quoted-string; host adds ":" "[" "]" (IPv6).
_GEN_VALUE_CHARS = frozenset(grammar.C_TOKEN + ":[]")
_MAX_CSEQ = 2**31  # RFC 3261 §8.1.1.5: the sequence number MUST be less than 2**31


def _key(name: str) -> str:
    lower = name.lower()
    return HEADER_KEYS.get(lower, lower)


def canonical_name(name: str) -> str:
    """Canonical spelling of a header name: compact forms expanded, known names recased."""
    lower = name.lower()
    lower = HEADER_KEYS.get(lower, lower)
    return CANONICAL_NAMES.get(lower, name)


def split_commas(text: str) -> list[str]:
    """Split on commas outside quoted strings and <...>; elements stripped, empty ones kept."""
    if "," not in text:
        return [text.strip()]
    out: list[str] = []
    start = 0
    in_quote = False
    in_angle = False
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if in_quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            out.append(text[start:i].strip())
            start = i + 1
        i += 1
    out.append(text[start:].strip())
    return out


def _elements(key: str, value: str) -> list[str]:
    if key in MULTI_VALUE_HEADERS:
        return [v for v in split_commas(value) if v]
    return [value]


class Headers:
    """Ordered SIP header fields with canonical names; see the module docstring."""

    __slots__ = ("_entries",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._entries: list[tuple[str, str, str]] = [
            (_key(name), canonical_name(name), value) for name, value in items
        ]

    @classmethod
    def _from_entries(cls, entries: list[tuple[str, str, str]]) -> Headers:
        """Build from ready (key, name, value) triples (used by the message parser)."""
        headers = cls.__new__(cls)
        headers._entries = entries
        return headers

    def get(self, name: str) -> str | None:
        """The first value of ``name`` (first element of a multi-value header), or None."""
        key = _key(name)
        for k, _, value in self._entries:
            if k == key:
                if key not in MULTI_VALUE_HEADERS:
                    return value
                for element in split_commas(value):
                    if element:
                        return element
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in order; multi-value headers split on commas."""
        key = _key(name)
        out: list[str] = []
        for k, _, value in self._entries:
            if k == key:
                out.extend(_elements(key, value))
        return out

    def add(self, name: str, value: str) -> None:
        """Append after the last ``name`` header line, or at the end."""
        key = _key(name)
        entry = (key, canonical_name(name), value)
        for i in range(len(self._entries) - 1, -1, -1):
            if self._entries[i][0] == key:
                self._entries.insert(i + 1, entry)
                return
        self._entries.append(entry)

    def prepend(self, name: str, value: str) -> None:
        """Insert as the first value of ``name``: before its first line, or at the top."""
        key = _key(name)
        entry = (key, canonical_name(name), value)
        for i, (k, _, _) in enumerate(self._entries):
            if k == key:
                self._entries.insert(i, entry)
                return
        self._entries.insert(0, entry)

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` with one line, kept where the first line was."""
        key = _key(name)
        entry = (key, canonical_name(name), value)
        out: list[tuple[str, str, str]] = []
        placed = False
        for e in self._entries:
            if e[0] == key:
                if not placed:
                    out.append(entry)
                    placed = True
            else:
                out.append(e)
        if not placed:
            out.append(entry)
        self._entries = out

    def remove(self, name: str) -> None:
        """Remove every ``name`` line."""
        key = _key(name)
        self._entries = [e for e in self._entries if e[0] != key]

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first value of ``name``.

        For a comma-joined multi-value line only the first element goes; the line stays
        with the others (RFC 3261 §16.7 step 3 / §16.3 removing one Via or Route entry).
        """
        key = _key(name)
        for i, (k, canon, value) in enumerate(self._entries):
            if k != key:
                continue
            if key in MULTI_VALUE_HEADERS and "," in value:
                elements = [v for v in split_commas(value) if v]
                if len(elements) > 1:
                    self._entries[i] = (k, canon, ", ".join(elements[1:]))
                    return elements[0]
                del self._entries[i]
                return elements[0] if elements else ""
            del self._entries[i]
            return value
        return None

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = _key(name)
        return any(e[0] == key for e in self._entries)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for _, name, value in self._entries:
            yield name, value

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [e[1:] for e in self._entries] == [e[1:] for e in other._entries]

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"

    def copy(self) -> Headers:
        """An independent copy."""
        return Headers._from_entries(list(self._entries))


# ---------------------------------------------------------------- shared pieces


def quote_string(text: str) -> str:
    """``text`` as a quoted-string: escape \\ and " and control characters (RFC 3261 §25.1)."""
    out = ['"']
    for ch in text:
        if ch in '"\\' or (ch < " " and ch != "\t") or ch == "\x7f":
            out.append("\\")
        out.append(ch)
    out.append('"')
    return "".join(out)


def _scan_quoted(text: str, start: int) -> tuple[str, int]:
    """Unescape the quoted-string at ``text[start] == '"'``; return (content, index after)."""
    out: list[str] = []
    i = start + 1
    while True:
        q = text.find('"', i)
        if q < 0:
            raise ParseError("unterminated quoted string")
        b = text.find("\\", i, q)
        if b < 0:
            out.append(text[i:q])
            return "".join(out), q + 1
        out.append(text[i:b])
        out.append(text[b + 1])  # quoted-pair; b + 1 <= q always exists
        i = b + 2


def _split_semis(text: str) -> list[str]:
    """Split on ";" outside quoted strings."""
    if '"' not in text:
        return text.split(";")
    out: list[str] = []
    start = 0
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            _, i = _scan_quoted(text, i)
            continue
        if ch == ";":
            out.append(text[start:i])
            start = i + 1
        i += 1
    out.append(text[start:])
    return out


def _parse_gen_params(text: str) -> list[tuple[str, str | None]]:
    """``*( SEMI generic-param )`` with LWS; ``text`` must be blank or start with ";"."""
    if not text or text.isspace():
        return []
    pieces = _split_semis(text)
    if pieces[0].strip():
        raise ParseError("invalid header parameters")
    params: list[tuple[str, str | None]] = []
    for piece in pieces[1:]:
        name, eq, value = piece.partition("=")
        name = name.strip()
        if not name or not TOKEN_CHARS.issuperset(name):
            raise ParseError("invalid header parameter")
        if not eq:
            params.append((name, None))
            continue
        value = value.strip()
        if value.startswith('"'):
            _, end = _scan_quoted(value, 0)
            if end != len(value):
                raise ParseError("invalid header parameter")
        elif not value or not _GEN_VALUE_CHARS.issuperset(value):
            raise ParseError("invalid header parameter")
        params.append((name, value))
    return params


def _format_params(params: list[tuple[str, str | None]]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def _find(params: list[tuple[str, str | None]], name: str) -> int:
    lname = name.lower()
    for i, (k, _) in enumerate(params):
        if k.lower() == lname:
            return i
    return -1


# ------------------------------------------------------------------------ Via

# sent-protocol LWS sent-by (RFC 3261 §20.42, §25.1); SLASH and COLON allow SWS around.
_VIA_RE = re.compile(
    r"\s*([A-Za-z0-9.!%*_+`'~-]+)\s*/\s*([A-Za-z0-9.!%*_+`'~-]+)\s*/\s*([A-Za-z0-9.!%*_+`'~-]+)"
    r"\s+(\[[^\]]*\]|[^\s:;\[\]]+)(?:\s*:\s*([^\s;]*))?\s*"
)


@dataclass
class Via:
    """One Via element (RFC 3261 §20.42). ``host`` has no [] for IPv6."""

    transport: str
    host: str
    port: int | None
    params: list[tuple[str, str | None]] = field(default_factory=list)
    protocol: str = "SIP/2.0"

    def param(self, name: str) -> str | None:
        """Value of ``name`` (case-insensitive); None if absent or valueless."""
        i = _find(self.params, name)
        return self.params[i][1] if i >= 0 else None

    def has_param(self, name: str) -> bool:
        """True if ``name`` is present."""
        return _find(self.params, name) >= 0

    def set_param(self, name: str, value: str | None = None) -> None:
        """Set ``name`` (replaced in place, else appended); None makes it a flag."""
        i = _find(self.params, name)
        if i >= 0:
            self.params[i] = (self.params[i][0], value)
        else:
            self.params.append((name, value))

    @property
    def branch(self) -> str | None:
        """The branch parameter (RFC 3261 §8.1.1.7)."""
        return self.param("branch")

    @property
    def received(self) -> str | None:
        """The received parameter (RFC 3261 §18.2.1)."""
        return self.param("received")

    @property
    def rport(self) -> str | None:
        """RFC 3581 rport: None if absent, "" if present without a value, else the value."""
        i = _find(self.params, "rport")
        if i < 0:
            return None
        value = self.params[i][1]
        return "" if value is None else value

    @property
    def sent_by(self) -> str:
        """``host[:port]`` as in the header (IPv6 in [])."""
        host = format_host(self.host)
        return host if self.port is None else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{_format_params(self.params)}"


def parse_via(text: str) -> Via:
    """Parse one via-parm (no commas outside quotes)."""
    m = _VIA_RE.match(text)
    if m is None:
        raise ParseError("invalid Via")
    name, version, transport, host_text, port_text = m.groups()
    if name.upper() != "SIP":
        raise ParseError("invalid Via")
    host, _ = split_host_port(host_text)
    port = None if port_text is None else parse_port(port_text)
    rest = text[m.end() :]
    if rest and rest[0] != ";":
        raise ParseError("invalid Via")
    return Via(transport.upper(), host, port, _parse_gen_params(rest), f"SIP/{version}")


def parse_vias(text: str) -> list[Via]:
    """Parse a Via header value that may hold several comma-separated elements."""
    elements = split_commas(text)
    if not all(elements):
        raise ParseError("empty Via element")
    return [parse_via(e) for e in elements]


# ------------------------------------------------------------------ name-addr


def _parse_any_uri(text: str) -> SipURI | str:
    scheme = uri_scheme(text)
    if scheme is None:
        raise ParseError("invalid URI")
    if scheme in SIP_SCHEMES:
        return SipURI.parse(text)
    # Other absolute URIs (tel:, urn:, http:, ...) are kept as text (RFC 3261 §19.1.6).
    if any(c in text for c in ' \t<>"'):
        raise ParseError("invalid URI")
    return text


@dataclass
class NameAddr:
    """``[display] <uri> *(;param)`` of From, To, Contact, Route... (RFC 3261 §20.10)."""

    display: str | None  # unquoted; None when absent
    uri: SipURI | str  # str for non-sip URIs (tel:, urn:, ...)
    params: list[tuple[str, str | None]] = field(default_factory=list)

    def param(self, name: str) -> str | None:
        """Value of header parameter ``name`` (case-insensitive), raw; None if absent or a flag."""
        i = _find(self.params, name)
        return self.params[i][1] if i >= 0 else None

    def has_param(self, name: str) -> bool:
        """True if header parameter ``name`` is present."""
        return _find(self.params, name) >= 0

    def with_param(self, name: str, value: str | None = None) -> NameAddr:
        """A copy with header parameter ``name`` set (replaced in place, else appended)."""
        params = list(self.params)
        i = _find(params, name)
        if i >= 0:
            params[i] = (params[i][0], value)
        else:
            params.append((name, value))
        return replace(self, params=params)

    @property
    def tag(self) -> str | None:
        """The tag parameter (RFC 3261 §19.3)."""
        return self.param("tag")

    def __str__(self) -> str:
        head = "" if self.display is None else quote_string(self.display) + " "
        return f"{head}<{self.uri}>{_format_params(self.params)}"


def parse_name_addr(text: str) -> NameAddr:
    """Parse ``name-addr / addr-spec`` followed by header parameters."""
    s = text.strip()
    if not s:
        raise ParseError("empty address")
    display: str | None = None
    if s[0] == '"':
        display, i = _scan_quoted(s, 0)
        lt = i + len(s[i:]) - len(s[i:].lstrip())
        if lt >= len(s) or s[lt] != "<":
            raise ParseError("invalid address")
    else:
        lt = s.find("<")
        semi = s.find(";")
        if lt >= 0 and (semi < 0 or lt < semi):
            words = s[:lt].split()
            # display-name = *(token LWS) / quoted-string (RFC 3261 §25.1); RFC 4475
            # §3.1.1.6 allows no LWS before "<", §3.1.2.15 rejects non-token characters.
            for word in words:
                if not TOKEN_CHARS.issuperset(word):
                    raise ParseError("invalid display name")
            display = " ".join(words) if words else None
        else:
            # addr-spec: header params follow the first ";". A URI with ",", "?" or ";"
            # must be in <> (RFC 3261 §20.10; RFC 4475 §3.1.2.13).
            uri_text = (s if semi < 0 else s[:semi]).rstrip()
            if "?" in uri_text or "," in uri_text:
                raise ParseError("URI with headers must be enclosed in <>")
            return NameAddr(None, _parse_any_uri(uri_text), _parse_gen_params(s[len(uri_text) :]))
    gt = s.find(">", lt)
    if gt < 0:
        raise ParseError("unterminated <")
    uri = _parse_any_uri(s[lt + 1 : gt])
    return NameAddr(display, uri, _parse_gen_params(s[gt + 1 :]))


def parse_name_addrs(text: str) -> list[NameAddr]:
    """Parse a comma-separated list of addresses (Contact, Route, Record-Route, Path)."""
    elements = split_commas(text)
    if not all(elements):
        raise ParseError("empty address element")
    return [parse_name_addr(e) for e in elements]


def parse_contact(text: str) -> Literal["*"] | list[NameAddr]:
    """A Contact value: ``"*"`` (RFC 3261 §10.2.2 remove-all) or its addresses."""
    if text.strip() == "*":
        return "*"
    return parse_name_addrs(text)


# ----------------------------------------------------------------------- CSeq


def parse_cseq(text: str) -> tuple[int, str]:
    """``CSeq: 1*DIGIT LWS Method`` -> (number, method); the number must be < 2**31."""
    parts = text.split()
    if len(parts) != 2:
        raise ParseError("invalid CSeq")
    number, method = parts
    if not number.isdigit() or not number.isascii() or len(number) > 10:
        raise ParseError("invalid CSeq")
    value = int(number)
    if value >= _MAX_CSEQ:
        raise ParseError("CSeq number too large")
    if not TOKEN_CHARS.issuperset(method):
        raise ParseError("invalid CSeq")
    return value, method
