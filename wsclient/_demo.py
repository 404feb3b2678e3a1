"""``wsclient demo``: the SDK at work against an embedded Hub, narrated.

It needs nothing else running: it starts a Hub on an OS-chosen loopback port,
connects a transport to it and shows, step by step, what a backend sees; then
a reconnecting connection through a fault-injecting proxy survives a server
restart and a zombie link; last, the Client made by ``wsclient.connect()``
correlates requests, fans one channel out to several sessions and keeps each
session's replies its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import anyio
import orjson

from ._backoff import Backoff
from ._client import Client, connect
from ._codec import JsonCodec
from ._exceptions import ConnectError, ConnectionClosedError, RemoteError
from ._heartbeat import Heartbeat
from ._mux import Session
from ._reconnect import ConnectionState, ReconnectingTransport, StateChange, WebSocketFactory
from ._transport import WebSocketTransport, connect_transport

if TYPE_CHECKING:
    from .server import Hub

__all__ = ["run_demo"]

# The demo takes about 2 s; this bound only stops a broken one from hanging.
DEMO_BOUND = 30.0
CONCURRENT_REQUESTS = 1000
SESSION_NAMES = ("alice", "bob", "carol")
QUERIES_PER_SESSION = 20


async def run_demo(say: Callable[[str], None] = print) -> None:
    """Run the demo, narrating through ``say``."""
    with anyio.fail_after(DEMO_BOUND):
        await _transport_steps(say)
        await _resilience(say)
        await _client_steps(say)
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


async def _transport_steps(say: Callable[[str], None]) -> None:
    """Steps 1-11: the bare transport, message by message, against an embedded Hub."""
    codec = JsonCodec()
    async with _demo_hub().serve("127.0.0.1", 0) as server:
        say(f"1. Started an embedded Hub at {server.url}")
        async with await connect_transport(server.url) as transport:
            say(f"2. Connected: {transport!r}, compression {_extensions(transport)}")

            started = time.perf_counter()
            await transport.send(codec.encode(_query(1, "echo", {"n": 42})), text=True)
            reply = codec.decode(await transport.receive())
            elapsed = (time.perf_counter() - started) * 1e6
            say(f"3. Request/response: echo query answered {reply['payload']} in {elapsed:.0f} µs")

            await transport.send(codec.encode(_query(2, "greeting", {"name": "demo"})), text=True)
            reply = codec.decode(await transport.receive())
            say(f"4. A handler registered with @hub.on_query replied {reply['payload']}")

            await transport.send(codec.encode({"action": "subscribe", "channel": "news"}))
            confirm = codec.decode(await transport.receive())
            say(f"5. Subscribed to 'news': the Hub confirmed with {_compact(confirm)}")
            await transport.send(
                codec.encode({"action": "publish", "channel": "news", "data": {"headline": "hi"}})
            )
            delivery = codec.decode(await transport.receive())
            say(f"6. Published on 'news' and received the delivery {_compact(delivery)}")

            rtts = [await transport.ping() for _ in range(5)]
            say(f"7. Protocol pings: median round trip {sorted(rtts)[2] * 1e6:.0f} µs")

            count = 2000
            started = time.perf_counter()
            async with anyio.create_task_group() as tg:

                async def drain() -> None:
                    for _ in range(count):
                        await transport.receive()

                tg.start_soon(drain)
                for i in range(count):
                    await transport.send(codec.encode(_query(100 + i, "echo", i)), text=True)
            rate = count / (time.perf_counter() - started)
            say(f"8. Pipelined {count} requests through the Hub: {rate:,.0f} round trips/s")

            await server.abort_connections()
            try:
                await transport.receive()
            except ConnectionClosedError as exc:
                say(f"9. The server dropped the TCP connection; the client saw: {exc}")

    try:
        # The Hub is gone now: its port refuses connections.
        await connect_transport(server.url, open_timeout=5)
    except ConnectError as exc:
        say(f"10. After the Hub stopped, connecting failed cleanly: {exc}")

    stats = transport.statistics()
    say(
        f"11. Statistics: {stats.messages_sent} messages sent, "
        f"{stats.messages_received} received, {stats.bytes_sent:,} bytes out, "
        f"{stats.bytes_received:,} bytes in, {stats.pings_sent} pings"
    )


async def _resilience(say: Callable[[str], None]) -> None:
    """Steps 12-15: a reconnecting connection through a fault-injecting proxy."""
    from .server import Hub
    from .testing import FaultProxy

    arrived: list[int] = []
    hub = Hub()

    @hub.on_event("seq")
    async def record(data: object, ctx: object) -> None:
        if isinstance(data, int):
            arrived.append(data)

    def narrate(change: StateChange) -> None:
        if change.state is ConnectionState.RECONNECTING:
            why = type(change.error).__name__ if change.error else "?"
            say(f"    state: RECONNECTING ({why}), attempt {change.attempt} in {change.delay:.2f}s")
        elif change.state is ConnectionState.OPEN:
            say("    state: OPEN")

    # The first Hub dies mid-demo, so its lifetime is not a with block.
    first_life = AsyncExitStack()
    server = await first_life.enter_async_context(hub.serve("127.0.0.1", 0))
    try:
        async with FaultProxy(("127.0.0.1", server.port)) as proxy:
            factory = WebSocketFactory(proxy.url(), compression=None, open_timeout=1.0)
            connection = ReconnectingTransport(
                factory,
                backoff=Backoff(initial=0.05, maximum=0.5, min_uptime=0.5),
                heartbeat=Heartbeat(interval=0.5, timeout=0.5),
            )
            connection.on_state_change(narrate)
            async with connection:
                say(f"12. A ReconnectingTransport through a FaultProxy: {connection!r}")
                await server.abort_connections()
                await first_life.aclose()
                await _wait_for(connection, ConnectionState.RECONNECTING)
                for seq in range(5):
                    await connection.send(_event(seq), text=True)
                queued = connection.statistics().queue.messages
                async with hub.serve("127.0.0.1", 0) as second:
                    proxy.upstream = ("127.0.0.1", second.port)
                    await _wait_for(connection, ConnectionState.OPEN)
                    with anyio.fail_after(5):
                        # Polled: on trio the Hub records from its own thread.
                        while len(arrived) < 5:  # noqa: ASYNC110
                            await anyio.sleep(0.01)
                    say(
                        f"13. The Hub died and another took its place: {queued} messages "
                        f"queued meanwhile arrived once, in order: {arrived}"
                    )
                    started = anyio.current_time()
                    proxy.blackhole()
                    await _wait_for(connection, ConnectionState.RECONNECTING)
                    waited = anyio.current_time() - started
                    say(f"14. A zombie link (socket open, no bytes) was caught in {waited:.2f}s")
                    proxy.restore()
                    await _wait_for(connection, ConnectionState.OPEN)
                    stats = connection.statistics()
                    say(
                        f"15. Resilience statistics: {stats.attempts} attempts, "
                        f"{stats.reconnects} reconnects, {stats.heartbeat_probes} heartbeat "
                        f"probes, {stats.heartbeat_timeouts} heartbeat timeout, "
                        f"{stats.queue.sent} queued messages flushed"
                    )
                    await connection.aclose()
    finally:
        await first_life.aclose()


async def _client_steps(say: Callable[[str], None]) -> None:
    """Steps 16-20: the Client of ``wsclient.connect()`` on a fresh Hub."""
    async with _demo_hub().serve("127.0.0.1", 0) as server, connect(server.url) as client:
        reply = await client.query("greeting", {"name": "client"})
        try:
            await client.query("weather", {"city": "Lyon"})
        except RemoteError as exc:
            refused = exc
        else:
            raise RuntimeError("the Hub answered a query for a resource it does not have")
        say(
            f"16. wsclient.connect(): query('greeting') returned {reply}; "
            f"query('weather') raised RemoteError: {refused}"
        )
        await _concurrent_requests(client, say)

        async with AsyncExitStack() as stack:
            sessions = [
                await stack.enter_async_context(client.session(name)) for name in SESSION_NAMES
            ]
            subscriptions = [
                await stack.enter_async_context(session.subscribe("news")) for session in sessions
            ]
            for subscription in subscriptions:
                await subscription.confirmed()
            published = {"headline": "fan-out"}
            await client.publish("news", published)
            received = [await subscription.receive() for subscription in subscriptions]
            got_it = sum(data == published for data in received)
            hub = server.statistics()
            say(
                f"18. Fan-out: {len(sessions)} sessions of one client subscribed to 'news'; "
                f"one publish, {got_it} sessions received {received[0]}, while the Hub holds "
                f"{_plural(hub.subscriptions, 'subscription')} and made "
                f"{_plural(hub.deliveries, 'delivery', 'deliveries')}"
            )
            await _own_replies(sessions, say)

            stats = client.statistics()
            requests, channels = stats.requests, stats.channels
            by_state = ", ".join(
                f"{count} {state.value}" for state, count in channels.by_state.items() if count
            )
            say(
                f"20. Client statistics: {stats.state.name}, {requests.pending} pending, "
                f"{requests.replies} replies, {_plural(requests.remote_errors, 'remote error')}, "
                f"{requests.timeouts} timeouts, {requests.lost} lost; "
                f"{_plural(channels.channels, 'server subscription')}, "
                f"{channels.subscriptions} local ({by_state}), "
                f"{_plural(channels.deliveries, 'delivery', 'deliveries')}; "
                f"{stats.sessions} sessions"
            )


async def _concurrent_requests(client: Client, say: Callable[[str], None]) -> None:
    """Step 17: many requests in flight at once on one connection, each answered."""
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
        f"17. {CONCURRENT_REQUESTS} concurrent requests resolved, {matched} with their own "
        f"answer, in {elapsed * 1e3:.0f} ms ({CONCURRENT_REQUESTS / elapsed:,.0f} requests/s)"
    )


async def _own_replies(sessions: list[Session], say: Callable[[str], None]) -> None:
    """Step 19: sessions query at the same time; each reply goes to the session that asked."""
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
    names = ", ".join(session.id for session in sessions)
    say(
        f"19. Sessions {names} each sent {QUERIES_PER_SESSION} concurrent echo queries "
        f"with their own id: {mine}/{total} replies reached the session that asked, "
        f"{others} went astray, {strays} leaked into a session's message stream"
    )


async def _wait_for(connection: ReconnectingTransport, state: ConnectionState) -> None:
    with anyio.fail_after(10):
        await connection.wait_state(state)


def _event(seq: int) -> bytes:
    payload = {"event": "seq", "data": seq}
    return orjson.dumps({"id": f"e{seq}", "type": "event", "payload": payload})


def _query(request_id: int, resource: str, parameters: object) -> dict[str, object]:
    return {
        "id": request_id,
        "type": "query",
        "timestamp": int(time.time() * 1000),
        "payload": {"resource": resource, "parameters": parameters},
    }


def _plural(count: int, noun: str, plural: str | None = None) -> str:
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def _compact(message: object) -> str:
    return orjson.dumps(message).decode()


def _extensions(transport: WebSocketTransport) -> str:
    names = [extension.name for extension in transport._protocol.extensions]
    return ", ".join(names) if names else "off"
