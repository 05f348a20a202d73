"""Exceptions of the SIP message core.

Hierarchy::

    SipError                 base of everything this package raises
      ParseError             bytes or text that are not valid SIP; says which answer fits

A :class:`ParseError` carries ``status_hint``, the response the receiver should send
(400 bad syntax, 413 too large, 416 unsupported URI scheme, 505 bad version; 0 means no
answer is possible: a malformed response, or a start line that cannot even be read), and
``partial``: the request as far as it was parsed when enough of it (request line, Via,
From, To, Call-ID, CSeq) could be read to build that answer with ``make_response()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - imports for annotations only
    from gateway.sip.message import Request

__all__ = ["ParseError", "SipError"]


class SipError(Exception):
    """Base class of the exceptions raised by ``gateway.sip``."""


class ParseError(SipError):
    """Input that is not valid SIP; ``str(exc)`` is the reason (fit for a Warning header)."""

    def __init__(self, reason: str, status_hint: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_hint = status_hint
        self.partial: Request | None = None

    def __str__(self) -> str:
        return self.reason

    def __repr__(self) -> str:
        return f"ParseError({self.reason!r}, status_hint={self.status_hint})"
