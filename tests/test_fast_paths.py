"""The per-message fast paths: our own framing, handler mode, sends without waiting.

Framing tests feed bytes to a transport with no event loop; the others use
real sockets on 127.0.0.1, on asyncio and trio.
"""

from __future__ import annotations

import dataclasses
import inspect
import random
import socket
import struct
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import sniffio
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

import wsclient
import wsclient._links
from wsclient import (
    ConnectionClosedError,
    ConnectionClosedOK,
    DefaultDialect,
    Inbound,
    MessageTooBig,
    Route,
    WebSocketTransport,
    connect_transport,
)
from wsclient._links import Link
from wsclient._transport import QUEUED, SENT

from .servers import running_server

BOUND = 10.0  # seconds any wait of these tests may take


class RecordingLink(Link):
    """A link that keeps what the transport writes; nothing is ever read from it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        raise AssertionError("nothing waits on this link")

    def wake(self) -> None:
        pass

    @property
    def backlogged(self) -> bool:
        return False

    def queue(self, chunks: list[bytes], *, control: bool) -> None:
        self.written.extend(chunks)

    def clock(self) -> float:
        return 0.0

    async def flush(self, *, control_only: bool = False) -> None:
        pass

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    async def abort(self) -> None:
        self.lost = True


def open_transport(*, framing: bool, max_size: int | None = 2**20) -> WebSocketTransport:
    """An open transport on a recording link, framing inbound bytes itself or not."""
    protocol = ClientProtocol(parse_uri("ws://peer.test/"), state=State.OPEN, max_size=max_size)
    protocol.debug = False
    transport = WebSocketTransport(
        protocol, display_url="ws://peer.test/", max_queue=10**6, close_timeout=1
    )
    transport._link = RecordingLink()
    transport._framing = framing and transport._can_frame()
    assert transport._framing is framing
    return transport


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = False
) -> bytes:
    """A frame as a server sends it (unmasked unless ``mask``), lengths in all three sizes."""
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    if mask:
        head += b"\x00\x00\x00\x00"  # a zero mask leaves the payload as it is
    return head + payload


def messages_of(transport: WebSocketTransport) -> list[str | bytes]:
    return list(transport._inbox)


def feed(transport: WebSocketTransport, stream: bytes, rng: random.Random) -> None:
    """Hand ``stream`` to the transport in chunks of random sizes, as reads would."""
    at = 0
    while at < len(stream):
        size = rng.choice([1, 2, 3, 7, 64, 500, 70_000])
        transport.bytes_received(stream[at : at + size])
        at += size


def mixed_stream(rng: random.Random) -> bytes:
    """Text and binary messages of every length encoding, pings, pongs and fragments."""
    parts = []
    for n in range(60):
        size = rng.choice([0, 1, 125, 126, 200, 65535, 65536, 70_000])
        body = bytes(rng.randrange(97, 123) for _ in range(size))
        kind = n % 6
        if kind == 0:
            parts.append(frame(0x1, body))
        elif kind == 1:
            parts.append(frame(0x2, body))
        elif kind == 2:
            parts.append(frame(0x9, body[:100]))  # a ping: the protocol answers it
        elif kind == 3:
            parts.append(frame(0xA, body[:100]))  # an unsolicited pong
        elif kind == 4:  # a fragmented text message, a ping in its middle
            parts += [
                frame(0x1, body[:10], fin=False),
                frame(0x9, b"mid"),
                frame(0x0, body[10:], fin=True),
            ]
        else:
            parts.append(frame(0x1, "é €".encode() * (size // 7)))
    return b"".join(parts)


@pytest.mark.parametrize("seed", range(4))
def test_frames_read_directly_match_the_protocols_parse(seed: int) -> None:
    """Framing inbound bytes ourselves delivers what websockets' parser does, however split."""
    stream = mixed_stream(random.Random(seed))
    ours, theirs = open_transport(framing=True), open_transport(framing=False)
    feed(ours, stream, random.Random(seed + 100))
    theirs.bytes_received(stream)
    assert messages_of(ours) == messages_of(theirs)
    assert len(messages_of(ours)) == 40
    # The protocol answered the same pings with the same pongs (masks differ).
    assert [w[:2] for w in ours._link.written] == [w[:2] for w in theirs._link.written]  # type: ignore[attr-defined]
    assert ours._framing  # back to our framing after each control frame and fragment


