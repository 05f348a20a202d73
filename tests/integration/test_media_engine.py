"""The media engine between a real WebRTC peer (aiortc) and a plain RTP far end.

aiortc plays the browser: it offers one PCMU audio track carrying a 1 kHz sine; the test
writes the gateway's answer by hand from the engine's parameters (ice-lite, ufrag/pwd,
fingerprint, setup:passive, rtcp-mux, one host candidate). A plain UDP socket on 127.0.0.3
plays the switch: it checks that the RTP it gets decodes to a 1 kHz tone and sends a 1 kHz
PCMU tone back, which aiortc must decode on its receiving track.

Addresses: aiortc on 127.0.0.1, gateway on 127.0.0.2, far end on 127.0.0.3.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import gc
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aioice.ice
import numpy as np
import pytest
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription
from av import AudioFrame

from gateway.transport.media import MediaEngine, MediaSession

pytestmark = pytest.mark.integration

BROWSER_IP = "127.0.0.1"
GATEWAY_IP = "127.0.0.2"
SWITCH_IP = "127.0.0.3"
PORT_RANGE = (41000, 41999)
RATE = 8000
SAMPLES = 160  # 20 ms at 8 kHz
TONE_HZ = 1000.0
PCMU = 0


# --------------------------------------------------------------------------- G.711 u-law


def _ulaw_decode_table() -> np.ndarray:
    """ITU-T G.711 u-law expansion for all 256 code words."""
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


ULAW_DECODE = _ulaw_decode_table()


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """ITU-T G.711 u-law compression of int16 samples."""
    x = pcm.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0x00)
    magnitude = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    code = ~(sign | (exponent << 4) | mantissa) & 0xFF
    return bytes(code.astype(np.uint8).tobytes())


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    """Frequency of the FFT peak (Hann window)."""
    x = samples.astype(np.float64)
    x -= x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * rate / len(x)


def tone(start_sample: int, count: int, rate: int = RATE) -> np.ndarray:
    t = (np.arange(count) + start_sample) / rate
    return (8000 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16)


# --------------------------------------------------------------------------- browser side


class SineTrack(MediaStreamTrack):
    """aiortc audio track: a 1 kHz sine in paced 20 ms frames."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            wait = self._start + self._pts / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        frame = AudioFrame(format="s16", layout="mono", samples=SAMPLES)
        frame.planes[0].update(tone(self._pts, SAMPLES).tobytes())
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        self._pts += SAMPLES
        return frame


