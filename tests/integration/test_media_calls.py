"""Calls with media anchored by the gateway, through the real chain.

aiortc (tests/helpers/webrtc_ua.py) plays the browser: SIP over WebSocket,
ICE + DTLS-SRTP media. Kamailio is the switch. The far end
(tests/helpers/rtp_far_end.py) answers with plain RTP/AVP on 127.0.0.3. The
gateway (127.0.0.2) rewrites SDP both ways and relays SRTP <-> RTP, with its
media layer in-process or in two worker processes. Audio is judged by content:
each side sends its own tone and must hear the other's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.sdp.model import parse as parse_sdp
from gateway.transport.ng_client import NgClient
from tests.helpers.gateway import GATEWAY_IP, GatewayProcess, serving
from tests.helpers.kamailio import SIPP_IP, Kamailio
from tests.helpers.kamailio import free_port as free_port_on
from tests.helpers.rtp_far_end import RtpFarEnd
from tests.helpers.webrtc_ua import WebRtcUa, use_loopback_ice

pytestmark = pytest.mark.integration

REALM = "example.test"
UA_TONE = 1000.0
FAR_TONE = 600.0
TOLERANCE = 25.0


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    use_loopback_ice(monkeypatch)


@pytest.fixture(params=[0, 2], ids=["in-process", "workers"])
async def gateway(
    kamailio: Kamailio, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[GatewayProcess]:
    gw = GatewayProcess.with_media(tmp_path, kamailio.uri("udp"), workers=request.param)
    async with serving(gw, request):
        yield gw


async def media_sessions(gw: GatewayProcess) -> int:
    assert gw.control is not None
    client = await NgClient.connect(*gw.control)
    try:
        reply = await client.request({"command": "statistics"})
    finally:
        await client.close()
    media = reply.get("media")
    assert isinstance(media, dict), reply
    return int(media["sessions"])  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def registered(
    gw: GatewayProcess, user: str, password: str, **opts: object
) -> AsyncIterator[WebRtcUa]:
    ua = WebRtcUa(gw.ws_url, user, password, tone_hz=UA_TONE, **opts)  # type: ignore[arg-type]
    try:
        response = await ua.register()
        assert response.status == 200
        yield ua
    finally:
        await ua.close()


async def hear(get_freq, expected: float, timeout: float = 8.0) -> float:  # type: ignore[no-untyped-def]
    """Wait until the dominant frequency heard is the expected tone."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    freq = 0.0
    while loop.time() < deadline:
        freq = get_freq() or 0.0
        if abs(freq - expected) <= TOLERANCE:
            return freq
        await asyncio.sleep(0.25)
    return freq


async def test_outbound_call_audio_both_ways_through_the_anchor(gateway: GatewayProcess) -> None:
    far = RtpFarEnd(
        free_port_on(SIPP_IP), tone_hz=FAR_TONE, codecs=("PCMU", "PCMA", "telephone-event")
    )
    await far.start()
    try:
        async with registered(gateway, "alice", "alicepw") as ua:
            call = await ua.call(f"sip:9{far.port}@{REALM}", codecs=["PCMU"])
            assert call.status == 200, call.sdp_error
            assert call.sdp_error is None, call.sdp_error
            # the far end saw a lean plain SDP naming the gateway, not the browser
            offer = parse_sdp(far.received("INVITE")[0].body.decode())
            audio = offer.media[0]
            assert audio.proto == "RTP/AVP"
            assert offer.connection_for(audio).address == GATEWAY_IP  # type: ignore[union-attr]
            assert b"a=fingerprint" not in far.received("INVITE")[0].body
            # the browser got a WebRTC answer (ICE-lite, DTLS) from the gateway
            answer = parse_sdp(call.remote_sdp or "")
            assert answer.media[0].proto == "UDP/TLS/RTP/SAVPF"
            assert await hear(far.dominant_frequency, UA_TONE) == pytest.approx(
                UA_TONE, abs=TOLERANCE
            )
            assert await hear(ua.dominant_frequency, FAR_TONE) == pytest.approx(
                FAR_TONE, abs=TOLERANCE
            )
            assert far.payload_types_seen == {0}  # PCMU on the switch leg
            assert ua.negotiated_codec().lower() == "pcmu"
            assert await media_sessions(gateway) == 1
            await ua.hangup()
            assert await far.wait_ended() == "remote BYE"
        for _ in range(20):
            if await media_sessions(gateway) == 0:
                break
            await asyncio.sleep(0.1)
        assert await media_sessions(gateway) == 0
    finally:
        await far.close()


