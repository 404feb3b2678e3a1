"""JsonRpcDialect: every outbound frame, every inbound route, and route() never raising.

Pure logic: no sockets, no event loop. Inbound results are compared whole; a
RemoteError compares by identity, so :func:`snap` turns it into its type,
message, code, data and request id first.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from wsclient._dialect import Dialect, Inbound, Route
from wsclient._exceptions import RemoteError
from wsclient._jsonrpc import JsonRpcDialect

OPTIONS = (
    "auth_method",
    "subscribe_method",
    "unsubscribe_method",
    "publish_method",
    "delivery_method",
    "ping_method",
)


def snap(inbound: Inbound) -> dict[str, Any]:
    """An Inbound as plain data, its errors and batch items included, for whole-value equality."""
    fields = {f.name: getattr(inbound, f.name) for f in dataclasses.fields(inbound)}
    error = fields["error"]
    if error is not None:
        fields["error"] = (type(error), str(error), error.code, error.data, error.request_id)
    fields["items"] = tuple(snap(item) for item in inbound.items)
    return fields


def expect(route: Route, message: Any, **fields: Any) -> dict[str, Any]:
    """The snapshot of the Inbound built from ``fields``."""
    return snap(Inbound(route, message, **fields))


def problem_of(dialect: JsonRpcDialect, message: Any) -> str:
    """Route ``message``, check it is INVALID with a problem, and return the problem."""
    inbound = dialect.route(message)
    assert inbound.route is Route.INVALID
    assert isinstance(inbound.problem, str)
    assert inbound.problem
    return inbound.problem


@pytest.fixture
def dialect() -> JsonRpcDialect:
    return JsonRpcDialect()


# -- construction -----------------------------------------------------------------


def test_is_a_dialect_that_confirms_subscriptions(dialect: JsonRpcDialect) -> None:
    """JsonRpcDialect is a Dialect and waits for the subscribe reply as confirmation."""
    assert isinstance(dialect, Dialect)
    assert JsonRpcDialect.confirms_subscriptions is True
    assert dialect.confirms_subscriptions is True


def test_defaults(dialect: JsonRpcDialect) -> None:
    """The documented defaults are the method names in use."""
    assert {name: getattr(dialect, name) for name in OPTIONS} == {
        "auth_method": "authenticate",
        "subscribe_method": "subscribe",
        "unsubscribe_method": "unsubscribe",
        "publish_method": "publish",
        "delivery_method": "message",
        "ping_method": None,
    }


def test_options_are_keyword_only() -> None:
    """Options cannot be given positionally."""
    with pytest.raises(TypeError):
        JsonRpcDialect("auth")  # type: ignore[call-arg]


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("value", ["", 5, b"subscribe", ["subscribe"]])
def test_constructor_rejects_bad_method_names(option: str, value: Any) -> None:
    """An empty or non-string method name is a ValueError that names the option."""
    with pytest.raises(ValueError, match=f"^{option} must be a non-empty string"):
        JsonRpcDialect(**{option: value})


@pytest.mark.parametrize("option", [name for name in OPTIONS if name != "ping_method"])
def test_constructor_rejects_none_except_for_ping(option: str) -> None:
    """Only ping_method may be None."""
    options: dict[str, Any] = {option: None}
    with pytest.raises(ValueError, match=f"^{option} must be a non-empty string"):
        JsonRpcDialect(**options)


def test_repr_default(dialect: JsonRpcDialect) -> None:
    """The repr of a default dialect is the bare class name."""
    assert repr(dialect) == "JsonRpcDialect()"


def test_repr_shows_non_default_options() -> None:
    """The repr lists the options that differ from their defaults, in declaration order."""
    dialect = JsonRpcDialect(ping_method="rpc.ping", subscribe_method="sub", auth_method="login")
    assert repr(dialect) == (
        "JsonRpcDialect(auth_method='login', subscribe_method='sub', ping_method='rpc.ping')"
    )


# -- outbound ---------------------------------------------------------------------


def test_request_with_object_params(dialect: JsonRpcDialect) -> None:
    """A dict payload is the request's params, as is."""
    payload = {"a": 1, "b": [2]}
    frame = dialect.request(7, "sum", payload)
    assert frame == {"jsonrpc": "2.0", "id": 7, "method": "sum", "params": {"a": 1, "b": [2]}}
    assert frame["params"] is payload


