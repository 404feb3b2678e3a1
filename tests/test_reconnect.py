"""ReconnectingTransport over in-memory transports, on a fake clock (asyncio and trio).

The test plays the server: its factory hands out one end of a
:class:`MemoryTransport` pair per attempt, or raises the failure the test
scripted, and records when each attempt happened, so backoff times are exact.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import anyio
import pytest

from wsclient import (
    Backoff,
    ConnectError,
    ConnectionClosedError,
    ConnectionClosedOK,
    ConnectionState,
    ConnectTimeout,
    Heartbeat,
    HeartbeatTimeout,
    InvalidState,
    QueueFull,
    QueuePolicy,
    ReconnectFailed,
    ReconnectingTransport,
    StateChange,
    Transport,
)
from wsclient.testing import MemoryTransport

pytestmark = pytest.mark.anyio

C = ConnectionState
NO_JITTER = Backoff(jitter="none", initial=1.0, factor=2.0, maximum=8.0, min_uptime=5.0)


@pytest.fixture
def anyio_backend(fake_clock: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return fake_clock


class Server:
    """A transport factory: one MemoryTransport pair per attempt, or a scripted failure."""

    def __init__(self, **pair_options: Any) -> None:
        self.failures: deque[BaseException] = deque()
        self.attempts: list[float] = []
        self.ends: list[MemoryTransport] = []
        self.pair_options = pair_options
        self._connected = anyio.Event()

    async def __call__(self) -> Transport:
        self.attempts.append(anyio.current_time())
        if self.failures:
            raise self.failures.popleft()
        client, server = MemoryTransport.pair(**self.pair_options)
        self.ends.append(server)
        self._connected.set()
        self._connected = anyio.Event()
        return client

    @property
    def end(self) -> MemoryTransport:
        """The server's end of the newest connection."""
        return self.ends[-1]

    async def wait_for_connection(self, count: int) -> MemoryTransport:
        """Wait until the count-th connection has been opened (hooks may still run)."""
        while len(self.ends) < count:
            await self._connected.wait()
        return self.ends[count - 1]


def refused() -> ConnectError:
    return ConnectError("cannot connect to 127.0.0.1:1: connection refused")


def recorder(rt: ReconnectingTransport) -> list[StateChange]:
    changes: list[StateChange] = []
    rt.on_state_change(changes.append)
    return changes


def summary(changes: list[StateChange]) -> list[tuple[str, float, int, float | None]]:
    return [(c.state.name, c.at, c.attempt, c.delay) for c in changes]


