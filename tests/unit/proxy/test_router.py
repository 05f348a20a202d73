"""The edge proxy core, driven with SIP text and a fake clock (no sockets).

Messages are shaped after what JsSIP/SIP.js send (``.invalid`` Via and
Contact, ``reg-id``/``+sip.instance``) and what Kamailio answers.
"""

from __future__ import annotations

import pytest

from gateway.proxy.flow import FlowTable, FlowTokenSigner
from gateway.proxy.router import (
    Dropped,
    Note,
    Proxy,
    ProxySettings,
    SendToFlow,
    SendUpstream,
)
from gateway.proxy.upstream import PoolMember, UpstreamPool
from gateway.sip.headers import parse_name_addr, parse_via
from gateway.sip.message import Request, Response, parse
from gateway.sip.uri import SipURI

SW1 = ("127.0.0.1", 5070, "udp")
SW2 = ("127.0.0.5", 5070, "udp")
FLOW = 0x1234567890ABCDEF


def crlf(text: str) -> bytes:
    head, _, body = text.lstrip("\n").partition("\n\n")
    raw = head.replace("\n", "\r\n") + "\r\n\r\n" + body.replace("\n", "\r\n")
    return raw.encode()


def make_proxy(mode: str = "path", members: tuple = (SW1,), **kw: object) -> Proxy:
    pool = UpstreamPool([PoolMember(h, p, t, f"sip:{h}:{p};transport={t}") for h, p, t in members])
    settings = ProxySettings(
        sip_host="127.0.0.2",
        sip_port=5062,
        mode=mode,
        probe_interval=0,
        **kw,  # type: ignore[arg-type]
    )
    proxy = Proxy(settings, pool, FlowTable(FlowTokenSigner(b"s" * 32)))
    proxy.flow_opened(FLOW, "192.0.2.10", 50123, secure=True)
    return proxy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0


def sent_upstream(actions: list) -> list[SendUpstream]:
    return [a for a in actions if isinstance(a, SendUpstream)]


def sent_flow(actions: list) -> list[SendToFlow]:
    return [a for a in actions if isinstance(a, SendToFlow)]


def only_request(actions: list) -> tuple[SendUpstream, Request]:
    ups = sent_upstream(actions)
    assert len(ups) == 1, ups
    msg = parse(ups[0].data)
    assert isinstance(msg, Request)
    return ups[0], msg


def responses_to_flow(actions: list) -> list[Response]:
    out = []
    for a in sent_flow(actions):
        msg = parse(a.data)
        assert isinstance(msg, Response)
        out.append(msg)
    return out


REGISTER = """REGISTER sip:example.test SIP/2.0
Via: SIP/2.0/WSS 2kq9b8k3mq7a.invalid;branch=z9hG4bK5552001
Max-Forwards: 69
To: <sip:alice@example.test>
From: <sip:alice@example.test>;tag=reg1
Call-ID: regcall1
CSeq: 1 REGISTER
Contact: <sip:u8x3k2@2kq9b8k3mq7a.invalid;transport=ws;ob>;+sip.ice;reg-id=1;+sip.instance="<urn:uuid:0d2c1c36-5e25-4c46-a3a8-8c7ca0fd43c3>";expires=600
Expires: 600
Allow: INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO,NOTIFY
Supported: path,gruu,outbound
User-Agent: JsSIP 3.10.1
Content-Length: 0

"""


def upstream_reply(
    req: Request, status: int, reason: str, extra: str = "", body: str = ""
) -> bytes:
    """A switch's response to a request the gateway forwarded (all Vias copied)."""
    vias = "".join(f"Via: {v}\n" for v in req.headers.get_all("Via"))
    to = req.headers.get("To") or ""
    if status > 100 and ";tag=" not in to:
        to += ";tag=sw" + str(status)
    text = (
        f"SIP/2.0 {status} {reason}\n{vias}"
        f"From: {req.headers.get('From')}\nTo: {to}\nCall-ID: {req.call_id}\n"
        f"CSeq: {req.cseq[0]} {req.cseq[1]}\n{extra}Content-Length: {len(body)}\n\n{body}"
    )
    return crlf(text)


