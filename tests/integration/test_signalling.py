"""The gateway daemon between real browser SIP stacks and a real switch.

JsSIP (on Node, tests/clients/jssip) plays the browser over WebSocket,
Kamailio plays the switch (digest auth, registrar with Path, Record-Route),
sipp plays far ends. Everything runs on loopback: Kamailio 127.0.0.1, the
gateway 127.0.0.2, sipp 127.0.0.3.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.helpers.gateway import GATEWAY_IP, GatewayProcess, free_port, serving
from tests.helpers.jssip import JsSipClient
from tests.helpers.sipp import Sipp

pytestmark = pytest.mark.integration

REALM = "example.test"
PASSWORDS = {"alice": "alicepw", "bob": "bobpw", "carol": "carolpw"}


@pytest.fixture
async def gateway(
    kamailio, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[GatewayProcess]:
    params = getattr(request, "param", {}) or {}
    upstream = params.get("upstream", kamailio.uri(params.get("upstream_transport", "udp")))
    extra = params.get("extra", {})
    if extra.get("listen", {}).get("sip_tls") == "AUTO":
        extra = {**extra, "listen": {"sip_tls": f"{GATEWAY_IP}:{free_port()}"}}
    if upstream == "DEAD, LIVE":
        upstream = f"sip:127.0.0.9:{free_port('127.0.0.9')};transport=udp, {kamailio.uri('udp')}"
    gw = GatewayProcess(
        tmp_path,
        upstream=upstream,
        mode=params.get("mode", "path"),
        extra=extra,
    )
    async with serving(gw, request, forbid=("Traceback",)):
        yield gw


async def browser(
    gw: GatewayProcess, user: str, *, url: str | None = None, **opts: object
) -> JsSipClient:
    client = await JsSipClient.start(
        ws=url or gw.ws_url,
        uri=f"sip:{user}@{REALM}",
        password=PASSWORDS[user],
        realm=REALM,
        display_name=user.title(),
        register=True,
        **opts,
    )
    await client.wait_for("registered", timeout=10)
    return client


async def test_register_stores_gateway_path_at_switch(kamailio, gateway: GatewayProcess) -> None:
    alice = await browser(gateway, "alice")
    try:
        locations = kamailio.locations(f"alice@{REALM}")
        assert locations, "no binding at the registrar"
        path = " ".join(str(loc.get("path", "")) for loc in locations)
        # RFC 3327: the switch stored the gateway's Path, with the signed token
        assert f"@{GATEWAY_IP}:{gateway.sip_port}" in path and ";lr" in path
        # the digest challenge went through the gateway untouched
        assert (
            await gateway.metric(
                "gateway_sip_messages_received_total", side="sip", kind="response", label="401"
            )
            >= 1
        )
    finally:
        await alice.close()


async def test_call_between_two_browsers_both_directions(gateway: GatewayProcess) -> None:
    """alice -> gateway -> Kamailio -> (Path) -> gateway -> bob, and back."""
    alice = await browser(gateway, "alice")
    bob = await browser(gateway, "bob")
    try:
        await alice.send("call", target=f"sip:bob@{REALM}", headers=["X-Test: through"])
        incoming = await bob.wait_for("newRTCSession", timeout=10)
        assert incoming["direction"] == "incoming"
        await bob.send("answer")
        await alice.wait_for("confirmed", timeout=10)
        await bob.wait_for("confirmed", timeout=10)
        assert await gateway.metric("gateway_dialogs") == 2  # one per side of the gateway
        await alice.send("hangup")
        ended = await bob.wait_for("ended", timeout=10)
        assert ended["originator"] == "remote"
        await alice.wait_for("ended", timeout=10)
        await asyncio.sleep(0.2)
        assert await gateway.metric("gateway_dialogs") == 0
    finally:
        await alice.close()
        await bob.close()


async def test_websocket_drop_mid_call_sends_bye(gateway: GatewayProcess) -> None:
    alice = await browser(gateway, "alice")
    bob = await browser(gateway, "bob")
    try:
        await alice.send("call", target=f"sip:bob@{REALM}")
        await bob.wait_for("newRTCSession", timeout=10)
        await bob.send("answer")
        await bob.wait_for("confirmed", timeout=10)
        await alice.wait_for("confirmed", timeout=10)
        await alice.send("drop_ws")  # abrupt close, no close frame (1006)
        ended = await bob.wait_for("ended", timeout=10)
        assert ended["originator"] == "remote"
        assert (
            await gateway.metric("gateway_dialog_events_total", event="ended", how="flow_closed")
            >= 1
        )
    finally:
        await alice.close()
        await bob.close()


async def test_message_between_browsers_keeps_custom_headers(gateway: GatewayProcess) -> None:
    alice = await browser(gateway, "alice")
    bob = await browser(gateway, "bob")
    try:
        await alice.send(
            "message", target=f"sip:bob@{REALM}", body="hello bob", headers=["X-Test: 42"]
        )
        msg = await bob.wait_for(
            "newMessage", timeout=10, predicate=lambda e: e.get("direction") == "incoming"
        )
        assert msg["body"] == "hello bob"
        assert "42" in str(msg.get("headers", msg))
    finally:
        await alice.close()
        await bob.close()


async def test_request_to_unregistered_user_fails_cleanly(gateway: GatewayProcess) -> None:
    alice = await browser(gateway, "alice")
    try:
        await alice.send("call", target=f"sip:carol@{REALM}")
        failed = await alice.wait_for("failed", timeout=15)
        assert failed["originator"] == "remote"
    finally:
        await alice.close()


async def test_wss_with_self_signed_certificate(gateway: GatewayProcess) -> None:
    alice = await browser(gateway, "alice", url=gateway.wss_url)
    await alice.close()


async def test_upgrade_without_sip_subprotocol_is_refused(gateway: GatewayProcess) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(gateway.ws_url):
            pass
    assert info.value.response.status_code == 400
    assert await gateway.metric("gateway_ws_rejected_total", reason="no_sip_subprotocol") == 1


@pytest.mark.parametrize(
    "gateway",
    [{"extra": {"security": {"allowed_origins": ["https://phone.example.test"]}}}],
    indirect=True,
)
async def test_origin_allow_list(gateway: GatewayProcess) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(
            gateway.ws_url, subprotocols=["sip"], origin="https://evil.example"
        ):  # type: ignore[list-item,arg-type]
            pass
    assert info.value.response.status_code == 403
    async with websockets.connect(
        gateway.ws_url,
        subprotocols=["sip"],
        origin="https://phone.example.test",  # type: ignore[list-item,arg-type]
    ) as ws:
        await ws.send("\r\n\r\n")  # RFC 5626 keepalive ping
        assert await asyncio.wait_for(ws.recv(), 5) == "\r\n"


MALFORMED_INVITE = (
    "INVITE sip:bob@example.test SIP/2.0\r\n"
    "Via: SIP/2.0/WS abc.invalid;branch=z9hG4bKmal1\r\n"
    "From: <sip:alice@example.test>;tag=1\r\n"
    "To: <sip:bob@example.test>\r\n"
    "Call-ID: malformed-1\r\n"
    "CSeq: one INVITE\r\n"
    "Content-Length: 0\r\n\r\n"
)


async def test_malformed_and_oversize_input_on_both_sides(
    kamailio, gateway: GatewayProcess
) -> None:
    async with websockets.connect(gateway.ws_url, subprotocols=["sip"]) as ws:  # type: ignore[list-item]
        await ws.send(MALFORMED_INVITE)
        reply = await asyncio.wait_for(ws.recv(), 5)
        assert str(reply).startswith("SIP/2.0 400"), reply
        await ws.send("\x00\x01garbage that is not SIP\r\n\r\n")
        huge = MALFORMED_INVITE.replace("CSeq: one", "CSeq: 1").replace(
            "Content-Length: 0\r\n\r\n", "Content-Length: 70000\r\n\r\n" + "x" * 70000
        )
        await ws.send(huge)
        reply = await asyncio.wait_for(ws.recv(), 5)
        assert str(reply).startswith("SIP/2.0 413"), str(reply)[:80]
    # Switch side: garbage and a malformed request from the switch's own address get 400 or a
    # drop; anything from another address is dropped unread.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(3)
        s.sendto(b"\xff" * 300, (GATEWAY_IP, gateway.sip_port))
        s.sendto(
            MALFORMED_INVITE.replace(
                "SIP/2.0/WS abc.invalid", f"SIP/2.0/UDP 127.0.0.1:{s.getsockname()[1]}"
            ).encode(),
            (GATEWAY_IP, gateway.sip_port),
        )
        data, _ = s.recvfrom(65535)
        assert data.startswith(b"SIP/2.0 400"), data[:80]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.3", 0))
        s.sendto(b"OPTIONS sip:x SIP/2.0\r\n\r\n", (GATEWAY_IP, gateway.sip_port))
    await asyncio.sleep(0.3)
    assert await gateway.metric("gateway_sip_dropped_total", reason="source_not_allowed") >= 1
    assert await gateway.metric("gateway_sip_dropped_total", side="ws") >= 2
    # still serving
    alice = await browser(gateway, "alice")
    await alice.close()
    assert gateway.alive()


@pytest.mark.parametrize(
    "gateway",
    [
        {
            # The first switch is dead (nothing listens there); T1 is shortened so the
            # transaction times out in 64*T1 = 3.2 s instead of 32 s.
            "upstream": "DEAD, LIVE",
            "extra": {"sip": {"t1": 0.05, "t2": 0.4}},
        }
    ],
    indirect=True,
)
async def test_failover_to_second_switch(gateway: GatewayProcess) -> None:
    alice = await JsSipClient.start(
        ws=gateway.ws_url, uri=f"sip:alice@{REALM}", password="alicepw", realm=REALM, register=True
    )
    try:
        await alice.wait_for("registered", timeout=20)
        assert await gateway.metric("gateway_upstream_failovers_total") >= 1
    finally:
        await alice.close()


@pytest.mark.parametrize("gateway", [{"mode": "contact-rewrite"}], indirect=True)
async def test_contact_rewrite_mode_call(kamailio, gateway: GatewayProcess) -> None:
    alice = await browser(gateway, "alice")
    bob = await browser(gateway, "bob")
    try:
        locations = kamailio.locations(f"bob@{REALM}")
        assert any(
            f"@{GATEWAY_IP}:{gateway.sip_port}" in str(loc.get("contact", "")) for loc in locations
        )
        await alice.send("call", target=f"sip:bob@{REALM}")
        await bob.wait_for("newRTCSession", timeout=10)
        await bob.send("answer")
        await alice.wait_for("confirmed", timeout=10)
        await bob.send("hangup")
        await alice.wait_for("ended", timeout=10)
    finally:
        await alice.close()
        await bob.close()


# ---------------------------------------------------------------- sipp far ends


def far_end(tmp_path: Path, scenario: str, **kw: object) -> Sipp:
    return Sipp(scenario, workdir=tmp_path / "sipp", **kw)  # type: ignore[arg-type]


def number(sipp: Sipp) -> str:
    """Kamailio routes 9NNNNN to the sipp far end on 127.0.0.3:NNNNN."""
    return f"sip:9{sipp.port}@{REALM}"


async def test_outbound_call_answered_by_far_end_bye_from_browser(
    tmp_path: Path, gateway: GatewayProcess
) -> None:
    uas = far_end(tmp_path, "uas_answer.xml")
    await uas.start()
    alice = await browser(gateway, "alice")
    try:
        await alice.send("call", target=number(uas), headers=["X-Test: 1"])
        await alice.wait_for("confirmed", timeout=10)
        await asyncio.sleep(0.5)
        await alice.send("hangup")
        await alice.wait_for("ended", timeout=10)
        result = await uas.wait(15)
        assert result.ok, result.describe()
        invite = result.received("INVITE")[0]
        assert invite.header("X-Test") == ["1"]  # custom headers pass through
        assert len(invite.header("Record-Route")) >= 2
        assert result.received("BYE"), result.describe()
    finally:
        await alice.close()
        await uas.stop()


async def test_outbound_call_bye_from_far_end(tmp_path: Path, gateway: GatewayProcess) -> None:
    uas = far_end(tmp_path, "uas_answer_bye.xml", call_length_ms=1000)
    await uas.start()
    alice = await browser(gateway, "alice")
    try:
        await alice.send("call", target=number(uas))
        await alice.wait_for("confirmed", timeout=10)
        ended = await alice.wait_for("ended", timeout=15)
        assert ended["originator"] == "remote"
        result = await uas.wait(15)
        assert result.ok, result.describe()
    finally:
        await alice.close()
        await uas.stop()


async def test_busy_far_end(tmp_path: Path, gateway: GatewayProcess) -> None:
    uas = far_end(tmp_path, "uas_busy.xml")
    await uas.start()
    alice = await browser(gateway, "alice")
    try:
        await alice.send("call", target=number(uas))
        failed = await alice.wait_for("failed", timeout=10)
        assert failed["originator"] == "remote"
        assert "busy" in str(failed.get("cause", "")).lower(), failed
        result = await uas.wait(10)
        assert result.ok, result.describe()  # sipp got the ACK for its 486
    finally:
        await alice.close()
        await uas.stop()


async def test_cancel_before_answer(tmp_path: Path, gateway: GatewayProcess) -> None:
    uas = far_end(tmp_path, "uas_noanswer.xml")
    await uas.start()
    alice = await browser(gateway, "alice")
    try:
        await alice.send("call", target=number(uas))
        await alice.wait_for("progress", timeout=10)
        await alice.send("hangup")  # JsSIP sends CANCEL while ringing
        failed = await alice.wait_for("failed", timeout=10)
        assert failed["originator"] == "local"
        result = await uas.wait(15)
        assert result.ok, result.describe()  # CANCEL -> 200 + 487 -> ACK all seen
        assert result.received("CANCEL")
    finally:
        await alice.close()
        await uas.stop()


async def test_websocket_drop_mid_call_bye_reaches_far_end(
    tmp_path: Path, gateway: GatewayProcess
) -> None:
    uas = far_end(tmp_path, "uas_answer.xml")
    await uas.start()
    alice = await browser(gateway, "alice")
    try:
        await alice.send("call", target=number(uas))
        await alice.wait_for("confirmed", timeout=10)
        await alice.send("drop_ws")
        result = await uas.wait(15)
        assert result.ok, result.describe()
        bye = result.received("BYE")[0]
        assert "WebSocket closed" in " ".join(bye.header("Reason"))
    finally:
        await alice.close()
        await uas.stop()


async def test_inbound_call_from_far_end_to_browser(
    kamailio, tmp_path: Path, gateway: GatewayProcess
) -> None:
    alice = await browser(gateway, "alice")
    uac = far_end(
        tmp_path, "uac_invite.xml", remote=f"127.0.0.1:{kamailio.udp_port}", service="alice"
    )
    try:
        await uac.start()
        incoming = await alice.wait_for("newRTCSession", timeout=10)
        assert incoming["direction"] == "incoming"
        await alice.send("answer")
        await alice.wait_for("confirmed", timeout=10)
        ended = await alice.wait_for("ended", timeout=15)  # sipp hangs up after its pause
        assert ended["originator"] == "remote"
        result = await uac.wait(15)
        assert result.ok, result.describe()
    finally:
        await alice.close()
        await uac.stop()


async def test_inbound_call_not_answered_is_cancelled(
    kamailio, tmp_path: Path, gateway: GatewayProcess
) -> None:
    alice = await browser(gateway, "alice")
    uac = far_end(
        tmp_path,
        "uac_invite_cancel.xml",
        remote=f"127.0.0.1:{kamailio.udp_port}",
        service="alice",
        call_length_ms=1500,
    )
    try:
        await uac.start()
        await alice.wait_for("newRTCSession", timeout=10)
        failed = await alice.wait_for("failed", timeout=15)  # caller gave up: CANCEL
        assert failed["originator"] == "remote"
        result = await uac.wait(15)
        assert result.ok, result.describe()
    finally:
        await alice.close()
        await uac.stop()


async def test_message_both_ways_with_far_end(
    kamailio, tmp_path: Path, gateway: GatewayProcess
) -> None:
    alice = await browser(gateway, "alice")
    uas = far_end(tmp_path, "uas_message.xml")
    await uas.start()
    try:
        await alice.send(
            "message", target=number(uas), body="to the far end", headers=["X-Test: yes"]
        )
        await alice.wait_for("messageSucceeded", timeout=10)
        result = await uas.wait(10)
        assert result.ok, result.describe()
        uac = far_end(
            tmp_path, "uac_message.xml", remote=f"127.0.0.1:{kamailio.udp_port}", service="alice"
        )
        result = await uac.run()
        assert result.ok, result.describe()
        msg = await alice.wait_for(
            "newMessage", timeout=10, predicate=lambda e: e.get("direction") == "incoming"
        )
        assert msg["body"]
    finally:
        await alice.close()
        await uas.stop()


@pytest.mark.parametrize(
    "gateway",
    [
        {"upstream_transport": "tcp"},
        {
            "upstream_transport": "tls",
            "extra": {"tls": {"verify_upstream": False}, "listen": {"sip_tls": "AUTO"}},
        },
    ],
    indirect=True,
    ids=["tcp", "tls"],
)
async def test_stream_transports_toward_the_switch(kamailio, gateway: GatewayProcess) -> None:
    """Framing over TCP/TLS both ways: REGISTER out, the INVITE to bob comes back in."""
    alice = await browser(gateway, "alice")
    bob = await browser(gateway, "bob")
    try:
        path = " ".join(str(loc.get("path", "")) for loc in kamailio.locations(f"bob@{REALM}"))
        transport = gateway.upstream.rsplit("transport=", 1)[1]
        if transport == "tls":
            assert "transport=tls" in path, path
        await alice.send("call", target=f"sip:bob@{REALM}")
        await bob.wait_for("newRTCSession", timeout=10)
        await bob.send("answer")
        await alice.wait_for("confirmed", timeout=10)
        await bob.send("hangup")
        await alice.wait_for("ended", timeout=10)
        assert await gateway.metric("gateway_sip_messages_received_total", side="sip") >= 6
    finally:
        await alice.close()
        await bob.close()


async def test_websocket_upgrade_on_any_path(gateway: GatewayProcess) -> None:
    async with websockets.connect(gateway.ws_url + "/some/path?x=1", subprotocols=["sip"]) as ws:  # type: ignore[list-item]
        await ws.send("\r\n\r\n")
        assert await asyncio.wait_for(ws.recv(), 5) == "\r\n"


async def test_sigterm_drains_calls_then_exits(tmp_path: Path, kamailio) -> None:
    """SIGTERM: new connections and calls refused, a running call may finish, exit 0."""
    gw = GatewayProcess(
        tmp_path / "drain", upstream=kamailio.uri("udp"), extra={"general": {"drain_timeout": 20.0}}
    )
    (tmp_path / "drain").mkdir()
    await gw.start()
    alice = await browser(gw, "alice")
    bob = await browser(gw, "bob")
    try:
        await alice.send("call", target=f"sip:bob@{REALM}")
        await bob.wait_for("newRTCSession", timeout=10)
        await bob.send("answer")
        await alice.wait_for("confirmed", timeout=10)
        assert gw.proc is not None
        gw.proc.terminate()
        for _ in range(50):
            if await gw.http_status("/readyz") == 503:
                break
            await asyncio.sleep(0.1)
        assert await gw.http_status("/readyz") == 503
        # a new call while draining is refused with 503
        await bob.send("call", target=f"sip:alice@{REALM}")
        failed = await bob.wait_for("failed", timeout=10)
        assert failed["status"] == 503, failed
        # new WebSocket connections are refused
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(gw.ws_url, subprotocols=["sip"]):  # type: ignore[list-item]
                pass
        assert info.value.response.status_code == 503
        # the running call still works and ends normally; then the gateway exits 0
        assert gw.alive()
        await alice.send("hangup")
        await bob.wait_for("ended", timeout=10)
        code = await asyncio.wait_for(gw.proc.wait(), 15)
        assert code == 0, gw.log_text()[-3000:]
        assert "drained (calls left: 0)" in gw.log_text()
    finally:
        await alice.close()
        await bob.close()
        await gw.stop()


async def test_sighup_reloads_upstream_list(tmp_path: Path, kamailio) -> None:
    """SIGHUP re-reads the config: a new upstream list applies to new requests."""
    workdir = tmp_path / "hup"
    workdir.mkdir()
    dead = f"sip:127.0.0.9:{free_port('127.0.0.9')};transport=udp"
    gw = GatewayProcess(workdir, upstream=dead, extra={"sip": {"t1": 0.05, "t2": 0.4}})
    await gw.start()
    try:
        alice = await JsSipClient.start(
            ws=gw.ws_url, uri=f"sip:alice@{REALM}", password="alicepw", realm=REALM, register=True
        )
        try:
            await alice.wait_for("registrationFailed", timeout=15)  # only a dead switch: 408
        finally:
            await alice.close()
        gw.upstream = kamailio.uri("udp")
        gw.write_config()
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        for _ in range(50):
            if "upstream pool reloaded" in gw.log_text():
                break
            await asyncio.sleep(0.1)
        alice = await browser(gw, "alice")
        await alice.close()
    finally:
        assert await gw.stop() == 0
