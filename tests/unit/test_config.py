"""Configuration: defaults, validation messages, environment overrides, TLS helpers, CLI."""

from __future__ import annotations

import copy
import datetime
import os
import ssl
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import (
    CodecsConfig,
    Config,
    ConfigError,
    GeneralConfig,
    ListenConfig,
    LogConfig,
    MediaConfig,
    MetricsConfig,
    SecurityConfig,
    SipConfig,
    TlsConfig,
    UpstreamConfig,
    UpstreamServer,
    WebSocketConfig,
    config_from_dict,
    config_warnings,
    load_config,
    parse_hostport,
    parse_upstream_servers,
)
from gateway.tlsutil import (
    SELF_SIGNED_CERT,
    SELF_SIGNED_KEY,
    ensure_self_signed,
    make_server_context,
)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FILE = ROOT / "config" / "gateway.toml"
SECRET = "s" * 32

TABLES: dict[str, type[Any]] = {
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

#: The smallest valid configuration: an upstream, and an advertised host because
#: the default listen.sip binds 0.0.0.0.
MINIMAL: dict[str, dict[str, Any]] = {
    "upstream": {"servers": "sip:127.0.0.1:5060;transport=udp"},
    "listen": {"advertised_sip_host": "192.0.2.10"},
}


def minimal(**tables: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """MINIMAL with the given tables' keys added or replaced."""
    data = copy.deepcopy(MINIMAL)
    for table, values in tables.items():
        data.setdefault(table, {}).update(values)
    return data


def error_of(data: dict[str, Any], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, env or {})
    return str(info.value)


def clean_env() -> dict[str, str]:
    """This process's environment without GATEWAY_* overrides, for subprocesses."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}


# --------------------------------------------------------------------------- defaults


def test_minimal_config_takes_every_default() -> None:
    config = config_from_dict(MINIMAL, {})
    assert config == Config(
        listen=ListenConfig(advertised_sip_host="192.0.2.10", advertised_ws_host="gateway.invalid"),
        upstream=UpstreamConfig(
            servers=(
                UpstreamServer(
                    host="127.0.0.1",
                    port=5060,
                    transport="udp",
                    uri="sip:127.0.0.1:5060;transport=udp",
                ),
            )
        ),
    )
    # The documented defaults, spelled out once so a changed default is noticed.
    assert config.listen.wss == "0.0.0.0:8443"
    assert config.listen.ws == ""
    assert config.listen.sip == "0.0.0.0:5062"
    assert config.listen.max_message_size == 65535
    assert (config.tls.cert, config.tls.key, config.tls.min_version) == ("", "", "1.2")
    assert config.tls.verify_upstream is True
    assert config.upstream.mode == "path"
    assert config.upstream.probe_interval == 10.0
    assert config.upstream.tcp_fallback is True
    assert config.upstream.udp_mtu == 1300
    assert (config.sip.t1, config.sip.t2, config.sip.t4) == (0.5, 4.0, 5.0)
    assert config.sip.user_agent == "webrtc-sip-gateway"
    assert config.security.flow_token_secret == ""
    assert config.security.allowed_origins == ()
    assert config.security.max_connections_per_ip == 100
    assert config.security.max_requests_per_second_per_ip == 50.0
    assert config.security.max_calls == 1000
    assert (config.websocket.ping_interval, config.websocket.idle_timeout) == (20.0, 120.0)
    assert config.metrics.listen == "127.0.0.1:9100"
    assert (config.log.level, config.log.sip_trace) == ("info", False)
    assert config.general.state_dir == Path("./run")
    assert config.general.drain_timeout == 30.0
    assert config.media == MediaConfig()
    assert config.media.enabled is False
    assert (config.media.port_range, config.media.ports) == ("40000-49999", (40000, 49999))
    assert (config.media.public_ip, config.media.bind_ip) == ("", "0.0.0.0")
    assert config.media.control == "127.0.0.1:22222"
    assert config.media.control_allow_remote is False
    assert (config.media.workers, config.media.timeout) == (-1, 60.0)
    assert config.codecs == CodecsConfig()
    assert config.codecs.switch == ("PCMU", "PCMA", "G729")
    assert config.codecs.browser == ("opus", "PCMU", "PCMA")
    assert config.codecs.strip == ()
    assert (config.codecs.opus_complexity, config.codecs.transcode) == (5, True)


def test_config_is_frozen_and_keyword_only() -> None:
    config = config_from_dict(MINIMAL, {})
    with pytest.raises(AttributeError):
        config.listen.wss = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ListenConfig("0.0.0.0:8443")  # type: ignore[call-arg]


def test_shipped_file_loads() -> None:
    config = load_config(DEFAULT_FILE, env={})
    assert config.upstream.servers == (
        UpstreamServer(
            host="127.0.0.1", port=5060, transport="udp", uri="sip:127.0.0.1:5060;transport=udp"
        ),
    )
    assert config.listen.advertised_sip_host == "127.0.0.1"


def test_shipped_file_has_every_key_with_its_default() -> None:
    data = tomllib.loads(DEFAULT_FILE.read_text())
    assert list(data) == list(TABLES)
    demo_values = {("upstream", "servers"), ("listen", "advertised_sip_host")}
    for table, cls in TABLES.items():
        assert list(data[table]) == [f.name for f in fields(cls)], table
        instance = cls(servers=()) if cls is UpstreamConfig else cls()
        for key, value in data[table].items():
            if (table, key) in demo_values:
                continue
            default = getattr(instance, key)
            if isinstance(default, Path):
                value = Path(value)
            if isinstance(default, tuple):
                default = list(default)
            assert value == default, f"{table}.{key}"


def test_shipped_file_documents_every_key() -> None:
    lines = DEFAULT_FILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if not line or line.startswith(("#", "[")):
            continue
        # Walk back over the key's paragraph (keys may share one comment block).
        block = []
        for previous in reversed(lines[:number]):
            if not previous.strip() or previous.startswith("["):
                break
            block.append(previous)
        assert any(b.startswith("#") for b in block), f"undocumented: {line}"


# --------------------------------------------------------------------------- errors


ERROR_CASES: list[tuple[dict[str, Any], str]] = [
    (
        {"upstream": {"servers": "sip:x;transport=sctp"}},
        "upstream.servers: 'sip:x;transport=sctp' has an unknown transport 'sctp'; "
        "expected udp, tcp or tls",
    ),
    (
        {"upstream": {"servers": "sip:sw.example.com;transport=wss"}},
        "upstream.servers: 'sip:sw.example.com;transport=wss' has an unknown transport 'wss'; "
        "expected udp, tcp or tls",
    ),
    (
        {"upstream": {"servers": ""}},
        "upstream.servers: '' lists no servers; expected comma-separated SIP URIs, "
        "e.g. 'sip:10.0.0.5:5060;transport=udp'",
    ),
    (
        {"upstream": {"servers": "sip:a.example.com,,sip:b.example.com"}},
        "upstream.servers: 'sip:a.example.com,,sip:b.example.com' has an empty entry; "
        "remove the extra comma",
    ),
    (
        {"upstream": {"servers": "10.0.0.5:5060"}},
        "upstream.servers: '10.0.0.5:5060' is not a SIP URI; "
        "expected sip:host[:port][;transport=udp|tcp|tls]",
    ),
    (
        {"upstream": {"servers": "sip:10.0.0.5:5060, tel:+15551234"}},
        "upstream.servers: 'tel:+15551234' is not a SIP URI; "
        "expected sip:host[:port][;transport=udp|tcp|tls]",
    ),
    (
        {"upstream": {"servers": "sip:10.0.0.5:99999"}},
        "upstream.servers: 'sip:10.0.0.5:99999' has an invalid port '99999'; "
        "expected a number from 1 to 65535",
    ),
    (
        {"upstream": {"servers": "sip:10.0.0.5:"}},
        "upstream.servers: 'sip:10.0.0.5:' has an invalid port ''; "
        "expected a number from 1 to 65535",
    ),
    (
        {"upstream": {"servers": "sip:bad host"}},
        "upstream.servers: 'sip:bad host' has an invalid host 'bad host'; "
        "expected an IP address or a host name",
    ),
    (
        {"upstream": {"servers": "sip:300.1.1.1"}},
        "upstream.servers: 'sip:300.1.1.1' has an invalid host '300.1.1.1'; "
        "expected an IP address or a host name",
    ),
    (
        {"upstream": {"servers": "sip:[::1"}},
        "upstream.servers: 'sip:[::1' has an invalid IPv6 reference; "
        "expected sip:host[:port][;transport=udp|tcp|tls]",
    ),
    (
        {"upstream": {"servers": "sip:alice@10.0.0.5"}},
        "upstream.servers: 'sip:alice@10.0.0.5' has a user part; give the switch's address "
        "only, e.g. 'sip:10.0.0.5:5060;transport=udp'",
    ),
    (
        {"upstream": {"servers": "sip:10.0.0.5?Subject=x"}},
        "upstream.servers: 'sip:10.0.0.5?Subject=x' has URI headers ('?...'); "
        "expected sip:host[:port][;transport=udp|tcp|tls]",
    ),
    (
        {"upstream": {"servers": "sips:sw.example.com;transport=udp"}},
        "upstream.servers: 'sips:sw.example.com;transport=udp' asks for UDP on a sips: URI; "
        "use transport=tls or a sip: URI",
    ),
    (
        {"upstream": {"servers": "sip:10.0.0.5:5060, sip:10.0.0.5:5060;transport=udp"}},
        "upstream.servers: 'sip:10.0.0.5:5060;transport=udp' is listed twice; remove one",
    ),
    (
        {"upstream": {"servers": 5060}},
        "upstream.servers: 5060 is an integer; expected a string of comma-separated SIP URIs",
    ),
    (
        {"upstream": {"mode": "paths"}},
        "upstream.mode: 'paths' is not a mode; expected path or contact-rewrite",
    ),
    (
        {"upstream": {"probe_interval": 0.1}},
        "upstream.probe_interval: 0.1 is out of range; expected 0 (no probes) or at least "
        "0.5 seconds",
    ),
    (
        {"upstream": {"probe_interval": -1}},
        "upstream.probe_interval: -1.0 is out of range; expected 0 (no probes) or at least "
        "0.5 seconds",
    ),
    (
        {"upstream": {"udp_mtu": 100}},
        "upstream.udp_mtu: 100 is out of range; expected 576 to 65507 bytes",
    ),
    (
        {"upstream": {"udp_mtu": 1300.5}},
        "upstream.udp_mtu: 1300.5 is a number; expected an integer",
    ),
    (
        {"upstream": {"tcp_fallback": "yes"}},
        "upstream.tcp_fallback: 'yes' is a string; expected true or false",
    ),
    (
        {"listen": {"wss": "8443"}},
        "listen.wss: '8443' has no port; expected host:port, e.g. '127.0.0.1:5060' or '[::1]:5060'",
    ),
    (
        {"listen": {"wss": ":8443"}},
        "listen.wss: ':8443' has no host; expected host:port, e.g. '127.0.0.1:5060' or "
        "'[::1]:5060' ('0.0.0.0' listens on every IPv4 address)",
    ),
    (
        {"listen": {"ws": "0.0.0.0:http"}},
        "listen.ws: '0.0.0.0:http' has an invalid port 'http'; expected a number from 0 to 65535",
    ),
    (
        {"listen": {"sip": "::1:5060"}},
        "listen.sip: '::1:5060' is ambiguous; write an IPv6 address in brackets, e.g. '[::1]:5060'",
    ),
    (
        {"listen": {"sip": ""}},
        "listen.sip: '' is empty; expected host:port, e.g. '127.0.0.1:5060' or '[::1]:5060'",
    ),
    (
        {"listen": {"sip_tls": "[fe80::zz]:5061"}},
        "listen.sip_tls: '[fe80::zz]:5061' has an invalid IPv6 address 'fe80::zz' in brackets; "
        "expected host:port, e.g. '127.0.0.1:5060' or '[::1]:5060'",
    ),
    (
        {"listen": {"sip_tls": "[::1]5061"}},
        "listen.sip_tls: '[::1]5061' has no port; expected host:port, e.g. '127.0.0.1:5060' "
        "or '[::1]:5060'",
    ),
    (
        {"listen": {"wss": "", "ws": ""}},
        "listen.wss, listen.ws: both are empty; enable at least one WebSocket listener, "
        "e.g. listen.wss = '0.0.0.0:8443'",
    ),
    (
        {"listen": {"advertised_sip_host": ""}},
        "listen.advertised_sip_host: '' is empty and listen.sip '0.0.0.0:5062' binds every "
        "address; set the address the switch reaches the gateway at, e.g. '192.0.2.10' or "
        "'gw.example.com'",
    ),
    (
        {"listen": {"advertised_sip_host": "", "sip": "[::]:5060"}},
        "listen.advertised_sip_host: '' is empty and listen.sip '[::]:5060' binds every "
        "address; set the address the switch reaches the gateway at, e.g. '192.0.2.10' or "
        "'gw.example.com'",
    ),
    (
        {"listen": {"advertised_sip_host": "0.0.0.0"}},
        "listen.advertised_sip_host: '0.0.0.0' is not an address the switch can reach; set "
        "the gateway's own address, e.g. '192.0.2.10' or 'gw.example.com'",
    ),
    (
        {"listen": {"advertised_sip_host": "gw.example.com:5062"}},
        "listen.advertised_sip_host: 'gw.example.com:5062' is not a host; expected a host "
        "name or an IP address (no port, no brackets)",
    ),
    (
        {"listen": {"advertised_ws_host": "ws host"}},
        "listen.advertised_ws_host: 'ws host' is not a host; expected a host name or an IP "
        "address (no port, no brackets)",
    ),
    (
        {"listen": {"max_message_size": 1023}},
        "listen.max_message_size: 1023 is out of range; expected 1024 to 1048576 bytes",
    ),
    (
        {"listen": {"max_message_size": 1048577}},
        "listen.max_message_size: 1048577 is out of range; expected 1024 to 1048576 bytes",
    ),
    (
        {"listen": {"max_message_size": "64k"}},
        "listen.max_message_size: '64k' is a string; expected an integer",
    ),
    (
        {"listen": {"max_message_size": True}},
        "listen.max_message_size: true is a boolean; expected an integer",
    ),
    (
        {"tls": {"min_version": "1.1"}},
        "tls.min_version: '1.1' is not a TLS version; expected 1.2 or 1.3",
    ),
    (
        {"tls": {"min_version": 1.2}},
        "tls.min_version: 1.2 is a number; expected a string (put it in quotes)",
    ),
    (
        {"tls": {"cert": "/nonexistent/cert.pem", "key": "/nonexistent/key.pem"}},
        "tls.cert: '/nonexistent/cert.pem' does not exist; expected the path of a PEM file\n"
        "tls.key: '/nonexistent/key.pem' does not exist; expected the path of a PEM file",
    ),
    (
        {"tls": {"cert": str(DEFAULT_FILE)}},
        "tls.key: '' is empty but tls.cert is set; set both (the PEM full chain and its key) "
        "or neither (a self-signed pair is generated)",
    ),
    (
        {"tls": {"key": str(DEFAULT_FILE)}},
        "tls.cert: '' is empty but tls.key is set; set both (the PEM full chain and its key) "
        "or neither (a self-signed pair is generated)",
    ),
    (
        {"tls": {"cert": str(ROOT), "key": str(DEFAULT_FILE)}},
        f"tls.cert: {str(ROOT)!r} is not a file; expected the path of a PEM file",
    ),
    (
        {"sip": {"t1": 0}},
        "sip.t1: 0.0 is out of range; expected more than 0 seconds",
    ),
    (
        {"sip": {"t4": -5.0}},
        "sip.t4: -5.0 is out of range; expected more than 0 seconds",
    ),
    (
        {"sip": {"t1": 4.0}},
        "sip.t1: 4.0 is not below sip.t2 (4.0); RFC 3261 timers need T1 < T2 "
        "(defaults 0.5 and 4.0)",
    ),
    (
        {"sip": {"t2": float("inf")}},
        "sip.t2: inf is not a finite number",
    ),
    (
        {"sip": {"user_agent": "gw\r\nX-Injected: 1"}},
        "sip.user_agent: 'gw\\r\\nX-Injected: 1' is not a usable header value; expected "
        "printable text without control characters, e.g. 'webrtc-sip-gateway'",
    ),
    (
        {"security": {"flow_token_secret": "too-short"}},
        "security.flow_token_secret: 9 characters is too short; expected at least 32 "
        "(e.g. from 'openssl rand -hex 32'), or '' for a random key per process",
    ),
    (
        {"security": {"allowed_origins": "https://phone.example.com"}},
        "security.allowed_origins: 'https://phone.example.com' is a string; expected a list "
        'of strings, e.g. ["https://phone.example.com"]',
    ),
    (
        {"security": {"allowed_origins": ["https://a.example.com", 7]}},
        "security.allowed_origins: ['https://a.example.com', 7] holds a non-string; "
        "expected a list of strings",
    ),
    (
        {"security": {"allowed_origins": ["https://phone.example.com/"]}},
        "security.allowed_origins: 'https://phone.example.com/' is not an origin; expected "
        "scheme://host[:port] with no path, e.g. 'https://phone.example.com'",
    ),
    (
        {"security": {"allowed_origins": ["phone.example.com"]}},
        "security.allowed_origins: 'phone.example.com' is not an origin; expected "
        "scheme://host[:port] with no path, e.g. 'https://phone.example.com'",
    ),
    (
        {"security": {"allowed_origins": ["https://phone.example.com:443"]}},
        "security.allowed_origins: 'https://phone.example.com:443' names the default port, "
        "which browsers leave out of Origin; write 'https://phone.example.com'",
    ),
    (
        {"security": {"max_connections_per_ip": 0}},
        "security.max_connections_per_ip: 0 is out of range; expected at least 1",
    ),
    (
        {"security": {"max_requests_per_second_per_ip": 0}},
        "security.max_requests_per_second_per_ip: 0.0 is out of range; expected more than 0 "
        "requests per second",
    ),
    (
        {"security": {"max_calls": -1}},
        "security.max_calls: -1 is out of range; expected at least 1",
    ),
    (
        {"websocket": {"ping_interval": -1}},
        "websocket.ping_interval: -1.0 is negative; expected 0 (no pings) or more seconds",
    ),
    (
        {"websocket": {"idle_timeout": -0.5}},
        "websocket.idle_timeout: -0.5 is negative; expected 0 (never) or more seconds",
    ),
    (
        {"metrics": {"listen": "localhost"}},
        "metrics.listen: 'localhost' has no port; expected host:port, e.g. '127.0.0.1:5060' "
        "or '[::1]:5060'",
    ),
    (
        {"log": {"level": "verbose"}},
        "log.level: 'verbose' is not a level; expected debug, info, warning or error",
    ),
    (
        {"log": {"sip_trace": 1}},
        "log.sip_trace: 1 is an integer; expected true or false",
    ),
    (
        {"media": {"enabled": True}},
        "media.public_ip: '' is empty but media.enabled is true; set the IP address browsers "
        "and the switch send media to, e.g. '203.0.113.10'",
    ),
    (
        {"media": {"public_ip": "media.example.com"}},
        "media.public_ip: 'media.example.com' is not an IP address; expected e.g. '203.0.113.10'",
    ),
    (
        {"media": {"public_ip": "0.0.0.0"}},
        "media.public_ip: '0.0.0.0' is not an address peers can send to; set the gateway's "
        "public IP, e.g. '203.0.113.10'",
    ),
    (
        {"media": {"bind_ip": ""}},
        "media.bind_ip: '' is empty; expected an IP address, e.g. '0.0.0.0' (every IPv4 address)",
    ),
    (
        {"media": {"port_range": "40000"}},
        "media.port_range: '40000' is not a port range; expected LOW-HIGH, e.g. '40000-49999'",
    ),
    (
        {"media": {"port_range": "100-2000"}},
        "media.port_range: '100-2000' is out of range; expected ports from 1024 to 65535, at "
        "least 8 of them, LOW below HIGH",
    ),
    (
        {"media": {"port_range": "41000-40000"}},
        "media.port_range: '41000-40000' is out of range; expected ports from 1024 to 65535, "
        "at least 8 of them, LOW below HIGH",
    ),
    (
        {"media": {"port_range": "40000-70000"}},
        "media.port_range: '40000-70000' is not a port range; expected LOW-HIGH, e.g. "
        "'40000-49999'",
    ),
    (
        {"media": {"control": "0.0.0.0:22222"}},
        "media.control: '0.0.0.0:22222' is not a loopback address and the NG protocol has no "
        "authentication; use '127.0.0.1:22222', or set media.control_allow_remote = true "
        "behind a firewall",
    ),
    (
        {"media": {"control": "localhost"}},
        "media.control: 'localhost' has no port; expected host:port, e.g. '127.0.0.1:5060' "
        "or '[::1]:5060'",
    ),
    (
        {"media": {"workers": -2}},
        "media.workers: -2 is out of range; expected -1 (one per CPU core), 0 (in-process) "
        "or a number of worker processes up to 1024",
    ),
    (
        {"media": {"workers": 3, "port_range": "40000-40019"}},
        "media.workers: 3 workers do not fit in media.port_range '40000-40019'; each needs at "
        "least 8 ports",
    ),
    (
        {"media": {"timeout": 0}},
        "media.timeout: 0.0 is out of range; expected more than 0 seconds",
    ),
    (
        {"media": {"workers": "4"}},
        "media.workers: '4' is a string; expected an integer",
    ),
    (
        {"general": {"state_dir": ""}},
        "general.state_dir: '' is empty; expected a directory path, e.g. './run'",
    ),
    (
        {"general": {"state_dir": str(DEFAULT_FILE)}},
        f"general.state_dir: {str(DEFAULT_FILE)!r} is not a directory; expected a directory path",
    ),
    (
        {"general": {"drain_timeout": -1}},
        "general.drain_timeout: -1.0 is negative; expected 0 (exit at once) or more seconds",
    ),
    (
        {"general": "./run"},
        "general: './run' is a string; expected a table [general]",
    ),
]


@pytest.mark.parametrize(
    ("tables", "message"), ERROR_CASES, ids=[m.split(":")[0] for _, m in ERROR_CASES]
)
def test_validation_error_text(tables: dict[str, Any], message: str) -> None:
    data = minimal(**{t: v for t, v in tables.items() if isinstance(v, dict)})
    for table, value in tables.items():
        if not isinstance(value, dict):
            data[table] = value
    assert error_of(data) == message


def test_missing_upstream_servers() -> None:
    assert error_of({"listen": {"advertised_sip_host": "192.0.2.10"}}) == (
        "upstream.servers: missing; set it to the switch's SIP URI(s), e.g. "
        "'sip:10.0.0.5:5060;transport=udp' (or GATEWAY_UPSTREAM_SERVERS)"
    )


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(
            minimal(
                listen={"max_message_size": 10},
                upstream={"mode": "b2bua"},
                log={"level": "loud"},
            ),
            {},
        )
    assert info.value.messages == (
        "listen.max_message_size: 10 is out of range; expected 1024 to 1048576 bytes",
        "upstream.mode: 'b2bua' is not a mode; expected path or contact-rewrite",
        "log.level: 'loud' is not a level; expected debug, info, warning or error",
    )
    assert str(info.value) == "\n".join(info.value.messages)


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"lisen": {"wss": "0.0.0.0:8443"}}, "lisen: unknown table; did you mean [listen]?"),
        (
            {"database": {"url": "x"}},
            "database: unknown table; expected one of [listen], [tls], [upstream], [sip], "
            "[security], [websocket], [media], [codecs], [metrics], [log], [general]",
        ),
        (
            {"listen": {"wsss": "0.0.0.0:8443"}},
            "listen.wsss: unknown key; did you mean listen.wss?",
        ),
        (
            {"upstream": {"server": "sip:x"}},
            "upstream.server: unknown key; did you mean upstream.servers?",
        ),
        (
            {"security": {"allowed_origin": []}},
            "security.allowed_origin: unknown key; did you mean security.allowed_origins?",
        ),
        (
            {"listen": {"state_dir": "/tmp"}},
            "listen.state_dir: unknown key; did you mean general.state_dir?",
        ),
        (
            {"log": {"colour": True}},
            "log.colour: unknown key; [log] has level, sip_trace",
        ),
        ({"servers": "sip:x"}, "servers: a key outside any table; put it under [upstream]"),
    ],
)
def test_unknown_keys_are_errors_with_suggestions(data: dict[str, Any], message: str) -> None:
    full = minimal()
    for table, values in data.items():
        if isinstance(values, dict) and table in full:
            full[table].update(values)
        else:
            full[table] = values
    assert error_of(full) == message


# --------------------------------------------------------------------------- env


def test_env_overrides_are_typed_by_field() -> None:
    env = {
        "GATEWAY_UPSTREAM_SERVERS": "sip:10.0.0.5:5060;transport=tcp, sips:sw2.example.com",
        "GATEWAY_LISTEN_WSS": "",
        "GATEWAY_LISTEN_WS": "127.0.0.1:8080",
        "GATEWAY_LISTEN_SIP_TLS": "[::1]:5061",
        "GATEWAY_LISTEN_MAX_MESSAGE_SIZE": " 4096 ",
        "GATEWAY_TLS_VERIFY_UPSTREAM": "no",
        "GATEWAY_UPSTREAM_TCP_FALLBACK": "0",
        "GATEWAY_LOG_SIP_TRACE": "YES",
        "GATEWAY_UPSTREAM_PROBE_INTERVAL": "2.5",
        "GATEWAY_SIP_T1": "0.05",
        "GATEWAY_SECURITY_ALLOWED_ORIGINS": "https://a.example.com, https://B.example.com:8443,",
        "GATEWAY_SECURITY_FLOW_TOKEN_SECRET": SECRET,
        "GATEWAY_GENERAL_STATE_DIR": "/var/lib/webrtc-sip-gateway",
        "GATEWAY_INTERFACE": "CGI/1.1",  # not ours: ignored
        "PATH": "/usr/bin",
    }
    config = config_from_dict(minimal(listen={"max_message_size": 2048}), env)
    assert config.upstream.servers == (
        UpstreamServer(
            host="10.0.0.5", port=5060, transport="tcp", uri="sip:10.0.0.5:5060;transport=tcp"
        ),
        UpstreamServer(
            host="sw2.example.com", port=None, transport="tls", uri="sips:sw2.example.com"
        ),
    )
    assert config.listen.wss == ""
    assert config.listen.ws == "127.0.0.1:8080"
    assert config.listen.sip_tls == "[::1]:5061"
    assert config.listen.max_message_size == 4096  # the environment beats the file
    assert config.tls.verify_upstream is False
    assert config.upstream.tcp_fallback is False
    assert config.log.sip_trace is True
    assert config.upstream.probe_interval == 2.5
    assert config.sip.t1 == 0.05
    assert config.security.allowed_origins == (
        "https://a.example.com",
        "https://b.example.com:8443",
    )
    assert config.security.flow_token_secret == SECRET
    assert config.general.state_dir == Path("/var/lib/webrtc-sip-gateway")


def test_env_empty_list() -> None:
    data = minimal(security={"allowed_origins": ["https://a.example.com"]})
    config = config_from_dict(data, {"GATEWAY_SECURITY_ALLOWED_ORIGINS": ""})
    assert config.security.allowed_origins == ()


def test_env_supplies_a_required_key() -> None:
    data = {"listen": {"advertised_sip_host": "192.0.2.10"}}
    config = config_from_dict(data, {"GATEWAY_UPSTREAM_SERVERS": "sip:sw.example.com"})
    assert config.upstream.servers[0].host == "sw.example.com"
    assert config.upstream.servers[0].transport == "udp"


def test_env_reads_os_environ_when_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_SECURITY_MAX_CALLS", "7")
    assert config_from_dict(MINIMAL).security.max_calls == 7


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"GATEWAY_LOG_SIP_TRACE": "maybe"},
            "GATEWAY_LOG_SIP_TRACE: 'maybe' is not a boolean; expected true/false, 1/0 or yes/no",
        ),
        (
            {"GATEWAY_SECURITY_MAX_CALLS": "lots"},
            "GATEWAY_SECURITY_MAX_CALLS: 'lots' is not an integer",
        ),
        (
            {"GATEWAY_SIP_T1": "half"},
            "GATEWAY_SIP_T1: 'half' is not a number",
        ),
        (
            {"GATEWAY_SIP_T2": "nan"},
            "GATEWAY_SIP_T2: 'nan' is not a finite number",
        ),
        (
            {"GATEWAY_SECURITY_MAX_CALLS": "0"},
            "security.max_calls (from GATEWAY_SECURITY_MAX_CALLS): 0 is out of range; "
            "expected at least 1",
        ),
        (
            {"GATEWAY_UPSTREAM_SERVERS": "sip:x;transport=sctp"},
            "upstream.servers (from GATEWAY_UPSTREAM_SERVERS): 'sip:x;transport=sctp' has an "
            "unknown transport 'sctp'; expected udp, tcp or tls",
        ),
        (
            {"GATEWAY_LISTEN_WSSS": "0.0.0.0:443"},
            "GATEWAY_LISTEN_WSSS: unknown key listen.wsss; did you mean GATEWAY_LISTEN_WSS?",
        ),
        (
            {"GATEWAY_LOG_FORMAT": "json"},
            "GATEWAY_LOG_FORMAT: unknown key log.format; [log] has level, sip_trace",
        ),
    ],
)
def test_env_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    assert error_of(MINIMAL, env) == message


# --------------------------------------------------------------------------- parsers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:8443", ("0.0.0.0", 8443)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:5060", ("::1", 5060)),
        ("[::]:443", ("::", 443)),
        ("localhost:65535", ("localhost", 65535)),
        ("gw-1.example.com:5062", ("gw-1.example.com", 5062)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text, "listen.sip") == expected


def test_parse_hostport_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_hostport("127.0.0.1:65536", "metrics.listen")
    assert str(info.value) == (
        "metrics.listen: '127.0.0.1:65536' has an invalid port '65536'; "
        "expected a number from 0 to 65535"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sip:10.0.0.5", [("10.0.0.5", None, "udp")]),
        ("SIP:10.0.0.5:5070;Transport=TCP", [("10.0.0.5", 5070, "tcp")]),
        ("sip:sw.example.com;transport=tls", [("sw.example.com", None, "tls")]),
        ("sips:sw.example.com:5071", [("sw.example.com", 5071, "tls")]),
        ("sips:sw.example.com;transport=tcp", [("sw.example.com", None, "tls")]),
        ("sip:[2001:db8::1]:5060;lr;transport=udp", [("2001:db8::1", 5060, "udp")]),
        (
            " sip:10.0.0.5:5060;transport=udp , sip:sw2.example.com;transport=tls ",
            [("10.0.0.5", 5060, "udp"), ("sw2.example.com", None, "tls")],
        ),
        # The same host on two transports is two servers.
        (
            "sip:10.0.0.5, sip:10.0.0.5;transport=tcp",
            [("10.0.0.5", None, "udp"), ("10.0.0.5", None, "tcp")],
        ),
    ],
)
def test_parse_upstream_servers(text: str, expected: list[tuple[str, int | None, str]]) -> None:
    servers = parse_upstream_servers(text)
    assert [(s.host, s.port, s.transport) for s in servers] == expected
    assert [s.uri for s in servers] == [item.strip() for item in text.split(",")]


def test_servers_as_a_toml_array() -> None:
    data = minimal(upstream={"servers": ["sip:10.0.0.5", "sip:10.0.0.6;transport=tcp"]})
    servers = config_from_dict(data, {}).upstream.servers
    assert [s.uri for s in servers] == ["sip:10.0.0.5", "sip:10.0.0.6;transport=tcp"]


def test_advertised_hosts_are_filled_in() -> None:
    config = config_from_dict(
        minimal(listen={"sip": "198.51.100.7:5062", "advertised_sip_host": ""}), {}
    )
    assert config.listen.advertised_sip_host == "198.51.100.7"
    assert config.listen.advertised_ws_host == "gateway.invalid"
    config = config_from_dict(minimal(listen={"advertised_ws_host": "ws.example.com"}), {})
    assert config.listen.advertised_sip_host == "192.0.2.10"
    assert config.listen.advertised_ws_host == "ws.example.com"


def test_log_level_is_case_insensitive_and_origins_lower_case() -> None:
    config = config_from_dict(
        minimal(
            log={"level": "DEBUG"}, security={"allowed_origins": ["HTTPS://Phone.Example.com"]}
        ),
        {},
    )
    assert config.log.level == "debug"
    assert config.security.allowed_origins == ("https://phone.example.com",)


def test_warnings() -> None:
    assert config_warnings(config_from_dict(MINIMAL, {})) == [
        "tls.cert/tls.key are empty: a self-signed certificate is generated in 'run'; "
        "browsers refuse it for wss:// until you configure a real one",
        "security.flow_token_secret is empty: a random key is used per process, so a "
        "restart invalidates the Path of every registration",
    ]
    quiet = minimal(
        listen={"wss": "", "ws": "127.0.0.1:8080"}, security={"flow_token_secret": SECRET}
    )
    assert config_warnings(config_from_dict(quiet, {})) == []


# --------------------------------------------------------------------------- files


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == (
        f"{path}: config file not found; pass --config with the path of your gateway.toml "
        "(config/gateway.toml in the repository documents every key)"
    )


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, env={})
    assert str(info.value) == f"{tmp_path}: is a directory; expected a TOML config file"


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[upstream]\nservers = "sip:x\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value).startswith(f"{path}: not valid TOML: ")
    assert "line 2" in str(info.value)


# --------------------------------------------------------------------------- TLS


def test_self_signed_generated_then_reused(tmp_path: Path) -> None:
    state = tmp_path / "state" / "nested"  # created on demand
    cert_path, key_path = ensure_self_signed(state)
    assert (cert_path, key_path) == (state / SELF_SIGNED_CERT, state / SELF_SIGNED_KEY)
    assert key_path.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=365) <= lifetime <= datetime.timedelta(days=366)

    before = cert_path.read_bytes(), key_path.read_bytes()
    assert ensure_self_signed(state) == (cert_path, key_path)
    assert (cert_path.read_bytes(), key_path.read_bytes()) == before


def test_self_signed_replaced_when_expiring_or_broken(tmp_path: Path) -> None:
    cert_path, key_path = ensure_self_signed(tmp_path)
    first = cert_path.read_bytes()
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=364)
    ensure_self_signed(tmp_path, now=later)
    second = cert_path.read_bytes()
    assert second != first
    renewed = x509.load_pem_x509_certificate(second)
    assert renewed.not_valid_after_utc > later + datetime.timedelta(days=364)

    key_path.write_text("garbage")
    ensure_self_signed(tmp_path)
    assert cert_path.read_bytes() != second
    make_server_context(cert_path, key_path, "1.2")  # the new pair matches


def test_self_signed_unwritable_state_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as info:
        ensure_self_signed(blocker / "state")
    assert str(info.value).startswith(
        f"general.state_dir: {str(blocker / 'state')!r} cannot hold the self-signed certificate"
    )


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> str:
    """Run a TLS handshake over memory BIOs; return the negotiated version."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):  # a TLS 1.2/1.3 handshake needs at most a few flights
        for name, end in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values())
    version = c.version()
    assert version is not None
    return version


def test_server_context_serves_the_certificate(tmp_path: Path) -> None:
    cert_path, key_path = ensure_self_signed(tmp_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    assert _handshake(make_server_context(cert_path, key_path, "1.2"), client) == "TLSv1.3"
    old_client = ssl.create_default_context(cafile=str(cert_path))
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _handshake(make_server_context(cert_path, key_path, "1.2"), old_client) == "TLSv1.2"
    with pytest.raises(ssl.SSLError):
        _handshake(make_server_context(cert_path, key_path, "1.3"), old_client)


def test_server_context_errors(tmp_path: Path) -> None:
    cert_path, key_path = ensure_self_signed(tmp_path / "a")
    _, other_key = ensure_self_signed(tmp_path / "b")
    cases: list[tuple[Path | str, Path | str, str, str]] = [
        (
            tmp_path / "none.pem",
            key_path,
            "1.2",
            f"tls.cert: {str(tmp_path / 'none.pem')!r} cannot be read (No such file or "
            "directory); expected a readable PEM certificate chain",
        ),
        (
            cert_path,
            tmp_path / "none.key",
            "1.2",
            f"tls.key: {str(tmp_path / 'none.key')!r} cannot be read (No such file or "
            "directory); expected a readable PEM private key",
        ),
        (
            key_path,
            key_path,
            "1.2",
            f"tls.cert: {str(key_path)!r} holds no PEM certificate; expected a file starting "
            "with -----BEGIN CERTIFICATE-----",
        ),
        (
            cert_path,
            cert_path,
            "1.2",
            f"tls.key: {str(cert_path)!r} holds no PEM private key; expected a file starting "
            "with -----BEGIN PRIVATE KEY----- (or EC/RSA PRIVATE KEY)",
        ),
        (
            cert_path,
            other_key,
            "1.2",
            f"tls.key: {str(other_key)!r} does not match the certificate in tls.cert "
            f"{str(cert_path)!r}; expected the key the certificate was issued for",
        ),
        (
            cert_path,
            key_path,
            "1.0",
            "tls.min_version: '1.0' is not a TLS version; expected 1.2 or 1.3",
        ),
    ]
    encrypted = tmp_path / "encrypted.key"
    private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    cases.append(
        (
            cert_path,
            encrypted,
            "1.2",
            f"tls.key: {str(encrypted)!r} is encrypted; expected an unencrypted PEM key "
            "(decrypt it with 'openssl pkey -in KEY -out KEY.plain')",
        )
    )
    for cert, key, version, message in cases:
        with pytest.raises(ConfigError) as info:
            make_server_context(cert, key, version)
        assert str(info.value) == message


# --------------------------------------------------------------------------- CLI


def _cli(*args: str, console_script: bool = False) -> subprocess.CompletedProcess[str]:
    if console_script:
        command = [str(Path(sys.executable).parent / "webrtc-sip-gateway"), *args]
    else:
        command = [sys.executable, "-m", "gateway", *args]
    return subprocess.run(
        command, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60
    )


def test_cli_check_config_on_the_shipped_file() -> None:
    result = _cli("--check-config", console_script=True)  # --config defaults to it
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "config OK: wss 0.0.0.0:8443, sip 0.0.0.0:5062 (advertised as 127.0.0.1), "
        "upstream 127.0.0.1:5060/udp in path mode, tls self-signed, metrics 127.0.0.1:9100\n"
    )
    assert "warning: tls.cert/tls.key are empty" in result.stderr


def test_cli_check_config_on_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        DEFAULT_FILE.read_text().replace('mode = "path"', 'mode = "pth"') + "\n[extra]\nx = 1\n"
    )
    result = _cli("--config", str(path), "--check-config")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "webrtc-sip-gateway: config error: extra: unknown table; expected one of [listen], "
        "[tls], [upstream], [sip], [security], [websocket], [media], [codecs], [metrics], [log], [general]",
        "webrtc-sip-gateway: config error: upstream.mode: 'pth' is not a mode; expected path "
        "or contact-rewrite",
    ]


