"""Tests of the relay: one upstream connection shared by many local processes.

In-process tests run a ``Relay`` in the test's task group on a Unix socket in
a short temporary directory, with a reference Hub on 127.0.0.1 as the
upstream. The start-on-demand tests let ``connect(url, relay=path)`` spawn the
real detached relay (``python -m wsclient relay``), with a short idle timeout
passed through ``$WSCLIENT_RELAY_IDLE_TIMEOUT``, and wait for that process to
exit through a pidfd. Every wait is bounded; none sleeps to let something happen.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from websockets.datastructures import Headers

import wsclient
from wsclient import (
    Backoff,
    ConnectError,
    ConnectionClosed,
    ConnectionState,
    InvalidState,
    JsonRpcDialect,
    RemoteError,
    connect_transport,
)
from wsclient._cli import main
from wsclient._relay import Relay, RelayState, _read_spec, _Refused
from wsclient._relay_client import (
    default_socket_path,
    encode_spec,
    is_relay_url,
    prepare_private_dir,
    relay_answers,
    start_relay,
    upstream_url,
)
from wsclient.server import Hub, RequestContext

from .servers import closed_port, running_server

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
FAST = Backoff(initial=0.02, maximum=0.1)
IDLE = 0.3  # the relays' idle timeout in these tests
BOUND = 20.0  # a bound on waits, never a wait


@pytest.fixture
def socket_dir() -> Iterator[str]:
    """A short private directory: a Unix socket path must fit in 107 bytes."""
    directory = tempfile.mkdtemp(prefix="wsr", dir="/tmp")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def path(socket_dir: str) -> str:
    return os.path.join(socket_dir, "relay.sock")


@pytest.fixture
def spawn_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of spawned relays and processes: short idle timeout, this checkout."""
    monkeypatch.setenv("WSCLIENT_RELAY_IDLE_TIMEOUT", str(IDLE))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    return dict(os.environ)


@contextlib.asynccontextmanager
async def relay_on(path: str, **options: Any) -> AsyncIterator[Relay]:
    options.setdefault("idle_timeout", IDLE)
    options.setdefault("backoff", FAST)
    async with Relay(path, **options).serve() as relay:
        yield relay


def relayed(url: str, path: str, **options: Any) -> wsclient.Client:
    options.setdefault("backoff", FAST)
    return wsclient.connect(url, relay=path, **options)


async def wait_for_exit(pid: int) -> None:
    """Return once process ``pid`` (not our child) has exited: its pidfd turns readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already gone
    try:
        with anyio.fail_after(BOUND):
            if hasattr(anyio, "wait_readable"):
                await anyio.wait_readable(fd)
            else:  # anyio < 4.7
                await anyio.to_thread.run_sync(select.select, [fd], [], [], BOUND)
    finally:
        os.close(fd)


def relay_pid(path: str) -> int:
    return int(Path(f"{path}.lock").read_text())


def relay_processes(path: str) -> list[int]:
    """The pids of live processes whose command line runs a relay on ``path``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"relay" in argv and os.fsencode(path) in argv:
            found.append(int(entry))
    return found


needs_pidfd = pytest.mark.skipif(
    not hasattr(os, "pidfd_open") or not os.path.isdir("/proc"), reason="Linux pidfd and /proc"
)


# The must-show test: 8 processes, one upstream connection

PROCESS = """
import json, sys
import wsclient.sync

url, path, index, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with wsclient.sync.connect(url, relay=path, open_timeout=10) as client:
    with client.subscribe("news", timeout=20) as news:
        news.confirmed(timeout=10)
        replies = [client.query("echo", {"process": index, "i": i}) for i in range(count)]
        own = replies == [{"process": index, "i": i} for i in range(count)]
        print(json.dumps({"ready": index, "own_replies": own}), flush=True)
        broadcast = news.receive()
    stray = client.statistics().messages.received  # replies of others would land here
    print(json.dumps({"broadcast": broadcast, "stray": stray}), flush=True)
"""


