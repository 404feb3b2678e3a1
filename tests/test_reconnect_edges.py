"""Edge cases of the resilience layer found in review; each test pins a fixed bug.

Time-dependent tests run on the fake clock (asyncio and trio), over the
in-memory ``Server`` of ``tests/test_reconnect.py``.
"""

from __future__ import annotations

import gc
import math
import warnings
import weakref
from typing import Any

import anyio
import pytest
from websockets.datastructures import Headers

from tests.test_reconnect import NO_JITTER, Server, refused
from wsclient import (
    Backoff,
    ConnectError,
    ConnectionState,
    InvalidState,
    ReconnectFailed,
    ReconnectingTransport,
    Transport,
)
from wsclient._redact import redact_url
from wsclient._transport import _retry_after

pytestmark = pytest.mark.anyio

C = ConnectionState


@pytest.fixture
def anyio_backend(fake_clock: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return fake_clock


def _resource_warnings(action: Any) -> list[str]:
    """Run ``action()``, collect garbage, and return the ResourceWarnings raised meanwhile."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


# aclose() and the life cycle


async def test_aclose_with_an_invalid_close_code_does_not_wedge_it() -> None:
    """After aclose(1006) is refused with ValueError, aclose() still closes it, promptly."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    with anyio.fail_after(60):
        async with rt:
            with pytest.raises(ValueError, match="cannot be sent"):
                await rt.aclose(1006)  # 1006 may not be sent in a close frame
            assert rt.state is C.OPEN
            await rt.aclose()
    assert rt.state is C.CLOSED


async def test_aclose_before_entering_is_harmless() -> None:
    """aclose() on a transport that was never entered neither raises nor poisons it."""
    rt = ReconnectingTransport(Server(), backoff=NO_JITTER, heartbeat=None)
    await rt.aclose()
    assert rt.state is C.CLOSED
    with pytest.raises(InvalidState, match="entered only once"):
        async with rt:
            pytest.fail("entered")


async def test_a_cancelled_body_leaves_no_stream_open() -> None:
    """Leaving `async with` by cancellation closes the inbound stream like a normal exit."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    with anyio.move_on_after(5):
        async with rt:
            await anyio.sleep_forever()
    assert rt.state is C.CLOSED
    box = [rt]
    del rt
    assert _resource_warnings(box.clear) == []


async def test_cancelling_enter_during_hooks_leaves_no_stream_open() -> None:
    """Cancelling __aenter__ while a hook runs closes everything it opened."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)

    @rt.on_connect
    async def slow(transport: Transport) -> None:
        await anyio.sleep(100)

    with anyio.move_on_after(5):
        async with rt:
            pytest.fail("entered")
    assert rt.state is C.CLOSED
    assert server.end.state.name == "CLOSED"  # the socket itself is not leaked
    box = [rt]
    del rt
    assert _resource_warnings(box.clear) == []


async def test_an_instance_never_entered_warns_nothing() -> None:
    """Constructing a ReconnectingTransport and dropping it emits no ResourceWarning."""
    box = [ReconnectingTransport(Server(), backoff=NO_JITTER, heartbeat=None)]
    assert _resource_warnings(box.clear) == []


def test_constructing_outside_an_event_loop_works() -> None:
    """A ReconnectingTransport can be configured in sync code, before the loop starts."""

    async def factory() -> Transport:
        raise refused()

    rt = ReconnectingTransport(factory, backoff=NO_JITTER, heartbeat=None)
    assert rt.state is C.CONNECTING
    assert "attempts=0" in repr(rt)
    assert rt.statistics().attempts == 0


# Retry policy


async def test_max_attempts_counts_the_first_attempt() -> None:
    """retry_first_connect with max_attempts=2 gives up after 2 failed attempts in all."""
    server = Server()
    server.failures.extend(refused() for _ in range(10))
    backoff = Backoff(jitter="none", initial=1.0, max_attempts=2)
    rt = ReconnectingTransport(server, backoff=backoff, heartbeat=None, retry_first_connect=True)
    with pytest.raises(ReconnectFailed) as caught:
        async with rt:
            pytest.fail("entered")
    assert len(server.attempts) == 2
    assert caught.value.attempts == rt.statistics().failed_attempts == 2


async def test_hook_raising_invalid_state_is_fatal() -> None:
    """A hook misusing the API (InvalidState) fails like any other hook bug, without retrying."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None, retry_first_connect=True)

    @rt.on_connect
    async def misuse(transport: Transport) -> None:
        await rt.ping()  # not OPEN yet: InvalidState

    with anyio.fail_after(100), pytest.raises(ReconnectFailed):
        async with rt:
            pytest.fail("entered")
    assert len(server.attempts) == 1


async def test_infinite_retry_after_does_not_stall_reconnecting() -> None:
    """A 503 with an infinite Retry-After still leads to another attempt, eventually."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    async with rt:
        await anyio.sleep(10)
        server.failures.append(ConnectError("HTTP 503", status=503, retry_after=math.inf))
        server.end.break_link()
        with anyio.move_on_after(3600):
            await server.wait_for_connection(2)
        assert len(server.attempts) == 3


def test_retry_after_header_must_be_finite() -> None:
    """A Retry-After header of 'inf' or '1e999' is ignored, not an endless delay."""
    for value in ("inf", "1e999", "Infinity"):
        delay = _retry_after(Headers([("Retry-After", value)]))
        assert delay is None or math.isfinite(delay), value


# Observing


async def test_abandoned_state_changes_iterator_is_released() -> None:
    """A state_changes() iterator nobody references any more can be garbage collected."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    async with rt:
        watcher = rt.state_changes()
        ref = weakref.ref(watcher)
        del watcher
        gc.collect()
        assert ref() is None


# Secrets


def test_bare_query_token_is_redacted() -> None:
    """A token passed as a bare query string (wss://host/ws?<token>) is masked."""
    assert "s3cr3tT0ken" not in redact_url("wss://example.com/ws?s3cr3tT0ken")


@pytest.mark.parametrize("option", ["hook_timeout", "close_timeout"])
@pytest.mark.parametrize("value", [0, -1.0, float("nan"), "5", None])
def test_invalid_hook_and_close_timeouts_are_refused(option: str, value: object) -> None:
    """hook_timeout and close_timeout must be positive seconds, checked when the client is made."""
    import wsclient

    with pytest.raises(ValueError, match=f"{option} must be a positive number of seconds"):
        wsclient.connect("ws://127.0.0.1:1/", **{option: value})
