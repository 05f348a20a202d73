"""Real browser calls through the gateway: headless Chromium + SIP.js, Kamailio, an RTP far end.

Chain: Chromium running the SIP.js webphone page (tests/clients/sipjs/, driven by
tests/helpers/browser.py; its fake microphone plays a 1 kHz tone) -> the gateway daemon with
media anchored (ICE-lite + DTLS-SRTP toward the browser, plain RTP toward the switch; media
in-process, one test with two media workers) -> Kamailio (tests/helpers/kamailio.py, routes
``9<port>`` to the far end and other users through their registration's Path) -> RtpFarEnd
(tests/helpers/rtp_far_end.py: SIP over UDP on 127.0.0.3, PCMU/PCMA, sends a 600 Hz tone,
decodes what it receives). Nothing is mocked.

Audio is judged by content: the far end must decode the browser's 1 kHz tone from the G.711
it receives, and the browser's getStats must show packets arriving with an audio level well
above silence (the far end's tone).

Codecs: the calls to a G.711 far end are passthrough (PCMU both legs), except the
Opus-only browser (the page's ConnexCS-style codecDelete strips everything but Opus), whose
calls to a PCMU-only far end the gateway transcodes, RFC 4733 DTMF included (Chromium sends
telephone-event/48000 beside Opus, the far end must get telephone-event/8000).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.sdp.model import parse as parse_sdp
from tests.helpers.browser import BrowserError, BrowserPhone
from tests.helpers.gateway import GATEWAY_IP, GatewayProcess, serving
from tests.helpers.kamailio import KAMAILIO_IP, SIPP_IP, USERS, Kamailio
from tests.helpers.kamailio import free_port as free_port_on
from tests.helpers.rtp_far_end import ReceivedRtp, RtpFarEnd

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

REALM = "example.test"
BROWSER_TONE_HZ = 1000.0
"""The fake microphone's tone (what the far end must hear)."""
FAR_TONE_HZ = 600.0
"""The far end's tone (what the browser must receive)."""
TOLERANCE_HZ = 25.0
"""FFT bin width at 8 kHz over 1 s is 1 Hz; G.711 and resampling keep the peak within this."""
LEVEL_THRESHOLD = 0.05
"""getStats audioLevel (0..1, linear) above which received audio is not silence; the far
end's tone is about 0.24 of full scale, silence and comfort noise stay below 0.01."""
TALK_SECONDS = 10
"""Length of the two-way audio check, sampled once a second."""
WARMUP_S = 2.0
"""Time allowed after the answer for ICE, DTLS and jitter buffers before audio is judged."""
STEP_TIMEOUT_S = 10.0
"""Longest wait for one signalling step (registered, answered, ended...)."""
HEAR_TIMEOUT_S = 8.0
"""Longest wait for a tone to be heard."""
PACKETS_PER_SECOND_MIN = 25
"""PCMU at 20 ms is 50 packets a second; half of that proves a flow."""
HELD_PACKETS_MAX = 5
"""Packets the browser may still receive in a second of hold (ones already in flight)."""
POLL_S = 0.25
MEDIA_PORTS = 100
DTMF_DURATION_MS = 100
"""Tone length the page asks insertDTMF for (tests/clients/sipjs/phone.js, its default)."""
SWITCH_CLOCK = 8000
DTMF_DURATION_UNITS = DTMF_DURATION_MS * SWITCH_CLOCK // 1000
"""100 ms at the far end's 8000 clock: 800 timestamp units (RFC 4733 §2.3.5)."""
DTMF_DURATION_TOLERANCE = 160
"""One 20 ms packet interval at 8000: Chromium rounds the tone to whole packets."""
END_PACKETS = 3
"""End-of-event packets per event, as Chromium (libwebrtc) sends them."""
AFTER_DTMF_S = 1.2
"""Wait after the last event so the last second of audio judged came after it."""
#: RFC 4733 §3.2 event codes of the DTMF symbols.
EVENT_CODES = {**{str(d): d for d in range(10)}, "*": 10, "#": 11}
SESSION_TIMEOUT_S = 30.0


# ---------------------------------------------------------------------------- fixtures


@contextlib.asynccontextmanager
async def running_gateway(
    kamailio: Kamailio,
    workdir: Path,
    request: pytest.FixtureRequest,
    *,
    workers: int,
    extra: dict[str, dict[str, object]] | None = None,
) -> AsyncIterator[GatewayProcess]:
    """The gateway daemon with media anchored on 127.0.0.2; its log is printed on failure."""
    workdir.mkdir(parents=True, exist_ok=True)
    gw = GatewayProcess.with_media(
        workdir,
        kamailio.uri("udp"),
        workers=workers,
        timeout=SESSION_TIMEOUT_S,
        ports=MEDIA_PORTS,
        extra=extra,
    )
    async with serving(gw, request, forbid=(" ERROR ", "Traceback")):
        yield gw


