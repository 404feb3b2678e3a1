"""Fuzzing the inbound path: a HostileServer feeds the client garbage, on asyncio and trio.

Categories: malformed JSON; valid JSON of the wrong shape for the default
dialect and for JSON-RPC (batches included); replies to unknown, cancelled
and timed-out requests; floods of deliveries for channels nobody subscribed
to; frame-level oddities the protocol allows (pings between fragments,
unsolicited pongs, empty and binary frames, compressed messages, messages of
exactly ``max_size``); and connection killers (invalid UTF-8, frames over
``max_size``, deflate bombs, reserved bits and opcodes, masked or fragmented
control frames, bad close codes) and bad opening handshakes.

The oracle: no exception escapes the client (and its message handler never
raised); every bad message is reported to ``on_error`` exactly once, as a
ProtocolError or (for the server's own error notices) a RemoteError, counted
against what each generator says it made; a connection killer makes the
client close with the code RFC 6455 names (1007, 1009 or 1002), seen in the
close frame the server receives, and the client reconnects; and between
bursts of garbage a real request still gets its real reply, with no request
left pending and the buffers of unhandled messages at their bounds.

``WSCLIENT_FUZZ_FRAMES`` (default 12000) sets how many frames the
keep-serving tests send per backend; ``WSCLIENT_FUZZ_SEED`` picks the inputs
(default fixed, so a failure reproduces).
"""

from __future__ import annotations

import math
import os
import random
import struct
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson
import pytest

import wsclient
from wsclient import (
    Backoff,
    BufferPolicy,
    ConnectError,
    ConnectionClosed,
    ConnectionState,
    JsonRpcDialect,
    MessageTooBig,
    ProtocolError,
    RemoteError,
    RequestTimeout,
    StateChange,
)
from wsclient.testing import HostileConnection, HostileServer, deflate, encode_frame

FRAMES = max(1, int(os.environ.get("WSCLIENT_FUZZ_FRAMES", "12000")))
SEED = int(os.environ.get("WSCLIENT_FUZZ_SEED", "6455"))
MAX_SIZE = 65536  # the client's max_size: keeps over-size frames and bombs cheap
BATCH = 400  # garbage frames per round trip
WAIT = 10.0  # seconds any one step may take before the test fails

# The share of the frame budget each keep-serving test sends.
SHARES = {
    "malformed JSON": 0.25,
    "default-dialect shapes": 0.22,
    "JSON-RPC shapes": 0.22,
    "floods": 0.16,
    "stale replies": 0.05,
    "frame oddities": 0.10,
}
# (backend, category) -> frames sent; the last test checks the sum.
FUZZED: Counter[tuple[str, str]] = Counter()

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

# What a message should cost: (ProtocolErrors, RemoteErrors) reported.
Expect = tuple[int, int]
OK: Expect = (0, 0)
P: Expect = (1, 0)
R: Expect = (0, 1)
Case = tuple[bytes, Expect]  # a frame and what it should cost


def budget(category: str) -> int:
    return math.ceil(FRAMES * SHARES[category])


def rng_for(name: str, backend: str) -> random.Random:
    return random.Random(f"{SEED}:{name}:{backend}")


def add(a: Expect, b: Expect) -> Expect:
    return (a[0] + b[0], a[1] + b[1])


# Building JSON, hostile parts included


class Raw(bytes):
    """JSON text spliced into a message as it is (deep nesting, huge numbers)."""


def dumps(value: Any) -> bytes:
    if isinstance(value, Raw):
        return bytes(value)
    if isinstance(value, dict):
        items = (orjson.dumps(key) + b":" + dumps(item) for key, item in value.items())
        return b"{" + b",".join(items) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(dumps(item) for item in value) + b"]"
    return orjson.dumps(value)


def text(rng: random.Random) -> str:
    pool = "abcXYZ09 _-:./\\\"'\u00e9\u4e2d\U0001f600\u2028\x00\x1f\ufeff"
    return "".join(rng.choice(pool) for _ in range(rng.randrange(12)))


def deep(rng: random.Random, limit: int = 1000) -> Raw:
    """Nesting the parser accepts (it allows 1024 levels) but naive recursion does not."""
    depth = rng.choice([rng.randrange(1, 50), rng.randrange(900, limit + 1)])
    if rng.random() < 0.5:
        return Raw(b"[" * depth + b"]" * depth)
    return Raw(b'{"a":' * depth + b"1" + b"}" * depth)


def big_number(rng: random.Random) -> Raw:
    """A finite number past 64 bits (parsed as a float)."""
    return Raw(rng.choice([b"", b"-"]) + b"1" + b"0" * rng.randrange(20, 300))


