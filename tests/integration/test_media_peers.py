"""The media test peers themselves: tests/helpers/webrtc_ua.py and tests/helpers/rtp_far_end.py.

Signalling runs through the real chain: WebRtcUa (SIP over WebSocket) -> gateway ->
Kamailio -> RtpFarEnd on 127.0.0.3 (Kamailio routes 9<port> there), and back for calls
from the far end. The gateway does not anchor media yet, so SDP passes through unchanged
and no media is asserted there. Media is proven per helper: WebRtcUa's aiortc peer
against a second, independent aiortc peer, and RtpFarEnd against a plain UDP socket.

Addresses: Kamailio and aiortc 127.0.0.1, the gateway 127.0.0.2, the far end 127.0.0.3.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from gateway.media.codecs.g711 import alaw_decode, alaw_encode, ulaw_decode
from gateway.sdp.model import parse as parse_sdp
from gateway.sip.message import Response, parse
from tests.helpers.gateway import GATEWAY_IP, GatewayProcess, serving
from tests.helpers.kamailio import SIPP_IP, Kamailio, free_port
from tests.helpers.rtp_far_end import RtpFarEnd
from tests.helpers.webrtc_ua import (
    AudioRecorder,
    SipCallFailed,
    ToneTrack,
    WebRtcMedia,
    WebRtcUa,
    dominant_frequency,
    use_loopback_ice,
)

pytestmark = pytest.mark.integration

REALM = "example.test"
UA_TONE_HZ = 1000.0
PEER_TONE_HZ = 600.0
FAR_TONE_HZ = 1000.0
TOLERANCE_HZ = 25.0
TEST_IP = "127.0.0.1"


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    use_loopback_ice(monkeypatch)


@pytest.fixture
async def gateway(
    kamailio: Kamailio, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path, upstream=kamailio.uri("udp"))
    async with serving(gw, request):
        yield gw


@pytest.fixture
async def far_end() -> AsyncIterator[RtpFarEnd]:
    # Through the chain the INVITE carries aiortc's WebRTC offer unchanged (no media
    # anchoring yet), so the far end must answer a SAVPF offer instead of refusing it.
    far = RtpFarEnd(free_port(SIPP_IP), accept_any_profile=True)
    await far.start()
    try:
        yield far
    finally:
        await far.close()


@contextlib.asynccontextmanager
async def registered(
    gw: GatewayProcess,
    user: str,
    password: str,
    tone_hz: float = UA_TONE_HZ,
    url: str | None = None,
) -> AsyncIterator[WebRtcUa]:
    ua = WebRtcUa(url or gw.ws_url, user, password, tone_hz=tone_hz)
    try:
        response = await ua.register()
        assert response.status == 200, f"{response.status} {response.reason}"
        yield ua
    finally:
        await ua.close()


def number(far: RtpFarEnd) -> str:
    """Kamailio routes 9NNNNN to 127.0.0.3:NNNNN."""
    return f"sip:9{far.port}@{REALM}"


# --------------------------------------------------------------------- (a) signalling


async def test_register_through_gateway_with_digest(
    kamailio: Kamailio, gateway: GatewayProcess
) -> None:
    async with registered(gateway, "alice", "alicepw") as ua:
        # 401 challenge answered with MD5/qop=auth credentials (RFC 3261 §22.2)
        assert len(ua.received(401)) == 1
        second = ua.sent("REGISTER")[-1]
        assert "qop=auth" in (second.headers.get("Authorization") or "")
        # JsSIP-like Contact: .invalid host, transport=ws, ob, instance and reg-id
        contact = second.headers.get("Contact") or ""
        assert ".invalid;transport=ws;ob>" in contact and "+sip.instance=" in contact
        assert "reg-id=1" in contact
        locations = kamailio.locations(f"alice@{REALM}")
        assert locations, "no binding at the registrar"
        path = " ".join(str(loc.get("path", "")) for loc in locations)
        assert f"@{GATEWAY_IP}:{gateway.sip_port};lr" in path  # the gateway is on the Path
    # close() un-REGISTERed: the binding is gone
    assert kamailio.locations(f"alice@{REALM}") == []


async def test_call_to_far_end_answered_and_hung_up_by_ua(
    gateway: GatewayProcess, far_end: RtpFarEnd
) -> None:
    async with registered(gateway, "alice", "alicepw") as ua:
        call = await ua.call(number(far_end), headers=[("X-Test", "peers")])
        assert call.status == 200 and call.state == "confirmed"
        assert ua.received(407), "Kamailio challenges the INVITE from a non-trusted source"
        invites = ua.sent("INVITE")
        assert len(invites) == 2 and "Proxy-Authorization" in invites[1].headers
        assert invites[0].body.startswith(b"v=0") and b"a=fingerprint:" in invites[0].body
        await far_end.wait_confirmed()  # the ACK for the 200 reached the far end
        received = far_end.received("INVITE")[0]
        assert received.headers.get("X-Test") == "peers"
        assert len(received.headers.get_all("Record-Route")) >= 2
        assert ua.received(180)  # ringing reached the browser side
        assert await asyncio.wait_for(ua.hangup(), 10) is not None
        assert await far_end.wait_ended() == "remote BYE"
        assert far_end.sent(200)[-1].cseq[1] == "BYE"
        assert call.state == "ended"


async def test_far_end_early_media_hold_and_bye_from_far_end(gateway: GatewayProcess) -> None:
    far = RtpFarEnd(free_port(SIPP_IP), accept_any_profile=True, early_media=True)
    await far.start()
    try:
        async with registered(gateway, "bob", "bobpw") as ua:
            call = await ua.call(number(far))
            statuses = [r.status for r in call.responses if r.cseq[0] == call.invite_cseq]
            # The far end sends 180 then 183 back to back over UDP; Kamailio's receiver
            # processes may forward them in either order (nothing orders provisionals
            # without 100rel), so both must arrive between the 100 and the 200.
            assert statuses[0] == 100 and statuses[-1] == 200
            assert sorted(statuses[1:-1]) == [180, 183]
            early = [r for r in call.responses if r.status == 183]
            assert b"m=audio" in early[0].body  # the 183 carried the early SDP
            await far.wait_confirmed()
            # hold: re-INVITE sendonly; the far end mirrors it (RFC 3264 §6.1)
            response = await ua.hold()
            assert response.status == 200
            assert b"a=sendonly" in ua.sent("INVITE")[-1].body
            assert far.call is not None and far.call.local_direction == "recvonly"
            assert b"a=recvonly" in response.body
            await far.wait_confirmed()
            await ua.unhold()
            assert far.call.local_direction == "sendrecv"
            # the far end hangs up
            bye = await far.send_bye()
            assert bye.status == 200
            assert await ua.wait_ended() == "remote BYE"
    finally:
        await far.close()


async def test_cancel_while_far_end_rings(gateway: GatewayProcess) -> None:
    far = RtpFarEnd(free_port(SIPP_IP), accept_any_profile=True, ring_seconds=10)
    await far.start()
    try:
        async with registered(gateway, "alice", "alicepw") as ua:
            call = await ua.call(number(far), wait_for="progress")
            await far.wait_call()
            response = await ua.hangup()
            assert response is not None and response.status == 200  # the CANCEL's 200
            assert await far.wait_ended() == "rejected 487"
            await asyncio.wait_for(call.ended.wait(), 10)
            assert call.status == 487
            with pytest.raises(SipCallFailed):
                await call.answered
    finally:
        await far.close()


async def test_inbound_call_from_far_end_is_answered(
    kamailio: Kamailio, gateway: GatewayProcess, far_end: RtpFarEnd
) -> None:
    """The far end calls alice through Kamailio. Without media anchoring the gateway would
    hand its plain RTP offer to aiortc, which cannot take it (no ICE/DTLS), so the far
    end offers what the gateway will produce later: a WebRTC offer, from an aiortc peer
    in the test."""
    peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        peer.addTransceiver("audio", direction="sendrecv")
        await peer.setLocalDescription(await peer.createOffer())
        async with registered(gateway, "alice", "alicepw") as ua:
            invite = asyncio.ensure_future(
                far_end.invite(
                    "alice", (kamailio.ip, kamailio.udp_port), sdp=peer.localDescription.sdp
                )
            )
            incoming = await ua.wait_incoming()
            assert incoming.direction == "incoming"
            assert incoming.remote_uri.startswith(f"sip:{far_end.user}@")
            answer = await ua.answer()
            assert answer.status == 200 and b"a=fingerprint:" in answer.body
            final = await asyncio.wait_for(invite, 10)
            assert final.status == 200
            assert final.body == answer.body  # SDP passes through the gateway untouched
            await ua.wait_confirmed()
            assert (await far_end.send_bye()).status == 200
            assert await ua.wait_ended() == "remote BYE"
    finally:
        await peer.close()


async def test_drop_closes_the_websocket_abruptly(
    gateway: GatewayProcess, far_end: RtpFarEnd
) -> None:
    """Over wss:// with the gateway's self-signed certificate."""
    async with registered(gateway, "alice", "alicepw", url=gateway.wss_url) as ua:
        assert (ua.sent("REGISTER")[0].headers.get("Via") or "").startswith("SIP/2.0/WSS ")
        await ua.call(number(far_end))
        await far_end.wait_confirmed()
        await ua.drop()
        # the gateway ends the dialog for the dead flow (PITFALLS 18)
        assert await far_end.wait_ended(15) == "remote BYE"