async def test_backoff_sequence_has_exact_times_and_states() -> None:
    """After a loss, attempts come at 1, 2, 4, 8, 8 s intervals and each failure is reported."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    changes = recorder(rt)
    async with rt:
        await anyio.sleep(100)
        server.failures.extend(refused() for _ in range(5))
        server.end.break_link()
        await server.wait_for_connection(2)
        await rt.wait_state(C.OPEN)
        assert server.attempts == [0, 101, 103, 107, 115, 123, 131]
        assert summary(changes)[1:] == [
            ("OPEN", 0, 0, None),
            ("RECONNECTING", 100, 1, 1.0),
            ("RECONNECTING", 101, 2, 2.0),
            ("RECONNECTING", 103, 3, 4.0),
            ("RECONNECTING", 107, 4, 8.0),
            ("RECONNECTING", 115, 5, 8.0),
            ("RECONNECTING", 123, 6, 8.0),
            ("OPEN", 131, 0, None),
        ]
        assert isinstance(changes[2].error, ConnectionClosedError)
        assert "refused" in str(changes[3].error)
        stats = rt.statistics()
        assert (stats.attempts, stats.failed_attempts, stats.reconnects) == (7, 5, 1)
    assert [c.state for c in changes[-2:]] == [C.CLOSING, C.CLOSED]
    assert changes[0].previous is None
    assert changes[0].state is C.CONNECTING


async def test_max_attempts_gives_up_with_reconnect_failed() -> None:
    """With max_attempts=3 the third failed attempt ends it: CLOSED, ReconnectFailed, attempts=3."""
    server = Server()
    backoff = Backoff(jitter="none", initial=1.0, max_attempts=3)
    rt = ReconnectingTransport(server, backoff=backoff, heartbeat=None)
    changes = recorder(rt)
    async with rt:
        await anyio.sleep(10)
        server.failures.extend(refused() for _ in range(10))
        server.end.break_link()
        with pytest.raises(ReconnectFailed) as caught:
            await rt.receive()
        assert caught.value.attempts == 3
        assert isinstance(caught.value.last_error, ConnectError)
        assert caught.value.__cause__ is caught.value.last_error
        assert "max_attempts=3" in str(caught.value)
        assert server.attempts == [0, 11, 13, 17]
        assert anyio.current_time() == 17
        assert rt.state is C.CLOSED
        assert changes[-1].state is C.CLOSED
        assert changes[-1].error is caught.value
        with pytest.raises(ReconnectFailed):
            await rt.send("too late")


async def test_deadline_gives_up_when_next_attempt_would_be_too_late() -> None:
    """deadline=10: attempts at +1, +3, +7; the next would start at +15, so it gives up at +7."""
    server = Server()
    backoff = Backoff(jitter="none", initial=1.0, deadline=10.0)
    rt = ReconnectingTransport(server, backoff=backoff, heartbeat=None)
    async with rt:
        await anyio.sleep(10)
        server.failures.extend(refused() for _ in range(10))
        server.end.break_link()
        with pytest.raises(ReconnectFailed, match=r"deadline=10\.0s"):
            await rt.receive()
        assert server.attempts == [0, 11, 13, 17]
        assert anyio.current_time() == 17


async def test_short_lived_connections_do_not_reset_the_backoff() -> None:
    """A server that accepts and drops at once: delays grow 1, 2, 4 as for refusals."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    async with rt:
        await anyio.sleep(100)
        for count in range(2, 5):
            server.end.break_link()
            await server.wait_for_connection(count)
            await anyio.sleep(1)  # lives 1 s: less than min_uptime
        assert server.attempts == [0, 101, 104, 109]
        assert rt.statistics().failed_attempts == 2


async def test_long_lived_connection_resets_the_backoff() -> None:
    """A connection that lived past min_uptime starts the next outage at the initial delay."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    async with rt:
        for count in range(2, 5):
            await anyio.sleep(10)
            server.end.break_link()
            await server.wait_for_connection(count)
        assert server.attempts == [0, 11, 22, 33]


async def test_retry_after_is_respected() -> None:
    """HTTP 429 with Retry-After: 7 waits 7 s although the backoff says 1 s."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    async with rt:
        await anyio.sleep(10)
        server.failures.append(ConnectError("HTTP 429", status=429, retry_after=7.0))
        server.failures.append(ConnectError("HTTP 503", status=503, retry_after=0.5))
        server.end.break_link()
        await server.wait_for_connection(2)
        assert server.attempts == [0, 11, 18, 22]  # 1 s, then 7 (not 2), then 4 (not 0.5)


@pytest.mark.parametrize(
    "error",
    [
        ConnectError("HTTP 401", status=401),
        ConnectError("HTTP 403", status=403),
        ConnectError("HTTP 404", status=404),
    ],
    ids=["401", "403", "404"],
)
async def test_fatal_handshake_status_is_not_retried(error: ConnectError) -> None:
    """401, 403 and other non-transient statuses end reconnecting at once."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    async with rt:
        await anyio.sleep(10)
        server.failures.append(error)
        server.end.break_link()
        with pytest.raises(ReconnectFailed, match="fatal") as caught:
            await rt.receive()
        assert caught.value.last_error is error
        assert server.attempts == [0, 11]


@pytest.mark.parametrize("code", [1008, 3000, 3003, 4000, 4401, 4999])
async def test_fatal_close_code_is_not_retried(code: int) -> None:
    """A server closing with 1008, 3000, 3003 or 4000-4999 is not reconnected to."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    async with rt:
        await server.end.aclose(code, "go away")
        with pytest.raises(ReconnectFailed) as caught:
            await rt.receive()
        assert getattr(caught.value.last_error, "code", None) == code
        assert len(server.attempts) == 1


