"""Tests of the reference Hub over real sockets, on asyncio and on trio.

The clients are websockets' sync clients driven from worker threads, so they
work the same whichever backend runs the test and whichever loop runs the Hub.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import orjson
import pytest
import sniffio
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from wsclient._cli import main
from wsclient.server import Hub, HubError, HubServer, HubStatistics, RequestContext

RECV_TIMEOUT = 5.0  # a bound, never a wait: every reply is expected sooner


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


class Client:
    """A websockets sync client driven from worker threads."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = iter(range(1, 1_000_000))

    async def send_json(self, message: Any) -> None:
        await self.send_raw(orjson.dumps(message).decode())

    async def send_raw(self, data: str | bytes) -> None:
        await anyio.to_thread.run_sync(self.ws.send, data)

    async def recv_json(self, timeout: float = RECV_TIMEOUT) -> Any:
        raw = await anyio.to_thread.run_sync(self.ws.recv, timeout)
        return orjson.loads(raw)

    async def request(
        self, type: str, payload: Any, *, request_id: Any = None, **extra: Any
    ) -> dict[str, Any]:
        """Send a request and return the next message, which must be its reply."""
        if request_id is None:
            request_id = next(self._ids)
        message = {
            "id": request_id,
            "type": type,
            "timestamp": int(time.time() * 1000),
            "payload": payload,
            **extra,
        }
        await self.send_json(message)
        reply: dict[str, Any] = await self.recv_json()
        assert reply["requestId"] == request_id
        return reply

    async def query(self, resource: str, parameters: Any = None, **extra: Any) -> dict[str, Any]:
        return await self.request(
            "query", {"resource": resource, "parameters": parameters}, **extra
        )

    async def command(self, action: str, parameters: Any = None) -> dict[str, Any]:
        return await self.request("command", {"action": action, "parameters": parameters})

    async def subscribe(self, channel: str) -> None:
        await self.send_json({"action": "subscribe", "channel": channel})
        assert await self.recv_json() == {
            "channel": "system",
            "data": {"type": "subscription_confirm", "channel": channel},
        }

    async def sync(self) -> None:
        """Round-trip a ping: everything sent before it has been handled."""
        await self.send_json({"type": "ping"})
        assert await self.recv_json() == {"type": "pong"}


def open_sync(url: str, **kwargs: Any) -> ClientConnection:
    # legacy=True: a connection object the test closes itself, outside a with block.
    # ping_interval=None: no keepalive thread, which would outlive close() briefly.
    return sync_connect(url, open_timeout=5, ping_interval=None, legacy=True, **kwargs)


@asynccontextmanager
async def connect(url: str, **kwargs: Any) -> AsyncIterator[Client]:
    ws = await anyio.to_thread.run_sync(lambda: open_sync(url, **kwargs))
    try:
        yield Client(ws)
    finally:
        await anyio.to_thread.run_sync(ws.close)


@asynccontextmanager
async def serve(hub: Hub | None = None) -> AsyncIterator[HubServer]:
    async with (hub or Hub()).serve() as server:
        yield server


def without_id(message: dict[str, Any]) -> dict[str, Any]:
    """A channel delivery without its unique ``id`` (tests/test_hub_redis.py checks those)."""
    return {name: value for name, value in message.items() if name != "id"}


def system_error(message: str, **extra: Any) -> dict[str, Any]:
    return {"channel": "system", "data": {"type": "error", "message": message}, **extra}


# Requests


@pytest.mark.anyio
async def test_echo_query_replies_with_parameters() -> None:
    """The built-in echo query replies with its parameters unchanged."""
    async with serve() as server, connect(server.url) as client:
        parameters = {"a": [1, 2.5, None, True], "b": {"c": "d"}}
        reply = await client.query("echo", parameters, request_id="req-1")
        assert reply["type"] == "response"
        assert reply["payload"] == parameters
        assert isinstance(reply["id"], int)
        assert "from" not in reply


@pytest.mark.anyio
async def test_time_query_replies_with_server_time() -> None:
    """The built-in time query replies with the server's unix time in seconds."""
    async with serve() as server, connect(server.url) as client:
        before = time.time()
        reply = await client.query("time")
        assert before - 1 <= reply["payload"]["time"] <= time.time() + 1


