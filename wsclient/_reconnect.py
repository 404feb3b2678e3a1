"""The reconnecting transport: one live connection, kept alive across failures.

[`ReconnectingTransport`][wsclient.ReconnectingTransport] owns a factory of transports and keeps
exactly one connection open: when it is lost it waits ([`Backoff`][wsclient.Backoff]),
opens a new one, runs the ``on_connect`` hooks (upper layers re-authenticate
and resubscribe there), then writes what was queued meanwhile, in order.

Per connection it runs one task, the reader: it takes each inbound message
to the consumer and is also the heartbeat (a cancel-scope deadline, see
``wsclient._heartbeat``). With a ``message_handler``, messages reach it as
the transport reads them, with no task woken per message (on asyncio the
reader then only waits for the end and the heartbeat). Short-lived tasks run
the hooks and the flush of the outbound queue after each (re)connect, and on
a stream link (trio) the writes of senders that do not wait
(``_write_behind``). Every task is a child of the transport's task group,
each under a cancel scope of its own that the end of its connection cancels;
closing the transport cancels them all.
"""

from __future__ import annotations

import contextlib
import enum
import inspect
import logging
import math
import ssl
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

from ._backoff import Backoff, RetrySchedule
from ._checks import check_timeout
from ._exceptions import (
    ConnectError,
    ConnectionClosed,
    ConnectionClosedOK,
    ConnectTimeout,
    HeartbeatTimeout,
    InsecureCredentials,
    InvalidState,
    InvalidURL,
    QueueFull,
    ReconnectFailed,
    RemoteError,
    WSClientError,
)
from ._heartbeat import Heartbeat, HeartbeatWatch, Verdict
from ._outbound import OutboundQueue, QueuePolicy, QueueStatistics
from ._redact import redact_url
from ._security import check_credentials
from ._transport import (
    QUEUED,
    HeadersLike,
    Transport,
    TransportState,
    TransportStatistics,
    check_close,
)

__all__ = [
    "ConnectionState",
    "ConnectionStatistics",
    "ReconnectingTransport",
    "StateChange",
    "WebSocketFactory",
    "is_retryable",
]

logger = logging.getLogger("wsclient.reconnect")

_T = TypeVar("_T")

TransportFactory = Callable[[], Awaitable[Transport]]
OnConnect = Callable[[Transport], Awaitable[None]]
StateCallback = Callable[["StateChange"], None]
MessageHandler = Callable[[str | bytes], None]
ShouldRetry = Callable[[BaseException], bool | None]


class ConnectionState(enum.Enum):
    """Where a reconnecting connection is in its life."""

    CONNECTING = "connecting"
    """The first connection is being opened."""
    OPEN = "open"
    """Connected, hooks done: messages flow."""
    RECONNECTING = "reconnecting"
    """Lost: waiting for, or making, the next attempt."""
    CLOSING = "closing"
    """``aclose()`` is flushing the queue and closing."""
    CLOSED = "closed"
    """Final: closed by us, or given up."""


_C = ConnectionState
# Python 3.11 looks enum members up slowly (about 0.1 µs): the hot paths use these.
_CONNECTING = ConnectionState.CONNECTING
_T_OPEN = TransportState.OPEN
# Every transition allowed, in one table; RECONNECTING -> RECONNECTING is a
# failed attempt, reported so that failures are visible as they happen.
_TRANSITIONS: Mapping[ConnectionState | None, frozenset[ConnectionState]] = {
    None: frozenset({_C.CONNECTING, _C.CLOSED}),  # CLOSED: aclose() before entering
    _C.CONNECTING: frozenset({_C.OPEN, _C.RECONNECTING, _C.CLOSING, _C.CLOSED}),
    _C.OPEN: frozenset({_C.RECONNECTING, _C.CLOSING, _C.CLOSED}),
    _C.RECONNECTING: frozenset({_C.RECONNECTING, _C.OPEN, _C.CLOSING, _C.CLOSED}),
    _C.CLOSING: frozenset({_C.CLOSED}),
    _C.CLOSED: frozenset(),
}


@dataclass(frozen=True)
class StateChange:
    """One transition of a [`ReconnectingTransport`][wsclient.ReconnectingTransport]'s state.

    Attributes:
        previous: the state before (None for the very first).
        state: the new state.
        error: why: the failure that caused RECONNECTING or CLOSED, if any.
        attempt: in RECONNECTING, the number of the attempt being waited for
            (1 after a connection was lost, 2 after that attempt failed...).
            A connection that dies within the backoff's ``min_uptime`` counts
            as a failed attempt, so the count goes on rather than restarting at 1.
        delay: in RECONNECTING, the seconds until that attempt.
        at: the event loop's clock (``anyio.current_time()``).
    """

    previous: ConnectionState | None
    state: ConnectionState
    error: BaseException | None = None
    attempt: int = 0
    delay: float | None = None
    at: float = 0.0


@dataclass(frozen=True)
class ConnectionStatistics:
    """Counters of a [`ReconnectingTransport`][wsclient.ReconnectingTransport], from its
    ``statistics()``."""

    state: ConnectionState
    """The current state."""
    attempts: int
    """Connection attempts made, in total."""
    failed_attempts: int
    """Attempts that failed, or opened and died within ``min_uptime``."""
    reconnects: int
    """Connections opened after the first."""
    last_error: BaseException | None
    """The error that ended the last connection or attempt."""
    uptime: float | None
    """Seconds the current connection has been open; None while there is none."""
    heartbeat_probes: int
    """Heartbeat probes sent, in total."""
    heartbeat_timeouts: int
    """Connections dropped because a probe went unanswered."""
    heartbeat_grace_periods: int
    """Extra intervals granted after the process was suspended."""
    last_rtt: float | None
    """Round trip of the last heartbeat ping answered."""
    messages_received: int
    """Messages delivered to the consumer, across connections."""
    handler_errors: int
    """Exceptions raised by the message handler."""
    live_transports: int
    """Open transports: never more than one."""
    queue: QueueStatistics
    """The outbound queue's counters."""
    transport: TransportStatistics | None
    """The current connection's counters; None between connections."""


