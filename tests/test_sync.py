"""wsclient.sync: the blocking client, from one thread and from many, on asyncio and trio.

A reference Hub runs on its own asyncio loop in a :class:`LoopThread`; each
test talks to it through a :class:`~wsclient.sync.SyncClient`, whose own loop
runs in another thread. Handlers that never answer wait on an asyncio event
that nobody sets: the Hub cancels them when the connection closes.
Subprocesses check what only a whole interpreter shows: exiting without
``close()``, and Ctrl-C. Every wait is bounded; nothing sleeps to let
something happen.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import wsclient.sync
from tests.servers import closed_port
from wsclient import (
    ClientStatistics,
    ConnectError,
    ConnectionClosed,
    ConnectionLost,
    ConnectionState,
    InvalidState,
    InvalidURL,
    RemoteError,
    RequestTimeout,
    SubscriptionState,
)
from wsclient._loopthread import LoopThread
from wsclient.server import Hub, HubError, HubServer, RequestContext
from wsclient.sync import SyncClient

BOUND = 5.0  # seconds any single step may take; the steps take milliseconds
SUBPROCESS_BOUND = 20.0  # seconds a child interpreter may take, start-up included
SHORT = 0.05  # a timeout that is meant to expire


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class RunningHub:
    """A Hub serving on 127.0.0.1 in a loop thread, driven from plain threads."""

    def __init__(self, loop: LoopThread, server: HubServer) -> None:
        self.loop = loop
        self.server = server
        self.url = server.url

    def publish(self, channel: str, data: Any) -> int:
        return self.loop.submit(self.server.publish(channel, data)).result(BOUND)

    def connections_open(self) -> int:
        return self.server.statistics().connections_open


@contextmanager
def running_hub(hub: Hub | None = None) -> Iterator[RunningHub]:
    """Serve ``hub`` (default: a plain Hub) for the duration of the block."""
    hub = hub or Hub(ping_interval=None)
    loop = LoopThread("test-hub")
    loop.start()
    ready: Future[HubServer] = Future()
    stop: list[asyncio.Event] = []

    async def hold() -> None:
        stop.append(asyncio.Event())
        try:
            async with hub.serve("127.0.0.1", 0, in_thread=False) as server:
                ready.set_result(server)
                await stop[0].wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    held = loop.submit(hold())
    try:
        yield RunningHub(loop, ready.result(BOUND))
    finally:
        if stop:
            loop.loop.call_soon_threadsafe(stop[0].set)
        held.result(BOUND)
        loop.stop()


def never_hub() -> tuple[Hub, threading.Event]:
    """A Hub whose ``never`` query is received (the event is set) and never answered."""
    hub = Hub(ping_interval=None)
    entered = threading.Event()

    @hub.on_query("never")
    async def never(parameters: Any, ctx: RequestContext) -> Any:
        entered.set()
        await asyncio.Event().wait()  # cancelled when the connection closes

    @hub.on_query("fail")
    async def fail(parameters: Any, ctx: RequestContext) -> Any:
        raise HubError(f"cannot {parameters}")

    @hub.on_command("add")
    async def add(parameters: Any, ctx: RequestContext) -> Any:
        return parameters["a"] + parameters["b"]

    return hub, entered


@pytest.fixture
def hub() -> Iterator[tuple[RunningHub, threading.Event]]:
    server, entered = never_hub()
    with running_hub(server) as running:
        yield running, entered


@pytest.fixture
def client(hub: tuple[RunningHub, threading.Event], backend: str) -> Iterator[SyncClient]:
    with wsclient.sync.connect(hub[0].url, backend=backend) as c:
        yield c


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, Future[Any]]:
    """Run ``target()`` in a new thread; its outcome lands in the future."""
    outcome: Future[Any] = Future()

    def run() -> None:
        try:
            outcome.set_result(target())
        except BaseException as exc:
            outcome.set_exception(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (a state another thread changes) until it holds, at most BOUND seconds."""
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.005)


def sync_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("wsclient-sync")]


# 1. Requests


