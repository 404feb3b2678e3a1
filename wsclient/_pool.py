"""The Pool: N clients over one or more URLs, picked in turn, skipping the unhealthy.

[`Pool`][wsclient.Pool] is the connection pool of seeds/004, made of whole
[`Client`][wsclient.Client]s: each member reconnects, re-authenticates and
resubscribes on its own, so the pool itself only chooses. Choosing is
synchronous bookkeeping (no I/O, no await); the member does the I/O.

A member is *healthy* while it is OPEN and no heartbeat probe of its waits
unanswered. [`pick()`][wsclient.Pool.pick] takes the next healthy member in
turn (or the healthy one with the fewest pending requests); when none is
healthy it falls back to the next member anyway, preferring one that is
OPEN, then one that is reconnecting, so that what is sent waits in that
member's outbound queue and flushes when it is back.

A subscription made through the pool is pinned to one member. When that
member has been down for longer than ``subscription_grace`` seconds (or gave
up), the subscription moves to a healthy member. With delivery ids (the
dialect's [`Inbound.delivery_id`][wsclient.Inbound]) the move is
make-before-break and deliveries already seen are dropped; without them it is
break-before-make, so there are never duplicates, and what is published
while no member holds the subscription is lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any, Literal, get_args

import anyio
import anyio.abc

from ._buffer import BufferPolicy, InboundBuffer
from ._channels import (
    Deliveries,
    DeliveryCallback,
    Subscription,
    SubscriptionState,
    SubscriptionStatistics,
)
from ._checks import check_timeout, is_count, is_finite_number
from ._client import Client, ClientStatistics
from ._correlator import InFlight, RequestStatistics
from ._exceptions import InvalidState, ReconnectFailed, RemoteError, RequestTimeout, WSClientError
from ._outbound import QueueStatistics
from ._reconnect import ConnectionState, StateChange
from ._redact import redact_url
from ._transport import Transport, check_close

__all__ = ["Pool", "PoolPolicy", "PoolStatistics", "PoolSubscription"]

logger = logging.getLogger("wsclient.pool")

PoolPolicy = Literal["round_robin", "least_pending"]
"""How [`Pool.pick()`][wsclient.Pool.pick] chooses among healthy members: in turn, or
the one with the fewest requests waiting for a reply (ties in turn)."""
_POLICIES: tuple[str, ...] = get_args(PoolPolicy)

_OPEN = ConnectionState.OPEN
_CLOSED = ConnectionState.CLOSED
_CLOSING = ConnectionState.CLOSING

# Delivery ids longer than this are remembered by a 16-byte digest, so that a
# server's huge ids cannot make the recently-seen window large in memory.
_LONG_ID = 64
# A move that failed (the target closed under it, its queue refused the
# subscribe) is tried again after a state change, or after this many seconds.
_RETRY_MOVE = 1.0


@dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of a [`Pool`][wsclient.Pool]: each member's, the totals, and the pool's own."""

    policy: PoolPolicy
    """How healthy members are chosen."""
    members: tuple[ClientStatistics, ...]
    """Each member's statistics, in the order of [`Pool.members`][wsclient.Pool.members]."""
    states: dict[ConnectionState, int]
    """Members per connection state."""
    healthy: int
    """Members OPEN with no heartbeat probe unanswered: those [`pick()`][wsclient.Pool.pick]
    chooses from."""
    requests: RequestStatistics
    """The members' request counters, added up."""
    queue: QueueStatistics
    """The members' outbound queue counters, added up."""
    messages_received: int
    """Messages received by all members."""
    deliveries: int
    """Channel deliveries received by all members (duplicates included)."""
    reconnects: int
    """Connections the members opened after their first."""
    picks: int
    """Members chosen by [`pick()`][wsclient.Pool.pick] (and so by every send and request)."""
    skips: int
    """Unhealthy members passed over while picking."""
    fallbacks: int
    """Picks that found no healthy member and took the next one anyway."""
    subscriptions: int
    """Pool subscriptions open now."""
    subscription_moves: int
    """Subscriptions moved from a member that was down to another."""
    duplicates_suppressed: int
    """Deliveries dropped because their delivery id was seen already."""


