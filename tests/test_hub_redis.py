"""The Hub's Redis backplane, against a real ``redis-server``, on asyncio and on trio.

Several Hubs on one Redis act as one server: a publish on any reaches the
subscribers of all, once each, with the same delivery id. The Hub holds one
Redis subscription per channel (a reference count over its clients),
confirms a client's subscription only once Redis has, and survives Redis
going away. A :class:`~wsclient.testing.FaultProxy` between a Hub and Redis
holds Redis' replies back, which makes the in-flight races deterministic.

The clients are wsclient transports (raw frames), on the test's backend; the
Hubs run on the test's loop (asyncio) or on a loop thread (trio). Redis is
inspected with redis-py's sync client in a worker thread. Every wait is
bounded; conditions are polled, nothing sleeps to let something happen.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import orjson
import pytest
import redis

from tests.redis_server import RedisProcess, start_redis
from wsclient import Backoff, Transport, connect_transport
from wsclient._cli import main
from wsclient.server import BackplaneError, BackplaneStatistics, Hub, HubServer, _backplane
from wsclient.testing import FaultProxy

pytestmark = pytest.mark.anyio

BOUND = 5.0  # the longest any single step may take; they take milliseconds
QUIET = 0.3  # how long "nothing arrives" is watched for
FAST_BACKOFF = Backoff(initial=0.05, maximum=0.2, jitter="none", min_uptime=0.0)
PASSWORD = "hunter2-redis-secret"


def key(channel: str) -> bytes:
    return b"wsclient:" + channel.encode()


def confirm(channel: str) -> dict[str, Any]:
    return {"channel": "system", "data": {"type": "subscription_confirm", "channel": channel}}


class Peer:
    """A client speaking raw frames of the default dialect to a Hub."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def send(self, message: Any) -> None:
        await self.transport.send(orjson.dumps(message).decode())

    async def recv(self) -> Any:
        with anyio.fail_after(BOUND):
            return orjson.loads(await self.transport.receive())

    async def subscribe(self, channel: str) -> None:
        await self.send({"action": "subscribe", "channel": channel})
        assert await self.recv() == confirm(channel)

    async def publish(self, channel: str, data: Any) -> None:
        await self.send({"action": "publish", "channel": channel, "data": data})

    async def sync(self) -> None:
        """Round-trip a ping: the Hub has handled everything sent before, and
        nothing was queued for this client ahead of the pong."""
        await self.send({"type": "ping"})
        assert await self.recv() == {"type": "pong"}

    async def quiet(self) -> None:
        """Assert that nothing arrives for a while."""
        with anyio.move_on_after(QUIET):
            message = await self.transport.receive()
            pytest.fail(f"unexpected message: {message!r}")


@asynccontextmanager
async def peer(server: HubServer) -> AsyncIterator[Peer]:
    async with await connect_transport(server.url) as transport:
        yield Peer(transport)


def hub(url: str, **options: Any) -> Hub:
    options.setdefault("redis_backoff", FAST_BACKOFF)
    return Hub(redis_url=url, ping_interval=None, **options)


async def numsub(redis_process: RedisProcess, channel: str) -> int:
    """How many Redis connections are subscribed to ``channel`` (PUBSUB NUMSUB)."""

    def ask() -> int:
        client = redis.Redis.from_url(redis_process.url, socket_timeout=BOUND)
        try:
            [(_, count)] = client.pubsub_numsub(key(channel))
            return int(count)
        finally:
            client.close()

    return await anyio.to_thread.run_sync(ask)


async def redis_publish(redis_process: RedisProcess, channel: bytes, payload: bytes) -> int:
    def publish() -> int:
        client = redis.Redis.from_url(redis_process.url, socket_timeout=BOUND)
        try:
            return int(client.publish(channel, payload))
        finally:
            client.close()

    return await anyio.to_thread.run_sync(publish)


async def eventually(condition: Callable[[], Any], what: str) -> None:
    """Poll ``condition`` (a function, or a coroutine function) until true, within BOUND."""
    with anyio.move_on_after(BOUND):
        while True:
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.01)
    pytest.fail(f"not within {BOUND} s: {what}")


