"""Gateway configuration: one TOML file, environment overrides, validation at start-up.

The file has one table per dataclass below (``[listen]``, ``[tls]``, ``[upstream]``,
``[sip]``, ``[security]``, ``[websocket]``, ``[media]``, ``[codecs]``, ``[metrics]``, ``[log]``,
``[general]``);
``config/gateway.toml`` documents every key.  Any key can be overridden from the
environment as ``GATEWAY_<TABLE>_<KEY>`` (``GATEWAY_UPSTREAM_SERVERS``,
``GATEWAY_LISTEN_SIP_TLS``), typed by the field: booleans take true/false/1/0/yes/no,
lists are comma-separated.  Variables whose table is unknown are ignored (the CGI
``GATEWAY_INTERFACE`` is not ours); an unknown key in a known table is an error.

Everything is checked once, by :func:`load_config`, and every problem found is
reported together in one :class:`ConfigError` whose lines name the key, the bad
value and what is expected.  Unknown tables and keys are errors with a "did you
mean" suggestion: a typo must never pass silently.  Stdlib only.

Relative paths (``tls.cert``, ``tls.key``, ``general.state_dir``) are relative to
the working directory of the process.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar, get_type_hints

__all__ = [
    "ENV_PREFIX",
    "CodecsConfig",
    "Config",
    "ConfigError",
    "GeneralConfig",
    "ListenConfig",
    "LogConfig",
    "MediaConfig",
    "MetricsConfig",
    "SecurityConfig",
    "SipConfig",
    "TlsConfig",
    "UpstreamConfig",
    "UpstreamServer",
    "WebSocketConfig",
    "config_from_dict",
    "config_warnings",
    "load_config",
    "parse_hostport",
    "parse_upstream_servers",
]

#: Prefix of the environment variables that override keys: GATEWAY_<TABLE>_<KEY>.
ENV_PREFIX: Final = "GATEWAY_"

#: Bounds of ``listen.max_message_size`` in bytes.
MIN_MESSAGE_SIZE: Final = 1024
MAX_MESSAGE_SIZE: Final = 1_048_576
#: Bounds of ``upstream.udp_mtu`` in bytes: the IPv4 minimum reassembly size up to
#: the largest UDP payload over IPv4.
MIN_UDP_MTU: Final = 576
MAX_UDP_MTU: Final = 65_507
#: Shortest ``upstream.probe_interval`` other than 0 (off), in seconds.
MIN_PROBE_INTERVAL: Final = 0.5
#: Shortest non-empty ``security.flow_token_secret``, in characters.
MIN_SECRET_LENGTH: Final = 32
#: Bounds of ``media.port_range`` (no privileged ports).
MIN_MEDIA_PORT: Final = 1024
MAX_MEDIA_PORT: Final = 65535
#: Fewest ports each media worker (or the in-process engine) must get: two calls, each a
#: WebRTC port and an RTP/RTCP pair.
MIN_MEDIA_PORTS: Final = 8
#: Most media worker processes.
MAX_MEDIA_WORKERS: Final = 1024

#: Codec names ``codecs.switch`` may list (the narrowband side of every transcoding pair).
SWITCH_CODECS: Final = ("PCMU", "PCMA", "G729")
#: Codec names ``codecs.browser`` may list (what WebRTC browsers implement, RFC 7874 §3).
BROWSER_CODECS: Final = ("opus", "PCMU", "PCMA")
#: Bounds of ``codecs.opus_complexity`` (libopus OPUS_SET_COMPLEXITY).
MAX_OPUS_COMPLEXITY: Final = 10
#: Bounds of a nonzero ``codecs.opus_bitrate`` in bit/s (RFC 7587 §6.1).
MIN_OPUS_BITRATE: Final = 6000
MAX_OPUS_BITRATE: Final = 510000

TRANSPORTS: Final = ("udp", "tcp", "tls")
MODES: Final = ("path", "contact-rewrite")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
TLS_VERSIONS: Final = ("1.2", "1.3")
#: Host of the WebSocket-side Record-Route entry when listen.advertised_ws_host is empty
#: (RFC 7118 §5.2: browsers never resolve it, the flow token finds the connection).
DEFAULT_WS_HOST: Final = "gateway.invalid"

_UNSPECIFIED_HOSTS: Final = frozenset({"0.0.0.0", "::"})
_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})
_HOSTPORT_EXAMPLE: Final = "expected host:port, e.g. '127.0.0.1:5060' or '[::1]:5060'"
_URI_FORM: Final = "expected sip:host[:port][;transport=udp|tcp|tls]"
_LABEL: Final = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME_RE: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")
_ORIGIN_RE: Final = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://"
    r"(?P<host>\[[0-9a-f:.]+\]|[^/:?#\[\]]+)"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
_DEFAULT_PORTS: Final = {"http": "80", "https": "443"}


class ConfigError(Exception):
    """The configuration is unusable.

    ``str()`` is one line per problem, each naming the key (or the environment
    variable), the bad value and what is expected, e.g.
    ``upstream.servers: 'sip:x;transport=sctp' has an unknown transport 'sctp';
    expected udp, tcp or tls``.  ``messages`` holds the lines.
    """

    def __init__(self, *messages: str) -> None:
        super().__init__("\n".join(messages))
        self.messages: tuple[str, ...] = messages


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True, kw_only=True)
class ListenConfig:
    """``[listen]``: where the gateway listens and the hosts it advertises."""

    wss: str = "0.0.0.0:8443"
    """host:port of the TLS WebSocket listener webphones connect to (RFC 7118); "" disables."""
    ws: str = ""
    """host:port of a plain WebSocket listener, for use behind a TLS-terminating load
    balancer; "" disables."""
    sip: str = "0.0.0.0:5062"
    """host:port of the switch-facing UDP and TCP listener."""
    sip_tls: str = ""
    """host:port of the switch-facing TLS listener; "" disables."""
    advertised_sip_host: str = ""
    """Host (name or IP) put in Via/Record-Route/Path toward the switch.  Loading fills it
    with the listen.sip host when empty (an error when that is 0.0.0.0 or ::)."""
    advertised_ws_host: str = ""
    """Host of the WebSocket-side Record-Route entry.  Loading fills it with
    ``gateway.invalid`` when empty."""
    max_message_size: int = 65535
    """Largest SIP message accepted on any transport, in bytes (1024..1048576)."""


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    """``[tls]``: the certificate of the WSS and SIP-TLS listeners, and upstream TLS."""

    cert: str = ""
    """PEM certificate chain (full chain) path; "" with key "": a self-signed pair is
    generated in general.state_dir."""
    key: str = ""
    """PEM private key path (unencrypted); set together with cert."""
    min_version: str = "1.2"
    """Lowest TLS version accepted: "1.2" or "1.3"."""
    verify_upstream: bool = True
    """Verify the switch's certificate on TLS connections upstream."""


