"""SIP message core (sans-I/O): URIs, headers, messages and stream framing.

What we took from ``sipmessage`` (aiortc's authors) and why
-----------------------------------------------------------
We ran its ``URI``, ``Address``, ``Via`` and ``CSeq`` classes over the RFC 4475 vectors.
They accept 12 of the 13 §3.1.1 messages, but for a proxy that forwards what it does
not own they lose information:

* ``Via``: rejects the folded, LWS-padded Via of ``wsinv`` (§3.1.1.1), a Via with an
  IPv6 ``received`` (RFC 5118) and a lower-case ``sip/2.0/udp``; it %-decodes parameter
  values, so the branch ``z9hG4bK-.!%66*_+`'~`` of ``intmeth`` comes back as
  ``...!f*...`` and is re-encoded differently on output (transaction matching and Via
  transparency both break).
* ``Parameters`` is a dict: repeated parameters collapse and values are %-decoded and
  re-quoted; our API needs ordered ``(name, value)`` pairs kept as written.
* ``URI`` unescapes user and password and re-escapes them on output (``%75se%72``
  becomes ``user``): a Request-URI or Contact would not pass through byte-for-byte. It
  rejects single-label hosts ending in a digit (``sip:host4``), has no ``?headers`` part,
  no ``urn:`` and accepts the invalid IPv6 reference ``[2001:db8:::192.0.2.1]``.
* ``Address`` keeps the backslashes of quoted-pairs other than \\" and \\\\ (``intmeth``'s
  ``\\<NUL>``) and writes raw control characters back out; it rejects the list
  ``"a" <sip:x@y>;p="x;y", <sip:z@w>`` (a quoted parameter value holding ";").
* ``CSeq`` holds, but has no 2**31 bound (RFC 3261 §8.1.1.5) and runs two regexes where a
  ``split()`` does; ``Message.parse`` has no folding, LF tolerance, limits or framing.

So we use sipmessage's RFC 3261 §25.1 character classes (``sipmessage.grammar``:
token, unreserved, user and URI-parameter characters), which are correct, and our own
parsers everywhere else (gateway/sip/uri.py, headers.py, message.py, framing.py).
"""

from gateway.sip.errors import ParseError, SipError
from gateway.sip.framing import Keepalive, StreamFramer
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
)
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
from gateway.sip.uri import SipURI, unescape

__all__ = [
    "MAX_HEADER_LINES",
    "MAX_LINE_LENGTH",
    "MAX_MESSAGE_SIZE",
    "Headers",
    "Keepalive",
    "NameAddr",
    "ParseError",
    "Request",
    "Response",
    "SipError",
    "SipURI",
    "StreamFramer",
    "Via",
    "canonical_name",
    "make_response",
    "parse",
    "parse_contact",
    "parse_cseq",
    "parse_name_addr",
    "parse_name_addrs",
    "parse_via",
    "parse_vias",
    "reason_phrase",
    "unescape",
]
