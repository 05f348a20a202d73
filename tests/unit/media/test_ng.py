"""gateway.media.ng: bencode, NG datagram framing, and the NG command logic.

The command-logic tests use :class:`FakeBackend`, a recording stand-in for the media
engine: the logic under test is pure (SDP in, SDP out, calls to the session's setters), and
the real engine needs sockets and a loop. The same commands run against the real engine
over real UDP in tests/integration/test_ng_control.py.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from gateway.media.codecs.opus import OpusEncoder
from gateway.media.dtmf_receive import DtmfReceiver
from gateway.media.ng import (
    MAX_DEPTH,
    MAX_ITEMS,
    BencodeError,
    CodecPolicy,
    NgCommands,
    NgDrop,
    NgSession,
    bdecode,
    bencode,
    encode_message,
    error_reply,
    parse_message,
)
from gateway.media.ports import PortsExhausted
from gateway.media.transcode import RtpTranscoder
from gateway.sdp.model import parse
from gateway.sdp.rewrite import codecs_of

from ..sdp.vectors import text

# --------------------------------------------------------------------------- bencode

# rtpengine docs/ng_control_protocol.md: the ping/pong example, and its offer example
# (SDP abbreviated as in the doc).
DOC_PING = b"d7:command4:pinge"
DOC_PONG = b"d6:result4:ponge"
DOC_OFFER = {
    "command": "offer",
    "call-id": "cfBXzDSZqhYNcXM",
    "from-tag": "mS9rSAn0Cr",
    "sdp": "v=0\r\no=...",
    "via-branch": "5KiTRPZHH1nL6",
    "flags": ["trust address"],
    "replace": ["origin", "session connection"],
    "address family": "IP6",
    "received-from": ["IP4", "10.65.31.43"],
    "ICE": "force",
    "transport protocol": "RTP/SAVPF",
    "media address": "2001:d8::6f24:65b",
    "DTLS": "passive",
}

VECTORS: list[tuple[object, bytes]] = [
    (0, b"i0e"),
    (-42, b"i-42e"),
    (2**63 - 1, b"i9223372036854775807e"),
    (b"", b"0:"),
    (b"spam", b"4:spam"),
    ([], b"le"),
    ([b"spam", 7, [b"x"]], b"l4:spami7el1:xee"),
    ({}, b"de"),
    ({b"cow": b"moo", b"spam": [b"a", b"b"]}, b"d3:cow3:moo4:spaml1:a1:bee"),
    ({b"command": b"ping"}, DOC_PING),
    ({b"result": b"pong"}, DOC_PONG),
]


@pytest.mark.parametrize(("value", "encoded"), VECTORS)
def test_round_trip(value: object, encoded: bytes) -> None:
    assert bencode(value) == encoded
    assert bdecode(encoded) == value


def test_encode_sorts_keys_and_takes_str() -> None:
    assert bencode({"z": "é", "a": ("x", 1)}) == b"d1:al1:xi1ee1:z2:\xc3\xa9e"


def test_doc_offer_round_trips() -> None:
    encoded = bencode(DOC_OFFER)
    request = parse_message(b"5323_1 " + encoded)
    assert request.cookie == b"5323_1" and request.body == DOC_OFFER


def test_decoder_accepts_unsorted_keys() -> None:
    # rtpengine's docs: "The requirement ... that dictionary keys must be present in
    # lexicographical order is not currently honoured." Kamailio sends command first.
    assert bdecode(b"d7:command4:ping4:args0:e") == {b"command": b"ping", b"args": b""}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "cannot encode bool True"),
        (None, "cannot encode NoneType None"),
        (1.5, "cannot encode float 1.5"),
        ({1: b"x"}, "cannot encode dictionary key 1: not a string"),
        (object(), "cannot encode object"),
    ],
)
def test_encode_errors(value: object, message: str) -> None:
    with pytest.raises(BencodeError) as info:
        bencode(value)
    assert str(info.value) == message


def test_encode_depth_limit() -> None:
    value: object = []
    for _ in range(MAX_DEPTH + 1):
        value = [value]
    with pytest.raises(BencodeError, match=f"^cannot encode: nested deeper than {MAX_DEPTH}$"):
        bencode(value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty input"),
        (b"x", "unexpected byte 0x78 at offset 0"),
        (b"i01e", "bad integer at offset 0"),
        (b"i-0e", "bad integer at offset 0"),
        (b"ie", "bad integer at offset 0"),
        (b"i1x2e", "bad integer at offset 0"),
        (b"i--1e", "bad integer at offset 0"),
        (b"i123456789012345678901e", "bad integer at offset 0"),
        (b"i12", "truncated at offset 3"),
        (b"01:a", "bad string length at offset 0"),
        (b"1x:a", "bad string length at offset 0"),
        (b"5:ab", "truncated at offset 4"),
        (b"99999999999999999999:", "truncated at offset 21"),
        (b"di1e1:ae", "dictionary key is not a string at offset 1"),
        (b"d1:a1:b1:a1:ce", "duplicate dictionary key b'a' at offset 7"),
        (b"i1ei2e", "trailing data at offset 3"),
        (b"le ", "trailing data at offset 2"),
        (b"l" * (MAX_DEPTH + 1) + b"e" * (MAX_DEPTH + 1), f"nested deeper than {MAX_DEPTH} at offset {MAX_DEPTH}"),
        (b"l" + b"i1e" * MAX_ITEMS + b"e", f"more than {MAX_ITEMS} values"),
        (b"0:" + b" " * 70000, "input larger than 65535 bytes"),
    ],
)  # fmt: skip
def test_decode_errors(data: bytes, message: str) -> None:
    with pytest.raises(BencodeError) as info:
        bdecode(data)
    assert str(info.value) == message


def test_limits_accept_what_fits() -> None:
    deep = b"l" * MAX_DEPTH + b"e" * MAX_DEPTH
    assert bdecode(deep) is not None
    assert bdecode(b"l" + b"i1e" * (MAX_ITEMS - 1) + b"e") == [1] * (MAX_ITEMS - 1)
    assert bdecode(b"i-99999999999999999999e") == -99999999999999999999


@pytest.mark.parametrize("encoded", [v for _, v in VECTORS] + [bencode(DOC_OFFER)])
def test_every_truncation_raises(encoded: bytes) -> None:
    for cut in range(len(encoded)):
        with pytest.raises(BencodeError) as info:
            bdecode(encoded[:cut])
        expected = "empty input" if cut == 0 else f"truncated at offset {cut}"
        assert str(info.value) == expected, encoded[:cut]


# --------------------------------------------------------------------------- messages


def test_parse_and_encode_message() -> None:
    request = parse_message(b"5323_1 " + DOC_PING)
    assert (request.cookie, request.body) == (b"5323_1", {"command": "ping"})
    assert encode_message(b"5323_1", {"result": "pong"}) == b"5323_1 " + DOC_PONG


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "no cookie"),
        (b"nospace", "no cookie"),
        (b" " + DOC_PING, "no cookie"),
        (b"\x00bad " + DOC_PING, "no cookie"),
        (b"c" * 65 + b" " + DOC_PING, "no cookie"),
        (b"c " + b"0" * 65535, "too large"),
    ],
)
def test_undeliverable_datagrams_are_dropped(datagram: bytes, reason: str) -> None:
    with pytest.raises(NgDrop) as info:
        parse_message(datagram)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("datagram", "message"),
    [
        (b"c1 ", "empty input"),
        (b"c1 d7:command4:ping", "truncated at offset 16"),
        (b"c1 l4:pinge", "not a dictionary"),
        (b"c1 d1:a1:\xffe", "not UTF-8"),
        (b'c1 {"command":"ping"}', "unexpected byte 0x7b at offset 0"),
    ],
)
def test_bad_bodies_raise_bencode_error(datagram: bytes, message: str) -> None:
    with pytest.raises(BencodeError) as info:
        parse_message(datagram)
    assert str(info.value) == message


def test_oversize_reply_becomes_an_error() -> None:
    data = encode_message(b"c", {"sdp": "x" * 70000})
    assert data == b"c " + bencode(error_reply("reply too large for one datagram"))


# --------------------------------------------------------------------------- commands

FP = "sha-256 " + ":".join(f"{i:02X}" for i in range(32))
GW = "203.0.113.10"


@dataclass
class FakeWebRtc:
    local_port: int
    ice_ufrag: str = "gwUfrag1"
    ice_pwd: str = "gwPassword0123456789abcd"
    fingerprint: str = FP
    dtls_role: str = "actpass"


@dataclass
class FakeRtp:
    local_port: int
    local_rtcp_port: int


@dataclass
class FakeSession:
    """Records what the command logic asks of a media session."""

    call_id: str
    webrtc: FakeWebRtc
    rtp: FakeRtp
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    receiver: DtmfReceiver | None = None

    @property
    def stats(self) -> dict[str, object]:
        return {
            "webrtc": {"rx_packets": 5, "rx_bytes": 500, "rx_rtcp": 1, "drops": {"garbage": 2},
                       "ice_selected": ("192.0.2.1", 5000), "srtp_profile": "SRTP_AES128_CM_SHA1_80"},
            "rtp": {"rx_packets": 7, "rx_bytes": 700, "rx_rtcp": 0, "drops": {},
                    "latched": ("198.51.100.9", 10000), "remote": None},
            "timed_out": "",
        }  # fmt: skip

    def set_webrtc_remote(self, **kw: Any) -> None:
        if kw["fingerprint"][0] != "sha-256":
            raise ValueError(f"unsupported fingerprint algorithm {kw['fingerprint'][0]!r}")
        self.calls.append(("webrtc_remote", kw))
        # The bridge answers passive to actpass/active and active to passive (RFC 8842).
        self.webrtc.dtls_role = "active" if kw["setup"] == "passive" else "passive"

    def set_rtp_remote(self, **kw: Any) -> None:
        self.calls.append(("rtp_remote", kw))

    def set_payload_map(self, **kw: Any) -> None:
        self.calls.append(("payload_map", kw))

    def set_direction(self, leg: str, direction: str) -> None:
        self.calls.append(("direction", {"leg": leg, "direction": direction}))

    def set_transcoder(self, pipeline: str, transcoder: RtpTranscoder | None) -> None:
        self.calls.append(("transcoder", {"pipeline": pipeline, "transcoder": transcoder}))

    def set_clock_rates(self, *, webrtc: int, rtp: int) -> None:
        self.calls.append(("clock_rates", {"webrtc": webrtc, "rtp": rtp}))

    def play_dtmf(self, code: int, duration_ms: int, payload_type: int) -> None:
        self.calls.append(("dtmf", {"code": code, "duration": duration_ms, "pt": payload_type}))

    def set_dtmf_receiver(self, receiver: DtmfReceiver | None) -> None:
        self.receiver = receiver
        self.calls.append(("dtmf_receiver", {"receiver": receiver}))

    def transcoders(self) -> dict[str, RtpTranscoder | None]:
        """The transcoder each pipeline holds now (absent: never set)."""
        return {kw["pipeline"]: kw["transcoder"] for n, kw in self.calls if n == "transcoder"}

    def last(self, name: str) -> dict[str, Any]:
        return [kw for n, kw in self.calls if n == name][-1]


class FakeBackend:
    public_ip = GW

    def __init__(self, capacity: int = 10) -> None:
        self.open_sessions: dict[str, FakeSession] = {}
        self.released: list[str] = []
        self.capacity = capacity
        self.next_port = 40000

    def open(self, call_id: str) -> NgSession:
        if len(self.open_sessions) >= self.capacity:
            raise PortsExhausted("no free even/odd port pair in 40000-40009 (9 in use)")
        port = self.next_port
        self.next_port += 4
        session = FakeSession(call_id, FakeWebRtc(port + 3), FakeRtp(port, port + 1))
        self.open_sessions[call_id] = session
        return session

    def release(self, session: NgSession) -> None:
        assert isinstance(session, FakeSession)
        del self.open_sessions[session.call_id]
        self.released.append(session.call_id)

    def sessions(self) -> int:
        return len(self.open_sessions)

    def ports_in_use(self) -> int:
        return 3 * len(self.open_sessions)


def browser_offer(
    ng: NgCommands, sdp: str | None = None, call_id: str = "c1", **extra: object
) -> dict[str, object]:
    body: dict[str, object] = {
        "command": "offer",
        "call-id": call_id,
        "from-tag": "ftag",
        "sdp": sdp if sdp is not None else text("chrome_offer.sdp"),
        "transport-protocol": "RTP/AVP",
        "ICE": "remove",
    }
    body.update(extra)
    return ng.handle(body, 1000.0)


def switch_answer(
    ng: NgCommands, sdp: str | None = None, call_id: str = "c1", **extra: object
) -> dict[str, object]:
    body: dict[str, object] = {
        "command": "answer",
        "call-id": call_id,
        "from-tag": "ftag",
        "to-tag": "ttag",
        "sdp": sdp if sdp is not None else text("kamailio_plain_answer.sdp"),
    }
    body.update(extra)
    return ng.handle(body, 1001.0)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def ng(backend: FakeBackend) -> NgCommands:
    return NgCommands(backend)


def session(backend: FakeBackend, call_id: str = "c1") -> FakeSession:
    return backend.open_sessions[call_id]


def test_ping(ng: NgCommands) -> None:
    assert ng.handle({"command": "ping"}, 0.0) == {"result": "pong"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "No command in message"),
        ({"command": 1}, "No command in message"),
        ({"command": "start recording"}, "Unrecognized command"),
        ({"command": "offer", "call-id": "c", "from-tag": "f"}, "No SDP body in message"),
        ({"command": "offer", "sdp": "v=0", "from-tag": "f"}, "No call-id in message"),
        ({"command": "offer", "sdp": "v=0", "call-id": "c"}, "No from-tag in message"),
        ({"command": "offer", "sdp": 5, "call-id": "c", "from-tag": "f"}, "'sdp' must be a non-empty string"),
        ({"command": "offer", "sdp": "v=0\r\n", "call-id": "c", "from-tag": "f"}, "Failed to parse SDP: missing o= line"),
        ({"command": "answer", "sdp": "v=0", "call-id": "c", "from-tag": "f"}, "No to-tag in message"),
        ({"command": "query"}, "No call-id in message"),
        ({"command": "query", "call-id": "nope"}, "Unknown call-id"),
        ({"command": "list", "limit": 0}, "'limit' must be a positive integer"),
    ],
)  # fmt: skip
def test_request_errors(ng: NgCommands, body: dict[str, object], reason: str) -> None:
    assert ng.handle(body, 0.0) == error_reply(reason)


def test_browser_offer_becomes_lean_plain_sdp(ng: NgCommands, backend: FakeBackend) -> None:
    reply = browser_offer(ng, **{"rtcp-mux": ["demux"], "replace": ["origin"]})
    assert reply["result"] == "ok" and "warning" not in reply
    out = parse(str(reply["sdp"]))
    s = session(backend)
    (m,) = out.media
    assert (m.proto, m.port) == ("RTP/AVP", s.rtp.local_port)
    assert out.connection is not None and out.connection.host == GW
    assert out.origin.address == GW and out.origin.session_version == "1"
    assert not m.rtcp_mux and "ice" not in str(out) and "fingerprint" not in str(out)
    browser = parse(text("chrome_offer.sdp"))
    remote = s.last("webrtc_remote")
    assert remote["ice_ufrag"] == browser.ice_ufrag(browser.media[0])
    assert remote["setup"] == "actpass" and remote["fingerprint"][0] == "sha-256"
    assert all(isinstance(c, tuple) and c[1] > 0 for c in remote["candidates"])
    assert s.last("direction") == {"leg": "webrtc", "direction": "sendrecv"}


def test_browser_call_answer_and_payload_map(ng: NgCommands, backend: FakeBackend) -> None:
    browser_offer(ng)
    reply = switch_answer(ng)
    assert reply["result"] == "ok", reply
    out = parse(str(reply["sdp"]))
    s = session(backend)
    m = out.media[0]
    assert m.proto == "UDP/TLS/RTP/SAVPF" and out.ice_lite and m.port == s.webrtc.local_port
    assert out.setup(m) == "passive"  # the gateway is the DTLS server for an actpass offer
    assert s.last("rtp_remote") == {"address": "127.0.0.1", "port": 10000, "rtcp_port": 10001}
    assert s.last("direction") == {"leg": "rtp", "direction": "sendrecv"}
    # PCMU 0 and te/8000 126 (browser) <-> 101 (switch): the answer is renumbered.
    assert s.last("payload_map") == {"to_rtp": {0: 0, 126: 101}, "to_webrtc": {0: 0, 101: 126}}
    assert [(c.name, c.pt) for c in codecs_of(m)] == [("PCMU", 0), ("telephone-event", 126)]
    # The same answer again (a 200 OK retransmission) gets the same reply.
    assert switch_answer(ng) == reply
    assert switch_answer(ng, sdp=text("kamailio_plain_answer.sdp").replace("10000", "10002")) == (
        error_reply("No offer pending for this call-id")
    )


def test_switch_offer_becomes_webrtc_offer(ng: NgCommands, backend: FakeBackend) -> None:
    reply = ng.handle(
        {
            "command": "offer",
            "call-id": "c2",
            "from-tag": "sw",
            "sdp": text("kamailio_plain_offer.sdp"),
            "transport-protocol": "UDP/TLS/RTP/SAVPF",
            "ICE": "force",
            "DTLS": "passive",
        },
        5.0,
    )
    assert reply["result"] == "ok", reply
    out = parse(str(reply["sdp"]))
    m = out.media[0]
    s = session(backend, "c2")
    assert m.proto == "UDP/TLS/RTP/SAVPF" and out.setup(m) == "passive"
    assert out.ice_ufrag(m) == s.webrtc.ice_ufrag and m.candidates()[0].address == GW
    # a=rtcp:30001 is honoured; the switch has not accepted rtcp-mux yet.
    assert s.last("rtp_remote") == {"address": "127.0.0.1", "port": 30000, "rtcp_port": 30001}
    # The browser answers (Chromium's real answer to a gateway offer of these codecs).
    answer = text("chrome_answer.sdp")
    reply = ng.handle(
        {"command": "answer", "call-id": "c2", "from-tag": "sw", "to-tag": "br", "sdp": answer},
        6.0,
    )
    assert reply["result"] == "ok", reply
    plain = parse(str(reply["sdp"]))
    assert plain.media[0].proto == "RTP/AVP" and plain.media[0].port == s.rtp.local_port
    assert s.last("webrtc_remote")["setup"] == "active"
    assert s.last("direction") == {"leg": "webrtc", "direction": "sendrecv"}


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"transport-protocol": None}, "UDP/TLS/RTP/SAVPF offer without transport-protocol"),
        ({"transport-protocol": "UDP/TLS/RTP/SAVPF"}, "transport-protocol keeps the UDP/TLS/RTP/SAVPF profile"),
        ({"transport-protocol": "RTP/XYZ"}, "unsupported transport-protocol 'RTP/XYZ'"),
        ({"ICE": "force-relay"}, "ICE=force-relay is not supported"),
        ({"ICE": "sometimes"}, "invalid ICE value 'sometimes'"),
        ({"DTLS": "maybe"}, "invalid DTLS value 'maybe'"),
        ({"rtcp-mux": ["sideways"]}, "invalid rtcp-mux value 'sideways'"),
        ({"codec": {"transcode": ["G729"]}}, "codec-transcode=G729: transcoding is not available yet"),
        ({"codec": {"consume": ["opus"]}}, "codec-consume needs the transcoding engine"),
        ({"codec": {"frobnicate": ["x"]}}, "unsupported codec manipulation 'frobnicate'"),
        ({"codec": "strip"}, "'codec' must be a dictionary"),
        ({"flags": [1]}, "'flags' must be a string or a list of strings"),
    ],
)  # fmt: skip
def test_offer_option_errors(
    ng: NgCommands, backend: FakeBackend, extra: dict[str, object], reason: str
) -> None:
    body = {k: v for k, v in extra.items() if v is not None}
    drop = [k for k, v in extra.items() if v is None]
    request: dict[str, object] = {
        "command": "offer",
        "call-id": "c1",
        "from-tag": "f",
        "sdp": text("chrome_offer.sdp"),
        "transport-protocol": "RTP/AVP",
    }
    request.update(body)
    for key in drop:
        del request[key]
    reply = ng.handle(request, 0.0)
    assert reply["result"] == "error" and str(reply["error-reason"]).startswith(reason), reply
    assert backend.sessions() == 0  # nothing held for a refused offer


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"DTLS": "off"}, "DTLS=off cannot be honoured toward a WebRTC peer"),
        ({"ICE": "remove"}, "ICE=remove cannot be honoured toward a WebRTC peer"),
        ({"transport-protocol": "RTP/AVP"}, "transport-protocol keeps the RTP/AVP profile"),
    ],
)
def test_switch_offer_option_errors(ng: NgCommands, extra: dict[str, object], reason: str) -> None:
    request: dict[str, object] = {
        "command": "offer",
        "call-id": "c1",
        "from-tag": "f",
        "sdp": text("kamailio_plain_offer.sdp"),
        "transport-protocol": "RTP/SAVPF",
    }
    request.update(extra)
    reply = ng.handle(request, 0.0)
    assert reply["result"] == "error" and str(reply["error-reason"]).startswith(reason), reply


def test_keys_and_flags_are_normalised_and_warnings_given(ng: NgCommands) -> None:
    reply = ng.handle(
        {
            "command": "Offer",
            "call id": "c1",
            "from_tag": "f",
            "sdp": text("chrome_offer.sdp"),
            "Transport Protocol": "rtp/avp",
            "ice": "force",
            "direction": ["internal", "external"],
            "flags": ["trust-address", "codec-strip-opus", "codec-mask-G722", "whatever"],
            "codec": {"set": ["opus/48000/2/32000"]},
        },
        0.0,
    )
    assert reply["result"] == "ok", reply
    m = parse(str(reply["sdp"])).media[0]
    names = [c.name for c in codecs_of(m)]
    assert "opus" not in names and "G722" not in names and "PCMU" in names
    warning = str(reply["warning"])
    assert "ICE=force ignored toward plain RTP" in warning and "codec-set ignored" in warning


def test_codec_strip_all_except_and_offer_order(ng: NgCommands) -> None:
    reply = browser_offer(ng, codec={"strip": ["all"], "except": ["PCMA"], "offer": ["PCMU"]})
    m = parse(str(reply["sdp"])).media[0]
    assert [c.name for c in codecs_of(m)] == ["PCMU", "PCMA"]
    reply = browser_offer(
        ng, call_id="c3", codec={"mask": ["opus", "G722", "red", "8", "PCMU", "CN", "telephone-event"]}
    )  # fmt: skip
    assert "warning" in reply and "left no audio codec" in str(reply["warning"])
    m = parse(str(reply["sdp"])).media[0]
    assert "opus" in [c.name for c in codecs_of(m)]  # rtpengine: left unchanged
    # transcode of a codec the offer has is a plain "offer" (no transcoding needed).
    reply = browser_offer(ng, call_id="c4", codec={"transcode": ["PCMA/8000"]})
    assert codecs_of(parse(str(reply["sdp"])).media[0])[0].name == "PCMA"


def test_rtcp_mux_choices(ng: NgCommands, backend: FakeBackend) -> None:
    assert "a=rtcp-mux" not in str(browser_offer(ng)["sdp"])
    assert "a=rtcp-mux" in str(browser_offer(ng, call_id="m1", **{"rtcp-mux": ["offer"]})["sdp"])
    assert "a=rtcp-mux" in str(browser_offer(ng, call_id="m2", **{"rtcp-mux": ["accept"]})["sdp"])
    # require: RTCP goes to the RTP port even though the switch's answer has no rtcp-mux.
    switch_answer(ng, call_id="m2", **{"rtcp-mux": ["require"]})
    assert session(backend, "m2").last("rtp_remote")["rtcp_port"] == 10000


def test_reoffer_hold_updates_without_new_session(ng: NgCommands, backend: FakeBackend) -> None:
    browser_offer(ng)
    switch_answer(ng)
    s = session(backend)
    first_plain = str(browser_offer(ng, sdp=text("chrome_offer.sdp"))["sdp"])
    assert parse(first_plain).origin.session_version == "1"  # unchanged SDP, same version
    hold = text("chrome_offer.sdp").replace("a=sendrecv", "a=sendonly")
    reply = browser_offer(ng, sdp=hold)
    out = parse(str(reply["sdp"]))
    assert out.origin.session_version == "2" and out.direction(out.media[0]) == "sendonly"
    assert s.last("direction") == {"leg": "webrtc", "direction": "sendonly"}
    assert backend.sessions() == 1 and ng.managed == 1
    reply = switch_answer(ng, sdp=text("kamailio_plain_answer.sdp").replace("sendrecv", "recvonly"))
    out = parse(str(reply["sdp"]))
    assert out.direction(out.media[0]) == "recvonly" and out.origin.session_version == "2"
    # The same offer twice while pending (an INVITE retransmission): the same reply.
    assert browser_offer(ng, sdp=hold) == browser_offer(ng, sdp=hold)


def test_answer_errors(ng: NgCommands) -> None:
    assert switch_answer(ng) == error_reply("Unknown call-id")
    browser_offer(ng)
    reply = switch_answer(ng, sdp=text("chrome_offer.sdp"))
    assert reply["result"] == "error"
    assert "answer must come from the other side" in str(reply["error-reason"])
    assert switch_answer(ng)["result"] == "ok"


def test_delete_query_list_statistics(ng: NgCommands, backend: FakeBackend) -> None:
    browser_offer(ng)
    switch_answer(ng)
    query = ng.handle({"command": "query", "call-id": "c1"}, 1002.0)
    assert query["result"] == "ok" and query["created"] == 1000 and query["last signal"] == 1001
    tags = query["tags"]
    assert isinstance(tags, dict) and set(tags) == {"ftag", "ttag"}
    assert tags["ftag"]["in dialogue with"] == "ttag"
    stream = tags["ftag"]["medias"][0]["streams"][0]
    assert stream["endpoint"] == {"family": "IPv4", "address": "192.0.2.1", "port": 5000}
    assert stream["stats"] == {"bytes": 500, "packets": 5, "errors": 2}
    assert query["totals"] == {
        "RTP": {"bytes": 1200, "packets": 12, "errors": 2},
        "RTCP": {"bytes": 0, "packets": 1, "errors": 0},
    }
    assert query["legs"]["rtp"]["latched"] == "198.51.100.9:10000"  # type: ignore[index]
    bencode(query)  # every value is bencodable
    assert ng.handle({"command": "list"}, 0.0) == {"result": "ok", "calls": ["c1"]}
    stats = ng.handle({"command": "statistics"}, 1010.0)
    assert stats["media"] == {"sessions": 1, "ports in use": 3}
    # delete with a tag of neither side: a warning, or an error with "fatal".
    reply = ng.handle({"command": "delete", "call-id": "c1", "from-tag": "other"}, 0.0)
    assert reply == {"result": "ok", "warning": "Call-ID not found or tags didn't match"}
    reply = ng.handle({"command": "delete", "call-id": "c1", "from-tag": "ttag"}, 1003.0)
    assert reply["result"] == "ok" and reply["totals"] == query["totals"]
    assert backend.released == ["c1"] and backend.sessions() == 0
    reply = ng.handle({"command": "delete", "call-id": "c1", "flags": ["fatal"]}, 0.0)
    assert reply == error_reply("Call-ID not found or tags didn't match")
    stats = ng.handle({"command": "statistics"}, 1010.0)
    assert stats["statistics"]["totalstatistics"]["regularterminatedsessions"] == 1  # type: ignore[index]


def test_expire_releases_and_reports(backend: FakeBackend) -> None:
    ended: list[str] = []
    ng = NgCommands(backend, on_release=ended.append)
    browser_offer(ng)
    assert ng.expire("c1", 5.0) and not ng.expire("c1", 6.0)
    assert ended == ["c1"] and backend.sessions() == 0
    assert ng.handle({"command": "query", "call-id": "c1"}, 0.0) == error_reply("Unknown call-id")


def test_limits_ports_and_load_limit() -> None:
    backend = FakeBackend(capacity=1)
    ng = NgCommands(backend, max_calls=2)
    assert browser_offer(ng, call_id="a")["result"] == "ok"
    reply = browser_offer(ng, call_id="b")
    assert reply["result"] == "error" and str(reply["error-reason"]).startswith(
        "no free media ports: no free even/odd port pair"
    )
    backend.capacity = 5
    assert browser_offer(ng, call_id="b")["result"] == "ok"
    assert browser_offer(ng, call_id="c") == error_reply("call limit reached (2)")
    assert browser_offer(ng, call_id="c", supports=["load limit"]) == {
        "result": "load limit",
        "message": "call limit reached",
    }
    ng.close()
    assert backend.sessions() == 0


def test_unusable_fingerprint_frees_the_new_session(backend: FakeBackend) -> None:
    ng = NgCommands(backend)
    sdp = text("chrome_offer.sdp")
    browser = parse(sdp)
    value = browser.fingerprints(browser.media[0])[0].value
    sha1 = ":".join(value.split(":")[:20])
    reply = browser_offer(ng, sdp=sdp.replace(f"sha-256 {value}", f"sha-1 {sha1}"))
    assert reply == error_reply(
        "Unusable media parameters: unsupported fingerprint algorithm 'sha-1'"
    )
    assert backend.sessions() == 0 and ng.call_ids() == []


# --------------------------------------------------------------------------- transcoding

CHROME_M_LINE = "m=audio 50931 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126"
SWITCH_M_LINE = "m=audio 30000 RTP/AVP 18 0 8 101"
POLICY = CodecPolicy(switch=("PCMU", "PCMA", "G729"), browser=("opus", "PCMU", "PCMA"))


def chrome_offer_with(formats: str) -> str:
    """Chrome's offer with only ``formats`` on its m-line (the other rtpmaps stay, unused)."""
    return text("chrome_offer.sdp").replace(
        CHROME_M_LINE, "m=audio 50931 UDP/TLS/RTP/SAVPF " + formats
    )