@pytest.mark.parametrize("code", [1000, 1001, 1011, 1012, 1013])
async def test_other_close_codes_are_retried(code: int) -> None:
    """Normal closes, going away, server errors and restarts are reconnected."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    async with rt:
        await anyio.sleep(10)
        await server.end.aclose(code)
        await server.wait_for_connection(2)
        await rt.wait_state(C.OPEN)
        assert server.attempts == [0, 11]


async def test_should_retry_overrides_the_policy() -> None:
    """should_retry can retry a 401 (token refreshed) and give up on a refusal."""
    server = Server()
    seen: list[BaseException] = []

    def should_retry(error: BaseException) -> bool | None:
        seen.append(error)
        if isinstance(error, ConnectError) and error.status == 401:
            return True
        return None

    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None, should_retry=should_retry)
    async with rt:
        await anyio.sleep(10)
        server.failures.append(ConnectError("HTTP 401", status=401))
        server.end.break_link()
        await server.wait_for_connection(2)
        assert server.attempts == [0, 11, 13]
        assert len(seen) == 2


async def test_should_retry_that_raises_gives_up_with_its_error() -> None:
    """A should_retry that raises ends reconnecting with ReconnectFailed caused by it."""
    server = Server()

    def should_retry(error: BaseException) -> bool | None:
        raise RuntimeError("policy bug")

    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None, should_retry=should_retry)
    async with rt:
        server.end.break_link()
        with pytest.raises(ReconnectFailed, match="policy bug") as caught:
            await rt.receive()
        assert isinstance(caught.value.__cause__, RuntimeError)
        assert isinstance(caught.value.last_error, ConnectionClosedError)


async def test_fatal_error_reports_the_attempts_of_this_outage() -> None:
    """Two refusals then a 401: ReconnectFailed.attempts is 3, the attempts since the loss."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    async with rt:
        await anyio.sleep(10)
        server.failures.extend([refused(), refused(), ConnectError("HTTP 401", status=401)])
        server.end.break_link()
        with pytest.raises(ReconnectFailed) as caught:
            await rt.receive()
        assert caught.value.attempts == 3
        assert server.attempts == [0, 11, 13, 17]


async def test_retry_after_is_ignored_for_other_statuses() -> None:
    """Retry-After counts for 429 and 503 only: a 500 carrying one waits the backoff."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    async with rt:
        await anyio.sleep(10)
        server.failures.append(ConnectError("HTTP 500", status=500, retry_after=60.0))
        server.end.break_link()
        await server.wait_for_connection(2)
        assert server.attempts == [0, 11, 13]


async def test_statistics_show_no_transport_while_reconnecting() -> None:
    """statistics().transport is the current connection's, None between connections."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    async with rt:
        assert rt.statistics().transport is not None
        await anyio.sleep(10)
        server.failures.append(refused())
        server.end.break_link()
        await rt.wait_state(C.RECONNECTING)
        await anyio.sleep(0.5)
        assert rt.statistics().transport is None
        assert rt.transport is None


async def test_first_connect_fails_fast_by_default() -> None:
    """Without retry_first_connect, entering raises the first attempt's error."""
    server = Server()
    error = refused()
    server.failures.append(error)
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    with pytest.raises(ConnectError) as caught:
        async with rt:
            pytest.fail("entered")
    assert caught.value is error
    assert rt.state is C.CLOSED
    assert server.attempts == [0]


async def test_retry_first_connect_retries_with_backoff() -> None:
    """With retry_first_connect, the first connection is retried (attempts at 0, 1, 3)."""
    server = Server()
    server.failures.extend([refused(), refused()])
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None, retry_first_connect=True)
    changes = recorder(rt)
    async with rt:
        assert server.attempts == [0, 1, 3]
        assert [c.state for c in changes] == [C.CONNECTING, C.RECONNECTING, C.RECONNECTING, C.OPEN]