@pytest.mark.anyio
async def test_custom_query_and_command_handlers() -> None:
    """Handlers registered by name answer queries and commands with their return value."""
    hub = Hub()
    seen: list[tuple[str, str | None, Any]] = []

    @hub.on_query("greeting")
    async def greeting(parameters: Any, ctx: RequestContext) -> Any:
        seen.append((ctx.type, ctx.name, ctx.request_id))
        return {"hello": parameters["name"]}

    @hub.on_command("add")
    async def add(parameters: Any, ctx: RequestContext) -> Any:
        seen.append((ctx.type, ctx.name, ctx.request_id))
        return sum(parameters)

    async with serve(hub) as server, connect(server.url) as client:
        assert (await client.query("greeting", {"name": "Ada"}))["payload"] == {"hello": "Ada"}
        assert (await client.command("add", [1, 2, 3]))["payload"] == 6
    assert seen == [("query", "greeting", 1), ("command", "add", 2)]


@pytest.mark.anyio
async def test_unknown_resource_or_action_gets_error_reply() -> None:
    """A query or command nobody handles gets an error reply naming it."""
    async with serve() as server, connect(server.url) as client:
        reply = await client.query("nope")
        assert reply["type"] == "error"
        assert reply["error"] == "unknown resource: 'nope'"
        assert "payload" not in reply
        reply = await client.command("nope")
        assert reply["error"] == "unknown action: 'nope'"
        reply = await client.request("query", {"parameters": 1})
        assert reply["error"] == "query needs a 'resource' string"


@pytest.mark.anyio
async def test_handler_hub_error_sends_its_message() -> None:
    """A handler raising HubError gets an error reply with that message."""
    hub = Hub()

    @hub.on_command("withdraw")
    async def withdraw(parameters: Any, ctx: RequestContext) -> Any:
        raise HubError("insufficient funds")

    async with serve(hub) as server, connect(server.url) as client:
        reply = await client.command("withdraw", 100)
        assert reply == {
            "id": reply["id"],
            "type": "error",
            "requestId": 1,
            "error": "insufficient funds",
        }


@pytest.mark.anyio
async def test_handler_exception_gets_generic_error_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Any other handler exception is logged and answered with "internal error" only."""
    hub = Hub()

    @hub.on_query("broken")
    async def broken(parameters: Any, ctx: RequestContext) -> Any:
        raise RuntimeError("secret detail")

    @hub.on_query("unserialisable")
    async def unserialisable(parameters: Any, ctx: RequestContext) -> Any:
        return {"value": object()}

    caplog.set_level(logging.ERROR, logger="wsclient.server")
    async with serve(hub) as server, connect(server.url) as client:
        reply = await client.query("broken")
        assert reply["error"] == "internal error"
        assert "secret" not in orjson.dumps(reply).decode()
        reply = await client.query("unserialisable")
        assert reply["error"] == "internal error"
        await client.sync()
    assert any("secret detail" in (r.exc_text or "") for r in caplog.records)


@pytest.mark.anyio
async def test_auth_default_accepts_and_custom_handler_decides(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Default auth accepts any credentials, a custom one may refuse; neither is logged."""
    # websockets' own DEBUG frame logs show payloads; the Hub's loggers must not.
    caplog.set_level(logging.DEBUG, logger="wsclient")
    async with serve() as server, connect(server.url) as client:
        reply = await client.request("auth", {"token": "hunter2-default"})
        assert reply["payload"] == {"authenticated": True}

    hub = Hub()

    @hub.on_auth
    async def check(credentials: Any, ctx: RequestContext) -> Any:
        if credentials != {"token": "hunter2-good"}:
            raise HubError("bad credentials")
        ctx.state["user"] = "ada"
        return {"authenticated": True, "user": "ada"}

    @hub.on_query("whoami")
    async def whoami(parameters: Any, ctx: RequestContext) -> Any:
        return {"authenticated": ctx.authenticated, "user": ctx.state.get("user")}

    async with serve(hub) as server, connect(server.url) as client:
        reply = await client.request("auth", {"token": "hunter2-bad"})
        assert reply["error"] == "bad credentials"
        assert (await client.query("whoami"))["payload"] == {"authenticated": False, "user": None}
        reply = await client.request("auth", {"token": "hunter2-good"})
        assert reply["payload"] == {"authenticated": True, "user": "ada"}
        assert (await client.query("whoami"))["payload"] == {"authenticated": True, "user": "ada"}
    hub_logs = [r.getMessage() for r in caplog.records if r.name.startswith("wsclient")]
    assert hub_logs
    assert not [message for message in hub_logs if "hunter2" in message]


