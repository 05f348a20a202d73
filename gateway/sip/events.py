"""Events the SIP transaction layer emits (RFC 3261 §17), read with ``next_event()``.

Hierarchy::

    TransactionEvent        base of every event below
      ResponseReceived      client: a response the TU must see (§17.1.1.2, §17.1.2.2)
      AckReceived           server INVITE: the ACK for a 3xx-6xx (§17.2.1), or an ACK
                            matched in the RFC 6026 "Accepted" state (passed to the TU)
      Timeout               client: Timer B or F fired; server INVITE: Timer H fired
      Terminated            the transaction entered "Terminated": drop it from the table

Retransmitted requests and responses are absorbed inside the transaction and produce no
event (§17.1.1.2, §17.2.1, §17.2.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.sip.message import Request, Response

__all__ = [
    "AckReceived",
    "ResponseReceived",
    "Terminated",
    "Timeout",
    "TransactionEvent",
]


@dataclass(frozen=True)
class TransactionEvent:
    """Base class of the transaction layer's events."""


@dataclass(frozen=True)
class ResponseReceived(TransactionEvent):
    """A response passed up to the TU (client transactions)."""

    response: Response


@dataclass(frozen=True)
class AckReceived(TransactionEvent):
    """An ACK passed up to the TU (INVITE server transactions)."""

    request: Request


@dataclass(frozen=True)
class Timeout(TransactionEvent):
    """A transaction timer ran out: ``which`` is "B", "F" or "H" (RFC 3261 Table 4)."""

    which: str


@dataclass(frozen=True)
class Terminated(TransactionEvent):
    """The transaction reached "Terminated"; it will neither send nor emit again."""