def test_cli_check_config_loads_the_certificate(tmp_path: Path) -> None:
    cert_path, _ = ensure_self_signed(tmp_path / "a")
    _, other_key = ensure_self_signed(tmp_path / "b")
    path = tmp_path / "gateway.toml"
    path.write_text(
        DEFAULT_FILE.read_text()
        .replace('cert = ""', f'cert = "{cert_path}"')
        .replace('key = ""', f'key = "{other_key}"')
    )
    result = _cli("--config", str(path), "--check-config")
    assert result.returncode == 2
    assert "config error: tls.key: " in result.stderr
    assert "does not match the certificate in tls.cert" in result.stderr


def test_cli_missing_file_without_check_exits_2(tmp_path: Path) -> None:
    """A bad config stops the daemon before anything runs, with the same message."""
    path = tmp_path / "missing.toml"
    result = _cli("--config", str(path))
    assert result.returncode == 2
    assert result.stderr == (
        f"webrtc-sip-gateway: config error: {path}: config file not found; pass --config "
        "with the path of your gateway.toml (config/gateway.toml in the repository "
        "documents every key)\n"
    )


# --------------------------------------------------------------------------- [media]


def test_media_enabled_with_remote_control_and_workers() -> None:
    config = config_from_dict(
        minimal(
            media={
                "enabled": True,
                "public_ip": "203.0.113.10",
                "bind_ip": "::",
                "control": "[::1]:22223",
                "port_range": " 30000 - 30999 ",
                "workers": 4,
                "timeout": 20,
            }
        ),
        {},
    )
    media = config.media
    assert media.enabled and media.public_ip == "203.0.113.10" and media.bind_ip == "::"
    assert (media.control, media.port_range, media.ports) == (
        "[::1]:22223",
        "30000-30999",
        (30000, 30999),
    )
    assert (media.workers, media.timeout) == (4, 20.0)
    remote = config_from_dict(
        minimal(media={"control": "10.0.0.5:22222", "control_allow_remote": True}), {}
    )
    assert remote.media.control == "10.0.0.5:22222"
    assert config_from_dict(minimal(media={"workers": -1}), {}).media.workers == -1


