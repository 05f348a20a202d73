"""Fixtures for integration tests: the real switch (Kamailio) and sipp far ends.

``kamailio`` is one Kamailio for the whole session (tests/helpers/kamailio.py);
tests that register users remove their bindings again, or use users no other
test uses. ``sipp_factory`` builds ``Sipp`` runs in the test's temp dir and
stops any still running at teardown. When a test that used Kamailio fails, the
part of Kamailio's log written during that test is printed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.kamailio import Kamailio
from tests.helpers.sipp import Sipp

KAMAILIO_LOG_ON_FAILURE_CHARS = 30_000


@pytest.fixture(scope="session")
def kamailio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    """One Kamailio on 127.0.0.1 (UDP+TCP port, TLS port) for the whole test session."""
    switch = Kamailio()
    switch.start(tmp_path_factory.mktemp("kamailio"))
    try:
        yield switch
    finally:
        code = switch.stop()
        assert code == 0, f"kamailio exit code {code}\n{switch.log_text()[-5000:]}"


@pytest.fixture(autouse=True)
def _kamailio_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    if "kamailio" not in request.fixturenames:
        yield
        return
    switch: Kamailio = request.getfixturevalue("kamailio")
    start = switch.log_size()
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print("---- kamailio log during this test ----")
        print(switch.log_text(since=start)[-KAMAILIO_LOG_ON_FAILURE_CHARS:])


@pytest.fixture
async def sipp_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Sipp]]:
    """``make(scenario, **kwargs) -> Sipp`` with workdir under tmp_path; stops leftovers."""
    made: list[Sipp] = []

    def make(scenario: str | Path, **kwargs: Any) -> Sipp:
        kwargs.setdefault("workdir", tmp_path / "sipp")
        run = Sipp(scenario, **kwargs)
        made.append(run)
        return run

    yield make
    for run in made:
        await run.stop()
