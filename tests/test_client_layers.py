"""The Client's layers over in-memory transports, on a fake clock (asyncio and trio).

The test plays the server through the server's end of each connection: it
reads what the client sent and answers by hand, so every time (timeouts,
backoff, the instant a request fails) is exact.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import orjson
import pytest

import wsclient
from wsclient import (
    Backoff,
    Client,
    ConnectionLost,
    ConnectionState,
    Heartbeat,
    InvalidState,
    InvalidURL,
    ProtocolError,
    QueueFull,
    QueuePolicy,
    ReconnectFailed,
    RemoteError,
    RequestTimeout,
    SubscriptionState,
)
from wsclient.testing import MemoryTransport

from .test_reconnect import Server

pytestmark = pytest.mark.anyio

C = ConnectionState
S = SubscriptionState
NO_JITTER = Backoff(jitter="none", initial=1.0, factor=2.0, maximum=8.0, min_uptime=0.0)


@pytest.fixture
def anyio_backend(fake_clock: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return fake_clock


def make_client(server: Server, **options: Any) -> Client:
    options.setdefault("backoff", NO_JITTER)
    options.setdefault("heartbeat", None)
    return Client(server, **options)


async def read(end: MemoryTransport) -> Any:
    """The next message the client sent, decoded."""
    with anyio.fail_after(60):
        return orjson.loads(await end.receive())


async def reply(end: MemoryTransport, request: dict[str, Any], payload: Any) -> None:
    message = {"id": 1000 + request["id"], "type": "response", "requestId": request["id"]}
    await end.send(orjson.dumps({**message, "payload": payload}).decode())


async def refuse(end: MemoryTransport, request: dict[str, Any], error: str) -> None:
    message = {"id": 1000 + request["id"], "type": "error", "requestId": request["id"]}
    await end.send(orjson.dumps({**message, "error": error}).decode())


async def confirm(end: MemoryTransport, channel: str) -> None:
    data = {"type": "subscription_confirm", "channel": channel}
    await end.send(orjson.dumps({"channel": "system", "data": data}).decode())


async def read_until_marker(end: MemoryTransport) -> list[Any]:
    """What the client sent before ``{"marker": 1}``."""
    sent = []
    while (message := await read(end)) != {"marker": 1}:
        sent.append(message)
    return sent


class Outcome:
    """What a request run in the background ended with, and when."""

    def __init__(self) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.at: float | None = None
        self.done = anyio.Event()

    async def run(self, call: Any) -> None:
        try:
            self.result = await call
        except Exception as exc:
            self.error = exc
        self.at = anyio.current_time()
        self.done.set()

    async def wait(self) -> Outcome:
        with anyio.fail_after(600):
            await self.done.wait()
        return self


# Requests and their timeouts


async def test_reply_resolves_the_request_with_its_payload() -> None:
    """A query is framed as in the seeds and resolved by the reply with its requestId."""
    server = Server()
    async with make_client(server) as client, anyio.create_task_group() as group:
        outcome = Outcome()
        group.start_soon(outcome.run, client.query("users", {"id": 7}))
        request = await read(server.end)
        assert request["type"] == "query"
        assert request["payload"] == {"resource": "users", "parameters": {"id": 7}}
        assert isinstance(request["timestamp"], int)
        await reply(server.end, request, {"name": "ada"})
        assert (await outcome.wait()).result == {"name": "ada"}
        stats = client.statistics().requests
        assert (stats.pending, stats.sent, stats.replies) == (0, 1, 1)


async def test_error_reply_raises_remote_error_with_the_servers_message() -> None:
    """An error reply raises RemoteError carrying the server's message and the request id."""
    server = Server()
    async with make_client(server) as client, anyio.create_task_group() as group:
        outcome = Outcome()
        group.start_soon(outcome.run, client.command("delete", {"id": 1}))
        request = await read(server.end)
        await refuse(server.end, request, "not allowed")
        error = (await outcome.wait()).error
        assert isinstance(error, RemoteError)
        assert str(error) == "not allowed"
        assert error.request_id == request["id"]
        assert client.statistics().requests.remote_errors == 1


