"""The edge proxy: SIP messages and flow events in, actions out (sans-I/O).

A transaction-stateful proxy (RFC 3261 §16) between browser WebSocket flows
(RFC 7118) and an upstream switch pool, in the style of an RFC 5626 edge
proxy:

* Requests from a browser go only to the upstream pool (never to an address
  the browser names: no open relay).  The browser's ``.invalid`` Via gets
  ``received``/``rport`` (RFC 3581); REGISTER gets a Path (RFC 3327) whose
  user part is a signed flow token (RFC 5626 §5.2), or, in contact-rewrite
  mode, a Contact naming the gateway; dialog-forming requests get a double
  Record-Route (RFC 5658), both entries carrying the token.
* Requests from the switch are routed by the token in the Route (Path or
  Record-Route) or, in contact-rewrite mode, in the Request-URI: to that
  connection only; a dead flow answers 430 Flow Failed (RFC 5626 §5.3).
* Responses follow the transactions back.  Bodies pass through untouched,
  except SDP when media anchoring is on: a message carrying SDP is parked,
  a :class:`MediaCommand` (an rtpengine NG ``offer``/``answer`` dictionary)
  goes out, and :meth:`Proxy.media_result` resumes it with the media layer's
  SDP (or answers 488 when an offer cannot be anchored).
* When a flow closes, its confirmed dialogs are ended toward the switch with
  BYE, its pending outgoing INVITEs are CANCELled, and requests pending toward
  it are answered 480.
* The gateway sends requests of its own in a browser's dialog (that BYE; the
  DTMF INFOs of :meth:`Proxy.dtmf_events`) with the browser's identity and the
  next CSeq past the browser's; the browser's later requests are renumbered
  past them and their responses renumbered back (:class:`Dialog`).

Nothing here reads a clock or touches a socket: the adapter feeds bytes with
``now``, arms one timer from :meth:`Proxy.get_timer`, and carries out the
actions it drains with :meth:`Proxy.actions`.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.sip import events as tev
from gateway.sip.errors import ParseError
from gateway.sip.headers import NameAddr, parse_name_addr, parse_via
from gateway.sip.message import Request, Response, make_response, parse
from gateway.sip.transaction import (
    ClientTransaction,
    ServerTransaction,
    SipTimers,
    make_branch,
    make_cancel,
    server_key,
)
from gateway.sip.uri import SipURI

from .dialogs import Dialog, DialogTable
from .dtmf_info import DTMF_DIGITS, DTMF_RELAY, parse_dtmf_info
from .flow import Flow, FlowTable
from .upstream import PoolMember, UpstreamPool

__all__ = [
    "Action",
    "Dropped",
    "Note",
    "Proxy",
    "ProxySettings",
    "SendToFlow",
    "SendUpstream",
    "Seen",
]

DEFAULT_MAX_FORWARDS = 70
#: Methods whose SDP is an offer or answer (RFC 3261 §13, RFC 3311, RFC 3262).
MEDIA_METHODS = frozenset({"INVITE", "UPDATE", "ACK", "PRACK"})
#: Methods that create a dialog when sent outside one (RFC 3261, 6665, 3515).
DIALOG_FORMING = frozenset({"INVITE", "SUBSCRIBE", "REFER"})
#: Seconds a failed initial INVITE's media session is kept for a retry with the same
#: Call-ID (a 401/407 challenge, a 3xx): like rtpengine's delete-delay, it saves a
#: session teardown and set-up, and a delete racing the retry's offer.
MEDIA_DELETE_DELAY = 5.0
#: RFC 6026: how long 2xx retransmissions to an INVITE are still forwarded, in T1.
ACCEPTED_T1 = 64
#: Longest Duration written into a DTMF INFO (the media layer reports at most this).
MAX_INFO_DURATION_MS = 60_000


# --------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class SendToFlow:
    """Send one SIP message over a browser WebSocket."""

    flow_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SendUpstream:
    """Send one SIP message toward the switch side (UDP datagram or stream)."""

    host: str
    port: int
    transport: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Dropped:
    """A message was dropped; ``side`` is "ws" or "sip"."""

    side: str
    reason: str


@dataclass(frozen=True, slots=True)
class Seen:
    """A message was received (for metrics): kind is "request" or "response"."""

    side: str
    kind: str
    label: str


@dataclass(frozen=True, slots=True)
class Note:
    """Something worth a log line and a metric (failover, health, dialogs)."""

    kind: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class MediaCommand:
    """An rtpengine NG command for the media layer.

    The adapter sends it and hands the reply dictionary (None on failure or
    timeout) back through :meth:`Proxy.media_result` with the same token;
    token 0 means nobody waits for the reply (``delete``).
    """

    token: int
    command: dict[str, object]


Action = SendToFlow | SendUpstream | Dropped | Seen | Note | MediaCommand


@dataclass(frozen=True, kw_only=True)
class ProxySettings:
    """What the proxy needs to know about itself."""

    sip_host: str
    """Host advertised toward the switch in Via, Path and Record-Route."""
    sip_port: int
    """UDP/TCP port of the switch-facing listener."""
    sip_tls_port: int | None = None
    """TLS port of the switch-facing listener, if any."""
    ws_host: str = "gateway.invalid"
    """Host in the WebSocket-side Via and Record-Route entries."""
    mode: str = "path"
    """"path" (RFC 3327) or "contact-rewrite"."""
    timers: SipTimers = field(default_factory=SipTimers)
    max_calls: int = 1000
    user_agent: str = "webrtc-sip-gateway"
    udp_mtu: int = 1300
    tcp_fallback: bool = True
    probe_interval: float = 10.0
    flow_timer: int | None = None
    """Seconds advertised in Flow-Timer on outbound REGISTER 200s (RFC 5626 §4.4.1)."""
    media: bool = False
    """Anchor media: rewrite every SDP through the media layer (MediaCommand)."""
    dtmf_info_to_rfc4733: bool = False
    """With media: answer a browser's DTMF INFO here and have the media layer send the digit
    as RFC 4733 telephone-events toward the switch (relayed as INFO when it cannot)."""
    dtmf_rfc4733_to_info: bool = False
    """With media: when the switch's SDP has no telephone-event, the media layer gives the
    browser one anyway (flag ``DTMF-INFO``) and each digit the browser plays goes to the
    switch as a SIP INFO (``application/dtmf-relay``) in its name (:meth:`Proxy.dtmf_events`)."""


# ------------------------------------------------------------------ contexts


@dataclass(eq=False)
class _Server:
    txn: ServerTransaction
    request: Request
    from_flow: int | None  # browser flow the request came from
    reply_to: tuple[str, int, str] | None  # upstream source address
    client: _Client | None = None
    final_sent: bool = False
    cancelled: bool = False


@dataclass(eq=False)
class _Client:
    txn: ClientTransaction
    request: Request  # as forwarded
    server: _Server | None  # None: a request of our own (probe, BYE, CANCEL)
    to_flow: int | None = None  # target browser flow
    member: PoolMember | None = None  # target upstream member
    origin_flow: int | None = None  # browser flow that sent it
    transport: str = "udp"  # transport actually used toward ``member``
    tried: tuple[PoolMember, ...] = ()
    provisional: bool = False
    final: bool = False
    cancel_pending: bool = False
    probe: bool = False
    #: media call id when this INVITE/UPDATE went through the media layer
    media_call: str | None = None


class Proxy:
    """The sans-I/O edge proxy. See the module docstring."""

    def __init__(
        self,
        settings: ProxySettings,
        pool: UpstreamPool,
        flows: FlowTable,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.flows = flows
        self.dialogs = DialogTable()
        self._media_waits: dict[int, Callable[[dict[str, object] | None, float], None]] = {}
        self._media_tokens = itertools.count(1)
        #: media call id -> the browser flow it belongs to
        self.media_calls: dict[str, int] = {}
        #: media calls whose browser digits the media layer reads for SIP INFO (poll them
        #: with "DTMF events" and feed :meth:`dtmf_events`)
        self.dtmf_info_calls: set[str] = set()
        self._media_delete_due: dict[str, float] = {}
        #: why the media layer refused the last offer (for the 488's Warning)
        self.media_error = ""
        self._actions: list[Action] = []
        self._clients: dict[tuple[str, str], _Client] = {}
        self._servers: dict[tuple[str, str, str], _Server] = {}
        self._accepted: dict[str, int] = {}  # branch -> flow for 2xx retransmissions
        self._timers: list[tuple[float, int, str, object]] = []
        self._seq = itertools.count()
        self._branch_prefix = secrets.token_hex(4)
        self._branch_seq = itertools.count(1)
        self.pending_invites = 0
        #: set while draining (SIGTERM): new calls get 503
        self.draining = False

    # ---------------------------------------------------------------- API

    def actions(self) -> list[Action]:
        """Drain the actions produced so far."""
        out, self._actions = self._actions, []
        return out

    def start(self, now: float) -> None:
        """Schedule the first OPTIONS health probes."""
        if self.settings.probe_interval > 0:
            self._push(now, "probe", None)

    def get_timer(self) -> float | None:
        """Earliest deadline the adapter must call :meth:`handle_timer` at."""
        return self._timers[0][0] if self._timers else None

    def handle_timer(self, now: float) -> None:
        """Run every timer due at ``now``."""
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, key = heapq.heappop(self._timers)
            if kind == "client":
                ctx = self._clients.get(key)  # type: ignore[call-overload]
                if ctx is not None and _due(ctx.txn.get_timer(), now):
                    ctx.txn.handle_timer(now)
                    self._pump_client(ctx, now)
            elif kind == "server":
                sctx = self._servers.get(key)  # type: ignore[call-overload]
                if sctx is not None and _due(sctx.txn.get_timer(), now):
                    sctx.txn.handle_timer(now)
                    self._pump_server(sctx, now)
            elif kind == "accepted":
                self._accepted.pop(key, None)  # type: ignore[call-overload]
            elif kind == "media_delete":
                due = self._media_delete_due.get(key)  # type: ignore[call-overload]
                if due is not None and due <= now:
                    del self._media_delete_due[key]  # type: ignore[arg-type]
                    self._media_delete_id(key)  # type: ignore[arg-type]
            elif kind == "probe":
                self._send_probes(now)
                self._push(now + self.settings.probe_interval, "probe", None)

    def media_result(self, token: int, reply: dict[str, object] | None, now: float) -> None:
        """The media layer answered the :class:`MediaCommand` with ``token``."""
        resume = self._media_waits.pop(token, None)
        if resume is not None:
            resume(reply, now)

    def media_alive(self, calls: set[str], since: float, now: float) -> None:
        """The media layer's live calls as of ``since``: end every confirmed
        dialog older than that whose media session is gone (media timeout),
        with BYE toward the switch and toward the browser."""
        for call, flow_id in list(self.media_calls.items()):
            if call in calls:
                continue
            for dialog in self._dialogs_of(call, flow_id):
                if dialog.created > since:
                    continue
                self.dialogs.remove(dialog)
                self.media_calls.pop(call, None)
                self._note("dialog_ended", "media_timeout")
                self._send_bye_for(dialog, now, reason='SIP;cause=408;text="media timeout"')
                self._send_bye_to_browser(dialog, now)

    def dtmf_events(self, events: list[object], now: float) -> None:
        """Digits the media layer read from browsers' telephone-events (its ``DTMF events``
        reply): each goes to the switch as an INFO ``application/dtmf-relay`` in the
        browser's name, within the call's dialog (PITFALLS 10). Events of calls or dialogs
        that are gone, and malformed ones, are dropped."""
        for event in events:
            if not isinstance(event, dict):
                continue
            call, code, duration = event.get("call-id"), event.get("code"), event.get("duration")
            flow_id = self.media_calls.get(call) if isinstance(call, str) else None
            if (
                not isinstance(call, str)
                or flow_id is None
                or not isinstance(code, str)
                or len(code) != 1
                or code not in DTMF_DIGITS
                or not isinstance(duration, int)
                or not 0 < duration <= MAX_INFO_DURATION_MS
            ):
                self._note("dtmf_rfc4733_dropped", "unknown call or malformed event")
                continue
            dialog = next(iter(self._dialogs_of(call, flow_id)), None)
            if dialog is None:
                self._note("dtmf_rfc4733_dropped", "no confirmed dialog")
            elif dialog.far_allow is not None and "INFO" not in dialog.far_allow:
                self._note("dtmf_rfc4733_dropped", "the far side does not allow INFO")
            elif self._send_in_dialog(
                dialog,
                "INFO",
                now,
                extra=[("Content-Type", DTMF_RELAY)],
                body=f"Signal={code}\r\nDuration={duration}\r\n".encode(),
            ):
                self._note("dtmf_rfc4733_sent", code)
            else:
                self._note("dtmf_rfc4733_dropped", "no upstream server available")

    def flow_opened(self, flow_id: int, host: str, port: int, *, secure: bool) -> Flow:
        """A browser connected."""
        return self.flows.open(flow_id, host, port, secure=secure)

    def flow_closed(self, flow_id: int, now: float) -> None:
        """A browser's WebSocket closed: end what it leaves behind."""
        flow = self.flows.close(flow_id)
        if flow is None:
            return
        for dialog in self.dialogs.for_flow(flow_id):
            self.dialogs.remove(dialog)
            self._note("dialog_ended", "flow_closed")
            self._send_bye_for(dialog, now)
            self._media_delete(dialog.call_id, flow_id)
        for ctx in list(self._clients.values()):
            if ctx.final:
                continue
            if ctx.origin_flow == flow_id and ctx.request.method == "INVITE":
                self._cancel(ctx, now)
            elif ctx.to_flow == flow_id and ctx.server is not None:
                self._answer(ctx.server, 480, now, warning="WebSocket closed")
                self._forget_client(ctx)

    def receive_from_flow(self, flow_id: int, data: bytes, now: float) -> None:
        """One SIP message arrived on a browser WebSocket (RFC 7118 §5)."""
        flow = self.flows.get(flow_id)
        if flow is None:
            self._drop("ws", "flow_unknown")
            return
        try:
            msg = parse(data)
        except ParseError as exc:
            self._parse_failed("ws", exc, flow_id=flow_id, reply_to=None, now=now)
            return
        if isinstance(msg, Request):
            self._actions.append(Seen("ws", "request", msg.method))
            self._request_from_flow(flow, msg, now)
        else:
            self._actions.append(Seen("ws", "response", str(msg.status)))
            self._response_from_flow(flow, msg, now)

    def receive_from_upstream(
        self, data: bytes, host: str, port: int, transport: str, now: float
    ) -> None:
        """One SIP message arrived from the switch side (source already allow-listed)."""
        try:
            msg = parse(data)
        except ParseError as exc:
            self._parse_failed("sip", exc, flow_id=None, reply_to=(host, port, transport), now=now)
            return
        if isinstance(msg, Request):
            self._actions.append(Seen("sip", "request", msg.method))
            self._request_from_upstream(msg, (host, port, transport), now)
        else:
            self._actions.append(Seen("sip", "response", str(msg.status)))
            self._response_from_upstream(msg, now)

    @property
    def active_calls(self) -> int:
        return len(self.dialogs)

    # --------------------------------------------------------- from browser

    def _request_from_flow(self, flow: Flow, req: Request, now: float) -> None:
        skey = server_key(req)
        existing = self._servers.get(skey)
        if existing is not None:
            existing.txn.receive_request(req, now)
            self._pump_server(existing, now)
            return
        if req.method == "ACK":
            self._ack_from_flow(flow, req, now)
            return
        # RFC 3581 §4 / RFC 7118 §5: the browser's Via names an unresolvable
        # .invalid host; the response goes back over this connection anyway.
        self._fix_top_via(req, flow.remote_host, flow.remote_port)
        sctx = self._new_server(req, from_flow=flow.flow_id, reply_to=None, reliable=True, now=now)
        if req.method == "CANCEL":
            self._cancel_received(sctx, now)
            return
        if not self._check_max_forwards(sctx, now):
            return
        if req.method == "INVITE":
            if req.to_tag is None and not self._admit_call(sctx, now):
                return
            self._answer(sctx, 100, now)
        fwd = req.copy()
        self._decrement_max_forwards(fwd)  # §16.6 step 3
        self._pop_own_routes(fwd)
        member = self._member_for(fwd, now)
        if member is None:
            self._answer(sctx, 503, now, warning="no upstream server available")
            return
        if fwd.method == "REGISTER":
            self._prepare_register(flow, fwd, member.transport)
        elif fwd.to_tag is None and fwd.method in DIALOG_FORMING:
            self._record_route(fwd, flow, toward_switch=True, transport=member.transport)
        elif fwd.to_tag is not None:
            dialog = self.dialogs.find(flow.flow_id, fwd.call_id, fwd.from_tag, fwd.to_tag)
            if dialog is not None:
                dialog.browser_cseq = max(dialog.browser_cseq, fwd.cseq[0])
                _renumber_toward_far(fwd, dialog)
                if self._absorb_refresh(sctx, dialog, now):
                    return
                if fwd.method == "BYE":
                    self.dialogs.remove(dialog)
                    self._note("dialog_ended", "bye_from_browser")
                if fwd.method == "INFO" and self._dtmf_info(
                    sctx,
                    flow.flow_id,
                    lambda now: self._relay_from_flow(sctx, fwd, member, now),
                    now,
                ):
                    return
        self._relay_from_flow(sctx, fwd, member, now)

    def _relay_from_flow(self, sctx: _Server, fwd: Request, member: PoolMember, now: float) -> None:
        """Forward a browser's request toward ``member`` (through the media layer if it
        carries SDP); the tail of :meth:`_request_from_flow`."""
        assert sctx.from_flow is not None
        if fwd.method == "BYE":
            self._media_delete(fwd.call_id, sctx.from_flow)
        flow_id = sctx.from_flow

        def forward(ok: bool, now: float) -> None:
            if sctx.final_sent or self.flows.get(flow_id) is None:
                self._media_delete(fwd.call_id, flow_id, only_if_initial=fwd)
                return  # cancelled or the browser left while the media layer worked
            if not ok:
                self._answer(sctx, 488, now, warning=f"media: {self.media_error}"[:200])
                return
            client = _Client(
                txn=None,  # type: ignore[arg-type]
                request=fwd,
                server=sctx,
                member=member,
                origin_flow=flow_id,
                media_call=self._media_call(fwd.call_id, flow_id) if _has_sdp(fwd) else None,
            )
            sctx.client = client
            if fwd.method == "INVITE" and fwd.to_tag is None:
                self.pending_invites += 1
            self._send_upstream(client, member, now)

        self._through_media(
            fwd, flow_id, toward_switch=True, offer=_is_offer(fwd), then=forward, now=now
        )

    def _ack_from_flow(self, flow: Flow, req: Request, now: float) -> None:
        """ACK to a 2xx: its own transaction, forwarded statelessly (§16.11)."""
        fwd = req.copy()
        self._fix_top_via(fwd, flow.remote_host, flow.remote_port)
        if not self._decrement_max_forwards(fwd):
            self._drop("ws", "max_forwards")
            return
        dialog = self.dialogs.find(flow.flow_id, fwd.call_id, fwd.from_tag, fwd.to_tag)
        if dialog is not None:
            _renumber_toward_far(fwd, dialog)
        self._pop_own_routes(fwd)
        member = self._member_for(fwd, now)
        if member is None:
            self._drop("ws", "no_upstream")
            return
        transport = member.transport
        branch = make_branch(req.top_via.branch.encode() if req.top_via.branch else b"ack")

        def forward(ok: bool, now: float) -> None:
            # An ACK cannot be refused: without media it still completes the dialog.
            fwd.headers.prepend("Via", self._upstream_via(transport, branch))
            self._emit_upstream(member.host, member.port, transport, bytes(fwd))

        # An ACK's SDP is the answer to a 2xx offer (late offer, RFC 3261 §13.2.1).
        self._through_media(
            fwd, flow.flow_id, toward_switch=True, offer=False, then=forward, now=now
        )

    def _response_from_flow(self, flow: Flow, resp: Response, now: float) -> None:
        via = resp.top_via
        ctx = self._clients.get((via.branch or "", resp.cseq[1]))
        if ctx is None or ctx.to_flow != flow.flow_id:
            self._drop("ws", "no_transaction")
            return
        ctx.txn.receive_response(resp, now)
        self._pump_client(ctx, now)

    # --------------------------------------------------------- from switch

    def _request_from_upstream(
        self, req: Request, source: tuple[str, int, str], now: float
    ) -> None:
        skey = server_key(req)
        existing = self._servers.get(skey)
        if existing is not None:
            existing.txn.receive_request(req, now)
            self._pump_server(existing, now)
            return
        self._fix_top_via(req, source[0], source[1], only_if_needed=True)
        if req.method == "ACK":
            self._ack_from_upstream(req, now)
            return
        reliable = source[2] != "udp"
        sctx = self._new_server(req, from_flow=None, reply_to=source, reliable=reliable, now=now)
        if req.method == "CANCEL":
            self._cancel_received(sctx, now)
            return
        if not self._check_max_forwards(sctx, now):
            return
        fwd = req.copy()
        self._decrement_max_forwards(fwd)  # §16.6 step 3
        token = self._pop_own_routes(fwd)
        if token is None:
            token = self._token_from_ruri(fwd)
        if token is None:
            # Not addressed to a browser: only OPTIONS keepalives for ourselves.
            if req.method == "OPTIONS":
                self._answer(sctx, 200, now)
            else:
                self._answer(sctx, 404, now, warning="no flow token in Route or Request-URI")
            return
        flow = self.flows.by_token(token)
        if flow is None:
            # RFC 5626 §5.3: the flow named in the Route is gone (or never was).
            self._answer(sctx, 430, now, warning="flow failed")
            return
        if req.method == "INVITE":
            if req.to_tag is None and not self._admit_call(sctx, now):
                return
            self._answer(sctx, 100, now)
        if self.settings.mode == "contact-rewrite":
            original = flow.contacts.get(token)
            if original is not None and _uri_user(fwd.uri) == token:
                fwd.uri = original
        if fwd.to_tag is None and fwd.method in DIALOG_FORMING:
            self._record_route(fwd, flow, toward_switch=False, transport=source[2])
        elif fwd.to_tag is not None:
            dialog = self.dialogs.find(flow.flow_id, fwd.call_id, fwd.from_tag, fwd.to_tag)
            if dialog is not None:
                dialog.far_cseq = max(dialog.far_cseq, fwd.cseq[0])
                if fwd.method == "BYE":
                    self.dialogs.remove(dialog)
                    self._note("dialog_ended", "bye_from_switch")
        if fwd.method == "BYE":
            self._media_delete(fwd.call_id, flow.flow_id)
        flow_id = flow.flow_id

        def forward(ok: bool, now: float) -> None:
            target = self.flows.get(flow_id)
            if sctx.final_sent or target is None:
                self._media_delete(fwd.call_id, flow_id, only_if_initial=fwd)
                if not sctx.final_sent:
                    self._answer(sctx, 430, now, warning="flow failed")
                return
            if not ok:
                self._answer(sctx, 488, now, warning=f"media: {self.media_error}"[:200])
                return
            branch = self._new_branch()
            fwd.headers.prepend("Via", self._ws_via(target, branch))
            client = _Client(
                txn=None,  # type: ignore[arg-type]
                request=fwd,
                server=sctx,
                to_flow=flow_id,
                media_call=self._media_call(fwd.call_id, flow_id) if _has_sdp(fwd) else None,
            )
            sctx.client = client
            if fwd.method == "INVITE" and fwd.to_tag is None:
                self.pending_invites += 1
            self._start_client(client, branch, reliable=True, now=now)

        self._through_media(
            fwd, flow_id, toward_switch=False, offer=_is_offer(fwd), then=forward, now=now
        )

    def _ack_from_upstream(self, req: Request, now: float) -> None:
        fwd = req.copy()
        if not self._decrement_max_forwards(fwd):
            self._drop("sip", "max_forwards")
            return
        token = self._pop_own_routes(fwd) or self._token_from_ruri(fwd)
        flow = self.flows.by_token(token)
        if flow is None:
            self._drop("sip", "flow_gone")
            return
        branch = make_branch(req.top_via.branch.encode() if req.top_via.branch else b"ack")
        flow_id = flow.flow_id

        def forward(ok: bool, now: float) -> None:
            target = self.flows.get(flow_id)
            if target is None:
                return
            fwd.headers.prepend("Via", self._ws_via(target, branch))
            self._actions.append(SendToFlow(flow_id, bytes(fwd)))

        self._through_media(fwd, flow_id, toward_switch=False, offer=False, then=forward, now=now)

    def _response_from_upstream(self, resp: Response, now: float) -> None:
        via = resp.top_via
        branch = via.branch or ""
        ctx = self._clients.get((branch, resp.cseq[1]))
        if ctx is not None:
            ctx.txn.receive_response(resp, now)
            self._pump_client(ctx, now)
            return
        flow_id = self._accepted.get(branch)
        if flow_id is not None and 200 <= resp.status < 300 and resp.cseq[1] == "INVITE":
            # RFC 6026: a retransmitted 2xx is forwarded statelessly.
            fwd = resp.copy()
            fwd.headers.pop_first("Via")
            dialog = self.dialogs.find(flow_id, fwd.call_id, fwd.from_tag, fwd.to_tag)
            sent = fwd.cseq[0]
            if dialog is not None and sent in dialog.shifted_invites.values():
                own = next(k for k, v in dialog.shifted_invites.items() if v == sent)
                fwd.headers.set("CSeq", f"{own} INVITE")
            if self.flows.get(flow_id) is not None:
                self._actions.append(SendToFlow(flow_id, bytes(fwd)))
            return
        self._drop("sip", "no_transaction")

    # ------------------------------------------------------- transactions

    def _new_server(
        self,
        req: Request,
        *,
        from_flow: int | None,
        reply_to: tuple[str, int, str] | None,
        reliable: bool,
        now: float,
    ) -> _Server:
        txn = ServerTransaction(req, reliable=reliable, timers=self.settings.timers, now=now)
        sctx = _Server(txn=txn, request=req, from_flow=from_flow, reply_to=reply_to)
        self._servers[txn.key] = sctx
        return sctx

    def _start_client(self, ctx: _Client, branch: str, *, reliable: bool, now: float) -> None:
        ctx.txn = ClientTransaction(
            ctx.request, reliable=reliable, timers=self.settings.timers, now=now
        )
        self._clients[(branch, ctx.request.method)] = ctx
        self._pump_client(ctx, now)

    def _send_upstream(self, ctx: _Client, member: PoolMember, now: float) -> None:
        """(Re)send a client request to ``member`` with a fresh branch."""
        ctx.member = member
        ctx.tried = ctx.tried + (member,)
        transport = member.transport
        req = ctx.request
        branch = self._new_branch()
        # Replace our Via (failover) or add it.
        if ctx.txn is not None:
            req.headers.pop_first("Via")
        req.headers.prepend("Via", self._upstream_via(transport, branch))
        data_len = len(bytes(req))
        if (
            transport == "udp"
            and self.settings.tcp_fallback
            and data_len > self.settings.udp_mtu
            and req.method != "ACK"
        ):
            # RFC 3261 §18.1.1: a request within 200 bytes of the path MTU, or
            # larger than 1300 bytes, MUST be sent over a congestion-controlled
            # transport. Our Via must say so.
            transport = "tcp"
            req.headers.pop_first("Via")
            req.headers.prepend("Via", self._upstream_via(transport, branch))
        ctx.transport = transport
        self._start_client(ctx, branch, reliable=transport != "udp", now=now)

    def _pump_client(self, ctx: _Client, now: float) -> None:
        txn = ctx.txn
        for data in txn.data_to_send():
            if ctx.to_flow is not None:
                if self.flows.get(ctx.to_flow) is not None:
                    self._actions.append(SendToFlow(ctx.to_flow, data))
            elif ctx.member is not None:
                self._emit_upstream(ctx.member.host, ctx.member.port, ctx.transport, data)
        while (event := txn.next_event()) is not None:
            if isinstance(event, tev.ResponseReceived):
                self._client_response(ctx, event.response, now)
            elif isinstance(event, tev.Timeout):
                self._client_timeout(ctx, now)
            elif isinstance(event, tev.Terminated):
                self._forget_client(ctx, txn)
            if ctx.txn is not txn:
                return  # failed over: the new transaction has been pumped already
        timer = txn.get_timer()
        if timer is not None and self._clients.get(txn.key) is ctx:
            self._push(timer, "client", txn.key)

    def _pump_server(self, sctx: _Server, now: float) -> None:
        txn = sctx.txn
        for data in txn.data_to_send():
            if sctx.from_flow is not None:
                if self.flows.get(sctx.from_flow) is not None:
                    self._actions.append(SendToFlow(sctx.from_flow, data))
            elif sctx.reply_to is not None:
                self._emit_upstream(*sctx.reply_to, data)
        while (event := txn.next_event()) is not None:
            if isinstance(event, tev.Terminated):
                if self._servers.get(txn.key) is sctx:
                    del self._servers[txn.key]
        timer = txn.get_timer()
        if timer is not None and self._servers.get(txn.key) is sctx:
            self._push(timer, "server", txn.key)

    def _forget_client(self, ctx: _Client, txn: ClientTransaction | None = None) -> None:
        txn = txn or ctx.txn
        if ctx.txn is not txn:
            return
        if self._clients.get(txn.key) is ctx:
            del self._clients[txn.key]
        if (
            not ctx.final
            and ctx.server is not None
            and ctx.request.method == "INVITE"
            and ctx.request.to_tag is None
        ):
            ctx.final = True
            self.pending_invites -= 1

    def _client_response(self, ctx: _Client, resp: Response, now: float) -> None:
        status = resp.status
        if ctx.probe:
            if ctx.member is not None and self.pool.mark_up(ctx.member):
                self._note("upstream_up", ctx.member.name)
            return
        if ctx.member is not None and status != 503 and self.pool.mark_up(ctx.member):
            self._note("upstream_up", ctx.member.name)
        sctx = ctx.server
        if sctx is None:
            return  # our own BYE/CANCEL: nothing to relay
        if status < 200:
            ctx.provisional = True
            if ctx.cancel_pending:
                ctx.cancel_pending = False
                self._cancel(ctx, now)
            if status == 100:
                return  # hop by hop (§16.7 step 5)
        else:
            if status == 503 and ctx.member is not None and self._failover(ctx, now):
                return
            if not ctx.final and ctx.request.method == "INVITE" and ctx.request.to_tag is None:
                self.pending_invites -= 1
                if status >= 300 and ctx.media_call is not None:
                    self._media_delete_later(ctx.media_call, now)
            ctx.final = True
        fwd = resp.copy()
        fwd.headers.pop_first("Via")
        if ctx.to_flow is None:
            self._response_toward_browser(ctx, sctx, fwd, now)
        else:
            self._response_toward_switch(ctx, sctx, fwd, now)

    def _response_toward_browser(
        self, ctx: _Client, sctx: _Server, resp: Response, now: float
    ) -> None:
        method = resp.cseq[1]
        flow = self.flows.get(sctx.from_flow) if sctx.from_flow is not None else None
        if flow is None:
            return
        if method == "REGISTER" and 200 <= resp.status < 300:
            self._restore_register_contacts(flow, resp)
            if self.settings.flow_timer and _has_outbound(sctx.request):
                resp.headers.set("Flow-Timer", str(self.settings.flow_timer))
        if method == "INVITE" and 200 <= resp.status < 300:
            self._accepted[ctx.txn.key[0]] = flow.flow_id
            self._push(now + ACCEPTED_T1 * self.settings.timers.t1, "accepted", ctx.txn.key[0])
            # The browser is the caller: its route set is the 2xx's
            # Record-Route reversed (§12.1.2), from the entries past ours.
            self._record_dialog(
                flow.flow_id,
                resp,
                browser_is_caller=True,
                browser_target=_contact_uri(sctx.request) or "",
                far_target=_contact_uri(resp) or sctx.request.uri,
                route_set=self._strip_leading_own(
                    list(reversed(resp.headers.get_all("Record-Route")))
                ),
                far_allow=_allow(resp),
                now=now,
            )
        if resp.status >= 200:
            sctx.final_sent = True
        browser_cseq = sctx.request.cseq[0]
        if resp.cseq[0] != browser_cseq:
            # The request went out shifted past the gateway's own INFOs (Dialog.shift_cseq).
            resp.headers.set("CSeq", f"{browser_cseq} {method}")
        self._relay_response(ctx, sctx, resp, sctx.from_flow, toward_switch=False, now=now)

    def _relay_response(
        self,
        ctx: _Client,
        sctx: _Server,
        resp: Response,
        flow_id: int | None,
        *,
        toward_switch: bool,
        now: float,
    ) -> None:
        """Send a response on through its server transaction, via the media
        layer when it carries SDP: an answer to the request's offer, or an
        offer of its own when the request had none (late offer, §13.2.1)."""

        def send(ok: bool, now: float) -> None:
            # A response cannot be refused; without media the call still connects.
            sctx.txn.send_response(resp, now)
            self._pump_server(sctx, now)

        if (
            flow_id is None
            or not self.settings.media
            or resp.status >= 300
            or resp.cseq[1] not in MEDIA_METHODS
            or not _has_sdp(resp)
        ):
            send(True, now)
            return
        self._through_media(
            resp,
            flow_id,
            toward_switch=toward_switch,
            offer=not _has_sdp(ctx.request),
            then=send,
            now=now,
        )

    def _response_toward_switch(
        self, ctx: _Client, sctx: _Server, resp: Response, now: float
    ) -> None:
        if resp.cseq[1] == "INVITE" and 200 <= resp.status < 300 and ctx.to_flow is not None:
            req = sctx.request
            # The browser is the callee: its route set is the INVITE's
            # Record-Route in order (§12.1.1), as received, before ours.
            self._record_dialog(
                ctx.to_flow,
                resp,
                browser_is_caller=False,
                browser_target=_contact_uri(resp) or "",
                far_target=_contact_uri(req) or "",
                route_set=req.headers.get_all("Record-Route"),
                far_allow=_allow(req),
                now=now,
            )
        if resp.status >= 200:
            sctx.final_sent = True
        self._relay_response(ctx, sctx, resp, ctx.to_flow, toward_switch=True, now=now)

    def _record_dialog(
        self,
        flow_id: int,
        resp: Response,
        *,
        browser_is_caller: bool,
        browser_target: str,
        far_target: str,
        route_set: list[str],
        far_allow: frozenset[str] | None,
        now: float,
    ) -> None:
        """Remember a dialog a 2xx to INVITE confirmed, once per flow."""
        if not (resp.to_tag and resp.from_tag):
            return
        if self.dialogs.find(flow_id, resp.call_id, resp.from_tag, resp.to_tag) is not None:
            return  # a re-INVITE's 2xx, or a retransmission
        browser, far = ("From", "To") if browser_is_caller else ("To", "From")
        self.dialogs.add(
            Dialog(
                call_id=resp.call_id,
                browser_tag=resp.from_tag if browser_is_caller else resp.to_tag,
                far_tag=resp.to_tag if browser_is_caller else resp.from_tag,
                flow_id=flow_id,
                browser_is_caller=browser_is_caller,
                browser_header=resp.headers.get(browser) or "",
                far_header=resp.headers.get(far) or "",
                far_target=far_target,
                route_set=route_set,
                browser_cseq=resp.cseq[0] if browser_is_caller else 0,
                created=now,
                far_allow=far_allow,
                browser_target=browser_target,
                far_cseq=0 if browser_is_caller else resp.cseq[0],
            )
        )
        self._note("dialog_started", "outbound" if browser_is_caller else "inbound")

    def _client_timeout(self, ctx: _Client, now: float) -> None:
        if ctx.member is not None:
            if self.pool.mark_down(ctx.member, now):
                self._note("upstream_down", ctx.member.name)
        if ctx.probe or ctx.server is None or ctx.final:
            return
        if ctx.member is not None and not ctx.provisional and self._failover(ctx, now):
            return
        # RFC 3261 §16.8: a timeout counts as a 408 from that branch.
        if not ctx.final and ctx.request.method == "INVITE" and ctx.request.to_tag is None:
            self.pending_invites -= 1
            if ctx.media_call is not None:
                self._media_delete_later(ctx.media_call, now)
        ctx.final = True
        self._answer(ctx.server, 408, now)

    def _failover(self, ctx: _Client, now: float) -> bool:
        """Retry an initial request on the next pool member (RFC 3263 §4.3)."""
        if ctx.request.to_tag is not None or ctx.request.method == "CANCEL":
            return False
        member = self.pool.pick(now, exclude=ctx.tried)
        if member is None:
            return False
        old = ctx.member
        if ctx.txn is not None and self._clients.get(ctx.txn.key) is ctx:
            del self._clients[ctx.txn.key]
        if old is not None:
            old.failovers += 1
            self._note("failover", f"{old.name} -> {member.name}")
        self._send_upstream(ctx, member, now)
        return True

    def _absorb_refresh(self, sctx: _Server, dialog: Dialog, now: float) -> bool:
        """Answer a browser's session-refresh UPDATE the far side cannot take.

        JsSIP refreshes RFC 4028 session timers with a body-less UPDATE even
        when the far side never agreed to timers; a switch that does not
        allow UPDATE then answers 405/501 or nothing, and the browser ends
        the call with 408 after ~90 s. Such a refresh changes nothing in the
        session, so the gateway answers it itself (RFC 4028 §9 style: echo
        Session-Expires) and the far side never sees it.
        """
        req = sctx.request
        if req.method != "UPDATE" or req.body or dialog.far_allow is None:
            return False
        if "UPDATE" in dialog.far_allow:
            return False
        extra: list[tuple[str, str]] = []
        expires = req.headers.get("Session-Expires")
        if expires is not None:
            extra = [("Session-Expires", expires), ("Require", "timer")]
        self._answer(sctx, 200, now, extra=extra)
        self._note("session_refresh_absorbed")
        return True

    def _dtmf_info(
        self, sctx: _Server, flow_id: int, relay: Callable[[float], None], now: float
    ) -> bool:
        """Turn a browser's DTMF INFO into RFC 4733 toward the switch (PITFALLS 10).

        SIP.js and JsSIP send DTMF as INFO by default; many switches and carriers only
        act on RFC 4733 telephone-events. With ``dtmf_info_to_rfc4733`` the media layer
        is asked to ``play DTMF`` into the call's RTP toward the switch and the gateway
        answers the INFO 200 itself. When it cannot (no telephone-event on the switch
        leg, media layer error), ``relay`` forwards the INFO unchanged: the digit is never
        lost. Returns True when the request was taken over here.
        """
        req = sctx.request
        if not (self.settings.media and self.settings.dtmf_info_to_rfc4733):
            return False
        call = self._media_call(req.call_id, flow_id)
        if call not in self.media_calls:
            return False
        parsed = parse_dtmf_info(req.headers.get("Content-Type"), req.body)
        if parsed is None:
            return False
        digit, duration = parsed
        token = next(self._media_tokens)

        def resume(reply: dict[str, object] | None, now: float) -> None:
            if sctx.final_sent or self.flows.get(flow_id) is None:
                return
            if reply is not None and reply.get("result") == "ok":
                self._answer(sctx, 200, now)
                self._note("dtmf_info_converted", digit)
                return
            reason = reply.get("error-reason") if reply is not None else "no reply"
            self._note("dtmf_info_relayed", str(reason))
            relay(now)

        self._media_waits[token] = resume
        self._actions.append(
            MediaCommand(
                token,
                {
                    "command": "play DTMF",
                    "call-id": call,
                    "from-tag": req.from_tag or "",
                    "code": digit,
                    "duration": duration,
                },
            )
        )
        return True

    # ----------------------------------------------------------- CANCEL

    def _cancel_received(self, sctx: _Server, now: float) -> None:
        """RFC 3261 §16.10: answer the CANCEL, then cancel the pending branch."""
        req = sctx.request
        branch, sent_by, _ = sctx.txn.key
        invite = self._servers.get((branch, sent_by, "INVITE"))
        if invite is None:
            self._answer(sctx, 481, now)
            return
        self._answer(sctx, 200, now)
        if not invite.final_sent:
            ctx = invite.client
            if ctx is None:
                # Still with the media layer, never forwarded: end it here.
                self._answer(invite, 487, now)
            elif not ctx.final:
                self._cancel(ctx, now)
        del req

    def _cancel(self, ctx: _Client, now: float) -> None:
        """Send CANCEL for a pending INVITE client transaction (§9.1)."""
        if ctx.final:
            return
        if not ctx.provisional:
            ctx.cancel_pending = True  # §9.1: not before a provisional response
            return
        cancel = make_cancel(ctx.request)
        local = _Client(
            txn=None,  # type: ignore[arg-type]
            request=cancel,
            server=None,
            to_flow=ctx.to_flow,
            member=ctx.member,
        )
        local.transport = ctx.transport
        reliable = ctx.to_flow is not None or local.transport != "udp"
        self._start_client(local, ctx.txn.key[0], reliable=reliable, now=now)

    # ------------------------------------------------------- flow death

    def _send_bye_for(
        self,
        dialog: Dialog,
        now: float,
        *,
        reason: str = 'SIP;cause=480;text="WebSocket closed"',
    ) -> None:
        """End a dialog toward the switch on the browser's behalf (§15.1.1)."""
        self._send_in_dialog(dialog, "BYE", now, extra=[("Reason", reason)])

    def _send_in_dialog(
        self,
        dialog: Dialog,
        method: str,
        now: float,
        *,
        extra: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> bool:
        """Send a request of our own toward the far side within ``dialog``, in the
        browser's name (§12.2.1.1: its From/To, the far target, the route set, the next
        CSeq past the browser's). Its responses are absorbed. False: no upstream."""
        member = self._member_for_routes(dialog.route_set, now)
        if member is None:
            return False
        headers_src = (
            f"{method} {dialog.far_target} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.settings.sip_host}:{self.settings.sip_port};branch=z9hG4bKx\r\n"
            f"Max-Forwards: {DEFAULT_MAX_FORWARDS}\r\n"
            + "".join(f"Route: {r}\r\n" for r in dialog.route_set)
            + f"From: {dialog.browser_header}\r\n"
            f"To: {dialog.far_header}\r\n"
            f"Call-ID: {dialog.call_id}\r\n"
            f"CSeq: {dialog.next_far_cseq()} {method}\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in extra)
            + f"User-Agent: {self.settings.user_agent}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        request = parse(headers_src.encode() + body)
        assert isinstance(request, Request)
        request.headers.pop_first("Via")
        local = _Client(txn=None, request=request, server=None)  # type: ignore[arg-type]
        self._send_upstream(local, member, now)
        return True

    # ------------------------------------------------------------ media

    def _dialogs_of(self, call: str, flow_id: int) -> list[Dialog]:
        """The confirmed dialogs of media call ``call`` on ``flow_id``."""
        return [
            d
            for d in self.dialogs.for_flow(flow_id)
            if self._media_call(d.call_id, flow_id) == call
        ]

    @staticmethod
    def _media_call(call_id: str, flow_id: int) -> str:
        """The media layer's call id: a call between two browsers on this
        gateway crosses it twice with one Call-ID, one media session per flow."""
        return f"{call_id}~{flow_id:x}"

    def _through_media(
        self,
        msg: Request | Response,
        flow_id: int,
        *,
        toward_switch: bool,
        offer: bool,
        then: Callable[[bool, float], None],
        now: float,
    ) -> None:
        """Run ``then(ok, now)`` once ``msg``'s SDP is rewritten by the media
        layer; at once when media is off or ``msg`` carries no SDP."""
        method = msg.method if isinstance(msg, Request) else msg.cseq[1]
        if not self.settings.media or method not in MEDIA_METHODS or not _has_sdp(msg):
            then(True, now)
            return
        call = self._media_call(msg.call_id, flow_id)
        # NG keys by the offerer's tag: a request's offer is its From side's, a
        # response's (late offer) its To side's; an answer names both.
        a, b = (
            (msg.from_tag, msg.to_tag) if isinstance(msg, Request) else (msg.to_tag, msg.from_tag)
        )
        offerer, answerer = (a, b) if offer else (b, a)
        command: dict[str, object] = {
            "command": "offer" if offer else "answer",
            "call-id": call,
            "from-tag": offerer or "",
            "sdp": msg.body.decode("utf-8", "replace"),
        }
        if not offer:
            command["to-tag"] = answerer or ""
        if toward_switch:
            command.update(
                {
                    "transport-protocol": "RTP/AVP",
                    "ICE": "remove",
                    "DTLS": "off",
                    "rtcp-mux": ["demux"],
                }
            )
        else:
            command.update(
                {"transport-protocol": "UDP/TLS/RTP/SAVPF", "ICE": "force", "rtcp-mux": ["offer"]}
            )
        if offer:
            self.media_calls[call] = flow_id
            self._media_delete_due.pop(call, None)  # a retry re-offers: keep the session
        if self.settings.dtmf_rfc4733_to_info and not toward_switch:
            # The switch's SDP on its way to the browser: where it has no telephone-event
            # the media layer gives the browser one and reads its events (dtmf_events).
            command["flags"] = ["DTMF-INFO"]
        token = next(self._media_tokens)

        def resume(reply: dict[str, object] | None, now: float) -> None:
            if not offer and reply is not None and reply.get("result") == "ok":
                # Every answer tells whether the call's browser digits are read for INFO.
                if reply.get("dtmf") == "info" and call in self.media_calls:
                    self.dtmf_info_calls.add(call)
                else:
                    self.dtmf_info_calls.discard(call)
            sdp = reply.get("sdp") if reply is not None and reply.get("result") == "ok" else None
            if isinstance(sdp, bytes):
                sdp = sdp.decode("utf-8", "replace")
            if isinstance(sdp, str):
                msg.body = sdp.encode()
                then(True, now)
                return
            reason = reply.get("error-reason") if reply is not None else "no reply"
            self._note("media_failed", f"{command['command']}: {reason}")
            self.media_error = str(reason)
            then(False, now)

        self._media_waits[token] = resume
        self._actions.append(MediaCommand(token, command))

    def _media_delete(
        self, call_id: str, flow_id: int, *, only_if_initial: Request | None = None
    ) -> None:
        if only_if_initial is not None and only_if_initial.to_tag is not None:
            return  # a failed re-offer leaves the call and its media alone
        self._media_delete_id(self._media_call(call_id, flow_id))

    def _media_delete_later(self, call: str, now: float) -> None:
        when = now + MEDIA_DELETE_DELAY
        self._media_delete_due[call] = when
        self._push(when, "media_delete", call)

    def _media_delete_id(self, call: str) -> None:
        self._media_delete_due.pop(call, None)
        self.dtmf_info_calls.discard(call)
        if self.media_calls.pop(call, None) is not None:
            self._actions.append(MediaCommand(0, {"command": "delete", "call-id": call}))

    def _send_bye_to_browser(self, dialog: Dialog, now: float) -> None:
        """End a dialog toward the browser on the far side's behalf."""
        flow = self.flows.get(dialog.flow_id)
        if flow is None or not dialog.browser_target:
            return
        text = (
            f"BYE {dialog.browser_target} SIP/2.0\r\n"
            f"Via: SIP/2.0/WSS {self.settings.ws_host};branch=z9hG4bKx\r\n"
            f"Max-Forwards: {DEFAULT_MAX_FORWARDS}\r\n"
            f"From: {dialog.far_header}\r\n"
            f"To: {dialog.browser_header}\r\n"
            f"Call-ID: {dialog.call_id}\r\n"
            f"CSeq: {dialog.far_cseq + 1} BYE\r\n"
            'Reason: SIP;cause=408;text="media timeout"\r\n'
            "Content-Length: 0\r\n\r\n"
        )
        bye = parse(text.encode())
        assert isinstance(bye, Request)
        bye.headers.pop_first("Via")
        branch = self._new_branch()
        bye.headers.prepend("Via", self._ws_via(flow, branch))
        local = _Client(txn=None, request=bye, server=None, to_flow=flow.flow_id)  # type: ignore[arg-type]
        self._start_client(local, branch, reliable=True, now=now)

    # ----------------------------------------------------------- probes

    def _send_probes(self, now: float) -> None:
        for member in self.pool.members:
            host = f"[{member.host}]" if ":" in member.host else member.host
            text = (
                f"OPTIONS sip:{host}:{member.port};transport={member.transport} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {self.settings.sip_host};branch=z9hG4bKx\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:ping@{self.settings.sip_host}>;tag={secrets.token_hex(6)}\r\n"
                f"To: <sip:{host}:{member.port}>\r\n"
                f"Call-ID: probe-{secrets.token_hex(8)}@{self.settings.sip_host}\r\n"
                "CSeq: 1 OPTIONS\r\n"
                f"User-Agent: {self.settings.user_agent}\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            req = parse(text.encode())
            assert isinstance(req, Request)
            req.headers.pop_first("Via")
            ctx = _Client(txn=None, request=req, server=None, probe=True)  # type: ignore[arg-type]
            ctx.tried = ()
            self._send_upstream(ctx, member, now)

    # --------------------------------------------------------- rewriting

    def _prepare_register(self, flow: Flow, req: Request, transport: str) -> None:
        """Path (RFC 3327 §5) or Contact rewriting, plus RFC 5626 bookkeeping."""
        contacts = req.headers.get_all("Contact")
        for value in contacts:
            if value.strip() == "*":
                continue
            try:
                na = parse_name_addr(value)
            except ParseError:
                continue
            if na.param("+sip.instance") is not None:
                flow.instance = na.param("+sip.instance")
                flow.reg_id = na.param("reg-id")
        if self.settings.mode == "path":
            params = ";lr"
            if _has_outbound(req):
                params += ";ob"  # RFC 5626 §5.1: the edge proxy adds ;ob
            # The switch reaches us over the transport of the pool member
            # (a UDP member that needed TCP for one big request still uses UDP).
            req.headers.prepend(
                "Path", f"<sip:{flow.token}@{self._sip_hostport(transport)}{params}>"
            )
            supported = req.headers.get_all("Supported")
            if "path" not in {s.strip().lower() for s in supported}:
                req.headers.add("Supported", "path")
            return
        # contact-rewrite: the switch stores a Contact naming us; we keep the
        # browser's own Contact on the flow to restore it on the way back. The
        # gateway, not the browser, is then the registrar's first hop and it
        # offers no outbound flow to it: reg-id would earn a 439 (RFC 5626 §6).
        supported = [
            t.strip()
            for v in req.headers.get_all("Supported")
            for t in v.split(",")
            if t.strip() and t.strip().lower() != "outbound"
        ]
        req.headers.remove("Supported")
        if supported:
            req.headers.add("Supported", ", ".join(supported))
        rewritten: list[str] = []
        for value in contacts:
            if value.strip() == "*":
                rewritten.append(value)
                continue
            try:
                na = parse_name_addr(value)
            except ParseError:
                rewritten.append(value)
                continue
            flow.contacts[flow.token] = str(na.uri)
            new_uri = SipURI.parse(f"sip:{flow.token}@{self._sip_hostport(transport)}")
            kept = [(k, v) for k, v in na.params if k.lower() != "reg-id"]
            rewritten.append(str(NameAddr(na.display, new_uri, kept)))
        if rewritten:
            req.headers.remove("Contact")
            for value in rewritten:
                req.headers.add("Contact", value)

    def _restore_register_contacts(self, flow: Flow, resp: Response) -> None:
        if self.settings.mode != "contact-rewrite":
            return
        values = resp.headers.get_all("Contact")
        if not values:
            return
        restored: list[str] = []
        for value in values:
            try:
                na = parse_name_addr(value)
            except ParseError:
                restored.append(value)
                continue
            user = na.uri.user if isinstance(na.uri, SipURI) else None
            original = flow.contacts.get(user or "")
            if original is not None and self._is_own_uri(na.uri):
                restored.append(str(NameAddr(na.display, SipURI.parse(original), na.params)))
            else:
                restored.append(value)
        resp.headers.remove("Contact")
        for value in restored:
            resp.headers.add("Contact", value)

    def _record_route(
        self, req: Request, flow: Flow, *, toward_switch: bool, transport: str | None = None
    ) -> None:
        """RFC 5658 double Record-Route, both entries carrying the flow token.

        The entry nearest the browser must be on top of the list the browser
        sees in order, i.e. the WebSocket entry is pushed first when the
        request travels toward the switch and last when it travels toward
        the browser.
        """
        ws_entry = f"<sip:{flow.token}@{self.settings.ws_host};transport=ws;lr;r2=on>"
        sip_entry = f"<sip:{flow.token}@{self._sip_hostport(transport or 'udp')};lr;r2=on>"
        if toward_switch:
            req.headers.prepend("Record-Route", ws_entry)
            req.headers.prepend("Record-Route", sip_entry)
        else:
            req.headers.prepend("Record-Route", sip_entry)
            req.headers.prepend("Record-Route", ws_entry)

    def _pop_own_routes(self, req: Request) -> str | None:
        """Remove our entries from the top of Route (§16.4); return the token seen."""
        token: str | None = None
        while True:
            top = req.headers.get("Route")
            if top is None:
                return token
            try:
                na = parse_name_addr(top)
            except ParseError:
                return token
            if not isinstance(na.uri, SipURI) or not self._is_own_uri(na.uri):
                return token
            req.headers.pop_first("Route")
            if na.uri.user:
                token = token or na.uri.user

    def _strip_leading_own(self, routes: list[str]) -> list[str]:
        """Drop our entries at the head of a route set (this hop's pair only:
        a call between two browsers on this gateway has our entries further
        down too, and those must stay)."""
        i = 0
        while i < len(routes) and self._is_own_route(routes[i]):
            i += 1
        return routes[i:]

    def _token_from_ruri(self, req: Request) -> str | None:
        try:
            uri = SipURI.parse(req.uri)
        except ParseError:
            return None
        return uri.user if self._is_own_uri(uri) else None

    def _is_own_route(self, value: str) -> bool:
        try:
            na = parse_name_addr(value)
        except ParseError:
            return False
        return isinstance(na.uri, SipURI) and self._is_own_uri(na.uri)

    def _is_own_uri(self, uri: SipURI | str) -> bool:
        if not isinstance(uri, SipURI):
            return False
        host = uri.host.strip("[]").lower()
        s = self.settings
        if host == s.ws_host.lower():
            return True
        if host != s.sip_host.strip("[]").lower():
            return False
        port = uri.port or (5061 if uri.scheme == "sips" else 5060)
        return port in (s.sip_port, s.sip_tls_port)

    # ------------------------------------------------------------ helpers

    def _member_for(self, req: Request, now: float) -> PoolMember | None:
        """The pool member a browser request goes to: the one its Route names
        if that is a member, else the first healthy one (never elsewhere)."""
        return self._member_for_routes(req.headers.get_all("Route"), now)

    def _member_for_routes(self, routes: list[str], now: float) -> PoolMember | None:
        if routes:
            try:
                na = parse_name_addr(routes[0])
            except ParseError:
                na = None
            if na is not None and isinstance(na.uri, SipURI):
                member = self.pool.find(na.uri.host.strip("[]"), na.uri.port)
                if member is None and na.uri.port is None:
                    member = self.pool.find(na.uri.host.strip("[]"), None)
                if member is not None:
                    return member
        return self.pool.pick(now)

    def _check_max_forwards(self, sctx: _Server, now: float) -> bool:
        req = sctx.request
        value = req.headers.get("Max-Forwards")
        if value is not None:
            try:
                hops = int(value.strip())
            except ValueError:
                self._answer(sctx, 400, now, warning="bad Max-Forwards")
                return False
            if hops <= 0:
                self._answer(sctx, 483, now)  # §16.3 step 3
                return False
        return True

    @staticmethod
    def _decrement_max_forwards(req: Request) -> bool:
        value = req.headers.get("Max-Forwards")
        if value is None:
            req.headers.set("Max-Forwards", str(DEFAULT_MAX_FORWARDS))
            return True
        try:
            hops = int(value.strip())
        except ValueError:
            return False
        if hops <= 0:
            return False
        req.headers.set("Max-Forwards", str(hops - 1))
        return True

    def _fix_top_via(
        self, req: Request, host: str, port: int, *, only_if_needed: bool = False
    ) -> None:
        """RFC 3261 §18.2.1 received, RFC 3581 rport, on the top Via."""
        raw = req.headers.get("Via")
        if raw is None:
            return
        via = parse_via(raw)
        if only_if_needed and via.host == host and via.rport is None:
            return
        via.set_param("received", host)
        if via.rport is not None or not only_if_needed:
            via.set_param("rport", str(port))
        req.headers.pop_first("Via")
        req.headers.prepend("Via", str(via))

    def _answer(
        self,
        sctx: _Server,
        status: int,
        now: float,
        *,
        warning: str = "",
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        resp = make_response(
            sctx.request,
            status,
            to_tag=None if status == 100 else secrets.token_hex(6),
        )
        for name, value in extra or ():
            resp.headers.add(name, value)
        if warning:
            resp.headers.add("Warning", f'399 {self.settings.sip_host} "{warning}"')
        if status >= 200:
            resp.headers.add("Server", self.settings.user_agent)
            sctx.final_sent = True
        sctx.txn.send_response(resp, now)
        self._pump_server(sctx, now)

    def _parse_failed(
        self,
        side: str,
        exc: ParseError,
        *,
        flow_id: int | None,
        reply_to: tuple[str, int, str] | None,
        now: float,
    ) -> None:
        self._drop(side, f"parse_{exc.status_hint or 'drop'}")
        partial = getattr(exc, "partial", None)
        if partial is None or not exc.status_hint or partial.method == "ACK":
            return
        resp = make_response(partial, exc.status_hint, to_tag=secrets.token_hex(6))
        reason = exc.reason.replace('"', "'")[:200]
        resp.headers.add("Warning", f'399 {self.settings.sip_host} "{reason}"')
        data = bytes(resp)
        if flow_id is not None:
            self._actions.append(SendToFlow(flow_id, data))
        elif reply_to is not None:
            self._emit_upstream(*reply_to, data)

    def _admit_call(self, sctx: _Server, now: float) -> bool:
        """Admission control for a new INVITE: drain and the call cap."""
        if self.draining:
            self._answer(sctx, 503, now, warning="shutting down")
            return False
        if self._calls_in_use() >= self.settings.max_calls:
            self._answer(sctx, 503, now, warning="call limit reached")
            return False
        return True

    def _calls_in_use(self) -> int:
        return len(self.dialogs) + self.pending_invites

    def _sip_hostport(self, transport: str = "udp") -> str:
        """Our switch-facing host:port as written in URIs, with a transport
        parameter unless it is UDP (the default for sip: URIs)."""
        s = self.settings
        host = s.sip_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        if transport == "tls" and s.sip_tls_port:
            return f"{host}:{s.sip_tls_port};transport=tls"
        if transport == "tcp":
            return f"{host}:{s.sip_port};transport=tcp"
        return f"{host}:{s.sip_port}"

    def _upstream_via(self, transport: str, branch: str) -> str:
        s = self.settings
        port = s.sip_tls_port if transport == "tls" and s.sip_tls_port else s.sip_port
        host = s.sip_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"SIP/2.0/{transport.upper()} {host}:{port};branch={branch};rport"

    def _ws_via(self, flow: Flow, branch: str) -> str:
        transport = "WSS" if flow.secure else "WS"
        return f"SIP/2.0/{transport} {self.settings.ws_host};branch={branch}"

    def _new_branch(self) -> str:
        return f"z9hG4bK{self._branch_prefix}{next(self._branch_seq):x}"

    def _emit_upstream(self, host: str, port: int, transport: str, data: bytes) -> None:
        self._actions.append(SendUpstream(host, port, transport, data))

    def _push(self, when: float, kind: str, key: object) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), kind, key))

    def _drop(self, side: str, reason: str) -> None:
        self._actions.append(Dropped(side, reason))

    def _note(self, kind: str, detail: str = "") -> None:
        self._actions.append(Note(kind, detail))


def _has_sdp(msg: Request | Response) -> bool:
    if not msg.body:
        return False
    ctype = (msg.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    return ctype == "application/sdp"


def _is_offer(req: Request) -> bool:
    """SDP in INVITE or UPDATE is an offer; in ACK or PRACK, the answer to an
    offer made in a response (RFC 3261 §13.2.1, RFC 3262 §5)."""
    return req.method in ("INVITE", "UPDATE")


def _renumber_toward_far(req: Request, dialog: Dialog) -> None:
    """Give a browser's in-dialog request the CSeq the far side expects (Dialog.shift_cseq)."""
    cseq, method = req.cseq
    shifted = dialog.shift_cseq(cseq, method)
    if shifted != cseq:
        req.headers.set("CSeq", f"{shifted} {method}")


def _due(deadline: float | None, now: float) -> bool:
    return deadline is not None and deadline <= now


def _contact_uri(msg: Request | Response) -> str | None:
    value = msg.headers.get("Contact")
    if value is None:
        return None
    try:
        return str(parse_name_addr(value).uri)
    except ParseError:
        return None


def _allow(msg: Request | Response) -> frozenset[str] | None:
    """Methods in a message's Allow header(s); None when it has none."""
    values = msg.headers.get_all("Allow")
    if not values:
        return None
    return frozenset(m.strip().upper() for v in values for m in v.split(",") if m.strip())


def _uri_user(uri: str) -> str | None:
    try:
        return SipURI.parse(uri).user
    except ParseError:
        return None


def _has_outbound(req: Request) -> bool:
    """RFC 5626 §5.1: a REGISTER using outbound has reg-id on its Contact."""
    for value in req.headers.get_all("Contact"):
        if "reg-id" in value.lower():
            return True
    return False
