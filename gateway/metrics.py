"""Every Prometheus metric, defined once, and the internal HTTP listener.

The listener serves ``/metrics`` (Prometheus text format), ``/healthz``
(the process is alive) and ``/readyz`` (listeners up and not draining). It is
meant for an internal address: it is a small asyncio HTTP/1.0 responder, not a
web server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

__all__ = ["MetricsServer"]

log = logging.getLogger("gateway.metrics")

WS_CONNECTIONS = Gauge("gateway_ws_connections", "Open browser WebSocket connections")
WS_REJECTED = Counter(
    "gateway_ws_rejected_total", "WebSocket upgrades refused, by reason", ["reason"]
)
FLOWS = Gauge("gateway_flows", "Live flows (browser connections known to the proxy)")
SIP_MESSAGES = Counter(
    "gateway_sip_messages_received_total",
    "SIP messages received, by side (ws|sip), kind (request|response) and method or status",
    ["side", "kind", "label"],
)
DROPPED = Counter(
    "gateway_sip_dropped_total",
    "SIP input dropped or refused, by side and reason",
    ["side", "reason"],
)
DIALOGS = Gauge("gateway_dialogs", "Confirmed INVITE dialogs through the gateway")
DIALOG_EVENTS = Counter(
    "gateway_dialog_events_total", "Dialogs started and ended, by how", ["event", "how"]
)
SESSION_REFRESH_ABSORBED = Counter(
    "gateway_session_refresh_absorbed_total",
    "Browser session-timer UPDATEs answered by the gateway because the far side does not allow UPDATE",
)
MEDIA_COMMANDS = Counter(
    "gateway_media_commands_total",
    "NG commands the proxy sent to the media layer, by command and outcome",
    ["command", "outcome"],
)
MEDIA_SESSIONS = Gauge(
    "gateway_media_sessions",
    "Answered calls the media layer anchors, by mode (passthrough|transcode)",
    ["mode"],
)
MEDIA_MODES_CHOSEN = Counter(
    "gateway_media_modes_chosen_total",
    "Media modes chosen by SDP answers (a re-INVITE that changes the mode counts again), "
    "by mode and codec (PCMU, opus<->G729...)",
    ["mode", "codec"],
)
DTMF_INFO = Counter(
    "gateway_dtmf_info_total",
    "Browser DTMF INFO requests: converted to RFC 4733 toward the switch or relayed as INFO "
    "because the conversion was not possible (media.dtmf_info_to_rfc4733)",
    ["outcome"],
)
DTMF_TO_INFO = Counter(
    "gateway_dtmf_rfc4733_to_info_total",
    "Digits read from browsers' RFC 4733 telephone-events for a switch without them: sent "
    "as SIP INFO, or dropped (call gone, INFO not allowed, no upstream) "
    "(media.dtmf_rfc4733_to_info)",
    ["outcome"],
)
UPSTREAM_UP = Gauge("gateway_upstream_up", "1 if the upstream server is healthy", ["server"])
UPSTREAM_FAILOVERS = Counter(
    "gateway_upstream_failovers_total", "Requests moved to the next upstream server"
)
LOOP_LAG = Histogram(
    "gateway_event_loop_lag_seconds",
    "How late the event loop runs a 1 s heartbeat",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
)


class MetricsServer:
    """Tiny HTTP responder for /metrics, /healthz and /readyz."""

    def __init__(self, host: str, port: int, ready: Callable[[], bool]) -> None:
        self.host = host
        self.port = port
        self._ready = ready
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            # Drain the request headers (bounded).
            for _ in range(100):
                header = await asyncio.wait_for(reader.readline(), 5.0)
                if header in (b"\r\n", b"\n", b""):
                    break
            parts = line.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else "/"
            if path.startswith("/metrics"):
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest()
            elif path.startswith("/healthz"):
                status, ctype, body = "200 OK", "text/plain", b"ok\n"
            elif path.startswith("/readyz"):
                if self._ready():
                    status, ctype, body = "200 OK", "text/plain", b"ready\n"
                else:
                    status, ctype, body = "503 Service Unavailable", "text/plain", b"not ready\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            head = (
                f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
