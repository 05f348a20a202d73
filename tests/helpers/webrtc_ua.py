"""A scripted WebRTC user agent: SIP over WebSocket (RFC 7118) with real aiortc media.

:class:`WebRtcUa` behaves like a browser phone (JsSIP's wire habits): a ``.invalid`` Via
host, a Contact ``<sip:rand@rand.invalid;transport=ws;ob>`` with ``+sip.instance`` and
``reg-id`` (RFC 5626 §4.2), digest authentication (RFC 3261 §22, RFC 2617 MD5 with
qop=auth) on 401 and 407, offers/answers made by an aiortc ``RTCPeerConnection`` (ICE,
DTLS-SRTP, rtcp-mux) whose one audio track carries a sine tone. It plays one call at a
time: outgoing (early or late offer), incoming, hold/unhold by re-INVITE, BYE or CANCEL.

:class:`WebRtcMedia` is the media half alone (an aiortc peer, its tone track and a
recorder of what it receives), usable without SIP to test media against another peer.

RFC 4733 telephone-events (opt-in, ``telephone_event=48000``): aiortc has no
telephone-event codec, so it neither offers one nor keeps such packets (its RTP router drops
a payload type no receiver registered). With the option the peer's SDP offers (or answers)
``telephone-event/<clock>`` as Chromium does beside Opus (the SDP text is amended before it
is sent; aiortc's own description stays as it was), and every incoming RTP packet whose
payload type either SDP names telephone-event is recorded, after SRTP, as a
:class:`ReceivedEventPacket` (see :attr:`WebRtcMedia.event_packets`).

Every SIP message sent or received is kept in :attr:`WebRtcUa.messages`.

aiortc leaves loopback addresses out of its ICE candidates; tests on 127.0.0.0/8 patch
that with :func:`use_loopback_ice` (as tests/integration/test_media_engine.py does).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import hashlib
import re
import secrets
import ssl
import struct
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aioice.ice
import numpy as np
import numpy.typing as npt
import pytest
import websockets
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket
from av import AudioFrame
from websockets.asyncio.client import ClientConnection

from gateway.sip.headers import Headers, parse_name_addr, parse_name_addrs
from gateway.sip.message import Request, Response, make_response, parse

__all__ = [
    "LOOPBACK_ICE_IP",
    "REALM",
    "TELEPHONE_EVENT_PT",
    "ReceivedEventPacket",
    "SipCall",
    "SipCallFailed",
    "ToneTrack",
    "WebRtcMedia",
    "WebRtcUa",
    "add_telephone_event",
    "digest_authorization",
    "dominant_frequency",
    "telephone_event_types",
    "use_loopback_ice",
]

REALM = "example.test"
#: The address aiortc gathers its host candidate on in tests (loopback only).
LOOPBACK_ICE_IP = "127.0.0.1"
#: Tone track clock: 8 kHz mono s16, 20 ms frames (aiortc resamples for Opus itself).
TONE_RATE = 8000
TONE_FRAME_SAMPLES = 160
TONE_AMPLITUDE = 8000
#: Frames the recorder keeps (60 s of 20 ms frames); older ones are dropped.
MAX_RECORDED_FRAMES = 3000
#: Default wait for one SIP response or event, seconds.
SIP_TIMEOUT_S = 10.0
#: How long close() waits for a goodbye (BYE, un-REGISTER) answer, seconds.
CLOSE_TIMEOUT_S = 3.0
#: Most authentication retries for one request (RFC 3261 §22.2: stop on a repeated challenge).
MAX_AUTH_ATTEMPTS = 2
#: Registration lifetime asked for (JsSIP's default).
REGISTER_EXPIRES_S = 600
#: RFC 5626 §3.5.1: a double CRLF ping is answered by a single CRLF pong.
CRLF_PING = "\r\n\r\n"
CRLF_PONG = "\r\n"
ALLOW = "INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO,NOTIFY"
#: aiortc codec names accepted in ``codecs=`` (the SDP encoding names).
CODEC_MIME = {"PCMU": "audio/PCMU", "PCMA": "audio/PCMA", "opus": "audio/opus"}
#: Payload type of the telephone-event format added to offers (dynamic, RFC 3551 §3; aiortc
#: numbers opus 96 and uses static types for the others).
TELEPHONE_EVENT_PT = 101
#: Events 0-15 (the DTMF digits, RFC 4733 §3.2) are what the added format carries.
TELEPHONE_EVENT_FMTP = "0-16"
#: RFC 4733 §2.3 payload: event, E|R|volume, duration.
TELEPHONE_EVENT = struct.Struct("!BBH")
#: Event packets kept (a few minutes of digits).
MAX_EVENT_PACKETS = 3000
_TE_RTPMAP = re.compile(r"^a=rtpmap:(\d+) telephone-event/(\d+)", re.IGNORECASE | re.MULTILINE)

Direction = Literal["sendrecv", "sendonly", "recvonly", "inactive"]


# --------------------------------------------------------------------------- ICE on loopback


def loopback_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """Replacement for ``aioice.ice.get_host_addresses``: loopback only."""
    return [LOOPBACK_ICE_IP]


def use_loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make aiortc gather its host candidate on 127.0.0.1 only (aioice skips loopback)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", loopback_host_addresses)


# --------------------------------------------------------------------------- audio


def sine(frequency: float, start_sample: int, count: int, rate: int = TONE_RATE) -> np.ndarray:
    """``count`` int16 samples of a sine at ``frequency`` Hz starting at ``start_sample``."""
    t = (np.arange(count) + start_sample) / rate
    return (TONE_AMPLITUDE * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def dominant_frequency(samples: npt.NDArray[Any], rate: int) -> float:
    """Frequency in Hz of the FFT magnitude peak (Hann window, DC removed); 0.0 if empty."""
    if len(samples) < 2:
        return 0.0
    x = samples.astype(np.float64)
    x -= x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * rate / len(x)


def rms(samples: npt.NDArray[Any]) -> float:
    """Root mean square of int16 samples (0.0 if empty)."""
    if len(samples) == 0:
        return 0.0
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


class ToneTrack(MediaStreamTrack):
    """aiortc audio track: a sine at ``frequency`` Hz in real-time paced 20 ms frames."""

    kind = "audio"

    def __init__(self, frequency: float = 1000.0) -> None:
        super().__init__()
        self.frequency = frequency
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        """The next 20 ms frame, no earlier than its play-out time."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            wait = self._start + self._pts / TONE_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        frame = AudioFrame(format="s16", layout="mono", samples=TONE_FRAME_SAMPLES)
        frame.planes[0].update(sine(self.frequency, self._pts, TONE_FRAME_SAMPLES).tobytes())
        frame.sample_rate = TONE_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, TONE_RATE)
        self._pts += TONE_FRAME_SAMPLES
        return frame


