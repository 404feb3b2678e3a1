"""DefaultDialect against the tables of ARCHITECTURE.md: every frame, every route, no raising.

Pure logic: no sockets, no event loop. Inbound results are compared whole; a
RemoteError compares by identity, so :func:`snap` turns it into its type,
message and request id first. The last tests feed ``route()`` thousands of
seeded random values, and error values too deep or too big to print whole.
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Any

import pytest

from wsclient import DefaultDialect, Dialect, Inbound, RemoteError, Route

DIALECT = DefaultDialect()

#: The error messages the dialect makes from the wire are cut to this length.
ERROR_LIMIT = 500


def snap(inbound: Inbound) -> dict[str, Any]:
    """An Inbound as plain data, its error included, for whole-value equality."""
    fields = {f.name: getattr(inbound, f.name) for f in dataclasses.fields(inbound)}
    error = fields["error"]
    if error is not None:
        fields["error"] = (type(error), str(error), error.request_id)
    fields["items"] = tuple(snap(item) for item in inbound.items)
    return fields


def expect(route: Route, message: Any, **fields: Any) -> dict[str, Any]:
    """The snapshot of the Inbound built from ``fields``."""
    return snap(Inbound(route, message, **fields))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def split_timestamp(frame: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The frame without its timestamp, and the timestamp."""
    rest = dict(frame)
    return rest, rest.pop("timestamp")


def assert_recent_ms(timestamp: Any, before: int, after: int) -> None:
    """``timestamp`` is an int of milliseconds taken between ``before`` and ``after``."""
    assert type(timestamp) is int
    assert before <= timestamp <= after


# -- outbound ---------------------------------------------------------------------


def test_is_a_dialect_that_confirms_subscriptions() -> None:
    """DefaultDialect is a Dialect and expects the server to confirm subscriptions."""
    assert isinstance(DIALECT, Dialect)
    assert DIALECT.confirms_subscriptions is True
    assert repr(DIALECT) == "DefaultDialect()"


@pytest.mark.parametrize("kind", ["query", "command", "auth"])
def test_request_without_origin(kind: str) -> None:
    """A request is {id, type, timestamp, payload}, with no 'from' for the client itself."""
    before = now_ms()
    frame = DIALECT.request(7, kind, {"a": [1, 2]})
    after = now_ms()
    rest, timestamp = split_timestamp(frame)
    assert rest == {"id": 7, "type": kind, "payload": {"a": [1, 2]}}
    assert_recent_ms(timestamp, before, after)


def test_request_with_origin_carries_from() -> None:
    """A session's request carries its id in 'from'."""
    before = now_ms()
    frame = DIALECT.request(8, "query", None, origin="tab-1")
    after = now_ms()
    rest, timestamp = split_timestamp(frame)
    assert rest == {"id": 8, "type": "query", "payload": None, "from": "tab-1"}
    assert_recent_ms(timestamp, before, after)


def test_timestamp_is_close_to_now_in_milliseconds() -> None:
    """The timestamp is wall-clock milliseconds, not seconds or nanoseconds."""
    timestamp = DIALECT.request(1, "query", {})["timestamp"]
    assert abs(timestamp - time.time() * 1000) < 5_000


def test_event_without_origin() -> None:
    """An event is a request of type 'event' whose payload is {event, data}."""
    before = now_ms()
    frame = DIALECT.event(3, "moved", {"x": 1, "y": 2})
    after = now_ms()
    rest, timestamp = split_timestamp(frame)
    assert rest == {
        "id": 3,
        "type": "event",
        "payload": {"event": "moved", "data": {"x": 1, "y": 2}},
    }
    assert_recent_ms(timestamp, before, after)


def test_event_with_origin_carries_from() -> None:
    """A session's event carries its id in 'from'; data may be None."""
    rest, _ = split_timestamp(DIALECT.event(4, "hello", None, origin="tab-2"))
    assert rest == {
        "id": 4,
        "type": "event",
        "payload": {"event": "hello", "data": None},
        "from": "tab-2",
    }


def test_subscribe_unsubscribe_and_publish() -> None:
    """Channel frames are {action, channel} and, to publish, data."""
    assert DIALECT.subscribe("cursors") == {"action": "subscribe", "channel": "cursors"}
    assert DIALECT.unsubscribe("cursors") == {"action": "unsubscribe", "channel": "cursors"}
    assert DIALECT.publish("cursors", {"x": 3}) == {
        "action": "publish",
        "channel": "cursors",
        "data": {"x": 3},
    }