async def test_queued_messages_flush_in_order_after_hooks() -> None:
    """Sends while down are queued; after reconnect hooks run in order, then the queue."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    calls: list[str] = []

    @rt.on_connect
    async def authenticate(transport: Transport) -> None:
        calls.append("auth")
        await transport.send("auth")

    @rt.on_connect
    async def resubscribe(transport: Transport) -> None:
        calls.append("subscribe")
        await transport.send("subscribe")

    async with rt:
        first = server.end
        assert [await first.receive(), await first.receive()] == ["auth", "subscribe"]
        await anyio.sleep(10)
        first.break_link()
        for number in range(5):
            await rt.send(f"queued {number}")
        assert rt.statistics().queue.messages == 5
        second = await server.wait_for_connection(2)
        received = [await second.receive() for _ in range(7)]
        assert received == ["auth", "subscribe"] + [f"queued {n}" for n in range(5)]
        assert calls == ["auth", "subscribe"] * 2
        await rt.send("direct")
        assert await second.receive() == "direct"
        stats = rt.statistics().queue
        assert (stats.queued, stats.sent, stats.messages) == (5, 5, 0)


async def test_sends_made_during_hooks_wait_for_them() -> None:
    """A send made while the hooks run is queued behind them, not written first."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    hook_may_finish = anyio.Event()

    @rt.on_connect
    async def slow_hook(transport: Transport) -> None:
        if len(server.ends) > 1:
            await hook_may_finish.wait()
        await transport.send("hook")

    async with rt:
        assert await server.end.receive() == "hook"
        await anyio.sleep(10)
        server.end.break_link()
        second = await server.wait_for_connection(2)
        await anyio.sleep(0.5)
        assert rt.state is C.RECONNECTING
        await rt.send("user")
        hook_may_finish.set()
        assert [await second.receive(), await second.receive()] == ["hook", "user"]


async def test_failing_hook_fails_the_attempt() -> None:
    """A hook that raises a network error makes the attempt fail and be retried."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    failures = [ConnectError("auth lost")]

    @rt.on_connect
    async def flaky(transport: Transport) -> None:
        if len(server.ends) == 2 and failures:
            raise failures.pop()

    async with rt:
        await anyio.sleep(10)
        server.end.break_link()
        await server.wait_for_connection(3)
        await anyio.sleep(0.5)
        assert rt.state is C.OPEN
        assert server.attempts == [0, 11, 13]
        assert rt.statistics().live_transports == 1


async def test_hook_bug_is_fatal() -> None:
    """A hook raising a non-network error (a bug) is not retried forever."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None, retry_first_connect=True)

    @rt.on_connect
    async def broken(transport: Transport) -> None:
        raise KeyError("token")

    with pytest.raises(ReconnectFailed) as caught:
        async with rt:
            pytest.fail("entered")
    assert isinstance(caught.value.last_error, KeyError)
    assert caught.value.attempts == 1
    assert server.attempts == [0]


async def test_hook_timeout_fails_the_attempt() -> None:
    """Hooks that take longer than hook_timeout fail the attempt with ConnectTimeout."""
    server = Server()
    rt = ReconnectingTransport(
        server, backoff=NO_JITTER, heartbeat=None, hook_timeout=2.0, retry_first_connect=True
    )

    @rt.on_connect
    async def stuck(transport: Transport) -> None:
        if len(server.ends) == 1:
            await anyio.sleep_forever()

    changes = recorder(rt)
    async with rt:
        assert isinstance(changes[1].error, ConnectTimeout)
        assert server.attempts == [0, 3]


async def test_never_two_live_transports() -> None:
    """Across many losses, at most one transport is ever open at a time."""
    server = Server()
    rt = ReconnectingTransport(
        server, backoff=NO_JITTER, heartbeat=Heartbeat(interval=1, timeout=1)
    )
    highest = 0

    def watch(change: StateChange) -> None:
        nonlocal highest
        open_ends = sum(1 for end in server.ends if end.state.name != "CLOSED")
        highest = max(highest, open_ends, rt.statistics().live_transports)

    rt.on_state_change(watch)
    async with rt:
        for count in range(2, 12):
            await anyio.sleep(6)
            if count % 2:
                server.end.break_link()
            else:
                server.end.blackhole()
            await server.wait_for_connection(count)
        assert highest == 1
        assert sum(1 for end in server.ends if end.state.name != "CLOSED") == 1


async def test_heartbeat_detects_blackhole_within_interval_plus_timeout() -> None:
    """A zombie link is dropped with HeartbeatTimeout at exactly interval + timeout of silence."""
    server = Server()
    heartbeat = Heartbeat(interval=10.0, timeout=5.0)
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=heartbeat)
    changes = recorder(rt)
    async with rt:
        await server.end.send("last words")
        assert await rt.receive() == "last words"
        server.end.blackhole()
        await server.wait_for_connection(2)
        lost = next(c for c in changes if c.state is C.RECONNECTING)
        assert isinstance(lost.error, HeartbeatTimeout)
        assert lost.at == 15.0
        stats = rt.statistics()
        assert stats.heartbeat_timeouts == 1
        assert stats.heartbeat_probes == 1