def test_request_with_array_params(dialect: JsonRpcDialect) -> None:
    """A list payload is the request's params, as is."""
    payload = [1, 2, 3]
    frame = dialect.request(1, "sum", payload)
    assert frame == {"jsonrpc": "2.0", "id": 1, "method": "sum", "params": [1, 2, 3]}
    assert frame["params"] is payload


def test_request_tuple_params_become_a_list(dialect: JsonRpcDialect) -> None:
    """A tuple payload goes as a JSON array (a list)."""
    frame = dialect.request(2, "sum", (1, "two"))
    assert frame == {"jsonrpc": "2.0", "id": 2, "method": "sum", "params": [1, "two"]}
    assert type(frame["params"]) is list


@pytest.mark.parametrize("scalar", [5, 0, 1.5, "text", "", True, False])
def test_request_scalar_params_are_wrapped(dialect: JsonRpcDialect, scalar: Any) -> None:
    """A scalar payload, falsy ones too, is wrapped as a one-element array."""
    frame = dialect.request(3, "echo", scalar)
    assert frame == {"jsonrpc": "2.0", "id": 3, "method": "echo", "params": [scalar]}
    assert type(frame["params"][0]) is type(scalar)


def test_request_without_payload_omits_params(dialect: JsonRpcDialect) -> None:
    """A None payload leaves "params" out altogether."""
    assert dialect.request(4, "now", None) == {"jsonrpc": "2.0", "id": 4, "method": "now"}


def test_request_with_id_zero(dialect: JsonRpcDialect) -> None:
    """Request id 0 is carried as 0, not dropped."""
    assert dialect.request(0, "now", None) == {"jsonrpc": "2.0", "id": 0, "method": "now"}


def test_request_ignores_origin(dialect: JsonRpcDialect) -> None:
    """origin has no place in JSON-RPC: the frame is the same with or without it."""
    assert dialect.request(5, "m", {"x": 1}, origin="session-1") == dialect.request(
        5, "m", {"x": 1}
    )


def test_event_is_a_notification(dialect: JsonRpcDialect) -> None:
    """An event has no "id", so the server never answers it."""
    assert dialect.event(9, "typing", {"user": "ann"}, origin="s") == {
        "jsonrpc": "2.0",
        "method": "typing",
        "params": {"user": "ann"},
    }


@pytest.mark.parametrize(
    ("data", "params"),
    [([1], [1]), ((1, 2), [1, 2]), (7, [7]), ("x", ["x"]), (False, [False]), ({}, {}), ([], [])],
)
def test_event_params_follow_the_request_rules(
    dialect: JsonRpcDialect, data: Any, params: Any
) -> None:
    """Event data is wrapped exactly as request payloads are."""
    assert dialect.event(1, "e", data) == {"jsonrpc": "2.0", "method": "e", "params": params}


def test_event_without_data_omits_params(dialect: JsonRpcDialect) -> None:
    """A None event has no "params"."""
    assert dialect.event(1, "tick", None) == {"jsonrpc": "2.0", "method": "tick"}


def test_query_command_and_authenticate(dialect: JsonRpcDialect) -> None:
    """query and command call the resource or action; authenticate calls auth_method."""
    assert dialect.query("users.get", {"id": 1}) == ("users.get", {"id": 1})
    assert dialect.command("users.delete", [1]) == ("users.delete", [1])
    assert dialect.authenticate({"token": "t"}) == ("authenticate", {"token": "t"})
    assert JsonRpcDialect(auth_method="login").authenticate("t") == ("login", "t")


def test_authenticate_frames_through_request(dialect: JsonRpcDialect) -> None:
    """authenticate's (kind, payload) makes a well-formed request."""
    kind, payload = dialect.authenticate({"token": "t"})
    assert dialect.request(1, kind, payload) == {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "authenticate",
        "params": {"token": "t"},
    }


def test_subscribe_and_unsubscribe_frames(dialect: JsonRpcDialect) -> None:
    """Subscribe and unsubscribe are requests with reserved string ids."""
    assert dialect.subscribe("news") == {
        "jsonrpc": "2.0",
        "id": "wsclient.subscribe:news",
        "method": "subscribe",
        "params": {"channel": "news"},
    }
    assert dialect.unsubscribe("news") == {
        "jsonrpc": "2.0",
        "id": "wsclient.unsubscribe:news",
        "method": "unsubscribe",
        "params": {"channel": "news"},
    }


