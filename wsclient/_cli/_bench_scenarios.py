"""The scenarios of ``wsclient bench``: what each one measures, and how.

The fleet of connections every scenario opens first, then the phases a run
goes through, then each scenario. A scenario takes the :class:`Settings`, a
:class:`Tally` and a :class:`Meter` and returns an :class:`Outcome`; it
counts what goes wrong (refused connections, failed requests, dropped
connections, lost messages) instead of raising. Every reply is waited for
``--timeout`` at most, so a server that does not answer ends a run with
errors, never hangs it.

What is measured, and what is not:

- Latencies are taken with ``time.perf_counter_ns`` in this process, from
  just before a message is sent to the arrival of the reply (or delivery)
  that carries that message's own id or number, never whichever came back.
  Percentiles are nearest-rank (see ``_bench_report.percentile``).
- Connection setup is outside every rate but the ``connections``
  scenario's. A warm-up phase (``--warmup``) then runs the same load on the
  same connections and is thrown away: the first messages pay for lazy
  imports, cold caches and the server's first allocations. Its errors count.
- A phase stops sending at its end, then waits for what is in flight; the
  rates divide what arrived in the measured phase by its time, that wait
  included, so both cover the same interval.
- MB/s counts WebSocket bytes both ways, frame headers included (TLS not),
  as this side's transports counted them: requests and replies,
  publications and deliveries.
"""

from __future__ import annotations

import gc
import itertools
import os
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

import anyio
import orjson
from anyio.abc import TaskGroup

from wsclient import (
    Client,
    ConnectionState,
    DefaultDialect,
    RequestTimeout,
    StateChange,
    WebSocketTransport,
    WSClientError,
    connect_transport,
)
from wsclient._cli._bench_report import Meter, Tally, latency_summary, rate

__all__ = ["SCENARIOS", "Echoes", "Outcome", "Settings", "hub_request"]

HUB_QUERY = "echo"  # the Hub's built-in query that replies with its parameters


@dataclass(frozen=True)
class Settings:
    """One run's options, checked by the command line."""

    scenario: str
    url: str
    echo: bool  # the server is a plain echo server: use the bare transport
    connections: int
    duration: float
    warmup: float  # seconds of the same load before the measured phase, thrown away
    message_size: int
    window: int  # messages in flight per connection (throughput, fanout)
    rate: float | None  # fanout publishes per second; None: as fast as the window allows
    timeout: float  # seconds for opening, for each reply, for closing

    @property
    def max_size(self) -> int:
        """The largest message the client accepts: room for a reply to the biggest request."""
        return max(2**20, 2 * self.message_size + 4096)


@dataclass
class Outcome:
    """What a scenario reports: the ``results`` of the JSON document, and how it ran."""

    client: str  # "Client" (the full SDK) or "transport" (the bare WebSocketTransport)
    connections: int
    window: int | None
    results: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None  # the run could not start: no connection opened


# The fleet: connections opened at once, each held open by a task of its own
# (a task group, or a client's, must be left by the task that entered it).

M = TypeVar("M", Client, WebSocketTransport)


class Fleet(Generic[M]):
    """``count`` connections opened concurrently and held until :meth:`close`."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.members: list[M] = []
        self.open_ns: list[int] = []  # each one's time from the start to OPEN
        self.dropped = anyio.Event()  # some connection closed without our asking
        self._release = anyio.Event()
        self._running = 0
        self._stopped = anyio.Event()

    async def open(
        self,
        tg: TaskGroup,
        opener: Callable[[], AbstractAsyncContextManager[M]],
        count: int,
        meter: Meter,
    ) -> None:
        """Open ``count`` connections; return once each one is open or failed (counted)."""
        started = time.perf_counter_ns()
        settled = anyio.Event()
        pending = count
        self._running += count

        def settle() -> None:
            nonlocal pending
            pending -= 1
            meter.advance()
            if pending == 0:
                settled.set()

        async def hold() -> None:
            counted = False
            try:
                async with opener() as member:
                    self.open_ns.append(time.perf_counter_ns() - started)
                    self.members.append(member)
                    counted = True
                    settle()
                    await self._release.wait()
            except WSClientError as exc:  # refused, timed out, rejected: bounded by open_timeout
                self.tally.error(exc)
            finally:
                if not counted:
                    settle()
                self._running -= 1
                if self._running == 0:
                    self._stopped.set()

        for _ in range(count):
            tg.start_soon(hold)
        await settled.wait()

    def watch(self, client: Client) -> Client:
        """Count ``client`` closing on its own (the server went away) as an error."""

        def closed(change: StateChange) -> None:
            if is_drop(change):
                self.tally.error(f"connection dropped: {change.error or 'closed by the server'}")
                self.dropped.set()

        client.on_state(closed)
        return client

    def wire_bytes(self) -> list[tuple[int, int] | None]:
        """Each member's WebSocket bytes (sent, received) so far; None once it is gone."""
        return [_wire_bytes(member) for member in self.members]

    async def close(self) -> None:
        """Close every connection (each bounded by its close timeout) and wait for it."""
        self._release.set()
        if self._running:
            await self._stopped.wait()


