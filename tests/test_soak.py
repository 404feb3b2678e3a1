"""Fault soak: requests, publishes and events through a FaultProxy that keeps breaking.

A real Hub (in a thread) behind a [`FaultProxy`][wsclient.testing.FaultProxy], and one
Client with a tight heartbeat and backoff. While five workers send (three
requesters, one of them with ``in_flight="resend"``, numbered events, channel
publishes), a seeded schedule injects ``WSCLIENT_SOAK_FAULTS`` faults (100 by
default, on each backend): cuts, blackholes (then restore), latency (then
none) and refusals (the port refuses while the connection is cut, then
accepts again). ``WSCLIENT_SOAK_SEED`` picks another schedule.

What must hold, and why (docs/explanation/delivery.md):

* Requests: each call ends with its own reply, or with ConnectionLost,
  RequestTimeout or QueueFull; never another request's reply, never a hang
  past its timeout. None is pending at the end.
* Events (``publish_event``, numbered 0, 1, 2...): at most once and in order.
  A message handed to a connection that dies may be lost, so what the Hub
  got on one connection is a run of consecutive numbers, the runs of
  different connections do not overlap, and every missing number lies
  before or between runs: lost with the tail of a connection that died. The
  queue is big enough that no policy drops one, and every event sent after
  the last fault arrives. Bytes that had left the client can reach the Hub
  after it reconnected (the proxy held them, as a middlebox would), so events
  of an old connection may be handled after a newer one's: counted as
  ``late``, not a failure.
* Channel messages: at most once, in the order the Hub sent them. An
  observer subscribed straight to the Hub (no proxy) records that order;
  what the soaked client got must be a subsequence of it.
* Nothing leaks: tasks and file descriptors return to their count before
  the clients opened, and the interpreter's memory blocks at the last fault
  are within a bound of those at fault 25 (see ``LEAK_BLOCKS_PER_FAULT``).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import random
import socket
import sys
import threading
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
import sniffio
from anyio.abc import SocketAttribute, SocketStream

import wsclient
from wsclient import (
    Backoff,
    BufferPolicy,
    ConnectionLost,
    ConnectionState,
    Heartbeat,
    InFlight,
    QueueFull,
    QueuePolicy,
    ReconnectingTransport,
    RequestTimeout,
    StateChange,
    SubscriptionState,
    Transport,
)
from wsclient.server import Hub, RequestContext
from wsclient.testing import FaultProxy, MemoryTransport

from .conftest import _fake_clock_backend

pytestmark = pytest.mark.anyio

C = ConnectionState
FAULTS = int(os.environ.get("WSCLIENT_SOAK_FAULTS", "100"))
SEED = int(os.environ.get("WSCLIENT_SOAK_SEED", "1789"))
KINDS = ("cut", "blackhole", "latency", "refuse")
WEIGHTS = (35, 25, 20, 20)
BOUND = 10.0  # seconds any single step may take; the steps take milliseconds
REQUEST_TIMEOUT = 1.0
CAPACITY = max(100_000, FAULTS * 2_000)  # numbers of events and of channel messages
CHANNEL = "soak"
# Memory is compared at these two faults, in the same state: the workload
# held, the link healthy, one connection open, nothing queued or in flight.
FIRST_SAMPLE = max(1, min(25, FAULTS // 4))
# In blocks (sys.getallocatedblocks()): tracemalloc slows the client's
# loop, the proxy and the Hub's thread enough to change the soak itself. Two
# samples taken that way differed by -210 to +320 blocks over 24 runs (two
# at a time); a leaked task costs 13 blocks, a leaked request waiter with its
# exception about 10, a leaked connection hundreds, a leaked state change
# with its error some 50. So the growth allowed is the noise plus 4 blocks
# per fault: at the default size a leak of 10 blocks per fault fails, and
# longer runs (WSCLIENT_SOAK_FAULTS) catch smaller ones.
NOISE_BLOCKS = 400
LEAK_BLOCKS_PER_FAULT = 4


class Ledger:
    """The numbered events the Hub received, per connection; fed in the Hub's thread."""

    # Memory allocated up front (a count per number; first and last number
    # per connection, whose index lives in the Hub's per-connection state and
    # dies with it): the ledger does not grow and blur the memory samples.

    def __init__(self, capacity: int) -> None:
        self.counts = bytearray(capacity)
        self.received = 0
        self.first = array("q", [0]) * capacity  # run -> its first number
        self.last = array("q", [0]) * capacity  # run -> its last number
        self.connections = 0  # runs: connections that delivered at least one event
        self.late = 0  # events that came on a connection after a newer one's
        self.problems: list[str] = []
        self._lock = threading.Lock()

    def record(self, seq: int, state: dict[str, Any]) -> None:
        with self._lock:
            self.received += 1
            if not 0 <= seq < len(self.counts):
                self._problem(f"event {seq} was never sent")
                return
            self.counts[seq] = min(255, self.counts[seq] + 1)
            run = state.get("run")
            if run is None:
                run = state["run"] = self.connections
                self.connections += 1
                self.first[run] = self.last[run] = seq
                return
            if run != self.connections - 1:
                self.late += 1
            if seq != self.last[run] + 1:
                self._problem(f"event {seq} after {self.last[run]} on one connection")
            self.last[run] = seq

    def runs(self) -> list[tuple[int, int]]:
        """(first, last) of each connection's run, in order of their numbers."""
        return sorted((self.first[i], self.last[i]) for i in range(self.connections))

    def _problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)

    def has(self, seq: int) -> bool:
        return self.counts[seq] > 0


