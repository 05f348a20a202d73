"""Dialogs the proxy has seen established, keyed to the browser flow (sans-I/O).

The gateway is a proxy, not a B2BUA, but it keeps enough of each confirmed
dialog to end it toward the switch when the browser's WebSocket dies: the
browser's identity (From/To with its tag), the far side's, the far side's
target (its Contact), the route set as the browser would use it (minus our own
entries), and the highest CSeq the browser has used (RFC 3261 §12.2.1.1).

When the gateway itself sends a request in the browser's name (a DTMF INFO read from the
browser's telephone-events), the browser's later CSeqs toward the far side are raised past
it (:meth:`Dialog.shift_cseq`); responses go back with the browser's own numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Dialog", "DialogTable"]


@dataclass
class Dialog:
    call_id: str
    browser_tag: str
    far_tag: str
    flow_id: int
    browser_is_caller: bool
    #: the browser side's name-addr with its tag (From for its requests)
    browser_header: str
    #: the far side's name-addr with its tag (To for the browser's requests)
    far_header: str
    #: the far side's Contact URI: the Request-URI of requests toward it
    far_target: str
    #: Route values for a request from the browser toward the far side, ours removed
    route_set: list[str] = field(default_factory=list)
    browser_cseq: int = 0
    created: float = 0.0
    #: methods the far side listed in Allow (None: it sent no Allow)
    far_allow: frozenset[str] | None = None
    #: the browser's Contact URI: the Request-URI of requests toward it
    browser_target: str = ""
    #: highest CSeq the far side has used toward the browser
    far_cseq: int = 0
    #: requests the gateway sent toward the far side in the browser's name (DTMF INFO):
    #: the browser's later requests go out with their CSeq raised by this much, so the
    #: far side still sees one rising sequence (RFC 3261 §12.2.2)
    cseq_shift: int = 0
    #: CSeq of each shifted INVITE, the browser's -> as sent (for its ACK, §13.2.2.4)
    shifted_invites: dict[int, int] = field(default_factory=dict)

    def next_far_cseq(self) -> int:
        """The CSeq of a request the gateway sends toward the far side in the browser's
        name; the browser's later requests are shifted past it."""
        self.cseq_shift += 1
        return self.browser_cseq + self.cseq_shift

    def shift_cseq(self, cseq: int, method: str) -> int:
        """The CSeq a browser's in-dialog request goes out with (ACK: as its INVITE)."""
        if method == "ACK":
            return self.shifted_invites.get(cseq, cseq)
        if not self.cseq_shift:
            return cseq
        shifted = cseq + self.cseq_shift
        if method == "INVITE":
            if len(self.shifted_invites) >= 8:  # only the latest INVITEs can still be ACKed
                self.shifted_invites.pop(next(iter(self.shifted_invites)))
            self.shifted_invites[cseq] = shifted
        return shifted

    @property
    def key(self) -> tuple[int, str, str, str]:
        # The flow is part of the key: a call between two browsers on the same
        # gateway crosses it twice with the same Call-ID and tags.
        return (self.flow_id, self.call_id, self.browser_tag, self.far_tag)


class DialogTable:
    """Confirmed dialogs, by key and by flow."""

    def __init__(self) -> None:
        self._dialogs: dict[tuple[int, str, str, str], Dialog] = {}
        self._by_flow: dict[int, set[tuple[int, str, str, str]]] = {}

    def add(self, dialog: Dialog) -> None:
        self._dialogs[dialog.key] = dialog
        self._by_flow.setdefault(dialog.flow_id, set()).add(dialog.key)

    def find(
        self, flow_id: int, call_id: str, tag_a: str | None, tag_b: str | None
    ) -> Dialog | None:
        """Find a flow's dialog by Call-ID and the two tags in either order."""
        if tag_a is None or tag_b is None:
            return None
        return self._dialogs.get((flow_id, call_id, tag_a, tag_b)) or self._dialogs.get(
            (flow_id, call_id, tag_b, tag_a)
        )

    def remove(self, dialog: Dialog) -> None:
        if self._dialogs.pop(dialog.key, None) is not None:
            keys = self._by_flow.get(dialog.flow_id)
            if keys is not None:
                keys.discard(dialog.key)
                if not keys:
                    del self._by_flow[dialog.flow_id]

    def for_flow(self, flow_id: int) -> list[Dialog]:
        return [self._dialogs[k] for k in self._by_flow.get(flow_id, ())]

    def __len__(self) -> int:
        return len(self._dialogs)
