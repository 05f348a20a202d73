"""Switch-facing SIP over TCP and TLS (RFC 3261 §18.3), framed by sip.framing.

Connections are kept by remote address: a response goes back over the
connection its request came on, and requests to a pool member reuse an open
connection or open one (queued until connected).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from gateway import metrics
from gateway.sip.errors import ParseError
from gateway.sip.framing import Keepalive, StreamFramer

__all__ = ["SipStreamTransport"]

log = logging.getLogger("gateway.sip.stream")

#: Seconds to wait for an outgoing TCP/TLS connection.
CONNECT_TIMEOUT = 5.0


class _Conn:
    __slots__ = ("writer", "pending")

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.pending: list[bytes] = []


class SipStreamTransport:
    """TCP or TLS listener plus outgoing connections toward the switch."""

    def __init__(
        self,
        transport: str,
        host: str,
        port: int,
        *,
        allowed: Callable[[str], bool],
        deliver: Callable[[bytes, str, int, str], None],
        max_message_size: int,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        listen: bool = True,
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self._allowed = allowed
        self._deliver = deliver
        self._max = max_message_size
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self._listen = listen
        self._server: asyncio.Server | None = None
        self._conns: dict[tuple[str, int], _Conn] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if not self._listen:
            return
        self._server = await asyncio.start_server(
            self._accepted, self.host, self.port, ssl=self._server_ssl
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("= listening sip %s %s:%d", self.transport, self.host, self.port)

    def send(self, host: str, port: int, data: bytes) -> None:
        conn = self._conns.get((host, port))
        if conn is None:
            conn = _Conn()
            self._conns[(host, port)] = conn
            conn.pending.append(data)
            task = asyncio.create_task(self._connect(host, port, conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if conn.writer is None:
            conn.pending.append(data)
        else:
            conn.writer.write(data)

    async def close(self) -> None:
        """Stop listening, end every connection, and wait for their readers.

        Connections are closed rather than their tasks cancelled: a cancelled
        ``start_server`` handler makes asyncio (3.11) log a spurious traceback.
        """
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns.values()):
            if conn.writer is not None:
                conn.writer.close()
        self._conns.clear()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=2.0)
            for task in pending:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _connect(self, host: str, port: int, conn: _Conn) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host, port, ssl=self._client_ssl if self.transport == "tls" else None
                ),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.warning("! %s connect to %s:%d failed: %s", self.transport, host, port, exc)
            self._conns.pop((host, port), None)
            return  # the transaction times out and fails over
        conn.writer = writer
        for data in conn.pending:
            writer.write(data)
        conn.pending.clear()
        await self._read_loop(reader, writer, host, port, conn)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        peer = writer.get_extra_info("peername")
        host, port = str(peer[0]), int(peer[1])
        if not self._allowed(host):
            metrics.DROPPED.labels("sip", "source_not_allowed").inc()
            writer.close()
            return
        conn = _Conn()
        conn.writer = writer
        self._conns[(host, port)] = conn
        await self._read_loop(reader, writer, host, port, conn)

    async def _read_loop(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
        port: int,
        conn: _Conn,
    ) -> None:
        framer = StreamFramer(self._max)
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                try:
                    items = framer.feed(chunk)
                except ParseError as exc:
                    # A stream that lost framing cannot be resynchronised (§18.3).
                    metrics.DROPPED.labels("sip", "stream_framing").inc()
                    log.warning("! %s %s:%d framing error: %s", self.transport, host, port, exc)
                    break
                for item in items:
                    if isinstance(item, Keepalive):
                        writer.write(b"\r\n")  # RFC 5626 §3.5.1 pong
                    else:
                        self._deliver(item, host, port, self.transport)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            if self._conns.get((host, port)) is conn:
                del self._conns[(host, port)]
            writer.close()
