"""The bounded outbound queue: pure tests on a fake clock, then ``block`` on virtual time."""

from __future__ import annotations

import contextlib
import dataclasses
import random
from typing import Any

import anyio
import pytest

from wsclient._exceptions import ConnectionClosedError, QueueFull
from wsclient._outbound import OutboundQueue, Overflow, QueuePolicy, QueueStatistics

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(fake_clock: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return fake_clock


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(clock: FakeClock | None = None, /, **policy: Any) -> OutboundQueue:
    return OutboundQueue(QueuePolicy(**policy), clock=clock or FakeClock())


def drain(queue: OutboundQueue) -> list[bytes]:
    return [queue.pop()[0] for _ in range(len(queue))]


def stats(queue: OutboundQueue, **expected: int) -> None:
    """Assert the given counters, and that every other counter is zero."""
    zeros = {field.name: 0 for field in dataclasses.fields(QueueStatistics)}
    assert queue.statistics() == QueueStatistics(**(zeros | expected))


def check_invariant(queue: OutboundQueue) -> None:
    s = queue.statistics()
    assert s.queued == s.messages + s.sent + s.dropped_oldest + s.expired + s.discarded
    assert s.messages == len(queue)
    assert s.bytes == queue.nbytes


# Order and basics


def test_fifo_order_and_text_flag() -> None:
    """Messages come out in the order they went in, each with its text flag."""
    queue = make()
    for i in range(5):
        assert queue.put_nowait(b"m%d" % i, i % 2 == 0) is True
    assert len(queue) == 5
    assert queue.nbytes == 10
    assert queue.peek() == (b"m0", True)
    assert [queue.pop() for _ in range(5)] == [(b"m%d" % i, i % 2 == 0) for i in range(5)]
    assert queue.peek() is None
    stats(queue, queued=5, sent=5)


def test_pop_from_empty_queue_raises_index_error() -> None:
    """pop() on an empty queue raises IndexError."""
    queue = make()
    with pytest.raises(IndexError, match="empty"):
        queue.pop()


def test_clock_is_not_read_without_ttl() -> None:
    """Without a ttl the queue never reads its clock."""

    def clock() -> float:
        raise AssertionError("clock read")

    queue = OutboundQueue(QueuePolicy(max_messages=1), clock=clock)
    queue.put_nowait(b"a", False)
    queue.put_nowait(b"b", False)
    assert queue.peek() == (b"b", False)
    assert queue.pop() == (b"b", False)
    queue.clear()


def test_policy_property() -> None:
    """The queue exposes the policy it was built with."""
    policy = QueuePolicy(max_messages=3)
    assert OutboundQueue(policy, clock=FakeClock()).policy is policy


# Overflow policies at the count bound and at the byte bound


def test_drop_oldest_at_message_bound() -> None:
    """drop_oldest evicts one message from the head per new message past max_messages."""
    queue = make(max_messages=3)
    for i in range(5):
        assert queue.put_nowait(b"%d" % i, False) is True
    assert drain(queue) == [b"2", b"3", b"4"]
    stats(queue, queued=5, sent=3, dropped_oldest=2)


def test_drop_oldest_at_byte_bound() -> None:
    """drop_oldest evicts as many head messages as it takes to fit the new message's bytes."""
    queue = make(max_bytes=10)
    for data in (b"aaa", b"bbb", b"ccc"):
        queue.put_nowait(data, False)
    assert queue.put_nowait(b"dddddddd", False) is True  # 3 + 8 > 10: all three go
    assert queue.nbytes == 8
    assert drain(queue) == [b"dddddddd"]
    stats(queue, queued=4, sent=1, dropped_oldest=3)


def test_drop_oldest_at_byte_bound_keeps_what_fits() -> None:
    """drop_oldest stops evicting as soon as the new message fits."""
    queue = make(max_bytes=10)
    for data in (b"aaa", b"bbb", b"ccc"):
        queue.put_nowait(data, False)
    queue.put_nowait(b"dddd", False)  # 9 + 4 > 10: evicting "aaa" leaves 6 + 4 = 10
    assert drain(queue) == [b"bbb", b"ccc", b"dddd"]
    stats(queue, queued=4, sent=3, dropped_oldest=1)


def test_drop_newest_at_message_bound() -> None:
    """drop_newest keeps the queue as it is and reports the new message dropped."""
    queue = make(max_messages=2, overflow="drop_newest")
    assert [queue.put_nowait(b"%d" % i, False) for i in range(4)] == [True, True, False, False]
    assert drain(queue) == [b"0", b"1"]
    stats(queue, queued=2, sent=2, dropped_newest=2)


def test_drop_newest_at_byte_bound() -> None:
    """drop_newest drops a message that would exceed max_bytes, and accepts one that fits."""
    queue = make(max_bytes=10, overflow="drop_newest")
    assert queue.put_nowait(b"x" * 8, False) is True
    assert queue.put_nowait(b"yyy", False) is False
    assert queue.put_nowait(b"zz", False) is True
    assert drain(queue) == [b"x" * 8, b"zz"]
    stats(queue, queued=2, sent=2, dropped_newest=1)


def test_reject_at_message_bound() -> None:
    """reject raises QueueFull naming the message bound, and keeps the queue."""
    queue = make(max_messages=2, overflow="reject")
    queue.put_nowait(b"a", False)
    queue.put_nowait(b"b", False)
    with pytest.raises(QueueFull, match=r"full: 2 messages$"):
        queue.put_nowait(b"c", False)
    assert drain(queue) == [b"a", b"b"]
    stats(queue, queued=2, sent=2, rejected=1)


def test_reject_at_byte_bound() -> None:
    """reject raises QueueFull naming the byte bound and the sizes involved."""
    queue = make(max_bytes=10, overflow="reject")
    queue.put_nowait(b"x" * 8, False)
    with pytest.raises(QueueFull, match=r"full: 10 bytes \(8 waiting, 3 more\)$"):
        queue.put_nowait(b"yyy", False)
    assert queue.put_nowait(b"zz", False) is True
    stats(queue, messages=2, bytes=10, queued=2, rejected=1)


@pytest.mark.parametrize(
    ("bound", "first", "second", "match"),
    [
        ({"max_messages": 1}, b"a", b"b", "1 messages"),
        ({"max_bytes": 4}, b"aaa", b"bb", "4 bytes"),
    ],
)
def test_block_put_nowait_raises_when_full(
    bound: dict[str, int], first: bytes, second: bytes, match: str
) -> None:
    """Under block, put_nowait never waits: it raises QueueFull and suggests await put()."""
    queue = make(overflow="block", **bound)
    queue.put_nowait(first, False)
    with pytest.raises(QueueFull, match=f"{match}.*await put"):
        queue.put_nowait(second, False)
    stats(queue, messages=1, bytes=len(first), queued=1, rejected=1)


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest", "reject", "block"])
def test_oversized_message_raises_whatever_the_policy(overflow: Overflow) -> None:
    """A message bigger than max_bytes on its own raises QueueFull with both sizes."""
    queue = make(max_bytes=10, overflow=overflow)
    queue.put_nowait(b"keep", False)
    with pytest.raises(QueueFull, match=r"11 bytes .*max_bytes=10"):
        queue.put_nowait(b"x" * 11, False)
    assert queue.put_nowait(b"x" * 6, False) is True  # exactly max_bytes in all
    assert drain(queue) == [b"keep", b"x" * 6]
    stats(queue, queued=2, sent=2, rejected=1)


def test_no_byte_bound() -> None:
    """With max_bytes=None only the message count bounds the queue."""
    queue = make(max_bytes=None, max_messages=2)
    queue.put_nowait(b"x" * 2**24, False)
    assert queue.nbytes == 2**24


# ttl


def test_ttl_expiry_at_peek() -> None:
    """peek() drops the messages whose ttl is up and shows the first live one."""
    clock = FakeClock()
    queue = make(clock, ttl=5)
    queue.put_nowait(b"old", False)
    clock.now += 2
    queue.put_nowait(b"new", True)
    clock.now += 3  # "old" has waited exactly ttl: its time is up
    assert queue.peek() == (b"new", True)
    stats(queue, messages=1, bytes=3, queued=2, expired=1)
    clock.now += 2
    assert queue.peek() is None
    stats(queue, queued=2, expired=2)


def test_ttl_message_lives_until_its_time_is_up() -> None:
    """A message just younger than ttl is still sent."""
    clock = FakeClock()
    queue = make(clock, ttl=5)
    queue.put_nowait(b"a", False)
    clock.now += 4.999
    assert queue.pop() == (b"a", False)
    stats(queue, queued=1, sent=1)


def test_ttl_expiry_at_pop() -> None:
    """pop() skips expired messages, and raises IndexError when all of them expired."""
    clock = FakeClock()
    queue = make(clock, ttl=1.5)
    queue.put_nowait(b"a", False)
    queue.put_nowait(b"b", False)
    clock.now += 1
    queue.put_nowait(b"c", False)
    clock.now += 1
    assert queue.pop() == (b"c", False)
    stats(queue, queued=3, sent=1, expired=2)
    queue.put_nowait(b"d", False)
    clock.now += 10
    with pytest.raises(IndexError):
        queue.pop()
    stats(queue, queued=4, sent=1, expired=3)


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest", "reject", "block"])
def test_ttl_expiry_at_put_makes_room(overflow: Overflow) -> None:
    """put_nowait() drops expired messages first, so they never count against the bounds."""
    clock = FakeClock()
    queue = make(clock, max_messages=2, overflow=overflow, ttl=1)
    queue.put_nowait(b"a", False)
    queue.put_nowait(b"b", False)
    clock.now += 1
    assert queue.put_nowait(b"c", False) is True
    assert drain(queue) == [b"c"]
    stats(queue, queued=3, sent=1, expired=2)


def test_stats_do_not_read_the_clock() -> None:
    """len(), nbytes and statistics() count expired messages until something drops them."""
    clock = FakeClock()
    queue = make(clock, ttl=1)
    queue.put_nowait(b"abc", False)
    clock.now += 5
    assert len(queue) == 1
    stats(queue, messages=1, bytes=3, queued=1)
    assert queue.peek() is None
    stats(queue, queued=1, expired=1)


# clear and close


def test_clear_discards_everything() -> None:
    """clear() drops every waiting message, counts them as discarded and returns how many."""
    queue = make(max_messages=2)
    for data in (b"a", b"bb", b"ccc"):
        queue.put_nowait(data, False)
    assert queue.clear() == 2
    assert len(queue) == 0
    assert queue.nbytes == 0
    assert queue.clear() == 0
    queue.put_nowait(b"d", False)
    stats(queue, messages=1, bytes=1, queued=4, dropped_oldest=1, discarded=2)


def test_closed_queue_raises_the_close_exception_and_keeps_messages() -> None:
    """After close(), puts raise the stored exception; waiting messages stay to be popped."""
    queue = make()
    queue.put_nowait(b"a", False)
    exc = ConnectionClosedError(1006)
    queue.close(exc)
    queue.close(RuntimeError("second close is ignored"))
    with pytest.raises(ConnectionClosedError) as info:
        queue.put_nowait(b"b", False)
    assert info.value is exc
    assert queue.pop() == (b"a", False)
    stats(queue, queued=1, sent=1)
    assert repr(queue) == "<OutboundQueue 0/1000 messages, 0 bytes, drop_oldest, closed>"


# Invariant


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest", "reject", "block"])
def test_counter_invariant_under_random_operations(overflow: Overflow, seed: int) -> None:
    """After any sequence of operations the counters add up and the bounds hold."""
    rng = random.Random(seed)
    clock = FakeClock()
    policy = QueuePolicy(
        max_messages=rng.randint(1, 20),
        # The four seeds cover each combination of byte bound and ttl.
        max_bytes=None if seed % 2 else rng.randint(50, 400),
        overflow=overflow,
        ttl=None if seed >= 2 else rng.uniform(0.5, 10),
    )
    queue = OutboundQueue(policy, clock=clock)
    counter = 0
    last_popped = -1
    for _ in range(3000):
        op = rng.random()
        if op < 0.55:
            counter += 1
            size = rng.randint(0, 50)
            with contextlib.suppress(QueueFull):
                queue.put_nowait(counter.to_bytes(4, "big") + b"x" * size, rng.random() < 0.5)
        elif op < 0.8:
            try:
                data, _ = queue.pop()
            except IndexError:
                pass
            else:
                number = int.from_bytes(data[:4], "big")
                assert number > last_popped  # FIFO, whatever was dropped between
                last_popped = number
        elif op < 0.85:
            queue.peek()
        elif op < 0.87:
            queue.clear()
        else:
            clock.now += rng.uniform(0, 2)
        check_invariant(queue)
        assert len(queue) <= policy.max_messages
        assert policy.max_bytes is None or queue.nbytes <= policy.max_bytes
    # The sequence did exercise the overflow policy and the ttl.
    s = queue.statistics()
    assert s.sent > 0
    assert s.discarded > 0
    assert {
        "drop_oldest": s.dropped_oldest,
        "drop_newest": s.dropped_newest,
        "reject": s.rejected,
        "block": s.rejected,
    }[overflow] > 0
    assert (s.expired > 0) == (policy.ttl is not None)


# repr and validation


def test_repr_shows_state_but_no_contents() -> None:
    """repr() shows counts, bounds and policy, never message contents."""
    queue = make(overflow="reject", ttl=2.5)
    queue.put_nowait(b"secret-token", True)
    text = repr(queue)
    assert text == "<OutboundQueue 1/1000 messages, 12 bytes, reject, ttl=2.5s>"
    assert "secret" not in text


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_messages": 0}, "max_messages must be an int of at least 1, got 0"),
        ({"max_messages": 2.5}, "max_messages must be an int of at least 1, got 2.5"),
        ({"max_messages": True}, "max_messages must be an int of at least 1, got True"),
        ({"max_bytes": 0}, "max_bytes must be None or an int of at least 1, got 0"),
        ({"max_bytes": 1024.0}, "max_bytes must be None or an int of at least 1, got 1024.0"),
        (
            {"overflow": "drop"},
            "overflow must be one of 'drop_oldest', 'drop_newest', 'reject', 'block', got 'drop'",
        ),
        ({"ttl": 0}, "ttl must be None or a finite number of seconds > 0, got 0"),
        ({"ttl": -1.0}, "got -1.0"),
        ({"ttl": float("inf")}, "got inf"),
        ({"ttl": float("nan")}, "got nan"),
    ],
)
def test_policy_validation(kwargs: dict[str, Any], match: str) -> None:
    """QueuePolicy rejects impossible settings with a message naming the valid ones."""
    with pytest.raises(ValueError, match=match):
        QueuePolicy(**kwargs)


