"""Self-test of the scripted JsSIP client (tests/clients/jssip/driver.mjs, tests/helpers/jssip.py).

The SIP peer here is a tiny scripted registrar/UAS written with the ``websockets`` library. It
is a stand-in for the gateway, used only to prove that the driver really speaks SIP over
WebSocket (RFC 7118): the gateway's own tests run this same driver against the real chain.
JsSIP is real; only its media is mocked (Node has no RTCPeerConnection, see the driver's
header), so these tests check signalling only.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import os
import re
import secrets
import signal
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.helpers.jssip import STOP_GRACE_S, JsSipClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

REALM = "example.test"
USER = "alice"
PASSWORD = "alicepw"
AOR = f"sip:{USER}@{REALM}"
HOST = "127.0.0.1"
STEP_TIMEOUT_S = 8.0
CHROME_OFFER = (
    Path(__file__).resolve().parent.parent / "vectors" / "sdp" / "chrome_offer_signalling.sdp"
)

# RFC 3261 §7.3.3 compact header forms used by SIP stacks.
COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
           "c": "content-type", "k": "supported"}  # fmt: skip

PEER_ANSWER_SDP = (
    "v=0\r\n"
    "o=peer 1 1 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\n"
    "m=audio 40000 UDP/TLS/RTP/SAVPF 111\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "a=mid:0\r\n"
    "a=ice-ufrag:peer\r\n"
    "a=ice-pwd:peerpeerpeerpeerpeerpeer\r\n"
    "a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:"
    "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n"
    "a=setup:passive\r\n"
    "a=rtcp-mux\r\n"
    "a={direction}\r\n"
)
PEER_OFFER_SDP = PEER_ANSWER_SDP.replace("a=setup:passive", "a=setup:actpass").format(
    direction="sendrecv"
)


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
    def status(self) -> int:
        """Status code (responses only)."""
        return int(self.start.split(" ")[1])


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
    req: SipMsg, status: int, reason: str, *extra: str, body: str = "", to_tag: str = ""
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


@dataclass
class ScriptedPeer:
    """Registrar + UAS on one WebSocket port: 401 then 200 to REGISTER, 200+SDP to INVITE."""

    server: Server | None = None
    port: int = 0
    scheme: str = "ws"
    connections: list[ServerConnection] = field(default_factory=list)
    closes: list[ConnectionClosed | None] = field(default_factory=list)
    received: list[SipMsg] = field(default_factory=list)
    digest_ok: list[bool] = field(default_factory=list)
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))
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
        """Serve one WebSocket connection until it closes; record how it closed."""
        self.connections.append(ws)
        self.changed.set()
        closed: ConnectionClosed | None = None
        try:
            async for frame in ws:
                text = frame if isinstance(frame, str) else frame.decode()
                if not text.strip():
                    continue  # CRLF keep-alive (RFC 5626 §3.5.1)
                msg = SipMsg.parse(text)
                self.received.append(msg)
                self.changed.set()
                if msg.is_request:
                    for reply in self.replies(msg):
                        await ws.send(reply)
        except ConnectionClosed as exc:
            closed = exc
        finally:
            self.closes.append(closed)
            self.changed.set()

    def replies(self, req: SipMsg) -> list[str]:
        """What the scripted peer answers to one request."""
        method = req.method
        if method == "REGISTER":
            auth = req.get("authorization")
            if auth is None:
                challenge = (
                    f'WWW-Authenticate: Digest realm="{REALM}", nonce="{self.nonce}", '
                    'qop="auth", algorithm=MD5'
                )
                return [response(req, 401, "Unauthorized", challenge)]
            p = digest_params(auth)
            # RFC 2617 §3.2.2.1: request-digest with qop=auth.
            ha1 = md5(f"{p['username']}:{p['realm']}:{PASSWORD}")
            ha2 = md5(f"REGISTER:{p['uri']}")
            expected = md5(f"{ha1}:{p['nonce']}:{p['nc']}:{p['cnonce']}:{p['qop']}:{ha2}")
            ok = p["response"] == expected and p["nonce"] == self.nonce
            self.digest_ok.append(ok)
            if not ok:
                return [response(req, 403, "Forbidden")]
            expires = req.get("expires") or "600"
            return [response(req, 200, "OK", f"Contact: {req.get('contact')};expires={expires}")]
        if method == "INVITE":
            offer = req.body
            direction = "recvonly" if "a=sendonly" in offer else "sendrecv"
            answer = PEER_ANSWER_SDP.format(direction=direction)
            # One To tag for 180 and 200 (RFC 3261 §12.1.1): one dialog, early then confirmed.
            tag = "peer" + secrets.token_hex(4)
            out = [response(req, 100, "Trying")]
            if ";tag=" not in (req.get("to") or ""):
                out.append(response(req, 180, "Ringing", f"Contact: {self.contact}", to_tag=tag))
            out.append(
                response(req, 200, "OK", f"Contact: {self.contact}", body=answer, to_tag=tag)
            )
            return out
        if method == "ACK":
            return []
        return [response(req, 200, "OK")]

    async def wait(
        self, predicate: Callable[[], bool], what: str, timeout: float = STEP_TIMEOUT_S
    ) -> None:
        """Wait until ``predicate()`` is true (bounded by ``timeout``)."""

        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            seen = [m.start for m in self.received]
            raise AssertionError(f"peer: no {what} within {timeout} s; got {seen}") from None

    async def request(self, method: str, index: int = 0) -> SipMsg:
        """The ``index``-th request of ``method`` the peer received, waiting for it."""

        def found() -> bool:
            return len(self.requests(method)) > index

        await self.wait(found, f"{method} #{index}")
        return self.requests(method)[index]

    async def response_to(self, method: str) -> SipMsg:
        """The first final response the peer received for a request of ``method``."""

        def matches() -> list[SipMsg]:
            return [
                m
                for m in self.received
                if not m.is_request
                and m.status >= 200
                and (m.get("cseq") or "").endswith(" " + method)
            ]

        await self.wait(lambda: bool(matches()), f"response to {method}")
        return matches()[0]

    def requests(self, method: str) -> list[SipMsg]:
        """Requests of ``method`` received so far."""
        return [m for m in self.received if m.is_request and m.method == method]


@pytest_asyncio.fixture
async def peer() -> AsyncIterator[ScriptedPeer]:
    """A running scripted peer on a free loopback port."""
    p = ScriptedPeer()
    async with serve(p.handler, HOST, 0, subprotocols=["sip"]) as server:  # type: ignore[list-item]
        p.server = server
        p.port = next(iter(server.sockets)).getsockname()[1]
        yield p


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


@pytest_asyncio.fixture
async def tls_peer(tmp_path: Path) -> AsyncIterator[ScriptedPeer]:
    """A scripted peer behind wss:// with a self-signed certificate."""
    p = ScriptedPeer(scheme="wss")
    ctx = self_signed_context(tmp_path)
    async with serve(p.handler, HOST, 0, subprotocols=["sip"], ssl=ctx) as server:  # type: ignore[list-item]
        p.server = server
        p.port = next(iter(server.sockets)).getsockname()[1]
        yield p