@dataclass
class Browser:
    pc: RTCPeerConnection
    samples: list[np.ndarray] = field(default_factory=list)
    frames: int = 0
    task: asyncio.Task[None] | None = None

    async def _drain(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, AudioFrame)
                self.frames += 1
                pcm = frame.to_ndarray().reshape(-1)
                if frame.sample_rate != RATE:
                    pcm = pcm[:: frame.sample_rate // RATE]
                self.samples.append(pcm)
                del self.samples[:-100]

    def recent_audio(self, frames: int = 25) -> np.ndarray:
        return np.concatenate(self.samples[-frames:])


# --------------------------------------------------------------------------- switch side


class FarEnd(asyncio.DatagramProtocol):
    """Plain RTP endpoint on 127.0.0.3: records what it gets, sends a PCMU tone when asked."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.payloads: list[bytes] = []
        self.packets = 0
        self.sources: set[tuple[str, int]] = set()
        self.payload_types: set[int] = set()
        self.ssrcs: set[int] = set()
        self.sending: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or 192 <= data[1] <= 223:
            return
        self.packets += 1
        self.sources.add(addr)
        self.payload_types.add(data[1] & 0x7F)
        self.ssrcs.add(struct.unpack_from("!I", data, 8)[0])
        self.payloads.append(data[12:])
        del self.payloads[:-100]

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port

    def recent_audio(self, packets: int = 25) -> np.ndarray:
        data = b"".join(self.payloads[-packets:])
        return ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]

    async def _send_tone(self, dest: tuple[str, int], ssrc: int) -> None:
        assert self.transport is not None
        seq, ts = 65520, 2**32 - 1600  # both wrap within the first 16 packets
        start = time.monotonic()
        n = 0
        while True:
            header = struct.pack("!BBHII", 0x80, PCMU, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
            self.transport.sendto(header + ulaw_encode(tone(n * SAMPLES, SAMPLES)), dest)
            n += 1
            seq += 1
            ts += SAMPLES
            await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))

    def start_tone(self, dest: tuple[str, int], ssrc: int = 0x5157C4) -> None:
        self.sending = asyncio.ensure_future(self._send_tone(dest, ssrc))

    async def stop_tone(self) -> None:
        if self.sending is not None:
            self.sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sending
            self.sending = None


# --------------------------------------------------------------------------- the call


def answer_sdp(offer: SessionDescription, session: MediaSession) -> str:
    """The gateway's answer as the SDP rewriter would write it (RFC 8829 answer rules)."""
    return gateway_sdp(session, offer.media[0].rtp.muxId)


def gateway_sdp(session: MediaSession, mid: str) -> str:
    """The gateway's WebRTC-profile SDP (offer or answer) from the engine's parameters."""
    algorithm, value = session.webrtc.fingerprint.split(" ", 1)
    port = session.webrtc.local_port
    return (
        "\r\n".join(
            [
                "v=0",
                f"o=- 1 1 IN IP4 {GATEWAY_IP}",
                "s=-",
                "t=0 0",
                "a=ice-lite",
                f"a=group:BUNDLE {mid}",
                f"m=audio {port} UDP/TLS/RTP/SAVPF {PCMU}",
                f"c=IN IP4 {GATEWAY_IP}",
                f"a=mid:{mid}",
                "a=sendrecv",
                "a=rtcp-mux",
                f"a=ice-ufrag:{session.webrtc.ice_ufrag}",
                f"a=ice-pwd:{session.webrtc.ice_pwd}",
                f"a=fingerprint:{algorithm} {value}",
                f"a=setup:{session.webrtc.dtls_role}",
                f"a=rtpmap:{PCMU} PCMU/8000",
                f"a=candidate:1 1 udp 2130706431 {GATEWAY_IP} {port} typ host",
                "a=end-of-candidates",
            ]
        )
        + "\r\n"
    )


@dataclass
class Call:
    engine: MediaEngine
    session: MediaSession
    browser: Browser
    far: FarEnd
    timeouts: list[str]


async def wait_for(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiortc gathers its host candidate on 127.0.0.1 only (aioice leaves loopback out)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [BROWSER_IP])


@contextlib.asynccontextmanager
async def open_call(timeout: float = 30.0) -> AsyncIterator[Call]:
    engine = MediaEngine(
        public_ip=GATEWAY_IP, bind_ip=GATEWAY_IP, port_range=PORT_RANGE, timeout=timeout
    )
    await engine.start()
    loop = asyncio.get_running_loop()
    far_transport, far = await loop.create_datagram_endpoint(FarEnd, local_addr=(SWITCH_IP, 0))
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    browser = Browser(pc)
    timeouts: list[str] = []
    try:
        transceiver = pc.addTransceiver(SineTrack(), direction="sendrecv")
        codecs = RTCRtpSender.getCapabilities("audio").codecs
        transceiver.setCodecPreferences([c for c in codecs if c.mimeType == "audio/PCMU"])

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            browser.task = asyncio.ensure_future(browser._drain(track))

        await pc.setLocalDescription(await pc.createOffer())
        offer = SessionDescription.parse(pc.localDescription.sdp)
        media = offer.media[0]
        assert media.ice is not None and media.dtls is not None
        assert media.ice.usernameFragment is not None and media.ice.password is not None

        session = engine.create_session("call-1")
        session.on_timeout = lambda s, leg: timeouts.append(leg)
        fingerprint = media.dtls.fingerprints[0]
        session.set_webrtc_remote(
            ice_ufrag=media.ice.usernameFragment,
            ice_pwd=media.ice.password,
            fingerprint=(fingerprint.algorithm, fingerprint.value),
            setup="actpass",
            candidates=[(c.ip, c.port) for c in media.ice_candidates],
        )
        assert session.webrtc.dtls_role == "passive"
        session.set_rtp_remote(address=SWITCH_IP, port=far.port, rtcp_port=None)
        session.set_payload_map(to_rtp={PCMU: PCMU}, to_webrtc={PCMU: PCMU})
        await pc.setRemoteDescription(RTCSessionDescription(answer_sdp(offer, session), "answer"))
        await wait_for(lambda: pc.connectionState == "connected", 10, "aiortc connected")
        far.start_tone((GATEWAY_IP, session.rtp.local_port))
        yield Call(engine, session, browser, far, timeouts)
    finally:
        await far.stop_tone()
        await pc.close()
        if browser.task is not None:
            browser.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, MediaStreamError):
                await browser.task
        far_transport.close()
        await engine.close()