class _Member:
    """One client of the pool and what the pool knows about it."""

    __slots__ = (
        "client",
        "done",
        "down_since",
        "failure",
        "first_error",
        "index",
        "opened",
        "settled",
        "stop",
    )

    def __init__(self, client: Client, index: int) -> None:
        self.client = client
        self.index = index
        self.down_since: float | None = None  # when it last left OPEN; None while OPEN
        self.opened = False  # reached OPEN at least once
        self.settled = False  # its first attempt is over: opened, failed or gave up
        self.first_error: BaseException | None = None  # why its first attempt failed
        self.failure: BaseException | None = None  # what its runner caught
        self.stop: anyio.Event | None = None  # made on entering: the runner may leave
        self.done: anyio.Event | None = None  # the runner left

    @property
    def healthy(self) -> bool:
        rt = self.client._rt
        return rt.state is _OPEN and not rt.heartbeat_late

    def describe(self) -> str:
        rt = self.client._rt
        state = rt.state.name
        if state == "OPEN" and rt.heartbeat_late:
            state += " (heartbeat late)"
        return f"{self.client.name} {state}"


class Pool:
    """``size`` clients over one or more URLs: ``async with wsclient.Pool(urls, size=4) as pool``.

    It has the messaging API of a [`Client`][wsclient.Client]: [`send()`][wsclient.Pool.send],
    [`request()`][wsclient.Pool.request], [`query()`][wsclient.Pool.query],
    [`command()`][wsclient.Pool.command], [`publish()`][wsclient.Pool.publish] and
    [`publish_event()`][wsclient.Pool.publish_event] each go to the member that
    [`pick()`][wsclient.Pool.pick] chooses; [`subscribe()`][wsclient.Pool.subscribe] pins a
    subscription to one member and moves it when that member is down.

    Members are spread over ``urls`` in turn (``size=4`` over two URLs: two
    each, alternating). Entering the pool starts every member at once and
    returns when each has made its first attempt and at least one is open;
    the others keep trying in the background with their backoff. If none
    opens, entering raises the first member's error and closes the rest; with
    ``retry_first_connect=True`` it waits instead until one opens (or every
    member gives up). A member that gives up for good stays in the pool,
    CLOSED, and is never picked while another member is usable.

    Args:
        urls: a ``ws://`` or ``wss://`` URL, a transport factory (see
            [`Client`][wsclient.Client]), or a sequence of them.
        size: how many clients (at least one per URL).
        policy: ``"round_robin"`` (default) or ``"least_pending"``: the healthy
            member with the fewest requests waiting for a reply, ties in turn.
        subscription_grace: seconds a subscription's member may be down
            (not OPEN) before the subscription moves to another member (default
            5; 0 moves at once, ``math.inf`` only when the member gives up).
        dedupe_window: how many recent delivery ids each pool subscription
            remembers to drop duplicates (default 1024). A duplicate that comes
            more than this many deliveries after the original is not caught.
        **client_options: given to every member's [`Client`][wsclient.Client]
            (``backoff``, ``heartbeat``, ``request_timeout``, ``headers``...).
            ``name`` names the members ``name#0``, ``name#1``...; by default they
            are named after their URL, without secrets.

    Raises:
        ValueError: an invalid size, policy, grace or window, or a client option's value.
        TypeError: ``urls`` is not a URL, a factory or a sequence of them; an
            unknown client option.
    """

    def __init__(
        self,
        urls: str
        | Callable[[], Awaitable[Transport]]
        | Sequence[str | Callable[[], Awaitable[Transport]]],
        *,
        size: int,
        policy: PoolPolicy = "round_robin",
        subscription_grace: float = 5.0,
        dedupe_window: int = 1024,
        **client_options: Any,
    ) -> None:
        targets = _targets(urls)
        if not is_count(size) or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        if size < len(targets):
            raise ValueError(
                f"size={size} is less than the {len(targets)} URLs: each URL needs a member"
            )
        if policy not in _POLICIES:
            raise ValueError(f"policy must be one of {_POLICIES}, got {policy!r}")
        if not (
            (is_finite_number(subscription_grace) or subscription_grace == math.inf)
            and subscription_grace >= 0
        ):
            raise ValueError(
                f"subscription_grace must be a number of seconds >= 0, got {subscription_grace!r}"
            )
        if not is_count(dedupe_window) or dedupe_window < 1:
            raise ValueError(f"dedupe_window must be an int >= 1, got {dedupe_window!r}")
        retry_first_connect = client_options.pop("retry_first_connect", False)
        if not isinstance(retry_first_connect, bool):
            raise TypeError("retry_first_connect must be a bool")
        name = client_options.pop("name", None)
        if name is not None and not isinstance(name, str):
            raise TypeError("name must be a str")
        self._policy: PoolPolicy = policy
        self._grace = float(subscription_grace)
        self._window = dedupe_window
        self._retry_first_connect = retry_first_connect
        subscriber_buffer = client_options.get("subscriber_buffer", BufferPolicy())
        if not isinstance(subscriber_buffer, BufferPolicy):
            raise TypeError(
                "subscriber_buffer must be a wsclient.BufferPolicy,"
                f" not {type(subscriber_buffer).__name__}"
            )
        self._subscriber_buffer: BufferPolicy = subscriber_buffer
        members = []
        for index in range(size):
            target = targets[index % len(targets)]
            base = name or (redact_url(target) if isinstance(target, str) else "pool")
            # The pool decides what a failed first attempt means (see the class
            # docstring), so each member retries it and reports it as a state.
            client = Client(
                target, name=f"{base}#{index}", retry_first_connect=True, **client_options
            )
            members.append(_Member(client, index))
        self._members = tuple(members)
        self._clients = tuple(member.client for member in members)
        for member in members:
            member.client.on_state(self._state_observer(member))

        self._state = "new"  # new, starting, running, closing, closed
        self._stack: AsyncExitStack | None = None
        self._group: anyio.abc.TaskGroup | None = None
        self._changed: anyio.Event | None = None  # made when someone waits for a change
        self._closed: anyio.Event | None = None
        self._subscriptions: set[PoolSubscription] = set()
        self._next = 0  # where the next turn starts
        self._picks = 0
        self._skips = 0
        self._fallbacks = 0
        self._moves = 0
        self._duplicates = 0

    # Observing

    @property
    def members(self) -> tuple[Client, ...]:
        """The clients of the pool, in order (member ``i`` uses ``urls[i % len(urls)]``)."""
        return self._clients

    @property
    def policy(self) -> PoolPolicy:
        """How [`pick()`][wsclient.Pool.pick] chooses among healthy members."""
        return self._policy

    def statistics(self) -> PoolStatistics:
        """A snapshot: every member's statistics, their totals, and the pool's counters."""
        members = tuple(client.statistics() for client in self._clients)
        states = dict.fromkeys(ConnectionState, 0)
        for stats in members:
            states[stats.state] += 1
        return PoolStatistics(
            policy=self._policy,
            members=members,
            states=states,
            healthy=sum(1 for member in self._members if member.healthy),
            requests=_total(RequestStatistics, [s.requests for s in members]),
            queue=_total(QueueStatistics, [s.connection.queue for s in members]),
            messages_received=sum(s.connection.messages_received for s in members),
            deliveries=sum(s.channels.deliveries for s in members),
            reconnects=sum(s.connection.reconnects for s in members),
            picks=self._picks,
            skips=self._skips,
            fallbacks=self._fallbacks,
            subscriptions=len(self._subscriptions),
            subscription_moves=self._moves,
            duplicates_suppressed=self._duplicates,
        )

    def __repr__(self) -> str:
        members = ", ".join(member.describe() for member in self._members)
        return (
            f"<Pool {self._policy} {self._state} [{members}] picks={self._picks}"
            f" subscriptions={len(self._subscriptions)}>"
        )

    # Life cycle

    async def __aenter__(self) -> Pool:
        if self._state != "new":
            raise InvalidState("a Pool can be entered only once")
        self._state = "starting"
        self._closed = anyio.Event()
        now = anyio.current_time()
        for member in self._members:
            member.down_since = now
            member.stop = anyio.Event()
            member.done = anyio.Event()
        stack = AsyncExitStack()
        self._group = await stack.enter_async_context(anyio.create_task_group())
        try:
            for member in self._members:
                self._group.start_soon(self._run_member, member, name=member.client.name)
            failure = await self._started()
        except BaseException:
            try:
                await self.aclose()
            finally:
                await stack.aclose()
            raise
        if failure is not None:
            try:
                await self.aclose()
            finally:
                # Left before raising, so the error comes out as itself, not in a group.
                await stack.aclose()
            raise failure.with_traceback(None)
        self._stack = stack
        if self._state == "starting":
            self._state = "running"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.aclose()
        finally:
            stack, self._stack = self._stack, None
            if stack is not None:
                # Our tasks end by themselves once the members closed: leaving
                # without the body's exception lets it propagate as itself.
                await stack.aclose()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close every member (concurrently, each bounded by its ``close_timeout``). Idempotent.

        Pool subscriptions end; requests still waiting fail as their member closes.
        """
        check_close(code, reason)
        if self._state == "new":
            self._state = "closed"
            for client in self._clients:
                await client.aclose(code, reason)  # never entered: nothing to wait for
            return
        if self._closed is None:
            return  # closed before it was entered
        if self._state in ("closing", "closed"):
            await self._closed.wait()
            return
        self._state = "closing"
        for sub in list(self._subscriptions):
            sub._end(None)
            if sub._scope is not None:
                sub._scope.cancel()
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as group:
                for client in self._clients:
                    group.start_soon(_close_member, client, code, reason)
            for member in self._members:
                assert member.stop is not None
                member.stop.set()
            for member in self._members:
                assert member.done is not None
                await member.done.wait()
        self._state = "closed"
        self._notify()
        self._closed.set()

    async def _run_member(self, member: _Member) -> None:
        """Hold one member open, from the pool's task group, until the pool closes."""
        assert member.stop is not None
        assert member.done is not None
        try:
            async with member.client:
                await member.stop.wait()
        except Exception as exc:  # it gave up before opening: a CLOSED member
            member.failure = exc
            logger.debug("%s: gave up: %s", member.client.name, exc)
        finally:
            member.settled = True
            member.done.set()
            self._notify()

    async def _started(self) -> BaseException | None:
        """Wait until the pool may run; return why it may not, if so."""
        members = self._members
        while True:
            if all(member.client.state is _CLOSED for member in members):
                break
            if all(member.settled for member in members):
                if any(member.opened for member in members):
                    return None
                if not self._retry_first_connect:
                    break
            await self._wait_change()
        for member in members:
            error = member.first_error or member.failure
            if error is not None:
                return error
        return InvalidState("no member of the pool could connect")

    def _state_observer(self, member: _Member) -> Callable[[StateChange], None]:
        def observe(change: StateChange) -> None:
            state = change.state
            if state is _OPEN:
                member.down_since = None
                member.opened = member.settled = True
            else:
                if member.down_since is None:
                    member.down_since = change.at
                if change.previous is ConnectionState.CONNECTING and not member.settled:
                    member.settled = True
                    member.first_error = _first_error(change)
                elif state is _CLOSED:
                    member.settled = True
            self._notify()

        return observe

    def _notify(self) -> None:
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()

    async def _wait_change(self) -> None:
        """Wait for a member's state to change (or a subscription's pin)."""
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    def _check_running(self) -> None:
        if self._state != "running":
            if self._state in ("new", "starting"):
                raise InvalidState("the pool is not open yet: use async with wsclient.Pool(...)")
            raise InvalidState("the pool is closed")

    # Choosing

    def pick(self) -> Client:
        """The member the next message goes to.

        ``round_robin``: the next healthy member in turn. ``least_pending``:
        the healthy member with the fewest requests waiting for a reply, ties
        in turn. Healthy means OPEN with no heartbeat probe unanswered. When no
        member is healthy, the next one in turn that is OPEN, else reconnecting,
        else any: what is sent to it waits in its outbound queue.
        """
        return self._choose(None, count=True).client

    def _choose(self, exclude: _Member | None, *, count: bool) -> _Member:
        members = self._members
        size = len(members)
        start = self._next
        chosen: _Member | None = None
        skipped = 0
        if self._policy == "round_robin":
            for step in range(size):
                member = members[(start + step) % size]
                if member is exclude:
                    continue
                if member.healthy:
                    chosen = member
                    break
                skipped += 1
        else:
            fewest = math.inf
            for step in range(size):
                member = members[(start + step) % size]
                if member is exclude:
                    continue
                if not member.healthy:
                    skipped += 1
                    continue
                pending = len(member.client._correlator)
                if pending < fewest:  # strictly fewer: a tie goes to the earlier turn
                    chosen, fewest = member, pending
        fallback = chosen is None
        if chosen is None:
            chosen = self._fallback(exclude)
        self._next = (chosen.index + 1) % size
        if count:
            self._picks += 1
            self._skips += skipped
            self._fallbacks += fallback
        return chosen

    def _fallback(self, exclude: _Member | None) -> _Member:
        """No member is healthy: the next OPEN one, else the next one that will reconnect."""
        members = self._members
        size = len(members)
        order = [members[(self._next + step) % size] for step in range(size)]
        order = [member for member in order if member is not exclude] or order
        for member in order:
            if member.client.state is _OPEN:
                return member
        for member in order:
            if member.client.state not in (_CLOSED, _CLOSING):
                return member
        return order[0]  # every one is closed: it raises why

    def _target(self, exclude: _Member | None) -> _Member | None:
        """Where a subscription goes: a healthy member, else an OPEN one; None if none is."""
        chosen = self._choose(exclude, count=False)
        return chosen if chosen.client.state is _OPEN and chosen is not exclude else None

    # Messaging: each call goes to the member pick() chooses.

    async def send(self, message: Any) -> bool:
        """Send ``message`` through the picked member (see [`Client.send()`][wsclient.Client.send]).

        Returns False if that member's queue dropped it (``drop_newest``).
        """
        self._check_running()
        return await self.pick().send(message)

    async def request(
        self,
        type: str,
        payload: Any = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a high-level convenience
        in_flight: InFlight | None = None,
    ) -> Any:
        """Send a request through the picked member and return its reply's payload.

        See [`Client.request()`][wsclient.Client.request]; the request stays on
        that member (``in_flight="resend"`` resends it there after a reconnect).
        """
        self._check_running()
        return await self.pick().request(type, payload, timeout=timeout, in_flight=in_flight)

    async def query(
        self,
        resource: str,
        parameters: Any = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        in_flight: InFlight | None = None,
    ) -> Any:
        """Query ``resource`` through the picked member (see
        [`Client.query()`][wsclient.Client.query])."""
        self._check_running()
        return await self.pick().query(resource, parameters, timeout=timeout, in_flight=in_flight)

    async def command(
        self,
        action: str,
        parameters: Any = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        in_flight: InFlight | None = None,
    ) -> Any:
        """Run ``action`` through the picked member (see
        [`Client.command()`][wsclient.Client.command])."""
        self._check_running()
        return await self.pick().command(action, parameters, timeout=timeout, in_flight=in_flight)

    async def publish(self, channel: str, data: Any) -> bool:
        """Publish ``data`` on ``channel`` through the picked member.

        False if that member's queue dropped it.
        """
        self._check_running()
        return await self.pick().publish(channel, data)

    async def publish_event(self, event: str, data: Any = None) -> bool:
        """Send a fire-and-forget event through the picked member; False if its queue dropped it."""
        self._check_running()
        return await self.pick().publish_event(event, data)

    def subscribe(
        self,
        channel: str,
        *,
        callback: DeliveryCallback | None = None,
        buffer: BufferPolicy | None = None,
    ) -> PoolSubscription:
        """Subscribe to ``channel`` on one member: ``async with pool.subscribe("prices") as sub``.

        Used exactly like [`Client.subscribe()`][wsclient.Client.subscribe]. The
        subscription is pinned to the member [`pick()`][wsclient.Pool.pick]
        chooses and moves to a healthy one when its member has been down for
        ``subscription_grace`` seconds; see [`PoolSubscription`][wsclient.PoolSubscription].
        """
        if not isinstance(channel, str) or not channel:
            raise ValueError(f"a channel is a non-empty string, not {channel!r}")
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable")
        if buffer is not None and not isinstance(buffer, BufferPolicy):
            raise TypeError(f"buffer must be a wsclient.BufferPolicy, not {type(buffer).__name__}")
        return PoolSubscription(self, channel, callback, buffer or self._subscriber_buffer)