async def start_client(peer: ScriptedPeer, **opts: Any) -> JsSipClient:
    """Start the JsSIP driver against the peer as alice."""
    return await JsSipClient.start(
        ws=peer.url,
        uri=AOR,
        password=PASSWORD,
        realm=REALM,
        display_name="Alice",
        **opts,
    )


async def test_register_call_hold_dtmf_message(peer: ScriptedPeer) -> None:
    """REGISTER with digest, an outgoing call through to BYE, hold, INFO DTMF, MESSAGE both ways."""
    instance = str(uuid.uuid4())
    c = await start_client(peer, register=True, instance_id=instance, trace=True)
    try:
        # REGISTER: 401 challenge, then a correct Digest Authorization (RFC 3261 §22.2).
        reg = await c.wait_for("registered", timeout=STEP_TIMEOUT_S)
        assert reg["status"] == 200
        first, second = peer.requests("REGISTER")[:2]
        assert first.get("authorization") is None
        creds = digest_params(second.get("authorization") or "")
        assert creds["username"] == USER and creds["realm"] == REALM
        assert creds["uri"] == f"sip:{REALM}"
        assert peer.digest_ok == [True]
        # RFC 5626 §4.2: the Contact carries the instance id and reg-id; RFC 7118 §5.2: ws.
        contact = second.get("contact") or ""
        assert f'+sip.instance="<urn:uuid:{instance}>"' in contact
        assert "reg-id=1" in contact and "transport=ws" in contact
        assert "REGISTER sip:example.test SIP/2.0" in [e["line"] for e in c.seen("sipSent")]
        assert "SIP/2.0 401 Unauthorized" in [e["line"] for e in c.seen("sipReceived")]

        # Outgoing call: INVITE with the captured Chromium offer and our X- header.
        await c.send("call", target="sip:95090@example.test", headers=["X-Test: 1"])
        new = await c.wait_for("newRTCSession")
        assert new["direction"] == "outgoing"
        assert new["remote_uri"] == "sip:95090@example.test"
        invite = await peer.request("INVITE")
        assert invite.start == "INVITE sip:95090@example.test SIP/2.0"
        assert invite.get("x-test") == "1"
        assert invite.get("call-id") == new["call_id"]
        assert invite.get("content-type") == "application/sdp"
        assert invite.body.replace("\r\n", "\n") == CHROME_OFFER.read_text().replace("\r\n", "\n")
        assert (await c.wait_for("progress", predicate=lambda e: e["status"] == 180))[
            "originator"
        ] == "remote"
        assert (await c.wait_for("accepted"))["status"] == 200
        await c.wait_for("confirmed")
        ack = await peer.request("ACK")
        assert ack.get("call-id") == new["call_id"]

        # Hold / unhold: re-INVITEs whose offers say sendonly, then sendrecv (RFC 3264 §8.4).
        await c.send("hold")
        assert (await c.wait_for("hold"))["originator"] == "local"
        assert "a=sendonly" in (await peer.request("INVITE", 1)).body
        await peer.request("ACK", 1)
        await c.send("unhold")
        assert (await c.wait_for("unhold"))["originator"] == "local"
        reinvite = await peer.request("INVITE", 2)
        assert "a=sendrecv" in reinvite.body and "a=sendonly" not in reinvite.body
        # A browser bumps the o= version on each new offer (RFC 3264 §8).
        versions = [
            int(peer.requests("INVITE")[i].body.split("\r\n")[1].split()[2]) for i in (0, 2)
        ]
        assert versions[1] > versions[0]

        # DTMF as SIP INFO, application/dtmf-relay, one request per tone.
        await c.send("dtmf", tones="1#", transport="INFO", duration=100, inter_tone_gap=50)
        await peer.request("INFO", 1)
        infos = peer.requests("INFO")
        assert [i.get("content-type") for i in infos] == ["application/dtmf-relay"] * 2
        assert [i.body for i in infos] == ["Signal=1\r\nDuration=100", "Signal=#\r\nDuration=100"]

        # Hang up: BYE reaches the peer, the session ends locally.
        await c.send("hangup")
        bye = await peer.request("BYE")
        assert bye.get("call-id") == new["call_id"]
        ended = await c.wait_for("ended")
        assert ended["originator"] == "local" and ended["call_id"] == new["call_id"]

        # MESSAGE out, with its X- header.
        await c.send("message", target="sip:bob@example.test", body="hi", headers=["X-Test: 1"])
        msg = await peer.request("MESSAGE")
        assert msg.start == "MESSAGE sip:bob@example.test SIP/2.0"
        assert msg.get("x-test") == "1" and msg.body == "hi"
        assert (await c.wait_for("messageSucceeded"))["status"] == 200
        out = await c.wait_for("newMessage", predicate=lambda e: e["direction"] == "outgoing")
        assert out["headers"] == {"X-Test": "1"} and out["body"] == "hi"

        # MESSAGE in: the peer sends one down the same WebSocket.
        ws = peer.connections[-1]
        await ws.send(
            "\r\n".join(
                [
                    f"MESSAGE {AOR} SIP/2.0",
                    f"Via: SIP/2.0/WS {HOST}:{peer.port};branch=z9hG4bK{secrets.token_hex(6)}",
                    "Max-Forwards: 70",
                    "From: <sip:bob@example.test>;tag=bobtag",
                    f"To: <{AOR}>",
                    f"Call-ID: {secrets.token_hex(8)}",
                    "CSeq: 1 MESSAGE",
                    "X-Test: 2",
                    "Content-Type: text/plain",
                    "Content-Length: 5",
                    "",
                    "hello",
                ]
            )
        )
        inc = await c.wait_for("newMessage", predicate=lambda e: e["direction"] == "incoming")
        assert inc["from"] == "sip:bob@example.test"
        assert inc["body"] == "hello" and inc["headers"] == {"X-Test": "2"}
        assert (await peer.response_to("MESSAGE")).status == 200
        assert not c.seen("error"), c.seen("error")
    finally:
        rc = await c.close()
    assert rc == 0
    assert c.seen("stopped")