def test_subscribe_and_unsubscribe_use_configured_methods() -> None:
    """subscribe_method and unsubscribe_method name the methods; the ids stay reserved."""
    dialect = JsonRpcDialect(subscribe_method="chan.join", unsubscribe_method="chan.leave")
    assert dialect.subscribe("a") == {
        "jsonrpc": "2.0",
        "id": "wsclient.subscribe:a",
        "method": "chan.join",
        "params": {"channel": "a"},
    }
    assert dialect.unsubscribe("a") == {
        "jsonrpc": "2.0",
        "id": "wsclient.unsubscribe:a",
        "method": "chan.leave",
        "params": {"channel": "a"},
    }


def test_publish_frame() -> None:
    """Publish is a notification of publish_method with the channel and data."""
    assert JsonRpcDialect().publish("news", {"t": 1}) == {
        "jsonrpc": "2.0",
        "method": "publish",
        "params": {"channel": "news", "data": {"t": 1}},
    }
    assert JsonRpcDialect(publish_method="post").publish("n", None) == {
        "jsonrpc": "2.0",
        "method": "post",
        "params": {"channel": "n", "data": None},
    }


def test_ping_is_none_by_default(dialect: JsonRpcDialect) -> None:
    """Without ping_method there is no application-level ping."""
    assert dialect.ping() is None


def test_ping_with_ping_method() -> None:
    """With ping_method, ping is a request with the reserved id and no params."""
    assert JsonRpcDialect(ping_method="system.ping").ping() == {
        "jsonrpc": "2.0",
        "id": "wsclient.ping",
        "method": "system.ping",
    }


@pytest.mark.parametrize("message", [{"jsonrpc": "2.0", "method": "m"}, {}, [1], "text", None])
def test_address_leaves_messages_unchanged(dialect: JsonRpcDialect, message: Any) -> None:
    """address adds no "from": it returns the very object it was given."""
    before = repr(message)
    assert dialect.address(message, "session-1") is message
    assert repr(message) == before


# -- inbound: replies -------------------------------------------------------------


@pytest.mark.parametrize("request_id", [1, 0, 12345678901234567890, "abc", "", 2.5])
def test_result_reply(dialect: JsonRpcDialect, request_id: Any) -> None:
    """A result answers the request with that id: int, 0, big, string or number."""
    message = {"jsonrpc": "2.0", "id": request_id, "result": {"ok": True}}
    assert snap(dialect.route(message)) == expect(
        Route.REPLY, message, request_id=request_id, result={"ok": True}
    )


def test_null_result_is_still_a_result(dialect: JsonRpcDialect) -> None:
    """ "result": null is a successful reply whose result is None."""
    message = {"jsonrpc": "2.0", "id": 3, "result": None}
    assert snap(dialect.route(message)) == expect(Route.REPLY, message, request_id=3)


def test_missing_jsonrpc_member_is_tolerated(dialect: JsonRpcDialect) -> None:
    """A response without "jsonrpc" still routes."""
    message = {"id": 1, "result": 5}
    assert snap(dialect.route(message)) == expect(Route.REPLY, message, request_id=1, result=5)


@pytest.mark.parametrize("version", ["1.0", "2", 2.0, 2, None, ["2.0"]])
def test_wrong_jsonrpc_version_is_invalid(dialect: JsonRpcDialect, version: Any) -> None:
    """A "jsonrpc" member that is not the string "2.0" is INVALID."""
    message = {"jsonrpc": version, "id": 1, "result": 5}
    problem = problem_of(dialect, message)
    assert problem == f"'jsonrpc' is {version!r}, not '2.0'"


def test_error_reply_with_data(dialect: JsonRpcDialect) -> None:
    """An error object becomes a RemoteError with its message, code, data and request id."""
    message = {
        "jsonrpc": "2.0",
        "id": 4,
        "error": {"code": -32602, "message": "Invalid params", "data": {"field": "x"}},
    }
    inbound = dialect.route(message)
    assert snap(inbound) == expect(
        Route.REPLY,
        message,
        request_id=4,
        error=RemoteError("Invalid params", code=-32602, data={"field": "x"}, request_id=4),
    )


