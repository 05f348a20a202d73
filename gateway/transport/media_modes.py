"""The media mode of each anchored call (passthrough or transcode), as Prometheus metrics.

Every NG command passes through the control handler in this process, whether the media
runs in-process or in worker processes, so the ``answer`` replies (which name the mode the
answer chose, ``mode``/``codec``) and the ``delete`` replies are all seen here.
:func:`tracked` wraps the handler with a :class:`ModeTracker`; calls that end inside the
media layer (a media timeout) are pruned by a periodic ``list`` (:meth:`ModeTracker.prune`).

Label values stay few: ``mode`` is passthrough or transcode, and ``codec`` names only
codecs the gateway knows (anything else a browser writes in its SDP counts as ``other``),
never a call-id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway import metrics

__all__ = ["ModeTracker", "tracked", "codec_label", "KNOWN_CODECS", "MODES"]

MODES = ("passthrough", "transcode")
"""Values of the ``mode`` label."""
KNOWN_CODECS = frozenset({"PCMU", "PCMA", "G729", "G722", "OPUS"})
"""Codec names used as label values as they are (case-insensitive); others are ``other``."""

Handler = Callable[[dict[str, object]], Awaitable[dict[str, object]]]


def codec_label(codec: str) -> str:
    """``codec`` ("PCMU", "opus<->G729") with unknown names replaced by ``other``."""
    parts = codec.split("<->")
    return "<->".join(p if p.upper() in KNOWN_CODECS else "other" for p in parts)


class ModeTracker:
    """Call-id → mode of the calls the media layer holds, mirrored into
    ``gateway_media_sessions{mode}`` and ``gateway_media_modes_chosen_total{mode,codec}``."""

    def __init__(self) -> None:
        self._calls: dict[str, tuple[str, float]] = {}

    def observe(self, body: dict[str, object], reply: dict[str, object], now: float) -> None:
        """Account for one NG command and its reply (``now``: any monotonic clock)."""
        command = body.get("command")
        # NG keys may be spelt with spaces, dashes or underscores (rtpengine accepts all).
        call_id = next(
            (
                v
                for k, v in body.items()
                if k.lower().replace("_", "-").replace(" ", "-") == "call-id"
            ),
            None,
        )
        if not isinstance(command, str) or not isinstance(call_id, str):
            return
        command = command.lower()
        if command == "answer" and reply.get("result") == "ok":
            mode, codec = reply.get("mode"), reply.get("codec")
            if mode not in MODES or not isinstance(codec, str):
                return
            assert isinstance(mode, str)
            previous = self._calls.get(call_id)
            self._calls[call_id] = (mode, now)
            if previous is None or previous[0] != mode:
                metrics.MEDIA_MODES_CHOSEN.labels(mode, codec_label(codec)).inc()
                self._publish()
        elif command == "delete" and self._calls.pop(call_id, None) is not None:
            self._publish()

    def prune(self, live: set[str], since: float) -> None:
        """Forget calls the media layer no longer holds (``live``, listed at ``since``);
        calls whose mode was seen after ``since`` are kept (the list may predate them)."""
        gone = [c for c, (_, at) in self._calls.items() if c not in live and at < since]
        for call_id in gone:
            del self._calls[call_id]
        if gone:
            self._publish()

    def counts(self) -> dict[str, int]:
        """Calls per mode."""
        result = dict.fromkeys(MODES, 0)
        for mode, _ in self._calls.values():
            result[mode] += 1
        return result

    def _publish(self) -> None:
        for mode, count in self.counts().items():
            metrics.MEDIA_SESSIONS.labels(mode).set(count)


def tracked(handler: Handler, tracker: ModeTracker, clock: Callable[[], float]) -> Handler:
    """``handler`` with every command and reply shown to ``tracker``."""

    async def handle(body: dict[str, object]) -> dict[str, object]:
        reply = await handler(body)
        tracker.observe(body, reply, clock())
        return reply

    return handle
