"""Races in the messaging layer and StreamLink found by a second review, asyncio and trio.

A writer cancelled as its write completes, a session closed as its request
gets queue room, subscribes orphaned, dropped or cancelled while others join,
and ttl expiry under the block policy.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import pytest

import wsclient
from wsclient import ConnectionState, InvalidState, QueuePolicy, SubscriptionState
from wsclient._links import StreamLink
from wsclient.testing import MemoryTransport

from .test_client_layers import Outcome, make_client, read, read_until_marker
from .test_links import DATA, Owner
from .test_reconnect import Server

pytestmark = pytest.mark.anyio

C = ConnectionState
S = SubscriptionState
SUBSCRIBE = {"action": "subscribe", "channel": "prices"}
UNSUBSCRIBE = {"action": "unsubscribe", "channel": "prices"}


@pytest.fixture
def anyio_backend(fake_clock: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return fake_clock


# StreamLink.flush


class CompletingStream(anyio.abc.ByteStream):
    """A byte stream whose first send waits for release and, once started, always completes.

    Like a write the kernel accepted in the same instant the caller's deadline
    passed: the cancellation is only seen at the writer's next checkpoint.
    """

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.release = anyio.Event()

    async def send(self, item: bytes) -> None:
        self.sent.append(item)
        if len(self.sent) == 1:
            with anyio.CancelScope(shield=True):
                await self.release.wait()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def test_flush_does_not_return_while_its_frame_is_still_queued() -> None:
    """A sender waiting on a writer that is cancelled returns only once its frame is out."""
    stream = CompletingStream()
    link = StreamLink(Owner(), stream)
    writer_scope = anyio.CancelScope()
    at_return: list[Any] = []

    async def writer() -> None:
        with writer_scope:  # its request's timeout, say
            link.queue([DATA[0]], control=False)
            await link.flush()

    async def waiter() -> None:
        link.queue([DATA[1]], control=False)
        await link.flush()
        at_return.extend([link.lost, list(stream.sent)])

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(writer)
            await anyio.wait_all_tasks_blocked()  # the writer is in send(DATA[0])
            group.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()  # the waiter waits for the writer
            stream.release.set()  # the write completes...
            writer_scope.cancel()  # ...in the same instant the writer's deadline passes
    # flush() returned: its frame must be out, or the link lost (send() then raises).
    lost, written = at_return
    assert lost or written == [DATA[0], DATA[1]], (lost, written)


# Requests: failing one while it waits for room in the queue


class HookedServer(Server):
    """A Server whose client end of connection ``at`` runs ``hook`` inside its first send."""

    def __init__(self, at: int, **pair_options: Any) -> None:
        super().__init__(**pair_options)
        self._at = at
        self.hook: Any = None

    async def __call__(self) -> Any:
        transport: MemoryTransport = await super().__call__()  # type: ignore[assignment]
        if len(self.ends) == self._at:
            original = transport.send

            async def send(data: str | bytes, *, text: bool | None = None) -> None:
                hook, self.hook = self.hook, None
                if hook is not None:
                    await hook()
                await original(data, text=text)

            transport.send = send  # type: ignore[method-assign]
        return transport


async def test_session_closed_as_its_request_gets_room_does_not_send_it() -> None:
    """A session closed as its blocked request is given room: the request is not sent."""
    server = HookedServer(at=2)
    queue = QueuePolicy(max_messages=1, overflow="block")
    async with make_client(server, queue=queue) as client, anyio.create_task_group() as group:
        server.end.break_link()
        await client.wait_state(C.RECONNECTING)
        await client.send({"fill": 1})
        session = client.session("s1")
        outcome = Outcome()
        group.start_soon(outcome.run, session.query("slow"))
        await anyio.sleep(0.1)  # waiting for room in the queue
        # The flusher pops {"fill": 1}, which wakes the query's put(); the
        # session closes before that task runs again.
        server.hook = session.aclose
        end = await server.wait_for_connection(2)
        await client.wait_state(C.OPEN)
        await outcome.wait()
        await client.send({"marker": 1})
        sent = await read_until_marker(end)
        assert isinstance(outcome.error, InvalidState)
        assert sent == [{"fill": 1}], sent


# Subscriptions: the subscribe _orphaned() queues carries no number


async def orphan_a_queued_subscribe(client: wsclient.Client, server: Server, group: Any) -> Any:
    """Leave a second subscriber's subscribe, queued by _orphaned(), in the queue; return it."""
    await client.send({"fill": 1})  # the server's buffer is full: the next write waits
    scope = anyio.CancelScope()

    async def first() -> None:
        with scope:
            await client.subscribe("prices", callback=lambda data: None)

    group.start_soon(first)
    await anyio.sleep(1)  # the first subscriber is writing the subscribe, straight to the link
    second = await client.subscribe("prices", callback=lambda data: None)  # joins the channel
    client.transport.send_nowait('{"x": 1}')  # the flusher takes it and waits for room too
    await anyio.sleep(1)
    scope.cancel()  # the first gives up: _orphaned() queues a subscribe for the second
    await anyio.sleep(1)
    assert client.statistics().connection.queue.messages == 1
    return second


