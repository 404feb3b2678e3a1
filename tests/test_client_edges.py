"""Edge cases of the messaging layer found by review, each once a bug.

Hostile reply ids, subscribes caught in the queue across a drop, cancelled
or dropped subscribes, closed subscriptions and sessions, statistics kept
when a subscription is refused. Fake clock, MemoryTransport pairs, asyncio
and trio.
"""

from __future__ import annotations

from typing import Any

import anyio
import orjson
import pytest

import wsclient
from wsclient import (
    BufferPolicy,
    ConnectionState,
    InvalidState,
    ProtocolError,
    QueueFull,
    QueuePolicy,
    ReconnectFailed,
    RemoteError,
)

from .test_client_layers import (
    Outcome,
    make_client,
    read,
    read_until_marker,
    refuse_reauthentication,
    reply,
)
from .test_reconnect import Server

pytestmark = pytest.mark.anyio

C = ConnectionState
SUBSCRIBE = {"action": "subscribe", "channel": "prices"}


@pytest.fixture
def anyio_backend(fake_clock: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return fake_clock


# Malformed replies


async def test_reply_with_a_list_request_id_is_reported_not_raised() -> None:
    """A reply whose requestId is a list is reported as a ProtocolError, not raised."""
    server = Server()
    errors: list[BaseException] = []
    async with make_client(server) as client, anyio.create_task_group() as group:
        client.on_error(errors.append)
        outcome = Outcome()
        group.start_soon(outcome.run, client.query("x", timeout=5))
        await read(server.end)  # a request is pending: the waiter table is not empty
        await server.end.send('{"type": "response", "requestId": [1], "payload": 1}')
        await anyio.sleep(1)
        assert client.statistics().connection.handler_errors == 0
        assert [type(e) for e in errors] == [ProtocolError]


async def test_reply_with_an_overlong_digit_string_id_is_reported_not_raised() -> None:
    """A requestId of 5000 digits (past int()'s 4300-digit limit) is reported, not raised."""
    server = Server()
    errors: list[BaseException] = []
    async with make_client(server) as client:
        client.on_error(errors.append)
        await server.end.send(orjson.dumps({"type": "response", "requestId": "9" * 5000}).decode())
        await anyio.sleep(1)
        assert client.statistics().connection.handler_errors == 0
        assert [type(e) for e in errors] == [ProtocolError]


async def test_json_rpc_batch_with_one_bad_id_still_resolves_the_other_replies() -> None:
    """One hostile item in a JSON-RPC batch does not swallow the valid reply next to it."""
    server = Server()
    client = make_client(server, dialect=wsclient.JsonRpcDialect())
    async with client, anyio.create_task_group() as group:
        outcome = Outcome()
        group.start_soon(outcome.run, client.query("sum", [1, 2], timeout=5))
        request = await read(server.end)
        batch = [
            {"jsonrpc": "2.0", "id": "9" * 5000, "result": 0},
            {"jsonrpc": "2.0", "id": request["id"], "result": 3},
        ]
        await server.end.send(orjson.dumps(batch).decode())
        assert (await outcome.wait()).result == 3, outcome.error


# Subscriptions across reconnects


async def test_subscribe_still_queued_at_a_drop_is_sent_once_after_the_reconnect() -> None:
    """A subscribe stuck in the queue when the link dropped is not sent twice on the next one."""
    server = Server(max_queue=1)  # the server's end reads nothing: the flusher blocks
    async with make_client(server) as client, anyio.create_task_group() as group:
        server.end.break_link()
        await client.wait_state(C.RECONNECTING)
        for n in range(3):
            await client.send({"n": n})
        await server.wait_for_connection(2)
        await client.wait_state(C.OPEN)
        await anyio.sleep(1)  # the flusher wrote {"n": 0} and is stuck writing {"n": 1}
        await client.subscribe("prices", callback=lambda data: None)
        assert client.statistics().connection.queue.messages == 2  # {"n": 2}, subscribe
        server.end.break_link()
        end = await server.wait_for_connection(3)
        await client.wait_state(C.OPEN)
        group.start_soon(client.send, {"marker": 1})
        sent = await read_until_marker(end)
        assert sent.count(SUBSCRIBE) == 1, sent


async def test_subscribe_opened_during_a_failed_hook_is_sent_once() -> None:
    """A subscription opened while re-authentication waits, on a link that then dies, goes once."""
    server = Server()
    async with make_client(server) as client, anyio.create_task_group() as group:
        outcome = Outcome()
        group.start_soon(outcome.run, client.authenticate("token"))
        await reply(server.end, await read(server.end), "ok")
        await outcome.wait()
        server.end.break_link()
        end = await server.wait_for_connection(2)
        await read(end)  # the re-authentication, left unanswered: the hook waits
        await client.subscribe("prices", callback=lambda data: None)  # queued
        end.break_link()
        end = await server.wait_for_connection(3)
        await reply(end, await read(end), "ok")
        await client.wait_state(C.OPEN)
        await client.send({"marker": 1})
        sent = await read_until_marker(end)
        assert sent == [SUBSCRIBE]


# Opening and closing subscriptions


async def test_cancelled_first_subscriber_does_not_strand_the_second() -> None:
    """If the subscriber sending the subscribe is cancelled, one that joined still gets it sent."""
    server = Server(max_queue=1)
    async with make_client(server) as client, anyio.create_task_group() as group:
        await client.send({"fill": 1})  # the server's buffer is full: the next write waits
        scope = anyio.CancelScope()

        async def first() -> None:
            with scope:
                await client.subscribe("prices", callback=lambda data: None)

        group.start_soon(first)
        await anyio.sleep(1)  # the first subscriber is writing the subscribe
        await client.subscribe("prices", callback=lambda data: None)  # joins the channel
        scope.cancel()
        await anyio.sleep(1)
        group.start_soon(client.send, {"marker": 1})
        sent = await read_until_marker(server.end)
        assert SUBSCRIBE in sent, sent


async def test_subscribe_dropped_by_drop_newest_is_not_silently_lost() -> None:
    """A subscribe the full queue drops raises QueueFull, or still reaches the server."""
    server = Server(max_queue=1)
    queue = QueuePolicy(max_messages=2, overflow="drop_newest")
    async with make_client(server, queue=queue) as client, anyio.create_task_group() as group:
        server.end.break_link()
        await client.wait_state(C.RECONNECTING)
        await client.send({"a": 1})
        await client.send({"b": 1})
        end = await server.wait_for_connection(2)
        await client.wait_state(C.OPEN)
        await anyio.sleep(1)  # the flusher wrote {"a": 1} and is stuck writing {"b": 1}
        assert await client.send({"c": 1})
        assert await client.send({"d": 1})  # the queue is full
        try:
            sub = await client.subscribe("prices", callback=lambda data: None)
        except QueueFull:
            return  # refused loudly, like a request: fine
        sent = [await read(end) for _ in range(4)]  # the backlog drains: the queue has room
        await sub.aclose()
        group.start_soon(client.send, {"marker": 1})
        sent += await read_until_marker(end)
        # Today: a, b, c, d, then an unsubscribe for a subscribe that was never sent.
        assert SUBSCRIBE in sent, sent


async def test_a_closed_subscription_cannot_be_opened() -> None:
    """Opening a subscription after aclose() raises InvalidState instead of leaking a channel."""
    server = Server()
    async with make_client(server) as client:
        sub = client.subscribe("prices")
        await sub.aclose()
        try:
            with pytest.raises(InvalidState):
                await sub
        finally:
            # Reopening it must not leave the channel held by a closed subscriber.
            assert client.statistics().channels.channels == 0


async def test_a_subscription_of_a_closed_session_cannot_be_opened() -> None:
    """A subscription made by a session, opened after the session closed, raises InvalidState."""
    server = Server()
    async with make_client(server) as client:
        session = client.session("s1")
        sub = session.subscribe("prices")
        await session.aclose()
        try:
            with pytest.raises(InvalidState):
                await sub
        finally:
            assert client.statistics().channels.subscriptions == 0


# Sessions


async def test_closing_a_session_ends_its_request_waiting_for_queue_room() -> None:
    """A session request blocked on a full "block" queue ends at the close and is never sent."""
    server = Server()
    queue = QueuePolicy(max_messages=1, overflow="block")
    async with make_client(server, queue=queue) as client, anyio.create_task_group() as group:
        server.end.break_link()
        await client.wait_state(C.RECONNECTING)
        await client.send({"fill": 1})
        session = client.session("s1")
        outcome = Outcome()
        group.start_soon(outcome.run, session.query("slow"))
        await anyio.sleep(0.1)  # waiting for room in the queue
        await session.aclose()
        await anyio.sleep(0.1)
        closed_at = anyio.current_time()
        end = await server.wait_for_connection(2)
        await client.wait_state(C.OPEN)
        await client.send({"marker": 1})
        sent = await read_until_marker(end)
        await outcome.wait()
        assert isinstance(outcome.error, InvalidState)
        assert outcome.at is not None
        assert outcome.at <= closed_at, outcome.at
        assert sent == [{"fill": 1}], sent  # today the closed session's query goes out too


# Statistics and errors


async def test_a_refused_subscription_keeps_its_drops_in_the_statistics() -> None:
    """ChannelStatistics.dropped never goes down: a refused subscription's drops stay counted."""
    server = Server()
    client = make_client(server, dialect=wsclient.JsonRpcDialect())
    async with client:
        sub = await client.subscribe("ticks", buffer=BufferPolicy(max_messages=1))
        request = await read(server.end)
        for n in range(3):
            params = {"channel": "ticks", "data": n}
            tick = {"jsonrpc": "2.0", "method": "message", "params": params}
            await server.end.send(orjson.dumps(tick).decode())
        await anyio.sleep(1)
        assert client.statistics().channels.dropped == 2
        refusal = {"jsonrpc": "2.0", "id": request["id"], "error": {"code": 1, "message": "no"}}
        await server.end.send(orjson.dumps(refusal).decode())
        await anyio.sleep(1)
        assert sub.statistics().dropped == 2
        assert client.statistics().channels.dropped == 2


async def test_session_receive_does_not_erase_the_cause_of_the_clients_failure() -> None:
    """Reading a closed session after the client failed leaves ReconnectFailed.__cause__ intact."""
    server = Server()
    async with make_client(server) as client, anyio.create_task_group() as group:
        session = client.session("s1")
        await session.aclose()
        await refuse_reauthentication(client, server, group)
        with pytest.raises(ReconnectFailed) as before:
            await client.query("x")
        assert isinstance(before.value.__cause__, RemoteError)
        with pytest.raises(ReconnectFailed):
            await session.receive()
        with pytest.raises(ReconnectFailed) as after:
            await client.query("x")
        assert isinstance(after.value.__cause__, RemoteError)


# Found while documenting


class Unconfirmed(wsclient.DefaultDialect):
    """A server that never confirms subscriptions."""

    confirms_subscriptions = False


async def test_unconfirmed_channel_queued_at_a_drop_is_subscribed_after_the_reconnect() -> None:
    """Without confirmations, a subscribe still queued at a drop counts as sent once flushed."""
    server = Server(max_queue=1)
    async with make_client(server, dialect=Unconfirmed()) as client:
        server.end.break_link()
        await client.wait_state(C.RECONNECTING)
        for n in range(3):
            await client.send({"n": n})
        await server.wait_for_connection(2)
        await client.wait_state(C.OPEN)
        await anyio.sleep(1)  # the flusher is stuck behind the full peer
        async with client.subscribe("prices") as sub:
            server.end.break_link()
            await client.wait_state(C.RECONNECTING)
            end = await server.wait_for_connection(3)
            await client.wait_state(C.OPEN)
            await sub.confirmed(timeout=1)
            assert sub.state is wsclient.SubscriptionState.SUBSCRIBED
            assert [await read(end) for _ in range(2)] == [{"n": 2}, SUBSCRIBE]


async def test_request_waiting_for_room_when_the_client_closes_is_lost_once() -> None:
    """A request blocked on a full queue when the client closes: ConnectionLost, counted once."""
    server = Server()
    outcome = Outcome()
    queue = QueuePolicy(max_messages=1, overflow="block")
    async with anyio.create_task_group() as group:
        async with make_client(server, queue=queue, close_timeout=1) as client:
            server.end.break_link()
            await client.wait_state(C.RECONNECTING)
            server.failures.extend(ConnectionError("refused") for _ in range(50))
            await client.send({"fill": 1})
            group.start_soon(outcome.run, client.query("blocked"))
            await anyio.sleep(0.5)
        await outcome.wait()
    assert isinstance(outcome.error, wsclient.ConnectionLost)
    stats = client.statistics().requests
    assert (stats.lost, stats.cancelled, stats.pending) == (1, 0, 0)


async def test_requests_refused_by_the_queue_count_as_dropped() -> None:
    """drop_newest and reject refusing a request count it in requests.dropped."""
    for overflow in ("drop_newest", "reject"):
        server = Server()
        queue = QueuePolicy(max_messages=1, overflow=overflow)  # type: ignore[arg-type]
        async with make_client(server, queue=queue) as client:
            server.end.break_link()
            await client.wait_state(C.RECONNECTING)
            await client.send({"fill": 1})
            with pytest.raises(QueueFull):
                await client.query("x")
            stats = client.statistics().requests
            assert (stats.dropped, stats.cancelled, stats.pending) == (1, 0, 0), overflow


async def test_confirmation_timeout_is_checked() -> None:
    """confirmed(timeout=) refuses what is not a positive number of seconds."""
    server = Server()
    async with make_client(server) as client, client.subscribe("prices") as sub:
        for bad in (0, -1, float("nan"), "1"):
            with pytest.raises(ValueError, match="timeout"):
                await sub.confirmed(timeout=bad)  # type: ignore[arg-type]


def test_json_rpc_error_with_an_empty_message_gets_a_text() -> None:
    """An error object whose message is empty still says what happened."""
    inbound = wsclient.JsonRpcDialect().route(
        {"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": ""}}
    )
    assert inbound.error is not None
    assert str(inbound.error) == "the server sent error -32000 without a message"
