"""Async wrapper around the scripted JsSIP client (tests/clients/jssip/driver.mjs).

The driver runs a real JsSIP user agent in Node, speaking SIP over WebSocket (RFC 7118) to
whatever ``ws``/``wss`` URL it is given. Commands go to its stdin and events come back on its
stdout, one JSON object per line. Media is mocked in the driver (Node has no WebRTC): use it
for signalling tests only.

Typical use::

    c = await JsSipClient.start(ws=url, uri="sip:alice@example.test", password="pw")
    try:
        await c.wait_for("registered")
        await c.send("call", target="sip:95090@example.test")
        await c.wait_for("confirmed")
    finally:
        await c.close()

The driver's node_modules must be installed first: ``npm ci`` in tests/clients/jssip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

DRIVER_DIR = Path(__file__).resolve().parent.parent / "clients" / "jssip"
"""Folder of the Node driver (holds package.json and package-lock.json)."""
DRIVER = DRIVER_DIR / "driver.mjs"

STOP_GRACE_S = 2.0
"""How long close() lets the driver un-REGISTER and exit before killing it."""
START_TIMEOUT_S = 10.0
"""How long start() waits for the driver to load JsSIP and accept the start command."""
MAX_EVENT_LINE = 4 * 1024 * 1024
"""Longest stdout line accepted (full SIP traces and SDP bodies fit easily)."""
STDERR_TAIL_LINES = 200
"""How many of the driver's last stderr lines are kept for error messages."""

Event = dict[str, Any]
Predicate = Callable[[Event], bool]


class JsSipError(RuntimeError):
    """The driver could not be started, rejected a command, or died."""


def find_node() -> str:
    """The Node binary: $NODE if set, else ``node`` on PATH."""
    node = os.environ.get("NODE") or shutil.which("node")
    if not node:
        raise JsSipError("node not found: install Node 20 or set NODE")
    return node


def ensure_driver_installed() -> None:
    """Raise JsSipError with the fix if the driver's npm packages are not installed."""
    if not (DRIVER_DIR / "node_modules" / "jssip" / "package.json").is_file():
        raise JsSipError("JsSIP driver packages missing: run `npm ci` in tests/clients/jssip")


class JsSipClient:
    """One JsSIP user agent in a Node subprocess.

    Events are appended to :attr:`events` in the order the driver wrote them. ``wait_for``
    returns the earliest matching event that no earlier ``wait_for`` call has returned, so events
    that arrived before the call count, and waiting twice for "registered" needs two of them.
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        """Wrap a started driver process; use :meth:`start` instead."""
        self._proc = proc
        self.events: list[Event] = []
        """Every event received, in order."""
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        """The driver's last stderr lines (logs)."""
        self._taken: set[int] = set()
        self._changed = asyncio.Event()
        self._closed = False
        self._stdout_task = asyncio.create_task(self._read_stdout())
        self._stderr_task = asyncio.create_task(self._read_stderr())

    @property
    def pid(self) -> int:
        """Process id of the Node driver."""
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The driver's exit status, None while it runs."""
        return self._proc.returncode

    @classmethod
    async def start(cls, *, node: str | None = None, **opts: Any) -> JsSipClient:
        """Spawn the driver and send it ``{"cmd": "start", **opts}``; wait until it is started.

        ``opts`` are the start command's fields: ws, uri, password, realm, display_name,
        register, session_timers, instance_id, trace (True or "full"), debug, and the other
        JsSIP settings the driver passes through. Raises JsSipError if the driver rejects them.
        """
        ensure_driver_installed()
        proc = await asyncio.create_subprocess_exec(
            node or find_node(),
            str(DRIVER),
            cwd=str(DRIVER_DIR),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=MAX_EVENT_LINE,
        )
        client = cls(proc)
        try:
            await client.send("start", **opts)
            ev = await client.wait_for(
                "started|error",
                timeout=START_TIMEOUT_S,
                predicate=lambda e: e["event"] == "started" or e.get("cmd") == "start",
            )
            if ev["event"] == "error":
                raise JsSipError(f"driver rejected start: {ev.get('message')}")
        except BaseException:
            await client.close()
            raise
        return client

    async def send(self, cmd: str, **args: Any) -> None:
        """Send one command line to the driver; failures come back as "error" events."""
        if self._closed or self._proc.stdin is None or self._proc.returncode is not None:
            raise JsSipError(f"driver is not running (cannot send {cmd!r})")
        line = json.dumps({"cmd": cmd, **args}) + "\n"
        self._proc.stdin.write(line.encode())
        try:
            await self._proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise JsSipError(f"driver went away while sending {cmd!r}") from exc

    async def wait_for(
        self, event: str, timeout: float = 10, predicate: Predicate | None = None
    ) -> Event:
        """Return the earliest not-yet-returned event named ``event`` matching ``predicate``.

        ``event`` may list alternatives separated by "|". Raises TimeoutError after ``timeout``
        seconds, and JsSipError if the driver exits first; both name the events seen.
        """
        names = set(event.split("|"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._changed.clear()
            for index, ev in enumerate(self.events):
                if index in self._taken or ev.get("event") not in names:
                    continue
                if predicate is None or predicate(ev):
                    self._taken.add(index)
                    return ev
            if self._stdout_task.done():
                raise JsSipError(f"driver exited while waiting for {event!r}{self._context()}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no {event!r} event within {timeout} s{self._context()}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def seen(self, event: str) -> list[Event]:
        """All events named ``event`` received so far (returned by wait_for or not)."""
        return [e for e in self.events if e.get("event") == event]

    async def close(self) -> int | None:
        """Send stop, give the driver STOP_GRACE_S to exit, then kill it. Safe to call twice."""
        if self._closed:
            return self._proc.returncode
        self._closed = True
        proc = self._proc
        if proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
                proc.stdin.write(b'{"cmd":"stop"}\n')
                await proc.stdin.drain()
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
        for task in (self._stdout_task, self._stderr_task):
            try:
                await asyncio.wait_for(task, STOP_GRACE_S)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return proc.returncode

    async def __aenter__(self) -> JsSipClient:
        """Use as ``async with await JsSipClient.start(...) as c``."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the driver."""
        await self.close()

    def _context(self) -> str:
        names = " ".join(str(e.get("event")) for e in self.events[-40:])
        errors = [e for e in self.events if e.get("event") == "error"]
        stderr = "\n".join(list(self.stderr_tail)[-20:])
        return f"\nevents: {names}\nerrors: {errors}\nstderr tail:\n{stderr}"

    async def _read_stdout(self) -> None:
        assert self._proc.stdout is not None
        try:
            while line := await self._proc.stdout.readline():
                text = line.decode("utf-8", "replace").strip()
                if not text:
                    continue
                try:
                    ev = json.loads(text)
                except json.JSONDecodeError:
                    self.stderr_tail.append(f"[non-JSON stdout] {text}")
                    continue
                if isinstance(ev, dict):
                    self.events.append(ev)
                    self._changed.set()
        finally:
            self._changed.set()

    async def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        while line := await self._proc.stderr.readline():
            self.stderr_tail.append(line.decode("utf-8", "replace").rstrip())
