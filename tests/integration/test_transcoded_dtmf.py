"""RFC 4733 telephone-events through a transcoded call, switch -> browser, end to end.

The chain of tests/integration/test_transcoding_calls.py: aiortc plays an Opus-only browser
(tests/helpers/webrtc_ua.py, over WebSocket, ICE + DTLS-SRTP), Kamailio is the switch and
the far end (tests/helpers/rtp_far_end.py) speaks PCMU + telephone-event/8000 on
127.0.0.3, so the gateway transcodes (opus<->PCMU). The browser offers
``telephone-event/48000`` beside Opus as Chromium does; aiortc has no such codec, so the UA
records the event packets itself, after SRTP, before aiortc's RTP router drops them.

The far end sends DTMF as RFC 4733 events in its RTP stream (marker on the first packet, an
update every 20 ms, three end packets with the E bit: RFC 4733 §2.5.1). The browser must
receive, on its own telephone-event payload type, every event in order with the same code,
each event's packets sharing one start timestamp (RFC 4733 §2.5.1.2, §2.3.5), durations and
timestamps scaled from the 8000 clock to the 48000 one (×6, RFC 4733 §2.1: the event clock
is the audio stream's), and the three end packets still three packets. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.media.codecs import available_codecs
from tests.helpers.gateway import GatewayProcess, serving
from tests.helpers.kamailio import SIPP_IP, Kamailio
from tests.helpers.kamailio import free_port as free_port_on
from tests.helpers.rtp_far_end import (
    DTMF_DURATION,
    DTMF_END_PACKETS,
    FAR_END_IP,
    SAMPLES_PER_PACKET,
    TELEPHONE_EVENT,
    RtpFarEnd,
    RtpStream,
    SentEvent,
)
from tests.helpers.webrtc_ua import (
    TELEPHONE_EVENT_PT,
    ReceivedEventPacket,
    WebRtcUa,
    telephone_event_types,
    use_loopback_ice,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REALM = "example.test"
UA_TONE = 1000.0
FAR_TONE = 600.0
#: Opus is lossy: the tone's peak may move by an FFT bin or two.
TOLERANCE = 25.0
BROWSER_CLOCK = 48000
SWITCH_CLOCK = 8000
SCALE = BROWSER_CLOCK // SWITCH_CLOCK
"""Ticks at 48000 per tick at 8000: durations and timestamp steps grow ×6."""
#: RFC 4733 §3.2 event codes of the DTMF symbols.
EVENT_CODES = {**{str(d): d for d in range(10)}, "*": 10, "#": 11}
DIGITS = "159#"
HEAR_TIMEOUT_S = 8.0
EVENTS_TIMEOUT_S = 5.0
POLL_S = 0.05


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    use_loopback_ice(monkeypatch)


@pytest.fixture
async def gateway(
    kamailio: Kamailio, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[GatewayProcess]:
    """The gateway with in-process media and the transcoding policy on."""
    gw = GatewayProcess.with_media(
        tmp_path, kamailio.uri("udp"), extra={"codecs": {"switch": ["PCMU", "PCMA"]}}
    )
    async with serving(gw, request):
        yield gw


@pytest.fixture
async def far() -> AsyncIterator[RtpFarEnd]:
    """A far end that takes PCMU and telephone-event/8000 only: no codec shared with Opus."""
    end = RtpFarEnd(free_port_on(SIPP_IP), tone_hz=FAR_TONE, codecs=("PCMU", "telephone-event"))
    await end.start()
    try:
        yield end
    finally:
        await end.close()


async def hear(get_freq: Callable[[], float], expected: float) -> float:
    """Wait until the dominant frequency heard is ``expected``; returns the last one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HEAR_TIMEOUT_S
    freq = 0.0
    while loop.time() < deadline:
        freq = get_freq()
        if abs(freq - expected) <= TOLERANCE:
            return freq
        await asyncio.sleep(0.25)
    return freq


def split_events(packets: list[ReceivedEventPacket]) -> list[list[ReceivedEventPacket]]:
    """Packets grouped into events, in arrival order: a new event starts at a marker bit
    (RFC 4733 §2.5.1.1) or when the event code changes."""
    events: list[list[ReceivedEventPacket]] = []
    for packet in packets:
        if not events or packet.marker or packet.event != events[-1][-1].event:
            events.append([])
        events[-1].append(packet)
    return events


def steps(timestamps: list[int]) -> list[int]:
    """Differences between consecutive 32-bit RTP timestamps (RFC 3550 §5.1 wrap-around)."""
    return [(b - a) & 0xFFFFFFFF for a, b in zip(timestamps, timestamps[1:], strict=False)]


