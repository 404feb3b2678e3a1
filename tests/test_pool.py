"""The Pool: picking, fallback, subscriptions that move, on a fake clock and against the Hub.

Most tests run the pool over a :class:`Cluster` of in-memory servers on a fake
clock (asyncio and trio), so every instant (a grace period ending, a backoff)
is exact. The cluster shares its channels between its nodes, as hubs behind
Redis do: a publication reaches every connection subscribed to the channel,
on any node, stamped with the same id. The last tests run the pool against
the reference Hub on real sockets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections import Counter, defaultdict
from typing import Any

import anyio
import anyio.abc
import orjson
import pytest

import wsclient
from wsclient import (
    Backoff,
    BufferPolicy,
    Client,
    ConnectError,
    ConnectionClosed,
    ConnectionLost,
    ConnectionState,
    Heartbeat,
    InvalidState,
    Pool,
    PoolStatistics,
    RemoteError,
    SubscriptionState,
    Transport,
)
from wsclient.server import Hub, RequestContext
from wsclient.testing import FaultProxy, MemoryTransport

from .conftest import _fake_clock_backend

pytestmark = pytest.mark.anyio

C = ConnectionState
S = SubscriptionState
NO_JITTER = Backoff(jitter="none", initial=1.0, factor=2.0, maximum=8.0, min_uptime=0.0)
OPTIONS: dict[str, Any] = {"backoff": NO_JITTER, "heartbeat": None}
BOUND = 60.0  # virtual seconds any step of a fake-clock test may take


class CloseFails(MemoryTransport):
    """An end whose aclose() raises once it closed, as a faulty custom transport might."""

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        await super().aclose(code, reason)
        raise OSError("the socket failed while closing")


class Node:
    """One in-memory server of a cluster: a transport factory whose connections it serves."""

    def __init__(self, cluster: Cluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.refusing = False
        self.drop_subscribes = False  # drop (and refuse) a connection that subscribes
        self.max_queue = 32  # messages a connection buffers each way
        self.transport = MemoryTransport  # the class of its connections' ends
        self.gate: anyio.Event | None = None  # while it is not set, the node reads nothing
        self.hold = False  # keep requests unanswered, in held, until answer_held()
        self.held: list[tuple[MemoryTransport, dict[str, Any]]] = []
        self.ends: list[MemoryTransport] = []
        self.received: list[tuple[int, Any]] = []  # (connection number, message)
        self.subscribes: list[tuple[float, str]] = []

    async def __call__(self) -> Transport:
        if self.refusing:
            raise ConnectError(f"node {self.index} refused the connection")
        client, server = self.transport.pair(max_queue=self.max_queue)
        self.ends.append(server)
        self.cluster.group.start_soon(self.cluster.serve, self, server, len(self.ends))
        return client

    def sent_on(self, connection: int) -> list[Any]:
        """What the client sent on this node's connection number ``connection`` (from 1)."""
        return [message for number, message in self.received if number == connection]

    async def answer_held(self) -> None:
        held, self.held = self.held, []
        for end, request in held:
            await self.cluster.reply(self, end, request)


class Cluster:
    """Nodes that share channels: a publication reaches every subscribed connection.

    ``ids``: deliveries carry a unique ``"id"``. ``replay``: on subscribe, the
    last ``replay`` publications of the channel are delivered again (a server
    that lets a client catch up).
    """

    def __init__(
        self, group: anyio.abc.TaskGroup, nodes: int, *, ids: bool = True, replay: int = 0
    ) -> None:
        self.group = group
        self.nodes = [Node(self, index) for index in range(nodes)]
        self.ids = ids
        self.replay = replay
        self.subscribers: dict[str, list[MemoryTransport]] = defaultdict(list)
        self.history: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.published = 0
        self.on_subscribe: list[Any] = []  # what watch_subscribe() saw at each subscribe
        self.watch_subscribe: Any = None

    async def serve(self, node: Node, end: MemoryTransport, number: int) -> None:
        try:
            while True:
                if node.gate is not None:
                    await node.gate.wait()
                message = orjson.loads(await end.receive())
                node.received.append((number, message))
                action = message.get("action")
                if action == "subscribe":
                    await self.subscribe(node, end, message["channel"])
                elif action == "unsubscribe":
                    if end in self.subscribers[message["channel"]]:
                        self.subscribers[message["channel"]].remove(end)
                elif action == "publish":
                    await self.publish(message["channel"], message["data"])
                elif message.get("type") in ("query", "command"):
                    if node.hold:
                        node.held.append((end, message))
                    else:
                        await self.reply(node, end, message)
        except ConnectionClosed:
            pass
        finally:
            for ends in self.subscribers.values():
                if end in ends:
                    ends.remove(end)

    async def subscribe(self, node: Node, end: MemoryTransport, channel: str) -> None:
        node.subscribes.append((anyio.current_time(), channel))
        if node.drop_subscribes:
            node.refusing = True
            end.break_link()
            return
        if self.watch_subscribe is not None:
            self.on_subscribe.append(self.watch_subscribe())
        if end not in self.subscribers[channel]:
            self.subscribers[channel].append(end)
        data = {"type": "subscription_confirm", "channel": channel}
        await end.send(orjson.dumps({"channel": "system", "data": data}).decode())
        for delivery in self.history[channel][len(self.history[channel]) - self.replay :]:
            await end.send(orjson.dumps(delivery).decode())

    async def publish(self, channel: str, data: Any) -> int:
        """Deliver ``data`` to every connection subscribed to ``channel``; how many."""
        self.published += 1
        delivery: dict[str, Any] = {"channel": channel, "data": data}
        if self.ids:
            delivery["id"] = f"m{self.published}"
        self.history[channel].append(delivery)
        ends = list(self.subscribers[channel])
        for end in ends:
            await end.send(orjson.dumps(delivery).decode())
        return len(ends)

    async def reply(self, node: Node, end: MemoryTransport, request: dict[str, Any]) -> None:
        reply = {
            "id": f"r{request['id']}",
            "type": "response",
            "requestId": request["id"],
            "payload": {"node": node.index, "payload": request["payload"]},
        }
        with contextlib.suppress(ConnectionClosed):  # the client is gone: no one to answer
            await end.send(orjson.dumps(reply).decode())