class Channel:
    """Channel messages in the order one consumer got them, in preallocated arrays."""

    def __init__(self, capacity: int) -> None:
        self.position = array("q", [-1]) * capacity  # message -> its rank here
        self.order = array("q", [-1]) * capacity  # rank -> message
        self.count = 0
        self.problems: list[str] = []

    def add(self, value: Any) -> None:
        if not (isinstance(value, int) and 0 <= value < len(self.position)):
            self.problems.append(f"unexpected channel message {value!r}")
        elif self.position[value] >= 0:
            self.problems.append(f"channel message {value} twice")
        else:
            self.position[value] = self.count
            self.order[self.count] = value
            self.count += 1

    def has(self, value: int) -> bool:
        return self.position[value] >= 0


@dataclass
class Tally:
    """What the workload did, for the assertions and the summary."""

    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    answered: int = 0
    request_failures: dict[str, int] = field(default_factory=dict)
    events_sent: int = 0
    published: int = 0
    wrong: list[str] = field(default_factory=list)


def task_count() -> int:
    """Every task of the event loop (trio: walked down from the root task)."""
    if sniffio.current_async_library() == "trio":
        import trio

        count = 0
        pending = [trio.lowlevel.current_root_task()]
        while pending:
            task = pending.pop()
            if task is None:
                continue
            count += 1
            for nursery in task.child_nurseries:
                pending.extend(nursery.child_tasks)
        return count
    import asyncio

    return len(asyncio.all_tasks())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait, bounded, until ``condition()`` holds."""
    try:
        with anyio.fail_after(BOUND):
            while not condition():
                await anyio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"not within {BOUND}s: {what}") from None


async def settled_fds(target: int) -> int:
    """Open file descriptors once back to ``target`` (the Hub's thread closes late), or BOUND."""
    with anyio.move_on_after(BOUND):
        while open_fds() > target:
            await anyio.sleep(0.005)
    return open_fds()


def allocated_blocks() -> int:
    """Memory blocks the interpreter holds (every thread's), after a full collection."""
    gc.collect()
    return sys.getallocatedblocks()


async def inject(kind: str, rng: random.Random, proxy: FaultProxy) -> None:
    """Apply one fault and undo it after a while (a cut undoes itself)."""
    if kind == "cut":
        proxy.cut()
    elif kind == "blackhole":
        proxy.blackhole()  # past 0.4 s of silence the heartbeat drops the link
        await anyio.sleep(rng.uniform(0.03, 0.45))
        proxy.restore()
    elif kind == "latency":
        proxy.latency(rng.uniform(0.01, 0.15))
        await anyio.sleep(rng.uniform(0.05, 0.25))
        proxy.latency(0)
    else:
        await proxy.refuse()
        proxy.cut()  # the client must reconnect while the port refuses
        await anyio.sleep(rng.uniform(0.02, 0.15))
        await proxy.accept()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count sockets")
async def test_fault_soak_keeps_every_promise_and_leaks_nothing() -> None:
    """FAULTS faults under traffic: right answers, at most once and in order, nothing leaked."""
    rng = random.Random(SEED)
    ledger = Ledger(CAPACITY)
    hub = Hub(ping_interval=None)

    @hub.on_event("seq")
    async def record(data: Any, ctx: RequestContext) -> None:
        ledger.record(data, ctx.state)

    tally = Tally()
    started = time.perf_counter()
    async with (
        hub.serve("127.0.0.1", 0, in_thread=True) as server,
        FaultProxy(("127.0.0.1", server.port)) as proxy,
    ):
        with anyio.fail_after(BOUND):
            await anyio.wait_all_tasks_blocked()  # the proxy's accept tasks have started
        tasks_before, fds_before = task_count(), open_fds()
        observer = wsclient.connect(
            server.url,
            compression=None,
            heartbeat=None,
            subscriber_buffer=BufferPolicy(max_messages=CAPACITY, overflow="fail"),
        )
        client = wsclient.connect(
            proxy.url(),
            compression=None,
            # Silence is fatal after 0.4 s; a timeout longer than the interval
            # takes the path where data arrives early in a ping's wait.
            heartbeat=Heartbeat(interval=0.15, timeout=0.25),
            backoff=Backoff(initial=0.01, maximum=0.1, min_uptime=0.05),
            queue=QueuePolicy(max_messages=CAPACITY, max_bytes=None, overflow="reject"),
            request_timeout=REQUEST_TIMEOUT,
            open_timeout=0.5,
            close_timeout=BOUND,
            hook_timeout=2.0,
        )
        hub_order, got = Channel(CAPACITY), Channel(CAPACITY)
        async with observer, client:
            memory = await soak(client, observer, proxy, ledger, hub_order, got, tally, rng)
            stats = client.statistics()
            await client.aclose()
            await observer.aclose()
        closed = client.statistics()
        await until(
            lambda: (
                proxy.statistics().connections_active == 0
                and server.statistics().connections_open == 0
            ),
            "the proxy and the Hub closed every connection",
        )
        fds_after = await settled_fds(fds_before)
        tasks_after = task_count()
    elapsed = time.perf_counter() - started

    runs = ledger.runs()
    missing = [seq for seq in range(tally.events_sent) if not ledger.has(seq)]
    summary = (
        f"seed={SEED} {FAULTS} faults {tally.faults} in {elapsed:.1f}s;"
        f" proxy: {proxy.statistics().faults} fault commands, {proxy.statistics().cuts} cuts;"
        f" client: {stats.connection.reconnects} reconnects,"
        f" {stats.connection.heartbeat_timeouts} heartbeat timeouts;"
        f" requests: {tally.answered} answered, failed {tally.request_failures};"
        f" events: {tally.events_sent} sent, {ledger.received} received on {len(runs)}"
        f" connections, {len(missing)} lost, {ledger.late} late;"
        f" channel: {tally.published} published, {hub_order.count} sent by the Hub,"
        f" {got.count} received;"
        f" memory blocks at fault {FIRST_SAMPLE} and {FAULTS}: {memory[0]} -> {memory[1]};"
        f" tasks {tasks_before} -> {tasks_after}, fds {fds_before} -> {fds_after}"
    )
    print(summary)
    assert sum(tally.faults.values()) == FAULTS, summary
    assert not tally.wrong, (tally.wrong[:5], summary)
    assert not ledger.problems, (ledger.problems, summary)
    assert not hub_order.problems, hub_order.problems
    assert not got.problems, got.problems

    # Events: at most once, in order, lost only with the tail of a connection.
    assert max(ledger.counts) == 1, summary
    for before, after in itertools.pairwise(runs):
        assert before[1] < after[0], (before, after, summary)
    assert sum(last - first + 1 for first, last in runs) == ledger.received, summary
    # Between two runs, or before the first: the first connections may deliver none.
    bounds = [(-1, -1), *runs]
    for seq in missing:
        assert any(a[1] < seq < b[0] for a, b in itertools.pairwise(bounds)), (seq, summary)

    # Channel messages: at most once (Channel.add), in the Hub's order.
    ranks = [hub_order.position[got.order[i]] for i in range(got.count)]
    assert all(rank >= 0 for rank in ranks), summary
    assert ranks == sorted(ranks), summary

    # Requests.
    assert tally.answered > 0, summary
    assert got.count > 0, summary
    assert stats.requests.pending == 0, summary  # every call returned
    assert closed.requests.pending == 0, summary
    assert closed.state is C.CLOSED
    assert closed.connection.live_transports == 0

    # The queue never dropped anything, and the close flushed it.
    queue = closed.connection.queue
    assert (queue.dropped_oldest, queue.dropped_newest, queue.rejected) == (0, 0, 0), queue
    assert (queue.expired, queue.discarded, queue.messages) == (0, 0, 0), queue
    assert queue.queued == queue.sent, queue

    # Nothing leaked.
    assert (tasks_after, fds_after) == (tasks_before, fds_before), summary
    growth = memory[1] - memory[0]
    assert growth < NOISE_BLOCKS + LEAK_BLOCKS_PER_FAULT * (FAULTS - FIRST_SAMPLE), summary


async def soak(
    client: wsclient.Client,
    observer: wsclient.Client,
    proxy: FaultProxy,
    ledger: Ledger,
    hub_order: Channel,
    got: Channel,
    tally: Tally,
    rng: random.Random,
) -> tuple[int, int]:
    """Run the workload through the fault schedule; return the two memory samples."""
    stop = anyio.Event()
    watched = await observer.subscribe(CHANNEL)
    subscription = await client.subscribe(CHANNEL)
    with anyio.fail_after(BOUND):
        await watched.confirmed()
        await subscription.confirmed()

    asking: dict[int, float] = {}  # worker -> when its request started
    hold: anyio.Event | None = None  # set while the workload is held for a sample
    busy = 0  # workers in the middle of an operation

    @contextlib.asynccontextmanager
    async def operation() -> AsyncIterator[None]:
        nonlocal busy
        while hold is not None:
            await hold.wait()
        busy += 1
        try:
            yield
        finally:
            busy -= 1

    async def request(worker: int, policy: InFlight) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            asked = {"worker": worker, "n": n}
            async with operation():
                asking[worker] = anyio.current_time()
                try:
                    answer = await client.query("echo", asked, in_flight=policy)
                except (ConnectionLost, RequestTimeout, QueueFull) as exc:
                    name = type(exc).__name__
                    tally.request_failures[name] = tally.request_failures.get(name, 0) + 1
                else:
                    if answer != asked:
                        tally.wrong.append(f"asked {asked}, answered {answer}")
                    tally.answered += 1
                finally:
                    del asking[worker]
            await anyio.sleep(0.003)

    def check_no_request_hangs() -> None:
        # Watched from outside: a deadline per request would stay in trio's
        # deadline heap (and asyncio's timer heap) long after it ends, and
        # blur the memory samples.
        now = anyio.current_time()
        for worker, since in asking.items():
            if now - since > REQUEST_TIMEOUT + 1.0:
                tally.wrong.append(f"worker {worker}: a request pending for {now - since:.1f}s")

    async def send_events() -> None:
        while not stop.is_set() and tally.events_sent < CAPACITY - 100:
            async with operation():
                assert await client.publish_event("seq", tally.events_sent)
                tally.events_sent += 1
            await anyio.sleep(0.002)

    async def publish() -> None:
        while not stop.is_set() and tally.published < CAPACITY - 100:
            async with operation():
                assert await client.publish(CHANNEL, tally.published)
                tally.published += 1
            await anyio.sleep(0.003)

    async def consume(source: wsclient.Subscription, into: Channel) -> None:
        async for data in source:
            into.add(data)

    async def settle() -> None:
        """Wait for one open connection with the queue drained."""
        with anyio.fail_after(BOUND):
            await client.wait_state(C.OPEN)
        await until(
            lambda: (
                client.state is C.OPEN
                and client.statistics().connection.queue.messages == 0
                and proxy.statistics().connections_active == 1
            ),
            "one open connection, queue drained",
        )

    async def sample() -> int:
        """Hold the workload, let everything in flight land, count the memory blocks."""
        nonlocal hold
        hold = anyio.Event()
        try:
            await settle()
            await until(lambda: busy == 0, "the workload is held")
            with anyio.fail_after(BOUND):
                while True:
                    try:
                        # The Hub replies after delivering what it got before.
                        await client.query("echo", "sync")
                        break
                    except (ConnectionLost, RequestTimeout):
                        await settle()
            return allocated_blocks()
        finally:
            hold.set()
            hold = None

    samples: list[int] = []
    async with anyio.create_task_group() as group:
        group.start_soon(consume, watched, hub_order)
        group.start_soon(consume, subscription, got)
        workers: list[Callable[[], Awaitable[None]]] = [
            lambda: request(0, "fail"),
            lambda: request(1, "fail"),
            lambda: request(2, "resend"),
            send_events,
            publish,
        ]
        async with anyio.create_task_group() as workload:
            for worker in workers:
                workload.start_soon(worker)
            # One deadline for the schedule (a fault takes under 0.6 s): one
            # per fault would linger in trio's deadline heap for its full span.
            with anyio.fail_after(FAULTS + BOUND):
                for number in range(1, FAULTS + 1):
                    kind = rng.choices(KINDS, WEIGHTS)[0]
                    tally.faults[kind] += 1
                    await inject(kind, rng, proxy)
                    await anyio.sleep(rng.uniform(0.0, 0.05))
                    check_no_request_hangs()
                    if number in (FIRST_SAMPLE, FAULTS):
                        samples.append(await sample())
            stop.set()
        # After the last fault nothing may be lost: a last burst of events,
        # a channel message and a request all get through.
        first_tail = tally.events_sent
        for _ in range(20):
            assert await client.publish_event("seq", tally.events_sent)
            tally.events_sent += 1
        await until(
            lambda: all(ledger.has(seq) for seq in range(first_tail, tally.events_sent)),
            "every event sent after the last fault arrived",
        )
        with anyio.fail_after(BOUND):
            await subscription.confirmed()
        assert subscription.state is SubscriptionState.SUBSCRIBED
        marker = tally.published
        assert await client.publish(CHANNEL, marker)
        tally.published += 1
        await until(lambda: got.has(marker), "the last channel message")
        await until(lambda: hub_order.has(marker), "the observer got every channel message")
        with anyio.fail_after(BOUND):
            assert await client.query("echo", "last") == "last"
        await subscription.aclose()
        await watched.aclose()
    return samples[0], samples[1]


async def test_refuse_racing_a_connection_accepts_it_or_resets_it() -> None:
    """refuse() racing a waiting connection serves or resets it, never drops it (asyncio)."""

    async def serve(stream: SocketStream) -> None:
        await stream.aclose()

    def ending(sock: socket.socket) -> str:
        """How the connection ends, seen from the client: "eof" or "reset"."""
        sock.settimeout(BOUND)
        with sock:
            try:
                return "eof" if sock.recv(1) == b"" else "data"
            except ConnectionResetError:
                return "reset"

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, serve)
        async with FaultProxy(("127.0.0.1", listener.extra(SocketAttribute.local_port))) as proxy:
            with anyio.fail_after(BOUND):
                await anyio.wait_all_tasks_blocked()  # the proxy waits in accept()
            waiting: list[socket.socket] = []

            async def connect_now() -> None:
                # Runs while refuse() yields once (taking its lock): on asyncio the
                # next loop pass resumes refuse(), which cancels accept(), then runs
                # the accept callback for this connection (CPython gh-153761).
                waiting.append(socket.create_connection(("127.0.0.1", proxy.port)))

            with anyio.fail_after(BOUND):
                async with anyio.create_task_group() as race:
                    race.start_soon(proxy.refuse)
                    race.start_soon(connect_now)
                how = await anyio.to_thread.run_sync(ending, waiting[0])
            # Accepted before the refusal took effect (trio), it is relayed and ends
            # when the server closes; otherwise closing the listening socket resets it.
            accepted = proxy.statistics().connections_accepted
            assert (accepted, how) in ((1, "eof"), (0, "reset"))
            await proxy.accept()
            async with await anyio.connect_tcp("127.0.0.1", proxy.port) as stream:
                with pytest.raises(anyio.EndOfStream):
                    await stream.receive()
            assert proxy.statistics().connections_accepted == accepted + 1
        group.cancel_scope.cancel()


