"""A blocking client for scripts and threads: ``with wsclient.sync.connect(url) as client``.

[`connect()`][wsclient.sync.connect] starts an event loop in a background thread (an anyio
blocking portal, on asyncio or trio), opens a [`Client`][wsclient.Client]
inside it, and returns a [`SyncClient`][wsclient.sync.SyncClient] whose methods block until the
loop has done the work. Any number of threads may call them at once; each
call is one task on the loop, so replies still find their own request.

What runs where:

- your calls block the thread that makes them, and nothing else;
- the connection, its heartbeat, reconnects and the dispatch of inbound
  messages run in the loop thread, as in the async client;
- callbacks (``on_state``, ``on_error``, ``on_message``, a session's
  ``on_state``, ``subscribe(callback=)``) run in the loop thread too. They
  must return quickly and must not call the blocking methods (those raise
  `RuntimeError` there rather than wait for themselves forever).

Every wait can end: ``timeout=`` bounds the waits for messages and states
(raising `TimeoutError`), requests keep their ``RequestTimeout``, and
Ctrl-C (`KeyboardInterrupt`) in a blocked call cancels its task in the
loop before it reaches you.
[`SyncClient.close()`][wsclient.sync.SyncClient.close] (or leaving ``with``)
closes the client as ``aclose()`` does, then stops the loop and joins its
thread, within ``close_timeout`` and a few seconds even if a callback blocks
the loop; a client nobody closed is closed when it is garbage-collected or
when the interpreter exits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import math
import threading
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from ._buffer import BufferPolicy
from ._channels import DeliveryCallback, Subscription, SubscriptionState, SubscriptionStatistics
from ._checks import check_timeout
from ._client import Client, ClientStatistics, ErrorCallback, MessageCallback
from ._correlator import InFlight
from ._endpoint import Endpoint
from ._mux import Session, SessionStatistics
from ._reconnect import ConnectionState, StateCallback
from ._transport import Transport, check_close

__all__ = ["SyncClient", "SyncSession", "SyncSubscription", "connect"]

logger = logging.getLogger("wsclient.sync")

T = TypeVar("T")
C = TypeVar("C", bound="_ClosedByWith")

BACKENDS = ("asyncio", "trio")

#: Schedules a function in the loop from another thread, without waiting for it.
_Soon = Callable[[Callable[[], object]], object]

#: Seconds an interrupted call waits for its task in the loop to unwind.
_CANCEL_BOUND = 5.0
#: Seconds the loop thread gets to stop once cancelled.
_STOP_BOUND = 5.0


class _Runtime:
    """The loop thread, its portal and the async client living in it.

    The thread is our own daemon thread, not `start_blocking_portal()`'s:
    before anyio 4.5 that one ran in a ``ThreadPoolExecutor``, which the
    interpreter joins at exit before any finalizer can stop the loop (a
    forgotten client hung the exit), and a Ctrl-C while it starts joins a
    loop that nobody stops. It never refers to the
    [`SyncClient`][wsclient.sync.SyncClient], so the client's finalizer can close it.
    """

    portal: BlockingPortal  # set by the loop thread before connect() returns
    _stop: anyio.Event  # set: close the client, then stop the loop
    _soon: _Soon

    def __init__(
        self, client: Client, backend: str, backend_options: dict[str, Any] | None
    ) -> None:
        self.client = client
        self.backend = backend
        self._lock = threading.Lock()
        self._closing = False  # close() has begun, or connect() failed: no new calls
        self._closed = threading.Event()  # close() has finished
        self._close_args = (1000, "")
        self._close_error: Exception | None = None
        self._scope: anyio.CancelScope | None = None  # set once the loop runs
        self._opened: concurrent.futures.Future[None] = concurrent.futures.Future()
        close_timeout = client.transport._close_timeout  # Client() checked it: inf or finite
        self._close_bound = None if math.isinf(close_timeout) else close_timeout + _STOP_BOUND
        self.thread = threading.Thread(
            # A fresh context: the caller's may say (sniffio) that another loop runs.
            target=contextvars.Context().run,
            args=(self._run, backend, backend_options),
            name=f"wsclient-sync {client.name}",
            daemon=True,
        )

    # In the loop thread

    def _run(self, backend: str, backend_options: dict[str, Any] | None) -> None:
        try:
            anyio.run(self._main, backend=backend, backend_options=backend_options)
        except BaseException as exc:  # invalid backend_options; never a traceback in a thread
            if not self._opened.done():
                self._opened.set_exception(exc)
            else:
                logger.error("%s: its event loop failed", self.client.name, exc_info=True)

    async def _main(self) -> None:
        async with BlockingPortal() as portal:
            with anyio.CancelScope() as scope:
                with self._lock:
                    if self._closing:  # connect() was interrupted before the loop ran
                        return
                    self.portal, self._scope, self._stop = portal, scope, anyio.Event()
                    self._soon = _call_soon_threadsafe(self.backend)
                await self._serve()
            await portal.stop(cancel_remaining=True)  # the calls of other threads end

    async def _serve(self) -> None:
        try:
            async with self.client:
                self._opened.set_result(None)
                await self._stop.wait()
                await self.client.aclose(*self._close_args)
        except Exception as exc:
            if self._opened.done():
                self._close_error = exc  # close() raises it
            else:
                self._opened.set_exception(exc)  # connect() raises it

    # Life cycle, from other threads

    def open(self) -> None:
        """Start the loop thread, open the client there; raise its error."""
        try:
            self.thread.start()
            self._opened.result()
        except BaseException:  # refused, or Ctrl-C while connecting: stop it all
            with self._lock:
                self._closing = True
            try:
                self._cancel_and_join()
            finally:
                self._closed.set()
            raise

    @property
    def closing(self) -> bool:
        return self._closing

    def close(self, code: int, reason: str) -> None:
        self.check_thread("close()")
        check_close(code, reason)
        with self._lock:
            first = not self._closing
            self._closing = True
        if not first:
            self._closed.wait()  # another thread closes it, within the bounds below
            return
        try:
            self._close_args = (code, reason)
            with contextlib.suppress(RuntimeError):  # the loop ended already
                self._soon(self._stop.set)
            self.thread.join(self._close_bound)  # aclose() is bounded by close_timeout
            if self.thread.is_alive():
                logger.warning(
                    "%s: closing took over %gs; cancelling it", self.client.name, self._close_bound
                )
        finally:
            try:
                self._cancel_and_join()  # at once if the thread ended; on Ctrl-C too
            finally:
                self._closed.set()
        if self._close_error is not None:
            raise self._close_error

    def _cancel_and_join(self) -> None:
        """Cancel what still runs in the loop, and wait (bounded) for its thread to end."""
        with self._lock:
            scope = self._scope
        if scope is not None and self.thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                self._soon(scope.cancel)
        with contextlib.suppress(RuntimeError):  # interrupted before the thread started
            self.thread.join(_STOP_BOUND)
        if self.thread.is_alive():  # a daemon: it cannot hold up the exit
            logger.warning(
                "%s: the loop thread did not stop in %gs (a callback blocking it?);"
                " it is left to end on its own",
                self.client.name,
                _STOP_BOUND,
            )

    def finalize(self) -> None:
        """Close a client nobody closed: it was garbage-collected, or the interpreter exits."""
        if self._closing:
            return
        try:  # warned first, closed even if warnings are errors
            warnings.warn(
                f"a wsclient.sync client was never closed: {self.client.name}",
                ResourceWarning,
                stacklevel=1,
            )
        finally:
            if self.in_loop_thread():  # collected by a callback: close from elsewhere
                threading.Thread(
                    target=self._close_quietly, name="wsclient-sync-close", daemon=True
                ).start()
            else:
                self._close_quietly()

    def _close_quietly(self) -> None:
        try:
            self.close(1000, "")
        except Exception:
            logger.debug("%s: closing at exit failed", self.client.name, exc_info=True)

    # Calls

    def in_loop_thread(self) -> bool:
        # Identity, not ident: a thread started after the loop thread ended
        # may be given its ident again (a close() racing the close that ended it).
        return threading.current_thread() is self.thread

    def check_thread(self, what: str) -> None:
        if self.in_loop_thread():
            raise RuntimeError(
                f"{what} blocks, and was called in the client's event loop thread (from a"
                " callback?), where it would wait for itself forever; callbacks must not"
                " block: hand the work to another thread"
            )

    def call(
        self,
        what: str,
        func: Callable[[], Awaitable[T]],
        closed: Callable[[], BaseException],
    ) -> T:
        """Run ``await func()`` in the loop and return its result, from any other thread.

        ``closed()`` is what to raise once the client is closed. An
        interruption (Ctrl-C) cancels the task and waits for it to unwind.
        """
        self.check_thread(what)
        if self._closing:
            raise closed()
        call: _Call[T] = _Call(func)
        future: concurrent.futures.Future[T] | None = None
        try:
            future = self.portal.start_task_soon(call.run)
            return future.result()
        except concurrent.futures.CancelledError:  # the client closed: the portal cancelled it
            raise closed() from None
        except RuntimeError:
            if future is None:  # the portal stopped before it could start the task
                raise closed() from None
            raise
        except BaseException:
            if future is None or not future.done():  # interrupted (Ctrl-C)
                call.abandon(self._soon)
            raise

    def call_sync(self, func: Callable[[], T]) -> T:
        """``func()`` in the loop, for a consistent snapshot; here once the loop has ended."""
        if self.in_loop_thread():
            return func()
        if not self._closed.is_set():
            try:
                return self.portal.call(func)
            except RuntimeError:
                if not self._closing:
                    raise
                # The portal stopped: the loop is ending; what it leaves is final.
                self.thread.join(_STOP_BOUND)
        return func()


def _call_soon_threadsafe(backend: str) -> _Soon:
    """How another thread schedules a function in the running loop without waiting for it.

    A portal call waits for the loop; closing must not, when a callback blocks it.
    """
    if backend == "trio":
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
    return asyncio.get_running_loop().call_soon_threadsafe


class _Abandoned(Exception):
    """How a call's task ends when its caller gave up on it."""