@needs_pidfd
async def test_eight_processes_share_one_upstream_connection(
    anyio_backend: str, socket_dir: str, path: str, spawn_env: dict[str, str]
) -> None:
    """8 processes share one upstream socket: own replies, all broadcasts, relay exits after."""
    script = Path(socket_dir, "process.py")
    script.write_text(PROCESS)
    count = 20
    async with Hub().serve() as server, contextlib.AsyncExitStack() as stack:
        processes = [
            await stack.enter_async_context(
                await anyio.open_process(
                    [sys.executable, str(script), server.url, path, str(i), str(count)],
                    env=spawn_env,
                )
            )
            for i in range(8)
        ]
        lines = []
        for process in processes:
            assert process.stdout is not None
            lines.append(BufferedByteReceiveStream(process.stdout))
        with anyio.fail_after(BOUND):
            for index, stream in enumerate(lines):
                ready = json.loads(await stream.receive_until(b"\n", 65536))
                assert ready == {"ready": index, "own_replies": True}
            stats = server.statistics()
            assert (stats.connections_open, stats.connections_total) == (1, 1)
            assert stats.subscriptions == 1  # the locals share one upstream subscription
            assert await server.publish("news", {"to": "everyone"}) == 1
            for stream in lines:
                done = json.loads(await stream.receive_until(b"\n", 65536))
                assert done == {"broadcast": {"to": "everyone"}, "stray": 0}
            for process in processes:
                assert await process.wait() == 0
            pid = relay_pid(path)
            await wait_for_exit(pid)  # idle for IDLE seconds after the last one left
        assert server.statistics().connections_total == 1
        assert not os.path.exists(path)


# Routing


def make_hub() -> Hub:
    hub = Hub()

    @hub.on_event("hello")
    async def hello(data: Any, ctx: RequestContext) -> None:
        await ctx.send({"type": "greeting", "data": data, "from": ctx.origin})

    @hub.on_command("announce")
    async def announce(parameters: Any, ctx: RequestContext) -> Any:
        await ctx.send({"type": "announcement", "text": parameters})  # no "from": for all
        return "announced"

    return hub


async def test_replies_and_addressed_messages_go_to_the_local_that_asked(
    anyio_backend: str, path: str
) -> None:
    """Replies and addressed messages reach the local that asked; the rest reach all."""
    async with (
        make_hub().serve() as server,
        relay_on(path) as relay,
        relayed(server.url, path) as a,
        relayed(server.url, path) as b,
    ):
        results: dict[str, dict[int, Any]] = {"a": {}, "b": {}}

        async def ask(name: str, client: wsclient.Client, i: int) -> None:
            results[name][i] = await client.query("echo", [name, i])

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:  # 60 requests in flight at once
                for i in range(30):
                    tg.start_soon(ask, "a", a, i)
                    tg.start_soon(ask, "b", b, i)
        assert results == {n: {i: [n, i] for i in range(30)} for n in ("a", "b")}

        async with a.session("orders") as orders:
            await orders.publish_event("hello", 1)
            with anyio.fail_after(BOUND):
                greeting = await orders.receive()
            assert greeting == {"type": "greeting", "data": 1, "from": "orders"}
            assert await a.command("announce", "noon") == "announced"
            with anyio.fail_after(BOUND):
                for endpoint in (a, b, orders):
                    assert await endpoint.receive() == {
                        "type": "announcement",
                        "text": "noon",
                    }
        # The greeting went to the session alone: a and b had the announcement only.
        assert a.statistics().messages.received == 1
        assert b.statistics().messages.received == 1
        with pytest.raises(RemoteError, match="unknown resource"):
            await b.query("nothing")
        assert server.statistics().connections_total == 1
        assert relay.statistics().requests == 62


async def test_free_form_messages_with_an_id_go_upstream_whole(
    anyio_backend: str, path: str
) -> None:
    """A free-form message with a type and an id is passed on whole, not taken for a request."""
    async with (
        running_server() as server,  # echoes every message
        relay_on(path) as relay,
        relayed(server.url, path, heartbeat=None) as client,
    ):
        message = {"type": "chat", "id": 7, "text": "hi"}
        await client.send(message)
        with anyio.fail_after(BOUND):
            assert await client.receive() == message  # the relay's "from" taken off again
        assert relay.statistics().requests == 0