def is_retryable(error: BaseException) -> bool:
    """The default retry policy: whether a connection failure is worth another attempt.

    Network errors, timeouts, lost connections, and HTTP 408, 425, 429, 500,
    502, 503 and 504 are retried. Fatal: HTTP 401 and 403 (and any other
    status: a wrong path or a redirect will not fix itself), TLS certificate
    failures, invalid URLs, credentials refused over ``ws://``
    ([`InsecureCredentials`][wsclient.InsecureCredentials]), close codes 1008
    (policy violation), 3000 (unauthorized), 3003 (forbidden) and 4000-4999
    (the application's own), misuse of the API (``InvalidState``,
    ``QueueFull`` raised in a hook) and errors that are not network errors at
    all (a bug in a hook), and a
    [`RemoteError`][wsclient.RemoteError] from a hook (the server refused to
    re-authenticate us).
    """
    if isinstance(error, (InvalidURL, InvalidState, QueueFull, ReconnectFailed)):
        return False  # misuse of the API, not the network: retrying cannot help
    if isinstance(error, InsecureCredentials):
        return False  # the next attempt would send the same credentials the same way
    if isinstance(error, RemoteError):
        return False  # the server refused (credentials, say): it will refuse again
    if isinstance(error, ConnectError):
        if error.status is not None:
            return error.status in _RETRY_STATUSES
        return not isinstance(error.__cause__, ssl.SSLCertVerificationError)
    if isinstance(error, ConnectionClosed):
        code = error.code
        return not (code in _FATAL_CLOSE_CODES or 4000 <= code <= 4999)
    return isinstance(error, (WSClientError, OSError, TimeoutError))


_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_FATAL_CLOSE_CODES = frozenset({1008, 3000, 3003})


class WebSocketFactory:
    """Opens a [`WebSocketTransport`][wsclient.WebSocketTransport] per attempt.

    ``url`` and ``headers`` may be callables (plain or async), called again
    before every attempt: a token that expired is refreshed on reconnect.
    Other keyword arguments go to [`connect_transport()`][wsclient.connect_transport].
    """

    def __init__(
        self,
        url: str | Callable[[], str | Awaitable[str]],
        *,
        headers: HeadersLike | Callable[[], HeadersLike | Awaitable[HeadersLike]] | None = None,
        **options: Any,
    ) -> None:
        from ._transport import check_headers, check_options, check_url_credentials

        if not callable(headers):
            check_headers(headers)
        check_options(**options)
        if isinstance(url, str):
            # Static credentials over ws:// fail here; a callable's, at each attempt.
            check_url_credentials(
                url,
                None if callable(headers) else headers,
                unix_socket=options.get("unix_socket"),
                allow_insecure_credentials=bool(options.get("allow_insecure_credentials")),
            )
        self._url = url
        self._headers = headers
        self._options = options
        self._last_url = url if isinstance(url, str) else None
        self.display_url = redact_url(url) if isinstance(url, str) else "<url from a callable>"
        """The URL without secrets, for logs (a callable's: the last one it returned)."""

    async def __call__(self) -> Transport:
        from ._transport import connect_transport

        url = await _resolve(self._url)
        self.display_url = redact_url(url) if isinstance(url, str) else self.display_url
        self._last_url = url if isinstance(url, str) else self._last_url
        headers = await _resolve(self._headers)
        return await connect_transport(url, headers=headers, **self._options)

    def _check_credentials(self, what: str) -> None:
        """Raise [`InsecureCredentials`][wsclient.InsecureCredentials] if ``what`` would go
        in clear text to another host (the URL of the last attempt, for a callable)."""
        from ._transport import _parse_url

        if self._last_url is None:
            return  # a callable URL not called yet: its first attempt comes before any auth
        uri = _parse_url(self._last_url)
        check_credentials(
            secure=uri.secure,
            host=uri.host,
            what=what,
            unix_socket=self._options.get("unix_socket"),
            allowed=bool(self._options.get("allow_insecure_credentials")),
        )

    def __repr__(self) -> str:
        return f"<WebSocketFactory {self.display_url}>"


async def _resolve(value: Any) -> Any:
    if callable(value):
        value = value()
        if inspect.isawaitable(value):
            value = await value
    return value


