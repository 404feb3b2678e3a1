"""The reference Hub: a WebSocket server speaking the default dialect.

The Hub runs on the ``websockets`` asyncio server. Tests, examples, benchmarks
and the CLI use it as the server the SDK talks to. It speaks the default
dialect of ARCHITECTURE.md:

- requests (``query``, ``command``, ``auth``) answered by handlers registered
  by name, with ``response`` or ``error`` replies correlated by ``requestId``;
- fire-and-forget ``event`` messages, handled by optional event handlers;
- channels: ``subscribe``, ``unsubscribe`` and ``publish`` with local fan-out,
  or, with a ``redis_url``, fan-out through Redis pub/sub to every Hub on it
  (``_backplane.py``); each delivery carries a unique ``"id"``;
- the application heartbeat ``{"type": "ping"}`` answered with ``{"type": "pong"}``;
- the ``from`` field of the SharedWorker pattern copied onto every direct reply.

Outgoing messages go through a bounded per-connection buffer drained by one
writer task. Fan-out never waits for a subscriber: a connection whose buffer is
full is a slow consumer and is closed with code 1013 (try again later), so one
stalled client cannot hold up deliveries to the others.

[`Hub.serve()`][wsclient.server.Hub.serve] works from any anyio backend. On asyncio the server runs
in the caller's loop; elsewhere (trio) it runs on a private asyncio loop in a
``LoopThread`` and [`HubServer`][wsclient.server.HubServer] hops to it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import http
import ipaddress
import itertools
import logging
import math
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import orjson
import sniffio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Origin

from wsclient._backoff import Backoff
from wsclient._checks import check_timeout, short_repr, wire_repr
from wsclient._loopthread import LoopThread
from wsclient._redact import redact_url

if TYPE_CHECKING:
    from wsclient.server._backplane import BackplaneStatistics, RedisBackplane

__all__ = ["Handler", "Hub", "HubError", "HubServer", "HubStatistics", "RequestContext"]

logger = logging.getLogger("wsclient.server")

T = TypeVar("T")

Handler = Callable[[Any, "RequestContext"], Awaitable[Any]]
"""A request handler: ``async def handler(parameters, ctx) -> reply payload``.

Event handlers have the same shape; their return value is ignored.
"""
H = TypeVar("H", bound=Handler)

SYSTEM_CHANNEL = "system"
REQUEST_TYPES = frozenset({"query", "command", "auth"})
INTERNAL_ERROR = "internal error"


class HubError(Exception):
    """Raise from a handler to send ``str(exc)`` to the client as the error reply.

    Any other exception raised by a handler is logged and answered with a
    generic ``"internal error"``, so server internals never reach the wire.
    """


@dataclasses.dataclass(frozen=True)
class HubStatistics:
    """Counters of a running [`HubServer`][wsclient.server.HubServer] (a snapshot)."""

    connections_open: int
    """Connections currently open."""
    connections_total: int
    """Connections accepted since the server started."""
    messages_received: int
    """WebSocket messages received from clients."""
    messages_sent: int
    """WebSocket messages written to clients."""
    requests: int
    """Requests (query, command, auth) received."""
    errors: int
    """Error replies and system errors sent, plus failed event handlers."""
    subscriptions: int
    """Live subscriptions, summed over connections."""
    channels: int
    """Channels with at least one subscriber."""
    publishes: int
    """Publish messages received."""
    deliveries: int
    """Channel deliveries queued for subscribers."""
    slow_consumer_disconnects: int
    """Connections closed because their outgoing buffer overflowed."""
    connections_refused: int = 0
    """Opening handshakes answered with an HTTP error: a disallowed ``Origin``, too
    many connections from one address, a request that is not a WebSocket handshake."""
    backplane: BackplaneStatistics | None = None
    """The Redis backplane's counters; ``None`` on a Hub without ``redis_url``."""


class RequestContext:
    """What a handler knows about the request it serves and its connection.

    ``state`` is a per-connection dict that handlers may use freely, e.g. an
    auth handler storing the user for later queries; it lives as long as the
    connection.
    """

    __slots__ = ("_name", "_origin", "_request_id", "_runtime", "_session", "_type")

    def __init__(
        self,
        runtime: _Runtime,
        session: _Session,
        type: str,
        name: str | None,
        request_id: Any,
        origin: Any,
    ) -> None:
        self._runtime = runtime
        self._session = session
        self._type = type
        self._name = name
        self._request_id = request_id
        self._origin = origin

    @property
    def type(self) -> str:
        """The message type: ``"query"``, ``"command"``, ``"auth"`` or ``"event"``."""
        return self._type

    @property
    def name(self) -> str | None:
        """The resource, action or event name (``None`` for ``auth``)."""
        return self._name

    @property
    def request_id(self) -> Any:
        """The ``id`` of the request (``None`` for an event without one)."""
        return self._request_id

    @property
    def origin(self) -> Any:
        """The request's ``from`` value, ``None`` when it had none."""
        return self._origin

    @property
    def connection_id(self) -> str:
        """A unique id of the connection, as used in the server logs."""
        return str(self._session.ws.id)

    @property
    def remote_address(self) -> Any:
        """The peer address of the connection, e.g. ``(host, port)``."""
        return self._session.ws.remote_address

    @property
    def authenticated(self) -> bool:
        """Whether an ``auth`` request on this connection succeeded."""
        return self._session.authenticated

    @property
    def state(self) -> dict[str, Any]:
        """A per-connection dict for handlers to keep their own data."""
        return self._session.state

    async def send(self, message: Any) -> None:
        """Queue a JSON-able ``message`` to this connection."""
        self._session.enqueue(orjson.dumps(message))

    async def publish(self, channel: str, data: Any) -> int:
        """Fan ``data`` out to the subscribers of ``channel``; return how many there were.

        On a Hub with a ``redis_url`` the message goes through Redis and the
        count is the number of Hubs subscribed to the channel (Redis' answer
        to ``PUBLISH``), not of clients.

        Raises:
            BackplaneError: (with a ``redis_url``) Redis is unavailable. It is a
                [`HubError`][wsclient.server.HubError]: let it through and the client
                gets its message as the error reply.
        """
        return await self._runtime.publish(channel, data)


