"""Self-test of the browser harness (tests/clients/sipjs/, tests/helpers/browser.py).

Headless Chromium runs the SIP.js webphone page with real WebRTC media. Its SIP peer here is a
tiny scripted registrar/UAS written with ``websockets``: it STANDS IN FOR THE GATEWAY, which
may not be ready, and proves only that the harness works (failover, REGISTER with digest,
INVITE, DTMF INFO, hold, BYE). The gateway's own e2e tests drive this same page through the
real chain (gateway + Kamailio).

The media peer is real too: aiortc answers the browser's offer in the test process, so ICE,
DTLS-SRTP and Opus run between Chromium and aiortc over loopback. aioice leaves 127.0.0.1 out
of its host candidates; the test patches that list to loopback only, and drops the browser's
non-loopback candidates from the offer it hands aiortc, so every media packet is addressed to
127.0.0.1 (Chromium may send them from its own host address; they stay on the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import re
import secrets
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioice.ice
import numpy as np
import pytest
import pytest_asyncio
from aiortc import (
    AudioStreamTrack,
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from av.audio.frame import AudioFrame
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.helpers.browser import BrowserPhone

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

HOST = "127.0.0.1"
REALM = "example.test"
USER = "alice"
PASSWORD = "alice-secret"
DISPLAY_NAME = "Alice Test"
CLI = "15551230000"
CALLEE = "95090"
STEP_TIMEOUT_S = 10.0
TONE_HZ = 1000.0
"""Frequency of the fake microphone file Chromium plays."""
PEER_TONE_HZ = 440.0
"""Frequency aiortc sends back to the browser."""
FREQ_TOLERANCE_HZ = 15.0
MEDIA_WINDOW_S = 1.0
"""How long packet counters are watched to see media flowing."""
MIN_PACKETS_PER_WINDOW = 25
"""Opus at 20 ms ptime sends 50 packets a second; half of that proves a flow."""
ANALYSE_SECONDS = 0.5
"""Audio received by aiortc that is analysed for its dominant frequency."""
POLL_S = 0.05
"""How often the peer re-checks a condition no SIP message wakes it for."""
MUTE_SETTLE_S = 0.5
"""Time for the microphone level in getStats to follow mute/unmute."""
SKIP_SECONDS = 0.3
"""Received audio skipped first (jitter buffer and codec start-up)."""

# RFC 3261 §7.3.3 compact header forms.
COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
           "c": "content-type", "k": "supported"}  # fmt: skip


@dataclass
class SipMsg:
    """A parsed SIP message: start line, headers in order, body."""

    start: str
    headers: list[tuple[str, str]]
    body: str

    @classmethod
    def parse(cls, text: str) -> SipMsg:
        """Parse one SIP message as sent over WebSocket (one message per frame, RFC 7118 §5)."""
        head, _, body = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        return cls(lines[0], headers, body)

    def get(self, name: str) -> str | None:
        """First value of a header, by full or compact name, case-insensitive."""
        values = self.get_all(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        """All values of a header, by full or compact name, case-insensitive."""
        want = name.lower()
        return [v for n, v in self.headers if COMPACT.get(n.lower(), n.lower()) == want]

    @property
    def is_request(self) -> bool:
        """True for requests, False for responses."""
        return not self.start.startswith("SIP/2.0 ")

    @property
    def method(self) -> str:
        """Request method (requests only)."""
        return self.start.split(" ", 1)[0]

    @property
    def request_uri(self) -> str:
        """Request-URI (requests only)."""
        return self.start.split(" ")[1]


def md5(text: str) -> str:
    """Lower-case hex MD5, as RFC 2617 §3.2.2 digests are written."""
    return hashlib.md5(text.encode()).hexdigest()


def digest_params(header: str) -> dict[str, str]:
    """The parameters of a 'Digest k=v, k="v"' credentials header."""
    assert header.startswith("Digest "), header
    return {
        k.lower(): v.strip('"')
        for k, v in re.findall(r'(\w+)=("[^"]*"|[^,\s]+)', header[len("Digest ") :])
    }


def response(
    req: SipMsg,
    status: int,
    reason: str,
    *extra: str,
    body: str = "",
    to_tag: str = "",
) -> str:
    """A response to ``req`` copying Via/From/To/Call-ID/CSeq (RFC 3261 §8.2.6.2)."""
    to = req.get("to") or ""
    if status > 100 and ";tag=" not in to:
        to += ";tag=" + (to_tag or "peer" + secrets.token_hex(4))
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v}" for v in req.get_all("via")]
    lines += [f"From: {req.get('from')}", f"To: {to}", f"Call-ID: {req.get('call-id')}"]
    lines += [f"CSeq: {req.get('cseq')}", *extra]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body.encode())}")
    return "\r\n".join(lines) + "\r\n\r\n" + body


def loopback_only(sdp: str) -> str:
    """``sdp`` without the ICE candidates that are not on 127.0.0.0/8 (RFC 8839 §5.1 syntax)."""
    kept = []
    for line in sdp.split("\r\n"):
        if line.startswith("a=candidate:"):
            address = line.split()[4]
            if not address.startswith("127."):
                continue
        kept.append(line)
    return "\r\n".join(kept)


def media_direction(sdp: str) -> str | None:
    """The direction attribute of the first m= section (RFC 3264 §5.1), or None."""
    media = sdp.split("\r\nm=", 1)[1] if "\r\nm=" in sdp else ""
    found = re.search(r"^a=(sendrecv|sendonly|recvonly|inactive)\s*$", media, re.M)
    return found.group(1) if found else None


def reanswer(answer: str, offer: str) -> str:
    """The earlier answer, version bumped (RFC 3264 §8), direction mirrored from a re-offer."""
    mirror = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
    direction = mirror.get(media_direction(offer) or "sendrecv", "sendrecv")
    origin = re.search(r"^o=(\S+) (\S+) (\d+) ", answer, re.M)
    assert origin, answer
    bumped = answer.replace(
        origin.group(0),
        f"o={origin.group(1)} {origin.group(2)} {int(origin.group(3)) + 1} ",
        1,
    )
    return re.sub(
        r"^a=(sendrecv|sendonly|recvonly|inactive)\r$", f"a={direction}\r", bumped, flags=re.M
    )


def with_telephone_event(answer: str, offer: str) -> str:
    """``answer`` also accepting the offer's telephone-event/48000 (RFC 4733 §7.1.1).

    aiortc has no telephone-event codec; without one in the answer the browser cannot send
    RFC 4733 events at all. aiortc drops the event packets it gets; the browser's own
    RTCDTMFSender reports each tone it sent.
    """
    found = re.search(r"^a=rtpmap:(\d+) telephone-event/48000\r$", offer, re.M)
    if not found:
        return answer
    pt = found.group(1)
    answer = re.sub(r"^(m=audio .*)\r$", rf"\1 {pt}\r", answer, count=1, flags=re.M)
    extra = f"a=rtpmap:{pt} telephone-event/48000\r\na=fmtp:{pt} 0-16\r\n"
    first_rtpmap = answer.index("a=rtpmap:")
    return answer[:first_rtpmap] + extra + answer[first_rtpmap:]


def dominant_frequency(samples: np.ndarray[Any, Any], rate: int) -> float:
    """Frequency of the strongest FFT bin (DC left out), in Hz."""
    windowed = samples.astype(np.float64) * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(windowed))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum)) * rate / len(samples)


class ToneTrack(AudioStreamTrack):
    """aiortc's paced 20 ms audio track, filled with a sine tone instead of silence."""

    def __init__(self, frequency_hz: float) -> None:
        """A live track of ``frequency_hz`` at -6 dBFS."""
        super().__init__()
        self._frequency = frequency_hz
        self._sent = 0

    async def recv(self) -> AudioFrame:
        """The next 20 ms of tone (the base class paces the frames)."""
        frame = await super().recv()
        assert isinstance(frame, AudioFrame)
        n = frame.samples
        t = (np.arange(n) + self._sent) / frame.sample_rate
        self._sent += n
        tone = (0.5 * 32767 * np.sin(2 * np.pi * self._frequency * t)).astype("<i2")
        frame.planes[0].update(tone.tobytes())
        return frame


