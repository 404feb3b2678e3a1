"""``wsclient demo``: a client at work against an embedded Hub, narrated.

It needs nothing else running: it starts a Hub on an OS-chosen loopback port
with a FaultProxy in front of it (standing in for a load balancer and a bad
network), connects the Client of ``wsclient.connect()`` through the proxy and
shows, step by step, request/response, subscribe and publish, a server
restart survived with resubscription and the queue flushed, a zombie link
caught by the heartbeat, and sessions sharing the connection; it ends with
the client's statistics as a table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import anyio

from ._backoff import Backoff
from ._channels import Subscription
from ._client import Client, connect
from ._exceptions import RemoteError
from ._heartbeat import Heartbeat
from ._mux import Session
from ._reconnect import ConnectionState, StateChange

if TYPE_CHECKING:
    from ._faultproxy import FaultProxy
    from .server import Hub, HubServer

__all__ = ["run_demo"]

# The demo takes about 2 s; this bound only stops a broken one from hanging.
DEMO_BOUND = 30.0
# Bounds each step's wait for the client to reach a state.
STATE_BOUND = 10.0
CONCURRENT_REQUESTS = 1000
QUEUED_WHILE_DOWN = 5
SESSION_NAMES = ("alice", "bob", "carol")
QUERIES_PER_SESSION = 20

Say = Callable[[str], None]


async def run_demo(say: Say = print) -> None:
    """Run the demo, narrating through ``say``."""
    from ._faultproxy import FaultProxy

    with anyio.fail_after(DEMO_BOUND):
        # The first Hub dies mid-demo (step 6) and the second starts then, so
        # their lifetimes are exit stacks; both outlive the client.
        async with AsyncExitStack() as first_life, AsyncExitStack() as second_life:
            server = await first_life.enter_async_context(_demo_hub().serve("127.0.0.1", 0))
            async with FaultProxy(("127.0.0.1", server.port)) as proxy:
                say(f"1. Started an embedded Hub at {server.url} and a FaultProxy in front of it")
                async with _connect(proxy.url(), say) as client:
                    say(f"2. wsclient.connect() through the proxy: {client!r}")
                    await _request_response(client, say)
                    await _concurrent_requests(client, say)
                    async with client.subscribe("news") as news:
                        await _subscribe_and_publish(client, news, say)
                        second = await _restart(client, news, first_life, second_life, proxy, say)
                        await _zombie(client, proxy, say)
                        await _sessions(client, second, say)
                        _table(client, say)
    say("Done.")


def _demo_hub() -> Hub:
    """A Hub with one handler of the demo's own besides the built-in ``echo``."""
    from .server import Hub

    hub = Hub()

    @hub.on_query("greeting")
    async def greeting(parameters: object, ctx: object) -> object:
        name = parameters.get("name", "world") if isinstance(parameters, dict) else "world"
        return {"text": f"hello, {name}"}

    return hub


def _connect(url: str, say: Say) -> Client:
    """The demo's client: quick retries and a heartbeat tight enough to see at work.

    ``min_uptime`` is short because the demo's connections live well under a
    second: with the default, each drop would count as a failed attempt.
    """
    client = connect(
        url,
        backoff=Backoff(initial=0.05, maximum=0.5, min_uptime=0.05),
        heartbeat=Heartbeat(interval=0.5, timeout=0.5),
        compression=None,
        open_timeout=1.0,
    )

    @client.on_state
    def narrate(change: StateChange) -> None:
        if change.state is ConnectionState.RECONNECTING:
            why = type(change.error).__name__ if change.error else "?"
            say(f"    state: RECONNECTING ({why}), attempt {change.attempt} in {change.delay:.2f}s")
        elif (
            change.state is ConnectionState.OPEN and change.previous is ConnectionState.RECONNECTING
        ):
            say("    state: OPEN")

    return client