def test_error_reply_without_data(dialect: JsonRpcDialect) -> None:
    """Without "data" the RemoteError's data is None."""
    message = {"jsonrpc": "2.0", "id": "s", "error": {"code": -32601, "message": "Not found"}}
    assert snap(dialect.route(message)) == expect(
        Route.REPLY,
        message,
        request_id="s",
        error=RemoteError("Not found", code=-32601, request_id="s"),
    )


def test_error_reply_for_id_zero(dialect: JsonRpcDialect) -> None:
    """An error for request 0 is a REPLY for 0, not a SYSTEM notice."""
    message = {"jsonrpc": "2.0", "id": 0, "error": {"code": 1, "message": "no"}}
    assert snap(dialect.route(message)) == expect(
        Route.REPLY, message, request_id=0, error=RemoteError("no", code=1, request_id=0)
    )


@pytest.mark.parametrize(
    ("error", "text", "code", "data"),
    [
        ("boom", "malformed JSON-RPC error: not an object: 'boom'", None, None),
        (42, "malformed JSON-RPC error: not an object: 42", None, None),
        (None, "malformed JSON-RPC error: not an object: None", None, None),
        ([1, 2], "malformed JSON-RPC error: not an object: [1, 2]", None, None),
        ({}, "malformed JSON-RPC error (no 'code', no 'message')", None, None),
        ({"code": 5}, "malformed JSON-RPC error (no 'message')", 5, None),
        ({"message": "m"}, "malformed JSON-RPC error (no 'code'): m", None, None),
        (
            {"code": "5", "message": "m", "data": [1]},
            "malformed JSON-RPC error ('code' is '5'): m",
            None,
            [1],
        ),
        (
            {"code": True, "message": "m"},
            "malformed JSON-RPC error ('code' is True): m",
            None,
            None,
        ),
        ({"code": 1.0, "message": "m"}, "malformed JSON-RPC error ('code' is 1.0): m", None, None),
        ({"code": 7, "message": 8}, "malformed JSON-RPC error ('message' is 8)", 7, None),
        (
            {"code": None, "message": None},
            "malformed JSON-RPC error ('code' is None, 'message' is None)",
            None,
            None,
        ),
    ],
)
def test_malformed_error_is_still_an_error_reply(
    dialect: JsonRpcDialect, error: Any, text: str, code: Any, data: Any
) -> None:
    """A malformed error member still fails the request, with a message that says what is wrong."""
    message = {"jsonrpc": "2.0", "id": 8, "error": error}
    assert snap(dialect.route(message)) == expect(
        Route.REPLY,
        message,
        request_id=8,
        error=RemoteError(text, code=code, data=data, request_id=8),
    )


def test_malformed_error_text_is_truncated(dialect: JsonRpcDialect) -> None:
    """Huge wire values are cut to about 100 characters in the error's text."""
    blob = "x" * 10_000
    for error in (blob, {"code": "y" * 10_000, "message": blob}, {"x": [blob] * 100}):
        inbound = dialect.route({"id": 1, "error": error})
        assert inbound.route is Route.REPLY
        assert isinstance(inbound.error, RemoteError)
        assert len(str(inbound.error)) <= 250
        assert blob not in str(inbound.error)


def test_well_formed_error_keeps_the_server_message_whole(dialect: JsonRpcDialect) -> None:
    """A valid error's message is the server's, not truncated."""
    text = "long " * 100
    inbound = dialect.route({"id": 1, "error": {"code": 1, "message": text}})
    assert inbound.error is not None
    assert str(inbound.error) == text


def test_error_with_null_id_is_a_system_notice(dialect: JsonRpcDialect) -> None:
    """An error with "id": null (the server could not read the request) is SYSTEM."""
    error = {"code": -32700, "message": "Parse error"}
    message = {"jsonrpc": "2.0", "id": None, "error": error}
    assert snap(dialect.route(message)) == expect(
        Route.SYSTEM, message, result=error, error=RemoteError("Parse error", code=-32700)
    )


