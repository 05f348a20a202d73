"""Codec policy: passthrough when both sides share a codec, else a transcoding pair.

The operator's knobs follow the ConnexCS vocabulary (PITFALLS, "ConnexCS conventions"):
a *strip* list of regular expressions removes codecs from an offer ("Codec Delete"),
a *priority* list reorders what is left ("Codec Priority"). Patterns match the codec
name case-insensitively and in full (``pcm.*`` matches PCMU and PCMA).

:func:`choose` then decides, for codecs offered by one side and those the other side
supports:

- **passthrough** with the first offered codec (in priority order) the other side also
  has: the bridge only converts SRTP <-> RTP;
- **transcode** between the first offered codec the gateway can decode and the first
  codec of the other side it can encode (DESIGN "Codec policy");
- **reject** when neither is possible (the caller answers 488).

telephone-event and comfort noise are not audio codecs and never decide the outcome.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.sdp.rewrite import Codec

__all__ = ["NON_AUDIO", "TRANSCODABLE", "Decision", "apply", "choose"]

#: Codec names the media layer can decode and encode (media/codecs, DESIGN "Codec policy").
TRANSCODABLE = frozenset({"opus", "pcmu", "pcma", "g729"})
#: Formats that carry no audio of their own (RFC 4733 events, RFC 3389 comfort noise).
NON_AUDIO = frozenset({"telephone-event", "cn"})


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`choose`.

    ``mode`` is "passthrough", "transcode" or "reject"; ``codec`` is the shared codec
    (passthrough, as offered); ``pair`` is (offered codec, other side's codec)
    (transcode)."""

    mode: str
    codec: Codec | None = None
    pair: tuple[Codec, Codec] | None = None


def _matches(codec: Codec, patterns: Iterable[re.Pattern[str]]) -> bool:
    return any(p.fullmatch(codec.name) for p in patterns)


def apply(codecs: Sequence[Codec], priority: Sequence[str], strip: Sequence[str]) -> list[Codec]:
    """``codecs`` minus those matching a ``strip`` pattern, reordered so codecs matching
    the first ``priority`` pattern come first, then the second, ...; ties keep their
    order. A bad pattern raises ``re.error`` (config validation should catch it)."""
    strip_res = [re.compile(p, re.IGNORECASE) for p in strip]
    priority_res = [re.compile(p, re.IGNORECASE) for p in priority]
    kept = [c for c in codecs if not _matches(c, strip_res)]

    def rank(codec: Codec) -> int:
        for i, pattern in enumerate(priority_res):
            if pattern.fullmatch(codec.name):
                return i
        return len(priority_res)

    return sorted(kept, key=rank)


def choose(
    offer_codecs: Sequence[Codec],
    supported_other_side: Sequence[Codec],
    priority: Sequence[str] = (),
    strip: Sequence[str] = (),
    *,
    transcodable: frozenset[str] = TRANSCODABLE,
) -> Decision:
    """Decide passthrough vs transcode for ``offer_codecs`` against the codecs the other
    side supports, after applying ``strip`` and ``priority`` to the offer."""
    offered = [c for c in apply(offer_codecs, priority, strip) if c.name.lower() not in NON_AUDIO]
    other = [
        c for c in apply(supported_other_side, priority, ()) if c.name.lower() not in NON_AUDIO
    ]
    for codec in offered:
        if any(codec.same_format(o) for o in other):
            return Decision("passthrough", codec=codec)
    source = next((c for c in offered if c.name.lower() in transcodable), None)
    target = next((c for c in other if c.name.lower() in transcodable), None)
    if source is None or target is None:
        return Decision("reject")
    return Decision("transcode", pair=(source, target))