async def test_orphaned_subscribe_queued_at_a_drop_is_sent_once() -> None:
    """The subscribe queued for an orphaned channel is not sent twice after a reconnect."""
    server = Server(max_queue=1)
    async with make_client(server) as client, anyio.create_task_group() as group:
        await orphan_a_queued_subscribe(client, server, group)
        server.end.break_link()
        end = await server.wait_for_connection(2)
        await client.wait_state(C.OPEN)
        group.start_soon(client.send, {"marker": 1})
        sent = await read_until_marker(end)
        assert sent.count(SUBSCRIBE) == 1, sent


async def test_orphaned_subscribe_queued_at_a_drop_is_followed_by_its_unsubscribe() -> None:
    """Leaving an orphaned channel whose subscribe is still queued sends an unsubscribe after it."""
    server = Server(max_queue=1)
    async with make_client(server) as client, anyio.create_task_group() as group:
        second = await orphan_a_queued_subscribe(client, server, group)
        server.end.break_link()
        await client.wait_state(C.RECONNECTING)
        await second.aclose()  # the subscribe still waits in the queue
        end = await server.wait_for_connection(2)
        await client.wait_state(C.OPEN)
        group.start_soon(client.send, {"marker": 1})
        sent = await read_until_marker(end)
        assert SUBSCRIBE in sent, sent
        assert UNSUBSCRIBE in sent, sent
        assert sent.index(SUBSCRIBE) < sent.index(UNSUBSCRIBE), sent


class UnconfirmedDialect(wsclient.DefaultDialect):
    """The default dialect for a server that never confirms subscriptions."""

    confirms_subscriptions = False


# Failed at a5fedb6 (stayed SUBSCRIBING); passes once resubscribe() calls _sent() for a
# channel whose subscribe is still queued.
async def test_unconfirmed_subscribe_queued_at_a_drop_is_subscribed_once_sent() -> None:
    """Without confirmations, a subscribe flushed after a reconnect means SUBSCRIBED."""
    server = Server(max_queue=1)  # the server's end reads nothing: the flusher blocks
    client = make_client(server, dialect=UnconfirmedDialect())
    async with client, anyio.create_task_group() as group:
        server.end.break_link()
        await client.wait_state(C.RECONNECTING)
        for n in range(3):
            await client.send({"n": n})
        await server.wait_for_connection(2)
        await client.wait_state(C.OPEN)
        await anyio.sleep(1)  # the flusher wrote {"n": 0} and is stuck writing {"n": 1}
        sub = await client.subscribe("prices", callback=lambda data: None)
        assert sub.state is S.SUBSCRIBED  # queued counts as sent, as documented
        server.end.break_link()
        end = await server.wait_for_connection(3)
        await client.wait_state(C.OPEN)
        group.start_soon(client.send, {"marker": 1})
        sent = await read_until_marker(end)
        assert sent.count(SUBSCRIBE) == 1, sent
        assert sub.state is S.SUBSCRIBED


async def test_receive_on_a_subscription_whose_open_failed_raises() -> None:
    """After ``await sub`` raised QueueFull, ``sub.receive()`` raises instead of waiting forever."""
    server = Server(max_queue=1)
    queue = QueuePolicy(max_messages=1, overflow="reject")
    async with make_client(server, queue=queue) as client:
        await client.send({"fill": 1})  # the server's buffer is full: the next write waits
        client.transport.send_nowait('{"x": 1}')  # the flusher takes it and waits for room
        await anyio.sleep(1)
        client.transport.send_nowait('{"y": 1}')  # the queue is full
        sub = client.subscribe("prices")
        with pytest.raises(wsclient.QueueFull):
            await sub
        assert sub.state is S.FAILED  # it never opened, and says why
        with anyio.move_on_after(5) as timer:
            with pytest.raises((InvalidState, wsclient.QueueFull)):
                await sub.receive()
        assert not timer.cancelled_caught, "receive() waited on a subscription that never opened"