class _Call(Generic[T]):
    """One blocking call's task in the loop, which its caller can cancel from its thread.

    The caller may be interrupted at any point, even before the portal
    reports the task started: then the task, if it starts, does nothing.
    """

    __slots__ = ("_abandoned", "_finished", "_func", "_lock", "_scope")

    def __init__(self, func: Callable[[], Awaitable[T]]) -> None:
        self._func = func
        self._lock = threading.Lock()
        self._scope: anyio.CancelScope | None = None
        self._abandoned = False
        self._finished = threading.Event()

    async def run(self) -> T:
        try:
            with anyio.CancelScope() as scope:
                with self._lock:
                    if self._abandoned:
                        raise _Abandoned
                    self._scope = scope
                return await self._func()
            raise _Abandoned
        finally:
            self._finished.set()

    def abandon(self, soon: _Soon) -> None:
        """Cancel the task, and wait (bounded) until it unwound: nothing waits on in the loop."""
        with self._lock:
            self._abandoned = True
            scope = self._scope
        if scope is None:
            return  # it will not run
        with contextlib.suppress(RuntimeError):  # the loop ended, and the task with it
            soon(scope.cancel)
        self._finished.wait(_CANCEL_BOUND)


async def _bounded(func: Callable[[], Awaitable[T]], limit: float | None, what: str) -> T:
    """``await func()``, raising TimeoutError after ``limit`` seconds (None: no bound)."""
    if limit is None:
        return await func()
    with anyio.move_on_after(limit):
        return await func()
    raise TimeoutError(f"{what} in {limit:g}s")


