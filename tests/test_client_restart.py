"""The Client across a Hub restart, on real sockets: Client -> FaultProxy -> Hub.

The Hub runs in a thread and is killed mid-stream; another takes its place
behind the same proxy. Every wait is bounded; timing is real but small.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest

import wsclient
from wsclient import Backoff, ConnectionLost, ConnectionState, InFlight
from wsclient.server import Hub, HubServer, RequestContext
from wsclient.testing import FaultProxy

pytestmark = pytest.mark.anyio

C = ConnectionState
FAST = Backoff(jitter="none", initial=0.02, maximum=0.1, min_uptime=0.0)
BOUND = 10.0


class Journal:
    """A Hub that records, in order, what reached it: auth, events, and slow queries."""

    def __init__(self) -> None:
        self.hub = Hub(ping_interval=None)
        self.entries: list[tuple[str, Any]] = []
        self.release = threading.Event()  # lets "slow" queries answer
        self._lock = threading.Lock()

        @self.hub.on_auth
        async def auth(credentials: Any, ctx: RequestContext) -> Any:
            self._add("auth", credentials)
            return {"authenticated": True}

        @self.hub.on_event("seq")
        async def seq(data: Any, ctx: RequestContext) -> None:
            self._add("seq", data)

        @self.hub.on_query("slow")
        async def slow(parameters: Any, ctx: RequestContext) -> Any:
            self._add("slow", parameters)
            deadline = time.monotonic() + BOUND
            while not self.release.is_set() and time.monotonic() < deadline:
                await anyio.sleep(0.005)
            return {"answered": parameters}

    def _add(self, kind: str, value: Any) -> None:
        with self._lock:
            self.entries.append((kind, value))

    def of(self, kind: str) -> list[Any]:
        with self._lock:
            return [value for k, value in self.entries if k == kind]

    async def wait_for(self, kind: str, count: int) -> list[Any]:
        with anyio.fail_after(BOUND):
            while len(self.of(kind)) < count:
                await anyio.sleep(0.005)
        return self.of(kind)


class FirstHub:
    """The first Hub's life, behind a proxy that outlives it."""

    def __init__(self, life: AsyncExitStack, server: HubServer) -> None:
        self.life = life
        self.server = server

    async def kill(self, client: wsclient.Client) -> None:
        """Kill the Hub mid-stream (no closing handshake); wait until the client noticed."""
        await self.server.abort_connections()
        await self.life.aclose()
        with anyio.fail_after(BOUND):
            await client.wait_state(C.RECONNECTING)


@asynccontextmanager
async def restartable(journal: Journal) -> AsyncIterator[tuple[FirstHub, FaultProxy]]:
    life = AsyncExitStack()
    server = await life.enter_async_context(journal.hub.serve("127.0.0.1", 0, in_thread=True))
    try:
        async with FaultProxy(("127.0.0.1", server.port)) as proxy:
            yield FirstHub(life, server), proxy
    finally:
        journal.release.set()
        await life.aclose()


def connect(proxy: FaultProxy, **options: Any) -> wsclient.Client:
    options.setdefault("backoff", FAST)
    options.setdefault("heartbeat", None)
    return wsclient.connect(proxy.url(), compression=None, open_timeout=1.0, **options)


async def test_after_a_restart_auth_then_subscriptions_then_queue_and_deliveries_resume() -> None:
    """After a kill, the next Hub gets auth first, then every channel, then the queue."""
    journal = Journal()
    async with restartable(journal) as (first, proxy), connect(proxy) as client:
        inbound: list[Any] = []
        client.on_message(inbound.append)
        assert await client.authenticate({"user": "ada"}) == {"authenticated": True}
        prices = await client.subscribe("prices")
        news = await client.subscribe("news")
        await prices.confirmed()
        await news.confirmed()
        await client.publish("prices", 0)
        with anyio.fail_after(BOUND):
            assert await prices.receive() == 0

        await first.kill(client)
        for n in range(5):
            await client.publish_event("seq", n)
            await client.publish("prices", n + 1)
        assert client.statistics().connection.queue.messages == 10
        inbound.clear()
        async with journal.hub.serve("127.0.0.1", 0, in_thread=True) as second:
            proxy.upstream = ("127.0.0.1", second.port)
            with anyio.fail_after(BOUND):
                await client.wait_state(C.OPEN)
            assert await journal.wait_for("seq", 5) == [0, 1, 2, 3, 4]
            with anyio.fail_after(BOUND):
                assert [await prices.receive() for _ in range(5)] == [1, 2, 3, 4, 5]
            await news.confirmed()
            # The order the new Hub answered in is the order it received in.
            first_three = inbound[:3]
            assert first_three[0]["type"] == "response"
            assert first_three[0]["payload"] == {"authenticated": True}
            assert [m["data"] for m in first_three[1:]] == [
                {"type": "subscription_confirm", "channel": "prices"},
                {"type": "subscription_confirm", "channel": "news"},
            ]
            assert [m["data"] for m in inbound[3:8]] == [1, 2, 3, 4, 5]
            assert journal.of("auth") == [{"user": "ada"}, {"user": "ada"}]
            stats = client.statistics()
            assert stats.connection.reconnects == 1
            assert stats.channels.resubscribes == 2
            assert stats.connection.queue.sent == 10
            await prices.aclose()
            await news.aclose()
            await client.aclose()


@pytest.mark.parametrize("policy", ["fail", "resend"])
async def test_request_pending_during_the_kill(policy: InFlight) -> None:
    """A request in flight when the Hub dies: fails at once ("fail"), or succeeds ("resend")."""
    journal = Journal()
    async with restartable(journal) as (first, proxy), connect(proxy, in_flight=policy) as client:
        outcome: dict[str, Any] = {}

        async def ask() -> None:
            try:
                outcome["result"] = await client.query("slow", 7)
            except Exception as exc:
                outcome["error"] = exc
            outcome["at"] = anyio.current_time()

        async with anyio.create_task_group() as group:
            group.start_soon(ask)
            await journal.wait_for("slow", 1)
            killed_at = anyio.current_time()
            await first.kill(client)
            if policy == "fail":
                with anyio.fail_after(BOUND):
                    while "at" not in outcome:
                        await anyio.sleep(0.005)
                assert isinstance(outcome["error"], ConnectionLost)
                assert outcome["at"] - killed_at < 2.0  # at once, not after request_timeout
                assert client.statistics().requests.lost == 1
            else:
                assert "at" not in outcome
                journal.release.set()
                async with journal.hub.serve("127.0.0.1", 0, in_thread=True) as second:
                    proxy.upstream = ("127.0.0.1", second.port)
                    with anyio.fail_after(BOUND):
                        while "at" not in outcome:
                            await anyio.sleep(0.005)
                    assert outcome == {"result": {"answered": 7}, "at": outcome["at"]}
                    assert journal.of("slow") == [7, 7]
                    assert client.statistics().requests.resent == 1
                    await client.aclose()