class TestHeartbeatOnAFakeClock:
    """The heartbeat's probes, on virtual time."""

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
        return _fake_clock_backend(request.param)

    async def test_a_probe_due_after_a_ping_timed_out_is_sent(self) -> None:
        """A probe due as a ping times out is sent, not just counted: a live server stays."""
        ends: list[MemoryTransport] = []

        async def factory() -> Transport:
            client, server = MemoryTransport.pair()
            ends.append(server)
            return client

        # timeout > interval: data early in the wait leaves silence of more
        # than an interval when the ping times out, so a probe is due at once.
        heartbeat = Heartbeat(interval=5.0, timeout=10.0)
        backoff = Backoff(jitter="none", initial=1.0, maximum=1.0, min_uptime=0.0)
        rt = ReconnectingTransport(factory, backoff=backoff, heartbeat=heartbeat)
        changes: list[StateChange] = []
        rt.on_state_change(changes.append)
        async with rt:
            server = ends[0]
            await anyio.sleep(4.0)
            server.blackhole()  # the probe sent at 5 is lost on the way
            await anyio.sleep(1.5)
            server.blackhole(False)
            await anyio.sleep(0.5)
            await server.send("still here")  # arrives at 6, while the ping waits
            assert await rt.receive() == "still here"
            assert anyio.current_time() == 15.0  # the ping timed out: reading resumed
            await anyio.sleep(22.0)
            stats = rt.statistics()
            assert [c.state for c in changes] == [C.CONNECTING, C.OPEN]
            assert len(ends) == 1
            assert stats.heartbeat_timeouts == 0
            assert stats.transport is not None
            # Probes at 5 (lost), 15 (answered at once), then every 5 s: 20 ... 35.
            assert stats.heartbeat_probes == stats.transport.pings_sent == 6
