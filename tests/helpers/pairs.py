"""Connect two sans-I/O cores over an in-memory link with scripted loss.

:class:`LossyLink` drops datagrams by a pattern; :class:`TransactionPair` joins one
client transaction to the server transaction its request creates on the far side, the
way two SIP elements over UDP would: every message crosses as bytes and is parsed again
with :func:`gateway.sip.message.parse`, and requests are matched with
:func:`gateway.sip.transaction.server_key` as a transport layer would (RFC 3261 §17.2.3).
"""

from __future__ import annotations

from gateway.sip.message import Request, Response, parse
from gateway.sip.transaction import (
    ClientTransaction,
    ServerTransaction,
    SipTimers,
    client_key,
    server_key,
)

from .clock import FakeClock

__all__ = ["MAX_PAIR_STEPS", "LossyLink", "TransactionPair"]

#: Most timer firings one :meth:`TransactionPair.run` call performs (a runaway guard).
MAX_PAIR_STEPS = 1000


class LossyLink:
    """A one-way datagram link that drops by pattern.

    ``pattern`` is read one character per datagram, in order: "x" drops it, "." delivers
    it. Once the pattern is used up every datagram is delivered, so ``LossyLink("xx")``
    loses exactly the first two.
    """

    def __init__(self, pattern: str = "") -> None:
        if set(pattern) - {"x", "."}:
            raise ValueError(f"pattern may hold only 'x' and '.': {pattern!r}")
        self.pattern = pattern
        self.sent = 0
        self.dropped = 0
        self.delivered: list[bytes] = []

    def carry(self, datagrams: list[bytes]) -> list[bytes]:
        """The datagrams that get through, in order."""
        out: list[bytes] = []
        for data in datagrams:
            lost = self.sent < len(self.pattern) and self.pattern[self.sent] == "x"
            self.sent += 1
            if lost:
                self.dropped += 1
            else:
                out.append(data)
        self.delivered.extend(out)
        return out


class TransactionPair:
    """A client transaction and, once its request arrives, the server transaction.

    The test plays both TUs: it creates the client transaction, calls
    ``pair.server.send_response(...)`` when it wants the server to answer, and reads
    events from both. Requests that match no server transaction (an ACK for a 2xx, say)
    are kept in :attr:`unmatched_requests`; responses for another transaction in
    :attr:`unmatched_responses`.
    """

    def __init__(
        self,
        request: Request,
        *,
        clock: FakeClock,
        uplink: LossyLink | None = None,
        downlink: LossyLink | None = None,
        timers: SipTimers | None = None,
    ) -> None:
        self.clock = clock
        self.timers = timers or SipTimers()
        self.uplink = uplink or LossyLink()
        self.downlink = downlink or LossyLink()
        self.client = ClientTransaction(request, reliable=False, timers=self.timers, now=clock.now)
        self.server: ServerTransaction | None = None
        self.server_created_at: float | None = None
        self.unmatched_requests: list[Request] = []
        self.unmatched_responses: list[Response] = []

    def transfer(self) -> None:
        """Carry everything queued on either side across the links, until quiet."""
        for _ in range(MAX_PAIR_STEPS):
            up = self.uplink.carry(self.client.data_to_send())
            down = self.downlink.carry(self.server.data_to_send() if self.server else [])
            if not up and not down:
                return
            for data in up:
                self._deliver_request(data)
            for data in down:
                self._deliver_response(data)
        raise RuntimeError("the pair kept exchanging messages")

    def _deliver_request(self, data: bytes) -> None:
        request = parse(data)
        if not isinstance(request, Request):
            raise TypeError("a response travelled up the uplink")
        now = self.clock.now
        if self.server is None:
            if request.method == "ACK":
                self.unmatched_requests.append(request)
                return
            self.server = ServerTransaction(request, reliable=False, timers=self.timers, now=now)
            self.server_created_at = now
        elif server_key(request) == self.server.key:
            self.server.receive_request(request, now)
        else:
            self.unmatched_requests.append(request)

    def _deliver_response(self, data: bytes) -> None:
        response = parse(data)
        if not isinstance(response, Response):
            raise TypeError("a request travelled down the downlink")
        if client_key(response) == self.client.key:
            self.client.receive_response(response, self.clock.now)
        else:
            self.unmatched_responses.append(response)

    def run(self, until: float) -> None:
        """Transfer, then fire both sides' timers in order up to ``until`` (absolute)."""
        self.transfer()
        for _ in range(MAX_PAIR_STEPS):
            deadlines = [
                t
                for t in (self.client.get_timer(), self.server.get_timer() if self.server else None)
                if t is not None and t <= until
            ]
            if not deadlines:
                self.clock.now = max(self.clock.now, until)
                return
            self.clock.now = max(self.clock.now, min(deadlines))
            self.client.handle_timer(self.clock.now)
            if self.server is not None:
                self.server.handle_timer(self.clock.now)
            self.transfer()
        raise RuntimeError(f"more than {MAX_PAIR_STEPS} timer firings before {until}")
