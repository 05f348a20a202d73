"""Command line: ``webrtc-sip-gateway --config FILE [--check-config]``.

``--check-config`` loads and validates the file (with ``GATEWAY_*`` environment
overrides, and the TLS certificate and key when set), prints ``config OK: ...``
and exits 0, or prints every problem to stderr and exits 2.  Without it the
gateway runs until SIGTERM (``gateway.app.run``) and exits with its code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Final

from gateway.config import Config, ConfigError, config_warnings, load_config

__all__ = ["EXIT_CONFIG", "build_parser", "main", "summary"]

PROG: Final = "webrtc-sip-gateway"
DEFAULT_CONFIG: Final = "config/gateway.toml"
#: Exit code for an unusable configuration (argparse uses 2 for bad arguments too).
EXIT_CONFIG: Final = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the console script."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="WebRTC-to-SIP gateway: SIP over WebSocket (RFC 7118) to a SIP switch.",
        epilog="Any key can be overridden as GATEWAY_<TABLE>_<KEY>, "
        "e.g. GATEWAY_UPSTREAM_SERVERS='sip:10.0.0.5;transport=udp'.",
    )
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"TOML configuration file (default: {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration, print a summary and exit (0: OK, 2: errors)",
    )
    return parser


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def summary(config: Config) -> str:
    """One line describing what the configuration will run."""
    listen = config.listen
    parts = [f"{name} {value}" for name, value in (("wss", listen.wss), ("ws", listen.ws)) if value]
    parts.append(f"sip {listen.sip} (advertised as {listen.advertised_sip_host})")
    if listen.sip_tls:
        parts.append(f"sip-tls {listen.sip_tls}")
    servers = ", ".join(
        f"{_host(s.host)}{'' if s.port is None else f':{s.port}'}/{s.transport}"
        for s in config.upstream.servers
    )
    parts.append(f"upstream {servers} in {config.upstream.mode} mode")
    if listen.wss or listen.sip_tls:
        parts.append(f"tls {config.tls.cert or 'self-signed'}")
    parts.append(f"metrics {config.metrics.listen or 'off'}")
    return ", ".join(parts)


def _check_tls(config: Config) -> None:
    """Load the configured certificate and key the way the listeners will."""
    if config.tls.cert and (config.listen.wss or config.listen.sip_tls):
        from gateway.tlsutil import make_server_context

        make_server_context(config.tls.cert, config.tls.key, config.tls.min_version)


def _report(exc: ConfigError) -> int:
    for message in exc.messages or (str(exc),):
        sys.stderr.write(f"{PROG}: config error: {message}\n")
    return EXIT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if args.check_config:
            _check_tls(config)
    except ConfigError as exc:
        return _report(exc)
    if args.check_config:
        sys.stdout.write(f"config OK: {summary(config)}\n")
        for warning in config_warnings(config):
            sys.stderr.write(f"{PROG}: warning: {warning}\n")
        return 0
    # Imported only now: --check-config must work without the runtime stack.
    from gateway import app

    return app.run(config, str(args.config))


if __name__ == "__main__":
    sys.exit(main())
