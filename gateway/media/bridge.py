"""One call's media, sans-I/O: a WebRTC leg and a plain RTP leg joined by two pipelines.

::

    browser --SRTP/STUN/DTLS--> [WebRTC leg] --to_rtp-----> [RTP leg] --RTP/RTCP--> switch
    browser <-------------------[WebRTC leg] <--to_webrtc-- [RTP leg] <------------ switch

Each pipeline is passthrough (payload relayed as is; PT/seq/ts/SSRC rewritten in place,
:class:`gateway.media.rtp.StreamRewriter`) unless a :class:`Transcoder` is set for it.
The adapter feeds datagrams with ``now`` and gives three send callables; the bridge never
touches sockets or clocks. :meth:`Bridge.tick` runs DTLS retransmission and the media
timeout.

Direction (:meth:`Bridge.set_direction`) is the *remote peer's* SDP direction on that leg
(what the SDP rewriter reads from the browser's or the switch's SDP): ``sendonly`` = the
peer sends and does not want media, so the gateway accepts from it and sends nothing to it;
``recvonly`` the reverse; ``inactive`` neither (RFC 3264 §5.1). RTCP always flows.

Symmetric RTP (RTP leg, PITFALLS 4): send to the SDP address until a valid RTP packet
arrives, then to that packet's source (latched). After latching, RTP from other sources is
dropped (``source``) unless the latched source has been silent for more than
:data:`RELATCH_SILENCE` seconds, in which case the new source is latched (the far end moved).
A new SDP address/port (:meth:`Bridge.set_rtp_remote`, PITFALLS 9) clears the latch. RTCP
latches to the latest valid RTCP source whose IP is the latched RTP IP (or any IP before
RTP latched).

RTCP (DESIGN "Media"): in passthrough the peers' RTCP is forwarded with SSRCs mapped
(:func:`gateway.media.rtp.map_rtcp`). When a transcoder is set on either pipeline the two
legs carry different streams (own SSRC, sequence and timestamps, another clock), so RTCP is
terminated per leg instead, as rtpengine does: what arrives is read for statistics and not
forwarded, and :meth:`Bridge.tick` sends our own SR/RR + SDES CNAME on each leg when due
(:class:`gateway.media.rtcp.LegRtcp`): SRTCP to the browser, plain RTCP to the switch. Both
modes keep per-leg RTCP statistics (loss, jitter, round-trip time), in :meth:`Bridge.stats`.
With rtcp-mux on the RTP leg (RTCP port = RTP port) RTCP to the switch leaves from the RTP
socket to the RTP destination (RFC 5761 §4), otherwise from the RTCP socket (port + 1).

Media timeout: a leg whose peer is meant to send (sendrecv/sendonly) and whose RTP packet
counter has not moved for ``timeout`` seconds reports once (:meth:`Bridge.tick` returns the
leg name); a direction change restarts the clock.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Protocol

import pylibsrtp

from gateway.media.demux import CLASSIFY, KIND_DTLS, KIND_RTP, KIND_STUN
from gateway.media.dtls import DtlsCertificate, DtlsEndpoint, DtlsState
from gateway.media.dtmf_receive import DtmfReceiver
from gateway.media.dtmf_send import DtmfSender
from gateway.media.ice import IceLiteAgent
from gateway.media.rtcp import LegRtcp, RtcpError, RtcpPacket, SenderReport, SenderStats
from gateway.media.rtcp import parse as parse_rtcp
from gateway.media.rtp import (
    RTP_HEADER_SIZE,
    StreamRewriter,
    map_rtcp,
    pt_map_from_dict,
)
from gateway.media.srtp import SrtpPair

__all__ = [
    "Bridge",
    "LegCounters",
    "Transcoder",
    "Addr",
    "Send",
    "DIRECTIONS",
    "RELATCH_SILENCE",
    "MIN_RTCP_SIZE",
    "LEG_WEBRTC",
    "LEG_RTP",
]

Addr = tuple[str, int]
Send = Callable[[bytes | bytearray, Addr], None]

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
"""SDP direction attributes (RFC 8866 §6.7)."""
RELATCH_SILENCE = 2.0
"""Seconds the latched RTP source must be silent before another source may take over."""
MIN_RTCP_SIZE = 8
"""Shortest valid RTCP packet: header + sender SSRC (RFC 3550 §6.4.2, empty RR)."""
LEG_WEBRTC = "webrtc"
LEG_RTP = "rtp"
_PEER_SENDS = frozenset({"sendrecv", "sendonly"})
_PEER_RECEIVES = frozenset({"sendrecv", "recvonly"})
_NULL_ADDRS = frozenset({"0.0.0.0", "::"})


class Transcoder(Protocol):
    """A per-direction stage replacing passthrough (a later task plugs codecs in here).

    It takes one decrypted RTP packet of the incoming leg and returns zero or more RTP
    packets for the outgoing leg (its own SSRC/seq/ts numbering and payload types); the
    outgoing direction's rewriter then maps SSRC/seq/ts like any passthrough packet.
    """

    @property
    def in_clock(self) -> int:
        """RTP clock rate of the incoming leg's codec."""
        ...

    @property
    def out_clock(self) -> int:
        """RTP clock rate of the outgoing leg's codec."""
        ...

    def transcode(self, packet: bytes, now: float) -> list[bytes]:
        """Packets to forward for ``packet`` (empty while buffering)."""
        ...