def test_policy_defaults() -> None:
    """The default policy keeps 1000 messages or 8 MiB, drops the oldest, no ttl."""
    assert QueuePolicy() == QueuePolicy(
        max_messages=1000, max_bytes=8 * 2**20, overflow="drop_oldest", ttl=None
    )


# block, on virtual time


class Putter:
    """Runs ``await queue.put(data)`` in a task and records how it ended."""

    def __init__(self, queue: OutboundQueue, data: bytes) -> None:
        self.queue = queue
        self.data = data
        self.done = False
        self.finished_at: float | None = None
        self.result: bool | None = None
        self.error: BaseException | None = None

    async def run(self, timeout: float = float("inf")) -> None:
        try:
            with anyio.move_on_after(timeout):
                self.result = await self.queue.put(self.data, False)
        except Exception as exc:
            self.error = exc
        self.done = True
        self.finished_at = anyio.current_time()


async def test_blocked_putter_proceeds_after_pop() -> None:
    """Under block, put() waits while the queue is full and gets in once pop() makes room."""
    queue = OutboundQueue(QueuePolicy(max_messages=1, overflow="block"))
    assert await queue.put(b"a", False) is True
    putter = Putter(queue, b"b")
    async with anyio.create_task_group() as tg:
        tg.start_soon(putter.run)
        await anyio.sleep(1)
        assert not putter.done
        assert "1 putters waiting" in repr(queue)
        assert queue.pop() == (b"a", False)
        await anyio.sleep(1)
        assert putter.done
    assert putter.result is True
    assert queue.pop() == (b"b", False)
    stats(queue, queued=2, sent=2)