def switch_offer(ng: NgCommands, formats: str, call_id: str = "s1") -> dict[str, object]:
    sdp = text("kamailio_plain_offer.sdp").replace(
        SWITCH_M_LINE, "m=audio 30000 RTP/AVP " + formats
    )
    return ng.handle(
        {"command": "offer", "call-id": call_id, "from-tag": "sw", "sdp": sdp,
         "transport-protocol": "UDP/TLS/RTP/SAVPF", "ICE": "force"},
        5.0,
    )  # fmt: skip


def browser_answer(ng: NgCommands, call_id: str = "s1") -> dict[str, object]:
    return ng.handle(
        {"command": "answer", "call-id": call_id, "from-tag": "sw", "to-tag": "br",
         "sdp": text("chrome_answer.sdp")},
        6.0,
    )  # fmt: skip


@pytest.fixture
def modes() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def tng(backend: FakeBackend, modes: list[tuple[str, str]]) -> NgCommands:
    return NgCommands(backend, codecs=POLICY, on_mode=lambda c, m: modes.append((c, m)))


def names(sdp: object) -> list[tuple[str, int, int | None]]:
    return [(c.name, c.clock, c.pt) for c in codecs_of(parse(str(sdp)).media[0])]


def test_opus_only_browser_offer_gains_the_switch_codecs(tng: NgCommands) -> None:
    reply = browser_offer(tng, sdp=chrome_offer_with("111 110"))
    assert reply["result"] == "ok", reply
    # opus kept for passthrough, G.711 and G.729 added in policy order, te/8000 toward the
    # switch (the browser offered te/48000 only: PITFALLS 11).
    assert [(n, c) for n, c, _ in names(reply["sdp"])] == [
        ("opus", 48000), ("PCMU", 8000), ("PCMA", 8000), ("G729", 8000),
        ("telephone-event", 8000),
    ]  # fmt: skip
    pts = {n: pt for n, _, pt in names(reply["sdp"])}
    assert (pts["PCMU"], pts["PCMA"], pts["G729"]) == (0, 8, 18)  # RFC 3551 static types
    assert "a=fmtp:18 annexb=no" in str(reply["sdp"])


