"""Calls the gateway transcodes (or not), through the real chain.

As in tests/integration/test_media_calls.py: aiortc (tests/helpers/webrtc_ua.py) plays the
browser over WebSocket with ICE + DTLS-SRTP, Kamailio is the switch, and the far end
(tests/helpers/rtp_far_end.py) speaks plain RTP on 127.0.0.3. Here the two ends share no
codec: the browser offers only Opus and the far end only G.711 or G.729, so the gateway
must add the switch codecs to the offer ([codecs] switch) and transcode each direction.
Audio is judged by content: each side sends its own tone and must hear the other's, and
the far end must receive its own codec's payload type. A browser that does share a codec
with the far end stays in passthrough. The mode is read back with the NG ``query``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.media.codecs import available_codecs
from gateway.sdp.model import parse as parse_sdp
from gateway.sdp.rewrite import codecs_of
from gateway.transport.ng_client import NgClient
from tests.helpers.gateway import GatewayProcess, serving
from tests.helpers.kamailio import SIPP_IP, Kamailio
from tests.helpers.kamailio import free_port as free_port_on
from tests.helpers.rtp_far_end import RtpFarEnd
from tests.helpers.webrtc_ua import WebRtcUa, use_loopback_ice

pytestmark = pytest.mark.integration

REALM = "example.test"
UA_TONE = 1000.0
FAR_TONE = 600.0
#: Opus and G.729 are lossy: the tone's peak may move by an FFT bin or two.
TOLERANCE = 25.0
#: Static payload types (RFC 3551 §6).
PT = {"PCMU": 0, "PCMA": 8, "G729": 18}
NG_POLL_S = 0.1
NG_POLLS = 30


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    use_loopback_ice(monkeypatch)


@contextlib.asynccontextmanager
async def running_gateway(
    kamailio: Kamailio, tmp_path: Path, request: pytest.FixtureRequest, workers: int
) -> AsyncIterator[GatewayProcess]:
    gw = GatewayProcess.with_media(
        tmp_path,
        kamailio.uri("udp"),
        workers=workers,
        extra={"codecs": {"switch": ["PCMU", "PCMA", "G729"], "opus_complexity": 5}},
    )
    async with serving(gw, request):
        yield gw


@pytest.fixture
async def gateway(
    kamailio: Kamailio, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[GatewayProcess]:
    async with running_gateway(kamailio, tmp_path, request, workers=0) as gw:
        yield gw


async def ng_request(gw: GatewayProcess, body: dict[str, object]) -> dict[str, object]:
    assert gw.control is not None
    client = await NgClient.connect(*gw.control)
    try:
        return await client.request(body)
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def registered(
    gw: GatewayProcess, user: str, password: str, codecs: list[str]
) -> AsyncIterator[WebRtcUa]:
    ua = WebRtcUa(gw.ws_url, user, password, tone_hz=UA_TONE, codecs=codecs)
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


async def no_sessions_left(gw: GatewayProcess) -> bool:
    for _ in range(NG_POLLS):
        reply = await ng_request(gw, {"command": "statistics"})
        media = reply.get("media")
        assert isinstance(media, dict), reply
        if int(media["sessions"]) == 0:
            return True
        await asyncio.sleep(NG_POLL_S)
    return False


def media_summaries(gw: GatewayProcess) -> list[dict[str, Any]]:
    """The per-call media summaries (one JSON line per ended call) in the gateway's log."""
    marker = "= media summary "
    return [
        json.loads(line.split(marker, 1)[1])
        for line in gw.log_text().splitlines()
        if marker in line
    ]


async def metric_becomes(gw: GatewayProcess, name: str, value: float, **labels: str) -> float:
    """The metric's value once it equals ``value`` (or the last one read after ~3 s)."""
    seen = -1.0
    for _ in range(NG_POLLS):
        seen = await gw.metric(name, **labels)
        if seen == value:
            break
        await asyncio.sleep(NG_POLL_S)
    return seen


def check_summary(gw: GatewayProcess, mode: str, codec: str) -> None:
    """The ended call's media summary names its mode and codec and counts its packets."""
    summaries = media_summaries(gw)
    assert len(summaries) == 1, gw.log_text()[-3000:]
    summary = summaries[0]
    assert (summary["mode"], summary["codec"], summary["ended_by"]) == (mode, codec, "delete")
    # The call lasted as long as both tones took to be heard: at least 10 packets of 20 ms.
    assert summary["duration"] > 0.2, summary
    for leg in ("webrtc", "rtp"):
        assert summary["legs"][leg]["rx_packets"] >= 10, summary
        assert summary["legs"][leg]["tx_packets"] >= 10, summary
    if mode == "transcode":
        assert summary["transcode"]["to_rtp"]["packets_out"] >= 10, summary
        assert summary["transcode"]["to_webrtc"]["packets_out"] >= 10, summary
    else:
        assert summary["transcode"] == {}