@dataclass
class MediaPeer:
    """aiortc's side of the call: answers the browser's offer, records the audio it receives."""

    pc: RTCPeerConnection = field(
        default_factory=lambda: RTCPeerConnection(RTCConfiguration(iceServers=[]))
    )
    samples: list[np.ndarray[Any, Any]] = field(default_factory=list)
    sample_rate: int = 0
    frames: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def answer(self, offer: str) -> str:
        """Answer ``offer``; start recording the browser's audio track when it arrives."""
        self.pc.addTrack(ToneTrack(PEER_TONE_HZ))

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self.tasks.append(asyncio.create_task(self._record(track)))

        await self.pc.setRemoteDescription(RTCSessionDescription(loopback_only(offer), "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return with_telephone_event(str(self.pc.localDescription.sdp), offer)

    async def offer(self) -> str:
        """An offer for a call toward the browser (audio, aiortc's tone track)."""
        self.pc.addTrack(ToneTrack(PEER_TONE_HZ))

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self.tasks.append(asyncio.create_task(self._record(track)))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, answer: str) -> None:
        """Apply the browser's answer to :meth:`offer`."""
        await self.pc.setRemoteDescription(RTCSessionDescription(loopback_only(answer), "answer"))

    async def _record(self, track: MediaStreamTrack) -> None:
        # Keep draining so aiortc's queue stays short; keep only what the analysis needs.
        max_samples = 0
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, AudioFrame)
            self.frames += 1
            self.sample_rate = frame.sample_rate
            max_samples = int((SKIP_SECONDS + ANALYSE_SECONDS) * frame.sample_rate)
            if sum(len(s) for s in self.samples) >= max_samples:
                continue
            channels = len(frame.layout.channels)
            # Packed s16: interleaved channels in one plane; keep the first channel.
            self.samples.append(frame.to_ndarray().reshape(-1)[::channels].copy())

    def has_window(self) -> bool:
        """True once SKIP_SECONDS + ANALYSE_SECONDS of audio were received."""
        need = int(ANALYSE_SECONDS * self.sample_rate)
        return self.sample_rate > 0 and len(self.received_audio()) >= need

    def received_audio(self) -> np.ndarray[Any, Any]:
        """The analysed window of received audio (after SKIP_SECONDS)."""
        skip = int(SKIP_SECONDS * self.sample_rate)
        audio = np.concatenate(self.samples) if self.samples else np.zeros(0)
        return audio[skip : skip + int(ANALYSE_SECONDS * self.sample_rate)]

    async def close(self) -> None:
        """Close the peer connection and stop recording."""
        await self.pc.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@dataclass
