"""gateway.sdp.rewrite: browser SDP -> lean plain SDP for the switch, switch SDP ->
WebRTC SDP for the browser (checked against a real aiortc peer), hold detection and
the media parameters each side yields."""

from __future__ import annotations

from collections.abc import Iterator

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from gateway.sdp.errors import SdpError
from gateway.sdp.model import Candidate, Connection, Fingerprint, SessionDescription, parse
from gateway.sdp.rewrite import (
    HOST_CANDIDATE_PRIORITY,
    Codec,
    MediaParams,
    codecs_of,
    direction_of,
    is_hold,
    to_plain,
    to_webrtc,
)

from .vectors import load, text

GW = "203.0.113.10"
FP = ":".join(f"{i:02x}" for i in range(32))
WEBRTC_ONLY = (
    "ice-",
    "fingerprint",
    "setup",
    "candidate",
    "end-of-candidates",
    "rtcp-fb",
    "extmap",
    "ssrc",
    "msid",
    "mid",
    "group",
    "rtcp-mux",
    "rtcp-rsize",
)


def plain(sdp: SessionDescription, **kw: object) -> SessionDescription:
    args: dict[str, object] = {"address": GW, "port": 30000, "session_id": 77, "version": 1}
    args.update(kw)
    return to_plain(sdp, **args)  # type: ignore[arg-type]


def webrtc(sdp: SessionDescription, **kw: object) -> SessionDescription:
    args: dict[str, object] = {
        "address": GW,
        "port": 40000,
        "ice_ufrag": "gwUfrag1",
        "ice_pwd": "gwPassword0123456789abcd",
        "fingerprint": FP,
        "setup": "passive",
        "session_id": 88,
        "version": 3,
    }
    args.update(kw)
    return to_webrtc(sdp, **args)  # type: ignore[arg-type]


def attribute_names(sdp: SessionDescription) -> list[str]:
    return [a.name for a in sdp.attributes] + [a.name for m in sdp.media for a in m.attributes]


# --- to_plain -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["chrome_offer.sdp", "firefox_offer.sdp", "aiortc_offer.sdp"])
def test_to_plain_is_lean_rtp_avp_at_the_gateway_address(name: str) -> None:
    browser = load(name)
    out = plain(browser)
    body = str(out)
    assert len(body.encode()) < 400, body
    assert parse(body) == out
    for attr in attribute_names(out):
        assert not attr.startswith(WEBRTC_ONLY), attr
    (m,) = out.media
    assert (m.kind, m.port, m.proto) == ("audio", 30000, "RTP/AVP")
    assert out.connection == Connection("IN", "IP4", GW)
    assert m.connection is None
    assert out.origin.address == GW and out.origin.session_id == "77"
    assert "0.0.0.0" not in body and "192.0.2.2" not in body
    # the browser's codecs in its order, minus telephone-event at other rates
    offered = [
        c for c in codecs_of(browser.media[0]) if c.name != "telephone-event" or c.clock == 8000
    ]
    assert [(c.name, c.pt) for c in codecs_of(m)] == [(c.name, c.pt) for c in offered]
    assert out.direction(m) == "sendrecv"
    assert not is_hold(out)


def test_to_plain_chrome_exact() -> None:
    assert str(plain(load("chrome_offer.sdp"))) == (
        "v=0\r\n"
        "o=- 77 1 IN IP4 203.0.113.10\r\n"
        "s=-\r\n"
        "c=IN IP4 203.0.113.10\r\n"
        "t=0 0\r\n"
        "m=audio 30000 RTP/AVP 111 63 9 0 8 13 126\r\n"
        "a=rtpmap:111 opus/48000/2\r\n"
        "a=fmtp:111 minptime=10;useinbandfec=1\r\n"
        "a=rtpmap:63 red/48000/2\r\n"
        "a=fmtp:63 111/111\r\n"
        "a=rtpmap:9 G722/8000\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:13 CN/8000\r\n"
        "a=rtpmap:126 telephone-event/8000\r\n"
        "a=sendrecv\r\n"
    )


