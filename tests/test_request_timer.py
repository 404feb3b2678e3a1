"""The request timer (one per client, no cancel scope per request) and the write-behind
path of stream links, on a fake clock, on asyncio and trio."""

from __future__ import annotations

from typing import Any

import anyio
import orjson
import pytest

import wsclient
from wsclient import ConnectionLost, RequestTimeout
from wsclient._correlator import Correlator
from wsclient._transport import QUEUED
from wsclient.testing import MemoryTransport

from .test_reconnect import NO_JITTER

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(fake_clock: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return fake_clock


def spawner(group: anyio.abc.TaskGroup) -> Any:
    def spawn(function: Any) -> bool:
        group.start_soon(function)
        return True

    return spawn


async def outcome(correlator: Correlator, waiter: Any) -> tuple[float, Any]:
    """When the wait for ``waiter`` ended, and its result or error."""
    try:
        result: Any = await correlator.reply(waiter)
    except RequestTimeout as exc:
        result = exc
    return anyio.current_time(), result


async def test_a_request_times_out_at_its_deadline_exactly() -> None:
    """The timer fails an armed request when its seconds are up, not before."""
    async with anyio.create_task_group() as group:
        correlator = Correlator(name="t", spawn=spawner(group))
        waiter = correlator.open()
        start = anyio.current_time()
        assert correlator.arm(waiter, 5.0)
        at, error = await outcome(correlator, waiter)
    assert at - start == pytest.approx(5.0)
    assert isinstance(error, RequestTimeout)
    assert f"request {waiter.id} within 5s" in str(error)
    stats = correlator.statistics()
    assert (stats.timeouts, stats.pending) == (1, 0)


async def test_an_earlier_deadline_wakes_the_sleeping_timer() -> None:
    """A request with a shorter timeout than the one the timer sleeps for still ends on time."""
    async with anyio.create_task_group() as group:
        correlator = Correlator(name="t", spawn=spawner(group))
        slow, quick = correlator.open(), correlator.open()
        start = anyio.current_time()
        correlator.arm(slow, 10.0)
        await anyio.sleep(1.0)  # the timer sleeps until 10 now
        correlator.arm(quick, 2.0)
        results: dict[str, tuple[float, Any]] = {}

        async def watch(name: str, waiter: Any) -> None:
            results[name] = await outcome(correlator, waiter)

        group.start_soon(watch, "slow", slow)
        group.start_soon(watch, "quick", quick)
    assert results["quick"][0] - start == pytest.approx(3.0)
    assert results["slow"][0] - start == pytest.approx(10.0)
    assert all(isinstance(result, RequestTimeout) for _, result in results.values())


async def test_answered_requests_leave_the_heap_small_and_the_timer_ends() -> None:
    """Deadlines of answered requests are dropped in bulk, and the timer ends when none is left."""
    async with anyio.create_task_group() as group:
        correlator = Correlator(name="t", spawn=spawner(group))
        for n in range(1000):
            waiter = correlator.open()
            correlator.arm(waiter, 30.0)
            assert len(correlator._deadlines) <= 2 * len(correlator) + 64
            waiter.set_result(n)
            assert await correlator.reply(waiter) == n
            correlator.discard(waiter)
        assert correlator._timing
        await anyio.sleep(31.0)
        assert not correlator._timing  # nothing left to time: the task is gone
        assert correlator.statistics().timeouts == 0


async def test_closing_the_correlator_stops_its_timer() -> None:
    """close() fails what waits and ends the timer task at once, deadlines or not."""
    async with anyio.create_task_group() as group:
        correlator = Correlator(name="t", spawn=spawner(group))
        waiter = correlator.open()
        correlator.arm(waiter, 3600.0)
        await anyio.sleep(0)  # the timer starts sleeping
        start = anyio.current_time()
        correlator.close(ConnectionLost("closed"))
        with pytest.raises(ConnectionLost):
            await correlator.reply(waiter)
    assert anyio.current_time() == start  # the group did not wait for the hour
    assert not correlator._timing


async def test_arm_needs_a_task_group_but_not_for_no_deadline() -> None:
    """Without a way to start the timer, arm() says so; an infinite wait needs no timer."""
    correlator = Correlator(name="t")
    waiter = correlator.open()
    assert not correlator.arm(waiter, 1.0)
    assert correlator.arm(waiter, float("inf"))
    refusing = Correlator(name="t", spawn=lambda function: False)
    assert not refusing.arm(refusing.open(), 1.0)


class WriteBehindTransport(MemoryTransport):
    """A MemoryTransport that queues sends for a writer task, as a trio stream link does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queued: list[tuple[str | bytes, bool | None]] = []

    def _send_nowait(self, data: str | bytes, text: bool | None) -> int:
        if self.state is not wsclient.TransportState.OPEN:
            return 0
        self.queued.append((data, text))
        return QUEUED

    async def _drain(self) -> None:
        while self.queued:
            data, text = self.queued.pop(0)
            await self.send(data, text=text)


class Server:
    """One WriteBehindTransport pair per connection."""

    def __init__(self) -> None:
        self.ends: list[MemoryTransport] = []

    async def __call__(self) -> wsclient.Transport:
        client, server = WriteBehindTransport.pair()
        self.ends.append(server)
        return client


async def test_requests_queued_for_the_writer_are_answered_and_time_out_on_time() -> None:
    """Through the write-behind path a request gets its reply, or RequestTimeout on time."""
    server = Server()
    client = wsclient.Client(server, backoff=NO_JITTER, heartbeat=None, request_timeout=4.0)
    async with client, anyio.create_task_group() as group:

        async def answer() -> None:
            end = server.ends[0]
            while True:
                request = orjson.loads(await end.receive())
                if request["payload"] == "ignore me":
                    continue
                reply = {"type": "response", "requestId": request["id"], "payload": "done"}
                await end.send(orjson.dumps(reply).decode())

        group.start_soon(answer)
        assert await client.request("query", "hello") == "done"
        start = anyio.current_time()
        with pytest.raises(RequestTimeout):
            await client.request("query", "ignore me")
        assert anyio.current_time() - start == pytest.approx(4.0)
        assert await client.send({"event": 1})
        group.cancel_scope.cancel()
    stats = client.statistics().requests
    assert (stats.replies, stats.timeouts, stats.pending) == (1, 1, 0)


async def test_a_request_in_flight_on_the_write_behind_path_fails_when_the_link_drops() -> None:
    """in_flight='fail': a request handed to the writer counts as sent when the link drops."""
    server = Server()
    client = wsclient.Client(server, backoff=NO_JITTER, heartbeat=None)
    async with client:
        outcome: list[BaseException] = []

        async def ask() -> None:
            try:
                await client.request("query", "never answered")
            except ConnectionLost as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(ask)
            end = server.ends[0]
            assert orjson.loads(await end.receive())["payload"] == "never answered"
            end.break_link()
        assert len(outcome) == 1
        await client.wait_state(wsclient.ConnectionState.OPEN)  # and it reconnected


async def test_cancelling_the_block_around_a_client_still_closes_it() -> None:
    """An outer deadline around ``async with client`` closes it: none of its tasks lingers."""
    server = Server()
    client = wsclient.Client(server, backoff=NO_JITTER, heartbeat=None)
    start = anyio.current_time()
    with anyio.move_on_after(5.0) as scope:
        async with client:
            assert await client.send({"before": "the deadline"})
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert anyio.current_time() - start == pytest.approx(5.0)
    assert client.state is wsclient.ConnectionState.CLOSED
    assert client.transport.statistics().live_transports == 0