def test_query_command_and_request_round_trip(client: SyncClient) -> None:
    """query, command and request return their reply's payload, nested values unchanged."""
    parameters = {"a": [1, 2.5, None, True, "x"], "b": {"c": {}}}
    assert client.query("echo", parameters) == parameters
    assert client.command("add", {"a": 2, "b": 3}) == 5
    assert client.request("query", {"resource": "echo", "parameters": [1]}) == [1]
    assert set(client.query("time")) == {"time"}
    assert client.query("echo", 1, timeout=BOUND, in_flight="resend") == 1
    with pytest.raises(ValueError, match="in_flight must be one of"):
        client.query("echo", in_flight="maybe")  # type: ignore[arg-type]
    stats = client.statistics().requests
    assert (stats.pending, stats.sent, stats.replies) == (0, 5, 5)


def test_error_reply_raises_remote_error(client: SyncClient) -> None:
    """An error reply raises RemoteError with the server's message; the client goes on."""
    with pytest.raises(RemoteError, match=r"^cannot fly$"):
        client.query("fail", "fly")
    with pytest.raises(RemoteError, match="unknown resource: 'nowhere'"):
        client.query("nowhere")
    assert client.query("echo", "still working") == "still working"


def test_request_timeout_raises_and_leaves_nothing_pending(
    client: SyncClient, hub: tuple[RunningHub, threading.Event]
) -> None:
    """A request with no reply raises RequestTimeout (a TimeoutError) after its own timeout."""
    started = time.monotonic()
    with pytest.raises(RequestTimeout) as raised:
        client.query("never", timeout=0.2)
    assert 0.15 < time.monotonic() - started < BOUND
    assert isinstance(raised.value, TimeoutError)
    assert hub[1].is_set()  # it reached the server
    stats = client.statistics().requests
    assert (stats.pending, stats.timeouts) == (0, 1)


def test_send_events_and_unconsumed_messages(client: SyncClient) -> None:
    """send, publish_event, ping, authenticate work; unconsumed messages come from receive()."""
    errors: list[BaseException] = []
    client.on_error(errors.append)
    assert client.publish_event("clicked", {"button": "ok"}) is True
    assert client.send({"type": "nonsense"}) is True
    message = client.receive(timeout=BOUND)
    assert message["data"] == {"type": "error", "message": "unknown type: 'nonsense'"}
    assert [str(e) for e in errors] == ["unknown type: 'nonsense'"]
    assert 0 < client.ping() < BOUND
    assert client.authenticate({"token": "s3cret"}, timeout=BOUND) == {"authenticated": True}
    assert "s3cret" not in repr(client)
    with pytest.raises(TimeoutError, match=r"no message came in 0\.05s"):
        client.receive(timeout=SHORT)


def test_wait_state_returns_or_times_out(client: SyncClient) -> None:
    """wait_state returns a state it is in at once, and raises TimeoutError for one not reached."""
    assert client.state is ConnectionState.OPEN
    assert client.wait_state(ConnectionState.OPEN, timeout=BOUND) is ConnectionState.OPEN
    with pytest.raises(TimeoutError, match=r"the state was not RECONNECTING in 0\.05s"):
        client.wait_state(ConnectionState.RECONNECTING, timeout=SHORT)
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        client.wait_state(ConnectionState.CLOSED, timeout=-1)


# 2. Channels


def test_subscribe_publish_and_iterate(client: SyncClient, hub: tuple[RunningHub, Any]) -> None:
    """Deliveries come in order from the iterator; a quiet channel raises TimeoutError."""
    with client.subscribe("news", timeout=BOUND) as news:
        assert news.channel == "news"
        news.confirmed(timeout=BOUND)
        assert news.statistics().state is SubscriptionState.SUBSCRIBED
        for n in range(3):
            assert client.publish("news", n) is True
        got = []
        for data in news:
            got.append(data)
            if len(got) == 3:
                assert hub[0].publish("news", "from the server") == 1
            if len(got) == 4:
                break
        assert got == [0, 1, 2, "from the server"]
        with pytest.raises(TimeoutError, match=r"no delivery on 'news' in 0\.05s"):
            news.receive(timeout=SHORT)
        assert news.statistics().received == 4
        assert repr(news) == "<SyncSubscription 'news' SUBSCRIBED pending=0 dropped=0>"
    assert news.state is SubscriptionState.UNSUBSCRIBED
    assert list(news) == []  # a closed subscription's iteration ends
    with pytest.raises(InvalidState, match="unsubscribed"):
        news.receive()
    news.close()  # idempotent
    assert client.statistics().channels.channels == 0