async def test_locals_share_one_upstream_subscription(anyio_backend: str, path: str) -> None:
    """Locals on one channel share one server subscription until the last one leaves."""
    async with (
        Hub().serve() as server,
        relay_on(path),
        relayed(server.url, path) as a,
        relayed(server.url, path) as b,
        relayed(server.url, path) as c,
    ):
        subs = [await client.subscribe("news") for client in (a, b, c)]
        with anyio.fail_after(BOUND):
            for sub in subs:
                await sub.confirmed()
        assert server.statistics().subscriptions == 1
        assert await server.publish("news", "from the server") == 1
        await b.publish("news", "from b")
        with anyio.fail_after(BOUND):
            for sub in subs:
                assert [await sub.receive(), await sub.receive()] == [
                    "from the server",
                    "from b",
                ]
        await subs[0].aclose()
        await a.query("echo", 1)  # the server has read what a's relay session sent before
        assert server.statistics().subscriptions == 1
        await subs[1].aclose()
        await subs[2].aclose()
        await c.query("echo", 1)
        assert server.statistics().subscriptions == 0


async def test_deliveries_keep_the_servers_delivery_id(anyio_backend: str, path: str) -> None:
    """The Hub's delivery ids reach each local, one per publish, even for equal data."""
    async with (
        Hub().serve() as server,
        relay_on(path),
        relayed(server.url, path) as a,
        relayed(server.url, path) as b,
    ):
        seen: dict[str, list[Any]] = {"a": [], "b": []}
        for name, client in (("a", a), ("b", b)):
            client.on_message(
                lambda message, name=name: (
                    seen[name].append(message.get("id"))
                    if isinstance(message, dict) and message.get("channel") == "ticks"
                    else None
                )
            )
        subs = [await client.subscribe("ticks") for client in (a, b)]
        with anyio.fail_after(BOUND):
            for sub in subs:
                await sub.confirmed()
        await server.publish("ticks", 1)
        await server.publish("ticks", 1)  # the same small int object: must not share an id
        with anyio.fail_after(BOUND):
            for sub in subs:
                assert [await sub.receive(), await sub.receive()] == [1, 1]
        assert seen["a"] == seen["b"]
        assert len(set(seen["a"])) == 2
        assert all(isinstance(delivery_id, str) for delivery_id in seen["a"])


async def test_locals_follow_the_upstream_state_across_a_server_restart(
    anyio_backend: str, path: str
) -> None:
    """Locals go RECONNECTING and back OPEN with the upstream; late joiners get 503."""
    async with relay_on(path) as relay, contextlib.AsyncExitStack() as stack:
        async with Hub().serve() as first:
            port = first.port
            a = await stack.enter_async_context(relayed(first.url, path))
            b = await stack.enter_async_context(relayed(first.url, path))
            changes: list[tuple[ConnectionState, BaseException | None]] = []
            a.on_state(lambda change: changes.append((change.state, change.error)))
            news = await b.subscribe("news")
            with anyio.fail_after(BOUND):
                await news.confirmed()
        with anyio.fail_after(BOUND):
            await a.wait_state(ConnectionState.RECONNECTING)
            await b.wait_state(ConnectionState.RECONNECTING)
        error = changes[0][1]
        assert isinstance(error, ConnectionClosed)
        assert error.code == 1012
        assert "upstream connection was lost" in error.reason
        with pytest.raises(ConnectError) as refused:
            async with relayed(first.url, path, open_timeout=0.5):
                pass
        assert refused.value.status == 503
        assert "is not open yet" in str(refused.value)
        async with Hub().serve(port=port) as second:
            with anyio.fail_after(BOUND):
                await a.wait_state(ConnectionState.OPEN)
                await b.wait_state(ConnectionState.OPEN)
                await news.confirmed()
            assert await second.publish("news", "back") == 1
            with anyio.fail_after(BOUND):
                assert await news.receive() == "back"
            assert await a.query("echo", "a") == "a"
            assert second.statistics().connections_total == 1
            assert [state for state, _ in changes][-1] is ConnectionState.OPEN
            await stack.aclose()
        assert relay.statistics().upstreams_opened == 1