def test_publish_of_null_data_keeps_the_data_key() -> None:
    """Publishing None still sends 'data' (the Hub refuses a publish without it)."""
    assert DIALECT.publish("c", None) == {"action": "publish", "channel": "c", "data": None}


def test_ping() -> None:
    """The application-level ping is {"type": "ping"}."""
    assert DIALECT.ping() == {"type": "ping"}


def test_ping_is_a_fresh_value_each_time() -> None:
    """Changing one ping frame does not change the next."""
    first = DIALECT.ping()
    first["extra"] = 1
    assert DIALECT.ping() == {"type": "ping"}


def test_query_command_and_authenticate() -> None:
    """query, command and authenticate give the (kind, payload) of the seeds' protocol."""
    assert DIALECT.query("users", {"page": 2}) == (
        "query",
        {"resource": "users", "parameters": {"page": 2}},
    )
    assert DIALECT.command("join", None) == ("command", {"action": "join", "parameters": None})
    assert DIALECT.authenticate({"token": "t"}) == ("auth", {"token": "t"})


def test_address_adds_from_to_a_copy() -> None:
    """address() returns a copy of a dict with 'from' added and leaves the original alone."""
    message = {"type": "hello", "text": "hi"}
    addressed = DIALECT.address(message, "tab-3")
    assert addressed == {"type": "hello", "text": "hi", "from": "tab-3"}
    assert message == {"type": "hello", "text": "hi"}
    assert addressed is not message


def test_address_keeps_an_existing_from() -> None:
    """A dict that already names its sender is returned as it is."""
    message = {"type": "hello", "from": "someone-else"}
    assert DIALECT.address(message, "tab-3") is message
    assert message == {"type": "hello", "from": "someone-else"}


@pytest.mark.parametrize("message", ["text", b"bytes", [1, {"a": 2}], 42, None])
def test_address_leaves_non_dicts_unchanged(message: Any) -> None:
    """Strings, bytes, lists, numbers and None go unchanged."""
    assert DIALECT.address(message, "tab-3") is message


# -- inbound: replies -------------------------------------------------------------


@pytest.mark.parametrize("request_id", [0, 7, "r-1", 2.5])
def test_response_is_a_reply_with_its_result(request_id: Any) -> None:
    """A 'response' is a REPLY to requestId, carrying the payload as result."""
    message = {"id": 100, "type": "response", "requestId": request_id, "payload": {"ok": 1}}
    assert snap(DIALECT.route(message)) == expect(
        Route.REPLY, message, request_id=request_id, result={"ok": 1}
    )


def test_response_without_payload_has_a_null_result() -> None:
    """A response with no payload answers its request with None."""
    message = {"type": "response", "requestId": 3}
    assert snap(DIALECT.route(message)) == expect(Route.REPLY, message, request_id=3)


def test_response_origin_comes_from_from() -> None:
    """A reply's origin is its 'from' field."""
    message = {"type": "response", "requestId": 3, "payload": 1, "from": "tab-1"}
    assert snap(DIALECT.route(message)) == expect(
        Route.REPLY, message, request_id=3, result=1, origin="tab-1"
    )


def test_error_reply_raises_the_server_message() -> None:
    """An 'error' reply is a REPLY whose RemoteError says the server's message."""
    message = {"id": 101, "type": "error", "requestId": 9, "error": "no such room", "from": "t"}
    inbound = DIALECT.route(message)
    error = RemoteError("no such room", request_id=9)
    assert snap(inbound) == expect(Route.REPLY, message, request_id=9, error=error, origin="t")
    assert isinstance(inbound.error, RemoteError)
    assert str(inbound.error) == "no such room"
    assert inbound.error.request_id == 9


def test_error_reply_without_a_message_still_explains() -> None:
    """An error reply with no 'error' field still gives a RemoteError with some text."""
    message = {"type": "error", "requestId": 2}
    inbound = DIALECT.route(message)
    assert inbound.route is Route.REPLY
    assert isinstance(inbound.error, RemoteError)
    assert str(inbound.error) == "the server sent an error without a message"
    assert inbound.error.request_id == 2