def test_malformed_error_with_null_id_is_a_system_notice(dialect: JsonRpcDialect) -> None:
    """A malformed error with a null id is still SYSTEM with a RemoteError."""
    message = {"id": None, "error": "bad"}
    assert snap(dialect.route(message)) == expect(
        Route.SYSTEM,
        message,
        result="bad",
        error=RemoteError("malformed JSON-RPC error: not an object: 'bad'"),
    )


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ({"id": 1, "result": 1, "error": {"code": 1, "message": "m"}}, "both 'result' and 'error'"),
        ({"jsonrpc": "2.0", "id": 1}, "neither 'method' nor 'result' nor 'error'"),
        ({"jsonrpc": "2.0"}, "neither 'method' nor 'result' nor 'error'"),
        ({}, "neither 'method' nor 'result' nor 'error'"),
        ({"result": 1}, "a response without 'id'"),
        ({"error": {"code": 1, "message": "m"}}, "a response without 'id'"),
        ({"id": None, "result": 1}, "a result with a null 'id'"),
        ({"id": True, "result": 1}, "'id' is not a string or number: True"),
        ({"id": [1], "result": 1}, "'id' is not a string or number: [1]"),
        ({"id": {"a": 1}, "error": "e"}, "'id' is not a string or number: {'a': 1}"),
        ({"id": 1, "method": "m", "result": 1}, "both 'method' and 'result' or 'error'"),
        ({"id": "wsclient.other", "result": 1}, "a response to an unknown reserved id"),
    ],
)
def test_malformed_responses_are_invalid(
    dialect: JsonRpcDialect, message: dict[str, Any], problem: str
) -> None:
    """Responses that break the spec are INVALID, with the reason."""
    assert problem in problem_of(dialect, message)


# -- inbound: reserved ids --------------------------------------------------------


@pytest.mark.parametrize("channel", ["news", "", "a:b", "wsclient.ping", "ünï"])
def test_subscribe_reply_confirms(dialect: JsonRpcDialect, channel: str) -> None:
    """The reply to a subscribe request confirms that very channel."""
    request = dialect.subscribe(channel)
    message = {"jsonrpc": "2.0", "id": request["id"], "result": True}
    assert snap(dialect.route(message)) == expect(Route.CONFIRM, message, channel=channel)


def test_subscribe_error_refuses(dialect: JsonRpcDialect) -> None:
    """An error reply to a subscribe request is CONFIRM with the error."""
    message = {
        "jsonrpc": "2.0",
        "id": "wsclient.subscribe:secret",
        "error": {"code": 403, "message": "Forbidden", "data": "no"},
    }
    assert snap(dialect.route(message)) == expect(
        Route.CONFIRM,
        message,
        channel="secret",
        error=RemoteError("Forbidden", code=403, data="no", request_id="wsclient.subscribe:secret"),
    )


def test_unsubscribe_reply_is_an_ack(dialect: JsonRpcDialect) -> None:
    """The reply to an unsubscribe request is an ACK for its channel."""
    message = {"jsonrpc": "2.0", "id": dialect.unsubscribe("news")["id"], "result": None}
    assert snap(dialect.route(message)) == expect(Route.ACK, message, channel="news")


def test_unsubscribe_error_is_an_ack_with_the_error(dialect: JsonRpcDialect) -> None:
    """An error reply to an unsubscribe is still an ACK, carrying the error."""
    message = {"id": "wsclient.unsubscribe:n", "error": {"code": 1, "message": "gone"}}
    assert snap(dialect.route(message)) == expect(
        Route.ACK,
        message,
        channel="n",
        error=RemoteError("gone", code=1, request_id="wsclient.unsubscribe:n"),
    )


def test_ping_reply_is_a_heartbeat() -> None:
    """The reply to the ping request is a HEARTBEAT."""
    dialect = JsonRpcDialect(ping_method="ping")
    message = {"jsonrpc": "2.0", "id": dialect.ping()["id"], "result": "pong"}
    assert snap(dialect.route(message)) == expect(Route.HEARTBEAT, message)


def test_ping_error_is_still_a_heartbeat(dialect: JsonRpcDialect) -> None:
    """An error reply to the ping proves the server alive: HEARTBEAT, with the error."""
    message = {"id": "wsclient.ping", "error": {"code": -32601, "message": "Method not found"}}
    assert snap(dialect.route(message)) == expect(
        Route.HEARTBEAT,
        message,
        error=RemoteError("Method not found", code=-32601, request_id="wsclient.ping"),
    )