class Outcome:
    """What a call run in the background ended with."""

    def __init__(self) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = anyio.Event()

    async def run(self, call: Any) -> None:
        try:
            self.result = await call
        except Exception as exc:
            self.error = exc
        self.done.set()

    async def wait(self) -> Outcome:
        with anyio.fail_after(BOUND):
            await self.done.wait()
        return self


async def until(condition: Any) -> None:
    """Let virtual time pass, a millisecond at a time, until ``condition()`` holds."""
    with anyio.fail_after(BOUND):
        while not condition():
            await anyio.sleep(0.001)


async def wait_state(client: Client, state: ConnectionState) -> None:
    with anyio.fail_after(BOUND):
        await client.wait_state(state)


class FakeClock:
    """Its tests run on virtual time, on asyncio and on trio."""

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
        return _fake_clock_backend(request.param)


def node_of(result: Any) -> int:
    node: int = result["node"]
    return node


class TestPicking(FakeClock):
    """pick(): round robin, skipping, fallback, least pending; on a fake clock."""

    async def test_round_robin_order_is_exact_over_many_picks(self) -> None:
        """pick() takes the members in turn, and queries follow the same order."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 3)
            async with Pool(cluster.nodes, size=3, **OPTIONS) as pool:
                members = pool.members
                assert len(members) == 3
                assert [pool.pick() for _ in range(9)] == list(members) * 3
                served = [node_of(await pool.query("who")) for _ in range(6)]
                assert served == [0, 1, 2, 0, 1, 2]
                stats = pool.statistics()
                assert (stats.picks, stats.skips, stats.fallbacks) == (15, 0, 0)

    async def test_size_spreads_members_over_the_urls_in_turn(self) -> None:
        """size=4 over two servers gives two members each, alternating."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 2)
            async with Pool(cluster.nodes, size=4, **OPTIONS) as pool:
                served = [node_of(await pool.query("who")) for _ in range(8)]
                assert served == [0, 1] * 4
                assert [len(node.ends) for node in cluster.nodes] == [2, 2]
                assert [c.name for c in pool.members] == ["pool#0", "pool#1", "pool#2", "pool#3"]

    async def test_pick_skips_a_reconnecting_member_until_it_is_back(self) -> None:
        """A member that lost its connection is skipped (and counted) until it reopens."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 3)
            async with Pool(cluster.nodes, size=3, **OPTIONS) as pool:
                m0, m1, m2 = pool.members
                cluster.nodes[1].ends[-1].break_link()
                await wait_state(m1, C.RECONNECTING)
                lost_at = anyio.current_time()
                assert [pool.pick() for _ in range(4)] == [m0, m2, m0, m2]
                assert pool.statistics().skips == 2
                assert pool.statistics().healthy == 2
                await wait_state(m1, C.OPEN)
                assert anyio.current_time() == pytest.approx(lost_at + 1.0)  # the first backoff
                assert [pool.pick() for _ in range(3)] == [m0, m1, m2]
                assert pool.statistics().fallbacks == 0

    async def test_pick_skips_a_member_whose_heartbeat_is_late(self) -> None:
        """An OPEN member whose probe goes unanswered is skipped, then dropped after the timeout."""
        options = {**OPTIONS, "heartbeat": Heartbeat(interval=1.0, timeout=5.0)}
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 3)
            async with Pool(cluster.nodes, size=3, **options) as pool:
                m0, m1, m2 = pool.members
                start = anyio.current_time()
                await anyio.sleep(0.5)
                assert not m1.transport.heartbeat_late
                cluster.nodes[1].ends[-1].blackhole()  # a zombie: open, but silent
                await anyio.sleep(0.75)  # the probes went out at 1.0; m1's is not answered
                assert m1.state is C.OPEN
                assert m1.transport.heartbeat_late
                assert not m0.transport.heartbeat_late
                assert not m2.transport.heartbeat_late
                assert [pool.pick() for _ in range(4)] == [m0, m2, m0, m2]
                assert "pool#1 OPEN (heartbeat late)" in repr(pool)
                assert pool.statistics().healthy == 2
                await wait_state(m1, C.RECONNECTING)
                assert anyio.current_time() == pytest.approx(start + 1.0 + 5.0)

    async def test_none_open_falls_back_to_queueing_on_the_next_member(self) -> None:
        """With every member down, messages wait in the next members' queues and go on reconnect."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 2)
            async with Pool(cluster.nodes, size=2, **OPTIONS) as pool:
                m0, m1 = pool.members
                for node in cluster.nodes:
                    node.ends[-1].break_link()
                await wait_state(m0, C.RECONNECTING)
                await wait_state(m1, C.RECONNECTING)
                lost_at = anyio.current_time()
                assert await pool.send({"hello": "queued"})  # m0, the next in turn
                query = Outcome()
                group.start_soon(query.run, pool.query("who"))  # m1, the one after
                await until(lambda: m1.statistics().requests.pending == 1)
                stats = pool.statistics()
                assert (stats.picks, stats.fallbacks, stats.queue.messages) == (2, 2, 2)
                assert node_of((await query.wait()).result) == 1
                assert anyio.current_time() == pytest.approx(lost_at + 1.0)  # on the reconnect
                assert cluster.nodes[0].sent_on(2) == [{"hello": "queued"}]

    async def test_fallback_prefers_an_open_member_to_a_reconnecting_one(self) -> None:
        """When no member is healthy, an OPEN one with a late heartbeat goes before a down one."""
        options = {**OPTIONS, "heartbeat": Heartbeat(interval=1.0, timeout=5.0)}
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 2)
            cluster.nodes[0].refusing = True
            async with Pool(cluster.nodes, size=2, **options) as pool:
                m0, m1 = pool.members
                assert m0.state is C.RECONNECTING
                cluster.nodes[1].ends[-1].blackhole()
                await anyio.sleep(1.5)
                assert m1.transport.heartbeat_late
                assert [pool.pick() for _ in range(3)] == [m1, m1, m1]
                assert pool.statistics().fallbacks == 3

    async def test_least_pending_picks_the_member_with_fewest_pending_requests(self) -> None:
        """least_pending sends to the member with the fewest replies awaited; ties go in turn."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 3)
            for node in cluster.nodes:
                node.hold = True
            async with Pool(cluster.nodes, size=3, policy="least_pending", **OPTIONS) as pool:
                assert pool.policy == "least_pending"

                def pending() -> list[int]:
                    return [s.requests.pending for s in pool.statistics().members]

                outcomes = []
                for expected in ([1, 0, 0], [1, 1, 0], [1, 1, 1], [2, 1, 1]):
                    outcome = Outcome()
                    outcomes.append(outcome)
                    group.start_soon(outcome.run, pool.query("slow"))
                    await until(lambda expected=expected: pending() == expected)
                await cluster.nodes[2].answer_held()  # round robin would pick m1 next
                await until(lambda: pending() == [2, 1, 0])
                assert pool.pick() is pool.members[2]
                for node in cluster.nodes:
                    node.hold = False
                    await node.answer_held()
                served = sorted([node_of((await o.wait()).result) for o in outcomes])
                assert served == [0, 0, 1, 2]


class TestSubscriptions(FakeClock):
    """Pool subscriptions: pinned, moved after the grace period, deduplicated; on a fake clock."""

    async def test_subscription_moves_after_the_grace_period_without_duplicates(self) -> None:
        """At exactly grace seconds down, the subscription moves; replayed ids are dropped."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 2, ids=True, replay=3)
            node0, node1 = cluster.nodes
            async with Pool(cluster.nodes, size=2, subscription_grace=5.0, **OPTIONS) as pool:
                m0, m1 = pool.members
                cluster.watch_subscribe = lambda: [
                    c.statistics().channels.channels for c in (m0, m1)
                ]
                async with pool.subscribe("prices") as sub:
                    await sub.confirmed()
                    assert sub.member is m0
                    assert sub.state is S.SUBSCRIBED
                    for price in (1, 2, 3):
                        await cluster.publish("prices", price)
                    assert [await sub.receive() for _ in range(3)] == [1, 2, 3]

                    node0.refusing = True
                    node0.ends[-1].break_link()
                    await wait_state(m0, C.RECONNECTING)
                    lost_at = anyio.current_time()
                    await anyio.sleep(4.9)
                    assert sub.member is m0  # not before the grace period
                    assert sub.state is S.SUBSCRIBING
                    assert node1.subscribes == []
                    assert await cluster.publish("prices", 4) == 0  # no one holds it now

                    await sub.confirmed()
                    assert node1.subscribes == [(pytest.approx(lost_at + 5.0), "prices")]
                    assert sub.member is m1
                    # Make before break: m0 still held the channel when m1 subscribed.
                    assert cluster.on_subscribe == [[1, 0], [1, 1]]
                    await cluster.publish("prices", 5)
                    # m1's replay brought 2, 3 and 4: only 4 is new.
                    assert [await sub.receive() for _ in range(2)] == [4, 5]
                    assert sub.statistics().pending == 0
                    assert (sub.moves, sub.duplicates) == (1, 2)
                    stats = pool.statistics()
                    assert (stats.subscription_moves, stats.duplicates_suppressed) == (1, 2)
                    assert stats.subscriptions == 1

                    node0.refusing = False
                    await wait_state(m0, C.OPEN)
                    await m0.query("sync")  # the node has read all m0 sent before it
                    assert not [m for m in node0.sent_on(2) if m.get("action") == "subscribe"]
                    await cluster.publish("prices", 6)
                    assert await sub.receive() == 6
                    assert sub.statistics().pending == 0
                    assert m0.statistics().channels.channels == 0
                assert pool.statistics().subscriptions == 0
                assert sub.state is S.UNSUBSCRIBED

    async def test_subscription_without_ids_breaks_before_it_makes(self) -> None:
        """Without delivery ids the old member lets go before the new one subscribes: no repeats."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 2, ids=False)
            node0, node1 = cluster.nodes
            async with Pool(cluster.nodes, size=2, subscription_grace=2.0, **OPTIONS) as pool:
                m0, m1 = pool.members
                cluster.watch_subscribe = lambda: [
                    c.statistics().channels.channels for c in (m0, m1)
                ]
                async with pool.subscribe("news") as sub:
                    await sub.confirmed()
                    await cluster.publish("news", "a")
                    assert await sub.receive() == "a"
                    node0.refusing = True
                    node0.ends[-1].break_link()
                    await wait_state(m0, C.RECONNECTING)
                    lost_at = anyio.current_time()
                    await sub.confirmed()
                    assert node1.subscribes == [(pytest.approx(lost_at + 2.0), "news")]
                    assert cluster.on_subscribe == [[1, 0], [0, 1]]  # m0 had let go already
                    node0.refusing = False
                    await wait_state(m0, C.OPEN)
                    await m0.query("sync")
                    assert not [m for m in node0.sent_on(2) if m.get("action") == "subscribe"]
                    for item in ("b", "c"):
                        assert await cluster.publish("news", item) == 1
                    assert [await sub.receive() for _ in range(2)] == ["b", "c"]
                    assert sub.statistics().pending == 0
                    assert pool.statistics().duplicates_suppressed == 0
                    assert sub.moves == 1

    async def test_subscription_stays_when_its_member_is_back_within_grace(self) -> None:
        """A member that reconnects within the grace period keeps its subscription: no move."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 2)
            async with Pool(cluster.nodes, size=2, subscription_grace=5.0, **OPTIONS) as pool:
                m0, _ = pool.members
                async with pool.subscribe("news") as sub:
                    await sub.confirmed()
                    cluster.nodes[0].ends[-1].break_link()
                    await wait_state(m0, C.RECONNECTING)
                    await wait_state(m0, C.OPEN)  # one second later
                    await sub.confirmed()
                    await anyio.sleep(10)
                    assert sub.member is m0
                    assert sub.moves == 0
                    assert cluster.nodes[1].subscribes == []
                    assert len(cluster.nodes[0].subscribes) == 2  # the client resubscribed
                    await cluster.publish("news", 1)
                    assert await sub.receive() == 1

    async def test_subscription_moves_at_once_when_its_member_gives_up(self) -> None:
        """A member that gave up (CLOSED) is left at once, whatever the grace period."""
        options = {**OPTIONS, "backoff": Backoff(jitter="none", initial=1.0, max_attempts=1)}
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 2)
            node0, node1 = cluster.nodes
            async with Pool(cluster.nodes, size=2, subscription_grace=math.inf, **options) as pool:
                m0, m1 = pool.members
                async with pool.subscribe("news") as sub:
                    await sub.confirmed()
                    node0.refusing = True
                    node0.ends[-1].break_link()
                    await wait_state(m0, C.CLOSED)
                    closed_at = anyio.current_time()
                    await sub.confirmed()
                    assert sub.member is m1
                    assert node1.subscribes == [(pytest.approx(closed_at), "news")]
                    await cluster.publish("news", 1)
                    assert await sub.receive() == 1
                assert [pool.pick() for _ in range(2)] == [m1, m1]

    async def test_subscription_waits_for_a_member_when_none_is_open(self) -> None:
        """With every member down past the grace period, it goes to the first that opens."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 2)
            node0, node1 = cluster.nodes
            async with Pool(cluster.nodes, size=2, subscription_grace=1.5, **OPTIONS) as pool:
                m0, m1 = pool.members
                async with pool.subscribe("news") as sub:
                    await sub.confirmed()
                    node0.refusing = node1.refusing = True
                    node0.ends[-1].break_link()
                    node1.ends[-1].break_link()
                    await wait_state(m1, C.RECONNECTING)
                    await anyio.sleep(2)
                    assert sub.member is m0
                    node1.refusing = False  # m1's next attempt, 3 s after the loss, opens
                    await sub.confirmed()
                    assert sub.member is m1
                    await cluster.publish("news", 1)
                    assert await sub.receive() == 1

    async def test_duplicates_are_dropped_within_the_window_only(self) -> None:
        """A repeated id is dropped while among the last dedupe_window ids, then let through."""
        received: list[Any] = []
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 1)
            async with Pool(cluster.nodes, size=1, dedupe_window=2, **OPTIONS) as pool:
                sub = await pool.subscribe("ticks", callback=received.append)
                await sub.confirmed()
                end = cluster.nodes[0].ends[-1]
                for stamp in ("a", "a", "b", 7, 7, "a", "c", "a", "x" * 100, "x" * 100):
                    message = {"channel": "ticks", "data": stamp, "id": stamp}
                    await end.send(orjson.dumps(message).decode())
                await end.send(orjson.dumps({"channel": "ticks", "data": "no id"}).decode())
                await end.send(orjson.dumps({"channel": "ticks", "data": "no id"}).decode())
                await until(lambda: len(received) == 8)
                # "a" again after b and 7 is outside a window of two: delivered again.
                assert received == ["a", "b", 7, "a", "c", "x" * 100, "no id", "no id"]
                assert sub.duplicates == 4
                await sub.aclose()

    async def test_refused_subscription_fails_and_raises_the_servers_error(self) -> None:
        """A refused subscription ends FAILED; reading and confirming raise the RemoteError."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 1)
            async with Pool(cluster.nodes, size=1, **OPTIONS) as pool:
                sub = pool.subscribe("secret")
                refusal = Outcome()
                group.start_soon(refusal.run, sub.confirmed())
                await sub
                end = cluster.nodes[0].ends[-1]
                data = {"type": "error", "message": "not allowed", "channel": "secret"}
                await end.send(orjson.dumps({"channel": "system", "data": data}).decode())
                assert isinstance((await refusal.wait()).error, RemoteError)
                assert sub.state is S.FAILED
                with pytest.raises(RemoteError, match="not allowed"):
                    await sub.receive()
                assert pool.statistics().subscriptions == 0

    async def test_a_move_to_a_member_that_drops_is_given_up_at_once(self) -> None:
        """The new member dropping before it confirms ends that move; the next one gets it."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 3)
            node0, node1, node2 = cluster.nodes
            async with Pool(cluster.nodes, size=3, subscription_grace=1.5, **OPTIONS) as pool:
                m0, m1, m2 = pool.members
                async with pool.subscribe("news") as sub:
                    await sub.confirmed()
                    await cluster.publish("news", 1)
                    assert await sub.receive() == 1  # an id seen: moves make before they break
                    node1.drop_subscribes = True
                    node0.refusing = True
                    node0.ends[-1].break_link()
                    await wait_state(m0, C.RECONNECTING)
                    lost_at = anyio.current_time()
                    await sub.confirmed(timeout=BOUND)
                    assert node1.subscribes == [(pytest.approx(lost_at + 1.5), "news")]
                    # Tried again a second later (not request_timeout later), on m2.
                    assert node2.subscribes == [(pytest.approx(lost_at + 2.5), "news")]
                    assert sub.member is m2
                    await cluster.publish("news", 2)
                    assert await sub.receive() == 2
                    await until(lambda: m0.statistics().channels.channels == 0)
                    assert m1.statistics().channels.channels == 0
                    assert sub.moves == 1

    async def test_closing_a_subscription_during_a_move_leaves_no_member_subscribed(self) -> None:
        """aclose() while a move waits for the new member's confirmation lets go of both."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 2)
            node0, node1 = cluster.nodes
            async with Pool(cluster.nodes, size=2, subscription_grace=1.0, **OPTIONS) as pool:
                m0, m1 = pool.members
                sub = await pool.subscribe("news")
                await sub.confirmed()
                await cluster.publish("news", 1)
                assert await sub.receive() == 1
                node1.gate = anyio.Event()  # it reads one more message, then nothing
                await m1.send({"noop": 1})
                await until(lambda: len(node1.received) == 1)
                node0.refusing = True
                node0.ends[-1].break_link()
                await wait_state(m0, C.RECONNECTING)
                await until(lambda: sub.member is m1)
                await anyio.sleep(1)
                assert sub.state is S.SUBSCRIBING  # the move waits for a confirmation
                await sub.aclose()
                assert sub.state is S.UNSUBSCRIBED
                assert [c.statistics().channels.channels for c in pool.members] == [0, 0]
                node1.gate.set()
                await m1.query("sync")
                actions = [m["action"] for m in node1.sent_on(1) if "action" in m]
                assert actions == ["subscribe", "unsubscribe"]
                assert cluster.subscribers["news"] == []
                assert pool.statistics().subscriptions == 0

    async def test_closing_a_subscription_while_it_opens_leaves_nothing_behind(self) -> None:
        """aclose() while the subscribe is being written: it ends, and the pool forgets it."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 1)
            node = cluster.nodes[0]
            node.max_queue = 1
            async with Pool(cluster.nodes, size=1, **OPTIONS) as pool:
                (m0,) = pool.members
                node.gate = anyio.Event()  # it reads one more message, then nothing
                await pool.send({"fill": 1})
                await pool.send({"fill": 2})  # waits in the node's buffer, which is now full
                sub = pool.subscribe("news")
                opening = Outcome()
                group.start_soon(opening.run, sub.__aenter__())
                await until(lambda: sub.member is m0)
                await anyio.sleep(1)
                assert not opening.done.is_set()  # the subscribe waits for room
                await sub.aclose()
                node.gate.set()
                assert (await opening.wait()).error is None
                assert sub.state is S.UNSUBSCRIBED
                assert pool.statistics().subscriptions == 0
                assert "subscriptions=0" in repr(pool)
                await m0.query("sync")
                assert m0.statistics().channels.channels == 0

    async def test_the_pool_closing_while_a_subscription_opens_ends_it(self) -> None:
        """The pool closing while a subscribe is being written ends it UNSUBSCRIBED, as the rest."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 1)
            node = cluster.nodes[0]
            node.max_queue = 1
            async with Pool(cluster.nodes, size=1, **OPTIONS) as pool:
                node.gate = anyio.Event()
                await pool.send({"fill": 1})
                await pool.send({"fill": 2})
                sub = pool.subscribe("news")
                opening = Outcome()
                group.start_soon(opening.run, sub.__aenter__())
                await until(lambda: sub.member is not None)
                closing = Outcome()
                group.start_soon(closing.run, pool.aclose())
                assert (await opening.wait()).error is None
                node.gate.set()
                assert (await closing.wait()).error is None
            assert sub.state is S.UNSUBSCRIBED
            assert pool.statistics().subscriptions == 0

    async def test_delivery_ids_of_any_type_are_deduplicated(self) -> None:
        """A dialect's ids that are neither str nor int (a list) still drop repeats."""

        class ListIds(wsclient.DefaultDialect):
            def route(self, message: Any) -> wsclient.Inbound:
                inbound = super().route(message)
                if inbound.delivery_id is None:
                    return inbound
                return dataclasses.replace(inbound, delivery_id=[inbound.delivery_id, 0])

        received: list[Any] = []
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 1)
            async with Pool(cluster.nodes, size=1, dialect=ListIds(), **OPTIONS) as pool:
                sub = await pool.subscribe("ticks", callback=received.append)
                await sub.confirmed()
                end = cluster.nodes[0].ends[-1]
                for stamp in ("a", "a", "b", "x" * 100, "x" * 100):
                    message = {"channel": "ticks", "data": stamp, "id": stamp}
                    await end.send(orjson.dumps(message).decode())
                await until(lambda: len(received) == 3)
                assert received == ["a", "b", "x" * 100]
                assert sub.duplicates == 2
                assert pool.members[0].statistics().channels.callback_errors == 0
                await sub.aclose()


