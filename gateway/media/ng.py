"""rtpengine NG control protocol, sans-I/O: bencode, datagram framing and the command logic.

The signalling side drives the media layer with a documented subset of Sipwise rtpengine's
*ng* protocol (rtpengine ``docs/ng_control_protocol.md``), so a Kamailio or OpenSIPS
``rtpengine`` module can be pointed at the gateway's media workers unchanged.

Wire format: one UDP datagram per message, ``<cookie> <bencoded dictionary>``. The cookie
(printable, no space) matches a response to its request and detects retransmissions; the
response carries the request's cookie. Only bencode is spoken (rtpengine also takes JSON).

Commands (:class:`NgCommands`):

``ping``
    ``{"result": "pong"}``.
``offer`` (``sdp``, ``call-id``, ``from-tag``)
    Which side is WebRTC is decided as rtpengine decides it: by the offer's own profile and
    the requested ``transport-protocol``. A DTLS-SRTP offer (``UDP/TLS/RTP/SAVPF``) with
    ``transport-protocol`` ``RTP/AVP`` or ``RTP/AVPF`` comes from a browser and is rewritten
    to the lean plain SDP for the switch; a plain ``RTP/AVP`` offer with
    ``transport-protocol`` ``UDP/TLS/RTP/SAVPF`` (or ``RTP/SAVPF``; add ``ICE=force``) comes
    from the switch and is rewritten to a WebRTC offer (ICE-lite, DTLS ``actpass``, or
    ``passive`` with ``DTLS=passive``). A re-offer on a known call (re-INVITE, hold) updates
    the session (direction, new remote address) and keeps the DTLS association.
``answer`` (``sdp``, ``call-id``, ``from-tag``, ``to-tag``)
    Rewritten for the offerer (the profile the offer came in); completes the session.
``delete`` (``call-id`` [, ``from-tag``])
    Ends the call; the reply carries the ``query`` statistics. An unknown call is a warning,
    an error with ``flags: ["fatal"]``.
``query`` (``call-id``)
    ``created``, ``last signal``, ``tags`` (one per participant, rtpengine's layout),
    ``totals``, and ``legs``: the gateway's own per-leg counters.
``list`` / ``statistics``
    Call-ids (``limit``, default 32) / rtpengine-style ``statistics`` plus ``media``
    (sessions and ports in use).
``play DTMF`` (``call-id``, ``from-tag``, ``code`` [, ``duration`` ms])
    As rtpengine: the ``from-tag`` names the participant *generating* the digit. Here that
    must be the browser: the digit (``0``-``9``, ``*``, ``#``, ``A``-``D`` or 0-15) is sent
    as RFC 4733 telephone-events in the RTP toward the switch (the gateway's SIP INFO to
    RFC 4733 conversion). An error when the switch leg has no telephone-event/8000.
``DTMF events``
    Not rtpengine's: the reverse conversion. With the flag ``DTMF-INFO``, an ``answer`` from
    the switch without telephone-event keeps the browser's telephone-event in the browser's
    answer, and an ``offer`` from the switch without one offers the browser telephone-event
    anyway (kept out of the answer to the switch); either way the browser's events are read
    as digits (:class:`~gateway.media.dtmf_receive.DtmfReceiver`, answer reply key
    ``dtmf: info``) and this command collects them:
    ``events``, a list of ``{call-id, from-tag (the browser's), code, duration (ms)}``.

Keys are matched case-insensitively with ``-``, ``_`` and space equivalent
(``transport-protocol`` = ``transport protocol``). Supported offer keys: ``ICE``
(``default``, ``force``, ``optional``, ``remove``), ``DTLS`` (``passive``, ``active``,
``off``/``no``/``disable``), ``transport-protocol``, ``rtcp-mux`` (``offer``, ``require``,
``demux``, ``accept``, ``reject``), ``codec`` (``strip``, ``mask``, ``except``, ``offer``,
``transcode``; also as ``codec-strip-X`` flags), ``replace`` (``origin``,
``session-connection``: always done), ``direction`` (interface names: one interface,
accepted and ignored), ``supports`` (``load limit``). Unknown keys and flags are ignored, as
rtpengine ignores unknown flags. What the media layer cannot do is an error with a reason
(``DTLS=off`` toward a browser: no SDES; ``ICE=remove`` toward a browser; ``ICE=force-relay``;
``codec-transcode`` of a codec the offer lacks when no :class:`CodecPolicy` is set;
WebRTC to WebRTC or plain to plain).

Transcoding (with a :class:`CodecPolicy`, the config's ``[codecs]``): an offer is passed on
with the offerer's codecs (passthrough candidates; the browser's minus ``strip``) plus the
policy's codecs for the other side that the offerer lacks (``switch`` toward the switch,
``browser`` toward the browser). The answer decides per call: the answerer chose a codec
the offerer offered -> **passthrough** (payload types mapped); else -> **transcode**
between the offerer's first codec that pairs with it and the answerer's choice, one
:class:`~gateway.media.transcode.RtpTranscoder` per direction, telephone-event mapped
(RFC 4733 at the browser codec's clock, 8000 toward the switch), and the answer relayed
to the offerer names the offerer's codec. ``query`` reports ``mode`` and ``codec``.

Exceptions::

    NgError                   base class
    ├── BencodeError          malformed or over-limit bencode (reply with an error)
    └── NgDrop                datagram that cannot be answered (no usable cookie)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.media.codecs import CodecError
from gateway.media.codecs.opus import NARROWBAND_FEC_BITRATE, encoder_options_from_fmtp
from gateway.media.dtmf_receive import DtmfReceiver
from gateway.media.dtmf_send import DEFAULT_DURATION_MS, event_code
from gateway.media.ports import PortsExhausted
from gateway.media.rtcp import NTP_UNIX_OFFSET
from gateway.media.transcode import RtpTranscoder, make_transcoder, pairs
from gateway.sdp.errors import SdpError
from gateway.sdp.model import SessionDescription, parse
from gateway.sdp.policy import apply as apply_policy
from gateway.sdp.rewrite import (
    PLAIN_PROTOS,
    WEBRTC_PROTOS,
    Codec,
    MediaParams,
    first_audio,
    to_plain,
    to_webrtc,
)

__all__ = [
    "BValue",
    "BencodeError",
    "CodecPolicy",
    "NgBackend",
    "NgCommands",
    "NgDrop",
    "NgError",
    "NgRequest",
    "NgSession",
    "bdecode",
    "bencode",
    "encode_message",
    "error_reply",
    "parse_message",
    "MAX_MESSAGE_SIZE",
    "MAX_COOKIE_LENGTH",
    "MAX_DEPTH",
    "MAX_ITEMS",
    "MAX_INT_DIGITS",
    "MAX_CALLS",
    "LIST_LIMIT",
    "DTMF_MIN_TO_SWITCH_MS",
]

MAX_MESSAGE_SIZE = 65535
"""Largest NG datagram accepted or produced, in bytes (a UDP payload)."""
MAX_COOKIE_LENGTH = 64
"""Longest cookie accepted (Kamailio sends ~20 characters)."""
MAX_DEPTH = 16
"""Deepest nesting of lists/dictionaries in a bencoded document."""
MAX_ITEMS = 4096
"""Most values (strings, integers, containers) in one bencoded document."""
MAX_INT_DIGITS = 20
"""Longest integer literal, sign excluded (fits a signed 64-bit value)."""
MAX_CALLS = 100_000
"""Calls one :class:`NgCommands` holds before answering ``load limit`` / an error."""
LIST_LIMIT = 32
"""Default ``limit`` of the ``list`` command (rtpengine's)."""
DEFAULT_PTIME_MS = 20
"""Packet duration used when an SDP has no usable a=ptime (RFC 3551 §4.5: 20 ms)."""
MAX_DTMF_EVENTS = 100
"""Digits in one ``DTMF events`` reply (about 60 bytes each: the reply stays one datagram)."""
DTMF_MIN_TO_SWITCH_MS = 100
"""Shortest RFC 4733 event reported toward the switch on a transcoded call: what SIP.js,
JsSIP and the gateway's own INFO conversion play by default, and well above what DTMF
detectors need (Firefox's digits arrive one sixth as long: see gateway.media.transcode)."""

BValue = int | bytes | list["BValue"] | dict[bytes, "BValue"]
"""A decoded bencode value: byte strings stay bytes."""

_DIGITS = frozenset(b"0123456789")
_COOKIE_RE = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_COOKIE_LENGTH)


class NgError(Exception):
    """Base class of the NG core's exceptions; ``str(exc)`` is the reason."""


class BencodeError(NgError):
    """Malformed or over-limit bencode; the message says what and at which offset."""