def test_string_ids_outside_the_reserved_prefix_are_replies(dialect: JsonRpcDialect) -> None:
    """Only ids starting with "wsclient." are reserved."""
    for request_id in ("wsclient", "wsclientx.ping", "subscribe:news", "Wsclient.ping"):
        message = {"id": request_id, "result": 1}
        assert snap(dialect.route(message)) == expect(
            Route.REPLY, message, request_id=request_id, result=1
        )


# -- inbound: notifications and server requests -----------------------------------


def test_delivery(dialect: JsonRpcDialect) -> None:
    """A delivery_method notification delivers its data on its channel."""
    message = {
        "jsonrpc": "2.0",
        "method": "message",
        "params": {"channel": "news", "data": {"t": 1}},
    }
    assert snap(dialect.route(message)) == expect(
        Route.DELIVERY, message, channel="news", result={"t": 1}
    )


def test_delivery_of_null_data(dialect: JsonRpcDialect) -> None:
    """ "data": null is delivered as None; what matters is that the key is there."""
    message = {"method": "message", "params": {"channel": "c", "data": None, "seq": 4}}
    assert snap(dialect.route(message)) == expect(Route.DELIVERY, message, channel="c")


def test_delivery_with_configured_method() -> None:
    """delivery_method names the delivery; "message" is then an ordinary notification."""
    dialect = JsonRpcDialect(delivery_method="channel.event")
    delivery = {"method": "channel.event", "params": {"channel": "c", "data": 1}}
    other = {"method": "message", "params": {"channel": "c", "data": 1}}
    assert snap(dialect.route(delivery)) == expect(Route.DELIVERY, delivery, channel="c", result=1)
    assert snap(dialect.route(other)) == expect(Route.OTHER, other)


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        (None, "a 'message' notification whose 'params' is not an object"),
        (["news", 1], "a 'message' notification whose 'params' is not an object"),
        ({"data": 1}, "a 'message' notification without a string 'channel'"),
        ({"channel": 5, "data": 1}, "a 'message' notification without a string 'channel'"),
        ({"channel": "news"}, "a 'message' notification on 'news' without 'data'"),
    ],
)
def test_malformed_delivery_is_invalid(dialect: JsonRpcDialect, params: Any, problem: str) -> None:
    """A delivery without an object of a string channel and data is INVALID."""
    assert problem_of(dialect, {"jsonrpc": "2.0", "method": "message", "params": params}) == problem


def test_delivery_without_params_is_invalid(dialect: JsonRpcDialect) -> None:
    """A delivery_method notification with no params at all is INVALID."""
    problem = problem_of(dialect, {"method": "message"})
    assert problem == "a 'message' notification whose 'params' is not an object"


@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "2.0", "method": "user.joined", "params": {"id": 1}},
        {"jsonrpc": "2.0", "method": "tick"},
        {"method": "tick", "params": 5},
    ],
)
def test_other_notifications(dialect: JsonRpcDialect, message: dict[str, Any]) -> None:
    """A notification of any other method is OTHER, for the application."""
    assert snap(dialect.route(message)) == expect(Route.OTHER, message)


@pytest.mark.parametrize("request_id", [1, 0, "srv-1", None])
def test_server_requests_are_other(dialect: JsonRpcDialect, request_id: Any) -> None:
    """A request from the server (method and id) is OTHER: the application may answer it."""
    message = {"jsonrpc": "2.0", "id": request_id, "method": "confirm", "params": [1]}
    assert snap(dialect.route(message)) == expect(Route.OTHER, message)


def test_delivery_method_with_an_id_is_a_server_request(dialect: JsonRpcDialect) -> None:
    """A delivery_method call with an id expects an answer, so it is OTHER, not DELIVERY."""
    message = {"id": 3, "method": "message", "params": {"channel": "c", "data": 1}}
    assert snap(dialect.route(message)) == expect(Route.OTHER, message)


def test_server_request_with_a_bad_id_is_invalid(dialect: JsonRpcDialect) -> None:
    """A server request whose id no answer could echo usefully is INVALID."""
    problem = problem_of(dialect, {"id": [1], "method": "m"})
    assert problem == "'id' is not a string or number: [1]"


@pytest.mark.parametrize("method", [5, None, ["m"], {"m": 1}, True])
def test_non_string_method_is_invalid(dialect: JsonRpcDialect, method: Any) -> None:
    """A "method" that is not a string is INVALID, with or without an id."""
    assert problem_of(dialect, {"method": method}) == f"'method' is not a string: {method!r}"
    assert problem_of(dialect, {"id": 1, "method": method}) == (
        f"'method' is not a string: {method!r}"
    )