async def test_requests_in_flight_when_the_upstream_drops_follow_their_policy(
    anyio_backend: str, path: str
) -> None:
    """Requests in flight at an upstream drop are lost or resent as their policy says."""
    hub = Hub()
    stalled = threading.Event()
    calls = {"first": 0}

    @hub.on_query("first-stalls")
    async def first_stalls(parameters: Any, ctx: RequestContext) -> Any:
        calls["first"] += 1
        if calls["first"] == 2:
            stalled.set()  # both requests reached the server
        if calls["first"] <= 2:
            await anyio.sleep_forever()
        return parameters

    async with (
        hub.serve(in_thread=True) as server,
        relay_on(path),
        relayed(server.url, path) as client,
    ):
        outcome: dict[str, Any] = {}

        async def ask(policy: Any) -> None:
            try:
                outcome[policy] = await client.query("first-stalls", policy, in_flight=policy)
            except wsclient.ConnectionLost:
                outcome[policy] = "lost"

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ask, "fail")
                tg.start_soon(ask, "resend")
                assert await anyio.to_thread.run_sync(stalled.wait, BOUND)
                await server.close_connections(1012)
        assert outcome == {"fail": "lost", "resend": "resend"}
        assert client.statistics().requests.resent == 1


async def test_different_credentials_never_share_an_upstream(anyio_backend: str, path: str) -> None:
    """Locals asking for the same handshake share an upstream; other headers get their own."""
    async with Hub().serve() as server, relay_on(path) as relay:
        alice = {"Authorization": "Bearer alice-token"}
        bob = {"Authorization": "Bearer bob-token"}
        async with (
            relayed(server.url, path, headers=alice) as a1,
            relayed(server.url, path, headers=alice) as a2,
            relayed(server.url, path, headers=bob) as b1,
        ):
            for client in (a1, a2, b1):
                assert await client.query("echo", 1) == 1
            assert server.statistics().connections_total == 2
            assert [up.locals for up in relay.statistics().upstreams] == [2, 1]


async def test_an_upstream_closing_for_idleness_takes_no_new_local(
    anyio_backend: str, path: str
) -> None:
    """From the moment the relay closes an unused upstream, a new local gets a new one."""
    async with Hub().serve() as server, relay_on(path) as relay:
        usable_after_idle: list[bool] = []
        linger = relay._upstream_linger

        async def observed(upstream: Any) -> None:
            await linger(upstream)
            usable_after_idle.append(upstream.usable)

        relay._upstream_linger = observed  # type: ignore[method-assign]
        # Another upstream's local keeps the relay itself from stopping.
        async with relayed(server.url, path, headers={"X-Other": "1"}) as other:
            async with relayed(server.url, path) as client:
                assert await client.query("echo", 1) == 1
            with anyio.fail_after(BOUND):
                while not usable_after_idle:
                    await anyio.sleep(0.01)
            assert usable_after_idle == [False]
            assert await other.query("echo", 2) == 2


async def test_the_upstream_subprotocol_is_the_locals(anyio_backend: str, path: str) -> None:
    """The subprotocol the upstream server chose is the one the local client sees."""
    async with (
        running_server(subprotocols=["chat.v2"]) as server,
        relay_on(path),
        relayed(server.url, path, subprotocols=["chat.v1", "chat.v2"], heartbeat=None) as client,
    ):
        live = client.transport.transport
        assert isinstance(live, wsclient.WebSocketTransport)
        assert live.subprotocol == "chat.v2"


# Starting on demand


@needs_pidfd
async def test_two_starters_at_once_end_with_one_relay(
    anyio_backend: str, path: str, spawn_env: dict[str, str]
) -> None:
    """Two clients starting the relay at once share one relay and one upstream."""
    async with Hub().serve() as server:
        clients: list[wsclient.Client] = []
        joined = [anyio.Event(), anyio.Event()]
        leave = anyio.Event()

        async def join(index: int) -> None:
            async with relayed(server.url, path) as client:
                clients.append(client)
                joined[index].set()
                await leave.wait()

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                tg.start_soon(join, 0)
                tg.start_soon(join, 1)
                try:
                    for event in joined:
                        await event.wait()
                    assert relay_processes(path) == [relay_pid(path)]
                    for client in clients:
                        assert await client.query("echo", "x") == "x"
                    assert server.statistics().connections_total == 1
                finally:
                    leave.set()
            await wait_for_exit(relay_pid(path))
    assert not await relay_answers(path)