@pytest.fixture
async def gateway(
    kamailio: Kamailio, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[GatewayProcess]:
    """The gateway with its media layer in-process."""
    async with running_gateway(kamailio, tmp_path / "gateway", request, workers=0) as gw:
        yield gw


@pytest.fixture
async def phone(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[BrowserPhone]:
    """One headless Chromium with the webphone page; console log + screenshot on failure."""
    browser = await BrowserPhone.start(tmp_path / "phone", tone_hz=BROWSER_TONE_HZ)
    try:
        yield browser
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            saved = await browser.save_artifacts(f"test failed: {request.node.name}")
            print(f"---- browser artifacts: {saved}")
        await browser.close()


@pytest.fixture
async def far() -> AsyncIterator[RtpFarEnd]:
    """The plain-RTP far end on 127.0.0.3 (Kamailio routes 9<port> to it)."""
    end = RtpFarEnd(
        free_port_on(SIPP_IP), tone_hz=FAR_TONE_HZ, codecs=("PCMU", "PCMA", "telephone-event")
    )
    await end.start()
    try:
        yield end
    finally:
        await end.close()


@pytest.fixture
def clean_bindings(kamailio: Kamailio) -> Iterator[None]:
    """No registration of the test users left over before or after a test."""
    for user in USERS:
        kamailio.remove_location(f"{user}@{REALM}")
    yield
    for user in USERS:
        kamailio.remove_location(f"{user}@{REALM}")


@pytest.fixture
def dead_ws_port() -> Iterator[int]:
    """A loopback TCP port that refuses connections (bound, never listening)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((KAMAILIO_IP, 0))
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


# ---------------------------------------------------------------------------- helpers


async def register(
    phone: BrowserPhone, ws_servers: str, user: str, **options: Any
) -> dict[str, Any]:
    """Configure the page for ``user`` and register; returns the onRegistered event."""
    await phone.configure(
        wsServers=ws_servers,
        username=user,
        password=USERS[user],
        realm=REALM,
        audioProcessing=False,  # noise suppression would eat the test tone
        **options,
    )
    await phone.register()
    return await phone.wait_for("onRegistered|onRegistrationFailed", timeout=STEP_TIMEOUT_S)


async def call_far_end(phone: BrowserPhone, far: RtpFarEnd) -> str:
    """Call the far end (9<port>) and wait for the answer; returns the browser's call id."""
    placed = await phone.make_call(f"9{far.port}")
    answered = await phone.wait_for("onAnswer|onEnd", timeout=STEP_TIMEOUT_S)
    assert answered["event"] == "onAnswer", answered
    await far.wait_confirmed()
    return str(placed["callId"])


async def far_hears(far: RtpFarEnd, tone_hz: float, timeout: float = HEAR_TIMEOUT_S) -> float:
    """Wait until the far end's dominant received frequency is ``tone_hz``; returns it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    heard = 0.0
    while loop.time() < deadline:
        heard = far.dominant_frequency()
        if abs(heard - tone_hz) <= TOLERANCE_HZ:
            return heard
        await asyncio.sleep(POLL_S)
    return heard


async def inbound(phone: BrowserPhone) -> dict[str, Any]:
    """The browser's inbound-rtp stats of the current call (zeros before any packet)."""
    stats = await phone.get_stats()
    return stats.get("inbound") or {"packetsReceived": 0, "audioLevel": None}


async def browser_receives_tone(phone: BrowserPhone, timeout: float = HEAR_TIMEOUT_S) -> float:
    """Wait until the browser's inbound audioLevel is above LEVEL_THRESHOLD; returns it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    level = 0.0
    while loop.time() < deadline:
        level = float((await inbound(phone)).get("audioLevel") or 0.0)
        if level > LEVEL_THRESHOLD:
            return level
        await asyncio.sleep(POLL_S)
    return level


async def packets_in_one_second(phone: BrowserPhone) -> int:
    """How many RTP packets the browser receives over the next second."""
    before = int((await inbound(phone))["packetsReceived"])
    await asyncio.sleep(1.0)
    return int((await inbound(phone))["packetsReceived"]) - before


def audio_direction(sdp: bytes | str) -> str:
    """The audio stream's direction attribute (RFC 3264 §5.1; sendrecv when absent)."""
    text = sdp.decode() if isinstance(sdp, bytes) else sdp
    session = parse_sdp(text)
    return session.direction(session.media[0])


def offered_codecs(sdp: bytes) -> dict[int, str]:
    """payload type -> "name/clock" of the audio stream of an SDP."""
    session = parse_sdp(sdp.decode())
    media = session.media[0]
    out: dict[int, str] = {}
    for pt in media.payload_types:
        rtpmap = media.rtpmap(pt)
        out[pt] = f"{rtpmap.encoding}/{rtpmap.clock}" if rtpmap else f"static/{pt}"
    return out


def browser_offer_codecs(gateway_log: str) -> list[str]:
    """ "name/clock" of the codecs in the first WebRTC audio offer in the gateway's SIP trace."""
    found = re.search(r"^m=audio \d+ UDP/TLS/RTP/SAVPF .*?(?=^m=|^\s*$)", gateway_log, re.M | re.S)
    assert found, "no WebRTC offer in the gateway's SIP trace (log.sip_trace)"
    by_pt = dict(re.findall(r"^a=rtpmap:(\d+) ([\w.-]+/\d+)", found.group(0), re.M))
    return [by_pt.get(pt, f"static/{pt}") for pt in found.group(0).split("\n")[0].split()[3:]]


def event_packets(far: RtpFarEnd, payload_type: int) -> list[list[ReceivedRtp]]:
    """The far end's received packets of ``payload_type`` grouped into RFC 4733 events, in
    arrival order: a new event starts at a marker bit (RFC 4733 §2.5.1.1) or a new event
    code."""
    events: list[list[ReceivedRtp]] = []
    for packet in far.rtp.packets:
        if packet.payload_type != payload_type:
            continue
        if not events or packet.marker or packet.payload[0] != events[-1][-1].payload[0]:
            events.append([])
        events[-1].append(packet)
    return events


OPUS_ONLY = ["(?!opus|telephone-event).*"]
"""ConnexCS-style Codec Delete leaving Opus (and telephone-event) only: the browser shares no
codec with a G.711 far end, so the gateway transcodes."""


async def opus_only_call(
    phone: BrowserPhone, gateway: GatewayProcess, far: RtpFarEnd, tone_hz: float = BROWSER_TONE_HZ
) -> None:
    """Register ``phone`` as alice with only Opus left and call ``far`` (PCMU): the far end
    hears the browser's ``tone_hz`` and the gateway reports the call transcoded."""
    registered = await register(phone, gateway.ws_url, "alice", codecDelete=OPUS_ONLY)
    assert registered["event"] == "onRegistered", registered
    await call_far_end(phone, far)
    assert await far_hears(far, tone_hz) == pytest.approx(tone_hz, abs=TOLERANCE_HZ)
    assert await gateway.media_mode() == ("transcode", "opus<->PCMU")


async def hang_up_from_browser(phone: BrowserPhone, far: RtpFarEnd) -> None:
    """Browser hangs up: the far end gets BYE, the page reports a local hangup."""
    await phone.hangup()
    assert await far.wait_ended() == "remote BYE"
    ended = await phone.wait_for("onEnd", timeout=STEP_TIMEOUT_S)
    assert ended["cause"] == "local_hangup", ended


# ---------------------------------------------------------------------------- tests


async def test_register_stores_the_gateway_path_at_the_switch(
    kamailio: Kamailio, gateway: GatewayProcess, phone: BrowserPhone, clean_bindings: None
) -> None:
    """REGISTER from the browser passes the gateway, which adds Path (RFC 3327) to itself."""
    registered = await register(phone, gateway.ws_url, "alice")
    assert registered["event"] == "onRegistered", registered
    bindings = kamailio.locations(f"alice@{REALM}")
    assert len(bindings) == 1, bindings
    binding = bindings[0]
    assert f"@{GATEWAY_IP}:{gateway.sip_port};" in binding["path"], binding
    assert ";lr" in binding["path"], binding
    assert "transport=ws" in binding["contact"].lower(), binding  # the browser's own Contact


async def test_outbound_call_with_two_way_audio_for_ten_seconds(
    gateway: GatewayProcess, phone: BrowserPhone, far: RtpFarEnd, clean_bindings: None
) -> None:
    """An answered call carries both tones for 10 s; the browser hangs up, the far end gets BYE."""
    assert (await register(phone, gateway.ws_url, "alice"))["event"] == "onRegistered"
    await call_far_end(phone, far)
    # the far end was offered plain RTP on the gateway's address, no WebRTC attributes
    invite = far.received("INVITE")[0]
    offer = parse_sdp(invite.body.decode())
    assert offer.media[0].proto == "RTP/AVP"
    assert offer.connection_for(offer.media[0]).address == GATEWAY_IP  # type: ignore[union-attr]
    assert b"a=fingerprint" not in invite.body and b"a=ice-ufrag" not in invite.body

    await asyncio.sleep(WARMUP_S)
    heard: list[float] = []
    received: list[int] = []
    levels: list[float] = []
    for _ in range(TALK_SECONDS):
        before = int((await inbound(phone))["packetsReceived"])
        await asyncio.sleep(1.0)
        stats = await inbound(phone)
        received.append(int(stats["packetsReceived"]) - before)
        levels.append(float(stats.get("audioLevel") or 0.0))
        heard.append(far.dominant_frequency(last_seconds=1.0))
    # every second of the ten: the far end decodes the browser's tone from its PCMU...
    assert all(abs(f - BROWSER_TONE_HZ) <= TOLERANCE_HZ for f in heard), heard
    # ...and the browser receives the far end's packets, with sound in them
    assert all(n >= PACKETS_PER_SECOND_MIN for n in received), received
    assert all(level > LEVEL_THRESHOLD for level in levels), levels
    stats = await phone.get_stats()
    assert stats["connectionState"] == "connected", stats
    assert stats["selectedPair"]["remote"].startswith(f"{GATEWAY_IP}:"), stats

    await hang_up_from_browser(phone, far)


async def test_inbound_call_auto_answered_and_far_end_hangs_up(
    kamailio: Kamailio,
    gateway: GatewayProcess,
    phone: BrowserPhone,
    far: RtpFarEnd,
    clean_bindings: None,
) -> None:
    """The far end calls bob through Kamailio; the page auto-answers; the far end's BYE ends it."""
    registered = await register(phone, gateway.ws_url, "bob", autoAnswer=True)
    assert registered["event"] == "onRegistered", registered
    inviting = asyncio.ensure_future(far.invite("bob", (kamailio.ip, kamailio.udp_port)))
    try:
        incoming = await phone.wait_for("onIncoming", timeout=STEP_TIMEOUT_S)
        assert incoming["autoAnswer"] is True
        assert f"@{SIPP_IP}" in incoming["remote"], incoming
        final = await asyncio.wait_for(inviting, STEP_TIMEOUT_S)
    finally:
        if not inviting.done():
            inviting.cancel()
        await asyncio.gather(inviting, return_exceptions=True)
    assert final.status == 200, final
    # the far end gets a plain answer on the gateway's address
    answer = parse_sdp(final.body.decode())
    assert answer.media[0].proto == "RTP/AVP"
    assert answer.connection_for(answer.media[0]).address == GATEWAY_IP  # type: ignore[union-attr]
    await phone.wait_for("onAnswer", timeout=STEP_TIMEOUT_S)

    heard = await far_hears(far, BROWSER_TONE_HZ)
    assert heard == pytest.approx(BROWSER_TONE_HZ, abs=TOLERANCE_HZ)
    assert await browser_receives_tone(phone) > LEVEL_THRESHOLD
    assert await packets_in_one_second(phone) >= PACKETS_PER_SECOND_MIN

    assert (await far.send_bye()).status == 200
    ended = await phone.wait_for("onEnd", timeout=STEP_TIMEOUT_S)
    assert ended["cause"] == "remote_hangup", ended
    assert ended["cdr"]["direction"] == "inbound" and ended["cdr"]["answered"] is True


async def test_hold_and_unhold(
    gateway: GatewayProcess, phone: BrowserPhone, far: RtpFarEnd, clean_bindings: None
) -> None:
    """Hold: the far end is offered sendonly, answers recvonly and stops sending; unhold
    resumes audio both ways. The far end then hangs up an outbound call."""
    assert (await register(phone, gateway.ws_url, "alice"))["event"] == "onRegistered"
    await call_far_end(phone, far)
    assert await far_hears(far, BROWSER_TONE_HZ) == pytest.approx(BROWSER_TONE_HZ, abs=TOLERANCE_HZ)
    assert await browser_receives_tone(phone) > LEVEL_THRESHOLD

    await phone.hold()
    assert (await phone.wait_for("onHold"))["held"] is True
    reinvites = far.received("INVITE")
    assert len(reinvites) == 2, [r.body for r in reinvites]
    assert audio_direction(reinvites[1].body) == "sendonly"
    assert far.call is not None and far.call.local_direction == "recvonly"
    assert audio_direction(far.sent(200)[-1].body) == "recvonly"
    await asyncio.sleep(0.5)  # packets already in flight
    held = await packets_in_one_second(phone)
    assert held <= HELD_PACKETS_MAX, f"{held} packets reached the browser while held"

    await phone.unhold()
    assert (await phone.wait_for("onHold"))["held"] is False
    reinvites = far.received("INVITE")
    assert len(reinvites) == 3
    assert audio_direction(reinvites[2].body) == "sendrecv"
    assert far.call.local_direction == "sendrecv"
    assert await packets_in_one_second(phone) >= PACKETS_PER_SECOND_MIN
    assert await browser_receives_tone(phone) > LEVEL_THRESHOLD
    assert await far_hears(far, BROWSER_TONE_HZ) == pytest.approx(BROWSER_TONE_HZ, abs=TOLERANCE_HZ)

    assert (await far.send_bye()).status == 200
    ended = await phone.wait_for("onEnd", timeout=STEP_TIMEOUT_S)
    assert ended["cause"] == "remote_hangup", ended


async def test_dtmf_as_sip_info_and_as_rfc4733_events(
    gateway: GatewayProcess, phone: BrowserPhone, far: RtpFarEnd, clean_bindings: None
) -> None:
    """INFO application/dtmf-relay reaches the far end; so do RFC 4733 telephone-events."""
    assert (await register(phone, gateway.ws_url, "alice"))["event"] == "onRegistered"
    await call_far_end(phone, far)
    te_pt = far.telephone_event_payload_type
    assert te_pt is not None, offered_codecs(far.received("INVITE")[0].body)
    assert offered_codecs(far.received("INVITE")[0].body)[te_pt] == "telephone-event/8000"
    assert await far_hears(far, BROWSER_TONE_HZ) == pytest.approx(BROWSER_TONE_HZ, abs=TOLERANCE_HZ)

    # SIP INFO (SIP.js's default DTMF): one request per digit, each answered 200 by the far end
    await phone.send_dtmf("123#", "info")
    sent = [await phone.wait_for("onDtmfSent", timeout=STEP_TIMEOUT_S) for _ in range(4)]
    assert [(e["digit"], e["statusCode"]) for e in sent] == [
        ("1", 200),
        ("2", 200),
        ("3", 200),
        ("#", 200),
    ]
    assert far.dtmf_info_digits() == "123#"

    # RFC 4733: telephone-event packets in RTP with the negotiated payload type
    await phone.send_dtmf("5*9", "rfc4733")
    played = [await phone.wait_for("onDtmfSent", timeout=STEP_TIMEOUT_S) for _ in range(3)]
    assert [e["digit"] for e in played] == ["5", "*", "9"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STEP_TIMEOUT_S
    events = far.rtp.telephone_events(te_pt)
    while loop.time() < deadline and not (len(events) >= 3 and all(e.end for e in events)):
        await asyncio.sleep(POLL_S)
        events = far.rtp.telephone_events(te_pt)
    assert "".join(e.symbol for e in events) == "5*9", (events, far.payload_types_seen)
    assert all(e.end for e in events), events
    # audio carries on after the events
    assert await far_hears(far, BROWSER_TONE_HZ) == pytest.approx(BROWSER_TONE_HZ, abs=TOLERANCE_HZ)

    await hang_up_from_browser(phone, far)


async def test_pcmu_passthrough_with_media_workers(
    kamailio: Kamailio,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    phone: BrowserPhone,
    clean_bindings: None,
) -> None:
    """The browser offers its default codecs (Opus first, PCMU among them); the switch leg is
    PCMU: the far end is offered and gets payload type 0, the browser sends and hears PCMU.
    Media runs in two worker processes here."""
    pcmu_only = RtpFarEnd(free_port_on(SIPP_IP), tone_hz=FAR_TONE_HZ, codecs=("PCMU",))
    await pcmu_only.start()
    try:
        async with running_gateway(kamailio, tmp_path / "gateway", request, workers=2) as gw:
            assert (await register(phone, gw.ws_url, "carol"))["event"] == "onRegistered"
            await call_far_end(phone, pcmu_only)
            # what the browser offered the gateway: its default list, Opus first, PCMU in it
            browser_offer = browser_offer_codecs(gw.log_text())
            assert browser_offer[0] == "opus/48000", browser_offer
            assert "PCMU/8000" in browser_offer, browser_offer
            # the switch leg: the far end is offered PCMU as payload type 0 and answers it
            offered = offered_codecs(pcmu_only.received("INVITE")[0].body)
            assert offered.get(0) in ("PCMU/8000", "static/0"), offered
            answered = parse_sdp(pcmu_only.sent(200)[0].body.decode()).media[0]
            assert answered.payload_types == [0], answered
            assert await far_hears(pcmu_only, BROWSER_TONE_HZ) == pytest.approx(
                BROWSER_TONE_HZ, abs=TOLERANCE_HZ
            )
            assert await browser_receives_tone(phone) > LEVEL_THRESHOLD
            assert pcmu_only.payload_types_seen == {0}
            stats = await phone.get_stats()
            assert stats["codec"]["mimeType"].lower() == "audio/pcmu", stats
            assert stats["codec"]["payloadType"] == 0, stats
            await hang_up_from_browser(phone, pcmu_only)
    finally:
        await pcmu_only.close()


async def test_failover_to_the_second_gateway(
    gateway: GatewayProcess,
    phone: BrowserPhone,
    far: RtpFarEnd,
    dead_ws_port: int,
    clean_bindings: None,
) -> None:
    """wsServers "ws://dead,ws://live": the first refuses, the phone registers and calls
    through the second."""
    dead = f"ws://{KAMAILIO_IP}:{dead_ws_port}"
    registered = await register(phone, f"{dead},{gateway.ws_url}", "alice")
    assert registered["event"] == "onRegistered", registered
    failed = await phone.wait_for("onTransportFailed")
    assert failed["server"] == dead
    connected = await phone.wait_for("onTransportConnected")
    assert connected["server"] == gateway.ws_url
    assert registered["server"] == gateway.ws_url

    await call_far_end(phone, far)
    assert await far_hears(far, BROWSER_TONE_HZ) == pytest.approx(BROWSER_TONE_HZ, abs=TOLERANCE_HZ)
    assert await browser_receives_tone(phone) > LEVEL_THRESHOLD
    await hang_up_from_browser(phone, far)


async def test_opus_only_browser_to_g711_only_far_end_is_transcoded(
    gateway: GatewayProcess, phone: BrowserPhone, clean_bindings: None
) -> None:
    """The browser offers only Opus; the far end takes only PCMU: the gateway transcodes."""
    async with RtpFarEnd(
        free_port_on(SIPP_IP), tone_hz=FAR_TONE_HZ, codecs=("PCMU", "telephone-event")
    ) as far:
        await opus_only_call(phone, gateway, far)
        assert far.payload_types_seen == {0}  # PCMU on the switch leg
        assert await browser_receives_tone(phone) > LEVEL_THRESHOLD
        stats = await phone.get_stats()
        assert stats["codec"]["mimeType"].lower() == "audio/opus", stats  # Opus on the browser leg
        # what the browser offered really was Opus only (the first INVITE in the gateway's
        # SIP trace is the browser's, up to the next log line)
        log = gateway.log_text()
        start = log.index(f"\nINVITE sip:9{far.port}@")  # a trace line, not a debug excerpt
        invite = log[start : log.find("\n20", start)]
        names = re.findall(r"a=rtpmap:\d+ ([^/]+)/", invite)
        assert "opus" in names and not {"PCMU", "PCMA", "G722"} & set(names), names
        await hang_up_from_browser(phone, far)


async def test_rfc4733_digits_from_an_opus_browser_through_the_transcoder(
    gateway: GatewayProcess, phone: BrowserPhone, clean_bindings: None
) -> None:
    """An Opus-only Chromium calls a PCMU + telephone-event/8000 far end (transcoded) and
    sends "0123456789*#" as RFC 4733 events at 48000: the far end gets every digit, in
    order, on its telephone-event type at 8000, with an end bit and 100 ms durations in
    8000-clock units; the browser's audio still reaches it afterwards."""
    async with RtpFarEnd(
        free_port_on(SIPP_IP), tone_hz=FAR_TONE_HZ, codecs=("PCMU", "telephone-event")
    ) as far:
        await opus_only_call(phone, gateway, far)
        te_pt = far.telephone_event_payload_type
        invite_sdp = far.received("INVITE")[0].body
        assert te_pt is not None, offered_codecs(invite_sdp)
        assert offered_codecs(invite_sdp)[te_pt] == "telephone-event/8000"
        stats = await phone.get_stats()
        assert stats["codec"]["mimeType"].lower() == "audio/opus", stats
        assert far.payload_types_seen == {0}

        digits = "0123456789*#"
        await phone.send_dtmf(digits, "rfc4733", durationMs=DTMF_DURATION_MS)
        played = [await phone.wait_for("onDtmfSent", timeout=STEP_TIMEOUT_S) for _ in digits]
        assert "".join(e["digit"] for e in played) == digits
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STEP_TIMEOUT_S
        events = event_packets(far, te_pt)
        while loop.time() < deadline and not (
            len(events) >= len(digits) and any(p.payload[1] & 0x80 for p in events[-1])
        ):
            await asyncio.sleep(POLL_S)
            events = event_packets(far, te_pt)

        # Every digit, in order, with its RFC 4733 §3.2 code (0-9, * = 10, # = 11)...
        codes = [e[0].payload[0] for e in events]
        assert codes == [EVENT_CODES[d] for d in digits], (codes, far.payload_types_seen)
        # ...only PCMU and the far end's telephone-event type on the switch leg...
        assert far.payload_types_seen == {0, te_pt}
        for event in events:
            # ...one start timestamp per event (RFC 4733 §2.5.1.2, §2.3.5), marker first...
            assert len({p.timestamp for p in event}) == 1, event
            assert event[0].marker, event
            # ...an end packet (E bit) whose duration is 100 ms at 8000 (4800 at 48000 ÷ 6).
            ends = [p for p in event if p.payload[1] & 0x80]
            assert ends, event
            # Chromium sends the final packet three times (RFC 4733 §2.5.1.4): the gateway
            # relays each as a packet of its own, none merged or dropped.
            assert len(ends) == END_PACKETS, event
            duration = int.from_bytes(ends[-1].payload[2:4], "big")
            assert abs(duration - DTMF_DURATION_UNITS) <= DTMF_DURATION_TOLERANCE, event
        # the far end's own fold agrees: twelve events, each ended
        folded = far.rtp.telephone_events(te_pt)
        assert "".join(e.symbol for e in folded) == digits, folded
        assert all(e.end for e in folded), folded

        # Audio carries on after the events: a second of PCMU that came after the last
        # event packet, carrying the browser's tone.
        last_event = max(p.time for e in events for p in e)
        await asyncio.sleep(AFTER_DTMF_S)
        after = [p for p in far.rtp.packets if p.payload_type == 0 and p.time > last_event]
        assert len(after) >= PACKETS_PER_SECOND_MIN, len(after)
        assert far.dominant_frequency(last_seconds=1.0) == pytest.approx(
            BROWSER_TONE_HZ, abs=TOLERANCE_HZ
        )
        await hang_up_from_browser(phone, far)


async def test_sip_info_digits_become_rfc4733_events_when_configured(
    kamailio: Kamailio,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    phone: BrowserPhone,
    clean_bindings: None,
) -> None:
    """With media.dtmf_info_to_rfc4733 on, SIP.js's default DTMF (one INFO
    application/dtmf-relay per digit) on a transcoded call reaches the far end as RFC 4733
    telephone-events at 8000 in the PCMU stream, not as INFO: the gateway answers each INFO
    200 itself, the far end receives no INFO, every digit arrives in order with an end bit
    and the duration the INFO asked for, and the audio stream carries on unbroken. Media
    in two worker processes, the default layout, so the command finds the call's worker."""
    extra: dict[str, dict[str, object]] = {"media": {"dtmf_info_to_rfc4733": True}}
    async with RtpFarEnd(
        free_port_on(SIPP_IP), tone_hz=FAR_TONE_HZ, codecs=("PCMU", "telephone-event")
    ) as far:
        async with running_gateway(
            kamailio, tmp_path / "gateway", request, workers=2, extra=extra
        ) as gateway:
            await opus_only_call(phone, gateway, far)
            te_pt = far.telephone_event_payload_type
            assert te_pt is not None, offered_codecs(far.received("INVITE")[0].body)

            digits = "147#"
            await phone.send_dtmf(digits, "info", durationMs=DTMF_DURATION_MS)
            sent = [await phone.wait_for("onDtmfSent", timeout=STEP_TIMEOUT_S) for _ in digits]
            assert [(e["digit"], e["statusCode"]) for e in sent] == [(d, 200) for d in digits]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STEP_TIMEOUT_S
            events = far.rtp.telephone_events(te_pt)
            while loop.time() < deadline and not (
                len(events) >= len(digits) and all(e.end for e in events)
            ):
                await asyncio.sleep(POLL_S)
                events = far.rtp.telephone_events(te_pt)
            assert "".join(e.symbol for e in events) == digits, (events, far.payload_types_seen)
            assert all(e.end for e in events), events
            for event in event_packets(far, te_pt):
                assert event[0].marker and len({p.timestamp for p in event}) == 1, event
                ends = [p for p in event if p.payload[1] & 0x80]
                assert len(ends) == END_PACKETS, event
                assert int.from_bytes(ends[-1].payload[2:4], "big") == DTMF_DURATION_UNITS
            # The INFOs were answered by the gateway, not relayed.
            assert far.dtmf_info_digits() == ""
            assert far.received("INFO") == []
            # One sequence space toward the far end: audio and events, no gap, no repeat.
            seqs = [p.seq for p in far.rtp.packets if p.payload_type in (0, te_pt)]
            steps = {(b - a) & 0xFFFF for a, b in zip(seqs, seqs[1:], strict=False)}
            assert steps == {1}, sorted(steps)[:10]
            assert await gateway.metric("gateway_dtmf_info_total", outcome="converted") == 4
            assert await gateway.metric("gateway_dtmf_info_total", outcome="relayed") == 0
            assert await far_hears(far, BROWSER_TONE_HZ) == pytest.approx(
                BROWSER_TONE_HZ, abs=TOLERANCE_HZ
            )
            await hang_up_from_browser(phone, far)


async def test_switch_without_telephone_event_gets_the_browsers_info_digits(
    kamailio: Kamailio,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    phone: BrowserPhone,
    clean_bindings: None,
) -> None:
    """A far end answering PCMU without telephone-event, an Opus-only Chromium (transcoded),
    media.dtmf_info_to_rfc4733 on: the browser is answered without telephone-event, so it
    cannot send RFC 4733 events that nobody could carry (SIP.js reports it); its INFO
    digits cannot become events either, so the gateway relays them as INFO, and the far
    end gets every digit."""
    extra: dict[str, dict[str, object]] = {"media": {"dtmf_info_to_rfc4733": True}}
    async with RtpFarEnd(free_port_on(SIPP_IP), tone_hz=FAR_TONE_HZ, codecs=("PCMU",)) as far:
        async with running_gateway(
            kamailio, tmp_path / "gateway", request, workers=0, extra=extra
        ) as gateway:
            await opus_only_call(phone, gateway, far)
            assert far.telephone_event_payload_type is None
            with pytest.raises(BrowserError, match="cannot send RFC 4733"):
                await phone.send_dtmf("5", "rfc4733")

            await phone.send_dtmf("28", "info", durationMs=DTMF_DURATION_MS)
            sent = [await phone.wait_for("onDtmfSent", timeout=STEP_TIMEOUT_S) for _ in "28"]
            assert [(e["digit"], e["statusCode"]) for e in sent] == [("2", 200), ("8", 200)]
            assert far.dtmf_info_digits() == "28"
            assert await gateway.metric("gateway_dtmf_info_total", outcome="relayed") == 2
            assert await gateway.metric("gateway_dtmf_info_total", outcome="converted") == 0
            assert far.payload_types_seen == {0}
            await hang_up_from_browser(phone, far)


def info_durations(far: RtpFarEnd) -> list[int]:
    """``Duration`` of every application/dtmf-relay INFO the far end received, in order."""
    durations = []
    for info in far.received("INFO"):
        for line in info.body.decode(errors="replace").splitlines():
            name, _, value = line.partition("=")
            if name.strip().lower() == "duration":
                durations.append(int(value))
    return durations


async def hold_and_unhold(phone: BrowserPhone) -> None:
    """Put the call on hold and take it off again, each re-INVITE answered 2xx."""
    await phone.hold()
    assert (await phone.wait_for("onHold"))["held"] is True
    await phone.unhold()
    assert (await phone.wait_for("onHold"))["held"] is False


async def wait_for_info_digits(far: RtpFarEnd, digits: str) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STEP_TIMEOUT_S
    while loop.time() < deadline and len(far.dtmf_info_digits()) < len(digits):
        await asyncio.sleep(POLL_S)
    return far.dtmf_info_digits()


@pytest.mark.parametrize("passthrough", [False, True], ids=["transcoded-workers", "pcmu-inprocess"])
async def test_browser_rfc4733_digits_reach_an_info_only_switch_as_info(
    kamailio: Kamailio,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    phone: BrowserPhone,
    clean_bindings: None,
    passthrough: bool,
) -> None:
    """PITFALLS 10, the reverse way: a far end answering without telephone-event (a switch
    that acts on SIP INFO only), a webphone sending RFC 4733 (SIP.js's RTP DTMF), and
    media.dtmf_rfc4733_to_info on. The browser is still answered with telephone-event, so
    it can send events; the far end receives each digit once, in order, as an INFO
    application/dtmf-relay with its duration, and no event packet in its RTP. The gateway's
    INFOs sit in the browser's CSeq space: the browser's hold and unhold re-INVITEs and its
    BYE, sent after them, must still be accepted by the far end, which refuses a CSeq that
    is not above the last (RFC 3261 §12.2.2) and checks each ACK names its INVITE's CSeq.
    Transcoded with media in two worker processes, and PCMU passthrough in-process."""
    codecs = ("PCMU",)
    extra: dict[str, dict[str, object]] = {"media": {"dtmf_rfc4733_to_info": True}}
    async with RtpFarEnd(free_port_on(SIPP_IP), tone_hz=FAR_TONE_HZ, codecs=codecs) as far:
        async with running_gateway(
            kamailio,
            tmp_path / "gateway",
            request,
            workers=0 if passthrough else 2,
            extra=extra,
        ) as gateway:
            if passthrough:
                registered = await register(phone, gateway.ws_url, "alice")
                assert registered["event"] == "onRegistered", registered
                await call_far_end(phone, far)
                assert await gateway.media_mode() == ("passthrough", "PCMU")
            else:
                await opus_only_call(phone, gateway, far)
            assert far.telephone_event_payload_type is None  # the far end has none

            await phone.send_dtmf("159", "rfc4733", durationMs=DTMF_DURATION_MS)
            played = [await phone.wait_for("onDtmfSent", timeout=STEP_TIMEOUT_S) for _ in "159"]
            assert "".join(e["digit"] for e in played) == "159"
            assert await wait_for_info_digits(far, "159") == "159"
            # Chromium plays 100 ms; the INFO says so (the gateway's floor is 100 ms too).
            assert all(100 <= d <= 100 + 60 for d in info_durations(far)), info_durations(far)

            await hold_and_unhold(phone)
            await phone.send_dtmf("*0#", "rfc4733", durationMs=DTMF_DURATION_MS)
            assert await wait_for_info_digits(far, "159*0#") == "159*0#"

            call = far.call
            assert call is not None
            assert len(far.received("INVITE")) == 3  # the call, hold and unhold all reached it
            assert call.out_of_order == 0 and call.mismatched_acks == 0
            assert far.payload_types_seen == {0}  # audio only: the events became INFO
            assert await gateway.metric("gateway_dtmf_rfc4733_to_info_total", outcome="sent") == 6
            assert await far_hears(far, BROWSER_TONE_HZ) == pytest.approx(
                BROWSER_TONE_HZ, abs=TOLERANCE_HZ
            )
            await hang_up_from_browser(phone, far)
            assert call.out_of_order == 0


async def test_browser_rfc4733_digits_on_a_call_from_an_info_only_switch(
    kamailio: Kamailio,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    phone: BrowserPhone,
    clean_bindings: None,
) -> None:
    """The same on a call the switch places: its offer has no telephone-event, the browser
    is offered one anyway (and the switch's answer leaves it out), the auto-answering
    browser's RFC 4733 digits reach the caller as INFO, and the browser's own requests
    afterwards (hold, unhold, BYE) carry CSeqs the caller accepts."""
    extra: dict[str, dict[str, object]] = {"media": {"dtmf_rfc4733_to_info": True}}
    async with RtpFarEnd(free_port_on(SIPP_IP), tone_hz=FAR_TONE_HZ, codecs=("PCMU",)) as far:
        async with running_gateway(
            kamailio, tmp_path / "gateway", request, workers=0, extra=extra
        ) as gateway:
            registered = await register(phone, gateway.ws_url, "bob", autoAnswer=True)
            assert registered["event"] == "onRegistered", registered
            final = await asyncio.wait_for(
                far.invite("bob", (kamailio.ip, kamailio.udp_port)), STEP_TIMEOUT_S
            )
            assert final.status == 200, final
            # The answer names only what the caller offered: PCMU, no telephone-event.
            assert offered_codecs(final.body) == {0: "PCMU/8000"}
            await phone.wait_for("onAnswer", timeout=STEP_TIMEOUT_S)
            # RFC 4733 needs the media path up (RTCDTMFSender waits for its transport).
            assert await far_hears(far, BROWSER_TONE_HZ) == pytest.approx(
                BROWSER_TONE_HZ, abs=TOLERANCE_HZ
            )

            await phone.send_dtmf("37", "rfc4733", durationMs=DTMF_DURATION_MS)
            assert await wait_for_info_digits(far, "37") == "37"
            await hold_and_unhold(phone)
            await phone.send_dtmf("A", "rfc4733", durationMs=DTMF_DURATION_MS)
            assert await wait_for_info_digits(far, "37A") == "37A"
            assert far.payload_types_seen == {0}
            call = far.call
            assert call is not None and call.out_of_order == 0 and call.mismatched_acks == 0
            assert await gateway.metric("gateway_dtmf_rfc4733_to_info_total", outcome="sent") == 3
            await hang_up_from_browser(phone, far)
            assert call.out_of_order == 0


async def test_hold_and_unhold_on_a_transcoded_call(
    gateway: GatewayProcess, phone: BrowserPhone, clean_bindings: None
) -> None:
    """Hold and unhold re-INVITEs on an Opus-only browser's call to a PCMU-only far end: the
    far end is offered sendonly then sendrecv, the browser gets (almost) nothing while
    held, and after unhold the call is still transcoded by the same pipeline (the mode was
    chosen once), with the tones heard both ways."""
    async with RtpFarEnd(free_port_on(SIPP_IP), tone_hz=FAR_TONE_HZ, codecs=("PCMU",)) as far:
        await opus_only_call(phone, gateway, far)
        assert await browser_receives_tone(phone) > LEVEL_THRESHOLD

        await phone.hold()
        assert (await phone.wait_for("onHold"))["held"] is True
        reinvites = far.received("INVITE")
        assert len(reinvites) == 2 and audio_direction(reinvites[1].body) == "sendonly"
        await asyncio.sleep(0.5)  # packets already in flight
        held = await packets_in_one_second(phone)
        assert held <= HELD_PACKETS_MAX, f"{held} packets reached the browser while held"

        await phone.unhold()
        assert (await phone.wait_for("onHold"))["held"] is False
        reinvites = far.received("INVITE")
        assert len(reinvites) == 3 and audio_direction(reinvites[2].body) == "sendrecv"
        assert await gateway.media_mode() == ("transcode", "opus<->PCMU")
        assert await packets_in_one_second(phone) >= PACKETS_PER_SECOND_MIN
        assert await browser_receives_tone(phone) > LEVEL_THRESHOLD
        assert await far_hears(far, BROWSER_TONE_HZ) == pytest.approx(
            BROWSER_TONE_HZ, abs=TOLERANCE_HZ
        )
        assert far.payload_types_seen == {0}
        chosen = await gateway.metric(
            "gateway_media_modes_chosen_total", mode="transcode", codec="opus<->PCMU"
        )
        assert chosen == 1, chosen
        await hang_up_from_browser(phone, far)