class NgDrop(NgError):
    """A datagram no reply can be sent to (no cookie): drop it and count ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _CommandError(NgError):
    """A command that fails; ``str(exc)`` becomes ``error-reason``."""


# --------------------------------------------------------------------------- bencode


def bencode(value: object) -> bytes:
    """Encode ``value``: str (UTF-8), bytes, int, list/tuple, dict with str/bytes keys.

    Dictionary keys are written in sorted order of their bytes (the bencode rule).

    Raises:
        BencodeError: a value of another type (bool, float, None...), or a key that is
            not a string.
    """
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(value: object, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BencodeError(f"cannot encode: nested deeper than {MAX_DEPTH}")
    if isinstance(value, bool) or value is None or isinstance(value, float):
        raise BencodeError(f"cannot encode {type(value).__name__} {value!r}")
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, bytes | bytearray):
        out.append(b"%d:" % len(value))
        out.append(bytes(value))
    elif isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, list | tuple):
        out.append(b"l")
        for item in value:
            _encode(item, out, depth + 1)
        out.append(b"e")
    elif isinstance(value, dict):
        items: list[tuple[bytes, object]] = []
        for key, item in value.items():
            if isinstance(key, str):
                key = key.encode("utf-8")
            if not isinstance(key, bytes):
                raise BencodeError(f"cannot encode dictionary key {key!r}: not a string")
            items.append((key, item))
        items.sort(key=lambda kv: kv[0])
        out.append(b"d")
        for key, item in items:
            out.append(b"%d:" % len(key))
            out.append(key)
            _encode(item, out, depth + 1)
        out.append(b"e")
    else:
        raise BencodeError(f"cannot encode {type(value).__name__}")


class _Decoder:
    __slots__ = ("data", "pos", "items")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.items = 0

    def truncated(self) -> BencodeError:
        return BencodeError(f"truncated at offset {len(self.data)}")

    def value(self, depth: int) -> BValue:
        data = self.data
        if self.pos >= len(data):
            raise self.truncated()
        self.items += 1
        if self.items > MAX_ITEMS:
            raise BencodeError(f"more than {MAX_ITEMS} values")
        lead = data[self.pos]
        if lead == 0x69:  # "i"
            return self.integer()
        if lead in _DIGITS:
            return self.string()
        if lead in (0x6C, 0x64):  # "l", "d"
            if depth >= MAX_DEPTH:
                raise BencodeError(f"nested deeper than {MAX_DEPTH} at offset {self.pos}")
            self.pos += 1
            return self.list(depth) if lead == 0x6C else self.dict(depth)
        raise BencodeError(f"unexpected byte 0x{lead:02x} at offset {self.pos}")

    def integer(self) -> int:
        data, start = self.data, self.pos
        end = data.find(b"e", start + 1, start + MAX_INT_DIGITS + 3)
        if end < 0:
            body = data[start + 1 : start + MAX_INT_DIGITS + 3]
            if len(body) < MAX_INT_DIGITS + 2 and all(c in _DIGITS or c == 0x2D for c in body):
                raise self.truncated()
            raise BencodeError(f"bad integer at offset {start}")
        text = data[start + 1 : end]
        digits = text[1:] if text.startswith(b"-") else text
        if (
            not digits
            or not all(c in _DIGITS for c in digits)
            or (digits[0] == 0x30 and len(digits) > 1)
            or text == b"-0"
            or len(digits) > MAX_INT_DIGITS
        ):
            raise BencodeError(f"bad integer at offset {start}")
        self.pos = end + 1
        return int(text)

    def string(self) -> bytes:
        data, start = self.data, self.pos
        colon = data.find(b":", start, start + MAX_INT_DIGITS + 1)
        if colon < 0:
            body = data[start : start + MAX_INT_DIGITS + 1]
            if len(body) <= MAX_INT_DIGITS and all(c in _DIGITS for c in body):
                raise self.truncated()
            raise BencodeError(f"bad string length at offset {start}")
        digits = data[start:colon]
        if not all(c in _DIGITS for c in digits) or (digits[0] == 0x30 and len(digits) > 1):
            raise BencodeError(f"bad string length at offset {start}")
        length = int(digits)
        # Checked against what is left before slicing: a huge length allocates nothing.
        if length > len(data) - colon - 1:
            raise self.truncated()
        self.pos = colon + 1 + length
        return data[colon + 1 : self.pos]

    def list(self, depth: int) -> list[BValue]:
        result: list[BValue] = []
        while True:
            if self.pos >= len(self.data):
                raise self.truncated()
            if self.data[self.pos] == 0x65:  # "e"
                self.pos += 1
                return result
            result.append(self.value(depth + 1))

    def dict(self, depth: int) -> dict[bytes, BValue]:
        result: dict[bytes, BValue] = {}
        while True:
            if self.pos >= len(self.data):
                raise self.truncated()
            if self.data[self.pos] == 0x65:
                self.pos += 1
                return result
            at = self.pos
            if self.data[at] not in _DIGITS:
                raise BencodeError(f"dictionary key is not a string at offset {at}")
            self.items += 1
            key = self.string()
            # rtpengine does not sort its keys (its docs say so): order is not checked.
            if key in result:
                raise BencodeError(f"duplicate dictionary key {key!r} at offset {at}")
            result[key] = self.value(depth + 1)


def bdecode(data: bytes) -> BValue:
    """Decode one complete bencoded value.

    Strict: integers without leading zeros or ``-0``, string lengths without leading zeros,
    string dictionary keys without duplicates, nothing after the value. Dictionary key order
    is not checked (rtpengine does not sort its keys).

    Raises:
        BencodeError: ``empty input``; ``truncated at offset N`` (the input ends inside a
            value: every proper prefix of a valid document raises this); ``unexpected byte
            0xNN at offset N``; ``bad integer at offset N``; ``bad string length at offset
            N``; ``dictionary key is not a string at offset N``; ``duplicate dictionary key
            b'k' at offset N``; ``trailing data at offset N``; ``nested deeper than 16 at
            offset N``; ``more than 4096 values``; ``input larger than 65535 bytes``.
    """
    if not data:
        raise BencodeError("empty input")
    if len(data) > MAX_MESSAGE_SIZE:
        raise BencodeError(f"input larger than {MAX_MESSAGE_SIZE} bytes")
    decoder = _Decoder(bytes(data))
    value = decoder.value(0)
    if decoder.pos != len(data):
        raise BencodeError(f"trailing data at offset {decoder.pos}")
    return value


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class NgRequest:
    """One NG request: its cookie and its dictionary (byte strings decoded as UTF-8)."""

    cookie: bytes
    body: dict[str, object]


def _text(value: BValue) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, dict):
        return {k.decode("utf-8"): _text(v) for k, v in value.items()}
    return value


def parse_message(datagram: bytes) -> NgRequest:
    """Split ``<cookie> <bencoded dict>`` and decode the dictionary.

    Raises:
        NgDrop: no reply is possible: ``too large`` (over :data:`MAX_MESSAGE_SIZE`),
            ``no cookie`` (no space, or an empty, over-long or non-printable cookie).
        BencodeError: the cookie is usable but the body is not a bencoded dictionary of
            UTF-8 strings (reply with :func:`error_reply`): the bencode reasons of
            :func:`bdecode`, ``not a dictionary``, ``not UTF-8``.
    """
    if len(datagram) > MAX_MESSAGE_SIZE:
        raise NgDrop("too large")
    cookie, space, rest = datagram.partition(b" ")
    if not space or _COOKIE_RE.fullmatch(cookie) is None:
        raise NgDrop("no cookie")
    value = bdecode(rest)
    if not isinstance(value, dict):
        raise BencodeError("not a dictionary")
    try:
        body = _text(value)
    except UnicodeDecodeError:
        raise BencodeError("not UTF-8") from None
    assert isinstance(body, dict)
    return NgRequest(cookie, body)


def encode_message(cookie: bytes, body: dict[str, object]) -> bytes:
    """``<cookie> <bencoded body>``; a reply too large for a datagram becomes an error.

    Raises:
        BencodeError: ``body`` holds a value bencode cannot carry (a programming error).
    """
    data = cookie + b" " + bencode(body)
    if len(data) > MAX_MESSAGE_SIZE:
        data = cookie + b" " + bencode(error_reply("reply too large for one datagram"))
    return data


def error_reply(reason: str) -> dict[str, object]:
    """The NG error reply: ``{"result": "error", "error-reason": reason}``."""
    return {"result": "error", "error-reason": reason}


# --------------------------------------------------------------------------- backend


class WebRtcSide(Protocol):
    """What the command logic reads from a session's WebRTC leg."""

    @property
    def local_port(self) -> int: ...
    @property
    def ice_ufrag(self) -> str: ...
    @property
    def ice_pwd(self) -> str: ...
    @property
    def fingerprint(self) -> str:
        """``"sha-256 AB:CD:..."``."""
        ...

    @property
    def dtls_role(self) -> str: ...


