"""The Client end to end against the reference Hub, on real sockets, on asyncio and trio.

Requests, remote errors, timeouts and late replies, channels (fan-out,
reference-counted unsubscribe, slow subscribers), sessions on one shared
connection, malformed inbound messages and a clean close.

The Hub runs its handlers on its own asyncio loop: the test's loop on
asyncio, a loop thread on trio. Handlers that must wait for the test therefore
wait on a :class:`Gate` (a ``threading.Event``), never on an anyio primitive of
the test's loop. Every wait is bounded by ``fail_after``; conditions are polled,
nothing sleeps a fixed time to let something happen.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

import wsclient
from wsclient import (
    BufferPolicy,
    ConnectionLost,
    ConnectionState,
    InvalidState,
    ProtocolError,
    QueueFull,
    RemoteError,
    RequestTimeout,
    SubscriptionState,
    WSClientError,
)
from wsclient.server import Hub, HubError, HubServer, RequestContext

pytestmark = pytest.mark.anyio

BOUND = 5.0  # seconds any single step may take; the steps take milliseconds
HANDLER_BOUND = 10.0  # the longest a gated handler waits, so the Hub always shuts down


class Gate:
    """A latch the Hub's handlers wait on, opened by the test from any thread."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._lock = threading.Lock()
        self._entered = 0

    @property
    def entered(self) -> int:
        """How many handlers have started waiting (the Hub received their requests)."""
        with self._lock:
            return self._entered

    def open(self) -> None:
        self._open.set()

    async def wait(self) -> None:
        """Wait, on the Hub's asyncio loop, until opened (at most HANDLER_BOUND seconds)."""
        with self._lock:
            self._entered += 1
        deadline = time.monotonic() + HANDLER_BOUND
        while not self._open.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


def gated_hub() -> tuple[Hub, Gate]:
    """A Hub whose ``slow`` query replies with its parameters once the gate opens."""
    hub = Hub(ping_interval=None)
    gate = Gate()

    @hub.on_query("slow")
    async def slow(parameters: Any, ctx: RequestContext) -> Any:
        await gate.wait()
        return parameters

    return hub, gate


@asynccontextmanager
async def serve(hub: Hub | None = None) -> AsyncIterator[HubServer]:
    async with (hub or Hub(ping_interval=None)).serve() as server:
        yield server


async def wait_until(condition: Callable[[], bool], bound: float = BOUND) -> None:
    """Poll ``condition`` until it holds, failing after ``bound`` seconds."""
    with anyio.fail_after(bound):
        while not condition():
            await anyio.sleep(0.01)


async def drain(sub: wsclient.Subscription, into: list[Any]) -> None:
    """Append each delivery of ``sub`` to ``into`` until the subscription ends."""
    async for data in sub:
        into.append(data)


async def receive(endpoint: Any) -> Any:
    """The next unhandled message of a client or session, bounded."""
    with anyio.fail_after(BOUND):
        return await endpoint.receive()


# 1. Requests and replies


async def test_query_echo_returns_parameters_exactly() -> None:
    """The echo query's reply is its parameters, nested values unchanged."""
    parameters = {"a": [1, 2.5, None, True, "x"], "b": {"c": {"d": []}}, "e": ""}
    async with serve() as server, wsclient.connect(server.url) as client:
        with anyio.fail_after(BOUND):
            assert await client.query("echo", parameters) == parameters
            assert await client.request("query", {"resource": "echo", "parameters": [1, 2]}) == [
                1,
                2,
            ]
        stats = client.statistics().requests
        assert (stats.pending, stats.sent, stats.replies) == (0, 2, 2)


async def test_command_reaches_its_handler() -> None:
    """A command is answered by the handler registered for its action, with its return value."""
    hub = Hub(ping_interval=None)
    seen: list[tuple[str, str | None, Any]] = []

    @hub.on_command("add")
    async def add(parameters: Any, ctx: RequestContext) -> Any:
        seen.append((ctx.type, ctx.name, parameters))
        return {"sum": parameters["a"] + parameters["b"]}

    async with serve(hub) as server, wsclient.connect(server.url) as client:
        with anyio.fail_after(BOUND):
            assert await client.command("add", {"a": 2, "b": 3}) == {"sum": 5}
    assert seen == [("command", "add", {"a": 2, "b": 3})]