class ScriptedPeer:
    """Registrar + UAS on one WebSocket port, standing in for the gateway.

    REGISTER: 401 with a Digest challenge, then 200 when the Authorization checks out.
    INVITE: 100, 180, then 200 with aiortc's SDP answer; a re-INVITE gets the same answer
    with its direction mirrored. INFO, BYE and others: 200. :meth:`send` sends a request of
    its own (calls toward the browser) on the newest WebSocket.
    """

    port: int = 0
    scheme: str = "ws"
    received: list[SipMsg] = field(default_factory=list)
    digest_ok: list[bool] = field(default_factory=list)
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    media: MediaPeer | None = None
    answer_sdp: str = ""
    connections: list[ServerConnection] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        """ws:// or wss:// URL of the peer."""
        return f"{self.scheme}://{HOST}:{self.port}"

    @property
    def contact(self) -> str:
        """The peer's own Contact URI."""
        return f"<sip:peer@{HOST}:{self.port};transport=ws>"

    async def handler(self, ws: ServerConnection) -> None:
        """Serve one WebSocket connection until it closes."""
        self.connections.append(ws)
        try:
            async for frame in ws:
                text = frame if isinstance(frame, str) else frame.decode()
                if not text.strip():
                    continue  # CRLF keep-alive (RFC 5626 §3.5.1)
                msg = SipMsg.parse(text)
                self.received.append(msg)
                self.changed.set()
                if msg.is_request:
                    async for reply in self.replies(msg):
                        await ws.send(reply)
        except ConnectionClosed:
            pass

    async def replies(self, req: SipMsg) -> AsyncIterator[str]:
        """What the scripted peer answers to one request, in order."""
        method = req.method
        if method == "REGISTER":
            auth = req.get("authorization")
            if auth is None:
                challenge = (
                    f'WWW-Authenticate: Digest realm="{REALM}", nonce="{self.nonce}", '
                    'qop="auth", algorithm=MD5'
                )
                yield response(req, 401, "Unauthorized", challenge)
                return
            p = digest_params(auth)
            # RFC 2617 §3.2.2.1: request-digest with qop=auth.
            ha1 = md5(f"{p['username']}:{p['realm']}:{PASSWORD}")
            ha2 = md5(f"REGISTER:{p['uri']}")
            expected = md5(f"{ha1}:{p['nonce']}:{p['nc']}:{p['cnonce']}:{p['qop']}:{ha2}")
            ok = p["response"] == expected and p["nonce"] == self.nonce
            self.digest_ok.append(ok)
            if not ok:
                yield response(req, 403, "Forbidden")
                return
            expires = req.get("expires") or "600"
            contact = req.get("contact") or ""
            if contact == "*" or expires == "0":
                yield response(req, 200, "OK")
            else:
                yield response(req, 200, "OK", f"Contact: {contact};expires={expires}")
            return
        if method == "INVITE":
            if ";tag=" in (req.get("to") or ""):
                # re-INVITE (hold/unhold): same media, direction mirrored.
                self.answer_sdp = reanswer(self.answer_sdp, req.body)
                yield response(req, 200, "OK", f"Contact: {self.contact}", body=self.answer_sdp)
                return
            tag = "peer" + secrets.token_hex(4)
            yield response(req, 100, "Trying")
            yield response(req, 180, "Ringing", f"Contact: {self.contact}", to_tag=tag)
            self.media = MediaPeer()
            self.answer_sdp = await self.media.answer(req.body)
            yield response(
                req, 200, "OK", f"Contact: {self.contact}", body=self.answer_sdp, to_tag=tag
            )
            return
        if method == "ACK":
            return
        yield response(req, 200, "OK")

    async def wait(
        self, predicate: Callable[[], bool], what: str, timeout: float = STEP_TIMEOUT_S
    ) -> None:
        """Wait until ``predicate()`` is true (bounded by ``timeout``)."""

        async def loop() -> None:
            # Woken by each SIP message; polled as well, for predicates on media.
            while not predicate():
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), POLL_S)

        try:
            await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            seen = [m.start for m in self.received]
            raise AssertionError(f"peer: no {what} within {timeout} s; got {seen}") from None

    async def request(self, method: str, index: int = 0) -> SipMsg:
        """The ``index``-th request of ``method`` the peer received, waiting for it."""
        await self.wait(lambda: len(self.requests(method)) > index, f"{method} #{index}")
        return self.requests(method)[index]

    def requests(self, method: str) -> list[SipMsg]:
        """Requests of ``method`` received so far."""
        return [m for m in self.received if m.is_request and m.method == method]

    def responses(self, call_id: str, cseq: str) -> list[SipMsg]:
        """Responses received so far in call ``call_id`` whose CSeq is ``cseq`` ("1 INVITE")."""
        return [
            m
            for m in self.received
            if not m.is_request and m.get("call-id") == call_id and m.get("cseq") == cseq
        ]

    async def final_response(self, call_id: str, cseq: str) -> SipMsg:
        """The final (>= 200) response to the peer's own request ``cseq``, waiting for it."""

        def finals() -> list[SipMsg]:
            return [m for m in self.responses(call_id, cseq) if int(m.start.split(" ")[1]) >= 200]

        await self.wait(lambda: bool(finals()), f"final response to {cseq}")
        return finals()[0]

    async def send(self, text: str) -> None:
        """Send one SIP message on the newest WebSocket (the browser's flow)."""
        assert self.connections, "no WebSocket connected to the peer"
        await self.connections[-1].send(text)