async def _echo(parameters: Any, ctx: RequestContext) -> Any:
    return parameters


async def _time(parameters: Any, ctx: RequestContext) -> Any:
    return {"time": time.time()}


async def _accept_any(credentials: Any, ctx: RequestContext) -> Any:
    return {"authenticated": True}


class Hub:
    """The reference server: register handlers, then ``async with hub.serve()``.

    Configuration, all keyword-only, with safe defaults:

    - ``max_message_size`` (1 MiB): largest incoming message; a larger one closes
      the connection with code 1009 (websockets' ``max_size``).
    - ``max_subscriptions`` (1000): channels one connection may subscribe to;
      one more is refused with a system error naming the channel
      (``{"type": "error", "message": M, "channel": C}``), which the default
      dialect reads as a refused subscription; the connection stays open.
    - ``max_connections_per_ip`` (256): connections open at once from one IP
      address, counted from the accepted handshake until TCP closes (sockets
      still before it are bounded by websockets' 10 s ``open_timeout`` only);
      one more is refused with HTTP 429
      (Too Many Requests), which clients retry with backoff. ``None``: no limit.
      Behind a proxy every client has the proxy's address: raise it or use ``None``.
    - ``allowed_origins`` (``None``): the ``Origin`` values accepted, against
      cross-site WebSocket hijacking (a page in a browser connecting with the
      user's cookies). A handshake without ``Origin`` (not from a browser) is
      always accepted; one with an ``Origin`` not listed is refused with HTTP 403.
      ``None`` accepts no browser origin; ``"*"`` accepts every origin. Each is
      ``scheme://host[:port]``, compared as browsers write it (``"HTTPS://App.test:443/"``
      is ``"https://app.test"``); ``"null"``, which any page can send, is refused.
    - ``max_queued_messages`` (1024) and ``max_queued_bytes`` (16 MiB): the
      per-connection outgoing buffer. When a message would exceed either bound
      the connection is a slow consumer: it is closed with code 1013 and counted
      in ``slow_consumer_disconnects``. Fan-out never waits for a subscriber.
    - ``max_concurrent_requests`` (64): query, command and event handlers of one
      connection running at once; past it the Hub stops reading from that
      connection until one finishes (backpressure, not an error).
    - ``close_timeout`` (5 s): how long a closing handshake may take before the
      TCP connection is aborted.
    - ``ping_interval`` / ``ping_timeout`` (20 s / 20 s): protocol-level
      keepalive from the server, ``None`` to disable.
    - ``compression`` (``None``): ``"deflate"`` enables permessage-deflate. Off by
      default because fan-out would compress each delivery once per subscriber.
    - ``redis_url`` (``None``): ``redis://[[user]:password@]host[:port][/db]``,
      ``rediss://`` (TLS) or ``unix:///path/to/redis.sock``. With it, channels go
      through Redis pub/sub, so every Hub on the same Redis delivers to its own
      subscribers what any of them publishes: run several behind a load
      balancer and they act as one (see the how-to "Run several Hubs behind a
      load balancer"). Needs redis-py (``pip install 'wsclient[server]'``).
    - ``redis_prefix`` (``"wsclient:"``): put before each channel name to make
      the Redis channel, so that other Redis users, or two clusters on one
      Redis (pub/sub ignores the database number), do not mix.
    - ``redis_timeout`` (5 s): the bound on connecting to Redis, on each
      publish, on Redis confirming a subscription, and on a ping answer (the
      Hub pings Redis at this interval to find a dead connection).
    - ``redis_backoff`` (0.25 s doubling to 5 s, full jitter, no limit): when to
      try again after Redis is lost, a [`Backoff`][wsclient.Backoff].

    With ``redis_url``:

    - a ``subscribe`` is confirmed only once Redis has confirmed the channel,
      and refused (a system error naming the channel) when Redis is unavailable
      or does not confirm within ``redis_timeout``. The Hub holds one Redis
      subscription per channel for all its clients, from the first subscriber
      to the last.
    - a ``publish`` goes to Redis, and every delivery, including the
      publisher's own, comes back from it: each subscriber gets it once.
      A publish that Redis does not take is answered with a system error
      (``{"type": "error", "message": ...}``, no ``channel``), never dropped
      silently. [`HubServer.publish()`][wsclient.server.HubServer.publish] and
      [`RequestContext.publish()`][wsclient.server.RequestContext.publish] return the
      number of Hubs that received the message, and raise
      [`BackplaneError`][wsclient.server.BackplaneError] when Redis is unavailable.
      While Redis is slow, publishes wait for it (4096 messages or 16 MiB at
      most are on their way), and the Hub reads no further from a client whose
      publish waits.
    - a client that disconnects while its ``subscribe`` waits for Redis is
      forgotten when Redis answers or ``redis_timeout`` passes, whichever
      comes first.
    - when the connection to Redis is lost, every client with a subscription
      gets a system error; the Hub reconnects with backoff, subscribes again to
      every channel it still needs, then sends those clients
      ``{"channel": "system", "data": {"type": "backplane", "state": "connected",
      "message": ...}}``. Redis pub/sub keeps no history: what was published
      meanwhile, by any Hub, is lost to this Hub's subscribers.
    - if Redis cannot be reached when the Hub starts, it serves anyway, logs a
      warning, and keeps trying; subscriptions are refused until it connects.

    Every channel delivery is ``{"channel": C, "data": D, "id": I}``: ``I`` is a
    string unique to the publish (``<node>-<n>``, where ``<node>`` is
    [`node_id`][wsclient.server.Hub.node_id]), the same on every Hub that delivers
    it, so a client with connections to several Hubs can drop duplicates.

    Handlers have the shape ``async def handler(parameters, ctx) -> payload``
    where ``ctx`` is a [`RequestContext`][wsclient.server.RequestContext]; the returned payload must
    be JSON-able. The built-in queries ``echo`` (replies with the parameters) and
    ``time`` (replies ``{"time": <unix seconds>}``) can be overridden.

    Binary frames are decoded as UTF-8 JSON, exactly like text frames; replies
    are always text frames.

    The Hub never logs credentials: websockets' debug log, which prints every
    handshake header and message, is off for its connections.
    """

    def __init__(
        self,
        *,
        max_message_size: int = 2**20,
        max_subscriptions: int = 1000,
        max_queued_messages: int = 1024,
        max_queued_bytes: int = 16 * 2**20,
        max_concurrent_requests: int = 64,
        close_timeout: float = 5.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        compression: Literal["deflate"] | None = None,
        max_connections_per_ip: int | None = 256,
        allowed_origins: Sequence[str] | Literal["*"] | None = None,
        redis_url: str | None = None,
        redis_prefix: str = "wsclient:",
        redis_timeout: float = 5.0,
        redis_backoff: Backoff | None = None,
    ) -> None:
        for name, value in [
            ("max_message_size", max_message_size),
            ("max_subscriptions", max_subscriptions),
            ("max_queued_messages", max_queued_messages),
            ("max_queued_bytes", max_queued_bytes),
            ("max_concurrent_requests", max_concurrent_requests),
            (
                "max_connections_per_ip",
                1 if max_connections_per_ip is None else max_connections_per_ip,
            ),
        ]:
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value!r}")
        if isinstance(allowed_origins, str) and allowed_origins != "*":
            raise ValueError(
                f'allowed_origins must be a list of origins, "*" or None, got {allowed_origins!r}'
            )
        if allowed_origins is not None and not isinstance(allowed_origins, str):
            allowed_origins = [_browser_origin(origin) for origin in allowed_origins]
        if close_timeout <= 0:
            raise ValueError(f"close_timeout must be positive, got {close_timeout!r}")
        if redis_url is not None:
            from wsclient.server._backplane import check_redis_url

            check_redis_url(redis_url)
        if not isinstance(redis_prefix, str):
            raise TypeError(f"redis_prefix must be a str, not {type(redis_prefix).__name__}")
        if redis_timeout == math.inf:
            raise ValueError("redis_timeout must be a finite number of seconds, got inf")
        redis_timeout = check_timeout(redis_timeout, "redis_timeout")
        if redis_backoff is not None and not isinstance(redis_backoff, Backoff):
            raise TypeError(
                f"redis_backoff must be a wsclient.Backoff, not {type(redis_backoff).__name__}"
            )
        self.max_message_size = max_message_size
        self.max_subscriptions = max_subscriptions
        self.max_queued_messages = max_queued_messages
        self.max_queued_bytes = max_queued_bytes
        self.max_concurrent_requests = max_concurrent_requests
        self.close_timeout = close_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.compression = compression
        self.max_connections_per_ip = max_connections_per_ip
        self.allowed_origins = allowed_origins
        self.redis_url = redis_url
        self.redis_prefix = redis_prefix
        self.redis_timeout = redis_timeout
        self.redis_backoff = redis_backoff
        # Random per Hub: delivery ids must not collide between processes.
        self._node_id = secrets.token_hex(4)
        self._delivery_seq = itertools.count(1)
        self._queries: dict[str, Handler] = {"echo": _echo, "time": _time}
        self._commands: dict[str, Handler] = {}
        self._events: dict[str, Handler] = {}
        self._auth: Handler = _accept_any

    def __repr__(self) -> str:
        redis = f" redis={redact_url(self.redis_url)!r}" if self.redis_url is not None else ""
        return (
            f"<Hub queries={sorted(self._queries)} commands={sorted(self._commands)} "
            f"events={sorted(self._events)}{redis}>"
        )

    @property
    def node_id(self) -> str:
        """This Hub's random id (8 hex digits), the first part of its delivery ids."""
        return self._node_id

    def _delivery_id(self) -> str:
        return f"{self._node_id}-{next(self._delivery_seq)}"

    def on_query(self, resource: str) -> Callable[[H], H]:
        """Register the decorated coroutine function as the handler of query ``resource``."""

        def register(handler: H) -> H:
            self._queries[resource] = handler
            return handler

        return register

    def on_command(self, action: str) -> Callable[[H], H]:
        """Register the decorated coroutine function as the handler of command ``action``."""

        def register(handler: H) -> H:
            self._commands[action] = handler
            return handler

        return register

    def on_event(self, event: str) -> Callable[[H], H]:
        """Register the decorated coroutine function as the handler of event ``event``.

        Events get no reply; the handler receives the event's ``data``. Events
        without a handler are ignored.
        """

        def register(handler: H) -> H:
            self._events[event] = handler
            return handler

        return register

    def on_auth(self, handler: H) -> H:
        """Replace the ``auth`` handler (decorator).

        The handler receives the credentials (the request's payload) and returns
        the reply payload; raising [`HubError`][wsclient.server.HubError] refuses them. The default
        accepts anything and replies ``{"authenticated": true}``. The Hub never
        logs credentials.
        """
        self._auth = handler
        return handler

    @contextlib.asynccontextmanager
    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        in_thread: bool | None = None,
        backlog: int = 1024,
    ) -> AsyncIterator[HubServer]:
        """Run the Hub on ``host:port`` for the duration of the context.

        ``port=0`` lets the OS choose a free port; read it from
        [`HubServer.port`][wsclient.server.HubServer.port]. With a host name that resolves to
        several addresses, each socket gets its own port; pass a literal address then.

        ``in_thread`` chooses where the asyncio server runs: ``None`` (default)
        uses the current loop on asyncio and a private loop thread on any other
        backend; ``True`` always uses a loop thread, which keeps the server
        responsive while the caller's asyncio loop is blocked; ``False`` requires
        asyncio.

        ``backlog`` is the listen queue's length: asyncio's default of 100
        overflows when hundreds of clients connect at once, and each
        overflowed client then waits for a SYN retransmit (a second or more).

        On exit, every connection is closed with code 1001 (going away), the
        server stops listening and the loop thread, if any, is stopped.
        """
        on_asyncio = sniffio.current_async_library() == "asyncio"
        if in_thread is None:
            in_thread = not on_asyncio
        elif not in_thread and not on_asyncio:
            raise RuntimeError("in_thread=False needs an asyncio event loop")
        runtime = _Runtime(self)
        if not in_thread:
            await runtime.start(host, port, backlog)
            stack = contextlib.AsyncExitStack()
            try:
                await _start_backplane(runtime, None, stack)
                yield HubServer(runtime, None)
            finally:
                try:
                    with anyio.CancelScope(shield=True):
                        await runtime.aclose()
                finally:
                    await stack.aclose()  # outside the shield: the group's scope is the current one
            return

        loop_thread = LoopThread(name="wsclient-hub")
        loop_thread.start()
        try:
            await _run_in_thread(loop_thread, runtime.start(host, port, backlog))
            stack = contextlib.AsyncExitStack()
            try:
                await _start_backplane(runtime, loop_thread, stack)
                yield HubServer(runtime, loop_thread)
            finally:
                try:
                    with anyio.CancelScope(shield=True):
                        await _run_in_thread(loop_thread, runtime.aclose())
                finally:
                    await stack.aclose()
        finally:
            loop_thread.stop()


