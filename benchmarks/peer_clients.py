"""The clients ``peers.py`` compares, each behind the same small interface.

One :class:`Connection` subclass per library: how it opens a connection, sends
and receives a message, makes one round trip, pipelines, and closes. Each
uses its library the way that library's documentation does (picows through a
listener's callbacks, websocket-client from threads), so a row measures the
library, not an adapter forced on it. The measurements themselves live in
``peers.py``.

Imported as a sibling module, like ``common`` and ``echo_process``.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from common import (
    Concurrently,
    anyio_task_group,
    asyncio_gather,
    echo_dialect,
    importable,
    measure_pipelined,
    padded_json,
    trio_nursery,
)

# Seconds a close may take before the benchmark counts it as failed.
CLOSE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Messages:
    """What every client sends: the same JSON texts, and the Client's framing of them."""

    text: str  # the small message
    big: str  # the large one
    payload: dict[str, Any]  # a Client request's payload, framed to the small size

    @classmethod
    def make(cls, size: int, big_size: int) -> Messages:
        def bench(pad: str) -> dict[str, Any]:
            return {"type": "bench", "seq": 123456, "ts": 1700000000.123, "pad": pad}

        def request(pad: str) -> dict[str, Any]:
            # 5-digit request ids: the Client's ids grow, so the size is exact from 10,000 on
            # and a few bytes smaller before.
            payload = {"seq": 123456, "ts": 1700000000.123, "pad": pad}
            return {"type": "response", "requestId": 10_000, "payload": payload}

        text = orjson.dumps(padded_json(bench, size)).decode()
        big = orjson.dumps(padded_json(bench, big_size)).decode()
        return cls(text, big, padded_json(request, size)["payload"])


class Connection:
    """One open connection of one client, as the measurements use it.

    ``small`` and ``big`` are what this client sends: the JSON text, or for
    the Client the decoded object it encodes itself.
    """

    concurrently: Concurrently = staticmethod(asyncio_gather)

    def __init__(self, messages: Messages) -> None:
        self.small: Any = messages.text
        self.big: Any = messages.big

    async def send(self, message: Any) -> Any:
        raise NotImplementedError

    async def receive(self) -> Any:
        raise NotImplementedError

    async def roundtrip(self) -> Any:
        """Send the small message and wait for its echo (or, for the Client, the reply)."""
        await self.send(self.small)
        return await self.receive()

    def reply_ok(self, reply: Any) -> bool:
        return bool(reply == self.small)

    async def pipelined(self, message: Any, count: int) -> tuple[float, float, Any]:
        """One task sends ``count`` messages while another receives them; seconds, CPU, last."""
        return await measure_pipelined(self.send, self.receive, message, count, self.concurrently)

    async def aclose(self) -> None:
        raise NotImplementedError


class BoundConnection(Connection):
    """A connection whose send, receive and close are its library's own methods."""

    def __init__(
        self,
        messages: Messages,
        send: Callable[[Any], Awaitable[Any]],
        receive: Callable[[], Awaitable[Any]],
        close: Callable[[], Awaitable[Any]],
        concurrently: Concurrently = asyncio_gather,
    ) -> None:
        super().__init__(messages)
        self.send = send  # type: ignore[method-assign,assignment]
        self.receive = receive  # type: ignore[method-assign,assignment]
        self._close = close
        self.concurrently = concurrently

    async def aclose(self) -> None:
        await self._close()


Opener = Callable[[str, bool, int | None], Awaitable[Connection]]


# wsclient: the full Client, and the bare transport.


class ClientConnection(Connection):
    """``wsclient.connect()``: heartbeat, outbound queue, correlator and dialect all on.

    Round trip: ``request()`` with a dialect that frames each request as its
    own reply, so the echo server's echo answers it. Pipelined: ``send()``
    objects, ``receive()`` the echoes, through the JSON codec.
    """

    concurrently = staticmethod(anyio_task_group)

    def __init__(self, messages: Messages, client: Any) -> None:
        super().__init__(messages)
        self.small = orjson.loads(messages.text)
        self.big = orjson.loads(messages.big)
        self.payload = messages.payload
        self.client = client
        self.send = client.send  # type: ignore[method-assign]
        self.receive = client.receive  # type: ignore[method-assign]

    async def roundtrip(self) -> Any:
        return await self.client.request("bench", self.payload)

    def reply_ok(self, reply: Any) -> bool:
        return bool(reply == self.payload)

    async def aclose(self) -> None:
        await self.client.__aexit__(None, None, None)