def is_drop(change: StateChange) -> bool:
    """OPEN -> CLOSED directly: the connection died, it was not our aclose() (via CLOSING)."""
    return change.state is ConnectionState.CLOSED and change.previous is ConnectionState.OPEN


def _wire_bytes(member: Client | WebSocketTransport) -> tuple[int, int] | None:
    if isinstance(member, Client):
        counters = member.statistics().connection.transport  # None between connections
    else:
        counters = member.statistics()
    return None if counters is None else (counters.bytes_sent, counters.bytes_received)


def bytes_between(
    before: list[tuple[int, int] | None], after: list[tuple[int, int] | None]
) -> tuple[int, int]:
    """Bytes sent and received between two :meth:`Fleet.wire_bytes`, over the members in both.

    A connection gone by the end takes its counters with it: its bytes are
    missing, and its drop is counted as an error.
    """
    sent = received = 0
    for start, end in zip(before, after, strict=True):
        if start is not None and end is not None:
            sent += end[0] - start[0]
            received += end[1] - start[1]
    return sent, received


def client_opener(
    settings: Settings, fleet: Fleet[Client]
) -> Callable[[], AbstractAsyncContextManager[Client]]:
    """Clients as a program would make them (heartbeat on), but never reconnecting.

    A benchmark that reconnected would hide the failure it should count.
    Compression is off, as it is on the Hub, so message sizes are what was asked.
    """

    def opener() -> Client:
        client = Client(
            settings.url,
            reconnect=False,
            compression=None,
            max_size=settings.max_size,
            open_timeout=settings.timeout,
            close_timeout=settings.timeout,
            request_timeout=settings.timeout,
        )
        return fleet.watch(client)

    return opener


def transport_opener(
    settings: Settings,
) -> Callable[[], AbstractAsyncContextManager[WebSocketTransport]]:
    @asynccontextmanager
    async def opener() -> AsyncIterator[WebSocketTransport]:
        transport = await connect_transport(
            settings.url,
            compression=None,
            max_size=settings.max_size,
            open_timeout=settings.timeout,
            close_timeout=settings.timeout,
        )
        async with transport:
            yield transport

    return opener


# The phases of a run on an open fleet: warm-up, then measured.

# Runs the load until ``end_ns`` (perf_counter_ns), then waits for what is in flight.
Phase = Callable[[int], Awaitable[None]]