class RtpSide(Protocol):
    """What the command logic reads from a session's plain RTP leg."""

    @property
    def local_port(self) -> int: ...
    @property
    def local_rtcp_port(self) -> int: ...


class NgSession(Protocol):
    """One call's media (``gateway.transport.media.MediaSession`` has this shape)."""

    @property
    def webrtc(self) -> WebRtcSide: ...
    @property
    def rtp(self) -> RtpSide: ...
    @property
    def stats(self) -> dict[str, object]: ...

    def set_webrtc_remote(
        self,
        *,
        ice_ufrag: str,
        ice_pwd: str,
        fingerprint: tuple[str, str],
        setup: str,
        candidates: list[tuple[str, int]],
    ) -> None: ...
    def set_rtp_remote(self, *, address: str, port: int, rtcp_port: int | None) -> None: ...
    def set_payload_map(self, *, to_rtp: dict[int, int], to_webrtc: dict[int, int]) -> None: ...
    def set_direction(self, leg: str, direction: str) -> None: ...
    def set_transcoder(self, pipeline: str, transcoder: RtpTranscoder | None) -> None: ...
    def set_clock_rates(self, *, webrtc: int, rtp: int) -> None: ...
    def play_dtmf(self, code: int, duration_ms: int, payload_type: int) -> None:
        """Queue one RFC 4733 event toward the switch (``payload_type``: its te/8000)."""
        ...

    def set_dtmf_receiver(self, receiver: DtmfReceiver | None) -> None:
        """Read the browser's telephone-events as digits instead of forwarding them."""
        ...


class NgBackend(Protocol):
    """Opens and releases sessions; an adapter wraps ``MediaEngine`` in it."""

    @property
    def public_ip(self) -> str:
        """The address written into SDP (c=, o=, candidates)."""
        ...

    def open(self, call_id: str) -> NgSession:
        """A new session. Raises PortsExhausted when the port range is full."""
        ...

    def release(self, session: NgSession) -> None:
        """Close ``session`` (the adapter may finish the close asynchronously)."""
        ...

    def sessions(self) -> int: ...
    def ports_in_use(self) -> int: ...


# --------------------------------------------------------------------------- options

WEBRTC = "webrtc"
PLAIN = "plain"
_LEG = {WEBRTC: "webrtc", PLAIN: "rtp"}
_TRANSPORTS = {
    "rtp/avp": PLAIN,
    "rtp/avpf": PLAIN,
    "rtp/savp": WEBRTC,
    "rtp/savpf": WEBRTC,
    "udp/tls/rtp/savp": WEBRTC,
    "udp/tls/rtp/savpf": WEBRTC,
}
_ICE = frozenset({"default", "force", "optional", "remove", "force-relay"})
_DTLS = {"off": "off", "no": "off", "disable": "off", "passive": "passive", "active": "active"}
_RTCP_MUX = frozenset({"offer", "require", "demux", "accept", "reject"})
_CODEC_LISTS = ("strip", "mask", "except", "offer", "transcode", "accept", "consume", "set")
_SILENT_CODEC_KEYS = frozenset({"accept", "set"})


def _norm(key: str) -> str:
    return key.lower().replace("_", " ").replace("-", " ")


@dataclass
class _Options:
    """The offer/answer keys the gateway acts on, checked."""

    transport: str | None = None
    ice: str | None = None
    dtls: str | None = None
    rtcp_mux: frozenset[str] = frozenset()
    strip: list[str] = field(default_factory=list)
    mask: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)  # except + offer
    offer: list[str] = field(default_factory=list)
    transcode: list[str] = field(default_factory=list)
    fatal: bool = False
    load_limit: bool = False
    dtmf_info: bool = False
    warnings: list[str] = field(default_factory=list)