async def test_inbound_call_with_the_switch_offer(
    kamailio: Kamailio, gateway: GatewayProcess
) -> None:
    far = RtpFarEnd(free_port_on(SIPP_IP), tone_hz=FAR_TONE)
    await far.start()
    try:
        async with registered(gateway, "bob", "bobpw") as ua:
            invite = asyncio.ensure_future(far.invite("bob", (kamailio.ip, kamailio.udp_port)))
            incoming = await ua.wait_incoming()
            assert incoming.invite is not None
            assert (
                b"a=fingerprint:" in incoming.invite.body
            )  # the switch's offer, rewritten for WebRTC
            answer = await ua.answer(codecs=["PCMU"])
            assert answer.status == 200
            final = await asyncio.wait_for(invite, 10)
            assert final.status == 200
            assert (
                b"RTP/AVP" in final.body and b"fingerprint" not in final.body
            )  # plain toward the switch
            assert await hear(far.dominant_frequency, UA_TONE) == pytest.approx(
                UA_TONE, abs=TOLERANCE
            )
            assert await hear(ua.dominant_frequency, FAR_TONE) == pytest.approx(
                FAR_TONE, abs=TOLERANCE
            )
            assert (await far.send_bye()).status == 200
            assert await ua.wait_ended() == "remote BYE"
    finally:
        await far.close()


async def test_early_media_on_183_then_hold_and_unhold(gateway: GatewayProcess) -> None:
    far = RtpFarEnd(free_port_on(SIPP_IP), tone_hz=FAR_TONE, early_media=True, ring_seconds=2.0)
    await far.start()
    try:
        # aiortc cannot take a pranswer from an ICE-lite peer and then the answer (it
        # never starts DTLS): this browser applies the 183's SDP as the answer.
        async with registered(gateway, "alice", "alicepw", early_as_pranswer=False) as ua:
            call = await ua.call(f"sip:9{far.port}@{REALM}", codecs=["PCMU"], wait_for="progress")
            # ringback/announcement from the far end is heard before the answer
            early = await hear(ua.dominant_frequency, FAR_TONE, timeout=3.0)
            assert early == pytest.approx(FAR_TONE, abs=TOLERANCE), (
                call.sdp_error,
                call.early_media,
                [r.status for r in call.responses],
            )
            assert call.status is None or call.status < 200
            await asyncio.wait_for(call.answered, 10)
            assert call.status == 200
            assert await hear(far.dominant_frequency, UA_TONE) == pytest.approx(
                UA_TONE, abs=TOLERANCE
            )
            # hold: the browser goes sendonly; the far end is told recvonly and stops sending
            assert (await ua.hold()).status == 200
            assert far.call is not None and far.call.local_direction == "recvonly"
            await asyncio.sleep(0.5)
            before = far.packets_received
            await asyncio.sleep(1.0)
            assert far.packets_received > before  # the browser's audio still reaches the far end
            assert (await ua.unhold()).status == 200
            assert far.call.local_direction == "sendrecv"
            assert await hear(ua.dominant_frequency, FAR_TONE) == pytest.approx(
                FAR_TONE, abs=TOLERANCE
            )
            await ua.hangup()
            assert await far.wait_ended() == "remote BYE"
    finally:
        await far.close()


async def test_late_offer_call(gateway: GatewayProcess) -> None:
    far = RtpFarEnd(free_port_on(SIPP_IP), tone_hz=FAR_TONE)
    await far.start()
    try:
        async with registered(gateway, "alice", "alicepw") as ua:
            call = await ua.call(f"sip:9{far.port}@{REALM}", codecs=["PCMU"], late_offer=True)
            assert call.status == 200 and call.sdp_error is None, call.sdp_error
            assert far.received("INVITE")[0].body == b""  # no offer in the INVITE
            assert await hear(far.dominant_frequency, UA_TONE) == pytest.approx(
                UA_TONE, abs=TOLERANCE
            )
            assert await hear(ua.dominant_frequency, FAR_TONE) == pytest.approx(
                FAR_TONE, abs=TOLERANCE
            )
            await ua.hangup()
            assert await far.wait_ended() == "remote BYE"
    finally:
        await far.close()


async def test_websocket_drop_mid_call_ends_call_and_frees_media(
    kamailio: Kamailio, gateway: GatewayProcess
) -> None:
    far = RtpFarEnd(free_port_on(SIPP_IP), tone_hz=FAR_TONE)
    await far.start()
    try:
        ua = WebRtcUa(gateway.ws_url, "alice", "alicepw", tone_hz=UA_TONE)
        try:
            assert (await ua.register()).status == 200
            call = await ua.call(f"sip:9{far.port}@{REALM}", codecs=["PCMU"])
            assert call.status == 200
            assert await hear(far.dominant_frequency, UA_TONE) == pytest.approx(
                UA_TONE, abs=TOLERANCE
            )
            assert await media_sessions(gateway) == 1
            await ua.drop()
            assert await far.wait_ended() == "remote BYE"
        finally:
            await ua.close(unregister=False)
            kamailio.remove_location(f"alice@{REALM}")  # the dropped browser's binding
        for _ in range(30):
            if await media_sessions(gateway) == 0:
                break
            await asyncio.sleep(0.1)
        assert await media_sessions(gateway) == 0
    finally:
        await far.close()