@dataclass
class PeerDialog:
    """A call the scripted peer places toward the browser (RFC 3261 §12.1.2 UAC dialog)."""

    peer: ScriptedPeer
    target: str
    call_id: str = field(default_factory=lambda: secrets.token_hex(10))
    from_tag: str = field(default_factory=lambda: secrets.token_hex(4))
    to_tag: str = ""
    remote_target: str = ""

    def request(self, method: str, cseq: int, *extra: str, body: str = "") -> str:
        """An in-dialog (or initial) request from the peer to the browser."""
        to = f"<sip:{USER}@{REALM}>" + (f";tag={self.to_tag}" if self.to_tag else "")
        lines = [
            f"{method} {self.remote_target or self.target} SIP/2.0",
            f"Via: SIP/2.0/WS peer.invalid;branch=z9hG4bK{secrets.token_hex(6)}",
            "Max-Forwards: 70",
            f'From: "Bob Peer" <sip:bob@{REALM}>;tag={self.from_tag}',
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: {self.peer.contact}",
            *extra,
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + body

    async def invite(self, offer: str) -> SipMsg:
        """INVITE the browser; on its 200, ACK (RFC 3261 §13.2.2.4) and return the 200."""
        await self.peer.send(self.request("INVITE", 1, "X-Test: inbound", body=offer))
        ok = await self.peer.final_response(self.call_id, "1 INVITE")
        assert ok.start == "SIP/2.0 200 OK", ok.start
        self.to_tag = (ok.get("to") or "").split(";tag=")[1].split(";")[0]
        contact = ok.get("contact") or ""
        self.remote_target = contact[contact.index("<") + 1 : contact.index(">")]
        await self.peer.send(self.request("ACK", 1))
        return ok

    async def bye(self) -> SipMsg:
        """BYE the browser; return its final response."""
        await self.peer.send(self.request("BYE", 2))
        return await self.peer.final_response(self.call_id, "2 BYE")


@pytest.fixture
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiortc gathers host candidates on 127.0.0.1 only (aioice leaves loopback out otherwise)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [HOST])


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it), not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest_asyncio.fixture
async def peer() -> AsyncIterator[ScriptedPeer]:
    """A running scripted peer on a free loopback port (ws://)."""
    p = ScriptedPeer()
    async with serve(p.handler, HOST, 0, subprotocols=["sip"]) as server:  # type: ignore[list-item]
        p.port = next(iter(server.sockets)).getsockname()[1]
        yield p
        if p.media is not None:
            await p.media.close()