async def test_time_query_returns_server_time() -> None:
    """The built-in time query replies with the server's unix time."""
    async with serve() as server, wsclient.connect(server.url) as client:
        before = time.time()
        with anyio.fail_after(BOUND):
            reply = await client.query("time")
        assert set(reply) == {"time"}
        assert before - 1 <= reply["time"] <= time.time() + 1


# 2. Remote errors


async def test_remote_errors_raise_and_the_client_keeps_working() -> None:
    """A HubError and an unknown resource raise RemoteError with the server's message."""
    hub = Hub(ping_interval=None)

    @hub.on_query("thing")
    async def thing(parameters: Any, ctx: RequestContext) -> Any:
        raise HubError("no such thing")

    async with serve(hub) as server, wsclient.connect(server.url) as client:
        with anyio.fail_after(BOUND):
            with pytest.raises(RemoteError) as raised:
                await client.query("thing", {"id": 1})
            assert str(raised.value) == "no such thing"

            with pytest.raises(RemoteError) as raised:
                await client.query("nowhere")
            assert str(raised.value) == "unknown resource: 'nowhere'"

            assert await client.query("echo", {"still": "working"}) == {"still": "working"}
        stats = client.statistics()
        assert stats.requests.remote_errors == 2
        assert stats.requests.replies == 1
        assert stats.requests.pending == 0
        assert stats.state is ConnectionState.OPEN


# 3. Timeouts and late replies


async def test_timeout_then_late_reply_is_counted_and_reported() -> None:
    """A request times out; its late reply counts as unknown and goes to on_error."""
    hub, gate = gated_hub()
    errors: list[BaseException] = []
    async with serve(hub) as server, wsclient.connect(server.url) as client:
        client.on_error(errors.append)
        try:
            with anyio.fail_after(BOUND):
                with pytest.raises(RequestTimeout):
                    await client.query("slow", {"late": True}, timeout=0.2)
            stats = client.statistics().requests
            assert (stats.pending, stats.timeouts, stats.unknown_replies) == (0, 1, 0)
            await wait_until(lambda: gate.entered == 1)  # the Hub holds the request
        finally:
            gate.open()
        await wait_until(lambda: client.statistics().requests.unknown_replies == 1)
        assert len(errors) == 1
        assert isinstance(errors[0], ProtocolError)
        assert "no pending request" in str(errors[0])
        with anyio.fail_after(BOUND):
            assert await client.query("echo", 1) == 1
        assert client.statistics().requests.timeouts == 1


# 4. Many requests at once


async def test_thousand_concurrent_requests_get_their_own_replies() -> None:
    """1,000 concurrent echo queries each resolve with their own payload."""
    results: dict[int, Any] = {}

    async def ask(client: wsclient.Client, i: int) -> None:
        results[i] = await client.query("echo", {"i": i})

    async with serve() as server, wsclient.connect(server.url) as client:
        with anyio.fail_after(BOUND * 2):
            async with anyio.create_task_group() as tg:
                for i in range(1000):
                    tg.start_soon(ask, client, i)
        assert results == {i: {"i": i} for i in range(1000)}
        stats = client.statistics().requests
        assert (stats.pending, stats.sent, stats.replies) == (0, 1000, 1000)
        assert (stats.timeouts, stats.unknown_replies, stats.remote_errors) == (0, 0, 0)


# 5. Channels: confirmation and fan-out