class _Pinned(Subscription):
    """A pool subscription's subscriber on one member: hands over ``(delivery_id, data)``."""

    _wants_id = True

    def __init__(self, owner: PoolSubscription, client: Client) -> None:
        self._owner = owner
        super().__init__(client._channels, owner.channel, self._hand_over, _UNUSED, None)

    def _hand_over(self, pair: Any) -> None:
        self._owner._delivered(self, pair[0], pair[1])

    def _end(self, error: BaseException | None, *, state: SubscriptionState | None = None) -> None:
        ending = self._state is None
        super()._end(error, state=state)
        if ending:
            self._owner._pin_ended(self, error)


_UNUSED = BufferPolicy()  # a callback subscriber has no buffer


class PoolSubscription(Deliveries):
    """A subscription through a [`Pool`][wsclient.Pool], pinned to one member at a time.

    Used like a [`Subscription`][wsclient.Subscription]: ``async with``,
    ``await``, [`receive()`][wsclient.PoolSubscription.receive], ``async for``,
    [`aclose()`][wsclient.PoolSubscription.aclose], [`state`][wsclient.PoolSubscription.state],
    [`confirmed()`][wsclient.PoolSubscription.confirmed] and
    [`statistics()`][wsclient.PoolSubscription.statistics].

    When its member has been down (not OPEN) for ``subscription_grace``
    seconds, or gave up, it moves to a healthy member (else to any OPEN one;
    if none is, it waits, and stays if its own member comes back first). A
    member that is OPEN but late with its heartbeat does not count as down:
    it comes back, or is dropped within the heartbeat's ``timeout``.

    How it moves depends on whether deliveries carry an id (the dialect's
    [`Inbound.delivery_id`][wsclient.Inbound]; the default dialect reads it
    from a delivery's ``"id"``), as the last delivery showed:

    * **With ids**: make before break. It subscribes on the new member, waits
      for the confirmation (at most ``request_timeout``), then leaves the old
      one; if the new member goes down first, it stays and tries again (within
      a second), on another member if one is healthy. A delivery whose id was
      among the last ``dedupe_window`` ids is dropped, so a message that both
      members deliver, or that the server replays, reaches the caller once.
    * **Without ids**: break before make. It leaves the old member first, then
      subscribes on the new one, so no message can arrive twice; what is
      published from the moment the old member went down until the new
      subscription reaches the server is lost (at least ``subscription_grace``).

    A refusal by the server ends it (FAILED), as it does a
    [`Subscription`][wsclient.Subscription]; so does the pool closing
    (UNSUBSCRIBED).
    """

    def __init__(
        self,
        pool: Pool,
        channel: str,
        callback: DeliveryCallback | None,
        policy: BufferPolicy,
    ) -> None:
        self._pool = pool
        self.channel = channel
        """The channel's name."""
        self.origin: Any = None
        """Always None: a pool subscription belongs to no session."""
        self._callback = callback
        self._buffer: InboundBuffer[Any] | None = (
            None
            if callback is not None
            else InboundBuffer(policy, name=f"pool subscription to {channel!r}")
        )
        self._member: _Member | None = None
        self._pin: _Pinned | None = None  # the subscriber on the current member
        self._previous: _Pinned | None = None  # the old one, while a move overlaps
        self._pinned_at = 0.0
        self._opened = False
        self._state: SubscriptionState | None = None  # set when it ends
        self._error: BaseException | None = None
        self._scope: anyio.CancelScope | None = None  # the follower's
        self._received = 0
        self._keyed = False  # whether the last delivery carried an id
        self._seen: set[Any] = set()
        self._order: deque[Any] = deque()
        self._moves = 0
        self._duplicates = 0

    # Observing

    @property
    def state(self) -> SubscriptionState:
        """SUBSCRIBING (also while it moves), SUBSCRIBED, UNSUBSCRIBED or FAILED."""
        if self._state is not None:
            return self._state
        pin = self._pin
        if pin is None or pin._state is not None:
            return SubscriptionState.SUBSCRIBING
        return pin.state

    @property
    def member(self) -> Client | None:
        """The member it is pinned to now; None before it opens."""
        return self._member.client if self._member is not None else None

    @property
    def moves(self) -> int:
        """How many times it moved to another member."""
        return self._moves

    @property
    def duplicates(self) -> int:
        """Deliveries dropped because their id was seen already."""
        return self._duplicates

    def statistics(self) -> SubscriptionStatistics:
        """Its counters, as for a [`Subscription`][wsclient.Subscription]."""
        buffer = self._buffer
        if buffer is None:
            return SubscriptionStatistics(self.state, self._received, 0, 0)
        stats = buffer.statistics()
        return SubscriptionStatistics(self.state, stats.received, stats.pending, stats.dropped)

    def __repr__(self) -> str:
        member = self._member.client.name if self._member is not None else "-"
        stats = self.statistics()
        return (
            f"<PoolSubscription {self.channel!r} {self.state.name} on {member}"
            f" moves={self._moves} duplicates={self._duplicates} pending={stats.pending}>"
        )

    # Opening and closing

    async def _start(self) -> PoolSubscription:
        if self._opened or self._state is not None:
            raise InvalidState(f"the subscription to {self.channel!r} was already opened")
        pool = self._pool
        pool._check_running()
        self._opened = True
        member = pool._choose(None, count=True)
        pin = self._pin_to(member)
        try:
            await pin._start()
        except BaseException as exc:
            self._end(exc if isinstance(exc, Exception) else None)
            raise
        if self._state is not None or pool._state != "running":
            # Closed while it opened (aclose(), or the pool closing): nothing to follow.
            self._end(None)
            if pool._state == "running":
                await self._release(pin)
            return self
        pool._subscriptions.add(self)
        assert pool._group is not None
        self._scope = anyio.CancelScope()
        pool._group.start_soon(self._follow, name=f"pool subscription to {self.channel!r}")
        return self

    def __await__(self) -> Generator[Any, None, PoolSubscription]:
        return self._start().__await__()

    async def __aenter__(self) -> PoolSubscription:
        return await self._start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Leave the channel on its member (``unsubscribe`` if it was the last there)."""
        self._end(None)
        if self._scope is not None:
            self._scope.cancel()
        await self._release(self._previous, self._pin)

    async def confirmed(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until the server confirmed the subscription on its current member.

        As [`Subscription.confirmed()`][wsclient.Subscription.confirmed]; a move
        in between means waiting for the new member's confirmation.
        """
        pool = self._pool
        limit = pool._clients[0].request_timeout if timeout is None else check_timeout(timeout)
        with anyio.move_on_after(limit):
            while True:
                if self._state is not None:
                    raise self._closed_error()
                pin = self._pin
                if (
                    pin is not None
                    and pin._state is None
                    and pin.state is SubscriptionState.SUBSCRIBED
                ):
                    return
                async with anyio.create_task_group() as group:
                    if pin is not None and pin._state is None:
                        group.start_soon(self._confirmation, pin, group.cancel_scope)
                    await pool._wait_change()  # a move, or a member's state
                    group.cancel_scope.cancel()
        raise RequestTimeout(
            f"no confirmation of the subscription to {self.channel!r} in {limit:g}s"
        )

    @staticmethod
    async def _confirmation(pin: _Pinned, scope: anyio.CancelScope) -> None:
        with contextlib.suppress(WSClientError):  # refused or released: confirmed() sees why
            await pin.confirmed(math.inf)
        scope.cancel()

    # Reading: receive(), async for (from Deliveries)

    # Deliveries, in the reader task of a member

    def _delivered(self, pin: _Pinned, delivery_id: Any, data: Any) -> None:
        if self._state is not None or (pin is not self._pin and pin is not self._previous):
            return  # a pin being released: its channel is now served by the current one
        if delivery_id is not None:
            self._keyed = True
            key = delivery_id
            if not isinstance(key, str | int):
                key = repr(key)  # another dialect's id, maybe unhashable (a list)
            if isinstance(key, str) and len(key) > _LONG_ID:
                key = hashlib.blake2b(key.encode(errors="replace"), digest_size=16).digest()
            seen = self._seen
            if key in seen:
                self._duplicates += 1
                self._pool._duplicates += 1
                return
            seen.add(key)
            order = self._order
            order.append(key)
            if len(order) > self._pool._window:
                seen.discard(order.popleft())
        else:
            self._keyed = False
        buffer = self._buffer
        if buffer is None:
            assert self._callback is not None
            self._received += 1
            self._callback(data)  # its exceptions are reported by the member, as for any callback
            return
        if not buffer.put_nowait(data) and buffer.closed:
            self._end(buffer.error, state=SubscriptionState.FAILED)  # overflow="fail"

    def _pin_ended(self, pin: _Pinned, error: BaseException | None) -> None:
        """A pin ended: a refusal ends this subscription; anything else makes it move."""
        if pin is self._pin and isinstance(error, RemoteError):
            self._end(error, state=SubscriptionState.FAILED)
        self._pool._notify()

    def _end(self, error: BaseException | None, *, state: SubscriptionState | None = None) -> None:
        if self._state is not None:
            return
        self._state = state or (
            SubscriptionState.FAILED if error else SubscriptionState.UNSUBSCRIBED
        )
        self._error = error
        if self._buffer is not None:
            self._buffer.close(error)
        self._pool._subscriptions.discard(self)
        self._pool._notify()  # the follower releases the pins and leaves

    # Following the member

    def _pin_to(self, member: _Member) -> _Pinned:
        pin = _Pinned(self, member.client)
        self._pin = pin
        self._member = member
        self._pinned_at = anyio.current_time()
        return pin

    async def _follow(self) -> None:
        """Move to another member whenever the current one is down past the grace period."""
        pool = self._pool
        assert self._scope is not None
        try:
            with self._scope:
                while self._state is None:
                    member, pin = self._member, self._pin
                    assert member is not None
                    state = member.client.state
                    lost = pin is None or pin._state is not None
                    if not lost and state is _OPEN:
                        await pool._wait_change()
                        continue
                    if not lost and state is not _CLOSED:
                        # Counted from when it went down, or from the pin if it was down then.
                        down = member.down_since
                        since = self._pinned_at if down is None else max(down, self._pinned_at)
                        deadline = since + pool._grace
                        if anyio.current_time() < deadline:
                            with anyio.CancelScope(deadline=deadline):
                                await pool._wait_change()
                            continue
                    if not await self._move() and self._state is None:
                        with anyio.move_on_after(_RETRY_MOVE):
                            await pool._wait_change()
        except Exception as exc:  # never into the pool's task group: it holds the caller
            logger.exception("%s: following the member failed", self)
            self._end(exc)
        finally:
            if pool._state == "running":  # else the members are closing anyway
                await self._release(self._previous, self._pin)

    async def _move(self) -> bool:
        """Pin to another member; False if there is none to go to, or it failed."""
        pool = self._pool
        old_member, old = self._member, self._pin
        assert old_member is not None
        stay = old_member.client.state is _OPEN  # its pin was lost, not its member
        target = pool._target(None if stay else old_member)
        if target is None:
            if all(member.client.state is _CLOSED for member in pool._members):
                self._end(old_member.client._closed_reason())
                return True
            return False
        timeout = pool._clients[0].request_timeout
        if self._keyed and old is not None and old._state is None:
            # Make before break: both may deliver for a while; the ids tell repeats.
            pinned_at = self._pinned_at
            self._previous = old
            pin = self._pin_to(target)
            try:
                with anyio.fail_after(timeout):
                    await pin._start()
                await self._confirmed_on(target, pin, timeout)
            except RequestTimeout:
                pass  # not confirmed yet: it may be, later; the old member is down anyway
            except (WSClientError, TimeoutError) as exc:
                logger.info("%s: could not move to %s: %s", self, target.client.name, exc)
                # Nothing lost: the old pin stays, to come back or move again.
                self._previous = None
                self._pin, self._member, self._pinned_at = old, old_member, pinned_at
                await self._release(pin)
                return False
            previous, self._previous = self._previous, None
            await self._release(previous)
        else:
            # Break before make: without ids a message from both would be a duplicate.
            self._pin = None
            await self._release(old)
            pin = self._pin_to(target)
            try:
                with anyio.fail_after(timeout):
                    await pin._start()
            except (WSClientError, TimeoutError) as exc:
                logger.info("%s: could not move to %s: %s", self, target.client.name, exc)
                return False
        if target is not old_member:
            self._moves += 1
            pool._moves += 1
            logger.info(
                "subscription to %r moved from %s to %s",
                self.channel,
                old_member.client.name,
                target.client.name,
            )
        pool._notify()
        return True

    async def _confirmed_on(self, member: _Member, pin: _Pinned, limit: float) -> None:
        """``pin.confirmed(limit)``, but InvalidState as soon as ``member`` is down:
        a move to a member that went down is given up at once, not after ``limit``."""
        with anyio.move_on_after(limit):
            while pin.state is not SubscriptionState.SUBSCRIBED:
                if pin._state is not None:
                    raise pin._closed_error()
                if member.client.state is not _OPEN:
                    raise InvalidState(
                        f"{member.client.name} went down before confirming {self.channel!r}"
                    )
                async with anyio.create_task_group() as group:
                    group.start_soon(self._confirmation, pin, group.cancel_scope)
                    await self._pool._wait_change()  # the member's state, or the pin's end
                    group.cancel_scope.cancel()
            return
        raise RequestTimeout(
            f"no confirmation of the subscription to {self.channel!r} in {limit:g}s"
        )

    async def _release(self, *pins: _Pinned | None) -> None:
        """Leave the channel on the pins' members: shielded, and bounded."""
        timeout = self._pool._clients[0].request_timeout
        for pin in pins:
            if pin is None:
                continue
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + timeout
                await pin.aclose()


