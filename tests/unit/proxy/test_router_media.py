"""The proxy's media hook: SDP is parked, sent to the media layer as an
rtpengine NG command, and forwarded only with the media layer's SDP.

The media layer's replies are scripted here (the NG server and engine have
their own tests against aiortc); this checks the proxy's half of the contract.
"""

from __future__ import annotations

from gateway.proxy.router import MEDIA_DELETE_DELAY, MediaCommand, Note, Proxy
from gateway.sip.message import Request, Response, parse
from tests.unit.proxy.test_router import (
    FLOW,
    INVITE,
    SW1,
    crlf,
    make_proxy,
    only_request,
    responses_to_flow,
    sent_flow,
    sent_upstream,
    upstream_reply,
)

PLAIN = "v=0\r\no=gw 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"
WEBRTC = "v=0\r\no=gw 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 40002 UDP/TLS/RTP/SAVPF 0\r\n"


def commands(actions: list) -> list[MediaCommand]:
    return [a for a in actions if isinstance(a, MediaCommand)]


def media_proxy() -> Proxy:
    return make_proxy(media=True)


def test_offer_from_browser_is_parked_until_the_media_layer_answers() -> None:
    proxy = media_proxy()
    proxy.receive_from_flow(FLOW, crlf(INVITE), 0.0)
    actions = proxy.actions()
    assert [r.status for r in responses_to_flow(actions)] == [100]
    assert not sent_upstream(actions)  # parked
    (cmd,) = commands(actions)
    assert cmd.command["command"] == "offer"
    assert cmd.command["call-id"] == f"call-1~{FLOW:x}"
    assert cmd.command["from-tag"] == "a1"
    assert cmd.command["transport-protocol"] == "RTP/AVP"
    assert cmd.command["ICE"] == "remove"
    proxy.media_result(cmd.token, {"result": "ok", "sdp": PLAIN}, 0.1)
    _, req = only_request(proxy.actions())
    assert req.body == PLAIN.encode()
    assert req.headers.get("Content-Length") == str(len(PLAIN))
    # the 200's SDP is the answer, rewritten for the browser
    proxy.receive_from_upstream(
        upstream_reply(
            req,
            200,
            "OK",
            "Content-Type: application/sdp\nContact: <sip:f@127.0.0.3>\n",
            PLAIN.replace("\r\n", "\n"),
        ),
        *SW1[:2],
        "udp",
        0.2,
    )
    actions = proxy.actions()
    assert not sent_flow(actions)
    (answer,) = commands(actions)
    assert answer.command["command"] == "answer"
    assert (answer.command["from-tag"], answer.command["to-tag"]) == ("a1", "sw200")
    assert answer.command["transport-protocol"] == "UDP/TLS/RTP/SAVPF"
    proxy.media_result(answer.token, {"result": "ok", "sdp": WEBRTC}, 0.3)
    (resp,) = responses_to_flow(proxy.actions())
    assert resp.status == 200 and resp.body == WEBRTC.encode()
    # BYE ends the media session
    bye = crlf(
        """BYE sip:f@127.0.0.3 SIP/2.0
Via: SIP/2.0/WSS 2kq9b8k3mq7a.invalid;branch=z9hG4bKbye1
Max-Forwards: 70
From: "Alice" <sip:alice@example.test>;tag=a1
To: <sip:95090@example.test>;tag=sw200
Call-ID: call-1
CSeq: 8 BYE
Content-Length: 0

"""
    )
    proxy.receive_from_flow(FLOW, bye, 0.4)
    (delete,) = commands(proxy.actions())
    assert delete.command == {"command": "delete", "call-id": f"call-1~{FLOW:x}"}
    assert delete.token == 0
    assert proxy.media_calls == {}


def test_offer_the_media_layer_refuses_gets_488_and_nothing_upstream() -> None:
    proxy = media_proxy()
    proxy.receive_from_flow(FLOW, crlf(INVITE), 0.0)
    (cmd,) = commands(proxy.actions())
    proxy.media_result(cmd.token, {"result": "error", "error-reason": "no ports"}, 0.1)
    actions = proxy.actions()
    assert not sent_upstream(actions)
    (resp,) = responses_to_flow(actions)
    assert resp.status == 488 and "media" in (resp.headers.get("Warning") or "")
    proxy.media_result(cmd.token, {"result": "ok", "sdp": PLAIN}, 0.2)  # late duplicate: ignored
    assert not proxy.actions()