def test_to_plain_firefox_exact() -> None:
    """Firefox: c=0.0.0.0 and m=audio 9 are never passed on, te/8000 kept with its fmtp,
    the session-level sendrecv read."""
    assert str(plain(load("firefox_offer.sdp"), address="2001:db8::10", port=30002)) == (
        "v=0\r\n"
        "o=- 77 1 IN IP6 2001:db8::10\r\n"
        "s=-\r\n"
        "c=IN IP6 2001:db8::10\r\n"
        "t=0 0\r\n"
        "m=audio 30002 RTP/AVP 109 9 0 8 101\r\n"
        "a=rtpmap:109 opus/48000/2\r\n"
        "a=fmtp:109 maxplaybackrate=48000;stereo=1;useinbandfec=1\r\n"
        "a=rtpmap:9 G722/8000\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-15\r\n"
        "a=sendrecv\r\n"
    )


def test_to_plain_maps_telephone_event_48000_to_8000_when_alone() -> None:
    raw = (
        text("chrome_offer.sdp")
        .replace(" 110 126\r\n", " 110\r\n")
        .replace("a=rtpmap:126 telephone-event/8000\r\n", "")
    )
    out = plain(parse(raw))
    m = out.media[0]
    assert m.formats[-1] == "110"
    assert m.rtpmap(110) is not None and (m.rtpmap(110).encoding, m.rtpmap(110).clock) == (  # type: ignore[union-attr]
        "telephone-event",
        8000,
    )
    assert "48000" not in m.attribute_values("rtpmap")[-1]


def test_to_plain_with_codec_subset_ptime_hold_and_rtcp_mux() -> None:
    raw = text("chrome_offer.sdp").replace(
        "a=sendrecv\r\n", "a=sendonly\r\na=ptime:40\r\na=maxptime:60\r\n"
    )
    subset = [
        Codec("PCMA", 8000, 1, 8),
        Codec("telephone-event", 8000, 1, 126, "0-16"),
        Codec("G729", 8000),
    ]
    out = plain(parse(raw), codecs=subset, rtcp_mux=True)
    m = out.media[0]
    assert m.formats == ["8", "18", "126"]  # te goes last; G729 gets its static number
    assert m.fmtp(126) == "0-16"
    assert (m.ptime, m.maxptime) == (40, 60)
    assert m.rtcp_mux
    assert out.direction(m) == "sendonly" and is_hold(out)


def test_to_plain_keeps_m_line_count_with_video_rejected() -> None:
    browser = load("chrome_offer_av.sdp")
    out = plain(browser)
    assert [(m.kind, m.port) for m in out.media] == [("audio", 30000), ("video", 0)]
    assert out.media[1].proto == "RTP/AVP" and out.media[1].attributes == []
    assert len(str(out).encode()) < 400
    # a data channel keeps its proto, also rejected
    raw = (
        text("chrome_offer.sdp")
        + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"
    )
    out = plain(parse(raw))
    assert str(out).endswith("m=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\n")


def test_to_plain_errors() -> None:
    with pytest.raises(SdpError, match="^no audio m= line$"):
        plain(parse(text("chrome_offer.sdp").replace("m=audio 50931", "m=audio 0")))
    with pytest.raises(SdpError, match="^no audio codec to offer$"):
        plain(load("chrome_offer.sdp"), codecs=[Codec("telephone-event", 8000, 1, 101)])


# --- to_webrtc ------------------------------------------------------------------------


def test_to_webrtc_offer_matches_the_vector_chromium_accepted() -> None:
    """tests/vectors/sdp/gateway_offer_to_chrome.sdp was produced by these arguments and
    given to Chromium 156, which answered with chrome_answer.sdp (see README.md)."""
    switch = load("kamailio_plain_offer.sdp")
    codecs = [
        Codec("opus", 48000, 2, 111, "minptime=10;useinbandfec=1"),
        *codecs_of(switch.media[0]),
    ]
    out = to_webrtc(
        switch,
        address="127.0.0.1",
        port=40000,
        ice_ufrag="gw0123ab",
        ice_pwd="0123456789abcdefghijklmn",
        fingerprint=":".join(["ab"] * 32),
        setup="actpass",
        codecs=codecs,
        session_id=4242,
        version=1,
    )
    assert str(out) == text("gateway_offer_to_chrome.sdp")
    answer = load("chrome_answer.sdp")
    m = answer.media[0]
    assert answer.setup(m) == "active"
    assert [c.name for c in codecs_of(m)] == [
        "opus",
        "PCMU",
        "PCMA",
        "telephone-event",
        "telephone-event",
    ]


