"""SIP transactions (RFC 3261 §17), sans-I/O.

Four state machines, each a transition table keyed by ``(state, input)`` and written
with the RFC's state names, so a table reads like its figure:

* :data:`INVITE_CLIENT`      §17.1.1, Figure 5: Calling, Proceeding, Completed, Terminated
* :data:`NON_INVITE_CLIENT`  §17.1.2, Figure 6: Trying, Proceeding, Completed, Terminated
* :data:`INVITE_SERVER`      §17.2.1, Figure 7 as revised by RFC 6026 §7.1: Proceeding,
  Completed, Confirmed, Accepted, Terminated
* :data:`NON_INVITE_SERVER`  §17.2.2, Figure 8: Trying, Proceeding, Completed, Terminated

An input with no entry in the table is discarded without effect (for example a 2xx that
reaches an INVITE client transaction in "Completed", or a second final response from the
TU to a non-INVITE server transaction: §17.2.2 "MUST be discarded").

Time is an argument: transactions arm timers as absolute deadlines computed from ``now``
and :class:`SipTimers`; the adapter arms one loop timer at :meth:`get_timer` and calls
:meth:`handle_timer` when it is due, then sends :meth:`data_to_send` and reads
:meth:`next_event` until it returns None (the aioquic shape). The transaction does not
know addresses: the adapter sends a client's bytes to the destination it chose for the
request and a server's bytes back where the request came from (§18.2.2).

Not done here, by design: the 100 (Trying) an INVITE server transaction should send
within 200 ms (§17.2.1) is the TU's call, as is Timer C (§16.6 step 11); transport errors
are reported by the adapter, which then drops the transaction. The client INVITE
transaction follows RFC 3261 and terminates on a 2xx: later 2xx retransmissions match
no transaction and the proxy core forwards them (as RFC 6026 asks of proxies).
"""

from __future__ import annotations

import base64
import hashlib
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

from gateway.sip.errors import ParseError
from gateway.sip.events import (
    AckReceived,
    ResponseReceived,
    Terminated,
    Timeout,
    TransactionEvent,
)
from gateway.sip.headers import Headers
from gateway.sip.message import Request, Response

__all__ = [
    "BRANCH_HASH_BYTES",
    "DEFAULT_MAX_FORWARDS",
    "INVITE_CLIENT",
    "INVITE_SERVER",
    "MAGIC_COOKIE",
    "NON_INVITE_CLIENT",
    "NON_INVITE_SERVER",
    "RETRANSMIT_TIMERS",
    "TIMEOUT_T1_MULTIPLE",
    "TIMER_D_UNRELIABLE",
    "TIMER_NAMES",
    "Action",
    "ClientTransaction",
    "Input",
    "ServerTransaction",
    "SipTimers",
    "State",
    "Table",
    "Transition",
    "cancel_target_key",
    "client_key",
    "make_ack",
    "make_branch",
    "make_cancel",
    "server_key",
]

#: RFC 3261 §8.1.1.7: branch IDs of RFC 3261 elements begin with this cookie.
MAGIC_COOKIE = "z9hG4bK"
#: Bytes of the SHA-256 digest kept in a :func:`make_branch` branch (128 bits).
BRANCH_HASH_BYTES = 16
#: Timer B, F, H, J (unreliable) and L run for this many T1 (RFC 3261 Table 4; RFC 6026).
TIMEOUT_T1_MULTIPLE = 64
#: Timer D over an unreliable transport: "at least 32 seconds" (§17.1.1.2, Table 4).
TIMER_D_UNRELIABLE = 32.0
#: Max-Forwards of an ACK or CANCEL built from a request that has none (§8.1.1.6).
DEFAULT_MAX_FORWARDS = 70

#: Timers that only run over unreliable transports: A (§17.1.1.2), E (§17.1.2.2),
#: G (§17.2.1). The others run on every transport, some with a zero duration.
RETRANSMIT_TIMERS = frozenset({"A", "E", "G"})
TIMER_NAMES = ("A", "B", "D", "E", "F", "G", "H", "I", "J", "K", "L")


