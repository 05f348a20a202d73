"""gateway.sdp.policy: strip/priority lists and the passthrough-or-transcode decision,
on the codecs real browsers offer."""

from __future__ import annotations

import re

import pytest

from gateway.sdp.policy import Decision, apply, choose
from gateway.sdp.rewrite import Codec, codecs_of

from .vectors import load

PCMU = Codec("PCMU", 8000, 1, 0)
PCMA = Codec("PCMA", 8000, 1, 8)
G729 = Codec("G729", 8000, 1, 18)
TE = Codec("telephone-event", 8000, 1, 101)


def chrome() -> list[Codec]:
    return codecs_of(load("chrome_offer.sdp").media[0])


def firefox() -> list[Codec]:
    return codecs_of(load("firefox_offer.sdp").media[0])


def test_shared_codec_is_passed_through_as_the_browser_numbered_it() -> None:
    decision = choose(chrome(), [PCMA, PCMU, TE])
    assert decision == Decision("passthrough", codec=Codec("PCMU", 8000, 1, 0))
    # priority picks among shared codecs (ConnexCS "Codec Priority")
    assert choose(chrome(), [PCMU, PCMA], priority=["pcma"]).codec == Codec("PCMA", 8000, 1, 8)
    assert choose(firefox(), [Codec("opus", 48000, 2, 96), PCMU]).codec == Codec(
        "opus", 48000, 2, 109, "maxplaybackrate=48000;stereo=1;useinbandfec=1"
    )


def test_stripped_g711_forces_transcoding_from_opus() -> None:
    decision = choose(chrome(), [PCMU, PCMA], strip=["pcm.*"])
    assert decision.mode == "transcode" and decision.codec is None
    assert decision.pair is not None
    assert (decision.pair[0].name, decision.pair[0].pt) == ("opus", 111)
    assert decision.pair[1] == PCMU


def test_g729_only_switch_transcodes_and_priority_orders_the_target() -> None:
    decision = choose(chrome(), [G729, PCMA])
    assert decision == Decision("passthrough", codec=Codec("PCMA", 8000, 1, 8))
    decision = choose(chrome(), [G729, TE])
    assert decision.mode == "transcode" and decision.pair is not None
    assert decision.pair[1] == G729
    decision = choose(chrome(), [PCMU, G729], priority=["g729"], strip=["pcm.*"])
    assert decision.pair is not None and decision.pair[1] == G729


def test_reject_when_nothing_shared_or_transcodable() -> None:
    # events and comfort noise never count as a shared codec
    assert choose([TE, Codec("CN", 8000, 1, 13)], [TE, Codec("CN", 8000, 1, 13)]) == Decision(
        "reject"
    )
    assert choose([Codec("G722", 8000, 1, 9)], [G729]).mode == "reject"
    assert choose(chrome(), [Codec("AMR", 8000, 1, 96)]).mode == "reject"
    assert (
        choose([Codec("G722", 8000, 1, 9)], [G729], transcodable=frozenset({"g722", "g729"})).mode
        == "transcode"
    )


def test_apply_strips_then_orders_stably() -> None:
    names = [c.name for c in apply(chrome(), priority=["PCM.*", "opus"], strip=["red.*", "cn.*"])]
    assert names == ["PCMU", "PCMA", "opus", "G722", "telephone-event", "telephone-event"]
    # a pattern matches the whole name, case-insensitively
    assert [c.name for c in apply([PCMU, PCMA], priority=[], strip=["pcm"])] == ["PCMU", "PCMA"]
    assert apply([PCMU], priority=[], strip=["PCMU"]) == []
    with pytest.raises(re.error):
        apply([PCMU], priority=["("], strip=[])
