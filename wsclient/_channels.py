"""Channel subscriptions: the registry of what this client listens to.

Local subscribers to one channel share one server subscription: the first
sends ``subscribe``, the last to leave sends ``unsubscribe`` (a reference
count). Every live channel is subscribed again after a reconnect, from an
``on_connect`` hook, so before the queued messages flush. Each subscriber
has its own bounded buffer ([`BufferPolicy`][wsclient.BufferPolicy]), or a callback,
so a slow consumer loses its own messages and never stalls the others.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeVar

import anyio

from ._buffer import BufferPolicy, InboundBuffer
from ._checks import check_timeout
from ._exceptions import InvalidState, QueueFull, RemoteError, RequestTimeout, WSClientError

__all__ = ["ChannelStatistics", "Subscription", "SubscriptionState", "SubscriptionStatistics"]

logger = logging.getLogger("wsclient.channels")

# A callback subscriber: called with each delivery's data, in the reader task.
DeliveryCallback = Callable[[Any], None]


class SubscriptionState(enum.Enum):
    """Where a subscription is in its life."""

    SUBSCRIBING = "subscribing"
    """Asked for (or waiting for a connection), not confirmed yet."""
    SUBSCRIBED = "subscribed"
    """Confirmed by the server."""
    UNSUBSCRIBED = "unsubscribed"
    """Closed by us, or the client closed."""
    FAILED = "failed"
    """Refused by the server, or fell behind under ``overflow="fail"``."""


@dataclass(frozen=True)
class SubscriptionStatistics:
    """Counters of one [`Subscription`][wsclient.Subscription]."""

    state: SubscriptionState
    """Where the subscription is in its life."""
    received: int
    """Deliveries handed to it."""
    pending: int
    """Buffered, not read yet."""
    dropped: int
    """Lost to its buffer's overflow policy."""


@dataclass(frozen=True)
class ChannelStatistics:
    """Counters of a client's channel registry."""

    channels: int
    """Server subscriptions held now."""
    subscriptions: int
    """Local subscribers now."""
    by_state: dict[SubscriptionState, int]
    """Local subscribers per state."""
    deliveries: int
    """Channel messages received for a subscribed channel."""
    dropped: int
    """Deliveries lost to subscribers' overflow policies."""
    confirmations: int
    """Confirmations and refusals received."""
    resubscribes: int
    """Subscribe messages sent again after a reconnect."""
    callback_errors: int
    """Exceptions raised by callback subscribers."""


class ChannelHost(Protocol):
    """What the registry needs from the client it belongs to."""

    @property
    def request_timeout(self) -> float: ...

    @property
    def _confirms_subscriptions(self) -> bool: ...

    def _current_connection(self) -> object | None:
        """The connection being served (hooks running or open), if any."""

    def _left_queue(self, number: int) -> bool: ...

    async def _submit_frame(
        self, frame: Any, on_accepted: Callable[[int], None] | None = None
    ) -> int | None:
        """Encode and send (or queue) a framed message; its number, None if dropped."""

    def _send_frame_nowait(self, frame: Any) -> int | None:
        """Encode and queue a framed message without waiting; its number, None if dropped."""

    def _subscribe_frame(self, channel: str) -> Any: ...

    def _unsubscribe_frame(self, channel: str) -> Any: ...

    def _report(self, error: BaseException) -> None:
        """Hand an error to the client's error event."""


class _Channel:
    """One server subscription and its local subscribers."""

    __slots__ = ("changed", "name", "number", "sending", "sent_on", "state", "subscribers")

    def __init__(self, name: str) -> None:
        self.name = name
        self.subscribers: list[Subscription] = []
        self.state = SubscriptionState.SUBSCRIBING
        self.sent_on: object | None = None  # the connection its subscribe went to
        self.number: int | None = None  # its subscribe's number in the outbound queue
        self.sending = False  # its subscribe may still wait for room in the queue
        self.changed: anyio.Event | None = None  # made when someone waits for the state

    def set_state(self, state: SubscriptionState) -> None:
        self.state = state
        if self.changed is not None:
            self.changed.set()
            self.changed = None