async def run_phases(
    settings: Settings,
    tally: Tally,
    meter: Meter,
    fleet: Fleet[M],
    phase: Phase,
    restart: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Warm up, then measure: the measured phase's elapsed time and bytes, as results.

    After the warm-up, the tally and ``restart()`` forget what it counted.
    """
    if settings.warmup > 0:
        meter.time("warming up", settings.warmup)
        await _bounded(phase, settings.warmup, settings, tally)
        broken = fleet.dropped.is_set() or (tally.errors > 0 and tally.messages == 0)
        tally.restart()
        if restart is not None:
            restart()
        if broken:
            # A run ends at the first drop; and with no reply at all,
            # measuring would only wait for --timeout again.
            return {"elapsed_s": 0.0, "bytes_sent": 0, "bytes_received": 0, "mb_per_s": 0.0}
    meter.time("measuring", settings.duration)
    before = fleet.wire_bytes()
    start = time.perf_counter_ns()
    await _bounded(phase, settings.duration, settings, tally)
    elapsed = (time.perf_counter_ns() - start) / 1e9
    sent, received = bytes_between(before, fleet.wire_bytes())
    return {
        "elapsed_s": round(elapsed, 3),
        "bytes_sent": sent,
        "bytes_received": received,
        "mb_per_s": round(rate(sent + received, elapsed) / 1e6, 3),
    }


async def _bounded(phase: Phase, seconds: float, settings: Settings, tally: Tally) -> None:
    end_ns = time.perf_counter_ns() + int(seconds * 1e9)
    # Each reply is bounded by --timeout already; this catches a send that
    # never returns, when the server stops reading.
    with anyio.move_on_after(seconds + 2 * settings.timeout) as bound:
        await phase(end_ns)
    if bound.cancelled_caught:
        tally.error(f"the server stopped answering: cut {2 * settings.timeout:g} s after the end")


async def _measure(
    settings: Settings,
    tally: Tally,
    meter: Meter,
    fleet: Fleet[M],
    opener: Callable[[], AbstractAsyncContextManager[M]],
    phase: Phase,
    outcome: Outcome,
) -> None:
    """Open the fleet, warm up and measure ``phase`` on it, close it."""
    async with anyio.create_task_group() as tg:
        meter.count("connecting", settings.connections)
        await fleet.open(tg, opener, settings.connections, meter)
        try:
            if not fleet.members:
                outcome.failure = tally.error_samples[0] if tally.error_samples else "no connection"
                return
            outcome.results.update(await run_phases(settings, tally, meter, fleet, phase))
        finally:
            meter.count("closing", 0)
            await fleet.close()


def _add_rates(outcome: Outcome, tally: Tally, message_bytes: int) -> None:
    outcome.results.update(
        messages=tally.messages,
        message_bytes=message_bytes,
        msgs_per_s=rate(tally.messages, outcome.results.get("elapsed_s", 0.0)),
        latency_us=tally.latency(),
    )


# rtt and throughput: request and reply, or message and echo.

Call = Callable[[], Awaitable[bool]]


async def roundtrips(call: Call, alive: Callable[[], bool], tally: Tally, end_ns: int) -> None:
    """Sequential round trips until ``end_ns`` while the connection lives: latencies, errors.

    ``call()`` sends one message and returns whether the reply was the one expected.
    """
    clock = time.perf_counter_ns
    while alive() and (start := clock()) < end_ns:
        try:
            expected = await call()
        except WSClientError as exc:
            tally.error(exc)
            continue
        if expected:
            tally.record(clock() - start)
        else:
            tally.error("unexpected reply")


def hub_request(size: int) -> tuple[dict[str, Any], int]:
    """Parameters of an ``echo`` query whose request frame is ``size`` bytes; the real size."""
    dialect = DefaultDialect()

    def frame(pad: str) -> Any:
        kind, payload = dialect.query(HUB_QUERY, {"pad": pad})
        return dialect.request(100_000, kind, payload)  # a 6-digit id: a typical run

    pad, actual = padded(size, frame)
    return {"pad": pad}, actual


def padded(size: int, frame: Callable[[str], Any]) -> tuple[str, int]:
    """The padding that makes ``frame(pad)`` encode to ``size`` bytes (or its smallest), and
    that size."""
    bare = len(orjson.dumps(frame("")))
    pad = "x" * max(0, size - bare)
    return pad, max(size, bare)


async def measure_hub(settings: Settings, tally: Tally, meter: Meter, workers: int) -> Outcome:
    """``workers`` tasks per Client making ``echo`` queries one after the other."""
    parameters, size = hub_request(settings.message_size)
    fleet: Fleet[Client] = Fleet(tally)

    def caller(client: Client) -> Call:
        async def call() -> bool:
            # The Client matches each reply to its request by id.
            return bool(await client.query(HUB_QUERY, parameters) == parameters)

        return call

    def alive(client: Client) -> Callable[[], bool]:
        return lambda: client.state is ConnectionState.OPEN

    async def phase(end_ns: int) -> None:
        async with anyio.create_task_group() as tg:
            for client in fleet.members:
                for _ in range(workers):
                    tg.start_soon(roundtrips, caller(client), alive(client), tally, end_ns)

    window = workers if settings.scenario == "throughput" else None
    outcome = Outcome("Client", settings.connections, window)
    await _measure(settings, tally, meter, fleet, client_opener(settings, fleet), phase, outcome)
    _add_rates(outcome, tally, size)
    return outcome


class Echoes:
    """The messages sent to an echo server: ``size`` bytes of ASCII, each one numbered.

    A message starts with its number in hex (its last ``size`` digits when
    shorter) and is padded with ``x``, not a hex digit: an echo is matched to
    its own message, byte for byte, whether it comes back as text or binary.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._pad = memoryview(b"x" * size)

    def message(self, number: int) -> bytes:
        tag = (b"%x" % number)[-self.size :]
        return b"".join((tag, self._pad[len(tag) :]))

    def matches(self, reply: str | bytes, number: int) -> bool:
        data = reply.encode() if isinstance(reply, str) else reply
        return len(data) == self.size and data == self.message(number)


class EchoPeer:
    """One transport to an echo server, its messages numbered across the phases.

    It takes itself out of use when the connection fails, or when an echo
    timed out in a pipeline (echoes still coming would no longer match).
    """

    def __init__(self, transport: WebSocketTransport, echoes: Echoes, timeout: float) -> None:
        self.transport = transport
        self.echoes = echoes
        self.timeout = timeout
        self.usable = True
        self._numbers = itertools.count()
        self._late: set[int] = set()  # messages whose echo timed out: skipped if it comes

    def start(self, tg: TaskGroup, settings: Settings, tally: Tally, end_ns: int) -> None:
        """Load this connection until ``end_ns``, unless it is out of use.

        One that closed since is not: its first send fails, and counts.
        """
        if not self.usable:
            return
        if settings.scenario == "throughput":
            tg.start_soon(self._pipeline, settings.window, tally, end_ns)
        else:
            tg.start_soon(roundtrips, partial(self._call, tally), self._alive, tally, end_ns)

    def _alive(self) -> bool:
        return self.usable

    async def _call(self, tally: Tally) -> bool:
        """Send one message and wait for its echo, ``timeout`` at most; count strays."""
        number = next(self._numbers)
        try:
            with anyio.move_on_after(self.timeout):
                await self.transport.send(self.echoes.message(number), text=True)
                while True:
                    reply = await self.transport.receive()
                    if self.echoes.matches(reply, number):
                        return True
                    late = next((n for n in self._late if self.echoes.matches(reply, n)), None)
                    if late is None:
                        tally.error("a message that echoes nothing we sent")
                    else:
                        self._late.discard(late)  # its timeout was counted
        except WSClientError:
            self.usable = False
            raise
        self._late.add(number)
        raise RequestTimeout(f"no echo within --timeout {self.timeout:g} s")

    async def _pipeline(self, window: int, tally: Tally, end_ns: int) -> None:
        """One sender and one reader, at most ``window`` messages unanswered, until ``end_ns``.

        An echo server answers in order, so each echo is the oldest message
        waiting: its latency includes its wait in the pipeline, and so does
        its ``timeout``.
        """
        clock = time.perf_counter_ns
        timeout_ns = int(self.timeout * 1e9)
        room = anyio.Semaphore(window)
        in_flight: deque[tuple[int, int]] = deque()  # (sent at, number), oldest first

        async def read() -> None:
            while True:
                # Until the oldest message is due; with none in flight, the
                # next one sent is due within a timeout from now.
                due = in_flight[0][0] + timeout_ns if in_flight else clock() + timeout_ns
                with anyio.move_on_after((due - clock()) / 1e9) as waiting:
                    reply = await self.transport.receive()
                if waiting.cancelled_caught:
                    if in_flight and clock() >= in_flight[0][0] + timeout_ns:
                        message = f"no echo within --timeout {self.timeout:g} s"
                        tally.error(message, count=len(in_flight))
                        self.usable = False
                        return
                elif in_flight and self.echoes.matches(reply, in_flight[0][1]):
                    sent_at, _ = in_flight.popleft()
                    tally.record(clock() - sent_at)
                    room.release()
                else:
                    tally.error("a message that echoes nothing we sent")

        async def read_or_fail(scope: anyio.CancelScope) -> None:
            try:
                await read()
            except WSClientError as exc:
                tally.error(exc)
                self.usable = False
            scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_or_fail, tg.cancel_scope)
            try:
                while clock() < end_ns:
                    await room.acquire()
                    number = next(self._numbers)
                    in_flight.append((clock(), number))
                    await self.transport.send(self.echoes.message(number), text=True)
                for _ in range(window):  # every echo is in
                    await room.acquire()
            except WSClientError as exc:
                tally.error(exc)
                self.usable = False
            tg.cancel_scope.cancel()


