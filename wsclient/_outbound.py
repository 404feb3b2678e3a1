"""The bounded outbound queue: where messages wait while the link is down.

A pure data structure with no I/O and no tasks. Producers ``put()``
messages; when the link comes back, a flusher takes them out with
``pop()`` in order and writes them. [`QueuePolicy`][wsclient.QueuePolicy] bounds
the queue by messages and bytes, says what happens when it is full, and how
long a message may wait.

Delivery guarantee: at most once. A message taken out and written to a socket
that then dies may be lost unless a layer above acknowledges it; messages
still in the queue when the link comes back are written in order. Expired
messages are dropped lazily, at the next put, peek or pop, so ``len()``,
``nbytes`` and ``statistics()`` (which
never read the clock) may still count them until then.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import anyio
import anyio.lowlevel

from ._checks import is_count
from ._exceptions import QueueFull

__all__ = ["Overflow", "QueuePolicy", "QueueStatistics"]

Overflow = Literal["drop_oldest", "drop_newest", "reject", "block"]
"""What a full outbound queue does with one more message ([`QueuePolicy`][wsclient.QueuePolicy])."""
_OVERFLOWS: tuple[str, ...] = get_args(Overflow)
# What every queue starts with, never added to (see OutboundQueue.__init__).
_NOTHING: deque[Any] = deque()


@dataclass(frozen=True, kw_only=True)
class QueuePolicy:
    """How many messages wait while the link is down, and what happens when that is full.

    ``max_messages`` and ``max_bytes`` (``None``: no byte bound) bound the
    queue; ``len(data)`` is what counts towards ``max_bytes``. ``overflow``
    decides what happens to a message that does not fit:

    * ``"drop_oldest"``: evict messages from the head until it fits. The
      default, as in browsers' reconnecting sockets: the newest data matters most.
    * ``"drop_newest"``: keep the queue and drop the new message.
    * ``"reject"``: raise [`QueueFull`][wsclient.QueueFull].
    * ``"block"``: ``await put()`` waits for room; ``put_nowait()`` raises
      [`QueueFull`][wsclient.QueueFull].

    ``ttl`` is how many seconds a message may wait; older ones are dropped,
    not sent (``None``: no limit).
    """

    max_messages: int = 1000
    max_bytes: int | None = 8 * 2**20
    overflow: Overflow = "drop_oldest"
    ttl: float | None = None

    def __post_init__(self) -> None:
        if not is_count(self.max_messages) or self.max_messages < 1:
            raise ValueError(
                f"max_messages must be an int of at least 1, got {self.max_messages!r}"
            )
        if self.max_bytes is not None and (not is_count(self.max_bytes) or self.max_bytes < 1):
            raise ValueError(
                f"max_bytes must be None or an int of at least 1, got {self.max_bytes!r}"
            )
        if self.overflow not in _OVERFLOWS:
            valid = ", ".join(repr(name) for name in _OVERFLOWS)
            raise ValueError(f"overflow must be one of {valid}, got {self.overflow!r}")
        # `not ttl > 0` also rejects NaN.
        if self.ttl is not None and not (self.ttl > 0 and math.isfinite(self.ttl)):
            raise ValueError(
                f"ttl must be None or a finite number of seconds > 0, got {self.ttl!r}"
            )


@dataclass(frozen=True)
class QueueStatistics:
    """Counters of one ``OutboundQueue``, from ``OutboundQueue.statistics()``.

    ``queued == messages + sent + dropped_oldest + expired + discarded`` always
    holds: ``dropped_newest`` and ``rejected`` count messages never accepted.
    """

    messages: int
    """Messages waiting now."""
    bytes: int
    """Bytes waiting now (the sum of ``len(data)``)."""
    queued: int
    """Messages accepted into the queue, ever."""
    sent: int
    """Messages taken out by ``OutboundQueue.pop()`` to be written."""
    dropped_oldest: int
    """Messages evicted to make room (``drop_oldest``)."""
    dropped_newest: int
    """Messages refused silently (``drop_newest``)."""
    rejected: int
    """Messages refused with [`QueueFull`][wsclient.QueueFull]."""
    expired: int
    """Messages dropped because they waited longer than ``ttl``."""
    discarded: int
    """Messages dropped by ``OutboundQueue.clear()``."""


class _Putter:
    """A ``put()`` waiting for room; its event is replaced after each wake-up."""

    __slots__ = ("event", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.event = anyio.Event()


class OutboundQueue:
    """A FIFO of ``(data, text)`` messages bounded by a [`QueuePolicy`][wsclient.QueuePolicy].

    Not thread-safe: use it from the tasks of one event loop. ``clock`` gives
    the time for ``ttl`` and is read only when ``ttl`` is set; a blocked
    ``put()`` waits on the event loop's time for the head to expire, so a
    custom clock should advance at the same rate.
    """

    def __init__(
        self,
        policy: QueuePolicy,
        *,
        clock: Callable[[], float] = anyio.current_time,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self._policy = policy
        self._clock = clock
        # Called before the head message is dropped (drop_oldest, ttl), so
        # the owner can tell which message it was.
        self._on_drop = on_drop
        # (data, text, deadline); deadline is 0.0 and unused without ttl.
        # Made by the first message, as the putters' by the first putter: most
        # queues of a healthy connection stay empty, and a deque costs 760 bytes.
        self._messages: deque[tuple[bytes, bool, float]] = _NOTHING
        self._nbytes = 0
        self._putters: deque[_Putter] = _NOTHING
        self._closed: BaseException | None = None
        self._queued = 0
        self._sent = 0
        self._dropped_oldest = 0
        self._dropped_newest = 0
        self._rejected = 0
        self._expired = 0
        self._discarded = 0

    @property
    def policy(self) -> QueuePolicy:
        return self._policy

    @property
    def nbytes(self) -> int:
        """Bytes waiting now (the sum of ``len(data)``)."""
        return self._nbytes

    @property
    def waiting(self) -> int:
        """How many ``put()`` calls wait for room (``block``)."""
        return len(self._putters)

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def busy(self) -> bool:
        """Messages wait, or ``put()`` calls do: a new message must queue behind them."""
        return bool(self._messages or self._putters)

    def put_nowait(self, data: bytes, text: bool) -> bool:
        """Add a message without waiting; False if ``drop_newest`` dropped it.

        Raises [`QueueFull`][wsclient.QueueFull] for a message bigger than
        ``max_bytes``, under ``reject`` and ``block`` when the queue is full,
        and under ``block`` while ``put()`` calls wait (they go first). After
        ``close()``, raises the exception given to it.
        """
        size = len(data)
        self._check_put(size)
        self._expire()
        policy = self._policy
        if self._putters:
            self._rejected += 1
            raise QueueFull(
                f"outbound queue is full: {len(self._putters)} put() calls are waiting "
                "and go first; use `await put()` to wait for room"
            )
        if not self._fits(size):
            overflow = policy.overflow
            if overflow == "drop_oldest":
                self._evict_for(size)
            elif overflow == "drop_newest":
                self._dropped_newest += 1
                return False
            else:
                self._rejected += 1
                hint = "; use `await put()` to wait for room" if overflow == "block" else ""
                raise QueueFull(f"outbound queue is full: {self._bound_hit(size)}{hint}")
        self._append(data, text, size)
        return True

    async def put(self, data: bytes, text: bool) -> bool:
        """Add a message; under ``block``, wait until it fits.

        Waiting putters get in first come, first served: a later, smaller
        message that would fit sooner does not overtake. Cancelling a waiting
        ``put()`` leaves nothing behind. If the queue is closed meanwhile,
        raises the exception given to ``close()``. Under the other policies
        this is ``put_nowait()``.
        """
        if self._policy.overflow != "block":
            return self.put_nowait(data, text)
        size = len(data)
        self._check_put(size)
        self._expire()
        if not self._putters and self._fits(size):
            self._append(data, text, size)
            return True

        putter = _Putter(size)
        if self._putters is _NOTHING:
            self._putters = deque()
        self._putters.append(putter)
        try:
            while True:
                # Only the first putter watches the clock: the messages ahead
                # of it may expire and make room with nobody calling pop().
                watched = self._head_deadline() if self._putters[0] is putter else None
                if watched is None:
                    await putter.event.wait()
                    now = None
                else:
                    with anyio.move_on_after(max(0.0, watched - self._clock())) as timer:
                        await putter.event.wait()
                    # The loop's timer may fire a hair before the clock reads the
                    # deadline; trust the timer, or this would spin.
                    now = max(self._clock(), watched) if timer.cancelled_caught else None
                if self._closed is not None:
                    raise self._closed
                if self._putters[0] is putter:
                    self._expire(now)
                    if self._fits(size):
                        # Cancelled while being woken (its caller gave up): it
                        # must not get in. This never lets another task run.
                        await anyio.lowlevel.checkpoint_if_cancelled()
                        break
                # Each wake-up is a fresh check, and nothing can change between
                # that check and the next wait: no wake-up is lost.
                putter.event = anyio.Event()
        except BaseException:
            was_first = self._putters[0] is putter
            self._putters.remove(putter)
            if was_first:
                self._wake_first(force=self._policy.ttl is not None)
            raise
        self._putters.popleft()
        self._append(data, text, size)
        # The next putter may fit too, or must start watching the clock.
        self._wake_first(force=self._policy.ttl is not None)
        return True

    def peek(self) -> tuple[bytes, bool] | None:
        """The first unexpired message, without removing it; None if there is none."""
        self._expire()
        if not self._messages:
            return None
        data, text, _ = self._messages[0]
        return data, text

    def pop(self) -> tuple[bytes, bool]:
        """Remove and return the first unexpired message; IndexError if there is none."""
        self._expire()
        if not self._messages:
            raise IndexError("pop from an empty outbound queue")
        data, text, _ = self._messages.popleft()
        self._nbytes -= len(data)
        self._sent += 1
        if self._putters:
            self._wake_first()
        return data, text

    def clear(self) -> int:
        """Drop every waiting message (the connection is closed for good); return how many."""
        count = len(self._messages)
        self._messages.clear()
        self._nbytes = 0
        self._discarded += count
        if self._putters:
            self._wake_first()
        return count

    def close(self, exc: BaseException) -> None:
        """Refuse further puts: waiting and later ones raise ``exc``.

        Idempotent: the first exception stays. Messages already waiting stay
        too, for the caller to ``pop()`` or ``clear()``.
        """
        if self._closed is not None:
            return
        self._closed = exc
        for putter in self._putters:
            putter.event.set()

    def statistics(self) -> QueueStatistics:
        """A snapshot of this queue's counters."""
        return QueueStatistics(
            messages=len(self._messages),
            bytes=self._nbytes,
            queued=self._queued,
            sent=self._sent,
            dropped_oldest=self._dropped_oldest,
            dropped_newest=self._dropped_newest,
            rejected=self._rejected,
            expired=self._expired,
            discarded=self._discarded,
        )

    def __repr__(self) -> str:
        policy = self._policy
        parts = [
            f"{len(self._messages)}/{policy.max_messages} messages",
            f"{self._nbytes} bytes",
            policy.overflow,
        ]
        if policy.ttl is not None:
            parts.append(f"ttl={policy.ttl:g}s")
        if self._putters:
            parts.append(f"{len(self._putters)} putters waiting")
        if self._closed is not None:
            parts.append("closed")
        return f"<OutboundQueue {', '.join(parts)}>"

    def _check_put(self, size: int) -> None:
        if self._closed is not None:
            raise self._closed
        max_bytes = self._policy.max_bytes
        if max_bytes is not None and size > max_bytes:
            # No policy can make room for it: fail loudly rather than drop it.
            self._rejected += 1
            raise QueueFull(
                f"message of {size} bytes is bigger than the outbound queue (max_bytes={max_bytes})"
            )

    def _fits(self, size: int) -> bool:
        policy = self._policy
        if len(self._messages) >= policy.max_messages:
            return False
        return policy.max_bytes is None or self._nbytes + size <= policy.max_bytes

    def _bound_hit(self, size: int) -> str:
        policy = self._policy
        if len(self._messages) >= policy.max_messages:
            return f"{policy.max_messages} messages"
        return f"{policy.max_bytes} bytes ({self._nbytes} waiting, {size} more)"

    def _append(self, data: bytes, text: bool, size: int) -> None:
        ttl = self._policy.ttl
        deadline = 0.0 if ttl is None else self._clock() + ttl
        if self._messages is _NOTHING:
            self._messages = deque()
        self._messages.append((data, text, deadline))
        self._nbytes += size
        self._queued += 1

    def _evict_for(self, size: int) -> None:
        # Terminates: size <= max_bytes and max_messages >= 1, so an empty queue fits.
        messages = self._messages
        while not self._fits(size):
            if self._on_drop is not None:
                self._on_drop()
            data, _, _ = messages.popleft()
            self._nbytes -= len(data)
            self._dropped_oldest += 1

    def _expire(self, now: float | None = None) -> None:
        if self._policy.ttl is None or not self._messages:
            return
        if now is None:
            now = self._clock()
        messages = self._messages
        expired = 0
        # Deadlines grow from head to tail, so expired messages are all at the head.
        # A message's time is up once it has waited ttl seconds.
        while messages and messages[0][2] <= now:
            if self._on_drop is not None:
                self._on_drop()
            data, _, _ = messages.popleft()
            self._nbytes -= len(data)
            expired += 1
        if expired:
            self._expired += expired
            if self._putters:
                self._wake_first()

    def _head_deadline(self) -> float | None:
        if self._policy.ttl is None or not self._messages:
            return None
        return self._messages[0][2]

    def _wake_first(self, *, force: bool = False) -> None:
        # Wake only the first putter: the others may not overtake it anyway.
        # `force` when it just became first, so it starts watching the ttl clock.
        if self._putters:
            first = self._putters[0]
            if force or self._fits(first.size):
                first.event.set()