def test_error_reply_with_a_structured_error_is_printed() -> None:
    """A non-string error becomes its printed form."""
    message = {"type": "error", "requestId": 2, "error": {"code": 4}}
    inbound = DIALECT.route(message)
    assert inbound.error is not None
    assert str(inbound.error) == "{'code': 4}"


@pytest.mark.parametrize("kind", ["response", "error"])
def test_reply_without_request_id_is_invalid(kind: str) -> None:
    """A response or error with no requestId is INVALID, with a problem naming requestId."""
    message = {"type": kind, "payload": 1, "error": "e", "from": "tab-1"}
    inbound = DIALECT.route(message)
    assert isinstance(inbound.problem, str)
    assert "requestId" in inbound.problem
    assert snap(inbound) == expect(Route.INVALID, message, origin="tab-1", problem=inbound.problem)


# -- inbound: channels ------------------------------------------------------------


def test_subscription_confirm() -> None:
    """A system subscription_confirm is a CONFIRM of the channel it names."""
    message = {"channel": "system", "data": {"type": "subscription_confirm", "channel": "news"}}
    assert snap(DIALECT.route(message)) == expect(Route.CONFIRM, message, channel="news")


def test_subscription_confirm_keeps_its_origin() -> None:
    """A confirmation's origin is its 'from' field."""
    data = {"type": "subscription_confirm", "channel": "news"}
    message = {"channel": "system", "data": data, "from": "tab-2"}
    assert snap(DIALECT.route(message)) == expect(
        Route.CONFIRM, message, channel="news", origin="tab-2"
    )


@pytest.mark.parametrize(
    "data",
    [
        {"type": "subscription_confirm"},
        {
            "type": "subscription_confirm",
            "channel": 5,
        },
    ],
)
def test_subscription_confirm_without_a_channel_is_invalid(data: dict[str, Any]) -> None:
    """A confirmation that names no channel (or not a string) is INVALID."""
    message = {"channel": "system", "data": data}
    inbound = DIALECT.route(message)
    assert isinstance(inbound.problem, str)
    assert "channel" in inbound.problem
    assert snap(inbound) == expect(Route.INVALID, message, problem=inbound.problem)


def test_system_error() -> None:
    """A system error is a SYSTEM notice with a RemoteError of its message, no request id."""
    data = {"type": "error", "message": "subscription limit reached (1000)"}
    message = {"channel": "system", "data": data, "from": "tab-1"}
    inbound = DIALECT.route(message)
    error = RemoteError("subscription limit reached (1000)")
    assert snap(inbound) == expect(Route.SYSTEM, message, result=data, error=error, origin="tab-1")
    assert inbound.error is not None
    assert inbound.error.request_id is None


def test_system_error_without_a_message_still_explains() -> None:
    """A system error with no message gets a RemoteError with some text."""
    data = {"type": "error"}
    message = {"channel": "system", "data": data}
    error = RemoteError("the server sent an error without a message")
    assert snap(DIALECT.route(message)) == expect(Route.SYSTEM, message, result=data, error=error)


@pytest.mark.parametrize(
    "data", [{"type": "maintenance", "at": "noon"}, {"text": "hello"}, "restarting", None, [1]]
)
def test_other_system_notices_have_no_error(data: Any) -> None:
    """Other system messages are SYSTEM notices carrying their data, without an error."""
    message = {"channel": "system", "data": data}
    assert snap(DIALECT.route(message)) == expect(Route.SYSTEM, message, result=data)


@pytest.mark.parametrize("data", [{"x": 1, "y": 2}, [1, 2], "text", 0, None, False])
def test_delivery(data: Any) -> None:
    """A message on any other channel is a DELIVERY of its data, null data included."""
    message = {"channel": "cursors", "data": data}
    assert snap(DIALECT.route(message)) == expect(
        Route.DELIVERY, message, channel="cursors", result=data
    )


def test_delivery_keeps_its_origin() -> None:
    """A delivery's origin is its 'from' field."""
    message = {"channel": "chat", "data": "hi", "from": "tab-1"}
    assert snap(DIALECT.route(message)) == expect(
        Route.DELIVERY, message, channel="chat", result="hi", origin="tab-1"
    )


def test_channel_message_with_a_type_is_still_a_delivery() -> None:
    """A 'type' that is not a reply or pong does not stop a channel message being delivered."""
    message = {"channel": "chat", "type": "said", "data": 1}
    assert snap(DIALECT.route(message)) == expect(Route.DELIVERY, message, channel="chat", result=1)


