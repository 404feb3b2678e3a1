"""The correlator: matches replies to requests by id.

Each request gets a ``Waiter`` keyed by a fresh integer id. The reader
resolves it with the reply (or the server's error, raised as
[`RemoteError`][wsclient.RemoteError]); the asking task waits with a timeout
([`RequestTimeout`][wsclient.RequestTimeout]). Whatever ends the wait
(reply, timeout, cancellation, close) removes the waiter, so none outlives
its request or the client.

A request costs no cancel scope of its own: its deadline goes in a heap, and
one timer task per client, started when a request needs it and gone when
none waits, fails the requests whose time is up. The asking task waits on
the cheapest wake-up its event loop has (a future on asyncio, a task
reschedule on trio), which the reader completes as it routes the reply.

When a connection drops, the requests *in flight* on it (handed to it, as
opposed to still queued) follow their policy ([`InFlight`][wsclient.InFlight]): ``fail``
raises [`ConnectionLost`][wsclient.ConnectionLost] at once; ``resend`` sends them again
on the next connection, for idempotent requests only.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

import anyio
import sniffio

from ._dialect import Inbound
from ._exceptions import ConnectionLost, QueueFull, RequestTimeout

__all__ = ["InFlight", "RequestStatistics"]

logger = logging.getLogger("wsclient.correlator")

# Starts a task in the client's task group; False when it has none (not entered, closed).
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], bool]

InFlight = Literal["fail", "resend"]
"""What happens to a request in flight when its connection drops."""
IN_FLIGHT_POLICIES: tuple[str, ...] = get_args(InFlight)


@dataclass(frozen=True)
class RequestStatistics:
    """Counters of the requests of one client."""

    pending: int
    """Waiting for a reply now."""
    sent: int
    """Requests made."""
    replies: int
    """Answered with a result."""
    remote_errors: int
    """Answered with an error."""
    timeouts: int
    """No reply in time."""
    cancelled: int
    """The caller stopped waiting."""
    lost: int
    """Failed with [`ConnectionLost`][wsclient.ConnectionLost]."""
    dropped: int
    """Refused or dropped by the outbound queue, so never sent: failed with ``QueueFull``."""
    resent: int
    """Sent again after a reconnect."""
    unknown_replies: int
    """Replies to no pending request (late, or not ours)."""


class Waiter:
    """One pending request: its id, where it was sent, and its outcome."""

    __slots__ = (
        "_event",
        "done",
        "error",
        "id",
        "number",
        "origin",
        "payload",
        "policy",
        "resend",
        "result",
        "scope",
        "transport",
    )

    def __init__(self, request_id: int, *, origin: Any, policy: InFlight, payload: Any) -> None:
        self.id = request_id
        self.origin = origin
        self.policy = policy
        # The encoded request, kept only when it may have to be sent again.
        self.payload = payload if policy == "resend" else None
        self.number: int | None = None  # its number in the outbound queue (left_queue)
        self.transport: object | None = None  # the connection it was written to directly
        self.resend = False  # to be sent again on the next connection
        # Set while the request waits for room in the queue: failing the
        # request (its session closed, say) stops that wait too.
        self.scope: anyio.CancelScope | None = None
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        # What wakes the waiting task (see _park): a future, a trio task, an event.
        self._event: Any = None

    def set_result(self, result: Any) -> None:
        if not self.done:
            self.done = True
            self.result = result
            self._wake_up()

    def set_error(self, error: BaseException) -> None:
        if not self.done:
            self.done = True
            self.error = error
            if self.scope is not None and self.number is None:
                self.scope.cancel()  # not yet accepted: nothing half-written to cut
            self._wake_up()

    def _wake_up(self) -> None:
        wake = self._event
        if wake is not None:
            self._event = None
            _unpark(wake)

    async def wait(self) -> Any:
        """The result, or raise the error; waits until ``done``."""
        while not self.done:
            await _park(self)
        if self.error is not None:
            raise self.error.with_traceback(None)
        return self.result

    def __repr__(self) -> str:
        state = "done" if self.done else "resend" if self.resend else "pending"
        return f"<Waiter id={self.id} {state} policy={self.policy}>"


class Correlator:
    """The table of pending requests of one client (and its sessions).

    ``spawn`` starts the timer task that enforces the deadlines given to
    [`arm()`][wsclient._correlator.Correlator.arm]; set it once the client has a task group.
    """

    def __init__(self, *, name: str = "client", spawn: Spawn | None = None) -> None:
        self._name = name
        self.spawn = spawn
        self._waiters: dict[int, Waiter] = {}
        self._ids = itertools.count(1)
        self._closed: BaseException | None = None
        # (deadline, id, waiter, seconds): ids are unique, so waiters are never compared.
        # Answered requests stay until the timer pops them, or a compaction.
        self._deadlines: list[tuple[float, int, Waiter, float]] = []
        self._timer: anyio.CancelScope | None = None  # the timer task's sleep
        self._timing = False  # a timer task runs (or was started)
        self._clock: Callable[[], float] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # asyncio's, while timing
        self._sent = 0
        self._replies = 0
        self._remote_errors = 0
        self._timeouts = 0
        self._cancelled = 0
        self._lost = 0
        self._resent = 0
        self._unknown = 0
        self._dropped = 0

    def __len__(self) -> int:
        return len(self._waiters)

    def new_id(self) -> int:
        """A fresh id for a message that expects no reply (an event)."""
        return next(self._ids)

    def pending_for(self, origin: Any) -> int:
        """How many requests of session ``origin`` wait for a reply."""
        return sum(1 for waiter in self._waiters.values() if waiter.origin == origin)

    def open(self, *, origin: Any = None, policy: InFlight = "fail", payload: Any = None) -> Waiter:
        """Register a new request and return its waiter (with its fresh ``Waiter.id``)."""
        if self._closed is not None:
            raise self._closed.with_traceback(None)
        waiter = Waiter(next(self._ids), origin=origin, policy=policy, payload=payload)
        self._waiters[waiter.id] = waiter
        self._sent += 1
        return waiter

    def discard(self, waiter: Waiter) -> None:
        """Forget ``waiter``; one still pending counts as cancelled (its caller gave up)."""
        if self._waiters.pop(waiter.id, None) is not None and not waiter.done:
            self._cancelled += 1
            waiter.set_error(RequestTimeout(f"request {waiter.id} was cancelled"))

    async def wait(self, waiter: Waiter, within: float) -> Any:
        """Wait for ``waiter``'s outcome for at most ``within`` seconds, then forget it.

        Raises [`RequestTimeout`][wsclient.RequestTimeout], the server's
        [`RemoteError`][wsclient.RemoteError], or [`ConnectionLost`][wsclient.ConnectionLost].
        Cancelling the wait removes the waiter.
        """
        try:
            with anyio.move_on_after(within):
                return await waiter.wait()
            if waiter.done:  # the reply came in the same instant as the deadline
                return await waiter.wait()
            raise self.timed_out(waiter, within)
        finally:
            self.discard(waiter)

    def arm(self, waiter: Waiter, seconds: float) -> bool:
        """Have the timer fail ``waiter`` (``timed_out``) once ``seconds`` pass.

        False if there is no timer to do it (no ``spawn``, or it cannot start
        a task): the caller bounds its wait itself.
        """
        if seconds == math.inf:
            return True  # nothing to time: the reply, or the end of the connection, ends it
        if self._closed is not None or self.spawn is None:
            return False
        clock = self._clock
        if clock is None:
            clock = self._clock = _loop_clock()
            if sniffio.current_async_library() == "asyncio":
                self._loop = asyncio.get_running_loop()  # for reply()'s futures
        deadline = clock() + seconds
        deadlines = self._deadlines
        heapq.heappush(deadlines, (deadline, waiter.id, waiter, seconds))
        if len(deadlines) > 2 * len(self._waiters) + 64:
            # Mostly answered requests: keep the heap as small as what waits.
            waiters = self._waiters
            deadlines[:] = [entry for entry in deadlines if waiters.get(entry[1]) is entry[2]]
            heapq.heapify(deadlines)
        if not self._timing:
            if not self.spawn(self._run_timer):
                deadlines.clear()
                return False
            self._timing = True
        elif self._timer is not None and deadline < self._timer.deadline:
            self._timer.deadline = deadline
        return True

    async def _run_timer(self) -> None:
        """Fail the requests whose deadline passed; sleep until the next one; end when none."""
        deadlines = self._deadlines
        try:
            now = (self._clock or _loop_clock())()
            while True:
                while deadlines and deadlines[0][0] <= now:
                    _, request_id, waiter, seconds = heapq.heappop(deadlines)
                    if self._waiters.get(request_id) is waiter:
                        self.timed_out(waiter, seconds)
                if not deadlines or self._closed is not None:
                    break
                with anyio.CancelScope(deadline=deadlines[0][0]) as timer:
                    self._timer = timer
                    await anyio.sleep_forever()
                self._timer = None
                now = (self._clock or _loop_clock())()
                if timer.cancelled_caught:
                    # The loop's timer may fire a hair before its clock reads
                    # the deadline: trust the timer, or this would spin.
                    now = max(now, timer.deadline)
        except Exception:  # a bug here must not cancel the client's task group
            logger.exception("%s: the request timer failed", self._name)
        finally:
            self._timer = None
            self._timing = False
            self._clock = None
            self._loop = None

    async def reply(self, waiter: Waiter) -> Any:
        """Wait for ``waiter``'s outcome, bounded only by its deadline (``arm``)."""
        while not waiter.done:
            loop = self._loop
            if loop is None:
                await _park(waiter)
                continue
            # _park() on asyncio, with the loop already known: the per-request path.
            future = waiter._event = loop.create_future()
            try:
                await future
            finally:
                if waiter._event is future:
                    waiter._event = None
        if waiter.error is not None:
            raise waiter.error.with_traceback(None)
        return waiter.result

    def timed_out(self, waiter: Waiter, seconds: float) -> RequestTimeout:
        """``waiter``'s caller stopped waiting after ``seconds``: forget it, count it.

        Returns the exception to raise. A reply that comes later finds no
        waiter and is counted as unknown.
        """
        error = RequestTimeout(f"{self._name}: no reply to request {waiter.id} within {seconds:g}s")
        if self._waiters.pop(waiter.id, None) is not None and not waiter.done:
            self._timeouts += 1
            waiter.set_error(error)
        return error

    def resolve(self, inbound: Inbound) -> bool:
        """Hand a REPLY to its waiter; False (and counted) if no request waits for it."""
        waiter = self._waiters.pop(_as_id(inbound.request_id), None)
        if waiter is None or waiter.done:
            self._unknown += 1
            return False
        if inbound.error is not None:
            self._remote_errors += 1
            waiter.set_error(inbound.error)
        else:
            self._replies += 1
            waiter.set_result(inbound.result)
        return True

    def connection_lost(
        self, error: BaseException | None, left_queue: Callable[[int], bool]
    ) -> None:
        """The connection dropped: requests in flight on it fail, or wait to be resent.

        ``left_queue(number)`` tells whether a queued request was handed to
        the connection; those still queued go out on the next one anyway.
        """
        for waiter in list(self._waiters.values()):
            if waiter.done or not _in_flight(waiter, left_queue):
                continue
            waiter.number = None
            waiter.transport = None
            if waiter.policy == "resend":
                waiter.resend = True
                continue
            self._lost += 1
            del self._waiters[waiter.id]
            lost = ConnectionLost(
                f"{self._name}: the connection dropped while request {waiter.id} was in flight"
            )
            lost.__cause__ = error
            waiter.set_error(lost)

    def dropped(self, number: int) -> None:
        """The outbound queue dropped message ``number``: its request, if any, fails at once."""
        for waiter in self._waiters.values():
            if waiter.number == number and not waiter.done:
                message = f"the outbound queue dropped request {waiter.id} (its overflow or ttl)"
                self.refused(waiter, QueueFull(f"{self._name}: {message}"))
                return

    def refused(self, waiter: Waiter, error: QueueFull) -> QueueFull:
        """The outbound queue refused or dropped ``waiter``'s request: fail it, count it.

        Returns ``error``, for the caller to raise.
        """
        if self._waiters.pop(waiter.id, None) is not None and not waiter.done:
            self._dropped += 1
            waiter.set_error(error)
        return error

    def to_resend(self) -> Iterator[Waiter]:
        """The waiters to send again on the new connection, oldest first; each counted once."""
        for waiter in list(self._waiters.values()):
            if waiter.resend and not waiter.done:
                waiter.resend = False
                self._resent += 1
                yield waiter

    def fail(self, error: BaseException, *, origin: Any = None, everyone: bool = False) -> None:
        """Fail the pending requests of session ``origin`` (or of everyone) with ``error``.

        Those of a session count as cancelled: their session gave up on them.
        """
        for waiter in list(self._waiters.values()):
            if everyone or waiter.origin == origin:
                del self._waiters[waiter.id]
                if not everyone and not waiter.done:
                    self._cancelled += 1
                waiter.set_error(error)

    def close(self, error: BaseException) -> None:
        """Fail every pending request with ``error``; later requests raise it too."""
        if self._closed is None:
            self._closed = error
        self._deadlines.clear()
        if self._timer is not None:
            self._timer.cancel()  # the timer task ends: nothing left to time
        pending = sum(1 for waiter in self._waiters.values() if not waiter.done)
        self.fail(error, everyone=True)
        self._lost += pending if isinstance(error, ConnectionLost) else 0

    def statistics(self) -> RequestStatistics:
        return RequestStatistics(
            pending=len(self._waiters),
            sent=self._sent,
            replies=self._replies,
            remote_errors=self._remote_errors,
            timeouts=self._timeouts,
            cancelled=self._cancelled,
            lost=self._lost,
            dropped=self._dropped,
            resent=self._resent,
            unknown_replies=self._unknown,
        )

    def __repr__(self) -> str:
        return f"<Correlator {self._name} pending={len(self._waiters)} sent={self._sent}>"