@needs_pidfd
async def test_a_stale_socket_is_replaced_by_a_new_relay(
    anyio_backend: str, path: str, spawn_env: dict[str, str]
) -> None:
    """A crashed relay's socket file is replaced by the relay a client starts."""
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays; nothing listens
    assert not await relay_answers(path)
    async with Hub().serve() as server:
        with anyio.fail_after(BOUND):
            async with relayed(server.url, path) as client:
                assert await client.query("echo", "fresh") == "fresh"
                assert client.name.endswith(f"via relay {path}")
        await wait_for_exit(relay_pid(path))


@needs_pidfd
async def test_start_relay_returns_at_once_when_one_answers(anyio_backend: str, path: str) -> None:
    """start_relay() finds a relay that answers and starts nothing."""
    async with relay_on(path):
        with anyio.fail_after(BOUND):
            await start_relay(path)
        assert relay_processes(path) == []


async def test_a_second_relay_on_the_same_path_is_refused(anyio_backend: str, path: str) -> None:
    """Only one relay serves a path: another says which process holds it."""
    async with relay_on(path):
        with pytest.raises(InvalidState, match=rf"another relay \(pid {os.getpid()}\) serves"):
            await Relay(path, lock_timeout=1).run()


async def test_a_file_that_is_not_a_socket_is_left_alone(anyio_backend: str, path: str) -> None:
    """The relay removes stale sockets only: a regular file in the way is an error."""
    Path(path).write_text("mine")
    relay = Relay(path)
    with pytest.raises(OSError, match="is not a socket"):
        await relay.run()
    assert Path(path).read_text() == "mine"
    assert relay.state is RelayState.STOPPED


async def test_lock_files_that_are_links_are_not_followed(
    anyio_backend: str, socket_dir: str, path: str, spawn_env: dict[str, str]
) -> None:
    """A link planted at PATH.lock or PATH.start is refused; what it points to is left alone."""
    precious = Path(socket_dir, "precious")
    precious.write_text("mine")
    os.symlink(precious, f"{path}.lock")
    relay = Relay(path)
    with pytest.raises(OSError, match="symbolic links"):
        await relay.run()
    assert relay.state is RelayState.STOPPED
    assert precious.read_text() == "mine"  # not truncated to hold a pid
    os.unlink(f"{path}.lock")
    planted = Path(socket_dir, "planted")
    os.symlink(planted, f"{path}.start")
    with anyio.fail_after(BOUND), pytest.raises(ConnectError, match="symbolic links"):
        await start_relay(path)
    assert not planted.exists()  # not created through the link
    assert not os.path.exists(path)


async def test_the_relay_stops_after_its_idle_timeout(anyio_backend: str, path: str) -> None:
    """A private socket; once idle the relay stops, closes upstreams and frees the path."""
    async with Hub().serve() as server:
        relay = Relay(path, idle_timeout=IDLE, backoff=FAST)
        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                await tg.start(relay.run)
                async with relayed(server.url, path) as client:
                    assert await client.query("echo", 1) == 1
                    assert relay.state is RelayState.SERVING
                    assert len(relay.statistics().upstreams) == 1
                    for mine_only in (path, f"{path}.lock"):  # this user's alone
                        assert stat.S_IMODE(os.stat(mine_only).st_mode) == 0o600
            # The task group ended: run() returned on its own.
        assert relay.state is RelayState.STOPPED
        assert relay.statistics().upstreams == ()
        assert not os.path.exists(path)
        async with relay_on(path):  # the lock was released
            assert await relay_answers(path)
        with pytest.raises(InvalidState, match="runs only once"):
            await relay.run()


# Slow consumers