async def assert_tone_both_ways(call: Call) -> None:
    """New audio arrives both ways and both directions carry the 1 kHz tone."""
    far_before, browser_before = call.far.packets, call.browser.frames
    await wait_for(
        lambda: call.far.packets >= far_before + 30 and call.browser.frames >= browser_before + 30,
        8,
        "30 new packets each way",
    )
    assert abs(dominant_hz(call.far.recent_audio(), RATE) - TONE_HZ) < 25
    assert abs(dominant_hz(call.browser.recent_audio(), RATE) - TONE_HZ) < 25


# --------------------------------------------------------------------------- tests


async def test_tone_both_ways_through_the_relay() -> None:
    async with open_call() as call:
        await assert_tone_both_ways(call)
        stats = call.session.stats
        webrtc, rtp = stats["webrtc"], stats["rtp"]
        assert isinstance(webrtc, dict) and isinstance(rtp, dict)
        assert webrtc["dtls_state"] == "connected"
        assert webrtc["dtls_handshakes"] == 1
        assert webrtc["srtp_profile"] in ("SRTP_AES128_CM_SHA1_80", "SRTP_AEAD_AES_128_GCM")
        assert webrtc["ice_selected"] is not None and webrtc["ice_selected"][0] == BROWSER_IP
        # The far end sees PCMU from the gateway's RTP port, one SSRC, and is latched.
        assert call.far.payload_types == {PCMU}
        assert call.far.sources == {(GATEWAY_IP, call.session.rtp.local_port)}
        assert len(call.far.ssrcs) == 1
        assert rtp["latched"] == (SWITCH_IP, call.far.port)
        assert webrtc["srtp_auth_failures"] == 0
        # The far end's seq/ts wrapped (65535 -> 0, 2^32 -> 0) early in the tone that the
        # browser decoded above.
        assert rtp["rx_packets"] > 16