def test_a_close_frame_ends_framing_and_what_follows_is_discarded() -> None:
    """After the server's close frame, later frames are dropped, as websockets drops them."""
    transport = open_transport(framing=True)
    transport.bytes_received(
        frame(0x1, b"before") + frame(0x8, b"\x03\xe8bye") + frame(0x1, b"after")
    )
    assert messages_of(transport) == ["before"]
    assert not transport._framing
    assert transport._protocol.state is State.CLOSING


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (frame(0x1, b"masked", mask=True), 1002),  # servers never mask (RFC 6455 5.1)
        (frame(0x1, b"rsv", rsv=0x40), 1002),  # no extension gave RSV1 a meaning
        (frame(0x3, b"opcode"), 1002),  # a reserved opcode
        (frame(0x1, b"\xff\xfe not utf-8"), 1007),
        (frame(0x2, b"x" * 101), 1009),  # over max_size
    ],
)
def test_a_bad_frame_fails_the_connection_and_the_good_before_it_arrive(
    bad: bytes, code: int
) -> None:
    """Frames before a bad one are delivered; the bad one fails the connection with its code."""
    transport = open_transport(framing=True, max_size=100)
    transport.bytes_received(frame(0x1, b"good") + bad + frame(0x1, b"never"))
    assert messages_of(transport) == ["good"]
    assert transport._protocol.close_sent is not None
    assert transport._protocol.close_sent.code == code
    transport.link_lost(None)
    error = transport._closed_exception()
    assert isinstance(error, ConnectionClosedError)
    assert error.sent_code == code
    if code == 1009:
        assert isinstance(error, MessageTooBig)


def test_a_partial_frame_waits_for_its_rest_even_across_our_close() -> None:
    """A frame split across reads arrives whole, also when we begin to close meanwhile."""
    transport = open_transport(framing=True)
    message = frame(0x1, b"x" * 300)
    transport.bytes_received(message[:3])
    transport.bytes_received(message[3:150])
    assert messages_of(transport) == []
    transport._protocol.send_close(1000, "")  # aclose() began: the protocol reads from here
    transport.bytes_received(message[150:] + frame(0x1, b"next"))
    assert messages_of(transport) == ["x" * 300, "next"]
    assert not transport._framing


def test_the_handshake_response_is_not_kept_for_the_connections_life() -> None:
    """Once open and between frames, the handshake's parser (and its response) is replaced."""
    transport = open_transport(framing=True)
    assert transport._protocol.parser.gi_code.co_name == "parse"
    assert transport._protocol.parser.gi_code.co_filename.endswith("protocol.py")


