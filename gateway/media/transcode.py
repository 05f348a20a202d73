"""RTP-to-RTP transcoding for one bridge direction (the bridge's ``Transcoder``). Sans-I/O.

One :class:`RtpTranscoder` turns the incoming leg's RTP packets into the outgoing leg's::

    RTP in --header checks--> decode (or conceal a gap) --PCM 8 kHz--> re-packetise
           --> encode --> RTP out (own SSRC, seq + 1 per packet, ts on the output clock)

All supported pairs have a narrowband side (G.711/G.729), so PCM is always 8 kHz: Opus is
decoded to and encoded from 8 kHz PCM and no resampler runs, while its RTP clock stays
48 000 (RFC 7587 §4.1). Output timestamps are the input timestamps mapped onto the output
clock (48 000 ↔ 8 000) and random base by :class:`gateway.media.codecs.dtmf.TimestampMap`, so
audio and RFC 4733 events keep their timing relation (RFC 4733 §2.1: one clock, one SSRC).

Loss (RFC 3550 §A.1 sequence arithmetic): a sequence jump whose timestamp gap is at most
:data:`MAX_CONCEAL_MS` is filled with concealment: Opus PLC, and for the last lost packet
the in-band FEC of the packet that follows (RFC 7587 §3.1, RFC 6716 §2.1.7); the G.711 and
G.729 decoders' ``conceal()`` otherwise. A timestamp jump with no sequence gap (DTX,
silence suppression) or a gap longer than that is a discontinuity: the output timestamp
jumps likewise and nothing is invented. Late or duplicate packets are dropped (no jitter
buffer, DESIGN "Media").

Telephone events (RFC 4733): relayed one for one with the payload type mapped, the
timestamp mapped and the duration rescaled (end-of-event retransmissions are separate
packets and stay so). Only the first packet of an event keeps a marker bit (§2.5.1.1: a
receiver may take each marker for a new digit). With ``dtmf_min_duration_ms`` (set toward
the switch) a shorter event is reported at that duration: Firefox, offering only
telephone-event/8000 beside Opus, ends each digit after a sixth of the length asked (it
compares a length in 8000-clock units with elapsed Opus timestamps), so a 100 ms digit
arrives as one 20 ms report, under what DTMF detectors accept. Comfort noise (RFC 3389, payload type 13) and any other payload type
are dropped and counted, as are malformed packets and payloads the decoder refuses:
:meth:`RtpTranscoder.transcode` never raises on input.

Hot path: the packet is read with ``struct.unpack_from``; the per-packet objects are the
decoded PCM ``bytes``, the payload ``bytes`` from the encoder and the output packet.
"""

from __future__ import annotations

import secrets
import struct
from typing import Any

from gateway.media.codecs import get_decoder, get_encoder
from gateway.media.codecs.base import BYTES_PER_SAMPLE, CodecError, Decoder, Encoder
from gateway.media.codecs.dtmf import DtmfError, TimestampMap, rescale_event
from gateway.media.codecs.opus import DTX_MAX_BYTES, OpusDecoder

__all__ = [
    "RtpTranscoder",
    "make_transcoder",
    "pairs",
    "PCM_RATE",
    "MAX_CONCEAL_MS",
    "MAX_DROPOUT",
    "MAX_MISORDER",
    "PT_CN",
    "CLOCK_RATES",
]

PCM_RATE = 8000
"""Rate of the PCM between decoder and encoder: every supported pair has a narrowband side."""
MAX_CONCEAL_MS = 120
"""Longest gap filled with concealment; longer gaps are treated as a discontinuity (libopus
PLC and bcg729 erasure both take at most 120 ms per call)."""
MAX_DROPOUT = 3000
"""Sequence jump beyond which the sender is taken to have restarted (RFC 3550 §A.1)."""
MAX_MISORDER = 100
"""A sequence number at most this far behind the last one is late or duplicate: dropped.
Further behind, the sender is taken to have restarted (RFC 3550 §A.1)."""
PT_CN = 13
"""Static payload type of comfort noise, CN/8000 (RFC 3551 §6, RFC 3389)."""
CLOCK_RATES = {"PCMU": 8000, "PCMA": 8000, "G729": 8000, "opus": 48000}
"""RTP clock of each codec (RFC 3551 §6, RFC 7587 §4.1)."""

