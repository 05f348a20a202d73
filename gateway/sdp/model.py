"""Session descriptions: parse from text, serialise to text (RFC 8866).

:func:`parse` reads one whole SDP body (``str`` or UTF-8 ``bytes``) into a
:class:`SessionDescription`; ``str(sdp)`` writes it back with CRLF line ends. Every
field is kept as written, attributes in their order with unknown ones preserved, so
``str(parse(x)) == x`` for any CRLF input whose lines are in the RFC 8866 §5 order
(which every stack we have seen emits). LF-only line ends are accepted (RFC 8866 §5
"SHOULD also accept"), trailing empty lines are ignored.

Parsing is structural: the line grammar, the version, the o=/c=/b=/t=/m= fields and the
limits below are checked here and raise :class:`~gateway.sdp.errors.SdpError`. Attribute
values are only split into name and value; the typed helpers (``rtpmap()``,
``candidates()``, ``fingerprints()``...) check their own syntax when called, so an
attribute the gateway never reads cannot fail a call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.sdp.errors import SdpError

__all__ = [
    "DIRECTIONS",
    "MAX_LINE_LENGTH",
    "MAX_MEDIA",
    "MAX_SDP_SIZE",
    "Attribute",
    "Bandwidth",
    "Candidate",
    "Connection",
    "ExtMap",
    "Fingerprint",
    "MediaDescription",
    "Origin",
    "Rtcp",
    "RtpMap",
    "SessionDescription",
    "Timing",
    "is_rtp_proto",
    "parse",
]

#: Largest SDP body parse() accepts, in bytes of UTF-8 (a SIP message over UDP cannot
#: carry more, RFC 3261 §18.1.1).
MAX_SDP_SIZE = 65536
#: Most m= lines in one description (a browser call has one to three).
MAX_MEDIA = 64
#: Longest single line, in characters (a sha-512 fingerprint line is ~210).
MAX_LINE_LENGTH = 4096
#: RTP payload types are 7 bits (RFC 3550 §5.1).
MAX_PAYLOAD_TYPE = 127
#: The four direction attributes (RFC 8866 §6.7); absent means sendrecv.
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
#: a=setup values (RFC 4145 §4).
SETUP_ROLES = ("actpass", "active", "passive", "holdconn")

# Line types allowed at session level and in a media section (RFC 8866 §5).
_SESSION_TYPES = frozenset("vosiuepcbtrzkam")
_MEDIA_TYPES = frozenset("icbka")
# Session-level lines that may appear only once.
_SESSION_SINGLE = frozenset("vosiuczk")


def is_rtp_proto(proto: str) -> bool:
    """True for RTP transport protocols, whose formats are payload types (RFC 8866 §5.14)."""
    return "RTP/" in proto.upper()


@dataclass(frozen=True)
class Origin:
    """The o= line (RFC 8866 §5.2); fields kept as written."""

    username: str
    session_id: str
    session_version: str
    nettype: str
    addrtype: str
    address: str

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(frozen=True)
class Connection:
    """A c= line (RFC 8866 §5.7); ``address`` may carry a multicast /ttl/count suffix."""

    nettype: str
    addrtype: str
    address: str

    @classmethod
    def for_address(cls, address: str) -> Connection:
        """``IN IP4 address`` or ``IN IP6 address`` depending on the address form."""
        return cls("IN", "IP6" if ":" in address else "IP4", address)

    @property
    def host(self) -> str:
        """The address without a multicast /ttl or /count suffix."""
        return self.address.split("/", 1)[0]

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@dataclass(frozen=True)
class Bandwidth:
    """A b= line (RFC 8866 §5.8)."""

    bwtype: str
    bandwidth: int

    def __str__(self) -> str:
        return f"{self.bwtype}:{self.bandwidth}"


@dataclass
class Timing:
    """A t= line and the r= lines after it (RFC 8866 §5.9, §5.10); r= kept as text."""

    start: int = 0
    stop: int = 0
    repeats: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Attribute:
    """An a= line: ``a=name`` (value None) or ``a=name:value`` (RFC 8866 §5.13)."""

    name: str
    value: str | None = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"


@dataclass(frozen=True)
class RtpMap:
    """An a=rtpmap value (RFC 8866 §6.6); ``channels`` is None when not written."""

    pt: int
    encoding: str
    clock: int
    channels: int | None = None


@dataclass(frozen=True)
class Fingerprint:
    """An a=fingerprint value (RFC 8122 §5): hash function (lower case) and hex value."""

    algorithm: str
    value: str


@dataclass(frozen=True)
class Rtcp:
    """An a=rtcp value (RFC 3605): RTCP port and, when given, its address."""

    port: int
    connection: Connection | None = None


@dataclass(frozen=True)
class ExtMap:
    """An a=extmap value (RFC 8285 §7): id, optional direction suffix, URI, attributes."""

    id: int
    direction: str | None
    uri: str
    attributes: str | None = None


@dataclass(frozen=True)
class Candidate:
    """An a=candidate value (RFC 8839 §5.1)."""

    foundation: str
    component: int
    transport: str
    priority: int
    address: str
    port: int
    typ: str
    related_address: str | None = None
    related_port: int | None = None
    extensions: tuple[tuple[str, str], ...] = ()

    @property
    def is_mdns(self) -> bool:
        """True for a host candidate hidden behind an mDNS ``<uuid>.local`` name."""
        return self.address.lower().rstrip(".").endswith(".local")

    @classmethod
    def parse(cls, value: str) -> Candidate:
        """Parse the value of an a=candidate line; SdpError when it is malformed."""
        parts = value.split()
        bad = SdpError(f"bad a=candidate value '{value}'")
        if len(parts) < 8 or parts[6] != "typ" or len(parts) % 2:
            raise bad
        try:
            component = int(parts[1])
            priority = int(parts[3])
            port = int(parts[5])
        except ValueError:
            raise bad from None
        if not 1 <= component <= 256 or not 0 <= port <= 65535 or priority < 0:
            raise bad
        related_address: str | None = None
        related_port: int | None = None
        extensions: list[tuple[str, str]] = []
        for key, val in zip(parts[8::2], parts[9::2], strict=True):
            if key == "raddr":
                related_address = val
            elif key == "rport":
                if not val.isdigit():
                    raise bad
                related_port = int(val)
            else:
                extensions.append((key, val))
        return cls(
            foundation=parts[0],
            component=component,
            transport=parts[2],
            priority=priority,
            address=parts[4],
            port=port,
            typ=parts[7],
            related_address=related_address,
            related_port=related_port,
            extensions=tuple(extensions),
        )

    def __str__(self) -> str:
        text = (
            f"{self.foundation} {self.component} {self.transport} {self.priority} "
            f"{self.address} {self.port} typ {self.typ}"
        )
        if self.related_address is not None:
            text += f" raddr {self.related_address}"
        if self.related_port is not None:
            text += f" rport {self.related_port}"
        for key, val in self.extensions:
            text += f" {key} {val}"
        return text


class _AttributeList:
    """Accessors over an ordered ``attributes`` list; names compare case-insensitively."""

    attributes: list[Attribute]

    def has_attribute(self, name: str) -> bool:
        """True when an a=name line is present."""
        key = name.lower()
        return any(a.name.lower() == key for a in self.attributes)

    def attribute(self, name: str) -> str | None:
        """Value of the first a=name line ("" for a flag), None when absent."""
        key = name.lower()
        for a in self.attributes:
            if a.name.lower() == key:
                return "" if a.value is None else a.value
        return None

    def attribute_values(self, name: str) -> list[str]:
        """Values of every a=name line in order ("" for a flag)."""
        key = name.lower()
        return [
            "" if a.value is None else a.value for a in self.attributes if a.name.lower() == key
        ]

    def add_attribute(self, name: str, value: str | None = None) -> None:
        """Append an a= line."""
        self.attributes.append(Attribute(name, value))

    def remove_attributes(self, *names: str) -> None:
        """Drop every a= line whose name is one of ``names``."""
        keys = {n.lower() for n in names}
        self.attributes = [a for a in self.attributes if a.name.lower() not in keys]

    @property
    def own_direction(self) -> str | None:
        """The direction attribute written at this level, or None."""
        for a in self.attributes:
            if a.name.lower() in DIRECTIONS:
                return a.name.lower()
        return None

    def _fingerprints(self) -> list[Fingerprint]:
        result = []
        for value in self.attribute_values("fingerprint"):
            parts = value.split()
            if len(parts) != 2:
                raise SdpError(f"bad a=fingerprint value '{value}'")
            result.append(Fingerprint(parts[0].lower(), parts[1]))
        return result


def _int_value(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit():
        raise SdpError(f"bad a={name} value '{value}'")
    return int(text)


@dataclass
class MediaDescription(_AttributeList):
    """One media section: the m= line and the lines after it (RFC 8866 §5.14)."""

    kind: str
    port: int
    proto: str
    formats: list[str]
    port_count: int | None = None
    information: str | None = None
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = field(default_factory=list)
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)

    @property
    def is_rejected(self) -> bool:
        """A port of zero: the stream is declined or disabled (RFC 3264 §5.1, §6)."""
        return self.port == 0

    @property
    def payload_types(self) -> list[int]:
        """The formats as payload types (RTP protos only; empty otherwise)."""
        return [int(f) for f in self.formats] if is_rtp_proto(self.proto) else []

    def _per_pt(self, name: str) -> list[tuple[str, str]]:
        result = []
        for value in self.attribute_values(name):
            pt, _, rest = value.partition(" ")
            result.append((pt, rest.strip()))
        return result

    def rtpmap(self, pt: int) -> RtpMap | None:
        """The a=rtpmap of payload type ``pt`` (RFC 8866 §6.6), None when absent."""
        for key, rest in self._per_pt("rtpmap"):
            if key == str(pt):
                parts = rest.split("/")
                if (
                    len(parts) not in (2, 3)
                    or not parts[0]
                    or not all(p.isdigit() for p in parts[1:])
                ):
                    raise SdpError(f"bad a=rtpmap value '{pt} {rest}'")
                channels = int(parts[2]) if len(parts) == 3 else None
                return RtpMap(pt, parts[0], int(parts[1]), channels)
        return None

    def fmtp(self, pt: int) -> str | None:
        """The parameters of a=fmtp for payload type ``pt`` (RFC 8866 §6.15)."""
        for key, rest in self._per_pt("fmtp"):
            if key == str(pt):
                return rest
        return None

    def rtcp_fb(self, pt: int) -> list[str]:
        """a=rtcp-fb values for ``pt`` and for the wildcard ``*`` (RFC 4585 §4.2)."""
        return [rest for key, rest in self._per_pt("rtcp-fb") if key in (str(pt), "*")]

    @property
    def mid(self) -> str | None:
        """a=mid (RFC 5888 §4)."""
        return self.attribute("mid")

    @property
    def rtcp_mux(self) -> bool:
        """a=rtcp-mux present (RFC 5761 §5.1.1)."""
        return self.has_attribute("rtcp-mux")

    @property
    def rtcp(self) -> Rtcp | None:
        """a=rtcp port and optional address (RFC 3605 §2.1)."""
        value = self.attribute("rtcp")
        if value is None:
            return None
        parts = value.split()
        if len(parts) not in (1, 4) or not parts[0].isdigit() or int(parts[0]) > 65535:
            raise SdpError(f"bad a=rtcp value '{value}'")
        conn = Connection(parts[1], parts[2], parts[3]) if len(parts) == 4 else None
        return Rtcp(int(parts[0]), conn)

    @property
    def ptime(self) -> int | None:
        """a=ptime in milliseconds (RFC 8866 §6.4); a fractional value is rounded down."""
        value = self.attribute("ptime")
        return _int_value("ptime", value.split(".", 1)[0] if value else value)

    @property
    def maxptime(self) -> int | None:
        """a=maxptime in milliseconds (RFC 8866 §6.5)."""
        return _int_value("maxptime", self.attribute("maxptime"))

    def candidates(self) -> list[Candidate]:
        """Every a=candidate (RFC 8839 §5.1), in order."""
        return [Candidate.parse(v) for v in self.attribute_values("candidate")]

    def extmaps(self) -> list[ExtMap]:
        """Every a=extmap (RFC 8285 §7), with the ``/direction`` suffix split off."""
        result = []
        for value in self.attribute_values("extmap"):
            parts = value.split(None, 2)
            ident, _, direction = parts[0].partition("/") if parts else ("", "", "")
            if len(parts) < 2 or not ident.isdigit() or (direction and direction not in DIRECTIONS):
                raise SdpError(f"bad a=extmap value '{value}'")
            attrs = parts[2] if len(parts) == 3 else None
            result.append(ExtMap(int(ident), direction or None, parts[1], attrs))
        return result

    def lines(self) -> list[str]:
        """The section's lines, without line ends, in RFC 8866 §5 order."""
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        out = [f"m={self.kind} {port} {self.proto} {' '.join(self.formats)}"]
        if self.information is not None:
            out.append(f"i={self.information}")
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out.extend(f"b={b}" for b in self.bandwidths)
        if self.key is not None:
            out.append(f"k={self.key}")
        out.extend(f"a={a}" for a in self.attributes)
        return out


