"""Cutting a TCP/TLS byte stream into SIP messages (RFC 3261 §18.3, RFC 5626 §3.5.1).

On a stream every message must carry Content-Length (RFC 3261 §18.3): the framer finds
the blank line that ends the headers, reads Content-Length there and waits for that many
body octets. A double CRLF between messages is an RFC 5626 keep-alive "ping" and comes
out as :class:`Keepalive` (answer it with a single CRLF "pong"); a lone CRLF (a pong, or
the CRLFs RFC 3261 §7.5 says to ignore before a start line) is skipped.

Errors are fatal for the stream: once framing is lost it cannot be found again, so the
framer raises ParseError and the caller closes the connection. WebSocket transports do
not need this class: there each WebSocket message is one SIP message (RFC 7118 §5).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.sip.errors import ParseError
from gateway.sip.message import MAX_MESSAGE_SIZE

__all__ = ["Keepalive", "StreamFramer"]

_CRLF = b"\r\n"
_PING = b"\r\n\r\n"


@dataclass(frozen=True)
class Keepalive:
    """A CRLF CRLF keep-alive ping from the peer (RFC 5626 §3.5.1)."""


def _content_length(head: bytes) -> int:
    """Content-Length ("l" compact form too) from a header block; ParseError if unusable."""
    found: int | None = None
    for line in head.split(b"\n")[1:]:
        colon = line.find(b":")
        if colon <= 0 or line[:1] in (b" ", b"\t"):
            continue
        name = line[:colon].strip().lower()
        if name != b"content-length" and name != b"l":
            continue
        value = line[colon + 1 :].strip()
        if not value.isdigit():
            raise ParseError("invalid Content-Length")
        if found is not None:
            raise ParseError("more than one Content-Length header")
        found = int(value)
    if found is None:
        raise ParseError("missing Content-Length on a stream transport")
    return found


class StreamFramer:
    """Incremental splitter: ``feed()`` bytes as they arrive, get whole messages back."""

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self._buffer = bytearray()
        self._scan_from = 0  # where to resume looking for the end of the headers
        self._expected: int | None = None  # total size of the message being read

    @property
    def buffered(self) -> int:
        """Octets held while waiting for the rest of a message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | Keepalive]:
        """Add ``data``; return the complete messages and keep-alives it finished, in order."""
        buf = self._buffer
        buf += data
        out: list[bytes | Keepalive] = []
        while buf:
            if self._expected is None:
                if buf[:1] == b"\r":
                    if buf[:4] == _PING:
                        del buf[:4]
                        out.append(Keepalive())
                        continue
                    if _PING.startswith(bytes(buf[:4])):
                        break  # maybe the start of a ping: wait for more
                    if buf[:2] == _CRLF:
                        del buf[:2]  # a pong, or a CRLF before a start line (§7.5)
                        continue
                elif buf[:1] == b"\n":
                    del buf[:1]  # LF-only peers: a stray LF between messages
                    continue
                if not self._find_headers():
                    break
            assert self._expected is not None
            if len(buf) < self._expected:
                break
            out.append(bytes(buf[: self._expected]))
            del buf[: self._expected]
            self._expected = None
            self._scan_from = 0
        return out

    def _find_headers(self) -> bool:
        """Locate the end of the headers; set ``_expected``. False if more data is needed."""
        buf = self._buffer
        start = max(self._scan_from - 2, 0)
        crlf = buf.find(b"\n\r\n", start)
        lf = buf.find(b"\n\n", start, None if crlf < 0 else crlf + 1)
        if lf >= 0:
            head_end, body_start = lf, lf + 2
        elif crlf >= 0:
            head_end, body_start = crlf, crlf + 3
        else:
            if len(buf) > self.max_message_size:
                raise ParseError("message headers exceed the size limit", 413)
            self._scan_from = len(buf)
            return False
        total = body_start + _content_length(bytes(buf[:head_end]))
        if total > self.max_message_size:
            raise ParseError("message exceeds the size limit", 413)
        self._expected = total
        return True