class LegCounters:
    """Plain integer counters of one leg (RTP and RTCP, in and out, drops by reason)."""

    __slots__ = (
        "rx_packets",
        "rx_bytes",
        "tx_packets",
        "tx_bytes",
        "rx_rtcp",
        "tx_rtcp",
        "drop_garbage",
        "drop_malformed",
        "drop_direction",
        "drop_payload_type",
        "drop_source",
        "drop_not_ready",
        "drop_no_destination",
        "drop_unchecked",
        "srtp_auth_failures",
    )

    def __init__(self) -> None:
        self.rx_packets = 0
        self.rx_bytes = 0
        self.tx_packets = 0
        self.tx_bytes = 0
        self.rx_rtcp = 0
        self.tx_rtcp = 0
        self.drop_garbage = 0
        self.drop_malformed = 0
        self.drop_direction = 0
        self.drop_payload_type = 0
        self.drop_source = 0
        self.drop_not_ready = 0
        self.drop_no_destination = 0
        self.drop_unchecked = 0
        self.srtp_auth_failures = 0

    def as_dict(self) -> dict[str, int]:
        """Counters as a dict; drops grouped under ``drops`` by reason."""
        out: dict[str, int] = {}
        for name in self.__slots__:
            if not name.startswith("drop_"):
                out[name] = getattr(self, name)
        return out

    def drops(self) -> dict[str, int]:
        """Drop counters by reason."""
        return {n[5:]: getattr(self, n) for n in self.__slots__ if n.startswith("drop_")}