class ChannelRegistry:
    """Every channel this client subscribes to, with their local subscribers."""

    def __init__(self, host: ChannelHost, *, policy: BufferPolicy, name: str = "client") -> None:
        self._host = host
        self._policy = policy
        self._name = name
        self._channels: dict[str, _Channel] = {}
        # Unsubscribes that may still wait in the outbound queue, by channel:
        # their number (None: not known, a session's closer sends it). A new
        # subscribe to the channel must not overtake them from the on_connect hook.
        self._unsubscribes: dict[str, int | None] = {}
        self._closed: BaseException | None = None
        self._deliveries = 0
        self._dropped_closed = 0  # drops of subscriptions that are gone
        self._confirmations = 0
        self._resubscribes = 0
        self._callback_errors = 0

    def subscription(
        self,
        channel: str,
        *,
        callback: DeliveryCallback | None = None,
        buffer: BufferPolicy | None = None,
        origin: Any = None,
        check: Callable[[], None] | None = None,
    ) -> Subscription:
        """A subscription to ``channel``, opened by ``async with`` or ``await``.

        ``check()`` raises if its owner (a session) may no longer subscribe.
        """
        if not isinstance(channel, str) or not channel:
            raise ValueError(f"a channel is a non-empty string, not {channel!r}")
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable")
        return Subscription(self, channel, callback, buffer or self._policy, origin, check)

    # Subscribers come and go

    async def _open(self, sub: Subscription) -> None:
        if self._closed is not None:
            raise self._closed.with_traceback(None)
        channel = self._channels.get(sub.channel)
        if channel is not None:
            channel.subscribers.append(sub)
            sub._channel = channel
            return
        channel = self._channels[sub.channel] = _Channel(sub.channel)
        channel.subscribers.append(sub)
        sub._channel = channel
        connection = self._host._current_connection()
        if connection is None:
            return  # the on_connect hook subscribes it
        channel.sent_on = connection

        def numbered(number: int) -> None:
            channel.number = number
            if self._channels.get(channel.name) is channel:
                self._unsubscribes.pop(channel.name, None)  # this subscribe goes after it

        channel.sending = True
        try:
            number = await self._host._submit_frame(
                self._host._subscribe_frame(sub.channel), numbered
            )
        except BaseException as exc:
            channel.sending = False
            self._open_failed(sub, channel, exc if isinstance(exc, Exception) else None)
            raise
        channel.sending = False
        if number is None:
            error = QueueFull(f"the outbound queue dropped the subscribe to {sub.channel!r}")
            self._open_failed(sub, channel, error)
            raise error
        self._sent(channel)

    def _open_failed(self, sub: Subscription, channel: _Channel, error: Exception | None) -> None:
        """The first subscriber's subscribe failed, was dropped, or was cancelled.

        A subscribe that was accepted may have reached the server, or may
        yet: subscribing twice and unsubscribing once too often are both
        harmless, so in doubt the channel is put right both ways.
        """
        sub._end(error)  # reading it raises rather than waits
        number = channel.number
        accepted = number is not None
        queued = number is not None and not self._host._left_queue(number)
        frame = self._release(sub)
        if self._channels.get(channel.name) is not channel:  # nobody else holds it
            if accepted and frame is not None:
                self._unsubscribe_nowait(frame, channel.name)
            return
        if queued:
            return  # the queued subscribe serves those who joined meanwhile
        channel.sent_on = None
        channel.number = None
        connection = self._host._current_connection()
        if connection is None:
            return  # the next connection's hook subscribes it
        number = self._send_nowait(self._host._subscribe_frame(channel.name), channel.name)
        if number is not None:
            channel.sent_on = connection
            channel.number = number
            self._unsubscribes.pop(channel.name, None)

    def _unsubscribe_nowait(self, frame: Any, channel: str) -> None:
        number = self._send_nowait(frame, channel, "unsubscribe from")
        if number is not None:
            self._unsubscribed(channel, number)

    def _unsubscribed(self, channel: str, number: int | None) -> None:
        """An unsubscribe from ``channel`` got ``number`` (None: unknown, sent by the caller)."""
        left = self._host._left_queue
        for name, queued in list(self._unsubscribes.items()):
            if queued is None and number is not None:
                # It was given to the queue first: once this one left, so had it.
                self._unsubscribes[name] = queued = number
            if queued is not None and left(queued):
                del self._unsubscribes[name]  # so this stays about as small as the queue
        if number is None or not left(number):
            self._unsubscribes[channel] = number

    def _queue_now(self, frame: Any) -> int | None:
        """Queue ``frame`` if the queue takes it at once: its number; else None, quietly."""
        try:
            return self._host._send_frame_nowait(frame)
        except (WSClientError, TypeError):
            return None

    def _unsubscribe_queued(self, channel: str) -> bool:
        """Whether an unsubscribe from ``channel`` may still wait in the outbound queue."""
        if channel not in self._unsubscribes:
            return False
        number = self._unsubscribes[channel]
        if number is not None and self._host._left_queue(number):
            del self._unsubscribes[channel]
            return False
        return True

    def _send_nowait(self, frame: Any, channel: str, what: str = "subscribe to") -> int | None:
        """Queue ``frame`` from where no one can wait; log (and return None) if it cannot go."""
        try:
            number = self._host._send_frame_nowait(frame)
        except (WSClientError, TypeError) as exc:
            logger.warning("%s: could not %s %r: %s", self._name, what, channel, exc)
            return None
        if number is None:
            logger.warning(
                "%s: the outbound queue dropped the message to %s %r", self._name, what, channel
            )
        return number

    def _sent(self, channel: _Channel) -> None:
        if not self._host._confirms_subscriptions and channel.state is not SubscriptionState.FAILED:
            channel.set_state(SubscriptionState.SUBSCRIBED)

    def _release(self, sub: Subscription) -> Any:
        """Take ``sub`` out; return the unsubscribe frame to send if it was the last."""
        channel = sub._channel
        sub._channel = None
        if channel is None or sub not in channel.subscribers:
            return None
        channel.subscribers.remove(sub)
        self._dropped_closed += sub._dropped()
        if channel.subscribers or self._channels.get(channel.name) is not channel:
            return None
        del self._channels[channel.name]
        channel.set_state(SubscriptionState.UNSUBSCRIBED)
        if self._reaches_server(channel):
            return self._host._unsubscribe_frame(channel.name)
        return None

    def _reaches_server(self, channel: _Channel) -> bool:
        """Whether the server has, or will get, this channel's subscribe."""
        if channel.state is SubscriptionState.FAILED:
            return False
        if channel.sending:
            return True  # in doubt: the queue may yet take it, and an unsubscribe then follows it
        current = self._host._current_connection()
        if current is not None and channel.sent_on is current:
            return True
        return channel.number is not None and not self._host._left_queue(channel.number)

    async def _close(self, sub: Subscription) -> None:
        frame = self._release(sub)
        if frame is not None and self._closed is None:

            def numbered(number: int) -> None:
                self._unsubscribed(sub.channel, number)

            try:
                await self._host._submit_frame(frame, numbered)
            except (WSClientError, TypeError) as exc:
                # The subscription is gone locally either way; stray deliveries
                # that follow go to the client's unhandled messages.
                logger.warning(
                    "%s: could not unsubscribe from %r: %s", self._name, sub.channel, exc
                )

    def _fell_behind(self, sub: Subscription) -> None:
        """A subscriber under overflow="fail" fell behind: drop it, from the reader task."""
        frame = self._release(sub)
        assert sub._buffer is not None
        sub._end(sub._buffer.error, state=SubscriptionState.FAILED)
        if frame is not None:
            self._unsubscribe_nowait(frame, sub.channel)

    def release_origin(self, origin: Any) -> list[Any]:
        """Close every subscription of session ``origin``; the unsubscribe frames left to send.

        The unsubscribes go into the outbound queue at once, numbered like
        the others; those it cannot take now are returned for the caller to
        send at once (before any other unsubscribe).
        """
        frames: list[Any] = []
        for channel in list(self._channels.values()):
            for sub in list(channel.subscribers):
                if sub.origin == origin:
                    sub._end(None)
                    frame = self._release(sub)
                    if frame is None:
                        continue
                    # Once the queue refused one, the rest stay behind it, in order.
                    number = None if frames else self._queue_now(frame)
                    self._unsubscribed(channel.name, number)
                    if number is None:
                        frames.append(frame)
        return frames

    def count_for(self, origin: Any) -> int:
        """How many open subscriptions session ``origin`` has."""
        return sum(
            1 for c in self._channels.values() for sub in c.subscribers if sub.origin == origin
        )

    # The reader's side

    def deliver(self, channel_name: str, data: Any, delivery_id: Any = None) -> bool:
        """Hand a delivery to the channel's subscribers; False if it has none.

        A subscriber with ``_wants_id`` (a pool's) gets ``(delivery_id, data)``.
        """
        channel = self._channels.get(channel_name)
        if channel is None:
            return False
        self._deliveries += 1
        for sub in list(channel.subscribers):
            callback = sub._callback
            if callback is None:
                if not sub._put(data) and sub._buffer_failed():
                    self._fell_behind(sub)
                continue
            sub._received += 1
            try:
                callback((delivery_id, data) if sub._wants_id else data)
            except Exception as exc:
                self._callback_errors += 1
                logger.exception(
                    "%s: callback of a subscription to %r raised", self._name, channel_name
                )
                self._host._report(exc)
        return True

    def confirm(self, channel_name: str, error: RemoteError | None = None) -> bool:
        """The server confirmed (or refused) ``channel_name``; False if we hold no such channel."""
        channel = self._channels.get(channel_name)
        if channel is None:
            return False
        self._confirmations += 1
        if error is None:
            if channel.state is SubscriptionState.SUBSCRIBING:
                channel.set_state(SubscriptionState.SUBSCRIBED)
            return True
        del self._channels[channel_name]
        channel.set_state(SubscriptionState.FAILED)
        for sub in channel.subscribers:
            sub._end(error, state=SubscriptionState.FAILED)
            self._dropped_closed += sub._dropped()
            sub._channel = None
        channel.subscribers.clear()
        self._host._report(error)
        return True

    def dropped(self, number: int) -> None:
        """The outbound queue dropped message ``number``: a channel's subscribe, maybe.

        The channel then waits for the next connection's hook to subscribe it.
        """
        for channel in self._channels.values():
            if channel.number == number:
                channel.number = None
                channel.sent_on = None
                logger.warning(
                    "%s: the outbound queue dropped the subscribe to %r; it is sent again"
                    " after the next reconnect",
                    self._name,
                    channel.name,
                )
                return

    # The connection's life

    def connection_lost(self) -> None:
        """The connection dropped: every channel needs subscribing (and confirming) again."""
        for channel in self._channels.values():
            # The number stays: a subscribe still queued goes out on the next
            # connection, and an unsubscribe must then follow it.
            channel.sent_on = None
            if channel.state is SubscriptionState.SUBSCRIBED:
                channel.set_state(SubscriptionState.SUBSCRIBING)

    async def resubscribe(self, connection: object, send: Callable[[Any], Any]) -> None:
        """The ``on_connect`` hook: subscribe every live channel on ``connection``.

        Again until none is left: a subscription opened while this runs is
        picked up too, and none can open between the last check and OPEN.
        """
        while True:
            pending = [c for c in self._channels.values() if c.sent_on is not connection]
            if not pending:
                return
            for channel in pending:
                if self._channels.get(channel.name) is not channel:
                    continue  # closed meanwhile
                if channel.number is not None and not self._host._left_queue(channel.number):
                    # Its subscribe still waits in the queue, which flushes next.
                    channel.sent_on = connection
                    self._sent(channel)
                    continue
                channel.sent_on = connection
                channel.number = None
                if channel.state is not SubscriptionState.SUBSCRIBING:
                    channel.set_state(SubscriptionState.SUBSCRIBING)
                self._resubscribes += 1
                frame = self._host._subscribe_frame(channel.name)
                if self._unsubscribe_queued(channel.name):
                    # Sent now, it would reach the server before that unsubscribe
                    # and be undone by it: queue it behind, the queue flushes next.
                    number = self._queue_now(frame)
                    if number is not None:
                        channel.number = number
                        self._unsubscribes.pop(channel.name, None)
                        self._sent(channel)
                        continue
                await send(frame)
                self._sent(channel)

    def close(self, error: BaseException | None) -> None:
        """The client closed: end every subscription (with ``error`` if it failed)."""
        if self._closed is None:
            self._closed = error or InvalidState(f"{self._name} is closed")
        for channel in list(self._channels.values()):
            for sub in channel.subscribers:
                sub._end(error)
                self._dropped_closed += sub._dropped()
                sub._channel = None
            channel.subscribers.clear()
            channel.set_state(SubscriptionState.UNSUBSCRIBED)
        self._channels.clear()

    def statistics(self) -> ChannelStatistics:
        by_state = dict.fromkeys(SubscriptionState, 0)
        subscriptions = 0
        dropped = self._dropped_closed
        for channel in self._channels.values():
            for sub in channel.subscribers:
                subscriptions += 1
                by_state[sub.state] += 1
                dropped += sub._dropped()
        return ChannelStatistics(
            channels=len(self._channels),
            subscriptions=subscriptions,
            by_state=by_state,
            deliveries=self._deliveries,
            dropped=dropped,
            confirmations=self._confirmations,
            resubscribes=self._resubscribes,
            callback_errors=self._callback_errors,
        )

    def __repr__(self) -> str:
        return f"<ChannelRegistry {self._name} channels={sorted(self._channels)}>"