@dataclass
class SessionDescription(_AttributeList):
    """A whole session description (RFC 8866 §5); ``str()`` serialises it with CRLF."""

    origin: Origin
    session_name: str = "-"
    version: int = 0
    information: str | None = None
    uri: str | None = None
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = field(default_factory=list)
    timing: list[Timing] = field(default_factory=list)
    zone: str | None = None
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)

    # Helpers for values that may sit at media or session level: the media level wins
    # (RFC 8866 §5: media-level lines override session-level ones).

    def direction(self, media: MediaDescription) -> str:
        """Effective direction of ``media``: media level, then session level, then
        sendrecv (RFC 8866 §6.7)."""
        return media.own_direction or self.own_direction or "sendrecv"

    def connection_for(self, media: MediaDescription) -> Connection | None:
        """Effective c= of ``media`` (RFC 8866 §5.7)."""
        return media.connection or self.connection

    def media_attribute(self, media: MediaDescription, name: str) -> str | None:
        """First a=name of ``media``, falling back to the session level."""
        value = media.attribute(name)
        return self.attribute(name) if value is None else value

    def ice_ufrag(self, media: MediaDescription) -> str | None:
        """a=ice-ufrag (RFC 8839 §5.4), media level first."""
        return self.media_attribute(media, "ice-ufrag")

    def ice_pwd(self, media: MediaDescription) -> str | None:
        """a=ice-pwd (RFC 8839 §5.4), media level first."""
        return self.media_attribute(media, "ice-pwd")

    @property
    def ice_lite(self) -> bool:
        """a=ice-lite at session level (RFC 8839 §5.3)."""
        return self.has_attribute("ice-lite")

    def fingerprints(self, media: MediaDescription) -> list[Fingerprint]:
        """a=fingerprint lines of ``media``, or the session's when it has none (RFC 8122 §5)."""
        return media._fingerprints() or self._fingerprints()

    def setup(self, media: MediaDescription) -> str | None:
        """a=setup (RFC 4145 §4), media level first; SdpError for an unknown role."""
        value = self.media_attribute(media, "setup")
        if value is not None and value.strip().lower() not in SETUP_ROLES:
            raise SdpError(f"bad a=setup value '{value}'")
        return None if value is None else value.strip().lower()

    def lines(self) -> list[str]:
        """Every line, without line ends, in RFC 8866 §5 order."""
        out = [f"v={self.version}", f"o={self.origin}", f"s={self.session_name}"]
        if self.information is not None:
            out.append(f"i={self.information}")
        if self.uri is not None:
            out.append(f"u={self.uri}")
        out.extend(f"e={e}" for e in self.emails)
        out.extend(f"p={p}" for p in self.phones)
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out.extend(f"b={b}" for b in self.bandwidths)
        for t in self.timing:
            out.append(f"t={t.start} {t.stop}")
            out.extend(f"r={r}" for r in t.repeats)
        if self.zone is not None:
            out.append(f"z={self.zone}")
        if self.key is not None:
            out.append(f"k={self.key}")
        out.extend(f"a={a}" for a in self.attributes)
        for m in self.media:
            out.extend(m.lines())
        return out

    def __str__(self) -> str:
        return "".join(line + "\r\n" for line in self.lines())