def test_to_webrtc_offer_structure() -> None:
    out = webrtc(load("kamailio_plain_offer.sdp"), setup="actpass")
    assert out.ice_lite and out.attribute("group") == "BUNDLE 0"
    (m,) = out.media
    assert (m.port, m.proto, m.mid, m.rtcp_mux) == (40000, "UDP/TLS/RTP/SAVPF", "0", True)
    assert out.connection_for(m) == Connection("IN", "IP4", GW)
    assert (out.ice_ufrag(m), out.ice_pwd(m), out.setup(m)) == (
        "gwUfrag1",
        "gwPassword0123456789abcd",
        "actpass",
    )
    assert out.fingerprints(m) == [Fingerprint("sha-256", FP.upper())]
    assert m.candidates() == [Candidate("1", 1, "udp", HOST_CANDIDATE_PRIORITY, GW, 40000, "host")]
    assert HOST_CANDIDATE_PRIORITY == 2130706431
    assert (
        "a=candidate:1 1 udp 2130706431 203.0.113.10 40000 typ host\r\na=end-of-candidates\r\n"
        in str(out)
    )
    # the switch's codecs as they were, G.711 beside te/8000, no opus so no te/48000
    assert [(c.name, c.clock, c.pt, c.fmtp) for c in codecs_of(m)] == [
        ("G729", 8000, 18, "annexb=no"),
        ("PCMU", 8000, 0, None),
        ("PCMA", 8000, 8, None),
        ("telephone-event", 8000, 101, "0-16"),
    ]
    assert out.direction(m) == "sendrecv" and m.ptime == 20
    for attr in ("rtcp", "ssrc", "extmap"):
        assert not m.has_attribute(attr)
    # a parse of what we wrote gives the same description and the browser-side extraction works
    assert parse(str(out)) == out
    params = MediaParams.from_webrtc(out)
    assert params.candidates == m.candidates() and params.fingerprint == Fingerprint(
        "sha-256", FP.upper()
    )


def test_to_webrtc_offer_adds_telephone_event_48000_beside_opus() -> None:
    switch = load("kamailio_plain_offer.sdp")
    out = webrtc(switch, codecs=[Codec("opus", 48000, 2), *codecs_of(switch.media[0])], mid="audio")
    m = out.media[0]
    events = [(c.clock, c.pt) for c in codecs_of(m) if c.name == "telephone-event"]
    assert events == [(48000, 97), (8000, 101)]
    assert m.rtpmap(96) is not None and m.rtpmap(96).encoding == "opus"  # type: ignore[union-attr]
    assert m.mid == "audio" and out.attribute("group") == "BUNDLE audio"


def test_to_webrtc_answers_firefox_with_telephone_event_8000_beside_opus() -> None:
    """Firefox offers te/8000 only: the answer carries te/8000 next to opus (PITFALLS 11)."""
    firefox = load("firefox_offer.sdp")
    switch_answer = load("kamailio_plain_answer.sdp")
    transcoded = [
        Codec("opus", 48000, 2),
        *[c for c in codecs_of(switch_answer.media[0]) if c.name == "telephone-event"],
    ]
    out = webrtc(switch_answer, offer=firefox, codecs=transcoded)
    m = out.media[0]
    assert [(c.name, c.clock, c.pt) for c in codecs_of(m)] == [
        ("opus", 48000, 109),
        ("telephone-event", 8000, 101),
    ]
    assert m.fmtp(101) == "0-15"  # as Firefox offered it
    assert m.mid == "0" and out.attribute("group") == "BUNDLE 0"
    # passthrough: the switch's PCMU answered with the browser's te/8000
    out = webrtc(switch_answer, offer=firefox)
    assert [(c.name, c.pt) for c in codecs_of(out.media[0])] == [
        ("PCMU", 0),
        ("telephone-event", 101),
    ]


