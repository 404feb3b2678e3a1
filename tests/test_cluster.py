"""Three Hub processes sharing channels through a real Redis, behind a real nginx.

The deployment of seeds/004: ``wsclient serve --redis`` three times, Redis
pub/sub between them, and nginx in front with ``hash $remote_addr
consistent`` and the WebSocket upgrade headers (tests/nginx_server.py). The
clients are a :class:`wsclient.Pool` through nginx and plain clients on each
node. Publishes on one node reach subscribers on every node; a node killed
with SIGKILL sends its clients back through nginx to the survivors, where
they subscribe again and deliveries go on.

Redis and nginx come from Debian's packages (scripts/ensure-redis,
scripts/ensure-nginx); the tests skip loudly without them. Each test builds
its own cluster, so killing a node never leaks into another test. Every wait
is bounded; conditions are polled, nothing sleeps to let something happen.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

import wsclient
from wsclient import Backoff, ConnectionState, Heartbeat

from .hub_process import HubProcess
from .nginx_server import Nginx, running_nginx
from .redis_server import RedisProcess, start_redis

pytestmark = pytest.mark.anyio

NODES = 3
BOUND = 20.0  # seconds any one step may take: reconnects through nginx take well under one
# Quick to notice a dead node and to come back: the defaults suit the internet, not a test.
FAST = {
    "backoff": Backoff(initial=0.05, maximum=0.25),
    "heartbeat": Heartbeat(interval=1.0, timeout=1.0),
}


@dataclass
class Cluster:
    redis: RedisProcess
    nodes: list[HubProcess]
    nginx: Nginx

    def node_on(self, port: int) -> HubProcess:
        return next(node for node in self.nodes if node.port == port)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with ExitStack() as stack:
        redis = stack.enter_context(start_redis())
        nodes: list[HubProcess] = []
        for _ in range(NODES):
            node = HubProcess(["--redis", redis.url])
            stack.callback(node.stop)
            nodes.append(node)
        for node in nodes:
            node.wait_listening()
        nginx = stack.enter_context(running_nginx([node.port for node in nodes]))
        yield Cluster(redis, nodes, nginx)


def established_to(port: int) -> int:
    """Established TCP connections whose server end is 127.0.0.1:``port`` (Linux /proc)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    with anyio.fail_after(BOUND):
        while not condition():
            await anyio.sleep(0.01)  # polling counters and /proc: there is no event to wait on
    assert condition(), what


async def receive_until(sub: Any, sentinel: Any) -> list[Any]:
    """Everything ``sub`` receives up to and including ``sentinel``."""
    got = []
    with anyio.fail_after(BOUND):
        while True:
            item = await sub.receive()
            got.append(item)
            if item == sentinel:
                return got


async def receive_all(sub: Any, sentinels: set[str]) -> list[Any]:
    """Everything ``sub`` receives until it has seen every one of ``sentinels``."""
    got = []
    left = set(sentinels)
    with anyio.fail_after(BOUND):
        while left:
            item = await sub.receive()
            got.append(item)
            if isinstance(item, str):
                left.discard(item)
    return got


async def test_publish_on_one_node_reaches_subscribers_on_every_node(cluster: Cluster) -> None:
    """A publish on any node reaches every subscriber, on every node and through nginx, once."""
    async with (
        wsclient.connect(cluster.nodes[0].url) as first,
        wsclient.connect(cluster.nodes[1].url) as second,
        wsclient.connect(cluster.nodes[2].url) as third,
        wsclient.Pool(cluster.nginx.url, size=3) as pool,
        first.subscribe("news") as on_first,
        second.subscribe("news") as on_second,
        third.subscribe("news") as on_third,
        pool.subscribe("news") as on_pool,
    ):
        subscriptions = [on_first, on_second, on_third, on_pool]
        for sub in subscriptions:
            await sub.confirmed(timeout=BOUND)
        # nginx hashes the client's address: the pool's three members share one node.
        assert sorted(established_to(node.port) for node in cluster.nodes) == [1, 1, 4]

        # Each publisher's messages stay in order; across nodes there is no order,
        # so every publisher ends with its own sentinel.
        publishers = {"second": second, "pool": pool, "third": third}
        for n, (name, publisher) in enumerate(publishers.items(), 1):
            await publisher.publish("news", {"n": n})
            await publisher.publish("news", f"end-{name}")

        for sub in subscriptions:
            got = await receive_all(sub, {f"end-{name}" for name in publishers})
            assert sorted(item["n"] for item in got if isinstance(item, dict)) == [1, 2, 3], got


