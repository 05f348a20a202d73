"""DTMF carried in SIP INFO bodies, as browsers' SIP stacks send it. Sans-I/O.

Two body types are in use (neither has an RFC; both are de facto):

``application/dtmf-relay``
    Lines of ``Name=value``: ``Signal=5`` and ``Duration=160`` (milliseconds). SIP.js and
    JsSIP send this by default (SIP.js writes ``Signal= 5``; spaces are allowed).
    ``Signal`` may also be an event number (``10`` for ``*``, ``11`` for ``#``).
``application/dtmf``
    The digit alone (``5``); no duration.

:func:`parse_dtmf_info` returns the digit and the duration, or None for anything else
(another body type, no signal, a signal that is not a DTMF digit): such an INFO is relayed
unchanged rather than guessed at.
"""

from __future__ import annotations

__all__ = [
    "parse_dtmf_info",
    "DTMF_RELAY",
    "DTMF",
    "DEFAULT_DURATION_MS",
    "MAX_BODY",
    "MAX_DURATION_DIGITS",
    "DTMF_DIGITS",
]

DTMF_RELAY = "application/dtmf-relay"
DTMF = "application/dtmf"
DEFAULT_DURATION_MS = 100
"""Duration when the body gives none (SIP.js's and JsSIP's default tone length)."""
MAX_BODY = 256
"""Longest body parsed; a DTMF INFO is a few dozen bytes."""
MAX_DURATION_DIGITS = 6
"""Longest ``Duration`` value taken (999 999 ms); the media layer clamps to 40-5000 ms."""

DTMF_DIGITS = "0123456789*#ABCD"
"""The DTMF digits, indexed by their RFC 4733 event number (§3.2)."""


def _digit(signal: str) -> str | None:
    signal = signal.strip().upper()
    if len(signal) == 1 and signal in DTMF_DIGITS:
        return signal
    if signal.isdigit() and 10 <= int(signal) <= 15:
        return DTMF_DIGITS[int(signal)]  # event numbers 10-15 (RFC 4733 §3.2) as some UAs send
    return None


def parse_dtmf_info(content_type: str | None, body: bytes) -> tuple[str, int] | None:
    """``(digit, duration_ms)`` of a DTMF INFO body, or None when it is not one."""
    if content_type is None or not body or len(body) > MAX_BODY:
        return None
    media_type = content_type.split(";", 1)[0].strip().lower()
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        return None
    if media_type == DTMF:
        digit = _digit(text)
        return None if digit is None else (digit, DEFAULT_DURATION_MS)
    if media_type != DTMF_RELAY:
        return None
    signal: str | None = None
    duration = DEFAULT_DURATION_MS
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if not sep:
            continue
        name = name.strip().lower()
        if name == "signal":
            signal = value
        elif name == "duration":
            value = value.strip()
            if not value.isdigit() or len(value) > MAX_DURATION_DIGITS:
                return None  # not a duration anyone meant: relayed, not guessed at
            duration = int(value)
    digit = None if signal is None else _digit(signal)
    return None if digit is None else (digit, duration)