@pytest.mark.parametrize("channel", [None, 5, ["a"], {"n": 1}, True])
def test_non_string_channel_is_invalid(channel: Any) -> None:
    """A channel that is not a string is INVALID, with a problem naming the channel."""
    message = {"channel": channel, "data": 1, "from": "tab-1"}
    inbound = DIALECT.route(message)
    assert isinstance(inbound.problem, str)
    assert "channel" in inbound.problem
    assert snap(inbound) == expect(Route.INVALID, message, origin="tab-1", problem=inbound.problem)


@pytest.mark.parametrize("channel", ["news", "system"])
def test_channel_message_without_data_is_invalid(channel: str) -> None:
    """A channel message with no 'data' is INVALID, system channel included."""
    message = {"channel": channel}
    inbound = DIALECT.route(message)
    assert isinstance(inbound.problem, str)
    assert "data" in inbound.problem
    assert snap(inbound) == expect(Route.INVALID, message, problem=inbound.problem)


# -- inbound: heartbeat and the rest ----------------------------------------------


def test_pong_is_a_heartbeat() -> None:
    """{"type": "pong"} is the HEARTBEAT, with its origin if it has one."""
    assert snap(DIALECT.route({"type": "pong"})) == expect(Route.HEARTBEAT, {"type": "pong"})
    message = {"type": "pong", "from": "tab-1"}
    assert snap(DIALECT.route(message)) == expect(Route.HEARTBEAT, message, origin="tab-1")


@pytest.mark.parametrize(
    "message",
    [
        {},
        {"type": "greeting", "text": "Hello tab id: tab-1"},
        {"type": "ping"},
        {"type": None},
        {"type": ["response"]},
        {"payload": 1, "requestId": 2},
        {"action": "publish", "data": 1},
    ],
)
def test_other_dicts_are_other(message: dict[str, Any]) -> None:
    """Dicts that are no reply, heartbeat or channel message go to the application."""
    assert snap(DIALECT.route(message)) == expect(Route.OTHER, message)


def test_other_keeps_its_origin() -> None:
    """An application message's origin is its 'from' field (the SharedWorker pattern)."""
    message = {"type": "greeting", "from": "tab-2"}
    assert snap(DIALECT.route(message)) == expect(Route.OTHER, message, origin="tab-2")


@pytest.mark.parametrize("message", ["text", b"\x00\x01", 3, 2.5, None, True, [1, {"from": "t"}]])
def test_non_dicts_are_other(message: Any) -> None:
    """Non-dict values (raw frames, arrays, scalars) are OTHER, for every session."""
    assert snap(DIALECT.route(message)) == expect(Route.OTHER, message)


def test_route_keeps_the_message_itself() -> None:
    """Inbound.message is the very object routed, not a copy."""
    message = {"channel": "c", "data": {"deep": [1]}}
    assert DIALECT.route(message).message is message


# -- route() never raises ---------------------------------------------------------

KEYS = ("type", "channel", "data", "requestId", "payload", "error", "from", "message", "id")
WORDS = (
    "response",
    "error",
    "pong",
    "ping",
    "system",
    "subscription_confirm",
    "event",
    "query",
    "news",
    "",
)