@dataclass(frozen=True, kw_only=True)
class UpstreamServer:
    """One entry of ``upstream.servers``: a switch address from a SIP URI."""

    host: str
    """Host name or IP literal (IPv6 without brackets)."""
    port: int | None
    """Port from the URI, or None: the transport's default (RFC 3263 §4.2)."""
    transport: str
    """``udp``, ``tcp`` or ``tls``; without a transport parameter, sip: means udp and
    sips: means tls."""
    uri: str
    """The URI as written, for logs and metric labels."""


@dataclass(frozen=True, kw_only=True)
class UpstreamConfig:
    """``[upstream]``: the SIP switch pool."""

    servers: tuple[UpstreamServer, ...]
    """Switches in failover order (required): comma-separated SIP URIs in the file."""
    mode: str = "path"
    """``path`` (RFC 3327 Path on REGISTER) or ``contact-rewrite`` (for switches without
    Path support)."""
    probe_interval: float = 10.0
    """Seconds between OPTIONS health probes per server; 0 disables probing."""
    tcp_fallback: bool = True
    """Send a UDP-bound request over TCP when it exceeds udp_mtu (RFC 3261 §18.1.1)."""
    udp_mtu: int = 1300
    """Largest request sent over UDP before tcp_fallback applies, in bytes."""


@dataclass(frozen=True, kw_only=True)
class SipConfig:
    """``[sip]``: SIP protocol settings."""

    t1: float = 0.5
    """RFC 3261 T1, the round-trip time estimate, in seconds (> 0, < t2)."""
    t2: float = 4.0
    """RFC 3261 T2, the longest non-INVITE retransmit interval, in seconds."""
    t4: float = 5.0
    """RFC 3261 T4, the longest time a message stays in the network, in seconds."""
    user_agent: str = "webrtc-sip-gateway"
    """Value of the User-Agent/Server header on requests and responses the gateway makes."""


@dataclass(frozen=True, kw_only=True)
class SecurityConfig:
    """``[security]``: secrets, allow-lists and per-IP limits."""

    flow_token_secret: str = ""
    """HMAC key of the flow tokens (at least 32 characters); "" picks a random key per
    process, so a restart invalidates the Path of every registration."""
    allowed_origins: tuple[str, ...] = ()
    """WebSocket Origin values allowed to connect; empty: any origin."""
    max_connections_per_ip: int = 100
    """Open WebSocket connections allowed from one IP address."""
    max_requests_per_second_per_ip: float = 50.0
    """Token-bucket rate of SIP requests per IP address; the burst is twice the rate."""
    max_calls: int = 1000
    """Concurrent INVITE dialogs; past it new INVITEs are answered 503."""


@dataclass(frozen=True, kw_only=True)
class WebSocketConfig:
    """``[websocket]``: connection keep-alive."""

    ping_interval: float = 20.0
    """Seconds between WebSocket pings; 0 disables them."""
    idle_timeout: float = 120.0
    """Close a connection without traffic for this many seconds; 0 never closes."""


@dataclass(frozen=True, kw_only=True)
class MediaConfig:
    """``[media]``: the media relay and its NG (rtpengine protocol) control socket."""

    enabled: bool = False
    """Anchor call media on the gateway (WebRTC <-> plain RTP)."""
    port_range: str = "40000-49999"
    """UDP ports for media, ``LOW-HIGH`` inclusive; split evenly between workers."""
    public_ip: str = ""
    """IP address written into SDP (browsers and the switch send media there); required
    when enabled."""
    bind_ip: str = "0.0.0.0"
    """IP address media sockets bind to."""
    control: str = "127.0.0.1:22222"
    """host:port of the NG control socket (rtpengine's protocol and default port)."""
    control_allow_remote: bool = False
    """Allow media.control on a non-loopback address (the NG protocol has no auth)."""
    workers: int = -1
    """0: media in the main process; N: N worker processes; -1: one per CPU core."""
    timeout: float = 60.0
    """Seconds without RTP from a peer meant to send before the call is ended."""
    dtmf_info_to_rfc4733: bool = False
    """Answer a browser's DTMF SIP INFO (application/dtmf-relay, application/dtmf) at the
    gateway and send the digit as RFC 4733 telephone-events in the RTP toward the switch;
    relayed as INFO when the switch leg has no telephone-event/8000."""
    dtmf_rfc4733_to_info: bool = False
    """When the switch offers or answers without telephone-event, give the browser one
    anyway and send each digit it plays to the switch as SIP INFO (application/dtmf-relay)
    in the browser's name."""

    @property
    def ports(self) -> tuple[int, int]:
        """``port_range`` as (low, high)."""
        low, _, high = self.port_range.partition("-")
        return int(low), int(high)