async def outbound_transcoded_call(gw: GatewayProcess, codec: str) -> None:
    """Opus-only browser -> far end speaking only ``codec``: audio both ways, transcoded."""
    far = RtpFarEnd(free_port_on(SIPP_IP), tone_hz=FAR_TONE, codecs=(codec, "telephone-event"))
    await far.start()
    try:
        async with registered(gw, "alice", "alicepw", ["opus"]) as ua:
            call = await ua.call(f"sip:9{far.port}@{REALM}")
            assert call.status == 200, (call.status, call.sdp_error, gw.log_text()[-3000:])
            assert call.sdp_error is None, call.sdp_error
            # The switch was offered the browser's opus plus the [codecs] switch list.
            offer = parse_sdp(far.received("INVITE")[0].body.decode())
            offered = [c.name for c in codecs_of(offer.media[0])]
            assert offered[0] == "opus" and codec in offered, offered
            # The browser's answer names its own codec.
            answer = parse_sdp(call.remote_sdp or "")
            assert [c.name for c in codecs_of(answer.media[0])][0] == "opus"
            assert await hear(far.dominant_frequency, UA_TONE) == pytest.approx(
                UA_TONE, abs=TOLERANCE
            )
            assert await hear(ua.dominant_frequency, FAR_TONE) == pytest.approx(
                FAR_TONE, abs=TOLERANCE
            )
            assert far.payload_types_seen == {PT[codec]}
            assert (ua.negotiated_codec() or "").lower() == "opus"
            assert await gw.media_mode() == ("transcode", f"opus<->{codec}")
            # The mode is a metric while the call runs (and was counted once as chosen).
            assert await gw.metric("gateway_media_sessions", mode="transcode") == 1
            assert await gw.metric("gateway_media_sessions", mode="passthrough") == 0
            chosen = await gw.metric(
                "gateway_media_modes_chosen_total", mode="transcode", codec=f"opus<->{codec}"
            )
            assert chosen == 1
            await ua.hangup()
            assert await far.wait_ended() == "remote BYE"
        assert await no_sessions_left(gw)
        assert await metric_becomes(gw, "gateway_media_sessions", 0, mode="transcode") == 0
        check_summary(gw, "transcode", f"opus<->{codec}")
    finally:
        await far.close()


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
async def test_opus_only_browser_to_g711_far_end_is_transcoded(
    gateway: GatewayProcess, codec: str
) -> None:
    await outbound_transcoded_call(gateway, codec)
    assert f"transcode opus<->{codec}" in gateway.log_text()


@pytest.mark.skipif(
    available_codecs()["G729"] is not None, reason="libbcg729 is not installed on this machine"
)
async def test_opus_only_browser_to_g729_far_end_is_transcoded(gateway: GatewayProcess) -> None:
    await outbound_transcoded_call(gateway, "G729")


