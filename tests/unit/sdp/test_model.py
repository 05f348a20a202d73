"""gateway.sdp.model: parse/serialise round trips, exact rejection reasons, limits and
the typed attribute helpers, on captured and constructed vectors."""

from __future__ import annotations

import pytest

from gateway.sdp.errors import SdpError
from gateway.sdp.model import (
    MAX_LINE_LENGTH,
    MAX_MEDIA,
    MAX_SDP_SIZE,
    Attribute,
    Bandwidth,
    Candidate,
    Connection,
    ExtMap,
    Fingerprint,
    MediaDescription,
    Origin,
    Rtcp,
    RtpMap,
    SessionDescription,
    Timing,
    parse,
)
from gateway.sdp.rewrite import MediaParams, codecs_of, is_hold, to_plain

from .vectors import NAMES, load, text

MINIMAL = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
AUDIO = "m=audio 4000 RTP/AVP 0\r\n"


def test_vectors_are_present() -> None:
    for name in (
        "chrome_offer.sdp",
        "chrome_offer_av.sdp",
        "chrome_answer.sdp",
        "firefox_offer.sdp",
        "aiortc_offer.sdp",
        "kamailio_plain_offer.sdp",
        "kamailio_plain_answer.sdp",
        "sipp_uac_offer.sdp",
    ):
        assert name in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_every_vector(name: str) -> None:
    raw = text(name)
    assert "\r\n" in raw
    assert str(parse(raw)) == raw
    assert str(parse(raw.encode())) == raw


@pytest.mark.parametrize("name", NAMES)
def test_lf_only_input_parses_to_the_same_description(name: str) -> None:
    raw = text(name)
    assert parse(raw.replace("\r\n", "\n")) == parse(raw)
    assert str(parse(raw.replace("\r\n", "\n"))) == raw


def test_trailing_empty_lines_and_missing_final_crlf_are_tolerated() -> None:
    assert str(parse(MINIMAL + "\r\n\r\n")) == MINIMAL
    assert str(parse(MINIMAL[:-2])) == MINIMAL


def test_structure_of_chrome_offer() -> None:
    sdp = load("chrome_offer.sdp")
    assert sdp.origin.username == "-"
    assert sdp.origin.session_version == "2"
    assert sdp.timing == [Timing(0, 0)]
    assert sdp.attribute("group") == "BUNDLE 0"
    assert sdp.attribute("msid-semantic") == " WMS 335f2b0e-7d8c-4750-8564-0596ae2e1dc8"
    assert sdp.has_attribute("extmap-allow-mixed")
    (m,) = sdp.media
    assert (m.kind, m.port, m.port_count, m.proto) == ("audio", 50931, None, "UDP/TLS/RTP/SAVPF")
    assert m.formats == ["111", "63", "9", "0", "8", "13", "110", "126"]
    assert m.connection == Connection("IN", "IP4", "192.0.2.2")