def test_cancel_while_the_offer_is_with_the_media_layer() -> None:
    proxy = media_proxy()
    proxy.receive_from_flow(FLOW, crlf(INVITE), 0.0)
    (cmd,) = commands(proxy.actions())
    cancel = crlf(
        """CANCEL sip:95090@example.test SIP/2.0
Via: SIP/2.0/WSS 2kq9b8k3mq7a.invalid;branch=z9hG4bK9999
Max-Forwards: 70
To: <sip:95090@example.test>
From: "Alice" <sip:alice@example.test>;tag=a1
Call-ID: call-1
CSeq: 7 CANCEL
Content-Length: 0

"""
    )
    proxy.receive_from_flow(FLOW, cancel, 0.05)
    assert sorted(r.status for r in responses_to_flow(proxy.actions())) == [200, 487]
    proxy.media_result(cmd.token, {"result": "ok", "sdp": PLAIN}, 0.1)
    actions = proxy.actions()
    assert not sent_upstream(actions)  # never forwarded
    (delete,) = commands(actions)
    assert delete.command["command"] == "delete"
    assert proxy.pending_invites == 0


def test_late_offer_offer_in_200_answer_in_ack() -> None:
    proxy = media_proxy()
    text = INVITE.replace(
        "Content-Type: application/sdp\nContent-Length: 5\n\nv=0\n", "Content-Length: 0\n\n"
    )
    proxy.receive_from_flow(FLOW, crlf(text), 0.0)
    actions = proxy.actions()
    assert not commands(actions)  # no SDP, nothing to anchor yet
    _, req = only_request(actions)
    proxy.receive_from_upstream(
        upstream_reply(
            req,
            200,
            "OK",
            "Content-Type: application/sdp\nContact: <sip:f@127.0.0.3>\n",
            PLAIN.replace("\r\n", "\n"),
        ),
        *SW1[:2],
        "udp",
        0.1,
    )
    (offer,) = commands(proxy.actions())
    # the 200 carries the switch's offer: it goes to the browser in the WebRTC profile
    assert offer.command["command"] == "offer"
    assert offer.command["from-tag"] == "sw200"  # the offerer is the To side
    assert offer.command["ICE"] == "force"
    proxy.media_result(offer.token, {"result": "ok", "sdp": WEBRTC}, 0.2)
    (resp,) = responses_to_flow(proxy.actions())
    assert resp.body == WEBRTC.encode()
    ack = crlf(
        f"""ACK sip:f@127.0.0.3 SIP/2.0
Via: SIP/2.0/WSS 2kq9b8k3mq7a.invalid;branch=z9hG4bKack1
Max-Forwards: 70
From: "Alice" <sip:alice@example.test>;tag=a1
To: <sip:95090@example.test>;tag=sw200
Call-ID: call-1
CSeq: 7 ACK
Content-Type: application/sdp
Content-Length: {len(WEBRTC)}

{WEBRTC.replace(chr(13), "")}"""
    )
    proxy.receive_from_flow(FLOW, ack, 0.3)
    (answer,) = commands(proxy.actions())
    assert answer.command["command"] == "answer"
    assert (answer.command["from-tag"], answer.command["to-tag"]) == ("sw200", "a1")
    proxy.media_result(answer.token, {"result": "ok", "sdp": PLAIN}, 0.4)
    _, fwd_ack = only_request(proxy.actions())
    assert fwd_ack.method == "ACK" and fwd_ack.body == PLAIN.encode()


def test_final_failure_deletes_the_media_session() -> None:
    proxy = media_proxy()
    proxy.receive_from_flow(FLOW, crlf(INVITE), 0.0)
    (cmd,) = commands(proxy.actions())
    proxy.media_result(cmd.token, {"result": "ok", "sdp": PLAIN}, 0.1)
    _, req = only_request(proxy.actions())
    proxy.receive_from_upstream(upstream_reply(req, 486, "Busy Here"), *SW1[:2], "udp", 0.2)
    actions = proxy.actions()
    assert [r.status for r in responses_to_flow(actions)] == [486]
    # kept a moment for a retry with the same Call-ID (like rtpengine's delete-delay)
    assert not commands(actions)
    proxy.handle_timer(0.2 + MEDIA_DELETE_DELAY)
    (delete,) = commands(proxy.actions())
    assert delete.command["command"] == "delete"