async def test_incoming_call_answer_and_remote_bye(peer: ScriptedPeer) -> None:
    """An INVITE from the peer is answered with an SDP answer and ended by the peer's BYE."""
    c = await start_client(peer, register=False)
    try:
        await c.wait_for("connected", timeout=STEP_TIMEOUT_S)
        await peer.wait(lambda: bool(peer.connections), "connection")
        ws = peer.connections[-1]
        call_id = secrets.token_hex(8)
        common = [
            "Max-Forwards: 70",
            'From: "Bob" <sip:bob@example.test>;tag=bobtag',
            f"Call-ID: {call_id}",
        ]

        def via() -> str:
            return f"Via: SIP/2.0/WS {HOST}:{peer.port};branch=z9hG4bK{secrets.token_hex(6)}"

        await ws.send(
            "\r\n".join(
                [f"INVITE {AOR} SIP/2.0", via(), *common, f"To: <{AOR}>", "CSeq: 1 INVITE",
                 f"Contact: {peer.contact}", "X-Test: 3", "Content-Type: application/sdp",
                 f"Content-Length: {len(PEER_OFFER_SDP)}", "", PEER_OFFER_SDP]
            )
        )  # fmt: skip
        new = await c.wait_for("newRTCSession")
        assert new["direction"] == "incoming" and new["call_id"] == call_id
        assert new["remote_uri"] == "sip:bob@example.test" and new["headers"] == {"X-Test": "3"}

        await c.send("answer")
        ok = await peer.response_to("INVITE")
        assert ok.status == 200 and ok.get("content-type") == "application/sdp"
        # The shim answers as Chromium does: DTLS client (RFC 5763 §5), mid echoed, sendrecv.
        assert "a=setup:active" in ok.body and "a=setup:actpass" not in ok.body
        assert "a=mid:0" in ok.body and "a=sendrecv" in ok.body
        to = ok.get("to") or ""
        contact = (ok.get("contact") or "").split("<", 1)[1].split(">", 1)[0]
        await ws.send(
            "\r\n".join(
                [f"ACK {contact} SIP/2.0", via(), *common, f"To: {to}", "CSeq: 1 ACK",
                 "Content-Length: 0", "", ""]
            )
        )  # fmt: skip
        assert (await c.wait_for("confirmed"))["call_id"] == call_id
        await ws.send(
            "\r\n".join(
                [f"BYE {contact} SIP/2.0", via(), *common, f"To: {to}", "CSeq: 2 BYE",
                 "Content-Length: 0", "", ""]
            )
        )  # fmt: skip
        ended = await c.wait_for("ended")
        assert ended["originator"] == "remote" and ended["call_id"] == call_id
        assert (await peer.response_to("BYE")).status == 200
        assert not c.seen("error"), c.seen("error")
    finally:
        assert await c.close() == 0