def test_iteration_timeout_raises(client: SyncClient) -> None:
    """With subscribe(timeout=), a step of the for loop that waits longer raises TimeoutError."""
    with client.subscribe("quiet", timeout=SHORT) as quiet, pytest.raises(TimeoutError):
        for _ in quiet:
            pass


def test_callback_subscription_runs_in_the_loop_thread(client: SyncClient) -> None:
    """A callback subscriber gets each delivery in the client's loop thread."""
    seen: list[tuple[Any, str]] = []
    arrived = threading.Event()

    def on_delivery(data: Any) -> None:
        seen.append((data, threading.current_thread().name))
        arrived.set()

    with client.subscribe("ticks", callback=on_delivery) as ticks:
        client.publish("ticks", 1)
        assert arrived.wait(BOUND)
        with pytest.raises(InvalidState, match="go to the callback"):
            ticks.receive()
    assert seen[0][0] == 1
    assert seen[0][1].startswith("wsclient-sync ")


def test_iterators_end_when_the_client_closes(hub: tuple[RunningHub, Any], backend: str) -> None:
    """Threads iterating a subscription or the client stop (no error) when the client closes."""
    client = wsclient.sync.connect(hub[0].url, backend=backend)
    news = client.subscribe("news")
    first = threading.Event()

    def read_news() -> list[Any]:
        got = []
        for data in news:
            got.append(data)
            first.set()
        return got

    reader, news_read = in_thread(read_news)
    messages, messages_read = in_thread(lambda: list(client))
    client.publish("news", "one")
    assert first.wait(BOUND)
    client.close()
    assert news_read.result(BOUND) == ["one"]
    assert messages_read.result(BOUND) == []
    reader.join(BOUND)
    messages.join(BOUND)
    assert news.state is SubscriptionState.UNSUBSCRIBED


def test_blocked_reads_end_when_the_server_goes_and_the_client_gives_up(backend: str) -> None:
    """With reconnect=False, reads blocked with no timeout raise why the connection closed."""
    with running_hub() as server:
        client = wsclient.sync.connect(server.url, backend=backend, reconnect=False)
        news = client.subscribe("news")
        news.confirmed(timeout=BOUND)
        reads = [in_thread(news.receive), in_thread(lambda: list(news)), in_thread(client.receive)]
    for thread, read in reads:  # the server stopped: the client closed on its own
        with pytest.raises(ConnectionClosed):
            read.result(BOUND)
        thread.join(BOUND)
    assert client.state is ConnectionState.CLOSED
    client.close()
    assert sync_threads() == []


# 3. Sessions


def test_sessions_share_the_connection(client: SyncClient, hub: tuple[RunningHub, Any]) -> None:
    """A session makes requests, subscribes and gets its own messages; closing it ends only it."""
    with client.session("tab") as tab:
        assert tab.id == "tab"
        assert tab.query("echo", "from the tab") == "from the tab"
        with tab.subscribe("news") as news:
            tab.publish("news", "hi")
            assert news.receive(timeout=BOUND) == "hi"
        tab.send({"type": "nonsense"})  # the Hub's error carries "from": only the tab gets it
        assert tab.receive(timeout=BOUND)["from"] == "tab"
        with pytest.raises(TimeoutError):
            client.receive(timeout=SHORT)
        assert tab.statistics().id == "tab"
        assert client.statistics().sessions == 1
        assert repr(tab) == "<SyncSession tab OPEN pending=0>"
    assert tab.closed
    with pytest.raises(InvalidState, match="session tab is closed"):
        tab.query("echo")
    tab.close()  # idempotent
    assert client.query("echo", 1) == 1
    assert client.statistics().sessions == 0
    assert hub[0].connections_open() == 1


# 4. Threads