def test_switch_answering_pcmu_to_opus_only_browser_transcodes(
    tng: NgCommands, backend: FakeBackend, modes: list[tuple[str, str]]
) -> None:
    browser_offer(tng, sdp=chrome_offer_with("111 110 126"))
    reply = switch_answer(tng)  # PCMU 0 + te/8000 101, ptime 20
    assert reply["result"] == "ok", reply
    # The browser is answered with its own codec and te at opus's clock.
    assert names(reply["sdp"]) == [("opus", 48000, 111), ("telephone-event", 48000, 110)]
    s = session(backend)
    pipes = s.transcoders()
    to_rtp, to_webrtc = pipes["to_rtp"], pipes["to_webrtc"]
    assert isinstance(to_rtp, RtpTranscoder) and isinstance(to_webrtc, RtpTranscoder)
    assert (to_rtp.in_codec, to_rtp.in_pt, to_rtp.out_codec, to_rtp.out_pt) == (
        "opus",
        111,
        "PCMU",
        0,
    )
    assert (to_rtp.dtmf_in_pt, to_rtp.dtmf_out_pt) == (110, 101)
    assert (to_webrtc.in_codec, to_webrtc.out_codec, to_webrtc.out_pt) == ("PCMU", "opus", 111)
    assert (to_webrtc.dtmf_in_pt, to_webrtc.dtmf_out_pt) == (101, 110)
    # The transcoders write each leg's own payload types; the rewriters keep them.
    assert s.last("payload_map") == {"to_rtp": {0: 0, 101: 101}, "to_webrtc": {111: 111, 110: 110}}
    query = tng.handle({"command": "query", "call-id": "c1"}, 1002.0)
    assert (query["mode"], query["codec"]) == ("transcode", "opus<->PCMU")
    assert modes == [("c1", "transcode opus<->PCMU")]
    stats = tng.handle({"command": "statistics"}, 1003.0)["statistics"]
    assert stats["currentstatistics"]["transcodedmedia"] == 1  # type: ignore[index]


