"""Switch-facing SIP over UDP (RFC 3261 §18): one socket, source allow-list."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway import metrics

__all__ = ["SipUdpListener"]

log = logging.getLogger("gateway.sip.udp")


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: SipUdpListener) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.owner._received(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the transaction layer times out.
        log.debug("x udp error %s", exc)


class SipUdpListener:
    """UDP socket toward the switch; accepts datagrams only from allowed hosts."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        allowed: Callable[[str], bool],
        deliver: Callable[[bytes, str, int, str], None],
    ) -> None:
        self.host = host
        self.port = port
        self._allowed = allowed
        self._deliver = deliver
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.host, self.port)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        log.info("= listening sip udp %s:%d", self.host, self.port)

    def send(self, host: str, port: int, data: bytes) -> None:
        if self._transport is not None:
            self._transport.sendto(data, (host, port))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        host, port = addr[0], addr[1]
        if not self._allowed(host):
            metrics.DROPPED.labels("sip", "source_not_allowed").inc()
            return
        if not data.strip(b"\r\n\0 "):
            return  # keepalive (RFC 5626 §3.5.1 / NAT pings): nothing to do
        self._deliver(data, host, port, "udp")
