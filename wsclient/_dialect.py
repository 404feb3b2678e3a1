"""Dialects: the one place that knows what wire messages look like.

A dialect works on decoded values (what the [`Codec`][wsclient.Codec] returns),
in both directions. Outbound, it frames requests, events, subscribe,
unsubscribe, publish and the application-level ping. Inbound,
[`Dialect.route()`][wsclient.Dialect.route] looks at one message and says where it goes, as an
[`Inbound`][wsclient.Inbound]:

========== ==================================================================
REPLY      the answer to a request: ``request_id``, then ``result`` or ``error``
DELIVERY   a message on a channel: ``channel`` and ``result`` (its data)
CONFIRM    the server confirmed (or, with ``error``, refused) a subscription
ACK        an acknowledgement nothing waits for (an unsubscribe's reply)
HEARTBEAT  the answer to the application-level ping
SYSTEM     a notice from the server, not tied to a request (``error`` if an error)
OTHER      anything else: the application's own messages
BATCH      several messages in one frame (JSON-RPC batches): see ``items``
INVALID    malformed: ``problem`` says why; reported, never fatal
========== ==================================================================

``origin`` is the session a message is addressed to (the ``from`` field of the
SharedWorker pattern); None means every session. No other layer looks inside
a message.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from ._checks import cut, short_repr, wire_repr
from ._exceptions import RemoteError

__all__ = ["DefaultDialect", "Dialect", "Inbound", "Route"]


class Route(enum.Enum):
    """Where an inbound message goes; see [`Inbound`][wsclient.Inbound]."""

    REPLY = "reply"
    """The reply to a request: ``request_id``, and ``result`` or ``error``."""
    DELIVERY = "delivery"
    """A channel's data for its subscribers: ``channel``, ``result``."""
    CONFIRM = "confirm"
    """A subscription confirmed, or refused with ``error``: ``channel``."""
    ACK = "ack"
    """An acknowledgement, of an unsubscribe say: ``channel``, ``error`` if the server objected."""
    HEARTBEAT = "heartbeat"
    """The answer to the application-level ping: ``error`` if the server objected."""
    SYSTEM = "system"
    """A notice from the server: ``result``, or ``error`` for an error notice."""
    OTHER = "other"
    """Anything else: an unhandled message, for ``origin`` (None: everyone)."""
    BATCH = "batch"
    """Several messages in one: ``items``, an ``Inbound`` per message."""
    INVALID = "invalid"
    """A message the dialect cannot make sense of: ``problem`` says why."""


# Python 3.11 looks enum members up slowly (about 0.1 µs): route() runs per message.
_REPLY, _DELIVERY, _CONFIRM = Route.REPLY, Route.DELIVERY, Route.CONFIRM
_HEARTBEAT, _SYSTEM, _OTHER, _INVALID = Route.HEARTBEAT, Route.SYSTEM, Route.OTHER, Route.INVALID


@dataclass(frozen=True, slots=True)
class Inbound:
    """One inbound message as a dialect understood it.

    Attributes:
        route: where it goes.
        message: the decoded message, as received.
        request_id: REPLY: the id of the request it answers.
        result: REPLY: the reply's payload; DELIVERY: the channel's data;
            SYSTEM: the notice's data.
        error: REPLY: the server's error, raised to the caller; CONFIRM: the
            subscription was refused; SYSTEM: an error notice; ACK and
            HEARTBEAT: what the server objected to (reported, not raised).
        channel: DELIVERY, CONFIRM and ACK: the channel's name.
        origin: the session it is addressed to; None for every session.
        items: BATCH: the messages it holds, each routed.
        problem: INVALID: what is wrong with it.
        delivery_id: DELIVERY: the delivery's unique id, if the server stamps one (a str
            or int); a [`Pool`][wsclient.Pool] drops a delivery whose id it has seen.
    """

    route: Route
    message: Any
    request_id: Any = None
    result: Any = None
    error: RemoteError | None = None
    channel: str | None = None
    origin: Any = None
    items: tuple[Inbound, ...] = ()
    problem: str | None = None
    delivery_id: Any = None