async def test_drop_ws_closes_tcp_without_close_frame(peer: ScriptedPeer) -> None:
    """drop_ws kills the TCP connection with no close frame (1006); JsSIP then reconnects."""
    c = await start_client(
        peer,
        register=False,
        connection_recovery_min_interval=1,
        connection_recovery_max_interval=2,
    )
    try:
        await c.wait_for("connected", timeout=STEP_TIMEOUT_S)
        await peer.wait(lambda: len(peer.connections) == 1, "first connection")
        first = peer.connections[0]

        await c.send("drop_ws")
        await peer.wait(lambda: len(peer.closes) == 1, "close of the first connection")
        closed = peer.closes[0]
        # RFC 6455 §7.1.5: no Close frame was received, so the close code is 1006.
        assert closed is not None and closed.rcvd is None
        assert first.close_code == 1006
        gone = await c.wait_for("disconnected")
        assert gone["error"] is True and gone["code"] == 1006

        # JsSIP's connection recovery opens a new WebSocket to the same server.
        await c.wait_for("connected", timeout=STEP_TIMEOUT_S)
        await peer.wait(lambda: len(peer.connections) == 2, "reconnection")
    finally:
        assert await c.close() == 0
    # A normal stop, by contrast, closes with a Close frame: the check above can tell them apart.
    await peer.wait(lambda: len(peer.closes) == 2, "close of the second connection")
    # JsSIP calls close() with no code, as in a browser: an empty Close frame, read as 1005.
    assert peer.closes[1] is None
    assert peer.connections[1].close_code == 1005


async def test_wss_self_signed_and_rejected_registration(tls_peer: ScriptedPeer) -> None:
    """Over wss:// with a self-signed certificate; a wrong password ends in registrationFailed."""
    c = await JsSipClient.start(
        ws=tls_peer.url, uri=AOR, password="wrong", realm=REALM, register=True
    )
    try:
        await c.wait_for("connected", timeout=STEP_TIMEOUT_S)
        failed = await c.wait_for("registrationFailed", timeout=STEP_TIMEOUT_S)
        assert failed["status"] == 403 and failed["cause"] == "Rejected"
        assert tls_peer.digest_ok == [False]
        assert not c.seen("registered")
    finally:
        assert await c.close() == 0


async def test_close_kills_a_driver_that_does_not_stop(peer: ScriptedPeer) -> None:
    """close() kills a driver that ignores stop after the grace period, leaving no process."""
    c = await start_client(peer, register=False)
    await c.wait_for("connected", timeout=STEP_TIMEOUT_S)
    os.kill(c.pid, signal.SIGSTOP)  # a hung driver: it cannot read "stop"
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    rc = await c.close()
    assert rc == -signal.SIGKILL
    assert STOP_GRACE_S <= loop.time() - t0 < STOP_GRACE_S + 2
    with pytest.raises(ProcessLookupError):
        os.kill(c.pid, 0)