def _strings(value: object, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise _CommandError(f"'{key}' must be a string or a list of strings")


def _options(body: dict[str, object]) -> _Options:
    opts = _Options()
    codec: dict[str, list[str]] = {name: [] for name in _CODEC_LISTS}
    for raw_key, value in body.items():
        key = _norm(raw_key)
        if key == "transport protocol":
            text = _string(value, raw_key)
            if text.lower() == "accept":
                continue
            if text.lower() not in _TRANSPORTS:
                raise _CommandError(
                    f"unsupported transport-protocol '{text}': expected RTP/AVP, RTP/AVPF, "
                    "RTP/SAVP, RTP/SAVPF or UDP/TLS/RTP/SAVPF"
                )
            opts.transport = _TRANSPORTS[text.lower()]
        elif key == "ice":
            text = _string(value, raw_key).lower()
            if text not in _ICE:
                raise _CommandError(f"invalid ICE value '{text}'")
            opts.ice = text
        elif key == "dtls":
            text = _string(value, raw_key).lower()
            if text not in _DTLS:
                raise _CommandError(f"invalid DTLS value '{text}'")
            opts.dtls = _DTLS[text]
        elif key == "rtcp mux":
            items = {v.lower() for v in _strings(value, raw_key)}
            bad = sorted(items - _RTCP_MUX)
            if bad:
                raise _CommandError(f"invalid rtcp-mux value '{bad[0]}'")
            opts.rtcp_mux = frozenset(items)
        elif key == "codec":
            if not isinstance(value, dict):
                raise _CommandError("'codec' must be a dictionary")
            for sub, items in value.items():
                name = _norm(sub)
                if name not in codec:
                    raise _CommandError(f"unsupported codec manipulation '{sub}'")
                codec[name] += _strings(items, f"codec.{sub}")
        elif key == "flags":
            for flag in _strings(value, raw_key):
                norm = _norm(flag)
                if norm == "fatal":
                    opts.fatal = True
                elif norm == "dtmf info":
                    # Not rtpengine's: read the browser's telephone-events as digits for
                    # SIP INFO when the switch answers without telephone-event.
                    opts.dtmf_info = True
                elif norm.startswith("codec "):
                    # rtpengine: codec manipulations may be flags "codec-strip-PCMA".
                    parts = flag.split("-", 2)
                    if len(parts) == 3 and _norm(parts[1]) in codec:
                        codec[_norm(parts[1])].append(parts[2])
        elif key == "supports":
            opts.load_limit = "load limit" in {_norm(v) for v in _strings(value, raw_key)}
    for name in ("consume",):
        if codec[name]:
            raise _CommandError(
                f"codec-{name} needs the transcoding engine, which the media workers do not "
                "run yet (payload passthrough only)"
            )
    for name in _SILENT_CODEC_KEYS:
        if codec[name]:
            opts.warnings.append(f"codec-{name} ignored: no transcoding engine")
    opts.strip, opts.mask = codec["strip"], codec["mask"]
    opts.keep = codec["except"] + codec["offer"]
    opts.offer, opts.transcode = codec["offer"], codec["transcode"]
    return opts


def _string(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise _CommandError(f"'{key}' must be a string")
    return value


def _matches(codec: Codec, spec: str) -> bool:
    """rtpengine codec spec: a payload type number, ``name``, ``name/clock[/channels]``."""
    if spec.isdigit():
        return codec.pt == int(spec)
    parts = spec.split("/")
    if parts[0].lower() != codec.name.lower():
        return False
    if len(parts) > 1 and parts[1] and parts[1] != str(codec.clock):
        return False
    return not (len(parts) > 2 and parts[2] and parts[2] != str(codec.channels))


def _any(codec: Codec, specs: Iterable[str]) -> bool:
    return any(_matches(codec, s) for s in specs)


def _is_audio(codec: Codec) -> bool:
    return codec.name.lower() not in ("telephone-event", "cn")


def _apply_codecs(
    offered: list[Codec], opts: _Options, *, transcoding: bool = False
) -> list[Codec]:
    """The codecs to offer onward after strip/mask/except/offer/transcode.

    ``mask`` acts as ``strip`` (a masked codec could only be used by transcoding), and
    ``transcode`` of a codec the offer already has acts as ``offer`` (rtpengine: "no
    transcoding will be done"). ``transcode`` of a new codec is an error unless
    ``transcoding`` (a :class:`CodecPolicy` is set) and the gateway can add it: the caller
    adds those.
    """
    for spec in opts.transcode:
        if transcoding and spec.split("/")[0].upper() in _ADDED_CODECS:
            continue
        if not any(_matches(c, spec) for c in offered):
            raise _CommandError(
                f"codec-transcode={spec}: transcoding is not available yet (the media workers "
                "relay payload only); the offer has no such codec to pass through"
            )
    removed = opts.strip + opts.mask
    everything = any(s.lower() in ("all", "full") for s in removed)
    named = [s for s in removed if s.lower() not in ("all", "full")]
    keep = opts.keep + opts.transcode
    result = [c for c in offered if _any(c, keep) or not (everything or _any(c, named))]
    if opts.offer or opts.transcode:
        order = opts.offer + opts.transcode

        def rank(codec: Codec) -> int:
            return next((i for i, s in enumerate(order) if _matches(codec, s)), len(order))

        result.sort(key=rank)
    if not any(_is_audio(c) for c in result):
        # rtpengine: stripping every codec is an error and leaves the list unchanged.
        opts.warnings.append("codec manipulation left no audio codec; offer left unchanged")
        return list(offered)
    return result


def _pt_map(source: list[Codec], target: list[Codec]) -> dict[int, int]:
    """Payload type of each ``source`` codec -> the same format's type in ``target``."""
    result: dict[int, int] = {}
    for codec in source:
        match = next((t for t in target if t.same_format(codec)), None)
        if codec.pt is not None and match is not None and match.pt is not None:
            result[codec.pt] = match.pt
    return result


# --------------------------------------------------------------------------- codec policy


@dataclass(frozen=True)
class CodecPolicy:
    """When and how calls are transcoded (the config's ``[codecs]`` table).

    ``switch``/``browser``: codecs added, in this order, to an offer toward that side when
    the offerer lacks them (canonical names: ``PCMU``, ``PCMA``, ``G729``, ``opus``);
    ``strip``: regular expressions (full, case-insensitive match of the encoding name)
    removing codecs from the browser's offer before it goes to the switch;
    ``opus_complexity``: libopus encoder complexity 0-10; ``opus_bitrate``: bit/s of the
    Opus sent to browsers, 0 automatic (the browser's ``maxaveragebitrate`` caps either);
    ``transcode``: False offers only the offerer's codecs (no shared codec: the answerer
    rejects the call).
    """

    switch: tuple[str, ...] = ("PCMU", "PCMA")
    browser: tuple[str, ...] = ("opus", "PCMU", "PCMA")
    strip: tuple[str, ...] = ()
    opus_complexity: int = 5
    transcode: bool = True
    opus_bitrate: int = 0


#: SDP form of each codec the policy may add (RFC 3551 §6 static types; RFC 7587 §7 opus
#: is always opus/48000/2; RFC 4856 §2.1.9 annexb=no: the encoder sends no SID frames).
_ADDED_CODECS: dict[str, Codec] = {
    "PCMU": Codec("PCMU", 8000, 1),
    "PCMA": Codec("PCMA", 8000, 1),
    "G729": Codec("G729", 8000, 1, fmtp="annexb=no"),
    "OPUS": Codec("opus", 48000, 2, fmtp="minptime=10;useinbandfec=1"),
}
_PAIRS = frozenset((a.upper(), b.upper()) for a, b in pairs())
_TE_8000 = Codec("telephone-event", 8000, 1, fmtp="0-16")


def _can_pair(a: Codec, b: Codec) -> bool:
    """``a`` can be transcoded to and from ``b`` (both directions are in :func:`pairs`)."""
    x, y = a.name.upper(), b.name.upper()
    if a.clock != _ADDED_CODECS.get(x, a).clock or b.clock != _ADDED_CODECS.get(y, b).clock:
        return False
    return (x, y) in _PAIRS and (y, x) in _PAIRS


def _audio(codecs: Iterable[Codec]) -> list[Codec]:
    return [c for c in codecs if _is_audio(c)]


def _additions(offered: list[Codec], wanted: Iterable[str]) -> list[Codec]:
    """The ``wanted`` codecs the offer lacks that one of its audio codecs pairs with."""
    audio = _audio(offered)
    result: list[Codec] = []
    for name in wanted:
        template = _ADDED_CODECS.get(name.upper())
        if template is None or any(c.same_format(template) for c in audio + result):
            continue
        if any(_can_pair(c, template) for c in audio):
            result.append(template)
    return result


def _with_additions(onward: list[Codec], added: list[Codec], events: bool) -> list[Codec]:
    """Audio codecs, then the additions, then events (telephone-event/8000 added toward the
    switch when the offerer has events at another rate only: PITFALLS 11)."""
    audio = _audio(onward)
    rest = [c for c in onward if not _is_audio(c)]
    if events and rest and not any(c.is_telephone_event and c.clock == 8000 for c in rest):
        rest.append(_TE_8000)
    return audio + added + rest


def _ptime(value: int | None, codec: Codec) -> int:
    """The packet duration to use for ``codec``: the SDP's a=ptime when the codec can
    packetise it (opus: 10/20/40/60 ms, RFC 7587 §4.2; G.729: multiples of 10 ms)."""
    if value is None or value <= 0:
        return DEFAULT_PTIME_MS
    name = codec.name.upper()
    if name == "OPUS" and value not in (10, 20, 40, 60):
        return DEFAULT_PTIME_MS
    if name == "G729" and (value % 10 or value > 120):
        return DEFAULT_PTIME_MS
    return value


def _opus_options(fmtp: str | None, policy: CodecPolicy) -> dict[str, object]:
    """Transcoder options for the Opus sent to a browser: its fmtp asks for FEC, DTX,
    CBR and caps the bitrate (RFC 7587 §6.1); ``policy.opus_bitrate`` sets the rate."""
    wanted = encoder_options_from_fmtp(fmtp)
    bitrate: int | None = policy.opus_bitrate or None
    cap = wanted.get("max_bitrate")
    if cap is not None:
        if bitrate is None and (wanted["fec"] or cap < NARROWBAND_FEC_BITRATE):
            # The encoder's own choice with FEC at 8 kHz; without FEC its automatic rate
            # (about 11 kbit/s narrowband) is kept unless the cap is lower than this.
            bitrate = NARROWBAND_FEC_BITRATE
        if bitrate is not None:
            bitrate = min(bitrate, cap)
    return {
        "opus_fec": wanted["fec"],
        "opus_dtx": wanted["dtx"],
        "opus_cbr": wanted["cbr"],
        "opus_max_bandwidth": wanted.get("max_bandwidth"),
        "opus_bitrate": bitrate,
    }


def _event(codecs: Iterable[Codec], clock: int) -> Codec | None:
    return next((c for c in codecs if c.is_telephone_event and c.clock == clock), None)


@dataclass(frozen=True)
class _Mode:
    """How a call's media is bridged: ``passthrough`` of ``webrtc`` (= ``rtp``) or
    ``transcode`` between the browser's ``webrtc`` codec and the switch's ``rtp`` codec."""

    mode: str
    webrtc: Codec
    rtp: Codec
    webrtc_event: Codec | None = None
    rtp_event: Codec | None = None
    switch_event: Codec | None = None
    """The switch's telephone-event/8000 whether or not events are relayed (``play DTMF``)."""
    webrtc_ptime: int = DEFAULT_PTIME_MS
    rtp_ptime: int = DEFAULT_PTIME_MS

    @property
    def label(self) -> str:
        """``passthrough PCMU`` / ``transcode opus<->PCMU``."""
        if self.mode == "passthrough":
            return f"passthrough {self.webrtc.name}"
        return f"transcode {self.webrtc.name}<->{self.rtp.name}"

    @property
    def codec(self) -> str:
        if self.mode == "passthrough":
            return self.webrtc.name
        return f"{self.webrtc.name}<->{self.rtp.name}"


# --------------------------------------------------------------------------- calls


@dataclass
class _Origin:
    """o= bookkeeping of the SDP sent toward one side (RFC 3264 §8: version + 1 on change)."""

    session_id: int
    version: int = 0
    last: str | None = None


@dataclass
class _Pending:
    side: str  # who offered: WEBRTC or PLAIN
    from_tag: str
    text: str
    sdp: SessionDescription
    params: MediaParams
    onward: list[Codec]  # codecs offered to the other side
    reply: dict[str, object]
    added: list[Codec] = field(default_factory=list)  # transcoding candidates added
    dtmf_info: bool = False  # telephone-event offered to the browser for SIP INFO only


@dataclass
class _Call:
    call_id: str
    session: NgSession
    created: float
    last_signal: float
    origins: dict[str, _Origin]
    tags: dict[str, str] = field(default_factory=dict)  # side -> SIP tag
    tag_created: dict[str, float] = field(default_factory=dict)
    pending: _Pending | None = None
    last_answer: tuple[str, dict[str, object]] | None = None
    answered: bool = False
    protocols: dict[str, str] = field(default_factory=dict)
    transcoders: dict[str, RtpTranscoder] = field(default_factory=dict)  # pipeline -> it
    mode: _Mode | None = None
    dtmf_receiver: DtmfReceiver | None = None  # the browser's events, read for SIP INFO


def _required(body: dict[str, object], key: str) -> str:
    for raw, value in body.items():
        if _norm(raw) == _norm(key):
            if not isinstance(value, str) or not value:
                raise _CommandError(f"'{key}' must be a non-empty string")
            return value
    raise _CommandError(f"No {key} in message" if key != "sdp" else "No SDP body in message")


def _optional(body: dict[str, object], key: str) -> str | None:
    for raw, value in body.items():
        if _norm(raw) == _norm(key):
            if not isinstance(value, str):
                raise _CommandError(f"'{key}' must be a string")
            return value
    return None


def _addr(addr: object) -> dict[str, object]:
    if isinstance(addr, tuple) and len(addr) == 2:
        host, port = str(addr[0]), int(addr[1])
        return {"family": "IPv6" if ":" in host else "IPv4", "address": host, "port": port}
    return {}


def _plain_value(value: object) -> object:
    """A stats value made bencodable: tuples as "host:port", None as "", bools as 0/1."""
    if isinstance(value, bool):
        return int(value)
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ":".join(str(v) for v in value)
    if isinstance(value, dict):
        return {str(k): _plain_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_value(v) for v in value]
    if isinstance(value, float):
        return int(value)
    return value


class NgCommands:
    """The NG command logic over a media backend: request dict in, reply dict out.

    Args:
        backend: opens and releases media sessions.
        max_calls: calls held at once; past it an offer gets ``load limit`` (when the
            client ``supports`` it) or an error.
        on_release: called with the call-id whenever a call ends (delete or timeout).
        codecs: the transcoding policy; None relays payload only (no transcoding).
        on_mode: called with the call-id and ``"passthrough PCMU"`` /
            ``"transcode opus<->PCMU"`` when an answer sets or changes a call's mode.
        on_end: called with a summary (:meth:`summary`) when an answered call ends
            (delete, media timeout or shutdown): the media half of a CDR.
    """

    def __init__(
        self,
        backend: NgBackend,
        *,
        max_calls: int = MAX_CALLS,
        on_release: Callable[[str], None] | None = None,
        codecs: CodecPolicy | None = None,
        on_mode: Callable[[str, str], None] | None = None,
        on_end: Callable[[dict[str, object]], None] | None = None,
    ) -> None:
        self.backend = backend
        self.max_calls = max_calls
        self.on_release = on_release
        self.codecs = codecs
        self.on_mode = on_mode
        self.on_end = on_end
        self._calls: dict[str, _Call] = {}
        self._dtmf_calls: dict[str, _Call] = {}  # calls whose browser digits go to INFO
        self.started: float | None = None
        self.managed = 0
        self.rejected = 0
        self.timed_out = 0
        self.deleted = 0

    # ---------------------------------------------------------------- entry points

    def handle(self, body: dict[str, object], now: float) -> dict[str, object]:
        """Run one request; never raises for bad input (the reply says what was wrong).

        ``now`` is the wall clock (UNIX seconds): ``query`` reports UNIX timestamps.
        """
        if self.started is None:
            self.started = now
        command = body.get("command")
        if not isinstance(command, str):
            return error_reply("No command in message")
        handler = self._COMMANDS.get(_norm(command))
        if handler is None:
            return error_reply("Unrecognized command")
        try:
            return handler(self, body, now)
        except _CommandError as exc:
            return error_reply(str(exc))
        except SdpError as exc:
            return error_reply(f"Failed to parse SDP: {exc}")
        except ValueError as exc:
            # The media layer refused a parameter (e.g. a fingerprint other than sha-256).
            return error_reply(f"Unusable media parameters: {exc}")

    def expire(self, call_id: str, now: float) -> bool:
        """End ``call_id`` because its media timed out; False when it is unknown."""
        call = self._calls.get(call_id)
        if call is None:
            return False
        self.timed_out += 1
        self._drop(call, now, "timeout")
        return True

    def call_ids(self) -> list[str]:
        """Calls held, oldest first."""
        return list(self._calls)

    def session_of(self, call_id: str) -> NgSession | None:
        """The media session of ``call_id`` (for timeouts and tests)."""
        call = self._calls.get(call_id)
        return None if call is None else call.session

    def close(self, now: float | None = None) -> None:
        """Release every call (``now``: the wall clock for the summaries)."""
        for call in list(self._calls.values()):
            self._drop(call, call.last_signal if now is None else now, "shutdown")

    # ---------------------------------------------------------------- commands

    def _ping(self, body: dict[str, object], now: float) -> dict[str, object]:
        return {"result": "pong"}

    def _offer(self, body: dict[str, object], now: float) -> dict[str, object]:
        text = _required(body, "sdp")
        call_id = _required(body, "call-id")
        from_tag = _required(body, "from-tag")
        opts = _options(body)
        sdp = parse(text)
        _, audio = first_audio(sdp)
        side = self._profile(audio.proto)
        call = self._calls.get(call_id)
        if call is not None and call.pending is not None:
            pending = call.pending
            if pending.text == text and pending.from_tag == from_tag:
                return pending.reply  # the same offer again (INVITE retransmission)
        target = opts.transport
        if target is None:
            raise _CommandError(
                f"{audio.proto} offer without transport-protocol: the gateway bridges WebRTC "
                "and plain RTP only; set transport-protocol (RTP/AVP toward the switch, "
                "UDP/TLS/RTP/SAVPF toward the browser)"
            )
        if target == side:
            raise _CommandError(
                f"transport-protocol keeps the {audio.proto} profile: only WebRTC <-> plain "
                "RTP bridging is supported"
            )
        self._check_flags(opts, toward=target)
        params = MediaParams.from_webrtc(sdp) if side == WEBRTC else MediaParams.from_plain(sdp)
        onward = _apply_codecs(params.codecs, opts, transcoding=self.codecs is not None)
        added: list[Codec] = []
        if self.codecs is not None:
            onward, added = self._policy_codecs(side, onward, opts)
        dtmf_info = (
            side == PLAIN and opts.dtmf_info and not any(c.is_telephone_event for c in onward)
        )
        if dtmf_info:
            # A switch without telephone-event: the browser is offered its own (one per
            # audio clock), and its events are read as digits for SIP INFO once it answers.
            onward = onward + [_TE_8000]
        created = call is None
        if call is None:
            new = self._new_call(call_id, opts, now)
            if isinstance(new, dict):
                return new
            call = new
        try:
            out = self._offer_sdp(call, side, sdp, params, onward, opts)
        except BaseException:
            if created:
                self.managed -= 1
                self._drop(call, now, "failed")
            raise
        call.tags[side] = from_tag
        call.tag_created.setdefault(side, now)
        call.protocols[side] = audio.proto
        call.last_signal = now
        reply: dict[str, object] = {"result": "ok", "sdp": out}
        if opts.warnings:
            reply["warning"] = "; ".join(opts.warnings)
        call.pending = _Pending(side, from_tag, text, sdp, params, onward, reply, added, dtmf_info)
        return reply

    def _offer_sdp(
        self,
        call: _Call,
        side: str,
        sdp: SessionDescription,
        params: MediaParams,
        onward: list[Codec],
        opts: _Options,
    ) -> str:
        """Apply an offer to the session; the SDP for the other side."""
        session = call.session
        if side == WEBRTC:
            self._set_webrtc(session, params, default_setup="actpass")
            mux = (
                "offer" in opts.rtcp_mux
                or "require" in opts.rtcp_mux
                or ("accept" in opts.rtcp_mux and params.rtcp_mux)
            )
            out = self._versioned(
                call,
                PLAIN,
                lambda sid, v: to_plain(
                    sdp,
                    address=self.backend.public_ip,
                    port=session.rtp.local_port,
                    codecs=onward,
                    session_id=sid,
                    version=v,
                    rtcp_mux=mux,
                ),
            )
        else:
            rtcp = params.rtcp_port if params.rtcp_port != params.port else params.port + 1
            session.set_rtp_remote(
                address=params.address or "0.0.0.0", port=params.port, rtcp_port=rtcp
            )
            session.set_direction("rtp", params.direction)
            setup = session.webrtc.dtls_role
            if setup == "actpass" and opts.dtls == "passive":
                setup = "passive"
            algorithm, value = session.webrtc.fingerprint.split(" ", 1)
            out = self._versioned(
                call,
                WEBRTC,
                lambda sid, v: to_webrtc(
                    sdp,
                    address=self.backend.public_ip,
                    port=session.webrtc.local_port,
                    ice_ufrag=session.webrtc.ice_ufrag,
                    ice_pwd=session.webrtc.ice_pwd,
                    fingerprint=value,
                    setup=setup,
                    codecs=onward,
                    session_id=sid,
                    version=v,
                ),
            )
        return out

    def _answer(self, body: dict[str, object], now: float) -> dict[str, object]:
        text = _required(body, "sdp")
        call_id = _required(body, "call-id")
        _required(body, "from-tag")
        to_tag = _required(body, "to-tag")
        opts = _options(body)
        call = self._calls.get(call_id)
        if call is None:
            raise _CommandError("Unknown call-id")
        if call.pending is None:
            if call.last_answer is not None and call.last_answer[0] == text:
                return call.last_answer[1]  # the same answer again (200 OK retransmission)
            raise _CommandError("No offer pending for this call-id")
        pending = call.pending
        sdp = parse(text)
        _, audio = first_audio(sdp, accepted=False)
        side = self._profile(audio.proto)
        if side == pending.side:
            raise _CommandError(
                f"{audio.proto} answer to a {pending.sdp.media[pending.params.index].proto} "
                "offer: the answer must come from the other side's profile"
            )
        session = call.session
        if side == PLAIN:
            params = MediaParams.from_plain(sdp)
            mux = params.rtcp_mux or "require" in opts.rtcp_mux
            session.set_rtp_remote(
                address=params.address or "0.0.0.0",
                port=params.port,
                rtcp_port=params.port if mux else params.rtcp_port,
            )
            session.set_direction("rtp", params.direction)
            mode = self._mode(
                browser=pending.params, switch=params, answered_by=PLAIN, offered=pending
            )
            answer_codecs: list[Codec] | None = None
            if mode is not None and mode.mode == "transcode":
                answer_codecs = [mode.webrtc] + ([mode.rtp_event] if mode.rtp_event else [])
            else:
                session.set_payload_map(
                    to_rtp=_pt_map(pending.params.codecs, params.codecs),
                    to_webrtc=_pt_map(params.codecs, pending.params.codecs),
                )
            receiver = self._dtmf_receiver(call, mode, pending.params, opts.dtmf_info)
            if receiver is not None:
                # The browser keeps its telephone-event although the switch has none: the
                # answer's events are the offered ones at the audio clock (rewrite picks them).
                answer_codecs = (answer_codecs or list(params.codecs)) + [_TE_8000]
            self._set_dtmf_receiver(call, receiver)
            algorithm, value = session.webrtc.fingerprint.split(" ", 1)
            out = self._versioned(
                call,
                WEBRTC,
                lambda sid, v: to_webrtc(
                    sdp,
                    address=self.backend.public_ip,
                    port=session.webrtc.local_port,
                    ice_ufrag=session.webrtc.ice_ufrag,
                    ice_pwd=session.webrtc.ice_pwd,
                    fingerprint=value,
                    setup=session.webrtc.dtls_role,
                    codecs=answer_codecs,
                    session_id=sid,
                    version=v,
                    offer=pending.sdp,
                ),
            )
            self._apply_mode(call, mode)
        else:
            params = MediaParams.from_webrtc(sdp)
            # RFC 4145 §4.1 / RFC 8842 §5.3: an answer without a=setup means active.
            self._set_webrtc(session, params, default_setup="active")
            offered = pending.params
            mux = offered.rtcp_mux and not ({"demux", "reject"} & opts.rtcp_mux)
            if mux or "require" in opts.rtcp_mux:
                session.set_rtp_remote(
                    address=offered.address or "0.0.0.0", port=offered.port, rtcp_port=offered.port
                )
            mode = self._mode(browser=params, switch=offered, answered_by=WEBRTC, offered=pending)
            plain_codecs: list[Codec] | None = None
            if mode is not None and mode.mode == "transcode":
                plain_codecs = [mode.rtp] + ([mode.rtp_event] if mode.rtp_event else [])
            else:
                session.set_payload_map(
                    to_rtp=_pt_map(params.codecs, offered.codecs),
                    to_webrtc=_pt_map(offered.codecs, params.codecs),
                )
                # RFC 3264 §6.1: the switch's answer names only formats it offered; the
                # browser may also have accepted the policy's additions (opus, PCMA) or a
                # telephone-event the gateway added for SIP INFO (DTMF-INFO).
                plain_codecs = [
                    c for c in params.codecs if any(c.same_format(o) for o in offered.codecs)
                ] or None  # nothing offered answered: the rewrite reports the answer as is
            self._set_dtmf_receiver(
                call, self._dtmf_receiver(call, mode, params, pending.dtmf_info)
            )
            out = self._versioned(
                call,
                PLAIN,
                lambda sid, v: to_plain(
                    sdp,
                    address=self.backend.public_ip,
                    port=session.rtp.local_port,
                    codecs=plain_codecs,
                    session_id=sid,
                    version=v,
                    rtcp_mux=bool(mux),
                ),
            )
            self._apply_mode(call, mode)
        call.tags[side] = to_tag
        call.tag_created.setdefault(side, now)
        call.protocols[side] = audio.proto
        call.last_signal = now
        call.pending = None
        call.answered = True
        reply: dict[str, object] = {"result": "ok", "sdp": out}
        if call.mode is not None:
            # Not in rtpengine's reply (clients ignore unknown keys): the chosen media mode,
            # for the gateway's metrics.
            reply["mode"] = call.mode.mode
            reply["codec"] = call.mode.codec
        if call.dtmf_receiver is not None:
            reply["dtmf"] = "info"  # collect the browser's digits with "DTMF events"
        if opts.warnings:
            reply["warning"] = "; ".join(opts.warnings)
        call.last_answer = (text, reply)
        return reply

    def _play_dtmf(self, body: dict[str, object], now: float) -> dict[str, object]:
        call = self._calls.get(_required(body, "call-id"))
        if call is None:
            raise _CommandError("Unknown call-id")
        from_tag = _required(body, "from-tag")
        if call.tags.get(WEBRTC) != from_tag:
            raise _CommandError(
                "play DTMF is supported from the browser's tag only (toward the switch)"
            )
        mode = call.mode
        if not call.answered or mode is None:
            raise _CommandError("play DTMF before the call's media is negotiated")
        event_type = mode.switch_event
        if event_type is None or event_type.pt is None:
            raise _CommandError("the switch leg has no telephone-event/8000")
        code = next((v for k, v in body.items() if _norm(k) == "code"), None)
        duration = next((v for k, v in body.items() if _norm(k) == "duration"), None)
        if duration is None:
            duration = DEFAULT_DURATION_MS
        if isinstance(duration, str) and duration.isdigit():
            duration = int(duration)
        if not isinstance(duration, int) or isinstance(duration, bool):
            raise _CommandError("'duration' must be an integer (milliseconds)")
        if isinstance(code, str) and code.isdigit() and len(code) > 1:
            code = int(code)  # "10" is the event number of *, not a digit
        if not isinstance(code, str | int) or isinstance(code, bool):
            raise _CommandError("'code' must be a DTMF digit or event number")
        try:
            event = event_code(code)
        except ValueError as exc:
            raise _CommandError(str(exc)) from None
        call.session.play_dtmf(event, duration, event_type.pt)
        return {"result": "ok"}

    def _dtmf_events(self, body: dict[str, object], now: float) -> dict[str, object]:
        """Not rtpengine's: the digits read from browsers' telephone-events since the last
        call (calls answered with the ``DTMF-INFO`` flag and a switch without events), each
        ``{"call-id", "from-tag" (the browser's), "code", "duration" (ms)}``, oldest first
        per call, at most ``limit`` (default and most :data:`MAX_DTMF_EVENTS`) per reply:
        the rest wait for the next."""
        limit = body.get("limit", MAX_DTMF_EVENTS)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            raise _CommandError("'limit' must be a positive integer")
        limit = min(limit, MAX_DTMF_EVENTS)
        events: list[dict[str, object]] = []
        for call_id, call in self._dtmf_calls.items():
            receiver = call.dtmf_receiver
            if receiver is None or not receiver.pending:
                continue
            tag = call.tags.get(WEBRTC, "")
            while receiver.pending and len(events) < limit:
                code, duration = receiver.pending.popleft()
                events.append(
                    {"call-id": call_id, "from-tag": tag, "code": code, "duration": duration}
                )
        return {"result": "ok", "events": events}

    def _dtmf_receiver(
        self, call: _Call, mode: _Mode | None, browser: MediaParams, wanted: bool
    ) -> DtmfReceiver | None:
        """The reader of the browser's telephone-events when the switch leg has none and
        the ``DTMF-INFO`` flag (``wanted``) asked for them (PITFALLS 10); else None."""
        if not wanted or mode is None or mode.switch_event is not None:
            return None
        clock = mode.webrtc.clock
        event = _event(browser.codecs, clock) or next(
            (c for c in browser.codecs if c.is_telephone_event), None
        )
        if event is None or event.pt is None:
            return None
        old = call.dtmf_receiver
        if old is not None and old.payload_type == event.pt and old.clock == clock:
            return old  # a re-INVITE's answer: keep the event in progress
        return DtmfReceiver(payload_type=event.pt, clock=clock)

    def _set_dtmf_receiver(self, call: _Call, receiver: DtmfReceiver | None) -> None:
        if receiver is call.dtmf_receiver:
            return
        call.dtmf_receiver = receiver
        call.session.set_dtmf_receiver(receiver)
        if receiver is None:
            self._dtmf_calls.pop(call.call_id, None)
        else:
            self._dtmf_calls[call.call_id] = call

    def _delete(self, body: dict[str, object], now: float) -> dict[str, object]:
        call_id = _required(body, "call-id")
        from_tag = _optional(body, "from-tag")
        opts = _options(body)
        call = self._calls.get(call_id)
        if call is not None and from_tag and from_tag not in call.tags.values():
            call = None
        if call is None:
            reason = "Call-ID not found or tags didn't match"
            if opts.fatal:
                return error_reply(reason)
            return {"result": "ok", "warning": reason}
        reply = self._stats(call)
        self.deleted += 1
        self._drop(call, now, "delete")
        return reply

    def _query(self, body: dict[str, object], now: float) -> dict[str, object]:
        call = self._calls.get(_required(body, "call-id"))
        if call is None:
            raise _CommandError("Unknown call-id")
        return self._stats(call)

    def _list(self, body: dict[str, object], now: float) -> dict[str, object]:
        limit = body.get("limit", LIST_LIMIT)
        if not isinstance(limit, int) or limit <= 0:
            raise _CommandError("'limit' must be a positive integer")
        return {"result": "ok", "calls": list(self._calls)[:limit]}

    def _statistics(self, body: dict[str, object], now: float) -> dict[str, object]:
        current = len(self._calls)
        return {
            "result": "ok",
            "statistics": {
                "currentstatistics": {
                    "sessionsown": current,
                    "sessionsforeign": 0,
                    "sessionstotal": current,
                    "transcodedmedia": sum(
                        1
                        for c in self._calls.values()
                        if c.mode is not None and c.mode.mode == "transcode"
                    ),
                },
                "totalstatistics": {
                    "uptime": str(int(now - (self.started or now))),
                    "managedsessions": self.managed,
                    "rejectedsessions": self.rejected,
                    "timeoutsessions": self.timed_out,
                    "regularterminatedsessions": self.deleted,
                },
            },
            "media": {
                "sessions": self.backend.sessions(),
                "ports in use": self.backend.ports_in_use(),
            },
        }

    _COMMANDS: dict[str, Callable[[NgCommands, dict[str, object], float], dict[str, object]]] = {
        "ping": _ping,
        "offer": _offer,
        "answer": _answer,
        "delete": _delete,
        "query": _query,
        "list": _list,
        "statistics": _statistics,
        "play dtmf": _play_dtmf,
        "dtmf events": _dtmf_events,
    }

    # ---------------------------------------------------------------- helpers

    def _policy_codecs(
        self, side: str, onward: list[Codec], opts: _Options
    ) -> tuple[list[Codec], list[Codec]]:
        """The offer's onward codecs after the policy, and the transcoding candidates added."""
        policy = self.codecs
        assert policy is not None
        if side == WEBRTC and policy.strip:
            kept = apply_policy(onward, (), policy.strip)
            if _audio(kept):
                onward = kept
            else:
                opts.warnings.append("codecs.strip left no audio codec; offer left unchanged")
        # codec-transcode=X asks for X whatever the policy says; the policy's list follows.
        wanted = [
            spec.split("/")[0]
            for spec in opts.transcode
            if not any(_matches(c, spec) for c in onward)
        ]
        if policy.transcode:
            wanted += policy.switch if side == WEBRTC else policy.browser
        added = _additions(onward, wanted)
        if not added:
            return onward, []
        return _with_additions(onward, added, events=side == WEBRTC), added

    def _mode(
        self, *, browser: MediaParams, switch: MediaParams, answered_by: str, offered: _Pending
    ) -> _Mode | None:
        """Passthrough or transcode, from the answer's first audio codec (RFC 3264 §6.1:
        the answerer's preferred codec is listed first). None: no audio codec in the answer
        (the SDP rewrite reports the error)."""
        answer = switch if answered_by == PLAIN else browser
        offer = browser if answered_by == PLAIN else switch
        chosen = next(iter(_audio(answer.codecs)), None)
        if chosen is None:
            return None
        match = next((c for c in offer.codecs if c.same_format(chosen)), None)
        if match is not None or self.codecs is None:
            shared = match or chosen
            # The switch's own telephone-event: what "play DTMF" injects toward it.
            return _Mode("passthrough", shared, shared, switch_event=_event(switch.codecs, 8000))
        if not any(chosen.same_format(c) for c in offered.added):
            # The answerer picked a codec nobody offered (RFC 3264 §6.1 forbids it).
            raise _CommandError(f"the answer's codec {chosen.name}/{chosen.clock} was not offered")
        partner = next((c for c in _audio(offer.codecs) if _can_pair(c, chosen)), None)
        if partner is None:
            raise _CommandError(f"no offered codec can be transcoded to {chosen.name}")
        web, rtp = (partner, chosen) if answered_by == PLAIN else (chosen, partner)
        rtp_event = switch_event = _event(switch.codecs, 8000)
        # The browser's events at its codec's clock (RFC 4733 §2.1); Firefox has only
        # te/8000 beside opus and counts its timestamps and durations in the Opus clock
        # (libwebrtc measures durations as RTP timestamp spans), so the stream's clock
        # still applies: its te/8000 is used the same way.
        web_event = _event(browser.codecs, web.clock) or _event(browser.codecs, 8000)
        if rtp_event is None or web_event is None:
            rtp_event = web_event = None  # RFC 4733 events need both legs to carry them
        return _Mode(
            "transcode",
            web,
            rtp,
            webrtc_event=web_event,
            rtp_event=rtp_event,
            webrtc_ptime=_ptime(browser.ptime, web),
            rtp_ptime=_ptime(switch.ptime, rtp),
            switch_event=switch_event,
        )

    def _apply_mode(self, call: _Call, mode: _Mode | None) -> None:
        """Plug in (or remove) the transcoders for ``mode`` and report a changed mode."""
        if mode is None:
            return
        session = call.session
        previous = call.mode
        if mode.mode == "transcode" and mode != previous:
            policy = self.codecs
            assert policy is not None
            w, r = mode.webrtc, mode.rtp
            assert w.pt is not None and r.pt is not None
            w_ev = mode.webrtc_event.pt if mode.webrtc_event else None
            r_ev = mode.rtp_event.pt if mode.rtp_event else None
            try:
                to_rtp = make_transcoder(
                    w.name,
                    r.name,
                    in_pt=w.pt,
                    out_pt=r.pt,
                    in_ptime_ms=mode.webrtc_ptime,
                    out_ptime_ms=mode.rtp_ptime,
                    dtmf_in_pt=w_ev,
                    dtmf_out_pt=r_ev,
                    dtmf_min_duration_ms=DTMF_MIN_TO_SWITCH_MS,
                    opus_complexity=policy.opus_complexity,
                )
                to_webrtc = make_transcoder(
                    r.name,
                    w.name,
                    in_pt=r.pt,
                    out_pt=w.pt,
                    in_ptime_ms=mode.rtp_ptime,
                    out_ptime_ms=mode.webrtc_ptime,
                    dtmf_in_pt=r_ev,
                    dtmf_out_pt=w_ev,
                    opus_complexity=policy.opus_complexity,
                    **(_opus_options(w.fmtp, policy) if w.name.upper() == "OPUS" else {}),
                )
            except (CodecError, ValueError) as exc:
                raise _CommandError(f"cannot transcode {mode.codec}: {exc}") from None
            # The transcoders emit the outgoing leg's own payload types: map them to themselves.
            session.set_payload_map(
                to_rtp={r.pt: r.pt, **({r_ev: r_ev} if r_ev is not None else {})},
                to_webrtc={w.pt: w.pt, **({w_ev: w_ev} if w_ev is not None else {})},
            )
            session.set_transcoder("to_rtp", to_rtp)
            session.set_transcoder("to_webrtc", to_webrtc)
            call.transcoders = {"to_rtp": to_rtp, "to_webrtc": to_webrtc}
        elif mode.mode == "passthrough" and mode != previous:
            if previous is not None and previous.mode == "transcode":
                session.set_transcoder("to_rtp", None)
                session.set_transcoder("to_webrtc", None)
                call.transcoders = {}
            # The shared codec's clock, for the legs' RTCP jitter (a transcoder sets its own).
            session.set_clock_rates(webrtc=mode.webrtc.clock, rtp=mode.rtp.clock)
        call.mode = mode
        if self.on_mode is not None and (previous is None or previous.label != mode.label):
            self.on_mode(call.call_id, mode.label)

    @staticmethod
    def _profile(proto: str) -> str:
        if proto.upper() in WEBRTC_PROTOS:
            return WEBRTC
        if proto.upper() in PLAIN_PROTOS:
            return PLAIN
        raise _CommandError(f"unsupported media profile {proto} (SDES-SRTP is not supported)")

    @staticmethod
    def _check_flags(opts: _Options, *, toward: str) -> None:
        if opts.ice == "force-relay":
            raise _CommandError("ICE=force-relay is not supported (no TURN relay in the relay)")
        if toward == WEBRTC:
            if opts.dtls == "off":
                raise _CommandError(
                    "DTLS=off cannot be honoured toward a WebRTC peer: DTLS-SRTP is its only "
                    "keying (SDES is not supported)"
                )
            if opts.ice == "remove":
                raise _CommandError(
                    "ICE=remove cannot be honoured toward a WebRTC peer: browsers require ICE"
                )
            if {"demux", "reject"} & opts.rtcp_mux:
                opts.warnings.append("rtcp-mux demux/reject ignored: WebRTC requires rtcp-mux")
        elif opts.ice in ("force", "optional"):
            opts.warnings.append(
                f"ICE={opts.ice} ignored toward plain RTP: that leg uses symmetric RTP latching"
            )

    def _new_call(self, call_id: str, opts: _Options, now: float) -> _Call | dict[str, object]:
        if len(self._calls) >= self.max_calls:
            self.rejected += 1
            if opts.load_limit:
                return {"result": "load limit", "message": "call limit reached"}
            raise _CommandError(f"call limit reached ({self.max_calls})")
        try:
            session = self.backend.open(call_id)
        except PortsExhausted as exc:
            self.rejected += 1
            raise _CommandError(f"no free media ports: {exc}") from None
        ntp = int(now) + NTP_UNIX_OFFSET  # o= session ids are NTP times (RFC 8866 §5.2)
        call = _Call(
            call_id,
            session,
            created=now,
            last_signal=now,
            origins={WEBRTC: _Origin(ntp), PLAIN: _Origin(ntp)},
        )
        self._calls[call_id] = call
        self.managed += 1
        return call

    @staticmethod
    def _set_webrtc(session: NgSession, params: MediaParams, *, default_setup: str) -> None:
        assert params.fingerprint is not None and params.ice_ufrag and params.ice_pwd
        session.set_webrtc_remote(
            ice_ufrag=params.ice_ufrag,
            ice_pwd=params.ice_pwd,
            fingerprint=(params.fingerprint.algorithm, params.fingerprint.value),
            setup=params.setup or default_setup,
            candidates=[
                (c.address, c.port)
                for c in params.candidates
                if c.component == 1 and c.transport.lower() == "udp"
            ],
        )
        session.set_direction("webrtc", params.direction)

    @staticmethod
    def _versioned(
        call: _Call, toward: str, build: Callable[[int, int], SessionDescription]
    ) -> str:
        """Build the SDP for ``toward``; o= version + 1 only when it changed (RFC 3264 §8)."""
        origin = call.origins[toward]
        text = str(build(origin.session_id, origin.version))
        if text != origin.last:
            origin.version += 1
            text = str(build(origin.session_id, origin.version))
            origin.last = text
        return text

    def _drop(self, call: _Call, now: float, reason: str) -> None:
        if self._calls.pop(call.call_id, None) is None:
            return
        self._dtmf_calls.pop(call.call_id, None)
        if self.on_end is not None and call.answered:
            self.on_end(self.summary(call, now, reason))
        self.backend.release(call.session)
        if self.on_release is not None:
            self.on_release(call.call_id)

    @staticmethod
    def summary(call: _Call, now: float, reason: str) -> dict[str, object]:
        """One ended call's media in a flat, JSON-ready form: mode and codecs, duration,
        per-leg packet counts and drops, the transcoders' counters and the RTCP figures the
        bridge collected (loss, jitter, round-trip time, when known)."""
        raw = call.session.stats
        legs: dict[str, object] = {}
        for name in _LEG.values():
            leg = raw.get(name)
            if isinstance(leg, dict):
                drops = leg.get("drops")
                legs[name] = {
                    key: leg[key]
                    for key in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "rtcp")
                    if key in leg
                } | {"dropped": sum(drops.values()) if isinstance(drops, dict) else 0}
        mode = call.mode
        return {
            "call_id": call.call_id,
            "mode": mode.mode if mode is not None else "",
            "codec": mode.codec if mode is not None else "",
            "codec_webrtc": mode.webrtc.name if mode is not None else "",
            "codec_rtp": mode.rtp.name if mode is not None else "",
            "created": round(call.created, 3),
            "ended": round(now, 3),
            "duration": round(max(0.0, now - call.created), 3),
            "ended_by": reason,
            "timed_out_leg": str(raw.get("timed_out") or ""),
            # Counters and the RTCP figures as they are: JSON keeps the floats (ms) and
            # None (not known) that bencode (_plain_value) cannot.
            "legs": legs,
            "transcode": {pipe: t.stats() for pipe, t in call.transcoders.items()},
        }

    def _stats(self, call: _Call) -> dict[str, object]:
        """rtpengine's query layout (tags, medias, streams, totals) plus ``legs``."""
        raw = call.session.stats
        session = call.session
        tags: dict[str, object] = {}
        rtp_total = {"bytes": 0, "packets": 0, "errors": 0}
        rtcp_total = {"bytes": 0, "packets": 0, "errors": 0}
        legs: dict[str, object] = {}
        for side in (WEBRTC, PLAIN):
            leg = raw.get(_LEG[side])
            if not isinstance(leg, dict):
                continue
            legs[_LEG[side]] = leg
            drops = leg.get("drops")
            errors = sum(drops.values()) if isinstance(drops, dict) else 0
            stats = {
                "bytes": int(leg.get("rx_bytes", 0)),
                "packets": int(leg.get("rx_packets", 0)),
                "errors": int(errors),
            }
            for name in ("bytes", "packets", "errors"):
                rtp_total[name] += stats[name]
            rtcp_total["packets"] += int(leg.get("rx_rtcp", 0))
            if side not in call.tags:
                continue
            if side == WEBRTC:
                ports = [session.webrtc.local_port]
                endpoint = _addr(leg.get("ice_selected"))
                flags = ["initialized", "DTLS-SRTP", "ICE", "rtcp-mux"]
                crypto = str(leg.get("srtp_profile") or "")
            else:
                ports = [session.rtp.local_port, session.rtp.local_rtcp_port]
                endpoint = _addr(leg.get("latched") or leg.get("remote"))
                flags = ["initialized"]
                crypto = ""
            streams: list[object] = []
            for i, port in enumerate(ports):
                stream: dict[str, object] = {
                    "local port": port,
                    "flags": ["RTP", "RTCP"] if len(ports) == 1 else [("RTP", "RTCP")[i]],
                    "stats": stats if i == 0 else {"bytes": 0, "packets": 0, "errors": 0},
                }
                if endpoint and i == 0:
                    stream["endpoint"] = endpoint
                if crypto:
                    stream["crypto suite"] = crypto
                streams.append(stream)
            media = {
                "index": 1,
                "type": "audio",
                "protocol": call.protocols.get(side, ""),
                "flags": flags,
                "streams": streams,
            }
            tag = call.tags[side]
            entry: dict[str, object] = {
                "tag": tag,
                "created": int(call.tag_created.get(side, call.created)),
                "medias": [media],
            }
            other = call.tags.get(PLAIN if side == WEBRTC else WEBRTC)
            if other is not None:
                entry["in dialogue with"] = other
            tags[tag] = entry
        reply: dict[str, object] = {
            "result": "ok",
            "created": int(call.created),
            "last signal": int(call.last_signal),
            "tags": tags,
            "totals": {"RTP": rtp_total, "RTCP": rtcp_total},
            "legs": _plain_value(legs),
        }
        if call.mode is not None:
            reply["mode"] = call.mode.mode
            reply["codec"] = call.mode.codec
        if call.transcoders:
            reply["transcode"] = {pipe: t.stats() for pipe, t in call.transcoders.items()}
        if raw.get("timed_out"):
            reply["timed out"] = str(raw["timed_out"])
        return reply