def _fill_slots_directly(cls: type) -> None:
    """Give frozen, slotted dataclass ``cls`` an ``__init__`` that fills each slot
    through its descriptor: same parameters and defaults, half the cost.

    The generated one goes through ``object.__setattr__`` per field (its way
    around ``frozen``), and a dialect makes an ``Inbound`` per message.
    """
    scope: dict[str, Any] = {}
    parameters, lines = [], []
    for field in dataclasses.fields(cls):
        assert field.default_factory is dataclasses.MISSING
        assert not field.kw_only
        scope[f"_set_{field.name}"] = getattr(cls, field.name).__set__
        if field.default is dataclasses.MISSING:
            parameters.append(field.name)
        else:
            scope[f"_default_{field.name}"] = field.default
            parameters.append(f"{field.name}=_default_{field.name}")
        lines.append(f"    _set_{field.name}(self, {field.name})\n")
    source = f"def __init__(self, {', '.join(parameters)}):\n{''.join(lines)}"
    namespace: dict[str, Any] = {}
    exec(source, scope, namespace)  # as dataclasses itself makes __init__
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    cls.__init__ = init  # type: ignore[misc]


_fill_slots_directly(Inbound)


class Dialect(ABC):
    """What a server's messages look like: subclass it to talk to any server.

    Methods that frame return a value for the codec to encode (a dict for
    JSON). ``origin`` is the sending session's id, to carry in the message
    so that the server can address its answer (None: the client itself).
    [`query()`][wsclient.Dialect.query], [`command()`][wsclient.Dialect.command] and
    [`authenticate()`][wsclient.Dialect.authenticate] return the ``(kind, payload)`` of a request
    for [`request()`][wsclient.Dialect.request]; their defaults follow the seeds' protocol.
    Request ids the client makes are ints from 1 up; a dialect may use other
    ids (strings, say) for its own messages without colliding.
    """

    confirms_subscriptions: bool = True
    """Whether the server confirms subscriptions (CONFIRM).

    If not, a subscription counts as confirmed once its message is sent.
    """

    @abstractmethod
    def request(self, request_id: int, kind: str, payload: Any, *, origin: Any = None) -> Any:
        """Frame a request that expects a reply with ``request_id``."""

    @abstractmethod
    def event(self, request_id: int, event: str, data: Any, *, origin: Any = None) -> Any:
        """Frame a fire-and-forget event (no reply is expected)."""

    @abstractmethod
    def subscribe(self, channel: str) -> Any:
        """Frame a subscription to ``channel``."""

    @abstractmethod
    def unsubscribe(self, channel: str) -> Any:
        """Frame the end of a subscription to ``channel``."""

    @abstractmethod
    def publish(self, channel: str, data: Any) -> Any:
        """Frame a publication of ``data`` on ``channel``."""

    @abstractmethod
    def route(self, message: Any) -> Inbound:
        """Say where an inbound message goes. Must not raise: return INVALID instead."""

    def query(self, resource: str, parameters: Any) -> tuple[str, Any]:
        """The ``(kind, payload)`` of a query."""
        return "query", {"resource": resource, "parameters": parameters}

    def command(self, action: str, parameters: Any) -> tuple[str, Any]:
        """The ``(kind, payload)`` of a command."""
        return "command", {"action": action, "parameters": parameters}

    def authenticate(self, credentials: Any) -> tuple[str, Any]:
        """The ``(kind, payload)`` of an authentication request."""
        return "auth", credentials

    def ping(self) -> Any:
        """The application-level ping message, or None if the dialect has none."""
        return None

    def address(self, message: Any, origin: Any) -> Any:
        """Mark a free-form outgoing ``message`` as sent by session ``origin``.

        The default adds ``"from"`` to a dict that has none (a copy); other
        values go unchanged.
        """
        if isinstance(message, dict) and "from" not in message:
            return {**message, "from": origin}
        return message

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class DefaultDialect(Dialect):
    """The JSON protocol of the seeds, as tabled in ARCHITECTURE.md.

    Requests are ``{"id", "type", "timestamp", "payload"}`` (plus ``"from"``
    for a session); replies ``{"type": "response" | "error", "requestId", ...}``;
    channels use ``{"action": "subscribe" | "unsubscribe" | "publish",
    "channel"}`` and deliver ``{"channel", "data"}`` (with ``"id"``, a str or int,
    when the server stamps deliveries: the ``delivery_id``); the ``system`` channel
    carries confirmations and errors (an error naming a ``channel`` refuses
    the subscription to it); the heartbeat is ``{"type": "ping"}`` /
    ``{"type": "pong"}``.
    """

    SYSTEM_CHANNEL = "system"
    """The channel that carries the server's confirmations and error notices."""

    def request(self, request_id: int, kind: str, payload: Any, *, origin: Any = None) -> Any:
        message = {"id": request_id, "type": kind, "timestamp": _now_ms(), "payload": payload}
        if origin is not None:
            message["from"] = origin
        return message

    def event(self, request_id: int, event: str, data: Any, *, origin: Any = None) -> Any:
        return self.request(request_id, "event", {"event": event, "data": data}, origin=origin)

    def subscribe(self, channel: str) -> Any:
        return {"action": "subscribe", "channel": channel}

    def unsubscribe(self, channel: str) -> Any:
        return {"action": "unsubscribe", "channel": channel}

    def publish(self, channel: str, data: Any) -> Any:
        return {"action": "publish", "channel": channel, "data": data}

    def ping(self) -> Any:
        return {"type": "ping"}

    def route(self, message: Any) -> Inbound:
        if not isinstance(message, dict):
            return Inbound(_OTHER, message)
        origin = message.get("from")
        kind = message.get("type")
        if kind == "response" or kind == "error":
            if "requestId" not in message:
                return _invalid(message, f"a {kind!r} message without 'requestId'", origin)
            request_id = message["requestId"]
            if kind == "response":
                return Inbound(
                    _REPLY,
                    message,
                    request_id=request_id,
                    result=message.get("payload"),
                    origin=origin,
                )
            error = RemoteError(_text(message.get("error")), request_id=request_id)
            return Inbound(_REPLY, message, request_id=request_id, error=error, origin=origin)
        if kind == "pong" and "channel" not in message:
            return Inbound(_HEARTBEAT, message, origin=origin)
        if "channel" in message:
            return self._route_channel(message, origin)
        return Inbound(_OTHER, message, origin=origin)

    def _route_channel(self, message: dict[str, Any], origin: Any) -> Inbound:
        channel = message["channel"]
        if not isinstance(channel, str):
            return _invalid(message, "'channel' is not a string", origin)
        if "data" not in message:
            quoted = _bounded_repr.repr(channel)  # the name comes from the wire: any length
            return _invalid(message, f"a message on channel {quoted} without 'data'", origin)
        data = message["data"]
        if channel != self.SYSTEM_CHANNEL:
            stamp = message.get("id")  # the Hub stamps each delivery with a unique id
            if not isinstance(stamp, str | int) or isinstance(stamp, bool):
                stamp = None
            return Inbound(
                _DELIVERY,
                message,
                result=data,
                channel=channel,
                origin=origin,
                delivery_id=stamp,
            )
        notice = data.get("type") if isinstance(data, dict) else None
        if notice == "subscription_confirm":
            confirmed = data.get("channel")
            if not isinstance(confirmed, str):
                return _invalid(message, "a subscription_confirm without a 'channel'", origin)
            return Inbound(_CONFIRM, message, channel=confirmed, origin=origin)
        if notice == "error":
            error = RemoteError(_text(data.get("message")))
            refused = data.get("channel")
            if isinstance(refused, str):  # an error naming a channel refuses its subscription
                return Inbound(_CONFIRM, message, channel=refused, error=error, origin=origin)
            return Inbound(_SYSTEM, message, result=data, error=error, origin=origin)
        return Inbound(_SYSTEM, message, result=data, origin=origin)


def _invalid(message: Any, problem: str, origin: Any = None) -> Inbound:
    return Inbound(_INVALID, message, origin=origin, problem=problem)


def _text(value: Any, limit: int = 500) -> str:
    """An error message from the wire, cut to ``limit`` characters."""
    if value is None or value == "":
        return "the server sent an error without a message"
    if isinstance(value, str):
        return cut(value, limit)
    return short_repr(value, _bounded_repr, limit)


# Bounded: a deeply nested or huge value from the wire must not blow up routing.
_bounded_repr = wire_repr(100)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