def test_media_env_overrides() -> None:
    env = {
        "GATEWAY_MEDIA_ENABLED": "yes",
        "GATEWAY_MEDIA_PUBLIC_IP": "192.0.2.7",
        "GATEWAY_MEDIA_WORKERS": "2",
    }
    media = config_from_dict(MINIMAL, env).media
    assert (media.enabled, media.public_ip, media.workers) == (True, "192.0.2.7", 2)
    assert error_of(MINIMAL, {"GATEWAY_MEDIA_ENABLED": "true"}) == (
        "media.public_ip: '' is empty but media.enabled is true; set the IP address browsers "
        "and the switch send media to, e.g. '203.0.113.10'"
    )


# --------------------------------------------------------------------------- [codecs]


def test_codecs_table_is_read_and_names_are_canonical() -> None:
    codecs = config_from_dict(
        minimal(
            codecs={
                "switch": ["g729", "pcma"],
                "browser": ["OPUS"],
                "strip": ["G722", "isac|red"],
                "opus_complexity": 10,
                "transcode": False,
                "opus_bitrate": 32000,
            }
        ),
        {},
    ).codecs
    assert codecs == CodecsConfig(
        switch=("G729", "PCMA"),
        browser=("opus",),
        strip=("G722", "isac|red"),
        opus_complexity=10,
        transcode=False,
        opus_bitrate=32000,
    )