def numsub_is(redis_process: RedisProcess, channel: str, expected: int) -> Callable[[], Any]:
    async def check() -> bool:
        return await numsub(redis_process, channel) == expected

    return check


def backplane(server: HubServer) -> BackplaneStatistics:
    stats = server.statistics().backplane
    assert stats is not None
    return stats


# Fan-out across Hubs


async def test_publish_reaches_every_hub_once_with_one_id(redis_server: RedisProcess) -> None:
    """A publish on one Hub reaches the subscribers of both, once each, with the same id."""
    first, second = hub(redis_server.url), hub(redis_server.url)
    async with (
        first.serve() as a,
        second.serve() as b,
        peer(a) as on_a,
        peer(b) as on_b,
        peer(a) as publisher,
    ):
        for client in (on_a, on_b, publisher):
            await client.subscribe("fan")
        # Subscribed then publishing: the publisher gets its own message back, through Redis.
        await publisher.publish("fan", {"n": 1})
        received = [await client.recv() for client in (on_a, on_b, publisher)]
        stamp = received[0]["id"]
        assert received == [{"channel": "fan", "data": {"n": 1}, "id": stamp}] * 3
        assert stamp.startswith(f"{first.node_id}-")
        for client in (on_a, on_b, publisher):
            await client.sync()  # exactly once: no second copy before the pong

        # From the server side of the other Hub: Redis counts the Hubs subscribed.
        assert await b.publish("fan", "from b") == 2
        again = [await client.recv() for client in (on_a, on_b, publisher)]
        assert {message["id"] for message in again} == {again[0]["id"]}
        assert again[0]["id"].startswith(f"{second.node_id}-")
        assert again[0]["id"] != stamp
        assert first.node_id != second.node_id

        stats = backplane(a)
        assert stats.connected
        assert stats.channels == 1
        assert stats.pending == 0
        assert stats.published == 1
        assert stats.received == 2
        assert a.statistics().deliveries == 4  # two messages, two local subscribers


async def test_ids_are_unique_per_publish_without_redis() -> None:
    """Without Redis too, every delivery carries a fresh '<node>-<n>' id."""
    local = Hub(ping_interval=None)
    async with local.serve() as server, peer(server) as client:
        assert server.statistics().backplane is None
        await client.subscribe("ids")
        for n in range(3):
            await client.publish("ids", n)
        messages = [await client.recv() for _ in range(3)]
        assert await server.publish("ids", 3) == 1
        messages.append(await client.recv())
        assert [message["data"] for message in messages] == [0, 1, 2, 3]
        ids = [message["id"] for message in messages]
        assert len(set(ids)) == 4
        assert all(stamp.startswith(f"{local.node_id}-") for stamp in ids)
        assert len(local.node_id) == 8
        assert int(local.node_id, 16) >= 0


async def test_unix_socket_url(redis_server: RedisProcess) -> None:
    """A unix:// Redis URL works like a redis:// one."""
    async with hub(redis_server.unix_url).serve() as server, peer(server) as client:
        await client.subscribe("unix")
        await client.publish("unix", "via the socket")
        assert (await client.recv())["data"] == "via the socket"


async def test_foreign_messages_on_redis_are_dropped(redis_server: RedisProcess) -> None:
    """What another Redis user publishes on the Hub's channel names never reaches clients."""
    async with hub(redis_server.url).serve() as server, peer(server) as client:
        await client.subscribe("foreign")
        for payload in (b"not json", b'{"channel":"foreign","data":1}', b"\xff\xfe"):
            assert await redis_publish(redis_server, key("foreign"), payload) == 1
        await client.publish("foreign", "ours")
        assert (await client.recv())["data"] == "ours"  # the only delivery
        assert backplane(server).dropped == 3


# One Redis subscription per channel