async def test_publish_fans_out_to_every_subscribed_client() -> None:
    """A publication reaches each of three subscribed clients, and not the publisher."""
    data = {"symbol": "ABC", "bid": [1.5, 2], "meta": {"seq": 7}}
    async with (
        serve() as server,
        wsclient.connect(server.url) as a,
        wsclient.connect(server.url) as b,
        wsclient.connect(server.url) as c,
        wsclient.connect(server.url) as publisher,
        a.subscribe("prices") as sub_a,
        b.subscribe("prices") as sub_b,
        c.subscribe("prices") as sub_c,
    ):
        subs = [sub_a, sub_b, sub_c]
        with anyio.fail_after(BOUND):
            for sub in subs:
                await sub.confirmed()
                assert sub.state is SubscriptionState.SUBSCRIBED
            assert server.statistics().subscriptions == 3
            await publisher.publish("prices", data)
            for sub in subs:
                assert await sub.receive() == data
            # The Hub answers in order: the echo comes after any delivery.
            assert await publisher.query("echo", 0) == 0
        for sub in subs:
            assert sub.statistics() == wsclient.SubscriptionStatistics(
                SubscriptionState.SUBSCRIBED, 1, 0, 0
            )
        pub_stats = publisher.statistics()
        assert pub_stats.channels.deliveries == 0
        assert pub_stats.channels.channels == 0
        assert pub_stats.messages.received == 0
        for client in (a, b, c):
            assert client.statistics().channels.deliveries == 1


# 6. Reference-counted unsubscribe


async def test_local_subscribers_share_one_server_subscription() -> None:
    """Two local subscribers make one Hub subscription; it ends when the last one leaves."""
    async with serve() as server, wsclient.connect(server.url) as client:
        with anyio.fail_after(BOUND):
            first = await client.subscribe("news")
            second = await client.subscribe("news")
            await first.confirmed()
            await second.confirmed()
            assert server.statistics().subscriptions == 1
            stats = client.statistics().channels
            assert (stats.channels, stats.subscriptions) == (1, 2)

            await first.aclose()
            assert first.state is SubscriptionState.UNSUBSCRIBED
            assert await client.query("echo", 0) == 0  # anything sent before is handled
            assert server.statistics().subscriptions == 1

            assert await server.publish("news", {"n": 1}) == 1
            assert await second.receive() == {"n": 1}
            assert first.statistics().received == 0

            await second.aclose()
        await wait_until(lambda: server.statistics().subscriptions == 0)
        assert server.statistics().channels == 0
        stats = client.statistics().channels
        assert (stats.channels, stats.subscriptions) == (0, 0)


# 7. A slow subscriber does not stall a fast one


async def test_slow_subscriber_drops_oldest_without_stalling_others() -> None:
    """An unread subscriber keeps its newest 10 messages while another gets all 200."""
    got: list[int] = []
    all_in = anyio.Event()

    async def read(sub: wsclient.Subscription) -> None:
        async for data in sub:
            got.append(data)
            if len(got) == 200:
                all_in.set()

    async with (
        serve() as server,
        wsclient.connect(server.url) as client,
        wsclient.connect(server.url) as publisher,
        client.subscribe("ticks", buffer=BufferPolicy(max_messages=10)) as slow,
        client.subscribe("ticks") as fast,
    ):
        with anyio.fail_after(BOUND):
            await slow.confirmed()
            async with anyio.create_task_group() as tg:
                tg.start_soon(read, fast)
                for i in range(200):
                    await publisher.publish("ticks", i)
                await all_in.wait()
                tg.cancel_scope.cancel()
            assert got == list(range(200))
            assert slow.statistics() == wsclient.SubscriptionStatistics(
                SubscriptionState.SUBSCRIBED, 200, 10, 190
            )
            assert [await slow.receive() for _ in range(10)] == list(range(190, 200))
        assert slow.statistics().pending == 0
        stats = client.statistics().channels
        assert (stats.deliveries, stats.dropped) == (200, 190)


async def test_subscriber_failing_on_overflow_leaves_the_others_alone() -> None:
    """Under overflow="fail" a subscriber yields its buffer, then QueueFull; others go on."""
    async with serve() as server, wsclient.connect(server.url) as client:
        policy = BufferPolicy(max_messages=10, overflow="fail")
        async with (
            client.subscribe("ticks", buffer=policy) as strict,
            client.subscribe("ticks") as other,
        ):
            with anyio.fail_after(BOUND):
                await strict.confirmed()
                for i in range(20):
                    await server.publish("ticks", i)
                assert [await other.receive() for _ in range(20)] == list(range(20))

                assert strict.state is SubscriptionState.FAILED
                yielded: list[int] = []
                with pytest.raises(QueueFull):
                    await drain(strict, yielded)
                assert yielded == list(range(10))
                with pytest.raises(QueueFull):
                    await strict.receive()
                assert strict.state is SubscriptionState.FAILED

                # The channel stays subscribed for the other subscriber.
                assert other.state is SubscriptionState.SUBSCRIBED
                assert await client.query("echo", 0) == 0
                assert server.statistics().subscriptions == 1
                await server.publish("ticks", 20)
                assert await other.receive() == 20
            stats = client.statistics().channels
            assert (stats.subscriptions, stats.deliveries) == (1, 21)


