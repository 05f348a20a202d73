"""Project-wide test configuration.

Markers (see pyproject.toml): unmarked tests are unit tests (no processes, no
sockets beyond loopback helpers); ``integration`` tests start Kamailio, sipp
and Node clients; ``e2e`` tests drive headless Chromium.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, None, None]:
    # Let fixtures see whether the test body failed (rep_setup, rep_call,
    # rep_teardown), so they can print the daemon's log only when it matters.
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
