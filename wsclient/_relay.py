"""The relay: one upstream connection per URL, shared by the processes of this machine.

It is the SharedWorker of seeds/000 for processes. ``wsclient relay`` listens
on a Unix socket (mode 0600: this user only); each local process connects
with an ordinary [`Client`][wsclient.Client] (``connect(url, relay=path)`` or a
``ws+relay://`` URL) whose handshake names the upstream URL and its handshake
options (see ``wsclient._relay_client``). The relay holds one upstream
``Client`` per distinct (URL, options) and gives each local connection its own
[`Session`][wsclient.Session] on it:

- requests are sent as the session's (replies come back by request id, under
  the local request's own id);
- ``subscribe`` opens a subscription of the session: locals on one channel
  share one upstream subscription (the client's channel registry counts
  them), and each local gets its confirmation once the server confirmed;
- deliveries go to each local subscribed; messages addressed to a session
  (``from``) to its local, with the local's own ``from`` restored; unaddressed
  messages to every local;
- ``publish``, events and free-form messages go upstream, marked with the
  session's id.

Connection state is shared by mirroring it: a local is connected exactly while
its upstream is open. When the upstream drops, the relay closes its locals
with code 1012; they go RECONNECTING (``on_state``, ``state`` and
``wait_state()`` say so, as for a direct connection), and the relay holds
their next handshakes until the upstream is open again. Their queues,
``in_flight`` policies and re-subscriptions work as usual.

Each local has a bounded outgoing queue: one that falls behind is closed with
code 1013, so it can hold up neither the upstream nor the other locals. The
relay stops by itself once no local has been connected for ``idle_timeout``
seconds, and closes an upstream no local has used for as long.

The relay speaks the default dialect with its locals. The server side of each
local WebSocket is websockets' Sans-I/O ``ServerProtocol`` over an anyio Unix
stream, so the relay runs on asyncio and trio alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import functools
import itertools
import json
import logging
import math
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import orjson
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import CONNECTING, OPEN
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from ._backoff import Backoff
from ._channels import Subscription, SubscriptionState
from ._checks import check_timeout, cut, is_count
from ._client import Client, ClientStatistics
from ._dialect import DefaultDialect, Inbound
from ._exceptions import (
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    InvalidState,
    RemoteError,
    WSClientError,
)
from ._heartbeat import Heartbeat
from ._mux import Session
from ._reconnect import ConnectionState, StateChange
from ._redact import redact_url
from ._relay_client import (
    MAX_SPEC_CHUNKS,
    SPEC_HEADER,
    SPEC_VERSION,
    check_socket_path,
    lock_file,
    relay_answers,
)

__all__ = ["Relay", "RelayState", "RelayStatistics", "UpstreamStatistics"]

logger = logging.getLogger("wsclient.relay")
# websockets' protocol logs "connection open" at INFO, and its debug log would
# print handshake headers, which carry the upstream's credentials.
_protocol_logger = logging.getLogger("wsclient.relay.protocol")
_protocol_logger.setLevel(logging.WARNING)

ORIGIN_SEPARATOR = "/"
"""Joins a relay session's id and a local session's id in ``from``: ``S/X``."""

CLOSE_UPSTREAM_LOST = 1012  # service restart: retried by clients
CLOSE_SLOW_CONSUMER = 1013  # try again later
CLOSE_UPSTREAM_FAILED = 1014  # bad gateway
CLOSE_GOING_AWAY = 1001

_TEXT, _BINARY, _CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
_STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)
_READ_CHUNK = 64 * 1024
# The keys of a request as a client frames it (DefaultDialect.request): a
# message with others is free-form, passed on whole, not answered by id.
_REQUEST_KEYS = frozenset({"id", "type", "timestamp", "payload", "from"})
_WRITE_BATCH = 64  # messages written to a local in one go, at most


class RelayState(enum.Enum):
    """Where a ``Relay`` is in its life."""

    STARTING = "starting"
    """Made, or taking its lock and socket."""
    SERVING = "serving"
    """Listening: locals may connect."""
    STOPPING = "stopping"
    """No longer listening; closing its locals and upstreams."""
    STOPPED = "stopped"
    """Final."""


@dataclass(frozen=True)
class UpstreamStatistics:
    """One upstream connection of a relay."""

    url: str
    """The upstream URL, without secrets."""
    state: ConnectionState
    """Its connection's state."""
    locals: int
    """Local connections on it now."""
    client: ClientStatistics
    """The upstream client's own statistics."""


@dataclass(frozen=True)
class RelayStatistics:
    """Counters of a ``Relay``."""

    state: RelayState
    """Where the relay is in its life."""
    locals_open: int
    """Local connections now, handshakes included."""
    locals_total: int
    """Local connections accepted on an upstream since the relay started."""
    upstreams: tuple[UpstreamStatistics, ...]
    """The upstream connections now."""
    upstreams_opened: int
    """Upstream clients made since the relay started."""
    handshakes_refused: int
    """Local handshakes answered with an HTTP error (invalid, or the upstream is not open)."""
    frames_from_locals: int
    """Messages received from locals."""
    frames_to_locals: int
    """Messages written to locals."""
    requests: int
    """Requests forwarded upstream."""
    deliveries: int
    """Channel deliveries queued for locals."""
    slow_consumer_disconnects: int
    """Locals closed because their outgoing queue overflowed."""


