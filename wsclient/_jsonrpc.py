"""JSON-RPC 2.0 over WebSocket (https://www.jsonrpc.org/specification).

Requests and events become JSON-RPC requests and notifications; channels are
methods (``subscribe``, ``unsubscribe``, ``publish``) and deliveries are
notifications of ``delivery_method`` whose params are ``{"channel", "data"}``.
Inbound, messages route like this:

=========================================== ===================================
response to ``"wsclient.subscribe:<ch>"``   CONFIRM (with ``error`` if refused)
response to ``"wsclient.unsubscribe:<ch>"`` ACK
response to ``"wsclient.ping"``             HEARTBEAT
error response with ``"id": null``          SYSTEM (the server could not parse)
any other response                          REPLY
``delivery_method`` notification            DELIVERY
any other notification or request           OTHER (the application's to answer)
an array                                    BATCH, each item routed
anything else                               INVALID
=========================================== ===================================

The dialect's own requests use reserved string ids starting with
``"wsclient."``; the client numbers its requests with ints, so the two never
collide.
"""

from __future__ import annotations

from typing import Any

from ._checks import cut, short_repr, wire_repr
from ._dialect import Dialect, Inbound, Route
from ._exceptions import RemoteError

__all__ = ["JsonRpcDialect"]

_VERSION = "2.0"
_RESERVED = "wsclient."
_SUBSCRIBE_PREFIX = _RESERVED + "subscribe:"
_UNSUBSCRIBE_PREFIX = _RESERVED + "unsubscribe:"
_PING_ID = _RESERVED + "ping"

# Wire data quoted in problems and error messages is cut to this many characters.
_QUOTE_LIMIT = 100
# The server's own error message is cut to this many, as the default dialect does.
_MESSAGE_LIMIT = 500

_DEFAULTS: dict[str, str | None] = {
    "auth_method": "authenticate",
    "subscribe_method": "subscribe",
    "unsubscribe_method": "unsubscribe",
    "publish_method": "publish",
    "delivery_method": "message",
    "ping_method": None,
}