def test_inbound_keeps_its_dataclass_signature_defaults_and_immutability() -> None:
    """Inbound's faster __init__ takes the fields' names and defaults, and it stays frozen."""
    parameters = list(inspect.signature(Inbound).parameters.values())
    fields = dataclasses.fields(Inbound)
    assert [p.name for p in parameters] == [f.name for f in fields]
    for parameter, field in zip(parameters, fields, strict=True):
        expected = (
            inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
        )
        assert parameter.default == expected
    made = Inbound(Route.REPLY, {"a": 1}, 7, result="r")
    assert made == Inbound(Route.REPLY, {"a": 1}, request_id=7, result="r")
    assert (made.items, made.error, made.origin) == ((), None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.route = Route.OTHER  # type: ignore[misc]
    assert DefaultDialect().route({"type": "pong"}).route is Route.HEARTBEAT


# Handler mode and sends without waiting, on real sockets.


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait, bounded, until ``condition()`` holds."""
    with anyio.fail_after(BOUND):
        while not condition():
            await anyio.sleep(0.001)


@pytest.mark.anyio
async def test_a_handler_gets_every_message_in_order_and_receive_only_the_end() -> None:
    """In handler mode messages go to the handler as read; receive() returns only the close."""
    async with running_server(compression=None) as server:
        transport = await connect_transport(server.url, compression=None)
        got: list[str | bytes] = []
        ended: list[BaseException] = []
        assert transport._set_message_handler(got.append)

        async def reader() -> None:
            # On asyncio the loop reads; on trio this task does, for the handler.
            try:
                await transport.receive()
            except ConnectionClosedOK as exc:
                ended.append(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(reader)
            for n in range(300):
                await transport.send(f"m{n}")
            await until(lambda: len(got) == 300, "every echo")
            assert not ended
            await transport.aclose()
        assert got == [f"m{n}" for n in range(300)]
        assert transport.statistics().messages_received == 300
        assert len(ended) == 1


@pytest.mark.anyio
async def test_messages_that_came_before_the_handler_reach_it_first() -> None:
    """Setting a handler hands it the buffered messages, in order, before the new ones."""
    async with running_server(compression=None) as server:
        transport = await connect_transport(server.url, compression=None)
        for text in ("a", "b"):
            await transport.send(text)
        with anyio.fail_after(BOUND):
            while transport.statistics().messages_buffered < 2:
                await transport.ping()  # its wait reads what comes before its pong
        got: list[str | bytes] = []
        transport._set_message_handler(got.append)
        assert got == ["a", "b"]
        await transport.send("c")
        with anyio.fail_after(BOUND):
            while len(got) < 3:
                await transport.ping()
        assert got == ["a", "b", "c"]
        await transport.aclose()


@pytest.mark.anyio
async def test_a_wait_for_the_end_cut_short_can_wait_again() -> None:
    """A receive() in handler mode that a timeout cancelled waits again when called again."""
    async with running_server(compression=None) as server:
        transport = await connect_transport(server.url, compression=None)
        transport._set_message_handler(lambda message: None)
        for _ in range(3):
            with anyio.move_on_after(0.01) as scope:
                await transport.receive()
            assert scope.cancelled_caught  # not an error, nor a message
        await transport.aclose()
        with pytest.raises(ConnectionClosedOK):
            await transport.receive()


@pytest.mark.anyio
async def test_send_nowait_queues_in_order_and_drain_writes_them() -> None:
    """Sends that do not wait keep their order; asyncio's loop writes them, trio's _drain()."""
    async with running_server(compression=None) as server:
        transport = await connect_transport(server.url, compression=None)
        outcomes = {transport._send_nowait(f"n{n}".encode(), True) for n in range(50)}
        # trio writes at once while the socket takes it, and queues the rest.
        assert (
            outcomes == {SENT}
            if sniffio.current_async_library() == "asyncio"
            else outcomes <= {SENT, QUEUED}
        )
        await transport._drain()
        await transport.send("last")
        echoes = [await transport.receive() for _ in range(51)]
        assert echoes == [f"n{n}" for n in range(50)] + ["last"]
        await transport.aclose()
        assert transport._send_nowait(b"closed", True) == 0  # nothing sent once closed


def echo_dialect() -> DefaultDialect:
    class EchoDialect(DefaultDialect):
        """Frames a request as its own reply: the echo server answers it."""

        def request(self, request_id: int, kind: str, payload: Any, *, origin: Any = None) -> Any:
            return {"type": "response", "requestId": request_id, "payload": payload}

    return EchoDialect()


@pytest.mark.anyio
async def test_client_requests_and_sends_take_the_fast_path_in_order() -> None:
    """Concurrent requests get their own replies, and pipelined sends arrive in order."""
    async with running_server(compression=None) as server:
        client = wsclient.connect(
            server.url,
            dialect=echo_dialect(),
            compression=None,
            message_buffer=wsclient.BufferPolicy(max_messages=5000, overflow="fail"),
        )
        async with client:
            answers: dict[int, Any] = {}

            async def ask(n: int) -> None:
                for k in range(20):
                    answers[n * 100 + k] = await client.request("q", {"n": n, "k": k})

            async with anyio.create_task_group() as group:
                for n in range(16):
                    group.start_soon(ask, n)
            assert answers == {n * 100 + k: {"n": n, "k": k} for n in range(16) for k in range(20)}
            for n in range(2000):
                assert await client.send({"seq": n})
            with anyio.fail_after(BOUND):
                received = [await client.receive() for _ in range(2000)]
            assert received == [{"seq": n} for n in range(2000)]
            stats = client.statistics()
            assert stats.requests.replies == 320
            assert stats.requests.pending == 0
            assert stats.connection.messages_received == 2320


@pytest.mark.anyio
async def test_a_connection_keeps_no_writer_task_once_idle() -> None:
    """The task that writes queued frames (trio) ends at a heartbeat with nothing sent since."""
    async with running_server(compression=None) as server:
        client = wsclient.connect(
            server.url,
            dialect=echo_dialect(),
            compression=None,
            heartbeat=wsclient.Heartbeat(interval=0.05, timeout=5),
        )
        async with client:
            assert await client.request("q", 1) == 1
            rt = client.transport
            await until(lambda: not rt._writing_behind, "the writer ended")
            assert await client.request("q", 2) == 2  # and a new one starts when needed
            assert client.statistics().requests.replies == 2


class Sink(wsclient._links.LinkOwner):
    """A link owner that ignores what it is told: these tests only write."""

    def bytes_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> None:
        pass

    def link_lost(self, exc: BaseException | None) -> None:
        pass


@pytest.mark.anyio
async def test_write_nowait_sends_what_the_socket_takes_and_the_rest_first() -> None:
    """On trio a frame the socket takes only in part has its rest written before anything else."""
    if sniffio.current_async_library() != "trio":
        pytest.skip("asyncio links write through the event loop, not write_nowait()")
    received = bytearray()
    big = bytes(range(256)) * 16384  # 4 MiB: more than both socket buffers hold
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as group:

            async def serve() -> None:
                async def read(stream: anyio.abc.SocketStream) -> None:
                    async with stream:
                        async for chunk in stream:
                            received.extend(chunk)

                await listener.serve(read)

            group.start_soon(serve)
            stream = await anyio.connect_tcp("127.0.0.1", port)
            raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            link = wsclient._links.StreamLink(Sink(), stream)
            assert link.write_nowait(big)  # written in part: the rest is queued first
            assert link.backlogged
            assert not link.write_nowait(b"burst")  # a burst goes to the queue, not around it
            link.queue([b"<control>"], control=True)
            link.queue([b"<data>"], control=False)
            with anyio.fail_after(BOUND):
                await link.flush()
                await stream.send_eof()
                while len(received) < len(big) + len(b"<control><data>"):
                    await anyio.sleep(0.001)
            await link.abort()
            group.cancel_scope.cancel()
    assert bytes(received) == big + b"<control><data>"