class _Refused(Exception):
    """A local handshake to answer with an HTTP error."""

    def __init__(self, status: int, text: str, retry_after: int | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Spec:
    """What a local asked for: the upstream and its handshake options."""

    url: str
    headers: tuple[tuple[str, str], ...]
    subprotocols: tuple[str, ...]
    compression: str | None
    max_size: int | None
    open_timeout: float | None
    allow_insecure_credentials: bool

    @property
    def key(self) -> tuple[Any, ...]:
        """Locals share an upstream if they asked for the same handshake, credentials included."""
        return (
            self.url,
            self.headers,
            self.subprotocols,
            self.compression,
            self.max_size,
            self.allow_insecure_credentials,
        )


def _read_spec(headers: Headers) -> _Spec:
    """The upstream spec from a local's handshake headers; ``_Refused`` if absent or invalid."""
    chunks = []
    for i in range(MAX_SPEC_CHUNKS + 1):
        values = headers.get_all(f"{SPEC_HEADER}{i}")
        if not values:
            break
        chunks.append(values[0])
    if not chunks:
        raise _Refused(
            400,
            "not a relay handshake: no upstream named (connect with"
            " wsclient.connect(url, relay=path) or a ws+relay:// URL)",
        )
    try:
        spec = json.loads("".join(chunks))
    except ValueError:
        raise _Refused(400, "invalid relay handshake: the upstream spec is not JSON") from None
    if not isinstance(spec, dict) or spec.get("v") != SPEC_VERSION:
        raise _Refused(400, f"invalid relay handshake: expected spec version {SPEC_VERSION}")
    url = spec.get("url")
    raw_headers = spec.get("headers")
    subprotocols = spec.get("subprotocols")
    compression = spec.get("compression")
    max_size = spec.get("max_size")
    open_timeout = spec.get("open_timeout")
    allow = spec.get("allow_insecure_credentials")
    problems = []
    if not isinstance(url, str):
        problems.append("url")
    if not isinstance(raw_headers, list) or not all(
        isinstance(h, list) and len(h) == 2 and all(isinstance(p, str) for p in h)
        for h in raw_headers
    ):
        problems.append("headers")
    if not isinstance(subprotocols, list) or not all(isinstance(s, str) for s in subprotocols):
        problems.append("subprotocols")
    if compression not in ("deflate", None):
        problems.append("compression")
    if max_size is not None and (not is_count(max_size) or max_size < 1):
        problems.append("max_size")
    if open_timeout is not None and not (
        isinstance(open_timeout, (int, float))
        and not isinstance(open_timeout, bool)
        and math.isfinite(open_timeout)
        and open_timeout > 0
    ):
        problems.append("open_timeout")
    if not isinstance(allow, bool):
        problems.append("allow_insecure_credentials")
    if problems:
        raise _Refused(400, f"invalid relay handshake: bad {', '.join(problems)} in the spec")
    assert isinstance(url, str)
    assert isinstance(raw_headers, list)
    assert isinstance(subprotocols, list)
    return _Spec(
        url=url,
        headers=tuple((name, value) for name, value in raw_headers),
        subprotocols=tuple(subprotocols),
        compression=compression,
        max_size=max_size,
        open_timeout=float(open_timeout) if open_timeout is not None else None,
        allow_insecure_credentials=bool(allow),
    )


class _RelayDialect(DefaultDialect):
    """The default dialect, with ``from`` values of locals' own sessions (``S/X``) routed
    to the relay session ``S`` that owns them."""

    def route(self, message: Any) -> Inbound:
        inbound = super().route(message)
        origin = inbound.origin
        if isinstance(origin, str) and ORIGIN_SEPARATOR in origin:
            return dataclasses.replace(inbound, origin=origin.partition(ORIGIN_SEPARATOR)[0])
        return inbound


def _close_reason(text: str) -> str:
    """``text`` cut to the 123 bytes a close frame's reason may hold (RFC 6455 5.5)."""
    data = text.encode()
    if len(data) <= 123:
        return text
    return data[:120].decode("utf-8", "ignore") + "..."


class _Upstream:
    """One upstream client and the locals on it."""

    def __init__(self, relay: Relay, spec: _Spec) -> None:
        self.relay = relay
        self.spec = spec
        self.url = redact_url(spec.url)
        self.client = Client(
            spec.url,
            dialect=_RelayDialect(),
            headers=list(spec.headers) or None,
            subprotocols=list(spec.subprotocols) or None,
            compression="deflate" if spec.compression == "deflate" else None,
            max_size=spec.max_size,
            open_timeout=spec.open_timeout,
            close_timeout=relay._close_timeout,
            backoff=relay._backoff,
            heartbeat=relay._heartbeat,
            allow_insecure_credentials=spec.allow_insecure_credentials,
            name=self.url,
        )
        self.client.on_state(self._state_changed)
        self.locals: set[_Local] = set()
        self.waiting = 0  # handshakes waiting for it to open
        self.stopping = False
        self._wake = anyio.Event()

    def poke(self) -> None:
        self._wake.set()

    async def wait_poke(self) -> None:
        await self._wake.wait()
        self._wake = anyio.Event()

    @property
    def usable(self) -> bool:
        """Whether new locals may join it (it is not closing down)."""
        return not self.stopping and self.client.state in (
            ConnectionState.CONNECTING,
            ConnectionState.OPEN,
            ConnectionState.RECONNECTING,
        )

    def _state_changed(self, change: StateChange) -> None:
        state = change.state
        if state is ConnectionState.OPEN:
            logger.info("upstream %s open", self.url)
            return
        if state is ConnectionState.RECONNECTING:
            if change.previous is ConnectionState.OPEN:
                logger.info("upstream %s lost (%s); reconnecting", self.url, change.error)
            code = CLOSE_UPSTREAM_LOST
            reason = f"the relay's upstream connection was lost: {change.error}"
        elif state is ConnectionState.CLOSED and change.error is not None:
            logger.info("upstream %s failed: %s", self.url, change.error)
            code = CLOSE_UPSTREAM_FAILED
            reason = f"the relay's upstream connection failed: {change.error}"
        else:
            code, reason = CLOSE_GOING_AWAY, "the relay closed its upstream connection"
        for local in list(self.locals):
            local.kick(code, reason)
        if state is ConnectionState.CLOSED:
            self.relay._forget(self)
        self.poke()

    def statistics(self) -> UpstreamStatistics:
        return UpstreamStatistics(
            url=self.url,
            state=self.client.state,
            locals=len(self.locals),
            client=self.client.statistics(),
        )

    def __repr__(self) -> str:
        return f"<upstream {self.url} {self.client.state.name} locals={len(self.locals)}>"


class _Local:
    """One local connection: the server side of its WebSocket, and its session upstream."""

    def __init__(self, relay: Relay, stream: anyio.abc.ByteStream, number: int) -> None:
        self.relay = relay
        self.stream = stream
        self.name = f"local {number}"
        self.protocol = ServerProtocol(max_size=relay._max_message_size, logger=_protocol_logger)
        self.protocol.debug = False  # its debug log prints handshake headers: credentials
        self.upstream: _Upstream | None = None
        self.session: Session | None = None
        self.subscriptions: dict[str, Subscription] = {}
        send, receive = anyio.create_memory_object_stream[tuple[bytes, bool]](
            relay._max_queued_messages
        )
        self._outbox = send
        self._outbox_reader = receive
        self._write_lock = anyio.Lock()
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self.closing: tuple[int, str] | None = None
        # The writer's scope: kick() gives it a deadline, for a local that reads nothing.
        self._write_scope = anyio.CancelScope()
        self._done_reading = anyio.Event()
        self._tasks: anyio.abc.TaskGroup | None = None

    # Writing: protocol output is taken and written under one lock, so it keeps its order.

    async def _flush(self) -> None:
        async with self._write_lock:
            pending: list[bytes] = []
            for chunk in self.protocol.data_to_send():
                if chunk:
                    pending.append(chunk)
                    continue
                # The protocol closes its side (after a close frame, or a refusal).
                if pending:
                    await self.stream.send(b"".join(pending))
                    pending = []
                with contextlib.suppress(*_STREAM_ERRORS):
                    await self.stream.send_eof()
            if pending:
                await self.stream.send(b"".join(pending) if len(pending) > 1 else pending[0])

    def enqueue(self, data: bytes, text: bool = True) -> bool:
        """Queue a message for the local without waiting; a full queue closes it (1013)."""
        if self.closing is not None:
            return False
        try:
            self._outbox.send_nowait((data, text))
        except anyio.WouldBlock:
            self.relay._slow_consumers += 1
            logger.warning("%s is a slow consumer: closing it", self.name)
            self.kick(
                CLOSE_SLOW_CONSUMER,
                f"slow consumer: more than {self.relay._max_queued_messages}"
                " messages waited for it",
            )
            return False
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        return True

    def send_json(self, message: Any) -> None:
        self.enqueue(orjson.dumps(message))

    def notify_error(self, text: str, channel: str | None = None) -> None:
        """Tell the local about a problem as the server would: a system error notice."""
        data: dict[str, Any] = {"type": "error", "message": cut(text, 500)}
        if channel is not None:
            data["channel"] = channel
        self.send_json({"channel": "system", "data": data})

    def kick(self, code: int, reason: str) -> None:
        """Close the local with ``code`` once what it is being sent now is written
        (within ``close_timeout``, after which it is cut off)."""
        if self.closing is not None:
            return
        self.closing = (code, _close_reason(reason))
        self._outbox.close()  # the writer stops, then sends the close frame
        # A local that stopped reading leaves the writer blocked on a full
        # socket: the write in progress and the closing handshake get
        # close_timeout in all, then the local is cut off.
        self._write_scope.deadline = anyio.current_time() + self.relay._close_timeout

    async def _write_loop(self) -> None:
        protocol = self.protocol
        relay = self.relay
        reader = self._outbox_reader
        with self._write_scope:
            try:
                async for item in reader:
                    # What else waits goes out in the same write: one system call, not one each.
                    written = 0
                    while self.closing is None and protocol.state is OPEN:
                        data, text = item
                        if text:
                            protocol.send_text(data)
                        else:
                            protocol.send_binary(data)
                        written += 1
                        if written == _WRITE_BATCH:
                            break
                        try:
                            item = reader.receive_nowait()
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
                    await self._flush()
                    relay._frames_to_locals += written
                    if self.closing is not None or protocol.state is not OPEN:
                        break
                if self.closing is None:
                    return  # the local is closing: the reader finishes that
                if protocol.state is OPEN:
                    code, reason = self.closing
                    protocol.send_close(code, reason)
                    await self._flush()
                    # The local answers with its close frame; the reader then ends.
                    await self._done_reading.wait()
            except _STREAM_ERRORS:
                pass  # the local is gone
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()

    # Reading

    async def read_request(self) -> Request | None:
        """The handshake request, or None (no valid request in time: answered, or gone)."""
        protocol = self.protocol
        with anyio.move_on_after(self.relay._handshake_timeout):
            while True:
                for event in protocol.events_received():
                    if isinstance(event, Request):
                        return event
                if protocol.handshake_exc is not None or protocol.state is not CONNECTING:
                    with contextlib.suppress(*_STREAM_ERRORS):
                        await self._flush()  # the protocol's own refusal, if it made one
                    return None
                try:
                    data = await self.stream.receive(_READ_CHUNK)
                except _STREAM_ERRORS:
                    return None
                protocol.receive_data(data)
        return None

    async def _read_loop(self) -> None:
        protocol = self.protocol
        try:
            while protocol.state is OPEN:
                try:
                    data = await self.stream.receive(_READ_CHUNK)
                except _STREAM_ERRORS:
                    protocol.receive_eof()
                    break
                protocol.receive_data(data)
                events = protocol.events_received()
                await self._flush()  # pongs, and the answer to a close frame
                for event in events:
                    if isinstance(event, Frame):
                        await self._on_frame(event)
            with contextlib.suppress(*_STREAM_ERRORS):
                await self._flush()
        except _STREAM_ERRORS:
            pass
        finally:
            self._done_reading.set()

    async def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is _TEXT or opcode is _BINARY:
            if frame.fin:
                await self._on_message(bytes(frame.data), opcode is _TEXT)
            else:
                self._fragments = [bytes(frame.data)]
                self._fragment_text = opcode is _TEXT
        elif opcode is _CONT:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data = b"".join(self._fragments)
                self._fragments = []
                await self._on_message(data, self._fragment_text)

    # Forwarding what the local sends

    async def _on_message(self, raw: bytes, text: bool) -> None:
        self.relay._frames_from_locals += 1
        if self.closing is not None:
            return  # it is being closed: what it sends now would race the close
        try:
            await self._forward(raw, text)
        except WSClientError as exc:
            # The upstream queue refused it, the session closed...: the local hears of it.
            if self.closing is None:
                logger.debug("%s: could not forward a message: %s", self.name, exc)
                self.notify_error(f"relay: could not forward the message: {exc}")

    async def _forward(self, raw: bytes, text: bool) -> None:
        session = self.session
        assert session is not None
        assert self.upstream is not None
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            # Not JSON: passed on as it is, text or binary.
            payload: str | bytes = raw.decode("utf-8", "replace") if text else raw
            await self.upstream.client.transport.send(payload)
            return
        if not isinstance(message, dict):
            await session.send(message)
            return
        action = message.get("action")
        channel = message.get("channel")
        if isinstance(action, str) and isinstance(channel, str) and channel:
            if action == "subscribe":
                await self._subscribe(channel)
                return
            if action == "unsubscribe":
                subscription = self.subscriptions.pop(channel, None)
                if subscription is not None:
                    await subscription.aclose()
                return
            if action == "publish" and "data" in message:
                await session.publish(channel, message["data"])
                return
        kind = message.get("type")
        if kind == "ping" and "id" not in message:
            reply: dict[str, Any] = {"type": "pong"}  # the local's app-level heartbeat
            if "from" in message:
                reply["from"] = message["from"]
            self.send_json(reply)
            return
        if (
            isinstance(kind, str)
            and kind not in ("event", "response", "error", "pong")
            and "id" in message
            and message.keys() <= _REQUEST_KEYS
        ):
            await self._request(message, kind)
            return
        await session.send(self._upstream_origin(message))

    def _upstream_origin(self, message: dict[str, Any]) -> dict[str, Any]:
        """``message`` with ``from`` naming this local's session (``S``, or ``S/X`` for
        the local's own session ``X``), so that answers come back here."""
        assert self.session is not None
        own = self.session.id
        origin = message.get("from")
        if origin is None:
            return {**message, "from": own}
        return {**message, "from": f"{own}{ORIGIN_SEPARATOR}{origin}"}

    def _local_origin(self, message: Any) -> Any:
        """The reverse of ``_upstream_origin`` for a message going to the local."""
        if not isinstance(message, dict) or self.session is None:
            return message
        origin = message.get("from")
        if not isinstance(origin, str):
            return message
        own = self.session.id
        if origin == own:
            message = dict(message)
            del message["from"]  # addressed to the local client itself
        elif origin.startswith(own + ORIGIN_SEPARATOR):
            message = {**message, "from": origin[len(own) + 1 :]}
        return message

    async def _request(self, message: dict[str, Any], kind: str) -> None:
        """Send a local's request upstream now (so it keeps its place among the local's
        messages), and wait for its reply in a task of its own."""
        upstream, session, tasks = self.upstream, self.session, self._tasks
        assert upstream is not None
        assert session is not None
        assert tasks is not None
        client = upstream.client
        local_id = message["id"]
        local_from = message.get("from")
        origin = self._upstream_origin(message)["from"]
        correlator = client._correlator
        waiter = correlator.open(origin=session.id, policy="fail")
        self.relay._requests += 1
        try:
            frame = client.dialect.request(waiter.id, kind, message.get("payload"), origin=origin)

            def numbered(number: int) -> None:
                waiter.number = number

            number = await client.transport.submit(
                client._encode(frame), text=client.codec.text, on_accepted=numbered
            )
        except BaseException:
            correlator.discard(waiter)
            raise
        if number is None:
            correlator.discard(waiter)
            self._reply(local_id, local_from, error="relay: the upstream queue dropped the request")
            return
        tasks.start_soon(self._await_reply, waiter, local_id, local_from)

    async def _await_reply(self, waiter: Any, local_id: Any, local_from: Any) -> None:
        assert self.upstream is not None
        correlator = self.upstream.client._correlator
        try:
            result = await waiter.wait()
        except RemoteError as exc:
            self._reply(local_id, local_from, error=str(exc))
        except ConnectionLost:
            pass  # the upstream dropped: this local is being closed, and its client knows
        except WSClientError as exc:
            self._reply(local_id, local_from, error=f"relay: {exc}")
        else:
            self._reply(local_id, local_from, result=result)
        finally:
            correlator.discard(waiter)

    def _reply(
        self, local_id: Any, local_from: Any, *, result: Any = None, error: str | None = None
    ) -> None:
        if self.closing is not None:
            return
        if error is None:
            reply = {
                "id": next(_reply_ids),
                "type": "response",
                "requestId": local_id,
                "payload": result,
            }
        else:
            reply = {"id": next(_reply_ids), "type": "error", "requestId": local_id, "error": error}
        if local_from is not None:
            reply["from"] = local_from
        self.send_json(reply)

    async def _subscribe(self, channel: str) -> None:
        subscription = self.subscriptions.get(channel)
        if subscription is None:
            assert self.session is not None
            subscription = self.session.subscribe(
                channel, callback=functools.partial(self._deliver, channel)
            )
            # Deliveries come as (delivery_id, data), so that the id reaches the
            # local too: a pool there drops duplicates by it.
            subscription._wants_id = True
            try:
                await subscription
            except WSClientError as exc:
                self.notify_error(f"relay: could not subscribe: {exc}", channel)
                return
            self.subscriptions[channel] = subscription
        if subscription.state is SubscriptionState.SUBSCRIBED:
            self._confirm(channel)
        else:
            assert self._tasks is not None
            self._tasks.start_soon(self._confirm_later, channel, subscription)

    async def _confirm_later(self, channel: str, subscription: Subscription) -> None:
        try:
            await subscription.confirmed(timeout=math.inf)  # ends with the subscription
        except RemoteError as exc:
            if self.subscriptions.get(channel) is subscription:
                del self.subscriptions[channel]
            self.notify_error(str(exc), channel)
            return
        except WSClientError:
            return  # closed meanwhile: the local unsubscribed, or is leaving
        self._confirm(channel)

    def _confirm(self, channel: str) -> None:
        self.send_json(
            {"channel": "system", "data": {"type": "subscription_confirm", "channel": channel}}
        )

    def _deliver(self, channel: str, delivery: tuple[Any, Any]) -> None:
        """A delivery for this local, in the upstream's reader task: queued, never waited on."""
        delivery_id, data = delivery
        if self.enqueue(self.relay._encode_delivery(channel, data, delivery_id)):
            self.relay._deliveries += 1

    async def _pump(self) -> None:
        """Hand the session's messages (addressed to it, or to everyone) to the local."""
        assert self.session is not None
        async for message in self.session:
            if isinstance(message, (str, bytes)):  # not JSON: as it came
                data = message.encode() if isinstance(message, str) else message
                self.enqueue(data, isinstance(message, str))
                continue
            local = self._local_origin(message)
            self.enqueue(self.relay._encode_shared(local))

    async def serve(self) -> None:
        """Run the local's connection until it closes, is closed, or the relay stops."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            tasks.start_soon(self._write_loop)
            tasks.start_soon(self._pump)
            await self._read_loop()
            tasks.cancel_scope.cancel()

    def __repr__(self) -> str:
        state = "closing" if self.closing is not None else self.protocol.state.name
        return f"<{self.name} {state} subscriptions={len(self.subscriptions)}>"


_reply_ids = itertools.count(1)


class Relay:
    """A relay daemon: one upstream connection per URL, shared by local processes.

    ``wsclient relay`` runs one, and ``connect(url, relay=path)`` starts one on
    demand; in a program or a test, run it in a task group::

        async with anyio.create_task_group() as tg:
            relay = Relay("/run/user/1000/wsclient/relay.sock", idle_timeout=2)
            await tg.start(relay.run)

    or ``async with Relay(path).serve() as relay:``. Only one relay serves a
    socket path: it holds the lock file ``PATH.lock`` (which holds its pid)
    while it listens, and removes a socket file left by one that crashed.

    Args:
        socket_path: the Unix socket to listen on (created with mode 0600).
        idle_timeout: seconds without any local connection after which
            ``run()`` returns, and without any local on an
            upstream after which that upstream is closed. None: never.
        max_queued_messages: messages waiting for one local; one more closes
            it with code 1013 (a slow consumer).
        max_message_size: largest message a local may send, in bytes.
        handshake_timeout: seconds a local may take to send its handshake.
        close_timeout: seconds a closing handshake may take, with a local or upstream.
        backoff: the upstream connections' reconnection delays (default ``Backoff()``).
        heartbeat: the upstream connections' heartbeat (default ``Heartbeat()``).
        lock_timeout: seconds to wait for the lock of a relay that is stopping.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        idle_timeout: float | None = 5.0,
        max_queued_messages: int = 1024,
        max_message_size: int = 16 * 2**20,
        handshake_timeout: float = 10.0,
        close_timeout: float = 5.0,
        backoff: Backoff | None = None,
        heartbeat: Heartbeat | None = Heartbeat(),  # noqa: B008 - frozen, so sharing is safe
        lock_timeout: float = 5.0,
    ) -> None:
        self._path = check_socket_path(socket_path, "socket_path")
        if idle_timeout is not None:
            check_timeout(idle_timeout, "idle_timeout")
        self._idle_timeout = idle_timeout
        if not is_count(max_queued_messages) or max_queued_messages < 1:
            raise ValueError(
                f"max_queued_messages must be an int of at least 1, got {max_queued_messages!r}"
            )
        if not is_count(max_message_size) or max_message_size < 1:
            raise ValueError(
                f"max_message_size must be an int of at least 1, got {max_message_size!r}"
            )
        if backoff is not None and not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be a wsclient.Backoff, not {type(backoff).__name__}")
        if heartbeat is not None and not isinstance(heartbeat, Heartbeat):
            raise TypeError(
                f"heartbeat must be a wsclient.Heartbeat or None, not {type(heartbeat).__name__}"
            )
        self._max_queued_messages = max_queued_messages
        self._max_message_size = max_message_size
        self._handshake_timeout = check_timeout(handshake_timeout, "handshake_timeout")
        self._close_timeout = check_timeout(close_timeout, "close_timeout")
        self._lock_timeout = check_timeout(lock_timeout, "lock_timeout")
        self._backoff = backoff or Backoff()
        self._heartbeat = heartbeat
        self._state = RelayState.STARTING
        self._started = False
        self._stop_requested = False
        self._upstreams: dict[tuple[Any, ...], _Upstream] = {}
        self._connections = 0  # local sockets accepted and not finished, handshakes included
        self._locals: set[_Local] = set()
        self._numbers = itertools.count(1)
        self._wake: anyio.Event | None = None
        self._lock_fd: int | None = None
        self._socket_inode: int | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        # One encoding per delivery or broadcast, whatever the number of locals.
        self._last_delivery: tuple[str, Any, Any, bytes] | None = None
        self._last_shared: tuple[Any, bytes] | None = None
        # Statistics
        self._locals_total = 0
        self._upstreams_opened = 0
        self._refused = 0
        self._frames_from_locals = 0
        self._frames_to_locals = 0
        self._requests = 0
        self._deliveries = 0
        self._slow_consumers = 0

    @property
    def socket_path(self) -> str:
        """The Unix socket the relay listens on."""
        return self._path

    @property
    def state(self) -> RelayState:
        """Where the relay is in its life."""
        return self._state

    def statistics(self) -> RelayStatistics:
        """A snapshot of the relay's counters (upstream URLs without secrets)."""
        return RelayStatistics(
            state=self._state,
            locals_open=self._connections,
            locals_total=self._locals_total,
            upstreams=tuple(up.statistics() for up in self._upstreams.values()),
            upstreams_opened=self._upstreams_opened,
            handshakes_refused=self._refused,
            frames_from_locals=self._frames_from_locals,
            frames_to_locals=self._frames_to_locals,
            requests=self._requests,
            deliveries=self._deliveries,
            slow_consumer_disconnects=self._slow_consumers,
        )

    def __repr__(self) -> str:
        return (
            f"<Relay {self._path} {self._state.name} locals={self._connections}"
            f" upstreams={[up.url for up in self._upstreams.values()]}"
            f" from_locals={self._frames_from_locals} to_locals={self._frames_to_locals}>"
        )

    # Life cycle

    def close(self) -> None:
        """Ask ``run()`` to stop: locals are closed (1001), upstreams
        closed cleanly. Returns at once."""
        self._stop_requested = True
        self._poke()

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[Relay]:
        """Run the relay for the duration of the context (it may also stop by itself)."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.run)
            try:
                yield self
            finally:
                self.close()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and relay until idle for ``idle_timeout`` seconds, or until
        ``close()``.

        ``task_status.started()`` is called once the socket accepts
        connections. Raises [`InvalidState`][wsclient.InvalidState] if another
        relay serves the path (or if this one ran before), ``OSError`` if the
        socket cannot be made.
        """
        if self._started:
            raise InvalidState("a Relay runs only once; make another")
        self._started = True
        self._wake = anyio.Event()
        try:
            await self._lock()
            listener = await self._listen()
        except BaseException:
            self._unlock()
            self._state = RelayState.STOPPED
            raise
        logger.info("relay listening on %s (pid %d)", self._path, os.getpid())
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                accepting = anyio.CancelScope()
                tg.start_soon(self._accept, listener, accepting)
                self._state = RelayState.SERVING
                task_status.started()
                try:
                    await self._linger()
                finally:
                    self._state = RelayState.STOPPING
                    accepting.cancel()
                    # A new relay may start on the path while this one closes down.
                    self._give_up_path()
                    with anyio.CancelScope(shield=True):
                        await listener.aclose()
                    for local in list(self._locals):
                        local.kick(CLOSE_GOING_AWAY, "the relay is shutting down")
                    for upstream in list(self._upstreams.values()):
                        upstream.stopping = True
                        upstream.poke()
        finally:
            self._give_up_path()
            self._state = RelayState.STOPPED
            logger.info("relay on %s stopped", self._path)

    async def _lock(self) -> None:
        path = f"{self._path}.lock"
        # O_NOFOLLOW: in a shared directory, a link planted there would have us
        # truncate and write whatever file it points to.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            with anyio.move_on_after(self._lock_timeout):
                while True:
                    with anyio.move_on_after(0.2):  # a relay that answers will not go away
                        await lock_file(fd)
                        self._lock_fd = fd
                        return
                    if await relay_answers(self._path):
                        break
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            raise InvalidState(
                f"another relay{f' (pid {pid})' if pid.isdigit() else ''} serves {self._path}"
            )
        except BaseException:
            if self._lock_fd is None:
                os.close(fd)
            raise

    async def _listen(self) -> anyio.abc.SocketListener:
        path = self._path
        # We hold the lock: a socket file here is a crashed relay's.
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(info.st_mode):
                raise OSError(errno.EEXIST, f"{path} exists and is not a socket; not removing it")
            logger.info("removing the stale socket %s", path)
            os.unlink(path)
        listener = await anyio.create_unix_listener(path, mode=0o600)
        self._socket_inode = os.lstat(path).st_ino
        assert self._lock_fd is not None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        return listener

    def _give_up_path(self) -> None:
        """Remove our socket file and release the lock (idempotent)."""
        if self._socket_inode is not None:
            with contextlib.suppress(OSError):
                if os.lstat(self._path).st_ino == self._socket_inode:
                    os.unlink(self._path)
            self._socket_inode = None
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)  # releases the flock

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _wait_poke(self) -> None:
        assert self._wake is not None
        await self._wake.wait()
        self._wake = anyio.Event()

    async def _linger(self) -> None:
        """Return after ``idle_timeout`` seconds without a local, or once asked to stop."""
        while not self._stop_requested:
            if self._connections or self._idle_timeout is None:
                await self._wait_poke()
                continue
            with anyio.move_on_after(self._idle_timeout):
                await self._wait_poke()
                continue
            if not self._connections:
                logger.info("relay on %s idle for %gs: stopping", self._path, self._idle_timeout)
                return

    async def _accept(self, listener: anyio.abc.SocketListener, scope: anyio.CancelScope) -> None:
        assert self._task_group is not None
        with scope:
            while True:
                try:
                    stream = await listener.accept()
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return
                except OSError as exc:  # out of file descriptors, say: wait, not spin
                    logger.warning("relay on %s: accept failed: %s", self._path, exc)
                    await anyio.sleep(0.1)
                    continue
                self._connections += 1
                self._poke()
                self._task_group.start_soon(self._serve_local, stream)

    # Upstreams

    def _upstream_for(self, spec: _Spec) -> _Upstream:
        upstream = self._upstreams.get(spec.key)
        if upstream is not None and upstream.usable:
            return upstream
        try:
            upstream = _Upstream(self, spec)
        except (WSClientError, ValueError, TypeError) as exc:
            raise _Refused(400, f"invalid upstream: {exc}") from None
        self._upstreams[spec.key] = upstream
        self._upstreams_opened += 1
        assert self._task_group is not None
        self._task_group.start_soon(self._run_upstream, upstream)
        logger.info("upstream %s: opening", upstream.url)
        return upstream

    def _forget(self, upstream: _Upstream) -> None:
        if self._upstreams.get(upstream.spec.key) is upstream:
            del self._upstreams[upstream.spec.key]

    async def _run_upstream(self, upstream: _Upstream) -> None:
        client = upstream.client
        try:
            async with client, anyio.create_task_group() as tg:
                tg.start_soon(_discard_messages, client)
                await self._upstream_linger(upstream)
                tg.cancel_scope.cancel()
        except Exception as exc:  # the first connection failed: the handshakes waiting say why
            logger.info("upstream %s could not be opened: %s", upstream.url, exc)
        finally:
            upstream.stopping = True
            self._forget(upstream)
            for local in list(upstream.locals):
                local.kick(CLOSE_GOING_AWAY, "the relay closed its upstream connection")
            logger.info("upstream %s closed", upstream.url)

    async def _upstream_linger(self, upstream: _Upstream) -> None:
        idle = self._idle_timeout
        while not upstream.stopping and upstream.client.state is not ConnectionState.CLOSED:
            if upstream.locals or upstream.waiting or idle is None:
                await upstream.wait_poke()
                continue
            with anyio.move_on_after(idle):
                await upstream.wait_poke()
                continue
            if not (upstream.locals or upstream.waiting):
                logger.info("upstream %s unused for %gs: closing it", upstream.url, idle)
                # At once: a local arriving while it closes must get a new upstream.
                upstream.stopping = True
                return

    async def _wait_open(self, upstream: _Upstream, spec: _Spec) -> None:
        """Wait until ``upstream`` is open, a little less than the local waits for its handshake."""
        limit = (spec.open_timeout or self._handshake_timeout) * 0.9
        upstream.waiting += 1
        try:
            with anyio.move_on_after(limit):
                await upstream.client.wait_state(ConnectionState.OPEN)
                return
        except ConnectError as exc:
            status = exc.status
            if status is not None and 400 <= status < 600:
                raise _Refused(status, f"upstream {upstream.url} refused: {exc}") from None
            if isinstance(exc, ConnectTimeout):
                raise _Refused(504, f"upstream {upstream.url}: {exc}") from None
            raise _Refused(502, f"upstream {upstream.url} could not be opened: {exc}") from None
        except WSClientError as exc:
            if isinstance(exc, ValueError):  # InsecureCredentials, InvalidURL
                raise _Refused(400, f"upstream {upstream.url}: {exc}") from None
            raise _Refused(502, f"upstream {upstream.url} failed: {exc}") from None
        finally:
            upstream.waiting -= 1
            upstream.poke()
        raise _Refused(
            503, f"upstream {upstream.url} is not open yet ({upstream.client.state.value})", 1
        )

    # Locals

    async def _serve_local(self, stream: anyio.abc.ByteStream) -> None:
        local = _Local(self, stream, next(self._numbers))
        try:
            upstream = await self._handshake(local)
            if upstream is not None:
                self._locals_total += 1
                logger.debug("%s connected to upstream %s", local.name, upstream.url)
                await local.serve()
        except _STREAM_ERRORS:
            pass
        except Exception:  # a bug must cost this local its connection, not the relay its life
            logger.exception("relay: %s failed", local.name)
        finally:
            with anyio.CancelScope(shield=True):
                await self._detach(local)
            self._connections -= 1
            self._poke()

    async def _handshake(self, local: _Local) -> _Upstream | None:
        """Answer the local's handshake; its upstream once it is accepted, else None."""
        request = await local.read_request()
        if request is None:
            return None
        protocol = local.protocol
        if self._state is not RelayState.SERVING:
            # Closed unanswered: the local takes it for "no relay" and starts a new one.
            return None
        try:
            spec = _read_spec(request.headers)
            upstream = self._upstream_for(spec)
            await self._wait_open(upstream, spec)
            # Checked with no await before joining: a drop now would miss this local.
            if self._state is not RelayState.SERVING:
                return None  # as above
            if upstream.client.state is not ConnectionState.OPEN or not upstream.usable:
                raise _Refused(503, f"upstream {upstream.url} is not open", 1)
        except _Refused as refusal:
            self._refused += 1
            logger.debug("%s refused: %s", local.name, refusal.text)
            response = protocol.reject(refusal.status, refusal.text + "\n")
            if refusal.retry_after is not None:
                response.headers["Retry-After"] = str(refusal.retry_after)
            protocol.send_response(response)
            with anyio.move_on_after(self._close_timeout):
                await local._flush()
            return None
        live = upstream.client.transport.transport
        selected = getattr(live, "subprotocol", None)
        protocol.available_subprotocols = [Subprotocol(selected)] if selected else None
        response = protocol.accept(request)
        protocol.send_response(response)
        if response.status_code != 101:  # not a valid WebSocket handshake
            self._refused += 1
            with anyio.move_on_after(self._close_timeout):
                await local._flush()
            return None
        local.upstream = upstream
        local.session = upstream.client.session()
        upstream.locals.add(local)
        self._locals.add(local)
        await local._flush()
        return upstream

    async def _detach(self, local: _Local) -> None:
        self._locals.discard(local)
        upstream = local.upstream
        local.closing = local.closing or (CLOSE_GOING_AWAY, "")
        local._outbox.close()
        local._outbox_reader.close()
        with anyio.move_on_after(self._close_timeout):
            if local.session is not None:
                local.subscriptions.clear()
                await local.session.aclose()  # its requests fail, its subscriptions end
            await local.stream.aclose()
        if upstream is not None:
            upstream.locals.discard(local)
            upstream.poke()
            logger.debug("%s left upstream %s", local.name, upstream.url)

    # Encoding, once per message whatever the number of locals

    def _encode_delivery(self, channel: str, data: Any, delivery_id: Any) -> bytes:
        # One delivery reaches every local subscribed: encode it once. Small
        # ints and interned strings are the same object in every message, so
        # the id must match too.
        last = self._last_delivery
        if last is not None and last[0] == channel and last[1] is data and last[2] == delivery_id:
            return last[3]
        message = {"channel": channel, "data": data}
        if delivery_id is not None:
            message["id"] = delivery_id
        encoded = orjson.dumps(message)
        self._last_delivery = (channel, data, delivery_id, encoded)
        return encoded

    def _encode_shared(self, message: Any) -> bytes:
        last = self._last_shared
        if last is not None and last[0] is message:
            return last[1]
        encoded = orjson.dumps(message)
        self._last_shared = (message, encoded)
        return encoded


async def _discard_messages(client: Client) -> None:
    """Read the upstream client's own unhandled messages: the sessions got their copies."""
    async for _ in client:
        pass
