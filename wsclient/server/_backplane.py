"""The Hub's Redis backplane: channels shared by several Hub processes.

With ``Hub(redis_url=...)`` every channel publish goes to Redis ``PUBLISH``
and every Hub delivers to its own subscribers what its Redis subscription
brings back, so Hubs behind a load balancer act as one server. This module
is the link to Redis; ``_hub.py`` decides what the clients see.

One Redis connection carries the subscriptions (redis-py's asyncio
``PubSub``), another the publishes, pipelined by one publisher task. The
subscriptions follow the local ones through a reference count per channel:
the first local subscriber makes the Hub ``SUBSCRIBE``, the last one leaving
makes it ``UNSUBSCRIBE``. A single sync task sends those commands and a
single reader counts their replies, which Redis sends in order, so however
subscribes and unsubscribes race, Redis ends up subscribed to a channel
exactly when its count is above zero, and a subscription is confirmed only
when the reply to its ``SUBSCRIBE`` has come back.

When the link is lost the Hub reconnects with backoff and subscribes again
to every channel still counted. Redis pub/sub keeps no history: what other
nodes publish while this one is away from Redis is lost to its subscribers.

Everything here runs on the Hub's asyncio loop. redis-py is imported when a
backplane is made, so ``wsclient.server`` works without it.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from wsclient._backoff import Backoff, RetrySchedule
from wsclient._checks import cut
from wsclient._redact import redact_url
from wsclient.server._hub import HubError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

__all__ = [
    "DEFAULT_BACKOFF",
    "BackplaneError",
    "BackplaneStatistics",
    "RedisBackplane",
    "check_redis_url",
]

logger = logging.getLogger("wsclient.server")

SCHEMES = ("redis", "rediss", "unix")

DEFAULT_BACKOFF = Backoff(initial=0.25, maximum=5.0, min_uptime=1.0)
"""Reconnection to Redis: a quarter second first, then doubling up to five
seconds, with full jitter so that the nodes of a cluster do not return together."""

UNAVAILABLE = "the backplane (Redis) is unavailable"

# Commands carry at most this many channels, publishes go in pipelines of at
# most this many messages, and this many publishes, of at most this many bytes
# in all (those being sent included), may wait for the publisher.
_SUBSCRIBE_CHUNK = 1000
_PUBLISH_BATCH = 512
_PUBLISH_QUEUE = 4096
_PUBLISH_QUEUE_BYTES = 16 * 2**20


class BackplaneError(HubError):
    """The Redis backplane could not do it: Redis is unreachable, or too slow.

    Raised by [`HubServer.publish()`][wsclient.server.HubServer.publish] and
    [`RequestContext.publish()`][wsclient.server.RequestContext.publish] on a Hub with a
    ``redis_url``. It is a [`HubError`][wsclient.server.HubError], so a handler that lets it
    through answers its request with the message as the error reply.
    """


@dataclasses.dataclass(frozen=True)
class BackplaneStatistics:
    """Counters of a Hub's Redis backplane (a snapshot), in
    [`HubStatistics.backplane`][wsclient.server.HubStatistics.backplane]."""

    connected: bool
    """Whether the Hub is connected to Redis now."""
    channels: int
    """Channels this Hub is subscribed to on Redis, confirmed by Redis."""
    pending: int
    """Client subscriptions waiting for Redis to confirm the channel."""
    published: int
    """Messages published to Redis."""
    received: int
    """Messages received from Redis."""
    reconnects: int
    """Connections to Redis made after the first one."""
    errors: int
    """Failed connection attempts and lost connections."""
    publish_failures: int
    """Publishes that did not reach Redis (reported to whoever published)."""
    dropped: int
    """Messages from Redis that were not this Hub's deliveries (another
    publisher on the same channel names), dropped."""


def check_redis_url(url: object, name: str = "redis_url") -> str:
    """Return ``url`` if it is a Redis URL redis-py can use, else raise ValueError.

    Accepted: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://``
    (TLS) and ``unix:///path/to/socket[?db=N]``, with redis-py's query options.
    The messages never repeat the URL's user info or query values.
    """
    if not isinstance(url, str):
        raise TypeError(f"{name} must be a str, not {type(url).__name__}")
    shown = redact_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError when it is no port number
    except ValueError:
        raise ValueError(f"{name} is not a valid URL: check its host and port") from None
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{name} must be a redis://, rediss:// or unix:// URL, not {shown!r}")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"{name} needs the socket's path, as in unix:///run/redis.sock")
    else:
        if not parts.hostname:
            raise ValueError(f"{name} needs a host, as in redis://127.0.0.1:6379/0, not {shown!r}")
        if port == 0:
            raise ValueError(f"{name} has port 0, which Redis never listens on")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ValueError(f"{name}'s path must be a database number, not {shown!r}")
    _require_redis()
    from redis.asyncio.connection import parse_url

    try:
        parse_url(url)  # the query options (?db=, ?socket_timeout=...)
    except ValueError as exc:
        raise ValueError(f"{name} {shown!r}: {_mask(str(exc), _secrets(url))}") from None
    return url


class _State(enum.Enum):
    STARTING = "starting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


class _Lost(Exception):
    """The link to Redis is no good any more (why, in the message)."""


class _Refused(Exception):
    """A publish refused before it was queued (why, in the message)."""


class _Waiter:
    """A client subscription waiting for Redis to confirm its channel."""

    __slots__ = ("event", "on_confirmed", "outcome")

    def __init__(self, on_confirmed: Callable[[], None]) -> None:
        self.on_confirmed = on_confirmed
        self.event = anyio.Event()
        #: None while waiting, True once confirmed, False when the link was lost.
        self.outcome: bool | None = None


class _Channel:
    """What the Hub knows of one channel on the current Redis connection.

    ``refs`` counts the local subscriptions, confirmed or waiting;
    ``subscribed`` says which command was sent last (SUBSCRIBE or
    UNSUBSCRIBE) and ``inflight`` how many sent commands still wait for their
    reply. Redis holds the subscription, confirmed, when ``subscribed`` and
    nothing is in flight.
    """

    __slots__ = ("confirmed", "inflight", "key", "refs", "subscribed", "waiters")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.refs = 0
        self.subscribed = False
        self.inflight = 0
        self.confirmed = False
        self.waiters: list[_Waiter] = []


class _Publish:
    """One message on its way to Redis, with how its outcome is reported."""

    __slots__ = ("done", "error", "frame", "key", "on_error", "queued", "receivers")

    def __init__(
        self, key: bytes, frame: bytes, on_error: Callable[[str], None] | None = None
    ) -> None:
        self.key = key
        self.frame = frame
        self.on_error = on_error
        # Only a caller that awaits the outcome needs an event.
        self.done = anyio.Event() if on_error is None else None
        self.receivers = 0
        self.error: str | None = None
        self.queued = False  # its bytes are counted in the queue's

    def succeed(self, receivers: int) -> None:
        self.receivers = receivers
        if self.done is not None:
            self.done.set()

    def fail(self, reason: str) -> None:
        self.error = reason
        if self.done is not None:
            self.done.set()
        elif self.on_error is not None:
            self.on_error(reason)


class _Link:
    """One connection to Redis: a client for publishing, a PubSub for the rest."""

    def __init__(self, publisher: Redis, subscriber: Redis, close_timeout: float) -> None:
        self.publisher = publisher
        self.subscriber = subscriber
        self.pubsub: PubSub = subscriber.pubsub()
        self.opened_at = anyio.current_time()
        self._close_timeout = close_timeout

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._close_timeout):
            for close in (self.pubsub.aclose, self.subscriber.aclose, self.publisher.aclose):
                try:
                    await close()
                except Exception:  # a broken connection may fail to close: it is gone anyway
                    logger.debug("closing a Redis connection failed", exc_info=True)


class RedisBackplane:
    """The Hub's link to Redis pub/sub (see the module's docstring).

    ``deliver(channel, frame)`` hands a delivery from Redis to the local
    subscribers; ``notify(data, error)`` sends a system notice to every local
    client that holds a subscription (the link was lost, or is back).
    Create it on the Hub's loop, run ``run()`` in a task, stop it with
    ``aclose()``.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        timeout: float,
        backoff: Backoff,
        client_name: str,
        deliver: Callable[[str, bytes], object],
        notify: Callable[[dict[str, Any], bool], None],
    ) -> None:
        _require_redis()
        import redis.asyncio
        import redis.asyncio.retry
        import redis.backoff
        import redis.exceptions

        self._shown_url = redact_url(url)
        self._secrets = _secrets(url)
        self._prefix = prefix.encode("utf-8", "surrogatepass")
        self._timeout = timeout
        self._backoff = backoff
        self._deliver = deliver
        self._notify = notify
        self._errors: tuple[type[BaseException], ...] = (
            redis.exceptions.RedisError,
            OSError,
            TimeoutError,
            _Lost,
        )
        # No retries inside redis-py (this class reconnects, with backoff and
        # the clients told); RESP2 whatever redis-py's default, so that
        # pub/sub replies look the same in every version.
        options: dict[str, Any] = {
            "retry": redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0),
            "protocol": 2,
            "socket_connect_timeout": timeout,
            "health_check_interval": 0,
            "client_name": client_name,
        }

        def make_clients() -> tuple[Redis, Redis]:
            # Commands on the publisher time out; the subscriber's reads wait
            # for messages as long as it takes (the pings watch it instead).
            publisher = redis.asyncio.Redis.from_url(url, **options, socket_timeout=timeout)
            subscriber = redis.asyncio.Redis.from_url(url, **options, socket_timeout=None)
            return publisher, subscriber

        self._make_clients = make_clients
        self._state = _State.STARTING
        self._link: _Link | None = None
        self._records: dict[str, _Channel] = {}
        self._dirty: set[str] = set()
        self._dirty_event = anyio.Event()
        # Channels to subscribe again after a reconnect, not yet confirmed.
        self._resync: set[str] = set()
        self._acked = anyio.Event()
        self._pong = anyio.Event()
        self._started = anyio.Event()
        self._finished = anyio.Event()
        self._running = False
        self._run_scope: anyio.CancelScope | None = None
        send, receive = anyio.create_memory_object_stream[_Publish](_PUBLISH_QUEUE)
        self._publish_send: MemoryObjectSendStream[_Publish] = send
        self._publish_receive: MemoryObjectReceiveStream[_Publish] = receive
        # Bytes of the publishes queued or being sent; _room is set when some leave.
        self._queued_bytes = 0
        self._room = anyio.Event()
        # Counters, kept up to date as they change: statistics() may be
        # called from another thread and must not walk the dicts.
        self._confirmed = 0
        self._pending = 0
        self._published = 0
        self._received = 0
        self._connects = 0
        self._failures = 0
        self._publish_failures = 0
        self._dropped = 0

    def _closed(self) -> bool:
        return self._state is _State.CLOSED

    @property
    def connected(self) -> bool:
        """Whether the link to Redis is up."""
        return self._state is _State.CONNECTED

    def statistics(self) -> BackplaneStatistics:
        """Return a snapshot of the backplane's counters."""
        return BackplaneStatistics(
            connected=self.connected,
            channels=self._confirmed,
            pending=self._pending,
            published=self._published,
            received=self._received,
            reconnects=max(self._connects - 1, 0),
            errors=self._failures,
            publish_failures=self._publish_failures,
            dropped=self._dropped,
        )

    def __repr__(self) -> str:
        return (
            f"<RedisBackplane {self._shown_url!r} {self._state.value} "
            f"channels={self._confirmed} pending={self._pending} "
            f"published={self._published} received={self._received}>"
        )

    # Life cycle

    async def run(self) -> None:
        """Keep the link to Redis up until ``aclose()``."""
        if self._state is _State.CLOSED:
            self._finished.set()
            self._started.set()
            return
        self._running = True
        try:
            async with anyio.create_task_group() as tg:
                self._run_scope = tg.cancel_scope
                tg.start_soon(self._publisher)
                await self._maintain()
                tg.cancel_scope.cancel()  # the publisher waits for more until told
        finally:
            self._state = _State.CLOSED
            self._link = None
            self._fail_waiters()
            self._publish_send.close()
            self._started.set()
            self._finished.set()

    async def wait_started(self) -> None:
        """Return once the first connection attempt is over, successful or not."""
        # run() bounds the attempt; the bound here only guards against run() never starting.
        with anyio.move_on_after(self._timeout * 3 + 1):
            await self._started.wait()

    async def aclose(self) -> None:
        """Close the link (no notices to the clients) and stop ``run()``."""
        self._state = _State.CLOSED
        if self._run_scope is not None:
            self._run_scope.cancel()
        if self._running:
            await self._finished.wait()

    async def _maintain(self) -> None:
        schedule: RetrySchedule | None = None
        first = True
        while self._state is not _State.CLOSED:
            link = None
            try:
                link = await self._connect()
            except self._errors as exc:
                reason = self._describe(exc)
                self._failures += 1
                if first:
                    logger.warning(
                        "cannot reach Redis at %s (%s): serving without the backplane, "
                        "retrying in the background",
                        self._shown_url,
                        reason,
                    )
                else:
                    logger.debug("connecting to Redis at %s failed: %s", self._shown_url, reason)
            if link is not None:
                reason = await self._serve(link)
                if self._closed():
                    return
                self._failures += 1
                logger.warning(
                    "lost the Redis backplane at %s (%s): reconnecting", self._shown_url, reason
                )
                self._notify(
                    {
                        "type": "error",
                        "message": "lost the connection to Redis: channel deliveries stop "
                        "until the Hub reconnects, and what is published meanwhile is lost",
                    },
                    True,
                )
                if anyio.current_time() - link.opened_at >= self._backoff.min_uptime:
                    schedule = None  # it had been up a while: a new outage begins
            first = False
            self._started.set()
            now = anyio.current_time()
            if schedule is None:
                schedule = RetrySchedule(self._backoff, start=now)
            delay = schedule.next_delay(now)
            if delay is None:
                logger.error(
                    "giving up on Redis at %s after %d attempts: channels are unavailable",
                    self._shown_url,
                    schedule.attempts,
                )
                await anyio.sleep_forever()  # until the Hub closes
                return
            await anyio.sleep(delay)

    async def _connect(self) -> _Link:
        publisher, subscriber = self._make_clients()
        link = _Link(publisher, subscriber, self._timeout)
        try:
            with anyio.fail_after(self._timeout):
                await publisher.ping()
                await link.pubsub.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            await link.aclose()
            raise
        return link

    async def _serve(self, link: _Link) -> str:
        """Use ``link`` until it fails; return why it did."""
        failure: list[str] = []
        self._connects += 1
        self._link = link
        self._state = _State.CONNECTED
        # Every channel still counted is subscribed again on this connection.
        self._dirty = set(self._records)
        self._resync = {name for name, record in self._records.items() if record.refs > 0}
        self._dirty_event.set()
        try:
            async with anyio.create_task_group() as tg:

                def fail(exc: BaseException) -> None:
                    failure.append(self._describe(exc))
                    tg.cancel_scope.cancel()

                for task in (self._read, self._sync, self._ping):
                    tg.start_soon(self._guard, task, link, fail)
                await self._guard(self._resubscribed, link, fail)
        finally:
            if self._state is not _State.CLOSED:
                self._state = _State.DISCONNECTED
            self._link = None
            self._fail_waiters()
            await link.aclose()
        return failure[0] if failure else "closed"

    async def _guard(
        self,
        task: Callable[[_Link], Any],
        link: _Link,
        fail: Callable[[BaseException], None],
    ) -> None:
        try:
            await task(link)
        except self._errors as exc:
            fail(exc)

    async def _resubscribed(self, link: _Link) -> None:
        """Wait until Redis has confirmed every channel counted; then say the link is back."""
        try:
            with anyio.fail_after(self._timeout):
                while self._resync:
                    self._acked = anyio.Event()
                    await self._acked.wait()
        except TimeoutError:
            raise _Lost(
                f"Redis did not confirm the subscriptions within {self._timeout} s"
            ) from None
        if self._connects > 1:
            logger.info("reconnected to the Redis backplane at %s", self._shown_url)
            self._notify(
                {
                    "type": "backplane",
                    "state": "connected",
                    "message": "reconnected to Redis: messages published while it was "
                    "away are lost",
                },
                False,
            )
        self._started.set()

    # The subscription connection: reading, syncing, pinging

    async def _read(self, link: _Link) -> None:
        pubsub = link.pubsub
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            kind = message["type"]
            if kind == "message":
                self._on_message(message["channel"], message["data"])
            elif kind == "subscribe" or kind == "unsubscribe":
                self._on_reply(message["channel"])
            elif kind == "pong":
                self._pong.set()

    async def _sync(self, link: _Link) -> None:
        """Send what makes Redis subscribed exactly to the channels counted."""
        while True:
            if not self._dirty:
                self._dirty_event = anyio.Event()
                await self._dirty_event.wait()
                continue
            dirty, self._dirty = self._dirty, set()
            subscribe: list[bytes] = []
            unsubscribe: list[bytes] = []
            for name in dirty:
                record = self._records.get(name)
                if record is None:
                    continue
                wanted = record.refs > 0
                if wanted != record.subscribed:
                    record.subscribed = wanted
                    record.inflight += 1
                    self._set_confirmed(record, False)
                    (subscribe if wanted else unsubscribe).append(record.key)
                elif not wanted and not record.inflight:
                    del self._records[name]
            with anyio.fail_after(self._timeout):
                for start in range(0, len(subscribe), _SUBSCRIBE_CHUNK):
                    await link.pubsub.subscribe(*subscribe[start : start + _SUBSCRIBE_CHUNK])
                for start in range(0, len(unsubscribe), _SUBSCRIBE_CHUNK):
                    await link.pubsub.unsubscribe(*unsubscribe[start : start + _SUBSCRIBE_CHUNK])

    async def _ping(self, link: _Link) -> None:
        """Find a dead link that nothing else would notice (no RST, no FIN)."""
        while True:
            await anyio.sleep(self._timeout)
            self._pong = anyio.Event()
            try:
                with anyio.fail_after(self._timeout):
                    await link.pubsub.ping()
                    await self._pong.wait()
            except TimeoutError:
                raise _Lost(f"Redis did not answer a ping within {self._timeout} s") from None

    def _on_message(self, key: bytes, payload: bytes) -> None:
        self._received += 1
        name = self._name(key)
        try:
            frame = orjson.loads(payload)
        except orjson.JSONDecodeError:
            frame = None
        # Our own frames only: what a client receives is what a Hub encoded.
        if (
            name is None
            or not isinstance(frame, dict)
            or len(frame) != 3
            or frame.get("channel") != name
            or not isinstance(frame.get("id"), str)
            or "data" not in frame
        ):
            self._dropped += 1
            log = logger.warning if self._dropped == 1 else logger.debug
            log("dropped a message from Redis that no Hub published (channel %r)", key[:100])
            return
        self._deliver(name, payload)

    def _on_reply(self, key: bytes) -> None:
        name = self._name(key)
        if name is None:
            return
        record = self._records.get(name)
        if record is None or not record.inflight:
            return  # not ours (a reply from before a reconnect cannot arrive here)
        record.inflight -= 1
        if not record.inflight:
            if record.subscribed:
                self._set_confirmed(record, True)
                self._resynced(name)
                waiters, record.waiters = record.waiters, []
                for waiter in waiters:
                    # In this same step, before the next message is read: the
                    # client's confirmation goes before any delivery.
                    waiter.outcome = True
                    self._pending -= 1
                    waiter.on_confirmed()
                    waiter.event.set()
            elif not record.refs:
                del self._records[name]

    def _name(self, key: bytes) -> str | None:
        if not key.startswith(self._prefix):
            return None
        try:
            return key[len(self._prefix) :].decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return None

    def _resynced(self, name: str) -> None:
        """``name`` needs no more waiting for after a reconnect (confirmed, or unwanted)."""
        if name in self._resync:
            self._resync.discard(name)
            if not self._resync:
                self._acked.set()

    def _set_confirmed(self, record: _Channel, confirmed: bool) -> None:
        if record.confirmed != confirmed:
            record.confirmed = confirmed
            self._confirmed += 1 if confirmed else -1

    def _mark_dirty(self, name: str) -> None:
        self._dirty.add(name)
        self._dirty_event.set()

    def _fail_waiters(self) -> None:
        """The link is gone: waiting subscriptions fail, the rest is sent again later."""
        self._dirty.clear()
        self._resync.clear()
        for name, record in list(self._records.items()):
            waiters, record.waiters = record.waiters, []
            for waiter in waiters:
                waiter.outcome = False
                self._pending -= 1
                waiter.event.set()  # the subscriber gives its reference back
            record.subscribed = False
            record.inflight = 0
            self._set_confirmed(record, False)
            if not record.refs:
                del self._records[name]

    # Subscriptions

    async def subscribe(self, channel: str, on_confirmed: Callable[[], None]) -> None:
        """Count one more local subscription to ``channel``; return once Redis holds it.

        ``on_confirmed`` is called at the moment Redis's confirmation is read
        (at once if Redis already holds the channel), before any later
        delivery on the channel. On failure the count is given back.

        Raises:
            BackplaneError: Redis is unavailable, the link was lost before
                Redis confirmed, or Redis did not confirm within the timeout.
        """
        if self._state is not _State.CONNECTED:
            raise BackplaneError(f"cannot subscribe to {_quote(channel)}: {UNAVAILABLE}")
        record = self._records.get(channel)
        if record is None:
            record = self._records[channel] = _Channel(self._key(channel))
        record.refs += 1
        if record.confirmed:
            on_confirmed()
            return
        waiter = _Waiter(on_confirmed)
        record.waiters.append(waiter)
        self._pending += 1
        self._mark_dirty(channel)
        try:
            with anyio.move_on_after(self._timeout):
                await waiter.event.wait()
        finally:
            if waiter.outcome is None:  # timed out or cancelled: still waiting
                record.waiters.remove(waiter)
                self._pending -= 1
            if waiter.outcome is not True:
                self.release(channel)
        if waiter.outcome is None:
            raise BackplaneError(
                f"Redis did not confirm the subscription to {_quote(channel)} "
                f"within {self._timeout} s"
            )
        if waiter.outcome is False:
            raise BackplaneError(
                f"cannot subscribe to {_quote(channel)}: lost the connection to Redis"
            )

    def release(self, channel: str) -> None:
        """Count one local subscription to ``channel`` less; unsubscribe at zero."""
        record = self._records.get(channel)
        if record is None or record.refs <= 0:
            return
        record.refs -= 1
        if record.refs:
            return
        self._resynced(channel)
        if self._link is not None:
            self._mark_dirty(channel)
        elif not record.inflight:
            del self._records[channel]

    # Publishing

    async def publish(self, channel: str, frame: bytes) -> int:
        """Publish ``frame`` on ``channel``; return how many Redis subscribers got it.

        Each Hub subscribed to the channel is one Redis subscriber.

        Raises:
            BackplaneError: Redis is unavailable or did not take the message.
        """
        item = _Publish(self._key(channel), frame)
        try:
            await self._enqueue(item)
        except _Refused as exc:
            raise BackplaneError(f"cannot publish to {_quote(channel)}: {exc}") from None
        assert item.done is not None
        # The publisher settles every item, within its timeouts, or when it stops.
        await item.done.wait()
        if item.error is not None:
            raise BackplaneError(f"cannot publish to {_quote(channel)}: {item.error}")
        return item.receivers

    async def submit(self, channel: str, frame: bytes, on_error: Callable[[str], None]) -> None:
        """Queue ``frame`` for Redis without waiting for the outcome.

        Waits only while the queue is full (backpressure on the publisher).
        A failure is reported through ``on_error(reason)``, never silently.
        """
        item = _Publish(self._key(channel), frame, on_error)
        try:
            await self._enqueue(item)
        except _Refused as exc:
            on_error(str(exc))

    async def _enqueue(self, item: _Publish) -> None:
        if self._state is not _State.CONNECTED:
            self._publish_failures += 1
            raise _Refused(UNAVAILABLE)
        # Large messages fill the queue before their count does: while Redis
        # is slow, publishers wait rather than the Hub's memory growing. A
        # message larger than the bound goes alone.
        size = len(item.frame)
        while self._queued_bytes and self._queued_bytes + size > _PUBLISH_QUEUE_BYTES:
            await self._room.wait()
        self._queued_bytes += size
        item.queued = True
        try:
            await self._publish_send.send(item)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._dequeued([item])
            self._publish_failures += 1
            raise _Refused(UNAVAILABLE) from None
        except BaseException:
            # Cancelled: the publisher may have it even so; it is counted out once.
            self._dequeued([item])
            raise

    def _dequeued(self, items: list[_Publish]) -> None:
        """``items`` no longer hold their place in the queue: let waiting publishes in."""
        for item in items:
            if item.queued:
                item.queued = False
                self._queued_bytes -= len(item.frame)
        room, self._room = self._room, anyio.Event()
        room.set()

    async def _publisher(self) -> None:
        receive = self._publish_receive
        batch: list[_Publish] = []
        try:
            while True:
                batch = [await receive.receive()]
                while len(batch) < _PUBLISH_BATCH:
                    try:
                        batch.append(receive.receive_nowait())
                    except anyio.WouldBlock:
                        break
                await self._publish_batch(batch)  # settles every item, or none if cancelled
                self._dequeued(batch)
                batch = []
        except anyio.EndOfStream:
            pass
        finally:
            # Closing: the batch cut short and whatever is still queued fail, loudly.
            while True:
                try:
                    batch.append(receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
            receive.close()
            self._publish_failures += len(batch)
            for item in batch:
                item.fail(UNAVAILABLE)
            self._dequeued(batch)

    async def _publish_batch(self, batch: list[_Publish]) -> None:
        link = self._link
        if link is None:
            self._publish_failures += len(batch)
            for item in batch:
                item.fail(UNAVAILABLE)
            return
        try:
            with anyio.fail_after(self._timeout):
                async with link.publisher.pipeline(transaction=False) as pipe:
                    for item in batch:
                        pipe.publish(item.key, item.frame)
                    results = await pipe.execute()
        except self._errors as exc:
            reason = self._describe(exc)
            logger.warning("publishing %d message(s) to Redis failed: %s", len(batch), reason)
            self._publish_failures += len(batch)
            for item in batch:
                item.fail("Redis did not take the message")
            return
        self._published += len(batch)
        for item, receivers in zip(batch, results, strict=True):
            item.succeed(receivers if isinstance(receivers, int) else 0)

    # Helpers

    def _key(self, channel: str) -> bytes:
        return self._prefix + channel.encode("utf-8", "surrogatepass")

    def _describe(self, exc: BaseException) -> str:
        """Why a Redis operation failed, in one bounded line without secrets."""
        text = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError) and not str(exc):
            text = f"no answer within {self._timeout} s"
        return cut(_mask(" ".join(text.split()), self._secrets), 200)


def _require_redis() -> None:
    try:
        import redis  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the server extra installs it
        raise ImportError(
            "the Hub's Redis backplane needs redis-py: pip install 'wsclient[server]'"
        ) from exc


def _secrets(url: str) -> list[str]:
    """The user info and query values of ``url``, longest first: never to be shown."""
    try:
        parts = urllib.parse.urlsplit(url)
        found = [parts.password, parts.username]
        found += [value for _, value in urllib.parse.parse_qsl(parts.query)]
    except ValueError:
        return []
    decoded = {urllib.parse.unquote(s) for s in found if s} | {s for s in found if s}
    return sorted(decoded, key=len, reverse=True)


def _mask(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _quote(channel: str) -> str:
    """A channel name for a message: quoted and bounded (it comes from a client)."""
    return repr(cut(channel, 100))