def test_to_webrtc_answers_chrome_with_the_rates_it_offered() -> None:
    chrome = load("chrome_offer.sdp")
    switch_answer = load("kamailio_plain_answer.sdp")
    out = webrtc(switch_answer, offer=chrome)
    assert [(c.name, c.clock, c.pt) for c in codecs_of(out.media[0])] == [
        ("PCMU", 8000, 0),
        ("telephone-event", 8000, 126),
    ]
    te = Codec("telephone-event", 8000, 1, 101, "0-16")
    out = webrtc(
        switch_answer, offer=chrome, codecs=[Codec("opus", 48000, 2), Codec("PCMA", 8000), te]
    )
    assert [(c.name, c.clock, c.pt) for c in codecs_of(out.media[0])] == [
        ("opus", 48000, 111),
        ("PCMA", 8000, 8),
        ("telephone-event", 48000, 110),
        ("telephone-event", 8000, 126),
    ]


def test_to_webrtc_direction_and_hold_mapping() -> None:
    hold = load("asterisk_hold_offer.sdp")
    legacy = load("legacy_hold_offer.sdp")
    assert webrtc(hold).direction(webrtc(hold).media[0]) == "sendonly"
    assert webrtc(legacy).direction(webrtc(legacy).media[0]) == "sendonly"  # c=0.0.0.0 -> sendonly
    recvonly_legacy = parse(text("legacy_hold_offer.sdp") + "a=recvonly\r\n")
    out = webrtc(recvonly_legacy)
    assert out.direction(out.media[0]) == "inactive"
    # the browser-side description never carries the hold address
    assert "0.0.0.0" not in str(webrtc(legacy))
    # answering: the answer may only send if the offer receives (RFC 3264 §6.1)
    browser_hold = parse(text("chrome_offer.sdp").replace("a=sendrecv", "a=sendonly"))
    out = webrtc(load("kamailio_plain_answer.sdp"), offer=browser_hold)
    assert out.direction(out.media[0]) == "recvonly"
    out = webrtc(hold, offer=browser_hold)
    assert out.direction(out.media[0]) == "inactive"


def test_to_webrtc_rejected_audio_and_mirrored_m_lines() -> None:
    rejected = parse(text("kamailio_plain_answer.sdp").replace("m=audio 10000", "m=audio 0"))
    out = webrtc(rejected, offer=load("chrome_offer.sdp"))
    m = out.media[0]
    assert m.port == 0 and out.direction(m) == "inactive"
    assert m.candidates() == [] and not out.has_attribute("group")
    # answering an audio+video offer: same m-lines and mids, video declined
    offer = load("chrome_offer_av.sdp")
    out = webrtc(load("kamailio_plain_answer_av.sdp"), offer=offer)
    assert [(m.kind, m.port > 0, m.mid) for m in out.media] == [
        ("audio", True, "0"),
        ("video", False, "1"),
    ]
    assert out.media[1].rtpmap(96) is not None and out.attribute("group") == "BUNDLE 0"
    # offering toward the browser: m-lines follow the switch's, mids unique
    out = webrtc(load("kamailio_plain_answer_av.sdp"), setup="actpass")
    assert [(m.kind, m.port > 0, m.mid) for m in out.media] == [
        ("audio", True, "0"),
        ("video", False, "1"),
    ]
    out = webrtc(load("kamailio_plain_answer_av.sdp"), setup="actpass", mid="1")
    assert [m.mid for m in out.media] == ["1", "1x"]


def test_to_webrtc_argument_and_codec_errors() -> None:
    switch = load("kamailio_plain_answer.sdp")
    with pytest.raises(ValueError, match="setup must be"):
        webrtc(switch, setup="holdconn")
    for bad in ("AB:CD", FP + ":00", FP.replace(":", "-"), "sha-256 " + FP):
        with pytest.raises(ValueError, match="not a sha-256 fingerprint"):
            webrtc(switch, fingerprint=bad)
    g729_only = parse(text("kamailio_plain_offer.sdp").replace("RTP/AVP 18 0 8 101", "RTP/AVP 18"))
    with pytest.raises(SdpError, match="^no codec in common with the offer$"):
        webrtc(g729_only, offer=load("chrome_offer.sdp"))
    with pytest.raises(SdpError, match="^no audio m= line$"):
        webrtc(parse("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\n"))