def test_four_threads_each_get_their_own_answers(
    client: SyncClient, hub: tuple[RunningHub, Any]
) -> None:
    """4 threads making 200 queries each get exactly their own replies, while a subscriber reads."""
    threads, rounds, deliveries = 4, 200, 100
    start = threading.Barrier(threads + 2, timeout=BOUND)
    news = client.subscribe("news", timeout=BOUND)

    def ask(me: int) -> list[Any]:
        start.wait()
        return [client.query("echo", {"thread": me, "n": n}) for n in range(rounds)]

    def read() -> list[Any]:
        start.wait()
        return [news.receive() for _ in range(deliveries)]

    askers = [in_thread(functools.partial(ask, me)) for me in range(threads)]
    reader = in_thread(read)
    start.wait()
    for n in range(deliveries):
        client.publish("news", n)
    for me, (thread, answers) in enumerate(askers):
        assert answers.result(BOUND * 4) == [{"thread": me, "n": n} for n in range(rounds)]
        thread.join(BOUND)
    assert reader[1].result(BOUND) == list(range(deliveries))
    stats = client.statistics().requests
    assert (stats.pending, stats.replies) == (0, threads * rounds)


def test_blocking_from_a_callback_raises_runtime_error(client: SyncClient) -> None:
    """A blocking call from a callback (the loop thread) raises RuntimeError instead of hanging."""
    raised: list[BaseException] = []
    done = threading.Event()

    @client.on_message
    def call_back(message: Any) -> None:
        for call in (lambda: client.query("echo"), client.close, lambda: client.receive()):
            try:
                call()
            except BaseException as exc:
                raised.append(exc)
        done.set()

    assert client.query("echo", 1) == 1
    assert done.wait(BOUND)
    assert [type(e) for e in raised] == [RuntimeError] * 3
    assert "event loop thread (from a callback?)" in str(raised[0])
    assert str(raised[0]).startswith("SyncClient.query() blocks")
    client.remove_callback(call_back)
    assert client.query("echo", 2) == 2  # the loop was never blocked


def test_state_callbacks_run_in_the_loop_thread(hub: tuple[RunningHub, Any], backend: str) -> None:
    """on_state callbacks see CLOSING and CLOSED, in the client's loop thread."""
    changes: list[tuple[ConnectionState, str]] = []
    with wsclient.sync.connect(hub[0].url, backend=backend) as client:
        client.on_state(lambda c: changes.append((c.state, threading.current_thread().name)))
    assert [state for state, _ in changes] == [ConnectionState.CLOSING, ConnectionState.CLOSED]
    assert all(name.startswith("wsclient-sync ws://127.0.0.1:") for _, name in changes)


# 5. Closing


def test_close_from_another_thread_ends_blocked_calls(
    hub: tuple[RunningHub, threading.Event], backend: str
) -> None:
    """close() from another thread fails a pending request, ends a receive, and is idempotent."""
    client = wsclient.sync.connect(hub[0].url, backend=backend)
    asker, asked = in_thread(lambda: client.query("never", timeout=BOUND * 2))
    receiver, received = in_thread(client.receive)
    assert hub[1].wait(BOUND)  # the request is in flight
    closers = [in_thread(client.close) for _ in range(3)]  # at once, from three threads
    for thread, closed in closers:
        assert closed.result(BOUND) is None
        thread.join(BOUND)
    with pytest.raises(ConnectionLost):
        asked.result(BOUND)
    with pytest.raises(InvalidState, match="is closed"):
        received.result(BOUND)
    client.close()  # again, from this thread
    assert client.closed
    assert client.state is ConnectionState.CLOSED
    asker.join(BOUND)
    receiver.join(BOUND)
    assert sync_threads() == []


def test_every_method_raises_after_close(hub: tuple[RunningHub, Any], backend: str) -> None:
    """After close, calls raise the client's closed error; iteration ends; closing again is fine."""
    client = wsclient.sync.connect(hub[0].url, backend=backend)
    session = client.session()
    news = client.subscribe("news")
    client.close()
    calls: list[Callable[[], Any]] = [
        lambda: client.query("echo"),
        lambda: client.command("add", {}),
        lambda: client.request("query", {}),
        lambda: client.send({}),
        lambda: client.publish("news", 1),
        lambda: client.publish_event("clicked"),
        lambda: client.subscribe("news"),
        lambda: client.session(),
        lambda: client.receive(timeout=BOUND),
        lambda: client.authenticate({"token": "t"}),
        client.ping,
        lambda: client.wait_state(ConnectionState.OPEN),
        lambda: session.query("echo"),
        lambda: session.receive(),
        lambda: news.confirmed(),
    ]
    for call in calls:
        with pytest.raises(InvalidState, match=r"is closed|unsubscribed"):
            call()
    with pytest.raises(InvalidState, match="unsubscribed"):
        news.receive()
    assert list(client) == []
    assert list(session) == []
    assert list(news) == []
    assert client.wait_state(ConnectionState.CLOSED) is ConnectionState.CLOSED
    assert client.statistics().state is ConnectionState.CLOSED
    assert session.closed
    news.close()
    session.close()
    client.close()
    with pytest.raises(ValueError, match="close code 999"):
        client.close(999)