async def test_blocked_putters_get_in_first_come_first_served() -> None:
    """A later, smaller message does not overtake a blocked one even when it would fit."""
    queue = OutboundQueue(QueuePolicy(max_bytes=10, overflow="block"))
    queue.put_nowait(b"x" * 5, False)
    queue.put_nowait(b"y" * 5, False)
    big, small = Putter(queue, b"B" * 8), Putter(queue, b"s" * 3)
    async with anyio.create_task_group() as tg:
        tg.start_soon(big.run)
        await anyio.sleep(1)
        tg.start_soon(small.run)
        await anyio.sleep(1)
        queue.pop()  # 5 bytes free: "small" would fit, "big" would not
        await anyio.sleep(1)
        assert not big.done
        assert not small.done
        queue.pop()  # 10 free: "big" gets in, then "small" no longer fits
        await anyio.sleep(1)
        assert big.done
        assert not small.done
        queue.pop()
        await anyio.sleep(1)
        assert small.done
    assert drain(queue) == [b"s" * 3]
    stats(queue, queued=4, sent=4)


async def test_cancelled_putter_leaves_no_trace() -> None:
    """Cancelling a blocked put() leaves the queue and counters as if it never happened."""
    queue = OutboundQueue(QueuePolicy(max_messages=1, overflow="block"))
    queue.put_nowait(b"a", False)
    cancelled, patient = Putter(queue, b"c"), Putter(queue, b"p")
    async with anyio.create_task_group() as tg:
        tg.start_soon(cancelled.run, 5)
        await anyio.sleep(1)
        tg.start_soon(patient.run)
        await anyio.sleep(10)
        assert cancelled.done
        assert cancelled.result is None
        assert cancelled.error is None
        assert not patient.done
        stats(queue, messages=1, bytes=1, queued=1)
        assert "1 putters waiting" in repr(queue)
        queue.pop()
        await anyio.sleep(1)
        assert patient.done
    assert drain(queue) == [b"p"]
    stats(queue, queued=2, sent=2)


