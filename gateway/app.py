"""Composition root: builds the gateway from a Config and runs it on uvloop.

The only module that imports every tier. Signals: SIGTERM/SIGINT drain
(refuse new calls and connections, let calls finish up to
``general.drain_timeout``, then exit), SIGHUP reloads the TLS certificate and
the upstream server list without dropping calls.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import signal
import socket
import ssl
import sys
from pathlib import Path

from gateway import metrics
from gateway.config import Config, ConfigError, load_config, parse_hostport
from gateway.proxy.flow import FlowTable, FlowTokenSigner
from gateway.proxy.router import Proxy, ProxySettings
from gateway.proxy.upstream import PoolMember, UpstreamPool
from gateway.sip.transaction import SipTimers
from gateway.tlsutil import ensure_self_signed, make_server_context
from gateway.transport.ng import MediaControlHandle, start_media
from gateway.transport.ng_client import NgClient
from gateway.transport.runner import ProxyRunner
from gateway.transport.sip_stream import SipStreamTransport
from gateway.transport.sip_udp import SipUdpListener
from gateway.transport.ws import WsListener

__all__ = ["Gateway", "run"]

log = logging.getLogger("gateway")


def _default_port(transport: str) -> int:
    return 5061 if transport == "tls" else 5060


async def resolve_pool(config: Config) -> list[PoolMember]:
    """Resolve each configured server to an IP literal (A/AAAA, RFC 3263 §4.2)."""
    loop = asyncio.get_running_loop()
    members: list[PoolMember] = []
    for server in config.upstream.servers:
        port = server.port or _default_port(server.transport)
        try:
            ipaddress.ip_address(server.host)
            hosts = [server.host]
        except ValueError:
            infos = await loop.getaddrinfo(server.host, port, type=socket.SOCK_DGRAM)
            hosts = list(dict.fromkeys(str(info[4][0]) for info in infos))
            if not hosts:
                raise ConfigError(f"upstream.servers: {server.uri!r} does not resolve") from None
        for host in hosts:
            members.append(PoolMember(host, port, server.transport, server.uri))
    return members


class Gateway:
    """Everything one gateway process runs."""

    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.ws_listeners: list[WsListener] = []
        self.udp: SipUdpListener | None = None
        self.streams: dict[str, SipStreamTransport] = {}
        self.metrics_server: metrics.MetricsServer | None = None
        self.runner: ProxyRunner | None = None
        self.proxy: Proxy | None = None
        self.server_ssl: ssl.SSLContext | None = None
        self.media: MediaControlHandle | None = None
        self.media_client: NgClient | None = None
        self.draining = False
        self._started = False
        self._heartbeat: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ building

    async def start(self) -> None:
        cfg = self.config
        members = await resolve_pool(cfg)
        pool = UpstreamPool(members)
        for member in members:
            metrics.UPSTREAM_UP.labels(member.name).set(1)
        secret = cfg.security.flow_token_secret.encode()
        if not secret:
            secret = secrets.token_bytes(32)
            log.warning(
                "! security.flow_token_secret is empty: using a random key; a restart "
                "invalidates the Path of every registration (set a fixed secret)"
            )
        sip_host, sip_port = parse_hostport(cfg.listen.sip, "listen.sip")
        tls_host, tls_port = (
            parse_hostport(cfg.listen.sip_tls, "listen.sip_tls") if cfg.listen.sip_tls else ("", 0)
        )
        # Bind the switch-facing sockets first so port 0 resolves before the
        # proxy writes our port into Via/Path/Record-Route.
        udp = SipUdpListener(
            sip_host, sip_port, allowed=self._allowed_source, deliver=self._from_upstream
        )
        await udp.start()
        self.udp = udp
        tcp = SipStreamTransport(
            "tcp",
            sip_host,
            udp.port,
            allowed=self._allowed_source,
            deliver=self._from_upstream,
            max_message_size=cfg.listen.max_message_size,
        )
        await tcp.start()
        self.streams["tcp"] = tcp
        client_ssl = ssl.create_default_context()
        if not cfg.tls.verify_upstream:
            client_ssl.check_hostname = False
            client_ssl.verify_mode = ssl.CERT_NONE
        self.server_ssl = self._make_server_ssl()
        tls = SipStreamTransport(
            "tls",
            tls_host or sip_host,
            tls_port,
            allowed=self._allowed_source,
            deliver=self._from_upstream,
            max_message_size=cfg.listen.max_message_size,
            server_ssl=self.server_ssl,
            client_ssl=client_ssl,
            listen=bool(cfg.listen.sip_tls),
        )
        await tls.start()
        self.streams["tls"] = tls
        settings = ProxySettings(
            sip_host=cfg.listen.advertised_sip_host or sip_host,
            sip_port=udp.port,
            sip_tls_port=tls.port if cfg.listen.sip_tls else None,
            ws_host=cfg.listen.advertised_ws_host or "gateway.invalid",
            mode=cfg.upstream.mode,
            timers=SipTimers(t1=cfg.sip.t1, t2=cfg.sip.t2, t4=cfg.sip.t4),
            max_calls=cfg.security.max_calls,
            user_agent=cfg.sip.user_agent,
            udp_mtu=cfg.upstream.udp_mtu,
            tcp_fallback=cfg.upstream.tcp_fallback,
            probe_interval=cfg.upstream.probe_interval,
            flow_timer=max(10, int(cfg.websocket.idle_timeout) - 10)
            if cfg.websocket.idle_timeout
            else None,
            media=cfg.media.enabled,
            dtmf_info_to_rfc4733=cfg.media.dtmf_info_to_rfc4733,
            dtmf_rfc4733_to_info=cfg.media.dtmf_rfc4733_to_info,
        )
        self.proxy = Proxy(settings, pool, FlowTable(FlowTokenSigner(secret)))
        self.runner = ProxyRunner(self.proxy, sip_trace=cfg.log.sip_trace)
        self.runner.upstream = self
        if cfg.media.enabled:
            # The proxy speaks rtpengine NG to the media layer, in-process or
            # in worker processes: the same socket either way.
            self.media = await start_media(cfg)
            self.media_client = await NgClient.connect(*self.media.address)
            self.runner.media = self.media_client
            log.info(
                "= media anchoring on: %s, NG control %s:%d, ports %s, advertised %s",
                self.media.mode,
                *self.media.address,
                cfg.media.port_range,
                cfg.media.public_ip,
            )
        for key, value, ctx in (
            ("listen.wss", cfg.listen.wss, self.server_ssl),
            ("listen.ws", cfg.listen.ws, None),
        ):
            if not value:
                continue
            host, port = parse_hostport(value, key)
            listener = WsListener(
                self.runner,
                host=host,
                port=port,
                ssl_context=ctx,
                allowed_origins=list(cfg.security.allowed_origins),
                max_message_size=cfg.listen.max_message_size,
                ping_interval=cfg.websocket.ping_interval,
                idle_timeout=cfg.websocket.idle_timeout,
                max_connections_per_ip=cfg.security.max_connections_per_ip,
                max_requests_per_second_per_ip=cfg.security.max_requests_per_second_per_ip,
            )
            await listener.start()
            self.ws_listeners.append(listener)
        self.runner.flows = self
        if cfg.metrics.listen:
            mhost, mport = parse_hostport(cfg.metrics.listen, "metrics.listen")
            self.metrics_server = metrics.MetricsServer(mhost, mport, self.ready)
            await self.metrics_server.start()
            log.info("= metrics on http://%s:%d/metrics", mhost, self.metrics_server.port)
        self.runner.start(media_poll=min(5.0, cfg.media.timeout / 4) if cfg.media.enabled else None)
        self._heartbeat = asyncio.create_task(self._loop_lag())
        self._started = True
        log.info(
            "= gateway up: upstream %s, mode %s",
            ", ".join(f"{m.host}:{m.port}/{m.transport}" for m in members),
            cfg.upstream.mode,
        )

    def _make_server_ssl(self) -> ssl.SSLContext | None:
        cfg = self.config
        if not (cfg.listen.wss or cfg.listen.sip_tls):
            return None
        cert, key = cfg.tls.cert, cfg.tls.key
        if not cert:
            cert_path, key_path = ensure_self_signed(Path(cfg.general.state_dir))
            cert, key = str(cert_path), str(key_path)
            log.warning(
                "! tls.cert/tls.key not set: using a self-signed certificate %s "
                "(browsers will refuse wss:// until you configure a real one)",
                cert,
            )
        self._cert_paths = (cert, key)
        return make_server_context(cert, key, cfg.tls.min_version)

    # ------------------------------------------------------------- plumbing

    def _allowed_source(self, host: str) -> bool:
        """Only the upstream pool may send SIP to the switch-facing side."""
        return self.proxy is not None and self.proxy.pool.is_member_address(host)

    def _from_upstream(self, data: bytes, host: str, port: int, transport: str) -> None:
        if self.runner is not None:
            self.runner.from_upstream(data, host, port, transport)

    def send(self, host: str, port: int, transport: str, data: bytes) -> None:
        """UpstreamSender: route an outgoing message to the right socket."""
        if transport == "udp":
            if self.udp is not None:
                self.udp.send(host, port, data)
        else:
            stream = self.streams.get(transport)
            if stream is not None:
                stream.send(host, port, data)

    def send_to_flow(self, flow_id: int, data: bytes) -> bool:
        """FlowSender: find the listener holding the flow."""
        for listener in self.ws_listeners:
            if listener.send_to_flow(flow_id, data):
                return True
        return False

    def ready(self) -> bool:
        return self._started and not self.draining

    async def _loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(1.0)
            metrics.LOOP_LAG.observe(max(0.0, loop.time() - start - 1.0))

    # ------------------------------------------------------------ lifecycle

    async def drain(self, timeout: float) -> None:
        """Stop taking new work; wait for calls to end, up to ``timeout``."""
        self.draining = True
        if self.proxy is not None:
            self.proxy.draining = True
        for listener in self.ws_listeners:
            listener.stop_accepting()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.proxy is not None and self.proxy.active_calls and loop.time() < deadline:
            await asyncio.sleep(0.2)
        log.info(
            "= drained (calls left: %d)", self.proxy.active_calls if self.proxy is not None else 0
        )

    def reload(self) -> None:
        """SIGHUP: new certificate for new handshakes, new upstream list."""
        if self.server_ssl is not None and getattr(self, "_cert_paths", None):
            try:
                self.server_ssl.load_cert_chain(*self._cert_paths)
                log.info("= reloaded TLS certificate %s", self._cert_paths[0])
            except (OSError, ssl.SSLError) as exc:
                log.error("! TLS certificate reload failed, keeping the old one: %s", exc)
        if self.config_path is not None and self.proxy is not None:
            try:
                new = load_config(self.config_path)
            except ConfigError as exc:
                log.error("! config reload failed, keeping the running config: %s", exc)
                return
            task = asyncio.create_task(self._reload_pool(new))
            task.add_done_callback(lambda t: t.exception())

    async def _reload_pool(self, new: Config) -> None:
        if self.proxy is None:
            return
        try:
            members = await resolve_pool(new)
        except (ConfigError, OSError) as exc:
            log.error("! upstream reload failed, keeping the old pool: %s", exc)
            return
        old = {m.address: m for m in self.proxy.pool.members}
        self.proxy.pool.members = [old.get(m.address, m) for m in members]
        log.info(
            "= upstream pool reloaded: %s",
            ", ".join(f"{m.host}:{m.port}/{m.transport}" for m in self.proxy.pool.members),
        )

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for listener in self.ws_listeners:
            await listener.close()
        if self.runner is not None:
            self.runner.close()
        if self.media_client is not None:
            await self.media_client.close()
        if self.media is not None:
            await self.media.close()
        if self.udp is not None:
            self.udp.close()
        for stream in self.streams.values():
            await stream.close()
        if self.metrics_server is not None:
            await self.metrics_server.close()


async def _main(config: Config, config_path: str | None) -> int:
    gateway = Gateway(config, config_path)
    try:
        await gateway.start()
    except (OSError, ConfigError) as exc:
        log.error("! start-up failed: %s", exc)
        await gateway.close()
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.reload)
    await stop.wait()
    log.info("= shutting down: draining for up to %.0fs", config.general.drain_timeout)
    await gateway.drain(config.general.drain_timeout)
    await gateway.close()
    return 0


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def run(config: Config, config_path: str | None = None) -> int:
    """Run the gateway until SIGTERM; returns the process exit code."""
    import uvloop

    setup_logging(config.log.level)
    return uvloop.run(_main(config, config_path))