async def test_request_times_out_at_exactly_the_default_ten_seconds() -> None:
    """With no reply, a request fails with RequestTimeout after request_timeout (10 s)."""
    server = Server()
    async with make_client(server) as client:
        started = anyio.current_time()
        with pytest.raises(RequestTimeout, match="within 10s"):
            await client.query("slow")
        assert anyio.current_time() - started == pytest.approx(10.0)
        stats = client.statistics().requests
        assert (stats.pending, stats.timeouts, stats.cancelled) == (0, 1, 0)


async def test_per_request_timeout_and_the_late_reply_is_reported_not_fatal() -> None:
    """timeout= bounds one request; its late reply is counted and reported, and nothing breaks."""
    server = Server()
    errors: list[BaseException] = []
    async with make_client(server) as client:
        client.on_error(errors.append)
        started = anyio.current_time()
        with pytest.raises(RequestTimeout):
            await client.query("slow", timeout=2.5)
        assert anyio.current_time() - started == pytest.approx(2.5)
        request = await read(server.end)
        await reply(server.end, request, "too late")
        async with anyio.create_task_group() as group:
            outcome = Outcome()
            group.start_soon(outcome.run, client.query("fast"))
            await reply(server.end, await read(server.end), "ok")
            assert (await outcome.wait()).result == "ok"
        assert client.statistics().requests.unknown_replies == 1
        assert [type(e) for e in errors] == [ProtocolError]
        assert "no pending request" in str(errors[0])


async def test_cancelling_a_request_removes_its_waiter() -> None:
    """A request whose caller is cancelled leaves no waiter behind."""
    server = Server()
    async with make_client(server) as client:
        with anyio.move_on_after(1):
            await client.query("slow")
        stats = client.statistics().requests
        assert (stats.pending, stats.cancelled, stats.timeouts) == (0, 1, 0)


async def test_invalid_timeouts_are_refused() -> None:
    """A request timeout must be a positive number of seconds."""
    server = Server()
    async with make_client(server) as client:
        for bad in (0, -1, math.nan, "5", True):
            with pytest.raises(ValueError, match="timeout"):
                await client.query("x", timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="request_timeout"):
        Client(server, request_timeout=0)
    with pytest.raises(ValueError, match="in_flight"):
        Client(server, in_flight="retry")  # type: ignore[arg-type]


# Requests in flight when the connection drops


async def test_in_flight_request_fails_at_once_when_the_link_drops() -> None:
    """Under "fail" (the default) an in-flight request raises ConnectionLost when the link drops."""
    server = Server()
    async with make_client(server) as client, anyio.create_task_group() as group:
        outcome = Outcome()
        group.start_soon(outcome.run, client.query("slow"))
        await read(server.end)
        await anyio.sleep(3)
        server.end.break_link()
        await outcome.wait()
        assert isinstance(outcome.error, ConnectionLost)
        assert outcome.at == pytest.approx(3.0)
        assert outcome.error.__cause__ is not None
        assert client.statistics().requests.lost == 1


async def test_resend_policy_sends_the_request_again_after_the_reconnect() -> None:
    """Under "resend" a request in flight goes out again on the next connection and succeeds."""
    server = Server()
    async with (
        make_client(server, in_flight="resend") as client,
        anyio.create_task_group() as group,
    ):
        outcome = Outcome()
        group.start_soon(outcome.run, client.query("prices"))
        first = await read(server.end)
        server.end.break_link()
        end = await server.wait_for_connection(2)
        again = await read(end)
        assert again == first  # the same id and payload
        await reply(end, again, [1, 2, 3])
        await outcome.wait()
        assert outcome.result == [1, 2, 3]
        assert outcome.at == pytest.approx(1.0)  # the first backoff delay
        assert client.statistics().requests.resent == 1


async def test_per_request_policy_overrides_the_clients() -> None:
    """in_flight= on one request overrides the client's default for it alone."""
    server = Server()
    async with make_client(server) as client, anyio.create_task_group() as group:
        kept, lost = Outcome(), Outcome()
        group.start_soon(kept.run, client.query("a", in_flight="resend"))
        first = await read(server.end)
        group.start_soon(lost.run, client.command("b"))
        await read(server.end)
        server.end.break_link()
        assert isinstance((await lost.wait()).error, ConnectionLost)
        end = await server.wait_for_connection(2)
        again = await read(end)
        assert again["id"] == first["id"]
        await reply(end, again, "a")
        assert (await kept.wait()).result == "a"