def _targets(
    urls: object,
) -> list[str | Callable[[], Awaitable[Transport]]]:
    """``urls`` as a non-empty list of URLs and factories; TypeError or ValueError if not."""
    if isinstance(urls, str) or callable(urls):
        return [urls]
    if not isinstance(urls, Sequence):
        raise TypeError(
            "urls must be a URL, a transport factory, or a sequence of them,"
            f" not {type(urls).__name__}"
        )
    targets = list(urls)
    if not targets:
        raise ValueError("urls is empty: give at least one URL")
    for target in targets:
        if not (isinstance(target, str) or callable(target)):
            raise TypeError(
                f"each of urls must be a URL or a transport factory, not {type(target).__name__}"
            )
    return targets


async def _close_member(client: Client, code: int, reason: str) -> None:
    """Close one member; its error is logged, so that it neither stops the
    others closing nor leaves the pool half closed (the member is CLOSED anyway)."""
    try:
        await client.aclose(code, reason)
    except Exception:
        logger.exception("%s: closing failed", client.name)


def _first_error(change: StateChange) -> BaseException | None:
    """Why a member's first attempt failed, as a client that does not retry it would raise."""
    error = change.error
    if (
        change.state is _CLOSED
        and isinstance(error, ReconnectFailed)
        and error.last_error is not None
    ):
        return error.last_error  # a fatal first error: not retried
    return error


def _total(kind: type[Any], items: list[Any]) -> Any:
    """The field-by-field sum of counter dataclasses of one kind."""
    return kind(**{f.name: sum(getattr(item, f.name) for item in items) for f in fields(kind)})