@dataclass(frozen=True)
class SipTimers:
    """T1, T2, T4 (RFC 3261 Table 4) and the transaction timers derived from them.

    Durations are in seconds. Properties give the values for unreliable transports;
    :meth:`duration` applies the zero values of reliable ones.
    """

    t1: float = 0.5
    """RTT estimate; the first retransmission interval (§17.1.1.1)."""
    t2: float = 4.0
    """Longest retransmission interval for non-INVITE requests and INVITE responses."""
    t4: float = 5.0
    """Longest time a message stays in the network."""

    def __post_init__(self) -> None:
        if not self.t1 > 0:
            raise ValueError(f"T1 must be positive, got {self.t1}")
        if not self.t2 >= self.t1:
            raise ValueError(f"T2 must be at least T1 ({self.t1}), got {self.t2}")
        if not self.t4 > 0:
            raise ValueError(f"T4 must be positive, got {self.t4}")

    @property
    def timer_a(self) -> float:
        """First INVITE retransmission interval: T1, doubling (§17.1.1.2)."""
        return self.t1

    @property
    def timer_b(self) -> float:
        """INVITE client transaction timeout: 64*T1."""
        return TIMEOUT_T1_MULTIPLE * self.t1

    @property
    def timer_d(self) -> float:
        """Wait for response retransmissions after a 3xx-6xx: 32 s (0 s reliable)."""
        return TIMER_D_UNRELIABLE

    @property
    def timer_e(self) -> float:
        """First non-INVITE retransmission interval: T1, doubling up to T2 (§17.1.2.2)."""
        return self.t1

    @property
    def timer_f(self) -> float:
        """Non-INVITE client transaction timeout: 64*T1."""
        return TIMEOUT_T1_MULTIPLE * self.t1

    @property
    def timer_g(self) -> float:
        """First INVITE final response retransmission interval: T1, up to T2 (§17.2.1)."""
        return self.t1

    @property
    def timer_h(self) -> float:
        """Wait for the ACK to a 3xx-6xx: 64*T1."""
        return TIMEOUT_T1_MULTIPLE * self.t1

    @property
    def timer_i(self) -> float:
        """Wait for ACK retransmissions: T4 (0 s reliable)."""
        return self.t4

    @property
    def timer_j(self) -> float:
        """Wait for non-INVITE request retransmissions: 64*T1 (0 s reliable)."""
        return TIMEOUT_T1_MULTIPLE * self.t1

    @property
    def timer_k(self) -> float:
        """Wait for non-INVITE response retransmissions: T4 (0 s reliable)."""
        return self.t4

    @property
    def timer_l(self) -> float:
        """RFC 6026 §7.1: wait in "Accepted" for INVITE and 2xx retransmissions: 64*T1."""
        return TIMEOUT_T1_MULTIPLE * self.t1

    def duration(self, name: str, *, reliable: bool) -> float:
        """Initial duration of timer ``name`` ("A".."L") on the given kind of transport.

        D, I, J and K are zero over reliable transports (Table 4); A, E and G do not run
        there at all and are not asked for.
        """
        if reliable and name in ("D", "I", "J", "K"):
            return 0.0
        value: float = getattr(self, f"timer_{name.lower()}")
        return value


# ------------------------------------------------------------------ the tables