class TestLifeCycle(FakeClock):
    """Entering, closing, statistics, repr and bad arguments; on a fake clock."""

    async def test_statistics_totals_add_up(self) -> None:
        """The totals are the sums of the members' counters."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 2)
            async with Pool(cluster.nodes, size=3, **OPTIONS) as pool:
                for _ in range(5):
                    await pool.query("who")
                await pool.send({"hello": 1})
                await pool.publish("news", 1)
                await pool.publish_event("clicked", {"x": 1})
                stats = pool.statistics()
                assert isinstance(stats, PoolStatistics)
                assert len(stats.members) == 3
                assert stats.requests.sent == sum(m.requests.sent for m in stats.members) == 5
                assert stats.requests.replies == 5
                assert stats.queue.sent == sum(m.connection.queue.sent for m in stats.members)
                assert stats.messages_received == sum(
                    m.connection.messages_received for m in stats.members
                )
                assert stats.states[C.OPEN] == stats.healthy == 3
                assert stats.picks == 8
                assert [m.requests.sent for m in stats.members] == [2, 2, 1]

    async def test_repr_shows_member_states_and_no_secrets(self) -> None:
        """repr names each member and its state, with passwords and tokens masked."""
        pool = Pool(["ws://ada:s3cr3t@127.0.0.1:9/feed?token=t0k3n"], size=2)
        text = repr(pool)
        assert "s3cr3t" not in text
        assert "t0k3n" not in text
        assert "ws://***@127.0.0.1:9/feed?token=***#0 CONNECTING" in text
        assert "#1 CONNECTING" in text
        assert "new" in text
        await pool.aclose()
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 2)
            async with Pool(cluster.nodes, size=2, name="svc", **OPTIONS) as running:
                cluster.nodes[1].refusing = True
                cluster.nodes[1].ends[-1].break_link()
                await wait_state(running.members[1], C.RECONNECTING)
                assert "[svc#0 OPEN, svc#1 RECONNECTING]" in repr(running)
                async with running.subscribe("news") as sub:
                    assert "'news'" in repr(sub)
                    assert "svc#0" in repr(sub)
            assert "closed" in repr(running)

    async def test_invalid_arguments_raise_clear_errors(self) -> None:
        """Every bad argument is refused with an error naming it, before anything starts."""
        url = "ws://127.0.0.1:9/"
        for size in (0, -1, True, 2.0, "2"):
            with pytest.raises(ValueError, match="size"):
                Pool(url, size=size)
        with pytest.raises(ValueError, match="size=1 is less than the 2 URLs"):
            Pool([url, url], size=1)
        with pytest.raises(ValueError, match="urls is empty"):
            Pool([], size=1)
        with pytest.raises(TypeError, match="urls must be"):
            Pool(42, size=1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="each of urls"):
            Pool([url, 42], size=2)  # type: ignore[list-item]
        with pytest.raises(ValueError, match="policy"):
            Pool(url, size=1, policy="random")  # type: ignore[arg-type]
        for grace in (-1, math.nan, "5", True):
            with pytest.raises(ValueError, match="subscription_grace"):
                Pool(url, size=1, subscription_grace=grace)
        for window in (0, 1.5, None):
            with pytest.raises(ValueError, match="dedupe_window"):
                Pool(url, size=1, dedupe_window=window)
        with pytest.raises(TypeError, match="retry_first_connect"):
            Pool(url, size=1, retry_first_connect="yes")
        with pytest.raises(TypeError, match="bogus"):
            Pool(url, size=1, bogus=1)
        with pytest.raises(ValueError, match="request_timeout"):
            Pool(url, size=1, request_timeout=0)
        for buffer in (None, 16):
            with pytest.raises(TypeError, match="subscriber_buffer"):
                Pool(url, size=1, subscriber_buffer=buffer)
        with pytest.raises(wsclient.InvalidURL):
            Pool("http://127.0.0.1:9/", size=1)
        pool = Pool(url, size=1)
        with pytest.raises(ValueError, match="channel"):
            pool.subscribe("")
        with pytest.raises(TypeError, match="callback"):
            pool.subscribe("news", callback=42)  # type: ignore[arg-type]
        with pytest.raises(InvalidState, match="not open yet"):
            await pool.subscribe("news")
        with pytest.raises(InvalidState, match="not open yet"):
            await pool.send("hello")
        with pytest.raises(ValueError, match="close code"):
            await pool.aclose(1005)
        await pool.aclose()
        await pool.aclose()  # idempotent, never entered
        with pytest.raises(InvalidState, match="closed"):
            await pool.query("x")
        with pytest.raises(InvalidState, match="only once"):
            await pool.__aenter__()

    async def test_aclose_closes_every_member_and_settles_every_request(self) -> None:
        """Leaving the pool closes all members; requests in flight fail, subscriptions end."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 2)
            for node in cluster.nodes:
                node.hold = True
            outcomes = [Outcome() for _ in range(4)]
            async with Pool(cluster.nodes, size=2, **OPTIONS) as pool:
                sub = await pool.subscribe("news")
                for outcome in outcomes:
                    group.start_soon(outcome.run, pool.query("slow"))
                await until(lambda: pool.statistics().requests.pending == 4)
                closed_at = anyio.current_time()
            for outcome in outcomes:
                assert isinstance((await outcome.wait()).error, ConnectionLost)
            assert anyio.current_time() == pytest.approx(closed_at)
            assert [c.state for c in pool.members] == [C.CLOSED, C.CLOSED]
            assert sub.state is S.UNSUBSCRIBED
            with pytest.raises(InvalidState):
                await sub.receive()
            with pytest.raises(InvalidState, match="closed"):
                await pool.send("late")
            await pool.aclose()  # idempotent
            with pytest.raises(InvalidState, match="only once"):
                await pool.__aenter__()

    async def test_a_member_failing_to_close_neither_hangs_nor_stops_the_others(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A member whose close raises is logged; the others close cleanly; leaving returns."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 2)
            cluster.nodes[0].transport = CloseFails
            with anyio.fail_after(BOUND):
                async with Pool(cluster.nodes, size=2, **OPTIONS) as pool:
                    await pool.query("who")
            assert repr(pool).startswith("<Pool round_robin closed ")
            assert [c.state for c in pool.members] == [C.CLOSED, C.CLOSED]
            assert cluster.nodes[1].ends[-1].close_code == 1000
            assert "pool#0: closing failed" in caplog.text

    async def test_pool_opens_if_one_member_does_and_the_others_follow(self) -> None:
        """A member that cannot connect at first keeps trying; the pool runs on the others."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 2)
            cluster.nodes[1].refusing = True
            async with Pool(cluster.nodes, size=2, **OPTIONS) as pool:
                m0, m1 = pool.members
                assert (m0.state, m1.state) == (C.OPEN, C.RECONNECTING)
                assert [pool.pick() for _ in range(2)] == [m0, m0]
                cluster.nodes[1].refusing = False
                await wait_state(m1, C.OPEN)
                assert anyio.current_time() == pytest.approx(1.0)
                assert [pool.pick() for _ in range(2)] == [m1, m0]

    async def test_pool_raises_the_first_error_when_no_member_connects(self) -> None:
        """Without retry_first_connect, a pool none of whose members connects raises and closes."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 2)
            for node in cluster.nodes:
                node.refusing = True
            pool = Pool(cluster.nodes, size=2, **OPTIONS)
            with pytest.raises(ConnectError, match="node 0 refused"):
                async with pool:
                    pytest.fail("the pool opened")
            assert anyio.current_time() == 0
            assert [c.state for c in pool.members] == [C.CLOSED, C.CLOSED]

    async def test_retry_first_connect_waits_for_the_first_member(self) -> None:
        """With retry_first_connect, entering waits until a member opens."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 2)
            for node in cluster.nodes:
                node.refusing = True

            async def allow_later() -> None:
                await anyio.sleep(2.5)
                cluster.nodes[1].refusing = False

            group.start_soon(allow_later)
            async with Pool(cluster.nodes, size=2, retry_first_connect=True, **OPTIONS) as pool:
                assert anyio.current_time() == pytest.approx(3.0)  # attempts at 0, 1, 3
                assert pool.pick() is pool.members[1]

    async def test_pool_raises_when_every_member_gives_up(self) -> None:
        """With retry_first_connect, a pool whose members all give up raises their error."""
        options = {**OPTIONS, "backoff": Backoff(jitter="none", initial=1.0, max_attempts=2)}
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 2)
            for node in cluster.nodes:
                node.refusing = True
            with pytest.raises(ConnectError, match="node 0 refused"):
                async with Pool(cluster.nodes, size=2, retry_first_connect=True, **options):
                    pytest.fail("the pool opened")
            fatal = Pool(cluster.nodes, size=2, retry_first_connect=True, reconnect=False)
            with pytest.raises(ConnectError):
                async with fatal:
                    pytest.fail("the pool opened")

    async def test_subscriber_buffer_policy_applies_to_pool_subscriptions(self) -> None:
        """A pool subscription's buffer follows subscriber_buffer, or its own buffer=."""
        async with anyio.create_task_group() as group:
            cluster = Cluster(group, 1)
            options = {**OPTIONS, "subscriber_buffer": BufferPolicy(max_messages=2)}
            failing = BufferPolicy(max_messages=1, overflow="fail")
            async with (
                Pool(cluster.nodes, size=1, **options) as pool,
                pool.subscribe("a") as a,
                pool.subscribe("b", buffer=failing) as b,
            ):
                await a.confirmed()
                await b.confirmed()
                for n in range(3):
                    await cluster.publish("a", n)
                    await cluster.publish("b", n)
                await until(lambda: b.state is S.FAILED)
                assert [await a.receive() for _ in range(2)] == [1, 2]
                assert a.statistics().dropped == 1
                assert await b.receive() == 0
                with pytest.raises(wsclient.QueueFull):
                    await b.receive()
                await until(lambda: pool.members[0].statistics().channels.channels == 1)


def test_default_dialect_reads_a_deliverys_id() -> None:
    """A delivery's "id" is its delivery_id when it is a str or an int; else there is none."""
    dialect = wsclient.DefaultDialect()
    for stamp, expected in [("m1", "m1"), (7, 7), (True, None), (1.5, None), ([1], None)]:
        inbound = dialect.route({"channel": "news", "data": 1, "id": stamp})
        assert inbound.route is wsclient.Route.DELIVERY
        assert inbound.delivery_id == expected
    assert dialect.route({"channel": "news", "data": 1}).delivery_id is None
    notice = {"channel": "system", "data": {"type": "notice"}, "id": "s1"}
    assert dialect.route(notice).delivery_id is None
    rpc = wsclient.JsonRpcDialect()
    params = {"channel": "news", "data": 1, "id": "m1"}
    inbound = rpc.route({"jsonrpc": "2.0", "method": rpc.delivery_method, "params": params})
    assert inbound.route is wsclient.Route.DELIVERY
    assert inbound.delivery_id is None  # JSON-RPC deliveries carry no id: break before make


# Against the reference Hub, on real sockets


def whoami_hub() -> Hub:
    hub = Hub()

    @hub.on_query("whoami")
    async def whoami(parameters: Any, ctx: RequestContext) -> str:
        return ctx.connection_id

    return hub


async def test_hub_requests_spread_over_every_connection(anyio_backend: Any) -> None:
    """A pool of four spreads forty queries over four Hub connections, ten each."""
    async with whoami_hub().serve() as server:
        async with Pool(server.url, size=4) as pool:
            served: Counter[str] = Counter()

            async def ask() -> None:
                served[await pool.query("whoami")] += 1

            with anyio.fail_after(10):
                async with anyio.create_task_group() as group:
                    for _ in range(40):
                        group.start_soon(ask)
            assert sorted(served.values()) == [10, 10, 10, 10]
            stats = server.statistics()
            assert (stats.connections_open, stats.connections_total) == (4, 4)
            assert pool.statistics().requests.replies == 40
        with anyio.fail_after(10):
            while server.statistics().connections_open:
                await anyio.sleep(0.01)


async def test_hub_subscription_continues_when_its_connection_is_killed(
    anyio_backend: Any,
) -> None:
    """A member's connection cut and refused: its subscription moves on and nothing repeats."""
    backoff = Backoff(initial=0.05, maximum=0.2)
    async with (
        whoami_hub().serve() as server,
        FaultProxy(("127.0.0.1", server.port)) as proxy,
        Pool([proxy.url(), server.url], size=2, subscription_grace=0.1, backoff=backoff) as pool,
    ):
        m0, m1 = pool.members
        with anyio.fail_after(10):
            async with pool.subscribe("news") as sub:
                await sub.confirmed()
                assert sub.member is m0
                await server.publish("news", 1)
                assert await sub.receive() == 1

                await proxy.refuse()
                proxy.cut()
                await m0.wait_state(C.RECONNECTING)
                await sub.confirmed()
                assert sub.member is m1
                assert await server.publish("news", 2) == 1
                assert await sub.receive() == 2

                await proxy.accept()
                await m0.wait_state(C.OPEN)
                await m0.query("echo")  # the Hub has read what m0 sent on connecting
                assert server.statistics().subscriptions == 1
                assert await server.publish("news", 3) == 1
                assert await sub.receive() == 3
                assert sub.statistics().pending == 0
                assert pool.statistics().subscription_moves == 1