def client_opener(messages: Messages) -> Opener:
    async def open_client(url: str, deflate: bool, pipelining: int | None) -> Connection:
        import wsclient

        options: dict[str, Any] = {"compression": "deflate" if deflate else None}
        if pipelining is not None:
            # The pipelined test reads as fast as it can but may fall behind
            # the reader for a moment: room for every echo, and a failure
            # rather than a silent drop if that is not enough.
            options["dialect"] = echo_dialect()
            options["message_buffer"] = wsclient.BufferPolicy(
                max_messages=max(pipelining, 1024), overflow="fail"
            )
        client = wsclient.connect(url, **options)
        await client.__aenter__()
        return ClientConnection(messages, client)

    return open_client


def transport_opener(messages: Messages) -> Opener:
    async def open_transport(url: str, deflate: bool, pipelining: int | None) -> Connection:
        from wsclient import connect_transport

        transport = await connect_transport(url, compression="deflate" if deflate else None)
        return BoundConnection(
            messages, transport.send, transport.receive, transport.aclose, anyio_task_group
        )

    return open_transport


# websockets: the reference, on asyncio (and uvloop) and on trio.


def websockets_opener(messages: Messages, loop: str) -> Opener:
    async def open_asyncio(url: str, deflate: bool, pipelining: int | None) -> Connection:
        from websockets.asyncio.client import connect

        # proxy=None: never through a proxy named in the environment, only loopback.
        ws = await connect(url, compression="deflate" if deflate else None, proxy=None)
        return BoundConnection(messages, ws.send, ws.recv, ws.close)

    async def open_trio(url: str, deflate: bool, pipelining: int | None) -> Connection:
        from websockets.trio.client import connect

        manager = connect(url, compression="deflate" if deflate else None, proxy=None)
        ws = await manager.__aenter__()
        return BoundConnection(
            messages, ws.send, ws.recv, lambda: manager.__aexit__(None, None, None), trio_nursery
        )

    return open_trio if loop == "trio" else open_asyncio


# aiohttp: ws_connect on one ClientSession per process.


@asynccontextmanager
async def aiohttp_opener(messages: Messages) -> AsyncIterator[Opener]:
    import aiohttp

    # limit=0: a WebSocket holds its connection, and the pool's default of
    # 100 would stall the 101st.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def open_aiohttp(url: str, deflate: bool, pipelining: int | None) -> Connection:
            ws = await session.ws_connect(url, compress=15 if deflate else 0)
            return BoundConnection(messages, ws.send_str, ws.receive_str, ws.close)

        yield open_aiohttp


# picows: a Cython client driven by a listener's callbacks.


@dataclass
class Expect:
    """What a callback-driven connection waits for: ``remaining`` messages, then ``done``."""

    remaining: int
    done: asyncio.Future[Any]
    last: Any = None


class PicowsConnection(Connection):
    """picows as its documentation uses it: ``transport.send()`` and ``on_ws_frame()``.

    A round trip sends and waits for the callback to see the echo. Pipelined:
    the sender writes, pausing while picows says the socket's buffer is full
    (``pause_writing``), and the callback counts the echoes as they come.
    Each echo is decoded to ``str``, as the other clients' receive does.
    """

    def __init__(self, messages: Messages, transport: Any, listener: Any) -> None:
        super().__init__(messages)
        from picows import WSMsgType

        self.transport = transport
        self.listener = listener
        self.text_type = WSMsgType.TEXT
        self.small_bytes = messages.text.encode()
        self.big_bytes = messages.big.encode()

    def expect(self, count: int) -> Expect:
        expect = Expect(count, asyncio.get_running_loop().create_future())
        self.listener.expect = expect
        return expect

    async def roundtrip(self) -> Any:
        expect = self.expect(1)
        self.transport.send(self.text_type, self.small_bytes)
        return await expect.done

    async def pipelined(self, message: Any, count: int) -> tuple[float, float, Any]:
        data = self.big_bytes if message is self.big else self.small_bytes
        send, text, writable = self.transport.send, self.text_type, self.listener.writable
        cpu = time.process_time()
        start = time.perf_counter()
        expect = self.expect(count)
        for _ in range(count):
            send(text, data)
            if not writable.is_set():
                await writable.wait()
        last = await expect.done
        return time.perf_counter() - start, time.process_time() - cpu, last

    async def aclose(self) -> None:
        from picows import WSCloseCode

        self.transport.send_close(WSCloseCode.OK)
        await asyncio.wait_for(self.transport.wait_disconnected(), CLOSE_TIMEOUT)