def test_retry_after_challenge_reuses_the_media_session() -> None:
    """A 407 then the same INVITE with credentials: one session, no delete racing the offer."""
    proxy = media_proxy()
    proxy.receive_from_flow(FLOW, crlf(INVITE), 0.0)
    (cmd,) = commands(proxy.actions())
    proxy.media_result(cmd.token, {"result": "ok", "sdp": PLAIN}, 0.1)
    _, req = only_request(proxy.actions())
    proxy.receive_from_upstream(
        upstream_reply(req, 407, "Proxy Authentication Required"), *SW1[:2], "udp", 0.2
    )
    proxy.actions()
    retry = crlf(INVITE.replace("z9hG4bK9999", "z9hG4bK9998").replace("CSeq: 7", "CSeq: 8"))
    proxy.receive_from_flow(FLOW, retry, 0.3)
    (again,) = commands(proxy.actions())
    assert (
        again.command["command"] == "offer" and again.command["call-id"] == cmd.command["call-id"]
    )
    proxy.handle_timer(10.0)
    assert not commands(proxy.actions())  # the pending delete was called off


def test_flow_loss_deletes_media_of_its_calls() -> None:
    proxy = media_proxy()
    confirmed_media_call(proxy)
    proxy.flow_closed(FLOW, 1.0)
    actions = proxy.actions()
    assert only_request(actions)[1].method == "BYE"
    assert [c.command["command"] for c in commands(actions)] == ["delete"]


def test_media_off_passes_sdp_through() -> None:
    proxy = make_proxy()
    proxy.receive_from_flow(FLOW, crlf(INVITE), 0.0)
    actions = proxy.actions()
    assert not commands(actions)
    msg = parse(sent_upstream(actions)[0].data)
    assert isinstance(msg, Request) and msg.body == b"v=0\r\n"
    assert not isinstance(msg, Response)


def confirmed_media_call(proxy: Proxy, answer_reply: dict[str, object] | None = None) -> None:
    """Browser INVITE -> 200 from the switch, both SDPs through the (scripted) media layer
    (``answer_reply``: its reply to the answer, default ok with the browser's SDP)."""
    proxy.receive_from_flow(FLOW, crlf(INVITE), 0.0)
    (cmd,) = commands(proxy.actions())
    proxy.media_result(cmd.token, {"result": "ok", "sdp": PLAIN}, 0.1)
    _, req = only_request(proxy.actions())
    proxy.receive_from_upstream(
        upstream_reply(
            req,
            200,
            "OK",
            "Content-Type: application/sdp\nContact: <sip:f@127.0.0.3>\n",
            PLAIN.replace("\r\n", "\n"),
        ),
        *SW1[:2],
        "udp",
        0.2,
    )
    (answer,) = commands(proxy.actions())
    proxy.media_result(answer.token, answer_reply or {"result": "ok", "sdp": WEBRTC}, 0.3)
    proxy.actions()


def info(cseq: int, content_type: str, body: str) -> bytes:
    return crlf(
        f"""INFO sip:f@127.0.0.3 SIP/2.0
Via: SIP/2.0/WSS 2kq9b8k3mq7a.invalid;branch=z9hG4bKinfo{cseq}
Max-Forwards: 70
From: "Alice" <sip:alice@example.test>;tag=a1
To: <sip:95090@example.test>;tag=sw200
Call-ID: call-1
CSeq: {cseq} INFO
Content-Type: {content_type}
Content-Length: {len(body)}

{body}"""
    )


def test_dtmf_info_becomes_rfc4733_toward_the_switch_or_is_relayed() -> None:
    proxy = make_proxy(media=True, dtmf_info_to_rfc4733=True)
    confirmed_media_call(proxy)
    # SIP.js's INFO: the media layer plays the digit; the gateway answers 200 itself.
    proxy.receive_from_flow(
        FLOW, info(3, "application/dtmf-relay", "Signal= 5\nDuration= 160\n"), 1.0
    )
    actions = proxy.actions()
    assert not sent_upstream(actions)
    (play,) = commands(actions)
    assert play.command == {
        "command": "play DTMF",
        "call-id": f"call-1~{FLOW:x}",
        "from-tag": "a1",
        "code": "5",
        "duration": 160,
    }
    proxy.media_result(play.token, {"result": "ok"}, 1.01)
    actions = proxy.actions()
    assert [r.status for r in responses_to_flow(actions)] == [200]
    assert not sent_upstream(actions)
    # The media layer cannot (no telephone-event on the switch leg): the INFO goes on as is.
    proxy.receive_from_flow(FLOW, info(4, "application/dtmf", "#"), 2.0)
    (play,) = commands(proxy.actions())
    assert play.command["code"] == "#" and play.command["duration"] == 100
    proxy.media_result(
        play.token,
        {"result": "error", "error-reason": "the switch leg has no telephone-event/8000"},
        2.01,
    )
    actions = proxy.actions()
    assert not responses_to_flow(actions)
    _, relayed = only_request(actions)
    assert (relayed.method, relayed.body) == ("INFO", b"#")
    # Not DTMF (another body type, a non-digit signal): relayed without asking the media layer.
    for cseq, ctype, body in (
        (5, "application/json", '{"a":1}'),
        (6, "application/dtmf-relay", "Signal=X"),
    ):
        proxy.receive_from_flow(FLOW, info(cseq, ctype, body), 3.0)
        actions = proxy.actions()
        assert not commands(actions)
        assert only_request(actions)[1].body == body.encode()