# --- parsing -------------------------------------------------------------------------


def _parse_connection(value: str, lineno: int) -> Connection:
    parts = value.split()
    if len(parts) != 3 or " ".join(parts) != value:
        raise SdpError(f"line {lineno}: bad c= line")
    return Connection(parts[0], parts[1], parts[2])


def _parse_bandwidth(value: str, lineno: int) -> Bandwidth:
    bwtype, sep, amount = value.partition(":")
    if not sep or not bwtype or not amount.isdigit():
        raise SdpError(f"line {lineno}: bad b= line")
    return Bandwidth(bwtype, int(amount))


def _parse_origin(value: str, lineno: int) -> Origin:
    parts = value.split(" ")
    if len(parts) != 6 or not all(parts):
        raise SdpError(f"line {lineno}: bad o= line")
    return Origin(*parts)


def _parse_timing(value: str, lineno: int) -> Timing:
    parts = value.split(" ")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise SdpError(f"line {lineno}: bad t= line")
    return Timing(int(parts[0]), int(parts[1]))


def _parse_attribute(value: str, lineno: int) -> Attribute:
    name, sep, rest = value.partition(":")
    if not name or any(c.isspace() for c in name):
        raise SdpError(f"line {lineno}: bad a= line")
    return Attribute(name, rest if sep else None)