@dataclass(frozen=True, kw_only=True)
class CodecsConfig:
    """``[codecs]``: codec policy of anchored calls (passthrough or transcoding)."""

    switch: tuple[str, ...] = ("PCMU", "PCMA", "G729")
    """Codecs added to an offer toward the switch, in priority order, when the browser
    lacks them (so a G.711-only switch can answer an Opus-only browser). G729 is used only
    when the system libbcg729 loads. Names from PCMU, PCMA, G729."""
    browser: tuple[str, ...] = ("opus", "PCMU", "PCMA")
    """Codecs added to an offer toward the browser, in priority order, when the switch
    lacks them. Names from opus, PCMU, PCMA."""
    strip: tuple[str, ...] = ()
    """Regular expressions (full, case-insensitive match of the encoding name) removing
    codecs from the browser's offer before it goes to the switch ("Codec Delete"). opus
    cannot be stripped."""
    opus_complexity: int = 5
    """libopus encoder complexity, 0 (cheapest) to 10, for audio sent to browsers."""
    opus_bitrate: int = 0
    """Bit/s of transcoded Opus sent to browsers, 6000-510000; 0 lets libopus choose
    (20000 with in-band FEC). A browser's fmtp ``maxaveragebitrate`` caps it."""
    transcode: bool = True
    """false: offer only the offerer's codecs; no shared codec means the call fails (488)."""


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """``[metrics]``: the internal Prometheus listener."""

    listen: str = "127.0.0.1:9100"
    """host:port serving /metrics, /healthz and /readyz; "" disables."""


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    """``[log]``: logging."""

    level: str = "info"
    """debug, info, warning or error."""
    sip_trace: bool = False
    """Log every SIP message in and out (a debugging aid: it logs user data)."""


@dataclass(frozen=True, kw_only=True)
class GeneralConfig:
    """``[general]``: process-wide settings."""

    state_dir: Path = Path("./run")
    """Directory of generated certificates and runtime files (created when missing)."""
    drain_timeout: float = 30.0
    """On SIGTERM, seconds calls get to finish before the process exits."""


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole configuration: one attribute per TOML table."""

    listen: ListenConfig = field(default_factory=ListenConfig)
    """``[listen]``."""
    tls: TlsConfig = field(default_factory=TlsConfig)
    """``[tls]``."""
    upstream: UpstreamConfig
    """``[upstream]`` (servers is required)."""
    sip: SipConfig = field(default_factory=SipConfig)
    """``[sip]``."""
    security: SecurityConfig = field(default_factory=SecurityConfig)
    """``[security]``."""
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    """``[websocket]``."""
    media: MediaConfig = field(default_factory=MediaConfig)
    """``[media]``."""
    codecs: CodecsConfig = field(default_factory=CodecsConfig)
    """``[codecs]``."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """``[metrics]``."""
    log: LogConfig = field(default_factory=LogConfig)
    """``[log]``."""
    general: GeneralConfig = field(default_factory=GeneralConfig)
    """``[general]``."""


#: Table name -> dataclass, in the order of the file.
_TABLES: Final[dict[str, type[Any]]] = {
    "listen": ListenConfig,
    "tls": TlsConfig,
    "upstream": UpstreamConfig,
    "sip": SipConfig,
    "security": SecurityConfig,
    "websocket": WebSocketConfig,
    "media": MediaConfig,
    "codecs": CodecsConfig,
    "metrics": MetricsConfig,
    "log": LogConfig,
    "general": GeneralConfig,
}


def _kind_of(annotation: object) -> str:
    """How a field is written in TOML: str, int, float, bool, list or servers."""
    if annotation in (str, Path):
        return "str"
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    if annotation == tuple[str, ...]:
        return "list"
    if annotation == tuple[UpstreamServer, ...]:
        return "servers"
    raise TypeError(f"no TOML kind for {annotation!r}")  # a programming error


#: Table -> key -> kind, derived from the dataclasses (the one source of truth).
_SCHEMA: Final[dict[str, dict[str, str]]] = {
    table: {name: _kind_of(hint) for name, hint in get_type_hints(cls).items()}
    for table, cls in _TABLES.items()
}


# --------------------------------------------------------------------------- helpers


def _show(value: object) -> str:
    """A value as the error message shows it: strings quoted, booleans as in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


def _a(value: object) -> str:
    """What kind of TOML value ``value`` is, with its article."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def _is_host(text: str) -> bool:
    """A host name (RFC 1123 labels, '_' tolerated) or an IP literal (no brackets)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return True
    if re.fullmatch(r"[0-9.]+", text):
        return False  # looks like an IPv4 address but is not one
    return len(text) <= 254 and _HOSTNAME_RE.fullmatch(text) is not None


def _port(text: str) -> int | None:
    if _PORT_RE.fullmatch(text) is None:
        return None
    port = int(text)
    return port if port <= 65535 else None


def parse_hostport(text: str, key: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) into host (no brackets) and port.

    Port 0 is allowed (the system picks a free port).

    Args:
        text: the value, e.g. ``0.0.0.0:8443`` or ``[::1]:5060``.
        key: the configuration key, named in errors.

    Raises:
        ConfigError: no host or no port, an invalid host or port, or an IPv6 address
            without brackets.
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"{key}: {text!r} has no closing ']'; {_HOSTPORT_EXAMPLE}")
        host, rest = text[1:end], text[end + 1 :]
        if not rest.startswith(":"):
            raise ConfigError(f"{key}: {text!r} has no port; {_HOSTPORT_EXAMPLE}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(
                f"{key}: {text!r} has an invalid IPv6 address {host!r} in brackets; "
                f"{_HOSTPORT_EXAMPLE}"
            ) from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ConfigError(f"{key}: {text!r} has no port; {_HOSTPORT_EXAMPLE}")
        if ":" in host:
            raise ConfigError(
                f"{key}: {text!r} is ambiguous; write an IPv6 address in brackets, "
                "e.g. '[::1]:5060'"
            )
        if not host:
            raise ConfigError(
                f"{key}: {text!r} has no host; {_HOSTPORT_EXAMPLE} "
                "('0.0.0.0' listens on every IPv4 address)"
            )
        if not _is_host(host):
            raise ConfigError(
                f"{key}: {text!r} has an invalid host {host!r}; "
                "expected an IP address or a host name"
            )
    port = _port(port_text)
    if port is None:
        raise ConfigError(
            f"{key}: {text!r} has an invalid port {port_text!r}; expected a number from 0 to 65535"
        )
    return host, port