async def test_request_made_while_offline_waits_in_the_queue_and_succeeds() -> None:
    """A request made while reconnecting is not in flight: it is queued, sent, and answered."""
    server = Server()
    async with make_client(server) as client, anyio.create_task_group() as group:
        server.end.break_link()
        await client.wait_state(C.RECONNECTING)
        outcome = Outcome()
        group.start_soon(outcome.run, client.query("later"))
        end = await server.wait_for_connection(2)
        request = await read(end)
        assert request["payload"]["resource"] == "later"
        await reply(end, request, "done")
        assert (await outcome.wait()).result == "done"


async def test_request_dropped_by_a_full_queue_fails_at_once() -> None:
    """drop_newest dropping a request's message raises QueueFull instead of a timeout."""
    server = Server()
    queue = QueuePolicy(max_messages=1, overflow="drop_newest")
    async with make_client(server, queue=queue) as client:
        server.end.break_link()
        await client.wait_state(C.RECONNECTING)
        assert await client.send({"fill": 1})
        started = anyio.current_time()
        with pytest.raises(QueueFull, match="dropped"):
            await client.query("x")
        assert anyio.current_time() == started
        assert client.statistics().requests.pending == 0


async def test_no_waiter_outlives_the_client() -> None:
    """Closing the client fails every pending request with ConnectionLost."""
    server = Server()
    outcome = Outcome()
    async with anyio.create_task_group() as group:
        async with make_client(server) as client:
            group.start_soon(outcome.run, client.query("slow"))
            await read(server.end)
        await outcome.wait()
    assert isinstance(outcome.error, ConnectionLost)
    assert client.statistics().requests.pending == 0
    with pytest.raises(InvalidState):
        await client.query("after")


# Reconnect: authentication first, then subscriptions, then the queue


async def test_after_a_reconnect_auth_then_subscriptions_then_the_queue() -> None:
    """A new connection gets auth (answered before anything else), each channel, then the queue."""
    server = Server()
    async with make_client(server) as client, anyio.create_task_group() as group:
        outcome = Outcome()
        group.start_soon(outcome.run, client.authenticate({"token": "t0k3n"}))
        await reply(server.end, await read(server.end), {"user": "ada"})
        assert (await outcome.wait()).result == {"user": "ada"}
        prices = await client.subscribe("prices", callback=lambda data: None)
        news = await client.subscribe("news", callback=lambda data: None)
        assert await read(server.end) == {"action": "subscribe", "channel": "prices"}
        assert await read(server.end) == {"action": "subscribe", "channel": "news"}

        server.end.break_link()
        await client.wait_state(C.RECONNECTING)
        for n in range(3):
            await client.send({"n": n})
        end = await server.wait_for_connection(2)
        auth = await read(end)
        assert (auth["type"], auth["payload"]) == ("auth", {"token": "t0k3n"})
        await anyio.sleep(5)
        assert client.state is C.RECONNECTING  # OPEN only once auth is answered
        await reply(end, auth, {"user": "ada"})
        sent = [await read(end) for _ in range(5)]
        assert sent == [
            {"action": "subscribe", "channel": "prices"},
            {"action": "subscribe", "channel": "news"},
            {"n": 0},
            {"n": 1},
            {"n": 2},
        ]
        await client.wait_state(C.OPEN)
        assert prices.state is news.state is S.SUBSCRIBING
        await confirm(end, "prices")
        await prices.confirmed()
        assert prices.state is S.SUBSCRIBED
        await prices.aclose()
        await news.aclose()


async def refuse_reauthentication(client: Client, server: Server, group: Any) -> None:
    """Authenticate, drop the link, refuse the credentials on the next connection: CLOSED."""
    outcome = Outcome()
    group.start_soon(outcome.run, client.authenticate("secret"))
    await reply(server.end, await read(server.end), "ok")
    await outcome.wait()
    server.end.break_link()
    end = await server.wait_for_connection(2)
    await refuse(end, await read(end), "token expired")
    await client.wait_state(C.CLOSED)