class State(StrEnum):
    """Transaction states, spelled as in RFC 3261 §17 (and RFC 6026 for Accepted)."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Input(StrEnum):
    """What drives a transaction: a message, the TU, or a timer (the figures' labels)."""

    RESPONSE_1XX = "1xx"
    RESPONSE_2XX = "2xx"
    RESPONSE_3XX_6XX = "300-699"
    TU_1XX = "1xx from TU"
    TU_2XX = "2xx from TU"
    TU_3XX_6XX = "300-699 from TU"
    REQUEST = "request retransmission"
    ACK = "ACK"
    TIMER_A = "Timer A"
    TIMER_B = "Timer B"
    TIMER_D = "Timer D"
    TIMER_E = "Timer E"
    TIMER_F = "Timer F"
    TIMER_G = "Timer G"
    TIMER_H = "Timer H"
    TIMER_I = "Timer I"
    TIMER_J = "Timer J"
    TIMER_K = "Timer K"
    TIMER_L = "Timer L"


class Action(StrEnum):
    """What a transition does, in order, after entering its target state."""

    SEND_REQUEST = "send request"
    RETRANSMIT = "retransmit request"
    RESPONSE_TO_TU = "response to TU"
    SEND_ACK = "send ACK"
    SEND_RESPONSE = "send response"
    RESEND_RESPONSE = "resend last response"
    ACK_TO_TU = "ACK to TU"
    INFORM_TU = "inform TU of the timeout"
    START_A = "start A"
    DOUBLE_A = "reset A to twice its value"
    START_B = "start B"
    START_D = "start D"
    START_E = "start E"
    DOUBLE_E = "reset E to MIN(2*E, T2)"
    RESET_E_TO_T2 = "reset E to T2"
    START_F = "start F"
    START_G = "start G"
    DOUBLE_G = "reset G to MIN(2*G, T2)"
    START_H = "start H"
    START_I = "start I"
    START_J = "start J"
    START_K = "start K"
    START_L = "start L"


# Timer actions: action -> (timer, how its next interval is found).
_START, _DOUBLE, _DOUBLE_TO_T2, _T2 = "start", "double", "double to T2", "T2"
_TIMER_ACTIONS: Mapping[Action, tuple[str, str]] = {
    Action.START_A: ("A", _START),
    Action.DOUBLE_A: ("A", _DOUBLE),
    Action.START_B: ("B", _START),
    Action.START_D: ("D", _START),
    Action.START_E: ("E", _START),
    Action.DOUBLE_E: ("E", _DOUBLE_TO_T2),
    Action.RESET_E_TO_T2: ("E", _T2),
    Action.START_F: ("F", _START),
    Action.START_G: ("G", _START),
    Action.DOUBLE_G: ("G", _DOUBLE_TO_T2),
    Action.START_H: ("H", _START),
    Action.START_I: ("I", _START),
    Action.START_J: ("J", _START),
    Action.START_K: ("K", _START),
    Action.START_L: ("L", _START),
}


@dataclass(frozen=True)
class Transition:
    """Go to ``target``, then perform ``actions`` in order."""

    target: State
    actions: tuple[Action, ...] = ()


@dataclass(frozen=True)
class Table:
    """One transaction state machine.

    ``timers`` lists, per state, the timers that keep running while in it; on entering
    a state every other timer is cancelled (so "Proceeding" stops A and B, §17.1.1.2).
    """

    name: str
    initial: State
    on_start: tuple[Action, ...]
    timers: Mapping[State, frozenset[str]]
    transitions: Mapping[tuple[State, Input], Transition]


_S = State
_I = Input
_A = Action
_T = Transition

#: RFC 3261 §17.1.1, Figure 5.
INVITE_CLIENT = Table(
    name="INVITE client transaction",
    initial=_S.CALLING,
    # §17.1.1.2: "the client transaction MUST start timer A with a value of T1" (UDP
    # only) and "MUST set timer B with a value of 64*T1" (any transport).
    on_start=(_A.SEND_REQUEST, _A.START_A, _A.START_B),
    timers={_S.CALLING: frozenset("AB"), _S.COMPLETED: frozenset("D")},
    transitions={
        (_S.CALLING, _I.TIMER_A): _T(_S.CALLING, (_A.RETRANSMIT, _A.DOUBLE_A)),
        (_S.CALLING, _I.TIMER_B): _T(_S.TERMINATED, (_A.INFORM_TU,)),
        (_S.CALLING, _I.RESPONSE_1XX): _T(_S.PROCEEDING, (_A.RESPONSE_TO_TU,)),
        (_S.CALLING, _I.RESPONSE_2XX): _T(_S.TERMINATED, (_A.RESPONSE_TO_TU,)),
        (_S.CALLING, _I.RESPONSE_3XX_6XX): _T(
            _S.COMPLETED, (_A.RESPONSE_TO_TU, _A.SEND_ACK, _A.START_D)
        ),
        (_S.PROCEEDING, _I.RESPONSE_1XX): _T(_S.PROCEEDING, (_A.RESPONSE_TO_TU,)),
        (_S.PROCEEDING, _I.RESPONSE_2XX): _T(_S.TERMINATED, (_A.RESPONSE_TO_TU,)),
        (_S.PROCEEDING, _I.RESPONSE_3XX_6XX): _T(
            _S.COMPLETED, (_A.RESPONSE_TO_TU, _A.SEND_ACK, _A.START_D)
        ),
        # §17.1.1.2: "Any retransmissions of the final response that are received while
        # in the 'Completed' state MUST cause the ACK to be re-passed to the transport
        # layer for retransmission, but the newly received response MUST NOT be passed
        # up to the TU."
        (_S.COMPLETED, _I.RESPONSE_3XX_6XX): _T(_S.COMPLETED, (_A.SEND_ACK,)),
        (_S.COMPLETED, _I.TIMER_D): _T(_S.TERMINATED),
    },
)

_NON_INVITE_FINALS = (_I.RESPONSE_2XX, _I.RESPONSE_3XX_6XX)

#: RFC 3261 §17.1.2, Figure 6.
NON_INVITE_CLIENT = Table(
    name="non-INVITE client transaction",
    initial=_S.TRYING,
    on_start=(_A.SEND_REQUEST, _A.START_E, _A.START_F),
    timers={
        _S.TRYING: frozenset("EF"),
        _S.PROCEEDING: frozenset("EF"),
        _S.COMPLETED: frozenset("K"),
    },
    transitions={
        # §17.1.2.2: E doubles up to T2 in Trying, and is reset to T2 in Proceeding.
        (_S.TRYING, _I.TIMER_E): _T(_S.TRYING, (_A.RETRANSMIT, _A.DOUBLE_E)),
        (_S.TRYING, _I.TIMER_F): _T(_S.TERMINATED, (_A.INFORM_TU,)),
        (_S.TRYING, _I.RESPONSE_1XX): _T(_S.PROCEEDING, (_A.RESPONSE_TO_TU,)),
        **{
            (_S.TRYING, final): _T(_S.COMPLETED, (_A.RESPONSE_TO_TU, _A.START_K))
            for final in _NON_INVITE_FINALS
        },
        (_S.PROCEEDING, _I.TIMER_E): _T(_S.PROCEEDING, (_A.RETRANSMIT, _A.RESET_E_TO_T2)),
        (_S.PROCEEDING, _I.TIMER_F): _T(_S.TERMINATED, (_A.INFORM_TU,)),
        (_S.PROCEEDING, _I.RESPONSE_1XX): _T(_S.PROCEEDING, (_A.RESPONSE_TO_TU,)),
        **{
            (_S.PROCEEDING, final): _T(_S.COMPLETED, (_A.RESPONSE_TO_TU, _A.START_K))
            for final in _NON_INVITE_FINALS
        },
        # §17.1.2.2: Completed "buffer[s] any additional response retransmissions".
        **{
            (_S.COMPLETED, response): _T(_S.COMPLETED)
            for response in (_I.RESPONSE_1XX, *_NON_INVITE_FINALS)
        },
        (_S.COMPLETED, _I.TIMER_K): _T(_S.TERMINATED),
    },
)

#: RFC 3261 §17.2.1, Figure 7, with RFC 6026 §7.1's "Accepted" state for 2xx.
INVITE_SERVER = Table(
    name="INVITE server transaction",
    initial=_S.PROCEEDING,
    on_start=(),  # the 100 (Trying) is the TU's (see the module docstring)
    timers={
        _S.COMPLETED: frozenset("GH"),
        _S.CONFIRMED: frozenset("I"),
        _S.ACCEPTED: frozenset("L"),
    },
    transitions={
        # §17.2.1: "If a request retransmission is received while in the 'Proceeding'
        # state, the most recent provisional response that was received from the TU
        # MUST be passed to the transport layer for retransmission."
        (_S.PROCEEDING, _I.REQUEST): _T(_S.PROCEEDING, (_A.RESEND_RESPONSE,)),
        (_S.PROCEEDING, _I.TU_1XX): _T(_S.PROCEEDING, (_A.SEND_RESPONSE,)),
        (_S.PROCEEDING, _I.TU_2XX): _T(_S.ACCEPTED, (_A.SEND_RESPONSE, _A.START_L)),
        (_S.PROCEEDING, _I.TU_3XX_6XX): _T(
            _S.COMPLETED, (_A.SEND_RESPONSE, _A.START_G, _A.START_H)
        ),
        (_S.COMPLETED, _I.REQUEST): _T(_S.COMPLETED, (_A.RESEND_RESPONSE,)),
        (_S.COMPLETED, _I.TIMER_G): _T(_S.COMPLETED, (_A.RESEND_RESPONSE, _A.DOUBLE_G)),
        (_S.COMPLETED, _I.TIMER_H): _T(_S.TERMINATED, (_A.INFORM_TU,)),
        (_S.COMPLETED, _I.ACK): _T(_S.CONFIRMED, (_A.ACK_TO_TU, _A.START_I)),
        # §17.2.1: Confirmed absorbs "any additional ACK messages".
        (_S.CONFIRMED, _I.ACK): _T(_S.CONFIRMED),
        (_S.CONFIRMED, _I.REQUEST): _T(_S.CONFIRMED),
        (_S.CONFIRMED, _I.TIMER_I): _T(_S.TERMINATED),
        # RFC 6026 §7.1: INVITE retransmissions are absorbed; 2xx retransmissions from
        # the TU are sent; "If an ACK is received while the INVITE server transaction
        # is in the 'Accepted' state, then the ACK must be passed up to the TU."
        (_S.ACCEPTED, _I.REQUEST): _T(_S.ACCEPTED),
        (_S.ACCEPTED, _I.TU_2XX): _T(_S.ACCEPTED, (_A.SEND_RESPONSE,)),
        (_S.ACCEPTED, _I.ACK): _T(_S.ACCEPTED, (_A.ACK_TO_TU,)),
        (_S.ACCEPTED, _I.TIMER_L): _T(_S.TERMINATED),
    },
)

_TU_FINALS = (_I.TU_2XX, _I.TU_3XX_6XX)

#: RFC 3261 §17.2.2, Figure 8.
NON_INVITE_SERVER = Table(
    name="non-INVITE server transaction",
    initial=_S.TRYING,
    on_start=(),
    timers={_S.COMPLETED: frozenset("J")},
    transitions={
        # §17.2.2: in Trying "any further request retransmissions are discarded".
        (_S.TRYING, _I.REQUEST): _T(_S.TRYING),
        (_S.TRYING, _I.TU_1XX): _T(_S.PROCEEDING, (_A.SEND_RESPONSE,)),
        **{
            (_S.TRYING, final): _T(_S.COMPLETED, (_A.SEND_RESPONSE, _A.START_J))
            for final in _TU_FINALS
        },
        (_S.PROCEEDING, _I.REQUEST): _T(_S.PROCEEDING, (_A.RESEND_RESPONSE,)),
        (_S.PROCEEDING, _I.TU_1XX): _T(_S.PROCEEDING, (_A.SEND_RESPONSE,)),
        **{
            (_S.PROCEEDING, final): _T(_S.COMPLETED, (_A.SEND_RESPONSE, _A.START_J))
            for final in _TU_FINALS
        },
        (_S.COMPLETED, _I.REQUEST): _T(_S.COMPLETED, (_A.RESEND_RESPONSE,)),
        (_S.COMPLETED, _I.TIMER_J): _T(_S.TERMINATED),
    },
)


# ------------------------------------------------------------------ matching


def _branch(request_or_response: Request | Response) -> str | None:
    return request_or_response.top_via.branch


def client_key(response: Response) -> tuple[str, str]:
    """The client transaction a response belongs to (RFC 3261 §17.1.3).

    ``(branch of the top Via, CSeq method)``: the method keeps a CANCEL's responses
    apart from those of the INVITE it cancels, which shares its branch.

    Raises:
        ParseError: the response has no valid top Via or CSeq, or no branch.
    """
    branch = _branch(response)
    if not branch:
        raise ParseError("Via has no branch parameter")
    return branch, response.cseq[1]


def _sent_by(request: Request) -> str:
    # Host names are case-insensitive (RFC 3261 §19.1.4); the key compares sent-by.
    return request.top_via.sent_by.lower()


def server_key(request: Request) -> tuple[str, str, str]:
    """The server transaction a request belongs to (RFC 3261 §17.2.3).

    ``(branch, sent-by of the top Via, method)`` with ACK counted as INVITE, so the
    ACK for a 3xx-6xx (same branch, §17.1.1.3) finds its INVITE. A branch without the
    "z9hG4bK" cookie is matched the same way: unique enough for a proxy (RFC 2543
    matching is not implemented). A request with no branch at all gets a stand-in
    built from Call-ID, CSeq number and From tag, so retransmissions still match.

    Raises:
        ParseError: the request has no valid top Via, CSeq, Call-ID or From.
    """
    method = "INVITE" if request.method == "ACK" else request.method
    branch = _branch(request)
    if not branch:
        branch = f"{request.call_id} {request.cseq[0]} {request.from_tag or ''}"
    return branch, _sent_by(request), method


def cancel_target_key(cancel: Request) -> tuple[str, str, str]:
    """The server key of the INVITE a CANCEL cancels (RFC 3261 §9.2).

    Raises:
        ParseError: as :func:`server_key`.
    """
    branch, sent_by, _ = server_key(cancel)
    return branch, sent_by, "INVITE"


def make_branch(seed: bytes) -> str:
    """A deterministic RFC 3261 branch: the magic cookie and a hash of ``seed``.

    A proxy that must produce the same branch for a retransmitted request without
    keeping state hashes what identifies it (RFC 3261 §16.11). The hash is URL-safe
    base64, whose alphabet is a subset of the token characters a branch allows.
    """
    digest = hashlib.sha256(seed).digest()[:BRANCH_HASH_BYTES]
    return MAGIC_COOKIE + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


# ------------------------------------------------------------ ACK and CANCEL


def _route_lines(request: Request) -> list[tuple[str, str]]:
    return [(name, value) for name, value in request.headers if name == "Route"]


def _max_forwards(request: Request) -> str:
    return request.headers.get("Max-Forwards") or str(DEFAULT_MAX_FORWARDS)


def _top_via_text(request: Request) -> str:
    via = request.headers.get("Via")
    if via is None:
        raise ValueError("request has no Via")
    return via


def make_ack(invite: Request, response: Response) -> Request:
    """The ACK for a 3xx-6xx to ``invite`` (RFC 3261 §17.1.1.3).

    Same Request-URI, Call-ID, From and CSeq number as the INVITE, CSeq method ACK;
    To from the response (it carries the UAS's tag); a single Via, the INVITE's top
    one; the INVITE's Route header fields.
    """
    to = response.headers.get("To")
    if to is None:
        raise ValueError("response has no To")
    headers = Headers([("Via", _top_via_text(invite))])
    for name, value in _route_lines(invite):
        headers.add(name, value)
    headers.add("Max-Forwards", _max_forwards(invite))
    headers.add("From", invite.headers.get("From") or "")
    headers.add("To", to)
    headers.add("Call-ID", invite.call_id)
    headers.add("CSeq", f"{invite.cseq[0]} ACK")
    return Request("ACK", invite.uri, headers)


def make_cancel(invite: Request) -> Request:
    """A CANCEL for ``invite`` (RFC 3261 §9.1).

    "The Request-URI, Call-ID, To, the numeric part of CSeq, and From header fields in
    the CANCEL request MUST be identical to those in the request being cancelled,
    including tags. A CANCEL constructed by a client MUST have only a single Via header
    field value matching the top Via value in the request being cancelled." Route
    header fields are copied too.
    """
    headers = Headers([("Via", _top_via_text(invite))])
    for name, value in _route_lines(invite):
        headers.add(name, value)
    headers.add("Max-Forwards", _max_forwards(invite))
    headers.add("From", invite.headers.get("From") or "")
    headers.add("To", invite.headers.get("To") or "")
    headers.add("Call-ID", invite.call_id)
    headers.add("CSeq", f"{invite.cseq[0]} CANCEL")
    return Request("CANCEL", invite.uri, headers)


# ------------------------------------------------------------ transactions


def _classify(status: int, *, from_tu: bool) -> Input | None:
    if 100 <= status < 200:
        return Input.TU_1XX if from_tu else Input.RESPONSE_1XX
    if 200 <= status < 300:
        return Input.TU_2XX if from_tu else Input.RESPONSE_2XX
    if 300 <= status < 700:
        return Input.TU_3XX_6XX if from_tu else Input.RESPONSE_3XX_6XX
    return None


class _Transaction(ABC):
    """Timers, output queues and the table-driven step shared by both sides."""

    table: Table

    def __init__(self, request: Request, *, reliable: bool, timers: SipTimers) -> None:
        # A copy: the TU may go on changing its request (a proxy rewrites Via on failover).
        self.request = request.copy()
        self.reliable = reliable
        self.timers = timers
        self.state: State = self.table.initial
        #: Messages sent again by this transaction (A, E, G, absorbed retransmissions).
        self.retransmissions = 0
        self._deadlines: dict[str, float] = {}
        self._intervals: dict[str, float] = {}
        self._events: deque[TransactionEvent] = deque()
        self._outgoing: list[bytes] = []

    # -- the adapter's side

    def get_timer(self) -> float | None:
        """Absolute time of the earliest armed timer, or None."""
        return min(self._deadlines.values(), default=None)

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``, earliest first.

        On a tie a timeout fires before a retransmission, which it then cancels.
        """
        due = sorted(
            (deadline, name in RETRANSMIT_TIMERS, name)
            for name, deadline in self._deadlines.items()
            if deadline <= now
        )
        for _, _, name in due:
            deadline = self._deadlines.get(name)
            if deadline is None or deadline > now:
                continue  # cancelled by a timer that fired before it
            del self._deadlines[name]
            self._step(Input(f"Timer {name}"), now, None)

    def data_to_send(self) -> list[bytes]:
        """Messages to send, in order; the queue is emptied."""
        data, self._outgoing = self._outgoing, []
        return data

    def next_event(self) -> TransactionEvent | None:
        """The next event for the TU, or None."""
        return self._events.popleft() if self._events else None

    # -- the engine

    def _start(self, now: float) -> None:
        self._perform_all(self.table.on_start, Input.REQUEST, now, None)

    def _step(self, event: Input, now: float, message: Request | Response | None) -> bool:
        """Apply the table to ``event``; False if the table discards it."""
        transition = self.table.transitions.get((self.state, event))
        if transition is None:
            return False
        entering = transition.target is not self.state
        if entering:
            keep = self.table.timers.get(transition.target, frozenset())
            for name in [n for n in self._deadlines if n not in keep]:
                del self._deadlines[name]
            self.state = transition.target
        self._perform_all(transition.actions, event, now, message)
        if entering and self.state is State.TERMINATED:
            self._events.append(Terminated())
        return True

    def _perform_all(
        self,
        actions: tuple[Action, ...],
        event: Input,
        now: float,
        message: Request | Response | None,
    ) -> None:
        for action in actions:
            timer = _TIMER_ACTIONS.get(action)
            if timer is not None:
                self._arm(timer[0], timer[1], now)
            elif action is Action.INFORM_TU:
                self._events.append(Timeout(event.value.removeprefix("Timer ")))
            else:
                self._perform(action, message)

    def _arm(self, name: str, rule: str, now: float) -> None:
        if self.reliable and name in RETRANSMIT_TIMERS:
            return
        if rule == _START:
            interval = self.timers.duration(name, reliable=self.reliable)
        elif rule == _DOUBLE:
            interval = 2 * self._intervals[name]
        elif rule == _DOUBLE_TO_T2:
            interval = min(2 * self._intervals[name], self.timers.t2)
        else:  # _T2
            interval = self.timers.t2
        self._intervals[name] = interval
        self._deadlines[name] = now + interval

    @abstractmethod
    def _perform(self, action: Action, message: Request | Response | None) -> None:
        """Carry out one action of the transition table (client or server side)."""


class ClientTransaction(_Transaction):
    """An INVITE or non-INVITE client transaction (RFC 3261 §17.1).

    Queues the request on creation; see the module docstring for the driving loop.

    Raises:
        ValueError: ``request`` is an ACK (never a client transaction of its own: the
            ACK for 3xx-6xx is built here, the ACK for 2xx is sent by the TU), or its
            top Via has no branch.
    """

    def __init__(self, request: Request, *, reliable: bool, timers: SipTimers, now: float) -> None:
        if request.method == "ACK":
            raise ValueError("ACK does not start a client transaction (RFC 3261 §17.1)")
        self.table = INVITE_CLIENT if request.method == "INVITE" else NON_INVITE_CLIENT
        super().__init__(request, reliable=reliable, timers=timers)
        branch = _branch(self.request)
        if not branch:
            raise ValueError("the request's top Via has no branch parameter")
        #: ``(branch, method)``, compared with :func:`client_key` (§17.1.3).
        self.key: tuple[str, str] = (branch, self.request.method)
        self._request_bytes = bytes(self.request)
        self._ack: bytes | None = None
        self._start(now)

    def receive_response(self, response: Response, now: float) -> None:
        """Feed a response whose :func:`client_key` equals :attr:`key`.

        A status outside 100-699 (which the parser never yields) is discarded.

        Raises:
            ValueError: the response belongs to another transaction.
        """
        if client_key(response) != self.key:
            raise ValueError(f"response for {client_key(response)} given to {self.key}")
        event = _classify(response.status, from_tu=False)
        if event is not None:
            self._step(event, now, response)

    def _perform(self, action: Action, message: Request | Response | None) -> None:
        if action is Action.SEND_REQUEST:
            self._outgoing.append(self._request_bytes)
        elif action is Action.RETRANSMIT:
            self.retransmissions += 1
            self._outgoing.append(self._request_bytes)
        elif action is Action.RESPONSE_TO_TU:
            # By the tables, this action only follows a received response.
            self._events.append(ResponseReceived(cast(Response, message)))
        elif action is Action.SEND_ACK:
            if self._ack is None:
                self._ack = bytes(make_ack(self.request, cast(Response, message)))
            else:
                self.retransmissions += 1
            self._outgoing.append(self._ack)
        else:  # pragma: no cover - a table naming a server action is a bug
            raise AssertionError(f"{self.table.name}: unexpected action {action}")


class ServerTransaction(_Transaction):
    """An INVITE or non-INVITE server transaction (RFC 3261 §17.2).

    Sends nothing by itself on creation: the TU answers with :meth:`send_response`.

    Raises:
        ParseError: the request's top Via, CSeq, Call-ID or From cannot be read.
        ValueError: ``request`` is an ACK (it belongs to an INVITE transaction, or, for
            a 2xx, to none: RFC 3261 §17).
    """

    def __init__(self, request: Request, *, reliable: bool, timers: SipTimers, now: float) -> None:
        if request.method == "ACK":
            raise ValueError("ACK does not start a server transaction (RFC 3261 §17)")
        self.table = INVITE_SERVER if request.method == "INVITE" else NON_INVITE_SERVER
        super().__init__(request, reliable=reliable, timers=timers)
        #: ``(branch, sent-by, method)``, compared with :func:`server_key` (§17.2.3).
        self.key: tuple[str, str, str] = server_key(self.request)
        self._last_response: bytes | None = None
        self._start(now)

    def receive_request(self, request: Request, now: float) -> None:
        """Feed a retransmission of the request, or the ACK, matched by :func:`server_key`.

        Raises:
            ValueError: the request belongs to another transaction.
        """
        key = server_key(request)
        if key != self.key:
            raise ValueError(f"request for {key} given to {self.key}")
        event = Input.ACK if request.method == "ACK" else Input.REQUEST
        self._step(event, now, request)

    def send_response(self, response: Response, now: float) -> None:
        """Send the TU's response; one the table does not allow is discarded (§17.2.2).

        Raises:
            ValueError: ``response`` is not a 1xx-6xx.
        """
        event = _classify(response.status, from_tu=True)
        if event is None:
            raise ValueError(f"not a response status: {response.status}")
        self._step(event, now, response)

    def _perform(self, action: Action, message: Request | Response | None) -> None:
        if action is Action.SEND_RESPONSE:
            # By the tables, this action only follows a response from the TU.
            self._last_response = bytes(cast(Response, message))
            self._outgoing.append(self._last_response)
        elif action is Action.RESEND_RESPONSE:
            if self._last_response is not None:
                self.retransmissions += 1
                self._outgoing.append(self._last_response)
        elif action is Action.ACK_TO_TU:
            self._events.append(AckReceived(cast(Request, message)))
        else:  # pragma: no cover - a table naming a client action is a bug
            raise AssertionError(f"{self.table.name}: unexpected action {action}")
