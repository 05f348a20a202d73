"""Async wrapper around the browser webphone driver (tests/clients/sipjs/driver.mjs).

The driver runs a headless browser on the SIP.js webphone page
tests/clients/sipjs/index.html, which this module serves from a small static HTTP server on
127.0.0.1: the system's Chromium through playwright-core (the default), or the system's
Firefox through puppeteer-core over WebDriver BiDi (``browser="firefox"``). No browser is ever
downloaded. Media is real: the browser's own WebRTC stack. Chromium's fake capture device plays
a WAV tone written by :func:`write_tone_wav`; Firefox's fake microphone is its built-in sine
tone, set to the same frequency through a pref.

Typical use::

    async with await BrowserPhone.start(tmp_path) as phone:
        await phone.configure(wsServers=url, username="alice", password="pw", realm="example.test")
        await phone.register()
        await phone.wait_for("onRegistered")
        await phone.make_call("95090")
        await phone.wait_for("onAnswer")
        stats = await phone.get_stats()

Every phone event (onRegistered, onRingingOut, onAnswer, onEnd, ...) arrives in
:attr:`BrowserPhone.events`. A failed command or a timed-out wait saves the browser's console
log and a screenshot under the given folder, and the exception message names both files.

The driver's node_modules must be installed first: ``npm ci`` in tests/clients/sipjs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import itertools
import json
import math
import os
import shutil
import signal
import struct
import threading
import wave
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.helpers.jssip import find_node

CLIENT_DIR = Path(__file__).resolve().parent.parent / "clients" / "sipjs"
"""Folder of the page and the driver (holds package.json and package-lock.json)."""
DRIVER = CLIENT_DIR / "driver.mjs"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
"""Binaries looked for on PATH when $CHROMIUM is not set."""
FIREFOX_NAMES = ("firefox-esr", "firefox")
"""Binaries looked for on PATH when $FIREFOX is not set (Debian's is /usr/bin/firefox-esr)."""
BROWSERS = ("chromium", "firefox")
"""The browsers the driver can run."""
DRIVER_PACKAGES = {"chromium": "playwright-core", "firefox": "puppeteer-core"}
"""The npm package that drives each browser."""

START_TIMEOUT_S = 30.0
"""How long start() waits for the browser to launch and the page to load."""
CALL_TIMEOUT_S = 15.0
"""Default time a phone method may take before its result is given up on."""
STOP_GRACE_S = 5.0
"""How long close() lets the driver un-REGISTER, close the browser and exit before killing it."""
REAP_TIMEOUT_S = 5.0
"""How long close() waits for killed browser processes to disappear."""
ARTIFACTS_TIMEOUT_S = 8.0
"""How long a failure waits for the driver to save the console log and screenshot."""
MAX_EVENT_LINE = 8 * 1024 * 1024
"""Longest stdout line accepted (phoneEvents with SDP fit easily)."""
STDERR_TAIL_LINES = 200
"""How many of the driver's last stderr lines are kept for error messages."""

TONE_RATE_HZ = 48000
"""Sample rate of the fake microphone file (Chromium's capture rate)."""
TONE_AMPLITUDE = 0.5
"""Peak of the fake microphone tone, as a fraction of full scale (-6 dBFS)."""

Event = dict[str, Any]
Predicate = Callable[[Event], bool]


class BrowserError(RuntimeError):
    """The driver could not start, a phone method failed, or the driver died."""


def find_chromium() -> str:
    """The Chromium binary: $CHROMIUM if set, else the first of CHROMIUM_NAMES on PATH."""
    if env := os.environ.get("CHROMIUM"):
        return env
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    raise BrowserError(f"no Chromium found on PATH ({', '.join(CHROMIUM_NAMES)}); set CHROMIUM")


def find_firefox() -> str:
    """The Firefox binary: $FIREFOX if set, else the first of FIREFOX_NAMES on PATH."""
    if env := os.environ.get("FIREFOX"):
        return env
    for name in FIREFOX_NAMES:
        if path := shutil.which(name):
            return path
    raise BrowserError(f"no Firefox found on PATH ({', '.join(FIREFOX_NAMES)}); set FIREFOX")


def ensure_driver_installed(browser: str = "chromium") -> None:
    """Raise BrowserError with the fix if the driver's npm packages are not installed."""
    for package in ("sip.js", DRIVER_PACKAGES[browser]):
        if not (CLIENT_DIR / "node_modules" / package / "package.json").is_file():
            raise BrowserError("SIP.js page packages missing: run `npm ci` in tests/clients/sipjs")


def write_tone_wav(
    path: Path, *, frequency_hz: float = 1000.0, seconds: float = 2.0, rate: int = TONE_RATE_HZ
) -> Path:
    """Write a mono 16-bit PCM sine tone (Chromium loops the file as its fake microphone)."""
    frames = int(seconds * rate)
    peak = int(TONE_AMPLITUDE * 32767)
    samples = struct.pack(
        f"<{frames}h",
        *(round(peak * math.sin(2 * math.pi * frequency_hz * i / rate)) for i in range(frames)),
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples)
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files without the per-request log lines on stderr."""

    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
    }

    def log_message(self, format: str, *args: Any) -> None:
        """Drop access logs."""


class StaticServer:
    """Serve one folder over HTTP on 127.0.0.1 (ephemeral port) from a background thread."""

    def __init__(self, root: Path = CLIENT_DIR) -> None:
        """Bind at once; serving starts with :meth:`start`."""
        handler = functools.partial(_QuietHandler, directory=str(root))
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="static-http", daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL, ending in a slash."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/"

    def start(self) -> StaticServer:
        """Start serving; returns self."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and close the socket."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()


def _read_proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, session id) of a process from /proc, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name sits in parentheses and may contain spaces; fields follow the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    return int(fields[1]), int(fields[3])


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