def _parse_server(item: str, key: str) -> UpstreamServer:
    """One SIP URI of upstream.servers (RFC 3261 §19.1.1; no user part, no headers)."""
    scheme, colon, rest = item.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in ("sip", "sips"):
        raise ConfigError(f"{key}: {item!r} is not a SIP URI; {_URI_FORM}")
    if "?" in rest:
        raise ConfigError(f"{key}: {item!r} has URI headers ('?...'); {_URI_FORM}")
    hostport, *params = rest.split(";")
    if "@" in hostport:
        raise ConfigError(
            f"{key}: {item!r} has a user part; give the switch's address only, "
            "e.g. 'sip:10.0.0.5:5060;transport=udp'"
        )
    port_text: str | None
    if hostport.startswith("["):
        end = hostport.find("]")
        host, tail = hostport[1:end], hostport[end + 1 :]
        if end < 0 or not (tail == "" or tail.startswith(":")):
            raise ConfigError(f"{key}: {item!r} has an invalid IPv6 reference; {_URI_FORM}")
        port_text = tail[1:] if tail else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(
                f"{key}: {item!r} has an invalid IPv6 address {host!r}; {_URI_FORM}"
            ) from None
    else:
        host, sep, after = hostport.partition(":")
        port_text = after if sep else None
        if not _is_host(host) or ":" in host:
            raise ConfigError(
                f"{key}: {item!r} has an invalid host {host!r}; "
                "expected an IP address or a host name"
            )
    port: int | None = None
    if port_text is not None:
        port = _port(port_text)
        if port is None or port == 0:
            raise ConfigError(
                f"{key}: {item!r} has an invalid port {port_text!r}; "
                "expected a number from 1 to 65535"
            )
    transport = "tls" if scheme == "sips" else "udp"
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() != "transport":
            continue  # lr and other parameters do not change where we send
        value = value.strip().lower()
        if value not in TRANSPORTS:
            raise ConfigError(
                f"{key}: {item!r} has an unknown transport {value!r}; expected udp, tcp or tls"
            )
        if scheme == "sips" and value == "udp":
            # RFC 3261 §26.2.2: sips: needs TLS over a reliable transport.
            raise ConfigError(
                f"{key}: {item!r} asks for UDP on a sips: URI; use transport=tls or a sip: URI"
            )
        transport = "tls" if scheme == "sips" else value
    return UpstreamServer(host=host, port=port, transport=transport, uri=item)


def parse_upstream_servers(text: str, key: str = "upstream.servers") -> tuple[UpstreamServer, ...]:
    """Parse a comma-separated list of SIP URIs into servers, in order.

    Raises:
        ConfigError: an empty list or entry, a URI that is not sip:/sips:, a bad host
            or port, an unknown transport, or a server listed twice.
    """
    if not text.strip():
        raise ConfigError(
            f"{key}: {text!r} lists no servers; expected comma-separated SIP URIs, "
            "e.g. 'sip:10.0.0.5:5060;transport=udp'"
        )
    servers: list[UpstreamServer] = []
    seen: set[tuple[str, int | None, str]] = set()
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise ConfigError(f"{key}: {text!r} has an empty entry; remove the extra comma")
        server = _parse_server(item, key)
        ident = (server.host.lower(), server.port, server.transport)
        if ident in seen:
            raise ConfigError(f"{key}: {item!r} is listed twice; remove one")
        seen.add(ident)
        servers.append(server)
    return tuple(servers)


def _check_origin(origin: str, key: str) -> str:
    match = _ORIGIN_RE.fullmatch(origin.lower())
    if match is None or not (match["host"].startswith("[") or _is_host(match["host"])):
        raise ConfigError(
            f"{key}: {origin!r} is not an origin; expected scheme://host[:port] with no "
            "path, e.g. 'https://phone.example.com'"
        )
    if match["port"] is not None and _DEFAULT_PORTS.get(match["scheme"]) == match["port"]:
        # RFC 6454 §6.2: browsers omit the scheme's default port, so this never matches.
        bare = origin.rsplit(":", 1)[0]
        raise ConfigError(
            f"{key}: {origin!r} names the default port, which browsers leave out of "
            f"Origin; write {bare!r}"
        )
    return origin


# --------------------------------------------------------------------------- loading


_T = TypeVar("_T")