@dataclass(frozen=True)
class ReceivedFrame:
    """One decoded audio frame from the receiving track."""

    time: float  #: time.monotonic() at arrival
    pcm: npt.NDArray[np.int16]  #: mono samples (first channel)
    sample_rate: int


@dataclass(frozen=True)
class ReceivedEventPacket:
    """One RFC 4733 telephone-event RTP packet as received (after SRTP), fields unfolded."""

    time: float  #: time.monotonic() at arrival
    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    event: int  #: event code (RFC 4733 §3.2: 0-9 digits, 10 *, 11 #, 12-15 A-D)
    end: bool  #: the E bit
    volume: int
    duration: int  #: in timestamp units of the payload type's clock


def telephone_event_types(sdp: str) -> dict[int, int]:
    """payload type -> clock rate of every ``telephone-event`` rtpmap in ``sdp``."""
    return {int(pt): int(clock) for pt, clock in _TE_RTPMAP.findall(sdp)}


def add_telephone_event(sdp: str, pt: int, clock: int) -> str:
    """``sdp`` with ``telephone-event/clock`` as payload type ``pt`` appended to the first
    audio m-line, its rtpmap and fmtp (RFC 4733 §7.1.1) after that section's last line."""
    newline = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(newline)
    trailer = lines.pop() if lines and lines[-1] == "" else None
    start = next((i for i, line in enumerate(lines) if line.startswith("m=audio ")), None)
    if start is None:
        raise ValueError("no audio m-line to add telephone-event to")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
    lines[start] += f" {pt}"
    lines[end:end] = [
        f"a=rtpmap:{pt} telephone-event/{clock}",
        f"a=fmtp:{pt} {TELEPHONE_EVENT_FMTP}",
    ]
    if trailer is not None:
        lines.append(trailer)
    return newline.join(lines)