async def test_late_offer_call_between_two_uas_with_hold(gateway: GatewayProcess) -> None:
    """alice -> gateway -> Kamailio -> gateway -> bob, both WebRtcUa. WebRTC SDP on both
    ends, so aiortc's media flows between the two (directly today, anchored later)."""
    tasks_before = len(asyncio.all_tasks())
    async with (
        registered(gateway, "alice", "alicepw") as alice,
        registered(gateway, "bob", "bobpw", tone_hz=PEER_TONE_HZ) as bob,
    ):
        calling = asyncio.ensure_future(alice.call(f"sip:bob@{REALM}", late_offer=True))
        incoming = await bob.wait_incoming()
        assert incoming.invite is not None and incoming.invite.body == b""
        await bob.answer()
        call = await asyncio.wait_for(calling, 10)
        await bob.wait_confirmed()
        assert alice.sent("ACK")[-1].body.startswith(b"v=0")  # the answer rides in the ACK
        assert call.sdp_error is None and incoming.sdp_error is None
        await alice.media.wait_connected()
        await alice.media.wait_frames(30)
        await bob.media.wait_frames(30)
        assert abs(alice.dominant_frequency(0.5) - PEER_TONE_HZ) < TOLERANCE_HZ
        assert abs(bob.dominant_frequency(0.5) - UA_TONE_HZ) < TOLERANCE_HZ
        assert alice.negotiated_codec() == bob.negotiated_codec() == "PCMU"
        assert alice.received_rms(0.5) > 1000
        # hold by alice: bob's answer is recvonly, so nothing reaches alice any more
        await alice.hold()
        assert b"a=recvonly" in bob.sent(200)[-1].body
        await asyncio.sleep(0.3)
        held_at = len(alice.received_frames())
        await bob.media.wait_frames(20)  # alice's tone still reaches bob
        assert len(alice.received_frames()) - held_at <= 3
        await alice.unhold()
        await alice.media.wait_frames(20)
        assert await bob.hangup() is not None
        assert await alice.wait_ended() == "remote BYE"
    # close() left no peer connection open and no task running
    assert all(c.media.connection_state == "closed" for c in alice.calls + bob.calls)
    await wait_until(lambda: len(asyncio.all_tasks()) <= tasks_before, 3, "tasks to finish")