def self_signed_context(tmp: Path) -> ssl.SSLContext:
    """A TLS server context with a throw-away self-signed certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scripted-peer.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), False
        )
        .sign(key, hashes.SHA256())
    )
    pem = tmp / "peer.pem"
    pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem)
    return ctx


async def media_counters(phone: BrowserPhone) -> tuple[int, int]:
    """(outbound packetsSent, inbound packetsReceived) of the browser's current call."""
    stats = await phone.get_stats()
    outbound = (stats.get("outbound") or {}).get("packetsSent", 0)
    inbound = (stats.get("inbound") or {}).get("packetsReceived", 0)
    return int(outbound), int(inbound)


async def test_failover_register_call_media_dtmf_hold_hangup(
    tmp_path: Path, peer: ScriptedPeer, dead_port: int, loopback_ice: None
) -> None:
    """The webphone fails over to the live server, registers, calls with real media, hangs up."""
    dead = f"ws://{HOST}:{dead_port}"
    phone = await BrowserPhone.start(tmp_path, tone_hz=TONE_HZ)
    async with phone:
        assert phone.info["sipjs"]["package"] == "0.21.2"
        assert "Chrome/" in phone.info["user_agent"]
        await phone.configure(
            wsServers=f"{dead},{peer.url}",
            username=USER,
            password=PASSWORD,
            realm=REALM,
            displayName=DISPLAY_NAME,
            cli=CLI,
            audioProcessing=False,  # keep the test tone as it is (noise suppression eats tones)
        )

        # wsServers failover: the dead server fails, the live one connects.
        await phone.register()
        failed = await phone.wait_for("onTransportFailed")
        assert failed["server"] == dead
        connected = await phone.wait_for("onTransportConnected")
        assert connected["server"] == peer.url

        # REGISTER: 401 challenge, then a correct digest (RFC 3261 §22.2), then 200.
        await phone.wait_for("onRegistered", timeout=STEP_TIMEOUT_S)
        first, second = await peer.request("REGISTER", 0), await peer.request("REGISTER", 1)
        assert first.get("authorization") is None
        creds = digest_params(second.get("authorization") or "")
        assert creds["username"] == USER and creds["realm"] == REALM
        assert creds["uri"] == f"sip:{REALM}"
        assert peer.digest_ok == [True]
        assert f"sip:{USER}@{REALM}" in (second.get("to") or "")

        # INVITE from the CLI with the display name, to sip:<number>@<realm>; 180 then 200.
        placed = await phone.make_call(CALLEE)
        invite = await peer.request("INVITE")
        assert invite.request_uri == f"sip:{CALLEE}@{REALM}"
        assert f"sip:{CLI}@{REALM}" in (invite.get("from") or "")
        assert DISPLAY_NAME in (invite.get("from") or "")
        assert invite.get("content-type") == "application/sdp"
        assert "m=audio " in invite.body and "a=fingerprint:" in invite.body
        ringing = await phone.wait_for("onRingingOut", timeout=STEP_TIMEOUT_S)
        assert ringing["statusCode"] == 180
        answered = await phone.wait_for("onAnswer", timeout=STEP_TIMEOUT_S)
        assert answered["callId"] == placed["callId"] == invite.get("call-id")
        await peer.request("ACK")

        # Real media: Chromium's packet counters grow, and aiortc hears the 1 kHz tone.
        out_1, in_1 = await media_counters(phone)
        await asyncio.sleep(MEDIA_WINDOW_S)
        out_2, in_2 = await media_counters(phone)
        assert out_2 - out_1 >= MIN_PACKETS_PER_WINDOW, (out_1, out_2)
        assert in_2 - in_1 >= MIN_PACKETS_PER_WINDOW, (in_1, in_2)
        stats = await phone.get_stats()
        assert stats["connectionState"] == "connected"
        assert stats["codec"]["mimeType"].lower() == "audio/opus"
        # aiortc's only candidate is 127.0.0.1; Chromium may pair it from its own host address,
        # which the kernel delivers locally as well.
        assert stats["selectedPair"]["remote"].startswith(f"{HOST}:")
        assert stats["outbound"]["audioLevel"] > 0.1  # the -6 dBFS microphone tone
        assert stats["inbound"]["audioLevel"] > 0.1  # aiortc's tone, played out by the page
        media = peer.media
        assert media is not None
        await peer.wait(media.has_window, "enough received audio")
        audio = media.received_audio()
        assert float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) > 1000, "silence received"
        heard = dominant_frequency(audio, media.sample_rate)
        assert abs(heard - TONE_HZ) <= FREQ_TOLERANCE_HZ, heard

        # DTMF as SIP INFO, application/dtmf-relay, one request per digit.
        await phone.send_dtmf("1#", "info")
        sent = [await phone.wait_for("onDtmfSent") for _ in range(2)]
        assert [(e["digit"], e["statusCode"]) for e in sent] == [("1", 200), ("#", 200)]
        infos = [await peer.request("INFO", i) for i in range(2)]
        assert [i.get("content-type") for i in infos] == ["application/dtmf-relay"] * 2
        assert [i.body.split("\r\n")[0] for i in infos] == ["Signal=1", "Signal=#"]

        # DTMF as RFC 4733 events in RTP: the browser's DTMF sender plays each tone.
        await phone.send_dtmf("5*", "rfc4733")
        played = [await phone.wait_for("onDtmfSent") for _ in range(2)]
        assert [(e["digit"], e["mode"]) for e in played] == [("5", "rfc4733"), ("*", "rfc4733")]

        # Mute: RTP goes on, carrying silence (the microphone's level drops to nothing).
        await phone.mute()
        await asyncio.sleep(MUTE_SETTLE_S)
        out_1, _ = await media_counters(phone)
        muted = await phone.get_stats()
        assert muted["outbound"]["audioLevel"] < 0.01, muted["outbound"]
        await asyncio.sleep(MUTE_SETTLE_S)
        out_2, _ = await media_counters(phone)
        assert out_2 > out_1
        await phone.unmute()
        await asyncio.sleep(MUTE_SETTLE_S)
        assert (await phone.get_stats())["outbound"]["audioLevel"] > 0.1

        # Hold and resume: re-INVITEs offering sendonly, then sendrecv (RFC 3264 §8.4).
        await phone.hold()
        assert (await phone.wait_for("onHold"))["held"] is True
        assert media_direction((await peer.request("INVITE", 1)).body) == "sendonly"
        await phone.unhold()
        assert (await phone.wait_for("onHold"))["held"] is False
        assert media_direction((await peer.request("INVITE", 2)).body) == "sendrecv"

        # Hang up: BYE reaches the peer; onEnd carries the cause and the call record.
        await phone.hangup()
        bye = await peer.request("BYE")
        assert bye.get("call-id") == invite.get("call-id")
        end = await phone.wait_for("onEnd", timeout=STEP_TIMEOUT_S)
        assert end["cause"] == "local_hangup"
        cdr = end["cdr"]
        assert cdr["answered"] is True and cdr["durationMs"] > 0 and cdr["statusCode"] == 200
        assert cdr["direction"] == "outbound" and cdr["dtmfSent"] == "1#5*"
        assert cdr["remote"] == f"sip:{CALLEE}@{REALM}"

        await phone.unregister()
        await phone.wait_for("onUnregistered", timeout=STEP_TIMEOUT_S)
        # RFC 3261 §10.2.2: removal is expires=0 (SIP.js reuses its digest credentials here).
        removal = peer.requests("REGISTER")[-1]
        assert removal.get("expires") == "0" or ";expires=0" in (removal.get("contact") or "")
        assert all(peer.digest_ok)

        page_events = [e["event"] for e in await phone.phone_events()]
        assert page_events.index("onRegistered") < page_events.index("onAnswer")
        assert page_events.index("onAnswer") < page_events.index("onEnd")

    assert phone.returncode == 0
    assert phone.chromium_processes() == []
    assert (tmp_path / "browser" / "console.log").is_file()


