"""Media adapter: sockets, readers and timers around :class:`gateway.media.bridge.Bridge`.

Each session owns three non-blocking UDP sockets: one for the WebRTC leg (STUN, DTLS and
SRTP/SRTCP multiplexed, RFC 7983 / RFC 5761) and an even/odd pair for the RTP leg. Sockets
are read with ``loop.add_reader`` and drained in batches (up to :data:`RECV_BATCH` datagrams
per wake-up) rather than through a DatagramProtocol: creating them needs no coroutine, so
:meth:`MediaEngine.create_session` stays synchronous, and one wake-up serves several
packets under load. Sends are ``sock.sendto``; a full send buffer drops the packet and
counts it (``send_errors``). One engine-wide timer (every :data:`TICK_INTERVAL` s) runs DTLS
retransmissions and media timeouts for all sessions: no task per session.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import secrets
import socket
import string
import time
from collections.abc import Callable

from gateway.media.bridge import DIRECTIONS, LEG_RTP, LEG_WEBRTC, Addr, Bridge, Transcoder
from gateway.media.dtls import DtlsCertificate
from gateway.media.dtmf_receive import DtmfReceiver
from gateway.media.ports import PortAllocator, PortsExhausted

__all__ = [
    "MediaEngine",
    "MediaSession",
    "WebRtcLeg",
    "RtpLeg",
    "PortsExhausted",
    "RECV_BATCH",
    "RECV_SIZE",
    "TICK_INTERVAL",
    "BIND_ATTEMPTS",
    "SOCKET_BUFFER",
]

log = logging.getLogger("gateway.media")

RECV_BATCH = 64
"""Datagrams read from one socket per reader wake-up before yielding to the loop."""
RECV_SIZE = 2048
"""Largest datagram accepted (RTP over Ethernet MTU is well below)."""
TICK_INTERVAL = 0.1
"""Seconds between engine ticks (DTLS retransmission, media timeout)."""
BIND_ATTEMPTS = 16
"""Ports tried when a bind fails because another process holds the port."""
SOCKET_BUFFER = 1 << 20
"""SO_RCVBUF/SO_SNDBUF requested per media socket."""
_ICE_CHARS = string.ascii_letters + string.digits + "+/"


def _ice_token(length: int) -> str:
    # RFC 8839 §5.4: ice-char = ALPHA / DIGIT / "+" / "/"; ufrag >= 4, pwd >= 22 chars.
    return "".join(secrets.choice(_ICE_CHARS) for _ in range(length))


def _udp_socket(ip: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        sock.bind((ip, port))
    except OSError:
        sock.close()
        raise
    return sock


class WebRtcLeg:
    """Browser-facing leg: what the SDP rewriter needs for the WebRTC profile."""

    def __init__(self, session: MediaSession, port: int, ufrag: str, pwd: str) -> None:
        self._session = session
        self.local_port = port
        self.ice_ufrag = ufrag
        self.ice_pwd = pwd
        self.candidate: tuple[str, int] = (session.engine.public_ip, port)
        """The single host candidate (advertised address, port)."""

    @property
    def dtls_role(self) -> str:
        """``a=setup`` to announce: actpass (offering), passive (server) or active (client)."""
        return self._session.bridge.dtls_setup

    @property
    def dtls_state(self) -> str:
        """new / connecting / connected / closed / failed."""
        return self._session.bridge.dtls_state

    @property
    def fingerprint(self) -> str:
        """The engine's certificate fingerprint, ``"sha-256 AB:..."``."""
        return self._session.engine.fingerprint


class RtpLeg:
    """Switch-facing leg: RTP on an even port, RTCP on the next."""

    def __init__(self, port: int) -> None:
        self.local_port = port
        self.local_rtcp_port = port + 1


