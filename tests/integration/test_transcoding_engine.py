"""Opus <-> PCMU transcoding through the real media engine, without SIP.

aiortc plays a browser that offers ONLY Opus (its encoder: 48 kHz stereo via PyAV); the
gateway's answer (written by hand from the engine's parameters, as the SDP rewriter would)
accepts Opus on the WebRTC leg, and both pipelines get an RtpTranscoder: Opus -> PCMU toward
the switch, PCMU -> Opus toward the browser. A plain UDP socket plays a switch that only
speaks PCMU. The browser's 1 kHz tone must arrive at the far end as PCMU at 1 kHz with a
clean RTP stream, and the far end's PCMU tone must arrive at aiortc (decoding Opus) at 1 kHz.

Helpers (the sine track, the far end, FFT peak, waits, loopback-only ICE) are those of
tests/integration/test_media_engine.py. Addresses: aiortc on 127.0.0.1, gateway on
127.0.0.2, far end on 127.0.0.3.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

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

from gateway.media.transcode import RtpTranscoder, make_transcoder
from gateway.transport.media import MediaEngine, MediaSession
from tests.integration.test_media_engine import (
    GATEWAY_IP,
    PCMU,
    RATE,
    SWITCH_IP,
    TONE_HZ,
    Browser,
    FarEnd,
    SineTrack,
    dominant_hz,
    loopback_only,  # noqa: F401  (autouse fixture: aiortc gathers on 127.0.0.1 only)
    wait_for,
)

pytestmark = pytest.mark.integration

PORT_RANGE = (43000, 43999)
"""Not the range of test_media_engine.py, so both modules can run at once."""
FREQ_TOLERANCE_HZ = 25.0
"""FFT bin width of 25 packets (0.5 s) at 8 kHz is 2 Hz; the margin covers a few bins."""
SENT_LEVEL_DB = -15.2
"""RMS of the 8000-peak test tone both ends send, in dB re full scale."""
LEVEL_TOLERANCE_DB = 6.0
"""Measured: -15.7 dB at aiortc, -18.3 dB at the far end (aiortc's PyAV resampler upmixes
the mono track to stereo at -3 dB before encoding Opus; the unit tests pin the transcoder's
own level error below 1 dB)."""


class StereoBrowser(Browser):
    """aiortc decodes Opus to 48 kHz interleaved stereo: keep the left channel at 8 kHz
    (Opus from an 8 kHz encoder carries nothing above 4 kHz, so decimation cannot alias)."""

    async def _drain(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, AudioFrame)
                self.frames += 1
                pcm = frame.to_ndarray().reshape(-1)[:: len(frame.layout.channels)]
                self.samples.append(pcm[:: frame.sample_rate // RATE])
                del self.samples[:-100]


class RecordingFarEnd(FarEnd):
    """The far end, also keeping (sequence, timestamp) of each packet it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[tuple[int, int]] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        super().datagram_received(data, addr)
        if len(data) >= 12 and not 192 <= data[1] <= 223:
            self.headers.append(struct.unpack_from("!HI", data, 2))
            del self.headers[:-200]


def opus_answer(session: MediaSession, mid: str, pt: int) -> str:
    """The gateway's answer accepting Opus only (RFC 7587 §7: opus/48000/2)."""
    algorithm, value = session.webrtc.fingerprint.split(" ", 1)
    port = session.webrtc.local_port
    lines = [
        "v=0",
        f"o=- 1 1 IN IP4 {GATEWAY_IP}",
        "s=-",
        "t=0 0",
        "a=ice-lite",
        f"a=group:BUNDLE {mid}",
        f"m=audio {port} UDP/TLS/RTP/SAVPF {pt}",
        f"c=IN IP4 {GATEWAY_IP}",
        f"a=mid:{mid}",
        "a=sendrecv",
        "a=rtcp-mux",
        f"a=ice-ufrag:{session.webrtc.ice_ufrag}",
        f"a=ice-pwd:{session.webrtc.ice_pwd}",
        f"a=fingerprint:{algorithm} {value}",
        f"a=setup:{session.webrtc.dtls_role}",
        f"a=rtpmap:{pt} opus/48000/2",
        f"a=candidate:1 1 udp 2130706431 {GATEWAY_IP} {port} typ host",
        "a=end-of-candidates",
    ]
    return "\r\n".join(lines) + "\r\n"


@dataclass
class TranscodedCall:
    session: MediaSession
    browser: StereoBrowser
    far: RecordingFarEnd
    to_rtp: RtpTranscoder
    to_webrtc: RtpTranscoder
    offer: SessionDescription