async def test_self_signed_wss_and_failure_artifacts(tmp_path: Path) -> None:
    """wss:// with a self-signed certificate; a bad password fails; failures save their files."""
    p = ScriptedPeer(scheme="wss")
    ctx = self_signed_context(tmp_path)
    async with serve(p.handler, HOST, 0, subprotocols=["sip"], ssl=ctx) as server:  # type: ignore[list-item]
        p.port = next(iter(server.sockets)).getsockname()[1]
        phone = await BrowserPhone.start(tmp_path)
        async with phone:
            # A wrong password: the digest does not check out, the peer says 403.
            await phone.configure(wsServers=p.url, username=USER, password="wrong", realm=REALM)
            await phone.register()
            assert (await phone.wait_for("onTransportConnected"))["server"] == p.url
            failed = await phone.wait_for("onRegistrationFailed", timeout=STEP_TIMEOUT_S)
            assert failed["statusCode"] == 403
            assert p.digest_ok == [False] and not phone.seen("onRegistered")

            await phone.configure(wsServers=p.url, username=USER, password=PASSWORD, realm=REALM)
            await phone.register()
            await phone.wait_for("onRegistered", timeout=STEP_TIMEOUT_S)
            assert p.digest_ok == [False, True]

            # A method that fails in the page: the error names the saved files.
            with pytest.raises(Exception, match="no current call") as failure:
                await phone.hangup()
            message = str(failure.value)
            console = re.search(r"browser console log: (\S+)", message)
            screenshot = re.search(r"screenshot: (\S+)", message)
            assert console and screenshot, message
            assert "[phone] onRegistered" in Path(console.group(1)).read_text()
            assert Path(screenshot.group(1)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert phone.chromium_processes() == []


async def test_inbound_call_answer_and_auto_answer(
    tmp_path: Path, peer: ScriptedPeer, loopback_ice: None
) -> None:
    """Calls toward the browser: rung (180) then answer(); auto-answered; both hung up by BYE."""
    phone = await BrowserPhone.start(tmp_path)
    async with phone:
        settings = {"wsServers": peer.url, "username": USER, "password": PASSWORD, "realm": REALM}
        await phone.configure(**settings)
        await phone.register()
        await phone.wait_for("onRegistered", timeout=STEP_TIMEOUT_S)
        contact = (await peer.request("REGISTER", 1)).get("contact") or ""
        target = contact[contact.index("<") + 1 : contact.index(">")]

        # Manual answer: the page rings (180), the test answers, the peer hangs up.
        first = MediaPeer()
        dialog = PeerDialog(peer, target)
        inviting = asyncio.create_task(dialog.invite(await first.offer()))
        try:
            incoming = await phone.wait_for("onIncoming", timeout=STEP_TIMEOUT_S)
            assert incoming["remote"] == f"sip:bob@{REALM}"
            assert incoming["displayName"] == "Bob Peer"
            assert incoming["headers"] == {"X-Test": "inbound"}
            await peer.wait(
                lambda: len(peer.responses(dialog.call_id, "1 INVITE")) >= 2, "100 and 180"
            )
            provisional = [m.start for m in peer.responses(dialog.call_id, "1 INVITE")]
            assert provisional == ["SIP/2.0 100 Trying", "SIP/2.0 180 Ringing"]
            await phone.answer()
            ok = await asyncio.wait_for(inviting, STEP_TIMEOUT_S)
            await first.accept(ok.body)
            await phone.wait_for("onAnswer", timeout=STEP_TIMEOUT_S)
            # The browser's audio reaches aiortc (a call toward the browser has media too).
            await peer.wait(first.has_window, "audio from the browser")
            assert (await dialog.bye()).start == "SIP/2.0 200 OK"
            end = await phone.wait_for("onEnd", timeout=STEP_TIMEOUT_S)
            assert end["cause"] == "remote_hangup" and end["cdr"]["endedBy"] == "remote"
            assert end["cdr"]["direction"] == "inbound" and end["cdr"]["answered"] is True
        finally:
            inviting.cancel()
            await asyncio.gather(inviting, return_exceptions=True)
            await first.close()

        # Auto-answer: no 180, a 200 straight away, no call to answer().
        await phone.configure(**settings, autoAnswer=True)
        await phone.register()
        await phone.wait_for("onRegistered", timeout=STEP_TIMEOUT_S)
        contact = peer.requests("REGISTER")[-1].get("contact") or ""
        second = MediaPeer()
        try:
            dialog = PeerDialog(peer, contact[contact.index("<") + 1 : contact.index(">")])
            ok = await dialog.invite(await second.offer())
            assert (await phone.wait_for("onIncoming"))["autoAnswer"] is True
            statuses = [m.start for m in peer.responses(dialog.call_id, "1 INVITE")]
            assert statuses == ["SIP/2.0 100 Trying", "SIP/2.0 200 OK"]
            await second.accept(ok.body)
            await phone.wait_for("onAnswer", timeout=STEP_TIMEOUT_S)
            assert (await dialog.bye()).start == "SIP/2.0 200 OK"
            assert (await phone.wait_for("onEnd", timeout=STEP_TIMEOUT_S))[
                "cause"
            ] == "remote_hangup"
        finally:
            await second.close()
    assert phone.chromium_processes() == []