async def test_lone_subscriber_failing_on_overflow_unsubscribes() -> None:
    """A subscriber that fails under overflow="fail" and was alone leaves the Hub's channel."""
    async with serve() as server, wsclient.connect(server.url) as client:
        policy = BufferPolicy(max_messages=2, overflow="fail")
        async with client.subscribe("ticks", buffer=policy) as strict:
            with anyio.fail_after(BOUND):
                await strict.confirmed()
                for i in range(3):
                    await server.publish("ticks", i)
                await wait_until(lambda: strict.state is SubscriptionState.FAILED)
                assert [await strict.receive(), await strict.receive()] == [0, 1]
                with pytest.raises(QueueFull):
                    await strict.receive()
            await wait_until(lambda: server.statistics().subscriptions == 0)
            assert client.statistics().channels.channels == 0


# 8. Sessions on one shared connection


async def test_sessions_get_only_their_own_replies() -> None:
    """50 sessions query concurrently on one client; each gets its own reply only."""
    results: dict[int, Any] = {}

    async with serve() as server, wsclient.connect(server.url) as client:
        sessions = [client.session() for _ in range(50)]
        assert client.statistics().sessions == 50

        async def ask(k: int) -> None:
            for round_ in range(3):
                reply = await sessions[k].query("echo", {"session": k, "round": round_})
                assert reply == {"session": k, "round": round_}
            results[k] = reply

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                for k in range(50):
                    tg.start_soon(ask, k)
        assert results == {k: {"session": k, "round": 2} for k in range(50)}
        assert client.statistics().requests.pending == 0
        assert client.statistics().requests.unknown_replies == 0
        for session in sessions:
            stats = session.statistics()
            assert (stats.pending_requests, stats.messages.received) == (0, 0)
        assert client.statistics().messages.received == 0


async def test_addressed_message_reaches_only_its_session() -> None:
    """A system error answering session k's raw message arrives in session k's stream only."""
    errors: list[BaseException] = []
    async with serve() as server, wsclient.connect(server.url) as client:
        client.on_error(errors.append)
        sessions = [client.session(f"s{k}") for k in range(50)]
        k = 17
        await sessions[k].send({"type": "bogus"})
        message = await receive(sessions[k])
        assert message == {
            "channel": "system",
            "data": {"type": "error", "message": "unknown type: 'bogus'"},
            "from": "s17",
        }
        for other, session in enumerate(sessions):
            if other != k:
                assert session.statistics().messages.received == 0
        assert client.statistics().messages.received == 0
        assert len(errors) == 1
        assert isinstance(errors[0], RemoteError)
        assert str(errors[0]) == "unknown type: 'bogus'"


async def test_unaddressed_message_reaches_every_session_and_the_client() -> None:
    """A message without ``from`` goes to all 50 sessions and to the client's own stream."""
    hub = Hub(ping_interval=None)

    @hub.on_command("notify")
    async def notify(parameters: Any, ctx: RequestContext) -> Any:
        await ctx.send({"type": "notice", "n": 1})
        return {"ok": True}

    async with serve(hub) as server, wsclient.connect(server.url) as client:
        sessions = [client.session() for _ in range(50)]
        with anyio.fail_after(BOUND):
            # The notice is queued before the reply, so it is routed before this returns.
            assert await sessions[3].command("notify") == {"ok": True}
        for session in sessions:
            assert session.statistics().messages.pending == 1
            assert await receive(session) == {"type": "notice", "n": 1}
        assert await receive(client) == {"type": "notice", "n": 1}
        assert client.statistics().messages.pending == 0