class _Loader:
    """Collects raw values (file, then environment) and every error found."""

    def __init__(self) -> None:
        self.raw: dict[str, dict[str, Any]] = {table: {} for table in _TABLES}
        self.where: dict[str, str] = {}  # "table.key" -> how errors name it
        self.errors: list[str] = []
        self.bad: set[str] = set()  # keys that failed, to skip cross-field checks

    # ---- structure

    def read_file_data(self, data: Mapping[str, Any]) -> None:
        for table, values in data.items():
            if table not in _TABLES:
                self.errors.append(_unknown_table(table, values))
                continue
            if not isinstance(values, dict):
                self.errors.append(
                    f"{table}: {_show(values)} is {_a(values)}; expected a table [{table}]"
                )
                continue
            for key, value in values.items():
                if key not in _SCHEMA[table]:
                    self.errors.append(_unknown_key(table, key))
                    continue
                self.raw[table][key] = value
                self.where[f"{table}.{key}"] = f"{table}.{key}"

    def read_env(self, env: Mapping[str, str]) -> None:
        for var in sorted(env):
            if not var.startswith(ENV_PREFIX):
                continue
            rest = var[len(ENV_PREFIX) :]
            table = next((t for t in _TABLES if rest.startswith(t.upper() + "_")), None)
            if table is None:
                continue  # not ours (e.g. the CGI GATEWAY_INTERFACE)
            key = rest[len(table) + 1 :].lower()
            kinds = _SCHEMA[table]
            if key not in kinds:
                close = difflib.get_close_matches(key, list(kinds), n=1)
                hint = (
                    f"did you mean {_env_name(table, close[0])}?"
                    if close
                    else f"[{table}] has {', '.join(kinds)}"
                )
                self.errors.append(f"{var}: unknown key {table}.{key}; {hint}")
                continue
            try:
                value = _from_env(env[var], kinds[key])
            except ValueError as exc:
                self.errors.append(f"{var}: {env[var]!r} {exc}")
                self.bad.add(f"{table}.{key}")
                continue
            self.raw[table][key] = value
            self.where[f"{table}.{key}"] = f"{table}.{key} (from {var})"

    # ---- typed access

    def name(self, table: str, key: str) -> str:
        return self.where.get(f"{table}.{key}", f"{table}.{key}")

    def fail(self, table: str, key: str, message: str) -> None:
        self.errors.append(message)
        self.bad.add(f"{table}.{key}")

    def get(self, table: str, key: str, default: _T, check: Callable[[Any, str], _T]) -> _T:
        """The typed value of ``table.key`` (or ``default``) passed through ``check``."""
        if key not in self.raw[table]:
            return default
        value = self._typed(table, key, self.raw[table][key])
        if value is None:
            return default
        try:
            return check(value, self.name(table, key))
        except ConfigError as exc:
            for message in exc.messages:
                self.fail(table, key, message)
            return default

    def _typed(self, table: str, key: str, value: object) -> Any:
        kind = _SCHEMA[table][key]
        name = self.name(table, key)
        if kind == "str" and isinstance(value, str):
            return value
        if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                self.fail(table, key, f"{name}: {_show(value)} is not a finite number")
                return None
            return float(value)
        if kind == "bool" and isinstance(value, bool):
            return value
        if kind == "list" and isinstance(value, list | tuple):
            if all(isinstance(v, str) for v in value):
                return tuple(value)
            self.fail(
                table, key, f"{name}: {_show(value)} holds a non-string; expected a list of strings"
            )
            return None
        if kind == "servers" and isinstance(value, str):
            return value
        if kind == "servers" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return ",".join(value)
        expected = {
            "str": "a string" + (" (put it in quotes)" if isinstance(value, int | float) else ""),
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "list": 'a list of strings, e.g. ["https://phone.example.com"]',
            "servers": "a string of comma-separated SIP URIs",
        }[kind]
        self.fail(table, key, f"{name}: {_show(value)} is {_a(value)}; expected {expected}")
        return None


def _env_name(table: str, key: str) -> str:
    return f"{ENV_PREFIX}{table.upper()}_{key.upper()}"


def _from_env(text: str, kind: str) -> object:
    """Convert an environment string to the field's kind (ValueError: why not)."""
    if kind in ("str", "servers"):
        return text
    if kind == "bool":
        word = text.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError("is not a boolean; expected true/false, 1/0 or yes/no")
    if kind == "int":
        try:
            return int(text.strip(), 10)
        except ValueError:
            raise ValueError("is not an integer") from None
    if kind == "float":
        try:
            number = float(text.strip())
        except ValueError:
            raise ValueError("is not a number") from None
        if not math.isfinite(number):
            raise ValueError("is not a finite number")
        return number
    # list: comma-separated, blanks dropped, "" is the empty list
    return [item.strip() for item in text.split(",") if item.strip()]


def _unknown_table(table: str, value: object) -> str:
    if not isinstance(value, dict):
        owners = [t for t, kinds in _SCHEMA.items() if table in kinds]
        if owners:
            return f"{table}: a key outside any table; put it under [{owners[0]}]"
    close = difflib.get_close_matches(table, list(_TABLES), n=1)
    if close:
        return f"{table}: unknown table; did you mean [{close[0]}]?"
    return f"{table}: unknown table; expected one of " + ", ".join(f"[{t}]" for t in _TABLES)


def _unknown_key(table: str, key: str) -> str:
    kinds = _SCHEMA[table]
    close = difflib.get_close_matches(key, list(kinds), n=1)
    if close:
        return f"{table}.{key}: unknown key; did you mean {table}.{close[0]}?"
    owners = [t for t, other in _SCHEMA.items() if key in other]
    if owners:
        return f"{table}.{key}: unknown key; did you mean {owners[0]}.{key}?"
    return f"{table}.{key}: unknown key; [{table}] has {', '.join(kinds)}"


# ---- value checks: (value, name) -> value, raising ConfigError naming ``name``


def _hostport_or_empty(value: str, name: str) -> str:
    if value:
        parse_hostport(value, name)
    return value


def _hostport(value: str, name: str) -> str:
    if not value:
        raise ConfigError(f"{name}: '' is empty; {_HOSTPORT_EXAMPLE}")
    parse_hostport(value, name)
    return value


def _host_or_empty(value: str, name: str) -> str:
    if value and not _is_host(value):
        raise ConfigError(
            f"{name}: {value!r} is not a host; expected a host name or an IP address "
            "(no port, no brackets)"
        )
    return value


def _one_of(choices: tuple[str, ...], what: str) -> Callable[[str, str], str]:
    def check(value: str, name: str) -> str:
        if value not in choices:
            options = ", ".join(choices[:-1]) + " or " + choices[-1]
            raise ConfigError(f"{name}: {value!r} is not {what}; expected {options}")
        return value

    return check


def _opus_bitrate(value: int, name: str) -> int:
    if value != 0 and not MIN_OPUS_BITRATE <= value <= MAX_OPUS_BITRATE:
        raise ConfigError(
            f"{name}: {value} is out of range; expected 0 (automatic) or "
            f"{MIN_OPUS_BITRATE} to {MAX_OPUS_BITRATE} bit/s"
        )
    return value


def _int_range(lo: int, hi: int | None, unit: str) -> Callable[[int, str], int]:
    def check(value: int, name: str) -> int:
        if value < lo or (hi is not None and value > hi):
            span = f"{lo} to {hi}" if hi is not None else f"at least {lo}"
            raise ConfigError(f"{name}: {value} is out of range; expected {span}{unit}")
        return value

    return check