def picows_listener() -> type:
    from picows import WSListener, WSMsgType

    text, close = WSMsgType.TEXT, WSMsgType.CLOSE

    class Listener(WSListener):
        def __init__(self) -> None:
            self.expect: Expect | None = None
            self.writable = asyncio.Event()
            self.writable.set()

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            kind = frame.msg_type
            if kind == text:
                expect = self.expect
                if expect is None:
                    return
                expect.last = frame.get_payload_as_utf8_text()
                expect.remaining -= 1
                if expect.remaining == 0 and not expect.done.done():
                    expect.done.set_result(expect.last)
            elif kind == close:
                transport.disconnect()

        def on_ws_disconnected(self, transport: Any) -> None:
            expect = self.expect
            if expect is not None and not expect.done.done():
                expect.done.set_exception(ConnectionError("picows: disconnected"))
            self.writable.set()

        def pause_writing(self) -> None:
            self.writable.clear()

        def resume_writing(self) -> None:
            self.writable.set()

    return Listener


def picows_opener(messages: Messages) -> Opener:
    async def open_picows(url: str, deflate: bool, pipelining: int | None) -> Connection:
        from picows import ws_connect

        transport, listener = await ws_connect(picows_listener(), url)
        return PicowsConnection(messages, transport, listener)

    return open_picows


# The floor: an asyncio Protocol writing precomputed frames and counting bytes.


class RawProtocol(asyncio.Protocol):
    """The opening handshake through websockets' Sans-I/O core, then bytes counted, not parsed."""

    def __init__(self, url: str) -> None:
        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        self.handshake = ClientProtocol(parse_uri(url))
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.expect: Expect | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        handshake = self.handshake
        handshake.send_request(handshake.connect())
        for data in handshake.data_to_send():
            self.transport.write(data)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        expect = self.expect
        if expect is not None:
            expect.remaining -= len(data)
            if expect.remaining <= 0 and not expect.done.done():
                expect.done.set_result(None)
        elif not self.opened.done():
            self.handshake.receive_data(data)
            if self.handshake.events_received():
                error = self.handshake.handshake_exc
                if error is None:
                    self.opened.set_result(None)
                    self.handshake = None  # type: ignore[assignment]
                else:
                    self.opened.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        error = exc or ConnectionError("connection closed")
        for future in (self.opened, self.expect.done if self.expect else None):
            if future is not None and not future.done():
                future.set_exception(error)
        if not self.lost.done():
            self.lost.set_result(None)
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


@functools.cache
def raw_frames(text: str, big_text: str) -> tuple[dict[bool, bytes], dict[bool, int], bytes]:
    """Masked frames of the small and big messages, their echoes' sizes, a close frame.

    Made once and shared by every connection, so that idle ones hold nothing but their socket.
    """
    from websockets.frames import Close, Frame, Opcode

    def masked(opcode: Opcode, data: bytes) -> bytes:
        return Frame(opcode, data).serialize(mask=True, extensions=[])

    def echo_size(data: bytes) -> int:
        return len(Frame(Opcode.TEXT, data).serialize(mask=False, extensions=[]))

    small, big = text.encode(), big_text.encode()
    return (
        {False: masked(Opcode.TEXT, small), True: masked(Opcode.TEXT, big)},
        {False: echo_size(small), True: echo_size(big)},
        masked(Opcode.CLOSE, Close(1000, "").serialize()),
    )


class RawConnection(Connection):
    """What the kernel, the loopback and the echo server cost, with next to no client."""

    def __init__(self, messages: Messages, protocol: RawProtocol) -> None:
        super().__init__(messages)
        self.protocol = protocol
        self.frames, self.echo_sizes, self.close_frame = raw_frames(messages.text, messages.big)

    def expect(self, size: int) -> Expect:
        expect = Expect(size, asyncio.get_running_loop().create_future())
        self.protocol.expect = expect
        return expect

    async def roundtrip(self) -> Any:
        expect = self.expect(self.echo_sizes[False])
        self.protocol.transport.write(self.frames[False])  # type: ignore[union-attr]
        await expect.done
        return self.small

    async def pipelined(self, message: Any, count: int) -> tuple[float, float, Any]:
        big = message is self.big
        frame = self.frames[big]
        write = self.protocol.transport.write  # type: ignore[union-attr]
        writable = self.protocol.writable
        cpu = time.process_time()
        start = time.perf_counter()
        expect = self.expect(self.echo_sizes[big] * count)
        for _ in range(count):
            write(frame)
            if not writable.is_set():
                await writable.wait()
        await expect.done
        return time.perf_counter() - start, time.process_time() - cpu, message

    async def aclose(self) -> None:
        # The server answers the close frame and closes the TCP connection first.
        self.protocol.expect = None
        self.protocol.transport.write(self.close_frame)  # type: ignore[union-attr]
        await asyncio.wait_for(self.protocol.lost, CLOSE_TIMEOUT)


