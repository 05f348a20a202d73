"""Exceptions of the SDP core.

:class:`SdpError` is the only exception ``gateway.sdp`` raises for bad input. Its
``reason`` is short, names the line when there is one, and is fit for the Warning
header of the 488 Not Acceptable Here the caller answers with (RFC 3261 §21.4.26,
§20.43).
"""

from __future__ import annotations

__all__ = ["SdpError"]


class SdpError(Exception):
    """A session description that cannot be used; ``str(exc)`` is the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason

    def __repr__(self) -> str:
        return f"SdpError({self.reason!r})"