class ReconnectingTransport:
    """Keeps one connection from ``factory`` open, reconnecting with backoff.

    Use it as an async context manager: entering opens the first connection
    (and fails at once if it cannot, unless ``retry_first_connect``); leaving
    flushes the queue and closes. Meanwhile:

    * [`send()`][wsclient.ReconnectingTransport.send] writes at once while connected and queues
      while not ([`QueuePolicy`][wsclient.QueuePolicy]); the queue is flushed, in order, after
      every reconnect, once the ``on_connect`` hooks are done.
    * [`receive()`][wsclient.ReconnectingTransport.receive] (or ``async for``) yields inbound
      messages across reconnects; or give ``message_handler`` to have them handed over as
      they arrive, in the reader's task, with no buffering.
    * [`state`][wsclient.ReconnectingTransport.state],
      [`state_changes()`][wsclient.ReconnectingTransport.state_changes],
      [`on_state_change()`][wsclient.ReconnectingTransport.on_state_change] and
      [`statistics()`][wsclient.ReconnectingTransport.statistics] show what is happening, failed
      attempts included.

    Args:
        factory: opens one transport; see [`WebSocketFactory`][wsclient.WebSocketFactory].
        backoff: the delays between attempts; None never reconnects.
        should_retry: ``should_retry(error)`` returns True (retry), False
            (give up) or None (use [`is_retryable()`][wsclient.is_retryable]).
        heartbeat: how zombie connections are detected; None disables it.
        app_ping: the message sent as probe when ``heartbeat.app_level``.
        queue: bounds and overflow policy of the outbound queue.
        retry_first_connect: retry the first connection too, instead of
            raising its error from ``__aenter__`` (a service that may start
            before its server).
        message_handler: called with every inbound message, in the reader
            task; it must not block. Exceptions are logged and counted.
        max_inbound: messages [`receive()`][wsclient.ReconnectingTransport.receive] buffers before
            reading stops.
        hook_timeout: seconds all ``on_connect`` hooks together may take.
        close_timeout: seconds [`aclose()`][wsclient.ReconnectingTransport.aclose] may spend
            flushing and closing.
        name: how logs and ``repr`` name the connection (the URL, without secrets).
    """

    # Slots: over 30 attributes, an instance dict would cost 1.5 KiB a connection.
    # Every attribute is listed here; one set in __init__ must be added.
    __slots__ = (
        "__weakref__",
        "_accepted",
        "_app_ping",
        "_attempts",
        "_backoff",
        "_close_timeout",
        "_closed",
        "_closing",
        "_connection_group",
        "_connections",
        "_drop_callbacks",
        "_factory",
        "_failed_attempts",
        "_failure",
        "_flushed",
        "_flushing",
        "_given_name",
        "_grace_periods",
        "_handler_errors",
        "_heard_at",
        "_heard_count",
        "_heartbeat",
        "_heartbeat_timeouts",
        "_hook_error",
        "_hook_timeout",
        "_hooks",
        "_inbox",
        "_last_error",
        "_last_rtt",
        "_live",
        "_live_transports",
        "_message_handler",
        "_messages_received",
        "_opened_at",
        "_probes",
        "_queue",
        "_retry_first_connect",
        "_settled",
        "_should_retry",
        "_stack",
        "_state",
        "_state_callbacks",
        "_supervisor_scope",
        "_task_group",
        "_transport",
        "_watch",
        "_watchers",
        "_write_wanted",
        "_writer_retiring",
        "_writing_behind",
        "_wrote_lately",
    )

    def __init__(
        self,
        factory: TransportFactory,
        *,
        backoff: Backoff | None = Backoff(),  # noqa: B008 - frozen, so sharing is safe
        should_retry: ShouldRetry | None = None,
        heartbeat: Heartbeat | None = Heartbeat(),  # noqa: B008
        app_ping: str | bytes | None = None,
        queue: QueuePolicy = QueuePolicy(),  # noqa: B008
        retry_first_connect: bool = False,
        message_handler: MessageHandler | None = None,
        max_inbound: int = 1024,
        hook_timeout: float = 30.0,
        close_timeout: float = 10.0,
        name: str | None = None,
    ) -> None:
        if heartbeat is not None and heartbeat.app_level and app_ping is None:
            raise ValueError("Heartbeat(app_level=True) needs app_ping, the message to send")
        if max_inbound < 1:
            raise ValueError("max_inbound must be at least 1")
        self._factory = factory
        self._backoff = backoff
        self._should_retry = should_retry
        self._heartbeat = heartbeat
        self._app_ping = app_ping
        self._queue = OutboundQueue(queue, on_drop=self._dropping)
        self._drop_callbacks: list[Callable[[int], None]] = []
        self._retry_first_connect = retry_first_connect
        self._message_handler = message_handler
        self._hook_timeout = check_timeout(hook_timeout, "hook_timeout")
        self._close_timeout = check_timeout(close_timeout, "close_timeout")
        self._given_name = name

        self._state: ConnectionState | None = None
        self._hooks: list[OnConnect] = []
        self._state_callbacks: list[StateCallback] = []
        # Weak: a watcher abandoned mid-iteration must not be kept alive.
        # Made on first use: a WeakSet costs about 1 KiB per connection.
        self._watchers: weakref.WeakSet[_StateChanges] | None = None
        self._inbox: _Inbox[str | bytes] = _Inbox(max_inbound)

        self._stack: anyio.abc.TaskGroup | None = None  # our task group, entered
        self._task_group: anyio.abc.TaskGroup | None = None
        self._connection_group: _ConnectionTasks | None = None
        # Made on entering: anyio's primitives need a running event loop, and
        # a transport may be configured before one runs.
        self._supervisor_scope: anyio.CancelScope | None = None
        self._transport: Transport | None = None
        self._live: Transport | None = None  # set once hooks are done: direct sends allowed
        self._watch: HeartbeatWatch | None = None  # the newest connection's, for heartbeat_late
        self._flushing = False
        self._flushed = _Flag()  # set when the running flusher stops
        self._writing_behind = False  # see _write_behind
        self._write_wanted: anyio.Event | None = None  # set to wake _write_behind
        self._writer_retiring = False
        self._wrote_lately = False  # something was queued for it since the last heartbeat
        self._settled = _Flag()  # the first connection opened, or we gave up
        self._closed = _Flag()
        self._closing = False
        self._failure: BaseException | None = None  # why we are CLOSED, if not by aclose()
        self._hook_error: BaseException | None = None

        # Statistics
        self._attempts = 0
        self._failed_attempts = 0
        self._connections = 0
        self._live_transports = 0
        self._last_error: BaseException | None = None
        self._opened_at: float | None = None
        self._probes = 0
        self._heartbeat_timeouts = 0
        self._grace_periods = 0
        self._last_rtt: float | None = None
        self._messages_received = 0
        self._handler_errors = 0
        self._accepted = 0  # messages accepted by send(): numbers them for left_queue()
        # For transports that do not report last_received_at (see _heard).
        self._heard_count = 0
        self._heard_at: float | None = None

    # Observing

    @property
    def _name(self) -> str:
        # Read each time: a factory with a callable URL learns it per attempt.
        return self._given_name or getattr(self._factory, "display_url", None) or "connection"

    @property
    def state(self) -> ConnectionState:
        """The current state (CONNECTING before the first connection opens)."""
        return self._state or _CONNECTING

    @property
    def transport(self) -> Transport | None:
        """The current connection while OPEN, else None."""
        return self._live

    @property
    def heartbeat_late(self) -> bool:
        """True while OPEN with a heartbeat probe unanswered: nothing heard for ``interval``.

        A pool skips such a connection; it is dropped if nothing arrives within ``timeout``.
        """
        watch, live = self._watch, self._live
        if watch is None or live is None or not watch.probing:
            return False
        return watch.unanswered(self._heard(live))  # transports that don't time input too

    def on_connect(self, hook: OnConnect) -> OnConnect:
        """Run ``await hook(transport)`` after every (re)connect, before the queue flushes.

        Hooks run in registration order, while inbound messages flow, and send
        straight through ``transport`` (queued messages wait for them). A hook
        that raises fails the attempt: the error goes through the retry policy.
        Returns ``hook``, so it can be used as a decorator.
        """
        self._hooks.append(hook)
        return hook

    def on_drop(self, callback: Callable[[int], None]) -> Callable[[int], None]:
        """Call ``callback(number)`` when the queue drops message ``number`` (from
        [`submit()`][wsclient.ReconnectingTransport.submit]).

        For ``drop_oldest`` and ``ttl``; a message refused outright is never
        numbered, and messages discarded on close are not reported. It must
        not block. Returns ``callback``, so it can be used as a decorator.
        """
        self._drop_callbacks.append(callback)
        return callback

    def _dropping(self) -> None:
        # The queue is first in, first out: its head is the oldest message still in it.
        number = self._accepted - len(self._queue) + 1
        for callback in list(self._drop_callbacks):
            try:
                callback(number)
            except Exception:
                logger.exception("%s: drop callback raised", self._name)

    def on_state_change(self, callback: StateCallback) -> StateCallback:
        """Call ``callback(change)`` on every state change; it must not block.

        Returns ``callback``, so it can be used as a decorator.
        """
        self._state_callbacks.append(callback)
        return callback

    def remove_state_callback(self, callback: StateCallback) -> None:
        """Stop calling ``callback``; no error if it was not registered."""
        if callback in self._state_callbacks:
            self._state_callbacks.remove(callback)

    def state_changes(self, *, max_buffer: int = 64) -> _StateChanges:
        """An async iterator of the state changes from now on, ending after CLOSED.

        A watcher that falls ``max_buffer`` changes behind misses the newer ones.
        """
        if max_buffer < 1:
            raise ValueError("max_buffer must be at least 1")
        watcher = _StateChanges(max_buffer)
        if self._state is ConnectionState.CLOSED:
            watcher._end()
        else:
            if self._watchers is None:
                self._watchers = weakref.WeakSet()
            self._watchers.add(watcher)
        return watcher

    async def wait_state(self, *states: ConnectionState) -> ConnectionState:
        """Return the state once it is one of ``states`` (at once if it is already).

        Raises the reason it closed if it reaches CLOSED while waiting for
        other states, since none will come then. Bound the wait with a cancel
        scope (``anyio.fail_after``).
        """
        if self.state in states:
            return self.state
        async for change in self.state_changes():  # ends after CLOSED
            if change.state in states:
                return change.state
        raise self._closed_reason()

    def statistics(self) -> ConnectionStatistics:
        """A snapshot of this connection's counters."""
        uptime = None
        if self._opened_at is not None and self._live is not None:
            uptime = anyio.current_time() - self._opened_at
        transport = self._transport
        return ConnectionStatistics(
            state=self.state,
            attempts=self._attempts,
            failed_attempts=self._failed_attempts,
            reconnects=max(0, self._connections - 1),
            last_error=self._last_error,
            uptime=uptime,
            heartbeat_probes=self._probes,
            heartbeat_timeouts=self._heartbeat_timeouts,
            heartbeat_grace_periods=self._grace_periods,
            last_rtt=self._last_rtt,
            messages_received=self._messages_received,
            handler_errors=self._handler_errors,
            live_transports=self._live_transports,
            queue=self._queue.statistics(),
            transport=transport.statistics() if transport is not None else None,
        )

    def __repr__(self) -> str:
        return (
            f"<ReconnectingTransport {self._name} {self.state.name}"
            f" attempts={self._attempts} queued={len(self._queue)}>"
        )

    # Life cycle

    async def __aenter__(self) -> ReconnectingTransport:
        if self._state is not None:
            raise InvalidState("a ReconnectingTransport can be entered only once")
        # Shielded: only _shut_down() cancels our tasks (__aexit__ always runs it),
        # and a scope of ours that exits then need not look at every scope around
        # the caller's (anyio walks them on asyncio: a thousand clients nested in
        # one task made each heartbeat walk a thousand).
        self._supervisor_scope = anyio.CancelScope(shield=True)
        # Entered here, left in __aexit__ (no AsyncExitStack: 760 bytes a connection).
        group = anyio.create_task_group()
        self._task_group = await group.__aenter__()
        try:
            self._set_state(ConnectionState.CONNECTING)
            group.start_soon(self._supervise)
            await self._settled.wait()
        except BaseException:
            try:
                await self._shut_down()
            finally:
                await group.__aexit__(None, None, None)
            raise
        if self._failure is not None:
            # Leave the group first: the error then propagates as itself,
            # not wrapped in an ExceptionGroup.
            await group.__aexit__(None, None, None)
            raise self._failure.with_traceback(None)
        self._stack = group
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
            group, self._stack = self._stack, None
            if group is not None:
                # Our tasks are cancelled and never raise: leaving the group
                # without the body's exception lets it propagate as itself,
                # not wrapped in an ExceptionGroup.
                await group.__aexit__(None, None, None)

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Flush the queue (bounded by ``close_timeout``), close the connection, stop.

        Idempotent. Messages still queued afterwards are discarded (counted).
        """
        check_close(code, reason)  # before any state changes: a bad code changes nothing
        if self._state is None:
            self._finish(None)  # never entered: nothing runs, nothing to close
            return
        if self._closing or self._state is ConnectionState.CLOSED:
            await self._closed.wait()
            return
        self._closing = True
        self._set_state(ConnectionState.CLOSING)
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._close_timeout):
                # Again until empty: a flusher's last pop can let a blocked
                # sender in after the flusher has looked for more.
                while True:
                    self._start_flusher()
                    if not self._flushing:
                        break
                    await self._flushed.wait()
                transport = self._transport
                if transport is not None:
                    await transport.aclose(code, reason)
        finally:
            await self._shut_down()

    async def _shut_down(self) -> None:
        self._closing = True
        transport = self._transport
        if transport is not None and transport.state is not TransportState.CLOSED:
            with anyio.CancelScope(shield=True):
                await transport.abort()
        # Only our own tasks: the task group's scope also holds the caller's body.
        if self._supervisor_scope is not None:
            self._supervisor_scope.cancel()
        self._finish(None)

    def _finish(self, failure: BaseException | None) -> None:
        """Enter CLOSED: fail whatever still waits, release every waiter."""
        if self._state is ConnectionState.CLOSED:
            return
        self._failure = failure
        self._live = None
        self._queue.close(self._closed_reason())
        self._queue.clear()
        self._inbox.close()
        self._set_state(ConnectionState.CLOSED, error=failure)
        for watcher in self._watchers or ():
            watcher._end()
        self._watchers = None
        self._settled.set()
        self._closed.set()

    # Sending

    async def send(self, data: str | bytes, *, text: bool | None = None) -> bool:
        """Send a message now if connected, else queue it (see
        [`QueuePolicy`][wsclient.QueuePolicy]).

        Returns False if the ``drop_newest`` policy dropped it. With the
        ``block`` policy this waits for room in the queue. Raises
        [`QueueFull`][wsclient.QueueFull] (``reject``), or the reason the
        connection is closed for good. A message handed to a connection that
        dies may be lost: delivery is at most once.
        """
        return await self.submit(data, text=text) is not None

    async def submit(
        self,
        data: str | bytes,
        *,
        text: bool | None = None,
        on_accepted: Callable[[int], None] | None = None,
    ) -> int | None:
        """[`send()`][wsclient.ReconnectingTransport.send], returning the message's number, or None
        if it was dropped.

        Messages are numbered 1, 2, 3... in the order they are accepted, which
        is the order they are written; [`left_queue()`][wsclient.ReconnectingTransport.left_queue]
        then tells whether a message was handed to a connection yet. The request layer uses this
        to know which requests were in flight when a connection dropped.
        ``on_accepted(number)`` is called as soon as the number is given,
        before the message can be written or lost.
        """
        live = self._live
        if (
            live is not None
            and not (self._flushing or self._closing or len(self._queue) or self._queue.waiting)
            # Dead but not yet noticed by the reader: the message waits in the queue.
            and live.state is _T_OPEN
        ):
            _check_message(data)
            self._accepted += 1
            number = self._accepted
            if on_accepted is not None:
                on_accepted(number)
            # A message handed to a socket that then dies is lost (at most
            # once, as documented); the reader notices the loss and reconnects.
            with contextlib.suppress(ConnectionClosed):
                await live.send(data, text=text)
            return number
        payload, is_text = _to_queue_item(data, text)
        self._check_open()
        if not await self._queue.put(payload, is_text):
            return None
        self._accepted += 1
        number = self._accepted
        if on_accepted is not None:
            on_accepted(number)
        self._start_flusher()
        return number

    def _send_now(self, data: str | bytes, text: bool | None) -> int | None:
        """``submit()`` for when it would not wait: the message goes to the open
        connection at once; its number. None, with nothing done, when ``submit()``
        must be awaited instead (queued messages go first, or the link is slow)."""
        live = self._live
        if type(data) is not bytes and type(data) is not str:
            _check_message(data)
        if live is None or self._flushing or self._closing or self._queue.busy:
            return None
        sent = live._send_nowait(data, text)
        if not sent:
            return None
        if sent == QUEUED:
            self._wake_writer(live)
        self._accepted += 1
        return self._accepted

    def _wake_writer(self, transport: Transport) -> None:
        """Have ``_write_behind`` write what the connection queued (a stream link)."""
        self._wrote_lately = True
        wanted = self._write_wanted
        if wanted is not None:
            self._write_wanted = None
            wanted.set()
        elif not self._writing_behind and self._connection_group is not None:
            self._writing_behind = True
            self._connection_group.start_soon(self._write_behind, transport)

    async def _write_behind(self, transport: Transport) -> None:
        """Write what senders queue on the connection without waiting (trio).

        The sender returns at once and a burst goes out in a few writes, not one
        per message; a request waits for its reply, bounded by its own timer.
        Runs until the connection ends (it is one of its tasks).
        """
        try:
            while self._live is transport:
                await transport._drain()
                # No await since the drain: nothing was queued meanwhile.
                if self._writer_retiring:
                    break
                wanted = self._write_wanted = anyio.Event()
                await wanted.wait()
        finally:
            self._writing_behind = False
            self._write_wanted = None
            self._writer_retiring = False

    def _retire_writer(self) -> None:
        """At a heartbeat: end ``_write_behind`` if nothing was sent since the last
        one, so that an idle connection keeps no task but its reader."""
        wanted = self._write_wanted
        if wanted is not None and not self._wrote_lately:
            self._writer_retiring = True
            self._write_wanted = None
            wanted.set()  # it drains (anything queued just now goes out), then ends
        self._wrote_lately = False

    def _spawn(self, function: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Run ``function`` in a task of ours (cancelled on close); False if closed."""
        group = self._task_group
        if group is None or self._closing or self._state is ConnectionState.CLOSED:
            return False
        group.start_soon(function)
        return True

    def send_nowait(self, data: str | bytes, *, text: bool | None = None) -> bool:
        """Queue a message without ever waiting; it is written as soon as possible.

        Returns False if the ``drop_newest`` policy dropped it. Raises
        [`QueueFull`][wsclient.QueueFull] when full under ``reject`` or ``block``.
        """
        return self.submit_nowait(data, text=text) is not None

    def submit_nowait(self, data: str | bytes, *, text: bool | None = None) -> int | None:
        """[`send_nowait()`][wsclient.ReconnectingTransport.send_nowait], returning the message's
        number (see [`submit()`][wsclient.ReconnectingTransport.submit])."""
        payload, is_text = _to_queue_item(data, text)
        self._check_open()
        if not self._queue.put_nowait(payload, is_text):
            return None
        self._accepted += 1
        self._start_flusher()
        return self._accepted

    def left_queue(self, number: int) -> bool:
        """Whether message ``number`` (from [`submit()`][wsclient.ReconnectingTransport.submit]) has
        left the outbound queue.

        True once it was handed to a connection, or dropped by the queue's
        policy (oldest dropped, expired, discarded on close). The queue is
        first in, first out, so that is every message but the last
        ``len(queue)`` accepted.
        """
        return number <= self._accepted - len(self._queue)

    async def ping(self) -> float:
        """Ping the server now and return the round trip in seconds; needs OPEN."""
        live = self._live
        if live is None:
            raise InvalidState(f"{self._name} is {self.state.value}, not open")
        return await live.ping()

    def _check_open(self) -> None:
        if self._state is ConnectionState.CLOSED or self._closing:
            raise self._closed_reason()

    def _closed_reason(self) -> BaseException:
        """What operations raise once closed: why it gave up, or InvalidState."""
        if self._failure is not None:
            return self._failure.with_traceback(None)
        return InvalidState(f"{self._name} is closed")

    def _start_flusher(self) -> None:
        group = self._connection_group
        if self._live is not None and group is not None and not self._flushing and len(self._queue):
            self._flushing = True
            self._flushed = _Flag()
            group.start_soon(self._flush, self._live)

    async def _flush(self, transport: Transport) -> None:
        """Write the queue out, in order, until it is empty or the connection ends."""
        queue = self._queue
        try:
            while self._live is transport and transport.state is _T_OPEN:
                item = queue.peek()
                if item is None:
                    break
                queue.pop()
                try:
                    await transport.send(item[0], text=item[1])
                except ConnectionClosed:
                    break  # at most once: the reader reconnects, the rest waits
        finally:
            self._flushing = False
            self._flushed.set()

    # Receiving

    async def receive(self) -> str | bytes:
        """The next inbound message, across reconnects.

        Raises the reason once closed and drained: [`ReconnectFailed`][wsclient.ReconnectFailed]
        (or the first connection's error) when it gave up,
        [`ConnectionClosedOK`][wsclient.ConnectionClosedOK] after
        [`aclose()`][wsclient.ReconnectingTransport.aclose].
        """
        if self._message_handler is not None:
            raise InvalidState("messages go to message_handler; receive() is not available")
        message = await self._inbox.get()
        if message is not None:
            return message
        if self._failure is not None:
            raise self._failure.with_traceback(None)
        raise ConnectionClosedOK(1000, "", message=f"{self._name} was closed")

    def __aiter__(self) -> ReconnectingTransport:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.receive()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None

    # The supervisor: connect, serve, decide, wait, again.

    async def _supervise(self) -> None:
        assert self._supervisor_scope is not None  # made by __aenter__
        with self._supervisor_scope:
            await self._reconnect_forever()

    async def _reconnect_forever(self) -> None:
        schedule: RetrySchedule | None = None
        first = True
        failure: BaseException | None = None
        try:
            while not self._closing:
                attempted_at = anyio.current_time()
                transport, error = await self._attempt()
                if self._closing:  # aclose() ran while the attempt was under way
                    if transport is not None:
                        with anyio.CancelScope(shield=True):
                            await transport.abort()
                        self._live_transports -= 1
                    break
                opened = short_lived = False
                if transport is not None:
                    started = anyio.current_time()
                    error, opened = await self._serve(transport)
                    if self._closing:
                        break
                    backoff = self._backoff
                    lived = anyio.current_time() - started
                    short_lived = opened and backoff is not None and lived < backoff.min_uptime
                    if short_lived:
                        self._failed_attempts += 1  # opened, but died too soon to count
                    elif opened:
                        schedule = None  # a good connection was lost: a fresh outage
                self._last_error = error
                if first and not opened and not self._retry_first_connect:
                    failure = error
                    break
                first = False
                # A failed or short-lived attempt counts toward max_attempts
                # and the deadline; the loss of a good connection does not.
                counted = not opened or short_lived
                so_far = schedule.attempts if schedule else int(counted)
                decision = self._decide(error, so_far)
                if isinstance(decision, BaseException):
                    failure = decision
                    break
                now = anyio.current_time()
                if schedule is None:
                    schedule = RetrySchedule(
                        decision,
                        start=attempted_at if counted else now,
                        prior_attempts=1 if counted else 0,
                    )
                delay = schedule.next_delay(now, at_least=_retry_after(error))
                if delay is None:
                    failure = self._gave_up(error, schedule)
                    break
                self._set_state(
                    ConnectionState.RECONNECTING,
                    error=error,
                    attempt=schedule.attempts,
                    delay=delay,
                )
                await anyio.sleep(delay)
        finally:
            if not self._closing or failure is not None:
                self._finish(failure)

    def _decide(self, error: BaseException | None, attempts: int) -> Backoff | BaseException:
        """The backoff to retry with, or the error to give up with.

        ``attempts`` is how many attempts of the current outage failed so far.
        """
        if self._backoff is None:
            return error or ConnectionClosedOK(1000, "")
        verdict = None
        if self._should_retry is not None and error is not None:
            try:
                verdict = self._should_retry(error)
            except Exception as exc:
                logger.exception("%s: should_retry raised; giving up", self._name)
                failure = ReconnectFailed(
                    f"{self._name}: should_retry raised {exc!r} deciding about: {error}",
                    last_error=error,
                    attempts=attempts,
                )
                failure.__cause__ = exc
                return failure
        if verdict is None:
            verdict = error is None or is_retryable(error)
        if not verdict:
            failure = ReconnectFailed(
                f"{self._name}: not retrying after a fatal error: {error}",
                last_error=error,
                attempts=attempts,
            )
            failure.__cause__ = error
            return failure
        return self._backoff

    def _gave_up(self, error: BaseException | None, schedule: RetrySchedule) -> ReconnectFailed:
        backoff = schedule.backoff
        if backoff.max_attempts is not None and schedule.attempts >= backoff.max_attempts:
            why = f"after {schedule.attempts} failed attempts (max_attempts={backoff.max_attempts})"
        else:
            why = f"after {schedule.attempts} failed attempts (deadline={backoff.deadline}s)"
        failure = ReconnectFailed(
            f"{self._name}: gave up reconnecting {why}; last error: {error}",
            last_error=error,
            attempts=schedule.attempts,
        )
        failure.__cause__ = error
        return failure

    async def _attempt(self) -> tuple[Transport | None, BaseException | None]:
        self._attempts += 1
        try:
            transport = await self._factory()
        except Exception as exc:  # the retry policy decides; a bug is fatal there
            self._failed_attempts += 1
            logger.debug("%s: attempt %d failed: %s", self._name, self._attempts, exc)
            return None, exc
        self._live_transports += 1
        return transport, None

    async def _serve(self, transport: Transport) -> tuple[BaseException, bool]:
        """Run one connection until it ends: (why it ended, whether it reached OPEN)."""
        self._transport = transport
        self._hook_error = None
        self._opened_at = None
        assert self._task_group is not None  # entered
        tasks = self._connection_group = _ConnectionTasks(self._task_group)
        try:
            tasks.start_soon(self._establish, transport)
            error = await self._read(transport)
            # No await since the reader returned: no flusher can start now.
        finally:
            self._connection_group = None
            self._live = None
            tasks.cancel()
            with anyio.CancelScope(shield=True):
                await tasks.wait()  # they are cancelled: at once
                # A scheduling point, as leaving a task group is: tasks that were
                # about to send on this connection do so before it is declared lost.
                await anyio.lowlevel.cancel_shielded_checkpoint()
            self._flushing = False
            if transport.state is not TransportState.CLOSED:
                with anyio.CancelScope(shield=True):
                    await transport.abort()
            self._live_transports -= 1
            self._transport = None
        opened = self._opened_at is not None
        if not opened:
            self._failed_attempts += 1
        return self._hook_error or error, opened

    async def _establish(self, transport: Transport) -> None:
        """Run the hooks, declare OPEN, flush the queue."""
        error: Exception | None = None
        try:
            with anyio.move_on_after(self._hook_timeout) as scope:
                for hook in list(self._hooks):
                    await hook(transport)
            if scope.cancelled_caught:
                error = ConnectTimeout(
                    f"on_connect hooks of {self._name} took longer than {self._hook_timeout}s"
                )
        except Exception as exc:  # the retry policy decides what a hook's error means
            error = exc
        if error is not None:
            self._hook_error = error
            logger.debug("%s: on_connect hook failed: %r", self._name, error)
            await transport.abort()
            return
        if transport.state is not TransportState.OPEN or self._closing:
            return
        self._connections += 1
        self._opened_at = anyio.current_time()
        self._set_state(ConnectionState.OPEN)
        self._live = transport
        self._settled.set()
        self._start_flusher()

    async def _read(self, transport: Transport) -> BaseException:
        """Deliver inbound messages until the connection ends; also the heartbeat."""
        config = self._heartbeat
        watch = None
        if config is not None:
            watch = self._watch = HeartbeatWatch(config, now=anyio.current_time())
            self._heard_count = self._messages_received
            self._heard_at = None
        handler = self._message_handler
        if handler is not None:
            # Messages then go to the handler as they are read, with no task
            # woken for each; receive() below returns only the end.
            transport._set_message_handler(self._handle_message)
        inbox = self._inbox
        try:
            while True:
                held: str | bytes | None = None
                deadline = watch.deadline if watch is not None else math.inf
                with anyio.CancelScope(deadline=deadline):
                    while True:
                        message = await transport.receive()
                        self._messages_received += 1
                        if handler is not None:
                            try:
                                handler(message)
                            except Exception:
                                self._handler_errors += 1
                                logger.exception("%s: message handler raised", self._name)
                        elif not inbox.put_nowait(message):
                            held = message
                            break
                if held is not None:
                    # A slow consumer: wait for it, heartbeat paused (the
                    # silence would be ours), reading paused (backpressure).
                    if not await inbox.put(held):
                        return ConnectionClosedOK(1000, "", message=f"{self._name} was closed")
                    if watch is not None:
                        watch.restart(now=anyio.current_time())
                    continue
                if watch is not None:
                    await self._beat(transport, watch)
        except ConnectionClosed as exc:
            return exc

    def _handle_message(self, message: str | bytes) -> None:
        """The message handler, counted and guarded, as the transport calls it."""
        self._messages_received += 1
        try:
            self._message_handler(message)  # type: ignore[misc]  # set when this is used
        except Exception:
            self._handler_errors += 1
            logger.exception("%s: message handler raised", self._name)

    def _heard(self, transport: Transport) -> float | None:
        """When the server was last heard from, for the heartbeat."""
        stamp = transport.statistics().last_received_at
        if stamp is not None:
            return stamp
        # A transport that does not time its input: a message delivered since
        # the last look counts as heard now (late by up to an interval).
        if self._messages_received != self._heard_count:
            self._heard_count = self._messages_received
            self._heard_at = anyio.current_time()
        return self._heard_at

    async def _beat(self, transport: Transport, watch: HeartbeatWatch) -> None:
        """The watch's deadline passed: wait on, probe, or declare the connection dead."""
        self._retire_writer()
        while True:
            graces = watch.grace_periods
            verdict = watch.check(now=anyio.current_time(), last_received=self._heard(transport))
            self._grace_periods += watch.grace_periods - graces
            if verdict is not Verdict.PROBE:
                break
            if transport.state is not TransportState.OPEN:
                # Closing: the closing handshake has its own timeout, and a
                # probe could only fail and abort the socket under aclose().
                watch.restart(now=anyio.current_time())
                return
            if watch.config.app_level and self._live is not transport:
                # Hooks still run (authentication, say): an application
                # message must not go first. They are bounded by hook_timeout.
                watch.restart(now=anyio.current_time())
                return
            self._probes += 1
            with anyio.move_on_after(max(0.0, watch.deadline - anyio.current_time())):
                if self._app_ping is not None and watch.config.app_level:
                    await transport.send(self._app_ping)
                    return  # the answer, like any message, shows up as life
                # Messages are still read into the transport's buffer while
                # the ping waits, and count as life if the pong is late.
                self._last_rtt = await transport.ping()
                watch.restart(now=anyio.current_time())
                return
            # No pong in time; what arrived meanwhile decides. PROBE again
            # (data early in a timeout longer than the interval, then silence)
            # means the watch counts a new probe: send it, or a live server
            # is declared dead for a probe it never got.
        if verdict is Verdict.ALIVE:
            return
        self._heartbeat_timeouts += 1
        error = HeartbeatTimeout(
            f"{self._name}: nothing received for {watch.config.timeout}s after a heartbeat probe"
        )
        logger.info("%s: heartbeat timeout, dropping the connection", self._name)
        await transport.abort()
        raise error

    # State

    def _set_state(
        self,
        state: ConnectionState,
        *,
        error: BaseException | None = None,
        attempt: int = 0,
        delay: float | None = None,
    ) -> None:
        """The one place the state changes: check, record, log, notify."""
        previous = self._state
        if state not in _TRANSITIONS[previous]:
            raise InvalidState(f"{self._name}: no transition from {previous} to {state}")
        self._state = state
        change = StateChange(
            previous=previous,
            state=state,
            error=error,
            attempt=attempt,
            delay=delay,
            at=anyio.current_time(),
        )
        _log_change(self._name, change)
        for callback in list(self._state_callbacks):
            try:
                callback(change)
            except Exception:
                logger.exception("%s: state callback raised", self._name)
        for watcher in self._watchers or ():
            watcher._push(change)  # one that fell behind misses changes; it never blocks us


