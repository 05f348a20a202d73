"""Run the real gateway daemon (the console script) as a subprocess for tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.transport.ng_client import NgClient

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_IP = "127.0.0.2"


def free_port(ip: str = GATEWAY_IP, kind: int = socket.SOCK_STREAM) -> int:
    """A port free for both TCP and UDP on ``ip``."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((ip, 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((ip, port))
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                t.bind((ip, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


@dataclass
class GatewayProcess:
    workdir: Path
    upstream: str
    mode: str = "path"
    extra: dict[str, dict[str, object]] = field(default_factory=dict)
    ws_port: int = 0
    wss_port: int = 0
    sip_port: int = 0
    metrics_port: int = 0
    proc: asyncio.subprocess.Process | None = None
    #: the NG control socket, when media is enabled (see with_media)
    control: tuple[str, int] | None = None

    @classmethod
    def with_media(
        cls,
        workdir: Path,
        upstream: str,
        *,
        workers: int = 0,
        timeout: float = 30.0,
        ports: int = 100,
        extra: dict[str, dict[str, object]] | None = None,
    ) -> GatewayProcess:
        """A gateway anchoring media on 127.0.0.2: its own slice of media ports and
        NG control port, ``workers`` media processes (0: in-process)."""
        low = 20000 + (free_port() % 200) * ports
        control = (GATEWAY_IP, free_port())
        tables: dict[str, dict[str, object]] = {
            "media": {
                "enabled": True,
                "public_ip": GATEWAY_IP,
                "bind_ip": GATEWAY_IP,
                "port_range": f"{low}-{low + ports - 1}",
                "control": f"{control[0]}:{control[1]}",
                "workers": workers,
                "timeout": timeout,
            }
        }
        for table, values in (extra or {}).items():
            tables.setdefault(table, {}).update(values)
        return cls(workdir, upstream=upstream, extra=tables, control=control)

    async def media_mode(self) -> tuple[str, str]:
        """(mode, codec) of the one call the media layer holds, from NG ``list`` + ``query``:
        ("passthrough", "PCMU"), ("transcode", "opus<->PCMU")..."""
        assert self.control is not None, "media is not enabled"
        client = await NgClient.connect(*self.control)
        try:
            listed = await client.request({"command": "list"})
            calls = listed.get("calls")
            assert isinstance(calls, list) and len(calls) == 1, listed
            reply = await client.request({"command": "query", "call-id": calls[0]})
        finally:
            await client.close()
        assert reply.get("result") == "ok", reply
        return str(reply.get("mode")), str(reply.get("codec"))

    @property
    def ws_url(self) -> str:
        return f"ws://{GATEWAY_IP}:{self.ws_port}"

    @property
    def wss_url(self) -> str:
        return f"wss://{GATEWAY_IP}:{self.wss_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "gateway.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def write_config(self) -> Path:
        # Each free_port() call releases its port, so two calls can return the same one
        # (seen: wss and sip on one port, the gateway then failing to bind): keep them apart.
        taken: set[int] = set()

        def pick(port: int) -> int:
            while not port or port in taken:
                port = free_port()
            taken.add(port)
            return port

        self.ws_port = pick(self.ws_port)
        self.wss_port = pick(self.wss_port)
        self.sip_port = pick(self.sip_port)
        self.metrics_port = pick(self.metrics_port)
        tables: dict[str, dict[str, object]] = {
            "listen": {
                "wss": f"{GATEWAY_IP}:{self.wss_port}",
                "ws": f"{GATEWAY_IP}:{self.ws_port}",
                "sip": f"{GATEWAY_IP}:{self.sip_port}",
            },
            "upstream": {"servers": self.upstream, "mode": self.mode, "probe_interval": 2.0},
            "security": {"flow_token_secret": "t" * 40},
            "metrics": {"listen": f"{GATEWAY_IP}:{self.metrics_port}"},
            "log": {"level": "debug", "sip_trace": True},
            "general": {"state_dir": str(self.workdir / "state"), "drain_timeout": 3.0},
        }
        for table, values in self.extra.items():
            tables.setdefault(table, {}).update(values)
        lines = []
        for table, values in tables.items():
            lines.append(f"[{table}]")
            for key, value in values.items():
                lines.append(f"{key} = {_toml(value)}")
            lines.append("")
        path = self.workdir / "gateway.toml"
        path.write_text("\n".join(lines))
        return path

    async def start(self, timeout: float = 15.0) -> None:
        config = self.write_config()
        exe = Path(sys.executable).parent / "webrtc-sip-gateway"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = await asyncio.create_subprocess_exec(
            str(exe),
            "--config",
            str(config),
            stdout=log,
            stderr=log,
            cwd=str(ROOT),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{self.log_text()}")
            if await self.http_status("/readyz") == 200:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"gateway not ready in {timeout}s:\n{self.log_text()}")

    async def http_get(self, path: str) -> tuple[int, str]:
        url = f"http://{GATEWAY_IP}:{self.metrics_port}{path}"

        def fetch() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    return resp.status, resp.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()
            except OSError:
                return 0, ""

        return await asyncio.to_thread(fetch)

    async def http_status(self, path: str) -> int:
        return (await self.http_get(path))[0]

    async def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include ``labels``."""
        _, text = await self.http_get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            if head != name and not head.startswith(name + "{"):
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        return self.proc.returncode


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextlib.asynccontextmanager
async def serving(
    gw: GatewayProcess, request: Any, *, forbid: tuple[str, ...] = ()
) -> AsyncIterator[GatewayProcess]:
    """Start ``gw`` for one test; on the way out stop it, print its log tail when the test
    failed (``request`` is the pytest FixtureRequest) and assert it exited 0 and logged no
    line containing one of ``forbid`` (e.g. ``" ERROR "``, ``"Traceback"``)."""
    await gw.start()
    try:
        yield gw
    finally:
        code = await gw.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print("---- gateway log (tail) ----\n" + gw.log_text()[-30000:])
        assert code == 0, f"gateway exit code {code}\n{gw.log_text()[-5000:]}"
        bad = [line for line in gw.log_text().splitlines() if any(f in line for f in forbid)]
        assert not bad, "gateway logged:\n" + "\n".join(bad[:20])