@contextlib.asynccontextmanager
async def open_opus_call() -> AsyncIterator[TranscodedCall]:
    engine = MediaEngine(public_ip=GATEWAY_IP, bind_ip=GATEWAY_IP, port_range=PORT_RANGE)
    await engine.start()
    loop = asyncio.get_running_loop()
    far_transport, far = await loop.create_datagram_endpoint(
        RecordingFarEnd, local_addr=(SWITCH_IP, 0)
    )
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    browser = StereoBrowser(pc)
    try:
        transceiver = pc.addTransceiver(SineTrack(), direction="sendrecv")
        codecs = RTCRtpSender.getCapabilities("audio").codecs
        transceiver.setCodecPreferences([c for c in codecs if c.mimeType == "audio/opus"])

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            browser.task = asyncio.ensure_future(browser._drain(track))

        await pc.setLocalDescription(await pc.createOffer())
        offer = SessionDescription.parse(pc.localDescription.sdp)
        media = offer.media[0]
        assert media.ice is not None and media.dtls is not None
        assert media.ice.usernameFragment is not None and media.ice.password is not None
        opus_pt = media.rtp.codecs[0].payloadType
        assert opus_pt is not None

        session = engine.create_session("call-opus")
        fingerprint = media.dtls.fingerprints[0]
        session.set_webrtc_remote(
            ice_ufrag=media.ice.usernameFragment,
            ice_pwd=media.ice.password,
            fingerprint=(fingerprint.algorithm, fingerprint.value),
            setup="actpass",
            candidates=[(c.ip, c.port) for c in media.ice_candidates],
        )
        session.set_rtp_remote(address=SWITCH_IP, port=far.port, rtcp_port=None)
        session.set_payload_map(to_rtp={PCMU: PCMU}, to_webrtc={opus_pt: opus_pt})
        to_rtp = make_transcoder("opus", "PCMU", in_pt=opus_pt, out_pt=PCMU)
        to_webrtc = make_transcoder("PCMU", "opus", in_pt=PCMU, out_pt=opus_pt)
        session.set_transcoder("to_rtp", to_rtp)
        session.set_transcoder("to_webrtc", to_webrtc)
        answer = opus_answer(session, media.rtp.muxId, opus_pt)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await wait_for(lambda: pc.connectionState == "connected", 10, "aiortc connected")
        far.start_tone((GATEWAY_IP, session.rtp.local_port))
        yield TranscodedCall(session, browser, far, to_rtp, to_webrtc, offer)
    finally:
        await far.stop_tone()
        await pc.close()
        if browser.task is not None:
            browser.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, MediaStreamError):
                await browser.task
        far_transport.close()
        await engine.close()


def level_db(x: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    return float(20 * np.log10(max(rms, 1e-9) / 32767))


async def test_opus_browser_and_pcmu_far_end_hear_each_other() -> None:
    async with open_opus_call() as call:
        offered = {c.mimeType for c in call.offer.media[0].rtp.codecs}
        assert offered == {"audio/opus"}  # the browser offers nothing the switch speaks
        await wait_for(
            lambda: call.far.packets >= 50 and call.browser.frames >= 50, 10, "50 packets each way"
        )
        # Browser -> switch: PCMU at 1 kHz, one SSRC, seq +1 and ts +160 per packet.
        assert call.far.payload_types == {PCMU}
        assert len(call.far.ssrcs) == 1
        assert {len(p) for p in call.far.payloads} == {160}
        heads = call.far.headers[-40:]
        steps = {
            ((heads[i + 1][0] - heads[i][0]) % 2**16, (heads[i + 1][1] - heads[i][1]) % 2**32)
            for i in range(len(heads) - 1)
        }
        assert steps == {(1, 160)}
        far_audio = call.far.recent_audio()
        assert abs(dominant_hz(far_audio, RATE) - TONE_HZ) < FREQ_TOLERANCE_HZ
        assert abs(level_db(far_audio) - SENT_LEVEL_DB) < LEVEL_TOLERANCE_DB
        # Switch -> browser: aiortc decodes the gateway's Opus back to the 1 kHz tone.
        browser_audio = call.browser.recent_audio()
        assert abs(dominant_hz(browser_audio, RATE) - TONE_HZ) < FREQ_TOLERANCE_HZ
        assert abs(level_db(browser_audio) - SENT_LEVEL_DB) < LEVEL_TOLERANCE_DB
        # Nothing was dropped on the way: both transcoders saw clean streams.
        for t in (call.to_rtp, call.to_webrtc):
            stats = t.stats()
            drops = {k: v for k, v in stats.items() if k.startswith("drop_") and v}
            assert drops == {}, drops
            assert stats["packets_out"] >= 50
        session = call.session.stats
        assert session["webrtc"]["drops"]["payload_type"] == 0  # type: ignore[index]
        assert session["rtp"]["tx_packets"] == call.to_rtp.packets_out  # type: ignore[index]