@pytest.mark.anyio
async def test_from_is_passed_through_to_replies() -> None:
    """A message's "from" value comes back on its reply, error reply, pong and system error."""
    async with serve() as server, connect(server.url) as client:
        reply = await client.query("echo", 1, **{"from": "tab-1"})
        assert reply["from"] == "tab-1"
        reply = await client.query("nope", **{"from": {"tab": 2}})
        assert reply["type"] == "error"
        assert reply["from"] == {"tab": 2}
        await client.send_json({"type": "ping", "from": "tab-3"})
        assert await client.recv_json() == {"type": "pong", "from": "tab-3"}
        await client.send_json({"type": "bogus", "from": "tab-4"})
        assert await client.recv_json() == system_error(
            "unknown type: 'bogus'", **{"from": "tab-4"}
        )


@pytest.mark.anyio
async def test_ping_is_answered_with_pong() -> None:
    """An application-level ping gets a pong."""
    async with serve() as server, connect(server.url) as client:
        await client.send_json({"type": "ping"})
        assert await client.recv_json() == {"type": "pong"}


@pytest.mark.anyio
async def test_requests_are_handled_concurrently() -> None:
    """A slow handler does not hold up later requests on the same connection."""
    hub = Hub()

    @hub.on_query("wait")
    async def wait(parameters: Any, ctx: RequestContext) -> Any:
        await ctx.state.setdefault("gate", anyio.Event()).wait()
        return "released"

    @hub.on_command("release")
    async def release(parameters: Any, ctx: RequestContext) -> Any:
        ctx.state["gate"].set()
        return "ok"

    async with serve(hub) as server, connect(server.url) as client:
        await client.send_json({"id": 1, "type": "query", "payload": {"resource": "wait"}})
        await client.sync()  # the wait query has started and holds the gate
        await client.send_json({"id": 2, "type": "command", "payload": {"action": "release"}})
        first, second = await client.recv_json(), await client.recv_json()
        assert (first["requestId"], first["payload"]) == (2, "ok")
        assert (second["requestId"], second["payload"]) == (1, "released")


@pytest.mark.anyio
async def test_event_handler_gets_data_and_no_reply_is_sent() -> None:
    """Events reach their handler with their data; unknown events are ignored silently."""
    hub = Hub()

    @hub.on_event("clicked")
    async def clicked(data: Any, ctx: RequestContext) -> None:
        await ctx.send({"seen": data, "event": ctx.name})

    async with serve(hub) as server, connect(server.url) as client:
        event = {"id": 7, "type": "event", "timestamp": 0}
        await client.send_json({**event, "payload": {"event": "unheard", "data": 1}})
        await client.send_json({**event, "payload": {"event": "clicked", "data": {"x": 3}}})
        assert await client.recv_json() == {"seen": {"x": 3}, "event": "clicked"}
        await client.sync()


# Channels


@pytest.mark.anyio
async def test_publish_fans_out_to_every_subscriber() -> None:
    """Subscribing is confirmed and a publish reaches every subscriber, publisher included."""
    async with (
        serve() as server,
        connect(server.url) as alice,
        connect(server.url) as bob,
        connect(server.url) as publisher,
    ):
        await alice.subscribe("news")
        await bob.subscribe("news")
        await publisher.send_json({"action": "publish", "channel": "news", "data": {"n": 1}})
        assert without_id(await alice.recv_json()) == {"channel": "news", "data": {"n": 1}}
        assert without_id(await bob.recv_json()) == {"channel": "news", "data": {"n": 1}}
        await publisher.sync()  # not subscribed: nothing came before the pong

        await publisher.subscribe("news")
        await publisher.send_json({"action": "publish", "channel": "news", "data": 2})
        for client in (alice, bob, publisher):
            assert without_id(await client.recv_json()) == {"channel": "news", "data": 2}
        assert await server.publish("news", "from the server") == 3
        assert without_id(await alice.recv_json()) == {"channel": "news", "data": "from the server"}


@pytest.mark.anyio
async def test_unsubscribe_stops_deliveries() -> None:
    """After unsubscribe, publishes on that channel no longer reach the connection."""
    async with serve() as server, connect(server.url) as alice, connect(server.url) as bob:
        await alice.subscribe("news")
        await alice.subscribe("marker")
        await alice.send_json({"action": "unsubscribe", "channel": "news"})
        await alice.sync()
        await bob.send_json({"action": "publish", "channel": "news", "data": "missed"})
        await bob.send_json({"action": "publish", "channel": "marker", "data": "next"})
        # bob's publishes are handled in order: had "news" been delivered, it would come first.
        assert without_id(await alice.recv_json()) == {"channel": "marker", "data": "next"}
        assert server.statistics().subscriptions == 1