def _positive(unit: str) -> Callable[[float, str], float]:
    def check(value: float, name: str) -> float:
        if value <= 0:
            raise ConfigError(f"{name}: {value} is out of range; expected more than 0 {unit}")
        return value

    return check


def _zero_or_more(unit: str, off: str) -> Callable[[float, str], float]:
    def check(value: float, name: str) -> float:
        if value < 0:
            raise ConfigError(f"{name}: {value} is negative; expected 0 ({off}) or more {unit}")
        return value

    return check


def _probe_interval(value: float, name: str) -> float:
    if value != 0 and value < MIN_PROBE_INTERVAL:
        raise ConfigError(
            f"{name}: {value} is out of range; expected 0 (no probes) or at least "
            f"{MIN_PROBE_INTERVAL} seconds"
        )
    return value


def _user_agent(value: str, name: str) -> str:
    # RFC 3261 §25.1: a header value may not hold CR, LF or other controls.
    if not value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(
            f"{name}: {value!r} is not a usable header value; expected printable text "
            "without control characters, e.g. 'webrtc-sip-gateway'"
        )
    return value


def _secret(value: str, name: str) -> str:
    if value and len(value) < MIN_SECRET_LENGTH:
        # Never echo the secret itself.
        raise ConfigError(
            f"{name}: {len(value)} characters is too short; expected at least "
            f"{MIN_SECRET_LENGTH} (e.g. from 'openssl rand -hex 32'), or '' for a random "
            "key per process"
        )
    return value


def _origins(value: tuple[str, ...], name: str) -> tuple[str, ...]:
    # RFC 6454 §4: browsers send the origin's scheme and host in lower case.
    return tuple(_check_origin(origin, name).lower() for origin in value)


def _pem_path(value: str, name: str) -> str:
    if value:
        path = Path(value)
        if not path.exists():
            raise ConfigError(f"{name}: {value!r} does not exist; expected the path of a PEM file")
        if not path.is_file():
            raise ConfigError(f"{name}: {value!r} is not a file; expected the path of a PEM file")
        if not os.access(path, os.R_OK):
            raise ConfigError(
                f"{name}: {value!r} is not readable by this user; fix its permissions"
            )
    return value


def _state_dir(value: str, name: str) -> str:
    if not value:
        raise ConfigError(f"{name}: '' is empty; expected a directory path, e.g. './run'")
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{name}: {value!r} is not a directory; expected a directory path")
    return value


def _port_range(value: str, name: str) -> str:
    low, sep, high = value.partition("-")
    lo, hi = _port(low.strip()), _port(high.strip())
    if not sep or lo is None or hi is None:
        raise ConfigError(
            f"{name}: {value!r} is not a port range; expected LOW-HIGH, e.g. '40000-49999'"
        )
    if lo < MIN_MEDIA_PORT or hi - lo + 1 < MIN_MEDIA_PORTS:
        raise ConfigError(
            f"{name}: {value!r} is out of range; expected ports from {MIN_MEDIA_PORT} to "
            f"{MAX_MEDIA_PORT}, at least {MIN_MEDIA_PORTS} of them, LOW below HIGH"
        )
    return f"{lo}-{hi}"


def _ip_or_empty(example: str) -> Callable[[str, str], str]:
    def check(value: str, name: str) -> str:
        if not value:
            return value
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise ConfigError(
                f"{name}: {value!r} is not an IP address; expected e.g. {example!r}"
            ) from None
        return str(address)

    return check


def _media_workers(value: int, name: str) -> int:
    if value < -1 or value > MAX_MEDIA_WORKERS:
        raise ConfigError(
            f"{name}: {value} is out of range; expected -1 (one per CPU core), 0 (in-process) "
            f"or a number of worker processes up to {MAX_MEDIA_WORKERS}"
        )
    return value


def _codec_names(allowed: tuple[str, ...]) -> Callable[[tuple[str, ...], str], tuple[str, ...]]:
    """A non-empty list of names from ``allowed`` (case-insensitive), no repeats."""

    def check(value: tuple[str, ...], name: str) -> tuple[str, ...]:
        canonical = {a.lower(): a for a in allowed}
        result: list[str] = []
        for item in value:
            codec = canonical.get(item.strip().lower())
            if codec is None:
                raise ConfigError(
                    f"{name}: {item!r} is not a codec the gateway can offer here; expected "
                    + ", ".join(allowed[:-1])
                    + " or "
                    + allowed[-1]
                )
            if codec in result:
                raise ConfigError(f"{name}: {item!r} is listed twice; list each codec once")
            result.append(codec)
        if not result:
            raise ConfigError(
                f"{name}: [] is empty; list at least one codec, e.g. {_show(list(allowed[:2]))}"
            )
        return tuple(result)

    return check


def _strip_patterns(value: tuple[str, ...], name: str) -> tuple[str, ...]:
    for pattern in value:
        try:
            compiled = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(
                f"{name}: {pattern!r} is not a regular expression ({exc}); expected e.g. "
                "'G722' or 'PCM.'"
            ) from None
        # The browser's own codec must survive: transcoding to the switch starts from it.
        if compiled.fullmatch("opus"):
            raise ConfigError(
                f"{name}: {pattern!r} would strip opus from the browser's offer; opus cannot "
                "be stripped (it is what the gateway transcodes from); narrow the pattern"
            )
    return value


def _servers(value: str, name: str) -> tuple[UpstreamServer, ...]:
    return parse_upstream_servers(value, name)