class SlowDrainServer(Server):
    """A Server whose client ends hand each message over, then wait while ``draining``.

    Like WebSocketTransport over a slow peer: send() queues the frame at once
    and then waits for the socket's buffer to drain; cancelling that wait
    does not take the frame back.
    """

    def __init__(self, **pair_options: Any) -> None:
        super().__init__(**pair_options)
        self.draining = False

    async def __call__(self) -> Any:
        transport: MemoryTransport = await super().__call__()  # type: ignore[assignment]
        original = transport.send

        async def send(data: str | bytes, *, text: bool | None = None) -> None:
            await original(data, text=text)
            if self.draining:
                await anyio.sleep(60)

        transport.send = send  # type: ignore[method-assign]
        return transport


async def test_cancelled_subscribe_already_handed_over_is_followed_by_unsubscribe() -> None:
    """A subscriber cancelled after its subscribe was handed to the connection unsubscribes."""
    server = SlowDrainServer()
    async with make_client(server) as client, anyio.create_task_group() as group:
        server.draining = True
        scope = anyio.CancelScope()

        async def subscriber() -> None:
            with scope:
                await client.subscribe("prices", callback=lambda data: None)

        group.start_soon(subscriber)
        await anyio.sleep(1)  # the subscribe is out; send() waits for the peer to drain
        scope.cancel()  # the subscriber gives up (its own timeout, say)
        await anyio.sleep(1)
        server.draining = False
        assert client.statistics().channels.channels == 0
        group.start_soon(client.send, {"marker": 1})
        sent = await read_until_marker(server.end)
        assert sent[:1] == [SUBSCRIBE], sent
        assert UNSUBSCRIBE in sent, sent


# What held: numbering of dropped messages


async def test_ttl_expiry_under_block_fails_the_expired_request_not_the_blocked_one() -> None:
    """Under "block" with ttl, the head's expiry fails its request; the blocked one goes out."""
    server = Server()
    queue = QueuePolicy(max_messages=1, overflow="block", ttl=5)
    async with make_client(server, queue=queue) as client, anyio.create_task_group() as group:
        server.failures.extend(ConnectionError("refused") for _ in range(2))  # back at t=7
        server.end.break_link()
        await client.wait_state(C.RECONNECTING)
        first, second = Outcome(), Outcome()
        group.start_soon(first.run, client.query("first", timeout=60))
        await anyio.sleep(0)
        group.start_soon(second.run, client.query("second", timeout=60))
        await first.wait()
        assert isinstance(first.error, wsclient.QueueFull), first.error
        assert first.at == pytest.approx(5.0)
        assert not second.done.is_set()
        end = await server.wait_for_connection(2)
        request = await read(end)
        assert request["payload"]["resource"] == "second"
        await end.send(f'{{"type": "response", "requestId": {request["id"]}, "payload": "ok"}}')
        assert (await second.wait()).result == "ok"
        stats = client.statistics().requests
        assert (stats.dropped, stats.pending) == (1, 0)


async def test_orphaned_subscribe_dropped_by_drop_newest_is_not_taken_as_sent() -> None:
    """When drop_newest drops the orphaned channel's subscribe, no lone unsubscribe follows."""
    server = Server(max_queue=1)
    queue = QueuePolicy(max_messages=2, overflow="drop_newest")
    async with make_client(server, queue=queue) as client, anyio.create_task_group() as group:
        await client.send({"fill": 1})  # the server's buffer is full: the next write waits
        scope = anyio.CancelScope()

        async def first() -> None:
            with scope:
                await client.subscribe("prices", callback=lambda data: None)

        group.start_soon(first)
        await anyio.sleep(1)  # the first subscriber is writing the subscribe, straight to the link
        second = await client.subscribe("prices", callback=lambda data: None)
        for n in range(3):  # the flusher takes {"n": 0} and waits; {"n": 1}, {"n": 2} fill it
            client.transport.send_nowait(f'{{"n": {n}}}')
            await anyio.sleep(1)
        scope.cancel()  # _orphaned(): its subscribe is dropped by drop_newest
        await anyio.sleep(1)
        assert client.statistics().connection.queue.dropped_newest == 1
        sent = [await read(server.end) for _ in range(4)]  # the backlog drains
        await second.aclose()
        group.start_soon(client.send, {"marker": 1})
        sent += await read_until_marker(server.end)
        # Today: fill, n 0..2, then an unsubscribe for a subscribe never sent.
        assert UNSUBSCRIBE not in sent or SUBSCRIBE in sent, sent
