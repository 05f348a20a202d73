"""Media port allocator over the configured range: bookkeeping only, no sockets.

A plain RTP leg takes an even/odd pair (RTP on the even port, RTCP on the next, RFC 3550
§11: "RTP SHOULD use an even destination port number and the corresponding RTCP stream
SHOULD use the next higher (odd) destination port number"). A WebRTC leg multiplexes RTP and
RTCP on one port (RFC 5761), so it takes a single port. Every port handed out is released
exactly once; :meth:`PortAllocator.in_use` is the leak check.

Exceptions::

    PortError                 bad range or bad release
    └── PortsExhausted        no free port (or pair) left in the range
"""

from __future__ import annotations

__all__ = ["PortAllocator", "PortError", "PortsExhausted", "MIN_PORT", "MAX_PORT"]

MIN_PORT = 1024
"""Lowest port the allocator accepts (no privileged ports)."""
MAX_PORT = 65535
"""Highest UDP port."""


class PortError(Exception):
    """Invalid port range or a release of a port that is not allocated."""


class PortsExhausted(PortError):
    """Every port (or every even/odd pair) in the range is in use."""


class PortAllocator:
    """Hands out single ports and even/odd pairs from ``[low, high]`` (inclusive).

    Allocation scans round-robin from where the last one stopped, so a port just released is
    not reused at once (late packets of an ended call do not land in the next one).
    """

    def __init__(self, low: int, high: int) -> None:
        if not (MIN_PORT <= low <= high <= MAX_PORT):
            raise PortError(f"port range {low}-{high} must lie within {MIN_PORT}-{MAX_PORT}")
        self.low = low
        self.high = high
        self._used: set[int] = set()
        self._cursor = low

    @property
    def capacity(self) -> int:
        """Number of ports in the range."""
        return self.high - self.low + 1

    def in_use(self) -> int:
        """Number of ports currently allocated."""
        return len(self._used)

    def is_used(self, port: int) -> bool:
        """True if ``port`` is currently allocated."""
        return port in self._used

    def _scan(self) -> range:
        return range(self.capacity)

    def allocate_pair(self) -> int:
        """Reserve an even port and the odd port after it; return the even one.

        Raises:
            PortsExhausted: no even port with a free successor is left in the range.
        """
        start = self._cursor
        for i in self._scan():
            port = self.low + (start - self.low + i) % self.capacity
            if port & 1 or port + 1 > self.high:
                continue
            if port in self._used or port + 1 in self._used:
                continue
            self._used.add(port)
            self._used.add(port + 1)
            self._cursor = port + 2 if port + 2 <= self.high else self.low
            return port
        raise PortsExhausted(
            f"no free even/odd port pair in {self.low}-{self.high} ({len(self._used)} in use)"
        )

    def allocate_one(self) -> int:
        """Reserve a single port, preferring odd ports so that even pairs stay whole.

        Raises:
            PortsExhausted: every port in the range is in use.
        """
        fallback = -1
        start = self._cursor
        for i in self._scan():
            port = self.low + (start - self.low + i) % self.capacity
            if port in self._used:
                continue
            # An odd port whose even partner is taken cannot serve a pair anyway: best choice.
            if port & 1 and (port - 1 < self.low or port - 1 in self._used):
                self._used.add(port)
                self._cursor = port + 1 if port + 1 <= self.high else self.low
                return port
            if fallback < 0:
                fallback = port
        if fallback < 0:
            raise PortsExhausted(f"no free port in {self.low}-{self.high}")
        self._used.add(fallback)
        self._cursor = fallback + 1 if fallback + 1 <= self.high else self.low
        return fallback

    def release(self, port: int, count: int = 1) -> None:
        """Give back ``count`` consecutive ports starting at ``port``.

        Raises:
            PortError: one of them is not allocated (a double release is a bug).
        """
        ports = range(port, port + count)
        missing = [p for p in ports if p not in self._used]
        if missing:
            raise PortError(f"release of unallocated port(s) {missing}")
        for p in ports:
            self._used.discard(p)

    def release_pair(self, port: int) -> None:
        """Give back the pair whose even port is ``port``."""
        self.release(port, 2)