async def _start_backplane(
    runtime: _Runtime, loop_thread: LoopThread | None, stack: contextlib.AsyncExitStack
) -> None:
    """Run the runtime's Redis backplane, if any, in a task group that ``stack`` leaves.

    Returns once its first connection attempt is over. The group is left after
    ``runtime.aclose()`` has stopped the backplane, without the body's
    exception: that one propagates as itself, not in an ExceptionGroup.
    """
    backplane = runtime.backplane
    if backplane is None:
        return
    tg = await stack.enter_async_context(anyio.create_task_group())
    # On trio the backplane runs on the loop thread, and a task here waits for it.
    tg.start_soon(_call, loop_thread, backplane.run)
    await _call(loop_thread, backplane.wait_started)


class HubServer:
    """A running Hub, yielded by [`Hub.serve()`][wsclient.server.Hub.serve].

    Its coroutine methods can be awaited from any anyio backend; when the
    server runs in a loop thread they hop to that loop.
    """

    def __init__(self, runtime: _Runtime, loop_thread: LoopThread | None) -> None:
        self._runtime = runtime
        self._loop_thread = loop_thread

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return self._runtime.host

    @property
    def port(self) -> int:
        """The port the server listens on (the real one when 0 was asked)."""
        return self._runtime.port

    @property
    def url(self) -> str:
        """The URL clients connect to, e.g. ``ws://127.0.0.1:8765/``."""
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.port}/"

    def statistics(self) -> HubStatistics:
        """Return a snapshot of the server's counters."""
        return self._runtime.statistics()

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<HubServer url={self.url!r} connections_open={stats.connections_open} "
            f"connections_total={stats.connections_total} "
            f"subscriptions={stats.subscriptions} "
            f"messages_received={stats.messages_received} "
            f"messages_sent={stats.messages_sent} errors={stats.errors}"
            + (f" {self._runtime.backplane!r}" if self._runtime.backplane is not None else "")
            + ">"
        )

    async def close_connections(self, code: int = CloseCode.GOING_AWAY, reason: str = "") -> None:
        """Close every client connection with ``code`` and ``reason``; keep listening.

        Returns once the connections are closed. A client that does not answer
        the closing handshake within ``close_timeout`` is aborted.
        """
        await self._call(self._runtime.close_connections(code, reason))

    async def abort_connections(self) -> None:
        """Drop every client's TCP connection abruptly, without a close frame; keep listening.

        Clients see an abnormal closure (1006), as if the server had died.
        """
        await self._call(self._runtime.abort_connections())

    async def publish(self, channel: str, data: Any) -> int:
        """Fan ``data`` out to the subscribers of ``channel`` from the server side.

        Returns the number of subscribers it was queued for; on a Hub with a
        ``redis_url``, the number of Hubs subscribed to the channel (Redis'
        answer to ``PUBLISH``), once Redis has taken the message.

        Raises:
            BackplaneError: (with a ``redis_url``) Redis is unavailable or did
                not take the message within ``redis_timeout``.
        """
        return await self._call(self._runtime.publish(channel, data))

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop_thread is None:
            return await coro
        return await _run_in_thread(self._loop_thread, coro)


