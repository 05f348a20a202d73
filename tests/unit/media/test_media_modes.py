"""ModeTracker: the per-mode call gauge and the chosen-mode counter follow NG replies.

Fed the NG command/reply pairs the control handler sees (no I/O: the tracker is a plain
object); the metrics are read back from prometheus-client's default registry, as a scrape
would see them.
"""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from gateway.transport.media_modes import ModeTracker, codec_label


def gauge(mode: str) -> float:
    return REGISTRY.get_sample_value("gateway_media_sessions", {"mode": mode}) or 0.0


def chosen(mode: str, codec: str) -> float:
    labels = {"mode": mode, "codec": codec}
    return REGISTRY.get_sample_value("gateway_media_modes_chosen_total", labels) or 0.0


def answer(call_id: str, mode: str, codec: str) -> tuple[dict[str, object], dict[str, object]]:
    return (
        {"command": "answer", "call-id": call_id},
        {"result": "ok", "sdp": "v=0", "mode": mode, "codec": codec},
    )


def test_answers_deletes_and_mode_changes_move_the_metrics() -> None:
    t = ModeTracker()
    base = chosen("transcode", "opus<->PCMU"), chosen("passthrough", "PCMU")
    t.observe(*answer("a", "transcode", "opus<->PCMU"), 1.0)
    t.observe(*answer("b", "passthrough", "PCMU"), 1.0)
    assert (gauge("transcode"), gauge("passthrough")) == (1, 1)
    # A repeated answer (200 OK retransmission, same mode) counts nothing new.
    t.observe(*answer("a", "transcode", "opus<->PCMU"), 2.0)
    assert chosen("transcode", "opus<->PCMU") == base[0] + 1
    # A re-INVITE that brings a shared codec: passthrough now, counted as chosen again.
    t.observe(*answer("a", "passthrough", "PCMU"), 3.0)
    assert (gauge("transcode"), gauge("passthrough")) == (0, 2)
    assert chosen("passthrough", "PCMU") == base[1] + 2
    t.observe({"command": "delete", "call-id": "a"}, {"result": "ok"}, 4.0)
    t.observe({"command": "Delete", "call_id": "b"}, {"result": "ok"}, 4.0)  # NG key spellings
    assert t.counts() == {"passthrough": 0, "transcode": 0}
    assert gauge("passthrough") == 0


def test_failed_or_modeless_replies_and_other_commands_are_ignored() -> None:
    t = ModeTracker()
    t.observe({"command": "answer", "call-id": "x"}, {"result": "error"}, 1.0)
    t.observe({"command": "answer", "call-id": "x"}, {"result": "ok", "sdp": "v=0"}, 1.0)
    t.observe(*answer("x", "bogus", "PCMU"), 1.0)
    t.observe({"command": "offer", "call-id": "x"}, {"result": "ok", "mode": "transcode"}, 1.0)
    t.observe({"command": "answer"}, {"result": "ok", "mode": "transcode", "codec": "PCMU"}, 1.0)
    t.observe({"command": "delete", "call-id": "unknown"}, {"result": "ok"}, 1.0)
    assert t.counts() == {"passthrough": 0, "transcode": 0}


def test_prune_forgets_calls_the_media_layer_ended_but_not_newer_ones() -> None:
    t = ModeTracker()
    t.observe(*answer("old-gone", "transcode", "opus<->G729"), 1.0)
    t.observe(*answer("old-live", "transcode", "opus<->G729"), 1.0)
    t.observe(*answer("new", "passthrough", "opus"), 6.0)
    # The list was taken at 5.0: "new" was answered after it, so its absence proves nothing.
    t.prune({"old-live"}, since=5.0)
    assert t.counts() == {"passthrough": 1, "transcode": 1}
    assert gauge("transcode") == 1


@pytest.mark.parametrize(
    ("codec", "label"),
    [
        ("PCMU", "PCMU"),
        ("opus<->G729", "opus<->G729"),
        ("speex", "other"),  # whatever a browser names in its SDP cannot grow the label set
        ("opus<->x-evil-123", "opus<->other"),
    ],
)
def test_codec_labels_stay_few(codec: str, label: str) -> None:
    assert codec_label(codec) == label