_NARROWBAND = ("PCMU", "PCMA", "G729")
_CANONICAL = {"PCMU": "PCMU", "PCMA": "PCMA", "G729": "G729", "OPUS": "opus"}
_PAIRS: tuple[tuple[str, str], ...] = (
    ("opus", "PCMU"),
    ("PCMU", "opus"),
    ("opus", "PCMA"),
    ("PCMA", "opus"),
    ("opus", "G729"),
    ("G729", "opus"),
    ("PCMU", "PCMA"),
    ("PCMA", "PCMU"),
    ("PCMU", "G729"),
    ("G729", "PCMU"),
    ("PCMA", "G729"),
    ("G729", "PCMA"),
)
_CONCEAL_STEP = {"opus": PCM_RATE // 400, "G729": 80, "PCMU": 1, "PCMA": 1}
"""Concealment lengths must be multiples of this many samples (Opus: 2.5 ms; G.729: one
10 ms frame)."""
_RTP_HEADER = struct.Struct("!BBHII")
_SEQ_TS_SSRC = struct.Struct("!HII")
_U16 = struct.Struct("!H")
_HEADER_SIZE = 12
_V2 = 0x80
_U32 = 0xFFFFFFFF


def pairs() -> tuple[tuple[str, str], ...]:
    """Supported ``(in_codec, out_codec)`` pairs, canonical SDP names."""
    return _PAIRS


def _canonical(name: str) -> str:
    try:
        return _CANONICAL[name.upper()]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; known: {', '.join(CLOCK_RATES)}") from None


class RtpTranscoder:
    """Decode, conceal, re-packetise and encode one direction's RTP (see module docstring).

    Counters (plain ints, read by the adapter for metrics): ``packets_in``, ``packets_out``,
    ``dtmf_relayed``, ``concealed_packets``, ``concealed_samples``, ``fec_attempts``,
    ``discontinuities``, ``drop_malformed``, ``drop_payload_type``, ``drop_cn``,
    ``drop_late``, ``drop_decode``, ``dtx_frames``.
    """

    def __init__(
        self,
        *,
        in_codec: str,
        in_pt: int,
        in_clock: int,
        out_codec: str,
        out_pt: int,
        out_clock: int,
        in_ptime_ms: int = 20,
        out_ptime_ms: int = 20,
        dtmf_in_pt: int | None = None,
        dtmf_out_pt: int | None = None,
        dtmf_min_duration_ms: int = 0,
        cn_in_pt: int | None = PT_CN,
        opus_complexity: int = 5,
        opus_fec: bool = True,
        opus_bitrate: int | None = None,
        opus_packet_loss_perc: int = 10,
        opus_dtx: bool = False,
        opus_cbr: bool = False,
        opus_max_bandwidth: str | None = None,
        ssrc: int | None = None,
        initial_seq: int | None = None,
        initial_ts: int | None = None,
    ) -> None:
        """Build the decoder and encoder for the pair.

        ``in_clock``/``out_clock`` are the RTP clocks negotiated in SDP (48000 for Opus,
        8000 otherwise); ``dtmf_*_pt`` the ``telephone-event`` payload types on each leg
        (events are dropped unless both are set), ``dtmf_min_duration_ms`` the shortest
        event duration reported on the output (0: as received); ``cn_in_pt`` the comfort-noise payload
        type counted under ``drop_cn``. The ``opus_*`` options set the Opus encoder when
        the output is Opus (:func:`gateway.media.codecs.opus.encoder_options_from_fmtp`
        derives them from the browser's fmtp); with ``opus_dtx`` the frames libopus marks as
        silence are not sent (counted in ``dtx_frames``) and the next packet sent carries
        the marker bit (RFC 3551 §4.1: start of a talkspurt). ``ssrc``, ``initial_seq`` and ``initial_ts`` default
        to random values (RFC 3550 §5.1).

        Raises:
            ValueError: unsupported pair, a clock that is not the codec's, or a payload type
                outside 0-127.
            CodecError: a ptime the codec cannot packetise (Opus: 10/20/40/60 ms; G.729:
                multiples of 10 ms); CodecUnavailable when libopus/bcg729 is missing.
        """
        in_codec, out_codec = _canonical(in_codec), _canonical(out_codec)
        if (in_codec, out_codec) not in _PAIRS:
            raise ValueError(f"transcoding {in_codec} -> {out_codec} is not supported")
        for codec, clock in ((in_codec, in_clock), (out_codec, out_clock)):
            if clock != CLOCK_RATES[codec]:
                raise ValueError(f"{codec} RTP clock is {CLOCK_RATES[codec]}, not {clock}")
        for pt in (in_pt, out_pt, dtmf_in_pt, dtmf_out_pt, cn_in_pt):
            if pt is not None and not 0 <= pt <= 127:
                raise ValueError(f"payload type {pt} outside 0-127")
        if in_ptime_ms <= 0 or out_ptime_ms <= 0:
            raise ValueError("ptime must be positive")
        self.in_codec = in_codec
        self.out_codec = out_codec
        self.in_pt = in_pt
        self.out_pt = out_pt
        self.in_clock = in_clock
        self.out_clock = out_clock
        self.dtmf_in_pt = dtmf_in_pt if dtmf_out_pt is not None else None
        self.dtmf_out_pt = dtmf_out_pt
        self._dtmf_out_pt = 0 if dtmf_out_pt is None else dtmf_out_pt
        if not 0 <= dtmf_min_duration_ms <= 1000:
            raise ValueError(f"dtmf_min_duration_ms {dtmf_min_duration_ms} outside 0-1000")
        self._dtmf_min = out_clock * dtmf_min_duration_ms // 1000
        self._event_ts = -1  # input timestamp of the last event relayed (marker once)
        self.cn_in_pt = cn_in_pt
        self.ssrc = (secrets.randbits(32) if ssrc is None else ssrc) & _U32
        dec_opts: dict[str, Any] = {"frame_ms": in_ptime_ms}
        enc_opts: dict[str, Any] = {"frame_ms": out_ptime_ms}
        if in_codec == "opus":
            dec_opts["pcm_rate"] = PCM_RATE
            # libopus decodes any duration; frame_ms only names the expected one.
            dec_opts["frame_ms"] = in_ptime_ms if in_ptime_ms in (10, 20, 40, 60) else 20
        elif in_codec == "G729" and in_ptime_ms % 10:
            raise CodecError(f"G.729 ptime {in_ptime_ms} is not a multiple of 10 ms")
        if out_codec == "opus":
            enc_opts.update(
                pcm_rate=PCM_RATE,
                complexity=opus_complexity,
                fec=opus_fec,
                bitrate=opus_bitrate,
                packet_loss_perc=opus_packet_loss_perc,
                dtx=opus_dtx,
                cbr=opus_cbr,
                max_bandwidth=opus_max_bandwidth,
            )
        self.decoder: Decoder = get_decoder(in_codec, **dec_opts)
        self.encoder: Encoder = get_encoder(out_codec, **enc_opts)
        self._decode = self.decoder.decode
        self._encode = self.encoder.encode
        self._opus_decoder = self.decoder if isinstance(self.decoder, OpusDecoder) else None
        self._conceal_step = _CONCEAL_STEP[in_codec]
        # Input clock ticks per PCM sample and output ticks per PCM sample (integers: 6 or 1).
        self._in_tps = in_clock // PCM_RATE
        self._out_tps = out_clock // PCM_RATE
        self._max_conceal = PCM_RATE * MAX_CONCEAL_MS // 1000
        out_samples = PCM_RATE * out_ptime_ms // 1000
        self._frame_bytes = out_samples * BYTES_PER_SAMPLE
        self._frame_ticks = out_samples * self._out_tps
        self._silence = bytes(self._frame_bytes)
        self._dtx = out_codec == "opus" and opus_dtx
        # Output stream state.
        self._seq = (secrets.randbits(16) if initial_seq is None else initial_seq) & 0xFFFF
        self._out_ts = (secrets.randbits(32) if initial_ts is None else initial_ts) & _U32
        self._pending = b""
        self._marker = False
        # Input stream state (set by the first packet).
        self._in_ssrc = -1
        self._last_seq = 0
        self._expected_ts = 0
        self._map = TimestampMap(in_clock, out_clock, 0, self._out_ts)
        # Counters.
        self.packets_in = 0
        self.packets_out = 0
        self.dtmf_relayed = 0
        self.concealed_packets = 0
        self.concealed_samples = 0
        self.fec_attempts = 0
        self.discontinuities = 0
        self.drop_malformed = 0
        self.drop_payload_type = 0
        self.drop_cn = 0
        self.drop_late = 0
        self.drop_decode = 0
        self.dtx_frames = 0

    # ------------------------------------------------------------------ the Protocol

    def transcode(self, packet: bytes, now: float) -> list[bytes]:
        """RTP packets for the outgoing leg produced by one incoming RTP ``packet``.

        Empty while a re-packetisation buffer fills, and for dropped packets (counted).
        ``now`` is unused: output timing follows the input timestamps.
        """
        self.packets_in += 1
        n = len(packet)
        if n < _HEADER_SIZE or packet[0] & 0xC0 != _V2:
            self.drop_malformed += 1
            return []
        # Payload start after CSRCs and header extension (RFC 3550 §5.1, §5.3.1).
        b0 = packet[0]
        start = _HEADER_SIZE + 4 * (b0 & 0x0F)
        if b0 & 0x10:
            if n < start + 4:
                self.drop_malformed += 1
                return []
            start += 4 + 4 * _U16.unpack_from(packet, start + 2)[0]
        end = n
        if b0 & 0x20:
            # Padding: the last octet counts the padding octets, itself included (§5.1).
            end -= packet[n - 1]
        if end <= start or packet[n - 1] == 0 and b0 & 0x20:
            self.drop_malformed += 1
            return []
        b1 = packet[1]
        pt = b1 & 0x7F
        seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(packet, 2)
        if pt == self.in_pt:
            return self._audio(packet[start:end], b1 & 0x80, seq, ts, ssrc)
        if pt == self.dtmf_in_pt:
            return self._event(packet[start:end], seq, ts, ssrc)
        if pt == self.cn_in_pt:
            self.drop_cn += 1
        else:
            self.drop_payload_type += 1
        return []

    # ------------------------------------------------------------------ sequence tracking

    def _track(self, seq: int, ts: int, ssrc: int, out: list[bytes]) -> int:
        """Place a packet in the input stream: -1 to drop it (late), else packets lost before it.

        A new SSRC (the far end re-anchored, PITFALLS 9) flushes the partial frame and maps
        the new stream's timestamps onto the output where it stands.
        """
        if ssrc != self._in_ssrc:
            if self._in_ssrc != -1:
                self.discontinuities += 1
                self._flush_partial(out)
            self._in_ssrc = ssrc
            self._map = TimestampMap(self.in_clock, self.out_clock, ts, self._out_ts)
            self._last_seq = (seq - 1) & 0xFFFF
            self._expected_ts = ts
            return 0
        d = (seq - self._last_seq) & 0xFFFF
        if d >= 0x8000:
            d -= 0x10000
        if d <= 0:
            if d >= -MAX_MISORDER:
                self.drop_late += 1
                return -1
            return 0  # far behind: the sender restarted its sequence (RFC 3550 §A.1)
        if d > MAX_DROPOUT:
            return 0  # a jump, not a loss (RFC 3550 §A.1): handled as a discontinuity
        return d - 1

    def _flush_partial(self, out: list[bytes]) -> None:
        """Emit the pending partial frame, padded with silence, before a discontinuity."""
        pending = self._pending
        if pending:
            self._pending = b""
            self._emit(pending + self._silence[len(pending) :], out)

    # ------------------------------------------------------------------ audio

    def _audio(self, payload: bytes, marker: int, seq: int, ts: int, ssrc: int) -> list[bytes]:
        out: list[bytes] = []
        lost = self._track(seq, ts, ssrc, out)
        if lost < 0:
            return out
        mapped = self._map.map(ts)
        pcm = b""
        gap = ((ts - self._expected_ts + 0x80000000) & _U32) - 0x80000000
        if gap:
            samples = gap // self._in_tps
            if lost and 0 < samples <= self._max_conceal:
                pcm = self._conceal(payload, samples, lost)
            else:
                # DTX/silence suppression, a long outage or a jump: the output timestamp
                # jumps with the input's and nothing is invented (RFC 3550 §5.1).
                self.discontinuities += 1
                self._flush_partial(out)
                self._out_ts = mapped
        try:
            decoded = self._decode(payload)
        except CodecError:
            # Keep the stream position: the next packet sees this one as lost and conceals it.
            self.drop_decode += 1
            self._last_seq = (seq - 1) & 0xFFFF
            self._expected_ts = ts
            if pcm:
                self._flush_frames(pcm, out)
            return out
        self._last_seq = seq
        self._expected_ts = (ts + len(decoded) // BYTES_PER_SAMPLE * self._in_tps) & _U32
        if marker:
            self._marker = True
        self._flush_frames(pcm + decoded if pcm else decoded, out)
        return out

    def _conceal(self, payload: bytes, samples: int, lost: int) -> bytes:
        """PCM for ``samples`` lost samples (``lost`` packets) before ``payload``."""
        self.concealed_packets += lost
        self.concealed_samples += samples
        step = self._conceal_step
        usable = samples - samples % step
        parts: list[bytes] = []
        try:
            opus = self._opus_decoder
            if opus is not None and usable:
                # The packet after a loss carries the lost one's FEC (RFC 7587 §3.1): PLC
                # for the earlier lost packets, FEC for the last one.
                fec = min(opus.packet_samples(payload), usable)
                fec -= fec % step
                if usable - fec:
                    parts.append(opus.conceal(usable - fec))
                if fec:
                    self.fec_attempts += 1
                    parts.append(opus.decode_fec(payload, fec))
            elif usable:
                parts.append(self.decoder.conceal(usable))
        except CodecError:
            # A corrupt next packet: plain silence for the gap (decode will drop it too).
            parts = [bytes(usable * BYTES_PER_SAMPLE)]
        pcm = b"".join(parts)
        short = samples * BYTES_PER_SAMPLE - len(pcm)
        return pcm + bytes(short) if short > 0 else pcm[: samples * BYTES_PER_SAMPLE]

    def _flush_frames(self, pcm: bytes, out: list[bytes]) -> None:
        """Encode every whole output frame of pending + ``pcm``; keep the rest pending."""
        if self._pending:
            pcm = self._pending + pcm
        fb = self._frame_bytes
        n = len(pcm)
        if n == fb:  # the common case: same ptime both sides, nothing pending
            self._pending = b""
            self._emit(pcm, out)
            return
        pos = 0
        while n - pos >= fb:
            self._emit(pcm[pos : pos + fb], out)
            pos += fb
        self._pending = pcm[pos:]

    def _emit(self, frame: bytes, out: list[bytes]) -> None:
        payload = self._encode(frame)
        seq = self._seq
        ts = self._out_ts
        self._out_ts = (ts + self._frame_ticks) & _U32
        if self._dtx and len(payload) <= DTX_MAX_BYTES:
            # A DTX frame: not sent; the timestamp moves on and the next packet sent opens
            # a talkspurt (RFC 3551 §4.1 marker).
            self.dtx_frames += 1
            self._marker = True
            return
        # Never empty: G.729 runs without Annex B VAD here, and Opus always yields a TOC.
        b1 = self.out_pt | 0x80 if self._marker else self.out_pt
        self._marker = False
        out.append(_RTP_HEADER.pack(_V2, b1, seq, ts, self.ssrc) + payload)
        self._seq = (seq + 1) & 0xFFFF
        self.packets_out += 1

    # ------------------------------------------------------------------ RFC 4733 events

    def _event(self, payload: bytes, seq: int, ts: int, ssrc: int) -> list[bytes]:
        out: list[bytes] = []
        if self._track(seq, ts, ssrc, out) < 0:
            return out
        self._last_seq = seq
        try:
            # RFC 4733 §2.1, §2.3.5: timestamp and duration are in the audio stream's clock;
            # map the event start and rescale the duration to the output clock.
            out_ts, body = rescale_event(
                ts, payload, self.in_clock, self.out_clock, self._map.map(ts)
            )
        except DtmfError:
            self.drop_malformed += 1
            return out
        if self._dtmf_min and body[2] << 8 | body[3] < self._dtmf_min:
            body = body[:2] + self._dtmf_min.to_bytes(2, "big")
        # One marker per event (its input start timestamp, whatever the segments out):
        # Firefox marks all three end packets of a one-packet digit.
        marker = ts != self._event_ts
        self._event_ts = ts
        seq_out = self._seq
        self._seq = (seq_out + 1) & 0xFFFF
        self.packets_out += 1
        self.dtmf_relayed += 1
        b1 = self._dtmf_out_pt | 0x80 if marker else self._dtmf_out_pt
        out.append(_RTP_HEADER.pack(_V2, b1, seq_out, out_ts, self.ssrc) + body)
        return out

    # ------------------------------------------------------------------ reporting

    def stats(self) -> dict[str, int]:
        """Counters as a dict (drops under ``drop_*`` keys)."""
        return {
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
            "dtmf_relayed": self.dtmf_relayed,
            "concealed_packets": self.concealed_packets,
            "concealed_samples": self.concealed_samples,
            "fec_attempts": self.fec_attempts,
            "discontinuities": self.discontinuities,
            "drop_malformed": self.drop_malformed,
            "drop_payload_type": self.drop_payload_type,
            "drop_cn": self.drop_cn,
            "drop_late": self.drop_late,
            "drop_decode": self.drop_decode,
            "dtx_frames": self.dtx_frames,
        }


def make_transcoder(
    in_name: str,
    out_name: str,
    *,
    in_pt: int,
    out_pt: int,
    in_ptime_ms: int = 20,
    out_ptime_ms: int = 20,
    dtmf_in_pt: int | None = None,
    dtmf_out_pt: int | None = None,
    **options: Any,
) -> RtpTranscoder:
    """An :class:`RtpTranscoder` for SDP encoding names ``in_name`` → ``out_name``.

    Clocks come from the codecs (:data:`CLOCK_RATES`); ``options`` go to the constructor
    (``opus_complexity``, ``opus_fec``, ``opus_bitrate``, ``ssrc``...).

    Raises:
        ValueError: the pair is not in :func:`pairs` (Opus ↔ Opus and same-codec pairs are
            passthrough, not transcoding).
    """
    a, b = _canonical(in_name), _canonical(out_name)
    return RtpTranscoder(
        in_codec=a,
        in_pt=in_pt,
        in_clock=CLOCK_RATES[a],
        out_codec=b,
        out_pt=out_pt,
        out_clock=CLOCK_RATES[b],
        in_ptime_ms=in_ptime_ms,
        out_ptime_ms=out_ptime_ms,
        dtmf_in_pt=dtmf_in_pt,
        dtmf_out_pt=dtmf_out_pt,
        **options,
    )