def test_register_gets_path_with_signed_token_and_via_fix() -> None:
    clock = Clock()
    proxy = make_proxy()
    proxy.receive_from_flow(FLOW, crlf(REGISTER), clock.now)
    out, req = only_request(proxy.actions())
    assert (out.host, out.port, out.transport) == SW1
    vias = [parse_via(v) for v in req.headers.get_all("Via")]
    assert vias[0].host == "127.0.0.2" and vias[0].port == 5062
    assert vias[0].branch and vias[0].branch.startswith("z9hG4bK")
    # RFC 3581: the browser's .invalid Via gets received/rport of the connection
    assert vias[1].host == "2kq9b8k3mq7a.invalid"
    assert vias[1].received == "192.0.2.10" and vias[1].rport == "50123"
    path = parse_name_addr(req.headers.get("Path") or "")
    assert isinstance(path.uri, SipURI)
    assert path.uri.host == "127.0.0.2" and path.uri.port == 5062
    assert path.uri.has_param("lr") and path.uri.has_param("ob")  # RFC 5626 §5.1
    flow = proxy.flows.get(FLOW)
    assert flow is not None and path.uri.user == flow.token
    assert proxy.flows.by_token(path.uri.user) is flow
    assert flow.reg_id == "1" and flow.instance is not None
    assert req.headers.get("Max-Forwards") == "68"  # decremented (§16.6 step 3)
    # the body and the rest pass through
    assert req.headers.get("User-Agent") == "JsSIP 3.10.1"

    # 401 back to the browser, our Via removed, nothing else touched
    proxy.receive_from_upstream(
        upstream_reply(
            req, 401, "Unauthorized", 'WWW-Authenticate: Digest realm="example.test", nonce="abc"\n'
        ),
        *SW1[:2],
        "udp",
        clock.now,
    )
    (resp,) = responses_to_flow(proxy.actions())
    assert resp.status == 401
    assert [parse_via(v).host for v in resp.headers.get_all("Via")] == ["2kq9b8k3mq7a.invalid"]
    assert 'nonce="abc"' in (resp.headers.get("WWW-Authenticate") or "")


def test_register_200_gets_flow_timer_when_outbound() -> None:
    proxy = make_proxy(flow_timer=110)
    proxy.receive_from_flow(FLOW, crlf(REGISTER), 0.0)
    _, req = only_request(proxy.actions())
    proxy.receive_from_upstream(
        upstream_reply(req, 200, "OK", "Require: outbound\n"), *SW1[:2], "udp", 0.1
    )
    (resp,) = responses_to_flow(proxy.actions())
    assert resp.status == 200 and resp.headers.get("Flow-Timer") == "110"


INVITE = """INVITE sip:95090@example.test SIP/2.0
Via: SIP/2.0/WSS 2kq9b8k3mq7a.invalid;branch=z9hG4bK9999
Max-Forwards: 70
To: <sip:95090@example.test>
From: "Alice" <sip:alice@example.test>;tag=a1
Call-ID: call-1
CSeq: 7 INVITE
Contact: <sip:alice@example.test;gr=urn:uuid:0d2c1c36-5e25-4c46-a3a8-8c7ca0fd43c3;ob>
X-Test: kept
Content-Type: application/sdp
Content-Length: 5

v=0
"""


def start_call(proxy: Proxy, clock: Clock) -> tuple[Request, Response]:
    proxy.receive_from_flow(FLOW, crlf(INVITE), clock.now)
    actions = proxy.actions()
    (trying,) = responses_to_flow(actions)
    assert trying.status == 100
    _, req = only_request(actions)
    kamailio_rr = "Record-Route: <sip:127.0.0.1:5070;lr>\n"
    rrs = kamailio_rr + "".join(f"Record-Route: {r}\n" for r in req.headers.get_all("Record-Route"))
    clock.now += 0.1
    proxy.receive_from_upstream(
        upstream_reply(req, 180, "Ringing", rrs), *SW1[:2], "udp", clock.now
    )
    (ringing,) = responses_to_flow(proxy.actions())
    assert ringing.status == 180
    clock.now += 0.1
    ok = upstream_reply(req, 200, "OK", rrs + "Contact: <sip:sipp@127.0.0.3:5090>\n", "v=0\r\n")
    proxy.receive_from_upstream(ok, *SW1[:2], "udp", clock.now)
    (resp,) = responses_to_flow(proxy.actions())
    return req, resp