async def _run_in_thread(loop_thread: LoopThread, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on ``loop_thread``'s asyncio loop from any backend."""
    return await loop_thread.run(coro)


async def _call(loop_thread: LoopThread | None, func: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Await ``func()`` here, or on ``loop_thread``'s loop when there is one.

    The coroutine is made only when it runs, so none is left un-awaited if
    this task is cancelled before it starts.
    """
    if loop_thread is None:
        return await func()
    return await loop_thread.run(func())


def _stop_tasks(session: _Session) -> None:
    """Cancel a closed connection's handlers: one blocked forever must not block shutdown."""
    if session.tasks is not None:
        session.tasks.cancel()


class _Session:
    """One client connection: its outgoing buffer, subscriptions and state."""

    def __init__(self, runtime: _Runtime, ws: ServerConnection) -> None:
        self.runtime = runtime
        self.ws = ws
        self.channels: set[str] = set()
        self.state: dict[str, Any] = {}
        self.authenticated = False
        self.queued_bytes = 0
        self.overflowed = anyio.Event()
        self.closing = False
        #: Set once the connection's handler has finished and forgotten it.
        self.done = anyio.Event()
        #: The connection's task group scope, cancelled once its socket is
        #: closed so that a stuck handler cannot hold up shutdown.
        self.tasks: anyio.CancelScope | None = None
        send, receive = anyio.create_memory_object_stream[bytes](runtime.hub.max_queued_messages)
        self.send_stream: MemoryObjectSendStream[bytes] = send
        self.receive_stream: MemoryObjectReceiveStream[bytes] = receive

    def enqueue(self, data: bytes) -> bool:
        """Queue ``data`` without waiting; on overflow mark the session a slow consumer."""
        if self.closing:
            return False
        if self.queued_bytes + len(data) > self.runtime.hub.max_queued_bytes:
            self._overflow()
            return False
        try:
            self.send_stream.send_nowait(data)
        except anyio.WouldBlock:
            self._overflow()
            return False
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        self.queued_bytes += len(data)
        return True

    def _overflow(self) -> None:
        self.closing = True
        self.runtime.slow_consumer_disconnects += 1
        logger.warning("connection %s is a slow consumer: closing it", self.ws.id)
        self.overflowed.set()


class _Runtime:
    """The Hub's live state; every method runs on the server's asyncio loop."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.host = ""
        self.port = 0
        self._server: Server | None = None
        self._closing = False
        self._sessions: set[_Session] = set()
        self._channels: dict[str, set[_Session]] = {}
        self._reply_ids = itertools.count(1)
        self.connections_total = 0
        self.messages_received = 0
        self.messages_sent = 0
        self.requests = 0
        self.errors = 0
        self.subscriptions = 0
        self.publishes = 0
        self.deliveries = 0
        self.slow_consumer_disconnects = 0
        self.connections_refused = 0
        self._per_ip: collections.Counter[str] = collections.Counter()
        self._peer_ips: dict[ServerConnection, str] = {}
        #: Made by start(), on the server's loop, when the Hub has a redis_url.
        self.backplane: RedisBackplane | None = None

    def statistics(self) -> HubStatistics:
        return HubStatistics(
            connections_open=len(self._sessions),
            connections_total=self.connections_total,
            messages_received=self.messages_received,
            messages_sent=self.messages_sent,
            requests=self.requests,
            errors=self.errors,
            subscriptions=self.subscriptions,
            channels=len(self._channels),
            publishes=self.publishes,
            deliveries=self.deliveries,
            slow_consumer_disconnects=self.slow_consumer_disconnects,
            connections_refused=self.connections_refused,
            backplane=self.backplane.statistics() if self.backplane is not None else None,
        )

    # Lifecycle

    async def start(self, host: str, port: int, backlog: int) -> None:
        hub = self.hub
        if hub.redis_url is not None:
            from wsclient.server._backplane import DEFAULT_BACKOFF, RedisBackplane

            self.backplane = RedisBackplane(
                hub.redis_url,
                prefix=hub.redis_prefix,
                timeout=hub.redis_timeout,
                backoff=hub.redis_backoff or DEFAULT_BACKOFF,
                client_name=f"wsclient-hub-{hub.node_id}",
                deliver=self._deliver,
                notify=self._notify_subscribers,
            )
        origins: list[Origin | None] | None
        if hub.allowed_origins == "*":
            origins = None  # websockets: no check at all
        else:
            # None in the list: a handshake without Origin (not a browser's) is fine.
            origins = [None, *(Origin(origin) for origin in hub.allowed_origins or ())]
        self._server = await serve(
            self._handle,
            host,
            port,
            backlog=backlog,
            max_size=hub.max_message_size,
            close_timeout=hub.close_timeout,
            ping_interval=hub.ping_interval,
            ping_timeout=hub.ping_timeout,
            compression=hub.compression,
            origins=origins,
            process_request=self._process_request,
            process_response=self._process_response,
            create_connection=_QuietConnection,
        )
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = host, sockname[1]
        logger.debug("hub listening on %s:%d", self.host, self.port)

    async def aclose(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            # Stop accepting first, then close the clients ourselves: websockets'
            # own close waits without limit on a client that stopped reading.
            # A handshake completing meanwhile sees _closing and closes itself.
            self._closing = True
            server.close(close_connections=False)
            await self.close_connections(CloseCode.GOING_AWAY, "")
            await server.wait_closed()
            logger.debug("hub on %s:%d closed", self.host, self.port)
        # Last: the clients are gone, so no one is told that Redis is.
        if self.backplane is not None:
            await self.backplane.aclose()

    async def close_connections(self, code: int, reason: str) -> None:
        sessions = list(self._sessions)
        async with anyio.create_task_group() as tg:
            for session in sessions:
                tg.start_soon(self._close_session, session, code, reason)
        # Return once the handlers are done, so statistics() no longer counts them.
        for session in sessions:
            await session.done.wait()

    async def abort_connections(self) -> None:
        sessions = list(self._sessions)
        for session in sessions:
            session.closing = True
            session.ws.transport.abort()
            _stop_tasks(session)
        for session in sessions:
            await session.done.wait()

    async def _close_session(self, session: _Session, code: int, reason: str) -> None:
        """Close with a handshake bounded by ``close_timeout``, then abort."""
        session.closing = True
        ws = session.ws
        with anyio.move_on_after(self.hub.close_timeout):
            await ws.close(code, reason)
        if ws.state is not State.CLOSED:
            ws.transport.abort()
            await ws.wait_closed()
        _stop_tasks(session)

    # Opening handshakes. Both hooks are plain functions, so websockets runs
    # them with no await in between: counting and checking cannot interleave.

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        limit = self.hub.max_connections_per_ip
        ip = _peer_ip(ws)
        if limit is not None and ip is not None and self._per_ip[ip] >= limit:
            logger.debug("refused a connection from %s: %d already open", ip, limit)
            return ws.respond(http.HTTPStatus.TOO_MANY_REQUESTS, "Too many connections.\n")
        return None

    def _process_response(self, ws: ServerConnection, request: Request, response: Response) -> None:
        if response.status_code != http.HTTPStatus.SWITCHING_PROTOCOLS:
            self.connections_refused += 1
            return
        ip = _peer_ip(ws)
        if ip is not None:
            self._per_ip[ip] += 1
            self._peer_ips[ws] = ip
            # The handler may never run (the peer went away before our 101 was
            # sent, the server began closing): the end of TCP frees the place.
            ws.connection_lost_waiter.add_done_callback(lambda _: self._forget_peer(ws))

    def _forget_peer(self, ws: ServerConnection) -> None:
        ip = self._peer_ips.pop(ws, None)
        if ip is not None:
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]

    # One connection

    async def _handle(self, ws: ServerConnection) -> None:
        if self._closing:
            self._forget_peer(ws)
            with anyio.move_on_after(self.hub.close_timeout):
                await ws.close(CloseCode.GOING_AWAY)
            return
        session = _Session(self, ws)
        self._sessions.add(session)
        self.connections_total += 1
        logger.debug("connection %s opened from %s", ws.id, ws.remote_address)
        limiter = anyio.Semaphore(self.hub.max_concurrent_requests)
        try:
            async with anyio.create_task_group() as tg:
                session.tasks = tg.cancel_scope
                tg.start_soon(self._write, session)
                tg.start_soon(self._watch_overflow, session)
                try:
                    async for raw in ws:
                        self.messages_received += 1
                        await self._dispatch(session, raw, tg, limiter)
                except ConnectionClosed:
                    pass
                tg.cancel_scope.cancel()
        finally:
            self._forget_peer(ws)
            self._sessions.discard(session)
            for channel in list(session.channels):
                self._unsubscribe(session, channel)
            session.send_stream.close()
            session.receive_stream.close()
            session.done.set()
            logger.debug("connection %s closed (code %s)", ws.id, ws.close_code)

    async def _write(self, session: _Session) -> None:
        """Drain the session's buffer into the socket, one message at a time."""
        try:
            async for data in session.receive_stream:
                session.queued_bytes -= len(data)
                # Counted before the await: send() writes the frame, then waits
                # for the drain, and the client may read it (and our statistics)
                # before send() returns.
                self.messages_sent += 1
                try:
                    await session.ws.send(data, text=True)
                except ConnectionClosed:
                    self.messages_sent -= 1  # counted as not sent, though its bytes may have left
                    raise
        except ConnectionClosed:
            pass

    async def _watch_overflow(self, session: _Session) -> None:
        await session.overflowed.wait()
        await self._close_session(session, CloseCode.TRY_AGAIN_LATER, "slow consumer")

    # Routing

    async def _dispatch(
        self, session: _Session, raw: str | bytes, tg: TaskGroup, limiter: anyio.Semaphore
    ) -> None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._system_error(session, "malformed JSON", {})
            return
        if not isinstance(message, dict):
            self._system_error(session, "message must be a JSON object", {})
            return
        # Direct replies carry the request's "from" so a shared connection can
        # route them to the session that asked (SharedWorker pattern).
        extra = {"from": message["from"]} if "from" in message else {}

        if "action" in message:
            await self._handle_action(session, message, extra)
            return
        kind = message.get("type")
        if kind == "ping":
            self._send(session, {"type": "pong", **extra})
        elif isinstance(kind, str) and kind in REQUEST_TYPES:  # a list is unhashable
            await self._handle_request(session, message, kind, extra, tg, limiter)
        elif kind == "event":
            await self._handle_event(session, message, extra, tg, limiter)
        elif kind is None:
            self._system_error(session, "message needs a 'type' or an 'action'", extra)
        else:
            self._system_error(session, f"unknown type: {_short(kind)}", extra)

    async def _handle_action(
        self, session: _Session, message: dict[str, Any], extra: Extra
    ) -> None:
        action = message["action"]
        channel = message.get("channel")
        if action not in ("subscribe", "unsubscribe", "publish"):
            self._system_error(session, f"unknown action: {_short(action)}", extra)
            return
        if not isinstance(channel, str) or not channel:
            self._system_error(session, f"{action} needs a 'channel' string", extra)
            return
        if channel == SYSTEM_CHANNEL:
            self._system_error(session, "the 'system' channel is reserved", extra)
            return
        if action == "subscribe":
            if channel in session.channels:
                self._confirm(session, channel, extra)
                return
            if len(session.channels) >= self.hub.max_subscriptions:
                self._system_error(
                    session,
                    f"subscription limit reached ({self.hub.max_subscriptions})",
                    extra,
                    channel=channel,
                )
                return
            if self.backplane is None:
                self._add_subscription(session, channel, extra)
                return
            # Inline: this client's next messages (a publish on the channel)
            # are handled once Redis holds the subscription.
            try:
                await self.backplane.subscribe(
                    channel, lambda: self._add_subscription(session, channel, extra)
                )
            except HubError as exc:  # BackplaneError: refused, naming the channel
                self._system_error(session, str(exc), extra, channel=channel)
        elif action == "unsubscribe":
            self._unsubscribe(session, channel)
        else:
            if "data" not in message:
                self._system_error(session, "publish needs 'data'", extra)
                return
            self.publishes += 1
            if self.backplane is None:
                self.publish_local(channel, message["data"])
                return

            def failed(reason: str) -> None:
                self._system_error(session, f"cannot publish to {_short(channel)}: {reason}", extra)

            frame = self._frame(channel, message["data"])
            await self.backplane.submit(channel, frame, failed)

    def _add_subscription(self, session: _Session, channel: str, extra: Extra) -> None:
        """Subscribe ``session`` to ``channel`` and confirm it, in one step before any delivery."""
        session.channels.add(channel)
        self._channels.setdefault(channel, set()).add(session)
        self.subscriptions += 1
        self._confirm(session, channel, extra)

    def _confirm(self, session: _Session, channel: str, extra: Extra) -> None:
        confirm = {"type": "subscription_confirm", "channel": channel}
        self._send(session, {"channel": SYSTEM_CHANNEL, "data": confirm, **extra})

    def _unsubscribe(self, session: _Session, channel: str) -> None:
        if channel not in session.channels:
            return
        session.channels.discard(channel)
        self.subscriptions -= 1
        subscribers = self._channels.get(channel)
        if subscribers is not None:
            subscribers.discard(session)
            if not subscribers:
                del self._channels[channel]
        if self.backplane is not None:
            self.backplane.release(channel)

    def _frame(self, channel: str, data: Any) -> bytes:
        """A delivery as every subscriber gets it, stamped with a new delivery id."""
        return orjson.dumps({"channel": channel, "data": data, "id": self.hub._delivery_id()})

    async def publish(self, channel: str, data: Any) -> int:
        """Publish from the server side: locally, or through Redis with a backplane."""
        if self.backplane is None:
            return self.publish_local(channel, data)
        if not isinstance(channel, str):
            raise TypeError(f"channel must be a str, not {type(channel).__name__}")
        return await self.backplane.publish(channel, self._frame(channel, data))

    def publish_local(self, channel: str, data: Any) -> int:
        """Queue ``{"channel": C, "data": D, "id": I}`` for each local subscriber of ``channel``."""
        subscribers = self._channels.get(channel)
        if not subscribers:
            return 0
        return self._deliver(channel, self._frame(channel, data))

    def _deliver(self, channel: str, frame: bytes) -> int:
        """Queue an encoded delivery for every local subscriber of ``channel``."""
        subscribers = self._channels.get(channel)
        if not subscribers:
            return 0
        # Encoded once; each subscriber's buffer takes the same bytes and a full
        # buffer marks that subscriber alone as a slow consumer.
        delivered = 0
        for session in list(subscribers):
            if session.enqueue(frame):
                delivered += 1
        self.deliveries += delivered
        return delivered

    def _notify_subscribers(self, data: dict[str, Any], error: bool) -> None:
        """Send a system notice to every client with a subscription (the backplane's state)."""
        encoded = orjson.dumps({"channel": SYSTEM_CHANNEL, "data": data})
        for session in list(self._sessions):
            if session.channels:
                if error:
                    self.errors += 1
                session.enqueue(encoded)

    async def _handle_request(
        self,
        session: _Session,
        message: dict[str, Any],
        kind: str,
        extra: Extra,
        tg: TaskGroup,
        limiter: anyio.Semaphore,
    ) -> None:
        self.requests += 1
        request_id = message.get("id")
        if not _valid_id(request_id):
            self._system_error(session, f"{kind} needs an 'id' (string or number)", extra)
            return
        payload = message.get("payload")
        if kind == "auth":
            ctx = RequestContext(self, session, kind, None, request_id, extra.get("from"))
            # Inline, not concurrent: requests sent after auth see its outcome.
            await self._run_request(session, self.hub._auth, payload, ctx, extra, None)
            return
        if not isinstance(payload, dict):
            self._error_reply(session, request_id, f"{kind} needs an object 'payload'", extra)
            return
        key = "resource" if kind == "query" else "action"
        name = payload.get(key)
        if not isinstance(name, str):
            self._error_reply(session, request_id, f"{kind} needs a '{key}' string", extra)
            return
        handlers = self.hub._queries if kind == "query" else self.hub._commands
        handler = handlers.get(name)
        if handler is None:
            self._error_reply(session, request_id, f"unknown {key}: {_short(name)}", extra)
            return
        ctx = RequestContext(self, session, kind, name, request_id, extra.get("from"))
        await limiter.acquire()
        tg.start_soon(
            self._run_request, session, handler, payload.get("parameters"), ctx, extra, limiter
        )

    async def _run_request(
        self,
        session: _Session,
        handler: Handler,
        argument: Any,
        ctx: RequestContext,
        extra: Extra,
        limiter: anyio.Semaphore | None,
    ) -> None:
        try:
            try:
                result = await handler(argument, ctx)
                reply = orjson.dumps(
                    {
                        "id": next(self._reply_ids),
                        "type": "response",
                        "requestId": ctx.request_id,
                        "payload": result,
                        **extra,
                    }
                )
            except HubError as exc:
                self._error_reply(session, ctx.request_id, str(exc), extra)
                return
            except Exception:
                # The traceback goes to the log only; never the arguments,
                # which may be credentials.
                logger.exception("%s handler %r failed", ctx.type, ctx.name)
                self._error_reply(session, ctx.request_id, INTERNAL_ERROR, extra)
                return
            if ctx.type == "auth":
                session.authenticated = True
            session.enqueue(reply)
        finally:
            if limiter is not None:
                limiter.release()

    async def _handle_event(
        self,
        session: _Session,
        message: dict[str, Any],
        extra: Extra,
        tg: TaskGroup,
        limiter: anyio.Semaphore,
    ) -> None:
        payload = message.get("payload")
        name = payload.get("event") if isinstance(payload, dict) else None
        if not isinstance(payload, dict) or not isinstance(name, str):
            self._system_error(session, "event needs a payload with an 'event' string", extra)
            return
        handler = self.hub._events.get(name)
        if handler is None:
            logger.debug("no handler for event %r", name)
            return
        ctx = RequestContext(self, session, "event", name, message.get("id"), extra.get("from"))
        await limiter.acquire()
        tg.start_soon(self._run_event, handler, payload.get("data"), ctx, limiter)

    async def _run_event(
        self, handler: Handler, data: Any, ctx: RequestContext, limiter: anyio.Semaphore
    ) -> None:
        try:
            await handler(data, ctx)
        except Exception:
            self.errors += 1
            logger.exception("event handler %r failed", ctx.name)
        finally:
            limiter.release()

    # Sending

    def _send(self, session: _Session, message: dict[str, Any]) -> None:
        session.enqueue(orjson.dumps(message))

    def _error_reply(self, session: _Session, request_id: Any, error: str, extra: Extra) -> None:
        self.errors += 1
        reply_id = next(self._reply_ids)
        self._send(
            session,
            {"id": reply_id, "type": "error", "requestId": request_id, "error": error, **extra},
        )

    def _system_error(
        self, session: _Session, error: str, extra: Extra, *, channel: str | None = None
    ) -> None:
        """Send a system error; one naming ``channel`` refuses the subscription to it."""
        self.errors += 1
        data = {"type": "error", "message": error}
        if channel is not None:
            data["channel"] = channel
        self._send(session, {"channel": SYSTEM_CHANNEL, "data": data, **extra})


Extra = dict[str, Any]


def _browser_origin(origin: object) -> str:
    """``origin`` as a browser sends it in ``Origin`` (compared exactly): lower
    case, no default port, no trailing slash; a ValueError if it is not one."""
    if not isinstance(origin, str):
        raise ValueError("allowed_origins must hold str origins, like 'https://app.test'")
    if origin.strip().lower() == "null":
        # Sandboxed frames and file:// pages of any site send "null": not an origin to trust.
        raise ValueError('allowed_origins cannot hold "null": any page can send it; "*" says so')
    try:
        parts = urllib.parse.urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        parts, port = None, None
    if (
        parts is None
        or not parts.scheme
        or not parts.hostname
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ValueError(
            f"allowed_origins holds {origin!r}, not an origin like 'https://app.test:8443'"
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


class _QuietConnection(ServerConnection):
    """websockets' server connection with its debug log off.

    That log prints every handshake header (``Authorization``, ``Cookie``) and
    the start of every message (the credentials of an ``auth`` request): with
    logging at DEBUG, secrets would end up in the server's logs.
    """

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        protocol.debug = False  # read once, by the protocol and by the connection
        super().__init__(protocol, *args, **kwargs)


def _peer_ip(ws: ServerConnection) -> str | None:
    """The client's IP address (IPv4-mapped IPv6 as IPv4), or None (a Unix socket)."""
    address = ws.remote_address
    if not isinstance(address, tuple) or not address or not isinstance(address[0], str):
        return None
    try:
        ip = ipaddress.ip_address(address[0])
    except ValueError:
        return address[0]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (str, int))


_BOUNDED_REPR = wire_repr(64)


def _short(value: Any, limit: int = 64) -> str:
    """``repr`` of a client-supplied value, bounded in depth and length for error messages.

    A plain ``repr`` of JSON nested a thousand levels deep (orjson reads up to
    1024) raises ``RecursionError``.
    """
    return short_repr(value, _BOUNDED_REPR, limit)