def _loop_clock() -> Callable[[], float]:
    """The running event loop's clock (``anyio.current_time``), without anyio's lookup per call."""
    if sniffio.current_async_library() == "asyncio":
        return asyncio.get_running_loop().time
    return anyio.current_time


async def _park(waiter: Waiter) -> None:
    """Wait until ``waiter._wake_up()``, or cancellation.

    A request's whole cost is a few microseconds: anyio's Event (made through
    a backend lookup, with a deque of waiters) would be a good part of it.
    """
    library = sniffio.current_async_library()
    if library == "asyncio":
        future = asyncio.get_running_loop().create_future()
        waiter._event = future
        try:
            await future
        finally:
            if waiter._event is future:
                waiter._event = None
    elif library == "trio":
        import trio

        task = trio.lowlevel.current_task()
        waiter._event = task

        def abort(_: object) -> trio.lowlevel.Abort:
            if waiter._event is task:
                waiter._event = None  # no reschedule after this
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
    else:  # pragma: no cover - anyio has no other backend
        event = anyio.Event()
        waiter._event = event
        await event.wait()


def _unpark(wake: Any) -> None:
    if isinstance(wake, asyncio.Future):
        if not wake.done():
            wake.set_result(None)
    elif hasattr(wake, "set"):  # an event
        wake.set()
    else:
        import trio

        trio.lowlevel.reschedule(wake)


def _in_flight(waiter: Waiter, left_queue: Callable[[int], bool]) -> bool:
    if waiter.transport is not None:
        return True
    return waiter.number is not None and left_queue(waiter.number)


def _as_id(value: Any) -> Any:
    """Our ids are ints; some servers echo them back as strings or floats.

    Anything else (bools, lists, huge digit strings) matches nothing, and
    never raises: the value comes from the wire.
    """
    if type(value) is int:
        return value  # the usual case
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        if value.isascii() and value.isdigit() and len(value) <= 20:
            return int(value)
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None