def _build(loader: _Loader) -> Config | None:
    """Typed, checked tables, or None when the loader recorded errors."""
    g = loader.get
    ls = "listen"
    listen = ListenConfig(
        wss=g(ls, "wss", "0.0.0.0:8443", _hostport_or_empty),
        ws=g(ls, "ws", "", _hostport_or_empty),
        sip=g(ls, "sip", "0.0.0.0:5062", _hostport),
        sip_tls=g(ls, "sip_tls", "", _hostport_or_empty),
        advertised_sip_host=g(ls, "advertised_sip_host", "", _host_or_empty),
        advertised_ws_host=g(ls, "advertised_ws_host", "", _host_or_empty),
        max_message_size=g(
            ls, "max_message_size", 65535, _int_range(MIN_MESSAGE_SIZE, MAX_MESSAGE_SIZE, " bytes")
        ),
    )
    tls = TlsConfig(
        cert=g("tls", "cert", "", _pem_path),
        key=g("tls", "key", "", _pem_path),
        min_version=g("tls", "min_version", "1.2", _one_of(TLS_VERSIONS, "a TLS version")),
        verify_upstream=g("tls", "verify_upstream", True, lambda v, n: v),
    )
    servers: tuple[UpstreamServer, ...] = ()
    if "servers" in loader.raw["upstream"]:
        servers = g("upstream", "servers", (), _servers)
    else:
        loader.fail(
            "upstream",
            "servers",
            "upstream.servers: missing; set it to the switch's SIP URI(s), e.g. "
            "'sip:10.0.0.5:5060;transport=udp' (or GATEWAY_UPSTREAM_SERVERS)",
        )
    upstream = UpstreamConfig(
        servers=servers,
        mode=g("upstream", "mode", "path", _one_of(MODES, "a mode")),
        probe_interval=g("upstream", "probe_interval", 10.0, _probe_interval),
        tcp_fallback=g("upstream", "tcp_fallback", True, lambda v, n: v),
        udp_mtu=g("upstream", "udp_mtu", 1300, _int_range(MIN_UDP_MTU, MAX_UDP_MTU, " bytes")),
    )
    sip = SipConfig(
        t1=g("sip", "t1", 0.5, _positive("seconds")),
        t2=g("sip", "t2", 4.0, _positive("seconds")),
        t4=g("sip", "t4", 5.0, _positive("seconds")),
        user_agent=g("sip", "user_agent", "webrtc-sip-gateway", _user_agent),
    )
    sc = "security"
    security = SecurityConfig(
        flow_token_secret=g(sc, "flow_token_secret", "", _secret),
        allowed_origins=g(sc, "allowed_origins", (), _origins),
        max_connections_per_ip=g(sc, "max_connections_per_ip", 100, _int_range(1, None, "")),
        max_requests_per_second_per_ip=g(
            sc, "max_requests_per_second_per_ip", 50.0, _positive("requests per second")
        ),
        max_calls=g(sc, "max_calls", 1000, _int_range(1, None, "")),
    )
    websocket = WebSocketConfig(
        ping_interval=g("websocket", "ping_interval", 20.0, _zero_or_more("seconds", "no pings")),
        idle_timeout=g("websocket", "idle_timeout", 120.0, _zero_or_more("seconds", "never")),
    )
    md = "media"
    media = MediaConfig(
        enabled=g(md, "enabled", False, lambda v, n: v),
        port_range=g(md, "port_range", "40000-49999", _port_range),
        public_ip=g(md, "public_ip", "", _ip_or_empty("203.0.113.10")),
        bind_ip=g(md, "bind_ip", "0.0.0.0", _ip_or_empty("0.0.0.0")),
        control=g(md, "control", "127.0.0.1:22222", _hostport),
        control_allow_remote=g(md, "control_allow_remote", False, lambda v, n: v),
        workers=g(md, "workers", -1, _media_workers),
        timeout=g(md, "timeout", 60.0, _positive("seconds")),
        dtmf_info_to_rfc4733=g(md, "dtmf_info_to_rfc4733", False, lambda v, n: v),
        dtmf_rfc4733_to_info=g(md, "dtmf_rfc4733_to_info", False, lambda v, n: v),
    )
    cd = "codecs"
    codecs = CodecsConfig(
        switch=g(cd, "switch", ("PCMU", "PCMA", "G729"), _codec_names(SWITCH_CODECS)),
        browser=g(cd, "browser", ("opus", "PCMU", "PCMA"), _codec_names(BROWSER_CODECS)),
        strip=g(cd, "strip", (), _strip_patterns),
        opus_complexity=g(
            cd, "opus_complexity", 5, _int_range(0, MAX_OPUS_COMPLEXITY, " (libopus complexity)")
        ),
        transcode=g(cd, "transcode", True, lambda v, n: v),
        opus_bitrate=g(cd, "opus_bitrate", 0, _opus_bitrate),
    )
    metrics = MetricsConfig(
        listen=g("metrics", "listen", "127.0.0.1:9100", _hostport_or_empty),
    )
    log = LogConfig(
        level=g("log", "level", "info", lambda v, n: _one_of(LOG_LEVELS, "a level")(v.lower(), n)),
        sip_trace=g("log", "sip_trace", False, lambda v, n: v),
    )
    general = GeneralConfig(
        state_dir=Path(g("general", "state_dir", "./run", _state_dir)),
        drain_timeout=g("general", "drain_timeout", 30.0, _zero_or_more("seconds", "exit at once")),
    )
    listen = _cross_check(loader, listen, tls, sip)
    _check_media(loader, media)
    if loader.errors:
        return None
    return Config(
        listen=listen,
        tls=tls,
        upstream=upstream,
        sip=sip,
        security=security,
        websocket=websocket,
        media=media,
        codecs=codecs,
        metrics=metrics,
        log=log,
        general=general,
    )