async def test_cancelling_the_first_putter_lets_the_next_one_in() -> None:
    """When the first blocked putter is cancelled, the next one gets in at once if it fits."""
    queue = OutboundQueue(QueuePolicy(max_bytes=10, overflow="block"))
    queue.put_nowait(b"x" * 5, False)
    big, small = Putter(queue, b"B" * 8), Putter(queue, b"s" * 3)
    async with anyio.create_task_group() as tg:
        tg.start_soon(big.run, 5)
        await anyio.sleep(1)
        tg.start_soon(small.run)
        start = anyio.current_time()
    assert small.finished_at is not None
    assert small.finished_at - start == pytest.approx(4)  # when "big" gave up, no pop()
    assert big.result is None
    assert small.result is True
    assert drain(queue) == [b"x" * 5, b"s" * 3]
    stats(queue, queued=2, sent=2)


async def test_close_wakes_blocked_putter_with_the_exception() -> None:
    """close() makes a blocked put() raise the exception it was given, and later puts too."""
    queue = OutboundQueue(QueuePolicy(max_messages=1, overflow="block"))
    queue.put_nowait(b"a", False)
    first, second = Putter(queue, b"b"), Putter(queue, b"c")
    exc = ConnectionClosedError(1006)
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run)
        tg.start_soon(second.run)
        await anyio.sleep(1)
        queue.close(exc)
        await anyio.sleep(1)
        assert first.done
        assert second.done
    assert first.error is exc
    assert second.error is exc
    with pytest.raises(ConnectionClosedError):
        await queue.put(b"d", False)
    assert repr(queue) == "<OutboundQueue 1/1 messages, 1 bytes, block, closed>"
    stats(queue, messages=1, bytes=1, queued=1)