async def test_rtcp_is_relayed_both_ways() -> None:
    async with open_call() as call:
        loop = asyncio.get_running_loop()
        received: list[bytes] = []

        class Rtcp(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                received.append(data)

        rtcp_transport, _ = await loop.create_datagram_endpoint(
            Rtcp, local_addr=(SWITCH_IP, call.far.port + 1)
        )
        try:
            # An RR from the far end's SSRC on the RTCP port (RFC 3550 §6.4.2).
            rr = struct.pack("!BBHI", 0x80, 201, 1, 0x5157C4)
            rtcp_transport.sendto(rr, (GATEWAY_IP, call.session.rtp.local_rtcp_port))
            await wait_for(lambda: call.session.stats["webrtc"]["tx_rtcp"] >= 1, 5, "RTCP out")  # type: ignore[index]
            # aiortc sends its RTCP (SR/RR) every few seconds; it arrives as plain RTCP.
            await wait_for(lambda: len(received) >= 1, 10, "aiortc RTCP at the far end")
            assert 200 <= received[0][1] <= 206
        finally:
            rtcp_transport.close()


async def test_hold_stops_one_direction_without_new_handshake() -> None:
    async with open_call() as call:
        await assert_tone_both_ways(call)
        session = call.session
        # The browser puts the call on hold: its SDP says sendonly, so nothing goes to it.
        session.set_direction("webrtc", "sendonly")
        await asyncio.sleep(0.3)
        frames, far = call.browser.frames, call.far.packets
        tx = session.stats["webrtc"]["tx_packets"]  # type: ignore[index]
        await asyncio.sleep(1.0)
        assert session.stats["webrtc"]["tx_packets"] == tx  # type: ignore[index]
        assert call.browser.frames - frames <= 3  # only what was already in aiortc's queue
        assert call.far.packets - far >= 30  # the other way keeps flowing
        assert session.stats["rtp"]["drops"]["direction"] >= 30  # type: ignore[index]
        # Unhold: media flows again on the same DTLS association.
        session.set_direction("webrtc", "sendrecv")
        await assert_tone_both_ways(call)
        assert session.stats["webrtc"]["dtls_handshakes"] == 1  # type: ignore[index]


async def test_media_timeout_fires_when_far_end_stops() -> None:
    async with open_call(timeout=1.5) as call:
        await assert_tone_both_ways(call)
        assert call.timeouts == []  # > 1.5 s of media so far: no timeout while it flows
        started = time.monotonic()
        await call.far.stop_tone()
        await asyncio.wait_for(call.session.timed_out.wait(), 5)
        elapsed = time.monotonic() - started
        assert call.timeouts == ["rtp"]
        assert 1.4 <= elapsed <= 2.5


async def test_repointing_the_rtp_leg_mid_call() -> None:
    """A re-INVITE moves the far end to a new port (PITFALLS 9): media follows."""
    async with open_call() as call:
        await assert_tone_both_ways(call)
        loop = asyncio.get_running_loop()
        transport, new_far = await loop.create_datagram_endpoint(FarEnd, local_addr=(SWITCH_IP, 0))
        try:
            await call.far.stop_tone()
            call.session.set_rtp_remote(address=SWITCH_IP, port=new_far.port, rtcp_port=None)
            new_far.start_tone((GATEWAY_IP, call.session.rtp.local_port), ssrc=0xABCDEF)
            await wait_for(lambda: new_far.packets >= 30, 5, "media at the new far end")
            assert abs(dominant_hz(new_far.recent_audio(), RATE) - TONE_HZ) < 25
            frames = call.browser.frames
            await wait_for(lambda: call.browser.frames >= frames + 30, 5, "browser audio")
            assert abs(dominant_hz(call.browser.recent_audio(), RATE) - TONE_HZ) < 25
            stats = call.session.stats["rtp"]
            assert stats["latched"] == (SWITCH_IP, new_far.port)  # type: ignore[index]
            assert stats["ssrc_changes_in"] == 1  # type: ignore[index]
        finally:
            await new_far.stop_tone()
            transport.close()


async def test_garbage_is_dropped_and_counted_while_the_call_continues() -> None:
    async with open_call() as call:
        await assert_tone_both_ways(call)
        session = call.session
        junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        junk.bind((SWITCH_IP, 0))
        try:
            webrtc = (GATEWAY_IP, session.webrtc.local_port)
            rtp = (GATEWAY_IP, session.rtp.local_port)
            for i in range(20):
                junk.sendto(bytes([0x40 + i]) + os.urandom(50), webrtc)  # RFC 7983: no owner
                junk.sendto(b"\x80\x00" + os.urandom(60), webrtc)  # SRTP that fails auth
                junk.sendto(b"\x16\xfe\xfd" + os.urandom(40), webrtc)  # DTLS, unchecked source
                junk.sendto(b"\x00\x01\x00\x00" + os.urandom(30), webrtc)  # broken STUN
                junk.sendto(b"\x00" + os.urandom(40), rtp)  # not RTP version 2
                junk.sendto(b"\x80\x00" + os.urandom(60), rtp)  # RTP from an unlatched source
            await asyncio.sleep(0.3)
            stats = session.stats
            w, r = stats["webrtc"], stats["rtp"]
            assert isinstance(w, dict) and isinstance(r, dict)
            assert w["drops"]["garbage"] == 20
            assert w["srtp_auth_failures"] == 20
            assert w["drops"]["unchecked"] == 20
            assert w["stun_malformed"] == 20
            assert r["drops"]["malformed"] == 20
            assert r["drops"]["source"] == 20
            assert r["latched"] == (SWITCH_IP, call.far.port)
            await assert_tone_both_ways(call)
        finally:
            junk.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_fifty_sessions_leave_nothing_behind() -> None:
    engine = MediaEngine(public_ip=GATEWAY_IP, bind_ip=GATEWAY_IP, port_range=PORT_RANGE)
    await engine.start()
    try:
        gc.collect()
        fds, tasks = _open_fds(), len(asyncio.all_tasks())
        sessions = [engine.create_session(f"call-{i}") for i in range(50)]
        assert engine.sessions() == 50
        assert engine.ports_in_use() == 150  # one WebRTC port + an RTP/RTCP pair each
        assert _open_fds() == fds + 150
        for s in sessions:
            assert s.rtp.local_port % 2 == 0 and s.rtp.local_rtcp_port == s.rtp.local_port + 1
        # Some traffic, so readers have run.
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind((SWITCH_IP, 0))
        for s in sessions:
            probe.sendto(b"\x80\x00" + bytes(170), (GATEWAY_IP, s.rtp.local_port))
        probe.close()
        await asyncio.sleep(0.1)
        assert sum(s.bridge.r.rx_packets for s in sessions) == 50
        for s in sessions:
            await s.close()
            await s.close()  # idempotent
        assert engine.sessions() == 0
        assert engine.ports_in_use() == 0
        assert _open_fds() == fds
        assert len(asyncio.all_tasks()) == tasks
    finally:
        await engine.close()


async def test_gateway_offers_actpass_and_aiortc_answers_active() -> None:
    """The gateway makes the offer (a call from the switch to the browser): it announces
    actpass, the browser answers active and is the DTLS client; media then flows."""
    engine = MediaEngine(public_ip=GATEWAY_IP, bind_ip=GATEWAY_IP, port_range=PORT_RANGE)
    await engine.start()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    browser = Browser(pc)
    try:
        session = engine.create_session("call-out")
        assert session.webrtc.dtls_role == "actpass"
        pc.addTrack(SineTrack())

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            browser.task = asyncio.ensure_future(browser._drain(track))

        await pc.setRemoteDescription(RTCSessionDescription(gateway_sdp(session, "0"), "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = SessionDescription.parse(pc.localDescription.sdp)
        media = answer.media[0]
        assert media.dtls is not None and media.ice is not None
        assert media.dtls.role == "client"  # a=setup:active
        assert media.ice.usernameFragment is not None and media.ice.password is not None
        fingerprint = media.dtls.fingerprints[0]
        session.set_webrtc_remote(
            ice_ufrag=media.ice.usernameFragment,
            ice_pwd=media.ice.password,
            fingerprint=(fingerprint.algorithm, fingerprint.value),
            setup="active",
            candidates=[(c.ip, c.port) for c in media.ice_candidates],
        )
        assert session.webrtc.dtls_role == "passive"
        await wait_for(lambda: pc.connectionState == "connected", 10, "aiortc connected")
        loop = asyncio.get_running_loop()
        far_transport, far = await loop.create_datagram_endpoint(FarEnd, local_addr=(SWITCH_IP, 0))
        try:
            session.set_rtp_remote(address=SWITCH_IP, port=far.port, rtcp_port=None)
            far.start_tone((GATEWAY_IP, session.rtp.local_port))
            await wait_for(
                lambda: far.packets >= 30 and browser.frames >= 30, 8, "30 packets each way"
            )
            assert abs(dominant_hz(far.recent_audio(), RATE) - TONE_HZ) < 25
            assert abs(dominant_hz(browser.recent_audio(), RATE) - TONE_HZ) < 25
            assert session.stats["webrtc"]["dtls_handshakes"] == 1  # type: ignore[index]
        finally:
            await far.stop_tone()
            far_transport.close()
    finally:
        await pc.close()
        if browser.task is not None:
            browser.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, MediaStreamError):
                await browser.task
        await engine.close()


async def test_port_held_by_another_process_is_skipped() -> None:
    """A media port some other process holds must not be retried on every attempt."""
    low = 47100
    blockers = []
    for port in range(low + 1, low + 6, 2):  # the odd ports, partners of evens we reserve
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((GATEWAY_IP, port))
        blockers.append(s)
    engine = MediaEngine(public_ip=GATEWAY_IP, bind_ip=GATEWAY_IP, port_range=(low, low + 39))
    await engine.start()
    try:
        for _port in range(low, low + 6, 2):
            engine.ports.allocate_one()  # take the even ports: odd partners are preferred next
        session = engine.create_session("held-ports")
        assert session.webrtc.local_port not in {b.getsockname()[1] for b in blockers}
        await session.close()
        assert engine.ports_in_use() == 3
    finally:
        await engine.close()
        for s in blockers:
            s.close()