def raw_opener(messages: Messages) -> Opener:
    async def open_raw(url: str, deflate: bool, pipelining: int | None) -> Connection:
        from websockets.uri import parse_uri

        uri = parse_uri(url)
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: RawProtocol(url), uri.host, uri.port)
        await protocol.opened
        return RawConnection(messages, protocol)

    return open_raw


# websocket-client: synchronous, one thread per direction when pipelining.


class SyncConnection:
    """websocket-client's ``WebSocket``, with the same members as :class:`Connection`, blocking."""

    def __init__(self, messages: Messages, url: str) -> None:
        import websocket

        self.small = messages.text
        self.big = messages.big
        self.ws = websocket.create_connection(url, timeout=CLOSE_TIMEOUT * 6)

    def roundtrip(self) -> Any:
        self.ws.send(self.small)
        return self.ws.recv()

    def reply_ok(self, reply: Any) -> bool:
        return bool(reply == self.small)

    def pipelined(self, message: str, count: int) -> tuple[float, float, Any]:
        """A sender thread sends ``count`` messages while this thread receives them."""
        send, recv = self.ws.send, self.ws.recv
        errors: list[BaseException] = []

        def sender() -> None:
            try:
                for _ in range(count):
                    send(message)
            except BaseException as error:  # reported by the receiving thread
                errors.append(error)

        last = None
        cpu = time.process_time()
        start = time.perf_counter()
        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        try:
            for _ in range(count):
                last = recv()
        finally:
            thread.join(CLOSE_TIMEOUT)
        if errors:
            raise errors[0]
        return time.perf_counter() - start, time.process_time() - cpu, last

    def close(self) -> None:
        self.ws.close()


# Which clients there are, on which loops, and how to open each.


@dataclass(frozen=True)
class Peer:
    """One client library: its name in the tables, the loops it runs on, what it lacks."""

    name: str
    label: str
    module: str  # imported to tell whether it is installed
    loops: tuple[str, ...]
    deflate: bool = False  # has a row with permessage-deflate
    missing: dict[str, str] = field(default_factory=dict)  # loop -> why it can't run there

    def installed(self) -> bool:
        return importable(self.module)


ASYNCIO_ONLY = {"trio": "asyncio only"}
PEERS = (
    Peer("client", "wsclient Client", "wsclient", ("asyncio", "uvloop", "trio"), deflate=True),
    Peer(
        "transport", "wsclient transport", "wsclient", ("asyncio", "uvloop", "trio"), deflate=True
    ),
    Peer(
        "websockets",
        "websockets",
        "websockets.asyncio.client",
        ("asyncio", "uvloop", "trio"),
        deflate=True,
    ),
    Peer("aiohttp", "aiohttp", "aiohttp", ("asyncio", "uvloop"), missing=ASYNCIO_ONLY),
    Peer(
        "picows",
        "picows",
        "picows",
        ("asyncio", "uvloop"),
        missing={**ASYNCIO_ONLY, "deflate": "no permessage-deflate"},
    ),
    Peer(
        "websocket-client",
        "websocket-client",
        "websocket",
        ("threads",),
        missing={
            "event loops": "synchronous, measured from threads",
            "deflate": "no permessage-deflate",
        },
    ),
    Peer("raw-tcp", "raw TCP (floor)", "websockets", ("asyncio", "uvloop"), missing=ASYNCIO_ONLY),
)


def peer(name: str) -> Peer:
    return next(p for p in PEERS if p.name == name)


def opener(name: str, loop: str, messages: Messages) -> AbstractAsyncContextManager[Opener]:
    """An async context giving ``open(url, deflate, pipelining)`` for the async clients.

    The context holds what a client shares between its connections (aiohttp's session).
    """
    if name == "aiohttp":
        return aiohttp_opener(messages)
    makers: dict[str, Callable[[], Opener]] = {
        "client": lambda: client_opener(messages),
        "transport": lambda: transport_opener(messages),
        "websockets": lambda: websockets_opener(messages, loop),
        "picows": lambda: picows_opener(messages),
        "raw-tcp": lambda: raw_opener(messages),
    }
    return nothing_shared(makers[name]())


@asynccontextmanager
async def nothing_shared(open_: Opener) -> AsyncIterator[Opener]:
    yield open_