@pytest.mark.anyio
async def test_subscription_limit_gives_system_error() -> None:
    """Subscribing past max_subscriptions is refused with a system error naming the channel."""
    async with serve(Hub(max_subscriptions=2)) as server, connect(server.url) as client:
        await client.subscribe("a")
        await client.subscribe("b")
        await client.subscribe("a")  # already subscribed: confirmed again, not counted
        await client.send_json({"action": "subscribe", "channel": "c"})
        refused = system_error("subscription limit reached (2)")
        refused["data"]["channel"] = "c"
        assert await client.recv_json() == refused
        await client.send_json({"action": "unsubscribe", "channel": "b"})
        await client.subscribe("c")


@pytest.mark.anyio
async def test_slow_subscriber_is_disconnected_without_blocking_others() -> None:
    """A subscriber that stops reading is closed as a slow consumer; others keep receiving."""
    hub = Hub(max_queued_messages=8, max_queued_bytes=256 * 1024, close_timeout=0.5)
    payload = "x" * 65536
    async with serve(hub) as server, connect(server.url) as fast, connect(server.url) as publisher:
        # max_queue=1: the client stops reading the socket once a frame is pending.
        async with connect(server.url, max_queue=1) as slow:
            await slow.subscribe("firehose")
            await fast.subscribe("firehose")
            for n in range(400):  # ~26 MB: far more than the socket buffers hold
                await publisher.send_json(
                    {"action": "publish", "channel": "firehose", "data": [n, payload]}
                )
                assert (await fast.recv_json())["data"][0] == n
                if server.statistics().slow_consumer_disconnects:
                    break
            assert server.statistics().slow_consumer_disconnects == 1
            with pytest.raises(ConnectionClosed) as exc_info:  # noqa: PT012
                while True:
                    await slow.recv_json()
            received = exc_info.value.rcvd
            assert received is None or received.code == 1013
        await fast.sync()


# Robustness


@pytest.mark.anyio
async def test_malformed_messages_get_system_errors_and_connection_survives() -> None:
    """Bad JSON, non-objects, unknown types or actions and missing fields get system errors."""
    cases: list[tuple[str, str]] = [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "message must be a JSON object"),
        ('"hello"', "message must be a JSON object"),
        ("{}", "message needs a 'type' or an 'action'"),
        ('{"type": "dance"}', "unknown type: 'dance'"),
        ('{"action": "dance", "channel": "c"}', "unknown action: 'dance'"),
        ('{"action": "subscribe"}', "subscribe needs a 'channel' string"),
        ('{"action": "publish", "channel": "c"}', "publish needs 'data'"),
        ('{"action": "subscribe", "channel": "system"}', "the 'system' channel is reserved"),
        (
            '{"type": "query", "payload": {"resource": "echo"}}',
            "query needs an 'id' (string or number)",
        ),
        ('{"type": "event", "payload": 3}', "event needs a payload with an 'event' string"),
    ]
    async with serve() as server, connect(server.url) as client:
        for raw, message in cases:
            await client.send_raw(raw)
            assert await client.recv_json() == system_error(message), raw
        assert (await client.query("echo", "still here"))["payload"] == "still here"
        assert server.statistics().errors == len(cases)


@pytest.mark.anyio
async def test_binary_frames_are_decoded_as_json() -> None:
    """A binary frame holding UTF-8 JSON is handled like a text frame."""
    async with serve() as server, connect(server.url) as client:
        await client.send_raw(
            b'{"id": 1, "type": "query", "payload": {"resource": "echo", "parameters": 5}}'
        )
        assert (await client.recv_json())["payload"] == 5
        await client.send_raw(b"\xff\xfe")
        assert await client.recv_json() == system_error("malformed JSON")


@pytest.mark.anyio
async def test_message_over_max_size_closes_with_1009() -> None:
    """A message larger than max_message_size closes the connection with code 1009."""
    async with serve(Hub(max_message_size=1024)) as server, connect(server.url) as client:
        await client.send_json(
            {"type": "query", "id": 1, "payload": {"resource": "echo", "parameters": "x" * 2000}}
        )
        with pytest.raises(ConnectionClosed) as exc_info:
            await client.recv_json()
        assert exc_info.value.rcvd is not None
        assert exc_info.value.rcvd.code == 1009


