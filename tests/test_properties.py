"""Property tests of the pure layers: backoff, outbound queue, correlator, channels, buffers.

Hypothesis draws the settings and, for the stateful classes, whole sequences
of operations (``RuleBasedStateMachine``), and checks the invariants after
every step against a small model. Everything is deterministic: the examples
are derandomised, no example database is written, time is a fake clock, and
the few coroutines are driven by hand or on virtual time (trio's
``MockClock``; for the regressions through the Client, looptime on asyncio
too). ``WSCLIENT_PROPERTY_EXAMPLES=2000`` runs more examples.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from wsclient import Client, ConnectionState
from wsclient._backoff import Backoff, Jitter, RetrySchedule
from wsclient._buffer import BufferPolicy, InboundBuffer
from wsclient._channels import ChannelRegistry, Subscription, SubscriptionState
from wsclient._correlator import Correlator, InFlight, Waiter, _as_id
from wsclient._dialect import Inbound, Route
from wsclient._exceptions import (
    ConnectionClosedError,
    ConnectionLost,
    InvalidState,
    QueueFull,
    RemoteError,
    RequestTimeout,
)
from wsclient._outbound import OutboundQueue, Overflow, QueuePolicy, QueueStatistics
from wsclient.testing import MemoryTransport

from .conftest import _fake_clock_backend

# Settings


def fake_clock(backend: str) -> dict[str, Any]:
    """anyio.run() options for ``backend`` on virtual time (as the ``fake_clock`` fixture)."""
    return _fake_clock_backend(backend)[1]


_MORE = int(os.environ.get("WSCLIENT_PROPERTY_EXAMPLES") or 0)


def props(examples: int, *, steps: int | None = None) -> settings:
    """Deterministic settings: ``examples`` by default, or WSCLIENT_PROPERTY_EXAMPLES."""
    extra: dict[str, Any] = {} if steps is None else {"stateful_step_count": steps}
    return settings(
        max_examples=_MORE or examples,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow],
        **extra,
    )


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class _Suspend:
    """An awaitable that suspends a hand-driven coroutine once."""

    def __await__(self) -> Generator[None, None, None]:
        yield


def run_now(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that must finish without suspending; return its value."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the coroutine suspended")


def step(coro: Coroutine[Any, Any, Any], throw: BaseException | None = None) -> tuple[bool, Any]:
    """Resume a hand-driven coroutine: (True, its value) if it finished, else (False, None).

    Exceptions it raises propagate.
    """
    try:
        if throw is None:
            coro.send(None)
        else:
            coro.throw(throw)
    except StopIteration as stop:
        return True, stop.value
    return False, None


# Backoff


def cap(backoff: Backoff, attempt: int) -> float:
    """The un-jittered delay before ``attempt`` (1-based), per the Backoff docstring."""
    try:
        return min(backoff.maximum, backoff.initial * backoff.factor ** (attempt - 1))
    except OverflowError:
        return backoff.maximum


JITTERS: tuple[Jitter, ...] = ("full", "equal", "none")

seconds = st.floats(min_value=1e-3, max_value=100.0, allow_nan=False, allow_infinity=False)


@st.composite
def backoffs(
    draw: st.DrawFn,
    *,
    jitter: Jitter | None = None,
    max_attempts: bool | None = None,
    deadline: bool | None = None,
) -> Backoff:
    """Valid Backoff settings; ``max_attempts``/``deadline``: True set, False unset, None either."""
    initial = draw(seconds)
    maximum = initial * draw(st.floats(1.0, 1000.0))
    attempts = (
        draw(st.integers(1, 40))
        if max_attempts or (max_attempts is None and draw(st.booleans()))
        else None
    )
    limit = (
        # Bounded relative to initial, so an outage has at most a few thousand attempts.
        initial * draw(st.floats(0.01, 500.0))
        if deadline or (deadline is None and draw(st.booleans()))
        else None
    )
    return Backoff(
        initial=initial,
        maximum=max(maximum, initial),
        factor=draw(st.one_of(st.just(1.0), st.floats(1.0, 10.0), st.just(1e300))),
        jitter=jitter or draw(st.sampled_from(JITTERS)),
        max_attempts=attempts,
        deadline=limit,
        min_uptime=draw(st.floats(0.0, 60.0)),
    )


def within_envelope(backoff: Backoff, attempt: int, delay: float) -> bool:
    """Whether ``delay`` is a valid draw before ``attempt`` for its jitter."""
    top = cap(backoff, attempt)
    slack = 1e-12 * top
    if backoff.jitter == "none":
        return math.isclose(delay, top, rel_tol=1e-12)
    low = 0.0 if backoff.jitter == "full" else top / 2
    return low - slack <= delay <= top + slack


@props(300)
@given(backoffs(), st.integers(1, 60))
def test_backoff_delays_stay_within_the_jitter_envelope(backoff: Backoff, count: int) -> None:
    """Delay n lies in [0, cap(n)] (full), [cap(n)/2, cap(n)] (equal), or is cap(n) (none)."""
    for attempt, delay in enumerate(itertools.islice(backoff.delays(), count), start=1):
        assert math.isfinite(delay)
        assert 0.0 <= delay <= backoff.maximum
        assert within_envelope(backoff, attempt, delay), (attempt, delay, cap(backoff, attempt))


@props(200)
@given(backoffs(max_attempts=True))
def test_backoff_gives_at_most_max_attempts_delays(backoff: Backoff) -> None:
    """delays() ends after max_attempts delays, exactly max_attempts without a deadline."""
    delays = list(backoff.delays())
    assert backoff.max_attempts is not None
    assert len(delays) <= backoff.max_attempts
    if backoff.deadline is None:
        assert len(delays) == backoff.max_attempts


@props(200)
@given(backoffs(deadline=True))
def test_backoff_delays_end_before_the_deadline(backoff: Backoff) -> None:
    """delays() ends, each attempt starts before the deadline; without jitter the next would not."""
    assert backoff.deadline is not None
    delays = list(itertools.islice(backoff.delays(), 100_000))
    assert len(delays) < 100_000
    elapsed = 0.0
    for delay in delays:
        elapsed += delay
        assert elapsed < backoff.deadline
    if backoff.jitter == "none" and (backoff.max_attempts or math.inf) > len(delays):
        assert elapsed + cap(backoff, len(delays) + 1) >= backoff.deadline


@props(200)
@given(backoffs(jitter="none"), st.integers(1, 80))
def test_backoff_envelope_grows_monotonically_to_maximum(backoff: Backoff, count: int) -> None:
    """Without jitter the delays follow initial * factor**(n-1), never shrink, stop at maximum."""
    delays = list(itertools.islice(backoff.delays(), count))
    assert delays == sorted(delays)
    for attempt, delay in enumerate(delays, start=1):
        assert math.isclose(delay, cap(backoff, attempt), rel_tol=1e-12)
    if delays:
        assert math.isclose(delays[0], backoff.initial, rel_tol=1e-12)


@props(200)
@given(
    backoffs(max_attempts=True, deadline=False),
    st.integers(0, 50),
    st.sampled_from(["prior", "attempts"]),
)
def test_schedule_counts_earlier_attempts_towards_max_attempts(
    backoff: Backoff, before: int, how: str
) -> None:
    """Earlier attempts count toward max_attempts; only ``attempts`` also advance the delays."""
    assert backoff.max_attempts is not None
    backoff = dataclasses.replace(backoff, jitter="none")
    schedule = (
        RetrySchedule(backoff, start=0.0, prior_attempts=before)
        if how == "prior"
        else RetrySchedule(backoff, start=0.0, attempts=before)
    )
    delays = []
    while (delay := schedule.next_delay(0.0)) is not None:
        delays.append(delay)
    assert len(delays) == max(0, backoff.max_attempts - before)
    assert schedule.attempts == max(before, backoff.max_attempts)
    first = 1 if how == "prior" else before + 1
    for attempt, delay in enumerate(delays, start=first):
        assert math.isclose(delay, cap(backoff, attempt), rel_tol=1e-12)


@props(200)
@given(
    backoffs(deadline=True),
    st.lists(
        st.tuples(st.floats(0.0, 50.0), st.one_of(st.just(0.0), st.floats(0.0, 200.0))),
        max_size=30,
    ),
    st.floats(-1e6, 1e6),
)
def test_schedule_never_starts_an_attempt_at_or_past_the_deadline(
    backoff: Backoff, attempts: list[tuple[float, float]], start: float
) -> None:
    """With slow attempts and Retry-After, a delay is >= at_least and ends before the deadline."""
    assert backoff.deadline is not None
    schedule = RetrySchedule(backoff, start=start)
    now = start
    for took, retry_after in attempts:
        now += took
        delay = schedule.next_delay(now, at_least=retry_after)
        if delay is None:
            break
        assert delay >= retry_after
        assert (now - start) + delay < backoff.deadline
        now += delay


@props(100)
@given(
    st.sampled_from(["initial", "maximum", "factor", "min_uptime", "deadline"]),
    st.sampled_from([math.nan, math.inf, -math.inf, -1.0, True, "1", None]),
)
@example(name="min_uptime", value=-1.0)
def test_backoff_rejects_invalid_numbers(name: str, value: Any) -> None:
    """A non-finite, negative, bool or non-number setting is a ValueError, never a bad schedule."""
    if name == "deadline" and value is None:
        Backoff(deadline=None)  # None is "no deadline"
        return
    with pytest.raises(ValueError, match=name):
        Backoff(**{name: value})


@props(100)
@given(st.floats(0.0, 1e9), st.floats(0.0, 1e9))
def test_backoff_min_uptime_is_independent_of_the_delays(min_uptime: float, other: float) -> None:
    """min_uptime is any finite number >= 0 and leaves the delays and limits unchanged."""
    one = Backoff(jitter="none", max_attempts=8, min_uptime=min_uptime)
    two = Backoff(jitter="none", max_attempts=8, min_uptime=other)
    assert one.min_uptime == min_uptime
    assert list(one.delays()) == list(two.delays())


# Outbound queue: every policy, driven synchronously on a fake clock


@st.composite
def queue_policies(draw: st.DrawFn, *, overflow: Overflow | None = None) -> QueuePolicy:
    return QueuePolicy(
        max_messages=draw(st.integers(1, 6)),
        max_bytes=draw(st.one_of(st.none(), st.integers(1, 24))),
        overflow=overflow
        or draw(st.sampled_from(["drop_oldest", "drop_newest", "reject", "block"])),
        ttl=draw(st.sampled_from([None, 0.5, 1.0, 2.5])),
    )


# Exact binary fractions, so the clock lands on a message's deadline exactly.
clock_steps = st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5, 4.0])
payloads = st.binary(max_size=10)


class OutboundQueueMachine(RuleBasedStateMachine):
    """OutboundQueue against a model: a list of (data, text, deadline) and the counters."""

    @initialize(policy=queue_policies())
    def start(self, policy: QueuePolicy) -> None:
        self.policy = policy
        self.clock = FakeClock()
        self.drops = 0
        self.queue = OutboundQueue(policy, clock=self.clock, on_drop=self.on_drop)
        self.model: deque[tuple[bytes, bool, float]] = deque()
        # Every message accepted, in order: the queue holds the last len(queue) of them.
        self.accepted: list[tuple[bytes, bool]] = []
        self.counts = dict.fromkeys(
            ("queued", "sent", "dropped_oldest", "dropped_newest", "rejected", "expired"), 0
        )
        self.counts["discarded"] = 0
        self.closed: BaseException | None = None

    def on_drop(self) -> None:
        # Called before the head is dropped: the head is still there.
        assert len(self.queue) > 0
        self.drops += 1

    # The model

    def model_bytes(self) -> int:
        return sum(len(data) for data, _, _ in self.model)

    def model_fits(self, size: int) -> bool:
        if len(self.model) >= self.policy.max_messages:
            return False
        max_bytes = self.policy.max_bytes
        return max_bytes is None or self.model_bytes() + size <= max_bytes

    def model_expire(self) -> None:
        if self.policy.ttl is None:
            return
        while self.model and self.model[0][2] <= self.clock.now:
            self.model.popleft()
            self.counts["expired"] += 1

    def model_put(self, data: bytes, text: bool) -> bool | BaseException:
        """What put_nowait() should do: True, False, or the exception to raise."""
        if self.closed is not None:
            return self.closed
        max_bytes = self.policy.max_bytes
        if max_bytes is not None and len(data) > max_bytes:
            self.counts["rejected"] += 1
            return QueueFull("too big")
        self.model_expire()
        if not self.model_fits(len(data)):
            if self.policy.overflow == "drop_oldest":
                while not self.model_fits(len(data)):
                    self.model.popleft()
                    self.counts["dropped_oldest"] += 1
            elif self.policy.overflow == "drop_newest":
                self.counts["dropped_newest"] += 1
                return False
            else:
                self.counts["rejected"] += 1
                return QueueFull("full")
        ttl = self.policy.ttl
        self.model.append((data, text, 0.0 if ttl is None else self.clock.now + ttl))
        self.accepted.append((data, text))
        self.counts["queued"] += 1
        return True

    def check_put(self, expected: bool | BaseException, call: Callable[[], bool]) -> None:
        if isinstance(expected, BaseException):
            with pytest.raises(type(expected)) as caught:
                call()
            if expected is self.closed:
                assert caught.value is self.closed
        else:
            assert call() is expected

    # Operations

    @rule(data=payloads, text=st.booleans())
    def put_nowait(self, data: bytes, text: bool) -> None:
        expected = self.model_put(data, text)
        self.check_put(expected, lambda: self.queue.put_nowait(data, text))

    @precondition(lambda self: self.policy.overflow != "block")
    @rule(data=payloads, text=st.booleans())
    def put(self, data: bytes, text: bool) -> None:
        # Under every policy but block, put() is put_nowait() and never suspends.
        expected = self.model_put(data, text)
        self.check_put(expected, lambda: bool(run_now(self.queue.put(data, text))))

    @rule()
    def pop(self) -> None:
        self.model_expire()
        if not self.model:
            with pytest.raises(IndexError):
                self.queue.pop()
            return
        data, text, _ = self.model.popleft()
        self.counts["sent"] += 1
        assert self.queue.pop() == (data, text)

    @rule()
    def peek(self) -> None:
        self.model_expire()
        head = self.model[0][:2] if self.model else None
        assert self.queue.peek() == head

    @rule()
    def clear(self) -> None:
        # Expired messages not dropped yet count as discarded: expiry is lazy.
        count = len(self.model)
        self.model.clear()
        self.counts["discarded"] += count
        assert self.queue.clear() == count

    @rule()
    def close(self) -> None:
        error = ConnectionClosedError(1006, "gone")
        if self.closed is None:
            self.closed = error
        self.queue.close(error)

    @rule(dt=clock_steps)
    def advance(self, dt: float) -> None:
        self.clock.now += dt

    # Invariants

    @invariant()
    def within_bounds(self) -> None:
        assert len(self.queue) <= self.policy.max_messages
        if self.policy.max_bytes is not None:
            assert self.queue.nbytes <= self.policy.max_bytes

    @invariant()
    def same_messages_in_the_same_order(self) -> None:
        held = [(data, text) for data, text, _ in self.queue._messages]
        assert held == [(data, text) for data, text, _ in self.model]
        # FIFO: what is left is always the newest messages accepted
        # (ReconnectingTransport.left_queue() relies on it).
        assert held == self.accepted[len(self.accepted) - len(held) :]
        assert self.queue.nbytes == self.model_bytes()

    @invariant()
    def counters_add_up(self) -> None:
        s = self.queue.statistics()
        assert s == QueueStatistics(
            messages=len(self.model), bytes=self.model_bytes(), **self.counts
        )
        assert s.queued == s.messages + s.sent + s.dropped_oldest + s.expired + s.discarded
        assert self.drops == s.dropped_oldest + s.expired


def test_outbound_queue_matches_its_model() -> None:
    """Under any mix of puts, pops, clears, closes and time, the queue matches its model."""
    run_state_machine_as_test(OutboundQueueMachine, settings=props(250, steps=40))


# Outbound queue: blocking put() on trio's MockClock, which moves only when told


@dataclass
class _Putter:
    """One ``await queue.put()`` of the program, and how it ended."""

    number: int  # its place among every put of the program
    data: bytes
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    outcome: str | None = None  # "in", "cancelled", "closed", "full"


# An operation, optionally followed at once (before any other task runs) by
# cancelling the waiting putter at that index: a wake-up and a cancellation
# may then reach a putter together.
_then_cancel = st.one_of(st.none(), st.integers(0, 3))
block_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 9)),
        st.tuples(st.just("put_nowait"), st.integers(0, 9)),
        st.tuples(st.just("pop"), _then_cancel),
        st.tuples(st.just("peek"), _then_cancel),
        st.tuples(st.just("clear"), _then_cancel),
        st.tuples(st.just("cancel"), st.integers(0, 3)),
        st.tuples(st.just("advance"), clock_steps, _then_cancel),
    ),
    min_size=4,
    max_size=30,
)


def run_block_program(
    policy: QueuePolicy, ops: list[tuple[Any, ...]], close_at: int | None = None
) -> None:
    """Run ``ops`` against a ``block`` queue on trio's MockClock; check after each settles.

    The queue is closed before op ``close_at``, and at the end.
    """
    clock = trio.testing.MockClock()  # rate 0: only jump() moves it

    async def main() -> None:
        queue = OutboundQueue(policy)  # anyio.current_time: the mock clock
        putters: list[_Putter] = []
        accepted: list[tuple[int, bytes]] = []  # (number, data) in the order they got in
        closed: list[BaseException] = []
        numbers = itertools.count()

        async def put(putter: _Putter) -> None:
            with putter.scope:
                try:
                    await queue.put(putter.data, False)
                except QueueFull:
                    putter.outcome = "full"
                    return
                except ConnectionClosedError as exc:
                    putter.outcome = "closed" if exc is closed[0] else "wrong error"
                    return
                putter.outcome = "in"
                accepted.append((putter.number, putter.data))
                return
            putter.outcome = "cancelled"

        def cancel(index: int | None) -> None:
            waiting = [p for p in putters if p.outcome is None]
            if index is not None and waiting:
                waiting[index % len(waiting)].scope.cancel()

        def check() -> None:
            s = queue.statistics()
            assert s.messages <= policy.max_messages
            assert policy.max_bytes is None or s.bytes <= policy.max_bytes
            assert s.queued == s.messages + s.sent + s.expired + s.discarded
            assert s.dropped_oldest == s.dropped_newest == 0
            assert s.queued == len(accepted)
            # First come, first served: nothing overtakes an earlier put.
            assert [n for n, _ in accepted] == sorted(n for n, _ in accepted)
            held = [data for data, _, _ in queue._messages]
            assert held == [data for _, data in accepted][len(accepted) - len(held) :]
            # A cancelled put leaves nothing behind; every other one still waits.
            assert queue.waiting == sum(1 for p in putters if p.outcome is None)
            if closed:
                assert queue.waiting == 0
            elif queue.waiting:
                # No lost wake-up: the first putter waits only while it does
                # not fit, and no message ahead of it outlived its ttl.
                first = queue._putters[0]
                assert not queue._fits(first.size)
                if policy.ttl is not None and queue._messages:
                    assert queue._messages[0][2] > trio.current_time()

        async with trio.open_nursery() as nursery:
            for index, op in enumerate(ops):
                if index == close_at:
                    error = ConnectionClosedError(1006, "gone")
                    closed.append(error)
                    queue.close(error)
                    queue.close(ConnectionClosedError(1000, "again"))  # the first one stays
                kind = op[0]
                if kind == "put":
                    putter = _Putter(next(numbers), b"p" * op[1])
                    putters.append(putter)
                    nursery.start_soon(put, putter)
                elif kind == "put_nowait":
                    number = next(numbers)
                    data = b"n" * op[1]
                    try:
                        queue.put_nowait(data, True)
                    except (QueueFull, ConnectionClosedError):
                        pass
                    else:
                        accepted.append((number, data))
                elif kind == "pop":
                    if queue.peek() is not None:
                        queue.pop()
                    cancel(op[1])
                elif kind == "peek":
                    queue.peek()
                    cancel(op[1])
                elif kind == "clear":
                    queue.clear()
                    cancel(op[1])
                elif kind == "cancel":
                    cancel(op[1])
                else:
                    clock.jump(op[1])
                    cancel(op[2])
                await trio.testing.wait_all_tasks_blocked()
                check()
            if not closed:
                closed.append(ConnectionClosedError(1000, "done"))
                queue.close(closed[0])
            await trio.testing.wait_all_tasks_blocked()
            check()
        assert all(p.outcome not in (None, "wrong error") for p in putters)

    trio.run(main, clock=clock)


@props(250)
@given(
    queue_policies(overflow="block"),
    block_ops,
    st.one_of(st.none(), st.integers(0, 30)),
)
def test_blocking_put_keeps_order_bounds_and_wakeups(
    policy: QueuePolicy, ops: list[tuple[Any, ...]], close_at: int | None
) -> None:
    """Blocking puts get in first come, first served, within bounds; none waits while it fits."""
    run_block_program(policy, ops, close_at)


# Correlator: every waiter is resolved or failed exactly once


class _Wakes:
    """Stands in for a waiter's event: counts how often its outcome was announced."""

    def __init__(self) -> None:
        self.count = 0

    def set(self) -> None:
        self.count += 1