class Bridge:
    """Media of one call: STUN/DTLS/SRTP on the WebRTC leg, symmetric RTP on the other."""

    def __init__(
        self,
        *,
        certificate: DtlsCertificate,
        ice_ufrag: str,
        ice_pwd: str,
        ssrc_to_rtp: int,
        ssrc_to_webrtc: int,
        send_webrtc: Send,
        send_rtp: Send,
        send_rtcp: Send,
        timeout: float,
        now: float,
        cname: str = "",
    ) -> None:
        """``cname`` is the SDES CNAME of our RTCP reports (RFC 3550 §6.5.1); by default a
        random 96-bit one per call (RFC 7022 §4.2)."""
        self.certificate = certificate
        self.ice = IceLiteAgent(local_ufrag=ice_ufrag, local_pwd=ice_pwd)
        self.dtls: DtlsEndpoint | None = None
        self.dtls_setup = "actpass"
        """Our ``a=setup`` value: actpass until the remote's role is known (RFC 8842 §5)."""
        self.srtp: SrtpPair | None = None
        self.srtp_profile = ""
        self.handshakes = 0
        self.dtls_failures = 0
        self.dtls_failure = ""
        self._remote_fingerprint: tuple[str, str] | None = None
        self.remote_candidates: list[Addr] = []
        self.to_rtp = StreamRewriter(ssrc_to_rtp)
        self.to_webrtc = StreamRewriter(ssrc_to_webrtc)
        self.transcoder_to_rtp: Transcoder | None = None
        self.transcoder_to_webrtc: Transcoder | None = None
        self.w = LegCounters()
        self.r = LegCounters()
        self.dtmf_to_rtp: DtmfSender | None = None
        """Telephone-events the gateway itself sends to the switch (SIP INFO interworking)."""
        self.dtmf_to_info: DtmfReceiver | None = None
        """The browser's telephone-events read as digits for SIP INFO (a switch without
        telephone-event); they are not forwarded."""
        # RTCP per leg: statistics both modes, our reports when transcoding.
        self.rtcp_w = LegRtcp()
        self.rtcp_r = LegRtcp()
        self.cname = (cname or secrets.token_urlsafe(12)).encode()
        self.wallclock_offset = 0.0
        """UNIX time minus ``now``, from :meth:`tick`'s ``wallclock`` (NTP timestamps)."""
        # Bound once for the per-packet path.
        self._w_rtp_stats = self.rtcp_w.receiver.on_rtp
        self._r_rtp_stats = self.rtcp_r.receiver.on_rtp
        self._send_webrtc = send_webrtc
        self._send_rtp = send_rtp
        self._send_rtcp = send_rtcp
        # RTP leg addressing.
        self.rtp_remote: Addr | None = None
        self.rtcp_remote: Addr | None = None
        self.rtp_latched: Addr | None = None
        self.rtcp_latched: Addr | None = None
        self.rtcp_mux = False
        """The switch multiplexes RTCP on the RTP port (RFC 5761)."""
        self.rtp_last_rx = 0.0
        self.relatches = 0
        # Directions (remote peers' SDP attributes).
        self.direction = {LEG_WEBRTC: "sendrecv", LEG_RTP: "sendrecv"}
        self.forward_to_rtp = True
        self.forward_to_webrtc = True
        # Media timeout bookkeeping.
        self.timeout = timeout
        self.timed_out = ""
        self._seen = {LEG_WEBRTC: 0, LEG_RTP: 0}
        self._since = {LEG_WEBRTC: now, LEG_RTP: now}

    # ------------------------------------------------------------------ signalling side

    @property
    def dtls_state(self) -> str:
        """``new`` until the remote is set, then the DTLS endpoint's state."""
        return "new" if self.dtls is None else self.dtls.state.value

    def set_webrtc_remote(
        self,
        *,
        ice_ufrag: str,
        ice_pwd: str,
        fingerprint: tuple[str, str],
        setup: str,
        candidates: list[Addr],
        now: float,
    ) -> None:
        """Apply the browser's ICE/DTLS parameters (offer or answer, first or re-offer).

        ``setup`` is the browser's ``a=setup``: ``actpass``/``active`` make the gateway
        the DTLS server (it answers ``passive``), ``passive`` makes it the client. A re-offer
        with the same ufrag, fingerprint and role keeps the DTLS association and SRTP keys
        (PITFALLS 7); a new ufrag (ICE restart) or fingerprint prepares a new handshake while
        the old SRTP keys keep working until it completes.

        Raises:
            ValueError: unknown ``setup`` or a fingerprint algorithm other than sha-256.
        """
        if setup not in ("actpass", "active", "passive"):
            raise ValueError(f"invalid setup {setup!r}")
        if fingerprint[0].lower() != "sha-256":
            raise ValueError(f"unsupported fingerprint algorithm {fingerprint[0]!r}")
        is_server = setup != "passive"
        fp = (fingerprint[0].lower(), fingerprint[1].upper())
        restart = self.ice.remote_ufrag is not None and self.ice.remote_ufrag != ice_ufrag
        self.ice.set_remote(ice_ufrag, ice_pwd)
        # RFC 8839 §5.1 / PITFALLS 5: mDNS ".local" host candidates cannot be resolved here;
        # they are ignored (the real address arrives with the first check).
        self.remote_candidates = [c for c in candidates if not c[0].endswith(".local")]
        if (
            self.dtls is None
            or restart
            or fp != self._remote_fingerprint
            or is_server != self.dtls.is_server
            or self.dtls.state is DtlsState.FAILED
        ):
            self._remote_fingerprint = fp
            self.dtls = DtlsEndpoint(self.certificate, is_server=is_server, remote_fingerprint=fp)
            self.dtls_setup = "passive" if is_server else "active"
            if not is_server and self.ice.selected is not None:
                self._dtls_start(now)

    def set_rtp_remote(self, *, address: str, port: int, rtcp_port: int | None) -> None:
        """Point the RTP leg at the switch's SDP address (``c=``/``m=``/``a=rtcp``).

        ``rtcp_port`` None means port + 1 (RFC 3605 absent). A changed address or port
        clears the latch (PITFALLS 9); ``0.0.0.0`` (old-style hold) sends nothing until
        the far end's packets latch an address.
        """
        new = None if address in _NULL_ADDRS or port == 0 else (address, port)
        if new != self.rtp_remote:
            self.rtp_latched = None
            self.rtcp_latched = None
        self.rtp_remote = new
        self.rtcp_mux = rtcp_port == port
        if new is None:
            self.rtcp_remote = None
        else:
            self.rtcp_remote = (address, rtcp_port if rtcp_port is not None else port + 1)

    def set_payload_map(self, *, to_rtp: dict[int, int], to_webrtc: dict[int, int]) -> None:
        """Payload-type renumbering per direction; unmapped types are dropped.

        An empty dict keeps every payload type as it is.
        """
        self.to_rtp.pt_map = pt_map_from_dict(to_rtp)
        self.to_webrtc.pt_map = pt_map_from_dict(to_webrtc)

    def set_transcoder(self, direction: str, transcoder: Transcoder | None) -> None:
        """Put a transcoder on ``to_rtp`` or ``to_webrtc`` (None: back to passthrough).

        With a transcoder on either pipeline RTCP is terminated per leg (module docstring);
        the transcoder's clocks become the legs' RTP clocks.
        """
        if direction == "to_rtp":
            self.transcoder_to_rtp = transcoder
            if transcoder is not None:
                self.rtcp_w.set_clock(transcoder.in_clock)
                self.rtcp_r.set_clock(transcoder.out_clock)
        elif direction == "to_webrtc":
            self.transcoder_to_webrtc = transcoder
            if transcoder is not None:
                self.rtcp_r.set_clock(transcoder.in_clock)
                self.rtcp_w.set_clock(transcoder.out_clock)
        else:
            raise ValueError(f"invalid pipeline {direction!r}")

    def set_clock_rates(self, *, webrtc: int, rtp: int) -> None:
        """RTP clock rates of the legs' codecs, for jitter (passthrough: the shared codec's).

        Unset, a leg's clock comes from the first payload type it receives (static types
        from RFC 3551, dynamic ones taken as Opus at 48 000); a transcoder sets them too.
        """
        self.rtcp_w.set_clock(webrtc)
        self.rtcp_r.set_clock(rtp)

    @property
    def rtcp_terminated(self) -> bool:
        """RTCP is terminated per leg (a pipeline is transcoded), not forwarded."""
        return self.transcoder_to_rtp is not None or self.transcoder_to_webrtc is not None

    def set_direction(self, leg: str, direction: str, now: float) -> None:
        """Set a leg's remote SDP direction (hold/unhold) without touching DTLS.

        Raises:
            ValueError: unknown leg or direction.
        """
        if leg not in self.direction:
            raise ValueError(f"invalid leg {leg!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"invalid direction {direction!r}")
        self.direction[leg] = direction
        w, r = self.direction[LEG_WEBRTC], self.direction[LEG_RTP]
        self.forward_to_rtp = w in _PEER_SENDS and r in _PEER_RECEIVES
        self.forward_to_webrtc = r in _PEER_SENDS and w in _PEER_RECEIVES
        self._since[leg] = now
        self._seen[leg] = (self.w if leg == LEG_WEBRTC else self.r).rx_packets
        self.timed_out = ""

    # ------------------------------------------------------------------ WebRTC leg

    def _dtls_flush(self, addr: Addr) -> None:
        assert self.dtls is not None
        for datagram in self.dtls.datagrams_to_send():
            self._send_webrtc(datagram, addr)
        state = self.dtls.state
        if state is DtlsState.CONNECTED and self.dtls.keys is not None:
            self.srtp = SrtpPair(self.dtls.keys)
            self.srtp_profile = self.srtp.profile_name
            self.dtls.keys = None
            self.handshakes += 1
        elif state is DtlsState.FAILED and self.dtls.failure != self.dtls_failure:
            self.dtls_failures += 1
            self.dtls_failure = self.dtls.failure

    def _dtls_start(self, now: float) -> None:
        assert self.dtls is not None and self.ice.selected is not None
        self.dtls.start(now)
        self._dtls_flush(self.ice.selected)

    def webrtc_received(self, data: bytes, addr: Addr, now: float) -> None:
        """One datagram on the WebRTC port: RFC 7983 demux, then STUN, DTLS or SRTP(C)."""
        kind = CLASSIFY[data[0]] if data else 0
        if kind == KIND_RTP:
            w = self.w
            srtp = self.srtp
            if len(data) < RTP_HEADER_SIZE:
                w.drop_malformed += 1
                return
            if srtp is None:
                w.drop_not_ready += 1
                return
            if 192 <= data[1] <= 223:
                self._webrtc_rtcp(data, srtp, now)
                return
            try:
                plain = srtp.unprotect(data)
            except (pylibsrtp.Error, ValueError):
                w.srtp_auth_failures += 1
                return
            w.rx_packets += 1
            w.rx_bytes += len(plain)
            self._w_rtp_stats(plain, now)
            receiver = self.dtmf_to_info
            if receiver is not None and plain[1] & 0x7F == receiver.payload_type:
                receiver.receive(plain)
                return
            if not self.forward_to_rtp:
                w.drop_direction += 1
                return
            r = self.r
            dest = self.rtp_latched or self.rtp_remote
            if dest is None:
                r.drop_no_destination += 1
                return
            if self.transcoder_to_rtp is not None:
                self._transcode(
                    plain,
                    self.transcoder_to_rtp,
                    self.to_rtp,
                    r,
                    self.rtcp_r.sender,
                    dest,
                    None,
                    now,
                )
            else:
                buf = bytearray(plain)
                if not self.to_rtp.rewrite(buf):
                    w.drop_payload_type += 1
                    return
                self._send_rtp(buf, dest)
                r.tx_packets += 1
                r.tx_bytes += len(buf)
            if self.dtmf_to_rtp is not None:
                self._send_dtmf(now)
        elif kind == KIND_STUN:
            response = self.ice.receive(data, addr, now)
            if response is not None:
                self._send_webrtc(response, addr)
            dtls = self.dtls
            if (
                dtls is not None
                and not dtls.is_server
                and dtls.state is DtlsState.NEW
                and self.ice.selected is not None
            ):
                self._dtls_start(now)
        elif kind == KIND_DTLS:
            if self.dtls is None:
                self.w.drop_not_ready += 1
            elif not self.ice.is_checked(addr):
                # RFC 8445 §12.1: no data before a successful check from that address.
                self.w.drop_unchecked += 1
            else:
                self.dtls.receive_datagram(data, now)
                self._dtls_flush(addr)
        else:
            self.w.drop_garbage += 1

    def _webrtc_rtcp(self, data: bytes, srtp: SrtpPair, now: float) -> None:
        w = self.w
        try:
            plain = srtp.unprotect_rtcp(data)
        except (pylibsrtp.Error, ValueError):
            w.srtp_auth_failures += 1
            return
        packets = self._read_rtcp(plain, self.rtcp_w, self.to_webrtc.out_ssrc, now)
        if self.rtcp_terminated:
            # Terminated: the browser's reports are about streams the switch never saw.
            if packets is None:
                w.drop_malformed += 1
            else:
                w.rx_rtcp += 1
            return
        buf = bytearray(plain)
        if not map_rtcp(buf, self.to_rtp, self.to_webrtc):
            w.drop_malformed += 1
            return
        w.rx_rtcp += 1
        if self._rtcp_to_switch(buf):
            _note_forwarded_srs(packets, self.rtcp_r, now)

    def _read_rtcp(
        self, plain: bytes, leg: LegRtcp, local_ssrc: int, now: float
    ) -> list[RtcpPacket] | None:
        """Parse a peer's RTCP into ``leg``'s statistics; None (counted) if malformed."""
        try:
            packets = parse_rtcp(plain)
        except RtcpError:
            leg.parse_errors += 1
            return None
        leg.receive(packets, local_ssrc, now)
        return packets

    def _rtcp_to_switch(self, buf: bytes | bytearray) -> bool:
        """Send RTCP to the switch: the RTP socket and destination under rtcp-mux
        (RFC 5761 §4), else the RTCP socket to the latched or SDP RTCP address."""
        if self.rtcp_mux:
            dest = self.rtp_latched or self.rtp_remote
            send = self._send_rtp
        else:
            dest = self.rtcp_latched or self.rtcp_remote
            send = self._send_rtcp
        if dest is None:
            self.r.drop_no_destination += 1
            return False
        send(buf, dest)
        self.r.tx_rtcp += 1
        return True

    def _transcode(
        self,
        packet: bytes,
        transcoder: Transcoder,
        rewriter: StreamRewriter,
        out: LegCounters,
        sender: SenderStats,
        dest: Addr,
        srtp: SrtpPair | None,
        now: float,
    ) -> None:
        for produced in transcoder.transcode(packet, now):
            buf = bytearray(produced)
            if len(buf) < RTP_HEADER_SIZE or not rewriter.rewrite(buf):
                out.drop_payload_type += 1
                continue
            sender.on_sent(buf, now)
            if srtp is None:
                self._send_rtp(buf, dest)
                out.tx_bytes += len(buf)
            else:
                protected = srtp.protect(bytes(buf))
                self._send_webrtc(protected, dest)
                out.tx_bytes += len(protected)
            out.tx_packets += 1

    # ------------------------------------------------------------------ RTP leg

    def rtp_received(self, data: bytes, addr: Addr, now: float) -> None:
        """One datagram on the RTP port (RTCP too if the far end muxes it)."""
        r = self.r
        if len(data) < RTP_HEADER_SIZE or data[0] & 0xC0 != 0x80:
            r.drop_malformed += 1
            return
        if 192 <= data[1] <= 223:
            self.rtcp_received(data, addr, now)
            return
        if addr != self.rtp_latched:
            if self.rtp_latched is not None and now - self.rtp_last_rx <= RELATCH_SILENCE:
                r.drop_source += 1
                return
            if self.rtp_latched is not None:
                self.relatches += 1
            self.rtp_latched = addr
        self.rtp_last_rx = now
        r.rx_packets += 1
        r.rx_bytes += len(data)
        self._r_rtp_stats(data, now)
        if not self.forward_to_webrtc:
            r.drop_direction += 1
            return
        w = self.w
        srtp = self.srtp
        dest = self.ice.selected
        if srtp is None or dest is None:
            w.drop_not_ready += 1
            return
        if self.transcoder_to_webrtc is not None:
            self._transcode(
                data,
                self.transcoder_to_webrtc,
                self.to_webrtc,
                w,
                self.rtcp_w.sender,
                dest,
                srtp,
                now,
            )
            return
        buf = bytearray(data)
        if not self.to_webrtc.rewrite(buf):
            r.drop_payload_type += 1
            return
        try:
            protected = srtp.protect(bytes(buf))
        except (pylibsrtp.Error, ValueError):
            w.drop_malformed += 1
            return
        self._send_webrtc(protected, dest)
        w.tx_packets += 1
        w.tx_bytes += len(protected)

    def rtcp_received(self, data: bytes, addr: Addr, now: float) -> None:
        """One datagram on the RTCP port (port + 1), or RTCP muxed on the RTP port.

        Passthrough: map SSRCs, protect, send to the browser. Terminated (transcoding):
        read for statistics only.
        """
        r = self.r
        if len(data) < MIN_RTCP_SIZE or data[0] & 0xC0 != 0x80:
            r.drop_malformed += 1
            return
        latched = self.rtp_latched
        if latched is not None and addr[0] != latched[0]:
            r.drop_source += 1
            return
        packets = self._read_rtcp(data, self.rtcp_r, self.to_rtp.out_ssrc, now)
        if self.rtcp_terminated:
            if packets is None:
                r.drop_malformed += 1
                return
            self.rtcp_latched = addr
            r.rx_rtcp += 1
            return
        buf = bytearray(data)
        if not map_rtcp(buf, self.to_webrtc, self.to_rtp):
            r.drop_malformed += 1
            return
        self.rtcp_latched = addr
        r.rx_rtcp += 1
        srtp = self.srtp
        dest = self.ice.selected
        if srtp is None or dest is None:
            self.w.drop_not_ready += 1
            return
        try:
            protected = srtp.protect_rtcp(bytes(buf))
        except (pylibsrtp.Error, ValueError):
            self.w.drop_malformed += 1
            return
        self._send_webrtc(protected, dest)
        self.w.tx_rtcp += 1
        _note_forwarded_srs(packets, self.rtcp_w, now)

    # ------------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        """Next DTLS retransmission deadline, if any."""
        return None if self.dtls is None else self.dtls.get_timer()

    def tick(self, now: float, wallclock: float | None = None) -> str:
        """Run DTLS timers, our RTCP reports when terminating RTCP, and the media timeout.

        ``wallclock`` is the UNIX time at ``now``, for the NTP timestamps of our SRs; the
        last one given is kept (without any, NTP timestamps count from ``now``'s epoch).

        Returns:
            The leg name (``"webrtc"`` or ``"rtp"``) the first time that leg's peer, meant to
            be sending, has sent no RTP for ``timeout`` seconds; ``""`` otherwise.
        """
        dtls = self.dtls
        if dtls is not None and dtls.get_timer() is not None:
            dtls.handle_timer(now)
            dest = self.ice.selected
            if dest is not None:
                self._dtls_flush(dest)
        if wallclock is not None:
            self.wallclock_offset = wallclock - now
        if self.rtcp_terminated:
            self._send_reports(now)
        if self.dtmf_to_rtp is not None:
            self._send_dtmf(now)
        if self.timed_out:
            return ""
        for leg, counters in ((LEG_WEBRTC, self.w), (LEG_RTP, self.r)):
            if self.direction[leg] not in _PEER_SENDS:
                continue
            if counters.rx_packets != self._seen[leg]:
                self._seen[leg] = counters.rx_packets
                self._since[leg] = now
            elif now - self._since[leg] >= self.timeout:
                self.timed_out = leg
                return leg
        return ""

    def play_dtmf(self, code: int, duration_ms: int, payload_type: int, now: float) -> None:
        """Queue one RFC 4733 event toward the switch (``payload_type``: its te/8000).

        The packets go out in the switch leg's stream (its SSRC and sequence space), one
        per 20 ms, interleaved with the audio; the first leaves at once if nothing plays.

        Raises:
            ValueError: not a DTMF event, a bad payload type or too many digits queued.
        """
        sender = self.dtmf_to_rtp
        if sender is None or sender.payload_type != payload_type:
            if sender is not None and sender.busy:
                raise ValueError("telephone-event payload type changed while digits play")
            sender = self.dtmf_to_rtp = DtmfSender(clock=8000, payload_type=payload_type)
        sender.queue(code, duration_ms)
        self._send_dtmf(now)

    def _send_dtmf(self, now: float) -> None:
        """Send the gateway's own telephone-event packets now due toward the switch."""
        sender = self.dtmf_to_rtp
        if sender is None or not sender.busy:
            return
        dest = self.rtp_latched or self.rtp_remote
        if dest is None or not self.forward_to_rtp:
            # Held or nowhere to send: the digits wait (bounded by the sender's queue).
            return
        r = self.r
        for packet in sender.poll(now, self.to_rtp):
            self._send_rtp(packet, dest)
            r.tx_packets += 1
            r.tx_bytes += len(packet)

    def _send_reports(self, now: float) -> None:
        """Our SR/RR + SDES on each leg whose report is due (RFC 3550 §6.1-6.4)."""
        wallclock = now + self.wallclock_offset
        leg = self.rtcp_w
        srtp = self.srtp
        dest = self.ice.selected
        # Not before SRTP is up: the report stays due until it is.
        if srtp is not None and dest is not None and leg.due(now):
            report = leg.make_report(
                ssrc=self.to_webrtc.out_ssrc, cname=self.cname, now=now, wallclock=wallclock
            )
            try:
                protected = srtp.protect_rtcp(report)
            except (pylibsrtp.Error, ValueError):
                self.w.drop_malformed += 1
            else:
                self._send_webrtc(protected, dest)
                self.w.tx_rtcp += 1
        leg = self.rtcp_r
        if leg.due(now):
            report = leg.make_report(
                ssrc=self.to_rtp.out_ssrc, cname=self.cname, now=now, wallclock=wallclock
            )
            self._rtcp_to_switch(report)

    def close(self) -> None:
        """Send DTLS close_notify to the browser; idempotent."""
        if self.dtls is not None:
            self.dtls.close()
            if self.ice.selected is not None:
                for datagram in self.dtls.datagrams_to_send():
                    self._send_webrtc(datagram, self.ice.selected)

    def stats(self) -> dict[str, object]:
        """Counters and state of both legs, for the CDR and metrics."""
        ice = self.ice
        return {
            "webrtc": {
                **self.w.as_dict(),
                "drops": self.w.drops(),
                "dtls_state": self.dtls_state,
                "dtls_setup": self.dtls_setup,
                "dtls_handshakes": self.handshakes,
                "dtls_failures": self.dtls_failures,
                "dtls_failure": self.dtls_failure,
                "srtp_profile": self.srtp_profile,
                "ice_selected": ice.selected,
                "stun_requests": ice.requests,
                "stun_auth_failures": ice.auth_failures,
                "stun_malformed": ice.malformed,
                "stun_role_conflicts": ice.role_conflicts,
                "direction": self.direction[LEG_WEBRTC],
                "rtcp": self.rtcp_w.stats(),
            },
            "rtp": {
                **self.r.as_dict(),
                "drops": self.r.drops(),
                "remote": self.rtp_remote,
                "latched": self.rtp_latched,
                "rtcp_latched": self.rtcp_latched,
                "relatches": self.relatches,
                "ssrc_changes_in": self.to_webrtc.ssrc_changes,
                "direction": self.direction[LEG_RTP],
                "rtcp_mux": self.rtcp_mux,
                "rtcp": self.rtcp_r.stats(),
            },
            "rtcp_terminated": self.rtcp_terminated,
            "timed_out": self.timed_out,
        }


def _note_forwarded_srs(packets: list[RtcpPacket] | None, leg: LegRtcp, now: float) -> None:
    """Remember the SRs forwarded onto ``leg`` so the peer's LSR/DLSR gives its RTT."""
    for packet in packets or ():
        if isinstance(packet, SenderReport):
            leg.sender_report_sent(packet.ntp_timestamp, now)