def random_scalar(rng: random.Random) -> Any:
    pick = rng.randrange(8)
    if pick == 0:
        return None
    if pick == 1:
        return rng.random() < 0.5
    if pick == 2:
        return rng.randint(-(2**63), 2**64 - 1)
    if pick == 3:
        return rng.choice([0.0, -0.0, 1.5, -1e308, 1e-300, rng.uniform(-1e6, 1e6)])
    if pick == 4:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(12)))
    return rng.choice(WORDS)


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A JSON-like value, often a dict made of the protocol's keys and words."""
    pick = rng.randrange(10) if depth < 4 else 0
    if pick <= 2:
        return random_scalar(rng)
    if pick == 3:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if pick == 4:
        return {
            random_scalar(rng) if rng.random() < 0.2 else rng.choice(WORDS): random_value(
                rng, depth + 1
            )
            for _ in range(rng.randrange(4))
        }
    # A protocol-shaped dict: some of the protocol's keys with wire-like values.
    message: dict[Any, Any] = {}
    for key in rng.sample(KEYS, rng.randrange(1, len(KEYS))):
        message[key] = rng.choice(WORDS) if rng.random() < 0.5 else random_value(rng, depth + 1)
    if rng.random() < 0.3:
        message["channel"] = "system"
        message["data"] = random_value(rng, depth + 1)
        if rng.random() < 0.7 and isinstance(message["data"], dict):
            message["data"]["type"] = rng.choice(["subscription_confirm", "error", "notice"])
    return message


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_route_never_raises_on_random_values(seed: int) -> None:
    """2,000 random values per seed reach every route; route() never raises and is consistent."""
    rng = random.Random(seed)
    seen = set()
    for _ in range(2_000):
        message = random_value(rng)
        inbound = DIALECT.route(message)
        assert isinstance(inbound, Inbound)
        seen.add(inbound.route)
        assert isinstance(inbound.route, Route)
        assert inbound.message is message
        if inbound.route is Route.INVALID:
            assert isinstance(inbound.problem, str)
            assert inbound.problem
        else:
            assert inbound.problem is None
        if inbound.error is not None:
            assert isinstance(inbound.error, RemoteError)
            assert len(str(inbound.error)) <= ERROR_LIMIT
        if not isinstance(message, dict):
            assert snap(inbound) == expect(Route.OTHER, message)
        elif inbound.route is Route.DELIVERY:
            stamp = message.get("id")  # a delivery id is a str or an int, not a bool
            stamped = isinstance(stamp, str | int) and not isinstance(stamp, bool)
            assert snap(inbound) == expect(
                Route.DELIVERY,
                message,
                channel=message["channel"],
                result=message["data"],
                origin=message.get("from"),
                delivery_id=stamp if stamped else None,
            )
        elif inbound.route is Route.REPLY:
            assert inbound.request_id == message["requestId"]
            assert (inbound.error is None) == (message["type"] == "response")
    # The values reach every route the default dialect has, not only OTHER.
    assert seen == set(Route) - {Route.ACK, Route.BATCH}


def deeply_nested(levels: int) -> Any:
    value: Any = "bottom"
    for i in range(levels):
        value = {"level": value} if i % 2 else [value]
    return value


BIG = 2**20  # one megabyte, in characters or elements

HUGE_ERRORS = {
    "nested 10,000 levels": deeply_nested(10_000),
    "a 1 MB string": "x" * BIG,
    "a 1 MB list": list(range(BIG // 8)),
    "a dict with a 1 MB key": {"k" * BIG: "v"},
    "a 1 MB dict": {str(i): i for i in range(BIG // 16)},
    "1 MB of bytes": b"\xff" * BIG,
}


@pytest.mark.parametrize("error", HUGE_ERRORS.values(), ids=HUGE_ERRORS.keys())
def test_huge_or_deep_error_reply_gives_a_bounded_message(error: Any) -> None:
    """An error reply's message is cut to 500 characters, whatever the size or depth."""
    message = {"type": "error", "requestId": 1, "error": error}
    inbound = DIALECT.route(message)
    assert inbound.route is Route.REPLY
    assert inbound.error is not None
    assert 0 < len(str(inbound.error)) <= ERROR_LIMIT


@pytest.mark.parametrize("error", HUGE_ERRORS.values(), ids=HUGE_ERRORS.keys())
def test_huge_or_deep_system_error_gives_a_bounded_message(error: Any) -> None:
    """A system error's message is cut to 500 characters, whatever the size or depth."""
    message = {"channel": "system", "data": {"type": "error", "message": error}}
    inbound = DIALECT.route(message)
    assert inbound.route is Route.SYSTEM
    assert inbound.error is not None
    assert 0 < len(str(inbound.error)) <= ERROR_LIMIT


def test_long_string_error_keeps_its_start() -> None:
    """A long error text is cut at the end, keeping the start of the server's message."""
    text = "room is full: " + "y" * 10_000
    inbound = DIALECT.route({"type": "error", "requestId": 1, "error": text})
    assert str(inbound.error) == text[: ERROR_LIMIT - 3] + "..."


def test_error_reply_with_a_huge_integer_does_not_raise() -> None:
    """An integer error too long to print (a custom codec can make one) still routes."""
    inbound = DIALECT.route({"type": "error", "requestId": 1, "error": 10**5_000})
    assert inbound.route is Route.REPLY
    assert inbound.error is not None
    assert 0 < len(str(inbound.error)) <= ERROR_LIMIT
