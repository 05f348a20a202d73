"""A scripted plain-RTP far end on the switch side: SIP over UDP plus G.711/G.729 RTP.

:class:`RtpFarEnd` listens for SIP on 127.0.0.3:<port> (Kamailio routes the user
``9<port>`` there and trusts that address: no proxy authentication). As a UAS it answers
an INVITE with 100, 180, optionally 183 with SDP (early media), then 200 with a plain
RTP/AVP answer; it handles ACK, CANCEL, re-INVITE (same session, direction mirrored per
RFC 3264 §6.1), BYE, and can send BYE itself. As a UAC (:meth:`RtpFarEnd.invite`) it
calls a user through Kamailio with its own offer, as sipp's uac_invite scenario does.

Media (:class:`RtpStream`): an even RTP port (RTCP on the next one, counted only) that
sends a tone in 20 ms PCMU/PCMA packets (RFC 3551 §4.5.14), or G.729 (§4.5.6, through
gateway/media/codecs/g729.py, when ``codecs`` names it) with one SSRC and running
seq/timestamp, to the address in the peer's SDP and, once packets arrive, to their source
(symmetric RTP, RFC 4961). Every RTP packet received is recorded and G.711 audio is
decoded with gateway/media/codecs/g711.py's tables. DTMF digits can be sent as RFC 4733
telephone-events in the same stream (:meth:`RtpFarEnd.send_dtmf`), in place of the audio
packets while each event plays.

SIP is sent over UDP with RFC 3261 §17 retransmissions (Timer A/E from T1, bounded by
64*T1) so loss on loopback cannot hang a test; every message in and out is kept in
:attr:`RtpFarEnd.messages`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import socket
import struct
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from gateway.media.codecs.g711 import ALAW_DECODE, ALAW_ENCODE, ULAW_DECODE, ULAW_ENCODE
from gateway.media.codecs.g729 import G729Decoder, G729Encoder
from gateway.sdp.model import SessionDescription
from gateway.sdp.model import parse as parse_sdp
from gateway.sip.headers import Headers, parse_name_addr, parse_name_addrs
from gateway.sip.message import Request, Response, make_response, parse
from gateway.sip.uri import SipURI

__all__ = [
    "CODECS",
    "FAR_END_IP",
    "FarEndCall",
    "ReceivedRtp",
    "RtpFarEnd",
    "RtpStream",
    "SentEvent",
    "TelephoneEvent",
    "build_sdp",
]

FAR_END_IP = "127.0.0.3"
REALM = "example.test"
#: name -> (static or default payload type, clock rate) of the codecs a far end can speak.
CODECS: dict[str, tuple[int, int]] = {
    "PCMU": (0, 8000),
    "PCMA": (8, 8000),
    "G729": (18, 8000),
    "telephone-event": (101, 8000),
}
AUDIO_CODECS = ("PCMU", "PCMA", "G729")
RTP_VERSION = 2
RTP_HEADER = struct.Struct("!BBHII")
PACKET_MS = 20
SAMPLES_PER_PACKET = 160  # 20 ms at 8 kHz
TONE_AMPLITUDE = 8000
#: Received packets kept (60 s at 50 packets/s).
MAX_RECORDED_PACKETS = 3000
#: Even RTP ports are picked at random from this range (RTCP on port + 1).
RTP_PORT_RANGE = (30000, 39998)
PORT_ATTEMPTS = 50
#: RFC 3261 §17.1.1.1 timers on loopback.
T1_S = 0.5
T2_S = 4.0
TRANSACTION_TIMEOUT_S = 64 * T1_S
#: Default wait for one SIP event in the helper's own API, seconds.
SIP_TIMEOUT_S = 10.0
MAX_DATAGRAM = 65535
#: RFC 4733 events sent by :meth:`RtpStream.send_events`, by default: 100 ms tones (800
#: units at 8000, Chromium's insertDTMF default), a 60 ms audio gap between digits, volume
#: 10 (-10 dBm0, RFC 4733 §2.3.4), the final packet sent three times (§2.5.1.4).
DTMF_DURATION = 800
DTMF_GAP_MS = 60
DTMF_VOLUME = 10
DTMF_END_PACKETS = 3
#: Longest duration one event packet can carry (16 bits, RFC 4733 §2.3.5); the far end does
#: not segment longer events (§2.5.2.3).
MAX_EVENT_DURATION = 0xFFFF


# --------------------------------------------------------------------------- SDP


def build_sdp(
    *,
    session_id: int,
    version: int,
    port: int,
    codecs: Sequence[tuple[str, int]],
    direction: str = "sendrecv",
    address: str = FAR_END_IP,
) -> str:
    """A plain RTP/AVP audio SDP (RFC 8866, RFC 3551) with ``codecs`` as (name, pt)."""
    lines = [
        "v=0",
        f"o=farend {session_id} {version} IN IP4 {address}",
        "s=far end",
        f"c=IN IP4 {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(str(pt) for _, pt in codecs)}",
    ]
    for name, pt in codecs:
        lines.append(f"a=rtpmap:{pt} {name}/{CODECS[name][1]}")
        if name == "telephone-event":
            lines.append(f"a=fmtp:{pt} 0-16")
    lines += ["a=ptime:20", f"a={direction}"]
    return "\r\n".join(lines) + "\r\n"


#: RFC 3264 §6.1: the answer's direction for each offered one.
MIRROR = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}


@dataclass
class Offer:
    """What the far end read from a remote SDP."""

    address: str
    port: int
    proto: str
    direction: str
    #: (name, payload type) in the remote's order, for the codecs both sides know
    common: list[tuple[str, int]]


def read_sdp(text: str, supported: Sequence[str]) -> Offer:
    """The audio stream's address, port, profile, direction and common codecs."""
    sdp: SessionDescription = parse_sdp(text)
    media = next(m for m in sdp.media if m.kind == "audio")
    connection = sdp.connection_for(media)
    common: list[tuple[str, int]] = []
    for pt in media.payload_types:
        rtpmap = media.rtpmap(pt)
        name = rtpmap.encoding if rtpmap is not None else None
        if name is None:  # static payload types need no rtpmap (RFC 3551 §6)
            name = next((n for n, (p, _) in CODECS.items() if p == pt and pt < 96), None)
        if name is None:
            continue
        for known in supported:
            # same name and clock rate: telephone-event/48000 is not telephone-event/8000
            clock_ok = rtpmap is None or rtpmap.clock == CODECS[known][1]
            if known.lower() == name.lower() and clock_ok:
                common.append((known, pt))
    return Offer(
        address=connection.host if connection is not None else "0.0.0.0",
        port=media.port,
        proto=media.proto,
        direction=sdp.direction(media),
        common=common,
    )