@dataclass
class _Request:
    waiter: Waiter
    wakes: _Wakes
    outcome: tuple[Any, BaseException | None] | None = None  # (result, error) once done


class CorrelatorMachine(RuleBasedStateMachine):
    """A Correlator driven like the client drives it, with a model of the outbound queue."""

    def __init__(self) -> None:
        super().__init__()
        self.correlator = Correlator(name="props")
        self.requests: list[_Request] = []
        self.numbers = itertools.count(1)
        self.queued: deque[int] = deque()  # numbers still in the outbound queue
        self.connection: object | None = object()
        self.closed: BaseException | None = None
        self.resent = 0

    def left_queue(self, number: int) -> bool:
        return number not in self.queued

    def pick(self, index: int) -> _Request | None:
        return self.requests[index % len(self.requests)] if self.requests else None

    def pending(self, index: int) -> _Request | None:
        waiting = [r for r in self.requests if not r.waiter.done]
        return waiting[index % len(waiting)] if waiting else None

    # The asking side

    @rule(origin=st.sampled_from([None, "a", "b"]), policy=st.sampled_from(["fail", "resend"]))
    def open(self, origin: Any, policy: InFlight) -> None:
        if self.closed is not None:
            with pytest.raises(type(self.closed)):
                self.correlator.open(origin=origin, policy=policy)
            return
        waiter = self.correlator.open(origin=origin, policy=policy, payload=b"request")
        assert all(waiter.id != r.waiter.id for r in self.requests)
        wakes = _Wakes()
        waiter._event = wakes  # type: ignore[assignment]
        self.requests.append(_Request(waiter, wakes))

    @rule(index=st.integers(0, 20), queued=st.booleans())
    def accept(self, index: int, queued: bool) -> None:
        """The request was numbered by the transport: written at once, or queued."""
        request = self.pending(index)
        if request is None or request.waiter.number is not None:
            return
        number = next(self.numbers)
        request.waiter.number = number
        if queued or self.connection is None:
            self.queued.append(number)

    @rule(index=st.integers(0, 20), seconds=st.sampled_from([0.5, 30.0]))
    def time_out(self, index: int, seconds: float) -> None:
        request = self.pick(index)
        if request is not None:
            error = self.correlator.timed_out(request.waiter, seconds)
            assert isinstance(error, RequestTimeout)

    @rule(index=st.integers(0, 20))
    def discard(self, index: int) -> None:
        request = self.pick(index)
        if request is not None:
            self.correlator.discard(request.waiter)

    @rule(index=st.integers(0, 20))
    def refuse(self, index: int) -> None:
        request = self.pick(index)
        if request is not None:
            error = QueueFull("refused")
            assert self.correlator.refused(request.waiter, error) is error

    @rule(origin=st.sampled_from(["a", "b"]))
    def session_closed(self, origin: str) -> None:
        self.correlator.fail(InvalidState(f"session {origin} closed"), origin=origin)
        assert self.correlator.pending_for(origin) == 0

    # The reader's side

    @rule(
        index=st.integers(0, 20),
        form=st.sampled_from([int, str, float]),
        failed=st.booleans(),
        result=st.integers(),
    )
    def reply(self, index: int, form: type, failed: bool, result: int) -> None:
        request = self.pick(index)
        if request is None:
            return
        error = RemoteError("no", request_id=request.waiter.id) if failed else None
        inbound = Inbound(
            Route.REPLY,
            message=None,
            request_id=form(request.waiter.id),
            result=result,
            error=error,
        )
        was_waiting = request.waiter.id in self.correlator._waiters
        assert self.correlator.resolve(inbound) is was_waiting

    @rule(
        request_id=st.one_of(
            st.integers(),
            st.text(max_size=25),
            st.floats(),
            st.none(),
            st.booleans(),
            st.lists(st.integers(), max_size=2),
            st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
        )
    )
    def stray_reply(self, request_id: Any) -> None:
        """A reply with any id from the wire never raises; one matching no request is counted."""
        target = _as_id(request_id)
        matches = isinstance(target, int) and target in self.correlator._waiters
        before = self.correlator.statistics().unknown_replies
        inbound = Inbound(Route.REPLY, message=None, request_id=request_id, result=1)
        assert self.correlator.resolve(inbound) is matches
        assert self.correlator.statistics().unknown_replies == before + (not matches)

    # The queue and the connection

    @rule()
    def flush(self) -> None:
        if self.connection is not None:
            self.queued.clear()

    @rule()
    def drop_head(self) -> None:
        if self.queued:
            self.correlator.dropped(self.queued.popleft())

    @rule()
    def connection_lost(self) -> None:
        in_flight = [
            r.waiter
            for r in self.requests
            if not r.waiter.done
            and r.waiter.number is not None
            and self.left_queue(r.waiter.number)
        ]
        self.connection = None
        self.correlator.connection_lost(ConnectionClosedError(1006, "gone"), self.left_queue)
        for waiter in in_flight:
            # fail: failed at once; resend: waits to go out again.
            assert waiter.done is (waiter.policy == "fail")
            assert waiter.resend is (waiter.policy == "resend")
            if waiter.policy == "fail":
                assert isinstance(waiter.error, ConnectionLost)

    @rule()
    def reconnect(self) -> None:
        if self.connection is not None:
            return
        self.connection = object()
        for waiter in self.correlator.to_resend():
            assert waiter.policy == "resend"
            assert not waiter.done
            assert waiter.payload == b"request"
            waiter.transport = self.connection
            self.resent += 1
        assert not any(r.waiter.resend for r in self.requests if not r.waiter.done)
        self.queued.clear()

    @rule()
    def close(self) -> None:
        lost = ConnectionLost("closed")
        if self.closed is None:
            self.closed = lost
        self.correlator.close(lost)

    # Invariants

    @invariant()
    def each_outcome_is_announced_exactly_once_and_never_changes(self) -> None:
        for request in self.requests:
            waiter = request.waiter
            assert request.wakes.count == (1 if waiter.done else 0), waiter
            # A waiter is in the table exactly while it waits for its outcome.
            assert (waiter.id in self.correlator._waiters) is not waiter.done
            if not waiter.done:
                continue
            assert (waiter.error is None) or (waiter.result is None)
            outcome = (waiter.result, waiter.error)
            if request.outcome is None:
                request.outcome = outcome
            assert request.outcome[0] is outcome[0]
            assert request.outcome[1] is outcome[1]

    @invariant()
    def counters_add_up(self) -> None:
        s = self.correlator.statistics()
        assert s.pending == len(self.correlator) == sum(not r.waiter.done for r in self.requests)
        assert s.sent == len(self.requests)
        ended = s.replies + s.remote_errors + s.timeouts + s.cancelled + s.lost + s.dropped
        assert s.sent == s.pending + ended
        assert s.resent == self.resent
        assert s.replies == sum(
            1 for r in self.requests if r.waiter.done and r.waiter.error is None
        )

    def teardown(self) -> None:
        self.close()
        self.each_outcome_is_announced_exactly_once_and_never_changes()
        self.counters_add_up()
        assert all(r.waiter.done for r in self.requests)
        assert len(self.correlator) == 0