class JsonRpcDialect(Dialect):
    """JSON-RPC 2.0: requests, notifications, batches and error objects.

    Every option is keyword-only and names a method on the server:

    - ``auth_method`` (``"authenticate"``): the method of
      [`authenticate()`][wsclient.Dialect.authenticate].
    - ``subscribe_method`` (``"subscribe"``), ``unsubscribe_method``
      (``"unsubscribe"``): called with params ``{"channel": channel}``.
    - ``publish_method`` (``"publish"``): a notification with params
      ``{"channel": channel, "data": data}``.
    - ``delivery_method`` (``"message"``): the server's notification that
      delivers ``{"channel": channel, "data": data}`` to a subscriber.
    - ``ping_method`` (None): the application-level ping; None means the
      server has none and the heartbeat relies on WebSocket pings.

    ``query`` and ``command`` call the resource or action as the method.
    ``origin`` is ignored: JSON-RPC has no field for it, and the id alone
    ties a response to its request.
    """

    confirms_subscriptions = True

    def __init__(
        self,
        *,
        auth_method: str = "authenticate",
        subscribe_method: str = "subscribe",
        unsubscribe_method: str = "unsubscribe",
        publish_method: str = "publish",
        delivery_method: str = "message",
        ping_method: str | None = None,
    ) -> None:
        for name, value in (
            ("auth_method", auth_method),
            ("subscribe_method", subscribe_method),
            ("unsubscribe_method", unsubscribe_method),
            ("publish_method", publish_method),
            ("delivery_method", delivery_method),
        ):
            _check_method(name, value)
        if ping_method is not None:
            _check_method("ping_method", ping_method)
        self.auth_method = auth_method
        self.subscribe_method = subscribe_method
        self.unsubscribe_method = unsubscribe_method
        self.publish_method = publish_method
        self.delivery_method = delivery_method
        self.ping_method = ping_method

    # -- outbound ----------------------------------------------------------

    def request(self, request_id: int, kind: str, payload: Any, *, origin: Any = None) -> Any:
        message: dict[str, Any] = {"jsonrpc": _VERSION, "id": request_id, "method": kind}
        if payload is not None:
            message["params"] = _params(payload)
        return message

    def event(self, request_id: int, event: str, data: Any, *, origin: Any = None) -> Any:
        # Spec 4.1: a request without "id" is a notification, which the server never answers.
        message: dict[str, Any] = {"jsonrpc": _VERSION, "method": event}
        if data is not None:
            message["params"] = _params(data)
        return message

    def subscribe(self, channel: str) -> Any:
        return {
            "jsonrpc": _VERSION,
            "id": _SUBSCRIBE_PREFIX + channel,
            "method": self.subscribe_method,
            "params": {"channel": channel},
        }

    def unsubscribe(self, channel: str) -> Any:
        return {
            "jsonrpc": _VERSION,
            "id": _UNSUBSCRIBE_PREFIX + channel,
            "method": self.unsubscribe_method,
            "params": {"channel": channel},
        }

    def publish(self, channel: str, data: Any) -> Any:
        return {
            "jsonrpc": _VERSION,
            "method": self.publish_method,
            "params": {"channel": channel, "data": data},
        }

    def ping(self) -> Any:
        if self.ping_method is None:
            return None
        return {"jsonrpc": _VERSION, "id": _PING_ID, "method": self.ping_method}

    def query(self, resource: str, parameters: Any) -> tuple[str, Any]:
        return resource, parameters

    def command(self, action: str, parameters: Any) -> tuple[str, Any]:
        return action, parameters

    def authenticate(self, credentials: Any) -> tuple[str, Any]:
        return self.auth_method, credentials

    def address(self, message: Any, origin: Any) -> Any:
        # A "from" member would be an unknown member of a JSON-RPC object.
        return message

    # -- inbound -----------------------------------------------------------

    def route(self, message: Any) -> Inbound:
        try:
            if isinstance(message, list):
                # Spec 6: an empty array is not a valid batch.
                if not message:
                    return _invalid(message, "an empty batch")
                items = tuple(self._route_item(item) for item in message)
                return Inbound(Route.BATCH, message, items=items)
            return self._route_object(message, in_batch=False)
        except Exception as exc:
            return _unroutable(message, exc)

    def _route_item(self, message: Any) -> Inbound:
        try:
            return self._route_object(message, in_batch=True)
        except Exception as exc:
            return _unroutable(message, exc)

    def _route_object(self, message: Any, *, in_batch: bool) -> Inbound:
        if not isinstance(message, dict):
            where = "a batch item" if in_batch else "a message"
            return _invalid(message, f"{where} is not a JSON-RPC object: {_quote(message)}")
        if "jsonrpc" in message:
            version = message["jsonrpc"]
            if not (isinstance(version, str) and version == _VERSION):
                return _invalid(message, f"'jsonrpc' is {_quote(version)}, not '2.0'")
        is_response = "result" in message or "error" in message
        if "method" in message:
            if is_response:
                return _invalid(message, "both 'method' and 'result' or 'error'")
            return self._route_call(message)
        if not is_response:
            return _invalid(message, "neither 'method' nor 'result' nor 'error'")
        return self._route_response(message)

    def _route_call(self, message: dict[str, Any]) -> Inbound:
        method = message["method"]
        if not isinstance(method, str):
            return _invalid(message, f"'method' is not a string: {_quote(method)}")
        if "id" in message:
            if not _is_id(message["id"]):
                return _invalid(message, f"'id' is not a string or number: {_quote(message['id'])}")
            # A request from the server: the application may answer it.
            return Inbound(Route.OTHER, message)
        if method != self.delivery_method:
            return Inbound(Route.OTHER, message)
        params = message.get("params")
        if not isinstance(params, dict):
            return _invalid(
                message, f"a {_quote(method)} notification whose 'params' is not an object"
            )
        channel = params.get("channel")
        if not isinstance(channel, str):
            return _invalid(message, f"a {_quote(method)} notification without a string 'channel'")
        if "data" not in params:
            return _invalid(
                message, f"a {_quote(method)} notification on {_quote(channel)} without 'data'"
            )
        return Inbound(Route.DELIVERY, message, result=params["data"], channel=channel)

    def _route_response(self, message: dict[str, Any]) -> Inbound:
        if "result" in message and "error" in message:
            return _invalid(message, "a response with both 'result' and 'error'")
        if "id" not in message:
            return _invalid(message, "a response without 'id'")
        request_id = message["id"]
        error = _remote_error(message["error"], request_id) if "error" in message else None
        if request_id is None:
            if error is None:
                return _invalid(message, "a result with a null 'id'")
            # Spec 5: the server could not read the request's id (a parse error).
            return Inbound(Route.SYSTEM, message, result=message["error"], error=error)
        if not _is_id(request_id):
            return _invalid(message, f"'id' is not a string or number: {_quote(request_id)}")
        if isinstance(request_id, str) and request_id.startswith(_RESERVED):
            return self._route_reserved(message, request_id, error)
        if error is not None:
            return Inbound(Route.REPLY, message, request_id=request_id, error=error)
        return Inbound(Route.REPLY, message, request_id=request_id, result=message["result"])

    def _route_reserved(
        self, message: dict[str, Any], request_id: str, error: RemoteError | None
    ) -> Inbound:
        # Errors ride along on ACK and HEARTBEAT too: any answer proves the server alive.
        if request_id == _PING_ID:
            return Inbound(Route.HEARTBEAT, message, error=error)
        if request_id.startswith(_SUBSCRIBE_PREFIX):
            channel = request_id[len(_SUBSCRIBE_PREFIX) :]
            return Inbound(Route.CONFIRM, message, channel=channel, error=error)
        if request_id.startswith(_UNSUBSCRIBE_PREFIX):
            channel = request_id[len(_UNSUBSCRIBE_PREFIX) :]
            return Inbound(Route.ACK, message, channel=channel, error=error)
        return _invalid(message, f"a response to an unknown reserved id: {_quote(request_id)}")

    def __repr__(self) -> str:
        options = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name, default in _DEFAULTS.items()
            if getattr(self, name) != default
        )
        return f"{type(self).__name__}({options})"