async def test_a_slow_local_is_closed_without_holding_up_the_others(
    anyio_backend: str, path: str
) -> None:
    """A local that stops reading is closed with 1013; the others get every delivery."""
    async with Hub().serve() as server, relay_on(path, max_queued_messages=4) as relay:
        spec = encode_spec(
            server.url,
            [],
            subprotocols=None,
            compression=None,
            max_size=2**20,
            open_timeout=10.0,
            allow_insecure_credentials=False,
        )
        # A raw local that reads nothing (max_queue=1: its socket stops being read).
        slow = await connect_transport(
            "ws://localhost/", headers=spec, unix_socket=path, max_queue=1, compression=None
        )
        async with slow, relayed(server.url, path) as fast:
            await slow.send(json.dumps({"action": "subscribe", "channel": "big"}))
            confirm = json.loads(await slow.receive())
            assert confirm["data"] == {"type": "subscription_confirm", "channel": "big"}
            sub = await fast.subscribe("big")
            with anyio.fail_after(BOUND):
                await sub.confirmed()
            chunk = "x" * 65536
            with anyio.fail_after(BOUND):
                for i in range(500):
                    await server.publish("big", [i, chunk])
                    assert await sub.receive() == [i, chunk]  # never held up
                    if relay.statistics().slow_consumer_disconnects:
                        break
            assert relay.statistics().slow_consumer_disconnects == 1
            with anyio.fail_after(BOUND), pytest.raises(ConnectionClosed) as closed:
                await read_until_closed(slow)
            assert closed.value.code == 1013
            assert "slow consumer" in closed.value.reason
            assert await fast.query("echo", "still here") == "still here"