def test_invite_double_record_route_and_dialog_ended_by_bye_when_flow_dies() -> None:
    clock = Clock()
    proxy = make_proxy()
    req, resp = start_call(proxy, clock)
    flow = proxy.flows.get(FLOW)
    assert flow is not None
    rr = [parse_name_addr(r).uri for r in req.headers.get_all("Record-Route")]
    # RFC 5658: switch-side entry on top, WebSocket-side entry below, both with the token
    assert [(u.host, u.port) for u in rr] == [("127.0.0.2", 5062), ("gateway.invalid", None)]
    assert all(u.user == flow.token and u.has_param("lr") for u in rr)
    assert req.headers.get("X-Test") == "kept" and req.body == b"v=0\n".replace(b"\n", b"\r\n")
    assert resp.status == 200 and proxy.active_calls == 1

    # The browser's WebSocket dies: the gateway ends the call toward the switch.
    proxy.flow_closed(FLOW, clock.now + 5)
    actions = proxy.actions()
    out, bye = only_request(actions)
    assert (out.host, out.port) == SW1[:2]
    assert bye.method == "BYE"
    assert bye.uri == "sip:sipp@127.0.0.3:5090"
    assert bye.headers.get_all("Route") == ["<sip:127.0.0.1:5070;lr>"]
    assert bye.from_tag == "a1" and bye.to_tag == "sw200"
    assert bye.cseq == (8, "BYE")
    assert bye.call_id == "call-1"
    assert proxy.active_calls == 0
    assert Note("dialog_ended", "flow_closed") in actions


def test_bye_from_switch_reaches_browser_by_token_and_dead_flow_gets_430() -> None:
    clock = Clock()
    proxy = make_proxy()
    req, _ = start_call(proxy, clock)
    flow = proxy.flows.get(FLOW)
    assert flow is not None
    bye = crlf(
        f"""BYE sip:alice@example.test;gr=x SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKkam1
Via: SIP/2.0/UDP 127.0.0.3:5090;branch=z9hG4bKsipp1
Route: <sip:{flow.token}@127.0.0.2:5062;lr;r2=on>
Route: <sip:{flow.token}@gateway.invalid;transport=ws;lr;r2=on>
Max-Forwards: 69
From: <sip:95090@example.test>;tag=sw200
To: "Alice" <sip:alice@example.test>;tag=a1
Call-ID: call-1
CSeq: 1 BYE
Content-Length: 0

"""
    )
    proxy.receive_from_upstream(bye, *SW1[:2], "udp", clock.now)
    (out,) = sent_flow(proxy.actions())
    msg = parse(out.data)
    assert isinstance(msg, Request) and msg.method == "BYE"
    assert msg.headers.get("Route") is None  # both of our entries popped
    assert parse_via(msg.headers.get("Via") or "").transport == "WSS"
    assert proxy.active_calls == 0

    # The same request for a flow that has gone: 430 Flow Failed (RFC 5626 §5.3)
    proxy.flow_closed(FLOW, clock.now)
    proxy.actions()
    proxy.receive_from_upstream(bye.replace(b"kam1", b"kam2"), *SW1[:2], "udp", clock.now)
    ups = sent_upstream(proxy.actions())
    resp = parse(ups[0].data)
    assert isinstance(resp, Response) and resp.status == 430


