"""Async NG (rtpengine control protocol) client over UDP: cookies, retransmission, timeout.

The proxy uses it to drive the media layer (``gateway.transport.ng``), and the NG front
server uses it to forward commands to its worker processes. One UDP socket per client;
requests are matched to replies by cookie, so any number may be in flight. A request is
sent again every :data:`RETRANSMIT_INTERVAL` seconds with the *same* cookie (the server
answers a retransmission from its cache, never running the command twice) until a reply
arrives or ``timeout`` passes (:class:`NgTimeout`). Replies that do not parse, or whose
cookie is unknown (late duplicates), are dropped and counted in :attr:`NgClient.dropped`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets

from gateway.media.ng import BencodeError, NgDrop, bdecode, encode_message

__all__ = ["NgClient", "NgTimeout", "RETRANSMIT_INTERVAL", "DEFAULT_TIMEOUT"]

RETRANSMIT_INTERVAL = 0.5
"""Seconds between retransmissions of an unanswered request."""
DEFAULT_TIMEOUT = 5.0
"""Seconds a request waits for its reply in all (Kamailio's rtpengine module: 1 s x 5)."""


class NgTimeout(Exception):
    """No reply within the timeout (the server is down or overloaded)."""


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, client: NgClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.client._received(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable for an earlier send: the retransmission timer copes.
        self.client.errors += 1


class NgClient:
    """Send NG requests to one server and await the replies (create with :meth:`connect`)."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.dropped = 0
        """Replies dropped: unparsable, or no request waiting for their cookie."""
        self.errors = 0
        """Socket errors reported by the kernel (e.g. ICMP port unreachable)."""
        self.retransmissions = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._waiting: dict[bytes, asyncio.Future[dict[str, object]]] = {}
        self._prefix = f"{os.getpid()}_{secrets.token_hex(3)}_".encode()
        self._counter = itertools.count(1)

    @classmethod
    async def connect(cls, host: str, port: int) -> NgClient:
        """A client bound to an ephemeral local port, talking to ``host:port``."""
        client = cls((host, port))
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(client), remote_addr=(host, port)
        )
        client._transport = transport
        return client

    def new_cookie(self) -> bytes:
        """A cookie unique to this client."""
        return self._prefix + str(next(self._counter)).encode()

    async def request(
        self,
        body: dict[str, object],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        cookie: bytes | None = None,
    ) -> dict[str, object]:
        """Send ``body`` and return the reply dictionary (byte strings decoded as UTF-8).

        ``cookie`` reuses a given cookie (tests of the server's duplicate handling).

        Raises:
            NgTimeout: no reply within ``timeout`` seconds.
            BencodeError: ``body`` cannot be bencoded.
        """
        if self._transport is None:
            raise RuntimeError("NgClient.connect() first")
        cookie = cookie if cookie is not None else self.new_cookie()
        datagram = encode_message(cookie, body)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, object]] = loop.create_future()
        if cookie in self._waiting:
            raise ValueError(f"cookie {cookie!r} already in flight")
        self._waiting[cookie] = future
        deadline = loop.time() + timeout
        try:
            while True:
                self._transport.sendto(datagram)
                wait = min(RETRANSMIT_INTERVAL, deadline - loop.time())
                if wait <= 0:
                    raise NgTimeout(f"no reply from {self.server[0]}:{self.server[1]}")
                done, _ = await asyncio.wait([future], timeout=wait)
                if done:
                    return future.result()
                self.retransmissions += 1
        finally:
            self._waiting.pop(cookie, None)
            if not future.done():
                future.cancel()

    def _received(self, data: bytes) -> None:
        cookie, space, rest = data.partition(b" ")
        future = self._waiting.get(cookie)
        if not space or future is None or future.done():
            self.dropped += 1
            return
        try:
            value = bdecode(rest)
            if not isinstance(value, dict):
                raise BencodeError("not a dictionary")
            body = {k.decode(): _text(v) for k, v in value.items()}
        except (BencodeError, NgDrop, UnicodeDecodeError):
            self.dropped += 1
            return
        future.set_result(body)

    async def close(self) -> None:
        """Close the socket; requests in flight fail with NgTimeout. Idempotent."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None


def _text(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, dict):
        return {k.decode("utf-8"): _text(v) for k, v in value.items()}
    return value
