"""ICE-lite, controlled agent: answers connectivity and consent checks over STUN.

The gateway sits on an address the browser can reach, so it runs ICE-lite (RFC 8445 §2.5):
one host candidate, no checks of its own, always in the controlled role. It answers every
Binding request for the call's life (connectivity checks, then RFC 7675 consent checks
every few seconds), and latches media to the address of the last request that carried
USE-CANDIDATE (RFC 8445 §7.3.1.5: the pair is nominated). Addresses that passed a check are
remembered so DTLS is only accepted from them (RFC 8445 §12.1: no data on unchecked pairs).

Message codec: :mod:`aioice.stun`. Sans-I/O: bytes and ``now`` in, response bytes out.
"""

from __future__ import annotations

import hmac

from aioice import stun

__all__ = [
    "IceLiteAgent",
    "CONSENT_TIMEOUT",
    "MAX_CHECKED_ADDRESSES",
    "MAX_STUN_SIZE",
]

CONSENT_TIMEOUT = 30.0
"""Seconds without a valid check after which consent is lost (RFC 7675 §5.1)."""
MAX_CHECKED_ADDRESSES = 8
"""Remote addresses remembered as having passed a check (oldest forgotten first)."""
MAX_STUN_SIZE = 1280
"""Larger STUN datagrams are dropped unparsed (checks are ~100 bytes)."""

Addr = tuple[str, int]


class IceLiteAgent:
    """Answers STUN Binding requests keyed by the local ice-pwd; tracks the nominated address.

    Counters (plain ints): ``requests``, ``responses``, ``nominations``, ``malformed``,
    ``auth_failures``, ``role_conflicts``, ``ignored``.
    """

    def __init__(self, *, local_ufrag: str, local_pwd: str, tie_breaker: int = 0) -> None:
        self.local_ufrag = local_ufrag
        self.local_pwd = local_pwd
        self._key = local_pwd.encode("utf-8")
        self.tie_breaker = tie_breaker
        self.remote_ufrag: str | None = None
        self.remote_pwd: str | None = None
        self.selected: Addr | None = None
        """Address media is sent to: source of the latest check with USE-CANDIDATE."""
        self.checked: list[Addr] = []
        self.last_check = -1.0
        """``now`` of the latest valid Binding request (-1 before the first)."""
        self.requests = 0
        self.responses = 0
        self.nominations = 0
        self.malformed = 0
        self.auth_failures = 0
        self.role_conflicts = 0
        self.ignored = 0

    def set_remote(self, ufrag: str, pwd: str) -> None:
        """Set the remote ice-ufrag/ice-pwd (from the browser's SDP).

        A changed ufrag is an ICE restart (RFC 8445 §9): forget the nomination and the
        checked addresses; the browser checks again.
        """
        if self.remote_ufrag is not None and ufrag != self.remote_ufrag:
            self.selected = None
            self.checked.clear()
        self.remote_ufrag = ufrag
        self.remote_pwd = pwd

    def is_checked(self, addr: Addr) -> bool:
        """True if ``addr`` sent a valid check (DTLS and media are accepted from it)."""
        return addr in self.checked

    def consent_expired(self, now: float) -> bool:
        """True once no valid check has arrived for :data:`CONSENT_TIMEOUT` (RFC 7675 §5.1)."""
        return self.last_check >= 0 and now - self.last_check > CONSENT_TIMEOUT

    def _response(self, request: stun.Message, addr: Addr, error: tuple[int, str] | None) -> bytes:
        if error is None:
            response = stun.Message(
                message_method=stun.Method.BINDING,
                message_class=stun.Class.RESPONSE,
                transaction_id=request.transaction_id,
            )
            # RFC 8489 §14.2: XOR-MAPPED-ADDRESS carries the request's source address.
            response.attributes["XOR-MAPPED-ADDRESS"] = addr
        else:
            response = stun.Message(
                message_method=stun.Method.BINDING,
                message_class=stun.Class.ERROR,
                transaction_id=request.transaction_id,
            )
            response.attributes["ERROR-CODE"] = error
        # RFC 8445 §7.3: responses are authenticated with the same short-term credential
        # (the local password), then FINGERPRINT (RFC 8445 §7.3: MUST include FINGERPRINT).
        response.add_message_integrity(self._key)
        self.responses += 1
        return bytes(response)

    def receive(self, data: bytes, addr: Addr, now: float) -> bytes | None:
        """Handle one STUN datagram from ``addr``; return the response to send back, if any.

        Binding requests with a valid USERNAME and MESSAGE-INTEGRITY get a success response
        (XOR-MAPPED-ADDRESS = ``addr``); a wrong username or integrity gets 401 and a missing
        MESSAGE-INTEGRITY 400 (RFC 8489 §9.2.4); ICE-CONTROLLED from the peer gets 487 Role
        Conflict, because a lite agent cannot switch to controlling (RFC 8445 §7.3.1.1,
        §6.1.1: the full agent MUST be controlling). Indications and responses are ignored.
        """
        if len(data) > MAX_STUN_SIZE:
            self.malformed += 1
            return None
        try:
            request = stun.parse_message(data)
        except ValueError:
            self.malformed += 1
            return None
        if (
            request.message_method != stun.Method.BINDING
            or request.message_class != stun.Class.REQUEST
        ):
            self.ignored += 1
            return None
        self.requests += 1
        username = request.attributes.get("USERNAME")
        if "MESSAGE-INTEGRITY" not in request.attributes or not isinstance(username, str):
            self.auth_failures += 1
            return self._response(request, addr, (400, "Bad Request"))
        # RFC 8445 §7.3: USERNAME is "LFRAG:RFRAG" with LFRAG the receiver's (our) ufrag.
        local, _, remote = username.partition(":")
        if (
            not hmac.compare_digest(local.encode(), self.local_ufrag.encode())
            or (self.remote_ufrag is not None and remote != self.remote_ufrag)
            or not request.check_message_integrity(self._key)
        ):
            self.auth_failures += 1
            return self._response(request, addr, (401, "Unauthorized"))
        if "ICE-CONTROLLED" in request.attributes:
            self.role_conflicts += 1
            return self._response(request, addr, (487, "Role Conflict"))
        self.last_check = now
        if addr not in self.checked:
            self.checked.append(addr)
            if len(self.checked) > MAX_CHECKED_ADDRESSES:
                del self.checked[0]
        if "USE-CANDIDATE" in request.attributes:
            if self.selected != addr:
                self.nominations += 1
            self.selected = addr
        return self._response(request, addr, None)