# -- inbound: batches and non-objects ---------------------------------------------


def test_batch_routes_each_item(dialect: JsonRpcDialect) -> None:
    """A batch is BATCH, its items routed one by one, in order."""
    reply = {"jsonrpc": "2.0", "id": 1, "result": "a"}
    failure = {"jsonrpc": "2.0", "id": 2, "error": {"code": -1, "message": "no"}}
    confirm = {"jsonrpc": "2.0", "id": "wsclient.subscribe:c", "result": True}
    delivery = {"jsonrpc": "2.0", "method": "message", "params": {"channel": "c", "data": 9}}
    other = {"jsonrpc": "2.0", "method": "hello"}
    message = [reply, failure, confirm, delivery, other, 5, [reply], {"jsonrpc": "1.0"}]
    assert snap(dialect.route(message)) == expect(
        Route.BATCH,
        message,
        items=(
            Inbound(Route.REPLY, reply, request_id=1, result="a"),
            Inbound(
                Route.REPLY,
                failure,
                request_id=2,
                error=RemoteError("no", code=-1, request_id=2),
            ),
            Inbound(Route.CONFIRM, confirm, channel="c"),
            Inbound(Route.DELIVERY, delivery, channel="c", result=9),
            Inbound(Route.OTHER, other),
            Inbound(Route.INVALID, 5, problem="a batch item is not a JSON-RPC object: 5"),
            Inbound(
                Route.INVALID,
                [reply],
                problem="a batch item is not a JSON-RPC object: "
                "[{'id': 1, 'jsonrpc': '2.0', 'result': 'a'}]",
            ),
            Inbound(Route.INVALID, {"jsonrpc": "1.0"}, problem="'jsonrpc' is '1.0', not '2.0'"),
        ),
    )


def test_batch_items_keep_their_messages(dialect: JsonRpcDialect) -> None:
    """Each item's message is the very element of the batch, and the batch's is the list."""
    message = [{"id": 1, "result": 1}, {"method": "m"}, None]
    inbound = dialect.route(message)
    assert inbound.message is message
    assert len(inbound.items) == 3
    for item, element in zip(inbound.items, message, strict=True):
        assert item.message is element


def test_empty_batch_is_invalid(dialect: JsonRpcDialect) -> None:
    """An empty array is not a batch: INVALID."""
    message: list[Any] = []
    assert snap(dialect.route(message)) == expect(Route.INVALID, message, problem="an empty batch")


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (None, "a message is not a JSON-RPC object: None"),
        (5, "a message is not a JSON-RPC object: 5"),
        (1.5, "a message is not a JSON-RPC object: 1.5"),
        (True, "a message is not a JSON-RPC object: True"),
        ("hello", "a message is not a JSON-RPC object: 'hello'"),
        (b"{}", "a message is not a JSON-RPC object: b'{}'"),
        ((1, 2), "a message is not a JSON-RPC object: (1, 2)"),
    ],
)
def test_non_objects_are_invalid(dialect: JsonRpcDialect, message: Any, problem: str) -> None:
    """Anything but an object or an array is INVALID, with a short quote of it."""
    assert snap(dialect.route(message)) == expect(Route.INVALID, message, problem=problem)


def test_every_inbound_keeps_the_message_as_given(dialect: JsonRpcDialect) -> None:
    """route() puts the very object it was given in Inbound.message."""
    messages: list[Any] = [
        {"id": 1, "result": 1},
        {"id": None, "error": {"code": 1, "message": "m"}},
        {"id": "wsclient.ping", "result": 1},
        {"method": "message", "params": {"channel": "c", "data": 1}},
        {"method": "x"},
        [{"id": 1, "result": 1}],
        [],
        "junk",
        None,
    ]
    for message in messages:
        assert dialect.route(message).message is message


# -- inbound: never raising -------------------------------------------------------