async def test_refused_reauthentication_gives_up() -> None:
    """If the server refuses the credentials on a reconnect, the client closes with the reason."""
    server = Server()
    async with make_client(server) as client, anyio.create_task_group() as group:
        await refuse_reauthentication(client, server, group)
        with pytest.raises(ReconnectFailed) as caught:
            await client.query("x")
    assert isinstance(caught.value.__cause__, RemoteError)
    assert "secret" not in str(caught.value)
    assert client.state is C.CLOSED
    assert len(server.ends) == 2  # not retried


async def test_subscribe_while_offline_is_sent_once_on_the_next_connection() -> None:
    """A subscription opened while reconnecting is sent by the hook, once, not also queued."""
    server = Server()
    async with make_client(server) as client:
        server.end.break_link()
        await client.wait_state(C.RECONNECTING)
        async with client.subscribe("prices") as sub:
            assert sub.state is S.SUBSCRIBING
            end = await server.wait_for_connection(2)
            await client.wait_state(C.OPEN)
            await client.send({"marker": 1})
            assert await read(end) == {"action": "subscribe", "channel": "prices"}
            assert await read(end) == {"marker": 1}
            await confirm(end, "prices")
            await end.send('{"channel": "prices", "data": 42}')
            with anyio.fail_after(5):
                assert await sub.receive() == 42
        assert await read(end) == {"action": "unsubscribe", "channel": "prices"}


async def test_unsubscribe_of_a_channel_never_sent_sends_nothing() -> None:
    """Leaving a channel before any connection carried it sends no unsubscribe."""
    server = Server()
    async with make_client(server) as client:
        server.end.break_link()
        await client.wait_state(C.RECONNECTING)
        async with client.subscribe("brief"):
            pass
        end = await server.wait_for_connection(2)
        await client.wait_state(C.OPEN)
        await client.send({"marker": 1})
        assert await read(end) == {"marker": 1}


# Channels


async def test_local_subscribers_share_one_server_subscription() -> None:
    """Two subscribers mean one subscribe; unsubscribe goes out only when the last leaves."""
    server = Server()
    async with make_client(server) as client:
        first = await client.subscribe("prices", callback=lambda data: None)
        async with client.subscribe("prices") as second:
            assert await read(server.end) == {"action": "subscribe", "channel": "prices"}
            await confirm(server.end, "prices")
            await second.confirmed()
            assert first.state is S.SUBSCRIBED
            await server.end.send('{"channel": "prices", "data": 1}')
            with anyio.fail_after(5):
                assert await second.receive() == 1
            await first.aclose()
            assert first.state is S.UNSUBSCRIBED
            assert second.state is S.SUBSCRIBED
            await client.send({"marker": 1})
            assert await read(server.end) == {"marker": 1}  # no unsubscribe yet
        assert await read(server.end) == {"action": "unsubscribe", "channel": "prices"}
        stats = client.statistics().channels
        assert (stats.channels, stats.subscriptions, stats.deliveries) == (0, 0, 1)


async def test_confirmation_waits_are_bounded_and_state_follows_the_connection() -> None:
    """confirmed() is bounded by request_timeout; a lost connection means SUBSCRIBING again."""
    server = Server()
    client = make_client(server, request_timeout=4)
    async with client, client.subscribe("prices") as sub:
        started = anyio.current_time()
        with pytest.raises(RequestTimeout, match="prices"):
            await sub.confirmed()
        assert anyio.current_time() - started == pytest.approx(4.0)
        await confirm(server.end, "prices")
        await sub.confirmed()
        server.end.break_link()
        await client.wait_state(C.RECONNECTING)
        assert sub.state is S.SUBSCRIBING
        end = await server.wait_for_connection(2)
        assert await read(end) == {"action": "subscribe", "channel": "prices"}
        await confirm(end, "prices")
        await sub.confirmed()
        assert client.statistics().channels.resubscribes == 1


async def test_closed_client_ends_subscriptions_and_streams() -> None:
    """When the client closes, iterating a subscription or the client ends."""
    server = Server()
    async with make_client(server) as client:
        sub = await client.subscribe("prices")
        await server.end.send('{"channel": "prices", "data": 1}')
        await anyio.sleep(1)
    assert [data async for data in sub] == [1]
    assert [message async for message in client] == []
    assert sub.state is S.UNSUBSCRIBED