async def test_a_local_that_reads_nothing_is_cut_off_and_the_relay_stops(
    anyio_backend: str, path: str
) -> None:
    """A slow local that never reads again is cut off after close_timeout: stopping ends."""
    async with Hub().serve() as server:
        relay = Relay(path, idle_timeout=None, max_queued_messages=4, close_timeout=0.5)
        spec = encode_spec(
            server.url,
            [],
            subprotocols=None,
            compression=None,
            max_size=2**20,
            open_timeout=10.0,
            allow_insecure_credentials=False,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(relay.run)
            # It stops reading for good: the relay's writes to it block on a full socket.
            slow = await connect_transport(
                "ws://localhost/", headers=spec, unix_socket=path, max_queue=1, compression=None
            )
            async with slow:
                await slow.send(json.dumps({"action": "subscribe", "channel": "big"}))
                await slow.receive()  # the confirmation
                async with relayed(server.url, path) as fast:
                    sub = await fast.subscribe("big")
                    chunk = "x" * 65536
                    with anyio.fail_after(BOUND):
                        await sub.confirmed()
                        for i in range(500):
                            await server.publish("big", [i, chunk])
                            assert await sub.receive() == [i, chunk]
                            if relay.statistics().slow_consumer_disconnects:
                                break
                    assert relay.statistics().slow_consumer_disconnects == 1
                relay.close()
                with anyio.fail_after(5):  # close_timeout is 0.5 s
                    while relay.state is not RelayState.STOPPED:
                        await anyio.sleep(0.01)
        assert relay.statistics().locals_open == 0


async def read_until_closed(transport: wsclient.Transport) -> None:
    while True:
        await transport.receive()


# Refusals


async def test_a_handshake_without_an_upstream_is_refused(anyio_backend: str, path: str) -> None:
    """A WebSocket client that names no upstream is refused with 400 and a reason."""
    async with relay_on(path) as relay:
        with pytest.raises(ConnectError) as refused:
            await connect_transport("ws://localhost/", unix_socket=path)
        assert refused.value.status == 400
        body = refused.value.__cause__.response.body  # type: ignore[union-attr]
        assert b"not a relay handshake" in body
        stream = await anyio.connect_unix(path)  # not even HTTP
        async with stream:
            await stream.send(b"\x00\x01 nonsense\r\n\r\n")
            with anyio.fail_after(BOUND):
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    while True:
                        await stream.receive()
        assert relay.statistics().handshakes_refused == 1
        assert relay.state is RelayState.SERVING


async def test_an_unreachable_upstream_is_refused_with_the_reason(
    anyio_backend: str, path: str
) -> None:
    """A local asking for an upstream that cannot be reached gets a 502 saying why."""
    url = f"ws://127.0.0.1:{closed_port()}/"
    async with relay_on(path) as relay:
        with pytest.raises(ConnectError) as refused:
            async with relayed(url, path):
                pass
        assert refused.value.status == 502
        message = str(refused.value)
        assert message.startswith(f"relay {path}: upstream {url} could not be opened")
        assert "connection refused" in message
        assert relay.statistics().upstreams == ()


def test_invalid_specs_are_refused() -> None:
    """A spec that is missing, not JSON, or holds values of the wrong type is refused with 400."""
    good = dict(
        encode_spec(
            "ws://h/",
            [("A", "b")],
            subprotocols=["p"],
            compression="deflate",
            max_size=10,
            open_timeout=1.0,
            allow_insecure_credentials=False,
        )
    )
    assert _read_spec(Headers(good)).url == "ws://h/"
    for headers, problem in [
        ({}, "not a relay handshake"),
        ({"Wsclient-Relay-0": "{nope"}, "not JSON"),
        ({"Wsclient-Relay-0": '{"v": 99}'}, "version"),
        (
            {"Wsclient-Relay-0": good["Wsclient-Relay-0"].replace('"max_size":10', '"max_size":0')},
            "bad max_size",
        ),
        (
            {"Wsclient-Relay-0": good["Wsclient-Relay-0"].replace('[["A","b"]]', '"A: b"')},
            "bad headers",
        ),
    ]:
        with pytest.raises(_Refused, match=problem) as refused:
            _read_spec(Headers(headers))
        assert refused.value.status == 400


def test_large_specs_are_cut_into_headers_and_joined() -> None:
    """Headers too large for one line travel in numbered chunks and are joined back."""
    token = "t" * 10_000
    spec = encode_spec(
        "ws://h/",
        [("Cookie", token)],
        subprotocols=None,
        compression=None,
        max_size=None,
        open_timeout=None,
        allow_insecure_credentials=False,
    )
    assert len(spec) == 3
    assert _read_spec(Headers(spec)).headers == (("Cookie", token),)


# Secrets


async def test_secrets_stay_out_of_reprs_statistics_and_logs(
    anyio_backend: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """URL and header credentials never show in reprs, statistics or DEBUG logs."""
    caplog.set_level(logging.DEBUG)
    async with Hub().serve() as server, relay_on(path) as relay:
        url = f"ws://user:pw-s3cret@127.0.0.1:{server.port}/?token=q-s3cret"
        headers = {"Authorization": "Bearer h-s3cret"}
        async with relayed(url, path, headers=headers) as client:
            assert await client.query("echo", "x") == "x"
            async with client.subscribe("news") as sub:
                await sub.confirmed()
            texts = [
                repr(relay),
                repr(relay.statistics()),
                repr(client),
                client.name,
                repr(client.transport),
                repr(client.statistics()),
            ]
        texts.append(caplog.text)
    for text in texts:
        for secret in ("pw-s3cret", "q-s3cret", "h-s3cret"):
            assert secret not in text
    assert "token=***" in texts[0]  # the relay's repr names the upstream, masked


# Options


def test_relay_urls_and_paths() -> None:
    """ws+relay:// stands for ws:// through the default relay; paths are checked early."""
    assert is_relay_url("wss+relay://h:1/p?q=1")
    assert not is_relay_url("ws://h/")
    assert upstream_url("WS+RELAY://h:1/p?q=1") == "ws://h:1/p?q=1"
    assert upstream_url("wss+relay://h/") == "wss://h/"
    client = wsclient.Client("ws+relay://127.0.0.1:1/")
    assert client.name == f"ws://127.0.0.1:1/ via relay {default_socket_path()}"


def test_the_default_socket_is_in_a_private_directory(
    socket_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default socket lives in a 0700 directory; one open to others is refused."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", socket_dir)
    assert default_socket_path() == os.path.join(socket_dir, "wsclient", "relay.sock")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setattr(tempfile, "tempdir", socket_dir)
    directory = os.path.join(socket_dir, f"wsclient-{os.getuid()}")
    assert default_socket_path() == os.path.join(directory, "relay.sock")
    prepare_private_dir(directory)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    os.chmod(directory, 0o755)
    with pytest.raises(ConnectError, match="open to other users"):
        prepare_private_dir(directory)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"relay": 3}, TypeError, "relay must be a socket path"),
        ({"relay": "/tmp/" + "x" * 200}, ValueError, "too long"),
        ({"relay": ""}, ValueError, "non-empty"),
        ({"relay": "/tmp/r", "ssl": object()}, ValueError, "ssl= cannot be used with a relay"),
        ({"relay": "/tmp/r", "dialect": JsonRpcDialect()}, ValueError, "default dialect"),
        ({"relay": "/tmp/r", "subprotocols": "chat"}, TypeError, "subprotocols"),
        ({"relay": "/tmp/r", "headers": {"Upgrade": "x"}}, ValueError, "Upgrade"),
    ],
)
def test_bad_relay_options_are_refused(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Bad relay options raise at once, naming what is wrong."""
    with pytest.raises(error, match=message):
        wsclient.Client("ws://127.0.0.1:1/", **options)


def test_relay_needs_a_url() -> None:
    """relay= with a transport factory, or relay=False with a ws+relay:// URL, is an error."""

    async def factory() -> Any:
        raise AssertionError

    with pytest.raises(ValueError, match="relay given with a transport factory"):
        wsclient.Client(factory, relay="/tmp/r")
    with pytest.raises(ValueError, match="relay=False"):
        wsclient.Client("ws+relay://127.0.0.1:1/", relay=False)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"idle_timeout": 0}, "idle_timeout"),
        ({"max_queued_messages": 0}, "max_queued_messages"),
        ({"max_message_size": True}, "max_message_size"),
        ({"close_timeout": -1}, "close_timeout"),
    ],
)
def test_bad_relay_settings_are_refused(options: dict[str, Any], message: str) -> None:
    """A Relay with an impossible setting raises a ValueError naming it."""
    with pytest.raises(ValueError, match=message):
        Relay("/tmp/r", **options)