def test_dtmf_info_is_relayed_when_the_conversion_is_off() -> None:
    proxy = make_proxy(media=True)
    confirmed_media_call(proxy)
    proxy.receive_from_flow(
        FLOW, info(3, "application/dtmf-relay", "Signal=5\nDuration=160\n"), 1.0
    )
    actions = proxy.actions()
    assert not commands(actions)
    assert only_request(actions)[1].method == "INFO"


def in_dialog(method: str, cseq: int, branch: str) -> bytes:
    """A browser's request in call-1's dialog (the switch's 200 had To tag sw200)."""
    return crlf(
        f"""{method} sip:f@127.0.0.3 SIP/2.0
Via: SIP/2.0/WSS 2kq9b8k3mq7a.invalid;branch=z9hG4bK{branch}
Max-Forwards: 70
From: "Alice" <sip:alice@example.test>;tag=a1
To: <sip:95090@example.test>;tag=sw200
Call-ID: call-1
CSeq: {cseq} {method}
Content-Length: 0

"""
    )


def test_browser_rfc4733_digits_go_to_the_switch_as_info_and_later_cseqs_are_shifted() -> None:
    """PITFALLS 10, RFC 4733 from the browser toward a switch that takes INFO only: the
    switch's answer is sent to the media layer with the DTMF-INFO flag; when the media layer
    says it reads the browser's events (``dtmf: info``), each digit it reports becomes an
    INFO in the browser's name. The browser's later requests go out with CSeqs past the
    gateway's (RFC 3261 §12.2.2: the switch rejects a CSeq lower than one it has seen) and
    their responses come back with the browser's own numbers."""
    proxy = make_proxy(media=True, dtmf_rfc4733_to_info=True)
    proxy.receive_from_flow(FLOW, crlf(INVITE), 0.0)
    (offer,) = commands(proxy.actions())
    assert "flags" not in offer.command  # only the switch's SDP carries the flag
    proxy.media_result(offer.token, {"result": "ok", "sdp": PLAIN}, 0.1)
    _, req = only_request(proxy.actions())
    route = "Record-Route: <sip:127.0.0.1:5070;lr>\n"
    proxy.receive_from_upstream(
        upstream_reply(
            req, 200, "OK",
            f"{route}Content-Type: application/sdp\nContact: <sip:f@127.0.0.3>\n"
            "Allow: INVITE,ACK,BYE,CANCEL,INFO\n",
            PLAIN.replace("\r\n", "\n"),
        ),
        *SW1[:2], "udp", 0.2,
    )  # fmt: skip
    (answer,) = commands(proxy.actions())
    assert answer.command["command"] == "answer" and answer.command["flags"] == ["DTMF-INFO"]
    proxy.media_result(answer.token, {"result": "ok", "sdp": WEBRTC, "dtmf": "info"}, 0.3)
    proxy.actions()
    call = f"call-1~{FLOW:x}"
    assert proxy.dtmf_info_calls == {call}
    proxy.receive_from_flow(FLOW, in_dialog("ACK", 7, "ack7"), 0.4)
    _, ack = only_request(proxy.actions())
    assert ack.cseq == (7, "ACK")

    # A digit read from the browser's telephone-events: INFO #1 in the browser's name.
    proxy.dtmf_events([{"call-id": call, "from-tag": "a1", "code": "5", "duration": 160}], 1.0)
    up, info1 = only_request(proxy.actions())
    assert (up.host, up.port) == ("127.0.0.1", 5070)  # along the route set
    assert (info1.method, info1.uri) == ("INFO", "sip:f@127.0.0.3")
    assert info1.headers.get_all("Route") == ["<sip:127.0.0.1:5070;lr>"]
    assert info1.from_tag == "a1" and info1.to_tag == "sw200" and info1.call_id == "call-1"
    assert info1.cseq == (8, "INFO")
    assert info1.headers.get("Content-Type") == "application/dtmf-relay"
    assert info1.body == b"Signal=5\r\nDuration=160\r\n"
    proxy.receive_from_upstream(upstream_reply(info1, 200, "OK"), *SW1[:2], "udp", 1.1)
    assert not sent_flow(proxy.actions())  # our INFO's response stays here

    # The browser's own INFO (its CSeq 8) goes out as 9; the 200 comes back as 8.
    proxy.receive_from_flow(FLOW, in_dialog("INFO", 8, "i8"), 2.0)
    _, fwd = only_request(proxy.actions())
    assert fwd.cseq == (9, "INFO")
    proxy.receive_from_upstream(upstream_reply(fwd, 200, "OK"), *SW1[:2], "udp", 2.1)
    (ok,) = responses_to_flow(proxy.actions())
    assert (ok.status, ok.cseq) == (200, (8, "INFO"))

    # A re-INVITE (browser 9 -> 10), a digit meanwhile (INFO 11), then its ACK: still 10.
    proxy.receive_from_flow(FLOW, in_dialog("INVITE", 9, "re9"), 3.0)
    actions = proxy.actions()
    _, reinvite = only_request(actions)
    assert reinvite.cseq == (10, "INVITE")
    proxy.receive_from_upstream(
        upstream_reply(reinvite, 200, "OK", "Contact: <sip:f@127.0.0.3>\n"),
        *SW1[:2], "udp", 3.1,
    )  # fmt: skip
    (ok,) = [r for r in responses_to_flow(proxy.actions()) if r.status == 200]
    assert ok.cseq == (9, "INVITE")
    proxy.dtmf_events([{"call-id": call, "from-tag": "a1", "code": "#", "duration": 100}], 3.2)
    _, info2 = only_request(proxy.actions())
    assert info2.cseq == (11, "INFO") and info2.body == b"Signal=#\r\nDuration=100\r\n"
    proxy.receive_from_flow(FLOW, in_dialog("ACK", 9, "ack9"), 3.3)
    _, ack = only_request(proxy.actions())
    assert ack.cseq == (10, "ACK")
    # BYE: browser 10 -> 12; the media session goes and with it the polling.
    proxy.receive_from_flow(FLOW, in_dialog("BYE", 10, "bye10"), 4.0)
    actions = proxy.actions()
    _, bye = only_request(actions)
    assert bye.cseq == (12, "BYE")
    assert any(c.command["command"] == "delete" for c in commands(actions))
    assert proxy.dtmf_info_calls == set()