async def test_busy_connection_is_never_probed() -> None:
    """Inbound traffic every 4 s keeps a 5 s heartbeat from ever probing."""
    server = Server()
    rt = ReconnectingTransport(
        server, backoff=NO_JITTER, heartbeat=Heartbeat(interval=5, timeout=1)
    )
    async with rt:
        for number in range(20):
            await server.end.send(f"tick {number}")
            assert await rt.receive() == f"tick {number}"
            await anyio.sleep(4)
        stats = rt.statistics()
        assert stats.heartbeat_probes == 0
        assert stats.transport is not None
        assert stats.transport.pings_sent == 0


async def test_idle_healthy_connection_is_probed_and_stays() -> None:
    """An idle connection whose server answers pings is probed each interval and kept."""
    server = Server(latency=0.25)
    rt = ReconnectingTransport(
        server, backoff=NO_JITTER, heartbeat=Heartbeat(interval=5, timeout=1)
    )
    async with rt:
        await anyio.sleep(52)
        stats = rt.statistics()
        # Probes at 5, then 5 s after each pong (0.5 s round trip): 10.5, 16, ... 49.
        assert stats.heartbeat_timeouts == 0
        assert stats.heartbeat_probes == 9
        assert stats.last_rtt == 0.5
        assert len(server.ends) == 1


async def test_data_arriving_while_a_probe_waits_counts_as_life() -> None:
    """A message arriving before the probe's deadline keeps the link though the pong is late."""
    server = Server(latency=3.0)  # a pong takes 6 s: longer than the 2 s timeout
    heartbeat = Heartbeat(interval=5, timeout=2)
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=heartbeat)
    changes = recorder(rt)
    async with rt:
        await anyio.sleep(3.5)
        await server.end.send("still here")  # arrives at 6.5, while the 5 s probe waits
        assert await rt.receive() == "still here"
        await server.wait_for_connection(2)
    # Probe at 5 answered by the message at 6.5; the late pong at 11 is life
    # too; silence until 16 brings a probe whose pong is due at 22: dead at 18.
    lost = next(c for c in changes if c.state is C.RECONNECTING)
    assert isinstance(lost.error, HeartbeatTimeout)
    assert lost.at == 18


async def test_app_level_heartbeat_sends_the_ping_message() -> None:
    """With app_level, the probe is the given message; any reply counts as life."""
    server = Server()
    heartbeat = Heartbeat(interval=5, timeout=2, app_level=True)
    rt = ReconnectingTransport(
        server, backoff=NO_JITTER, heartbeat=heartbeat, app_ping='{"type":"ping"}'
    )
    changes = recorder(rt)
    async with rt:
        assert await server.end.receive() == '{"type":"ping"}'
        assert anyio.current_time() == 5
        await server.end.send('{"type":"pong"}')
        assert await rt.receive() == '{"type":"pong"}'
        await server.wait_for_connection(2)
        assert rt.statistics().transport is not None
    # The pong at 5 is life until 10; the probe then goes unanswered until 12.
    lost = next(c for c in changes if c.state is C.RECONNECTING)
    assert isinstance(lost.error, HeartbeatTimeout)
    assert lost.at == 12
    assert server.ends[0].statistics().messages_received == 2  # two probes, no pings
    assert server.ends[0].statistics().pongs_received == 0


def test_app_level_heartbeat_needs_a_message() -> None:
    """Heartbeat(app_level=True) without app_ping is a configuration error."""
    with pytest.raises(ValueError, match="app_ping"):
        ReconnectingTransport(Server(), heartbeat=Heartbeat(app_level=True))


