"""The media layer driven over real UDP through its NG (rtpengine protocol) socket.

Every test runs twice: media in-process, and in two worker processes behind the front NG
server. aiortc plays the browser (a real ICE/DTLS offer), a UDP socket on 127.0.0.3 plays
the switch's far end; the NG client (gateway.transport.ng_client) plays the SIP proxy, the
way Kamailio's rtpengine module would. Helpers (tone, FFT, far end, aiortc track) come from
tests/integration/test_media_engine.py.

Addresses: aiortc on 127.0.0.1, gateway media on 127.0.0.2, far end on 127.0.0.3, NG on
127.0.0.1 (an ephemeral port, so runs never collide with a real rtpengine on 22222).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from gateway.config import config_from_dict
from gateway.sdp.model import parse
from gateway.transport.ng import MediaControlHandle, start_media, start_media_control
from gateway.transport.ng_client import NgClient
from tests.integration.test_media_engine import (  # noqa: F401 (loopback_only: autouse fixture)
    GATEWAY_IP,
    RATE,
    SWITCH_IP,
    TONE_HZ,
    Browser,
    FarEnd,
    SineTrack,
    dominant_hz,
    loopback_only,
    wait_for,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PORT_RANGE = (43000, 43199)
CHROME_OFFER = (ROOT / "tests" / "vectors" / "sdp" / "chrome_offer.sdp").read_text()
MODES = {"in-process": 0, "2-workers": 2}


@pytest.fixture(params=list(MODES), ids=list(MODES))
async def media(request: pytest.FixtureRequest) -> AsyncIterator[MediaControlHandle]:
    handle = await start_media_control(
        control=("127.0.0.1", 0),
        public_ip=GATEWAY_IP,
        bind_ip=GATEWAY_IP,
        port_range=PORT_RANGE,
        timeout=30.0,
        workers=MODES[request.param],
    )
    try:
        assert handle.mode == ("workers" if MODES[request.param] else "in-process")
        yield handle
    finally:
        await handle.close()
        await handle.close()  # idempotent


@pytest.fixture
async def ng(media: MediaControlHandle) -> AsyncIterator[NgClient]:
    client = await NgClient.connect(*media.address)
    try:
        yield client
    finally:
        await client.close()


def plain_answer(port: int, direction: str = "sendrecv") -> str:
    """What the switch answers: PCMU at the far end on 127.0.0.3."""
    return (
        "v=0\r\n"
        f"o=- 7 1 IN IP4 {SWITCH_IP}\r\n"
        "s=-\r\n"
        f"c=IN IP4 {SWITCH_IP}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        f"a={direction}\r\n"
    )


async def statistics(ng: NgClient) -> tuple[int, int]:
    """(media sessions, ports in use) over all workers."""
    reply = await ng.request({"command": "statistics"})
    assert reply["result"] == "ok", reply
    media = reply["media"]
    assert isinstance(media, dict)
    return int(media["sessions"]), int(media["ports in use"])


async def offer(ng: NgClient, call_id: str, sdp: str, **extra: Any) -> dict[str, object]:
    body: dict[str, object] = {
        "command": "offer",
        "call-id": call_id,
        "from-tag": "browser-tag",
        "sdp": sdp,
        "transport-protocol": "RTP/AVP",
        "ICE": "remove",
        "rtcp-mux": ["demux"],
        "replace": ["origin", "session-connection"],
    }
    body.update(extra)
    return await ng.request(body)


async def answer(ng: NgClient, call_id: str, sdp: str, **extra: Any) -> dict[str, object]:
    body: dict[str, object] = {
        "command": "answer",
        "call-id": call_id,
        "from-tag": "browser-tag",
        "to-tag": "switch-tag",
        "sdp": sdp,
        "transport-protocol": "UDP/TLS/RTP/SAVPF",
        "ICE": "force",
    }
    body.update(extra)
    return await ng.request(body)


@contextlib.asynccontextmanager
async def browser_pc() -> AsyncIterator[tuple[RTCPeerConnection, Browser]]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    browser = Browser(pc)
    try:
        transceiver = pc.addTransceiver(SineTrack(), direction="sendrecv")
        codecs = RTCRtpSender.getCapabilities("audio").codecs
        transceiver.setCodecPreferences([c for c in codecs if c.mimeType == "audio/PCMU"])

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            browser.task = asyncio.ensure_future(browser._drain(track))

        yield pc, browser
    finally:
        await pc.close()
        if browser.task is not None:
            browser.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, MediaStreamError):
                await browser.task


async def tone_both_ways(far: FarEnd, browser: Browser) -> None:
    far_before, browser_before = far.packets, browser.frames
    await wait_for(
        lambda: far.packets >= far_before + 30 and browser.frames >= browser_before + 30,
        8,
        "30 new packets each way",
    )
    assert abs(dominant_hz(far.recent_audio(), RATE) - TONE_HZ) < 25
    assert abs(dominant_hz(browser.recent_audio(), RATE) - TONE_HZ) < 25


def leg(reply: dict[str, object], name: str) -> dict[str, Any]:
    legs = reply["legs"]
    assert isinstance(legs, dict)
    value = legs[name]
    assert isinstance(value, dict)
    return value


# --------------------------------------------------------------------------- tests


async def test_ping(ng: NgClient) -> None:
    assert await ng.request({"command": "ping"}) == {"result": "pong"}


async def test_browser_call_through_ng_tone_both_ways_hold_and_delete(
    media: MediaControlHandle, ng: NgClient
) -> None:
    loop = asyncio.get_running_loop()
    far_transport, far = await loop.create_datagram_endpoint(FarEnd, local_addr=(SWITCH_IP, 0))
    try:
        async with browser_pc() as (pc, browser):
            await pc.setLocalDescription(await pc.createOffer())
            browser_offer = pc.localDescription.sdp
            # offer: the browser's ICE/DTLS offer, transport-protocol RTP/AVP -> plain SDP.
            reply = await offer(ng, "call-a", browser_offer)
            assert reply["result"] == "ok", reply
            plain = parse(str(reply["sdp"]))
            (m,) = plain.media
            assert m.proto == "RTP/AVP" and m.formats[0] == "0"
            assert plain.connection is not None and plain.connection.host == GATEWAY_IP
            body = str(plain)
            for webrtc_only in ("ice-", "fingerprint", "candidate", "setup", "rtcp-mux"):
                assert webrtc_only not in body
            gateway_rtp = (GATEWAY_IP, m.port)

            # answer: the switch's plain SDP -> a WebRTC answer aiortc accepts.
            reply = await answer(ng, "call-a", plain_answer(far.port))
            assert reply["result"] == "ok", reply
            webrtc_answer = str(reply["sdp"])
            assert "UDP/TLS/RTP/SAVPF" in webrtc_answer and "a=ice-lite" in webrtc_answer
            assert "a=setup:passive" in webrtc_answer
            await pc.setRemoteDescription(RTCSessionDescription(webrtc_answer, "answer"))
            await wait_for(lambda: pc.connectionState == "connected", 10, "aiortc connected")
            far.start_tone(gateway_rtp)
            await tone_both_ways(far, browser)
            assert far.sources == {gateway_rtp}

            query = await ng.request({"command": "query", "call-id": "call-a"})
            assert query["result"] == "ok", query
            assert set(query["tags"]) == {"browser-tag", "switch-tag"}  # type: ignore[arg-type]
            w, r = leg(query, "webrtc"), leg(query, "rtp")
            assert w["dtls_state"] == "connected" and w["dtls_handshakes"] == 1
            assert w["rx_packets"] >= 30 and r["rx_packets"] >= 30
            assert r["latched"] == f"{SWITCH_IP}:{far.port}"

            # Re-INVITE from the browser puts the call on hold (sendonly): same ICE/DTLS,
            # so the session is updated without a new handshake; nothing goes to the browser.
            hold = browser_offer.replace("a=sendrecv", "a=sendonly")
            reply = await offer(ng, "call-a", hold)
            assert reply["result"] == "ok", reply
            assert "a=sendonly" in str(reply["sdp"])
            assert f"m=audio {gateway_rtp[1]} " in str(reply["sdp"])  # same RTP port
            reply = await answer(ng, "call-a", plain_answer(far.port, "recvonly"))
            assert reply["result"] == "ok", reply
            assert "a=recvonly" in str(reply["sdp"])
            await asyncio.sleep(0.3)
            tx = leg(await ng.request({"command": "query", "call-id": "call-a"}), "webrtc")
            far_packets = far.packets
            await asyncio.sleep(1.0)
            query = await ng.request({"command": "query", "call-id": "call-a"})
            w = leg(query, "webrtc")
            assert w["tx_packets"] == tx["tx_packets"]  # nothing to the holding browser
            assert far.packets - far_packets >= 30  # the browser's audio still flows
            assert w["dtls_handshakes"] == 1 and w["direction"] == "sendonly"

            # delete frees everything.
            reply = await ng.request(
                {"command": "delete", "call-id": "call-a", "from-tag": "browser-tag"}
            )
            assert reply["result"] == "ok" and "warning" not in reply, reply
            totals = reply["totals"]
            assert isinstance(totals, dict) and totals["RTP"]["packets"] > 60
            assert await statistics(ng) == (0, 0)
            reply = await ng.request({"command": "query", "call-id": "call-a"})
            assert reply == {"result": "error", "error-reason": "Unknown call-id"}
            await far.stop_tone()
    finally:
        await far.stop_tone()
        far_transport.close()


async def test_switch_offers_and_the_browser_answers(ng: NgClient) -> None:
    """A call toward the browser: plain offer + transport-protocol UDP/TLS/RTP/SAVPF and
    ICE=force -> WebRTC offer (actpass); aiortc's answer -> plain answer; tone both ways."""
    loop = asyncio.get_running_loop()
    far_transport, far = await loop.create_datagram_endpoint(FarEnd, local_addr=(SWITCH_IP, 0))
    try:
        async with browser_pc() as (pc, browser):
            reply = await ng.request(
                {
                    "command": "offer",
                    "call-id": "call-b",
                    "from-tag": "switch-tag",
                    "sdp": plain_answer(far.port),
                    "transport-protocol": "UDP/TLS/RTP/SAVPF",
                    "ICE": "force",
                    "rtcp-mux": ["require"],
                }
            )
            assert reply["result"] == "ok", reply
            assert "a=setup:actpass" in str(reply["sdp"])
            await pc.setRemoteDescription(RTCSessionDescription(str(reply["sdp"]), "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            reply = await ng.request(
                {
                    "command": "answer",
                    "call-id": "call-b",
                    "from-tag": "switch-tag",
                    "to-tag": "browser-tag",
                    "sdp": pc.localDescription.sdp,
                    "transport-protocol": "RTP/AVP",
                    "ICE": "remove",
                }
            )
            assert reply["result"] == "ok", reply
            plain = parse(str(reply["sdp"]))
            assert plain.media[0].proto == "RTP/AVP" and "a=ice" not in str(plain)
            await wait_for(lambda: pc.connectionState == "connected", 10, "aiortc connected")
            far.start_tone((GATEWAY_IP, plain.media[0].port))
            await tone_both_ways(far, browser)
            reply = await ng.request({"command": "delete", "call-id": "call-b"})
            assert reply["result"] == "ok", reply
            assert await statistics(ng) == (0, 0)
    finally:
        await far.stop_tone()
        far_transport.close()


async def test_twenty_sequential_calls_leave_nothing_behind(
    media: MediaControlHandle, ng: NgClient
) -> None:
    for i in range(20):
        call_id = f"seq-{i}"
        reply = await offer(ng, call_id, CHROME_OFFER)
        assert reply["result"] == "ok", reply
        reply = await answer(ng, call_id, plain_answer(30000 + 2 * i))
        assert reply["result"] == "ok", reply
        assert await statistics(ng) == (1, 3)  # one WebRTC port + an RTP/RTCP pair
        reply = await ng.request({"command": "delete", "call-id": call_id})
        assert reply["result"] == "ok" and "warning" not in reply, reply
    assert await statistics(ng) == (0, 0)
    reply = await ng.request({"command": "statistics"})
    stats = reply["statistics"]
    assert isinstance(stats, dict)
    assert stats["totalstatistics"]["managedsessions"] == 20
    assert stats["totalstatistics"]["regularterminatedsessions"] == 20
    assert await ng.request({"command": "list"}) == {"result": "ok", "calls": []}
    if media.pool is not None:
        assert media.pool.sticky == {}
        # Calls went to the least-loaded worker: with one call at a time, the first.
        assert [w.calls for w in media.pool.workers] == [0, 0]
    else:
        assert media.engine is not None and media.engine.ports_in_use() == 0


async def test_concurrent_calls_spread_over_workers(
    media: MediaControlHandle, ng: NgClient
) -> None:
    ids = [f"par-{i}" for i in range(6)]
    for call_id in ids:
        assert (await offer(ng, call_id, CHROME_OFFER))["result"] == "ok"
    assert await statistics(ng) == (6, 18)
    if media.pool is not None:
        assert [w.calls for w in media.pool.workers] == [3, 3]
        slices = [w.ports for w in media.pool.workers]
        for call_id in ids:
            query = await ng.request({"command": "query", "call-id": call_id})
            tag = query["tags"]["browser-tag"]  # type: ignore[index]
            port = tag["medias"][0]["streams"][0]["local port"]
            owner = media.pool.workers[media.pool.sticky[call_id]].ports
            assert owner[0] <= port <= owner[1] and owner in slices
    listed = await ng.request({"command": "list"})
    assert sorted(listed["calls"]) == sorted(ids)  # type: ignore[arg-type]
    for call_id in ids:
        assert (await ng.request({"command": "delete", "call-id": call_id}))["result"] == "ok"
    assert await statistics(ng) == (0, 0)


async def test_retransmitted_cookie_gets_the_cached_reply(
    media: MediaControlHandle, ng: NgClient
) -> None:
    first = await offer(ng, "dup", CHROME_OFFER)
    assert first["result"] == "ok"
    # The same request again under the same cookie, as Kamailio retransmits it.
    cookie = b"retransmitted-1"
    body: dict[str, object] = {
        "command": "answer",
        "call-id": "dup",
        "from-tag": "browser-tag",
        "to-tag": "switch-tag",
        "sdp": plain_answer(30100),
    }
    one = await ng.request(body, cookie=cookie)
    two = await ng.request(body, cookie=cookie)
    assert one["result"] == "ok" and two == one
    assert media.server.duplicates == 1
    # An offer under a fresh cookie for a new call, retransmitted: one session only.
    offer_body: dict[str, object] = {
        "command": "offer",
        "call-id": "dup-2",
        "from-tag": "browser-tag",
        "sdp": CHROME_OFFER,
        "transport-protocol": "RTP/AVP",
    }
    a = await ng.request(offer_body, cookie=b"retransmitted-2")
    b = await ng.request(offer_body, cookie=b"retransmitted-2")
    assert a == b and a["result"] == "ok"
    assert media.server.duplicates == 2
    assert await statistics(ng) == (2, 6)
    stats = (await ng.request({"command": "statistics"}))["statistics"]
    assert stats["totalstatistics"]["managedsessions"] == 2  # type: ignore[index]
    for call_id in ("dup", "dup-2"):
        await ng.request({"command": "delete", "call-id": call_id})
    assert await statistics(ng) == (0, 0)


async def test_garbage_is_dropped_and_the_server_keeps_serving(
    media: MediaControlHandle, ng: NgClient
) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)

    async def reply() -> bytes:
        data, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 65535), 2)
        return data

    try:
        target = media.address
        for junk in (b"", b"no-space-at-all", b" d7:command4:pinge", b"\x00\xff garbage"):
            sock.sendto(junk, target)
        sock.sendto(os.urandom(1200), target)
        # A usable cookie with a broken body gets an error reply carrying the cookie.
        sock.sendto(b"c00kie d7:command4:ping", target)
        data = await reply()
        assert data == b"c00kie d12:error-reason22:truncated at offset 16" + b"6:result5:errore"
        sock.sendto(b"c00kie2 i42e", target)
        data = await reply()
        assert data.startswith(b"c00kie2 d12:error-reason16:not a dictionary")
        # The doc example from rtpengine's ng_control_protocol.md, byte for byte.
        sock.sendto(b"5323_1 d7:command4:pinge", target)
        data = await reply()
        assert data == b"5323_1 d6:result4:ponge"
        await asyncio.sleep(0.1)
        drops = media.server.drops
        assert drops.get("no cookie", 0) >= 4  # the urandom one may or may not hold a space
        assert media.server.error_replies == 2
        assert await ng.request({"command": "ping"}) == {"result": "pong"}
    finally:
        sock.close()