# --- a real WebRTC stack accepts what to_webrtc writes -------------------------------


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """aiortc gathers host candidates on every interface; the project allows loopback
    only, so aioice is told the host has just 127.0.0.1 (its address enumeration is
    replaced, nothing in the SDP path is)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    yield


async def _aiortc_answer_round(
    video: bool, switch_answer: str, direction: str = "sendrecv"
) -> list[str | None]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio", direction=direction)
        if video:
            pc.addTransceiver("video", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        offer = parse(pc.localDescription.sdp)
        towards_switch = plain(offer)
        assert len(towards_switch.media) == len(offer.media)
        answer = webrtc(load(switch_answer), offer=offer)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=str(answer), type="answer"))
        assert pc.signalingState == "stable"
        return [t.currentDirection for t in pc.getTransceivers()]
    finally:
        await pc.close()


@pytest.mark.usefixtures("loopback_only")
async def test_aiortc_accepts_the_answer_to_its_offer() -> None:
    assert await _aiortc_answer_round(False, "kamailio_plain_answer.sdp") == ["sendrecv"]


@pytest.mark.usefixtures("loopback_only")
async def test_aiortc_accepts_an_answer_declining_its_video() -> None:
    assert await _aiortc_answer_round(True, "kamailio_plain_answer_av.sdp") == [
        "sendrecv",
        "inactive",
    ]


@pytest.mark.usefixtures("loopback_only")
async def test_aiortc_sees_the_switch_hold_in_the_answer() -> None:
    # The switch answers sendonly (it holds): aiortc must end up receive-only.
    assert await _aiortc_answer_round(False, "asterisk_hold_offer.sdp") == ["recvonly"]
    assert await _aiortc_answer_round(False, "legacy_hold_offer.sdp") == ["recvonly"]


@pytest.mark.usefixtures("loopback_only")
async def test_aiortc_accepts_the_gateway_offer() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        offer = webrtc(load("kamailio_plain_offer.sdp"), setup="actpass")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=str(offer), type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = parse(pc.localDescription.sdp)
        params = MediaParams.from_webrtc(answer)
        assert [c.name for c in params.codecs] == ["PCMU", "PCMA"]
        assert params.setup == "active"  # aiortc takes the DTLS client role against actpass
    finally:
        await pc.close()


# --- direction and hold ---------------------------------------------------------------


def test_direction_of_and_is_hold() -> None:
    assert direction_of(load("chrome_offer.sdp")) == "sendrecv"
    assert not is_hold(load("chrome_offer.sdp"))
    assert direction_of(load("asterisk_hold_offer.sdp")) == "sendonly"
    assert is_hold(load("asterisk_hold_offer.sdp"))
    # RFC 3264 §8.4 legacy form: c=0.0.0.0 without a direction attribute
    assert is_hold(load("legacy_hold_offer.sdp"))
    assert direction_of(load("legacy_hold_offer.sdp")) == "sendonly"
    # ... but Firefox's c=0.0.0.0 with ICE is no hold (no default candidate)
    assert not is_hold(load("firefox_offer.sdp"))
    inactive = parse(text("kamailio_plain_answer.sdp").replace("a=sendrecv", "a=inactive"))
    assert is_hold(inactive) and direction_of(inactive) == "inactive"
    recvonly = parse(text("kamailio_plain_answer.sdp").replace("a=sendrecv", "a=recvonly"))
    assert not is_hold(recvonly)
    ipv6_legacy = parse(text("sipp_uac_offer.sdp").replace("c=IN IP4 127.0.0.1", "c=IN IP6 ::"))
    assert is_hold(ipv6_legacy)
    assert not is_hold(load("sipp_uac_offer.sdp"))


# --- MediaParams ----------------------------------------------------------------------


def test_media_params_from_chrome() -> None:
    p = MediaParams.from_webrtc(load("chrome_offer.sdp"))
    assert (p.profile, p.index, p.address, p.port, p.mid) == ("webrtc", 0, "192.0.2.2", 50931, "0")
    assert (p.ice_ufrag, p.ice_pwd) == ("pKhe", "qXlrabghlyGpZESTBLvItem3")
    assert p.fingerprint is not None and p.fingerprint.algorithm == "sha-256"
    assert (p.setup, p.rtcp_mux, p.rtcp_port, p.direction, p.hold) == (
        "actpass",
        True,
        50931,
        "sendrecv",
        False,
    )
    assert len(p.candidates) == 4 and p.warnings == []
    assert [c.name for c in p.codecs][:3] == ["opus", "red", "G722"]


def test_media_params_from_firefox_skips_mdns_candidates_with_a_warning() -> None:
    p = MediaParams.from_webrtc(load("firefox_offer.sdp"))
    assert [(c.typ, c.address, c.component) for c in p.candidates] == [
        ("srflx", "203.0.113.7", 1),
        ("srflx", "203.0.113.7", 2),
    ]
    assert len(p.warnings) == 4
    assert p.warnings[0] == "skipped mDNS candidate 3f2a1c7e-7c55-4b6e-9d0a-2f1d8f0b6a11.local"
    assert p.fingerprint is not None and p.fingerprint.value.startswith("8A:B2")  # session level
    assert (p.address, p.port, p.hold, p.direction) == ("0.0.0.0", 9, False, "sendrecv")
    # every candidate hidden: still no failure, just warnings
    only_mdns = "".join(
        line for line in text("firefox_offer.sdp").splitlines(True) if "srflx" not in line
    )
    p = MediaParams.from_webrtc(parse(only_mdns))
    assert p.candidates == [] and len(p.warnings) == 4


def test_media_params_prefers_sha_256_among_several_fingerprints() -> None:
    p = MediaParams.from_webrtc(load("aiortc_offer.sdp"))
    assert p.fingerprint is not None and p.fingerprint.algorithm == "sha-256"
    only_384 = "".join(
        line
        for line in text("aiortc_offer.sdp").splitlines(True)
        if "sha-256" not in line and "sha-512" not in line
    )
    p = MediaParams.from_webrtc(parse(only_384))
    assert p.fingerprint is not None and p.fingerprint.algorithm == "sha-384"


@pytest.mark.parametrize(
    ("remove", "replace_with", "reason"),
    [
        ("a=ice-ufrag:pKhe\r\n", "", "no a=ice-ufrag for the audio stream"),
        ("a=ice-pwd:qXlrabghlyGpZESTBLvItem3\r\n", "", "no a=ice-pwd for the audio stream"),
        ("a=fingerprint:sha-256 ", "a=x:", "no a=fingerprint for the audio stream"),
        (
            "a=fingerprint:sha-256 66:E1",
            "a=fingerprint:md5 66:E1",
            "no usable a=fingerprint for the audio stream",
        ),
        (
            "a=fingerprint:sha-256 66:E1:",
            "a=fingerprint:sha-256 66:E1:E1:",
            "no usable a=fingerprint for the audio stream",
        ),
        ("UDP/TLS/RTP/SAVPF", "RTP/SAVPF", "audio stream is not DTLS-SRTP (proto RTP/SAVPF)"),
        ("a=setup:actpass", "a=setup:maybe", "bad a=setup value 'maybe'"),
    ],
)
def test_media_params_missing_webrtc_bits_are_sdp_errors(
    remove: str, replace_with: str, reason: str
) -> None:
    raw = text("chrome_offer.sdp")
    assert remove in raw
    with pytest.raises(SdpError) as info:
        MediaParams.from_webrtc(parse(raw.replace(remove, replace_with)))
    assert str(info.value) == reason


def test_media_params_from_plain() -> None:
    p = MediaParams.from_plain(load("kamailio_plain_offer.sdp"))
    assert (p.profile, p.address, p.port, p.rtcp_port, p.rtcp_mux) == (
        "plain",
        "127.0.0.1",
        30000,
        30001,
        False,
    )
    assert p.codecs[0] == Codec("G729", 8000, 1, 18, "annexb=no")
    assert (p.ptime, p.direction, p.hold, p.ice_ufrag, p.fingerprint) == (
        20,
        "sendrecv",
        False,
        None,
        None,
    )
    p = MediaParams.from_plain(load("sipp_uac_offer.sdp"))
    assert (p.port, p.rtcp_port, [c.name for c in p.codecs]) == (6000, 6001, ["PCMU"])
    p = MediaParams.from_plain(load("legacy_hold_offer.sdp"))
    assert (p.address, p.hold, p.direction) == ("0.0.0.0", True, "sendonly")
    p = MediaParams.from_plain(parse(text("sipp_uac_offer.sdp") + "a=rtcp-mux\r\n"))
    assert (p.rtcp_mux, p.rtcp_port) == (True, 6000)
    with pytest.raises(SdpError, match=r"^audio stream proto UDP/TLS/RTP/SAVPF not supported$"):
        MediaParams.from_plain(load("chrome_offer.sdp"))
    no_c = text("sipp_uac_offer.sdp").replace("c=IN IP4 127.0.0.1\r\n", "")
    with pytest.raises(SdpError, match="^no c= line for the audio stream$"):
        MediaParams.from_plain(parse(no_c))


def test_codecs_of_static_and_unmapped_types() -> None:
    sdp = parse(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 18 13 97\r\n"
    )
    assert codecs_of(sdp.media[0]) == [
        Codec("PCMU", 8000, 1, 0),
        Codec("PCMA", 8000, 1, 8),
        Codec("G729", 8000, 1, 18),
        Codec("CN", 8000, 1, 13),
    ]  # 97 has no rtpmap: unusable, skipped
    assert Codec("opus", 48000, 2).rtpmap == "opus/48000/2"
    assert Codec("PCMU", 8000).rtpmap == "PCMU/8000"
    assert Codec("pcmu", 8000, 1, 0).same_format(Codec("PCMU", 8000))
    assert not Codec("PCMU", 8000).same_format(Codec("PCMU", 16000))


def test_to_webrtc_declined_audio_keeps_one_offered_format_and_data_channel_is_mirrored() -> None:
    # The switch declines audio with a codec the browser never offered: the answer still
    # has one format, taken from the offer (RFC 8866 §5.14 needs at least one).
    declined = parse(
        text("kamailio_plain_offer.sdp").replace(
            "m=audio 30000 RTP/AVP 18 0 8 101", "m=audio 0 RTP/AVP 18"
        )
    )
    out = webrtc(declined, offer=load("chrome_offer.sdp"))
    assert (out.media[0].port, out.media[0].formats) == (0, ["111"])
    out = webrtc(
        parse(
            text("sipp_uac_offer.sdp")
            .replace("RTP/AVP 0", "RTP/AVP 97")
            .replace("m=audio 6000", "m=audio 0")
        )
    )
    assert out.media[0].formats == ["0"] and out.media[0].port == 0
    # A data channel in the browser's offer is declined with its own proto and mid.
    raw = text("chrome_offer.sdp").replace("a=group:BUNDLE 0", "a=group:BUNDLE 0 1") + (
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sctp-port:5000\r\n"
    )
    out = webrtc(load("kamailio_plain_answer.sdp"), offer=parse(raw))
    dc = out.media[1]
    assert (dc.kind, dc.port, dc.proto, dc.formats, dc.mid) == (
        "application",
        0,
        "UDP/DTLS/SCTP",
        ["webrtc-datachannel"],
        "1",
    )
    assert not dc.has_attribute("rtcp-mux") and out.attribute("group") == "BUNDLE 0"


def test_payload_type_numbering() -> None:
    # duplicates of one payload type keep the first; a missing ptime is not invented
    sdp = load("sipp_uac_offer.sdp")
    out = webrtc(sdp, codecs=[Codec("PCMU", 8000, 1, 0), Codec("PCMA", 8000, 1, 0)])
    assert out.media[0].formats == ["0"] and out.media[0].ptime is None
    # every dynamic type taken: no room for a new telephone-event rate
    crowded = [Codec(f"X{pt}", 48000, 1, pt) for pt in range(96, 128)] + [
        Codec("telephone-event", 8000, 1, 101)
    ]
    with pytest.raises(SdpError, match="^no free dynamic payload type$"):
        webrtc(sdp, codecs=crowded)


def test_answer_to_an_offer_without_mids_has_none() -> None:
    """A pre-BUNDLE offer (no a=mid): the answer must not invent mids (RFC 5888 §9.1)."""
    lines = [
        ln
        for ln in text("chrome_offer_av.sdp").splitlines(True)
        if not ln.startswith(("a=mid", "a=group"))
    ]
    out = webrtc(load("kamailio_plain_answer_av.sdp"), offer=parse("".join(lines)))
    assert [m.mid for m in out.media] == [None, None]
    assert not out.has_attribute("group")
    assert "a=mid" not in str(out)
