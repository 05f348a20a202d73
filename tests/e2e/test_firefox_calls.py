"""Real Firefox calls through the gateway: Firefox ESR + SIP.js, Kamailio, an RTP far end.

Everything here is real, as in test_browser_calls.py, with Firefox in Chromium's place: the
system's Firefox (Debian's firefox-esr) runs the same SIP.js webphone page
(tests/clients/sipjs/, driven through puppeteer-core over WebDriver BiDi by
tests/helpers/browser.py), its own WebRTC stack does ICE, DTLS-SRTP and Opus; the gateway daemon
anchors the media; Kamailio routes ``9<port>`` to RtpFarEnd (tests/helpers/rtp_far_end.py),
which speaks SIP over UDP, sends a 600 Hz tone and decodes what it receives. Nothing is mocked.

Firefox's fake microphone is its built-in sine generator; the harness sets its frequency
(pref media.navigator.audio.fake_frequency, 1000 Hz by default) to FIREFOX_TONE_HZ, which is
not the default, so hearing it proves the tone is Firefox's microphone and not anyone else's.

Media address: Firefox gathers no loopback host candidates, whatever
media.peerconnection.ice.loopback says, and does not pair its own non-loopback candidates
with a loopback one, so a gateway advertising 127.0.0.2 is unreachable for it. These tests
run the gateway's media on the machine's own IPv4 address instead (the one holding the
default route; the traffic still never leaves the machine) and are skipped where there is
none. Signalling stays on 127.0.0.2.

What Firefox offers differs from Chromium (shared PITFALLS, "What the two browsers' SDP looks
like"): telephone-event/8000 only, beside opus/48000; no CN, no RED; session-level
a=sendrecv and a=fingerprint; on hold a=sendonly at media level under a session-level
a=sendrecv. The tests check the offers they got against that.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.media.codecs import available_codecs
from gateway.media.ng import DTMF_MIN_TO_SWITCH_MS
from gateway.sdp.model import parse as parse_sdp
from tests.e2e.test_browser_calls import (
    DTMF_DURATION_MS,
    EVENT_CODES,
    FAR_TONE_HZ,
    HELD_PACKETS_MAX,
    LEVEL_THRESHOLD,
    PACKETS_PER_SECOND_MIN,
    POLL_S,
    STEP_TIMEOUT_S,
    TOLERANCE_HZ,
    audio_direction,
    browser_offer_codecs,
    browser_receives_tone,
    call_far_end,
    clean_bindings,
    far_hears,
    hang_up_from_browser,
    offered_codecs,
    opus_only_call,
    packets_in_one_second,
    register,
    running_gateway,
)
from tests.helpers.browser import BrowserPhone
from tests.helpers.gateway import GatewayProcess
from tests.helpers.kamailio import SIPP_IP, Kamailio
from tests.helpers.kamailio import free_port as free_port_on
from tests.helpers.rtp_far_end import ReceivedRtp, RtpFarEnd

__all__ = ["clean_bindings"]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

FIREFOX_TONE_HZ = 800.0
"""Firefox's fake microphone tone in these tests (its own default is 1000 Hz)."""
FIREFOX_OFFER = ["opus/48000", "G722/8000", "PCMU/8000", "PCMA/8000", "telephone-event/8000"]
"""Firefox ESR 153's audio codecs, in its order (no CN, no RED, no telephone-event/48000)."""
GATEWAY_ADDED = {"G729/8000"}
"""Codecs the gateway may add to the plain offer (codecs.switch, G.729 when it loads)."""
DIGITS = "0123456789*#"
SWITCH_CLOCK = 8000
OPUS_CLOCK = 48000
PACKET_MS = 20
"""Firefox sends an audio packet, and so at most one telephone-event update, every 20 ms."""
TE_UNITS_REQUESTED = DTMF_DURATION_MS * SWITCH_CLOCK // 1000
"""A 100 ms digit in the telephone-event/8000 clock Firefox negotiated: 800 units. On a
PCMU call (one 8000 clock for audio and events) this is what the far end gets."""
OPUS_PACKET_UNITS = PACKET_MS * OPUS_CLOCK // 1000
"""The RTP timestamp step of one 20 ms Opus packet: 960 at 48000."""
FIREFOX_TE_UNITS = (
    -(-TE_UNITS_REQUESTED // OPUS_PACKET_UNITS) * OPUS_PACKET_UNITS * SWITCH_CLOCK // OPUS_CLOCK
)
"""What an Opus Firefox's 100 ms digit is on the wire, rescaled to 8000: 160 units (20 ms).
Firefox (libwebrtc) measures an event's length in the telephone-event clock (800 units for
100 ms) but its elapsed duration in RTP timestamps of the Opus stream it rides in (48000),
and ends the event at the first packet whose elapsed duration reaches the length: 960 >= 800
already at the first packet. So the event is one packet long, 960 at 48000, which rescales
(÷ 6) to 160 at 8000. In general a digit lasts a sixth of what was asked, rounded up to
whole 20 ms packets (200 ms: 320 at 8000; 400 ms: 640)."""
TRANSCODED_TE_UNITS = max(FIREFOX_TE_UNITS, DTMF_MIN_TO_SWITCH_MS * SWITCH_CLOCK // 1000)
"""What the far end gets: the gateway reports events toward the switch at no less than
DTMF_MIN_TO_SWITCH_MS (100 ms: 800 units), so Firefox's 20 ms digits stay detectable. Exact,
no tolerance: durations are whole packets, and any other value means a different
packetisation, clock mapping or minimum."""
PASSTHROUGH_TE_TOLERANCE = PACKET_MS * SWITCH_CLOCK // 1000
"""One 20 ms packet at 8000 (160 units): Firefox rounds a tone to whole packets."""
PT_G729 = 18
"""G.729's static payload type (RFC 3551 §6)."""
END_PACKETS = 3
"""End-of-event packets per event, as Firefox (libwebrtc) sends them."""
SDPARTA = re.compile(
    r"^v=0\r?\n^o=mozilla\.\.\.THIS_IS_SDPARTA.*?(?=\n\s*\n|\n\d{4}-\d\d-\d\d |\Z)", re.M | re.S
)


# ---------------------------------------------------------------------------- fixtures


def machine_ipv4() -> str | None:
    """The machine's own IPv4 address toward its default route (no packet is sent), or None
    when there is no such route or it is a loopback address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("203.0.113.1", 9))  # TEST-NET-3: only the route is looked up
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


@pytest.fixture
def media_ip() -> str:
    """The address the gateway anchors media on for Firefox (see the module docstring)."""
    address = machine_ipv4()
    if address is None:
        pytest.skip("no non-loopback IPv4 address: Firefox cannot reach a loopback-only gateway")
    return address


@pytest.fixture
async def gateway(
    kamailio: Kamailio, tmp_path: Path, request: pytest.FixtureRequest, media_ip: str
) -> AsyncIterator[GatewayProcess]:
    """The gateway, media in-process on ``media_ip`` (SIP and WebSocket on 127.0.0.2)."""
    extra: dict[str, dict[str, object]] = {"media": {"public_ip": media_ip, "bind_ip": media_ip}}
    async with running_gateway(
        kamailio, tmp_path / "gateway", request, workers=0, extra=extra
    ) as gw:
        yield gw


@pytest.fixture
async def firefox(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[BrowserPhone]:
    """One headless Firefox with the webphone page; console log + screenshot on failure; no
    Firefox process left afterwards."""
    phone = await BrowserPhone.start(tmp_path / "phone", browser="firefox", tone_hz=FIREFOX_TONE_HZ)
    try:
        yield phone
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            saved = await phone.save_artifacts(f"test failed: {request.node.name}")
            print(f"---- browser artifacts: {saved}")
        await phone.close()
    assert phone.browser_processes() == []


@pytest.fixture
async def far() -> AsyncIterator[RtpFarEnd]:
    """A PCMU + telephone-event far end on 127.0.0.3 (Kamailio routes 9<port> to it)."""
    end = RtpFarEnd(free_port_on(SIPP_IP), tone_hz=FAR_TONE_HZ, codecs=("PCMU", "telephone-event"))
    await end.start()
    try:
        yield end
    finally:
        await end.close()


# ---------------------------------------------------------------------------- helpers


def firefox_sdps(gateway_log: str) -> list[str]:
    """Firefox's SDP bodies in the gateway's SIP trace (its o= line names it), in order, each
    once (a digest retry repeats the body)."""
    found: list[str] = []
    for match in SDPARTA.finditer(gateway_log):
        body = match.group(0).replace("\r\n", "\n").strip()
        if not found or found[-1] != body:
            found.append(body)
    return found


def session_part(sdp: str) -> list[str]:
    """The session-level lines of an SDP (before the first m= line)."""
    return sdp.split("\nm=", 1)[0].splitlines()


def media_part(sdp: str) -> list[str]:
    """The lines of the first media section of an SDP."""
    return ("m=" + sdp.split("\nm=", 1)[1]).splitlines()


def events_by_timestamp(far: RtpFarEnd, payload_type: int) -> list[list[ReceivedRtp]]:
    """The far end's received packets of ``payload_type`` grouped into RFC 4733 events by
    their RTP timestamp (one per event, RFC 4733 §2.5.1.2), in arrival order. Unlike
    test_browser_calls.event_packets this does not split at marker bits, which Firefox sets
    on every end packet of a one-packet event."""
    events: dict[int, list[ReceivedRtp]] = {}
    for packet in far.rtp.packets:
        if packet.payload_type == payload_type:
            events.setdefault(packet.timestamp, []).append(packet)
    return list(events.values())


def event_duration(event: list[ReceivedRtp]) -> int:
    """The duration field (RFC 4733 §2.3.5) of an event's last packet."""
    return int.from_bytes(event[-1].payload[2:4], "big")


async def wait_events(far: RtpFarEnd, payload_type: int, count: int) -> None:
    """Wait until ``count`` RFC 4733 events arrived, all ended and their end packets in."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STEP_TIMEOUT_S
    while loop.time() < deadline:
        events = events_by_timestamp(far, payload_type)
        ends = [sum(1 for p in e if p.payload[1] & 0x80) for e in events]
        if len(events) >= count and all(n >= END_PACKETS for n in ends):
            return
        await asyncio.sleep(POLL_S)


# ---------------------------------------------------------------------------- tests


async def test_firefox_registers_and_calls_a_pcmu_far_end(
    gateway: GatewayProcess,
    media_ip: str,
    firefox: BrowserPhone,
    far: RtpFarEnd,
    clean_bindings: None,
) -> None:
    """Firefox registers and calls a PCMU far end: the call connects, each side hears the
    other's tone, Firefox hangs up and the far end gets BYE. Firefox's own offer and the
    plain offer the far end got from it are what Firefox really sends."""
    assert firefox.info["browser"] == "firefox" and "Firefox/" in firefox.info["user_agent"]
    registered = await register(firefox, gateway.ws_url, "alice")
    assert registered["event"] == "onRegistered", registered
    await call_far_end(firefox, far)

    # Firefox's WebRTC offer, as the gateway received it.
    log = gateway.log_text()
    assert browser_offer_codecs(log) == FIREFOX_OFFER
    offer = firefox_sdps(log)[0]
    assert "a=sendrecv" in session_part(offer), offer  # direction at session level too...
    assert any(line.startswith("a=fingerprint:") for line in session_part(offer)), offer
    assert "a=end-of-candidates" in media_part(offer), offer
    # The far end's plain offer: Firefox's codecs, payload types and order kept (G.729 may
    # be added by the gateway), on the gateway's media address, no WebRTC attributes.
    invite = far.received("INVITE")[0]
    codecs = offered_codecs(invite.body)
    print(f"Firefox's offer as the far end got it: {codecs}")
    assert [c for c in codecs.values() if c not in GATEWAY_ADDED] == FIREFOX_OFFER, codecs
    assert codecs[109] == "opus/48000" and codecs[101] == "telephone-event/8000", codecs
    plain = parse_sdp(invite.body.decode())
    assert plain.media[0].proto == "RTP/AVP"
    assert plain.connection_for(plain.media[0]).address == media_ip  # type: ignore[union-attr]
    assert b"a=fingerprint" not in invite.body and b"a=ice-ufrag" not in invite.body
    assert b"a=candidate" not in invite.body and b"a=rtcp-fb" not in invite.body

    # PCMU end to end, relayed as it is.
    assert await gateway.media_mode() == ("passthrough", "PCMU")
    assert await far_hears(far, FIREFOX_TONE_HZ) == pytest.approx(FIREFOX_TONE_HZ, abs=TOLERANCE_HZ)
    assert far.payload_types_seen == {0}
    assert await browser_receives_tone(firefox) > LEVEL_THRESHOLD
    assert await packets_in_one_second(firefox) >= PACKETS_PER_SECOND_MIN
    stats = await firefox.get_stats()
    assert stats["connectionState"] == "connected", stats
    assert stats["codec"]["mimeType"].lower() == "audio/pcmu", stats
    assert stats["selectedPair"]["remote"].startswith(f"{media_ip}:"), stats

    # RFC 4733 on this PCMU call: telephone-event/8000 beside PCMU/8000, one clock, so
    # Firefox's 100 ms digits arrive as 800-unit events (start, updates, three ends).
    te_pt = far.telephone_event_payload_type
    assert te_pt == 101, te_pt
    await firefox.send_dtmf("5#", "rfc4733", durationMs=DTMF_DURATION_MS)
    await wait_events(far, te_pt, 2)
    events = events_by_timestamp(far, te_pt)
    print(f"passthrough telephone-event durations: {[event_duration(e) for e in events]}")
    assert [e[0].payload[0] for e in events] == [EVENT_CODES["5"], EVENT_CODES["#"]], events
    for event in events:
        assert event[0].marker and not any(p.marker for p in event[1:]), event
        assert sum(1 for p in event if p.payload[1] & 0x80) == END_PACKETS, event
        assert abs(event_duration(event) - TE_UNITS_REQUESTED) <= PASSTHROUGH_TE_TOLERANCE, event

    await hang_up_from_browser(firefox, far)


async def test_opus_only_firefox_sends_rfc4733_digits_through_the_transcoder(
    gateway: GatewayProcess, firefox: BrowserPhone, clean_bindings: None
) -> None:
    """An Opus-only Firefox (codecDelete keeps opus and telephone-event/8000) calls a PCMU +
    telephone-event far end: the gateway transcodes, the far end hears Firefox's tone, and
    "0123456789*#" sent as RFC 4733 events reaches the far end on its telephone-event type,
    every digit in order, each ended, then audio carries on."""
    async with RtpFarEnd(
        free_port_on(SIPP_IP), tone_hz=FAR_TONE_HZ, codecs=("PCMU", "telephone-event")
    ) as far:
        await opus_only_call(firefox, gateway, far, FIREFOX_TONE_HZ)
        assert browser_offer_codecs(gateway.log_text()) == ["opus/48000", "telephone-event/8000"]
        te_pt = far.telephone_event_payload_type
        assert te_pt is not None, offered_codecs(far.received("INVITE")[0].body)
        assert offered_codecs(far.received("INVITE")[0].body)[te_pt] == "telephone-event/8000"
        assert await browser_receives_tone(firefox) > LEVEL_THRESHOLD
        stats = await firefox.get_stats()
        assert stats["codec"]["mimeType"].lower() == "audio/opus", stats

        # Firefox can insert DTMF only because the gateway answered telephone-event/8000
        # beside opus; without it SIP.js reports that it cannot send RFC 4733.
        await firefox.send_dtmf(DIGITS, "rfc4733", durationMs=DTMF_DURATION_MS)
        played = [await firefox.wait_for("onDtmfSent", timeout=STEP_TIMEOUT_S) for _ in DIGITS]
        assert "".join(e["digit"] for e in played) == DIGITS
        await wait_events(far, te_pt, len(DIGITS))
        events = events_by_timestamp(far, te_pt)
        durations = [event_duration(e) for e in events]
        print(f"telephone-event durations at the far end (8000 clock): {durations}")

        # Every digit, in order, with its RFC 4733 §3.2 code, on the far end's type only,
        # each ended...
        assert [e[0].payload[0] for e in events] == [EVENT_CODES[d] for d in DIGITS], events
        assert far.payload_types_seen == {0, te_pt}
        folded = far.rtp.telephone_events(te_pt)
        assert "".join(e.symbol for e in folded) == DIGITS, folded
        assert all(e.end for e in folded), folded
        for event in events:
            # ...as Firefox sends a digit whose length one packet already covers (see
            # FIREFOX_TE_UNITS): no start or update packet, only the three end packets, all
            # three with the marker bit (each counts as the event's first). The gateway
            # relays them one for one, the marker on the first only (RFC 4733 §2.5.1.1: a
            # receiver may count every marked packet as a new digit)...
            assert len(event) == END_PACKETS, event
            assert all(p.payload[1] & 0x80 for p in event), event
            assert [p.marker for p in event] == [True, False, False], event
            # ...and reports it at the gateway's minimum toward the switch, not the 20 ms
            # (160 at 8000) Firefox played.
            assert {int.from_bytes(p.payload[2:4], "big") for p in event} == {
                TRANSCODED_TE_UNITS
            }, durations

        # Audio carries on after the events.
        last_event = max(p.time for e in events for p in e)
        await asyncio.sleep(1.2)
        after = [p for p in far.rtp.packets if p.payload_type == 0 and p.time > last_event]
        assert len(after) >= PACKETS_PER_SECOND_MIN, len(after)
        assert far.dominant_frequency(last_seconds=1.0) == pytest.approx(
            FIREFOX_TONE_HZ, abs=TOLERANCE_HZ
        )
        await hang_up_from_browser(firefox, far)


async def test_firefox_hold_and_unhold(
    gateway: GatewayProcess, firefox: BrowserPhone, far: RtpFarEnd, clean_bindings: None
) -> None:
    """Firefox holds (a=sendonly at media level under a session-level a=sendrecv): the far end
    is offered sendonly, answers recvonly and stops sending; unhold resumes audio both ways.
    The far end hangs up."""
    assert (await register(firefox, gateway.ws_url, "alice"))["event"] == "onRegistered"
    await call_far_end(firefox, far)
    assert await far_hears(far, FIREFOX_TONE_HZ) == pytest.approx(FIREFOX_TONE_HZ, abs=TOLERANCE_HZ)
    assert await browser_receives_tone(firefox) > LEVEL_THRESHOLD

    await firefox.hold()
    assert (await firefox.wait_for("onHold"))["held"] is True
    # What Firefox sent: media-level sendonly, session level still sendrecv (RFC 8866 §6.7:
    # the media level wins).
    held_offer = firefox_sdps(gateway.log_text())[-1]
    assert "a=sendrecv" in session_part(held_offer), held_offer
    assert "a=sendonly" in media_part(held_offer), held_offer
    reinvites = far.received("INVITE")
    assert len(reinvites) == 2, [r.body for r in reinvites]
    assert audio_direction(reinvites[1].body) == "sendonly"
    assert far.call is not None and far.call.local_direction == "recvonly"
    await asyncio.sleep(0.5)  # packets already in flight
    held = await packets_in_one_second(firefox)
    assert held <= HELD_PACKETS_MAX, f"{held} packets reached Firefox while held"

    await firefox.unhold()
    assert (await firefox.wait_for("onHold"))["held"] is False
    resumed_offer = firefox_sdps(gateway.log_text())[-1]
    assert "a=sendrecv" in media_part(resumed_offer), resumed_offer
    reinvites = far.received("INVITE")
    assert len(reinvites) == 3
    assert audio_direction(reinvites[2].body) == "sendrecv"
    assert far.call.local_direction == "sendrecv"
    assert await packets_in_one_second(firefox) >= PACKETS_PER_SECOND_MIN
    assert await browser_receives_tone(firefox) > LEVEL_THRESHOLD
    assert await far_hears(far, FIREFOX_TONE_HZ) == pytest.approx(FIREFOX_TONE_HZ, abs=TOLERANCE_HZ)

    assert (await far.send_bye()).status == 200
    ended = await firefox.wait_for("onEnd", timeout=STEP_TIMEOUT_S)
    assert ended["cause"] == "remote_hangup", ended


@pytest.mark.skipif(
    available_codecs()["G729"] is not None, reason="libbcg729 is not installed on this machine"
)
async def test_g729_caller_reaches_firefox_and_gets_its_rfc4733_digits(
    kamailio: Kamailio, gateway: GatewayProcess, firefox: BrowserPhone, clean_bindings: None
) -> None:
    """The other direction: a far end offering only G.729 + telephone-event/8000 calls
    Firefox (auto-answer). Firefox has no G.729, so the gateway offers it the [codecs]
    browser list beside it and transcodes to whatever Firefox answers; Firefox answers
    telephone-event/8000 (its only rate), and its RFC 4733 digits reach the caller on the
    caller's telephone-event type, each reported at >= 100 ms with one marker."""
    async with RtpFarEnd(
        free_port_on(SIPP_IP), tone_hz=FAR_TONE_HZ, codecs=("G729", "telephone-event")
    ) as far:
        registered = await register(firefox, gateway.ws_url, "bob", autoAnswer=True)
        assert registered["event"] == "onRegistered", registered
        inviting = asyncio.ensure_future(far.invite("bob", (kamailio.ip, kamailio.udp_port)))
        try:
            incoming = await firefox.wait_for("onIncoming", timeout=STEP_TIMEOUT_S)
            assert incoming["autoAnswer"] is True
            final = await asyncio.wait_for(inviting, STEP_TIMEOUT_S)
        finally:
            if not inviting.done():
                inviting.cancel()
            await asyncio.gather(inviting, return_exceptions=True)
        assert final.status == 200, final
        # The caller is answered in its own codec and telephone-event.
        answered = offered_codecs(final.body)
        assert list(answered.values())[0] == "G729/8000", answered
        te_pt = far.telephone_event_payload_type
        assert te_pt is not None and answered[te_pt] == "telephone-event/8000", answered
        await firefox.wait_for("onAnswer", timeout=STEP_TIMEOUT_S)
        mode, codec = await gateway.media_mode()
        assert mode == "transcode" and codec.endswith("<->G729"), (mode, codec)
        assert await far_hears(far, FIREFOX_TONE_HZ) == pytest.approx(
            FIREFOX_TONE_HZ, abs=TOLERANCE_HZ
        )
        assert await browser_receives_tone(firefox) > LEVEL_THRESHOLD

        digits = "*5#"
        await firefox.send_dtmf(digits, "rfc4733", durationMs=DTMF_DURATION_MS)
        played = [await firefox.wait_for("onDtmfSent", timeout=STEP_TIMEOUT_S) for _ in digits]
        assert "".join(e["digit"] for e in played) == digits
        await wait_events(far, te_pt, len(digits))
        events = events_by_timestamp(far, te_pt)
        print(
            f"{codec}: telephone-event durations at the caller: {[event_duration(e) for e in events]}"
        )
        assert [e[0].payload[0] for e in events] == [EVENT_CODES[d] for d in digits], events
        for event in events:
            assert [p.marker for p in event][:1] == [True], event
            assert not any(p.marker for p in event[1:]), event
            assert sum(1 for p in event if p.payload[1] & 0x80) == END_PACKETS, event
            assert event_duration(event) >= DTMF_MIN_TO_SWITCH_MS * SWITCH_CLOCK // 1000, event
        assert far.payload_types_seen == {PT_G729, te_pt}
        assert (await far.send_bye()).status == 200
        ended = await firefox.wait_for("onEnd", timeout=STEP_TIMEOUT_S)
        assert ended["cause"] == "remote_hangup", ended