def test_inbound_invite_routed_by_path_token_forged_token_refused() -> None:
    clock = Clock()
    proxy = make_proxy()
    flow = proxy.flows.get(FLOW)
    assert flow is not None

    def inbound(token: str, branch: str) -> bytes:
        return crlf(
            f"""INVITE sip:u8x3k2@2kq9b8k3mq7a.invalid;transport=ws SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}
Record-Route: <sip:127.0.0.1:5070;lr>
Route: <sip:{token}@127.0.0.2:5062;lr;ob>
Max-Forwards: 69
From: <sip:4000@example.test>;tag=c1
To: <sip:alice@example.test>
Call-ID: in-1
CSeq: 1 INVITE
Contact: <sip:4000@127.0.0.3:5091>
Content-Length: 0

"""
        )

    proxy.receive_from_upstream(inbound(flow.token, "z9hG4bKin1"), *SW1[:2], "udp", clock.now)
    actions = proxy.actions()
    (trying,) = [parse(a.data) for a in sent_upstream(actions)]
    assert isinstance(trying, Response) and trying.status == 100
    (out,) = sent_flow(actions)
    inv = parse(out.data)
    assert isinstance(inv, Request) and inv.uri.endswith(".invalid;transport=ws")
    assert inv.headers.get("Route") is None
    rr = [parse_name_addr(r).uri for r in inv.headers.get_all("Record-Route")]
    # toward the browser the WebSocket entry is on top
    assert [(u.host, u.port) for u in rr] == [
        ("gateway.invalid", None),
        ("127.0.0.2", 5062),
        ("127.0.0.1", 5070),
    ]
    # browser answers 200: the dialog is known to the gateway
    via = "".join(f"Via: {v}\n" for v in inv.headers.get_all("Via"))
    rrs = "".join(f"Record-Route: {r}\n" for r in inv.headers.get_all("Record-Route"))
    ok = crlf(
        f"""SIP/2.0 200 OK
{via}{rrs}From: <sip:4000@example.test>;tag=c1
To: <sip:alice@example.test>;tag=b7
Call-ID: in-1
CSeq: 1 INVITE
Contact: <sip:u8x3k2@2kq9b8k3mq7a.invalid;transport=ws>
Content-Length: 0

"""
    )
    proxy.receive_from_flow(FLOW, ok, clock.now)
    (fwd,) = [parse(a.data) for a in sent_upstream(proxy.actions())]
    assert isinstance(fwd, Response) and fwd.status == 200
    assert [parse_via(v).host for v in fwd.headers.get_all("Via")] == ["127.0.0.1"]
    assert proxy.active_calls == 1
    dialog = proxy.dialogs.for_flow(FLOW)[0]
    assert dialog.route_set == ["<sip:127.0.0.1:5070;lr>"]
    assert dialog.far_target == "sip:4000@127.0.0.3:5091"

    # A token signed with another key is refused with 430 and never reaches a flow.
    forged = FlowTokenSigner(b"z" * 32).encode(FLOW)
    proxy.receive_from_upstream(inbound(forged, "z9hG4bKin2"), *SW1[:2], "udp", clock.now)
    actions = proxy.actions()
    assert not sent_flow(actions)
    (resp,) = [parse(a.data) for a in sent_upstream(actions)]
    assert isinstance(resp, Response) and resp.status == 430


def test_no_open_relay_requests_go_only_to_the_pool() -> None:
    proxy = make_proxy()
    text = INVITE.replace(
        "Max-Forwards: 70\n", "Max-Forwards: 70\nRoute: <sip:198.51.100.66:5060;lr>\n"
    )
    proxy.receive_from_flow(FLOW, crlf(text), 0.0)
    out, req = only_request(proxy.actions())
    assert (out.host, out.port) == SW1[:2]