class BrowserPhone:
    """One headless browser (Chromium or Firefox) running the SIP.js webphone page, through a
    Node driver.

    Events are appended to :attr:`events` in the order the driver wrote them. ``wait_for``
    returns the earliest matching event that no earlier ``wait_for`` call has returned, so events
    that arrived before the call count, and waiting twice for "onDtmfSent" needs two of them.
    """

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        *,
        server: StaticServer,
        artifacts_dir: Path,
        user_data_dir: Path,
        browser: str = "chromium",
    ) -> None:
        """Wrap a started driver process; use :meth:`start` instead."""
        self.browser = browser
        """Which browser runs the page: "chromium" or "firefox"."""
        self._proc = proc
        self._server = server
        self.artifacts_dir = artifacts_dir
        """Where console logs and screenshots go."""
        self.user_data_dir = user_data_dir
        """The browser's profile folder for this run (fresh, inside artifacts_dir's parent)."""
        self.events: list[Event] = []
        """Every event received, in order."""
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        """The driver's last stderr lines (logs)."""
        self.info: Event = {}
        """The driver's started event: browser, version, user_agent, sipjs {package, library}
        (and chromium, its version, for Chromium)."""
        self.artifacts: list[dict[str, Any]] = []
        """Every set of failure artifacts saved so far ({console, screenshot, reason})."""
        self._ids = itertools.count(1)
        self._taken: set[int] = set()
        self._changed = asyncio.Event()
        self._closed = False
        self._browser_sids: set[int] = set()
        self._browser_pids: set[int] = set()
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

    @property
    def page_url(self) -> str:
        """URL of the webphone page."""
        return self._server.url + "index.html"

    @classmethod
    async def start(
        cls,
        workdir: Path,
        *,
        tone_hz: float = 1000.0,
        browser: str = "chromium",
        chromium: str | None = None,
        firefox: str | None = None,
        node: str | None = None,
        extra_args: list[str] | None = None,
        firefox_prefs: dict[str, Any] | None = None,
    ) -> BrowserPhone:
        """Serve the page, launch the driver and the browser, load the page.

        ``browser`` is "chromium" (the default; binary ``chromium`` or :func:`find_chromium`)
        or "firefox" (binary ``firefox`` or :func:`find_firefox`). The fake microphone plays a
        sine tone of ``tone_hz``: a WAV file for Chromium, Firefox's own generator for
        Firefox. ``extra_args`` go on the browser's command line; ``firefox_prefs`` are added
        to (or override) the driver's Firefox prefs.

        ``workdir`` (a pytest tmp dir) receives the tone WAV, the browser's fresh profile and,
        on failure, the console log and screenshot (under ``workdir/browser``).
        """
        if browser not in BROWSERS:
            raise BrowserError(f"browser must be one of {BROWSERS}, not {browser!r}")
        ensure_driver_installed(browser)
        workdir.mkdir(parents=True, exist_ok=True)
        launch: dict[str, Any]
        if browser == "chromium":
            tone = write_tone_wav(workdir / f"tone-{int(tone_hz)}hz.wav", frequency_hz=tone_hz)
            launch = {"chromium": chromium or find_chromium(), "fake_audio": str(tone)}
        else:
            launch = {
                "firefox": firefox or find_firefox(),
                "tone_hz": tone_hz,
                "prefs": firefox_prefs or {},
            }
        user_data_dir = workdir / f"{browser}-profile"
        if user_data_dir.exists():
            shutil.rmtree(user_data_dir)
        user_data_dir.mkdir()
        artifacts_dir = workdir / "browser"
        server = StaticServer().start()
        try:
            proc = await asyncio.create_subprocess_exec(
                node or find_node(),
                str(DRIVER),
                cwd=str(CLIENT_DIR),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=MAX_EVENT_LINE,
            )
        except BaseException:
            server.close()
            raise
        phone = cls(
            proc,
            server=server,
            artifacts_dir=artifacts_dir,
            user_data_dir=user_data_dir,
            browser=browser,
        )
        try:
            await phone._command(
                "start",
                timeout=START_TIMEOUT_S,
                page_url=phone.page_url,
                browser=browser,
                user_data_dir=str(user_data_dir),
                artifacts_dir=str(artifacts_dir),
                extra_args=extra_args or [],
                **launch,
            )
            phone.info = await phone.wait_for("started", timeout=1)
            phone._browser_sids = phone._find_browser_sessions()
        except BaseException:
            await phone.close()
            raise
        return phone

    # ---- phone API ------------------------------------------------------------------------

    async def call(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        """Run ``window.phone[method](*args)`` in the page and return its result.

        Raises BrowserError (naming the saved console log and screenshot) if it throws.
        """
        return await self._command("call", timeout=timeout, method=method, args=list(args))

    async def configure(self, **settings: Any) -> Any:
        """phone.configure({wsServers, username, password, realm, displayName, cli, ...})."""
        return await self.call("configure", settings)

    async def register(self) -> Any:
        """Connect (with wsServers failover) and send REGISTER."""
        return await self.call("register")

    async def unregister(self) -> Any:
        """Send REGISTER with Expires 0."""
        return await self.call("unregister")

    async def make_call(self, number: str) -> Any:
        """Call ``number`` (sip:number@realm) or a full SIP URI; returns {callId}."""
        return await self.call("makeCall", number)

    async def answer(self) -> Any:
        """Answer the ringing inbound call."""
        return await self.call("answer")

    async def hangup(self) -> Any:
        """CANCEL, reject or BYE the current call, whichever fits its state."""
        return await self.call("hangup")

    async def hold(self) -> Any:
        """re-INVITE to hold; resolves once the 2xx came."""
        return await self.call("hold")

    async def unhold(self) -> Any:
        """re-INVITE to resume; resolves once the 2xx came."""
        return await self.call("unhold")

    async def mute(self) -> Any:
        """Disable the microphone track."""
        return await self.call("mute")

    async def unmute(self) -> Any:
        """Enable the microphone track again."""
        return await self.call("unmute")

    async def send_dtmf(self, digits: str, mode: str = "info", **options: Any) -> Any:
        """Send DTMF: mode "info" (application/dtmf-relay INFO per digit) or "rfc4733"."""
        return await self.call("sendDtmf", digits, mode, options)

    async def get_stats(self, call_id: str | None = None) -> dict[str, Any]:
        """{callId, connectionState, iceConnectionState, inbound, outbound, codec, selectedPair}.

        ``inbound``: packetsReceived, bytesReceived, packetsLost, jitter, audioLevel;
        ``outbound``: packetsSent, bytesSent, audioLevel (of the microphone); None before media.
        """
        stats: dict[str, Any] = await self.call("getStats", call_id)
        return stats

    async def phone_events(self) -> list[Event]:
        """The page's own window.phoneEvents list."""
        events: list[Event] = await self._command("events", timeout=CALL_TIMEOUT_S)
        return events

    async def save_artifacts(self, reason: str) -> dict[str, Any] | None:
        """Ask the driver for the console log and a screenshot now; None if it cannot answer."""
        if self._closed or self._proc.returncode is not None:
            return None
        try:
            saved: dict[str, Any] = await self._command(
                "artifacts", timeout=ARTIFACTS_TIMEOUT_S, reason=reason, _artifacts=False
            )
        except (BrowserError, TimeoutError):
            return None
        return saved

    # ---- events ----------------------------------------------------------------------------

    async def wait_for(
        self, event: str, timeout: float = 10, predicate: Predicate | None = None
    ) -> Event:
        """Return the earliest not-yet-returned event named ``event`` matching ``predicate``.

        ``event`` may list alternatives separated by "|". Raises TimeoutError after ``timeout``
        seconds and BrowserError if the driver exits first; both name the events seen and the
        console log and screenshot saved for the failure.
        """
        try:
            return await self._wait(event, timeout, predicate)
        except TimeoutError:
            saved = await self.save_artifacts(f"no {event!r} within {timeout} s")
            raise TimeoutError(
                f"no {event!r} event within {timeout} s{self._context(saved)}"
            ) from None

    def seen(self, event: str) -> list[Event]:
        """All events named ``event`` received so far (returned by wait_for or not)."""
        return [e for e in self.events if e.get("event") == event]

    # ---- processes -------------------------------------------------------------------------

    def browser_processes(self) -> list[int]:
        """Pids of every live process of this phone's browser (any of its sessions or profile).

        Chromium's helpers (zygote, renderer, GPU, utility) and Firefox's content processes
        (forkserver, tab, socket, RDD, utility) stay in the session the browser was started
        in; the main process also names the profile folder on its command line. Firefox's
        crash helper starts a session of its own, named by the main process's pid.
        """
        profile = str(self.user_data_dir)
        crash_helpers = {f"crashhelper {pid} " for pid in self._browser_pids}
        found = []
        for pid in _all_pids():
            stat = _read_proc_stat(pid)
            if stat is None:
                continue
            cmdline = _cmdline(pid)
            if (
                stat[1] in self._browser_sids
                or profile in cmdline
                or any(helper in cmdline for helper in crash_helpers)
            ):
                found.append(pid)
        return found

    def chromium_processes(self) -> list[int]:
        """The same as :meth:`browser_processes` (the name from Chromium-only days)."""
        return self.browser_processes()

    async def close(self) -> int | None:
        """Stop the phone, close the browser, end the driver; kill what remains. Safe to call
        twice.

        Afterwards no process of this phone's browser is left (see :meth:`browser_processes`).
        """
        if self._closed:
            return self._proc.returncode
        self._closed = True
        proc = self._proc
        if not self._browser_sids:
            self._browser_sids = self._find_browser_sessions()
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
        try:
            await self._reap_browser()
        finally:
            self._server.close()
        return proc.returncode

    async def __aenter__(self) -> BrowserPhone:
        """Use as ``async with await BrowserPhone.start(...) as phone``."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the phone; on an exception, save the console log and a screenshot first."""
        if exc is not None and not isinstance(exc, asyncio.CancelledError):
            await self.save_artifacts(f"test failed: {exc_type.__name__ if exc_type else ''}")
        await self.close()

    # ---- internals -------------------------------------------------------------------------

    def _find_browser_sessions(self) -> set[int]:
        # Playwright and puppeteer start the browser detached (its own session); its helper and
        # content processes stay in that session. Remember the sessions of the driver's
        # children.
        sids = set()
        for pid in _all_pids():
            stat = _read_proc_stat(pid)
            if stat is not None and stat[0] == self._proc.pid and stat[1] != 0:
                sids.add(stat[1])
                self._browser_pids.add(pid)
        sids.discard(os.getsid(0))
        return sids

    async def _reap_browser(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REAP_TIMEOUT_S
        while pids := self.browser_processes():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if loop.time() > deadline:
                raise BrowserError(f"{self.browser} processes left behind: {pids}")
            await asyncio.sleep(0.05)

    async def _command(
        self, cmd: str, *, timeout: float, _artifacts: bool = True, **args: Any
    ) -> Any:
        if self._closed or self._proc.stdin is None or self._proc.returncode is not None:
            raise BrowserError(f"driver is not running (cannot send {cmd!r})")
        ident = next(self._ids)
        line = json.dumps({"cmd": cmd, "id": ident, **args}) + "\n"
        self._proc.stdin.write(line.encode())
        try:
            await self._proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise BrowserError(f"driver went away while sending {cmd!r}") from exc
        what = f"{cmd} {args.get('method', '')}".strip()
        try:
            result = await self._wait("result", timeout, lambda e: e.get("id") == ident)
        except TimeoutError:
            saved = await self.save_artifacts(f"{what}: no result") if _artifacts else None
            raise TimeoutError(
                f"{what}: no result within {timeout} s{self._context(saved)}"
            ) from None
        except BrowserError as exc:
            raise BrowserError(f"{what}: {exc}") from None
        if not result.get("ok"):
            raise BrowserError(
                f"{what} failed: {result.get('error')}{self._context(result.get('artifacts'))}"
            )
        return result.get("value")

    async def _wait(self, event: str, timeout: float, predicate: Predicate | None) -> Event:
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
                raise BrowserError(f"driver exited while waiting for {event!r}{self._context()}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(event)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _context(self, saved: dict[str, Any] | None = None) -> str:
        names = " ".join(
            str(e.get("event")) for e in self.events[-40:] if e.get("event") != "result"
        )
        errors = [e for e in self.events if e.get("event") in ("error", "pageError", "onError")]
        stderr = "\n".join(list(self.stderr_tail)[-20:])
        files = saved or (self.artifacts[-1] if self.artifacts else None)
        where = (
            f"\nbrowser console log: {files.get('console')}\nscreenshot: {files.get('screenshot')}"
            if files
            else ""
        )
        return f"\nevents: {names}\nerrors: {errors}{where}\ndriver stderr tail:\n{stderr}"

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
                    if ev.get("event") == "artifacts":
                        self.artifacts.append(ev)
                    self.events.append(ev)
                    self._changed.set()
        finally:
            self._changed.set()

    async def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        while line := await self._proc.stderr.readline():
            self.stderr_tail.append(line.decode("utf-8", "replace").rstrip())
