"""WebRTC profile <-> plain RTP profile rewriting (the gateway's two SDP faces).

The browser side speaks the WebRTC profile (JSEP, RFC 8829): UDP/TLS/RTP/SAVPF, ICE
(RFC 8839), a DTLS fingerprint and role (RFC 8122, RFC 8842), rtcp-mux (RFC 5761),
BUNDLE (RFC 9143). The switch side gets a lean plain RTP/AVP description (RFC 3551)
whose c= and port are the gateway's own media address: the browser's candidates,
fingerprint, extmaps, ssrcs and feedback never leave the gateway (PITFALLS 4, 14).

- :func:`to_plain` turns a browser SDP into the one sent to the switch;
- :func:`to_webrtc` turns the switch's SDP into the one sent to the browser; given the
  browser's ``offer`` it builds a valid answer to it (same m-lines, mids, payload
  types, compatible direction, RFC 3264 §6);
- :meth:`MediaParams.from_webrtc` / :meth:`MediaParams.from_plain` extract what the
  media layer needs from either side;
- :func:`direction_of` and :func:`is_hold` read the call's direction.

Everything here is pure: descriptions in, new descriptions out; nothing is mutated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from gateway.sdp.errors import SdpError
from gateway.sdp.model import (
    Attribute,
    Candidate,
    Connection,
    Fingerprint,
    MediaDescription,
    Origin,
    SessionDescription,
    Timing,
    is_rtp_proto,
)

__all__ = [
    "HOST_CANDIDATE_PRIORITY",
    "PLAIN_PROTOS",
    "STATIC_PAYLOAD_TYPES",
    "WEBRTC_PROTO",
    "WEBRTC_PROTOS",
    "Codec",
    "MediaParams",
    "codecs_of",
    "direction_of",
    "first_audio",
    "is_hold",
    "to_plain",
    "to_webrtc",
]

#: The profile the gateway writes toward the browser (RFC 5764 §8, JSEP §5.1.2).
WEBRTC_PROTO = "UDP/TLS/RTP/SAVPF"
#: DTLS-SRTP protos accepted from a browser (RFC 5764 §8, RFC 7850).
WEBRTC_PROTOS = frozenset(
    {"UDP/TLS/RTP/SAVPF", "UDP/TLS/RTP/SAVP", "TCP/DTLS/RTP/SAVPF", "TCP/TLS/RTP/SAVPF"}
)
#: The profile the gateway writes toward the switch.
PLAIN_PROTO = "RTP/AVP"
#: Plain protos accepted from the switch (RFC 3551, RFC 4585). SDES-SRTP is not supported.
PLAIN_PROTOS = frozenset({"RTP/AVP", "RTP/AVPF"})
#: Priority of the gateway's single host candidate: type preference 126, local
#: preference 65535, component 1 (RFC 8445 §5.1.2.1).
HOST_CANDIDATE_PRIORITY = (126 << 24) | (65535 << 8) | (256 - 1)
#: Foundation of that candidate (any token; one candidate, one foundation).
HOST_CANDIDATE_FOUNDATION = "1"
#: Dynamic payload type range (RFC 3551 §3) searched for new telephone-event types.
DYNAMIC_PAYLOAD_TYPES = range(96, 128)
#: Static payload types: pt -> (name, clock, channels) (RFC 3551 Table 4).
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
}
#: Hash functions a DTLS fingerprint may use, with their digest size in bytes (RFC 8122 §5).
FINGERPRINT_SIZES = {"sha-1": 20, "sha-224": 28, "sha-256": 32, "sha-384": 48, "sha-512": 64}
#: Fingerprint preference when a browser sends several (aiortc sends three).
_FINGERPRINT_ORDER = ("sha-256", "sha-384", "sha-512", "sha-224", "sha-1")
TELEPHONE_EVENT = "telephone-event"
_HOLD_ADDRESSES = frozenset({"0.0.0.0", "::"})
_SETUP_ARGS = frozenset({"actpass", "passive", "active"})
_HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*")


@dataclass(frozen=True)
class Codec:
    """One RTP payload format: encoding name, clock rate, channels, payload type, fmtp.

    ``pt`` None means "not yet numbered" (the rewriter picks one)."""

    name: str
    clock: int
    channels: int = 1
    pt: int | None = None
    fmtp: str | None = None

    @property
    def is_telephone_event(self) -> bool:
        """An RFC 4733 telephone-event format."""
        return self.name.lower() == TELEPHONE_EVENT

    def same_format(self, other: Codec) -> bool:
        """Same encoding (name case-insensitive), clock and channels; pt and fmtp ignored."""
        return (
            self.name.lower() == other.name.lower()
            and self.clock == other.clock
            and self.channels == other.channels
        )

    @property
    def rtpmap(self) -> str:
        """The a=rtpmap encoding part: ``name/clock`` or ``name/clock/channels``."""
        # RFC 7587 §7: opus is always written with /2.
        if self.channels != 1 or self.name.lower() == "opus":
            return f"{self.name}/{self.clock}/{self.channels}"
        return f"{self.name}/{self.clock}"


def codecs_of(media: MediaDescription) -> list[Codec]:
    """The codecs of an RTP m-line in preference order, with rtpmap (or the static
    table, RFC 3551 §6) and fmtp; a dynamic type without rtpmap is skipped."""
    result = []
    for pt in media.payload_types:
        rtpmap = media.rtpmap(pt)
        if rtpmap is not None:
            channels = rtpmap.channels or 1
            name, clock = rtpmap.encoding, rtpmap.clock
        elif pt in STATIC_PAYLOAD_TYPES:
            name, clock, channels = STATIC_PAYLOAD_TYPES[pt]
        else:
            continue
        result.append(Codec(name, clock, channels, pt, media.fmtp(pt)))
    return result


def first_audio(sdp: SessionDescription, *, accepted: bool = True) -> tuple[int, MediaDescription]:
    """Index and m-line of the first audio stream (with a non-zero port when
    ``accepted``); SdpError when there is none."""
    for index, media in enumerate(sdp.media):
        if media.kind.lower() == "audio" and (media.port != 0 or not accepted):
            return index, media
    raise SdpError("no audio m= line")


def _is_legacy_hold(sdp: SessionDescription, media: MediaDescription) -> bool:
    # RFC 3264 §8.4: c=0.0.0.0 is the old (RFC 2543) way to put a stream on hold. In an
    # ICE description the same address only means "no default candidate yet" (RFC 8839
    # §4.2.1, Firefox with mDNS candidates: c=0.0.0.0 and port 9), so it is not a hold.
    conn = sdp.connection_for(media)
    if conn is None or conn.host not in _HOLD_ADDRESSES:
        return False
    return sdp.ice_ufrag(media) is None


def _effective_direction(sdp: SessionDescription, media: MediaDescription) -> str:
    direction = sdp.direction(media)
    if _is_legacy_hold(sdp, media):
        # "Do not send to me": the holder may still send (RFC 3264 §8.4).
        return {"sendrecv": "sendonly", "recvonly": "inactive"}.get(direction, direction)
    return direction


def direction_of(sdp: SessionDescription) -> str:
    """Direction of the first audio stream as its sender means it: media level over
    session level (RFC 8866 §6.7), c=0.0.0.0 read as a hold (RFC 3264 §8.4)."""
    _, media = first_audio(sdp, accepted=False)
    return _effective_direction(sdp, media)


def is_hold(sdp: SessionDescription) -> bool:
    """True when the sender puts the call on hold: sendonly/inactive, or the legacy
    c=0.0.0.0 form (RFC 3264 §8.4) in a non-ICE description."""
    return direction_of(sdp) in ("sendonly", "inactive")


def _answer_direction(wanted: str, offered: str) -> str:
    # RFC 3264 §6.1: the answer may send only if the offer receives, and receive only if
    # the offer sends.
    send = wanted in ("sendrecv", "sendonly") and offered in ("sendrecv", "recvonly")
    recv = wanted in ("sendrecv", "recvonly") and offered in ("sendrecv", "sendonly")
    return {(True, True): "sendrecv", (True, False): "sendonly", (False, True): "recvonly"}.get(
        (send, recv), "inactive"
    )


def _origin(session_id: int, version: int, address: str) -> Origin:
    conn = Connection.for_address(address)
    return Origin("-", str(session_id), str(version), conn.nettype, conn.addrtype, address)


def _free_pt(used: set[int]) -> int:
    for pt in DYNAMIC_PAYLOAD_TYPES:
        if pt not in used:
            used.add(pt)
            return pt
    raise SdpError("no free dynamic payload type")


def _numbered(codecs: Sequence[Codec]) -> list[Codec]:
    """Give every codec a payload type: static ones their RFC 3551 number, others a
    free dynamic one; duplicates (same pt twice) are dropped."""
    used = {c.pt for c in codecs if c.pt is not None}
    result: list[Codec] = []
    seen: set[int] = set()
    for codec in codecs:
        pt = codec.pt
        if pt is None:
            static = next(
                (
                    p
                    for p, (n, c, ch) in STATIC_PAYLOAD_TYPES.items()
                    if codec.same_format(Codec(n, c, ch))
                ),
                None,
            )
            pt = static if static is not None and static not in used else _free_pt(used)
            used.add(pt)
        if pt not in seen:
            seen.add(pt)
            result.append(replace(codec, pt=pt))
    return result


def _plain_codecs(source: Sequence[Codec]) -> list[Codec]:
    # telephone-event toward the switch is at 8000 (PITFALLS 11): keep te/8000; when the
    # browser offered only another rate, re-label the first one as 8000.
    media = [c for c in source if not c.is_telephone_event]
    events = [c for c in source if c.is_telephone_event]
    if events:
        te = next((c for c in events if c.clock == 8000), None)
        media.append(te if te is not None else replace(events[0], clock=8000, channels=1))
    return media


def _add_rtp_attributes(media: MediaDescription, codecs: Sequence[Codec]) -> None:
    for codec in codecs:
        media.add_attribute("rtpmap", f"{codec.pt} {codec.rtpmap}")
        if codec.fmtp is not None:
            media.add_attribute("fmtp", f"{codec.pt} {codec.fmtp}")


def _rejected(kind: str, proto: str, formats: list[str]) -> MediaDescription:
    # RFC 3264 §6: a declined stream keeps its place with port 0.
    return MediaDescription(kind=kind, port=0, proto=proto, formats=formats[:1] or ["0"])


def to_plain(
    sdp: SessionDescription,
    *,
    address: str,
    port: int,
    codecs: Sequence[Codec] | None = None,
    session_id: int,
    version: int,
    rtcp_mux: bool = False,
) -> SessionDescription:
    """The lean RTP/AVP description sent to the switch for a browser's ``sdp``.

    The first audio stream keeps its codecs (or ``codecs``), telephone-event at 8000,
    its direction and ptime/maxptime, with c= and port the gateway's ``address`` and
    ``port``. ICE, DTLS, rtcp-fb, extmap, ssrc, msid, mid and group lines are dropped;
    a=rtcp-mux is written only when ``rtcp_mux``. Every other m-line stays in place
    with port 0 so the m-line count matches (RFC 3264 §6)."""
    index, audio = first_audio(sdp)
    chosen = _numbered(_plain_codecs(list(codecs) if codecs is not None else codecs_of(audio)))
    if not any(not c.is_telephone_event for c in chosen):
        raise SdpError("no audio codec to offer")
    out = SessionDescription(
        origin=_origin(session_id, version, address),
        session_name="-",
        connection=Connection.for_address(address),
        timing=[Timing(0, 0)],
    )
    for i, media in enumerate(sdp.media):
        if i != index:
            proto = PLAIN_PROTO if is_rtp_proto(media.proto) else media.proto
            out.media.append(_rejected(media.kind, proto, media.formats))
            continue
        plain = MediaDescription(
            kind="audio", port=port, proto=PLAIN_PROTO, formats=[str(c.pt) for c in chosen]
        )
        _add_rtp_attributes(plain, chosen)
        if audio.ptime is not None:
            plain.add_attribute("ptime", str(audio.ptime))
        if audio.maxptime is not None:
            plain.add_attribute("maxptime", str(audio.maxptime))
        plain.add_attribute(sdp.direction(audio))
        if rtcp_mux:
            plain.add_attribute("rtcp-mux")
        out.media.append(plain)
    return out


def _check_fingerprint(fingerprint: str) -> str:
    if not _HEX_PAIRS.fullmatch(fingerprint) or len(fingerprint) != 32 * 3 - 1:
        raise ValueError(f"not a sha-256 fingerprint: {fingerprint!r}")
    return fingerprint.upper()


def _webrtc_events(
    codecs: list[Codec], events: list[Codec], offered: list[Codec] | None, used: set[int]
) -> list[Codec]:
    """telephone-event formats for the browser (PITFALLS 11): one per clock rate of the
    audio codecs (48000 beside opus, 8000 beside G.711); when answering, only the rates
    the browser offered, and all of them when none matches (Firefox offers only te/8000
    beside opus and expects it answered)."""
    if not events:
        return []
    template = events[0]
    if offered is not None:
        wanted = [c for c in offered if c.is_telephone_event]
        matching = [c for c in wanted if any(c.clock == m.clock for m in codecs)]
        return matching or wanted
    result: list[Codec] = []
    for clock in dict.fromkeys(c.clock for c in codecs):
        existing = next((e for e in events if e.clock == clock), None)
        if existing is not None:
            result.append(existing)
        else:
            result.append(replace(template, clock=clock, channels=1, pt=_free_pt(used)))
    return result


def _transport_attributes(
    media: MediaDescription, *, ice_ufrag: str, ice_pwd: str, fingerprint: str, setup: str
) -> None:
    media.add_attribute("ice-ufrag", ice_ufrag)
    media.add_attribute("ice-pwd", ice_pwd)
    media.add_attribute("fingerprint", f"sha-256 {fingerprint}")
    media.add_attribute("setup", setup)


def to_webrtc(
    sdp: SessionDescription,
    *,
    address: str,
    port: int,
    ice_ufrag: str,
    ice_pwd: str,
    fingerprint: str,
    setup: str,
    codecs: Sequence[Codec] | None = None,
    session_id: int,
    version: int,
    mid: str | None = None,
    offer: SessionDescription | None = None,
) -> SessionDescription:
    """The WebRTC description sent to the browser for the switch's plain ``sdp``.

    The gateway is an ICE-lite agent (a=ice-lite, RFC 8839 §5.3) with one UDP host
    candidate at ``address``:``port`` and a=end-of-candidates; ``fingerprint`` is the
    sha-256 of its DTLS certificate (hex with colons), ``setup`` its DTLS role.

    With ``offer`` (the browser's offer this answers) the result mirrors the offer's
    m-lines and mids, numbers codecs as the offer did and keeps only offered ones,
    makes the direction compatible (RFC 3264 §6.1) and answers telephone-event at the
    rates the browser offered. Without it (the gateway offers), m-lines follow ``sdp``.
    ``mid`` overrides the audio stream's mid (default: the offer's; "0" when offering).
    An answer to an offer without mids carries no mid and no BUNDLE group."""
    if setup not in _SETUP_ARGS:
        raise ValueError(f"setup must be actpass, passive or active, not {setup!r}")
    fingerprint = _check_fingerprint(fingerprint)
    plain_index, audio = first_audio(sdp, accepted=False)
    source = list(codecs) if codecs is not None else codecs_of(audio)
    direction = _effective_direction(sdp, audio)
    accepted = audio.port != 0

    offered: list[Codec] | None = None
    if offer is not None:
        offer_index, offer_audio = first_audio(offer)
        offered = codecs_of(offer_audio)
        layout: list[tuple[str, str, list[str], str | None, MediaDescription]] = [
            (m.kind, m.proto, m.formats, m.mid, m) for m in offer.media
        ]
        audio_index = offer_index
        audio_mid = mid if mid is not None else offer_audio.mid
        direction = _answer_direction(direction, offer.direction(offer_audio))
    else:
        layout = [(m.kind, m.proto, m.formats, None, m) for m in sdp.media]
        audio_index = plain_index
        audio_mid = mid if mid is not None else "0"

    media_codecs = [c for c in source if not c.is_telephone_event]
    events = [c for c in source if c.is_telephone_event]
    if offered is not None:
        # RFC 3264 §6.1: answer only offered formats, numbered as the offer numbered them.
        mapped = []
        for codec in media_codecs:
            match = next((o for o in offered if o.same_format(codec)), None)
            if match is not None:
                mapped.append(replace(codec, pt=match.pt))
        media_codecs = mapped
        if not media_codecs and accepted:
            raise SdpError("no codec in common with the offer")
    media_codecs = _numbered(media_codecs)
    used = {c.pt for c in media_codecs if c.pt is not None} | {
        e.pt for e in events if e.pt is not None
    }
    chosen = _numbered(media_codecs + _webrtc_events(media_codecs, events, offered, used))
    if not chosen:
        # Only for a declined stream: an m-line still needs one format (RFC 8866 §5.14).
        chosen = _numbered((offered or source)[:1]) or [Codec("PCMU", 8000, 1, 0)]

    out = SessionDescription(
        origin=_origin(session_id, version, address),
        session_name="-",
        timing=[Timing(0, 0)],
        attributes=[Attribute("ice-lite")],
    )
    transport = {
        "ice_ufrag": ice_ufrag,
        "ice_pwd": ice_pwd,
        "fingerprint": fingerprint,
        "setup": setup,
    }
    used_mids = {audio_mid} if audio_mid is not None else set()
    for i, (kind, proto, formats, their_mid, template) in enumerate(layout):
        if i == audio_index:
            m = MediaDescription(
                kind="audio",
                port=port if accepted else 0,
                proto=WEBRTC_PROTO,
                formats=[str(c.pt) for c in chosen],
                connection=Connection.for_address(address),
            )
            _transport_attributes(m, **transport)
            if audio_mid is not None:
                m.add_attribute("mid", audio_mid)
            m.add_attribute(direction if accepted else "inactive")
            m.add_attribute("rtcp-mux")
            _add_rtp_attributes(m, chosen)
            if audio.ptime is not None:
                m.add_attribute("ptime", str(audio.ptime))
            if audio.maxptime is not None:
                m.add_attribute("maxptime", str(audio.maxptime))
            if accepted:
                host = Candidate(
                    HOST_CANDIDATE_FOUNDATION,
                    1,
                    "udp",
                    HOST_CANDIDATE_PRIORITY,
                    address,
                    port,
                    "host",
                )
                m.add_attribute("candidate", str(host))
                m.add_attribute("end-of-candidates")
            out.media.append(m)
            continue
        # A declined stream (RFC 3264 §6, JSEP §5.3.1): port 0, its mid, and the
        # transport attributes WebRTC stacks still parse on every m-line.
        rtp = is_rtp_proto(proto)
        rejected = _rejected(kind, WEBRTC_PROTO if rtp else proto, formats)
        rejected.connection = Connection.for_address(address)
        _transport_attributes(rejected, **transport)
        if their_mid is None and offer is None:
            their_mid = str(i)
            while their_mid in used_mids:
                their_mid += "x"
        if their_mid is not None:
            # RFC 5888 §9.1: an answer echoes the offer's mids, and only when it has them.
            used_mids.add(their_mid)
            rejected.add_attribute("mid", their_mid)
        if rtp:
            rejected.add_attribute("inactive")
            rejected.add_attribute("rtcp-mux")
            # Keep the declined format's rtpmap: some stacks (aiortc) still match codecs
            # on a port-0 m-line.
            pt = int(rejected.formats[0])
            declined = next((c for c in codecs_of(template) if c.pt == pt), None)
            if declined is not None:
                rejected.add_attribute("rtpmap", f"{pt} {declined.rtpmap}")
        out.media.append(rejected)
    if accepted and audio_mid is not None:
        out.attributes.append(Attribute("group", f"BUNDLE {audio_mid}"))
    return out


def _preferred_fingerprint(fingerprints: list[Fingerprint]) -> Fingerprint | None:
    usable = [
        f
        for f in fingerprints
        if f.algorithm in FINGERPRINT_SIZES
        and _HEX_PAIRS.fullmatch(f.value)
        and len(f.value) == FINGERPRINT_SIZES[f.algorithm] * 3 - 1
    ]
    usable.sort(key=lambda f: _FINGERPRINT_ORDER.index(f.algorithm))
    return usable[0] if usable else None


@dataclass
class MediaParams:
    """What the media layer needs from one side's SDP (first audio stream)."""

    #: "webrtc" (browser side) or "plain" (switch side).
    profile: str
    #: Index of the audio m-line.
    index: int
    #: Remote address and port: the default RTP destination (c= and m=).
    address: str | None
    port: int
    #: RTCP port: a=rtcp, else port + 1 (RFC 3605, RFC 3550 §11); the RTP port with rtcp-mux.
    rtcp_port: int
    rtcp_mux: bool
    codecs: list[Codec]
    direction: str
    hold: bool
    ptime: int | None = None
    mid: str | None = None
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    candidates: list[Candidate] = field(default_factory=list)
    fingerprint: Fingerprint | None = None
    setup: str | None = None
    #: Things skipped rather than failed (e.g. mDNS candidates), for the log.
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def _common(cls, sdp: SessionDescription, profile: str) -> MediaParams:
        index, media = first_audio(sdp)
        conn = sdp.connection_for(media)
        rtcp = media.rtcp
        rtcp_port = media.port if media.rtcp_mux else (rtcp.port if rtcp else media.port + 1)
        direction = _effective_direction(sdp, media)
        return cls(
            profile=profile,
            index=index,
            address=conn.host if conn is not None else None,
            port=media.port,
            rtcp_port=rtcp_port,
            rtcp_mux=media.rtcp_mux,
            codecs=codecs_of(media),
            direction=direction,
            hold=direction in ("sendonly", "inactive"),
            ptime=media.ptime,
            mid=media.mid,
        )

    @classmethod
    def from_webrtc(cls, sdp: SessionDescription) -> MediaParams:
        """Browser side: ICE credentials, candidates (mDNS ``.local`` ones skipped with a
        warning, PITFALLS 5), DTLS fingerprint and role, codecs, direction. SdpError when
        the stream is not DTLS-SRTP or lacks a ufrag, pwd or usable fingerprint."""
        index, media = first_audio(sdp)
        if media.proto.upper() not in WEBRTC_PROTOS:
            raise SdpError(f"audio stream is not DTLS-SRTP (proto {media.proto})")
        params = cls._common(sdp, "webrtc")
        params.ice_ufrag = sdp.ice_ufrag(media)
        params.ice_pwd = sdp.ice_pwd(media)
        if not params.ice_ufrag:
            raise SdpError("no a=ice-ufrag for the audio stream")
        if not params.ice_pwd:
            raise SdpError("no a=ice-pwd for the audio stream")
        fingerprints = sdp.fingerprints(media)
        if not fingerprints:
            raise SdpError("no a=fingerprint for the audio stream")
        params.fingerprint = _preferred_fingerprint(fingerprints)
        if params.fingerprint is None:
            raise SdpError("no usable a=fingerprint for the audio stream")
        params.setup = sdp.setup(media)
        for candidate in media.candidates():
            if candidate.is_mdns:
                params.warnings.append(f"skipped mDNS candidate {candidate.address}")
            else:
                params.candidates.append(candidate)
        return params

    @classmethod
    def from_plain(cls, sdp: SessionDescription) -> MediaParams:
        """Switch side: remote RTP address and port, RTCP port, codecs, direction.
        SdpError when the stream is not plain RTP or has no c= address."""
        _, media = first_audio(sdp)
        if media.proto.upper() not in PLAIN_PROTOS:
            raise SdpError(f"audio stream proto {media.proto} not supported")
        params = cls._common(sdp, "plain")
        if params.address is None:
            raise SdpError("no c= line for the audio stream")
        return params