@pytest.mark.anyio
async def test_statistics_count_traffic() -> None:
    """statistics() counts connections, messages, requests, errors and subscriptions."""
    async with serve() as server:
        assert server.statistics() == HubStatistics(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        async with connect(server.url) as client:
            await client.subscribe("news")  # 1 in, 1 out
            await client.query("echo", 1)  # 1 in, 1 out, 1 request
            await client.query("nope")  # 1 in, 1 out, 1 request, 1 error
            await client.send_json({"action": "publish", "channel": "news", "data": 1})
            await client.recv_json()  # 1 in, 1 out
            stats = server.statistics()
            assert stats == HubStatistics(
                connections_open=1,
                connections_total=1,
                messages_received=4,
                messages_sent=4,
                requests=2,
                errors=1,
                subscriptions=1,
                channels=1,
                publishes=1,
                deliveries=1,
                slow_consumer_disconnects=0,
            )
            assert repr(server) == (
                f"<HubServer url='ws://127.0.0.1:{server.port}/' connections_open=1 "
                "connections_total=1 subscriptions=1 messages_received=4 messages_sent=4 errors=1>"
            )
        await server.close_connections()  # returns once the server saw the close
        stats = server.statistics()
        assert (stats.connections_open, stats.subscriptions, stats.channels) == (0, 0, 0)


@pytest.mark.anyio
async def test_close_connections_sends_close_frame_and_keeps_listening() -> None:
    """close_connections() closes clients with the given code and accepts new ones."""
    async with serve() as server:
        async with connect(server.url) as client:
            await client.sync()
            await server.close_connections(4000, "maintenance")
            with pytest.raises(ConnectionClosed) as exc_info:
                await client.recv_json()
            assert exc_info.value.rcvd is not None
            assert (exc_info.value.rcvd.code, exc_info.value.rcvd.reason) == (4000, "maintenance")
        async with connect(server.url) as client:
            await client.sync()
        assert server.statistics().connections_total == 2


@pytest.mark.anyio
async def test_abort_connections_drops_tcp_without_close_frame() -> None:
    """abort_connections() kills client connections with no close frame, like a dead server."""
    async with serve() as server:
        async with connect(server.url) as client:
            await client.sync()
            await server.abort_connections()
            with pytest.raises(ConnectionClosedError) as exc_info:
                await client.recv_json()
            assert exc_info.value.rcvd is None
        assert server.statistics().connections_open == 0
        async with connect(server.url) as client:
            await client.sync()


@pytest.mark.anyio
async def test_serve_exit_leaves_no_threads_or_tasks() -> None:
    """Leaving serve() stops the server, its connections and its loop thread."""
    await anyio.to_thread.run_sync(lambda: None)  # start the worker thread the clients reuse
    threads_before = threading.active_count()
    tasks_before = _asyncio_tasks()
    async with serve() as server:
        assert server.url == f"ws://127.0.0.1:{server.port}/"
        assert server.port != 0
        client = await anyio.to_thread.run_sync(lambda: open_sync(server.url))
        await anyio.to_thread.run_sync(client.send, '{"type": "ping"}')
        assert orjson.loads(await anyio.to_thread.run_sync(client.recv, RECV_TIMEOUT)) == {
            "type": "pong"
        }
    # The server closed the client on exit.
    with pytest.raises(ConnectionClosed):
        await anyio.to_thread.run_sync(client.recv, RECV_TIMEOUT)
    client.close()
    assert threading.active_count() == threads_before
    assert not [t for t in threading.enumerate() if t.name == "wsclient-hub"]
    assert _asyncio_tasks() == tasks_before


def _asyncio_tasks() -> set[asyncio.Task[Any]]:
    if sniffio.current_async_library() != "asyncio":
        return set()
    return asyncio.all_tasks()


@pytest.mark.anyio
async def test_serve_in_thread_from_any_backend() -> None:
    """serve(in_thread=True) runs the Hub on a loop thread from any backend."""
    async with Hub().serve(in_thread=True) as server, connect(server.url) as client:
        assert (await client.query("echo", "hop"))["payload"] == "hop"
        assert [t for t in threading.enumerate() if t.name == "wsclient-hub"]
        await server.close_connections()
        with pytest.raises(ConnectionClosed):
            await client.recv_json()


def test_hub_rejects_unsafe_limits() -> None:
    """Limits below 1 are refused when the Hub is built."""
    with pytest.raises(ValueError, match="max_subscriptions"):
        Hub(max_subscriptions=0)
    with pytest.raises(ValueError, match="close_timeout"):
        Hub(close_timeout=0)


# CLI


def test_cli_without_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`wsclient` with no command prints the usage to stderr and exits with 2."""
    assert main([]) == 2
    assert "serve" in capsys.readouterr().err


@pytest.mark.anyio
async def test_cli_serve_runs_until_ctrl_c() -> None:
    """`wsclient serve` logs its URL, serves, and exits 0 without a traceback on Ctrl-C."""
    # Restore the default SIGINT handler: a child started from a background job inherits "ignore".
    code = (
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from wsclient._cli import main; raise SystemExit(main(['serve', '--port', '0']))"
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    async with await anyio.open_process([sys.executable, "-c", code], env=env) as process:
        assert process.stderr is not None
        stderr = b""
        with anyio.fail_after(10):
            while b"serving on " not in stderr:
                stderr += await process.stderr.receive()
        line = stderr.decode().split("serving on ", 1)[1].split()[0]
        assert line.startswith("ws://127.0.0.1:")
        async with connect(line + "/") as client:
            assert (await client.query("echo", "cli"))["payload"] == "cli"
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(10):
            returncode = await process.wait()
            async for chunk in process.stderr:
                stderr += chunk
    assert returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr


def test_cli_serve_on_a_taken_port_says_so_and_exits_1() -> None:
    """`wsclient serve` on a port in use prints why on one line, no traceback, and exits 1."""
    import socket
    import subprocess

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "wsclient", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: " in result.stderr
    assert "address already in use" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.anyio
@pytest.mark.parametrize("stuck", ["auth", "limiter"])
async def test_shutdown_is_bounded_when_a_handler_never_returns(stuck: str) -> None:
    """Leaving serve() finishes even while an auth handler or every request slot hangs."""
    hub = Hub(close_timeout=0.2, max_concurrent_requests=1)

    @hub.on_auth
    async def never_authenticates(credentials: Any, ctx: RequestContext) -> Any:
        await anyio.sleep_forever()

    @hub.on_query("forever")
    async def forever(parameters: Any, ctx: RequestContext) -> Any:
        await anyio.sleep_forever()

    with anyio.fail_after(10):
        async with serve(hub) as server, connect(server.url) as client:
            if stuck == "auth":
                await client.send_json({"id": 1, "type": "auth", "payload": {"token": "x"}})
            else:  # the first request holds the only slot; the second blocks the reader
                for request_id in (1, 2):
                    await client.send_json(
                        {"id": request_id, "type": "query", "payload": {"resource": "forever"}}
                    )
            await client.send_json({"type": "ping"})


@pytest.mark.anyio
async def test_unhashable_type_gets_system_error() -> None:
    """A JSON array or object as "type" is an unknown type, not a crash."""
    async with serve() as server, connect(server.url) as client:
        await client.send_json({"type": ["query"]})
        assert (await client.recv_json())["data"]["type"] == "error"
        await client.send_json({"type": {"a": 1}})
        assert (await client.recv_json())["data"]["type"] == "error"
        await client.send_json({"type": "ping"})
        assert await client.recv_json() == {"type": "pong"}


@pytest.mark.anyio
@pytest.mark.parametrize("field", ["type", "action"])
async def test_a_value_nested_1000_deep_gets_an_error_not_a_crash(field: str) -> None:
    """A client's "type" or "action" nested 1,000 levels deep is quoted, bounded, not a crash."""
    deep = "[" * 1000 + "]" * 1000  # written by hand: orjson writes at most 254 levels
    message = {
        "type": '{"type": %s}',
        "action": '{"action": %s, "channel": "news"}',
    }[field] % deep
    async with serve() as server, connect(server.url) as client:
        await client.send_raw(message)
        answer = await client.recv_json()
        text = answer.get("error") or answer["data"]["message"]
        assert text.startswith("unknown ")
        assert len(text) < 120
        await client.send_json({"type": "ping"})
        assert await client.recv_json() == {"type": "pong"}


@pytest.mark.anyio
@pytest.mark.parametrize("backlog", [None, 4096])
async def test_listen_backlog_is_long_enough_for_bursts(
    backlog: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Hub listens with a backlog of 1024 by default (asyncio has 100), or the one given."""
    import wsclient.server._hub as hub_module

    seen: list[int] = []
    real_serve = hub_module.serve

    def recording_serve(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["backlog"])
        return real_serve(*args, **kwargs)

    monkeypatch.setattr(hub_module, "serve", recording_serve)
    options = {} if backlog is None else {"backlog": backlog}
    async with Hub().serve(**options) as server:
        assert server.port > 0
    assert seen == [backlog or 1024]