async def test_one_redis_subscription_per_channel(redis_server: RedisProcess) -> None:
    """Three clients of one Hub share one Redis subscription, dropped with the last of them."""
    async with hub(redis_server.url).serve() as server:
        async with peer(server) as one, peer(server) as two, peer(server) as three:
            for client in (one, two, three):
                await client.subscribe("shared")
            assert await numsub(redis_server, "shared") == 1
            assert backplane(server).channels == 1

            await one.send({"action": "unsubscribe", "channel": "shared"})
            await two.send({"action": "unsubscribe", "channel": "shared"})
            await one.sync()
            await two.sync()
            assert await numsub(redis_server, "shared") == 1
            assert server.statistics().subscriptions == 1

            await three.send({"action": "unsubscribe", "channel": "shared"})
            await three.sync()
            await eventually(
                numsub_is(redis_server, "shared", 0), "the last unsubscribe left Redis"
            )
            assert backplane(server).channels == 0

            # Again, and this time the last subscriber disconnects instead.
            await one.subscribe("shared")
            assert await numsub(redis_server, "shared") == 1
        await eventually(numsub_is(redis_server, "shared", 0), "a disconnect left Redis")
        assert server.statistics().subscriptions == 0


# Confirmation after Redis, and the races while commands are in flight


@asynccontextmanager
async def proxied(redis_process: RedisProcess) -> AsyncIterator[tuple[FaultProxy, str]]:
    """A FaultProxy in front of Redis, and the Redis URL through it."""
    async with FaultProxy((redis_process.host, redis_process.port)) as proxy:
        yield proxy, f"redis://127.0.0.1:{proxy.port}/0"


async def test_confirmation_waits_for_redis(redis_server: RedisProcess) -> None:
    """No confirmation reaches a client before Redis has confirmed, and one SUBSCRIBE serves two."""
    async with (
        proxied(redis_server) as (proxy, url),
        hub(url).serve() as server,
        peer(server) as first,
        peer(server) as second,
    ):
        proxy.blackhole()  # the Hub's SUBSCRIBE waits in the proxy, unseen by Redis
        await first.send({"action": "subscribe", "channel": "held"})
        await second.send({"action": "subscribe", "channel": "held"})
        await eventually(lambda: backplane(server).pending == 2, "both subscriptions wait")
        await first.quiet()
        assert await numsub(redis_server, "held") == 0
        assert server.statistics().subscriptions == 0

        proxy.restore()
        assert await first.recv() == confirm("held")
        assert await second.recv() == confirm("held")
        assert await numsub(redis_server, "held") == 1  # one Redis subscription for both
        stats = backplane(server)
        assert stats.pending == 0
        assert stats.channels == 1
        await second.publish("held", "both get it")
        assert (await first.recv())["data"] == (await second.recv())["data"] == "both get it"


async def test_subscribe_dropped_while_in_flight_then_taken_again(
    redis_server: RedisProcess,
) -> None:
    """A subscriber gone before Redis answers, and a new one meanwhile: Redis ends subscribed."""
    async with proxied(redis_server) as (proxy, url), hub(url).serve() as server:
        proxy.blackhole()
        async with peer(server) as leaving:
            await leaving.send({"action": "subscribe", "channel": "race"})
            await eventually(lambda: backplane(server).pending == 1, "the subscription waits")
            await server.abort_connections()  # its wait is cancelled: the count drops to 0
        assert backplane(server).pending == 0
        async with peer(server) as staying:
            # SUBSCRIBE, UNSUBSCRIBE and SUBSCRIBE again are in flight: only the last counts.
            await staying.send({"action": "subscribe", "channel": "race"})
            await eventually(lambda: backplane(server).pending == 1, "the new one waits")
            proxy.restore()
            assert await staying.recv() == confirm("race")
            assert await numsub(redis_server, "race") == 1
            await staying.publish("race", "after the race")
            assert (await staying.recv())["data"] == "after the race"
        await eventually(numsub_is(redis_server, "race", 0), "the last subscriber left")