async def test_killed_node_sends_its_clients_to_the_survivors(cluster: Cluster) -> None:
    """SIGKILL on the node behind nginx: the pool reconnects, resubscribes, deliveries go on."""
    async with wsclient.Pool(cluster.nginx.url, size=4, **FAST) as pool:
        victim = next(node for node in cluster.nodes if established_to(node.port) == 4)
        survivor = next(node for node in cluster.nodes if node is not victim)
        async with (
            wsclient.connect(survivor.url) as publisher,
            pool.subscribe("ticks") as ticks,
        ):
            await ticks.confirmed(timeout=BOUND)
            for n in range(5):
                await publisher.publish("ticks", n)
            await publisher.publish("ticks", "before")
            assert await receive_until(ticks, "before") == [0, 1, 2, 3, 4, "before"]

            victim.kill()
            await wait_until(
                lambda: (
                    all(member.state is ConnectionState.OPEN for member in pool.members)
                    and sum(established_to(node.port) for node in cluster.nodes if node.alive())
                    == 5
                ),
                "every member reconnected through nginx to a surviving node",
            )
            # Redis confirms the node's subscription a moment after the client is
            # back: probe until a delivery comes through, then count exactly.
            probes = itertools.count()
            with anyio.fail_after(BOUND):
                while True:
                    await publisher.publish("ticks", f"probe-{next(probes)}")
                    with anyio.move_on_after(0.2):
                        if str(await ticks.receive()).startswith("probe-"):
                            break
            for n in range(5, 10):
                await publisher.publish("ticks", n)
            await publisher.publish("ticks", "after")
            got = [item for item in await receive_until(ticks, "after") if isinstance(item, int)]
            assert got == [5, 6, 7, 8, 9]

            assert await pool.query("echo", "still served") == "still served"
            assert pool.statistics().reconnects >= 4


async def test_subscription_moves_off_a_dead_node_without_duplicates(cluster: Cluster) -> None:
    """A pool over the three nodes moves a subscription off a killed node; no message twice."""
    urls = [node.url for node in cluster.nodes]
    # Reconnecting is kept slow so that the grace period, not the member's own
    # reconnect, decides: the subscription must move.
    slow = {"backoff": Backoff(initial=5.0, maximum=5.0, jitter="none")}
    async with (
        wsclient.Pool(urls, size=3, subscription_grace=0.3, **slow) as pool,
        pool.subscribe("moves") as moves,
    ):
        await moves.confirmed(timeout=BOUND)
        pinned = pool.members.index(moves.member)
        victim = cluster.nodes[pinned % NODES]
        publisher_node = next(node for node in cluster.nodes if node is not victim)
        async with wsclient.connect(publisher_node.url) as publisher:
            await publisher.publish("moves", 0)
            assert await receive_until(moves, 0) == [0]

            victim.kill()
            await wait_until(lambda: moves.moves == 1, "the subscription moved")
            assert moves.member is not pool.members[pinned]
            await moves.confirmed(timeout=BOUND)
            for n in range(1, 6):
                await publisher.publish("moves", n)
            await publisher.publish("moves", "end")
            got = await receive_until(moves, "end")
            assert got == [1, 2, 3, 4, 5, "end"]
            assert moves.duplicates == 0
