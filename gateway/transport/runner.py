"""Shuttles between the sockets and the sans-I/O proxy core.

Every input (a WebSocket message, a datagram, a framed stream message, a
closed connection, a timer) is fed to :class:`gateway.proxy.router.Proxy`
with ``loop.time()``; then the actions it produced are carried out and the
single timer is re-armed at the proxy's earliest deadline.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from gateway import metrics
from gateway.proxy.router import (
    Dropped,
    MediaCommand,
    Note,
    Proxy,
    Seen,
    SendToFlow,
    SendUpstream,
)

__all__ = ["ProxyRunner"]

log = logging.getLogger("gateway.proxy")
trace_log = logging.getLogger("gateway.trace")


class FlowSender(Protocol):
    def send_to_flow(self, flow_id: int, data: bytes) -> bool: ...


class UpstreamSender(Protocol):
    def send(self, host: str, port: int, transport: str, data: bytes) -> None: ...


class MediaClient(Protocol):
    """The NG client (gateway.transport.ng_client.NgClient) as the runner uses it."""

    async def request(
        self, body: dict[str, object], *, timeout: float = ...
    ) -> dict[str, object]: ...


#: Seconds the proxy waits for the media layer before answering 488 (NG retransmits inside).
MEDIA_TIMEOUT = 3.0
#: Seconds between two "DTMF events" polls while calls have their browser digits read for
#: SIP INFO: a digit reaches the switch at most this long after its end packet.
DTMF_POLL_INTERVAL = 0.04


class ProxyRunner:
    """Owns the proxy core's clock and timer on the running loop."""

    def __init__(self, proxy: Proxy, *, sip_trace: bool = False) -> None:
        self.proxy = proxy
        self.flows: FlowSender | None = None
        self.upstream: UpstreamSender | None = None
        self.media: MediaClient | None = None
        self._media_tasks: set[asyncio.Task[None]] = set()
        self.sip_trace = sip_trace
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._dtmf_poll: asyncio.Task[None] | None = None

    # inputs --------------------------------------------------------------

    def start(self, media_poll: float | None = None) -> None:
        """Start the proxy's timers; with ``media_poll``, ask the media layer
        for its live calls that often (calls it ended on a media timeout are
        then ended in SIP)."""
        self.proxy.start(self._loop.time())
        self._flush()
        if media_poll:
            task = asyncio.create_task(self._poll_media(media_poll))
            self._media_tasks.add(task)
            task.add_done_callback(self._media_tasks.discard)

    async def _poll_media(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self.media is None or not self.proxy.media_calls:
                continue
            since = self._loop.time()
            try:
                reply = await self.media.request(
                    {"command": "list", "limit": 1_000_000}, timeout=MEDIA_TIMEOUT
                )
            except Exception as exc:  # the media layer is busy or gone: try again later
                log.warning("! media list failed: %s", exc)
                continue
            calls = reply.get("calls")
            if reply.get("result") != "ok" or not isinstance(calls, list):
                continue
            self.proxy.media_alive({str(c) for c in calls}, since - interval, self._loop.time())
            self._flush()

    async def _poll_dtmf(self) -> None:
        """Collect the digits of browsers' telephone-events while some call has them read
        for SIP INFO (the proxy's ``dtmf_info_calls``); ends when none has."""
        while self.media is not None and self.proxy.dtmf_info_calls:
            await asyncio.sleep(DTMF_POLL_INTERVAL)
            try:
                reply = await self.media.request({"command": "DTMF events"}, timeout=MEDIA_TIMEOUT)
            except Exception as exc:  # the media layer is busy or gone: try again
                log.warning("! media DTMF events failed: %s", exc)
                continue
            events = reply.get("events")
            if reply.get("result") == "ok" and isinstance(events, list) and events:
                self.proxy.dtmf_events(events, self._loop.time())
                self._flush()

    def flow_opened(self, flow_id: int, host: str, port: int, *, secure: bool) -> None:
        self.proxy.flow_opened(flow_id, host, port, secure=secure)
        metrics.WS_CONNECTIONS.inc()

    def flow_closed(self, flow_id: int) -> None:
        self.proxy.flow_closed(flow_id, self._loop.time())
        metrics.WS_CONNECTIONS.dec()
        self._flush()

    def from_flow(self, flow_id: int, data: bytes) -> None:
        if self.sip_trace:
            trace_log.info("< ws flow=%x\n%s", flow_id, data.decode("utf-8", "replace"))
        self.proxy.receive_from_flow(flow_id, data, self._loop.time())
        self._flush()

    def from_upstream(self, data: bytes, host: str, port: int, transport: str) -> None:
        if self.sip_trace:
            trace_log.info("< %s %s:%d\n%s", transport, host, port, data.decode("utf-8", "replace"))
        self.proxy.receive_from_upstream(data, host, port, transport, self._loop.time())
        self._flush()

    # outputs -------------------------------------------------------------

    def _flush(self) -> None:
        proxy = self.proxy
        for action in proxy.actions():
            if isinstance(action, SendToFlow):
                if self.sip_trace:
                    trace_log.info(
                        "> ws flow=%x\n%s", action.flow_id, action.data.decode("utf-8", "replace")
                    )
                if self.flows is None or not self.flows.send_to_flow(action.flow_id, action.data):
                    metrics.DROPPED.labels("ws", "flow_gone").inc()
            elif isinstance(action, SendUpstream):
                if self.sip_trace:
                    trace_log.info(
                        "> %s %s:%d\n%s",
                        action.transport,
                        action.host,
                        action.port,
                        action.data.decode("utf-8", "replace"),
                    )
                if self.upstream is not None:
                    self.upstream.send(action.host, action.port, action.transport, action.data)
            elif isinstance(action, Seen):
                metrics.SIP_MESSAGES.labels(action.side, action.kind, action.label).inc()
            elif isinstance(action, Dropped):
                metrics.DROPPED.labels(action.side, action.reason).inc()
                log.debug("x dropped side=%s reason=%s", action.side, action.reason)
            elif isinstance(action, Note):
                self._note(action)
            elif isinstance(action, MediaCommand):
                self._media_command(action)
        metrics.DIALOGS.set(len(proxy.dialogs))
        metrics.FLOWS.set(len(proxy.flows))
        if proxy.dtmf_info_calls and (self._dtmf_poll is None or self._dtmf_poll.done()):
            task = self._dtmf_poll = asyncio.create_task(self._poll_dtmf())
            self._media_tasks.add(task)
            task.add_done_callback(self._media_tasks.discard)
        self._arm()

    def _media_command(self, action: MediaCommand) -> None:
        task = asyncio.create_task(self._media_request(action))
        self._media_tasks.add(task)
        task.add_done_callback(self._media_tasks.discard)

    async def _media_request(self, action: MediaCommand) -> None:
        op = str(action.command.get("command"))
        reply: dict[str, object] | None = None
        if self.media is None:
            log.error("! media command %s but no media layer is running", op)
        else:
            try:
                reply = await self.media.request(action.command, timeout=MEDIA_TIMEOUT)
            except Exception as exc:  # timeout or a socket error: the call gets 488
                log.warning("! media %s failed: %s", op, exc)
            else:
                if reply.get("result") not in ("ok", "pong"):
                    log.warning("! media %s: %s", op, reply.get("error-reason"))
        metrics.MEDIA_COMMANDS.labels(
            op, "ok" if reply and reply.get("result") == "ok" else "error"
        ).inc()
        if action.token:
            self.proxy.media_result(action.token, reply, self._loop.time())
            self._flush()

    def _note(self, note: Note) -> None:
        kind = note.kind
        if kind == "failover":
            metrics.UPSTREAM_FAILOVERS.inc()
            log.warning("! upstream failover %s", note.detail)
        elif kind == "upstream_down":
            metrics.UPSTREAM_UP.labels(note.detail).set(0)
            log.warning("! upstream down %s", note.detail)
        elif kind == "upstream_up":
            metrics.UPSTREAM_UP.labels(note.detail).set(1)
            log.info("= upstream up %s", note.detail)
        elif kind == "media_failed":
            log.warning("! media layer refused: %s", note.detail)
        elif kind == "session_refresh_absorbed":
            metrics.SESSION_REFRESH_ABSORBED.inc()
        elif kind == "dtmf_info_converted":
            metrics.DTMF_INFO.labels("converted").inc()
            log.info("= DTMF INFO %s sent as RFC 4733 toward the switch", note.detail)
        elif kind == "dtmf_rfc4733_sent":
            metrics.DTMF_TO_INFO.labels("sent").inc()
            log.info("= DTMF %s from RFC 4733 sent as SIP INFO toward the switch", note.detail)
        elif kind == "dtmf_rfc4733_dropped":
            metrics.DTMF_TO_INFO.labels("dropped").inc()
            log.warning("! DTMF from RFC 4733 not sent as INFO: %s", note.detail)
        elif kind == "dtmf_info_relayed":
            metrics.DTMF_INFO.labels("relayed").inc()
            log.info("= DTMF INFO relayed as INFO: %s", note.detail)
        elif kind == "dialog_started":
            metrics.DIALOG_EVENTS.labels("started", note.detail).inc()
        elif kind == "dialog_ended":
            metrics.DIALOG_EVENTS.labels("ended", note.detail).inc()
            if note.detail == "media_timeout":
                log.info("= dialog ended by media timeout: BYE sent both ways")
            if note.detail == "flow_closed":
                log.info("= dialog ended by WebSocket loss: BYE sent toward the switch")

    def _arm(self) -> None:
        when = self.proxy.get_timer()
        if when is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        self.proxy.handle_timer(self._loop.time())
        self._flush()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._media_tasks):
            task.cancel()