async def measure_echo(settings: Settings, tally: Tally, meter: Meter) -> Outcome:
    """The bare transport against an echo server: sequential (rtt) or pipelined (throughput)."""
    echoes = Echoes(settings.message_size)
    fleet: Fleet[WebSocketTransport] = Fleet(tally)
    peers: dict[WebSocketTransport, EchoPeer] = {}

    async def phase(end_ns: int) -> None:
        async with anyio.create_task_group() as tg:
            for transport in fleet.members:
                peer = peers.setdefault(transport, EchoPeer(transport, echoes, settings.timeout))
                peer.start(tg, settings, tally, end_ns)

    window = settings.window if settings.scenario == "throughput" else None
    outcome = Outcome("transport", settings.connections, window)
    await _measure(settings, tally, meter, fleet, transport_opener(settings), phase, outcome)
    _add_rates(outcome, tally, settings.message_size)
    return outcome


async def rtt(settings: Settings, tally: Tally, meter: Meter) -> Outcome:
    """Request/response latency: one request at a time on each connection."""
    if settings.echo:
        return await measure_echo(settings, tally, meter)
    return await measure_hub(settings, tally, meter, workers=1)


async def throughput(settings: Settings, tally: Tally, meter: Meter) -> Outcome:
    """Pipelined messages: ``window`` in flight on each connection."""
    if settings.echo:
        return await measure_echo(settings, tally, meter)
    return await measure_hub(settings, tally, meter, workers=settings.window)