async def test_closing_a_session_fails_only_its_own_requests() -> None:
    """Closing session 1 fails its pending query with InvalidState; session 2's succeeds."""
    hub, gate = gated_hub()
    outcomes: dict[str, Any] = {}

    async def ask(name: str, session: wsclient.Session) -> None:
        try:
            outcomes[name] = await session.query("slow", {"who": name})
        except WSClientError as exc:
            outcomes[name] = exc

    async with serve(hub) as server, wsclient.connect(server.url) as client:
        one, two = client.session(), client.session()
        try:
            with anyio.fail_after(BOUND):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(ask, "one", one)
                    tg.start_soon(ask, "two", two)
                    await wait_until(lambda: gate.entered == 2)
                    await one.aclose()
                    await wait_until(lambda: "one" in outcomes)
                    assert isinstance(outcomes["one"], InvalidState)
                    assert "two" not in outcomes
                    assert two.statistics().pending_requests == 1
                    gate.open()
        finally:
            gate.open()
        assert outcomes["two"] == {"who": "two"}
        assert one.closed
        assert not two.closed
        assert client.statistics().sessions == 1
        # The reply to session one's request arrives late and finds no waiter.
        await wait_until(lambda: client.statistics().requests.unknown_replies == 1)
        assert client.statistics().requests.pending == 0


# 9. Malformed inbound messages


async def test_malformed_inbound_is_reported_and_kept_in_the_stream() -> None:
    """An unroutable message goes to on_error as ProtocolError and to ``async for``."""
    hub = Hub(ping_interval=None)

    @hub.on_command("garble")
    async def garble(parameters: Any, ctx: RequestContext) -> Any:
        await ctx.send({"type": "response"})  # a reply without requestId
        return "done"

    errors: list[BaseException] = []
    async with serve(hub) as server, wsclient.connect(server.url) as client:
        client.on_error(errors.append)
        with anyio.fail_after(BOUND):
            assert await client.command("garble") == "done"
            async for message in client:
                assert message == {"type": "response"}
                break
            assert await client.query("echo", {"ok": 1}) == {"ok": 1}
        assert len(errors) == 1
        assert isinstance(errors[0], ProtocolError)
        assert "requestId" in str(errors[0])
        stats = client.statistics()
        assert (stats.invalid_messages, stats.errors) == (1, 1)
        assert stats.state is ConnectionState.OPEN


# 10. Closing


async def test_client_closes_cleanly_failing_what_waits() -> None:
    """Leaving the context closes the client; a pending request gets ConnectionLost."""
    hub, gate = gated_hub()
    outcome: list[BaseException] = []

    async def ask(client: wsclient.Client) -> None:
        try:
            await client.query("slow", {"never": "answered"})
        except WSClientError as exc:
            outcome.append(exc)

    try:
        async with serve(hub) as server:
            with anyio.fail_after(BOUND):
                async with anyio.create_task_group() as tg:
                    client = wsclient.connect(server.url)
                    async with client:
                        tg.start_soon(ask, client)
                        await wait_until(lambda: gate.entered == 1)
                        assert client.statistics().requests.pending == 1
                    assert client.state is ConnectionState.CLOSED
            assert len(outcome) == 1
            assert isinstance(outcome[0], ConnectionLost)
            stats = client.statistics()
            assert stats.state is ConnectionState.CLOSED
            assert stats.requests.pending == 0
            with pytest.raises(WSClientError):
                await client.query("echo", 1)
            with pytest.raises(WSClientError):
                client.session()
            await wait_until(lambda: server.statistics().connections_open == 0)
    finally:
        gate.open()


async def test_request_lost_on_close_is_counted_once() -> None:
    """A request in flight when the client closes counts once in ``requests.lost``."""
    hub, gate = gated_hub()

    async def ask(client: wsclient.Client) -> None:
        with pytest.raises(ConnectionLost):
            await client.query("slow")

    try:
        async with serve(hub) as server:
            with anyio.fail_after(BOUND):
                async with anyio.create_task_group() as tg:
                    client = wsclient.connect(server.url)
                    async with client:
                        tg.start_soon(ask, client)
                        await wait_until(lambda: gate.entered == 1)
            assert client.statistics().requests.lost == 1
    finally:
        gate.open()