def test_failover_on_timeout_then_on_503() -> None:
    clock = Clock()
    proxy = make_proxy(members=(SW1, SW2))
    proxy.receive_from_flow(FLOW, crlf(REGISTER), clock.now)
    first, _ = only_request(proxy.actions())
    assert (first.host, first.port) == SW1[:2]
    # Timer F (64*T1 = 32 s) with UDP retransmissions to the first server
    retrans = 0
    while True:
        deadline = proxy.get_timer()
        assert deadline is not None
        clock.now = deadline
        proxy.handle_timer(clock.now)
        actions = proxy.actions()
        ups = sent_upstream(actions)
        if any(isinstance(a, Note) and a.kind == "failover" for a in actions):
            break
        retrans += len(ups)
        assert all((u.host, u.port) == SW1[:2] for u in ups)
        assert clock.now < 1000.0 + 40
    assert retrans >= 5
    assert [(u.host, u.port) for u in ups] == [SW2[:2]]
    assert Note("upstream_down", "sip:127.0.0.1:5070;transport=udp") in actions
    # New requests now go to the healthy second server first.
    proxy.receive_from_flow(
        FLOW,
        crlf(REGISTER.replace("z9hG4bK5552001", "z9hG4bK5552002").replace("CSeq: 1", "CSeq: 2")),
        clock.now,
    )
    out, req = only_request(proxy.actions())
    assert (out.host, out.port) == SW2[:2]
    # 503 from it: failover back to the first (its retry time has not passed, but
    # a pool with nothing healthy left still tries the untried member).
    proxy.receive_from_upstream(
        upstream_reply(req, 503, "Service Unavailable"), *SW2[:2], "udp", clock.now
    )
    out2, _ = only_request(proxy.actions())
    assert (out2.host, out2.port) == SW1[:2]


def test_cancel_before_answer() -> None:
    clock = Clock()
    proxy = make_proxy()
    proxy.receive_from_flow(FLOW, crlf(INVITE), clock.now)
    _, req = only_request(proxy.actions())
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
    # Before any provisional response: 200 to the CANCEL, CANCEL held back (§9.1)
    proxy.receive_from_flow(FLOW, cancel, clock.now)
    actions = proxy.actions()
    assert [r.status for r in responses_to_flow(actions)] == [200]
    assert not sent_upstream(actions)
    proxy.receive_from_upstream(upstream_reply(req, 180, "Ringing"), *SW1[:2], "udp", clock.now)
    actions = proxy.actions()
    assert [r.status for r in responses_to_flow(actions)] == [180]
    _, up_cancel = only_request(actions)
    assert up_cancel.method == "CANCEL"
    assert (
        parse_via(up_cancel.headers.get("Via") or "").branch
        == parse_via(req.headers.get("Via") or "").branch
    )
    proxy.receive_from_upstream(
        upstream_reply(req, 487, "Request Terminated"), *SW1[:2], "udp", clock.now
    )
    actions = proxy.actions()
    assert [r.status for r in responses_to_flow(actions)] == [487]
    # the gateway ACKs the 487 itself, hop by hop (§17.1.1.3)
    _, ack = only_request(actions)
    assert ack.method == "ACK"
    assert proxy.pending_invites == 0


@pytest.mark.parametrize(
    "data, status",
    [
        (
            b"INVITE sip:x@example.test SIP/2.0\r\nVia: SIP/2.0/WSS a.invalid;branch=z9hG4bK1\r\n"
            b"From: <sip:a@example.test>;tag=1\r\nTo: <sip:x@example.test>\r\nCall-ID: c\r\n"
            b"CSeq: 1 INVITE\r\nMax-Forwards: 0\r\nContent-Length: 0\r\n\r\n",
            483,
        ),
        (
            b"INVITE sip:x@example.test SIP/2.0\r\nVia: SIP/2.0/WSS a.invalid;branch=z9hG4bK1\r\n"
            b"From: <sip:a@example.test>;tag=1\r\nTo: <sip:x@example.test>\r\nCall-ID: c\r\n"
            b"CSeq: nine INVITE\r\nContent-Length: 0\r\n\r\n",
            400,
        ),
    ],
)
def test_bad_requests_are_answered(data: bytes, status: int) -> None:
    proxy = make_proxy()
    proxy.receive_from_flow(FLOW, data, 0.0)
    actions = proxy.actions()
    assert not sent_upstream(actions)
    # the answer copies the request's (possibly broken) headers: read its status line only
    replies = [a.data for a in sent_flow(actions)]
    assert replies and replies[-1].startswith(f"SIP/2.0 {status} ".encode()), replies