def test_dtmf_events_that_cannot_be_sent_are_dropped_and_noted() -> None:
    proxy = make_proxy(media=True, dtmf_rfc4733_to_info=True)
    confirmed_media_call(proxy, {"result": "ok", "sdp": WEBRTC, "dtmf": "info"})
    call = f"call-1~{FLOW:x}"
    assert proxy.dtmf_info_calls == {call}
    proxy.dtmf_events(
        [
            {"call-id": "other~1", "code": "5", "duration": 100},  # unknown call
            {"call-id": call, "code": "55", "duration": 100},
            {"call-id": call, "code": "X", "duration": 100},
            {"call-id": call, "code": "5", "duration": "100"},
            {"call-id": call, "code": "5", "duration": 0},
            "garbage",
        ],
        1.0,
    )
    actions = proxy.actions()
    assert not sent_upstream(actions)
    notes = [a.kind for a in actions if isinstance(a, Note)]
    assert notes == ["dtmf_rfc4733_dropped"] * 5
    # Without the setting the flag is not asked for and a "dtmf" reply is not acted on.
    proxy = make_proxy(media=True)
    proxy.receive_from_flow(FLOW, crlf(INVITE), 0.0)
    (offer,) = commands(proxy.actions())
    proxy.media_result(offer.token, {"result": "ok", "sdp": PLAIN}, 0.1)
    _, req = only_request(proxy.actions())
    proxy.receive_from_upstream(
        upstream_reply(req, 200, "OK", "Content-Type: application/sdp\n", PLAIN.replace("\r\n", "\n")),
        *SW1[:2], "udp", 0.2,
    )  # fmt: skip
    (answer,) = commands(proxy.actions())
    assert "flags" not in answer.command