# fanout: one publisher, N subscribers.


class Deliveries:
    """One phase of a fanout: what each subscriber got, and the publishing window.

    A channel reaches each subscriber in order, so a subscriber's next
    expected number tells a duplicate (lower) from a loss (higher: the ones
    skipped never come), and what a subscriber that dropped will never get.
    A message frees its place in the window once every live subscriber has
    it, or is known never to get it.
    """

    def __init__(self, subscribers: int, window: int, first_seq: int, tally: Tally) -> None:
        self.subscribers = subscribers
        self.tally = tally
        self.window = anyio.Semaphore(window)
        self.first_seq = first_seq
        self.next_seq = first_seq  # the next message to publish
        self.expected = [first_seq] * subscribers  # each subscriber's next message
        self.live = [True] * subscribers
        self.live_count = subscribers
        self.waiting: dict[int, int] = {}  # seq -> live subscribers it has not reached yet
        self.delivered = 0
        self.publishing = True
        self.all_in = anyio.Event()  # set once publishing is over and nothing waits
        self._wait: anyio.CancelScope | None = None

    @property
    def published(self) -> int:
        return self.next_seq - self.first_seq

    def sent(self) -> int:
        """Number the next publish and expect it at every live subscriber."""
        seq = self.next_seq
        self.next_seq += 1
        self.waiting[seq] = self.live_count
        return seq

    async def wait_for_turn(self, due_ns: int, end_ns: int) -> bool:
        """Wait until ``due_ns`` and for room in the window; False once publishing is over."""
        clock = time.perf_counter_ns
        if not self.publishing or clock() >= end_ns:
            return False
        with anyio.CancelScope(deadline=anyio.current_time() + (end_ns - clock()) / 1e9) as wait:
            self._wait = wait  # stop() cancels it
            if due_ns > clock():
                await anyio.sleep((due_ns - clock()) / 1e9)
            await self.window.acquire()
        self._wait = None
        return self.publishing and not wait.cancelled_caught

    def received(self, subscriber: int, data: Any) -> None:
        """A subscriber's callback, in its client's reader task: it must not block."""
        now = time.perf_counter_ns()
        seq = data.get("seq") if isinstance(data, dict) else None
        stamp = data.get("t") if isinstance(data, dict) else None
        if not (isinstance(seq, int) and isinstance(stamp, int)):
            self.tally.error("a delivery that is not ours")
            return
        if seq < self.first_seq:
            return  # the warm-up's, late: its loss was counted then
        expected = self.expected[subscriber]
        if seq < expected or seq >= self.next_seq:
            self.tally.error(f"message {seq} delivered again or out of order")
            return
        for skipped in range(expected, seq):  # lost: counted at the end, as not delivered
            self._settle(skipped)
        self.expected[subscriber] = seq + 1
        self.tally.record(now - stamp)
        self.delivered += 1
        self._settle(seq)

    def dropped(self, subscriber: int) -> None:
        """A subscriber's connection died: what it has not got, it never will."""
        if not self.live[subscriber]:
            return
        self.live[subscriber] = False
        self.live_count -= 1
        for seq in range(self.expected[subscriber], self.next_seq):
            self._settle(seq)
        self.stop()

    def stop(self) -> None:
        """No more publishing: the phase ended or a connection dropped."""
        self.publishing = False
        if self._wait is not None:
            self._wait.cancel()
        if not self.waiting:
            self.all_in.set()

    def _settle(self, seq: int) -> None:
        left = self.waiting.get(seq)
        if left is None:
            return
        if left > 1:
            self.waiting[seq] = left - 1
            return
        del self.waiting[seq]
        self.window.release()
        if not self.publishing and not self.waiting:
            self.all_in.set()

    @property
    def lost(self) -> int:
        """Deliveries published but not delivered (yet, while the phase runs)."""
        return self.published * self.subscribers - self.delivered

    def count_losses(self) -> None:
        """Count each delivery lost as an error, under one sample message."""
        if self.lost > 0:
            self.tally.error(f"{self.lost} deliveries lost", count=self.lost)