# Inbound routing


async def test_heartbeat_pongs_are_consumed_and_other_messages_are_not() -> None:
    """An app-level heartbeat sends the dialect's ping; its pong never reaches the application."""
    server = Server()
    heartbeat = Heartbeat(interval=5, timeout=5, app_level=True)
    async with make_client(server, heartbeat=heartbeat) as client:
        await anyio.sleep(5)
        assert await read(server.end) == {"type": "ping"}
        await server.end.send('{"type": "pong"}')
        await server.end.send('{"type": "notice", "n": 1}')
        with anyio.fail_after(1):
            assert await client.receive() == {"type": "notice", "n": 1}
        await anyio.sleep(30)
        assert client.state is C.OPEN
        assert client.statistics().messages.received == 1


async def test_malformed_and_undecodable_messages_are_reported_and_passed_on() -> None:
    """Bad inbound messages go to on_error and the unhandled stream; the client keeps working."""
    server = Server()
    errors: list[BaseException] = []
    async with make_client(server) as client:
        client.on_error(errors.append)
        await server.end.send('{"type": "response", "id": 1}')
        await server.end.send("not json")
        await server.end.send('{"channel": "system", "data": {"type": "error", "message": "no"}}')
        with anyio.fail_after(1):
            assert await client.receive() == {"type": "response", "id": 1}
            assert await client.receive() == "not json"
            assert (await client.receive())["data"]["message"] == "no"
        assert [type(e) for e in errors] == [ProtocolError, ProtocolError, RemoteError]
        assert client.statistics().invalid_messages == 2
        assert client.state is C.OPEN


# Sessions


async def test_replies_and_addressed_messages_reach_only_their_session() -> None:
    """A reply wakes the session that asked; a message with `from` reaches that session alone."""
    server = Server()
    async with make_client(server) as client, anyio.create_task_group() as group:
        one, two = client.session("one"), client.session("two")
        outcome = Outcome()
        group.start_soon(outcome.run, one.query("echo", 1))
        request = await read(server.end)
        assert request["from"] == "one"
        await reply(server.end, request, 1)
        assert (await outcome.wait()).result == 1
        await server.end.send('{"type": "notice", "from": "two"}')
        await server.end.send('{"type": "everyone"}')
        with anyio.fail_after(1):
            assert await two.receive() == {"type": "notice", "from": "two"}
            assert await two.receive() == {"type": "everyone"}
            assert await one.receive() == {"type": "everyone"}
            assert await client.receive() == {"type": "everyone"}
        assert one.statistics().messages.pending == 0
        await one.aclose()
        await two.aclose()


async def test_closing_a_session_fails_only_its_own_requests_and_subscriptions() -> None:
    """Closing one session fails its pending requests and drops its subscriptions, nothing else."""
    server = Server()
    changes: list[ConnectionState] = []
    async with make_client(server) as client, anyio.create_task_group() as group:
        one, two = client.session(), client.session()
        two.on_state(lambda change: changes.append(change.state))
        mine, theirs = Outcome(), Outcome()
        group.start_soon(mine.run, one.query("slow"))
        group.start_soon(theirs.run, two.query("slow"))
        requests = [await read(server.end), await read(server.end)]
        own = await one.subscribe("a", callback=lambda data: None)
        shared = await two.subscribe("b", callback=lambda data: None)
        assert [await read(server.end) for _ in range(2)] == [
            {"action": "subscribe", "channel": "a"},
            {"action": "subscribe", "channel": "b"},
        ]
        await one.aclose()
        assert isinstance((await mine.wait()).error, InvalidState)
        assert own.state is S.UNSUBSCRIBED
        assert shared.state is S.SUBSCRIBING
        assert await read(server.end) == {"action": "unsubscribe", "channel": "a"}
        theirs_request = next(r for r in requests if r["from"] == two.id)
        await reply(server.end, theirs_request, "fine")
        assert (await theirs.wait()).result == "fine"
        server.end.break_link()
        await client.wait_state(C.OPEN, C.RECONNECTING)
        await server.wait_for_connection(2)
        await client.wait_state(C.OPEN)
        assert changes == [C.RECONNECTING, C.OPEN]
        with pytest.raises(InvalidState):
            await one.query("x")