def test_close_sends_what_was_queued(hub: tuple[RunningHub, Any], backend: str) -> None:
    """Closing flushes the outbound queue first, as aclose() does: the server gets every message."""
    with wsclient.sync.connect(hub[0].url, backend=backend) as client:
        for n in range(50):
            client.publish("nobody", n)
    assert client.statistics().connection.queue.discarded == 0
    wait_until(lambda: hub[0].server.statistics().publishes == 50)


def test_garbage_collected_client_is_closed(hub: tuple[RunningHub, Any], backend: str) -> None:
    """A client dropped without close() is closed when collected, with a ResourceWarning."""
    client = wsclient.sync.connect(hub[0].url, backend=backend)
    assert client.query("echo", 1) == 1
    with pytest.warns(ResourceWarning, match="never closed"):
        del client  # its last reference: collected at once
    gc.collect()
    assert sync_threads() == []
    wait_until(lambda: hub[0].connections_open() == 0)


def test_collected_client_is_closed_when_warnings_are_errors(
    hub: tuple[RunningHub, Any], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ResourceWarning an error (as under pytest), the finalizer still closes the client."""
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    client = wsclient.sync.connect(hub[0].url, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        del client
        gc.collect()
    assert [type(u.exc_value) for u in unraisable] == [ResourceWarning]
    assert sync_threads() == []
    wait_until(lambda: hub[0].connections_open() == 0)


def test_statistics_while_another_thread_closes(hub: tuple[RunningHub, Any], backend: str) -> None:
    """statistics() when close() began but the loop has not closed yet is the loop's snapshot."""
    client = wsclient.sync.connect(hub[0].url, backend=backend)
    client.subscribe("news").confirmed(timeout=BOUND)
    entered, release = threading.Event(), threading.Event()

    @client.on_message
    def hold_the_loop(message: Any) -> None:  # against the rules: close() must wait for it
        entered.set()
        release.wait(BOUND)

    assert hub[0].publish("news", "hold") == 1  # from the Hub's thread: nothing here waits
    assert entered.wait(BOUND)
    closer, closed = in_thread(client.close)
    wait_until(lambda: client.closed)
    asker, asked = in_thread(client.statistics)
    asker.join(SHORT)  # a statistics() that does not wait for the loop has answered by now
    release.set()
    assert isinstance(asked.result(BOUND), ClientStatistics)
    assert closed.result(BOUND) is None
    closer.join(BOUND)
    asker.join(BOUND)
    assert sync_threads() == []


def test_close_is_bounded_when_a_callback_blocks_the_loop(
    hub: tuple[RunningHub, Any],
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """close() gives up on a loop that a callback blocks, after close_timeout and its margin."""
    monkeypatch.setattr(wsclient.sync, "_STOP_BOUND", SHORT)  # the margin, shortened
    client = wsclient.sync.connect(hub[0].url, backend=backend, close_timeout=SHORT)
    client.subscribe("news").confirmed(timeout=BOUND)
    entered, release = threading.Event(), threading.Event()

    @client.on_message
    def block(message: Any) -> None:
        entered.set()
        release.wait(BOUND * 2)

    assert hub[0].publish("news", "block") == 1
    assert entered.wait(BOUND)
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < BOUND
    assert "the loop thread did not stop" in caplog.text
    release.set()
    wait_until(lambda: sync_threads() == [])


# 6. Connecting


def test_refused_connection_raises_connect_error(backend: str) -> None:
    """connect() to a closed port raises ConnectError in the caller and leaves no thread behind."""
    with pytest.raises(ConnectError):
        wsclient.sync.connect(f"ws://127.0.0.1:{closed_port()}/", backend=backend)
    assert sync_threads() == []


def test_invalid_url_and_options_raise_at_connect() -> None:
    """Invalid URLs, options and backends raise at connect(), in the caller, before any thread."""
    with pytest.raises(InvalidURL, match="scheme isn't ws or wss"):
        wsclient.sync.connect("http://example.com/")
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        wsclient.sync.connect("ws://127.0.0.1:1/", bogus=True)
    with pytest.raises(ValueError, match="request_timeout must be a positive number"):
        wsclient.sync.connect("ws://127.0.0.1:1/", request_timeout=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        wsclient.sync.connect("ws://127.0.0.1:1/", backend="curio")
    assert sync_threads() == []


def test_repr_hides_secrets(hub: tuple[RunningHub, Any], backend: str) -> None:
    """The repr (and the thread's name) show the URL without its password or query."""
    url = hub[0].url.replace("ws://", "ws://user:hunter2@") + "?token=s3cret"
    with wsclient.sync.connect(url, backend=backend) as client:
        text = repr(client)
        names = sync_threads()
    assert text.startswith("<SyncClient ws://***@127.0.0.1:")
    assert f"/?token=*** OPEN pending=0 channels=0 sessions=0 backend={backend}>" in text
    for secret in ("hunter2", "s3cret"):
        assert secret not in text
        assert not any(secret in name for name in names)
    assert repr(client).endswith(
        f"CLOSED pending=0 channels=0 sessions=0 backend={backend} closed>"
    )


# 7. Whole interpreters: exit and Ctrl-C

ROOT = Path(__file__).resolve().parent.parent
CHILD_PRELUDE = """
import signal
import sys
import wsclient.sync
url, backend = sys.argv[1], sys.argv[2]
# A shell without job control starts background jobs with SIGINT ignored,
# and children inherit that: give Ctrl-C its usual meaning back.
signal.signal(signal.SIGINT, signal.default_int_handler)
"""


def child(script: str, directory: Path, *args: str) -> subprocess.Popen[str]:
    """Start a Python interpreter running ``script`` (saved in ``directory``) with ``args``."""
    path = directory / "script.py"
    path.write_text(CHILD_PRELUDE + textwrap.dedent(script))
    return subprocess.Popen(
        [sys.executable, str(path), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Wait (bounded) for the child to exit; its return code, stdout and stderr."""
    try:
        out, err = process.communicate(timeout=SUBPROCESS_BOUND)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"the child did not exit in {SUBPROCESS_BOUND}s; stderr:\n{err}")
    return process.returncode, out, err


def test_forgotten_close_does_not_hang_exit(hub: tuple[RunningHub, Any], tmp_path: Path) -> None:
    """A script that never closes its clients (one iterating, one with a request pending) exits."""
    process = child(
        """
        import threading
        import time

        kept = wsclient.sync.connect(url, backend="asyncio")
        news = iter(kept.subscribe("news"))
        print(kept.query("echo", "asyncio"))
        other = wsclient.sync.connect(url, backend="trio")
        print(other.query("echo", "trio"))


        def ask():
            try:
                other.query("never", timeout=60)
            except wsclient.ConnectionLost:  # the exit closes the client
                pass


        threading.Thread(target=ask, daemon=True).start()
        deadline = time.monotonic() + 10
        while not other.statistics().requests.pending and time.monotonic() < deadline:
            time.sleep(0.001)  # until the request is pending
        """,
        tmp_path,
        hub[0].url,
        "asyncio",
    )
    code, out, err = finish(process)
    assert (code, out.split(), err) == (0, ["asyncio", "trio"], "")


def test_ctrl_c_in_a_request_cancels_it_and_the_script_goes_on(
    hub: tuple[RunningHub, threading.Event], backend: str, tmp_path: Path
) -> None:
    """Ctrl-C in a blocked query cancels it in the loop; the script catches it and goes on."""
    process = child(
        """
        with wsclient.sync.connect(url, backend=backend) as client:
            try:
                client.query("never", timeout=60)
            except KeyboardInterrupt:
                print("pending", client.statistics().requests.pending)
                print("still", client.query("echo", "working"))
                raise SystemExit(130) from None
        """,
        tmp_path,
        hub[0].url,
        backend,
    )
    assert hub[1].wait(SUBPROCESS_BOUND)  # the query is in flight: the child is blocked in it
    process.send_signal(signal.SIGINT)
    code, out, err = finish(process)
    assert (code, out, err) == (130, "pending 0\nstill working\n", "")


def test_ctrl_c_in_receive_propagates_without_thread_tracebacks(
    hub: tuple[RunningHub, Any], backend: str, tmp_path: Path
) -> None:
    """An uncaught Ctrl-C in sub.receive() ends the script with only the main thread's traceback."""
    process = child(
        """
        import threading
        import time


        def announce_when_blocked(main):
            # Say "ready" once the main thread waits inside receive() (polled, bounded).
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                frame, names = sys._current_frames().get(main), []
                while frame is not None:
                    names.append(frame.f_code.co_name)
                    frame = frame.f_back
                if names[:1] == ["wait"] and "receive" in names:
                    print("ready", flush=True)
                    return
                time.sleep(0.001)
            print("never blocked in receive()", flush=True)  # fail the test, do not hang it


        with wsclient.sync.connect(url, backend=backend) as client:
            news = client.subscribe("news")
            main = threading.main_thread().ident
            threading.Thread(target=announce_when_blocked, args=(main,), daemon=True).start()
            news.receive()
        """,
        tmp_path,
        hub[0].url,
        backend,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    process.send_signal(signal.SIGINT)
    code, _, err = finish(process)
    assert code in (-signal.SIGINT, 130)
    assert err.count("Traceback") == 1
    assert err.rstrip().endswith("KeyboardInterrupt")
    assert "Exception in thread" not in err
    assert "news.receive()" in err  # the traceback is the main thread's


def test_ctrl_c_while_the_loop_starts_stops_it(
    hub: tuple[RunningHub, Any], backend: str, tmp_path: Path
) -> None:
    """Ctrl-C in connect() before the loop thread runs its loop: it stops, no thread is left."""
    process = child(
        """
        import threading

        started = threading.Event()


        def interrupt(signum, frame):
            started.set()  # let the loop start now that connect() is interrupted
            raise KeyboardInterrupt


        def starting():  # in the loop thread, before its loop runs
            print("starting", flush=True)
            started.wait(10)


        if backend == "trio":
            import trio

            class Hold(trio.abc.Instrument):
                def before_run(self):
                    starting()

            options = {"instruments": [Hold()]}
        else:
            import asyncio

            def loop_factory():
                starting()
                return asyncio.new_event_loop()

            options = {"loop_factory": loop_factory}
        signal.signal(signal.SIGINT, interrupt)
        try:
            wsclient.sync.connect(url, backend=backend, backend_options=options)
        except KeyboardInterrupt:
            print("interrupted", [t.name for t in threading.enumerate()])
            raise SystemExit(130) from None
        """,
        tmp_path,
        hub[0].url,
        backend,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "starting\n"
    process.send_signal(signal.SIGINT)
    code, out, err = finish(process)
    assert (code, out, err) == (130, "interrupted ['MainThread']\n", "")


def test_a_thread_given_the_dead_loop_threads_ident_may_still_close(
    hub: tuple[RunningHub, threading.Event], backend: str
) -> None:
    """A thread that reuses the ident of the finished loop thread is not taken for it."""
    client = wsclient.sync.connect(hub[0].url, backend=backend)
    loop_thread = client._runtime.thread
    client.close()
    assert not loop_thread.is_alive()
    errors: list[BaseException] = []

    def close_again() -> None:
        try:
            client.close()
        except BaseException as exc:  # the test reports any error
            errors.append(exc)

    # Thread idents are reused once a thread has ended: start threads until one
    # gets the loop thread's (bounded; on Linux the next thread usually does).
    for _ in range(200):
        thread = threading.Thread(target=close_again)
        thread.start()
        reused = thread.ident == loop_thread.ident
        thread.join(BOUND)
        if reused:
            break
    else:
        pytest.skip("the OS gave no thread the finished loop thread's ident")
    assert errors == []
