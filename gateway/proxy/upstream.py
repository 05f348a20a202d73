"""The upstream switch pool: failover order and health (sans-I/O).

Servers are tried in the configured order (the first healthy one takes new
requests; RFC 3263 §4.3 failover to the next on a transport error, a timeout
or a 503).  Health comes from two sources fed in by the router: OPTIONS probes
and the fate of real requests.  Time is an argument, never read.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PoolMember", "UpstreamPool"]

#: A server marked down is retried for real traffic after this many seconds
#: even without a successful probe (so a pool with probes off heals itself).
RETRY_AFTER = 30.0


@dataclass
class PoolMember:
    """One switch address (already resolved to an IP literal by the adapter)."""

    host: str
    port: int
    transport: str  # "udp" | "tcp" | "tls"
    name: str  # the configured URI, for logs and metric labels
    up: bool = True
    down_since: float = 0.0
    failovers: int = 0

    @property
    def address(self) -> tuple[str, int, str]:
        return (self.host, self.port, self.transport)


class UpstreamPool:
    """Ordered pool with primary-first failover."""

    def __init__(self, members: list[PoolMember]) -> None:
        if not members:
            raise ValueError("the upstream pool needs at least one server")
        self.members = members

    def pick(self, now: float, exclude: tuple[PoolMember, ...] = ()) -> PoolMember | None:
        """Return the first usable member not in ``exclude`` (None: all tried)."""
        candidates = [m for m in self.members if m not in exclude]
        for member in candidates:
            if member.up or now - member.down_since >= RETRY_AFTER:
                return member
        # Everything is down: still try the first untried one rather than fail blind.
        return candidates[0] if candidates else None

    def find(self, host: str, port: int | None) -> PoolMember | None:
        """Return the member at host[:port] (any transport), if any."""
        for member in self.members:
            if member.host == host and (port is None or member.port == port):
                return member
        return None

    def is_member_address(self, host: str, port: int | None = None) -> bool:
        return any(m.host == host and (port is None or m.port == port) for m in self.members)

    def mark_down(self, member: PoolMember, now: float) -> bool:
        """Mark a member down; returns True if that changed its state."""
        if member.up:
            member.up = False
            member.down_since = now
            return True
        member.down_since = now
        return False

    def mark_up(self, member: PoolMember) -> bool:
        """Mark a member up; returns True if that changed its state."""
        if not member.up:
            member.up = True
            return True
        return False