class FanoutRun:
    """The fanout's connections, its channel, and the phase under way."""

    def __init__(self, settings: Settings, tally: Tally, fleet: Fleet[Client]) -> None:
        self.settings = settings
        self.tally = tally
        self.fleet = fleet
        self.channel = f"wsclient-bench-{uuid.uuid4().hex[:12]}"  # ours alone, on a shared server
        self.pad, self.size = padded(settings.message_size, self._delivery)
        self.deliveries = Deliveries(settings.connections, settings.window, 0, tally)

    def _delivery(self, pad: str) -> Any:
        """The delivery the Hub sends, to size the publish by."""
        data = {"seq": 100_000, "t": time.perf_counter_ns(), "pad": pad}
        return {"channel": self.channel, "data": data}

    @property
    def publisher(self) -> Client:
        return self.fleet.members[0]

    async def subscribe(self, meter: Meter) -> bool:
        """Subscribe every client but the first, then wait for each confirmation."""
        subscribers = self.fleet.members[1:]
        meter.count("subscribing", len(subscribers))
        self.publisher.on_state(partial(self._on_state, None))
        subscriptions = []
        try:
            for i, client in enumerate(subscribers):
                client.on_state(partial(self._on_state, i))
                callback = partial(self._received, i)
                subscriptions.append(await client.subscribe(self.channel, callback=callback))
            for subscription in subscriptions:
                await subscription.confirmed()
                meter.advance()
        except WSClientError as exc:
            self.tally.error(exc)
            return False
        return True

    def _received(self, subscriber: int, data: Any) -> None:
        self.deliveries.received(subscriber, data)  # the phase's, whichever it is

    def _on_state(self, subscriber: int | None, change: StateChange) -> None:
        if is_drop(change):
            if subscriber is None:
                self.deliveries.stop()  # the publisher: what it queued is lost
            else:
                self.deliveries.dropped(subscriber)

    def restart(self) -> None:
        """Start a phase's bookkeeping afresh; the messages' numbers go on."""
        first_seq = self.deliveries.next_seq
        self.deliveries = Deliveries(
            self.settings.connections, self.settings.window, first_seq, self.tally
        )

    async def phase(self, end_ns: int) -> None:
        """Publish until ``end_ns`` or a drop, then wait ``--timeout`` at most for the rest."""
        await self._publish(end_ns)
        with anyio.move_on_after(self.settings.timeout):
            await self.deliveries.all_in.wait()
        self.deliveries.count_losses()

    async def _publish(self, end_ns: int) -> None:
        """Publish, ``window`` at most undelivered, paced at ``--rate`` if given."""
        deliveries, clock = self.deliveries, time.perf_counter_ns
        interval = int(1e9 / self.settings.rate) if self.settings.rate else 0  # ns
        start = clock()
        try:
            # Only the waits are cut short: a publish cut under way could
            # be lost after being counted.
            while await deliveries.wait_for_turn(start + deliveries.published * interval, end_ns):
                seq = deliveries.sent()
                data = {"seq": seq, "t": clock(), "pad": self.pad}
                if not await self.publisher.publish(self.channel, data):
                    self.tally.error("the outbound queue dropped a publish")
        except WSClientError as exc:
            self.tally.error(exc)
        deliveries.stop()