class MediaSession:
    """One call's media anchored on the gateway (create with :meth:`MediaEngine.create_session`)."""

    def __init__(self, engine: MediaEngine, call_id: str) -> None:
        self.engine = engine
        self.call_id = call_id
        self.on_timeout: Callable[[MediaSession, str], None] | None = None
        """Called once with the silent leg's name when the media timeout fires."""
        self.timed_out = asyncio.Event()
        self.send_errors = 0
        self.closed = False
        self._readers: list[int] = []
        loop = engine.loop
        self._loop = loop
        webrtc_sock, webrtc_port = engine._open_single()
        try:
            rtp_sock, rtcp_sock, rtp_port = engine._open_pair()
        except BaseException:
            engine._close_single(webrtc_sock, webrtc_port)
            raise
        self._webrtc_sock = webrtc_sock
        self._rtp_sock = rtp_sock
        self._rtcp_sock = rtcp_sock
        ufrag, pwd = _ice_token(8), _ice_token(24)
        self.bridge = Bridge(
            certificate=engine.certificate,
            ice_ufrag=ufrag,
            ice_pwd=pwd,
            ssrc_to_rtp=secrets.randbits(32),
            ssrc_to_webrtc=secrets.randbits(32),
            send_webrtc=self._sender(webrtc_sock),
            send_rtp=self._sender(rtp_sock),
            send_rtcp=self._sender(rtcp_sock),
            timeout=engine.timeout,
            now=loop.time(),
        )
        self.webrtc = WebRtcLeg(self, webrtc_port, ufrag, pwd)
        self.rtp = RtpLeg(rtp_port)
        self._add_reader(webrtc_sock, self.bridge.webrtc_received)
        self._add_reader(rtp_sock, self.bridge.rtp_received)
        self._add_reader(rtcp_sock, self.bridge.rtcp_received)

    def _sender(self, sock: socket.socket) -> Callable[[bytes | bytearray, Addr], None]:
        sendto = sock.sendto

        def send(data: bytes | bytearray, addr: Addr) -> None:
            try:
                sendto(data, addr)
            except OSError:
                # EAGAIN (buffer full), ICMP-induced ECONNREFUSED...: drop and count.
                self.send_errors += 1

        return send

    def _add_reader(
        self, sock: socket.socket, handler: Callable[[bytes, Addr, float], None]
    ) -> None:
        recvfrom = sock.recvfrom
        time = self._loop.time

        def readable() -> None:
            now = time()
            for _ in range(RECV_BATCH):
                try:
                    data, addr = recvfrom(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    # e.g. ECONNREFUSED reported for an earlier send: nothing to read.
                    self.send_errors += 1
                    continue
                handler(data, addr, now)

        fd = sock.fileno()
        self._loop.add_reader(fd, readable)
        self._readers.append(fd)

    # ------------------------------------------------------------------ control

    def set_webrtc_remote(
        self,
        *,
        ice_ufrag: str,
        ice_pwd: str,
        fingerprint: tuple[str, str],
        setup: str,
        candidates: list[tuple[str, int]],
    ) -> None:
        """Browser's ICE credentials, DTLS fingerprint ``(alg, value)``, ``a=setup``, candidates."""
        self.bridge.set_webrtc_remote(
            ice_ufrag=ice_ufrag,
            ice_pwd=ice_pwd,
            fingerprint=fingerprint,
            setup=setup,
            candidates=candidates,
            now=self._loop.time(),
        )

    def set_rtp_remote(self, *, address: str, port: int, rtcp_port: int | None) -> None:
        """Switch's media address; may be called again mid-call to re-point (PITFALLS 9)."""
        self.bridge.set_rtp_remote(address=address, port=port, rtcp_port=rtcp_port)

    def set_payload_map(self, *, to_rtp: dict[int, int], to_webrtc: dict[int, int]) -> None:
        """Payload-type renumbering per direction (empty dict: unchanged)."""
        self.bridge.set_payload_map(to_rtp=to_rtp, to_webrtc=to_webrtc)

    def set_direction(self, leg: str, direction: str) -> None:
        """``leg`` is ``"webrtc"`` or ``"rtp"``; ``direction`` is that remote peer's SDP attribute."""
        if leg not in (LEG_WEBRTC, LEG_RTP) or direction not in DIRECTIONS:
            raise ValueError(f"invalid leg/direction {leg!r}/{direction!r}")
        self.bridge.set_direction(leg, direction, self._loop.time())
        if not self.bridge.timed_out:
            self.timed_out.clear()

    def set_transcoder(self, pipeline: str, transcoder: Transcoder | None) -> None:
        """Plug a transcoder into ``"to_rtp"`` or ``"to_webrtc"`` (None = passthrough)."""
        self.bridge.set_transcoder(pipeline, transcoder)

    def set_clock_rates(self, *, webrtc: int, rtp: int) -> None:
        """RTP clocks of the legs' codecs in passthrough (see Bridge.set_clock_rates)."""
        self.bridge.set_clock_rates(webrtc=webrtc, rtp=rtp)

    def play_dtmf(self, code: int, duration_ms: int, payload_type: int) -> None:
        """Send one RFC 4733 event toward the switch (``payload_type``: its te/8000)."""
        self.bridge.play_dtmf(code, duration_ms, payload_type, self._loop.time())

    def set_dtmf_receiver(self, receiver: DtmfReceiver | None) -> None:
        """Read the browser's telephone-events as digits (None: forward them again)."""
        self.bridge.dtmf_to_info = receiver

    @property
    def stats(self) -> dict[str, object]:
        """Per-leg counters and state (see :meth:`gateway.media.bridge.Bridge.stats`)."""
        out = self.bridge.stats()
        out["send_errors"] = self.send_errors
        return out

    def _tick(self, now: float) -> None:
        # UNIX time for the NTP timestamps of our RTCP sender reports.
        leg = self.bridge.tick(now, wallclock=time.time())
        if leg:
            log.info("x media timeout call=%s leg=%s", self.call_id, leg)
            self.timed_out.set()
            if self.on_timeout is not None:
                try:
                    self.on_timeout(self, leg)
                except Exception:
                    log.exception("! media timeout callback failed call=%s", self.call_id)

    async def close(self) -> None:
        """Send close_notify, stop readers, close sockets, release ports; idempotent."""
        if self.closed:
            return
        self.closed = True
        self.bridge.close()
        for fd in self._readers:
            self._loop.remove_reader(fd)
        self._readers.clear()
        self.engine._forget(self)
        self.engine._close_single(self._webrtc_sock, self.webrtc.local_port)
        self._rtp_sock.close()
        self._rtcp_sock.close()
        self.engine.ports.release_pair(self.rtp.local_port)


class MediaEngine:
    """All media sessions of this process: port range, certificate, housekeeping timer."""

    def __init__(
        self,
        *,
        public_ip: str,
        bind_ip: str,
        port_range: tuple[int, int],
        timeout: float = 60.0,
    ) -> None:
        self.public_ip = public_ip
        self.bind_ip = bind_ip
        self.timeout = timeout
        self.ports = PortAllocator(*port_range)
        self.certificate = DtlsCertificate.generate(datetime.datetime.now(tz=datetime.UTC))
        self.fingerprint = self.certificate.fingerprint
        """``"sha-256 AB:CD:..."`` for ``a=fingerprint``."""
        self._sessions: dict[int, MediaSession] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop captured by :meth:`start`."""
        if self._loop is None:
            raise RuntimeError("MediaEngine.start() has not been awaited")
        return self._loop

    async def start(self) -> None:
        """Capture the loop and start the housekeeping timer."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(TICK_INTERVAL, self._tick)

    def _tick(self) -> None:
        loop = self.loop
        now = loop.time()
        for session in list(self._sessions.values()):
            session._tick(now)
        self._timer = loop.call_later(TICK_INTERVAL, self._tick)

    async def close(self) -> None:
        """Close every session and stop the timer; idempotent."""
        for session in list(self._sessions.values()):
            await session.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def create_session(self, call_id: str) -> MediaSession:
        """Open a session's three sockets (WebRTC port, RTP/RTCP pair).

        Raises:
            PortsExhausted: the port range has no room left.
        """
        session = MediaSession(self, call_id)
        self._sessions[id(session)] = session
        return session

    def sessions(self) -> int:
        """Open sessions."""
        return len(self._sessions)

    def ports_in_use(self) -> int:
        """Ports allocated from the range."""
        return self.ports.in_use()

    def _forget(self, session: MediaSession) -> None:
        self._sessions.pop(id(session), None)

    def _open_single(self) -> tuple[socket.socket, int]:
        # A port held by another process stays reserved until the search ends, so
        # each attempt gets a different port (releasing it at once handed the same
        # port back every time).
        failed: list[int] = []
        try:
            for _ in range(BIND_ATTEMPTS):
                port = self.ports.allocate_one()
                try:
                    return _udp_socket(self.bind_ip, port), port
                except OSError as exc:
                    failed.append(port)
                    log.debug("x bind %s:%d failed: %s", self.bind_ip, port, exc)
        finally:
            for port in failed:
                self.ports.release(port)
        raise PortsExhausted(f"no bindable media port after {BIND_ATTEMPTS} attempts")

    def _close_single(self, sock: socket.socket, port: int) -> None:
        sock.close()
        self.ports.release(port)

    def _open_pair(self) -> tuple[socket.socket, socket.socket, int]:
        failed: list[int] = []
        try:
            for _ in range(BIND_ATTEMPTS):
                port = self.ports.allocate_pair()
                try:
                    rtp = _udp_socket(self.bind_ip, port)
                except OSError as exc:
                    failed.append(port)
                    log.debug("x bind %s:%d failed: %s", self.bind_ip, port, exc)
                    continue
                try:
                    rtcp = _udp_socket(self.bind_ip, port + 1)
                except OSError as exc:
                    rtp.close()
                    failed.append(port)
                    log.debug("x bind %s:%d failed: %s", self.bind_ip, port + 1, exc)
                    continue
                return rtp, rtcp, port
        finally:
            for port in failed:
                self.ports.release_pair(port)
        raise PortsExhausted(f"no bindable media port pair after {BIND_ATTEMPTS} attempts")