def test_firefox_opus_only_keeps_its_telephone_event_8000_when_transcoded(
    tng: NgCommands, backend: FakeBackend
) -> None:
    """Firefox offers telephone-event/8000 only, beside opus (PITFALLS "What the two
    browsers' SDP looks like"): answered without it, Firefox cannot send RFC 4733 at all.
    Transcoded, it is answered te/8000 on its own type, and the events it sends on the
    Opus stream (timestamps and durations in the stream's 48 kHz clock, as libwebrtc
    counts them) are mapped to the switch's te/8000 like Chromium's te/48000."""
    firefox = text("firefox_offer.sdp").replace(
        "m=audio 9 UDP/TLS/RTP/SAVPF 109 9 0 8 101", "m=audio 9 UDP/TLS/RTP/SAVPF 109 101"
    )
    assert browser_offer(tng, sdp=firefox)["result"] == "ok"
    reply = switch_answer(tng)  # PCMU 0 + te/8000 101
    assert reply["result"] == "ok", reply
    assert names(reply["sdp"]) == [("opus", 48000, 109), ("telephone-event", 8000, 101)]
    pipes = session(backend).transcoders()
    to_rtp, to_webrtc = pipes["to_rtp"], pipes["to_webrtc"]
    assert isinstance(to_rtp, RtpTranscoder) and isinstance(to_webrtc, RtpTranscoder)
    assert (to_rtp.in_codec, to_rtp.in_pt, to_rtp.out_codec) == ("opus", 109, "PCMU")
    assert (to_rtp.dtmf_in_pt, to_rtp.dtmf_out_pt) == (101, 101)
    assert (to_webrtc.dtmf_in_pt, to_webrtc.dtmf_out_pt) == (101, 101)
    # A Firefox event: 100 ms as 4800 units of the Opus clock, arriving as 800 at 8000.
    header = struct.pack("!BBHII", 0x80, 0x80 | 101, 7, 96000, 0x1234)
    out = to_rtp.transcode(header + struct.pack("!BBH", 5, 0x80 | 10, 4800), 1.0)
    assert len(out) == 1 and out[0][1] & 0x7F == 101
    assert struct.unpack_from("!BBH", out[0], 12) == (5, 0x80 | 10, 800)