def test_correlator_resolves_or_fails_every_waiter_exactly_once() -> None:
    """Every request ends once (reply, error, timeout, loss, drop, close) and is counted once."""
    run_state_machine_as_test(CorrelatorMachine, settings=props(250, steps=40))


# Channels: reference counts under any interleaving, and the server kept in step


class _FakeCancelled(BaseException):
    """Stands in for the event loop's cancellation of a task blocked in a send."""


class _Connection:
    """One connection as the server sees it: the channels subscribed on it."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.channels: set[str] = set()

    def receive(self, frame: tuple[str, str]) -> None:
        kind, channel = frame
        if kind == "subscribe":
            self.channels.add(channel)
        elif kind == "unsubscribe":
            self.channels.discard(channel)  # unsubscribing twice is harmless

    def __repr__(self) -> str:
        return f"<Connection {self.number} {sorted(self.channels)}>"


class FakeHost:
    """A ChannelHost over a model of ReconnectingTransport.

    As there, a message goes straight to the connection when it is open and
    nothing is queued, else to the queue (numbered either way, in order), and
    ``left_queue(n)`` holds for all but the last ``len(queue)`` numbers.
    ``plan`` scripts the next ``_submit_frame()``: ``"suspend"`` makes it
    stop mid-send (or while waiting for room, when queued) until the test
    resumes it; ``"drop"`` and ``"reject"`` are the queue's drop_newest and
    reject, for a message that would be queued. While one waits for room,
    the others wait behind it and get in first come, first served (block).
    """

    request_timeout = 5.0

    def __init__(self, *, confirms: bool) -> None:
        self.confirms = confirms
        self.connection: _Connection | None = None
        self.live = False  # hooks done, the connection takes messages directly
        self.accepted = 0
        self.queue: deque[tuple[int, tuple[str, str]]] = deque()
        self.plan = "ok"
        self.nowait_plan = "ok"
        self.suspended_in = ""  # "send" or "queue": where the last suspension happened
        self.waiters: deque[object] = deque()  # submits waiting for room, in order
        self.reports: list[BaseException] = []
        # Channels whose unsubscribe the queue refused or dropped: the server
        # may go on sending them (documented: stray deliveries are unhandled).
        self.leaked: set[str] = set()

    @property
    def _confirms_subscriptions(self) -> bool:
        return self.confirms

    def _current_connection(self) -> object | None:
        return self.connection

    def _left_queue(self, number: int) -> bool:
        return number <= self.accepted - len(self.queue)

    def _subscribe_frame(self, channel: str) -> tuple[str, str]:
        return ("subscribe", channel)

    def _unsubscribe_frame(self, channel: str) -> tuple[str, str]:
        return ("unsubscribe", channel)

    def _report(self, error: BaseException) -> None:
        self.reports.append(error)

    def _enqueue(self, frame: tuple[str, str]) -> int:
        self.accepted += 1
        self.queue.append((self.accepted, frame))
        return self.accepted

    async def _submit_frame(
        self, frame: Any, on_accepted: Callable[[int], None] | None = None
    ) -> int | None:
        plan, self.plan = self.plan, "ok"
        if self.live and not self.queue and not self.waiters:
            assert self.connection is not None
            self.accepted += 1
            number = self.accepted
            if on_accepted is not None:
                on_accepted(number)
            self.connection.receive(frame)
            if plan == "suspend":
                self.suspended_in = "send"
                await _Suspend()  # the frame is out; the send has not returned yet
            return number
        if self.waiters:
            plan = "suspend"  # behind those that wait already
        if plan in ("drop", "reject"):
            self.refused(frame)
            if plan == "drop":
                return None
            raise QueueFull("the queue is full (reject)")
        if plan == "suspend":
            self.suspended_in = "queue"
            token = object()
            self.waiters.append(token)
            try:
                await _Suspend()  # waiting for room (block)
            except BaseException:
                self.waiters.remove(token)
                self.refused(frame)
                raise
            assert self.waiters.popleft() is token  # first come, first served
        number = self._enqueue(frame)
        if on_accepted is not None:
            on_accepted(number)
        return number

    def _send_frame_nowait(self, frame: Any) -> int | None:
        plan, self.nowait_plan = self.nowait_plan, "ok"
        if self.waiters:
            plan = "reject"  # block: put_nowait() does not overtake waiting puts
        if plan != "ok":
            self.refused(frame)
        if plan == "drop":
            return None
        if plan == "reject":
            raise QueueFull("the queue is full (reject)")
        return self._enqueue(frame)

    def refused(self, frame: tuple[str, str]) -> None:
        """The queue refused or dropped ``frame``: an unsubscribe that never goes out leaks."""
        if frame[0] == "unsubscribe":
            self.leaked.add(frame[1])

    def flush(self, count: int | None = None) -> None:
        """The flusher writes up to ``count`` queued messages (all: None) to the open connection."""
        if not self.live:
            return
        assert self.connection is not None
        for _ in range(len(self.queue) if count is None else min(count, len(self.queue))):
            _, frame = self.queue.popleft()
            self.connection.receive(frame)


@dataclass
class _Call:
    """A subscribe or unsubscribe suspended in ``_submit_frame``."""

    coro: Coroutine[Any, Any, Any]
    channel: str
    sub: Subscription | None  # None: an unsubscribe of a closed session
    kind: str  # "open" or "close"
    suspended_in: str  # "send" or "queue"
    token: object | None  # its place among the submits waiting for room


CHANNEL_NAMES = ("a", "b", "c")
channel_names = st.sampled_from(CHANNEL_NAMES)
SUB_KINDS = ("callback", "raising", "drop_oldest", "fail")


class ChannelMachine(RuleBasedStateMachine):
    """A ChannelRegistry against a model of who holds which channel, over a FakeHost."""

    @initialize(confirms=st.booleans(), connected=st.booleans())
    def start(self, confirms: bool, connected: bool) -> None:
        self.host = FakeHost(confirms=confirms)
        self.registry = ChannelRegistry(self.host, policy=BufferPolicy(), name="props")
        self.connections = itertools.count(1)
        self.holders: list[Subscription] = []  # the model: subscribers holding their channel
        self.subs: list[Subscription] = []
        self.calls: list[_Call] = []
        self.deliveries = itertools.count()
        self.closed = False
        if connected:
            self.reconnect()

    def holders_of(self, channel: str) -> list[Subscription]:
        return [sub for sub in self.holders if sub.channel == channel]

    def release(self, sub: Subscription) -> None:
        if sub in self.holders:
            self.holders.remove(sub)

    def opening(self, sub: Subscription) -> bool:
        return any(call.sub is sub and call.kind == "open" for call in self.calls)

    # Local subscribers come and go

    @rule(
        channel=channel_names,
        origin=st.sampled_from([None, "s1", "s2"]),
        kind=st.sampled_from(SUB_KINDS),
        plan=st.sampled_from(["ok", "ok", "suspend", "drop", "reject"]),
    )
    def subscribe(self, channel: str, origin: Any, kind: str, plan: str) -> None:
        received: list[Any] = []

        def raising(data: Any) -> None:
            raise ValueError(data)

        callback = received.append if kind == "callback" else raising if kind == "raising" else None
        buffer = None if callback else BufferPolicy(max_messages=2, overflow=kind)  # type: ignore[arg-type]
        sub = self.registry.subscription(channel, callback=callback, buffer=buffer, origin=origin)
        self.subs.append(sub)
        coro = sub._start()
        if self.closed:
            with pytest.raises(InvalidState):
                run_now(coro)
            return
        self.holders.append(sub)
        self.host.plan = plan
        try:
            done, value = step(coro)
        except QueueFull:
            assert plan in ("drop", "reject")
            self.release(sub)
            assert sub.state is SubscriptionState.FAILED
            return
        finally:
            self.host.plan = "ok"  # unused if another subscriber holds the channel
        if done:
            assert value is sub
        else:
            self.suspended(coro, channel, sub, "open")

    @rule(
        index=st.integers(0, 50),
        plan=st.sampled_from(["ok", "ok", "suspend", "drop", "reject"]),
    )
    def unsubscribe(self, index: int, plan: str) -> None:
        # Closing twice, or after the channel failed, is fine; closing one
        # whose opening has not returned is not possible for its owner.
        choices = [sub for sub in self.subs if sub._opened and not self.opening(sub)]
        if not choices:
            return
        sub = choices[index % len(choices)]
        self.release(sub)  # at once, whatever becomes of the unsubscribe
        self.host.plan = plan
        coro = sub.aclose()
        try:
            done, _ = step(coro)  # a refused unsubscribe is logged, not raised
        finally:
            self.host.plan = "ok"
        if not done:
            self.suspended(coro, sub.channel, sub, "close")

    def suspended(
        self, coro: Coroutine[Any, Any, Any], channel: str, sub: Subscription | None, kind: str
    ) -> None:
        where = self.host.suspended_in
        token = self.host.waiters[-1] if where == "queue" else None
        self.calls.append(_Call(coro, channel, sub, kind, where, token))

    @rule(index=st.integers(0, 50), how=st.sampled_from(["ok", "cancel", "full"]))
    def resume(self, index: int, how: str) -> None:
        """A suspended (un)subscribe returns, or is cancelled, or (queued) finds the queue full."""
        if not self.calls:
            return
        call = self.calls[index % len(self.calls)]
        if how == "ok" and call.suspended_in == "queue":
            # Room is made for the first waiting put; the others stay behind it.
            call = next(c for c in self.calls if c.token is self.host.waiters[0])
        self.calls.remove(call)
        throw: BaseException | None = None
        if how == "cancel" or (how == "full" and call.suspended_in == "send"):
            throw = _FakeCancelled()
        elif how == "full":
            throw = QueueFull("the queue is full (block, put_nowait semantics)")
        try:
            done, value = step(call.coro, throw)
        except BaseException as exc:
            raised: BaseException | None = exc
        else:
            raised = None
        if raised is not None:
            assert raised is throw
            # An unsubscribe's QueueFull is logged by the registry, or by the
            # session's sender (sub None), which is the test here.
            assert call.kind == "open" or call.sub is None or isinstance(raised, _FakeCancelled)
            if call.sub is not None:
                self.release(call.sub)
                ended = (SubscriptionState.FAILED, SubscriptionState.UNSUBSCRIBED)
                assert call.sub.state in ended
            return
        assert done
        if call.kind == "open":
            assert throw is None
            assert value is call.sub

    @rule(origin=st.sampled_from(["s1", "s2"]))
    def session_closed(self, origin: str) -> None:
        for sub in [sub for sub in self.holders if sub.origin == origin]:
            self.release(sub)
        for frame in self.registry.release_origin(origin):
            assert frame[0] == "unsubscribe"
            coro = self.host._submit_frame(frame)
            if not step(coro)[0]:
                self.suspended(coro, frame[1], None, "close")
        assert self.registry.count_for(origin) == 0

    @rule(rarely=st.integers(0, 15))
    def close_registry(self, rarely: int = 0) -> None:
        if rarely:
            return  # closing ends the interesting part of an example
        self.registry.close(None)
        self.holders.clear()
        self.closed = True

    # The reader's side

    @rule(channel=channel_names)
    def deliver(self, channel: str) -> None:
        holders = self.holders_of(channel)
        for sub in holders:
            buffer = sub._buffer
            if buffer is None or buffer._policy.overflow != "fail":
                continue
            if len(buffer) >= buffer._policy.max_messages:
                self.release(sub)  # fell behind: it fails and lets go
        assert self.registry.deliver(channel, next(self.deliveries)) is bool(holders)

    @rule(index=st.integers(0, 50))
    def read(self, index: int) -> None:
        readable = [sub for sub in self.subs if sub._buffer is not None and len(sub._buffer)]
        if readable:
            sub = readable[index % len(readable)]
            assert isinstance(run_now(sub.receive()), int)

    @rule(channel=channel_names, refused=st.booleans())
    def confirm(self, channel: str, refused: bool) -> None:
        """The server answers a subscribe it received, with nothing more for it on the way."""
        connection = self.host.connection
        if (
            connection is None
            or channel not in connection.channels
            or any(frame[1] == channel for _, frame in self.host.queue)
            or any(call.channel == channel for call in self.calls)
        ):
            return
        holders = self.holders_of(channel)
        error = RemoteError("not allowed") if refused else None
        if refused:
            for sub in holders:
                self.release(sub)
            connection.channels.discard(channel)
        assert self.registry.confirm(channel, error) is bool(holders)
        for sub in holders:
            assert sub.state is (
                SubscriptionState.FAILED if refused else SubscriptionState.SUBSCRIBED
            )

    # The queue and the connection

    @rule(channel=channel_names)
    def publish(self, channel: str) -> None:
        """Other traffic: it goes through the queue like the rest."""
        if not self.host.waiters:
            self.host._enqueue(("publish", channel))

    @rule(count=st.integers(1, 3))
    def flush(self, count: int) -> None:
        self.host.flush(count)

    @rule()
    def drop_head(self) -> None:
        """The queue drops its oldest message (drop_oldest or ttl)."""
        if self.host.queue:
            number, frame = self.host.queue.popleft()
            self.host.refused(frame)
            self.registry.dropped(number)

    @rule(plan=st.sampled_from(["drop", "reject"]))
    def queue_full_for_nowait(self, plan: str) -> None:
        self.host.nowait_plan = plan

    @rule()
    def lose_connection(self) -> None:
        if self.host.connection is not None:
            self.host.connection = None
            self.host.live = False
            self.registry.connection_lost()

    @rule()
    def reconnect(self) -> None:
        self.lose_connection()
        connection = _Connection(next(self.connections))
        self.host.connection = connection  # current while the on_connect hooks run

        async def send(frame: tuple[str, str]) -> None:
            connection.receive(frame)

        run_now(self.registry.resubscribe(connection, send))
        self.host.live = True

    @precondition(lambda self: not self.calls and not self.closed)
    @rule()
    def settle(self) -> None:
        """After a clean reconnect and flush, the server holds exactly the local channels."""
        self.host.nowait_plan = "ok"
        self.reconnect()
        self.host.flush()
        assert self.host.connection is not None
        held = set(self.registry._channels)
        assert held <= self.host.connection.channels <= held | self.host.leaked

    # Invariants

    @invariant()
    def reference_counts_match_the_holders(self) -> None:
        registry = self.registry
        for name, channel in registry._channels.items():
            assert channel.subscribers, f"{name} is held by nobody"  # never at zero
            assert {id(sub) for sub in channel.subscribers} == {
                id(sub) for sub in self.holders_of(name)
            }
            assert len(channel.subscribers) == len(self.holders_of(name))
        assert set(registry._channels) == {sub.channel for sub in self.holders}
        stats = registry.statistics()
        assert stats.channels == len(registry._channels)
        assert stats.subscriptions == len(self.holders)
        assert sum(stats.by_state.values()) == stats.subscriptions
        assert stats.callback_errors == len(self.host.reports) - sum(
            isinstance(error, RemoteError) for error in self.host.reports
        )

    @invariant()
    def subscriptions_agree_with_the_model(self) -> None:
        for sub in self.subs:
            if sub in self.holders:
                assert sub._channel is self.registry._channels[sub.channel]
                assert sub.state in (SubscriptionState.SUBSCRIBING, SubscriptionState.SUBSCRIBED)
            elif sub._opened:
                assert sub._channel is None
                assert sub.state in (SubscriptionState.UNSUBSCRIBED, SubscriptionState.FAILED)

    def teardown(self) -> None:
        # Every suspended call returns; then everyone leaves, and nothing is left anywhere.
        while self.calls:
            self.resume(0, "ok")
        if self.closed:
            assert not self.registry._channels
            return
        self.settle()
        for sub in list(self.holders):
            self.release(sub)
            run_now(sub.aclose())
        self.host.flush()
        self.reference_counts_match_the_holders()
        assert self.registry.statistics().channels == 0
        assert self.registry.statistics().subscriptions == 0
        assert self.host.connection is not None
        assert self.host.connection.channels <= self.host.leaked


def test_channel_reference_counts_stay_true_and_end_at_zero() -> None:
    """Channel refcounts never go negative, match the subscribers, and the server follows them."""
    run_state_machine_as_test(ChannelMachine, settings=props(300, steps=40))


# Regressions found by the channel machine


def offline_rejoin(host: FakeHost, registry: ChannelRegistry, leave: str) -> _Connection:
    """Subscribe while the queue is busy, drop the link, leave, re-join offline, reconnect.

    ``leave`` is how the first subscriber goes: ``"close"`` (aclose) or
    ``"session"`` (its session closed: the caller sends the unsubscribe).
    Returns the new connection, after the hooks ran and the queue flushed.
    """
    first = _Connection(1)
    host.connection, host.live = first, True
    host._enqueue(("publish", "a"))  # the flusher has not caught up yet
    sub = run_now(registry.subscription("a", callback=print, origin="s1")._start())
    assert host.queue[-1][1] == ("subscribe", "a")  # queued behind it
    host.connection, host.live = None, False
    registry.connection_lost()
    if leave == "close":
        run_now(sub.aclose())
    else:
        for frame in registry.release_origin("s1"):
            run_now(host._submit_frame(frame))
    assert host.queue[-1][1] == ("unsubscribe", "a")  # must follow that subscribe
    again = run_now(registry.subscription("a", callback=print)._start())
    second = _Connection(2)
    host.connection = second

    async def send(frame: tuple[str, str]) -> None:
        second.receive(frame)

    run_now(registry.resubscribe(second, send))
    host.live = True
    host.flush()
    assert again.state is SubscriptionState.SUBSCRIBED
    return second


@pytest.mark.parametrize("leave", ["close", "session"])
def test_regression_rejoined_channel_is_not_undone_by_a_queued_unsubscribe(leave: str) -> None:
    """A channel left and re-joined offline is subscribed after its queued unsubscribe."""
    host = FakeHost(confirms=False)
    registry = ChannelRegistry(host, policy=BufferPolicy(), name="props")
    connection = offline_rejoin(host, registry, leave)
    # Before the fix the hook sent the subscribe first and the queue's
    # unsubscribe then undid it: the server sent nothing more on "a".
    assert connection.channels == {"a"}
    assert set(registry._channels) == {"a"}


@pytest.mark.parametrize("leave", ["close", "session"])
def test_regression_subscribe_that_waited_for_room_is_taken_back(leave: str) -> None:
    """A subscribe waiting for room when its subscriber leaves offline gets an unsubscribe after."""
    host = FakeHost(confirms=False)
    registry = ChannelRegistry(host, policy=BufferPolicy(), name="props")
    first = _Connection(1)
    host.connection, host.live = first, True
    host._enqueue(("publish", "a"))  # the queue is busy, and full (block)
    sub = registry.subscription("a", callback=print, origin="s1")
    opening = sub._start()
    host.plan = "suspend"
    assert step(opening) == (False, None)  # waits for room
    host.connection, host.live = None, False
    registry.connection_lost()
    if leave == "close":
        closing = sub.aclose()  # from another task of its owner
    else:
        (frame,) = registry.release_origin("s1")
        closing = host._submit_frame(frame)
    # Before the fix nothing was sent: the subscribe had no number yet, so it
    # seemed never to have reached the server; it went out later all the same.
    assert step(closing) == (False, None)  # the unsubscribe waits behind it
    assert step(opening) == (True, sub)
    assert step(closing)[0]
    assert [frame for _, frame in host.queue][-2:] == [("subscribe", "a"), ("unsubscribe", "a")]
    second = _Connection(2)
    host.connection = second

    async def send(frame: tuple[str, str]) -> None:
        second.receive(frame)

    run_now(registry.resubscribe(second, send))
    host.live = True
    host.flush()
    assert second.channels == set()
    assert not registry._channels


def test_unsubscribe_bookkeeping_stays_as_small_as_the_queue() -> None:
    """Many channels left on a busy, stable connection leave no growing record behind."""
    host = FakeHost(confirms=False)
    registry = ChannelRegistry(host, policy=BufferPolicy(), name="props")
    host.connection, host.live = _Connection(1), True
    for n in range(500):
        host._enqueue(("publish", "x"))  # busy: the (un)subscribes are queued
        sub = run_now(registry.subscription(f"c{n}", callback=print)._start())
        run_now(sub.aclose())
        assert len(registry._unsubscribes) <= len(host.queue)  # swept as it grows
        if n % 3 == 0:
            host.flush()
    host.flush()
    assert host.connection.channels == set()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_regression_rejoined_channel_through_the_client(backend: str) -> None:
    """Through the Client: leave and re-join a channel offline; the last word is subscribe."""
    ends: list[MemoryTransport] = []

    async def connect() -> MemoryTransport:
        client_end, server_end = MemoryTransport.pair(max_queue=1)  # the server reads nothing
        ends.append(server_end)
        return client_end

    async def state(client: Client, wanted: ConnectionState) -> None:
        with anyio.fail_after(60):
            await client.wait_state(wanted)

    async def main() -> list[Any]:
        backoff = Backoff(jitter="none", initial=1.0, maximum=1.0, min_uptime=0.0)
        async with Client(connect, backoff=backoff, heartbeat=None) as client:
            ends[-1].break_link()
            await state(client, ConnectionState.RECONNECTING)
            for n in range(3):
                await client.send({"n": n})
            await state(client, ConnectionState.OPEN)
            await anyio.sleep(1)  # the flusher is stuck writing {"n": 1}: the queue is busy
            async with client.subscribe("prices"):  # queued behind {"n": 2}
                ends[-1].break_link()
                await state(client, ConnectionState.RECONNECTING)
            sub = await client.subscribe("prices")  # again, still offline
            await state(client, ConnectionState.OPEN)
            await client.send({"marker": 1})
            sent = []
            with anyio.fail_after(60):
                while (message := orjson.loads(await ends[-1].receive())) != {"marker": 1}:
                    sent.append(message)
            await sub.aclose()
            return sent

    sent = anyio.run(main, backend=backend, backend_options=fake_clock(backend))
    channel_messages = [m for m in sent if m.get("channel") == "prices"]
    assert channel_messages[-1] == {"action": "subscribe", "channel": "prices"}, sent


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_regression_session_closed_while_its_subscribe_waits_for_room(backend: str) -> None:
    """Through the Client: a session closed while its subscribe waits for room unsubscribes."""
    ends: list[MemoryTransport] = []

    async def connect() -> MemoryTransport:
        client_end, server_end = MemoryTransport.pair(max_queue=1)  # the server reads nothing
        ends.append(server_end)
        return client_end

    async def main() -> list[Any]:
        backoff = Backoff(jitter="none", initial=1.0, maximum=1.0, min_uptime=0.0)
        queue = QueuePolicy(max_messages=2, overflow="block")
        client = Client(connect, backoff=backoff, heartbeat=None, queue=queue)
        async with client, anyio.create_task_group() as group:
            with anyio.fail_after(60):
                ends[-1].break_link()
                await client.wait_state(ConnectionState.RECONNECTING)
                await client.send({"n": 0})
                await client.send({"n": 1})
                await client.wait_state(ConnectionState.OPEN)
                await anyio.sleep(1)  # the flusher wrote {"n": 0} and is stuck on {"n": 1}
                await client.send({"n": 2})
                await client.send({"n": 3})  # the queue is full
                session = client.session()

                async def subscribe() -> None:
                    await session.subscribe("a")  # waits for room

                group.start_soon(subscribe)
                await anyio.sleep(1)
                ends[-1].break_link()
                await client.wait_state(ConnectionState.RECONNECTING)
                group.start_soon(session.aclose)
                await anyio.sleep(0.5)
                await client.wait_state(ConnectionState.OPEN)
                group.start_soon(client.send, {"marker": 1})
                sent = []
                while (message := orjson.loads(await ends[-1].receive())) != {"marker": 1}:
                    sent.append(message)
        return sent

    sent = anyio.run(main, backend=backend, backend_options=fake_clock(backend))
    channel_messages = [m for m in sent if m.get("channel") == "a"]
    # Before the fix the subscribe went out last, and the server kept sending "a".
    assert channel_messages[-1] == {"action": "unsubscribe", "channel": "a"}, sent


# Inbound buffers


buffer_ops = st.lists(st.sampled_from(["put", "put", "put", "get", "close"]), max_size=40)


@props(300)
@given(
    st.builds(
        BufferPolicy,
        max_messages=st.integers(1, 4),
        overflow=st.sampled_from(["drop_oldest", "drop_newest", "fail"]),
    ),
    buffer_ops,
)
def test_inbound_buffer_is_bounded_ordered_and_counts_every_message(
    policy: BufferPolicy, ops: list[str]
) -> None:
    """The buffer holds at most max_messages, in order, and received == pending + dropped + read."""
    buffer: InboundBuffer[int] = InboundBuffer(policy, name="props")
    model: deque[int] = deque()
    closed = False
    error: BaseException | None = None
    read = dropped = 0
    for number, op in enumerate(ops):
        if op == "put":
            full = len(model) >= policy.max_messages
            kept = not closed and (not full or policy.overflow == "drop_oldest")
            dropped += closed or full
            if kept:
                if full:
                    model.popleft()
                model.append(number)
            assert buffer.put_nowait(number) is kept
            if not closed and full and policy.overflow == "fail":
                # Fell behind: it closes itself; readers get the rest, then the error.
                closed, error = True, buffer.error
                assert isinstance(error, QueueFull)
        elif op == "get":
            if model:
                assert run_now(buffer.get()) == model.popleft()
                read += 1
            elif closed:
                with pytest.raises(anyio.EndOfStream if error is None else QueueFull):
                    run_now(buffer.get())
        else:
            buffer.close()
            closed = True
        stats = buffer.statistics()
        assert stats.pending == len(buffer) == len(model) <= policy.max_messages
        assert list(buffer._items) == list(model)
        assert stats.dropped == dropped
        assert stats.received == stats.pending + stats.dropped + read
        assert buffer.closed is closed
        assert buffer.error is error