def test_garbage_is_dropped_and_counted() -> None:
    proxy = make_proxy()
    for junk in (b"\x00\xff" * 40, b"HELLO WORLD\r\n\r\n", b"SIP/2.0 200\r\n\r\n"):
        proxy.receive_from_flow(FLOW, junk, 0.0)
        proxy.receive_from_upstream(junk, *SW1[:2], "udp", 0.0)
    actions = proxy.actions()
    assert not sent_upstream(actions) or all(parse(a.data) for a in sent_upstream(actions))
    assert sum(isinstance(a, Dropped) for a in actions) == 6


def test_call_cap_and_drain_answer_503() -> None:
    proxy = make_proxy(max_calls=0)
    proxy.receive_from_flow(FLOW, crlf(INVITE), 0.0)
    assert [r.status for r in responses_to_flow(proxy.actions())] == [503]
    proxy = make_proxy()
    proxy.draining = True
    proxy.receive_from_flow(FLOW, crlf(INVITE), 0.0)
    (resp,) = responses_to_flow(proxy.actions())
    assert resp.status == 503 and "shutting down" in (resp.headers.get("Warning") or "")


def test_contact_rewrite_mode_round_trip() -> None:
    clock = Clock()
    proxy = make_proxy(mode="contact-rewrite")
    proxy.receive_from_flow(FLOW, crlf(REGISTER), clock.now)
    _, req = only_request(proxy.actions())
    assert req.headers.get("Path") is None
    contact = parse_name_addr(req.headers.get("Contact") or "")
    flow = proxy.flows.get(FLOW)
    assert flow is not None
    assert isinstance(contact.uri, SipURI)
    assert (contact.uri.user, contact.uri.host, contact.uri.port) == (flow.token, "127.0.0.2", 5062)
    # the gateway is the registrar's first hop and offers no outbound: no reg-id
    # (Kamailio answers 439 otherwise), other header params kept
    assert contact.param("reg-id") is None
    assert contact.param("+sip.instance") is not None
    assert "outbound" not in (req.headers.get("Supported") or "")
    ok = upstream_reply(req, 200, "OK", f"Contact: <sip:{flow.token}@127.0.0.2:5062>;expires=600\n")
    proxy.receive_from_upstream(ok, *SW1[:2], "udp", clock.now)
    (resp,) = responses_to_flow(proxy.actions())
    back = parse_name_addr(resp.headers.get("Contact") or "")
    assert str(back.uri) == "sip:u8x3k2@2kq9b8k3mq7a.invalid;transport=ws;ob"
    assert back.param("expires") == "600"
    # an inbound INVITE to the rewritten Contact reaches the browser with its own URI
    inv = crlf(
        f"""INVITE sip:{flow.token}@127.0.0.2:5062 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKcr1
Max-Forwards: 69
From: <sip:4000@example.test>;tag=c1
To: <sip:alice@example.test>
Call-ID: cr-1
CSeq: 1 INVITE
Content-Length: 0

"""
    )
    proxy.receive_from_upstream(inv, *SW1[:2], "udp", clock.now)
    (out,) = sent_flow(proxy.actions())
    msg = parse(out.data)
    assert isinstance(msg, Request) and msg.uri == "sip:u8x3k2@2kq9b8k3mq7a.invalid;transport=ws;ob"


def test_large_udp_request_goes_over_tcp() -> None:
    """RFC 3261 §18.1.1: over 1300 bytes (or the configured MTU) -> TCP."""
    proxy = make_proxy(udp_mtu=1300)
    body = "v=0\n" + "a=x-filler:" + "y" * 1500 + "\n"
    text = INVITE.replace(
        "Content-Length: 5\n\nv=0\n",
        f"Content-Length: {len(body.replace(chr(10), chr(13) + chr(10)))}\n\n{body}",
    )
    proxy.receive_from_flow(FLOW, crlf(text), 0.0)
    out, req = only_request(proxy.actions())
    assert out.transport == "tcp"
    assert parse_via(req.headers.get("Via") or "").transport == "TCP"