@pytest.mark.parametrize(
    ("sdp", "reason"),
    [
        ("", "SDP is empty"),
        ("\r\n", "SDP is empty"),
        ("o=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\n", "missing v= line"),
        ("v=1\r\n", "line 1: unsupported SDP version '1'"),
        ("v=0\r\ns=-\r\nt=0 0\r\n", "missing o= line"),
        ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\nt=0 0\r\n", "missing s= line"),
        ("v=0\r\no=- 1 1 IN IP4\r\ns=-\r\n", "line 2: bad o= line"),
        (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\no=- 1 1 IN IP4 127.0.0.1\r\n",
            "line 3: duplicate 'o=' line",
        ),
        (MINIMAL + "x=1\r\n", "line 5: unknown line type 'x'"),
        (MINIMAL + "a\r\n", "line 5: not a 'x=value' line"),
        (MINIMAL + "a =x\r\n", "line 5: not a 'x=value' line"),
        (MINIMAL + "\r\na=x\r\n", "line 5: empty line"),
        (MINIMAL + "a=\r\n", "line 5: bad a= line"),
        (MINIMAL + "a=bad name:1\r\n", "line 5: bad a= line"),
        (MINIMAL + "a=x\x00y\r\n", "line 5: control character in line"),
        (MINIMAL + "c=IN IP4\r\n", "line 5: bad c= line"),
        (MINIMAL + "b=AS\r\n", "line 5: bad b= line"),
        (MINIMAL + "b=AS:x\r\n", "line 5: bad b= line"),
        (MINIMAL + "t=now 0\r\n", "line 5: bad t= line"),
        (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nr=7d 1h 0 25h\r\n",
            "line 4: r= line without t= line",
        ),
        (MINIMAL + "m=audio 4000 RTP/AVP\r\n", "line 5: bad m= line"),
        (MINIMAL + "m=audio  4000 RTP/AVP 0\r\n", "line 5: bad m= line"),
        (MINIMAL + "m=audio\r\n", "line 5: bad m= line"),
        (MINIMAL + "m=audio port RTP/AVP 0\r\n", "line 5: bad port in m= line: 'port'"),
        (MINIMAL + "m=audio 65536 RTP/AVP 0\r\n", "line 5: bad port in m= line: '65536'"),
        (MINIMAL + "m=audio -1 RTP/AVP 0\r\n", "line 5: bad port in m= line: '-1'"),
        (MINIMAL + "m=audio 4000/0 RTP/AVP 0\r\n", "line 5: bad port in m= line: '4000/0'"),
        (MINIMAL + "m=audio 4000/ RTP/AVP 0\r\n", "line 5: bad port in m= line: '4000/'"),
        (
            MINIMAL + "m=audio 4000 RTP/AVP 0 PCMU\r\n",
            "line 5: non-numeric payload type 'PCMU' in m= line",
        ),
        (
            MINIMAL + "m=audio 4000 UDP/TLS/RTP/SAVPF 1x1\r\n",
            "line 5: non-numeric payload type '1x1' in m= line",
        ),
        (
            MINIMAL + "m=audio 4000 RTP/AVP 128\r\n",
            "line 5: payload type 128 out of range in m= line",
        ),
        (
            MINIMAL + AUDIO + "o=- 1 1 IN IP4 1.2.3.4\r\n",
            "line 6: 'o=' line not allowed in a media section",
        ),
        (MINIMAL + AUDIO + "t=0 0\r\n", "line 6: 't=' line not allowed in a media section"),
        (
            MINIMAL + AUDIO + "c=IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.5\r\n",
            "line 7: more than one c= line in media section",
        ),
        (MINIMAL + AUDIO + "i=a\r\ni=b\r\n", "line 7: duplicate 'i=' line"),
        (MINIMAL + AUDIO + "b=TIAS\r\n", "line 6: bad b= line"),
        (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=\xff\r\n", "SDP is not valid UTF-8"),
    ],
)
def test_bad_input_is_rejected_with_exact_reason(sdp: str | bytes, reason: str) -> None:
    with pytest.raises(SdpError) as info:
        parse(sdp)
    assert str(info.value) == reason
    assert info.value.reason == reason
    assert repr(info.value) == f"SdpError({reason!r})"


def _padded_to(size: int) -> str:
    body = MINIMAL + AUDIO
    filler = size - len(body)
    lines = []
    while filler > 0:
        chunk = min(filler, 1000)
        # "a=x:" + value + CRLF = chunk bytes
        lines.append("a=x:" + "y" * (chunk - 6) + "\r\n")
        filler -= chunk
    return body + "".join(lines)


def test_size_limit_is_exact() -> None:
    at_limit = _padded_to(MAX_SDP_SIZE)
    assert len(at_limit) == MAX_SDP_SIZE
    assert len(parse(at_limit).media[0].attributes) > 60
    over = at_limit + "a=z\r\n"
    with pytest.raises(
        SdpError, match=rf"^SDP too large: {MAX_SDP_SIZE + 5} bytes \(limit 65536\)$"
    ):
        parse(over)
    with pytest.raises(SdpError, match=r"^SDP too large: 65541 bytes \(limit 65536\)$"):
        parse(over.encode())
    # The limit counts UTF-8 bytes, not characters.
    wide = MINIMAL + "a=x:" + "é" * (MAX_SDP_SIZE // 2) + "\r\n"
    with pytest.raises(SdpError, match="^SDP too large"):
        parse(wide)


def test_media_count_limit() -> None:
    ok = MINIMAL + "m=audio 0 RTP/AVP 0\r\n" * MAX_MEDIA
    assert len(parse(ok).media) == MAX_MEDIA
    with pytest.raises(SdpError) as info:
        parse(ok + "m=audio 0 RTP/AVP 0\r\n")
    assert str(info.value) == "too many m= lines (limit 64)"


def test_line_length_limit() -> None:
    at_limit = MINIMAL + "a=x:" + "y" * (MAX_LINE_LENGTH - 4) + "\r\n"
    assert parse(at_limit).attribute("x") == "y" * (MAX_LINE_LENGTH - 4)
    with pytest.raises(SdpError) as info:
        parse(MINIMAL + "a=x:" + "y" * (MAX_LINE_LENGTH - 3) + "\r\n")
    assert str(info.value) == "line 5: too long (4097 characters, limit 4096)"


@pytest.mark.parametrize("name", NAMES)
def test_every_truncation_parses_or_raises_sdp_error(name: str) -> None:
    """Cut the vector at every character: the parser and everything the gateway reads
    from a parsed description either work or raise SdpError, never anything else."""
    raw = text(name)
    outcomes = {"parsed": 0, "rejected": 0}
    for cut in range(len(raw) + 1):
        try:
            sdp = parse(raw[:cut])
        except SdpError:
            outcomes["rejected"] += 1
            continue
        outcomes["parsed"] += 1
        for reader in (
            MediaParams.from_webrtc,
            MediaParams.from_plain,
            is_hold,
            lambda s: to_plain(s, address="192.0.2.1", port=4000, session_id=1, version=1),
            lambda s: [codecs_of(m) for m in s.media if m.payload_types],
            lambda s: [(m.candidates(), m.extmaps(), m.rtcp, m.ptime, m.maxptime) for m in s.media],
        ):
            try:
                reader(sdp)
            except SdpError:
                pass
    # The whole vector parses; the first few characters cannot.
    assert outcomes["parsed"] > 0 and outcomes["rejected"] > 0


def test_serialise_built_description() -> None:
    sdp = SessionDescription(
        origin=Origin("-", "7", "1", "IN", "IP4", "192.0.2.1"),
        session_name="call",
        information="info",
        uri="http://example.com/",
        emails=["a@example.com"],
        phones=["+1 555"],
        connection=Connection.for_address("192.0.2.1"),
        bandwidths=[Bandwidth("AS", 64)],
        timing=[Timing(0, 0, ["7d 1h 0 25h"])],
        zone="2882844526 -1h",
        key="prompt",
        attributes=[Attribute("recvonly")],
        media=[
            MediaDescription(
                kind="audio",
                port=4000,
                port_count=2,
                proto="RTP/AVP",
                formats=["0"],
                information="voice",
                connection=Connection.for_address("2001:db8::1"),
                bandwidths=[Bandwidth("TIAS", 64000)],
                key="prompt",
                attributes=[Attribute("rtpmap", "0 PCMU/8000")],
            )
        ],
    )
    expected = (
        "v=0\r\no=- 7 1 IN IP4 192.0.2.1\r\ns=call\r\ni=info\r\nu=http://example.com/\r\n"
        "e=a@example.com\r\np=+1 555\r\nc=IN IP4 192.0.2.1\r\nb=AS:64\r\nt=0 0\r\n"
        "r=7d 1h 0 25h\r\nz=2882844526 -1h\r\nk=prompt\r\na=recvonly\r\n"
        "m=audio 4000/2 RTP/AVP 0\r\ni=voice\r\nc=IN IP6 2001:db8::1\r\nb=TIAS:64000\r\n"
        "k=prompt\r\na=rtpmap:0 PCMU/8000\r\n"
    )
    assert str(sdp) == expected
    assert parse(expected) == sdp


def test_rtp_helpers_on_chrome_offer() -> None:
    sdp = load("chrome_offer.sdp")
    m = sdp.media[0]
    assert m.payload_types == [111, 63, 9, 0, 8, 13, 110, 126]
    assert m.rtpmap(111) == RtpMap(111, "opus", 48000, 2)
    assert m.rtpmap(0) == RtpMap(0, "PCMU", 8000, None)
    assert m.rtpmap(99) is None
    assert m.fmtp(111) == "minptime=10;useinbandfec=1"
    assert m.fmtp(63) == "111/111"
    assert m.fmtp(0) is None
    assert m.rtcp_fb(111) == ["transport-cc"]
    assert m.rtcp_fb(0) == []
    assert m.mid == "0"
    assert m.rtcp_mux
    assert m.rtcp == Rtcp(9, Connection("IN", "IP4", "0.0.0.0"))
    assert m.ptime is None and m.maxptime is None
    assert sdp.direction(m) == "sendrecv"
    assert sdp.ice_ufrag(m) == "pKhe"
    assert sdp.ice_pwd(m) == "qXlrabghlyGpZESTBLvItem3"
    assert sdp.setup(m) == "actpass"
    assert sdp.fingerprints(m) == [
        Fingerprint(
            "sha-256",
            "66:E1:DA:D2:C6:B3:AD:9E:BB:F8:DE:E4:83:FF:29:BE:C9:99:20:07:D6:A7:E4:C6:48:85:86:ED:E7:73:67:63",
        )
    ]
    assert not sdp.ice_lite
    cands = m.candidates()
    assert [(c.transport, c.address, c.port, c.typ) for c in cands] == [
        ("udp", "192.0.2.2", 50931, "host"),
        ("udp", "fd00::2", 49654, "host"),
        ("tcp", "192.0.2.2", 9, "host"),
        ("tcp", "fd00::2", 9, "host"),
    ]
    assert cands[2].extensions == (("tcptype", "active"), ("generation", "0"), ("network-id", "1"))
    assert [str(c) for c in cands] == m.attribute_values("candidate")
    assert [e.id for e in m.extmaps()] == [1, 2, 3, 4]


def test_firefox_session_level_values_and_media_precedence() -> None:
    sdp = load("firefox_offer.sdp")
    m = sdp.media[0]
    # fingerprint and direction at session level (PITFALLS, Firefox column)
    assert sdp.own_direction == "sendrecv"
    assert m._fingerprints() == []
    assert sdp.fingerprints(m)[0].algorithm == "sha-256"
    assert sdp.ice_ufrag(m) == "8d1f0e2a"
    assert m.rtcp == Rtcp(50126, Connection("IN", "IP4", "0.0.0.0"))
    assert m.rtcp_fb(0) == ["nack", "transport-cc"]
    assert m.rtpmap(101) == RtpMap(101, "telephone-event", 8000, 1)
    assert m.extmaps()[1] == ExtMap(2, "recvonly", "urn:ietf:params:rtp-hdrext:csrc-audio-level")
    assert m.has_attribute("end-of-candidates")
    cands = m.candidates()
    assert [c.is_mdns for c in cands] == [True, True, True, True, False, False]
    assert cands[4].related_address == "0.0.0.0" and cands[4].related_port == 0
    # On hold the media says sendonly while the session still says sendrecv: media wins
    # (RFC 8866 §6.7).
    m.remove_attributes("sendrecv")
    m.add_attribute("sendonly")
    assert sdp.direction(m) == "sendonly"
    m.remove_attributes("sendonly")
    assert sdp.direction(m) == "sendrecv"  # falls back to the session level
    sdp.remove_attributes("sendrecv")
    assert sdp.direction(m) == "sendrecv"  # the default (RFC 8866 §6.7)
    # a media-level value wins over a session-level one
    m.remove_attributes("ice-ufrag")
    assert sdp.ice_ufrag(m) is None
    sdp.add_attribute("ice-ufrag", "session")
    assert sdp.ice_ufrag(m) == "session"
    m.add_attribute("ice-ufrag", "media")
    assert sdp.ice_ufrag(m) == "media"


def test_attribute_accessors() -> None:
    sdp = parse(
        MINIMAL
        + AUDIO
        + "a=ptime:20.5\r\na=maxptime:40\r\na=Flag\r\na=rtcp:4001\r\na=rtcp-fb:* nack\r\n"
    )
    m = sdp.media[0]
    assert m.ptime == 20 and m.maxptime == 40
    assert m.attribute("flag") == "" and m.has_attribute("FLAG")
    assert m.attribute("missing") is None
    assert m.rtcp == Rtcp(4001, None)
    assert m.rtcp_fb(0) == ["nack"]
    assert m.attribute_values("x") == []
    assert not m.is_rejected
    assert parse(MINIMAL + "m=image 0 udptl t38\r\n").media[0].payload_types == []
    assert parse(MINIMAL + "m=image 0 udptl t38\r\n").media[0].is_rejected
    assert Connection("IN", "IP4", "233.252.0.1/127/2").host == "233.252.0.1"
    assert Candidate.parse("a 1 udp 1 h 1 typ relay raddr 1.2.3.4 rport 5").related_port == 5


@pytest.mark.parametrize(
    ("line", "call", "reason"),
    [
        ("a=rtpmap:0 PCMU", lambda s, m: m.rtpmap(0), "bad a=rtpmap value '0 PCMU'"),
        ("a=rtpmap:0 PCMU/x", lambda s, m: m.rtpmap(0), "bad a=rtpmap value '0 PCMU/x'"),
        (
            "a=candidate:1 1 udp 1 h 1 host",
            lambda s, m: m.candidates(),
            "bad a=candidate value '1 1 udp 1 h 1 host'",
        ),
        (
            "a=candidate:1 x udp 1 h 1 typ host",
            lambda s, m: m.candidates(),
            "bad a=candidate value '1 x udp 1 h 1 typ host'",
        ),
        (
            "a=candidate:1 1 udp 1 h 70000 typ host",
            lambda s, m: m.candidates(),
            "bad a=candidate value '1 1 udp 1 h 70000 typ host'",
        ),
        (
            "a=candidate:1 1 udp 1 h 1 typ host rport x",
            lambda s, m: m.candidates(),
            "bad a=candidate value '1 1 udp 1 h 1 typ host rport x'",
        ),
        (
            "a=fingerprint:sha-256",
            lambda s, m: s.fingerprints(m),
            "bad a=fingerprint value 'sha-256'",
        ),
        ("a=setup:sideways", lambda s, m: s.setup(m), "bad a=setup value 'sideways'"),
        ("a=extmap:x urn:a", lambda s, m: m.extmaps(), "bad a=extmap value 'x urn:a'"),
        ("a=extmap:1/up urn:a", lambda s, m: m.extmaps(), "bad a=extmap value '1/up urn:a'"),
        ("a=extmap:1", lambda s, m: m.extmaps(), "bad a=extmap value '1'"),
        ("a=rtcp:port", lambda s, m: m.rtcp, "bad a=rtcp value 'port'"),
        ("a=rtcp:9 IN IP4", lambda s, m: m.rtcp, "bad a=rtcp value '9 IN IP4'"),
        ("a=ptime:x", lambda s, m: m.ptime, "bad a=ptime value 'x'"),
        ("a=maxptime:", lambda s, m: m.maxptime, "bad a=maxptime value ''"),
    ],
)
def test_bad_attribute_values_raise_sdp_error_when_read(
    line: str, call: object, reason: str
) -> None:
    sdp = parse(MINIMAL + AUDIO + line + "\r\n")  # the parser itself accepts them
    with pytest.raises(SdpError) as info:
        call(sdp, sdp.media[0])  # type: ignore[operator]
    assert str(info.value) == reason


def test_candidate_text_round_trip() -> None:
    for name in ("firefox_offer.sdp", "chrome_offer_av.sdp", "aiortc_offer.sdp"):
        for m in load(name).media:
            assert [str(c) for c in m.candidates()] == m.attribute_values("candidate")
    srflx = Candidate.parse("1 1 UDP 1686052863 203.0.113.7 50125 typ srflx raddr 0.0.0.0 rport 0")
    assert str(srflx) == "1 1 UDP 1686052863 203.0.113.7 50125 typ srflx raddr 0.0.0.0 rport 0"