# Configuration and secrets


async def test_invalid_configuration_fails_before_connecting() -> None:
    """A bad URL or option raises at connect(), before any attempt."""
    with pytest.raises(InvalidURL):
        wsclient.connect("http://example.com/")
    with pytest.raises(ValueError, match="backoff"):
        wsclient.connect("ws://127.0.0.1:1/", reconnect=False, backoff=Backoff())
    with pytest.raises(ValueError, match="ping"):
        wsclient.connect(
            "ws://127.0.0.1:1/",
            dialect=wsclient.JsonRpcDialect(),
            heartbeat=Heartbeat(app_level=True),
        )
    with pytest.raises(TypeError, match="Dialect"):
        wsclient.connect("ws://127.0.0.1:1/", dialect=object())  # type: ignore[arg-type]


async def test_secrets_stay_out_of_reprs_and_errors() -> None:
    """Passwords, tokens and credentials appear in no repr or error message."""
    client = wsclient.connect("wss://user:hunter2@example.com/feed?token=s3cr3t")
    assert "hunter2" not in repr(client)
    assert "s3cr3t" not in repr(client)
    server = Server()
    async with make_client(server) as client, anyio.create_task_group() as group:
        outcome = Outcome()
        group.start_soon(outcome.run, client.authenticate({"password": "hunter2"}))
        await refuse(server.end, await read(server.end), "denied")
        error = (await outcome.wait()).error
        assert "hunter2" not in str(error)
        assert "hunter2" not in repr(client)
        assert "hunter2" not in repr(client.statistics())


async def test_unsubscribe_follows_a_subscribe_still_queued_from_a_lost_connection() -> None:
    """A subscribe stuck in the queue when the link dropped is cancelled by an unsubscribe."""
    server = Server(max_queue=1)  # the server's end reads nothing: the second write blocks
    async with make_client(server) as client:
        server.end.break_link()
        await client.wait_state(C.RECONNECTING)
        for n in range(3):
            await client.send({"n": n})
        await server.wait_for_connection(2)
        await client.wait_state(C.OPEN)
        await anyio.sleep(1)  # the flusher wrote {"n": 0} and is stuck writing {"n": 1}
        async with client.subscribe("prices"):
            # Behind {"n": 2}, in the queue.
            assert client.statistics().connection.queue.messages == 2
            server.end.break_link()
            await client.wait_state(C.RECONNECTING)
        end = await server.wait_for_connection(3)
        sent = [await read(end) for _ in range(3)]
        assert sent == [
            {"n": 2},
            {"action": "subscribe", "channel": "prices"},
            {"action": "unsubscribe", "channel": "prices"},
        ]
        await client.send({"marker": 1})
        assert await read(end) == {"marker": 1}  # and no subscribe from the hook


# JSON-RPC 2.0 through the whole client


async def test_json_rpc_requests_batches_and_channels() -> None:
    """With JsonRpcDialect: method calls, error objects, a batch reply, and channel traffic."""
    server = Server()
    client = make_client(server, dialect=wsclient.JsonRpcDialect())
    async with client, anyio.create_task_group() as group:
        one, two, bad = Outcome(), Outcome(), Outcome()
        group.start_soon(one.run, client.query("sum", [1, 2]))
        first = await read(server.end)
        group.start_soon(two.run, client.command("sum", [3, 4]))
        second = await read(server.end)
        group.start_soon(bad.run, client.request("explode"))
        third = await read(server.end)
        assert first == {"jsonrpc": "2.0", "id": first["id"], "method": "sum", "params": [1, 2]}
        assert third == {"jsonrpc": "2.0", "id": third["id"], "method": "explode"}
        batch = [
            {"jsonrpc": "2.0", "id": second["id"], "result": 7},
            {"jsonrpc": "2.0", "id": first["id"], "result": 3},
            {"jsonrpc": "2.0", "id": third["id"], "error": {"code": -32601, "message": "no"}},
        ]
        await server.end.send(orjson.dumps(batch).decode())
        assert ((await one.wait()).result, (await two.wait()).result) == (3, 7)
        error = (await bad.wait()).error
        assert isinstance(error, RemoteError)
        assert (str(error), error.code) == ("no", -32601)

        async with client.subscribe("ticks") as sub:
            request = await read(server.end)
            assert request["method"] == "subscribe"
            assert request["params"] == {"channel": "ticks"}
            reply_to = {"jsonrpc": "2.0", "id": request["id"], "result": True}
            await server.end.send(orjson.dumps(reply_to).decode())
            await sub.confirmed()
            tick = {
                "jsonrpc": "2.0",
                "method": "message",
                "params": {"channel": "ticks", "data": 1},
            }
            await server.end.send(orjson.dumps(tick).decode())
            with anyio.fail_after(1):
                assert await sub.receive() == 1
        unsubscribe = await read(server.end)
        assert unsubscribe["method"] == "unsubscribe"
        assert client.statistics().requests.pending == 0