async def test_put_nowait_does_not_overtake_a_blocked_putter() -> None:
    """While a put() waits, put_nowait raises QueueFull even if room was just made."""
    queue = OutboundQueue(QueuePolicy(max_messages=1, overflow="block"))
    queue.put_nowait(b"a", False)
    putter = Putter(queue, b"b")
    async with anyio.create_task_group() as tg:
        tg.start_soon(putter.run)
        await anyio.sleep(1)
        queue.pop()  # room now, but the waiting putter has not run yet
        with pytest.raises(QueueFull, match=r"1 put\(\) calls are waiting"):
            queue.put_nowait(b"c", False)
        await anyio.sleep(1)
        assert putter.done
    assert drain(queue) == [b"b"]
    stats(queue, queued=2, sent=2, rejected=1)


async def test_blocked_putter_gets_in_when_the_head_expires() -> None:
    """A blocked put() gets in when the message ahead of it expires, with nobody popping."""
    queue = OutboundQueue(QueuePolicy(max_messages=2, overflow="block", ttl=5))
    queue.put_nowait(b"a", False)
    await anyio.sleep(2)
    queue.put_nowait(b"b", False)
    start = anyio.current_time()
    putter = Putter(queue, b"c")
    async with anyio.create_task_group() as tg:
        tg.start_soon(putter.run)
    assert anyio.current_time() - start == pytest.approx(3)
    assert putter.result is True
    assert drain(queue) == [b"b", b"c"]
    stats(queue, queued=3, sent=2, expired=1)


async def test_put_under_other_policies_is_put_nowait() -> None:
    """Under policies other than block, put() returns put_nowait's answer without waiting."""
    queue = OutboundQueue(QueuePolicy(max_messages=1, overflow="drop_newest"))
    start = anyio.current_time()
    assert await queue.put(b"a", False) is True
    assert await queue.put(b"b", False) is False
    assert anyio.current_time() == start
    stats(queue, messages=1, bytes=1, queued=1, dropped_newest=1)


async def test_put_on_oversized_or_closed_queue_raises_at_once() -> None:
    """put() under block raises at once for an oversized message or a closed queue."""
    queue = OutboundQueue(QueuePolicy(max_bytes=4, overflow="block"))
    with pytest.raises(QueueFull, match="5 bytes"):
        await queue.put(b"x" * 5, False)
    queue.close(ConnectionClosedError(1000))
    with pytest.raises(ConnectionClosedError):
        await queue.put(b"x", False)
    stats(queue, rejected=1)
