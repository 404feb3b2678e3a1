"""The Client: every layer behind one object, ``async with wsclient.connect(url)``.

It composes a [`ReconnectingTransport`][wsclient.ReconnectingTransport] (backoff, heartbeat,
outbound queue) with the correlator, the channel registry and the sessions.
Inbound messages are dispatched in the connection's reader task, through the
dialect, with no hop: replies wake their requests, deliveries fill their
subscribers' buffers, the rest goes to ``async for message in client``.

After every reconnect one ``on_connect`` hook re-authenticates (and waits
for the answer), subscribes every live channel again, and resends the
requests whose policy is ``resend``; only then does the queue flush.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import anyio

from ._backoff import Backoff
from ._buffer import BufferPolicy, BufferStatistics, InboundBuffer
from ._channels import ChannelRegistry, ChannelStatistics
from ._checks import check_timeout, short_repr, wire_repr
from ._codec import Codec, JsonCodec
from ._correlator import IN_FLIGHT_POLICIES, Correlator, InFlight, RequestStatistics
from ._dialect import DefaultDialect, Dialect, Inbound, Route
from ._endpoint import Endpoint
from ._exceptions import ConnectionLost, ProtocolError, QueueFull, RemoteError, WSClientError
from ._heartbeat import Heartbeat
from ._mux import Mux, Session
from ._outbound import QueuePolicy
from ._reconnect import (
    ConnectionState,
    ConnectionStatistics,
    ReconnectingTransport,
    ShouldRetry,
    StateCallback,
    StateChange,
    WebSocketFactory,
)
from ._redact import redact_error, redact_url, secret_strings
from ._relay_client import RelayFactory, is_relay_url
from ._transport import HeadersLike, Transport, _parse_url

__all__ = ["Client", "ClientStatistics", "connect"]

logger = logging.getLogger("wsclient.client")

ErrorCallback = Callable[[BaseException], None]
MessageCallback = Callable[[Any], None]


@dataclass(frozen=True)
class ClientStatistics:
    """A snapshot of a [`Client`][wsclient.Client], layer by layer."""

    state: ConnectionState
    """The connection's state."""
    connection: ConnectionStatistics
    """The connection: attempts, reconnects, heartbeat, last RTT, the outbound queue."""
    requests: RequestStatistics
    """The requests: pending, timeouts, remote errors, lost, resent."""
    channels: ChannelStatistics
    """The channels: subscriptions by state, deliveries, drops."""
    messages: BufferStatistics
    """The buffer of the client's own unhandled messages."""
    sessions: int
    """Sessions open now."""
    unknown_origin: int
    """Messages addressed (``from``) to no open session: given to the client."""
    invalid_messages: int
    """Inbound messages that could not be decoded or routed."""
    errors: int
    """Errors reported to ``on_error``."""