# --------------------------------------------------------------------------- RTP


@dataclass(frozen=True)
class ReceivedRtp:
    """One received RTP packet."""

    time: float
    source: tuple[str, int]
    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


#: RFC 4733 §2.3 payload: event, E|R|volume, duration.
TELEPHONE_EVENT = struct.Struct("!BBH")
#: RFC 4733 §3.2 DTMF event codes 0-15 as the symbols dialled.
DTMF_SYMBOLS = "0123456789*#ABCD"


@dataclass(frozen=True)
class TelephoneEvent:
    """One RFC 4733 event as received (all its packets folded together)."""

    code: int
    end: bool
    volume: int
    duration: int
    timestamp: int
    packets: int

    @property
    def symbol(self) -> str:
        """The DTMF symbol of the event code ('?' outside 0-15)."""
        return DTMF_SYMBOLS[self.code] if self.code < len(DTMF_SYMBOLS) else "?"


@dataclass(frozen=True)
class _EventTick:
    """One telephone-event packet still to send (one 20 ms slot of the send loop)."""

    code: int
    volume: int
    duration: int
    end: bool
    first: bool


@dataclass(frozen=True)
class SentEvent:
    """One RFC 4733 event the far end started sending: its code and RTP start timestamp."""

    code: int
    timestamp: int
    payload_type: int
    duration: int

    @property
    def symbol(self) -> str:
        """The DTMF symbol of the event code."""
        return DTMF_SYMBOLS[self.code]


def tone_pcm(frequency: float, start_sample: int, count: int) -> npt.NDArray[np.int16]:
    """``count`` samples of a sine at 8 kHz starting at ``start_sample``."""
    t = (np.arange(count) + start_sample) / 8000
    return (TONE_AMPLITUDE * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def g711_encode(name: str, pcm: npt.NDArray[np.int16]) -> bytes:
    """PCM -> PCMU/PCMA payload via the gateway's G.711 tables."""
    table = ULAW_ENCODE if name == "PCMU" else ALAW_ENCODE
    out: bytes = table.take(pcm.astype("<i2").view("<u2")).tobytes()
    return out


def g729_decode(payloads: Iterable[bytes]) -> npt.NDArray[np.int16]:
    """G.729 payloads (in order, one decoder: the codec is stateful) -> int16 PCM at 8 kHz,
    via the gateway's bcg729 binding (gateway/media/codecs/g729.py)."""
    decoder = G729Decoder()
    try:
        pcm = b"".join(decoder.decode(p) for p in payloads)
    finally:
        decoder.close()
    return np.frombuffer(pcm, dtype="<i2").astype(np.int16)


def g711_decode(name: str, payload: bytes) -> npt.NDArray[np.int16]:
    """PCMU/PCMA payload -> int16 PCM via the gateway's G.711 tables."""
    table = ULAW_DECODE if name == "PCMU" else ALAW_DECODE
    out: npt.NDArray[np.int16] = table.take(np.frombuffer(payload, dtype=np.uint8))
    return out


def dominant_frequency(samples: npt.NDArray[Any], rate: int = 8000) -> float:
    """Frequency in Hz of the FFT magnitude peak (Hann window); 0.0 if too short."""
    if len(samples) < 2:
        return 0.0
    x = samples.astype(np.float64)
    x -= x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * rate / len(x)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_packet: Any) -> None:
        self.on_packet = on_packet

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_packet(data, addr)