@pytest.mark.parametrize(
    ("codecs", "message"),
    [
        (
            {"switch": ["PCMU", "opus"]},
            "codecs.switch: 'opus' is not a codec the gateway can offer here; expected PCMU, "
            "PCMA or G729",
        ),
        (
            {"browser": ["opus", "G729"]},
            "codecs.browser: 'G729' is not a codec the gateway can offer here; expected opus, "
            "PCMU or PCMA",
        ),
        ({"switch": ["PCMU", "pcmu"]}, "codecs.switch: 'pcmu' is listed twice; list each codec once"),
        ({"switch": []}, "codecs.switch: [] is empty; list at least one codec, e.g. ['PCMU', 'PCMA']"),
        ({"switch": "PCMU"}, "codecs.switch: 'PCMU' is a string; expected a list of strings, e.g. "
         '["https://phone.example.com"]'),
        (
            {"strip": ["G72("]},
            "codecs.strip: 'G72(' is not a regular expression (missing ), unterminated subpattern "
            "at position 3); expected e.g. 'G722' or 'PCM.'",
        ),
        (
            {"strip": ["G722", "OP.*"]},
            "codecs.strip: 'OP.*' would strip opus from the browser's offer; opus cannot be "
            "stripped (it is what the gateway transcodes from); narrow the pattern",
        ),
        (
            {"opus_complexity": 11},
            "codecs.opus_complexity: 11 is out of range; expected 0 to 10 (libopus complexity)",
        ),
        (
            {"opus_bitrate": 5000},
            "codecs.opus_bitrate: 5000 is out of range; expected 0 (automatic) or 6000 to "
            "510000 bit/s",
        ),
        ({"opus_bitrate": "32k"}, "codecs.opus_bitrate: '32k' is a string; expected an integer"),
        ({"transcode": "no"}, "codecs.transcode: 'no' is a string; expected true or false"),
        ({"trancode": True}, "codecs.trancode: unknown key; did you mean codecs.transcode?"),
    ],
)  # fmt: skip
def test_codecs_errors(codecs: dict[str, Any], message: str) -> None:
    assert error_of(minimal(codecs=codecs)) == message


def test_codecs_env_overrides() -> None:
    env = {"GATEWAY_CODECS_STRIP": "G722, CN", "GATEWAY_CODECS_TRANSCODE": "false",
           "GATEWAY_CODECS_SWITCH": "PCMA"}  # fmt: skip
    codecs = config_from_dict(MINIMAL, env).codecs
    assert (codecs.strip, codecs.transcode, codecs.switch) == (("G722", "CN"), False, ("PCMA",))
    assert error_of(MINIMAL, {"GATEWAY_CODECS_STRIP": "opus"}) == (
        "codecs.strip (from GATEWAY_CODECS_STRIP): 'opus' would strip opus from the browser's "
        "offer; opus cannot be stripped (it is what the gateway transcodes from); narrow the "
        "pattern"
    )