async def _request_response(client: Client, say: Say) -> None:
    """Step 3: a query answered, and an error reply raised as an exception."""
    started = time.perf_counter()
    reply = await client.query("greeting", {"name": "client"})
    elapsed = (time.perf_counter() - started) * 1e6
    try:
        await client.query("weather", {"city": "Lyon"})
    except RemoteError as exc:
        refused = exc
    else:
        raise RuntimeError("the Hub answered a query for a resource it does not have")
    say(
        f"3. Request/response: query('greeting') returned {reply} in {elapsed:.0f} µs; "
        f"query('weather') raised RemoteError: {refused}"
    )


async def _concurrent_requests(client: Client, say: Say) -> None:
    """Step 4: many requests in flight at once on one connection, each answered."""
    answers: dict[int, object] = {}

    async def ask(number: int) -> None:
        answers[number] = await client.query("echo", number)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for number in range(CONCURRENT_REQUESTS):
            tg.start_soon(ask, number)
    elapsed = time.perf_counter() - started
    matched = sum(answers.get(number) == number for number in range(CONCURRENT_REQUESTS))
    say(
        f"4. {CONCURRENT_REQUESTS} concurrent requests resolved, {matched} with their own "
        f"answer, in {elapsed * 1e3:.0f} ms ({CONCURRENT_REQUESTS / elapsed:,.0f} requests/s)"
    )


async def _subscribe_and_publish(client: Client, news: Subscription, say: Say) -> None:
    """Step 5: a confirmed subscription receives what the client publishes."""
    await news.confirmed()
    await client.publish("news", {"headline": "wsclient ships"})
    with anyio.fail_after(STATE_BOUND):
        delivery = await news.receive()
    say(f"5. Subscribed to 'news' (confirmed by the Hub), published, and received {delivery}")


async def _restart(
    client: Client,
    news: Subscription,
    first_life: AsyncExitStack,
    second_life: AsyncExitStack,
    proxy: FaultProxy,
    say: Say,
) -> HubServer:
    """Step 6: the Hub dies; what is published meanwhile arrives after the restart.

    The new Hub knows nothing of the old one's subscriptions, so the
    deliveries prove the client subscribed again before flushing its queue.
    The new Hub lives in ``second_life``.
    """
    await first_life.aclose()
    await _wait_for(client, ConnectionState.RECONNECTING)
    for seq in range(QUEUED_WHILE_DOWN):
        await client.publish("news", {"seq": seq})
    queued = client.statistics().connection.queue.messages

    second = await second_life.enter_async_context(_demo_hub().serve("127.0.0.1", 0))
    proxy.upstream = ("127.0.0.1", second.port)
    await _wait_for(client, ConnectionState.OPEN)
    with anyio.fail_after(STATE_BOUND):
        arrived = [(await news.receive())["seq"] for _ in range(QUEUED_WHILE_DOWN)]
    say(
        f"6. The Hub stopped and a new one took its place behind the proxy: the client "
        f"reconnected, subscribed to 'news' again, then flushed the {queued} publishes "
        f"queued meanwhile; they arrived once, in order: {arrived}"
    )
    return second


async def _zombie(client: Client, proxy: FaultProxy, say: Say) -> None:
    """Step 7: a link that stays open but carries nothing is caught by the heartbeat."""
    started = anyio.current_time()
    proxy.blackhole()
    await _wait_for(client, ConnectionState.RECONNECTING)
    waited = anyio.current_time() - started
    proxy.restore()
    await _wait_for(client, ConnectionState.OPEN)
    reply = await client.query("echo", "still here")
    say(
        f"7. A zombie link (socket open, no bytes) was caught by the heartbeat in "
        f"{waited:.2f}s; after reconnecting, query('echo') returned {reply!r}"
    )


async def _sessions(client: Client, server: HubServer, say: Say) -> None:
    """Steps 8-9: sessions share the connection, its subscriptions and its replies."""
    async with AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(client.session(n)) for n in SESSION_NAMES]
        subscriptions = [
            await stack.enter_async_context(session.subscribe("news")) for session in sessions
        ]
        for subscription in subscriptions:
            await subscription.confirmed()
        published = {"headline": "fan-out"}
        await client.publish("news", published)
        with anyio.fail_after(STATE_BOUND):
            received = [await subscription.receive() for subscription in subscriptions]
        got_it = sum(data == published for data in received)
        hub = server.statistics()
        say(
            f"8. Shared connection: {len(sessions)} sessions subscribed to 'news'; one publish, "
            f"{got_it} sessions received {received[0]}, over "
            f"{_plural(hub.connections_open, 'connection')} holding "
            f"{_plural(hub.subscriptions, 'subscription')} on the Hub"
        )
        await _own_replies(sessions, say)