_D = TypeVar("_D", bound="Deliveries")


class Deliveries:
    """Reading a subscription's buffered deliveries: what a client's and a pool's share."""

    channel: str
    _buffer: InboundBuffer[Any] | None
    _opened: bool
    _error: BaseException | None

    @property
    def state(self) -> SubscriptionState:
        raise NotImplementedError

    async def receive(self) -> Any:
        """The next delivery's data; raises once the subscription ended and its buffer is read."""
        try:
            return await self._readable().get()
        except anyio.EndOfStream:
            pass
        raise self._closed_error()  # outside the except: the error may be shared

    def __aiter__(self: _D) -> _D:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._readable().get()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    def _readable(self) -> InboundBuffer[Any]:
        if self._buffer is None:
            raise InvalidState(f"deliveries on {self.channel!r} go to the callback")
        if not self._opened:
            raise InvalidState(f"open the subscription to {self.channel!r} first (async with)")
        return self._buffer

    def _closed_error(self) -> BaseException:
        if self._error is not None:
            return self._error.with_traceback(None)
        return InvalidState(f"the subscription to {self.channel!r} is {self.state.value}")


class Subscription(Deliveries):
    """One local subscriber to a channel: ``async with client.subscribe("prices") as sub``.

    Read deliveries with ``async for data in sub`` or [`receive()`][wsclient.Subscription.receive],
    or give ``callback=`` to have each one handed over as it arrives. Opening
    it (``async with`` or ``await``) sends ``subscribe`` if no other local
    subscriber holds the channel; closing it sends ``unsubscribe`` if it was
    the last. It survives reconnects: the client subscribes again.
    """

    _wants_id = False  # a pool's subscriber: its callback takes (delivery_id, data)

    def __init__(
        self,
        registry: ChannelRegistry,
        channel: str,
        callback: DeliveryCallback | None,
        policy: BufferPolicy,
        origin: Any,
        check: Callable[[], None] | None = None,
    ) -> None:
        self._registry = registry
        self._check = check
        self.channel = channel
        """The channel's name."""
        self.origin = origin
        """The id of the session that subscribed; None for the client itself."""
        self._callback = callback
        self._buffer: InboundBuffer[Any] | None = (
            None
            if callback is not None
            else InboundBuffer(policy, name=f"subscription to {channel!r}")
        )
        self._channel: _Channel | None = None
        self._opened = False
        self._state: SubscriptionState | None = None  # set when it ends
        self._error: BaseException | None = None  # why it failed
        self._received = 0

    @property
    def state(self) -> SubscriptionState:
        """The subscription's state (that of its channel while it is open)."""
        if self._state is not None:
            return self._state
        if self._channel is None:
            return (
                SubscriptionState.SUBSCRIBING
                if not self._opened
                else SubscriptionState.UNSUBSCRIBED
            )
        return self._channel.state

    async def _start(self) -> Subscription:
        if self._opened or self._state is not None:
            raise InvalidState(f"the subscription to {self.channel!r} was already opened")
        if self._check is not None:
            self._check()
        self._opened = True
        await self._registry._open(self)
        return self

    def __await__(self) -> Generator[Any, None, Subscription]:
        return self._start().__await__()

    async def __aenter__(self) -> Subscription:
        return await self._start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Shielded, so the unsubscribe goes out even when the body was
        # cancelled; bounded, since a full "block" queue could wait forever.
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + self._registry._host.request_timeout
            await self.aclose()

    async def aclose(self) -> None:
        """Leave the channel: sends ``unsubscribe`` if this was its last local subscriber."""
        if self._state is None:
            self._end(None)
        await self._registry._close(self)

    async def confirmed(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until the server confirmed the subscription.

        ``timeout`` defaults to the client's ``request_timeout``; raises
        [`RequestTimeout`][wsclient.RequestTimeout] then. Raises the server's
        [`RemoteError`][wsclient.RemoteError] if it refused, and
        [`InvalidState`][wsclient.InvalidState] if the subscription is closed.
        """
        limit = self._registry._host.request_timeout if timeout is None else check_timeout(timeout)
        with anyio.move_on_after(limit):
            while True:
                state = self.state
                if state is SubscriptionState.SUBSCRIBED:
                    return
                if state is not SubscriptionState.SUBSCRIBING or self._channel is None:
                    raise self._closed_error()
                channel = self._channel
                if channel.changed is None:
                    channel.changed = anyio.Event()
                await channel.changed.wait()
        raise RequestTimeout(
            f"no confirmation of the subscription to {self.channel!r} in {limit:g}s"
        )

    def statistics(self) -> SubscriptionStatistics:
        buffer = self._buffer
        if buffer is None:
            return SubscriptionStatistics(self.state, self._received, 0, 0)
        stats = buffer.statistics()
        return SubscriptionStatistics(self.state, stats.received, stats.pending, stats.dropped)

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<Subscription {self.channel!r} {self.state.name} pending={stats.pending}"
            f" dropped={stats.dropped}>"
        )

    # Called by the registry

    def _put(self, data: Any) -> bool:
        assert self._buffer is not None
        return self._buffer.put_nowait(data)

    def _buffer_failed(self) -> bool:
        return self._buffer is not None and self._buffer.closed and self._state is None

    def _dropped(self) -> int:
        return self._buffer.statistics().dropped if self._buffer is not None else 0

    def _end(self, error: BaseException | None, *, state: SubscriptionState | None = None) -> None:
        if self._state is not None:
            return
        self._state = state or (
            SubscriptionState.FAILED if error else SubscriptionState.UNSUBSCRIBED
        )
        self._error = error
        if self._buffer is not None:
            self._buffer.close(error)