class AudioRecorder:
    """Drains a remote audio track into :class:`ReceivedFrame` records."""

    def __init__(self) -> None:
        self.frames: list[ReceivedFrame] = []
        self.count = 0  #: frames received in total (``frames`` keeps the last ones)
        self._tasks: list[asyncio.Task[None]] = []

    def attach(self, track: MediaStreamTrack) -> None:
        """Start draining ``track`` (once per remote track)."""
        self._tasks.append(asyncio.ensure_future(self._drain(track)))

    async def _drain(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if not isinstance(frame, AudioFrame):
                    continue
                data = frame.to_ndarray()
                channels = len(frame.layout.channels)
                # packed s16: one row, channels interleaved; planar: one row per channel
                pcm = data[0][::channels] if data.shape[0] == 1 else data[0]
                self.frames.append(
                    ReceivedFrame(time.monotonic(), pcm.astype(np.int16), frame.sample_rate)
                )
                self.count += 1
                if len(self.frames) > MAX_RECORDED_FRAMES:
                    del self.frames[: len(self.frames) - MAX_RECORDED_FRAMES]

    def recent(self, last_seconds: float = 1.0) -> tuple[npt.NDArray[np.int16], int]:
        """(samples, rate) of the frames that arrived in the last ``last_seconds``."""
        if not self.frames:
            return np.zeros(0, dtype=np.int16), TONE_RATE
        cutoff = time.monotonic() - last_seconds
        rate = self.frames[-1].sample_rate
        chunks = [f.pcm for f in self.frames if f.time >= cutoff and f.sample_rate == rate]
        if not chunks:
            return np.zeros(0, dtype=np.int16), rate
        return np.concatenate(chunks), rate

    def dominant_frequency(self, last_seconds: float = 1.0) -> float:
        """Peak frequency of the last ``last_seconds`` of received audio."""
        samples, rate = self.recent(last_seconds)
        return dominant_frequency(samples, rate)

    def rms(self, last_seconds: float = 1.0) -> float:
        """RMS level of the last ``last_seconds`` of received audio."""
        return rms(self.recent(last_seconds)[0])

    async def close(self) -> None:
        """Stop draining."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, MediaStreamError):
                await task
        self._tasks.clear()


# --------------------------------------------------------------------------- media


class WebRtcMedia:
    """One aiortc peer connection with a tone track and a recorder of received audio.

    Args:
        codecs: SDP encoding names in preference order ("PCMU", "PCMA", "opus"), applied
            with ``setCodecPreferences``.
        tone_hz: frequency of the sine this peer sends.
        telephone_event: offer ``telephone-event`` at this clock rate (48000 beside Opus,
            as Chromium does) as payload type :data:`TELEPHONE_EVENT_PT`, answer it when an
            offer has it at this rate, and record incoming event packets. None (default):
            aiortc's own SDP, nothing recorded.
    """

    def __init__(
        self,
        *,
        codecs: Sequence[str] = ("PCMU",),
        tone_hz: float = 1000.0,
        telephone_event: int | None = None,
    ) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = ToneTrack(tone_hz)
        self.recorder = AudioRecorder()
        self.codecs = list(codecs)
        self.transceiver: RTCRtpTransceiver | None = None
        self.telephone_event = telephone_event
        #: telephone-event packets received, oldest first (only with ``telephone_event``)
        self.event_packets: list[ReceivedEventPacket] = []
        #: payload type -> clock of the telephone-event formats in the local and remote SDP
        self.event_types: dict[int, int] = {}
        self._watched: set[int] = set()
        self._closed = False

        @self.pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self.recorder.attach(track)

    def _preferences(self) -> list[Any]:
        capabilities = RTCRtpSender.getCapabilities("audio").codecs
        preferred = []
        for name in self.codecs:
            mime = CODEC_MIME.get(name)
            if mime is None:
                raise ValueError(f"unknown codec {name!r}; known: {sorted(CODEC_MIME)}")
            preferred += [c for c in capabilities if c.mimeType.lower() == mime.lower()]
        return preferred

    def _add_transceiver(self) -> RTCRtpTransceiver:
        transceiver = self.pc.addTransceiver(self.track, direction="sendrecv")
        transceiver.setCodecPreferences(self._preferences())
        self.transceiver = transceiver
        return transceiver

    async def create_offer(self) -> str:
        """A new local offer (first offer or a re-offer); returns its SDP (with
        telephone-event added when ``telephone_event`` is set)."""
        if self.transceiver is None:
            self._add_transceiver()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp: str = self.pc.localDescription.sdp
        if self.telephone_event is not None:
            sdp = add_telephone_event(sdp, TELEPHONE_EVENT_PT, self.telephone_event)
            self._watch_events(sdp)
        return sdp

    async def accept_answer(self, sdp: str, *, provisional: bool = False) -> None:
        """Apply the remote answer (``provisional``: a 183's SDP, as an RFC 8829 pranswer)."""
        kind = "pranswer" if provisional else "answer"
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, kind))
        if self.telephone_event is not None:
            self._watch_events(sdp)

    def _watch_events(self, sdp: str) -> None:
        """Learn the telephone-event types of ``sdp`` and record event packets arriving on
        the audio transport (hooked once per DTLS transport, ahead of aiortc's RTP router,
        which would drop them)."""
        self.event_types.update(telephone_event_types(sdp))
        transport = None if self.transceiver is None else self.transceiver.receiver.transport
        if transport is None or id(transport) in self._watched:
            return
        self._watched.add(id(transport))
        handle_rtp = transport._handle_rtp_data

        async def recording(data: bytes, arrival_time_ms: int) -> None:
            self._record_event(data)
            await handle_rtp(data, arrival_time_ms)

        setattr(transport, "_handle_rtp_data", recording)  # noqa: B010 - instance override

    def _record_event(self, data: bytes) -> None:
        try:
            packet = RtpPacket.parse(data)
        except ValueError:
            return
        pt = packet.payload_type
        if pt not in self.event_types or len(packet.payload) < TELEPHONE_EVENT.size:
            return
        event, flags, duration = TELEPHONE_EVENT.unpack_from(packet.payload)
        self.event_packets.append(
            ReceivedEventPacket(
                time=time.monotonic(),
                payload_type=pt,
                marker=bool(packet.marker),
                seq=packet.sequence_number,
                timestamp=packet.timestamp,
                ssrc=packet.ssrc,
                event=event,
                end=bool(flags & 0x80),
                volume=flags & 0x3F,
                duration=duration,
            )
        )
        if len(self.event_packets) > MAX_EVENT_PACKETS:
            del self.event_packets[: len(self.event_packets) - MAX_EVENT_PACKETS]

    async def accept_offer(self, sdp: str) -> str:
        """Apply a remote offer and return the local answer's SDP."""
        first = self.transceiver is None
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        if first:
            # aiortc created a recvonly transceiver for the offered audio: send on it too.
            for transceiver in self.pc.getTransceivers():
                if transceiver.kind == "audio":
                    transceiver.direction = "sendrecv"
                    transceiver.sender.replaceTrack(self.track)
                    transceiver.setCodecPreferences(self._preferences())
                    self.transceiver = transceiver
                    break
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        answer: str = self.pc.localDescription.sdp
        if self.telephone_event is not None:
            # RFC 3264 §6.1: answer the offered format with the offer's payload type.
            offered = [
                pt
                for pt, clock in telephone_event_types(sdp).items()
                if clock == self.telephone_event
            ]
            if offered:
                answer = add_telephone_event(answer, offered[0], self.telephone_event)
            self._watch_events(sdp)
            self._watch_events(answer)
        return answer

    def set_direction(self, direction: Direction) -> None:
        """The direction the next offer or answer asks for (RFC 3264 §5.1)."""
        if self.transceiver is None:
            raise RuntimeError("no audio transceiver yet")
        self.transceiver.direction = direction

    @property
    def current_direction(self) -> str | None:
        """The negotiated direction of the audio transceiver."""
        return None if self.transceiver is None else self.transceiver.currentDirection

    @property
    def connection_state(self) -> str:
        """aiortc's connectionState ("new", "connecting", "connected", "failed", "closed")."""
        state: str = self.pc.connectionState
        return state

    def negotiated_codec(self) -> str | None:
        """Encoding name of the codec aiortc sends with (e.g. "PCMU", "opus"), or None.

        aiortc keeps the negotiated list on the transceiver (``_codecs``, set by
        setRemoteDescription); its stats carry no codec name.
        """
        if self.transceiver is None:
            return None
        codecs = getattr(self.transceiver, "_codecs", [])
        for codec in codecs:
            kind, _, name = codec.mimeType.partition("/")
            if name.lower() not in ("rtx", "red", "cn", "telephone-event"):
                return str(name)
        return None

    async def wait_connected(self, timeout: float = SIP_TIMEOUT_S) -> None:
        """Wait until ICE and DTLS are up; AssertionError on failure or timeout."""
        deadline = time.monotonic() + timeout
        while self.pc.connectionState != "connected":
            if self.pc.connectionState in ("failed", "closed"):
                raise AssertionError(f"peer connection {self.pc.connectionState}")
            if time.monotonic() > deadline:
                raise AssertionError(f"peer connection still {self.pc.connectionState}")
            await asyncio.sleep(0.02)

    async def wait_frames(self, count: int, timeout: float = SIP_TIMEOUT_S) -> None:
        """Wait until ``count`` more frames have been received."""
        target = self.recorder.count + count
        deadline = time.monotonic() + timeout
        while self.recorder.count < target:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"received {self.recorder.count - target + count} of {count} frames"
                )
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        """Close the peer connection and the recorder; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.track.stop()
        await self.pc.close()
        await self.recorder.close()


# --------------------------------------------------------------------------- digest


_CHALLENGE_PARAM = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)')


def parse_challenge(value: str) -> dict[str, str]:
    """Parameters of a ``Digest`` challenge (RFC 3261 §20.44, RFC 2617 §3.2.1)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise ValueError(f"not a Digest challenge: {value!r}")
    out: dict[str, str] = {}
    for name, raw in _CHALLENGE_PARAM.findall(rest):
        out[name.lower()] = raw[1:-1] if raw.startswith('"') else raw
    return out


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def digest_authorization(
    challenge: dict[str, str],
    *,
    method: str,
    uri: str,
    username: str,
    password: str,
    nc: int = 1,
    cnonce: str | None = None,
) -> str:
    """The Authorization / Proxy-Authorization value answering ``challenge`` (RFC 2617 §3.2.2).

    MD5 only; qop=auth when the challenge offers it, else the RFC 2069 form.
    """
    algorithm = challenge.get("algorithm", "MD5")
    if algorithm.upper() != "MD5":
        raise ValueError(f"unsupported digest algorithm {algorithm}")
    realm = challenge.get("realm", "")
    nonce = challenge.get("nonce", "")
    ha1 = _md5(f"{username}:{realm}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    qops = [q.strip() for q in challenge.get("qop", "").split(",") if q.strip()]
    parts = [
        f'username="{username}"',
        f'realm="{realm}"',
        f'nonce="{nonce}"',
        f'uri="{uri}"',
        "algorithm=MD5",
    ]
    if "auth" in qops:
        cnonce = cnonce or secrets.token_hex(8)
        count = f"{nc:08x}"
        response = _md5(f"{ha1}:{nonce}:{count}:{cnonce}:auth:{ha2}")
        parts += [f'response="{response}"', "qop=auth", f'cnonce="{cnonce}"', f"nc={count}"]
    else:
        parts.append(f'response="{_md5(f"{ha1}:{nonce}:{ha2}")}"')
    if "opaque" in challenge:
        parts.append(f'opaque="{challenge["opaque"]}"')
    return "Digest " + ", ".join(parts)


# --------------------------------------------------------------------------- SIP UA


class SipCallFailed(Exception):
    """An INVITE (or re-INVITE) ended with a final non-2xx response, or timed out."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass
class SipTrace:
    """One SIP message as sent ("out") or received ("in") by a UA."""

    direction: Literal["in", "out"]
    message: Request | Response
    time: float


def _token(n: int = 8) -> str:
    return secrets.token_hex(n)


def _key(branch: str | None, method: str) -> str:
    """Client transaction key: top Via branch + CSeq method (RFC 3261 §17.1.3)."""
    return f"{branch} {method}"


def _branch() -> str:
    return "z9hG4bK" + _token(10)  # RFC 3261 §8.1.1.7 magic cookie


@dataclass
class SipCall:
    """One call (dialog) of a :class:`WebRtcUa`."""

    direction: Literal["outgoing", "incoming"]
    call_id: str
    local_tag: str
    local_uri: str
    remote_uri: str
    media: WebRtcMedia
    invite: Request | None = None
    remote_tag: str | None = None
    remote_target: str | None = None
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 1
    invite_cseq: int = 1
    invite_branch: str = ""
    #: "calling", "early", "confirmed", "ended"
    state: str = "calling"
    responses: list[Response] = field(default_factory=list)
    final: Response | None = None
    early_media: bool = False
    remote_sdp: str | None = None
    #: why aiortc refused a remote SDP (e.g. a plain RTP answer), or None
    sdp_error: str | None = None
    end_reason: str | None = None
    late_offer: bool = False
    answered: asyncio.Future[Response] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def status(self) -> int | None:
        """Status of the final response to the INVITE, once there is one."""
        return None if self.final is None else self.final.status


class WebRtcUa:
    """A SIP-over-WebSocket user agent with aiortc media; one call at a time.

    Args:
        url: ``ws://`` or ``wss://`` URL of the gateway (self-signed certificates accepted).
        user, password: digest credentials; the AoR is ``sip:user@domain``.
        domain: the SIP domain (realm).
        codecs: default codec preference for calls and answers.
        tone_hz: frequency of the tone sent on calls.
        telephone_event: offer/answer telephone-event at this clock rate on every call and
            record the event packets received (see :class:`WebRtcMedia`).
    """

    def __init__(
        self,
        url: str,
        user: str,
        password: str,
        *,
        domain: str = REALM,
        display_name: str | None = None,
        codecs: Sequence[str] = ("PCMU",),
        tone_hz: float = 1000.0,
        early_as_pranswer: bool = True,
        telephone_event: int | None = None,
    ) -> None:
        # aiortc never starts DTLS after a pranswer followed by the answer when the
        # far side is ICE-lite; early_as_pranswer=False applies a 183's SDP as the
        # answer (what webphones do when 183 and 200 carry the same SDP).
        self.early_as_pranswer = early_as_pranswer
        self.url = url
        self.user = user
        self.password = password
        self.domain = domain
        self.display_name = display_name
        self.codecs = list(codecs)
        self.tone_hz = tone_hz
        self.telephone_event = telephone_event
        self.aor = f"sip:{user}@{domain}"
        self.via_host = f"{_token(6)}.invalid"  # JsSIP: random host under .invalid
        self.contact_uri = f"sip:{_token(4)}@{self.via_host};transport=ws;ob"
        self.instance_id = str(uuid.uuid4())
        self.messages: list[SipTrace] = []
        self.call_: SipCall | None = None
        self.calls: list[SipCall] = []
        self.registered = False
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending: dict[str, asyncio.Queue[Response]] = {}
        self._incoming: asyncio.Queue[SipCall] = asyncio.Queue()
        self._reg_call_id = _token(10)
        self._reg_tag = _token(5)
        self._reg_cseq = 0
        self._auth: dict[str, str] | None = None  # last challenge, for nonce reuse
        self._closed = False
        self.pongs = 0

    # ------------------------------------------------------------------ transport

    async def connect(self) -> None:
        """Open the WebSocket with the ``sip`` subprotocol (RFC 7118 §4)."""
        context: ssl.SSLContext | None = None
        if self.url.startswith("wss:"):
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # test certificates are self-signed
        self._ws = await websockets.connect(
            self.url,
            subprotocols=["sip"],  # type: ignore[list-item]
            ssl=context,
            open_timeout=SIP_TIMEOUT_S,
            ping_interval=None,
        )
        self._reader = asyncio.ensure_future(self._read_loop())

    @property
    def transport_name(self) -> str:
        """Via transport: WSS on wss://, else WS (RFC 7118 §5.2)."""
        return "WSS" if self.url.startswith("wss:") else "WS"

    async def _send(self, message: Request | Response) -> None:
        if self._ws is None:
            raise RuntimeError("not connected")
        self.messages.append(SipTrace("out", message, time.monotonic()))
        await self._ws.send(bytes(message).decode("utf-8", "surrogateescape"))

    async def _read_loop(self) -> None:
        assert self._ws is not None
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self._ws:
                data = raw.encode() if isinstance(raw, str) else bytes(raw)
                if not data.strip(b"\r\n"):
                    if data == CRLF_PING.encode():
                        await self._ws.send(CRLF_PONG)
                    else:
                        self.pongs += 1
                    continue
                try:
                    message = parse(data)
                except Exception:  # noqa: BLE001 - a test peer records and skips bad input
                    continue
                self.messages.append(SipTrace("in", message, time.monotonic()))
                if isinstance(message, Response):
                    queue = self._pending.get(_key(message.top_via.branch, message.cseq[1]))
                    if queue is not None:
                        queue.put_nowait(message)
                else:
                    self._spawn(self._handle_request(message))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ building

    def _from(self, tag: str) -> str:
        name = f'"{self.display_name}" ' if self.display_name else ""
        return f"{name}<{self.aor}>;tag={tag}"

    def _contact(self, *, register: bool = False) -> str:
        value = f"<{self.contact_uri}>"
        if register:
            # RFC 5626 §4.2: instance-id and reg-id on the REGISTER Contact
            value += f';+sip.ice;reg-id=1;+sip.instance="<urn:uuid:{self.instance_id}>"'
            value += f";expires={REGISTER_EXPIRES_S}"
        return value

    def _via(self, branch: str) -> str:
        return f"SIP/2.0/{self.transport_name} {self.via_host};branch={branch}"

    def _request(
        self,
        method: str,
        uri: str,
        *,
        from_: str,
        to: str,
        call_id: str,
        cseq: int,
        branch: str | None = None,
        routes: Iterable[str] = (),
        extra: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str = "application/sdp",
    ) -> Request:
        headers = Headers([("Via", self._via(branch or _branch())), ("Max-Forwards", "69")])
        for route in routes:
            headers.add("Route", route)
        headers.add("To", to)
        headers.add("From", from_)
        headers.add("Call-ID", call_id)
        headers.add("CSeq", f"{cseq} {method}")
        for name, value in extra:
            headers.add(name, value)
        if body:
            headers.add("Content-Type", content_type)
        headers.add("Content-Length", str(len(body)))
        return Request(method, uri, headers, body)

    async def _transaction(
        self, request: Request, *, final_only: bool = True, timeout: float = SIP_TIMEOUT_S
    ) -> Response:
        """Send ``request`` and return its final response (WS is reliable: no retransmits)."""
        branch = _key(request.top_via.branch, request.method)
        queue: asyncio.Queue[Response] = asyncio.Queue()
        self._pending[branch] = queue
        try:
            await self._send(request)
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no final response to {request.method}")
                response = await asyncio.wait_for(queue.get(), remaining)
                if response.status >= 200 or not final_only:
                    return response
        finally:
            self._pending.pop(branch, None)

    def _authorize(self, request: Request, response: Response, attempt: int) -> bool:
        """Add credentials for a 401/407 challenge (RFC 3261 §22.2, §22.3); False if none."""
        if attempt >= MAX_AUTH_ATTEMPTS:
            return False
        if response.status == 401:
            challenge_name, answer_name = "WWW-Authenticate", "Authorization"
        else:
            challenge_name, answer_name = "Proxy-Authenticate", "Proxy-Authorization"
        value = response.headers.get(challenge_name)
        if value is None:
            return False
        challenge = parse_challenge(value)
        request.headers.set(
            answer_name,
            digest_authorization(
                challenge,
                method=request.method,
                uri=request.uri,
                username=self.user,
                password=self.password,
            ),
        )
        return True

    # ------------------------------------------------------------------ registration

    async def register(self, expires: int = REGISTER_EXPIRES_S) -> Response:
        """REGISTER (with digest auth); returns the final response, 200 on success."""
        if self._ws is None:
            await self.connect()
        attempt = 0
        auth: tuple[str, str] | None = None
        while True:
            self._reg_cseq += 1
            contact = self._contact(register=True)
            if expires != REGISTER_EXPIRES_S:
                contact = contact.rsplit(";expires=", 1)[0] + f";expires={expires}"
            request = self._request(
                "REGISTER",
                f"sip:{self.domain}",
                from_=self._from(self._reg_tag),
                to=f"<{self.aor}>",
                call_id=self._reg_call_id,
                cseq=self._reg_cseq,
                extra=[
                    ("Contact", contact),
                    ("Expires", str(expires)),
                    ("Allow", ALLOW),
                    ("Supported", "path,outbound,gruu"),
                ],
            )
            if auth is not None:
                request.headers.set(*auth)
            response = await self._transaction(request)
            if response.status in (401, 407) and self._authorize(request, response, attempt):
                attempt += 1
                name = "Authorization" if response.status == 401 else "Proxy-Authorization"
                value = request.headers.get(name)
                assert value is not None
                auth = (name, value)
                continue
            if 200 <= response.status < 300:
                self.registered = expires > 0
            return response

    async def unregister(self) -> Response:
        """REGISTER with Expires 0 for this Contact."""
        return await self.register(expires=0)

    # ------------------------------------------------------------------ outgoing call

    async def call(
        self,
        target: str,
        *,
        codecs: Sequence[str] | None = None,
        late_offer: bool = False,
        headers: Iterable[tuple[str, str]] = (),
        wait_for: Literal["sent", "progress", "answer"] = "answer",
        timeout: float = SIP_TIMEOUT_S,
    ) -> SipCall:
        """Call ``target`` (a SIP URI); returns the call once ``wait_for`` is reached.

        With an early offer the INVITE carries aiortc's offer; a 183 with SDP is applied
        as a provisional answer (early media), the 200's SDP as the answer. With
        ``late_offer`` the INVITE has no body, the 200 carries the offer and the ACK the
        answer (RFC 3261 §13.2.1). ``wait_for="answer"`` raises :class:`SipCallFailed`
        on a non-2xx final response.
        """
        if self._ws is None:
            await self.connect()
        if self.call_ is not None and self.call_.state != "ended":
            raise RuntimeError("a call is already in progress")
        media = WebRtcMedia(
            codecs=codecs or self.codecs,
            tone_hz=self.tone_hz,
            telephone_event=self.telephone_event,
        )
        call = SipCall(
            direction="outgoing",
            call_id=_token(10),
            local_tag=_token(5),
            local_uri=self.aor,
            remote_uri=target,
            media=media,
            late_offer=late_offer,
        )
        self.call_ = call
        self.calls.append(call)
        body = b"" if late_offer else (await media.create_offer()).encode()
        call.invite = self._request(
            "INVITE",
            target,
            from_=self._from(call.local_tag),
            to=f"<{target}>",
            call_id=call.call_id,
            cseq=call.local_cseq,
            extra=[
                ("Contact", self._contact()),
                ("Allow", ALLOW),
                ("Supported", "outbound"),
                *headers,
            ],
            body=body,
        )
        call.invite_branch = call.invite.top_via.branch or ""
        queue: asyncio.Queue[Response] = asyncio.Queue()
        self._pending[_key(call.invite_branch, "INVITE")] = queue
        await self._send(call.invite)
        self._spawn(self._run_invite(call, queue, timeout))
        if wait_for == "progress":
            deadline = time.monotonic() + timeout
            while not (call.progress.is_set() or call.answered.done()):
                if time.monotonic() > deadline:
                    raise TimeoutError("no 18x or final response to the INVITE")
                await asyncio.sleep(0.02)
        elif wait_for == "answer":
            await asyncio.wait_for(asyncio.shield(call.answered), timeout + 1)
        return call

    async def _run_invite(
        self, call: SipCall, queue: asyncio.Queue[Response], timeout: float
    ) -> None:
        """The INVITE client transaction (RFC 3261 §17.1.1) plus auth retries."""
        attempts = 0
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                response = await asyncio.wait_for(queue.get(), remaining)
                if response.cseq[0] != call.invite_cseq:
                    continue  # a late response to an earlier (challenged) INVITE
                call.responses.append(response)
                if response.status < 200:
                    await self._on_provisional(call, response)
                    continue
                if response.status < 300:
                    await self._on_invite_2xx(call, response)
                    return
                # RFC 3261 §17.1.1.3: a non-2xx final is ACKed in the same transaction
                await self._send(self._ack_non_2xx(call, response))
                if (
                    response.status in (401, 407)
                    and call.state == "calling"
                    and call.invite is not None
                    and self._authorize(call.invite, response, attempts)
                ):
                    attempts += 1
                    self._pending.pop(_key(call.invite_branch, "INVITE"), None)
                    self._retry_invite(call)
                    self._pending[_key(call.invite_branch, "INVITE")] = queue
                    await self._send(call.invite)
                    continue
                call.final = response
                call.state = "ended"
                call.end_reason = f"{response.status} {response.reason}"
                call.answered.set_exception(SipCallFailed(response.status, response.reason))
                call.answered.exception()  # retrieved: no "never retrieved" warning
                call.ended.set()
                await call.media.close()
                return
        except TimeoutError:
            if not call.answered.done():
                call.answered.set_exception(SipCallFailed(408, "Request Timeout"))
                call.answered.exception()
            call.state = "ended"
            call.end_reason = "timeout"
            call.ended.set()
            await call.media.close()
        finally:
            self._pending.pop(_key(call.invite_branch, "INVITE"), None)

    def _retry_invite(self, call: SipCall) -> None:
        """Same INVITE with a new branch and the next CSeq (RFC 3261 §22.2)."""
        assert call.invite is not None
        call.invite = call.invite.copy()  # the one sent stays as it was in ``messages``
        call.local_cseq += 1
        call.invite_cseq = call.local_cseq
        call.invite_branch = _branch()
        call.invite.headers.set("Via", self._via(call.invite_branch))
        call.invite.headers.set("CSeq", f"{call.invite_cseq} INVITE")

    def _ack_non_2xx(self, call: SipCall, response: Response) -> Request:
        """ACK for a non-2xx final: same branch, To from the response (RFC 3261 §17.1.1.3)."""
        assert call.invite is not None
        to = response.headers.get("To") or f"<{call.remote_uri}>"
        return self._request(
            "ACK",
            call.invite.uri,
            from_=self._from(call.local_tag),
            to=to,
            call_id=call.call_id,
            cseq=call.invite_cseq,
            branch=call.invite_branch,
            routes=call.invite.headers.get_all("Route"),
        )

    def _learn_dialog(self, call: SipCall, response: Response) -> None:
        """Remote tag, target and route set from a dialog-creating response (§12.1.2)."""
        call.remote_tag = response.to_tag
        contact = response.headers.get("Contact")
        if contact:
            call.remote_target = str(parse_name_addr(contact).uri)
        records: list[str] = []
        for value in response.headers.get_all("Record-Route"):
            records.extend(str(n) for n in parse_name_addrs(value))
        call.route_set = list(reversed(records))  # UAC: reverse order (RFC 3261 §12.1.2)

    async def _on_provisional(self, call: SipCall, response: Response) -> None:
        if response.status == 100:
            return
        call.progress.set()
        if response.to_tag and call.state == "calling":
            call.state = "early"
            self._learn_dialog(call, response)
        if response.body and not call.late_offer and call.remote_sdp is None:
            # Early media (RFC 3960): the 183's SDP as a provisional answer.
            sdp = response.body.decode()
            try:
                await call.media.accept_answer(sdp, provisional=self.early_as_pranswer)
                call.remote_sdp = sdp
                call.early_media = True
            except Exception as exc:  # noqa: BLE001 - kept for the test to assert on
                call.sdp_error = f"{type(exc).__name__}: {exc}"

    async def _on_invite_2xx(self, call: SipCall, response: Response) -> None:
        call.final = response
        self._learn_dialog(call, response)
        ack_body = b""
        sdp = response.body.decode() if response.body else None
        try:
            if call.late_offer and sdp is not None:
                ack_body = (await call.media.accept_offer(sdp)).encode()
                call.remote_sdp = sdp
            elif (
                sdp is not None
                and call.early_media
                and not self.early_as_pranswer
                and sdp == call.remote_sdp
            ):
                pass  # the 183's SDP already applied as the answer
            elif sdp is not None and (call.remote_sdp is None or call.early_media):
                # After a 183 the 200's SDP is the final answer (same as the 183's, or not).
                await call.media.accept_answer(sdp)
                call.remote_sdp = sdp
        except Exception as exc:  # noqa: BLE001 - kept for the test to assert on
            call.sdp_error = f"{type(exc).__name__}: {exc}"
        # RFC 3261 §13.2.2.4: the UAC ACKs every 2xx, even one whose SDP it cannot use.
        await self._send(self._in_dialog(call, "ACK", cseq=call.invite_cseq, body=ack_body))
        call.state = "confirmed"
        if not call.answered.done():
            call.answered.set_result(response)

    def _in_dialog(
        self,
        call: SipCall,
        method: str,
        *,
        cseq: int | None = None,
        body: bytes = b"",
        extra: Iterable[tuple[str, str]] = (),
    ) -> Request:
        """A request inside ``call``'s dialog (RFC 3261 §12.2.1.1)."""
        if cseq is None:
            call.local_cseq += 1
            cseq = call.local_cseq
        to = f"<{call.remote_uri}>" + (f";tag={call.remote_tag}" if call.remote_tag else "")
        from_ = self._from(call.local_tag) if call.direction == "outgoing" else None
        if from_ is None:
            from_ = f"<{call.local_uri}>;tag={call.local_tag}"
        headers = list(extra)
        if method == "INVITE":
            headers = [("Contact", self._contact()), ("Allow", ALLOW), *headers]
        return self._request(
            method,
            call.remote_target or call.remote_uri,
            from_=from_,
            to=to,
            call_id=call.call_id,
            cseq=cseq,
            routes=call.route_set,
            extra=headers,
            body=body,
        )

    # ------------------------------------------------------------------ in-call actions

    def _current(self) -> SipCall:
        if self.call_ is None:
            raise RuntimeError("no call")
        return self.call_

    async def _reinvite(self, direction: Direction, timeout: float) -> Response:
        call = self._current()
        if call.state != "confirmed":
            raise RuntimeError(f"cannot re-INVITE in state {call.state}")
        call.media.set_direction(direction)
        offer = await call.media.create_offer()
        request = self._in_dialog(call, "INVITE", body=offer.encode())
        response = await self._transaction(request, timeout=timeout)
        if 200 <= response.status < 300:
            await self._send(self._in_dialog(call, "ACK", cseq=request.cseq[0]))
            if response.body:
                call.remote_sdp = response.body.decode()
                try:
                    await call.media.accept_answer(call.remote_sdp)
                except Exception as exc:  # noqa: BLE001 - kept for the test to assert on
                    call.sdp_error = f"{type(exc).__name__}: {exc}"
        else:
            await self._send(self._ack_for_in_dialog_failure(call, request, response))
            with contextlib.suppress(Exception):
                await call.media.pc.setRemoteDescription(RTCSessionDescription("", "rollback"))
            raise SipCallFailed(response.status, response.reason)
        return response

    def _ack_for_in_dialog_failure(
        self, call: SipCall, request: Request, response: Response
    ) -> Request:
        ack = self._in_dialog(call, "ACK", cseq=request.cseq[0])
        ack.headers.set("Via", request.headers.get("Via") or "")
        return ack

    async def hold(self, timeout: float = SIP_TIMEOUT_S) -> Response:
        """Re-INVITE with a=sendonly (RFC 3264 §8.4); returns the 200."""
        return await self._reinvite("sendonly", timeout)

    async def unhold(self, timeout: float = SIP_TIMEOUT_S) -> Response:
        """Re-INVITE with a=sendrecv; returns the 200."""
        return await self._reinvite("sendrecv", timeout)

    async def hangup(self, timeout: float = SIP_TIMEOUT_S) -> Response | None:
        """End the call: BYE when confirmed, CANCEL while ringing, 486 to an unanswered
        incoming call. Returns the BYE's/CANCEL's response (None for a rejection)."""
        call = self._current()
        result: Response | None = None
        if call.state == "ended":
            return None
        if call.direction == "incoming" and call.state != "confirmed":
            await self._reject(call, 486)
        elif call.state == "confirmed":
            result = await self._transaction(self._in_dialog(call, "BYE"), timeout=timeout)
            await self._end(call, "local BYE")
        else:
            result = await self._cancel(call, timeout)
        return result

    async def _cancel(self, call: SipCall, timeout: float) -> Response:
        """CANCEL the pending INVITE (RFC 3261 §9.1): same branch, Request-URI, To."""
        assert call.invite is not None
        cancel = self._request(
            "CANCEL",
            call.invite.uri,
            from_=self._from(call.local_tag),
            to=f"<{call.remote_uri}>",
            call_id=call.call_id,
            cseq=call.invite_cseq,
            branch=call.invite_branch,
            routes=call.invite.headers.get_all("Route"),
        )
        key = _key(call.invite_branch, "CANCEL")
        queue: asyncio.Queue[Response] = asyncio.Queue()
        self._pending[key] = queue
        try:
            await self._send(cancel)
            response = await asyncio.wait_for(queue.get(), timeout)
        finally:
            self._pending.pop(key, None)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call.ended.wait(), timeout)  # 487 -> ACK
        return response

    async def drop(self) -> None:
        """Abort the WebSocket without a close frame (as a browser losing its network)."""
        if self._ws is not None:
            self._ws.transport.abort()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, CLOSE_TIMEOUT_S)
        self.registered = False

    # ------------------------------------------------------------------ incoming

    async def wait_incoming(self, timeout: float = SIP_TIMEOUT_S) -> SipCall:
        """The next incoming call (its INVITE already answered with 180)."""
        return await asyncio.wait_for(self._incoming.get(), timeout)

    async def answer(self, codecs: Sequence[str] | None = None) -> Response:
        """Answer the ringing incoming call with aiortc's answer (200), or 488 when aiortc
        refuses the offer; returns the response sent. The ACK is awaited by wait_confirmed()."""
        call = self._current()
        if call.direction != "incoming" or call.invite is None:
            raise RuntimeError("no incoming call to answer")
        if codecs is not None:
            call.media.codecs = list(codecs)
        try:
            if call.invite.body:
                sdp = (await call.media.accept_offer(call.invite.body.decode())).encode()
                call.remote_sdp = call.invite.body.decode()
            else:
                sdp = (await call.media.create_offer()).encode()  # offer in 200, answer in ACK
                call.late_offer = True
        except Exception as exc:  # noqa: BLE001 - recorded, answered 488 (RFC 3261 §13.3.1.3)
            call.sdp_error = f"{type(exc).__name__}: {exc}"
            return await self._reject(call, 488)
        response = self._response(call.invite, 200, call, body=sdp)
        await self._send(response)
        call.state = "confirmed"
        if not call.answered.done():
            call.answered.set_result(response)
        return response

    async def wait_confirmed(self, timeout: float = SIP_TIMEOUT_S) -> None:
        """Wait for the ACK of an answered incoming call."""
        call = self._current()
        deadline = time.monotonic() + timeout
        while not any(
            t.direction == "in"
            and isinstance(t.message, Request)
            and t.message.method == "ACK"
            and t.message.call_id == call.call_id
            for t in self.messages
        ):
            if time.monotonic() > deadline:
                raise AssertionError("no ACK for the 200")
            await asyncio.sleep(0.02)

    async def _reject(self, call: SipCall, status: int) -> Response:
        assert call.invite is not None
        response = self._response(call.invite, status, call)
        await self._send(response)
        await self._end(call, f"rejected {status}")
        return response

    def _response(
        self, request: Request, status: int, call: SipCall | None, *, body: bytes = b""
    ) -> Response:
        """A response copying Record-Route for dialog-creating answers (RFC 3261 §12.1.1)."""
        tag = call.local_tag if call is not None else None
        response = make_response(request, status, to_tag=tag)
        if request.method == "INVITE" and 100 < status < 300:
            for value in request.headers.get_all("Record-Route"):
                response.headers.add("Record-Route", value)
            response.headers.add("Contact", self._contact())
            response.headers.add("Allow", ALLOW)
        if body:
            response.headers.add("Content-Type", "application/sdp")
        response.body = body
        return response

    async def _handle_request(self, request: Request) -> None:
        call = self.call_
        in_call = (
            call is not None
            and request.call_id == call.call_id
            and request.to_tag is not None
            and request.to_tag == call.local_tag
        )
        method = request.method
        if method == "INVITE" and not request.to_tag:
            await self._new_incoming(request)
        elif method == "INVITE" and in_call and call is not None:
            await self._remote_reinvite(call, request)
        elif method == "ACK":
            if in_call and call is not None and request.body and call.late_offer:
                with contextlib.suppress(Exception):
                    await call.media.accept_answer(request.body.decode())
                    call.remote_sdp = request.body.decode()
        elif method == "BYE":
            if in_call and call is not None:
                await self._send(self._response(request, 200, call))
                await self._end(call, "remote BYE")
            else:
                await self._send(make_response(request, 481))
        elif method == "CANCEL":
            await self._remote_cancel(request)
        elif method in ("OPTIONS", "MESSAGE", "INFO", "NOTIFY"):
            await self._send(make_response(request, 200))
        else:
            await self._send(make_response(request, 405))

    async def _new_incoming(self, request: Request) -> None:
        if self.call_ is not None and self.call_.state != "ended":
            await self._send(make_response(request, 486, to_tag=_token(5)))
            return
        from_ = parse_name_addr(request.headers.get("From") or "")
        to = parse_name_addr(request.headers.get("To") or "")
        call = SipCall(
            direction="incoming",
            call_id=request.call_id,
            local_tag=_token(5),
            local_uri=str(to.uri),
            remote_uri=str(from_.uri),
            media=WebRtcMedia(
                codecs=self.codecs, tone_hz=self.tone_hz, telephone_event=self.telephone_event
            ),
            invite=request,
            remote_tag=from_.tag,
            state="early",
        )
        contact = request.headers.get("Contact")
        if contact:
            call.remote_target = str(parse_name_addr(contact).uri)
        records: list[str] = []
        for value in request.headers.get_all("Record-Route"):
            records.extend(str(n) for n in parse_name_addrs(value))
        call.route_set = records  # UAS: Record-Route order (RFC 3261 §12.1.1)
        call.invite_cseq = request.cseq[0]
        self.call_ = call
        self.calls.append(call)
        await self._send(self._response(request, 180, call))
        self._incoming.put_nowait(call)

    async def _remote_cancel(self, request: Request) -> None:
        call = self.call_
        match = call is not None and call.invite is not None and call.direction == "incoming"
        if (
            call is not None
            and call.invite is not None
            and match
            and request.top_via.branch == call.invite.top_via.branch
        ):
            await self._send(make_response(request, 200, to_tag=call.local_tag))
            if call.state != "confirmed":
                await self._send(self._response(call.invite, 487, call))
                await self._end(call, "remote CANCEL")
        else:
            await self._send(make_response(request, 481))

    async def _remote_reinvite(self, call: SipCall, request: Request) -> None:
        """A re-INVITE from the far side: answer with aiortc (offer in 200 if it has none)."""
        try:
            if request.body:
                body = (await call.media.accept_offer(request.body.decode())).encode()
                call.remote_sdp = request.body.decode()
            else:
                body = (await call.media.create_offer()).encode()
                call.late_offer = True
        except Exception as exc:  # noqa: BLE001 - recorded; 488 keeps the old session
            call.sdp_error = f"{type(exc).__name__}: {exc}"
            await self._send(self._response(request, 488, call))
            return
        await self._send(self._response(request, 200, call, body=body))

    async def _end(self, call: SipCall, reason: str) -> None:
        call.state = "ended"
        call.end_reason = call.end_reason or reason
        if not call.answered.done():
            call.answered.set_exception(SipCallFailed(0, reason))
            call.answered.exception()
        call.ended.set()
        await call.media.close()

    async def wait_ended(self, timeout: float = SIP_TIMEOUT_S) -> str:
        """Wait for the current call to end; returns why ("remote BYE", "local BYE"...)."""
        call = self._current()
        await asyncio.wait_for(call.ended.wait(), timeout)
        return call.end_reason or ""

    # ------------------------------------------------------------------ media views

    @property
    def media(self) -> WebRtcMedia:
        """The current call's media."""
        return self._current().media

    def dominant_frequency(self, last_seconds: float = 1.0) -> float:
        """Peak frequency (Hz) of audio received in the last ``last_seconds``."""
        return self.media.recorder.dominant_frequency(last_seconds)

    def received_rms(self, last_seconds: float = 1.0) -> float:
        """RMS level of audio received in the last ``last_seconds``."""
        return self.media.recorder.rms(last_seconds)

    def received_frames(self) -> list[ReceivedFrame]:
        """Every kept received frame (with arrival times), oldest first."""
        return list(self.media.recorder.frames)

    def negotiated_codec(self) -> str | None:
        """Encoding name aiortc negotiated for the current call."""
        return self.media.negotiated_codec()

    # ------------------------------------------------------------------ message views

    def sent(self, method_or_status: str | int) -> list[Request | Response]:
        """Messages sent: requests by method, or responses by status code."""
        return self._select("out", method_or_status)

    def received(self, method_or_status: str | int) -> list[Request | Response]:
        """Messages received: requests by method, or responses by status code."""
        return self._select("in", method_or_status)

    def _select(self, direction: str, what: str | int) -> list[Request | Response]:
        out: list[Request | Response] = []
        for t in self.messages:
            if t.direction != direction:
                continue
            m = t.message
            if (isinstance(what, int) and isinstance(m, Response) and m.status == what) or (
                isinstance(what, str) and isinstance(m, Request) and m.method == what
            ):
                out.append(m)
        return out

    # ------------------------------------------------------------------ shutdown

    async def close(self, *, unregister: bool = True) -> None:
        """Hang up, un-REGISTER, close the WebSocket and every peer connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        ws = self._ws
        connected = ws is not None and ws.state == websockets.protocol.State.OPEN
        if connected and self.call_ is not None and self.call_.state != "ended":
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.hangup(timeout=CLOSE_TIMEOUT_S), CLOSE_TIMEOUT_S)
        if connected and unregister and self.registered:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.unregister(), CLOSE_TIMEOUT_S)
        for call in self.calls:
            await call.media.close()
        if ws is not None:
            await ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, CLOSE_TIMEOUT_S)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def __aenter__(self) -> WebRtcUa:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
