"""SIP requests and responses: parse from bytes, serialise to bytes (RFC 3261 §7).

:func:`parse` reads one whole message (datagram semantics: a UDP packet, a WebSocket
message per RFC 7118, or one frame cut by :class:`~gateway.sip.framing.StreamFramer`).
It is a single pass over the header block with ``str`` methods; only the Via, From/To
and Request-URI grammars use their parsers. Tolerated, as RFC 3261 §7.3.1/§7.5 ask:
LF-only line ends, folded header lines, compact names, any whitespace around ":", CRLFs
before the start line. Rejected (ParseError): everything in RFC 4475 §3.1.2 that the RFC
says to reject, a missing Via/From/To/Call-ID/CSeq, repeated single-value headers
(RFC 4475 §3.3.8, §3.3.9), a CSeq method that differs from the request method, a
Content-Length larger than the body. The body is cut to Content-Length (RFC 3261 §18.3)
and kept byte-exact; header text is decoded as UTF-8 with surrogate escapes so any octet
survives a parse/serialise round trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

from gateway.sip.errors import ParseError
from gateway.sip.headers import (
    CANONICAL_NAMES,
    HEADER_KEYS,
    TOKEN_CHARS,
    Headers,
    Via,
    parse_cseq,
    parse_name_addr,
    parse_via,
    parse_vias,
    split_commas,
)
from gateway.sip.uri import SipURI, uri_scheme

__all__ = [
    "MAX_HEADER_LINES",
    "MAX_LINE_LENGTH",
    "MAX_MAX_FORWARDS",
    "MAX_MESSAGE_SIZE",
    "REQUEST_URI_SCHEMES",
    "SIP_VERSION",
    "Request",
    "Response",
    "make_response",
    "parse",
    "reason_phrase",
]

#: Largest message parse() accepts (the UDP datagram limit); larger is 413.
MAX_MESSAGE_SIZE = 65535
#: Most header lines (start line excluded, folded continuations included).
MAX_HEADER_LINES = 256
#: Longest single line of the header block, in characters.
MAX_LINE_LENGTH = 8192
#: RFC 3261 §20.22: Max-Forwards is an integer in the range 0-255.
MAX_MAX_FORWARDS = 255
SIP_VERSION = "SIP/2.0"
#: Request-URI schemes parse() accepts; others get 416 (RFC 3261 §8.2.2.1). tel: is
#: RFC 3966; it is passed on for the router to decide.
REQUEST_URI_SCHEMES = ("sip", "sips", "tel")

_REQUIRED = (
    ("via", "Via"),
    ("from", "From"),
    ("to", "To"),
    ("call-id", "Call-ID"),
    ("cseq", "CSeq"),
)
_SINGLE = (
    ("from", "From"),
    ("to", "To"),
    ("call-id", "Call-ID"),
    ("cseq", "CSeq"),
    ("content-length", "Content-Length"),
    ("max-forwards", "Max-Forwards"),
)
_TRACKED = frozenset({"via", "from", "to", "call-id", "cseq", "content-length", "max-forwards"})
_RESPONSE_COPY = frozenset({"via", "from", "to", "call-id", "cseq"})


@lru_cache(maxsize=4096)
def _parse_via_cached(text: str) -> Via:
    # Errors are not cached (lru_cache does not store exceptions).
    return parse_via(text)


class _MessageMixin:
    """Accessors shared by Request and Response (both dataclasses with ``headers``)."""

    headers: Headers
    body: bytes

    @property
    def call_id(self) -> str:
        """The Call-ID value; ParseError if absent."""
        value = self.headers.get("Call-ID")
        if value is None:
            raise ParseError("missing Call-ID header")
        return value

    @property
    def cseq(self) -> tuple[int, str]:
        """(sequence number, method) from CSeq; ParseError if absent or invalid."""
        return parse_cseq(self.headers.get("CSeq") or "")

    @property
    def from_tag(self) -> str | None:
        """The From tag; ParseError if From is absent or invalid."""
        return parse_name_addr(self.headers.get("From") or "").tag

    @property
    def to_tag(self) -> str | None:
        """The To tag (None outside a dialog); ParseError if To is absent or invalid."""
        return parse_name_addr(self.headers.get("To") or "").tag

    @property
    def top_via(self) -> Via:
        """The first Via element, parsed; ParseError if absent or invalid.

        Every hop reads the top Via several times (transaction keys, routing),
        so parses are cached by the header text; each caller gets its own copy
        to change.
        """
        via = _parse_via_cached(self.headers.get("Via") or "")
        return replace(via, params=list(via.params))

    def _serialise(self, start_line: str) -> bytes:
        # Content-Length always matches the body (RFC 3261 §20.14), at its old position.
        body = self.body
        lines = [start_line]
        have_length = False
        for key, name, value in self.headers._entries:
            if key == "content-length":
                if have_length:
                    continue
                value = str(len(body))
                have_length = True
            lines.append(f"{name}: {value}")
        if not have_length:
            lines.append(f"Content-Length: {len(body)}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body


@dataclass
class Request(_MessageMixin):
    """A SIP request; ``uri`` is the Request-URI text."""

    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION

    def __bytes__(self) -> bytes:
        return self._serialise(f"{self.method} {self.uri} {self.version}")

    def copy(self) -> Request:
        """A copy whose headers can be changed independently."""
        return replace(self, headers=self.headers.copy())


@dataclass
class Response(_MessageMixin):
    """A SIP response."""

    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION

    def __bytes__(self) -> bytes:
        return self._serialise(f"{self.version} {self.status} {self.reason}")

    def copy(self) -> Response:
        """A copy whose headers can be changed independently."""
        return replace(self, headers=self.headers.copy())


# ----------------------------------------------------------------------- parse


def _find_head_end(data: bytes, start: int) -> tuple[int, int]:
    """(end of the header block, start of the body); the blank line may be CRLF or LF."""
    limit = start + MAX_MESSAGE_SIZE
    crlf = data.find(b"\n\r\n", start, limit)
    lf = data.find(b"\n\n", start, limit if crlf < 0 else crlf + 1)
    if lf >= 0:
        return lf, lf + 2
    if crlf >= 0:
        return crlf, crlf + 3
    raise ParseError("no blank line after the headers")


def _check_request_uri(uri: str) -> ParseError | None:
    scheme = uri_scheme(uri)
    if scheme is None:
        return ParseError("invalid Request-URI")
    if scheme not in REQUEST_URI_SCHEMES:
        return ParseError("unsupported URI scheme", 416)
    if scheme == "tel":
        return None
    try:
        parsed = SipURI.parse(uri)
    except ParseError as exc:
        return exc
    if parsed.headers:  # RFC 3261 §19.1.1 table; RFC 4475 §3.1.2.11
        return ParseError("headers are not allowed in the Request-URI")
    return None


def parse(data: bytes) -> Request | Response:
    """Parse one complete SIP message; raise ParseError (see gateway.sip.errors)."""
    try:
        return _parse(data)
    except ParseError as exc:
        if len(data) > MAX_MESSAGE_SIZE and exc.status_hint not in (0, 413):
            # Whatever else is wrong, an oversize message is answered as too large.
            raise ParseError("message too large", 413) from None
        raise


def _parse(data: bytes) -> Request | Response:
    deferred: ParseError | None = None
    if len(data) > MAX_MESSAGE_SIZE:
        deferred = ParseError("message too large", 413)
    start = 0
    n = len(data)
    if data[:1] in (b"\r", b"\n"):  # CRLFs before the start line are ignored (§7.5)
        probe = data[:MAX_MESSAGE_SIZE]
        start = len(probe) - len(probe.lstrip(b"\r\n"))
    try:
        head_end, body_start = _find_head_end(data, start)
    except ParseError as exc:
        if deferred is not None:
            raise deferred from None
        exc.status_hint = 0 if data[start : start + 4].upper() == b"SIP/" else 400
        raise
    head = data[start:head_end].decode("utf-8", "surrogateescape")
    if "\r" in head:
        head = head.replace("\r\n", "\n")
        if head.endswith("\r"):
            head = head[:-1]
    lines = head.split("\n")
    start_line = lines[0]
    is_response = start_line[:4].upper() == "SIP/"

    if len(lines) > MAX_HEADER_LINES + 1:
        raise ParseError("too many header lines", 0 if is_response else 413)
    if len(start_line) > MAX_LINE_LENGTH:
        raise ParseError("start line too long", 0 if is_response else 413)

    # ---- start line (RFC 3261 §7.1, §7.2)
    method = uri = reason = version = ""
    status = 0
    if is_response:
        parts = start_line.split(" ", 2)
        version = parts[0]
        code = parts[1] if len(parts) > 1 else ""
        reason = parts[2] if len(parts) > 2 else ""
        if len(code) != 3 or not code.isdigit() or not code.isascii() or code[0] not in "123456":
            raise ParseError("invalid status code", 0)
        status = int(code)
        if version.upper() != SIP_VERSION:
            raise ParseError("unsupported SIP version", 0)
    else:
        parts = start_line.split(" ")
        if len(parts) != 3:
            # One SP between the three elements (RFC 4475 §3.1.2.8-§3.1.2.10). When
            # whitespace still splits it into three, answer 400 from the pieces.
            words = start_line.split()
            if len(words) != 3:
                raise ParseError("invalid request line")
            parts = words
            deferred = deferred or ParseError("invalid request line")
        method, uri, version = parts
        if not method or not TOKEN_CHARS.issuperset(method):
            raise ParseError("invalid request line")
        if version.upper() != SIP_VERSION:
            if version[:4].upper() != "SIP/":
                raise ParseError("invalid request line")
            deferred = deferred or ParseError("unsupported SIP version", 505)
        deferred = deferred or _check_request_uri(uri)

    # ---- header fields (RFC 3261 §7.3): one pass, unfolding as we go
    entries: list[tuple[str, str, str]] = []
    seen: dict[str, list[str]] = {}
    check_length = len(head) > MAX_LINE_LENGTH  # else no line can be too long
    append = entries.append
    key_of = HEADER_KEYS.get
    canonical = CANONICAL_NAMES.get
    is_token = TOKEN_CHARS.issuperset
    for line in lines[1:]:
        if check_length and len(line) > MAX_LINE_LENGTH:
            raise ParseError("header line too long", 0 if is_response else 413)
        if line[:1] in " \t" and line:
            if not entries:
                deferred = deferred or ParseError("continuation line before the first header")
                continue
            key, name, value = entries[-1]
            more = line.strip()
            entries[-1] = (key, name, f"{value} {more}" if value else more)
            continue
        colon = line.find(":")
        name = line[:colon].rstrip(" \t") if colon > 0 else ""
        if not name or not is_token(name):
            deferred = deferred or ParseError("malformed header line")
            continue
        lower = name.lower()
        key = key_of(lower, lower)
        append((key, canonical(key, name), line[colon + 1 :].strip()))
    for key, _, value in entries:
        if key in _TRACKED:
            if key in seen:
                seen[key].append(value)
            else:
                seen[key] = [value]

    headers = Headers._from_entries(entries)
    body = data[body_start:] if body_start < n else b""
    msg: Request | Response
    if is_response:
        msg = Response(status, reason, headers, b"", version)
    else:
        msg = Request(method, uri, headers, b"", version)

    try:
        if deferred is not None:
            raise deferred
        msg.body = _validate(msg, seen, body)
    except ParseError as exc:
        if isinstance(msg, Response):
            exc.status_hint = 0  # a response is never answered (RFC 3261 §18.1.2)
        elif _answerable(seen):
            msg.body = b""
            exc.partial = msg
        raise
    return msg


def _answerable(seen: dict[str, list[str]]) -> bool:
    """True if a response can be built and routed (RFC 3261 §8.2.6.2, §18.2.2)."""
    if not all(key in seen for key, _ in _REQUIRED):
        return False
    try:
        parse_via(split_commas(seen["via"][0])[0])
    except ParseError:
        return False
    return True


def _validate(msg: Request | Response, seen: dict[str, list[str]], body: bytes) -> bytes:
    """Check the headers every element relies on; return the body cut to Content-Length."""
    for key, name in _REQUIRED:
        if key not in seen:
            raise ParseError(f"missing {name} header")
    for key, name in _SINGLE:
        values = seen.get(key)
        if values is not None and len(values) > 1:
            raise ParseError(f"more than one {name} header")
    for value in seen["via"]:
        parse_vias(value)
    parse_name_addr(seen["from"][0])
    parse_name_addr(seen["to"][0])
    call_id = seen["call-id"][0]
    if not call_id or any(c in call_id for c in " \t"):
        raise ParseError("invalid Call-ID")
    _, cseq_method = parse_cseq(seen["cseq"][0])
    if isinstance(msg, Request) and cseq_method != msg.method:
        raise ParseError("CSeq method does not match the request method")
    max_forwards = seen.get("max-forwards")
    if max_forwards is not None:
        value = max_forwards[0]
        if not value.isdigit() or not value.isascii() or int(value) > MAX_MAX_FORWARDS:
            raise ParseError("invalid Max-Forwards")
    length = seen.get("content-length")
    if length is None:
        return body  # datagram without Content-Length: the rest is the body (§18.3)
    value = length[0]
    if not value.isdigit() or not value.isascii():
        raise ParseError("invalid Content-Length")
    size = int(value)
    if size > len(body):
        raise ParseError("Content-Length larger than the body")
    return body[:size] if size < len(body) else body


# -------------------------------------------------------------------- respond

_REASONS = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    430: "Flow Failed",
    433: "Anonymity Disallowed",
    436: "Bad Identity-Info",
    437: "Unsupported Certificate",
    438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded",
    469: "Bad Info Package",
    470: "Consent Needed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
    608: "Rejected",
}
_CLASS_REASONS = {
    1: "Provisional",
    2: "Success",
    3: "Redirection",
    4: "Client Error",
    5: "Server Error",
    6: "Global Failure",
}


def reason_phrase(status: int) -> str:
    """The registered reason phrase of ``status`` (RFC 3261 §21), else its class name."""
    return _REASONS.get(status) or _CLASS_REASONS.get(status // 100, "Unknown")


def make_response(
    request: Request, status: int, reason: str | None = None, *, to_tag: str | None = None
) -> Response:
    """A response to ``request`` per RFC 3261 §8.2.6.2.

    Copies every Via (in order), From, To, Call-ID and CSeq; adds ``;tag=to_tag`` to To
    when given and To has no tag yet; copies Timestamp into a 100 (§8.2.6.1); no body,
    Content-Length 0. Works on a ParseError's ``partial`` request too.
    """
    entries = [e for e in request.headers._entries if e[0] in _RESPONSE_COPY]
    if to_tag is not None:
        for i, (key, name, value) in enumerate(entries):
            if key == "to":
                try:
                    has_tag = parse_name_addr(value).tag is not None
                except ParseError:
                    has_tag = ";tag=" in value.lower()
                if not has_tag:
                    entries[i] = (key, name, f"{value};tag={to_tag}")
                break
    if status == 100:
        entries.extend(e for e in request.headers._entries if e[0] == "timestamp")
    entries.append(("content-length", "Content-Length", "0"))
    return Response(
        status,
        reason if reason is not None else reason_phrase(status),
        Headers._from_entries(entries),
    )
