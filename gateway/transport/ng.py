"""NG control server (rtpengine's protocol, ``gateway.media.ng``) on ``media.control``.

Two modes, one interface (:func:`start_media` returns a :class:`MediaControlHandle`):

- **in-process** (``media.workers = 0``): one :class:`~gateway.transport.media.MediaEngine`
  in this event loop; the NG server runs :class:`~gateway.media.ng.NgCommands` directly.
- **workers** (``media.workers = N``, ``-1`` = one per core): N processes
  (``python -m gateway.media_worker``), each a MediaEngine on its own slice of
  ``media.port_range`` with its own NG socket on 127.0.0.1 (an ephemeral port it reports on
  stdout). The front server here forwards each command to the worker owning the call-id
  (sticky table; a new call goes to the worker holding the fewest calls) with
  :class:`~gateway.transport.ng_client.NgClient`, and aggregates ``ping``,
  ``statistics`` and ``list``. A worker's stdin is a pipe from this process: when this
  process dies for any reason the pipe closes and the worker exits (no orphans).

The UDP server does rtpengine's duplicate handling: a request whose cookie (from the same
source address) was seen within :data:`COOKIE_TTL` seconds is answered from the cache, and
the command is not run again; a duplicate of a request still being handled is dropped (the
reply to the first goes out shortly). The cache is bounded (:data:`MAX_CACHE_ENTRIES`).
Datagrams without a cookie, and oversize ones, are dropped and counted by reason
(:attr:`NgServer.drops`); a request with a cookie but bad bencode gets an error reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import MIN_MEDIA_PORTS, CodecsConfig, Config, parse_hostport
from gateway.media.codecs import available_codecs
from gateway.media.ng import (
    LIST_LIMIT,
    MAX_CALLS,
    MAX_DTMF_EVENTS,
    BencodeError,
    CodecPolicy,
    NgCommands,
    NgDrop,
    NgSession,
    encode_message,
    error_reply,
    parse_message,
)
from gateway.transport.media import MediaEngine, MediaSession
from gateway.transport.media_modes import ModeTracker, tracked
from gateway.transport.ng_client import NgClient, NgTimeout

__all__ = [
    "COOKIE_TTL",
    "MAX_CACHE_ENTRIES",
    "MAX_IN_FLIGHT",
    "MIN_WORKER_PORTS",
    "WORKER_START_TIMEOUT",
    "WORKER_REQUEST_TIMEOUT",
    "EngineBackend",
    "MediaControlHandle",
    "NgServer",
    "WorkerPool",
    "codec_policy",
    "policy_from_json",
    "policy_to_json",
    "serve_ng",
    "slice_ports",
    "start_media",
    "start_media_control",
]

log = logging.getLogger("gateway.ng")

COOKIE_TTL = 30.0
"""Seconds a reply stays cached for retransmissions of its cookie (rtpengine: 30 s)."""
MAX_CACHE_ENTRIES = 4096
"""Cached replies kept at most; the oldest goes first."""
MAX_IN_FLIGHT = 1024
"""Requests handled at once; more are dropped (``busy``) and the client retransmits."""
RECV_LIMIT = 65535
"""Largest datagram read (the NG limit, :data:`gateway.media.ng.MAX_MESSAGE_SIZE`)."""
MIN_WORKER_PORTS = MIN_MEDIA_PORTS
"""Smallest port slice a worker may get (two calls: one port + a pair each)."""
WORKER_START_TIMEOUT = 20.0
"""Seconds a worker process has to report its NG port."""
WORKER_REQUEST_TIMEOUT = 3.0
"""Seconds the front waits for a worker's reply before answering with an error."""
WORKER_STOP_TIMEOUT = 5.0
"""Seconds a worker gets to exit after its pipe closes before it is killed."""
MODE_PRUNE_INTERVAL = 10.0
"""Seconds between the ``list`` that forgets calls the media layer ended by itself (media
timeout) in the per-mode gauge."""

Handler = Callable[[dict[str, object]], Awaitable[dict[str, object]]]


# --------------------------------------------------------------------------- UDP server