def _log_change(name: str, change: StateChange) -> None:
    previous = change.previous.name if change.previous is not None else "-"
    text = f"{name}: {previous} -> {change.state.name}"
    if change.state is ConnectionState.RECONNECTING:
        text += f", attempt {change.attempt} in {change.delay:.3f}s"
    if change.error is not None:
        text += f" ({change.error})"
    failed = change.state is ConnectionState.CLOSED and change.error is not None
    level = logging.WARNING if failed else logging.INFO
    logger.log(level, "%s", text)


# Every inbox starts as this one, never added to: an empty deque costs 760 bytes.
_NOTHING: deque[Any] = deque()


def _retry_after(error: BaseException | None) -> float:
    """The server's Retry-After, honoured for 429 and 503 (RFC 9110 10.2.3)."""
    if isinstance(error, ConnectError) and error.status in (429, 503) and error.retry_after:
        # Never an endless wait, whatever the error carries; the deadline still applies.
        return error.retry_after if math.isfinite(error.retry_after) else 0.0
    return 0.0


def _to_queue_item(data: str | bytes, text: bool | None) -> tuple[bytes, bool]:
    if isinstance(data, str):
        return data.encode(), True
    _check_message(data)
    return bytes(data), bool(text)


def _check_message(data: object) -> None:
    if not isinstance(data, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"a message is str or bytes, not {type(data).__name__}")