async def test_json_rpc_refused_subscription_fails_the_subscribers() -> None:
    """A JSON-RPC error reply to a subscribe fails its subscribers with the RemoteError."""
    server = Server()
    errors: list[BaseException] = []
    client = make_client(server, dialect=wsclient.JsonRpcDialect())
    async with client, client.subscribe("secret") as sub:
        client.on_error(errors.append)
        request = await read(server.end)
        refusal = {"code": 403, "message": "forbidden"}
        await server.end.send(
            orjson.dumps({"jsonrpc": "2.0", "id": request["id"], "error": refusal}).decode()
        )
        with pytest.raises(RemoteError, match="forbidden"):
            await sub.confirmed()
        assert sub.state is S.FAILED
        assert [str(e) for e in errors] == ["forbidden"]
        with pytest.raises(RemoteError):
            await sub.receive()


async def test_requests_dropped_from_the_queue_fail_at_once() -> None:
    """A queued request evicted by drop_oldest, or expired by ttl, raises QueueFull: no timeout."""
    server = Server()
    queue = QueuePolicy(max_messages=2, overflow="drop_oldest", ttl=5)
    async with make_client(server, queue=queue) as client, anyio.create_task_group() as group:
        server.end.break_link()
        await client.wait_state(C.RECONNECTING)
        server.failures.extend(ConnectionError("refused") for _ in range(10))
        evicted, expired = Outcome(), Outcome()
        group.start_soon(evicted.run, client.query("first"))
        await anyio.sleep(0.1)  # the query is queued
        assert client.statistics().connection.queue.messages == 1
        await client.send({"n": 1})
        await client.send({"n": 2})  # evicts the query
        assert isinstance((await evicted.wait()).error, QueueFull), evicted.error
        assert evicted.at == pytest.approx(0.1)
        group.start_soon(expired.run, client.query("second", timeout=60))
        await anyio.sleep(6)
        # Expiry is noticed when the queue is next used: here, by a send.
        await client.send({"n": 3})
        await expired.wait()
        assert isinstance(expired.error, QueueFull)
        assert expired.at == pytest.approx(6.1)
        assert "ttl" in str(expired.error)
        stats = client.statistics().requests
        assert (stats.dropped, stats.lost, stats.pending) == (2, 0, 0)


async def test_transport_options_with_a_factory_are_refused() -> None:
    """headers=, subprotocols= or ssl= next to a transport factory is a mistake, said at once."""
    with pytest.raises(ValueError, match="headers given with a transport factory"):
        Client(Server(), headers={"Authorization": "Bearer x"})


async def test_without_reconnect_a_drop_closes_the_client_and_fails_what_waits() -> None:
    """reconnect=False: the first drop closes the client; what waits fails with the reason."""
    server = Server()
    client = make_client(server, backoff=None, reconnect=False)
    async with client, anyio.create_task_group() as group:
        outcome = Outcome()
        group.start_soon(outcome.run, client.query("slow"))
        sub = await client.subscribe("prices")
        await read(server.end)
        server.end.break_link()
        await outcome.wait()
        assert isinstance(outcome.error, ConnectionLost)
        assert client.state is C.CLOSED
        assert sub.state is S.FAILED  # ended by the failure, which iterating raises
        with pytest.raises(wsclient.ConnectionClosedError):
            await sub.receive()
        with pytest.raises(wsclient.ConnectionClosedError):
            await client.query("again")
        assert len(server.ends) == 1