async def test_transcoded_call_in_worker_processes(
    kamailio: Kamailio, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The [codecs] policy reaches the media workers (passed on their command line)."""
    async with running_gateway(kamailio, tmp_path, request, workers=2) as gw:
        await outbound_transcoded_call(gw, "PCMU")


async def test_shared_codec_stays_passthrough(gateway: GatewayProcess) -> None:
    far = RtpFarEnd(free_port_on(SIPP_IP), tone_hz=FAR_TONE, codecs=("PCMU", "telephone-event"))
    await far.start()
    try:
        async with registered(gateway, "alice", "alicepw", ["opus", "PCMU"]) as ua:
            call = await ua.call(f"sip:9{far.port}@{REALM}")
            assert call.status == 200 and call.sdp_error is None, call.sdp_error
            assert await hear(far.dominant_frequency, UA_TONE) == pytest.approx(
                UA_TONE, abs=TOLERANCE
            )
            assert await hear(ua.dominant_frequency, FAR_TONE) == pytest.approx(
                FAR_TONE, abs=TOLERANCE
            )
            assert far.payload_types_seen == {0}
            assert (ua.negotiated_codec() or "").lower() == "pcmu"
            assert await gateway.media_mode() == ("passthrough", "PCMU")
            assert await gateway.metric("gateway_media_sessions", mode="passthrough") == 1
            assert await gateway.metric("gateway_media_sessions", mode="transcode") == 0
            await ua.hangup()
            assert await far.wait_ended() == "remote BYE"
        assert "passthrough PCMU" in gateway.log_text()
        assert await metric_becomes(gateway, "gateway_media_sessions", 0, mode="passthrough") == 0
        check_summary(gateway, "passthrough", "PCMU")
    finally:
        await far.close()


@pytest.mark.skipif(
    available_codecs()["G729"] is not None, reason="libbcg729 is not installed on this machine"
)
async def test_switch_offer_g729_only_browser_answers_opus(
    kamailio: Kamailio, gateway: GatewayProcess
) -> None:
    """The other direction: the switch offers only G.729, the browser answers opus.

    (aiortc answers in the offer's codec order whatever its preferences, so a G.711 offer
    would be answered with G.711: G.729, which aiortc lacks, makes it pick opus.)"""
    far = RtpFarEnd(free_port_on(SIPP_IP), tone_hz=FAR_TONE, codecs=("G729", "telephone-event"))
    await far.start()
    try:
        async with registered(gateway, "bob", "bobpw", ["opus"]) as ua:
            invite = asyncio.ensure_future(far.invite("bob", (kamailio.ip, kamailio.udp_port)))
            incoming = await ua.wait_incoming()
            assert incoming.invite is not None
            # The browser is offered the [codecs] browser list beside the switch's G729.
            offered = [c.name for c in codecs_of(parse_sdp(incoming.invite.body.decode()).media[0])]
            assert offered[:4] == ["G729", "opus", "PCMU", "PCMA"], offered
            answer = await ua.answer(codecs=["opus"])
            assert answer.status == 200
            final = await asyncio.wait_for(invite, 10)
            assert final.status == 200
            # The switch is answered with its own codec.
            plain = parse_sdp(final.body.decode())
            assert [c.name for c in codecs_of(plain.media[0])][0] == "G729"
            assert await hear(far.dominant_frequency, UA_TONE) == pytest.approx(
                UA_TONE, abs=TOLERANCE
            )
            assert await hear(ua.dominant_frequency, FAR_TONE) == pytest.approx(
                FAR_TONE, abs=TOLERANCE
            )
            assert far.payload_types_seen == {PT["G729"]}
            assert (ua.negotiated_codec() or "").lower() == "opus"
            assert await gateway.media_mode() == ("transcode", "opus<->G729")
            assert (await far.send_bye()).status == 200
            assert await ua.wait_ended() == "remote BYE"
    finally:
        await far.close()


#: NTP seconds at the UNIX epoch (RFC 868, RFC 3550 §4).
NTP_UNIX = 2_208_988_800


def rtcp_packets(data: bytes) -> list[tuple[int, bytes]]:
    """(packet type, packet) of each packet of a compound RTCP datagram (RFC 3550 §6.1),
    split by hand so the test does not judge the gateway with its own parser."""
    out = []
    offset = 0
    while offset + 4 <= len(data):
        length = 4 * (int.from_bytes(data[offset + 2 : offset + 4], "big") + 1)
        out.append((data[offset + 1], data[offset : offset + length]))
        offset += length
    assert offset == len(data), data.hex()
    return out


async def rtcp_leg(gw: GatewayProcess, leg: str, ready: Any, timeout: float = 12.0) -> Any:
    """The NG query's ``legs.<leg>.rtcp`` once ``ready(figures)`` holds (or the last read)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        listed = await ng_request(gw, {"command": "list"})
        calls = listed.get("calls")
        assert isinstance(calls, list) and len(calls) == 1, listed
        reply: Any = await ng_request(gw, {"command": "query", "call-id": calls[0]})
        figures = reply["legs"][leg]["rtcp"]
        if ready(figures) or loop.time() > deadline:
            return figures
        await asyncio.sleep(0.25)


@pytest.mark.timeout(90)
async def test_transcoded_call_terminates_rtcp_per_leg(gateway: GatewayProcess) -> None:
    """Transcoding, the two legs carry different streams, so the gateway answers RTCP on
    each leg itself (RFC 3550 §6, as rtpengine does) and forwards none of the browser's.

    The far end must get sender reports about the PCMU stream it receives (its SSRC, a
    packet count no higher than what arrived, an NTP time that is now) with an SDES CNAME;
    the receiver report it sends back about that stream (LSR/DLSR, a cumulative loss of 7)
    must show in the switch leg's figures as a round-trip time and the remote loss; and
    aiortc, the browser, must likewise have its reports read on the WebRTC leg."""
    far = RtpFarEnd(free_port_on(SIPP_IP), tone_hz=FAR_TONE, codecs=("PCMU", "telephone-event"))
    await far.start()
    try:
        async with registered(gateway, "alice", "alicepw", ["opus"]) as ua:
            call = await ua.call(f"sip:9{far.port}@{REALM}")
            assert call.status == 200 and call.sdp_error is None, call.sdp_error
            assert await hear(far.dominant_frequency, UA_TONE) == pytest.approx(
                UA_TONE, abs=TOLERANCE
            )
            assert await gateway.media_mode() == ("transcode", "opus<->PCMU")
            stream = far.rtp
            loop = asyncio.get_running_loop()
            # First report after 2.5 s x 0.5-1.5 (RFC 3550 §6.2), then every 5 s x 0.5-1.5.
            deadline = loop.time() + 10.0
            while loop.time() < deadline and not stream.rtcp_packets:
                await asyncio.sleep(0.1)
            assert stream.rtcp_packets, "no RTCP from the gateway within 10 s"
            arrived, source, datagram = stream.rtcp_packets[0]
            received_then = sum(1 for p in stream.packets if p.time <= arrived)
            parts = rtcp_packets(datagram)
            assert [pt for pt, _ in parts] == [200, 202], datagram.hex()  # SR then SDES
            sr = parts[0][1]
            sender_ssrc, ntp_sec, _, _, sender_packets = struct.unpack_from("!IIIII", sr, 4)
            pcmu_ssrcs = {p.ssrc for p in stream.packets if p.payload_type == 0}
            assert pcmu_ssrcs == {sender_ssrc}  # about the stream the far end gets...
            assert 0 < sender_packets <= received_then + 2  # ...counting what was sent
            assert abs(ntp_sec - NTP_UNIX - time.time()) < 5.0  # NTP time is wall-clock now
            sdes = parts[1][1]
            assert struct.unpack_from("!I", sdes, 4)[0] == sender_ssrc
            assert sdes[8] == 1 and sdes[9] > 0  # CNAME item, not empty
            # Nothing of the browser's RTCP leaks onto the switch leg.
            for _, _, data in stream.rtcp_packets:
                for pt, packet in rtcp_packets(data):
                    assert struct.unpack_from("!I", packet, 4)[0] == sender_ssrc, pt

            # The far end's RR about that stream: LSR = middle 32 bits of the SR's NTP time,
            # DLSR = how long it held the SR, in 1/65536 s (RFC 3550 §6.4.1).
            await asyncio.sleep(0.2)
            lsr = int.from_bytes(sr[10:14], "big")
            dlsr = int((time.monotonic() - arrived) * 65536)
            block = struct.pack("!IIIIII", sender_ssrc, 7, stream.seq, 0, lsr, dlsr)
            rr = struct.pack("!BBHI", 0x81, 201, 7, stream.ssrc) + block
            stream.send_rtcp(rr, source)
            rtp = await rtcp_leg(gateway, "rtp", lambda f: f["remote_packets_lost"] == 7)
            assert rtp["remote_packets_lost"] == 7, rtp
            assert rtp["reports_received"] >= 1 and rtp["reports_sent"] >= 1, rtp
            # Round trip on loopback: the figure exists and is small (bencode: whole ms).
            assert isinstance(rtp["rtt_ms"], int) and 0 <= rtp["rtt_ms"] < 50, rtp
            assert rtp["packets_received"] >= 50 and rtp["packets_lost"] == 0, rtp

            # The browser's leg: aiortc's reports are read (its RR on our SR gives an RTT).
            webrtc = await rtcp_leg(gateway, "webrtc", lambda f: isinstance(f["rtt_ms"], int))
            assert webrtc["reports_received"] >= 1 and webrtc["reports_sent"] >= 1, webrtc
            assert isinstance(webrtc["rtt_ms"], int) and webrtc["rtt_ms"] < 50, webrtc
            assert webrtc["packets_received"] >= 50, webrtc
            await ua.hangup()
            assert await far.wait_ended() == "remote BYE"
        # The ended call's summary carries the same figures, with their decimals.
        summary = media_summaries(gateway)[0]
        assert summary["legs"]["rtp"]["rtcp"]["remote_packets_lost"] == 7, summary
        assert isinstance(summary["legs"]["rtp"]["rtcp"]["rtt_ms"], float), summary
    finally:
        await far.close()