async def _own_replies(sessions: list[Session], say: Say) -> None:
    """Step 9: sessions query at the same time; each reply goes to the session that asked."""
    mine = 0
    others = 0

    async def ask(session: Session, round_: int) -> None:
        nonlocal mine, others
        reply = await session.query("echo", {"session": session.id, "round": round_})
        if isinstance(reply, dict) and reply.get("session") == session.id:
            mine += 1
        else:
            others += 1

    async with anyio.create_task_group() as tg:
        for round_ in range(QUERIES_PER_SESSION):
            for session in sessions:
                tg.start_soon(ask, session, round_)
    total = mine + others
    # A reply is never an unhandled message: it must not show up in any session's stream.
    strays = sum(session.statistics().messages.received for session in sessions)
    say(
        f"9. Sessions {', '.join(s.id for s in sessions)} each sent {QUERIES_PER_SESSION} "
        f"concurrent queries: {mine}/{total} replies reached the session that asked, "
        f"{others} went astray, {strays} leaked into a session's message stream"
    )


def _table(client: Client, say: Say) -> None:
    """Step 10: the client's statistics, layer by layer."""
    say("10. Client statistics:")
    for line in _render(_statistics_rows(client)):
        say(line)


def _statistics_rows(client: Client) -> Iterator[tuple[str, str, str]]:
    stats = client.statistics()
    connection, queue = stats.connection, stats.connection.queue
    requests, channels = stats.requests, stats.channels
    rtt = f"{connection.last_rtt * 1e3:.2f} ms" if connection.last_rtt is not None else "n/a"
    yield ("connection", "state", stats.state.name)
    yield (
        "connection",
        "attempts / reconnects",
        f"{connection.attempts} / {connection.reconnects}",
    )
    yield (
        "connection",
        "heartbeat probes / timeouts",
        f"{connection.heartbeat_probes} / {connection.heartbeat_timeouts}",
    )
    yield ("connection", "last heartbeat round trip", rtt)
    yield ("queue", "queued while offline / sent", f"{queue.queued} / {queue.sent}")
    yield ("queue", "dropped", str(queue.dropped_oldest + queue.dropped_newest + queue.expired))
    yield ("requests", "sent / replies", f"{requests.sent} / {requests.replies}")
    yield ("requests", "pending", str(requests.pending))
    yield (
        "requests",
        "remote errors / timeouts / lost",
        f"{requests.remote_errors} / {requests.timeouts} / {requests.lost}",
    )
    yield ("channels", "server subscriptions", str(channels.channels))
    yield (
        "channels",
        "deliveries / resubscribes",
        f"{channels.deliveries} / {channels.resubscribes}",
    )
    yield ("sessions", "open", str(stats.sessions))
    yield ("errors", "reported to on_error", str(stats.errors))


def _render(rows: Iterator[tuple[str, str, str]]) -> list[str]:
    """The rows as a rich table when rich is installed (the ``cli`` extra), else aligned text."""
    rows_list = list(rows)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - the cli extra brings rich
        width = max(len(layer) + len(name) for layer, name, _ in rows_list) + 3
        return [f"    {f'{layer}: {name}':<{width}} {value}" for layer, name, value in rows_list]
    table = Table("layer", "counter", "value")
    for layer, name, value in rows_list:
        table.add_row(layer, name, value)
    console = Console(width=80, color_system=None, force_terminal=False)
    with console.capture() as capture:
        console.print(table)
    return capture.get().rstrip("\n").splitlines()


async def _wait_for(client: Client, state: ConnectionState) -> None:
    with anyio.fail_after(STATE_BOUND):
        await client.wait_state(state)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun if count == 1 else noun + 's'}"