class NgServer(asyncio.DatagramProtocol):
    """NG over UDP: parse, de-duplicate by cookie, run ``handler``, reply (see module doc)."""

    def __init__(self, handler: Handler, *, name: str = "ng") -> None:
        self.handler = handler
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None
        self.drops: dict[str, int] = {}
        """Dropped datagrams by reason: too large, no cookie, duplicate in progress, busy."""
        self.requests = 0
        self.duplicates = 0
        """Retransmissions answered from the cache."""
        self.error_replies = 0
        """Requests answered with an error because their body was not valid bencode."""
        self._cache: OrderedDict[tuple[object, bytes], tuple[float, bytes | None]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        assert self.transport is not None
        sockname = self.transport.get_extra_info("sockname")
        return str(sockname[0]), int(sockname[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        log.debug("x ng %s drop: %s", self.name, reason)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is None:
            return
        try:
            request = parse_message(data)
        except NgDrop as exc:
            self._drop(exc.reason)
            return
        except BencodeError as exc:
            self.error_replies += 1
            cookie = data.partition(b" ")[0]
            self.transport.sendto(encode_message(cookie, error_reply(str(exc))), addr)
            return
        now = time.monotonic()
        key = (addr, request.cookie)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            if cached[1] is None:
                self._drop("duplicate in progress")
            else:
                self.duplicates += 1
                self.transport.sendto(cached[1], addr)
            return
        if len(self._tasks) >= MAX_IN_FLIGHT:
            self._drop("busy")
            return
        self.requests += 1
        self._remember(key, None, now)
        task = asyncio.ensure_future(self._run(key, request.cookie, request.body, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _remember(self, key: tuple[object, bytes], reply: bytes | None, now: float) -> None:
        cache = self._cache
        cache[key] = (now + COOKIE_TTL, reply)
        cache.move_to_end(key)
        while cache:
            oldest_key, (expires, _) = next(iter(cache.items()))
            if len(cache) <= MAX_CACHE_ENTRIES and expires > now:
                break
            del cache[oldest_key]

    async def _run(
        self, key: tuple[object, bytes], cookie: bytes, body: dict[str, object], addr: object
    ) -> None:
        try:
            reply = await self.handler(body)
        except Exception:
            log.exception("! ng %s: handler failed", self.name)
            reply = error_reply("internal error")
        data = encode_message(cookie, reply)
        self._remember(key, data, time.monotonic())
        if self.transport is not None:
            self.transport.sendto(data, addr)  # type: ignore[arg-type]

    def cache_size(self) -> int:
        """Cookies held in the duplicate cache."""
        return len(self._cache)

    async def close(self) -> None:
        """Stop reading, wait for handlers in progress; idempotent."""
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def serve_ng(handler: Handler, host: str, port: int, *, name: str = "ng") -> NgServer:
    """Bind an :class:`NgServer` on ``host:port`` (port 0: any free port)."""
    loop = asyncio.get_running_loop()
    _, server = await loop.create_datagram_endpoint(
        lambda: NgServer(handler, name=name), local_addr=(host, port)
    )
    return server


# --------------------------------------------------------------------------- in-process


class EngineBackend:
    """:class:`~gateway.media.ng.NgBackend` over a MediaEngine of this loop.

    ``release`` is synchronous for the sans-I/O command logic; the sockets close in
    :meth:`flush`, which the server awaits before sending the reply (so a ``delete`` reply
    means the ports are free).
    """

    def __init__(self, engine: MediaEngine) -> None:
        self.engine = engine
        self.commands: NgCommands | None = None
        self._closing: list[MediaSession] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def public_ip(self) -> str:
        return self.engine.public_ip

    def open(self, call_id: str) -> NgSession:
        session = self.engine.create_session(call_id)
        session.on_timeout = self._timed_out
        return session

    def release(self, session: NgSession) -> None:
        assert isinstance(session, MediaSession)
        self._closing.append(session)

    def sessions(self) -> int:
        return self.engine.sessions()

    def ports_in_use(self) -> int:
        return self.engine.ports_in_use()

    async def flush(self) -> None:
        """Close the sessions released since the last flush."""
        while self._closing:
            await self._closing.pop().close()

    def _timed_out(self, session: MediaSession, leg: str) -> None:
        # media.timeout: no RTP for that long ends the call (rtpengine's behaviour).
        if self.commands is not None and self.commands.expire(session.call_id, time.time()):
            log.info("x ng call %s ended: no media on the %s leg", session.call_id, leg)
            task = asyncio.ensure_future(self.flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


def codec_policy(config: CodecsConfig) -> CodecPolicy:
    """The media layer's policy from ``[codecs]``: codecs whose library does not load on
    this machine (G729 without libbcg729) are left out, with a warning."""
    available = {name.upper(): reason for name, reason in available_codecs().items()}

    def usable(names: tuple[str, ...], key: str) -> tuple[str, ...]:
        kept = []
        for name in names:
            reason = available.get(name.upper())
            if reason is None:
                kept.append(name)
            else:
                log.warning("! codecs.%s: %s left out: %s", key, name, reason)
        return tuple(kept)

    return CodecPolicy(
        switch=usable(config.switch, "switch"),
        browser=usable(config.browser, "browser"),
        strip=config.strip,
        opus_complexity=config.opus_complexity,
        opus_bitrate=config.opus_bitrate,
        transcode=config.transcode,
    )


def policy_to_json(policy: CodecPolicy) -> str:
    """``policy`` as one JSON line (a media worker's ``--codecs`` argument)."""
    return json.dumps(dataclasses.asdict(policy))


def policy_from_json(text: str) -> CodecPolicy:
    """The inverse of :func:`policy_to_json`.

    Raises:
        ValueError: not a policy.
    """
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("codec policy must be a JSON object")
    try:
        return CodecPolicy(
            switch=tuple(str(v) for v in data["switch"]),
            browser=tuple(str(v) for v in data["browser"]),
            strip=tuple(str(v) for v in data["strip"]),
            opus_complexity=int(data["opus_complexity"]),
            opus_bitrate=int(data.get("opus_bitrate", 0)),
            transcode=bool(data["transcode"]),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"bad codec policy: {exc}") from None


def _log_mode(call_id: str, mode: str) -> None:
    log.info("= media call %s: %s", call_id, mode)


def _log_summary(summary: dict[str, object]) -> None:
    # One JSON line per ended call: the media half of a CDR, for log shippers.
    log.info("= media summary %s", json.dumps(summary, separators=(",", ":"), sort_keys=True))


async def local_handler(
    engine: MediaEngine, *, max_calls: int | None = None, codecs: CodecPolicy | None = None
) -> tuple[NgCommands, EngineBackend, Handler]:
    """NgCommands over ``engine`` and the async handler an :class:`NgServer` calls.

    ``codecs``: the transcoding policy (None: payload passthrough only)."""
    backend = EngineBackend(engine)
    commands = NgCommands(
        backend,
        max_calls=MAX_CALLS if max_calls is None else max_calls,
        codecs=codecs,
        on_mode=_log_mode,
        on_end=_log_summary,
    )
    backend.commands = commands

    async def handle(body: dict[str, object]) -> dict[str, object]:
        reply = commands.handle(body, time.time())
        await backend.flush()
        return reply

    return commands, backend, handle


# --------------------------------------------------------------------------- workers


def slice_ports(low: int, high: int, count: int) -> list[tuple[int, int]]:
    """Split ``[low, high]`` into ``count`` contiguous slices of an even size.

    Raises:
        ValueError: a slice would hold fewer than :data:`MIN_WORKER_PORTS` ports.
    """
    size = ((high - low + 1) // count) & ~1
    if count < 1 or size < MIN_WORKER_PORTS:
        raise ValueError(
            f"media.port_range {low}-{high} is too small for {count} workers "
            f"(at least {MIN_WORKER_PORTS} ports each)"
        )
    return [(low + i * size, low + (i + 1) * size - 1) for i in range(count)]


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    client: NgClient
    ports: tuple[int, int]
    calls: int = 0


@dataclass
class WorkerPool:
    """Media worker processes and the sticky call-id -> worker table."""

    workers: list[_Worker] = field(default_factory=list)
    sticky: dict[str, int] = field(default_factory=dict)

    @classmethod
    async def start(
        cls,
        count: int,
        *,
        public_ip: str,
        bind_ip: str,
        port_range: tuple[int, int],
        timeout: float,
        codecs: CodecPolicy | None = None,
    ) -> WorkerPool:
        """Start ``count`` workers and wait until each reports its NG port.

        ``codecs`` is passed to every worker (None: payload passthrough only).

        Raises:
            ValueError: the port range is too small for ``count`` slices.
            RuntimeError: a worker failed to start.
        """
        pool = cls()
        slices = slice_ports(*port_range, count)
        env = dict(os.environ)
        # The worker imports this package: make it importable from wherever we run.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            for index, (low, high) in enumerate(slices):
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "gateway.media_worker",
                    "--index",
                    str(index),
                    "--public-ip",
                    public_ip,
                    "--bind-ip",
                    bind_ip,
                    "--ports",
                    f"{low}-{high}",
                    "--timeout",
                    str(timeout),
                    *(("--codecs", policy_to_json(codecs)) if codecs is not None else ()),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    env=env,
                )
                port = await pool._ready(process, index)
                client = await NgClient.connect("127.0.0.1", port)
                pool.workers.append(_Worker(index, process, client, (low, high)))
        except BaseException:
            await pool.close()
            raise
        return pool

    async def _ready(self, process: asyncio.subprocess.Process, index: int) -> int:
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), WORKER_START_TIMEOUT)
        except TimeoutError:
            line = b""
        words = line.decode(errors="replace").split()
        if len(words) != 2 or words[0] != "READY" or not words[1].isdigit():
            await _stop_process(process)
            raise RuntimeError(f"media worker {index} did not start (said {line!r})")
        return int(words[1])

    def pids(self) -> list[int]:
        """Process ids of the workers."""
        return [w.process.pid for w in self.workers]

    async def _ask(
        self, worker: _Worker, body: dict[str, object]
    ) -> tuple[_Worker, dict[str, object]]:
        try:
            reply = await worker.client.request(body, timeout=WORKER_REQUEST_TIMEOUT)
        except NgTimeout:
            reply = error_reply(f"media worker {worker.index} not responding")
        return worker, reply

    async def handle(self, body: dict[str, object]) -> dict[str, object]:
        """Forward ``body`` to the owning worker, or ask all and aggregate."""
        command = body.get("command")
        name = command.lower() if isinstance(command, str) else ""
        if name == "ping":
            replies = await asyncio.gather(*(self._ask(w, body) for w in self.workers))
            failed = [w.index for w, r in replies if r.get("result") != "pong"]
            if failed:
                return error_reply(f"media worker(s) {failed} not answering ping")
            return {"result": "pong"}
        if name == "statistics":
            replies = await asyncio.gather(*(self._ask(w, body) for w in self.workers))
            return _sum_statistics([r for _, r in replies], len(self.workers))
        if name == "dtmf events":
            # Each worker's share of one reply's room (the sum stays one datagram).
            share = {**body, "limit": max(1, MAX_DTMF_EVENTS // len(self.workers))}
            replies = await asyncio.gather(*(self._ask(w, share) for w in self.workers))
            events = [e for _, r in replies for e in _list_of(r.get("events"))]
            return {"result": "ok", "events": events}
        if name == "list":
            replies = await asyncio.gather(*(self._ask(w, body) for w in self.workers))
            limit = body.get("limit", LIST_LIMIT)
            calls = [c for _, r in replies for c in _list_of(r.get("calls"))]
            if not isinstance(limit, int) or limit <= 0:
                return error_reply("'limit' must be a positive integer")
            return {"result": "ok", "calls": calls[:limit]}
        call_id = next(
            (
                v
                for k, v in body.items()
                if k.lower().replace(" ", "-").replace("_", "-") == "call-id"
            ),
            None,
        )
        if not isinstance(call_id, str):
            _, reply = await self._ask(self.workers[0], body)
            return reply
        index = self.sticky.get(call_id)
        new = index is None and name == "offer"
        if index is None:
            if name == "offer":
                index = min(self.workers, key=lambda w: w.calls).index
                self.sticky[call_id] = index
                self.workers[index].calls += 1
            else:
                index = 0  # unknown call: any worker answers "Unknown call-id" the same way
        worker = self.workers[index]
        _, reply = await self._ask(worker, body)
        ended = name == "delete" or (reply.get("error-reason") == "Unknown call-id")
        if (new and reply.get("result") != "ok") or (ended and call_id in self.sticky):
            if self.sticky.pop(call_id, None) is not None:
                worker.calls -= 1
        return reply

    async def close(self) -> None:
        """Stop every worker (pipe closed, then SIGTERM, then SIGKILL); idempotent."""
        workers, self.workers = self.workers, []
        self.sticky.clear()
        for worker in workers:
            await worker.client.close()
        await asyncio.gather(*(_stop_process(w.process) for w in workers))


def _list_of(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _sum_statistics(replies: list[dict[str, object]], workers: int) -> dict[str, object]:
    """Add up the workers' ``statistics`` replies (numbers summed, the rest from the first)."""

    def add(into: dict[str, object], more: dict[str, object]) -> None:
        for key, value in more.items():
            mine = into.get(key)
            if isinstance(value, int) and isinstance(mine, int):
                into[key] = mine + value
            elif isinstance(value, dict) and isinstance(mine, dict):
                add(mine, value)
            elif key not in into:
                into[key] = value

    ok = [r for r in replies if r.get("result") == "ok"]
    if len(ok) != len(replies):
        reasons = {str(r.get("error-reason")) for r in replies if r not in ok}
        return error_reply("; ".join(sorted(reasons)))
    total: dict[str, object] = {}
    for reply in ok:
        add(total, reply)
    total["result"] = "ok"
    total["workers"] = workers
    return total


async def _stop_process(process: asyncio.subprocess.Process) -> None:
    if process.stdin is not None:
        process.stdin.close()  # the worker sees EOF on its pipe and exits cleanly
    try:
        await asyncio.wait_for(process.wait(), WORKER_STOP_TIMEOUT)
        return
    except TimeoutError:
        pass
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), WORKER_STOP_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


# --------------------------------------------------------------------------- handle


class MediaControlHandle:
    """The running media layer: its NG socket, and the engine or worker processes."""

    def __init__(
        self,
        server: NgServer,
        *,
        engine: MediaEngine | None = None,
        commands: NgCommands | None = None,
        pool: WorkerPool | None = None,
        modes: ModeTracker | None = None,
        handler: Handler | None = None,
    ) -> None:
        self.server = server
        self.modes = modes
        """Calls per media mode, from the NG replies (None: not tracked)."""
        self.engine = engine
        """The in-process engine (None in worker mode)."""
        self.commands = commands
        """The in-process command logic (None in worker mode)."""
        self.pool = pool
        """The worker processes (None in-process)."""
        self.address = server.address
        """(host, port) of the NG control socket."""
        self._closed = False
        self._prune: asyncio.Task[None] | None = None
        if modes is not None and handler is not None:
            self._prune = asyncio.create_task(self._prune_modes(handler, modes))

    async def _prune_modes(self, handler: Handler, modes: ModeTracker) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(MODE_PRUNE_INTERVAL)
            since = loop.time()
            try:
                reply = await handler({"command": "list", "limit": MAX_CALLS * 64})
            except Exception as exc:  # a worker is busy or restarting: next round
                log.warning("! media list for the mode gauge failed: %s", exc)
                continue
            calls = reply.get("calls")
            if reply.get("result") == "ok" and isinstance(calls, list):
                modes.prune({str(c) for c in calls}, since)

    @property
    def mode(self) -> str:
        """``in-process`` or ``workers``."""
        return "workers" if self.pool is not None else "in-process"

    async def close(self) -> None:
        """Stop the NG socket, end every call, stop engine or workers; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._prune is not None:
            self._prune.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prune
        await self.server.close()
        if self.commands is not None:
            self.commands.close(time.time())
        if self.engine is not None:
            await self.engine.close()
        if self.pool is not None:
            await self.pool.close()


async def start_media_control(
    *,
    control: tuple[str, int],
    public_ip: str,
    bind_ip: str,
    port_range: tuple[int, int],
    timeout: float = 60.0,
    workers: int = 0,
    codecs: CodecPolicy | None = None,
) -> MediaControlHandle:
    """Start the media layer and its NG socket on ``control``.

    Args:
        control: (host, port) of the NG socket; port 0 picks a free one.
        public_ip: address advertised in SDP.
        bind_ip: address media sockets bind to.
        port_range: inclusive media port range (split between workers).
        timeout: seconds without RTP before a call is ended.
        workers: 0 in-process, N worker processes, -1 one per CPU core.
        codecs: the transcoding policy (None: payload passthrough only).

    Raises:
        ValueError: the port range is too small for the workers.
        RuntimeError: a worker failed to start.
        OSError: the NG socket cannot be bound.
    """
    count = (os.cpu_count() or 1) if workers < 0 else workers
    clock = asyncio.get_running_loop().time
    if count == 0:
        engine = MediaEngine(
            public_ip=public_ip, bind_ip=bind_ip, port_range=port_range, timeout=timeout
        )
        await engine.start()
        commands, _, handler = await local_handler(engine, codecs=codecs)
        modes = ModeTracker()
        try:
            server = await serve_ng(tracked(handler, modes, clock), *control, name="in-process")
        except BaseException:
            await engine.close()
            raise
        log.info("= media in-process, NG control on %s:%d", *server.address)
        return MediaControlHandle(
            server, engine=engine, commands=commands, modes=modes, handler=handler
        )
    pool = await WorkerPool.start(
        count,
        public_ip=public_ip,
        bind_ip=bind_ip,
        port_range=port_range,
        timeout=timeout,
        codecs=codecs,
    )
    modes = ModeTracker()
    try:
        server = await serve_ng(tracked(pool.handle, modes, clock), *control, name="front")
    except BaseException:
        await pool.close()
        raise
    log.info("= media in %d workers, NG control on %s:%d", count, *server.address)
    return MediaControlHandle(server, pool=pool, modes=modes, handler=pool.handle)


async def start_media(config: Config) -> MediaControlHandle:
    """Start the media layer as ``config.media`` says (the caller checks media.enabled)."""
    media = config.media
    host, port = parse_hostport(media.control, "media.control")
    return await start_media_control(
        control=(host, port),
        public_ip=media.public_ip,
        bind_ip=media.bind_ip,
        port_range=media.ports,
        timeout=media.timeout,
        workers=media.workers,
        codecs=codec_policy(config.codecs),
    )