def test_shared_codec_stays_passthrough(
    tng: NgCommands, backend: FakeBackend, modes: list[tuple[str, str]]
) -> None:
    browser_offer(tng, sdp=chrome_offer_with("111 0 126"))
    reply = switch_answer(tng)
    assert names(reply["sdp"]) == [("PCMU", 8000, 0), ("telephone-event", 8000, 126)]
    s = session(backend)
    assert s.transcoders() == {}
    assert s.last("payload_map") == {"to_rtp": {0: 0, 126: 101}, "to_webrtc": {0: 0, 101: 126}}
    assert s.last("clock_rates") == {"webrtc": 8000, "rtp": 8000}  # RTCP jitter's clock
    query = tng.handle({"command": "query", "call-id": "c1"}, 1002.0)
    assert (query["mode"], query["codec"]) == ("passthrough", "PCMU")
    assert modes == [("c1", "passthrough PCMU")]


def test_g729_answer_and_pcma_answer(tng: NgCommands, backend: FakeBackend) -> None:
    browser_offer(tng, sdp=chrome_offer_with("111"))
    g729 = (
        text("kamailio_plain_answer.sdp")
        .replace("RTP/AVP 0 101", "RTP/AVP 18")
        .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:18 G729/8000")
    )
    assert switch_answer(tng, sdp=g729)["result"] == "ok"
    to_rtp = session(backend).transcoders()["to_rtp"]
    assert to_rtp is not None and (to_rtp.out_codec, to_rtp.out_pt) == ("G729", 18)
    assert to_rtp.dtmf_out_pt is None  # no telephone-event on either side
    browser_offer(tng, sdp=chrome_offer_with("111"), call_id="c2")
    reply = switch_answer(tng, sdp=text("kamailio_plain_answer_av.sdp"), call_id="c2")
    assert names(reply["sdp"]) == [("opus", 48000, 111)]
    query = tng.handle({"command": "query", "call-id": "c2"}, 1002.0)
    assert query["codec"] == "opus<->PCMA"