# The command line


def test_cli_relay_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`wsclient relay --help` documents the socket, idle timeout and foreground options."""
    with pytest.raises(SystemExit) as exited:
        main(["relay", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for option in ("--socket", "--idle-timeout", "--foreground"):
        assert option in out


def test_cli_relay_bad_usage_exits_2(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A negative idle timeout or an impossible socket path is a usage error (exit 2)."""
    with pytest.raises(SystemExit) as exited:
        main(["relay", "--idle-timeout", "-1"])
    assert exited.value.code == 2
    assert "expected seconds" in capsys.readouterr().err
    assert main(["relay", "--socket", "/tmp/" + "x" * 200, "--foreground"]) == 2
    assert "too long for a Unix socket path" in caplog.text


def test_cli_relay_in_the_foreground_stops_when_idle(socket_dir: str) -> None:
    """`wsclient relay --foreground` logs where it listens and exits 0 once idle."""
    path = os.path.join(socket_dir, "fg.sock")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsclient",
            "relay",
            "--socket",
            path,
            "--foreground",
            "--idle-timeout",
            str(IDLE),
        ],
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert f"relay listening on {path}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(path)


@needs_pidfd
async def test_cli_relay_detaches_and_refuses_a_second_one(
    anyio_backend: str, path: str, spawn_env: dict[str, str]
) -> None:
    """`wsclient relay` detaches once listening; a second one for its socket exits 1."""
    command = [sys.executable, "-m", "wsclient", "relay", "--socket", path]
    with anyio.fail_after(BOUND):
        # A long idle timeout: it must still serve when the second one starts.
        first = await anyio.run_process([*command, "--idle-timeout", "60"], check=False)
        assert first.returncode == 0, first.stderr
        pid = relay_pid(path)
        try:
            assert await relay_answers(path)
            second = await anyio.run_process(command, check=False)
            assert second.returncode == 1
            assert f"another relay (pid {pid}) serves {path}" in second.stderr.decode()
        finally:
            os.kill(pid, signal.SIGTERM)  # stops it cleanly
    await wait_for_exit(pid)
    assert not os.path.exists(path)