class _ConnectionTasks:
    """The short-lived tasks of one connection (its hooks, the queue's flusher).

    They run in the transport's task group, each under a cancel scope of its
    own, cancelled when the connection ends: a task group per connection
    would cost 1 KiB for the connection's whole life.
    """

    __slots__ = ("_done", "_group", "_running", "_scopes", "cancelled")

    def __init__(self, group: anyio.abc.TaskGroup) -> None:
        self._group = group
        self._scopes: list[anyio.CancelScope] = []
        self._running = 0
        self._done: _Flag | None = None
        self.cancelled = False

    def start_soon(self, function: Callable[..., Coroutine[Any, Any, None]], *args: object) -> None:
        self._running += 1
        self._group.start_soon(self._run, function, args)

    async def _run(
        self, function: Callable[..., Coroutine[Any, Any, None]], args: tuple[object, ...]
    ) -> None:
        try:
            with anyio.CancelScope() as scope:
                if self.cancelled:
                    scope.cancel()  # the connection ended before this task began
                self._scopes.append(scope)
                try:
                    await function(*args)
                finally:
                    self._scopes.remove(scope)
        finally:
            self._running -= 1
            if not self._running and self._done is not None:
                self._done.set()

    def cancel(self) -> None:
        self.cancelled = True
        for scope in self._scopes:
            scope.cancel()

    async def wait(self) -> None:
        """Return once every task has ended."""
        while self._running:
            self._done = _Flag()
            await self._done.wait()


