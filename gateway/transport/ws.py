"""SIP over WebSocket listener (RFC 7118) on the ``websockets`` library.

* The upgrade must offer the ``sip`` subprotocol (RFC 7118 §4.1) and, when an
  allow-list is configured, come from an allowed Origin; any URL path is
  accepted (ConnexCS-style ``wss://host`` with no path).
* One SIP message per WebSocket message, text or binary (§5); replies go out
  as text frames when they are valid UTF-8, as JsSIP and SIP.js expect.
* RFC 5626 §3.5.1 CRLF keepalives: a ``\\r\\n\\r\\n`` ping is answered with
  ``\\r\\n``; WebSocket pings every ``ping_interval``; a connection silent for
  ``idle_timeout`` is closed.
* Per-IP limits: concurrent connections and a request-rate token bucket.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import defaultdict
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gateway import metrics
from gateway.proxy.flow import new_flow_id
from gateway.transport.runner import ProxyRunner

__all__ = ["WsListener"]

log = logging.getLogger("gateway.ws")

#: Outgoing messages queued per connection before it counts as stuck and is closed.
MAX_SEND_QUEUE = 256


class _TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.burst = max(1.0, 2.0 * rate)
        self.tokens = self.burst
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Conn:
    __slots__ = ("ws", "queue", "writer", "flow_id")

    def __init__(self, ws: ServerConnection, flow_id: int) -> None:
        self.ws = ws
        self.flow_id = flow_id
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.writer: asyncio.Task[None] | None = None


class WsListener:
    """One WS or WSS listener feeding a :class:`ProxyRunner`."""

    def __init__(
        self,
        runner: ProxyRunner,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        allowed_origins: list[str],
        max_message_size: int,
        ping_interval: float,
        idle_timeout: float,
        max_connections_per_ip: int,
        max_requests_per_second_per_ip: float,
    ) -> None:
        self.runner = runner
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.allowed_origins = set(allowed_origins)
        self.max_message_size = max_message_size
        self.ping_interval = ping_interval
        self.idle_timeout = idle_timeout
        self.max_connections_per_ip = max_connections_per_ip
        self.rate = max_requests_per_second_per_ip
        self._per_ip: defaultdict[str, int] = defaultdict(int)
        self._buckets: dict[str, _TokenBucket] = {}
        self._conns: dict[int, _Conn] = {}
        self._server: Server | None = None
        self.accepting = True

    @property
    def secure(self) -> bool:
        return self.ssl_context is not None

    async def start(self) -> None:
        ping = self.ping_interval or None
        self._server = await serve(
            self._handler,
            self.host,
            self.port,
            ssl=self.ssl_context,
            subprotocols=["sip"],  # type: ignore[list-item]
            process_request=self._process_request,
            compression=None,
            server_header="webrtc-sip-gateway",
            ping_interval=ping,
            ping_timeout=ping,
            # Let oversize SIP reach the parser (it answers 413) up to a hard cap.
            max_size=self.max_message_size * 4,
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        log.info(
            "= listening %s://%s:%d (subprotocol sip)",
            "wss" if self.secure else "ws",
            self.host,
            self.port,
        )

    def stop_accepting(self) -> None:
        """Refuse new upgrades (drain); existing connections continue."""
        self.accepting = False

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def send_to_flow(self, flow_id: int, data: bytes) -> bool:
        conn = self._conns.get(flow_id)
        if conn is None:
            return False
        if conn.queue.qsize() >= MAX_SEND_QUEUE:
            log.warning("! flow=%x send queue full, closing", flow_id)
            conn.queue.put_nowait(None)
            return False
        conn.queue.put_nowait(data)
        return True

    def connection_count(self) -> int:
        return len(self._conns)

    # -------------------------------------------------------------- internals

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        ip = _ip(connection.remote_address)
        if not self.accepting:
            metrics.WS_REJECTED.labels("draining").inc()
            return connection.respond(503, "Draining\n")
        offered = request.headers.get_all("Sec-WebSocket-Protocol")
        protocols = {p.strip().lower() for value in offered for p in value.split(",")}
        if "sip" not in protocols:
            metrics.WS_REJECTED.labels("no_sip_subprotocol").inc()
            return connection.respond(
                400, "The 'sip' WebSocket subprotocol is required (RFC 7118)\n"
            )
        if self.allowed_origins:
            origin = request.headers.get("Origin")
            if origin not in self.allowed_origins:
                metrics.WS_REJECTED.labels("origin").inc()
                log.info("x refused origin=%r ip=%s", origin, ip)
                return connection.respond(403, "Origin not allowed\n")
        if self._per_ip[ip] >= self.max_connections_per_ip:
            metrics.WS_REJECTED.labels("per_ip_limit").inc()
            return connection.respond(503, "Too many connections from this address\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        host, port = _host_port(ws.remote_address)
        flow_id = new_flow_id()
        while flow_id in self._conns:
            flow_id = new_flow_id()
        conn = _Conn(ws, flow_id)
        self._conns[flow_id] = conn
        self._per_ip[host] += 1
        bucket = self._buckets.get(host)
        if bucket is None:
            bucket = self._buckets[host] = _TokenBucket(self.rate, loop.time())
        conn.writer = asyncio.create_task(self._writer(conn))
        self.runner.flow_opened(flow_id, host, port, secure=self.secure)
        log.info("= flow=%x open from %s:%d", flow_id, host, port)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout or None):
                        message = await ws.recv()
                except TimeoutError:
                    log.info("= flow=%x idle for %.0fs, closing", flow_id, self.idle_timeout)
                    await ws.close(1001, "idle")
                    break
                data = message.encode("utf-8") if isinstance(message, str) else bytes(message)
                if not data.strip(b"\r\n"):
                    # RFC 5626 §3.5.1: answer a CRLFCRLF ping with a CRLF pong.
                    if data.startswith(b"\r\n\r\n"):
                        conn.queue.put_nowait(b"\r\n")
                    continue
                if not bucket.take(loop.time()):
                    metrics.DROPPED.labels("ws", "rate_limited").inc()
                    continue
                self.runner.from_flow(flow_id, data)
        except ConnectionClosed:
            pass
        finally:
            del self._conns[flow_id]
            self._per_ip[host] -= 1
            if self._per_ip[host] <= 0:
                del self._per_ip[host]
                self._buckets.pop(host, None)
            if conn.writer is not None:
                conn.writer.cancel()
            log.info("= flow=%x closed code=%s", flow_id, ws.close_code)
            self.runner.flow_closed(flow_id)

    async def _writer(self, conn: _Conn) -> None:
        ws = conn.ws
        try:
            while True:
                data = await conn.queue.get()
                if data is None:
                    await ws.close(1011, "send queue overflow")
                    return
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    await ws.send(data)
                else:
                    await ws.send(text)
        except ConnectionClosed:
            pass


def _host_port(address: Any) -> tuple[str, int]:
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return "unknown", 0


def _ip(address: Any) -> str:
    return _host_port(address)[0]
