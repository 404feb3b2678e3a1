"""Shared fixtures: every async test runs on asyncio and on trio.

``anyio_backend`` runs on real time (tests with real sockets and servers in
threads). Tests of time-dependent logic request ``fake_clock`` instead, which
runs on virtual time: trio's ``MockClock(autojump_threshold=0)`` and looptime's
asyncio loop, both of which jump the clock forward whenever every task is
blocked, so a 30-second timeout takes microseconds and is exact.
"""

from __future__ import annotations

from typing import Any

import looptime
import pytest
import trio.testing

from tests.redis_server import redis_server  # noqa: F401 (the session's Redis, a fixture)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


def _fake_clock_backend(name: str) -> tuple[str, dict[str, Any]]:
    if name == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return ("asyncio", {"loop_factory": lambda: looptime.new_event_loop(start=0.0)})


@pytest.fixture(params=["asyncio", "trio"])
def fake_clock(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Use as ``anyio_backend`` through indirect parametrisation (see time tests)."""
    return _fake_clock_backend(request.param)