def test_switch_offer_gains_opus_and_opus_answer_transcodes(
    tng: NgCommands, backend: FakeBackend
) -> None:
    reply = switch_offer(tng, "0 101")
    assert [(n, c) for n, c, _ in names(reply["sdp"])] == [
        ("PCMU", 8000), ("opus", 48000), ("PCMA", 8000), ("telephone-event", 8000),
        ("telephone-event", 48000),
    ]  # fmt: skip
    # Chromium answers opus 111 first: the switch is answered with its own PCMU.
    reply = browser_answer(tng)
    assert reply["result"] == "ok", reply
    assert names(reply["sdp"]) == [("PCMU", 8000, 0), ("telephone-event", 8000, 101)]
    to_webrtc = session(backend, "s1").transcoders()["to_webrtc"]
    assert to_webrtc is not None
    assert (to_webrtc.in_codec, to_webrtc.out_codec, to_webrtc.out_pt) == ("PCMU", "opus", 111)
    assert (to_webrtc.dtmf_in_pt, to_webrtc.dtmf_out_pt) == (101, 96)
    assert tng.handle({"command": "query", "call-id": "s1"}, 7.0)["codec"] == "opus<->PCMU"


@pytest.mark.parametrize(
    ("fmtp", "policy_bitrate", "expected"),
    [
        # Chrome's own fmtp: FEC asked for, so the encoder codes LBRR at 20 kbit/s.
        ("minptime=10;useinbandfec=1", 0, (True, False, False, 20000)),
        # No useinbandfec (RFC 7587 §6.1: absent = 0): no FEC, libopus's automatic rate.
        ("minptime=10", 0, (False, False, False, None)),
        # DTX and CBR asked for; the browser's maxaveragebitrate caps the configured rate.
        ("useinbandfec=1;usedtx=1;cbr=1;maxaveragebitrate=16000", 32000,
         (True, True, True, 16000)),
        ("minptime=10", 24000, (False, False, False, 24000)),
    ],
)  # fmt: skip
def test_opus_sent_to_the_browser_follows_its_fmtp(
    backend: FakeBackend,
    fmtp: str,
    policy_bitrate: int,
    expected: tuple[bool, bool, bool, int | None],
) -> None:
    ng = NgCommands(backend, codecs=replace(POLICY, opus_bitrate=policy_bitrate))
    offer = chrome_offer_with("111 110").replace(
        "a=fmtp:111 minptime=10;useinbandfec=1", "a=fmtp:111 " + fmtp
    )
    browser_offer(ng, sdp=offer)
    assert switch_answer(ng)["result"] == "ok"
    to_webrtc = session(backend).transcoders()["to_webrtc"]
    assert to_webrtc is not None
    encoder = to_webrtc.encoder
    assert isinstance(encoder, OpusEncoder)
    assert (encoder.fec, encoder.dtx, encoder.cbr, encoder.bitrate) == expected


def test_answer_reply_names_the_mode_and_ended_calls_get_a_summary(
    backend: FakeBackend,
) -> None:
    ends: list[dict[str, object]] = []
    ng = NgCommands(backend, codecs=POLICY, on_end=ends.append)
    browser_offer(ng, sdp=chrome_offer_with("111 110"))
    reply = switch_answer(ng)
    assert (reply["mode"], reply["codec"]) == ("transcode", "opus<->PCMU")
    query = ng.handle({"command": "query", "call-id": "c1"}, 1002.0)
    assert set(query["transcode"]) == {"to_rtp", "to_webrtc"}  # type: ignore[arg-type]
    ng.handle({"command": "delete", "call-id": "c1"}, 1030.5)
    assert len(ends) == 1
    summary = ends[0]
    assert {k: summary[k] for k in ("call_id", "mode", "codec", "codec_webrtc", "codec_rtp",
                                    "created", "ended", "duration", "ended_by")} == {
        "call_id": "c1", "mode": "transcode", "codec": "opus<->PCMU", "codec_webrtc": "opus",
        "codec_rtp": "PCMU", "created": 1000.0, "ended": 1030.5, "duration": 30.5,
        "ended_by": "delete",
    }  # fmt: skip
    assert summary["legs"] == {
        "webrtc": {"rx_packets": 5, "rx_bytes": 500, "dropped": 2},
        "rtp": {"rx_packets": 7, "rx_bytes": 700, "dropped": 0},
    }
    transcode = summary["transcode"]
    assert isinstance(transcode, dict) and transcode["to_rtp"]["packets_in"] == 0
    json.dumps(summary)  # JSON-ready as it is (the log line is one JSON object)
    # A passthrough call ended by the media timeout, and an offer never answered (no
    # summary: no call took place).
    browser_offer(ng, sdp=chrome_offer_with("111 0 126"), call_id="c2")
    assert switch_answer(ng, call_id="c2")["mode"] == "passthrough"
    assert ng.expire("c2", 1100.0)
    browser_offer(ng, call_id="c3")
    ng.handle({"command": "delete", "call-id": "c3"}, 1101.0)
    assert [(e["call_id"], e["mode"], e["codec"], e["ended_by"], e["transcode"]) for e in ends[1:]] == [
        ("c2", "passthrough", "PCMU", "timeout", {})
    ]  # fmt: skip


def test_switch_offer_with_g729_first_transcodes_to_g729(tng: NgCommands) -> None:
    switch_offer(tng, "18 0 8 101")
    assert browser_answer(tng)["result"] == "ok"
    assert tng.handle({"command": "query", "call-id": "s1"}, 7.0)["codec"] == "opus<->G729"