# --------------------------------------------------------------------- (b) media


class Peer:
    """An independent aiortc peer: sends a tone, records what it receives."""

    def __init__(self, tone_hz: float = PEER_TONE_HZ) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.recorder = AudioRecorder()
        self.track = ToneTrack(tone_hz)
        self.pc.on("track", self.recorder.attach)

    async def answer(self, offer: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        for transceiver in self.pc.getTransceivers():
            transceiver.direction = "sendrecv"
            transceiver.sender.replaceTrack(self.track)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return str(self.pc.localDescription.sdp)

    async def offer(self) -> str:
        self.pc.addTransceiver(self.track, direction="sendrecv")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def close(self) -> None:
        self.track.stop()
        await self.pc.close()
        await self.recorder.close()


async def wait_until(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_webrtc_media_tone_both_ways_early_answer_then_hold() -> None:
    media = WebRtcMedia(codecs=["PCMU"], tone_hz=UA_TONE_HZ)
    peer = Peer()
    try:
        answer = await peer.answer(await media.create_offer())
        # As on a 183 then a 200: the same answer first provisional, then final.
        await media.accept_answer(answer, provisional=True)
        await media.wait_connected()
        await media.accept_answer(answer)
        assert media.negotiated_codec() == "PCMU"
        await media.wait_frames(40)
        await wait_until(lambda: peer.recorder.count >= 40, 5, "peer frames")
        assert abs(media.recorder.dominant_frequency() - PEER_TONE_HZ) < TOLERANCE_HZ
        assert abs(peer.recorder.dominant_frequency() - UA_TONE_HZ) < TOLERANCE_HZ
        assert media.recorder.rms() > 1000
        frame = media.recorder.frames[-1]
        assert frame.sample_rate == 8000 and len(frame.pcm) == 160
        # hold: our re-offer says sendonly, the peer answers recvonly and stops sending
        media.set_direction("sendonly")
        reoffer = await media.create_offer()
        assert "a=sendonly" in reoffer
        await peer.pc.setRemoteDescription(RTCSessionDescription(reoffer, "offer"))
        await peer.pc.setLocalDescription(await peer.pc.createAnswer())
        reanswer = peer.pc.localDescription.sdp
        assert "a=recvonly" in reanswer
        await media.accept_answer(reanswer)
        assert media.current_direction == "sendonly"
        await asyncio.sleep(0.3)
        held_at, peer_at = media.recorder.count, peer.recorder.count
        await asyncio.sleep(1.0)
        assert media.recorder.count - held_at <= 3  # only what aiortc had queued
        assert peer.recorder.count - peer_at >= 30  # our tone still reaches the peer
        # unhold
        media.set_direction("sendrecv")
        await peer.pc.setRemoteDescription(
            RTCSessionDescription(await media.create_offer(), "offer")
        )
        await peer.pc.setLocalDescription(await peer.pc.createAnswer())
        await media.accept_answer(peer.pc.localDescription.sdp)
        await media.wait_frames(30)
        assert abs(media.recorder.dominant_frequency(0.5) - PEER_TONE_HZ) < TOLERANCE_HZ
    finally:
        await media.close()
        await peer.close()
    assert media.connection_state == "closed"


async def test_webrtc_media_answers_an_opus_offer() -> None:
    """Late-offer shape: the other side offers, WebRtcMedia answers (Opus preferred)."""
    media = WebRtcMedia(codecs=["opus", "PCMU"], tone_hz=UA_TONE_HZ)
    peer = Peer()
    try:
        answer = await media.accept_offer(await peer.offer())
        assert "opus/48000" in answer
        await peer.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await media.wait_connected()
        assert media.negotiated_codec() == "opus"
        await media.wait_frames(40)
        await wait_until(lambda: peer.recorder.count >= 40, 5, "peer frames")
        assert media.recorder.frames[-1].sample_rate == 48000
        assert abs(media.recorder.dominant_frequency() - PEER_TONE_HZ) < TOLERANCE_HZ
        assert abs(peer.recorder.dominant_frequency() - UA_TONE_HZ) < TOLERANCE_HZ
    finally:
        await media.close()
        await peer.close()


def rtp_packet(pt: int, seq: int, ts: int, ssrc: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def sip_invite(sip_port: int, far: RtpFarEnd, rtp_port: int, direction: str, **kw: str) -> bytes:
    sdp = (
        "v=0\r\no=test 1 {v} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
        "m=audio {port} RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na={direction}\r\n"
    ).format(ip=TEST_IP, port=rtp_port, direction=direction, v=kw.get("version", "1"))
    to_tag = f";tag={kw['to_tag']}" if "to_tag" in kw else ""
    return (
        f"INVITE sip:9{far.port}@{far.ip}:{far.port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {TEST_IP}:{sip_port};branch=z9hG4bK{kw.get('branch', 'a1')}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:test@{TEST_IP}>;tag=t1\r\n"
        f"To: <sip:9{far.port}@{far.ip}>{to_tag}\r\n"
        "Call-ID: far-end-direct-1\r\n"
        f"CSeq: {kw.get('cseq', '1')} INVITE\r\n"
        f"Contact: <sip:test@{TEST_IP}:{sip_port}>\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
    ).encode()


def sip_ack(sip_port: int, far: RtpFarEnd, to_tag: str, cseq: int) -> bytes:
    return (
        f"ACK sip:farend@{far.ip}:{far.port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {TEST_IP}:{sip_port};branch=z9hG4bKack{cseq}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:test@{TEST_IP}>;tag=t1\r\n"
        f"To: <sip:9{far.port}@{far.ip}>;tag={to_tag}\r\n"
        "Call-ID: far-end-direct-1\r\n"
        f"CSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def recv_until(sock: socket.socket, status: int, timeout: float = 5.0) -> Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        message = parse(sock.recvfrom(65535)[0])
        if isinstance(message, Response) and message.status == status:
            return message
    raise AssertionError(f"no {status}")


@pytest.fixture
def udp_sockets() -> Iterator[tuple[socket.socket, socket.socket, socket.socket]]:
    """A SIP socket, an RTP socket and a second RTP socket (to test latching)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    for s in socks:
        s.bind((TEST_IP, 0))
    try:
        yield socks[0], socks[1], socks[2]
    finally:
        for s in socks:
            s.close()


async def test_rtp_far_end_answers_plain_offer_and_tones_flow_both_ways(
    udp_sockets: tuple[socket.socket, socket.socket, socket.socket],
) -> None:
    """A plain UDP socket plays the gateway's RTP side: SIP by hand, RTP by hand."""
    sip, rtp, other = udp_sockets
    sip_port, rtp_port = sip.getsockname()[1], rtp.getsockname()[1]
    async with RtpFarEnd(free_port(SIPP_IP), tone_hz=FAR_TONE_HZ, ring_seconds=0.1) as far:
        sip.sendto(sip_invite(sip_port, far, rtp_port, "sendrecv"), (far.ip, far.port))
        ok = await asyncio.to_thread(recv_until, sip, 200)
        answer = parse_sdp(ok.body)
        media = answer.media[0]
        assert answer.connection is not None and answer.connection.host == far.ip
        assert media.proto == "RTP/AVP" and media.port % 2 == 0 and media.port == far.rtp.port
        assert media.payload_types == [8, 101]  # our first codec, plus telephone-event
        to_tag = ok.to_tag
        assert to_tag is not None
        sip.sendto(sip_ack(sip_port, far, to_tag, 1), (far.ip, far.port))
        await far.wait_confirmed()

        # far end -> us: PCMA (what we offered first), 1 kHz, 20 ms, steady seq/ts/SSRC
        def collect(sock: socket.socket, count: int) -> list[tuple[bytes, tuple[str, int]]]:
            sock.settimeout(3)
            return [sock.recvfrom(2048) for _ in range(count)]

        packets = await asyncio.to_thread(collect, rtp, 50)
        headers = [struct.unpack_from("!BBHII", p) for p, _ in packets]
        assert {h[1] & 0x7F for h in headers} == {8}
        assert len({h[4] for h in headers}) == 1
        assert all((b[2] - a[2]) & 0xFFFF == 1 for a, b in zip(headers, headers[1:], strict=False))
        assert all(
            (b[3] - a[3]) & 0xFFFFFFFF == 160 for a, b in zip(headers, headers[1:], strict=False)
        )
        assert {addr for _, addr in packets} == {(far.ip, far.rtp.port)}
        pcm = np.frombuffer(b"".join(alaw_decode(p[12:]) for p, _ in packets), dtype="<i2")
        assert abs(dominant_frequency(pcm, 8000) - FAR_TONE_HZ) < TOLERANCE_HZ

        # us -> far end, from another port than the SDP says: the far end latches onto it
        for n in range(50):
            t = (np.arange(160) + n * 160) / 8000
            pcm_out = (8000 * np.sin(2 * np.pi * PEER_TONE_HZ * t)).astype("<i2").tobytes()
            other.sendto(
                rtp_packet(8, n, n * 160, 0x1234, alaw_encode(pcm_out)), (far.ip, far.rtp.port)
            )
            await asyncio.sleep(0.005)
        await wait_until(lambda: far.packets_received >= 50, 5, "RTP at the far end")
        assert far.payload_types_seen == {8}
        assert abs(far.dominant_frequency() - PEER_TONE_HZ) < TOLERANCE_HZ
        latched = await asyncio.to_thread(collect, other, 5)
        assert {addr for _, addr in latched} == {(far.ip, far.rtp.port)}

        # hold from our side: re-INVITE sendonly -> answer recvonly, far end goes silent
        sip.sendto(
            sip_invite(
                sip_port,
                far,
                rtp_port,
                "sendonly",
                to_tag=to_tag,
                cseq="2",
                branch="b2",
                version="2",
            ),
            (far.ip, far.port),
        )
        ok2 = await asyncio.to_thread(recv_until, sip, 200)
        assert parse_sdp(ok2.body).media[0].own_direction == "recvonly"
        assert parse_sdp(ok2.body).origin.session_version == "2"
        sip.sendto(sip_ack(sip_port, far, to_tag, 2), (far.ip, far.port))
        await asyncio.sleep(0.1)
        sent = far.rtp.packets_sent
        await asyncio.sleep(0.5)
        assert far.rtp.packets_sent == sent

        # stop_media keeps the call up but silent; BYE from us ends it
        await far.stop_media()
        assert far.call is not None and far.call.state == "confirmed"


async def test_rtp_far_end_sends_pcmu_to_sdp_address_without_symmetric_latch() -> None:
    """RtpStream alone: PCMU to the SDP address, recording what comes back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((TEST_IP, 0))
        far = RtpFarEnd(free_port(SIPP_IP), tone_hz=FAR_TONE_HZ, symmetric=False)
        await far.start()
        try:
            far.rtp.start((TEST_IP, sock.getsockname()[1]))
            sock.settimeout(3)
            packets = await asyncio.to_thread(lambda: [sock.recvfrom(2048)[0] for _ in range(25)])
            assert {p[1] & 0x7F for p in packets} == {0}
            assert packets[0][1] & 0x80  # marker on the first packet (RFC 3551 §4.1)
            pcm = np.frombuffer(b"".join(ulaw_decode(p[12:]) for p in packets), dtype="<i2")
            assert abs(dominant_frequency(pcm, 8000) - FAR_TONE_HZ) < TOLERANCE_HZ
            # stop_media: silence from now on (for media-timeout tests)
            await far.stop_media()
            sent = far.rtp.packets_sent
            await asyncio.sleep(0.3)
            assert far.rtp.packets_sent == sent
        finally:
            await far.close()