@pytest.mark.parametrize(
    ("overflow", "expected", "counters"),
    [
        ("drop_oldest", ["m2", "m3", "m4"], {"dropped_oldest": 2}),
        ("drop_newest", ["m0", "m1", "m2"], {"dropped_newest": 2}),
        ("reject", ["m0", "m1", "m2"], {"rejected": 2}),
    ],
)
async def test_queue_overflow_policies(
    overflow: Any, expected: list[str], counters: dict[str, int]
) -> None:
    """A queue of 3 under 5 sends keeps the right 3 and counts the other 2."""
    server = Server()
    policy = QueuePolicy(max_messages=3, overflow=overflow)
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None, queue=policy)
    async with rt:
        await anyio.sleep(10)
        server.failures.append(refused())
        server.end.break_link()
        rejected = 0
        accepted = []
        for number in range(5):
            try:
                accepted.append(await rt.send(f"m{number}"))
            except QueueFull:
                rejected += 1
        assert rejected == counters.get("rejected", 0)
        assert accepted.count(False) == counters.get("dropped_newest", 0)
        second = await server.wait_for_connection(2)
        assert [await second.receive() for _ in range(3)] == expected
        stats = rt.statistics().queue
        for name, value in counters.items():
            assert getattr(stats, name) == value
        assert stats.sent == 3


async def test_block_policy_applies_backpressure_while_down() -> None:
    """With block, the sender waits while the queue is full and resumes after reconnect."""
    server = Server()
    policy = QueuePolicy(max_messages=2, overflow="block")
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None, queue=policy)
    async with rt:
        await anyio.sleep(10)
        server.failures.extend([refused(), refused()])
        server.end.break_link()
        sent_at: list[float] = []

        async def sender() -> None:
            for number in range(4):
                await rt.send(f"m{number}")
                sent_at.append(anyio.current_time())

        async with anyio.create_task_group() as group:
            group.start_soon(sender)
            second = await server.wait_for_connection(2)
            assert [await second.receive() for _ in range(4)] == ["m0", "m1", "m2", "m3"]
        # Two fit at once; the others waited for the reconnect at 10 + 1 + 2 + 4.
        assert sent_at[:2] == [10, 10]
        assert sent_at[2] == sent_at[3] == 17


async def test_send_nowait_queues_and_flushes() -> None:
    """send_nowait never waits; its messages are written in order."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    async with rt:
        for number in range(3):
            assert rt.send_nowait(f"n{number}") is True
        assert [await server.end.receive() for _ in range(3)] == ["n0", "n1", "n2"]


async def test_aclose_flushes_queue_then_closes() -> None:
    """aclose() writes what is queued, then runs the closing handshake; receive ends."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    async with rt:
        for number in range(3):
            rt.send_nowait(f"n{number}")
        await rt.aclose()
        assert rt.state is C.CLOSED
        with pytest.raises(ConnectionClosedOK):
            await rt.receive()
        with pytest.raises(InvalidState):
            await rt.send("after close")
    end = server.end
    assert [await end.receive() for _ in range(3)] == ["n0", "n1", "n2"]
    assert end.close_code == 1000


async def test_messages_received_before_give_up_are_still_delivered() -> None:
    """Messages buffered before a fatal close are read before the error is raised."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    async with rt:
        await server.end.send("one")
        await server.end.send("two")
        await server.end.aclose(4001, "token expired")
        assert [await rt.receive(), await rt.receive()] == ["one", "two"]
        with pytest.raises(ReconnectFailed, match="token expired"):
            await rt.receive()


async def test_async_iteration_ends_on_close() -> None:
    """async for yields messages across a reconnect and stops after aclose()."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    got: list[str | bytes] = []
    async with rt:
        await server.end.send("a")
        await anyio.sleep(10)
        server.end.break_link()
        second = await server.wait_for_connection(2)
        await second.send("b")

        async def consume() -> None:
            async for message in rt:
                got.append(message)

        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            await anyio.sleep(1)
            await rt.aclose()
    assert got == ["a", "b"]


async def test_message_handler_receives_every_message() -> None:
    """With message_handler, messages are handed over as they arrive; its errors are counted."""
    server = Server()
    got: list[str | bytes] = []

    def handler(message: str | bytes) -> None:
        if message == "bad":
            raise RuntimeError("handler bug")
        got.append(message)

    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None, message_handler=handler)
    async with rt:
        for message in ["a", "bad", "b"]:
            await server.end.send(message)
        await anyio.sleep(1)
        assert got == ["a", "b"]
        assert rt.statistics().handler_errors == 1
        with pytest.raises(InvalidState):
            await rt.receive()