async def test_errors_are_replies(ng: NgClient) -> None:
    reply = await ng.request({"command": "offer", "call-id": "x", "from-tag": "t"})
    assert reply == {"result": "error", "error-reason": "No SDP body in message"}
    reply = await offer(ng, "x", CHROME_OFFER, DTLS="off", **{"transport-protocol": "RTP/AVP"})
    assert reply["result"] == "ok"  # DTLS=off toward the plain side changes nothing
    reply = await offer(
        ng, "y", CHROME_OFFER, codec={"transcode": ["G729"]}, **{"transport-protocol": "RTP/AVP"}
    )
    assert reply["result"] == "error"
    assert "transcoding is not available yet" in str(reply["error-reason"])
    reply = await ng.request({"command": "answer", "call-id": "nope", "from-tag": "a",
                              "to-tag": "b", "sdp": plain_answer(30000)})  # fmt: skip
    assert reply == {"result": "error", "error-reason": "Unknown call-id"}
    reply = await ng.request({"command": "delete", "call-id": "nope", "flags": ["fatal"]})
    assert reply["result"] == "error"
    await ng.request({"command": "delete", "call-id": "x"})
    assert await statistics(ng) == (0, 0)


async def test_start_media_from_config_binds_the_control_socket() -> None:
    config = config_from_dict(
        {
            "upstream": {"servers": "sip:127.0.0.1:5060"},
            "listen": {"advertised_sip_host": "127.0.0.1"},
            "media": {
                "enabled": True,
                "public_ip": GATEWAY_IP,
                "bind_ip": GATEWAY_IP,
                "control": "127.0.0.1:0",
                "port_range": "43200-43299",
            },
        },
        {},
    )
    handle = await start_media(config)
    try:
        # media.workers defaults to one worker per CPU core
        assert handle.mode == "workers" and handle.address[0] == "127.0.0.1"
        assert handle.pool is not None and len(handle.pool.workers) == (os.cpu_count() or 1)
        client = await NgClient.connect(*handle.address)
        assert await client.request({"command": "ping"}) == {"result": "pong"}
        await client.close()
    finally:
        await handle.close()


WORKER_PARENT = """
import asyncio, sys
from gateway.transport.ng import start_media_control

async def main():
    handle = await start_media_control(control=("127.0.0.1", 0), public_ip="127.0.0.2",
        bind_ip="127.0.0.2", port_range=(43300, 43399), workers=2)
    print(" ".join(str(p) for p in handle.pool.pids()), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


async def test_workers_exit_when_the_parent_is_killed() -> None:
    """SIGKILL leaves the parent no chance to clean up: the workers notice their pipe
    closing and exit by themselves."""
    parent = subprocess.Popen(
        [sys.executable, "-c", WORKER_PARENT], cwd=ROOT, stdout=subprocess.PIPE
    )
    try:
        assert parent.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(parent.stdout.readline), 20)
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(5)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not any(_alive(p) for p in pids)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(5)