KEYS = ("jsonrpc", "id", "method", "params", "result", "error", "code", "message", "data")
STRINGS = (
    "",
    "2.0",
    "1.0",
    "message",
    "subscribe",
    "wsclient.ping",
    "wsclient.subscribe:c",
    "wsclient.unsubscribe:",
    "wsclient.",
    "channel",
    "data",
    "ü\x00\ud800",
)


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON-like value, biased towards JSON-RPC's member names and values."""
    roll = rng.random()
    if depth >= 4 or roll < 0.45:
        return rng.choice(
            [
                None,
                True,
                False,
                0,
                1,
                -32700,
                rng.randint(-(2**70), 2**70),
                rng.uniform(-1e9, 1e9),
                float("nan"),
                float("inf"),
                rng.choice(STRINGS),
                "x" * rng.randint(0, 300),
            ]
        )
    if roll < 0.6:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = [*KEYS, "channel", "other"]
    return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


@pytest.mark.parametrize("seed", [0, 1, 2024])
def test_route_never_raises_on_random_values(seed: int) -> None:
    """2,000 random JSON-like values each route to an Inbound, without raising."""
    rng = random.Random(seed)
    dialect = JsonRpcDialect(ping_method="ping")
    routes: set[Route] = set()
    for _ in range(2_000):
        message = random_value(rng)
        inbound = dialect.route(message)
        assert isinstance(inbound, Inbound)
        assert inbound.message is message
        routes.add(inbound.route)
        for item in (inbound, *inbound.items):
            if item.route is Route.INVALID:
                assert isinstance(item.problem, str)
                assert 0 < len(item.problem) <= 250
            if item.error is not None:
                assert isinstance(item.error, RemoteError)
    # The generator reaches more than the trivial routes, so the loop tests something.
    assert {Route.INVALID, Route.BATCH, Route.REPLY, Route.OTHER} <= routes


def test_route_never_raises_on_random_jsonrpc_shaped_objects() -> None:
    """2,000 random objects with JSON-RPC's members in every combination route without raising."""
    rng = random.Random(7)
    dialect = JsonRpcDialect()
    routes: set[Route] = set()
    for _ in range(2_000):
        message = {key: random_value(rng, depth=2) for key in KEYS if rng.random() < 0.4}
        if rng.random() < 0.5:
            message["jsonrpc"] = "2.0"
        if rng.random() < 0.3:
            message["params"] = {
                "channel": rng.choice(STRINGS),
                "data": random_value(rng, depth=3),
            }
        inbound = dialect.route(message)
        assert isinstance(inbound, Inbound)
        assert inbound.message is message
        routes.add(inbound.route)
    assert {Route.INVALID, Route.REPLY, Route.OTHER, Route.SYSTEM} <= routes


class Hostile(dict[str, Any]):
    """A dict whose every lookup raises."""

    def __contains__(self, key: object) -> bool:
        raise RuntimeError("no")

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("no")

    def get(self, key: str, default: Any = None) -> Any:
        raise RuntimeError("no")


class BadRepr:
    """An object whose repr raises."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_route_survives_hostile_values(dialect: JsonRpcDialect) -> None:
    """Values no JSON decoder makes (raising lookups, raising repr) are INVALID, not errors."""
    hostile = Hostile()
    assert snap(dialect.route(hostile)) == expect(
        Route.INVALID, hostile, problem="could not route the message: RuntimeError"
    )
    batch = [hostile, {"id": 1, "result": 1}]
    inbound = dialect.route(batch)
    assert inbound.route is Route.BATCH
    assert [item.route for item in inbound.items] == [Route.INVALID, Route.REPLY]
    bad = BadRepr()
    assert problem_of(dialect, bad).startswith("a message is not a JSON-RPC object: <BadRepr ")
    assert problem_of(dialect, {"jsonrpc": bad}).startswith("'jsonrpc' is <BadRepr ")


def test_route_survives_deep_and_huge_values(dialect: JsonRpcDialect) -> None:
    """Deep nesting, huge ints and self-reference quote briefly instead of raising."""
    deep: Any = 0
    for _ in range(100_000):
        deep = [deep]
    assert dialect.route(deep).route is Route.BATCH
    assert problem_of(dialect, {"jsonrpc": deep}).startswith("'jsonrpc' is [[[")
    huge = 10**5000
    assert problem_of(dialect, {"jsonrpc": huge}) == "'jsonrpc' is <int>, not '2.0'"
    loop: list[Any] = []
    loop.append(loop)
    assert dialect.route(loop).route is Route.BATCH
    error = dialect.route({"id": 1, "error": {"code": 1, "message": 2, "data": deep}}).error
    assert error is not None
    assert error.data is deep