def test_policy_strip_transcode_off_and_codec_transcode_flag(backend: FakeBackend) -> None:
    strip = NgCommands(backend, codecs=CodecPolicy(strip=("G722", "red", "CN")))
    reply = browser_offer(strip)
    assert [n for n, _, _ in names(reply["sdp"])] == ["opus", "PCMU", "PCMA", "telephone-event"]
    off = NgCommands(backend, codecs=CodecPolicy(transcode=False))
    reply = browser_offer(off, sdp=chrome_offer_with("111 126"), call_id="c2")
    assert [n for n, _, _ in names(reply["sdp"])] == ["opus", "telephone-event"]
    # No shared codec: an answer naming a codec that was never offered is refused.
    assert switch_answer(off, call_id="c2") == error_reply(
        "the answer's codec PCMU/8000 was not offered"
    )
    # codec-transcode=G729 adds G.729 (and only it, transcode being off in the policy).
    reply = browser_offer(
        off, sdp=chrome_offer_with("111 126"), call_id="c3", codec={"transcode": ["G729"]}
    )
    assert [n for n, _, _ in names(reply["sdp"])] == ["opus", "G729", "telephone-event"]


def test_reanswer_keeps_the_transcoders_and_back_to_passthrough_removes_them(
    tng: NgCommands, backend: FakeBackend, modes: list[tuple[str, str]]
) -> None:
    browser_offer(tng, sdp=chrome_offer_with("111 0 126"))
    answer = text("kamailio_plain_answer.sdp")
    pcma = answer.replace("RTP/AVP 0 101", "RTP/AVP 8 101").replace("0 PCMU/8000", "8 PCMA/8000")
    switch_answer(tng, sdp=pcma)
    s = session(backend)
    first = s.transcoders()["to_rtp"]
    assert first is not None and first.out_codec == "PCMA" and first.in_codec == "opus"
    # A re-INVITE answered the same way keeps the running transcoders (no new SSRC).
    browser_offer(tng, sdp=chrome_offer_with("111 0 126") + "a=x-reoffer\r\n")
    switch_answer(tng, sdp=pcma)
    assert s.transcoders()["to_rtp"] is first
    # Then the switch picks the browser's PCMU: passthrough, transcoders removed.
    browser_offer(tng, sdp=chrome_offer_with("111 0 126") + "a=x-again\r\n")
    switch_answer(tng, sdp=answer.replace("10000", "10002"))
    assert s.transcoders() == {"to_rtp": None, "to_webrtc": None}
    assert modes == [("c1", "transcode opus<->PCMA"), ("c1", "passthrough PCMU")]


def test_codec_policy_reaches_media_workers_intact() -> None:
    """Workers get the policy as one JSON argument: every field survives the trip."""
    from gateway.transport.ng import policy_from_json, policy_to_json

    policy = CodecPolicy(
        switch=("G729", "PCMA"),
        browser=("opus",),
        strip=("G722",),
        opus_complexity=9,
        transcode=False,
        opus_bitrate=24000,
    )
    assert policy_from_json(policy_to_json(policy)) == policy
    with pytest.raises(ValueError, match="bad codec policy"):
        policy_from_json('{"switch": []}')


def test_play_dtmf_from_the_browser_toward_the_switch(
    tng: NgCommands, backend: FakeBackend
) -> None:
    """rtpengine's ``play DTMF``: the from-tag names the generating participant (the browser);
    the digit goes out as telephone-events on the switch's own te/8000 payload type."""

    def play(**keys: object) -> dict[str, object]:
        return tng.handle({"command": "play DTMF", "call-id": "c1", **keys}, 1005.0)

    browser_offer(tng, sdp=chrome_offer_with("111 0 126"))
    assert play(**{"from-tag": "ftag", "code": "5"})["error-reason"] == (
        "play DTMF before the call's media is negotiated"
    )
    switch_answer(tng)  # passthrough PCMU, the switch's te/8000 is 101
    assert play(**{"from-tag": "ftag", "code": "5", "duration": 250}) == {"result": "ok"}
    assert play(**{"from_tag": "ftag", "code": "#"}) == {"result": "ok"}
    assert play(**{"from-tag": "ftag", "code": "10", "duration": "80"}) == {"result": "ok"}
    assert play(**{"from-tag": "ftag", "code": 15}) == {"result": "ok"}
    dtmf = [kw for name, kw in session(backend).calls if name == "dtmf"]
    assert dtmf == [
        {"code": 5, "duration": 250, "pt": 101},
        {"code": 11, "duration": 100, "pt": 101},
        {"code": 10, "duration": 80, "pt": 101},
        {"code": 15, "duration": 100, "pt": 101},
    ]
    errors = {
        "Unknown call-id": {"call-id": "nope", "from-tag": "ftag", "code": "1"},
        "'x' is not a DTMF digit (0-9, *, #, A-D)": {"from-tag": "ftag", "code": "x"},
        "DTMF event 16 is not 0-15": {"from-tag": "ftag", "code": "16"},
        "'code' must be a DTMF digit or event number": {"from-tag": "ftag"},
        "'duration' must be an integer (milliseconds)": {
            "from-tag": "ftag", "code": "1", "duration": "long"
        },
        "play DTMF is supported from the browser's tag only (toward the switch)": {
            "from-tag": "ttag", "code": "1"
        },
    }  # fmt: skip
    for reason, keys in errors.items():
        assert play(**keys) == {"result": "error", "error-reason": reason}, keys
    # A switch without telephone-event: nothing to send the digit as.
    browser_offer(tng, sdp=chrome_offer_with("111 0"), call_id="c2")
    switch_answer(
        tng,
        call_id="c2",
        sdp=text("kamailio_plain_answer.sdp").replace("RTP/AVP 0 101", "RTP/AVP 0"),
    )
    reply = tng.handle(
        {"command": "play DTMF", "call-id": "c2", "from-tag": "ftag", "code": "1"}, 1006.0
    )
    assert reply["error-reason"] == "the switch leg has no telephone-event/8000"


def no_te_answer() -> str:
    """Kamailio's plain answer without telephone-event (a switch that wants SIP INFO)."""
    return text("kamailio_plain_answer.sdp").replace("RTP/AVP 0 101", "RTP/AVP 0")


def event_packet(pt: int, ts: int, code: int, end: bool, duration: int, seq: int = 1) -> bytes:
    header = struct.pack("!BBHII", 0x80, pt, seq, ts, 0x1234)
    return header + struct.pack("!BBH", code, (0x80 if end else 0) | 10, duration)