def _cross_check(
    loader: _Loader, listen: ListenConfig, tls: TlsConfig, sip: SipConfig
) -> ListenConfig:
    """Checks across keys (skipped where a key already failed); fills advertised hosts."""

    def ok(*keys: str) -> bool:
        return not any(k in loader.bad for k in keys)

    if ok("listen.wss", "listen.ws") and not listen.wss and not listen.ws:
        loader.errors.append(
            f"{loader.name('listen', 'wss')}, {loader.name('listen', 'ws')}: both are empty; "
            "enable at least one WebSocket listener, e.g. listen.wss = '0.0.0.0:8443'"
        )
    if ok("tls.cert", "tls.key") and bool(tls.cert) != bool(tls.key):
        have, missing = ("cert", "key") if tls.cert else ("key", "cert")
        loader.fail(
            "tls",
            missing,
            f"{loader.name('tls', missing)}: '' is empty but tls.{have} is set; set both "
            "(the PEM full chain and its key) or neither (a self-signed pair is generated)",
        )
    if ok("sip.t1", "sip.t2") and sip.t1 >= sip.t2:
        # RFC 3261 §17.1.2.2: non-INVITE retransmits double from T1 up to T2.
        loader.errors.append(
            f"{loader.name('sip', 't1')}: {sip.t1} is not below sip.t2 ({sip.t2}); "
            "RFC 3261 timers need T1 < T2 (defaults 0.5 and 4.0)"
        )
    advertised_sip = listen.advertised_sip_host
    if ok("listen.sip", "listen.advertised_sip_host"):
        if advertised_sip in _UNSPECIFIED_HOSTS:
            loader.fail(
                "listen",
                "advertised_sip_host",
                f"{loader.name('listen', 'advertised_sip_host')}: {advertised_sip!r} is not an "
                "address the switch can reach; set the gateway's own address, "
                "e.g. '192.0.2.10' or 'gw.example.com'",
            )
        elif not advertised_sip:
            host, _ = parse_hostport(listen.sip, "listen.sip")
            if host in _UNSPECIFIED_HOSTS:
                loader.fail(
                    "listen",
                    "advertised_sip_host",
                    f"{loader.name('listen', 'advertised_sip_host')}: '' is empty and "
                    f"listen.sip {listen.sip!r} binds every address; set the address the "
                    "switch reaches the gateway at, e.g. '192.0.2.10' or 'gw.example.com'",
                )
            advertised_sip = host
    return ListenConfig(
        wss=listen.wss,
        ws=listen.ws,
        sip=listen.sip,
        sip_tls=listen.sip_tls,
        advertised_sip_host=advertised_sip,
        advertised_ws_host=listen.advertised_ws_host or DEFAULT_WS_HOST,
        max_message_size=listen.max_message_size,
    )


def _check_media(loader: _Loader, media: MediaConfig) -> None:
    """Checks across [media] keys (skipped where a key already failed)."""

    def ok(*keys: str) -> bool:
        return not any(f"media.{k}" in loader.bad for k in keys)

    if ok("enabled", "public_ip") and media.enabled and not media.public_ip:
        loader.fail(
            "media",
            "public_ip",
            f"{loader.name('media', 'public_ip')}: '' is empty but media.enabled is true; set "
            "the IP address browsers and the switch send media to, e.g. '203.0.113.10'",
        )
    if ok("public_ip") and media.public_ip in _UNSPECIFIED_HOSTS:
        loader.fail(
            "media",
            "public_ip",
            f"{loader.name('media', 'public_ip')}: {media.public_ip!r} is not an address peers "
            "can send to; set the gateway's public IP, e.g. '203.0.113.10'",
        )
    if ok("bind_ip") and not media.bind_ip:
        loader.fail(
            "media",
            "bind_ip",
            f"{loader.name('media', 'bind_ip')}: '' is empty; expected an IP address, "
            "e.g. '0.0.0.0' (every IPv4 address)",
        )
    if ok("control", "control_allow_remote"):
        host, _ = parse_hostport(media.control, "media.control")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback and not media.control_allow_remote:
            loader.fail(
                "media",
                "control",
                f"{loader.name('media', 'control')}: {media.control!r} is not a loopback "
                "address and the NG protocol has no authentication; use '127.0.0.1:22222', "
                "or set media.control_allow_remote = true behind a firewall",
            )
    if ok("workers", "port_range") and media.workers > 0:
        low, high = media.ports
        if (high - low + 1) // media.workers < MIN_MEDIA_PORTS:
            loader.fail(
                "media",
                "workers",
                f"{loader.name('media', 'workers')}: {media.workers} workers do not fit in "
                f"media.port_range {media.port_range!r}; each needs at least "
                f"{MIN_MEDIA_PORTS} ports",
            )


def config_from_dict(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Validate parsed TOML data (plus environment overrides) into a Config.

    Args:
        data: table name -> key -> value, as ``tomllib`` returns it.
        env: environment variables; None reads ``os.environ``.

    Raises:
        ConfigError: every problem found, one per line.
    """
    loader = _Loader()
    loader.read_file_data(data)
    loader.read_env(os.environ if env is None else env)
    config = _build(loader)
    if config is None:
        raise ConfigError(*loader.errors)
    return config


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the TOML file at ``path``, then apply ``GATEWAY_*`` overrides.

    Args:
        path: the config file.
        env: environment variables; None reads ``os.environ``.

    Raises:
        ConfigError: the file is missing, unreadable or not TOML, or any value is
            wrong (every problem found, one per line).
    """
    shown = str(path)
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(
            f"{shown}: config file not found; pass --config with the path of your "
            "gateway.toml (config/gateway.toml in the repository documents every key)"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{shown}: is a directory; expected a TOML config file") from None
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{shown}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{shown}: not valid TOML: not UTF-8 ({exc.reason})") from None
    return config_from_dict(data, env)


def config_warnings(config: Config) -> list[str]:
    """Things that work but that an operator should know about, one line each."""
    warnings: list[str] = []
    tls_listener = bool(config.listen.wss or config.listen.sip_tls)
    if tls_listener and not config.tls.cert:
        warnings.append(
            "tls.cert/tls.key are empty: a self-signed certificate is generated in "
            f"{str(config.general.state_dir)!r}; browsers refuse it for wss:// until you "
            "configure a real one"
        )
    if not config.security.flow_token_secret:
        warnings.append(
            "security.flow_token_secret is empty: a random key is used per process, so a "
            "restart invalidates the Path of every registration"
        )
    if not config.tls.verify_upstream:
        warnings.append("tls.verify_upstream is false: the switch's certificate is not checked")
    return warnings