async def test_resubscribe_while_unsubscribe_in_flight(redis_server: RedisProcess) -> None:
    """Unsubscribing then subscribing again before Redis answers leaves Redis subscribed."""
    async with (
        proxied(redis_server) as (proxy, url),
        hub(url).serve() as server,
        peer(server) as client,
    ):
        await client.subscribe("flip")
        proxy.blackhole()
        await client.send({"action": "unsubscribe", "channel": "flip"})
        # The UNSUBSCRIBE is sent (into the proxy) once the Hub stops counting the channel.
        await eventually(lambda: backplane(server).channels == 0, "the UNSUBSCRIBE went out")
        await client.send({"action": "subscribe", "channel": "flip"})
        await eventually(lambda: backplane(server).pending == 1, "the subscription waits")
        await client.quiet()
        proxy.restore()
        assert await client.recv() == confirm("flip")
        assert await numsub(redis_server, "flip") == 1
        assert backplane(server).channels == 1
        await client.publish("flip", "still here")
        assert (await client.recv())["data"] == "still here"


async def test_subscription_not_confirmed_in_time_is_refused(redis_server: RedisProcess) -> None:
    """A subscription Redis does not confirm within redis_timeout is refused, naming the channel."""
    async with (
        proxied(redis_server) as (proxy, url),
        hub(url, redis_timeout=0.5).serve() as server,
        peer(server) as client,
    ):
        proxy.blackhole()
        await client.send({"action": "subscribe", "channel": "slow"})
        refusal = await client.recv()
        assert refusal["channel"] == "system"
        assert refusal["data"]["type"] == "error"
        assert refusal["data"]["channel"] == "slow"
        assert "did not confirm" in refusal["data"]["message"]
        assert server.statistics().subscriptions == 0
        assert backplane(server).pending == 0
        proxy.restore()
        # The count was given back: Redis ends unsubscribed, whatever the link went through.
        await eventually(numsub_is(redis_server, "slow", 0), "Redis holds no subscription")
        await eventually(lambda: backplane(server).connected, "the backplane is connected")
        await client.subscribe("slow")


# Redis slow, and the Hub closing