def test_dtmf_info_flag_keeps_the_browsers_events_and_collects_its_digits(
    ng: NgCommands, tng: NgCommands, backend: FakeBackend
) -> None:
    """PITFALLS 10, the browser's RFC 4733 toward a switch that takes INFO only: with the
    ``DTMF-INFO`` flag the browser is answered with its telephone-event although the switch
    has none (passthrough and transcoded), its events are read as digits, and ``DTMF events``
    hands each digit over once."""
    # Passthrough PCMU: the browser's te/8000 (126) is answered.
    browser_offer(ng, sdp=chrome_offer_with("111 0 126"))
    reply = switch_answer(ng, sdp=no_te_answer(), flags=["DTMF-INFO"])
    assert reply["result"] == "ok" and reply["dtmf"] == "info", reply
    assert names(reply["sdp"]) == [("PCMU", 8000, 0), ("telephone-event", 8000, 126)]
    receiver = session(backend).receiver
    assert receiver is not None and (receiver.payload_type, receiver.clock) == (126, 8000)
    for seq, (end, duration) in enumerate(
        [(False, 160), (False, 800), (True, 1280)] + [(True, 1280)] * 2
    ):
        receiver.receive(event_packet(126, 8000, 5, end, duration, seq))
    receiver.receive(event_packet(126, 16000, 11, True, 400))  # "#", only its end arrived
    events = ng.handle({"command": "DTMF events"}, 1004.0)
    assert events == {
        "result": "ok",
        "events": [
            {"call-id": "c1", "from-tag": "ftag", "code": "5", "duration": 160},
            {"call-id": "c1", "from-tag": "ftag", "code": "#", "duration": 100},
        ],
    }
    assert ng.handle({"command": "DTMF events"}, 1005.0) == {"result": "ok", "events": []}
    # Without the flag nothing changes: no events answered, no reader.
    browser_offer(ng, sdp=chrome_offer_with("111 0 126"), call_id="c2")
    reply = switch_answer(ng, sdp=no_te_answer(), call_id="c2")
    assert "dtmf" not in reply and names(reply["sdp"]) == [("PCMU", 8000, 0)]
    assert session(backend, "c2").receiver is None
    # A switch with telephone-event keeps RFC 4733 end to end: no reader even with the flag.
    browser_offer(ng, sdp=chrome_offer_with("111 0 126"), call_id="c3")
    reply = switch_answer(ng, call_id="c3", flags=["DTMF-INFO"])
    assert "dtmf" not in reply and session(backend, "c3").receiver is None
    # Transcoded opus<->PCMU: Chromium's te/48000 (110) is answered, durations at 48 kHz.
    browser_offer(tng, sdp=chrome_offer_with("111 110 126"), call_id="t1")
    reply = switch_answer(tng, sdp=no_te_answer(), call_id="t1", flags=["DTMF-INFO"])
    assert reply["dtmf"] == "info" and reply["mode"] == "transcode"
    assert names(reply["sdp"]) == [("opus", 48000, 111), ("telephone-event", 48000, 110)]
    receiver = session(backend, "t1").receiver
    assert receiver is not None and (receiver.payload_type, receiver.clock) == (110, 48000)
    receiver.receive(event_packet(110, 96000, 1, True, 9600))
    # A re-INVITE's answer keeps the reader (and what it holds).
    browser_offer(tng, sdp=chrome_offer_with("111 110 126"), call_id="t1")
    switch_answer(tng, sdp=no_te_answer(), call_id="t1", flags=["DTMF-INFO"])
    assert session(backend, "t1").receiver is receiver
    events = tng.handle({"command": "DTMF events"}, 1006.0)["events"]
    assert events == [{"call-id": "t1", "from-tag": "ftag", "code": "1", "duration": 200}]
    # "limit" caps one reply (a media worker's share); the rest wait for the next.
    for i in range(3):
        receiver.receive(event_packet(110, 120000 + 9600 * i, 3 + i, True, 4800))
    first = tng.handle({"command": "DTMF events", "limit": 2}, 1006.1)["events"]
    rest = tng.handle({"command": "DTMF events"}, 1006.2)["events"]
    assert [e["code"] for e in first + rest] == ["3", "4", "5"] and len(first) == 2
    assert tng.handle({"command": "DTMF events", "limit": 0}, 1006.3)["result"] == "error"
    # Ending the call forgets it.
    receiver.receive(event_packet(110, 192000, 2, True, 9600))
    tng.handle({"command": "delete", "call-id": "t1"}, 1007.0)
    assert tng.handle({"command": "DTMF events"}, 1008.0)["events"] == []


def test_dtmf_info_flag_with_firefox_answers_its_te_8000_beside_opus(
    tng: NgCommands, backend: FakeBackend
) -> None:
    """Firefox offers te/8000 only beside opus; transcoded to a switch without events it is
    answered te/8000 and its events are read in the Opus clock (as the transcoder does)."""
    firefox = text("firefox_offer.sdp").replace(
        "m=audio 9 UDP/TLS/RTP/SAVPF 109 9 0 8 101", "m=audio 9 UDP/TLS/RTP/SAVPF 109 101"
    )
    browser_offer(tng, sdp=firefox)
    reply = switch_answer(tng, sdp=no_te_answer(), flags=["DTMF-INFO"])
    assert names(reply["sdp"]) == [("opus", 48000, 109), ("telephone-event", 8000, 101)]
    receiver = session(backend).receiver
    assert receiver is not None and (receiver.payload_type, receiver.clock) == (101, 48000)


def test_dtmf_info_flag_on_a_switch_offer_without_events(
    ng: NgCommands, backend: FakeBackend
) -> None:
    """A call from a switch without telephone-event: with ``DTMF-INFO`` the browser is offered
    te/8000 anyway; its answer's telephone-event is read as digits and kept out of the
    answer to the switch, which offered none (RFC 3264 §6.1)."""

    def offer(call_id: str, flags: list[str]) -> dict[str, object]:
        sdp = text("kamailio_plain_offer.sdp").replace(SWITCH_M_LINE, "m=audio 30000 RTP/AVP 0")
        return ng.handle(
            {"command": "offer", "call-id": call_id, "from-tag": "sw", "sdp": sdp,
             "transport-protocol": "UDP/TLS/RTP/SAVPF", "ICE": "force", "flags": flags},
            5.0,
        )  # fmt: skip

    assert names(offer("s0", [])["sdp"]) == [("PCMU", 8000, 0)]
    reply = offer("s1", ["DTMF-INFO"])
    (pcmu, te) = names(reply["sdp"])
    assert pcmu == ("PCMU", 8000, 0) and te[:2] == ("telephone-event", 8000)
    answer = (
        text("chrome_answer.sdp")
        .replace(
            "m=audio 48506 UDP/TLS/RTP/SAVPF 111 0 8 96 101",
            f"m=audio 48506 UDP/TLS/RTP/SAVPF 0 {te[2]}",
        )
        .replace("a=rtpmap:101 telephone-event/8000", f"a=rtpmap:{te[2]} telephone-event/8000")
    )
    reply = ng.handle(
        {"command": "answer", "call-id": "s1", "from-tag": "sw", "to-tag": "br", "sdp": answer},
        6.0,
    )
    assert reply["result"] == "ok" and reply["dtmf"] == "info", reply
    assert names(reply["sdp"]) == [("PCMU", 8000, 0)]  # no telephone-event to the switch
    receiver = session(backend, "s1").receiver
    assert receiver is not None and (receiver.payload_type, receiver.clock) == (te[2], 8000)
    receiver.receive(event_packet(te[2], 800, 0, True, 800))
    assert ng.handle({"command": "DTMF events"}, 7.0)["events"] == [
        {"call-id": "s1", "from-tag": "br", "code": "0", "duration": 100}
    ]


def test_passthrough_answer_to_the_switch_names_only_what_it_offered(tng: NgCommands) -> None:
    """RFC 3264 §6.1: a PCMU-only switch offer reaches the browser with the policy's opus and
    PCMA added; a browser accepting PCMU, PCMA and telephone-event is passthrough PCMU, and
    the switch's answer names PCMU alone (before, PCMA and the event leaked into it)."""
    assert switch_offer(tng, "0")["result"] == "ok"
    answer = text("chrome_answer.sdp").replace(
        "m=audio 48506 UDP/TLS/RTP/SAVPF 111 0 8 96 101", "m=audio 48506 UDP/TLS/RTP/SAVPF 0 8 101"
    )
    reply = tng.handle(
        {"command": "answer", "call-id": "s1", "from-tag": "sw", "to-tag": "br", "sdp": answer},
        6.0,
    )
    assert reply["result"] == "ok" and reply["mode"] == "passthrough", reply
    assert names(reply["sdp"]) == [("PCMU", 8000, 0)]