def _parse_media(value: str, lineno: int) -> MediaDescription:
    parts = value.split(" ")
    if len(parts) < 4 or not all(parts):
        raise SdpError(f"line {lineno}: bad m= line")
    kind, port_text, proto, formats = parts[0], parts[1], parts[2], parts[3:]
    port_str, slash, count_str = port_text.partition("/")
    if (
        not port_str.isdigit()
        or int(port_str) > 65535
        or (slash and (not count_str.isdigit() or int(count_str) < 1))
    ):
        raise SdpError(f"line {lineno}: bad port in m= line: '{port_text}'")
    if is_rtp_proto(proto):
        for fmt in formats:
            if not fmt.isdigit():
                raise SdpError(f"line {lineno}: non-numeric payload type '{fmt}' in m= line")
            if int(fmt) > MAX_PAYLOAD_TYPE:
                raise SdpError(f"line {lineno}: payload type {fmt} out of range in m= line")
    return MediaDescription(
        kind=kind,
        port=int(port_str),
        port_count=int(count_str) if slash else None,
        proto=proto,
        formats=formats,
    )


def _split_lines(text: str) -> list[str]:
    lines = text.split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    while lines and lines[-1] == "":
        lines.pop()
    return lines


def parse(data: str | bytes) -> SessionDescription:
    """Parse an SDP body; SdpError (with a reason fit for a Warning header) when bad."""
    if isinstance(data, bytes):
        if len(data) > MAX_SDP_SIZE:
            raise SdpError(f"SDP too large: {len(data)} bytes (limit {MAX_SDP_SIZE})")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SdpError("SDP is not valid UTF-8") from None
    else:
        text = data
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_SDP_SIZE:
            raise SdpError(f"SDP too large: {size} bytes (limit {MAX_SDP_SIZE})")
    lines = _split_lines(text)
    if not lines:
        raise SdpError("SDP is empty")
    if not lines[0].startswith("v="):
        raise SdpError("missing v= line")
    if lines[0] != "v=0":
        raise SdpError(f"line 1: unsupported SDP version '{lines[0][2:]}'")

    origin: Origin | None = None
    session_name: str | None = None
    sdp_fields: dict[str, str] = {}
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = []
    timing: list[Timing] = []
    emails: list[str] = []
    phones: list[str] = []
    attributes: list[Attribute] = []
    media: list[MediaDescription] = []
    seen: set[str] = set()
    current: MediaDescription | None = None

    for lineno, line in enumerate(lines, start=1):
        if len(line) > MAX_LINE_LENGTH:
            raise SdpError(
                f"line {lineno}: too long ({len(line)} characters, limit {MAX_LINE_LENGTH})"
            )
        if line == "":
            raise SdpError(f"line {lineno}: empty line")
        if any(ord(c) < 0x20 and c != "\t" for c in line):
            raise SdpError(f"line {lineno}: control character in line")
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"line {lineno}: not a 'x=value' line")
        kind, value = line[0], line[2:]
        if kind not in _SESSION_TYPES:
            raise SdpError(f"line {lineno}: unknown line type '{kind}'")

        if kind == "m":
            if len(media) >= MAX_MEDIA:
                raise SdpError(f"too many m= lines (limit {MAX_MEDIA})")
            current = _parse_media(value, lineno)
            media.append(current)
            continue

        if current is not None:
            # Inside a media section (RFC 8866 §5: i= c= b= k= a= only).
            if kind not in _MEDIA_TYPES:
                raise SdpError(f"line {lineno}: '{kind}=' line not allowed in a media section")
            if kind == "a":
                current.attributes.append(_parse_attribute(value, lineno))
            elif kind == "c":
                if current.connection is not None:
                    raise SdpError(f"line {lineno}: more than one c= line in media section")
                current.connection = _parse_connection(value, lineno)
            elif kind == "b":
                current.bandwidths.append(_parse_bandwidth(value, lineno))
            else:  # i= or k=
                if (current.information if kind == "i" else current.key) is not None:
                    raise SdpError(f"line {lineno}: duplicate '{kind}=' line")
                if kind == "i":
                    current.information = value
                else:
                    current.key = value
            continue

        # Session level.
        if kind in _SESSION_SINGLE:
            if kind in seen:
                raise SdpError(f"line {lineno}: duplicate '{kind}=' line")
            seen.add(kind)
        if kind == "a":
            attributes.append(_parse_attribute(value, lineno))
        elif kind == "o":
            origin = _parse_origin(value, lineno)
        elif kind == "s":
            session_name = value
        elif kind == "c":
            connection = _parse_connection(value, lineno)
        elif kind == "b":
            bandwidths.append(_parse_bandwidth(value, lineno))
        elif kind == "t":
            timing.append(_parse_timing(value, lineno))
        elif kind == "r":
            if not timing:
                raise SdpError(f"line {lineno}: r= line without t= line")
            timing[-1].repeats.append(value)
        elif kind == "e":
            emails.append(value)
        elif kind == "p":
            phones.append(value)
        elif kind in "iuzk":
            sdp_fields[kind] = value

    if origin is None:
        raise SdpError("missing o= line")
    if session_name is None:
        raise SdpError("missing s= line")
    return SessionDescription(
        version=0,
        origin=origin,
        session_name=session_name,
        information=sdp_fields.get("i"),
        uri=sdp_fields.get("u"),
        emails=emails,
        phones=phones,
        connection=connection,
        bandwidths=bandwidths,
        timing=timing,
        zone=sdp_fields.get("z"),
        key=sdp_fields.get("k"),
        attributes=attributes,
        media=media,
    )