class Client(Endpoint):
    """A WebSocket client: requests, channels and sessions over one resilient connection.

    Make it with [`connect()`][wsclient.connect] (or ``Client(url, ...)``) and use it as an
    async context manager; leaving the context (or [`aclose()`][wsclient.Client.aclose]) flushes
    the queue, closes the connection and fails whatever still waits.

    Args:
        url: a ``ws://`` or ``wss://`` URL, or an async callable returning a
            connected [`Transport`][wsclient.Transport] (tests use a
            [`MemoryTransport`][wsclient.testing.MemoryTransport]); the transport options
            below (``headers`` to ``open_timeout``) then belong to the callable.
        dialect: the shape of the server's messages (default
            [`DefaultDialect`][wsclient.DefaultDialect]).
        codec: how messages are serialised (default [`JsonCodec`][wsclient.JsonCodec]).
        backoff: delays between reconnection attempts (default ``Backoff()``).
        reconnect: False never reconnects: the client closes when the
            connection drops.
        heartbeat: how dead connections are detected (default ``Heartbeat()``);
            None disables it. ``Heartbeat(app_level=True)`` sends the dialect's ping.
        queue: bounds and overflow policy of the outbound queue.
        request_timeout: seconds a request waits for its reply (default 10,
            as in the seeds); also bounds re-authentication and
            [`Subscription.confirmed()`][wsclient.Subscription.confirmed].
        in_flight: ``"fail"`` (default) or ``"resend"``: requests in flight
            when the connection drops (overridable per request).
        headers: extra handshake headers (or a callable returning them, called
            before every attempt: a refreshed token).
        subprotocols: subprotocols to offer.
        ssl: TLS context for ``wss://``.
        max_size: largest inbound message in bytes (default 1 MiB; None: no limit).
        compression: ``"deflate"`` (default) or None.
        open_timeout: seconds to open a connection.
        close_timeout: seconds [`aclose()`][wsclient.Client.aclose] may spend flushing and closing.
        retry_first_connect: retry the first connection too, instead of
            raising its error from ``async with``.
        should_retry: overrides the retry decision (see ReconnectingTransport).
        subscriber_buffer: each subscriber's buffer and its overflow policy.
        message_buffer: the buffer of unhandled messages, the client's and
            each session's.
        hook_timeout: seconds the reconnect steps (re-authenticate,
            resubscribe, resend) may take together.
        name: how logs and ``repr`` name the client (default: the URL without secrets).
        allow_insecure_credentials: send credentials (user info in the URL, an
            ``Authorization``, ``Proxy-Authorization`` or ``Cookie`` header,
            [`authenticate()`][wsclient.Client.authenticate]) over ``ws://`` to a host
            other than this machine, in clear text. By default that raises
            [`InsecureCredentials`][wsclient.InsecureCredentials].
        relay: share one upstream connection with the other processes of this
            user through a relay (``wsclient relay``) on this Unix socket path;
            True for the default path. A ``ws+relay://`` or ``wss+relay://``
            URL means the same for its ``ws://`` or ``wss://`` URL. The relay is
            started if none answers. The default dialect only; ``ssl`` cannot be set.
    """

    def __init__(
        self,
        url: str | Callable[[], Awaitable[Transport]],
        *,
        dialect: Dialect | None = None,
        codec: Codec | None = None,
        backoff: Backoff | None = None,
        reconnect: bool = True,
        heartbeat: Heartbeat | None = Heartbeat(),  # noqa: B008 - frozen, so sharing is safe
        queue: QueuePolicy = QueuePolicy(),  # noqa: B008
        request_timeout: float = 10.0,
        in_flight: InFlight = "fail",
        headers: HeadersLike | Callable[[], Any] | None = None,
        subprotocols: list[str] | None = None,
        ssl: Any = None,
        max_size: int | None = 2**20,
        compression: Literal["deflate"] | None = "deflate",
        open_timeout: float | None = 10.0,
        close_timeout: float = 10.0,
        retry_first_connect: bool = False,
        should_retry: ShouldRetry | None = None,
        subscriber_buffer: BufferPolicy = BufferPolicy(),  # noqa: B008
        message_buffer: BufferPolicy = BufferPolicy(),  # noqa: B008
        hook_timeout: float = 30.0,
        name: str | None = None,
        allow_insecure_credentials: bool = False,
        relay: str | os.PathLike[str] | bool | None = None,
    ) -> None:
        if not reconnect and backoff is not None:
            raise ValueError("backoff= makes no sense with reconnect=False")
        self._request_timeout = check_timeout(request_timeout, "request_timeout")
        if in_flight not in IN_FLIGHT_POLICIES:
            raise ValueError(f"in_flight must be one of {IN_FLIGHT_POLICIES}, got {in_flight!r}")
        for option, policy in (
            ("subscriber_buffer", subscriber_buffer),
            ("message_buffer", message_buffer),
        ):
            if not isinstance(policy, BufferPolicy):
                raise TypeError(
                    f"{option} must be a wsclient.BufferPolicy, not {type(policy).__name__}"
                )
        self.dialect: Dialect = dialect if dialect is not None else DefaultDialect()
        self.codec: Codec = codec if codec is not None else JsonCodec()
        if not isinstance(self.dialect, Dialect):
            raise TypeError(f"dialect must be a wsclient.Dialect, not {type(dialect).__name__}")
        if not isinstance(self.codec, Codec):
            raise TypeError(f"codec must be a wsclient.Codec, not {type(codec).__name__}")
        app_ping = None
        if heartbeat is not None and heartbeat.app_level:
            ping = self.dialect.ping()
            if ping is None:
                raise ValueError(
                    "Heartbeat(app_level=True) needs a dialect with a ping;"
                    f" {self.dialect!r} has none"
                )
            app_ping = self._encode(ping)

        factory: Callable[[], Awaitable[Transport]]
        relayed = relay is not None and relay is not False
        if isinstance(url, str) and (relayed or is_relay_url(url)):
            # The connection goes to the relay, which holds the upstream one.
            if not isinstance(self.dialect, DefaultDialect):
                raise ValueError("relay= works with the default dialect only")
            factory = RelayFactory(
                url,
                relay=relay,
                headers=headers,
                subprotocols=subprotocols,
                ssl=ssl,
                max_size=max_size,
                compression=compression,
                open_timeout=open_timeout,
                close_timeout=close_timeout,
                allow_insecure_credentials=allow_insecure_credentials,
            )
            display = factory.display_url
        elif isinstance(url, str):
            _parse_url(url)  # an invalid URL fails here, not on the first attempt
            factory = WebSocketFactory(
                url,
                headers=headers,
                subprotocols=subprotocols,
                ssl=ssl,
                max_size=max_size,
                compression=compression,
                open_timeout=open_timeout,
                close_timeout=close_timeout,
                allow_insecure_credentials=allow_insecure_credentials,
            )
            display = redact_url(url)
        elif callable(url):
            given = [
                k
                for k, v in (("headers", headers), ("subprotocols", subprotocols), ("ssl", ssl))
                if v is not None
            ]
            if relayed:
                given.append("relay")
            if given:
                raise ValueError(
                    f"{', '.join(given)} given with a transport factory: the factory opens"
                    " the connection, so set them there"
                )
            factory = url
            display = name or "client"
        else:
            raise TypeError(f"url must be a str or a transport factory, not {type(url).__name__}")
        self._name = name or display
        self._in_flight: InFlight = in_flight
        self._client = self
        self._origin = None
        self._messages: InboundBuffer[Any] = InboundBuffer(message_buffer, name=self._name)
        self._correlator = Correlator(name=self._name)
        self._channels = ChannelRegistry(self, policy=subscriber_buffer, name=self._name)
        self._mux = Mux(self, message_buffer)
        self._rt = ReconnectingTransport(
            factory,
            backoff=(backoff or Backoff()) if reconnect else None,
            should_retry=should_retry,
            heartbeat=heartbeat,
            app_ping=app_ping,
            queue=queue,
            retry_first_connect=retry_first_connect,
            message_handler=self._on_raw,
            hook_timeout=hook_timeout,
            close_timeout=close_timeout,
            name=self._name,
        )
        self._rt.on_connect(self._on_connect)
        self._rt.on_drop(self._on_drop)
        self._rt.on_state_change(self._on_state_change)
        self._correlator.spawn = self._rt._spawn  # its request timer runs in our task group
        self._connection: Transport | None = None  # served now: hooks running, or open
        self._credentials: Any = None
        # What authenticate() checks its credentials against; a factory of ours only.
        self._ws_factory = factory if isinstance(factory, WebSocketFactory) else None
        self._authenticated = False
        # authenticate() calls not answered yet: their request may wait in the
        # outbound queue for the next connection, whose URL is checked then.
        self._authenticating = 0
        self._state_callbacks: list[StateCallback] = []
        self._error_callbacks: list[ErrorCallback] = []
        self._message_callbacks: list[MessageCallback] = []
        self._invalid = 0
        self._errors = 0

    # Life cycle

    async def __aenter__(self) -> Client:
        await self._rt.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._rt.__aexit__(exc_type, exc, tb)

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Flush the queue, close the connection, fail what still waits. Idempotent."""
        await self._rt.aclose(code, reason)

    # Observing

    @property
    def name(self) -> str:
        """How logs and ``repr`` name this client (its URL, without secrets)."""
        return self._name

    @property
    def transport(self) -> ReconnectingTransport:
        """The reconnecting transport underneath (for its statistics and hooks)."""
        return self._rt

    @property
    def request_timeout(self) -> float:
        """The default seconds a request waits for its reply."""
        return self._request_timeout

    def on_state(self, callback: StateCallback) -> StateCallback:
        """Call ``callback(change)`` on every connection state change (a decorator too)."""
        self._state_callbacks.append(callback)
        return callback

    def on_error(self, callback: ErrorCallback) -> ErrorCallback:
        """Call ``callback(error)`` for what goes wrong without failing a call.

        Malformed or unroutable inbound messages ([`ProtocolError`][wsclient.ProtocolError]),
        the server's system errors and refused subscriptions
        ([`RemoteError`][wsclient.RemoteError]), and exceptions raised by
        subscription callbacks. (Exceptions of the event callbacks themselves
        are only logged.)
        """
        self._error_callbacks.append(callback)
        return callback

    def on_message(self, callback: MessageCallback) -> MessageCallback:
        """Call ``callback(message)`` with every decoded inbound message, before routing."""
        self._message_callbacks.append(callback)
        return callback

    def remove_callback(self, callback: Callable[..., None]) -> None:
        """Stop calling ``callback`` for any event; no error if it was not registered."""
        for callbacks in (self._state_callbacks, self._error_callbacks, self._message_callbacks):
            while callback in callbacks:
                callbacks.remove(callback)

    def statistics(self) -> ClientStatistics:
        """A snapshot of every layer's counters."""
        return ClientStatistics(
            state=self._rt.state,
            connection=self._rt.statistics(),
            requests=self._correlator.statistics(),
            channels=self._channels.statistics(),
            messages=self._messages.statistics(),
            sessions=len(self._mux),
            unknown_origin=self._mux.unknown_origin,
            invalid_messages=self._invalid,
            errors=self._errors,
        )

    def __repr__(self) -> str:
        return (
            f"<Client {self._name} {self._rt.state.name} pending={len(self._correlator)}"
            f" channels={self._channels.statistics().channels} sessions={len(self._mux)}>"
        )

    # The API only a client has

    async def authenticate(
        self,
        credentials: Any,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a high-level convenience
    ) -> Any:
        """Authenticate the connection; returns the reply's payload.

        Once accepted, the credentials are sent again after every reconnect,
        before anything else, and the connection opens only when the server
        accepts them. If it then refuses, the client gives up
        ([`ReconnectFailed`][wsclient.ReconnectFailed] caused by the
        [`RemoteError`][wsclient.RemoteError]). Credentials never appear in logs or reprs,
        and the strings in them are masked (``***``) in the server's error.

        Raises [`InsecureCredentials`][wsclient.InsecureCredentials], before sending
        anything, if the client's URL is ``ws://`` to a host other than this machine
        (unless ``allow_insecure_credentials``).
        """
        if self._ws_factory is not None:
            self._ws_factory._check_credentials("the credentials given to authenticate()")
        kind, payload = self.dialect.authenticate(credentials)
        self._authenticating += 1
        try:
            result = await self._request(kind, payload, timeout, "fail", None)
        except RemoteError as exc:
            # A server may quote what it refused ("bad token abc"): not in our errors or logs.
            redact_error(exc, secret_strings(credentials))
            raise
        finally:
            self._authenticating -= 1
        self._credentials = credentials
        self._authenticated = True
        return result

    def session(self, session_id: str | None = None) -> Session:
        """A new [`Session`][wsclient.Session] on this client's connection (id: a fresh UUID)."""
        if self._rt.state is ConnectionState.CLOSED:
            raise self._closed_reason()
        return self._mux.new(session_id)

    async def ping(self) -> float:
        """Ping the server (protocol level) and return the round trip in seconds."""
        return await self._rt.ping()

    # Sending: frames go through the codec, then the reconnecting transport.

    def _encode(self, frame: Any) -> str | bytes:
        return self.codec.encode(frame)

    async def _send_frame(self, frame: Any) -> bool:
        data = self.codec.encode(frame)
        if self._rt._send_now(data, self.codec.text) is not None:
            return True  # the usual case: taken by the open connection, nothing to wait for
        return await self._rt.send(data, text=self.codec.text)

    async def _send_frame_quietly(self, frame: Any) -> None:
        try:
            await self._send_frame(frame)
        except WSClientError as exc:
            logger.debug("%s: could not send %s: %s", self._name, type(frame).__name__, exc)

    # What the channel registry needs (ChannelHost).

    async def _submit_frame(
        self, frame: Any, on_accepted: Callable[[int], None] | None = None
    ) -> int | None:
        return await self._rt.submit(
            self._encode(frame), text=self.codec.text, on_accepted=on_accepted
        )

    def _send_frame_nowait(self, frame: Any) -> int | None:
        return self._rt.submit_nowait(self._encode(frame), text=self.codec.text)

    def _subscribe_frame(self, channel: str) -> Any:
        return self.dialect.subscribe(channel)

    def _unsubscribe_frame(self, channel: str) -> Any:
        return self.dialect.unsubscribe(channel)

    def _current_connection(self) -> Transport | None:
        return self._connection

    def _left_queue(self, number: int) -> bool:
        return self._rt.left_queue(number)

    @property
    def _confirms_subscriptions(self) -> bool:
        return self.dialect.confirms_subscriptions

    async def _request(
        self,
        kind: str,
        payload: Any,
        timeout: float | None,  # noqa: ASYNC109 - request(timeout=) passes through
        in_flight: InFlight | None,
        origin: Any,
    ) -> Any:
        limit = self._request_timeout if timeout is None else check_timeout(timeout)
        policy = self._in_flight if in_flight is None else in_flight
        if policy not in IN_FLIGHT_POLICIES:
            raise ValueError(f"in_flight must be one of {IN_FLIGHT_POLICIES}, got {policy!r}")
        if self._rt.state is _CLOSED:
            raise self._closed_reason()
        correlator = self._correlator
        waiter = correlator.open(origin=origin, policy=policy)
        try:
            data = self._encode(self.dialect.request(waiter.id, kind, payload, origin=origin))
            if policy == "resend":
                waiter.payload = data
            # The usual case: the open connection takes the request at once, and
            # the correlator's timer bounds the wait for its reply (no cancel scope).
            number = self._rt._send_now(data, self.codec.text)
            if number is not None:
                waiter.number = number
                if correlator.arm(waiter, limit):
                    return await correlator.reply(waiter)
                with anyio.move_on_after(limit):
                    return await waiter.wait()
                if waiter.done:  # the reply came in the same instant as the deadline
                    return await waiter.wait()
                raise correlator.timed_out(waiter, limit)

            def numbered(number: int) -> None:
                waiter.number = number

            # One scope for the whole call: waiting for room in the queue counts too.
            with anyio.move_on_after(limit):
                try:
                    with anyio.CancelScope() as waiter.scope:
                        number = await self._rt.submit(
                            data, text=self.codec.text, on_accepted=numbered
                        )
                except QueueFull as exc:  # reject, or block with put_nowait semantics
                    raise correlator.refused(waiter, exc) from None
                except WSClientError:
                    if waiter.error is not None:  # the client closed while we waited for room
                        raise waiter.error.with_traceback(None) from None
                    raise
                waiter.scope = None
                if waiter.error is not None and waiter.number is None:
                    raise waiter.error.with_traceback(None)  # failed while waiting for room
                if number is None:
                    error = QueueFull(
                        f"the outbound queue dropped request {waiter.id} (drop_newest)"
                    )
                    raise correlator.refused(waiter, error)
                return await waiter.wait()
            if waiter.done:  # the reply came in the same instant as the deadline
                return await waiter.wait()
            raise correlator.timed_out(waiter, limit)
        finally:
            correlator.discard(waiter)

    # The reconnect hook: re-authenticate, resubscribe, resend; then the queue flushes.

    async def _on_connect(self, transport: Transport) -> None:
        self._connection = transport

        async def send(frame: Any) -> None:
            await transport.send(self._encode(frame), text=self.codec.text)

        if (self._authenticated or self._authenticating) and self._ws_factory is not None:
            # A URL from a callable may have changed, and the queue, which flushes
            # after this hook, may hold an authenticate() request checked against the old one.
            self._ws_factory._check_credentials("the credentials given to authenticate()")
        if self._authenticated:
            kind, payload = self.dialect.authenticate(self._credentials)
            waiter = self._correlator.open(policy="fail")
            try:
                waiter.transport = transport
                await send(self.dialect.request(waiter.id, kind, payload))
                await self._correlator.wait(waiter, self._request_timeout)
            except RemoteError as exc:
                redact_error(exc, secret_strings(self._credentials))
                raise
            finally:
                self._correlator.discard(waiter)
        await self._channels.resubscribe(transport, send)
        for waiter in self._correlator.to_resend():
            waiter.transport = transport
            await transport.send(waiter.payload, text=self.codec.text)  # type: ignore[arg-type]

    def _on_drop(self, number: int) -> None:
        self._correlator.dropped(number)
        self._channels.dropped(number)

    def _on_state_change(self, change: StateChange) -> None:
        if change.state is ConnectionState.RECONNECTING:
            self._connection = None
            self._correlator.connection_lost(change.error, self._rt.left_queue)
            self._channels.connection_lost()
        elif change.state is ConnectionState.CLOSED:
            self._connection = None
            self._closed(change.error)
        for callback in list(self._state_callbacks):
            try:
                callback(change)
            except Exception:
                logger.exception("%s: state callback raised", self._name)
        self._mux.state_changed(change)
        if change.state is ConnectionState.CLOSED:
            self._mux.close(change.error)

    def _closed(self, failure: BaseException | None) -> None:
        """Nothing waits past CLOSED: requests fail, subscriptions and streams end."""
        lost = ConnectionLost(f"{self._name} closed with the request pending")
        lost.__cause__ = failure
        self._correlator.close(lost)
        self._channels.close(failure)
        self._messages.close(failure)

    # Inbound: in the reader task, never blocking.

    def _on_raw(self, raw: str | bytes) -> None:
        try:
            message = self.codec.decode(raw)
        except Exception as exc:
            error = exc if isinstance(exc, ProtocolError) else ProtocolError(f"undecodable: {exc}")
            self._invalid += 1
            self._report(error)
            self._mux.route(raw, None, self._messages)
            return
        for callback in self._message_callbacks:
            try:
                callback(message)
            except Exception:
                logger.exception("%s: on_message callback raised", self._name)
        try:
            inbound = self.dialect.route(message)
        except Exception as exc:  # a custom dialect's bug must not kill the reader
            logger.exception("%s: %r.route() raised", self._name, self.dialect)
            self._invalid += 1
            self._report(ProtocolError(f"the dialect could not route a message: {exc!r}"))
            self._mux.route(message, None, self._messages)
            return
        self._dispatch(inbound)

    def _dispatch(self, inbound: Inbound) -> None:
        route = inbound.route
        if route is _OTHER:  # the usual routes first, compared without enum lookups
            self._mux.route(inbound.message, inbound.origin, self._messages)
            return
        if route is _REPLY:
            if self._correlator.resolve(inbound):
                return
            self._report(
                ProtocolError(f"a reply to no pending request (id {_short(inbound.request_id)})")
            )
        elif route is _DELIVERY:
            assert inbound.channel is not None
            if self._channels.deliver(inbound.channel, inbound.result, inbound.delivery_id):
                return
        elif route is Route.CONFIRM:
            assert inbound.channel is not None
            known = self._channels.confirm(inbound.channel, inbound.error)
            if not known and inbound.error is not None:
                # A refusal of a channel we do not hold (any more): still the server's error.
                self._report(inbound.error)
            return
        elif route is Route.HEARTBEAT or route is Route.ACK:
            if inbound.error is not None:  # a refused unsubscribe, a ping the server rejects
                self._report(inbound.error)
            return
        elif route is Route.BATCH:
            for item in inbound.items:
                try:
                    self._dispatch(item)
                except Exception as exc:  # one bad item must not cost the others
                    logger.exception("%s: dispatching a batch item failed", self._name)
                    self._invalid += 1
                    self._report(ProtocolError(f"a batch item could not be dispatched: {exc!r}"))
            return
        elif route is Route.SYSTEM:
            if inbound.error is not None:
                self._report(inbound.error)
        elif route is Route.INVALID:
            self._invalid += 1
            self._report(ProtocolError(f"malformed message: {inbound.problem}"))
        self._mux.route(inbound.message, inbound.origin, self._messages)

    def _report(self, error: BaseException) -> None:
        self._errors += 1
        logger.debug("%s: %s", self._name, error)
        for callback in list(self._error_callbacks):
            try:
                callback(error)
            except Exception:
                logger.exception("%s: on_error callback raised", self._name)


def connect(url: str | Callable[[], Awaitable[Transport]], **options: Any) -> Client:
    """A [`Client`][wsclient.Client] for ``url``, to use as
    ``async with wsclient.connect(url) as client``.

    Options are keyword-only and documented on [`Client`][wsclient.Client]. The
    connection opens on entering the context; an invalid URL or option
    raises here. ``connect(url, relay=path)`` (or a ``ws+relay://`` URL) shares
    one upstream connection with the other processes of this user through a
    relay on this machine, started on demand.
    """
    return Client(url, **options)


def _short(value: Any, limit: int = 40) -> str:
    # Bounded: a request id from the wire may be nested 1000 deep, past repr()'s recursion.
    return short_repr(value, _short_repr, limit)


_short_repr = wire_repr(40)

# Python 3.11 looks enum members up slowly (about 0.1 µs each): the per-message paths use these.
_REPLY, _DELIVERY, _OTHER = Route.REPLY, Route.DELIVERY, Route.OTHER
_CLOSED = ConnectionState.CLOSED