async def test_slow_consumer_pauses_heartbeat_not_the_connection() -> None:
    """A consumer that does not read for a long time does not cause a heartbeat timeout."""
    server = Server()
    rt = ReconnectingTransport(
        server, backoff=NO_JITTER, heartbeat=Heartbeat(interval=2, timeout=1), max_inbound=2
    )
    async with rt:
        for number in range(10):
            await server.end.send(f"m{number}")
        await anyio.sleep(60)
        assert [await rt.receive() for _ in range(10)] == [f"m{n}" for n in range(10)]
        assert rt.statistics().heartbeat_timeouts == 0
        assert len(server.ends) == 1


async def test_state_changes_iterator_ends_after_closed() -> None:
    """state_changes() yields every change from its creation and ends after CLOSED."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    seen: list[ConnectionState] = []
    async with rt:
        changes = rt.state_changes()

        async def watch() -> None:
            async for change in changes:
                seen.append(change.state)

        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            await anyio.sleep(10)
            server.end.break_link()
            await server.wait_for_connection(2)
            await anyio.sleep(1)
            await rt.aclose()
    assert seen == [C.RECONNECTING, C.OPEN, C.CLOSING, C.CLOSED]


async def test_reconnect_disabled_closes_on_loss() -> None:
    """backoff=None: a lost connection ends it with the loss as the error."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=None, heartbeat=None)
    async with rt:
        server.end.break_link()
        with pytest.raises(Exception, match="1006"):
            await rt.receive()
        assert rt.state is C.CLOSED
        assert server.attempts == [0]


async def test_send_refuses_what_is_not_str_or_bytes() -> None:
    """A bad message type raises TypeError whether the link is up or down; nothing is queued."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    async with rt:
        with pytest.raises(TypeError):
            await rt.send(3)  # type: ignore[arg-type]
        await anyio.sleep(10)
        server.failures.append(refused())
        server.end.break_link()
        await rt.wait_state(C.RECONNECTING)
        with pytest.raises(TypeError):
            await rt.send(3)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            rt.send_nowait(None)  # type: ignore[arg-type]
        assert rt.statistics().queue.queued == 0


async def test_wait_state_returns_when_the_state_is_reached() -> None:
    """wait_state() returns at once in the state, else on the transition into it."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None)
    async with rt:
        assert await rt.wait_state(C.OPEN, C.RECONNECTING) is C.OPEN
        await anyio.sleep(10)
        server.end.break_link()
        assert await rt.wait_state(C.RECONNECTING) is C.RECONNECTING
        assert anyio.current_time() == 10
        assert await rt.wait_state(C.OPEN) is C.OPEN
        assert anyio.current_time() == 11


async def test_wait_state_raises_once_the_state_cannot_come() -> None:
    """Waiting for OPEN raises the reason when reconnecting gives up instead."""
    server = Server()
    rt = ReconnectingTransport(
        server, backoff=Backoff(jitter="none", max_attempts=2), heartbeat=None
    )
    async with rt:
        await anyio.sleep(10)
        server.failures.extend(refused() for _ in range(5))
        server.end.break_link()
        await rt.wait_state(C.RECONNECTING)  # until the reader notices, it is still OPEN
        with pytest.raises(ReconnectFailed):
            await rt.wait_state(C.OPEN)
        assert anyio.current_time() == 13  # attempts at 11 and 13 failed
        with pytest.raises(ReconnectFailed):
            await rt.wait_state(C.OPEN)  # already closed: at once
        assert await rt.wait_state(C.CLOSED) is C.CLOSED


async def test_repr_and_statistics_show_state() -> None:
    """repr shows the name and state; statistics count attempts and uptime."""
    server = Server()
    rt = ReconnectingTransport(server, backoff=NO_JITTER, heartbeat=None, name="ws://example/x")
    async with rt:
        await anyio.sleep(3)
        assert repr(rt) == "<ReconnectingTransport ws://example/x OPEN attempts=1 queued=0>"
        stats = rt.statistics()
        assert stats.uptime == 3
        assert stats.live_transports == 1
    assert "CLOSED" in repr(rt)
