"""Flow tokens (RFC 5626 §5.2) and the flow table of an edge proxy.

A *flow* is one browser WebSocket connection. The gateway names it in the
SIP it sends toward the switch (the user part of its Path and Record-Route
URIs) with a token that only this gateway can mint: the flow id followed by a
truncated HMAC-SHA256 over it, base64url-encoded.  A request that comes back
from the switch carrying the token is routed to that connection and nowhere
else; a forged or stale token finds no flow (RFC 5626 §5.3: 430 Flow Failed).

Flow ids are random 64-bit numbers, so a token minted before a restart (with
the same secret) cannot name a different connection afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass, field

__all__ = ["Flow", "FlowTable", "FlowTokenSigner", "new_flow_id"]

#: Bytes of HMAC-SHA256 kept in a token: 96 bits, as RFC 5626 §5.2's example.
MAC_BYTES = 12
_ID = struct.Struct(">Q")
TOKEN_LENGTH = len(base64.urlsafe_b64encode(b"\0" * (_ID.size + MAC_BYTES)).rstrip(b"="))


def new_flow_id() -> int:
    """Return a fresh random non-zero 64-bit flow id."""
    return secrets.randbits(64) | 1


class FlowTokenSigner:
    """Mints and checks flow tokens with one HMAC key."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("flow token secret must be at least 16 bytes")
        self._secret = secret

    def encode(self, flow_id: int) -> str:
        """Return the token naming ``flow_id`` (URI-user safe: ``[A-Za-z0-9_-]``)."""
        raw = _ID.pack(flow_id)
        mac = hmac.new(self._secret, raw, hashlib.sha256).digest()[:MAC_BYTES]
        return base64.urlsafe_b64encode(raw + mac).rstrip(b"=").decode("ascii")

    def decode(self, token: str | None) -> int | None:
        """Return the flow id a token names, or None if it is malformed or forged."""
        if token is None or len(token) != TOKEN_LENGTH:
            return None
        try:
            blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            return None
        # Refuse non-canonical spellings (different unused low bits in the last
        # character): one flow, one token.
        if base64.urlsafe_b64encode(blob).rstrip(b"=").decode("ascii") != token:
            return None
        raw, mac = blob[: _ID.size], blob[_ID.size :]
        good = hmac.new(self._secret, raw, hashlib.sha256).digest()[:MAC_BYTES]
        if not hmac.compare_digest(mac, good):
            return None
        return int(_ID.unpack(raw)[0])


@dataclass
class Flow:
    """One browser connection as the proxy sees it."""

    flow_id: int
    token: str
    remote_host: str
    remote_port: int
    secure: bool
    #: RFC 5626 instance id and reg-id of the REGISTER seen on this flow, if any.
    instance: str | None = None
    reg_id: str | None = None
    #: contact-rewrite mode: rewritten Contact user -> the browser's own Contact URI.
    contacts: dict[str, str] = field(default_factory=dict)
    closed: bool = False


class FlowTable:
    """Live flows by id; the only way from a token to a connection."""

    def __init__(self, signer: FlowTokenSigner) -> None:
        self.signer = signer
        self._flows: dict[int, Flow] = {}

    def open(self, flow_id: int, remote_host: str, remote_port: int, *, secure: bool) -> Flow:
        """Register a new connection and return its flow."""
        flow = Flow(flow_id, self.signer.encode(flow_id), remote_host, remote_port, secure)
        self._flows[flow_id] = flow
        return flow

    def close(self, flow_id: int) -> Flow | None:
        """Forget a connection; returns the flow that was open, if any."""
        flow = self._flows.pop(flow_id, None)
        if flow is not None:
            flow.closed = True
        return flow

    def get(self, flow_id: int) -> Flow | None:
        return self._flows.get(flow_id)

    def by_token(self, token: str | None) -> Flow | None:
        """Return the live flow a token names (None: forged, stale or closed)."""
        flow_id = self.signer.decode(token)
        return None if flow_id is None else self._flows.get(flow_id)

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._flows.values()))