#: What `_next()` returns at the end (a coroutine cannot raise StopIteration).
_END: Any = object()


async def _next(iterator: Endpoint | Subscription) -> Any:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return _END


def _check_timeout(timeout: float | None) -> float | None:
    return None if timeout is None else check_timeout(timeout)


class _ClosedByWith:
    """Closed on leaving ``with``."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: C) -> C:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _SyncEndpoint(_ClosedByWith):
    """The blocking messaging API a client and its sessions share."""

    _runtime: _Runtime
    _endpoint: Client | Session
    _kind: str

    def _call(self, what: str, func: Callable[[], Awaitable[T]]) -> T:
        return self._runtime.call(f"{self._kind}.{what}()", func, self._closed_reason)

    def _closed_reason(self) -> BaseException:
        return self._endpoint._closed_reason()

    def _owner(self) -> SyncClient:
        raise NotImplementedError

    def send(self, message: Any) -> bool:
        """Encode ``message`` with the codec and send it, or queue it while offline.

        Returns False if the queue's ``drop_newest`` policy dropped it. A
        session's message is marked with its id.

        Args:
            message: anything the codec encodes (a dict for JSON).
        """
        return self._call("send", lambda: self._endpoint.send(message))

    def request(
        self,
        type: str,
        payload: Any = None,
        *,
        timeout: float | None = None,
        in_flight: InFlight | None = None,
    ) -> Any:
        """Send a request of kind ``type`` and return its reply's payload.

        Args:
            type: the request's kind (``"query"``, ``"command"``, ``"auth"``,
                or a JSON-RPC method name with that dialect).
            payload: what the request carries.
            timeout: seconds to wait for the reply, queueing included
                (default: the client's ``request_timeout``).
            in_flight: ``"fail"`` or ``"resend"``: what happens if the
                connection drops with the request in flight (default: the
                client's ``in_flight``).

        Raises:
            RemoteError: the server answered with an error.
            RequestTimeout: no reply in time (also a TimeoutError).
            ConnectionLost: the connection dropped with the request in flight.
            QueueFull: the outbound queue refused or dropped the request.
        """
        return self._call(
            "request",
            lambda: self._endpoint.request(type, payload, timeout=timeout, in_flight=in_flight),
        )

    def query(
        self,
        resource: str,
        parameters: Any = None,
        *,
        timeout: float | None = None,
        in_flight: InFlight | None = None,
    ) -> Any:
        """Ask for ``resource`` and return the reply's payload.

        See [`request()`][wsclient.sync.SyncClient.request] for the errors.

        Args:
            resource: what to ask for.
            parameters: the query's parameters.
            timeout: seconds to wait for the reply (default: ``request_timeout``).
            in_flight: ``"fail"`` or ``"resend"`` (default: the client's).
        """
        return self._call(
            "query",
            lambda: self._endpoint.query(
                resource, parameters, timeout=timeout, in_flight=in_flight
            ),
        )

    def command(
        self,
        action: str,
        parameters: Any = None,
        *,
        timeout: float | None = None,
        in_flight: InFlight | None = None,
    ) -> Any:
        """Have the server do ``action`` and return the reply's payload.

        See [`request()`][wsclient.sync.SyncClient.request] for the errors.

        Args:
            action: what to do.
            parameters: the command's parameters.
            timeout: seconds to wait for the reply (default: ``request_timeout``).
            in_flight: ``"fail"`` (leave it for commands that are not
                idempotent) or ``"resend"``.
        """
        return self._call(
            "command",
            lambda: self._endpoint.command(
                action, parameters, timeout=timeout, in_flight=in_flight
            ),
        )

    def publish_event(self, event: str, data: Any = None) -> bool:
        """Send a fire-and-forget event; False if the queue dropped it.

        Args:
            event: the event's name.
            data: what it carries.
        """
        return self._call("publish_event", lambda: self._endpoint.publish_event(event, data))

    def publish(self, channel: str, data: Any) -> bool:
        """Publish ``data`` on ``channel``; False if the queue dropped it.

        Args:
            channel: the channel to publish on.
            data: the delivery's data.
        """
        return self._call("publish", lambda: self._endpoint.publish(channel, data))

    def subscribe(
        self,
        channel: str,
        *,
        timeout: float | None = None,
        callback: DeliveryCallback | None = None,
        buffer: BufferPolicy | None = None,
    ) -> SyncSubscription:
        """Subscribe to ``channel``: ``with client.subscribe("news", timeout=5) as news``.

        The subscription is open when this returns (its ``subscribe`` sent
        or queued); the server's confirmation may come later (see
        [`confirmed()`][wsclient.sync.SyncSubscription.confirmed]).

        Args:
            channel: the channel's name.
            timeout: seconds each ``for data in sub`` step waits for a
                delivery before raising `TimeoutError` (default: no
                bound; iteration ends when the subscription or client closes).
            callback: called with each delivery's data instead of buffering
                it, in the loop thread: it must not block.
            buffer: this subscriber's buffer and overflow policy (default:
                the client's ``subscriber_buffer``).
        """
        timeout = _check_timeout(timeout)
        endpoint = self._endpoint

        async def open_() -> Subscription:
            sub = endpoint.subscribe(channel, callback=callback, buffer=buffer)
            await sub
            return sub

        sub = self._call("subscribe", open_)
        return SyncSubscription(self._owner(), sub, timeout)

    def receive(self, timeout: float | None = None) -> Any:
        """The next message that no layer consumed (not a reply, delivery or heartbeat).

        Args:
            timeout: seconds to wait; then `TimeoutError` (default: no bound).

        Raises:
            TimeoutError: nothing came in time.
            InvalidState: the client (or session) is closed and its messages are read.
        """
        timeout = _check_timeout(timeout)
        return self._call(
            "receive", lambda: _bounded(self._endpoint.receive, timeout, "no message came")
        )

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        """The next unconsumed message; iteration ends when the client (or session) closes."""
        item = self._runtime.call(
            f"{self._kind} iteration", lambda: _next(self._endpoint), StopIteration
        )
        if item is _END:
            raise StopIteration
        return item

    @property
    def state(self) -> ConnectionState:
        """The connection's state."""
        return self._endpoint.state

    def on_state(self, callback: StateCallback) -> StateCallback:
        """Call ``callback(change)`` on every connection state change, in the loop thread.

        Args:
            callback: a function of a [`StateChange`][wsclient.StateChange]; it must not block.

        Returns:
            ``callback``, so that this can be a decorator.
        """
        return self._runtime.call_sync(lambda: self._endpoint.on_state(callback))

    def wait_state(self, *states: ConnectionState, timeout: float | None = None) -> ConnectionState:
        """Return once the connection's state is one of ``states`` (at once if it is).

        Args:
            states: the states to wait for.
            timeout: seconds to wait; then `TimeoutError` (default: no bound).

        Raises:
            TimeoutError: no such state in time.
            WSClientError: the client closed while waiting (why it closed).
        """
        timeout = _check_timeout(timeout)
        if self.state in states:  # also once closed, as in the async client
            return self.state
        names = ", ".join(state.name for state in states)
        return self._call(
            "wait_state",
            lambda: _bounded(
                lambda: self._endpoint.wait_state(*states), timeout, f"the state was not {names}"
            ),
        )


class SyncClient(_SyncEndpoint):
    """A blocking WebSocket client, safe to use from many threads at once.

    Made by [`connect()`][wsclient.sync.connect]. It offers the methods of
    [`Client`][wsclient.Client], blocking: requests, events, channels
    ([`subscribe()`][wsclient.sync.SyncClient.subscribe] returns an
    iterator), sessions and unconsumed messages (``for message in client``).
    Use it with ``with`` or call [`close()`][wsclient.sync.SyncClient.close].

    Args:
        url: a ``ws://`` or ``wss://`` URL, or an async callable returning a
            connected [`Transport`][wsclient.Transport] (called in the loop thread).
        backend: ``"asyncio"`` or ``"trio"``: the event loop of the thread.
        backend_options: passed to `anyio.run()` (e.g. ``{"use_uvloop": True}``).
        options: the options of [`wsclient.connect()`][wsclient.connect], as they are.
    """

    _kind = "SyncClient"

    def __init__(
        self,
        url: str | Callable[[], Awaitable[Transport]],
        *,
        backend: str = "asyncio",
        backend_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        client = Client(url, **options)  # invalid URLs and options raise here, in this thread
        self._client = client
        self._endpoint = client
        self._runtime = runtime = _Runtime(client, backend, backend_options)
        # Before the thread starts: a Ctrl-C just after open() leaves nothing behind.
        self._finalizer = weakref.finalize(self, runtime.finalize)
        runtime.open()

    def _owner(self) -> SyncClient:
        return self

    # Life cycle

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Flush the queue, close the connection, stop the loop thread. Idempotent.

        Pending calls of other threads end as with ``aclose()``: requests
        raise [`ConnectionLost`][wsclient.ConnectionLost], iterations end. Afterwards
        every method raises the client's closed error
        ([`InvalidState`][wsclient.InvalidState], or why it failed). Any thread may
        call it, but not a callback (the loop thread).

        Args:
            code: the close code sent to the server.
            reason: the close reason sent to the server.
        """
        self._runtime.close(code, reason)
        self._finalizer.detach()

    @property
    def closed(self) -> bool:
        """Whether [`close()`][wsclient.sync.SyncClient.close] was called."""
        return self._runtime.closing

    # Observing

    @property
    def name(self) -> str:
        """How logs and ``repr`` name this client (its URL, without secrets)."""
        return self._client.name

    @property
    def backend(self) -> str:
        """The event loop running in the client's thread: ``"asyncio"`` or ``"trio"``."""
        return self._runtime.backend

    @property
    def request_timeout(self) -> float:
        """The default seconds a request waits for its reply."""
        return self._client.request_timeout

    def statistics(self) -> ClientStatistics:
        """Every layer's counters, a [`ClientStatistics`][wsclient.ClientStatistics]."""
        return self._runtime.call_sync(self._client.statistics)

    def on_error(self, callback: ErrorCallback) -> ErrorCallback:
        """Call ``callback(error)`` for what goes wrong without failing a call, in the loop thread.

        Args:
            callback: a function of the exception; it must not block.

        Returns:
            ``callback``, so that this can be a decorator.
        """
        return self._runtime.call_sync(lambda: self._client.on_error(callback))

    def on_message(self, callback: MessageCallback) -> MessageCallback:
        """Call ``callback(message)`` with every decoded inbound message, in the loop thread.

        Args:
            callback: a function of the message; it must not block.

        Returns:
            ``callback``, so that this can be a decorator.
        """
        return self._runtime.call_sync(lambda: self._client.on_message(callback))

    def remove_callback(self, callback: Callable[..., None]) -> None:
        """Stop calling ``callback`` for any event; no error if it was not registered.

        Args:
            callback: a callback given to ``on_state``, ``on_error`` or ``on_message``.
        """
        self._runtime.call_sync(lambda: self._client.remove_callback(callback))

    def __repr__(self) -> str:
        try:
            inner = repr(self._client)  # the async client's, without secrets
        except RuntimeError:  # its tables changed under us
            inner = f"<Client {self._client.name} {self._client.state.name}>"
        closed = " closed" if self._runtime.closing else ""
        if inner.startswith("<Client ") and inner.endswith(">"):
            return f"<SyncClient {inner[8:-1]} backend={self.backend}{closed}>"
        return f"<SyncClient {inner} backend={self.backend}{closed}>"

    # The API only a client has

    def authenticate(self, credentials: Any, *, timeout: float | None = None) -> Any:
        """Authenticate the connection; returns the reply's payload.

        Once accepted, the credentials are sent again after every reconnect.
        They never appear in logs or reprs.

        Args:
            credentials: what the server's auth request expects.
            timeout: seconds to wait for the reply (default: ``request_timeout``).
        """
        return self._call(
            "authenticate", lambda: self._client.authenticate(credentials, timeout=timeout)
        )

    def ping(self) -> float:
        """Ping the server (protocol level) and return the round trip in seconds."""
        return self._call("ping", self._client.ping)

    def session(self, session_id: str | None = None) -> SyncSession:
        """A new [`SyncSession`][wsclient.sync.SyncSession] on this client's connection.

        Args:
            session_id: its id, sent as ``from`` (default: a fresh UUID).
        """
        client = self._client

        async def new() -> Session:
            return client.session(session_id)

        return SyncSession(self, self._call("session", new))


class SyncSession(_SyncEndpoint):
    """One logical client on the connection of a [`SyncClient`][wsclient.sync.SyncClient].

    Made by [`SyncClient.session()`][wsclient.sync.SyncClient.session].
    It offers the client's messaging methods, blocking; replies and
    messages addressed to it come to it alone. Close it with ``with`` or
    [`close()`][wsclient.sync.SyncSession.close]: its pending requests fail, its subscriptions end.
    """

    _kind = "SyncSession"

    def __init__(self, client: SyncClient, session: Session) -> None:
        self._client = client  # the client lives as long as its sessions
        self._runtime = client._runtime
        self._endpoint = session
        self._session = session

    def _owner(self) -> SyncClient:
        return self._client

    @property
    def id(self) -> str:
        """This session's id, sent as ``from``."""
        return self._session.id

    @property
    def closed(self) -> bool:
        """Whether the session (or its client) is closed."""
        return self._session.closed or self._runtime.closing

    def close(self) -> None:
        """Close the session: its pending requests fail, its subscriptions end. Idempotent."""
        with contextlib.suppress(_Closed):  # the client's close ended it
            self._runtime.call("SyncSession.close()", self._session.aclose, _Closed)

    def statistics(self) -> SessionStatistics:
        """This session's counters ([`SessionStatistics`][wsclient.SessionStatistics])."""
        return self._runtime.call_sync(self._session.statistics)

    def __repr__(self) -> str:
        return f"<Sync{repr(self._session)[1:]}"


class SyncSubscription(_ClosedByWith):
    """One subscriber to a channel, made by [`subscribe()`][wsclient.sync.SyncClient.subscribe].

    Iterate it (``for data in sub``) or call
    [`receive()`][wsclient.sync.SyncSubscription.receive]. Iteration ends
    when the subscription or its client closes; with a ``timeout``
    (given to ``subscribe``), a step that waits longer raises
    `TimeoutError`. Close it with ``with`` or
    [`close()`][wsclient.sync.SyncSubscription.close].
    """

    def __init__(self, client: SyncClient, sub: Subscription, timeout: float | None) -> None:
        self._client = client  # the client lives as long as its subscriptions
        self._runtime = client._runtime
        self._sub = sub
        self._timeout = timeout

    @property
    def channel(self) -> str:
        """The channel's name."""
        return self._sub.channel

    @property
    def timeout(self) -> float | None:
        """Seconds each iteration step waits for a delivery (None: no bound)."""
        return self._timeout

    @property
    def state(self) -> SubscriptionState:
        """The subscription's state."""
        return self._sub.state

    def _closed_reason(self) -> BaseException:
        if self._sub._state is not None:  # it ended: say how
            return self._sub._closed_error()
        return self._client._closed_reason()

    def receive(self, timeout: float | None = None) -> Any:
        """The next delivery's data.

        Args:
            timeout: seconds to wait; then `TimeoutError` (default: the
                subscription's ``timeout``; None there too: no bound).

        Raises:
            TimeoutError: nothing came in time.
            InvalidState: the subscription is closed and its buffer read.
            RemoteError: the server refused the subscription.
            QueueFull: it fell behind under ``overflow="fail"``.
        """
        limit = self._timeout if timeout is None else check_timeout(timeout)
        return self._runtime.call(
            "SyncSubscription.receive()",
            lambda: _bounded(self._sub.receive, limit, f"no delivery on {self.channel!r}"),
            self._closed_reason,
        )

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        """The next delivery's data; `TimeoutError` after the subscription's timeout."""
        item = self._runtime.call(
            "SyncSubscription iteration",
            lambda: _bounded(
                lambda: _next(self._sub), self._timeout, f"no delivery on {self.channel!r}"
            ),
            StopIteration,
        )
        if item is _END:
            raise StopIteration
        return item

    def confirmed(self, timeout: float | None = None) -> None:
        """Wait until the server confirmed the subscription.

        Args:
            timeout: seconds to wait (default: the client's ``request_timeout``).

        Raises:
            RequestTimeout: no confirmation in time.
            RemoteError: the server refused it.
            InvalidState: the subscription is closed.
        """
        self._runtime.call(
            "SyncSubscription.confirmed()",
            lambda: self._sub.confirmed(timeout),
            self._closed_reason,
        )

    def close(self) -> None:
        """Leave the channel (``unsubscribe`` if this was its last subscriber). Idempotent."""
        with contextlib.suppress(_Closed):  # the client's close ended it
            self._runtime.call(
                "SyncSubscription.close()", lambda: self._sub.__aexit__(None, None, None), _Closed
            )

    def statistics(self) -> SubscriptionStatistics:
        """Its counters, a [`SubscriptionStatistics`][wsclient.SubscriptionStatistics]."""
        return self._runtime.call_sync(self._sub.statistics)

    def __repr__(self) -> str:
        return f"<Sync{repr(self._sub)[1:]}"


class _Closed(Exception):
    """Raised by calls that have nothing to do once the client is closed."""


def connect(
    url: str | Callable[[], Awaitable[Transport]],
    *,
    backend: str = "asyncio",
    backend_options: dict[str, Any] | None = None,
    **options: Any,
) -> SyncClient:
    """Open a blocking client: ``with wsclient.sync.connect(url) as client``.

    The connection opens before this returns. An invalid URL or option
    raises here (as with [`wsclient.connect()`][wsclient.connect]), and so does the first
    connection's error ([`ConnectError`][wsclient.ConnectError]...) unless
    ``retry_first_connect=True``.

    Args:
        url: a ``ws://`` or ``wss://`` URL, or an async callable returning a
            connected [`Transport`][wsclient.Transport] (called in the loop thread).
        backend: ``"asyncio"`` (default) or ``"trio"``: the loop of the client's thread.
        backend_options: passed to `anyio.run()` (e.g. ``{"use_uvloop": True}``).
        options: the options of [`wsclient.connect()`][wsclient.connect] (documented on
            [`Client`][wsclient.Client]), as they are.
    """
    return SyncClient(url, backend=backend, backend_options=backend_options, **options)