async def fanout(settings: Settings, tally: Tally, meter: Meter) -> Outcome:
    """Every message published reaches every subscriber: its latency, and what was lost."""
    subscribers = settings.connections
    fleet: Fleet[Client] = Fleet(tally)
    run = FanoutRun(settings, tally, fleet)
    outcome = Outcome("Client", subscribers, settings.window)

    async with anyio.create_task_group() as tg:
        meter.count("connecting", subscribers + 1)
        await fleet.open(tg, client_opener(settings, fleet), subscribers + 1, meter)
        try:
            if len(fleet.members) < subscribers + 1:
                outcome.failure = tally.error_samples[0] if tally.error_samples else "no connection"
                return outcome
            if not await run.subscribe(meter):
                outcome.failure = tally.error_samples[0]
                return outcome
            results = await run_phases(settings, tally, meter, fleet, run.phase, run.restart)
            outcome.results.update(results)
        finally:
            meter.count("closing", 0)
            await fleet.close()
    deliveries = run.deliveries
    outcome.results.update(
        published=deliveries.published,
        subscribers=subscribers,
        expected=deliveries.published * subscribers,
        delivered=deliveries.delivered,
        lost=deliveries.lost,
    )
    _add_rates(outcome, tally, run.size)
    return outcome


# connections: open many, hold them, close them.


async def connections(settings: Settings, tally: Tally, meter: Meter) -> Outcome:
    """Open N Clients at once: time to all OPEN, opening rate, memory; hold; close."""
    count = settings.connections
    fleet: Fleet[Client] = Fleet(tally)
    outcome = Outcome("Client", count, None)
    gc.collect()
    before, method = memory_in_use()
    async with anyio.create_task_group() as tg:
        meter.count("opening", count)
        started = time.perf_counter()
        await fleet.open(tg, client_opener(settings, fleet), count, meter)
        to_open = time.perf_counter() - started
        gc.collect()
        after, _ = memory_in_use()
        try:
            if not fleet.members:
                outcome.failure = tally.error_samples[0] if tally.error_samples else "no connection"
                return outcome
            meter.time("holding open", settings.duration)
            holding = time.perf_counter()
            with anyio.move_on_after(settings.duration):
                await fleet.dropped.wait()  # the first drop ends the run
            held = time.perf_counter() - holding
        finally:
            meter.count("closing", 0)
            closing = time.perf_counter()
            await fleet.close()
            to_close = time.perf_counter() - closing
    opened = len(fleet.members)
    per_connection = None
    if before is not None and after is not None:
        per_connection = round(max(0, after - before) / opened)
    outcome.results.update(
        opened=opened,
        failed=count - opened,
        time_to_all_open_s=round(to_open, 6),
        opens_per_s=rate(opened, to_open),
        latency_us=latency_summary(fleet.open_ns),
        memory_per_connection_bytes=per_connection,
        memory_method=method,
        held_s=round(held, 3),
        close_s=round(to_close, 6),
    )
    return outcome


def memory_in_use() -> tuple[int | None, str | None]:
    """This process's memory and how it was measured: resident set (Linux), else its peak.

    The resident set counts what C allocates too (sockets' buffers in user
    space, OpenSSL, the event loop), which tracemalloc would miss; it also
    counts the allocator's slack and reuses pages freed before: an estimate.
    """
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE"), "rss"
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None, None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * (1 if sys.platform == "darwin" else 1024), "peak rss"


Scenario = Callable[[Settings, Tally, Meter], Awaitable[Outcome]]

SCENARIOS: dict[str, Scenario] = {
    "rtt": rtt,
    "throughput": throughput,
    "fanout": fanout,
    "connections": connections,
}
