"""A fake clock for sans-I/O cores: tests advance time instead of sleeping."""

from __future__ import annotations

from typing import Protocol

__all__ = ["MAX_TIMER_STEPS", "FakeClock", "TimerDriven"]

#: Most timer firings one :meth:`FakeClock.run_timers` call performs (a runaway guard).
MAX_TIMER_STEPS = 1000


class TimerDriven(Protocol):
    """A core with the aioquic timer and output shape."""

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...

    def data_to_send(self) -> list[bytes]: ...


class FakeClock:
    """Monotonic time under the test's control.

    Starts at 1000 s rather than 0 so that a core mixing up durations and absolute
    deadlines is caught.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds``; return the new time."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self.now += seconds
        return self.now

    def run_timers(self, core: TimerDriven, until: float) -> list[tuple[float, list[bytes]]]:
        """Fire ``core``'s timers in order up to ``until`` (absolute).

        Returns ``(time, data_to_send())`` for each firing, then leaves the clock at
        ``until``. Raises RuntimeError past :data:`MAX_TIMER_STEPS` firings.
        """
        sent: list[tuple[float, list[bytes]]] = []
        for _ in range(MAX_TIMER_STEPS):
            deadline = core.get_timer()
            if deadline is None or deadline > until:
                self.now = max(self.now, until)
                return sent
            self.now = max(self.now, deadline)
            core.handle_timer(self.now)
            sent.append((self.now, core.data_to_send()))
        raise RuntimeError(f"more than {MAX_TIMER_STEPS} timer firings before {until}")