async def wait_events(ua: WebRtcUa, count: int) -> list[list[ReceivedEventPacket]]:
    """Wait until ``count`` events have arrived, each with all of its end packets."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVENTS_TIMEOUT_S
    while True:
        events = split_events(ua.media.event_packets)
        complete = [e for e in events if sum(p.end for p in e) >= DTMF_END_PACKETS]
        if len(complete) >= count or loop.time() > deadline:
            return events
        await asyncio.sleep(POLL_S)


def check_rescaled_events(
    events: list[list[ReceivedEventPacket]], sent: list[SentEvent], browser_pt: int
) -> None:
    """The browser received the far end's ``sent`` events one for one: same codes in order,
    on ``browser_pt``, one SSRC, one start timestamp per event, every update and end packet
    relayed with its duration ×6, consecutive sequence numbers, start timestamps ×6 apart."""
    packets = [p for e in events for p in e]
    assert [e[0].event for e in events] == [e.code for e in sent], events
    assert {p.payload_type for p in packets} == {browser_pt}, packets
    assert len({p.ssrc for p in packets}) == 1, packets
    updates = -(-DTMF_DURATION // SAMPLES_PER_PACKET)
    expected_durations = [
        min(k * SAMPLES_PER_PACKET, DTMF_DURATION) * SCALE for k in range(1, updates + 1)
    ] + [DTMF_DURATION * SCALE] * (DTMF_END_PACKETS - 1)
    for event in events:
        # RFC 4733 §2.5.1.2 / §2.3.5: one start timestamp for all packets of an event.
        assert len({p.timestamp for p in event}) == 1, event
        assert event[0].marker and not any(p.marker for p in event[1:]), event
        # Each 20 ms update and each of the three end packets relayed as its own packet,
        # durations ×6 (800 at 8000 -> 4800 at 48000), the E bit on the last three only.
        assert [p.duration for p in event] == expected_durations, event
        assert [p.end for p in event] == [False] * (updates - 1) + [True] * DTMF_END_PACKETS
        # Relayed packets take consecutive sequence numbers (RFC 3550 §5.1).
        seqs = [p.seq for p in event]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False)), seqs
    # The events keep their spacing on the 48000 clock: start timestamps ×6 apart.
    starts = [e[0].timestamp for e in events]
    assert steps(starts) == [s * SCALE for s in steps([e.timestamp for e in sent])]


@pytest.mark.parametrize("event_clock", [BROWSER_CLOCK, SWITCH_CLOCK], ids=["te48000", "te8000"])
async def test_far_end_digits_reach_the_opus_browser_rescaled_to_48000(
    gateway: GatewayProcess, far: RtpFarEnd, event_clock: int
) -> None:
    """The far end sends "159#" at 8000; the Opus-only browser gets the same events on its
    own telephone-event payload type in the Opus stream's 48000 clock, ×6, one start
    timestamp per event.

    ``te48000``: the browser offers telephone-event/48000 beside Opus (Chromium's choice).
    ``te8000``: it offers only telephone-event/8000 beside Opus, as Firefox does; the gateway
    must still answer it (without it Firefox cannot send DTMF at all) and the events still
    count in the Opus stream's clock, as libwebrtc's sender and receiver do."""
    ua = WebRtcUa(
        gateway.ws_url,
        "alice",
        "alicepw",
        tone_hz=UA_TONE,
        codecs=["opus"],
        telephone_event=event_clock,
    )
    try:
        assert (await ua.register()).status == 200
        call = await ua.call(f"sip:9{far.port}@{REALM}")
        assert call.status == 200 and call.sdp_error is None, (call.status, call.sdp_error)
        # The browser offered telephone-event at one clock beside Opus...
        offer = ua.sent("INVITE")[0].body.decode()
        assert telephone_event_types(offer) == {TELEPHONE_EVENT_PT: event_clock}, offer
        # ...the gateway answered it as offered, the far end answered telephone-event/8000.
        answered = telephone_event_types(call.remote_sdp or "")
        assert answered == {TELEPHONE_EVENT_PT: event_clock}, call.remote_sdp
        browser_pt = TELEPHONE_EVENT_PT
        far_pt = far.telephone_event_payload_type
        assert far_pt is not None, far.received("INVITE")[0].body
        assert await hear(far.dominant_frequency, UA_TONE) == pytest.approx(UA_TONE, abs=TOLERANCE)
        assert await hear(ua.dominant_frequency, FAR_TONE) == pytest.approx(FAR_TONE, abs=TOLERANCE)
        assert await gateway.media_mode() == ("transcode", "opus<->PCMU")

        sent = await far.send_dtmf(DIGITS)
        assert [e.code for e in sent] == [EVENT_CODES[d] for d in DIGITS]
        assert all(e.payload_type == far_pt and e.duration == DTMF_DURATION for e in sent)
        events = await wait_events(ua, len(DIGITS))
        check_rescaled_events(events, sent, browser_pt)

        # Audio carries on after the digits.
        await asyncio.sleep(0.5)
        assert await hear(ua.dominant_frequency, FAR_TONE) == pytest.approx(FAR_TONE, abs=TOLERANCE)
        await ua.hangup()
        assert await far.wait_ended() == "remote BYE"
    finally:
        await ua.close()


@pytest.mark.skipif(
    available_codecs()["G729"] is not None, reason="libbcg729 is not installed on this machine"
)
async def test_digits_from_a_g729_caller_reach_the_opus_browser_that_answered(
    kamailio: Kamailio, gateway: GatewayProcess
) -> None:
    """The other call direction: the far end calls with G.729 + telephone-event/8000, the
    browser answers Opus + telephone-event/48000 (aiortc lacks G.729, so the call is
    transcoded), then the caller's "*0" arrive at the browser rescaled ×6."""
    far = RtpFarEnd(free_port_on(SIPP_IP), tone_hz=FAR_TONE, codecs=("G729", "telephone-event"))
    await far.start()
    ua = WebRtcUa(
        gateway.ws_url,
        "bob",
        "bobpw",
        tone_hz=UA_TONE,
        codecs=["opus"],
        telephone_event=BROWSER_CLOCK,
    )
    try:
        assert (await ua.register()).status == 200
        inviting = asyncio.ensure_future(far.invite("bob", (kamailio.ip, kamailio.udp_port)))
        incoming = await ua.wait_incoming()
        assert incoming.invite is not None
        offered = telephone_event_types(incoming.invite.body.decode())
        assert BROWSER_CLOCK in offered.values(), offered  # the gateway offers te/48000
        answer = await ua.answer(codecs=["opus"])
        assert answer.status == 200 and incoming.sdp_error is None, incoming.sdp_error
        answered = telephone_event_types(answer.body.decode())
        browser_pt = next(pt for pt, clock in answered.items() if clock == BROWSER_CLOCK)
        assert offered[browser_pt] == BROWSER_CLOCK  # answered with the offer's number
        final = await asyncio.wait_for(inviting, 10)
        assert final.status == 200, final
        assert far.telephone_event_payload_type is not None, final.body
        assert await hear(far.dominant_frequency, UA_TONE) == pytest.approx(UA_TONE, abs=TOLERANCE)
        assert await gateway.media_mode() == ("transcode", "opus<->G729")

        sent = await far.send_dtmf("*0")
        check_rescaled_events(await wait_events(ua, 2), sent, browser_pt)
        assert (await far.send_bye()).status == 200
        assert await ua.wait_ended() == "remote BYE"
    finally:
        await ua.close()
        await far.close()


async def test_the_far_ends_event_sender_follows_rfc_4733() -> None:
    """The oracle's own check, no gateway: two far-end RTP streams on loopback, one sends
    "7" as 800 units at 8000, the other records exactly what RFC 4733 §2.5.1 asks for."""
    sender, receiver = RtpStream(FAR_END_IP), RtpStream(FAR_END_IP)
    await sender.open()
    await receiver.open()
    try:
        sender.event_pt = 101
        sender.start((receiver.ip, receiver.port))
        await asyncio.sleep(0.1)  # a few audio packets first
        sender.send_events("7")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EVENTS_TIMEOUT_S
        while sender.events_pending and loop.time() < deadline:
            await asyncio.sleep(POLL_S)
        await asyncio.sleep(0.1)  # and audio after the gap
    finally:
        await sender.close()
        await receiver.close()
    packets = receiver.packets
    first = next(i for i, p in enumerate(packets) if p.payload_type == 101)
    updates = DTMF_DURATION // SAMPLES_PER_PACKET
    event = packets[first : first + updates + DTMF_END_PACKETS - 1]
    before, after = packets[first - 1], packets[first + len(event)]
    assert {p.payload_type for p in event} == {101} and after.payload_type == 0
    fields = [TELEPHONE_EVENT.unpack(p.payload) for p in event]
    assert {code for code, _, _ in fields} == {7}
    assert [d for _, _, d in fields] == [160, 320, 480, 640, 800, 800, 800]
    assert [bool(flags & 0x80) for _, flags, _ in fields] == [False] * 4 + [True] * 3
    assert [p.marker for p in event] == [True] + [False] * (len(event) - 1)
    # One start timestamp: the slot after the last audio packet; one sequence space.
    assert {p.timestamp for p in event} == {(before.timestamp + SAMPLES_PER_PACKET) % 2**32}
    assert [p.seq for p in [before, *event, after]] == [
        (before.seq + i) & 0xFFFF for i in range(len(event) + 2)
    ]
    assert len({p.ssrc for p in [before, *event, after]}) == 1
    # The clock ran on while the event played (RFC 3550 §5.1).
    assert after.timestamp == (event[0].timestamp + len(event) * SAMPLES_PER_PACKET) % 2**32
    assert sender.events_sent[0].code == 7 and sender.events_sent[0].duration == DTMF_DURATION