class RtpStream:
    """One RTP/RTCP port pair on ``ip``: tone out, recording in.

    Args:
        ip: local address.
        tone_hz: tone frequency sent.
        symmetric: send to the latched source of received RTP (RFC 4961) rather than
            only to the SDP address.
    """

    def __init__(
        self, ip: str = FAR_END_IP, *, tone_hz: float = 1000.0, symmetric: bool = True
    ) -> None:
        self.ip = ip
        self.tone_hz = tone_hz
        self.symmetric = symmetric
        self.port = 0
        self.remote: tuple[str, int] | None = None
        self.latched: tuple[str, int] | None = None
        self.send_codec: tuple[str, int] = ("PCMU", 0)
        #: payload type -> codec name for decoding what arrives
        self.receive_map: dict[int, str] = {0: "PCMU", 8: "PCMA"}
        self.sending_enabled = True
        #: telephone-event payload type for :meth:`send_events` (set from the SDP)
        self.event_pt: int | None = None
        #: every RFC 4733 event started, in order
        self.events_sent: list[SentEvent] = []
        self._script: deque[_EventTick | None] = deque()
        self._event_ts = 0
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.timestamp = random.getrandbits(32)
        self.packets: list[ReceivedRtp] = []
        self.packets_received = 0
        self.packets_sent = 0
        self.rtcp_received = 0
        #: RTCP datagrams received (either port): arrival time (monotonic), source, bytes
        self.rtcp_packets: list[tuple[float, tuple[str, int], bytes]] = []
        self.malformed = 0
        self._rtp: asyncio.DatagramTransport | None = None
        self._rtcp: asyncio.DatagramTransport | None = None
        self._sender: asyncio.Task[None] | None = None
        self._g729: G729Encoder | None = None

    def _encode(self, name: str, pcm: npt.NDArray[np.int16]) -> bytes:
        if name != "G729":
            return g711_encode(name, pcm)
        if self._g729 is None:
            self._g729 = G729Encoder()  # 20 ms: two 10-byte frames per packet
        return self._g729.encode(pcm.astype("<i2").tobytes())

    async def open(self) -> None:
        """Bind an even RTP port and the RTCP port above it (RFC 3550 §11)."""
        loop = asyncio.get_running_loop()
        for _ in range(PORT_ATTEMPTS):
            port = random.randrange(RTP_PORT_RANGE[0], RTP_PORT_RANGE[1], 2)
            try:
                rtp, _ = await loop.create_datagram_endpoint(
                    lambda: _Datagrams(self._on_rtp), local_addr=(self.ip, port)
                )
            except OSError:
                continue
            try:
                rtcp, _ = await loop.create_datagram_endpoint(
                    lambda: _Datagrams(self._on_rtcp), local_addr=(self.ip, port + 1)
                )
            except OSError:
                rtp.close()
                continue
            self._rtp, self._rtcp, self.port = rtp, rtcp, port
            return
        raise RuntimeError(f"no free RTP port pair on {self.ip}")

    def _on_rtp(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < RTP_HEADER.size or data[0] >> 6 != RTP_VERSION:
            self.malformed += 1
            return
        if 192 <= data[1] <= 223:  # RTCP on the RTP port (rtcp-mux, RFC 5761 §4)
            self._on_rtcp(data, addr)
            return
        first, second, seq, ts, ssrc = RTP_HEADER.unpack_from(data)
        offset = RTP_HEADER.size + 4 * (first & 0x0F)
        if first & 0x10:  # header extension (RFC 3550 §5.3.1)
            if len(data) < offset + 4:
                self.malformed += 1
                return
            offset += 4 + 4 * struct.unpack_from("!H", data, offset + 2)[0]
        end = len(data)
        if first & 0x20 and end > offset:  # padding: the last octet counts it
            end -= data[-1]
        if offset > end:
            self.malformed += 1
            return
        self.packets_received += 1
        if self.latched is None:
            self.latched = addr
        self.packets.append(
            ReceivedRtp(
                time.monotonic(),
                addr,
                second & 0x7F,
                bool(second & 0x80),
                seq,
                ts,
                ssrc,
                data[offset:end],
            )
        )
        if len(self.packets) > MAX_RECORDED_PACKETS:
            del self.packets[: len(self.packets) - MAX_RECORDED_PACKETS]

    def _on_rtcp(self, data: bytes, addr: tuple[str, int]) -> None:
        self.rtcp_received += 1
        if len(self.rtcp_packets) < MAX_RECORDED_PACKETS:
            self.rtcp_packets.append((time.monotonic(), addr, data))

    def send_rtcp(self, data: bytes, addr: tuple[str, int]) -> None:
        """Send one RTCP datagram from the RTCP port (port + 1) to ``addr``."""
        assert self._rtcp is not None, "stream not open"
        self._rtcp.sendto(data, addr)

    # -------------------------------------------------------------- sending

    @property
    def destination(self) -> tuple[str, int] | None:
        """Where packets go: the latched source when symmetric, else the SDP address."""
        if self.symmetric and self.latched is not None:
            return self.latched
        return self.remote

    def send_events(
        self,
        symbols: str,
        *,
        duration: int = DTMF_DURATION,
        volume: int = DTMF_VOLUME,
        gap_ms: int = DTMF_GAP_MS,
    ) -> None:
        """Queue DTMF ``symbols`` as RFC 4733 events in this stream (payload type
        :attr:`event_pt`), sent from the next 20 ms slot on in place of audio.

        Per event (RFC 4733 §2.5.1): the first packet has the marker bit (§2.5.1.1), every
        packet carries the event's start timestamp and the duration so far (§2.3.5), one
        update per 20 ms (§2.5.1.2); the packet reaching ``duration`` has the E bit and is
        sent three times in all (§2.5.1.4). Every packet takes the next sequence number (RFC
        3550 §5.1) and the RTP clock keeps running, so the audio after an event continues at
        the time it would have had. ``gap_ms`` of audio separates two events.

        Raises:
            ValueError: a symbol outside 0-9 * # A-D, or ``duration``/``volume`` out of range.
        """
        if not 0 < duration <= MAX_EVENT_DURATION:
            raise ValueError(f"duration {duration} outside 1..{MAX_EVENT_DURATION}")
        if not 0 <= volume <= 63:  # RFC 4733 §2.3.4
            raise ValueError(f"volume {volume} outside 0..63")
        for symbol in symbols.upper():
            code = DTMF_SYMBOLS.find(symbol)
            if code < 0:
                raise ValueError(f"not a DTMF symbol: {symbol!r}")
            updates = -(-duration // SAMPLES_PER_PACKET)  # ceil: the last one reaches it
            for k in range(1, updates + 1):
                self._script.append(
                    _EventTick(
                        code,
                        volume,
                        min(k * SAMPLES_PER_PACKET, duration),
                        end=k == updates,
                        first=k == 1,
                    )
                )
            for _ in range(DTMF_END_PACKETS - 1):
                self._script.append(_EventTick(code, volume, duration, end=True, first=False))
            self._script.extend([None] * (gap_ms // PACKET_MS))

    @property
    def events_pending(self) -> int:
        """Event packets and gap slots still to send."""
        return len(self._script)

    def _event_packet(self, tick: _EventTick) -> bytes:
        """The RTP packet for one event tick (its header uses the running seq)."""
        assert self.event_pt is not None
        if tick.first:
            self._event_ts = self.timestamp & 0xFFFFFFFF
            self.events_sent.append(SentEvent(tick.code, self._event_ts, self.event_pt, 0))
        if tick.end:
            last = self.events_sent[-1]
            self.events_sent[-1] = SentEvent(
                last.code, last.timestamp, last.payload_type, tick.duration
            )
        header = RTP_HEADER.pack(
            0x80,
            (0x80 if tick.first else 0) | self.event_pt,
            self.seq & 0xFFFF,
            self._event_ts,
            self.ssrc,
        )
        flags = (0x80 if tick.end else 0) | tick.volume
        return header + TELEPHONE_EVENT.pack(tick.code, flags, tick.duration)

    def start(self, remote: tuple[str, int] | None = None) -> None:
        """Start (or keep) sending the tone; ``remote`` updates the SDP address."""
        if remote is not None:
            self.remote = remote
        self.sending_enabled = True
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send_loop())

    async def _send_loop(self) -> None:
        start = time.monotonic()
        n = 0
        marker = True  # RFC 3551 §4.1: marker on the first packet of a talkspurt
        while self._rtp is not None:
            destination = self.destination
            name, pt = self.send_codec
            if self.sending_enabled and destination is not None and destination[1] != 0:
                tick = self._script.popleft() if self._script else None
                if tick is not None and self.event_pt is not None:
                    self._rtp.sendto(self._event_packet(tick), destination)
                else:
                    header = RTP_HEADER.pack(
                        0x80,
                        (0x80 if marker else 0) | pt,
                        self.seq & 0xFFFF,
                        self.timestamp & 0xFFFFFFFF,
                        self.ssrc,
                    )
                    pcm = tone_pcm(self.tone_hz, n * SAMPLES_PER_PACKET, SAMPLES_PER_PACKET)
                    self._rtp.sendto(header + self._encode(name, pcm), destination)
                self.packets_sent += 1
                self.seq += 1
                marker = False
            # the clock runs on while silent (RFC 3550 §5.1 timestamp)
            self.timestamp += SAMPLES_PER_PACKET
            n += 1
            await asyncio.sleep(max(0.0, start + n * PACKET_MS / 1000 - time.monotonic()))

    async def stop(self) -> None:
        """Stop sending (the port stays open and keeps recording)."""
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None

    async def close(self) -> None:
        """Stop sending and close both ports; idempotent."""
        await self.stop()
        for transport in (self._rtp, self._rtcp):
            if transport is not None:
                transport.close()
        self._rtp = self._rtcp = None
        if self._g729 is not None:
            self._g729.close()
            self._g729 = None

    # -------------------------------------------------------------- what arrived

    @property
    def payload_types_seen(self) -> set[int]:
        """Payload types of every kept received packet."""
        return {p.payload_type for p in self.packets}

    def recent_audio(self, last_seconds: float = 1.0) -> npt.NDArray[np.int16]:
        """Decoded G.711/G.729 audio of packets received in the last ``last_seconds``."""
        cutoff = time.monotonic() - last_seconds
        recent = [p for p in self.packets if p.time >= cutoff]
        g729 = [p.payload for p in recent if self.receive_map.get(p.payload_type) == "G729"]
        if g729:
            return g729_decode(g729)
        chunks = [
            g711_decode(self.receive_map[p.payload_type], p.payload)
            for p in self.packets
            if p.time >= cutoff and self.receive_map.get(p.payload_type) in ("PCMU", "PCMA")
        ]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

    def dominant_frequency(self, last_seconds: float = 1.0) -> float:
        """Peak frequency (Hz) of G.711 audio received in the last ``last_seconds``."""
        return dominant_frequency(self.recent_audio(last_seconds))

    def telephone_events(self, payload_type: int) -> list[TelephoneEvent]:
        """RFC 4733 events received with ``payload_type``, one per event, in arrival order.

        Packets of one event share the RTP timestamp (RFC 4733 §2.5.1.3); each event keeps
        the longest duration seen and whether an end packet (E bit) arrived.
        """
        events: dict[tuple[int, int], TelephoneEvent] = {}
        for p in self.packets:
            if p.payload_type != payload_type or len(p.payload) < TELEPHONE_EVENT.size:
                continue
            code, flags, duration = TELEPHONE_EVENT.unpack_from(p.payload)
            key = (p.ssrc, p.timestamp)
            seen = events.get(key)
            events[key] = TelephoneEvent(
                code=code,
                end=bool(flags & 0x80) or (seen is not None and seen.end),
                volume=flags & 0x3F,
                duration=max(duration, seen.duration if seen else 0),
                timestamp=p.timestamp,
                packets=(seen.packets if seen else 0) + 1,
            )
        return list(events.values())

    async def wait_packets(self, count: int, timeout: float = SIP_TIMEOUT_S) -> None:
        """Wait until ``count`` more RTP packets have arrived."""
        target = self.packets_received + count
        deadline = time.monotonic() + timeout
        while self.packets_received < target:
            if time.monotonic() > deadline:
                got = self.packets_received - target + count
                raise AssertionError(f"received {got} of {count} RTP packets")
            await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- SIP


@dataclass
class SipTrace:
    """One SIP message sent ("out") or received ("in"), with the peer address."""

    direction: Literal["in", "out"]
    message: Request | Response
    address: tuple[str, int]
    time: float


@dataclass
class FarEndCall:
    """The far end's one dialog."""

    role: Literal["uas", "uac"]
    call_id: str
    local_tag: str
    local_uri: str
    remote_uri: str
    invite: Request | None = None
    remote_tag: str | None = None
    remote_target: str | None = None
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 1
    #: highest CSeq of the other side's requests in the dialog (RFC 3261 §12.2.2)
    remote_cseq: int | None = None
    #: CSeq of the other side's latest INVITE: its ACK must carry it (§17.1.1.3, §13.2.2.4)
    invite_cseq: int | None = None
    #: ACKs whose CSeq was not the INVITE's (a UA would not match them to its 2xx)
    mismatched_acks: int = 0
    #: in-dialog requests refused 500 for a CSeq not above the last one (§12.2.2)
    out_of_order: int = 0
    #: "early", "confirmed", "ended"
    state: str = "early"
    offer: Offer | None = None
    local_direction: str = "sendrecv"
    sdp_version: int = 1
    final_status: int | None = None
    end_reason: str | None = None
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)


def _token() -> str:
    return secrets.token_hex(5)


def _branch() -> str:
    return "z9hG4bK" + secrets.token_hex(10)  # RFC 3261 §8.1.1.7


class RtpFarEnd:
    """A scripted SIP UA over UDP on ``ip:port`` with a G.711 RTP stream (one call at a time).

    Args:
        port: SIP port (Kamailio routes ``9<port>`` here).
        codecs: codecs supported, in preference order (names from :data:`CODECS`).
        tone_hz: frequency of the tone sent.
        early_media: answer INVITE with 183 + SDP (and start sending) before the 200.
        ring_seconds: time between 180/183 and the final response.
        answer_status: final status to send (200 answers; e.g. 486 rejects).
        accept_any_profile: answer offers whose profile is not RTP/AVP (e.g. a WebRTC
            UDP/TLS/RTP/SAVPF offer passed through unchanged) instead of 488.
        symmetric: send RTP to the latched source (RFC 4961).
    """

    def __init__(
        self,
        port: int,
        *,
        ip: str = FAR_END_IP,
        codecs: Sequence[str] = ("PCMU", "PCMA", "telephone-event"),
        tone_hz: float = 1000.0,
        early_media: bool = False,
        ring_seconds: float = 0.2,
        answer_status: int = 200,
        accept_any_profile: bool = False,
        symmetric: bool = True,
        user: str = "farend",
    ) -> None:
        unknown = [c for c in codecs if c not in CODECS]
        if unknown:
            raise ValueError(f"unknown codecs {unknown}; known: {sorted(CODECS)}")
        self.ip = ip
        self.port = port
        self.codecs = list(codecs)
        self.early_media = early_media
        self.ring_seconds = ring_seconds
        self.answer_status = answer_status
        self.accept_any_profile = accept_any_profile
        self.user = user
        self.rtp = RtpStream(ip, tone_hz=tone_hz, symmetric=symmetric)
        self.messages: list[SipTrace] = []
        self.call: FarEndCall | None = None
        self.calls: list[FarEndCall] = []
        self.session_id = random.randrange(10**9, 10**10)
        self._transport: asyncio.DatagramTransport | None = None
        self._pending: dict[str, asyncio.Queue[Response]] = {}
        self._server: dict[str, Response] = {}  # branch+method -> last response sent
        self._tasks: set[asyncio.Task[Any]] = set()
        self._incoming: asyncio.Queue[FarEndCall] = asyncio.Queue()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind the SIP port and the RTP port pair."""
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._on_datagram),
            local_addr=(self.ip, self.port),
            family=socket.AF_INET,
        )
        await self.rtp.open()

    @property
    def contact(self) -> str:
        """This far end's Contact address."""
        return f"<sip:{self.user}@{self.ip}:{self.port}>"

    async def close(self) -> None:
        """Stop media, tasks and sockets (no BYE: call :meth:`send_bye` first); idempotent."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.rtp.close()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def __aenter__(self) -> RtpFarEnd:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ wire

    def _send(self, message: Request | Response, address: tuple[str, int]) -> None:
        if self._transport is None:
            return
        self.messages.append(SipTrace("out", message, address, time.monotonic()))
        self._transport.sendto(bytes(message), address)

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data.strip(b"\r\n"):
            return  # keepalive (RFC 5626 §4.4.1)
        try:
            message = parse(data)
        except Exception:  # noqa: BLE001 - a test peer skips what it cannot read
            return
        self.messages.append(SipTrace("in", message, addr, time.monotonic()))
        if isinstance(message, Response):
            queue = self._pending.get(f"{message.top_via.branch} {message.cseq[1]}")
            if queue is not None:
                queue.put_nowait(message)
            return
        key = f"{message.top_via.branch} {message.method}"
        last = self._server.get(key)
        if last is not None and message.method != "ACK":
            self._send(last, self._response_address(message))  # retransmission (§17.2)
            return
        self._spawn(self._handle_request(message, addr))

    @staticmethod
    def _response_address(request: Request) -> tuple[str, int]:
        """RFC 3261 §18.2.2 with RFC 3581: received/rport, else sent-by."""
        via = request.top_via
        host = via.received or via.host
        port = int(via.rport) if via.rport else (via.port or 5060)
        return host, port

    def _respond(self, request: Request, response: Response) -> None:
        self._server[f"{request.top_via.branch} {request.method}"] = response
        self._send(response, self._response_address(request))

    def _response(
        self, request: Request, status: int, call: FarEndCall | None, *, sdp: str | None = None
    ) -> Response:
        response = make_response(request, status, to_tag=call.local_tag if call else None)
        if request.method == "INVITE" and 100 < status < 300:
            # RFC 3261 §12.1.1: Record-Route copied into dialog-creating responses
            for value in request.headers.get_all("Record-Route"):
                response.headers.add("Record-Route", value)
            response.headers.add("Contact", self.contact)
        if sdp is not None:
            response.headers.add("Content-Type", "application/sdp")
            response.body = sdp.encode()
        return response

    async def _transaction(
        self, request: Request, address: tuple[str, int], timeout: float = TRANSACTION_TIMEOUT_S
    ) -> asyncio.Queue[Response]:
        """Send with Timer A/E retransmissions until the first response; returns the queue
        that receives this transaction's responses (the caller removes it)."""
        key = f"{request.top_via.branch} {request.method}"
        queue: asyncio.Queue[Response] = asyncio.Queue()
        self._pending[key] = queue
        interval = T1_S
        deadline = time.monotonic() + timeout
        self._send(request, address)
        while queue.empty():
            if time.monotonic() > deadline:
                self._pending.pop(key, None)
                raise TimeoutError(f"no response to {request.method}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._peek(queue), interval)
                break
            self._send(request, address)  # RFC 3261 §17.1.1.2 Timer A / §17.1.2.2 Timer E
            interval = min(interval * 2, T2_S)
        return queue

    @staticmethod
    async def _peek(queue: asyncio.Queue[Response]) -> None:
        while queue.empty():
            await asyncio.sleep(0.01)

    async def _final(
        self, request: Request, address: tuple[str, int], timeout: float = TRANSACTION_TIMEOUT_S
    ) -> Response:
        """Run a client transaction to its final response."""
        key = f"{request.top_via.branch} {request.method}"
        queue = await self._transaction(request, address, timeout)
        try:
            deadline = time.monotonic() + timeout
            while True:
                response = await asyncio.wait_for(
                    queue.get(), max(0.0, deadline - time.monotonic())
                )
                if response.status >= 200:
                    return response
        finally:
            self._pending.pop(key, None)

    # ------------------------------------------------------------------ UAS

    async def _handle_request(self, request: Request, addr: tuple[str, int]) -> None:
        call = self.call
        in_dialog = (
            call is not None
            and request.call_id == call.call_id
            and request.to_tag is not None
            and request.to_tag == call.local_tag
        )
        if in_dialog and call is not None and request.method not in ("ACK", "CANCEL"):
            cseq = request.cseq[0]
            if call.remote_cseq is not None and cseq <= call.remote_cseq:
                # RFC 3261 §12.2.2: a lower CSeq than one already seen is out of order.
                call.out_of_order += 1
                self._respond(request, self._response(request, 500, call))
                return
            call.remote_cseq = cseq
            if request.method == "INVITE":
                call.invite_cseq = cseq
        if request.method == "INVITE" and request.to_tag is None:
            await self._new_invite(request)
        elif request.method == "INVITE" and in_dialog and call is not None:
            await self._reinvite(call, request)
        elif request.method == "ACK":
            if call is not None and request.call_id == call.call_id:
                if call.invite_cseq is not None and request.cseq[0] != call.invite_cseq:
                    call.mismatched_acks += 1
                call.acked.set()
                if request.body and call.offer is None:
                    self._apply_remote(call, request.body.decode())
        elif request.method == "BYE" and in_dialog and call is not None:
            self._respond(request, self._response(request, 200, call))
            await self._end(call, "remote BYE")
        elif request.method == "CANCEL":
            await self._cancel(request)
        elif request.method == "INFO" and in_dialog and call is not None:
            # RFC 6086 §4.2.2: INFO in the dialog gets 200 (kept in messages; DTMF relay
            # bodies are read by dtmf_info_digits())
            self._respond(request, self._response(request, 200, call))
        elif request.method in ("OPTIONS", "BYE", "INFO"):
            self._respond(
                request, make_response(request, 200 if request.method == "OPTIONS" else 481)
            )
        else:
            self._respond(request, make_response(request, 405))

    async def _new_invite(self, request: Request) -> None:
        if self.call is not None and self.call.state != "ended":
            self._respond(request, make_response(request, 486, to_tag=_token()))
            return
        from_ = parse_name_addr(request.headers.get("From") or "")
        to = parse_name_addr(request.headers.get("To") or "")
        call = FarEndCall(
            role="uas",
            call_id=request.call_id,
            local_tag=_token(),
            local_uri=str(to.uri),
            remote_uri=str(from_.uri),
            invite=request,
            remote_tag=from_.tag,
            remote_cseq=request.cseq[0],
            invite_cseq=request.cseq[0],
        )
        contact = request.headers.get("Contact")
        if contact:
            call.remote_target = str(parse_name_addr(contact).uri)
        call.route_set = _record_routes(request.headers)  # UAS: in order (§12.1.1)
        self.call = call
        self.calls.append(call)
        self._respond(request, self._response(request, 100, None))
        answer: str | None = None
        if request.body:
            offer = read_sdp(request.body.decode(), self.codecs)
            call.offer = offer
            if not self._acceptable(offer):
                await self._final_invite_response(call, request, 488)
                return
            answer = self._answer_sdp(call)
        self._respond(request, self._response(request, 180, call))
        self._incoming.put_nowait(call)
        if self.early_media and answer is not None:
            self._respond(request, self._response(request, 183, call, sdp=answer))
            self._start_media(call)
        await asyncio.sleep(self.ring_seconds)
        if call.state == "ended":  # cancelled while ringing
            return
        if self.answer_status != 200:
            await self._final_invite_response(call, request, self.answer_status)
            return
        if answer is None:
            # Late offer (RFC 3261 §13.2.1): our offer in the 200, the answer in the ACK.
            answer = build_sdp(
                session_id=self.session_id,
                version=call.sdp_version,
                port=self.rtp.port,
                codecs=[(n, CODECS[n][0]) for n in self.codecs],
            )
        response = self._response(request, 200, call, sdp=answer)
        self._respond(request, response)
        call.state = "confirmed"
        call.final_status = 200
        if call.offer is not None:
            self._start_media(call)
        self._spawn(self._retransmit_2xx(call, request, response))

    def _acceptable(self, offer: Offer) -> bool:
        if offer.proto.upper() != "RTP/AVP" and not self.accept_any_profile:
            return False
        return any(name in AUDIO_CODECS for name, _ in offer.common)

    async def _final_invite_response(self, call: FarEndCall, request: Request, status: int) -> None:
        self._respond(request, self._response(request, status, call))
        call.final_status = status
        await self._end(call, f"rejected {status}")

    async def _retransmit_2xx(self, call: FarEndCall, request: Request, response: Response) -> None:
        """RFC 3261 §13.3.1.4: resend the 2xx at T1, 2*T1... (capped at T2) until the ACK."""
        interval = T1_S
        deadline = time.monotonic() + TRANSACTION_TIMEOUT_S
        while not call.acked.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.acked.wait(), interval)
                return
            self._send(response, self._response_address(request))
            interval = min(interval * 2, T2_S)

    async def _cancel(self, request: Request) -> None:
        call = self.call
        if (
            call is None
            or call.invite is None
            or request.top_via.branch != call.invite.top_via.branch
        ):
            self._respond(request, make_response(request, 481))
            return
        self._respond(request, make_response(request, 200, to_tag=call.local_tag))
        if call.state == "early":
            # RFC 3261 §9.2: the INVITE is answered 487
            await self._final_invite_response(call, call.invite, 487)

    async def _reinvite(self, call: FarEndCall, request: Request) -> None:
        """Answer with the same session, version + 1, direction mirrored (RFC 3264 §8)."""
        if request.body:
            offer = read_sdp(request.body.decode(), self.codecs)
            if not self._acceptable(offer):
                self._respond(request, self._response(request, 488, call))
                return
            call.offer = offer
        call.acked.clear()
        call.sdp_version += 1
        answer = self._answer_sdp(call)
        response = self._response(request, 200, call, sdp=answer)
        self._respond(request, response)
        self._start_media(call)
        self._spawn(self._retransmit_2xx(call, request, response))

    def _answer_sdp(self, call: FarEndCall) -> str:
        assert call.offer is not None
        common = call.offer.common
        first_audio = next(c for c in common if c[0] in AUDIO_CODECS)
        codecs = [first_audio] + [c for c in common if c[0] == "telephone-event"][:1]
        call.local_direction = MIRROR.get(call.offer.direction, "sendrecv")
        return build_sdp(
            session_id=self.session_id,
            version=call.sdp_version,
            port=self.rtp.port,
            codecs=codecs,
            direction=call.local_direction,
        )

    def _apply_remote(self, call: FarEndCall, sdp: str) -> None:
        """A remote answer (to our offer): learn address and codec, start media."""
        call.offer = read_sdp(sdp, self.codecs)
        direction = call.offer.direction
        call.local_direction = MIRROR.get(direction, "sendrecv")
        self._start_media(call)

    def _start_media(self, call: FarEndCall) -> None:
        assert call.offer is not None
        audio = [c for c in call.offer.common if c[0] in AUDIO_CODECS]
        if not audio:
            return
        self.rtp.send_codec = audio[0]
        for name, pt in call.offer.common:
            self.rtp.receive_map[pt] = name
        # the telephone-event type this end answered (or was answered) with, if any
        self.rtp.event_pt = next(
            (pt for name, pt in call.offer.common if name == "telephone-event"), None
        )
        self.rtp.start((call.offer.address, call.offer.port))
        # RFC 3264 §6.1: recvonly/inactive -> send nothing (held)
        self.rtp.sending_enabled = call.local_direction in ("sendrecv", "sendonly")

    async def _end(self, call: FarEndCall, reason: str) -> None:
        call.state = "ended"
        call.end_reason = call.end_reason or reason
        call.ended.set()
        await self.rtp.stop()

    # ------------------------------------------------------------------ UAC

    async def invite(
        self,
        user: str,
        proxy: tuple[str, int],
        *,
        domain: str = REALM,
        sdp: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        timeout: float = SIP_TIMEOUT_S,
    ) -> Response:
        """Call ``sip:user@domain`` through ``proxy`` with our offer (or ``sdp``); returns
        the final response. A 2xx is ACKed and media starts toward the answer's address."""
        target = f"sip:{user}@{domain}"
        call = FarEndCall(
            role="uac",
            call_id=secrets.token_hex(10),
            local_tag=_token(),
            local_uri=f"sip:{self.user}@{self.ip}",
            remote_uri=target,
        )
        self.call = call
        self.calls.append(call)
        body = sdp or build_sdp(
            session_id=self.session_id,
            version=call.sdp_version,
            port=self.rtp.port,
            codecs=[(n, CODECS[n][0]) for n in self.codecs],
        )
        request = self._request(
            "INVITE",
            target,
            call,
            extra=[("Contact", self.contact), *headers],
            body=body.encode(),
        )
        call.invite = request
        key = f"{request.top_via.branch} INVITE"
        queue = await self._transaction(request, proxy, timeout)
        try:
            deadline = time.monotonic() + timeout
            while True:
                response = await asyncio.wait_for(
                    queue.get(), max(0.0, deadline - time.monotonic())
                )
                if response.status < 200:
                    continue
                call.final_status = response.status
                if response.status >= 300:
                    # RFC 3261 §17.1.1.3: ACK a non-2xx in the transaction (same branch)
                    ack = self._request("ACK", target, call, branch=request.top_via.branch)
                    ack.headers.set("To", response.headers.get("To") or f"<{target}>")
                    self._send(ack, proxy)
                    await self._end(call, f"{response.status} {response.reason}")
                    return response
                call.remote_tag = response.to_tag
                contact = response.headers.get("Contact")
                if contact:
                    call.remote_target = str(parse_name_addr(contact).uri)
                call.route_set = list(reversed(_record_routes(response.headers)))
                self._send(self._in_dialog(call, "ACK", cseq=call.local_cseq), self._next_hop(call))
                call.state = "confirmed"
                call.acked.set()
                if response.body and sdp is None:
                    self._apply_remote(call, response.body.decode())
                return response
        finally:
            self._pending.pop(key, None)

    def _request(
        self,
        method: str,
        uri: str,
        call: FarEndCall,
        *,
        cseq: int | None = None,
        branch: str | None = None,
        routes: Iterable[str] = (),
        extra: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Request:
        via = f"SIP/2.0/UDP {self.ip}:{self.port};branch={branch or _branch()};rport"
        headers = Headers([("Via", via), ("Max-Forwards", "70")])
        for route in routes:
            headers.add("Route", route)
        # For a dialog we answered, local_uri is the INVITE's To and remote_uri its From.
        from_ = f"<{call.local_uri}>;tag={call.local_tag}"
        to = f"<{call.remote_uri}>" + (f";tag={call.remote_tag}" if call.remote_tag else "")
        headers.add("From", from_)
        headers.add("To", to)
        headers.add("Call-ID", call.call_id)
        headers.add("CSeq", f"{cseq if cseq is not None else call.local_cseq} {method}")
        for name, value in extra:
            headers.add(name, value)
        if body:
            headers.add("Content-Type", "application/sdp")
        headers.add("Content-Length", str(len(body)))
        return Request(method, uri, headers, body)

    def _in_dialog(self, call: FarEndCall, method: str, *, cseq: int | None = None) -> Request:
        """A request in ``call``'s dialog (RFC 3261 §12.2.1.1), loose routing."""
        if cseq is None:
            call.local_cseq += 1
            cseq = call.local_cseq
        return self._request(
            method, call.remote_target or call.remote_uri, call, cseq=cseq, routes=call.route_set
        )

    def _next_hop(self, call: FarEndCall) -> tuple[str, int]:
        """The first Route's address, else the remote target's (RFC 3261 §8.1.2)."""
        uri = call.route_set[0] if call.route_set else f"<{call.remote_target}>"
        parsed = parse_name_addr(uri).uri
        if not isinstance(parsed, SipURI):
            raise ValueError(f"cannot route to {uri}")
        return parsed.host, parsed.port or 5060

    # ------------------------------------------------------------------ scripted actions

    async def wait_call(self, timeout: float = SIP_TIMEOUT_S) -> FarEndCall:
        """The next INVITE received (after the 180 went out)."""
        return await asyncio.wait_for(self._incoming.get(), timeout)

    async def wait_confirmed(self, timeout: float = SIP_TIMEOUT_S) -> FarEndCall:
        """Wait until the current call's 200 is ACKed."""
        deadline = time.monotonic() + timeout
        while self.call is None or self.call.state != "confirmed" or not self.call.acked.is_set():
            if self.call is not None and self.call.state == "ended":
                raise AssertionError(f"call ended: {self.call.end_reason}")
            if time.monotonic() > deadline:
                raise AssertionError("call not confirmed (no ACK)")
            await asyncio.sleep(0.02)
        return self.call

    async def wait_ended(self, timeout: float = SIP_TIMEOUT_S) -> str:
        """Wait for the current call to end; returns why."""
        if self.call is None:
            raise RuntimeError("no call")
        await asyncio.wait_for(self.call.ended.wait(), timeout)
        return self.call.end_reason or ""

    async def send_bye(self, timeout: float = SIP_TIMEOUT_S) -> Response:
        """Hang up the confirmed call with BYE; returns its final response."""
        call = self.call
        if call is None or call.state != "confirmed":
            raise RuntimeError("no confirmed call")
        bye = self._in_dialog(call, "BYE")
        response = await self._final(bye, self._next_hop(call), timeout)
        await self._end(call, "local BYE")
        return response

    async def stop_media(self) -> None:
        """Go silent (the call stays up): for media-timeout tests."""
        await self.rtp.stop()

    async def send_dtmf(
        self,
        symbols: str,
        *,
        duration: int = DTMF_DURATION,
        volume: int = DTMF_VOLUME,
        gap_ms: int = DTMF_GAP_MS,
        timeout: float = SIP_TIMEOUT_S,
    ) -> list[SentEvent]:
        """Send ``symbols`` as RFC 4733 events in the call's RTP stream on the negotiated
        telephone-event payload type (see :meth:`RtpStream.send_events`); returns once the
        last end packet is out, with the events sent (code, start timestamp, duration).

        Raises:
            RuntimeError: no telephone-event was negotiated, or media is not being sent.
            AssertionError: the events were not all sent within ``timeout``.
        """
        pt = self.telephone_event_payload_type
        if pt is None:
            raise RuntimeError("no telephone-event payload type negotiated on this call")
        if self.rtp.event_pt != pt or not self.rtp.sending_enabled:
            raise RuntimeError("the RTP stream is not sending on this call")
        already = len(self.rtp.events_sent)
        self.rtp.send_events(symbols, duration=duration, volume=volume, gap_ms=gap_ms)
        deadline = time.monotonic() + timeout
        while self.rtp.events_pending:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.rtp.events_pending} event packets still unsent")
            await asyncio.sleep(PACKET_MS / 1000)
        return self.rtp.events_sent[already:]

    # ------------------------------------------------------------------ views

    @property
    def packets_received(self) -> int:
        """RTP packets received in total."""
        return self.rtp.packets_received

    @property
    def payload_types_seen(self) -> set[int]:
        """Payload types received."""
        return self.rtp.payload_types_seen

    def dominant_frequency(self, last_seconds: float = 1.0) -> float:
        """Peak frequency (Hz) of the G.711 audio received in the last ``last_seconds``."""
        return self.rtp.dominant_frequency(last_seconds)

    def dtmf_info_digits(self) -> str:
        """Digits of every application/dtmf-relay INFO received, in order ("Signal=" lines)."""
        digits = ""
        seen: set[tuple[str, str]] = set()
        for info in self.received("INFO"):
            key = (info.call_id, info.headers.get("CSeq") or "")
            if key in seen:  # a retransmission (RFC 3261 §17.2.2)
                continue
            seen.add(key)
            content_type = (info.headers.get("Content-Type") or "").split(";")[0].strip()
            if content_type.lower() != "application/dtmf-relay":
                continue
            for line in info.body.decode(errors="replace").splitlines():
                name, _, value = line.partition("=")
                if name.strip().lower() == "signal":
                    digits += value.strip()
        return digits

    @property
    def telephone_event_payload_type(self) -> int | None:
        """The telephone-event payload type negotiated on the current call, if any."""
        if self.call is None or self.call.offer is None:
            return None
        return next((pt for n, pt in self.call.offer.common if n == "telephone-event"), None)

    def received(self, method_or_status: str | int) -> list[Request | Response]:
        """Messages received: requests by method, or responses by status code."""
        return self._select("in", method_or_status)

    def sent(self, method_or_status: str | int) -> list[Request | Response]:
        """Messages sent: requests by method, or responses by status code."""
        return self._select("out", method_or_status)

    def _select(self, direction: str, what: str | int) -> list[Request | Response]:
        out: list[Request | Response] = []
        for t in self.messages:
            m = t.message
            if t.direction == direction and (
                (isinstance(what, int) and isinstance(m, Response) and m.status == what)
                or (isinstance(what, str) and isinstance(m, Request) and m.method == what)
            ):
                out.append(m)
        return out


def _record_routes(headers: Headers) -> list[str]:
    out: list[str] = []
    for value in headers.get_all("Record-Route"):
        out.extend(str(n) for n in parse_name_addrs(value))
    return out