async def test_media_timeout_ends_the_call_both_ways(
    kamailio: Kamailio, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The far end stops sending RTP: after media.timeout the gateway sends BYE both ways."""
    gw = GatewayProcess.with_media(tmp_path, kamailio.uri("udp"), timeout=2.0)
    far = RtpFarEnd(free_port_on(SIPP_IP), tone_hz=FAR_TONE)
    async with serving(gw, request):
        await far.start()
        try:
            async with registered(gw, "alice", "alicepw") as ua:
                call = await ua.call(f"sip:9{far.port}@{REALM}", codecs=["PCMU"])
                assert call.status == 200
                assert await hear(ua.dominant_frequency, FAR_TONE) == pytest.approx(
                    FAR_TONE, abs=TOLERANCE
                )
                await asyncio.sleep(3.0)  # media flowing: no timeout while it does
                assert call.state == "confirmed"
                await far.stop_media()
                assert await asyncio.wait_for(far.wait_ended(), 10) == "remote BYE"
                assert await asyncio.wait_for(ua.wait_ended(), 10) == "remote BYE"
                bye = ua.received("BYE")[-1]
                assert "media timeout" in (bye.headers.get("Reason") or "")
            assert (
                await gw.metric("gateway_dialog_events_total", event="ended", how="media_timeout")
                >= 1
            )
            assert await media_sessions(gw) == 0
        finally:
            await far.close()


def _process_tree_usage(pid: int) -> tuple[int, int]:
    """(open fds, RSS kB) of a process and its children (the media workers)."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    fds = rss = 0
    for p in pids:
        fds += len(list(Path(f"/proc/{p}/fd").iterdir()))
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
    return fds, rss


SEQUENTIAL_CALLS = 200


async def test_sequential_calls_leave_nothing_behind(gateway: GatewayProcess) -> None:
    """200 calls one after another: ports, sessions, sockets and memory come back."""
    assert gateway.proc is not None
    far = RtpFarEnd(free_port_on(SIPP_IP), tone_hz=FAR_TONE)
    await far.start()
    try:
        async with registered(gateway, "alice", "alicepw") as ua:

            async def one_call() -> None:
                call = await ua.call(f"sip:9{far.port}@{REALM}", codecs=["PCMU"])
                assert call.status == 200 and call.sdp_error is None
                await ua.hangup()
                await far.wait_ended()

            for _ in range(10):  # warm-up: imports, caches, first allocations
                await one_call()
            await asyncio.sleep(0.5)
            fds0, rss0 = _process_tree_usage(gateway.proc.pid)
            for _ in range(SEQUENTIAL_CALLS):
                await one_call()
            for _ in range(30):
                if await media_sessions(gateway) == 0:
                    break
                await asyncio.sleep(0.1)
            fds1, rss1 = _process_tree_usage(gateway.proc.pid)
        assert await media_sessions(gateway) == 0
        assert await gateway.metric("gateway_dialogs") == 0
        assert fds1 <= fds0 + 2, f"file descriptors {fds0} -> {fds1}"
        assert rss1 - rss0 < 15_000, f"RSS grew {rss0} -> {rss1} kB over {SEQUENTIAL_CALLS} calls"
        print(f"{SEQUENTIAL_CALLS} calls: fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} kB")
    finally:
        await far.close()


BAD_SDP_INVITE = (
    "INVITE sip:95090@example.test SIP/2.0\r\n"
    "Via: SIP/2.0/WS badsdp.invalid;branch=z9hG4bKbadsdp{n}\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:alice@example.test>;tag=bad1\r\n"
    "To: <sip:95090@example.test>\r\n"
    "Call-ID: bad-sdp-{n}\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:x@badsdp.invalid;transport=ws>\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n\r\n{body}"
)


async def test_bad_sdp_gets_488_and_allocates_nothing(gateway: GatewayProcess) -> None:
    import websockets

    for n, body in enumerate(
        (
            "v=0\r\nthis is not sdp\r\n",
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n",
        )
    ):
        async with websockets.connect(gateway.ws_url, subprotocols=["sip"]) as ws:  # type: ignore[list-item]
            await ws.send(BAD_SDP_INVITE.format(n=n, length=len(body), body=body))
            replies = []
            while not replies or replies[-1].startswith("SIP/2.0 1"):
                replies.append(str(await asyncio.wait_for(ws.recv(), 10)))
            assert replies[-1].startswith("SIP/2.0 488"), replies[-1][:200]
            assert "Warning: 399" in replies[-1]
            warning = replies[-1].split("Warning: ", 1)[1].split("\r\n", 1)[0]
            assert "media" in warning and (
                "parse" in warning.lower() or "ice" in warning.lower()
            ), warning
    assert await media_sessions(gateway) == 0