async def test_publishes_waiting_for_redis_are_bounded_in_bytes(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While Redis takes nothing, large publishes hold their publisher back; none is lost."""
    monkeypatch.setattr(_backplane, "_PUBLISH_QUEUE_BYTES", 100_000)
    chunk = "x" * 30_000  # three fit in the bound, the fourth waits
    async with (
        proxied(redis_server) as (proxy, url),
        hub(url, redis_timeout=30).serve() as server,
        peer(server) as client,
    ):
        await client.subscribe("big")
        proxy.blackhole()
        for n in range(6):
            await client.publish("big", [n, chunk])
        await client.send({"type": "ping"})
        await client.quiet()  # the Hub reads no further until Redis takes some
        proxy.restore()
        received = [await client.recv() for _ in range(7)]
        assert {"type": "pong"} in received
        deliveries = [message["data"] for message in received if "channel" in message]
        assert deliveries == [[n, chunk] for n in range(6)]
        assert backplane(server).publish_failures == 0


async def test_a_publish_in_flight_when_the_hub_closes_fails_loudly(
    redis_server: RedisProcess,
) -> None:
    """A server-side publish still waiting for Redis when the Hub closes raises, never hangs."""
    raised: list[BaseException] = []
    with anyio.fail_after(BOUND):
        # The task group outlives the Hub: so does the publish.
        async with (
            proxied(redis_server) as (proxy, url),
            anyio.create_task_group() as tg,
            hub(url, redis_timeout=30).serve() as server,
        ):
            published = server._runtime.backplane
            assert published is not None
            proxy.blackhole()

            async def publish() -> None:
                with pytest.raises(BackplaneError) as error:
                    await server.publish("late", 1)
                raised.append(error.value)

            tg.start_soon(publish)
            # The publisher took it and waits for Redis' answer.
            await eventually(
                lambda: published._publish_receive.statistics().tasks_waiting_receive == 0,
                "the publish is on its way to Redis",
            )
    assert len(raised) == 1
    assert "unavailable" in str(raised[0])


# Losing Redis


async def test_losing_redis_is_reported_and_recovered() -> None:
    """Redis killed: clients are told, publishes fail loudly; restarted: all works again."""
    with start_redis() as redis_process:
        async with (
            hub(redis_process.url).serve() as server,
            peer(server) as subscriber,
            peer(server) as bystander,
        ):
            await subscriber.subscribe("life")
            redis_process.kill()

            lost = await subscriber.recv()
            assert lost["channel"] == "system"
            assert lost["data"]["type"] == "error"
            assert "channel" not in lost["data"]
            assert "lost the connection to Redis" in lost["data"]["message"]
            await bystander.sync()  # no subscription: not told
            assert not backplane(server).connected

            await subscriber.publish("life", "into the void")
            failed = await subscriber.recv()
            assert failed["data"]["type"] == "error"
            assert "channel" not in failed["data"]
            assert failed["data"]["message"].startswith("cannot publish to 'life'")
            with pytest.raises(BackplaneError, match="unavailable"):
                await server.publish("life", "from the server")
            await bystander.send({"action": "subscribe", "channel": "other"})
            refused = await bystander.recv()
            assert refused["data"]["channel"] == "other"
            assert "unavailable" in refused["data"]["message"]

            redis_process.restart()
            back = await subscriber.recv()
            assert back["channel"] == "system"
            assert back["data"]["type"] == "backplane"
            assert back["data"]["state"] == "connected"
            assert await numsub(redis_process, "life") == 1  # subscribed again by itself
            await subscriber.publish("life", "after")
            assert (await subscriber.recv())["data"] == "after"
            await bystander.subscribe("other")

            stats = backplane(server)
            assert stats.connected
            assert stats.reconnects == 1
            assert stats.errors >= 1
            assert stats.publish_failures == 2
            assert server.statistics().subscriptions == 2


async def test_hub_starts_without_redis_and_connects_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis down at start: the Hub serves, warns once, refuses subscriptions, then connects."""
    caplog.set_level(logging.DEBUG, logger="wsclient.server")
    with start_redis() as redis_process:
        redis_process.kill()
        async with hub(redis_process.url).serve() as server, peer(server) as client:
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1
            assert "cannot reach Redis" in warnings[0].getMessage()
            await client.send({"action": "subscribe", "channel": "later"})
            assert (await client.recv())["data"]["channel"] == "later"  # refused
            assert server.statistics().subscriptions == 0

            redis_process.restart()
            await eventually(lambda: backplane(server).connected, "the backplane connected")
            await client.subscribe("later")
            await client.publish("later", 1)
            assert (await client.recv())["data"] == 1


# Secrets


async def test_no_password_in_reprs_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    """The password of the Redis URL appears in no repr, log record or error message."""
    caplog.set_level(logging.DEBUG)
    with start_redis(password=PASSWORD) as redis_process:
        assert PASSWORD in redis_process.url
        wrong = redis_process.url.replace(PASSWORD, PASSWORD + "-wrong")
        shown: list[str] = []
        good, bad = hub(redis_process.url), hub(wrong)
        async with good.serve() as server, bad.serve() as refused, peer(server) as client:
            await client.subscribe("secret")
            await client.publish("secret", 1)
            assert (await client.recv())["data"] == 1
            shown += [repr(good), repr(bad), repr(server), repr(refused)]
            shown += [repr(server.statistics()), repr(refused.statistics())]
            assert not backplane(refused).connected  # wrong password: refused by Redis
            redis_process.kill()
            shown.append(str(await client.recv()))  # the loss notice
            with pytest.raises(BackplaneError) as raised:
                await server.publish("secret", 2)
            shown.append(str(raised.value))
        for bad_url in (f"http://:{PASSWORD}@host/0", f"redis://:{PASSWORD}@host/db"):
            with pytest.raises(ValueError) as invalid:  # noqa: PT011 (the message is checked)
                Hub(redis_url=bad_url)
            shown.append(str(invalid.value))
    shown += [record.getMessage() for record in caplog.records]
    shown += [str(record.args) for record in caplog.records]
    assert any("***@127.0.0.1" in text for text in shown)
    assert any("cannot reach Redis" in text for text in shown)  # the wrong password, logged
    leaks = [text for text in shown if PASSWORD in text]
    assert leaks == []


# Configuration


def test_invalid_redis_options_are_refused() -> None:
    """Bad Redis options raise ValueError or TypeError naming the option."""
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"redis_url": "http://127.0.0.1:6379"}, ValueError, "redis_url must be a redis://"),
        ({"redis_url": "redis://127.0.0.1:notaport/0"}, ValueError, "redis_url is not a valid"),
        ({"redis_url": "redis://127.0.0.1:0/0"}, ValueError, "port 0"),
        ({"redis_url": "redis:///0"}, ValueError, "redis_url needs a host"),
        ({"redis_url": "unix://"}, ValueError, "redis_url needs the socket's path"),
        ({"redis_url": "redis://h/0?db=x"}, ValueError, "Invalid value for 'db'"),
        ({"redis_url": b"redis://h/0"}, TypeError, "redis_url must be a str"),
        ({"redis_timeout": 0}, ValueError, "redis_timeout"),
        ({"redis_timeout": float("inf")}, ValueError, "redis_timeout"),
        ({"redis_prefix": None}, TypeError, "redis_prefix"),
        ({"redis_backoff": 1.0}, TypeError, "redis_backoff"),
    ]
    for options, error, message in cases:
        with pytest.raises(error, match=message.replace("(", r"\(")):
            Hub(**options)
    assert "redis=" not in repr(Hub())
    assert "redis='rediss://***@cache.internal:6380/2'" in repr(
        Hub(redis_url=f"rediss://user:{PASSWORD}@cache.internal:6380/2")
    )


