"""Fixtures for the browser end-to-end tests.

The real switch is the integration tests' Kamailio (tests/integration/conftest.py): the
fixture and its log-on-failure hook are imported here so tests/e2e can use them too. When
both folders run in one session each folder gets its own Kamailio (different ports).
"""

from __future__ import annotations

from tests.integration.conftest import _kamailio_log_on_failure, kamailio

__all__ = ["_kamailio_log_on_failure", "kamailio"]