def _check_method(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, not {value!r}")


def _params(payload: Any) -> Any:
    """Spec 4.2: params must be structured, an array or an object."""
    if isinstance(payload, (dict, list)):
        return payload
    if isinstance(payload, tuple):
        return list(payload)
    return [payload]


def _is_id(value: Any) -> bool:
    # Spec 4: a string, a number or null. A bool would equal request 1 or 0 in a lookup.
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))


def _remote_error(error: Any, request_id: Any) -> RemoteError:
    """Spec 5.1: the error object as a RemoteError; a malformed one still makes one."""
    if not isinstance(error, dict):
        return RemoteError(
            f"malformed JSON-RPC error: not an object: {_quote(error)}", request_id=request_id
        )
    code = error.get("code")
    message = error.get("message")
    data = error.get("data")
    good_code = isinstance(code, int) and not isinstance(code, bool)
    if good_code and isinstance(message, str):
        text = message or f"the server sent error {code} without a message"
        text = cut(text, _MESSAGE_LIMIT)  # it ends up in logs: a hostile server could flood them
        return RemoteError(text, code=code, data=data, request_id=request_id)
    faults: list[str] = []
    if not good_code:
        faults.append(f"'code' is {_quote(code)}" if "code" in error else "no 'code'")
    if not isinstance(message, str):
        faults.append(f"'message' is {_quote(message)}" if "message" in error else "no 'message'")
    text = f"malformed JSON-RPC error ({', '.join(faults)})"
    if isinstance(message, str):
        text += f": {cut(message, _QUOTE_LIMIT)}"
    return RemoteError(text, code=code if good_code else None, data=data, request_id=request_id)


_repr = wire_repr(_QUOTE_LIMIT)


def _quote(value: Any) -> str:
    """A short repr of wire data, safe for deep, huge or hostile values."""
    return short_repr(value, _repr, _QUOTE_LIMIT)


def _unroutable(message: Any, exc: Exception) -> Inbound:
    # route() must never raise. Only hostile values get here (a dict subclass whose
    # methods raise, say): decoded JSON is handled above without exceptions.
    return _invalid(message, f"could not route the message: {type(exc).__name__}")


def _invalid(message: Any, problem: str) -> Inbound:
    return Inbound(Route.INVALID, message, problem=problem)