# The command line


def test_cli_serve_refuses_a_bad_redis_url(caplog: pytest.LogCaptureFixture) -> None:
    """`wsclient serve --redis` with a URL that is not Redis' exits 2 with one line, no password."""
    for bad in (f"http://:{PASSWORD}@127.0.0.1:6379/0", "redis://127.0.0.1:99999/0"):
        caplog.clear()
        assert main(["serve", "--port", "0", "--redis", bad]) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert "\n" not in errors[0]
        assert errors[0].startswith("wsclient serve: --redis ")
        assert PASSWORD not in errors[0]


def test_cli_serve_takes_the_redis_url_from_the_environment(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$WSCLIENT_REDIS_URL stands for --redis (out of `ps`), and is checked the same way."""
    monkeypatch.setenv("WSCLIENT_REDIS_URL", f"http://:{PASSWORD}@127.0.0.1:6379/0")
    assert main(["serve", "--port", "0"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].startswith("wsclient serve: --redis ")
    assert PASSWORD not in errors[0]


async def test_cli_serve_with_redis(redis_server: RedisProcess) -> None:
    """`wsclient serve --redis URL` serves channels through Redis and exits 0 on Ctrl-C."""
    code = (
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from wsclient._cli import main; "
        f"raise SystemExit(main(['serve', '--port', '0', '--redis', {redis_server.url!r}]))"
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    async with await anyio.open_process([sys.executable, "-c", code], env=env) as process:
        assert process.stderr is not None
        stderr = b""
        with anyio.fail_after(20):
            while b"serving on " not in stderr:
                stderr += await process.stderr.receive()
        url = stderr.decode().split("serving on ", 1)[1].split()[0]
        async with await connect_transport(url + "/") as transport:
            client = Peer(transport)
            await client.subscribe("cli")
            assert await numsub(redis_server, "cli") == 1
            await client.publish("cli", "through Redis")
            assert (await client.recv())["data"] == "through Redis"
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(20):
            returncode = await process.wait()
            async for chunk in process.stderr:
                stderr += chunk
    assert returncode == 0, stderr.decode()
    assert b"channels through Redis at redis://127.0.0.1:" in stderr
    assert b"Traceback" not in stderr