def value(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value, the awkward ones often."""
    kind = rng.randrange(12 if depth < 3 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63 - 1, -(2**63), 2**64 - 1, rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e308, -1e-308, 5e-324, rng.random()])
    if kind == 4:
        return text(rng)
    if kind == 5:
        return "x" * rng.randrange(1000, 5000)
    if kind == 6:
        return big_number(rng)
    if kind == 7:
        return deep(rng, 900)  # room for the levels around it
    if kind in (8, 9):
        return [value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {text(rng): value(rng, depth + 1) for _ in range(rng.randrange(4))}


def not_a_string(rng: random.Random) -> Any:
    return rng.choice(
        [None, True, 0, 7, -1.5, [], ["c"], {}, {"channel": "c"}, big_number(rng), deep(rng, 900)]
    )


def unknown_id(rng: random.Random, *, json_rpc: bool = False) -> Any:
    """A request id no request of the client has (they count up from 1)."""
    ids: list[Callable[[], Any]] = [
        lambda: rng.randrange(10**9, 2**63),
        lambda: -rng.randrange(1, 2**63),
        lambda: 0,
        lambda: 1e9 + rng.random() * 1e300,
        lambda: rng.randrange(10**9, 10**12) + 0.5,
        lambda: "req-" + text(rng),
        lambda: "",
        lambda: str(rng.randrange(10**12, 10**19)),
        lambda: "9" * rng.randrange(21, 6000),
        lambda: big_number(rng),
    ]
    if not json_rpc:  # JSON-RPC reports these as invalid ids instead
        ids += [lambda: None, lambda: True, lambda: [1], lambda: {"id": 1}, lambda: deep(rng)]
    return rng.choice(ids)()


def other_channel(rng: random.Random, avoid: tuple[str, ...] = ()) -> str:
    while True:
        name = rng.choice(["", "prices", "REAL", "real ", "left", "system ", text(rng), "c" * 5000])
        if name not in avoid and name != "system":
            return name


# Malformed JSON: every one is a ProtocolError


BAD_LITERALS = (
    *(b"NaN", b"-Infinity", b'{"requestId":NaN}', b"[1,Infinity]", b"nan", b"undefined"),
    *(b"True", b"None", b"tru", b"nul", b"'x'", b"{'a':1}", b"{a:1}", b'{"a" 1}'),
    *(b'{"a":1 "b":2}', b"[1 2]", b"[1,,2]", b"[,1]", b'{"a":}', b"{:1}", b"[1,]"),
    *(b'{"a":1,}', b"01", b"-01", b"+1", b".5", b"1.", b"1e", b"1e+", b"-", b"0x10"),
    *(b"\xef\xbb\xbf{}", b"", b" ", b"\t\n\r ", b"/* c */ {}", b"[", b"{", b"]"),
    *(b'"', b'"\\', b"\x00", b"[]]", b"{}}"),
)
BAD_ESCAPES = (
    *(b"\\x41", b"\\u12", b"\\uZZZZ", b"\\ud800", b"\\udc00", b"\\ud800\\u0041"),
    *(b"\\a", b"\\'", b"\\U0001F600", b"\\"),
)
BAD_UTF8 = (  # stray, overlong, surrogate, past U+10FFFF, truncated, 5-byte
    *(b"\xff", b"\xfe", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"),
    *(b"\x80", b"\xbf", b"\xe2\x82", b"\xf0\x9f\x98", b"\xf8\x88\x80\x80\x80"),
)


def malformed(rng: random.Random) -> bytes:
    kind = rng.randrange(9)
    if kind == 0:  # a proper prefix of an object, array or string is never complete
        doc = dumps(rng.choice([{"type": "response", "requestId": 1}, [value(rng)], text(rng)]))
        return doc[: rng.randrange(len(doc))]
    if kind == 1:  # trailing garbage (no digits: "1" after "5" is still a number)
        garbage = [b"x", b"}", b"]", b",", b"{}", b"[]", b'"', b"\x00", b"//", b"nul", b" ."]
        return dumps(value(rng)) + rng.choice([b"", b" "]) + rng.choice(garbage)
    if kind == 2:
        return rng.choice(BAD_LITERALS)
    if kind == 3:  # invalid escapes and lone surrogates
        escape = rng.choice(BAD_ESCAPES)
        return b'{"channel":"' + escape + b'","data":1}'
    if kind == 4:  # a raw control character in a string
        return b'{"channel":"a' + bytes([rng.randrange(0x20)]) + b'","data":1}'
    if kind == 5:  # numbers past a double's range
        return b'{"type":"response","requestId":1' + b"0" * rng.randrange(309, 5000) + b"}"
    if kind == 6:  # deeper than the parser allows, up to 10,000 levels
        depth = rng.randrange(1025, 10_001)
        if rng.random() < 0.5:
            return b"[" * depth + b"]" * depth
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == 7:  # invalid UTF-8 (in a binary frame: in a text frame it kills)
        bad = rng.choice(BAD_UTF8)
        return b'{"channel":"' + bad + b'","data":1}'
    return bytes([rng.randrange(0x80, 0x100)]) + rng.randbytes(rng.randrange(64))


def data_frame(rng: random.Random, payload: bytes) -> bytes:
    """A text frame if the payload is UTF-8 (or else a binary one), sometimes binary anyway."""
    try:
        payload.decode()
    except UnicodeDecodeError:
        return encode_frame(BINARY, payload)
    return encode_frame(BINARY if rng.random() < 0.2 else TEXT, payload)


# Valid JSON, wrong shapes: the default dialect


def default_shape(rng: random.Random) -> tuple[bytes, Expect]:
    """A message and what the default dialect should make of it (see ARCHITECTURE.md)."""
    kind = rng.randrange(12)
    message: Any
    data: Any
    expect = OK
    if kind == 0:  # a reply without requestId
        message = {"type": rng.choice(["response", "error"]), "payload": value(rng)}
        expect = P
    elif kind == 1:  # a reply to no request
        message = {"id": value(rng), "type": "response", "requestId": unknown_id(rng)}
        message["payload"] = value(rng)
        expect = P
    elif kind == 2:  # an error reply to no request, its error any shape
        message = {"type": "error", "requestId": unknown_id(rng), "error": value(rng)}
        expect = P
    elif kind == 3:  # a channel that is not a string
        message = {"channel": not_a_string(rng), "data": value(rng)}
        expect = P
    elif kind == 4:  # a channel message without data
        message = {"channel": other_channel(rng)}
        expect = P
    elif kind == 5:  # a delivery for a channel nobody subscribed to
        message = {"channel": other_channel(rng), "data": value(rng)}
    elif kind == 6:  # the server's error notice, naming a channel we never held or not
        data = {"type": "error"}
        if rng.random() < 0.8:
            data["message"] = value(rng)
        if rng.random() < 0.4:
            data["channel"] = rng.choice([other_channel(rng), not_a_string(rng)])
        message = {"channel": "system", "data": data}
        expect = R
    elif kind == 7:  # a confirmation without a string channel
        data = {"type": "subscription_confirm"}
        if rng.random() < 0.8:
            data["channel"] = not_a_string(rng)
        message = {"channel": "system", "data": data}
        expect = P
    elif kind == 8:  # a confirmation of a channel we never asked for
        data = {"type": "subscription_confirm", "channel": other_channel(rng)}
        message = {"channel": "system", "data": data}
    elif kind == 9:  # other system notices
        data = rng.choice([value(rng), {"type": text(rng)}, {"type": ["error"]}])
        message = {"channel": "system", "data": data}
    elif kind == 10:  # the heartbeat's answer
        message = {"type": "pong", "extra": value(rng)}
    else:  # anything else is the application's
        message = rng.choice(
            [value(rng), {}, {"type": "x-" + text(rng)}, {"type": ["response"]}, deep(rng)]
        )
    if isinstance(message, dict) and rng.random() < 0.3:
        message["from"] = rng.choice(["s1", "nobody", None, 5, ["s1"], {"id": "s1"}])
    return dumps(message), expect


# Valid JSON, wrong shapes: JSON-RPC 2.0


def rpc_item(rng: random.Random) -> tuple[Any, Expect]:
    """A JSON-RPC message (no batch) and what the dialect should make of it."""
    kind = rng.randrange(22)
    base: dict[str, Any] = {"jsonrpc": "2.0"} if rng.random() < 0.7 else {}
    message: Any
    expect = OK
    if kind == 0:  # not an object
        return rng.choice([None, True, 3, -0.5, text(rng), big_number(rng)]), P
    if kind == 1:  # a wrong version
        version = rng.choice(["1.0", 2.0, 2, None, ["2.0"], "2.0 ", ""])
        message, expect = {"jsonrpc": version, "method": "x"}, P
    elif kind == 2:  # a method that is not a string
        message, expect = {**base, "method": not_a_string(rng)}, P
    elif kind == 3:  # a call whose id is not a string or number
        message = {**base, "method": "x", "id": rng.choice([[1], {"a": 1}, True, False])}
        expect = P
    elif kind == 4:  # a request from the server: the application's
        message = {**base, "method": text(rng), "id": rng.choice([1, "a", None, 2.5])}
    elif kind == 5:  # a notification of another method
        message = {**base, "method": "x-" + text(rng), "params": value(rng)}
    elif kind == 6:  # a delivery whose params are not an object
        message = {**base, "method": "message"}
        if rng.random() < 0.8:
            message["params"] = rng.choice([None, [], ["c", 1], "c", 5])
        expect = P
    elif kind == 7:  # a delivery without a string channel
        message = {**base, "method": "message", "params": {"data": 1}}
        if rng.random() < 0.8:
            message["params"]["channel"] = not_a_string(rng)
        expect = P
    elif kind == 8:  # a delivery without data
        message = {**base, "method": "message", "params": {"channel": other_channel(rng)}}
        expect = P
    elif kind == 9:  # a delivery for a channel nobody subscribed to
        params = {"channel": other_channel(rng), "data": value(rng)}
        message = {**base, "method": "message", "params": params}
    elif kind == 10:  # neither method nor result nor error
        message = rng.choice([{}, {"id": 1}, {"jsonrpc": "2.0"}, {"params": [1]}])
        expect = P
    elif kind == 11:  # both a method and a result
        message, expect = {**base, "method": "x", "id": 1, "result": 1}, P
    elif kind == 12:  # both a result and an error
        message, expect = {**base, "id": 1, "result": 1, "error": value(rng)}, P
    elif kind == 13:  # a response without id
        message = {**base, rng.choice(["result", "error"]): value(rng)}
        expect = P
    elif kind == 14:  # a result with a null id
        message, expect = {**base, "id": None, "result": value(rng)}, P
    elif kind == 15:  # an error with a null id: the server could not read a request
        message, expect = {**base, "id": None, "error": value(rng)}, R
    elif kind == 16:  # a response whose id is not a string or number
        member = rng.choice(["result", "error"])
        message = {**base, "id": rng.choice([[1], {}, True, deep(rng)]), member: value(rng)}
        expect = P
    elif kind == 17:  # a response to no request
        member = rng.choice(["result", "error"])
        message = {**base, "id": unknown_id(rng, json_rpc=True), member: value(rng)}
        expect = P
    elif kind == 18:  # the answer to the app-level ping; an error is reported
        failed = rng.random() < 0.5
        message = {**base, "id": "wsclient.ping", "error" if failed else "result": value(rng)}
        expect = R if failed else OK
    elif kind == 19:  # an unsubscribe's answer; an error is reported
        failed = rng.random() < 0.5
        message = {**base, "id": "wsclient.unsubscribe:" + other_channel(rng)}
        message["error" if failed else "result"] = value(rng)
        expect = R if failed else OK
    elif kind == 20:  # a subscription answer for a channel we never asked for
        failed = rng.random() < 0.5
        message = {**base, "id": "wsclient.subscribe:" + other_channel(rng, ("real",))}
        message["error" if failed else "result"] = value(rng)
        expect = R if failed else OK  # a refusal is the server's error all the same
    else:  # a reserved id the dialect never uses
        reserved = rng.choice(["wsclient.", "wsclient.pingx", "wsclient.subscribe", "wsclient.x"])
        message, expect = {**base, "id": reserved, "result": 1}, P
    return message, expect


def rpc_shape(rng: random.Random, reply: Any = None) -> tuple[bytes, Expect]:
    """A JSON-RPC frame's payload, a batch sometimes (holding ``reply`` if given)."""
    if reply is None and rng.random() < 0.85:
        message, expect = rpc_item(rng)
        return dumps(message), expect
    items: list[Any] = []
    expect = OK
    for _ in range(rng.randrange(0 if reply is None else 1, 12)):
        if rng.random() < 0.1:  # a nested array is an invalid item
            items.append([value(rng)])
            expect = add(expect, P)
            continue
        item, cost = rpc_item(rng)
        items.append(item)
        expect = add(expect, cost)
    if reply is not None:
        items.insert(rng.randrange(len(items) + 1), reply)
    elif not items:
        expect = P  # an empty batch
    return dumps(items), expect


# The client's side


class Tally:
    """What the client reported: errors by kind, state changes."""

    def __init__(self, client: wsclient.Client) -> None:
        self.protocol = 0
        self.remote = 0
        self.unexpected: list[BaseException] = []
        self.longest = 0  # the longest error message: wire data in it must be cut
        self.changes: list[StateChange] = []
        client.on_error(self._error)
        client.on_state(self.changes.append)

    def _error(self, error: BaseException) -> None:
        self.longest = max(self.longest, len(str(error)))
        if isinstance(error, ProtocolError):
            self.protocol += 1
        elif isinstance(error, RemoteError):
            self.remote += 1
        else:
            self.unexpected.append(error)

    @property
    def counts(self) -> Expect:
        return (self.protocol, self.remote)

    def drops(self) -> list[BaseException | None]:
        return [c.error for c in self.changes if c.state is ConnectionState.RECONNECTING]


@asynccontextmanager
async def hostile_client(
    server: HostileServer, **options: Any
) -> AsyncIterator[tuple[wsclient.Client, Tally]]:
    """A client of ``server`` that reconnects at once; on leaving, checks nothing leaked."""
    options.setdefault("max_size", MAX_SIZE)
    options.setdefault(
        "backoff", Backoff(initial=0.001, maximum=0.005, jitter="none", min_uptime=0.0)
    )
    options.setdefault("open_timeout", WAIT)
    client = wsclient.connect(server.url, **options)
    tally = Tally(client)  # before the connection opens: nothing goes uncounted
    async with client:
        yield client, tally
    stats = client.statistics()
    assert stats.connection.handler_errors == 0, "the client's message handler raised"
    assert stats.requests.pending == 0
    assert not tally.unexpected, tally.unexpected
    assert tally.longest <= 600, f"an error message of {tally.longest} characters"


def check_healthy(client: wsclient.Client) -> None:
    stats = client.statistics()
    assert stats.connection.handler_errors == 0, "the client's message handler raised"
    assert stats.requests.pending == 0
    assert stats.messages.pending <= 1024  # the message buffer's bound


def default_reply(request: Any) -> bytes:
    return dumps(
        {
            "id": "srv",
            "type": "response",
            "requestId": request["id"],
            "payload": request["payload"]["parameters"],
        }
    )


def rpc_reply(request: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request["id"], "result": request["params"]}


async def exchange(
    client: wsclient.Client,
    conn: HostileConnection,
    garbage: list[bytes],
    marker: Any,
    *,
    reply: Callable[[Any], list[bytes]] | None = None,
    fails: bool = False,
    dribble: random.Random | None = None,
) -> RemoteError | None:
    """The client asks; the server sends ``garbage`` and then the reply; the client gets it.

    With ``fails``, the reply is an error: returns the RemoteError the client raised.
    With ``dribble``, the bytes go out in random slices, frames cut anywhere.
    """

    async def serve() -> None:
        request = await conn.receive_json()
        frames = reply(request) if reply else [encode_frame(TEXT, default_reply(request))]
        if dribble is None:
            assert await conn.send_frames([*garbage, *frames])
            return
        data = b"".join([*garbage, *frames])
        at = 0
        while at < len(data):
            size = dribble.randrange(1, 300)
            assert await conn.send_raw(data[at : at + size])
            at += size

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as group:
            group.start_soon(serve)
            if not fails:
                assert await client.query("echo", marker) == marker
                return None
            with pytest.raises(RemoteError) as failure:
                await client.query("echo", marker)
    return failure.value


def batches(cases: Iterator[Case], total: int) -> Iterator[list[Case]]:
    sent = 0
    while sent < total:
        batch = [next(cases) for _ in range(min(BATCH, total - sent))]
        sent += len(batch)
        yield batch


# The keep-serving tests: bursts of garbage, a real request after each


@pytest.mark.anyio
async def test_malformed_json_is_reported_and_the_client_keeps_serving(
    anyio_backend: str,
) -> None:
    """Each malformed JSON frame is one ProtocolError; requests between bursts get replies."""
    rng = rng_for("malformed", anyio_backend)
    total = budget("malformed JSON")

    def cases() -> Iterator[Case]:
        while True:
            yield data_frame(rng, malformed(rng)), P

    async with HostileServer() as server, hostile_client(server) as (client, tally):
        conn = await server.accept()
        expected = OK
        for number, batch in enumerate(batches(cases(), total)):
            await exchange(client, conn, [frame for frame, _ in batch], number)
            expected = add(expected, (len(batch), 0))
            assert tally.counts == expected, f"seed {SEED}"
            check_healthy(client)
        assert client.statistics().invalid_messages == total
        assert tally.drops() == []
    assert server.statistics().frames_sent >= total  # what the server really wrote
    FUZZED[anyio_backend, "malformed JSON"] += total


@pytest.mark.anyio
async def test_default_dialect_wrong_shapes_are_reported_exactly(anyio_backend: str) -> None:
    """Wrong shapes for the default dialect: each reported as the table says, none fatal."""
    rng = rng_for("default", anyio_backend)
    total = budget("default-dialect shapes")

    def cases() -> Iterator[Case]:
        while True:
            payload, expect = default_shape(rng)
            yield data_frame(rng, payload), expect

    async with HostileServer() as server, hostile_client(server) as (client, tally):
        session = client.session("s1")
        conn = await server.accept()
        expected = OK
        for number, batch in enumerate(batches(cases(), total)):
            fails = rng.random() < 0.2

            def reply(request: Any, fails: bool = fails) -> list[bytes]:
                # Servers echo ids as ints, strings or floats; errors come in any shape.
                request_id = request["id"]
                form = rng.choice([request_id, str(request_id), float(request_id)])
                answer = {"requestId": form, "type": "error" if fails else "response"}
                if fails:
                    answer["error"] = value(rng)
                else:
                    answer["payload"] = request["payload"]["parameters"]
                answer.update({text(rng): value(rng) for _ in range(rng.randrange(3))})
                answer["type"] = "error" if fails else "response"
                answer["requestId"] = form
                return [data_frame(rng, dumps(answer))]

            garbage = [frame for frame, _ in batch]
            error = await exchange(
                client, conn, garbage, [number, text(rng)], reply=reply, fails=fails
            )
            if error is not None:
                assert len(str(error)) <= 500  # the server's text, cut
            for _, cost in batch:
                expected = add(expected, cost)
            assert tally.counts == expected, f"seed {SEED}"
            check_healthy(client)
        assert session.statistics().messages.pending <= 1024
        assert tally.drops() == []
    assert server.statistics().frames_sent >= total  # what the server really wrote
    FUZZED[anyio_backend, "default-dialect shapes"] += total


@pytest.mark.anyio
async def test_json_rpc_wrong_shapes_and_batches_are_reported_exactly(anyio_backend: str) -> None:
    """Wrong JSON-RPC shapes and batches: each reported as the table says; batched replies land."""
    rng = rng_for("jsonrpc", anyio_backend)
    total = budget("JSON-RPC shapes")

    def cases() -> Iterator[Case]:
        while True:
            payload, expect = rpc_shape(rng)
            yield data_frame(rng, payload), expect

    async with (
        HostileServer() as server,
        hostile_client(server, dialect=JsonRpcDialect()) as (client, tally),
    ):
        conn = await server.accept()
        expected = OK
        for number, batch in enumerate(batches(cases(), total)):
            in_batch: list[Expect] = []

            fails = rng.random() < 0.2

            def reply(
                request: Any, fails: bool = fails, in_batch: list[Expect] = in_batch
            ) -> list[bytes]:
                answer = rpc_reply(request)
                answer["id"] = rng.choice([request["id"], float(request["id"])])
                if fails:  # an error object, well-formed or not
                    del answer["result"]
                    answer["error"] = rng.choice(
                        [
                            {"code": rng.randrange(-32768, 0), "message": value(rng)},
                            {"code": value(rng), "message": text(rng), "data": value(rng)},
                            {"code": -32000, "message": "x" * rng.randrange(10_000)},
                            {"message": "x" * rng.randrange(10_000)},
                            value(rng),
                        ]
                    )
                # Half the time the real reply rides in a batch among bad items.
                if rng.random() < 0.5:
                    return [data_frame(rng, dumps(answer))]
                payload, cost = rpc_shape(rng, reply=answer)
                in_batch.append(cost)
                return [data_frame(rng, payload)]

            garbage = [f for f, _ in batch]
            error = await exchange(client, conn, garbage, {"n": number}, reply=reply, fails=fails)
            if error is not None:
                assert len(str(error)) <= 500, f"an error message of {len(str(error))} characters"
            for cost in [cost for _, cost in batch] + in_batch:
                expected = add(expected, cost)
            assert tally.counts == expected, f"seed {SEED}"
            check_healthy(client)
        assert tally.drops() == []
    assert server.statistics().frames_sent >= total  # what the server really wrote
    FUZZED[anyio_backend, "JSON-RPC shapes"] += total


@pytest.mark.anyio
@pytest.mark.parametrize("dialect", ["default", "jsonrpc"])
async def test_floods_for_unsubscribed_channels_stay_bounded(
    anyio_backend: str, dialect: str
) -> None:
    """Floods of deliveries for channels nobody holds: no error, bounded buffer, real ones land."""
    rng = rng_for(f"flood-{dialect}", anyio_backend)
    total = budget("floods") // 2
    rpc = dialect == "jsonrpc"
    bound = 128

    def delivery(channel: str, data: Any) -> bytes:
        if rpc:
            params = {"channel": channel, "data": data}
            return dumps({"jsonrpc": "2.0", "method": "message", "params": params})
        return dumps({"channel": channel, "data": data})

    options: dict[str, Any] = {"message_buffer": BufferPolicy(max_messages=bound)}
    if rpc:
        options["dialect"] = JsonRpcDialect()
        reply: Callable[[Any], list[bytes]] | None = lambda request: [  # noqa: E731
            encode_frame(TEXT, dumps(rpc_reply(request)))
        ]
    else:
        reply = None
    async with HostileServer() as server, hostile_client(server, **options) as (client, tally):
        conn = await server.accept()

        async def confirm(channel: str) -> None:
            request = await conn.receive_json()
            if rpc:
                await conn.send_json({"jsonrpc": "2.0", "id": request["id"], "result": True})
            else:
                data = {"type": "subscription_confirm", "channel": channel}
                await conn.send_json({"channel": "system", "data": data})

        with anyio.fail_after(WAIT):
            left = client.subscribe("left")
            async with anyio.create_task_group() as group:
                group.start_soon(confirm, "left")
                await left
                await left.confirmed()
            await left.aclose()  # now "left" is a channel we no longer hold
            await conn.receive_json()  # its unsubscribe
        async with client.subscribe("real") as real:
            with anyio.fail_after(WAIT):
                await confirm("real")
                await real.confirmed()
            flooded = real_sent = received = 0
            for number in range(math.ceil(total / BATCH)):
                frames = []
                for _ in range(min(BATCH, total - flooded - real_sent)):
                    if rng.random() < 0.02:
                        frames.append(encode_frame(TEXT, delivery("real", real_sent)))
                        real_sent += 1
                    else:
                        channel = other_channel(rng, ("real",))
                        frames.append(data_frame(rng, delivery(channel, value(rng))))
                        flooded += 1
                await exchange(client, conn, frames, {"n": number}, reply=reply)
                with anyio.fail_after(WAIT):
                    while received < real_sent:
                        assert await real.receive() == received
                        received += 1
                messages = client.statistics().messages
                assert messages.received == flooded
                assert messages.pending == min(flooded, bound)
                assert messages.dropped == max(0, flooded - bound)
                check_healthy(client)
        assert tally.counts == OK
        assert client.statistics().channels.deliveries == real_sent
        assert tally.drops() == []
    assert server.statistics().frames_sent >= flooded + real_sent  # what the server really wrote
    FUZZED[anyio_backend, "floods"] += flooded + real_sent


class StaleRound:
    """One round: requests that live, that get cancelled, that time out; then replies to all."""

    def __init__(self, client: wsclient.Client, rng: random.Random, *, rpc: bool) -> None:
        self.client, self.rng, self.rpc = client, rng, rpc
        self.live, self.doomed = rng.randrange(1, 4), rng.randrange(1, 4)
        self.scopes = [anyio.CancelScope() for _ in range(self.doomed)]
        self.gone = [anyio.Event() for _ in range(self.doomed + 1)]
        self.results: dict[int, Any] = {}

    async def ask(self, number: int) -> None:
        self.results[number] = await self.client.query("q", {"n": number})

    async def ask_and_be_cancelled(self, number: int) -> None:
        try:
            with self.scopes[number - self.live]:
                await self.client.query("q", {"n": number})
        finally:
            self.gone[number - self.live].set()

    async def ask_briefly(self) -> None:
        try:
            with pytest.raises(RequestTimeout):
                await self.client.query("q", {"n": -1}, timeout=0.05)
        finally:
            self.gone[-1].set()

    def answer(self, request_id: Any, payload: Any, *, fail: bool = False) -> bytes:
        member: dict[str, Any]
        if self.rpc:
            member = {"error": {"code": -1, "message": "no"}} if fail else {"result": payload}
            return encode_frame(TEXT, dumps({"jsonrpc": "2.0", "id": request_id, **member}))
        member = {"type": "error", "error": "no"} if fail else {"type": "response"}
        return encode_frame(TEXT, dumps({"requestId": request_id, "payload": payload, **member}))

    async def run(self, conn: HostileConnection, *, time_out: bool) -> tuple[int, int]:
        """Play the round; return (frames sent, replies that answer nothing)."""
        rng, live = self.rng, self.live
        if not time_out:
            self.gone[-1].set()
        async with anyio.create_task_group() as group:
            for number in range(live):
                group.start_soon(self.ask, number)
            for number in range(live, live + self.doomed):
                group.start_soon(self.ask_and_be_cancelled, number)
            if time_out:
                group.start_soon(self.ask_briefly)
            ids: dict[int, Any] = {}
            for _ in range(live + self.doomed + time_out):
                request = await conn.receive_json()
                params = request["params"] if self.rpc else request["payload"]["parameters"]
                ids[params["n"]] = request["id"]
            # Every request reached the server; now the client gives up on
            # some: cancelled, or timed out on its own.
            for scope in self.scopes:
                scope.cancel()
            for event in self.gone:
                await event.wait()
            # Every id is answered, the dead ones (and some live ones) several
            # times over, among replies to ids never used.
            tokens: list[int | None] = [n for n in ids for _ in range(rng.randrange(1, 4))]
            tokens += [None] * rng.randrange(4)
            rng.shuffle(tokens)
            answered: set[int] = set()
            frames = []
            stray = 0
            for n in tokens:
                if n is not None and 0 <= n < live and n not in answered:
                    answered.add(n)
                    frames.append(self.answer(ids[n], n))
                    continue
                request_id = unknown_id(rng, json_rpc=self.rpc) if n is None else ids[n]
                frames.append(self.answer(request_id, n, fail=rng.random() < 0.5))
                stray += 1
            assert await conn.send_frames(frames)
        assert self.results == {n: n for n in range(live)}
        return len(frames), stray


@pytest.mark.anyio
@pytest.mark.parametrize("dialect", ["default", "jsonrpc"])
async def test_replies_to_cancelled_timed_out_and_answered_requests_are_reported(
    anyio_backend: str, dialect: str
) -> None:
    """Late, repeated and stray replies are each one ProtocolError; live requests still resolve."""
    rng = rng_for(f"stale-{dialect}", anyio_backend)
    rpc = dialect == "jsonrpc"
    total = budget("stale replies") // 2
    options: dict[str, Any] = {"dialect": JsonRpcDialect()} if rpc else {}
    sent = stray = cancelled = timeouts = 0
    async with HostileServer() as server, hostile_client(server, **options) as (client, tally):
        conn = await server.accept()
        while sent < total:
            game = StaleRound(client, rng, rpc=rpc)
            time_out = timeouts < 2  # two rounds let a request time out
            with anyio.fail_after(WAIT):
                frames, strays = await game.run(conn, time_out=time_out)
            sent += frames
            stray += strays
            cancelled += game.doomed
            timeouts += time_out
            # Everything sent before this reply has been dispatched once it lands.
            await exchange(client, conn, [], {"n": -2}, reply=rpc_echo if rpc else None)
            sent += 1
            assert tally.counts == (stray, 0), f"seed {SEED}"
            check_healthy(client)
        requests = client.statistics().requests
        assert requests.unknown_replies == stray
        assert requests.cancelled == cancelled
        assert requests.timeouts == timeouts
    assert server.statistics().frames_sent >= sent  # what the server really wrote
    FUZZED[anyio_backend, "stale replies"] += sent


def rpc_echo(request: Any) -> list[bytes]:
    return [encode_frame(TEXT, dumps(rpc_reply(request)))]


def fragments(opcode: int, payload: bytes, pieces: int, rng: random.Random) -> list[bytes]:
    """``payload`` as a fragmented message, split anywhere (inside characters too),
    with empty fragments and pings between the pieces."""
    cuts = sorted(rng.randrange(len(payload) + 1) for _ in range(pieces - 1))
    parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    frames = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        frames.append(encode_frame(opcode if index == 0 else CONT, part, fin=last))
        if not last and rng.random() < 0.5:
            frames.append(encode_frame(PING, rng.randbytes(rng.randrange(126))))
    return frames


def exactly_max_size() -> bytes:
    """A JSON string of exactly MAX_SIZE bytes."""
    return b'"' + b"x" * (MAX_SIZE - 2) + b'"'


@pytest.mark.anyio
async def test_frame_level_oddities_the_protocol_allows_keep_the_connection(
    anyio_backend: str,
) -> None:
    """Pings among fragments, stray pongs, empty, binary, compressed and max_size frames: served."""
    rng = rng_for("frames", anyio_backend)
    total = budget("frame oddities")

    def cases() -> Iterator[tuple[list[bytes], Expect]]:
        while True:
            kind = rng.randrange(9)
            payload, expect = default_shape(rng) if rng.random() < 0.7 else (malformed(rng), P)
            try:
                payload.decode()
                opcode = rng.choice([TEXT, BINARY])
            except UnicodeDecodeError:
                opcode = BINARY
            if kind == 0:  # a ping, any payload a control frame may carry
                yield [encode_frame(PING, rng.randbytes(rng.randrange(126)))], OK
            elif kind == 1:  # a pong nobody asked for
                yield [encode_frame(PONG, rng.randbytes(rng.randrange(126)))], OK
            elif kind == 2:  # empty data frames: not JSON
                yield [encode_frame(rng.choice([TEXT, BINARY]), b"")], P
            elif kind == 3:  # fragmented, with pings and empty fragments between
                yield fragments(opcode, payload, rng.randrange(1, 6), rng), expect
            elif kind == 4:  # compressed (permessage-deflate was negotiated)
                yield [encode_frame(opcode, deflate(payload), rsv1=True)], expect
            elif kind == 5:  # compressed, then fragmented
                body = deflate(payload)
                frames = fragments(opcode, body, rng.randrange(2, 5), rng)
                # RSV1 goes on the first frame only (RFC 7692 6.1).
                first = frames[0]
                frames[0] = bytes([first[0] | 0x40]) + first[1:]
                yield frames, expect
            elif kind == 6:  # exactly max_size, plain or compressed: accepted
                if rng.random() < 0.1:
                    big = exactly_max_size()
                    if rng.random() < 0.5:
                        yield [encode_frame(TEXT, big)], OK
                    else:
                        yield [encode_frame(TEXT, deflate(big), rsv1=True)], OK
            elif kind == 7:  # zero-length first and middle fragments
                frames = [encode_frame(opcode, b"", fin=False), encode_frame(CONT, b"", fin=False)]
                yield [*frames, encode_frame(CONT, payload)], expect
            else:
                yield [data_frame(rng, payload)], expect

    sent = 0
    async with HostileServer() as server, hostile_client(server) as (client, tally):
        conn = await server.accept()
        assert conn.deflate
        expected = OK
        generated = cases()
        number = 0
        while sent < total:
            burst: list[bytes] = []
            while len(burst) < BATCH and sent + len(burst) < total:
                frames, cost = next(generated)
                burst += frames
                expected = add(expected, cost)
            # Every third burst trickles in, frames cut at any byte.
            dribble = rng if number % 3 == 2 else None
            await exchange(client, conn, burst, number, dribble=dribble)
            sent += len(burst) + 1
            number += 1
            assert tally.counts == expected, f"seed {SEED}"
            check_healthy(client)
        assert tally.drops() == []
        assert client.statistics().connection.transport is not None
    assert server.statistics().frames_sent >= sent  # what the server really wrote
    FUZZED[anyio_backend, "frame oddities"] += sent


# Connection killers: one connection each, then the client reconnects


def invalid_utf8(rng: random.Random) -> bytes:
    bad = rng.choice(BAD_UTF8)
    return b'{"channel":"a' + bad + b'","data":1}'


def killers(rng: random.Random) -> list[tuple[str, list[bytes], int | None]]:
    """(what, frames, the close code the client must send; None: it sends none)."""
    over = MAX_SIZE + 1
    bomb = deflate(bytes(16 * MAX_SIZE))
    text_frames = fragments(TEXT, invalid_utf8(rng), 3, rng)
    bomb_frames = fragments(BINARY, bomb, 3, rng)
    bomb_frames[0] = bytes([bomb_frames[0][0] | 0x40]) + bomb_frames[0][1:]
    compressed = deflate(b'{"a":"b"}')
    return [
        # RFC 6455 8.1: a text message that is not UTF-8 fails with 1007.
        ("invalid UTF-8 in a text frame", [encode_frame(TEXT, invalid_utf8(rng))], 1007),
        ("invalid UTF-8 across fragments", text_frames, 1007),
        (
            "invalid UTF-8, compressed",
            [encode_frame(TEXT, deflate(invalid_utf8(rng)), rsv1=True)],
            1007,
        ),
        ("invalid UTF-8 in a close reason", [encode_frame(CLOSE, b"\x03\xe8\xff\xfe")], 1007),
        # RFC 6455 7.4.1: 1009 for a message too big to process.
        ("a text frame over max_size", [encode_frame(TEXT, b" " * over)], 1009),
        ("a binary frame over max_size", [encode_frame(BINARY, bytes(over))], 1009),
        ("a header promising 2**63 bytes", [encode_frame(BINARY, length=2**63 - 1)], 1009),
        ("a header promising 2**64 - 1 bytes", [encode_frame(TEXT, length=2**64 - 1)], 1009),
        ("fragments adding up past max_size", fragments(BINARY, bytes(over), 4, rng), 1009),
        ("a deflate bomb", [encode_frame(TEXT, bomb, rsv1=True)], 1009),
        ("a fragmented deflate bomb", bomb_frames, 1009),
        # RFC 6455 5.2, 5.4, 5.5, 7.4.1: everything else is a protocol error, 1002.
        ("reserved opcode 0x3", [encode_frame(0x3, b"x")], 1002),
        ("reserved opcode 0x7", [encode_frame(0x7)], 1002),
        ("reserved opcode 0xB", [encode_frame(0xB, b"x")], 1002),
        ("reserved opcode 0xF", [encode_frame(0xF)], 1002),
        ("RSV2 set", [encode_frame(TEXT, b"{}", rsv2=True)], 1002),
        ("RSV3 set", [encode_frame(BINARY, b"{}", rsv3=True)], 1002),
        ("RSV1 on a ping", [encode_frame(PING, b"", rsv1=True)], 1002),
        (
            "RSV1 on a continuation",
            [
                encode_frame(TEXT, compressed[:3], rsv1=True, fin=False),
                encode_frame(CONT, compressed[3:], rsv1=True),
            ],
            1002,
        ),
        ("a masked frame", [encode_frame(TEXT, b"{}", mask=b"\x01\x02\x03\x04")], 1002),
        (
            "a fragmented ping",
            [encode_frame(PING, b"a", fin=False), encode_frame(CONT, b"b")],
            1002,
        ),
        ("a ping of 126 bytes", [encode_frame(PING, bytes(126))], 1002),
        ("a close frame of 126 bytes", [encode_frame(CLOSE, b"\x03\xe8" + bytes(124))], 1002),
        ("a continuation with nothing to continue", [encode_frame(CONT, b"{}")], 1002),
        (
            "a new message inside a fragmented one",
            [encode_frame(TEXT, b"[", fin=False), encode_frame(TEXT, b"{}")],
            1002,
        ),
        ("a close frame of one byte", [encode_frame(CLOSE, b"\x03")], 1002),
        ("close code 0", [encode_frame(CLOSE, struct.pack("!H", 0))], 1002),
        ("close code 999", [encode_frame(CLOSE, struct.pack("!H", 999))], 1002),
        ("close code 1004", [encode_frame(CLOSE, struct.pack("!H", 1004))], 1002),
        ("close code 1005", [encode_frame(CLOSE, struct.pack("!H", 1005))], 1002),
        ("close code 1006", [encode_frame(CLOSE, struct.pack("!H", 1006))], 1002),
        ("close code 1015", [encode_frame(CLOSE, struct.pack("!H", 1015))], 1002),
        ("close code 2999", [encode_frame(CLOSE, struct.pack("!H", 2999))], 1002),
        ("close code 5000", [encode_frame(CLOSE, struct.pack("!H", 5000))], 1002),
        ("close code 65535", [encode_frame(CLOSE, struct.pack("!H", 65535))], 1002),
        (
            "a close frame inside a fragmented message",
            [encode_frame(TEXT, b"[", fin=False), encode_frame(CLOSE, b"\x03\xe8")],
            1002,
        ),
        ("corrupt deflate data", [encode_frame(TEXT, b"\xff\xff\xff\xff", rsv1=True)], 1002),
        ("bytes that are no frame", [b"\x0f" + bytes(200)], 1002),
    ]


async def wait_closed(conn: HostileConnection) -> int | None:
    with anyio.fail_after(WAIT):
        return await conn.wait_closed()


@pytest.mark.anyio
async def test_connection_killers_close_with_the_right_code_and_the_client_reconnects(
    anyio_backend: str,
) -> None:
    """Bad UTF-8 closes with 1007, too big with 1009, violations with 1002; then it reconnects."""
    rng = rng_for("killers", anyio_backend)
    cases = killers(rng)
    expected = OK
    async with HostileServer() as server, hostile_client(server) as (client, tally):
        for number, (what, frames, code) in enumerate(cases):
            conn = await server.accept()
            # It serves until the killer: the garbage and the reply sent before
            # it, in the same write (more than its max_queue of 32), still count.
            garbage = [data_frame(rng, malformed(rng)) for _ in range(rng.randrange(80))]

            def reply(request: Any, frames: list[bytes] = frames) -> list[bytes]:
                return [encode_frame(TEXT, default_reply(request)), *frames]

            await exchange(client, conn, garbage, number, reply=reply)
            expected = add(expected, (len(garbage), 0))
            assert await wait_closed(conn) == code, what
        conn = await server.accept()
        await exchange(client, conn, [], "still serving")
        frames_sent = server.statistics().frames_sent
        drops = tally.drops()
        assert len(drops) == len(cases)
        for (what, _, code), error in zip(cases, drops, strict=True):
            assert isinstance(error, ConnectionClosed), what
            assert error.sent_code == code, what
            assert isinstance(error, MessageTooBig) == (code == 1009), what
        assert tally.counts == expected
        check_healthy(client)
    FUZZED[anyio_backend, "connection killers"] += frames_sent


@pytest.mark.anyio
async def test_compressed_frames_without_negotiation_fail_with_1002(anyio_backend: str) -> None:
    """RSV1 when permessage-deflate was not negotiated is a protocol error (RFC 6455 5.2)."""
    compressed = deflate(b"{}")
    cases = [
        [encode_frame(TEXT, compressed, rsv1=True)],
        [encode_frame(BINARY, compressed, rsv1=True)],
        [encode_frame(TEXT, b"{", fin=False), encode_frame(CONT, b"}", rsv1=True)],
    ]
    async with (
        HostileServer(compression=None) as server,
        hostile_client(server) as (client, tally),
    ):
        for frames in cases:
            conn = await server.accept()
            assert not conn.deflate
            assert await conn.send_frames(frames)
            assert await wait_closed(conn) == 1002
        conn = await server.accept()
        await exchange(client, conn, [], "still serving")
        assert [getattr(e, "sent_code", None) for e in tally.drops()] == [1002] * len(cases)
    FUZZED[anyio_backend, "connection killers"] += server.statistics().frames_sent


@pytest.mark.anyio
async def test_server_closes_and_drops_are_answered_and_survived(anyio_backend: str) -> None:
    """Close frames are echoed, data after them ignored, dropped TCP reconnects."""
    rng = rng_for("closes", anyio_backend)
    async with HostileServer() as server, hostile_client(server) as (client, tally):
        codes = (1000, 1001, None, 1011, 1012, 1013, 3001, 3999)  # None: an empty close frame
        for code in codes:
            conn = await server.accept()
            await exchange(client, conn, [], code)
            assert await conn.close(code, "bye")
            after = [data_frame(rng, malformed(rng)) for _ in range(5)]
            await conn.send_frames(after)  # RFC 6455 1.4: discarded
            assert await wait_closed(conn) == (1005 if code is None else code)
        conn = await server.accept()
        await conn.abort()  # TCP closed with no close frame
        conn = await server.accept()
        await conn.send_raw(encode_frame(TEXT, b'{"channel": "half a frame"}')[:10])
        await conn.abort()
        conn = await server.accept()
        await exchange(client, conn, [], "still serving")
        expected_codes = [1005 if code is None else code for code in codes] + [1006, 1006]
        assert [getattr(e, "code", None) for e in tally.drops()] == expected_codes
        assert tally.counts == OK  # nothing after a close frame was processed
    FUZZED[anyio_backend, "connection killers"] += server.statistics().frames_sent


@pytest.mark.anyio
@pytest.mark.parametrize("code", [1008, 3000, 3003, 4000])
async def test_fatal_close_codes_end_the_client_cleanly(anyio_backend: str, code: int) -> None:
    """A close the retry policy deems fatal closes the client; nothing escapes ``async with``."""
    async with HostileServer() as server, hostile_client(server) as (client, tally):
        conn = await server.accept()
        await exchange(client, conn, [], code)
        assert await conn.close(code, "go away")
        assert await wait_closed(conn) == code
        with anyio.fail_after(WAIT):
            await client.wait_state(ConnectionState.CLOSED)
        with pytest.raises(wsclient.ReconnectFailed):
            await client.query("echo", 1)
        assert [getattr(e, "code", None) for e in tally.drops()] == []
        assert tally.counts == OK
    FUZZED[anyio_backend, "connection killers"] += 1


@pytest.mark.anyio
async def test_aclose_is_bounded_when_the_server_floods_and_ignores_the_close(
    anyio_backend: str,
) -> None:
    """A server that never answers our close and keeps sending: aclose() ends at close_timeout."""
    rng = rng_for("deaf", anyio_backend)
    close_timeout = 0.2
    async with (
        HostileServer(answer_close=False) as server,
        hostile_client(server, close_timeout=close_timeout) as (client, tally),
        anyio.create_task_group() as group,
    ):
        conn = await server.accept()
        await exchange(client, conn, [], "before")

        async def flood() -> None:
            frames = [data_frame(rng, malformed(rng)) for _ in range(100)]
            while await conn.send_frames(frames):
                pass

        group.start_soon(flood)
        started = anyio.current_time()
        with anyio.fail_after(WAIT):
            await client.aclose()
            assert await conn.wait_closed() == 1000  # our close frame got there
        assert close_timeout <= anyio.current_time() - started < close_timeout + 2.0
        assert client.state is ConnectionState.CLOSED
        transport_stats = client.statistics().connection
        assert transport_stats.handler_errors == 0
        assert tally.protocol == client.statistics().invalid_messages
    FUZZED[anyio_backend, "connection killers"] += server.statistics().frames_sent


@pytest.mark.anyio
async def test_a_server_that_closes_but_keeps_tcp_open_is_dropped_after_close_timeout(
    anyio_backend: str,
) -> None:
    """After the server's close and our echo, TCP that stays open is dropped; then a reconnect."""
    close_timeout = 0.2
    async with (
        HostileServer(answer_close=False) as server,
        hostile_client(server, close_timeout=close_timeout) as (client, tally),
    ):
        conn = await server.accept()
        await exchange(client, conn, [], "before")
        assert await conn.close(1001, "going away")
        started = anyio.current_time()
        assert await wait_closed(conn) == 1001  # our echo, then we dropped TCP ourselves
        assert close_timeout <= anyio.current_time() - started < close_timeout + 2.0
        conn = await server.accept()
        await exchange(client, conn, [], "after")
        assert [getattr(e, "code", None) for e in tally.drops()] == [1001]
    FUZZED[anyio_backend, "connection killers"] += 1


def handshakes() -> list[tuple[str, Callable[[Any], bytes]]]:
    from websockets.utils import accept_key

    def response(*lines: str, key: Callable[[str], str] = accept_key) -> Callable[[Any], bytes]:
        def make(request: Any) -> bytes:
            accept = key(request.headers["Sec-WebSocket-Key"])
            text = "\r\n".join(line.format(accept=accept) for line in lines)
            return (text + "\r\n\r\n").encode()

        return make

    ok = "HTTP/1.1 101 Switching Protocols"
    upgrade, connection = "Upgrade: websocket", "Connection: Upgrade"
    accept = "Sec-WebSocket-Accept: {accept}"
    return [
        ("a wrong accept key", response(ok, upgrade, connection, accept, key=lambda k: k)),
        ("no Upgrade header", response(ok, connection, accept)),
        ("no Connection header", response(ok, upgrade, accept)),
        ("no accept key", response(ok, upgrade, connection)),
        ("HTTP 200", response("HTTP/1.1 200 OK", "Content-Length: 0")),
        ("HTTP 500", response("HTTP/1.1 500 Oops", "Content-Length: 0")),
        ("HTTP/1.0", response("HTTP/1.0 101 Switching Protocols", upgrade, connection, accept)),
        ("garbage", lambda request: b"\x00\xff garbage\r\n\r\n"),
        ("a truncated response", lambda request: b"HTTP/1.1 101 Switching Protocols\r\nUpg"),
        (
            "an extension never offered",
            response(ok, upgrade, connection, accept, "Sec-WebSocket-Extensions: x-bogus"),
        ),
        (
            "a subprotocol never offered",
            response(ok, upgrade, connection, accept, "Sec-WebSocket-Protocol: chat"),
        ),
        ("a 100 KB header", response(ok, upgrade, connection, accept, "X-Big: " + "a" * 100_000)),
    ]


@pytest.mark.anyio
async def test_bad_opening_handshakes_fail_with_connect_error(anyio_backend: str) -> None:
    """Each broken handshake response raises ConnectError from ``async with``, nothing else."""
    cases = handshakes()
    current: list[Callable[[Any], bytes]] = []
    async with HostileServer(handshake=lambda request: current[0](request)) as server:
        for what, make in cases:
            current[:] = [make]
            with anyio.fail_after(WAIT), pytest.raises(ConnectError):
                async with wsclient.connect(server.url, reconnect=False):
                    pytest.fail(f"connected despite {what}")
    FUZZED[anyio_backend, "handshakes"] += len(cases)


# The hostile server itself


@pytest.mark.anyio
async def test_hostile_server_runs_a_handler_per_connection(anyio_backend: str) -> None:
    """With a handler, each connection runs it; statistics count frames and the clients' codes."""

    async def handler(conn: HostileConnection) -> None:
        request = await conn.receive_json()
        if request["payload"]["parameters"] == "kill":
            await conn.send_text(b"\xc0\xaf")  # an overlong "/": invalid UTF-8
            await conn.wait_closed()
            return
        await conn.send_frames([encode_frame(TEXT, default_reply(request))])
        await conn.wait_closed()

    async with HostileServer(handler) as server, hostile_client(server) as (client, tally):
        with pytest.raises(wsclient.InvalidState):
            await server.accept()
        for _ in range(3):
            with pytest.raises(wsclient.ConnectionLost):
                await client.query("echo", "kill", timeout=WAIT)
        with anyio.fail_after(WAIT):
            assert await client.query("echo", "alive") == "alive"
        stats = server.statistics()
        assert stats.close_codes == (1007, 1007, 1007)
        assert stats.connections == 4
        assert stats.frames_sent == 4
        assert stats.messages_received == 4
        assert "connections=4" in repr(server)
        assert [getattr(e, "sent_code", None) for e in tally.drops()] == [1007] * 3


# Bugs the fuzzing found, each pinned by the smallest input that showed it


@pytest.mark.anyio
async def test_reply_whose_request_id_is_nested_1000_deep_is_reported(anyio_backend: str) -> None:
    """A reply to no request, its requestId a list 1000 deep, is one ProtocolError (not a crash)."""
    reply = b'{"type":"response","requestId":' + b"[" * 1000 + b"]" * 1000 + b"}"
    async with HostileServer() as server, hostile_client(server) as (client, tally):
        conn = await server.accept()
        await exchange(client, conn, [encode_frame(TEXT, reply)], "after")
        assert tally.counts == P
        check_healthy(client)


@pytest.mark.anyio
async def test_messages_read_with_a_protocol_violation_are_dispatched(anyio_backend: str) -> None:
    """The reply and the 100 messages before a reserved opcode, in one read, all count."""
    async with HostileServer() as server, hostile_client(server) as (client, tally):
        conn = await server.accept()

        def reply(request: Any) -> list[bytes]:
            return [encode_frame(TEXT, default_reply(request)), encode_frame(0x3, b"x")]

        await exchange(client, conn, [encode_frame(TEXT, b"{bad")] * 100, "the reply", reply=reply)
        assert await wait_closed(conn) == 1002
        assert tally.counts == (100, 0)


@pytest.mark.anyio
@pytest.mark.parametrize("dialect", ["default", "jsonrpc"])
async def test_refusal_of_a_channel_the_client_does_not_hold_is_reported(
    anyio_backend: str, dialect: str
) -> None:
    """A server error naming a channel we hold no subscription to is one RemoteError, not lost."""
    options: dict[str, Any] = {}
    reply: Callable[[Any], list[bytes]] | None = None
    if dialect == "jsonrpc":
        options["dialect"] = JsonRpcDialect()
        reply = rpc_echo
        error: Any = {"code": -32000, "message": "no such channel"}
        notice = {"jsonrpc": "2.0", "id": "wsclient.subscribe:nobody", "error": error}
    else:
        data = {"type": "error", "message": "no such channel", "channel": "nobody"}
        notice = {"channel": "system", "data": data}
    async with HostileServer() as server, hostile_client(server, **options) as (client, tally):
        conn = await server.accept()
        await exchange(client, conn, [encode_frame(TEXT, dumps(notice))], {"n": 1}, reply=reply)
        assert tally.counts == R


@pytest.mark.anyio
async def test_json_rpc_error_messages_from_the_wire_are_cut(anyio_backend: str) -> None:
    """A JSON-RPC error's 10,000-character message is cut to 500, raised or reported."""
    error = {"code": -32000, "message": "x" * 10_000}

    def reply(request: Any) -> list[bytes]:
        return [encode_frame(TEXT, dumps({"jsonrpc": "2.0", "id": request["id"], "error": error}))]

    reported: list[BaseException] = []
    options = {"dialect": JsonRpcDialect()}
    async with HostileServer() as server, hostile_client(server, **options) as (client, tally):
        client.on_error(reported.append)
        conn = await server.accept()
        notice = encode_frame(TEXT, dumps({"jsonrpc": "2.0", "id": None, "error": error}))
        raised = await exchange(client, conn, [notice], {"n": 1}, reply=reply, fails=True)
        assert raised is not None
        assert len(str(raised)) == 500
        assert [len(str(e)) for e in reported] == [500]
        assert tally.counts == R


@pytest.mark.anyio
async def test_a_long_channel_name_is_cut_in_the_error(anyio_backend: str) -> None:
    """A channel message without data, its channel 5,000 characters long: a short error."""
    message = encode_frame(TEXT, dumps({"channel": "c" * 5000}))
    reported: list[BaseException] = []
    async with HostileServer() as server, hostile_client(server) as (client, tally):
        client.on_error(reported.append)
        conn = await server.accept()
        await exchange(client, conn, [message], "after")
        assert tally.counts == P
        assert len(str(reported[0])) < 200


def test_the_suite_fuzzed_its_frame_budget() -> None:
    """The keep-serving tests sent at least WSCLIENT_FUZZ_FRAMES frames per backend (10,000+)."""
    assert FRAMES >= 10_000 or "WSCLIENT_FUZZ_FRAMES" in os.environ
    backends = {backend for backend, _ in FUZZED}
    if not backends or any(
        (backend, category) not in FUZZED for backend in backends for category in SHARES
    ):
        pytest.skip("only part of the fuzz suite ran")
    for backend in backends:
        sent = sum(FUZZED[backend, category] for category in SHARES)
        print(f"{backend}: {sent} frames fuzzed;", dict(sorted(FUZZED.items())))
        assert sent >= FRAMES, (backend, sent)