class _Flag:
    """A one-shot event that, unlike ``anyio.Event``, needs no event loop to create."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: anyio.Event | None = None

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()
            self._event = None  # its waiters hold it; we no longer need to

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        if not self._set:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()


class _Inbox(Generic[_T]):
    """A bounded buffer between the reader and a consumer (messages, state changes).

    Taking an item that is already here does not wait for the event loop,
    unlike a memory object stream: for messages this is the per-message path.
    Unlike anyio's primitives it needs no event loop to be created.
    """

    __slots__ = ("_closed", "_items", "_readable", "_room", "_size")

    def __init__(self, size: int) -> None:
        self._items: deque[_T] = _NOTHING  # made by the first item: most inboxes stay empty
        self._size = size
        self._readable: anyio.Event | None = None  # a consumer waits for an item
        self._room: anyio.Event | None = None  # the producer waits for room
        self._closed = False

    def put_nowait(self, item: _T) -> bool:
        """Add ``item`` unless full; False means it was not added."""
        items = self._items
        if len(items) >= self._size:
            return False
        if items is _NOTHING:
            items = self._items = deque()
        items.append(item)
        if self._readable is not None:
            self._readable.set()
            self._readable = None
        return True

    async def put(self, item: _T) -> bool:
        """Add ``item`` once there is room; False if the inbox was closed meanwhile."""
        while len(self._items) >= self._size:
            if self._closed:
                return False
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()
        return self.put_nowait(item)

    async def get(self) -> _T | None:
        """The next item, or None once closed and empty."""
        while not self._items:
            if self._closed:
                return None
            if self._readable is None:
                self._readable = anyio.Event()
            await self._readable.wait()
        item = self._items.popleft()
        if self._room is not None:
            self._room.set()
            self._room = None
        return item

    def close(self) -> None:
        """No more items come in; those here can still be taken."""
        self._closed = True
        for event in (self._readable, self._room):
            if event is not None:
                event.set()
        self._readable = self._room = None


class _StateChanges:
    """The iterator ``ReconnectingTransport.state_changes()`` returns."""

    def __init__(self, max_buffer: int) -> None:
        self._inbox: _Inbox[StateChange] = _Inbox(max_buffer)
        self.missed = 0  # changes dropped because the watcher fell behind

    def _push(self, change: StateChange) -> None:
        if not self._inbox.put_nowait(change):
            self.missed += 1

    def _end(self) -> None:
        self._inbox.close()

    def __aiter__(self) -> _StateChanges:
        return self

    async def __anext__(self) -> StateChange:
        change = await self._inbox.get()
        if change is None:
            raise StopAsyncIteration
        return change
