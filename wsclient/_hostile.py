"""A hostile WebSocket server for fuzz tests: [`HostileServer`][wsclient.testing.HostileServer].

Real servers are well behaved; a client must also survive the ones that are
not. This server completes a genuine opening handshake (RFC 6455 4.2.2,
with permessage-deflate, RFC 7692, when the client offers it) and then sends
whatever the test scripts, well-formed or not: JSON of any shape, text
frames holding invalid UTF-8, frames over the client's ``max_size``, reserved
bits and opcodes, masked or fragmented control frames, bad close codes,
compressed frames that inflate past ``max_size`` (deflate bombs) or raw bytes
that are no frame at all.

```python
async with HostileServer() as server, wsclient.connect(server.url) as client:
    conn = await server.accept()
    request = await conn.receive_json()  # what the client sent
    await conn.send_text(b"\\xff\\xfe")  # invalid UTF-8: the client fails with 1007
    assert await conn.wait_closed() == 1007
```

Outbound, frames are written as raw bytes, exactly as given: build them with
[`encode_frame()`][wsclient.testing.encode_frame] and
[`deflate()`][wsclient.testing.deflate]. Inbound, websockets' Sans-I/O
``ServerProtocol`` parses what the client sends (unmasking, decompressing,
answering pings, echoing the client's close frame), so a test can read the
client's messages and reply to its real request ids.

It runs in the caller's event loop (asyncio or trio) inside its own task
group, on 127.0.0.1 and a port the OS chooses; nothing runs in threads.
"""

from __future__ import annotations

import struct
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.abc
import orjson
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from ._exceptions import InvalidState

__all__ = [
    "HostileConnection",
    "HostileServer",
    "HostileServerStatistics",
    "deflate",
    "encode_frame",
]

# RFC 6455 5.2 opcodes, for encode_frame(); 0x3-0x7 and 0xB-0xF are reserved.
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

_READ_CHUNK = 65536
# RFC 7692 7.2.1: a compressed message ends with an empty stored block whose
# last four bytes (00 00 ff ff) are removed before sending.
_DEFLATE_TAIL = b"\x00\x00\xff\xff"

Handshake = Callable[[Request], bytes | None]
Handler = Callable[["HostileConnection"], Awaitable[None]]


def encode_frame(
    opcode: int,
    payload: bytes | str = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
    mask: bytes | None = None,
    length: int | None = None,
) -> bytes:
    """One WebSocket frame as raw bytes (RFC 6455 5.2), valid or not.

    Nothing is checked: any ``opcode`` from 0 to 15, reserved bits, a
    ``mask`` (a server must never mask, 5.1), control frames that are not
    final or longer than 125 bytes (5.5). ``length`` declares a payload
    length other than the real one (a header that promises 2**63 bytes,
    say); it is encoded in the shortest form that holds it, as 5.2 requires.

    Args:
        opcode: the frame's opcode (see ``CONT``, ``TEXT``... in this module).
        payload: the payload; a ``str`` is encoded to UTF-8.
        fin: the FIN bit.
        rsv1: the RSV1 bit (set on the first frame of a compressed message).
        rsv2: the RSV2 bit.
        rsv3: the RSV3 bit.
        mask: a 4-byte masking key to mask the payload with.
        length: the payload length to declare (default: the real one).
    """
    if isinstance(payload, str):
        payload = payload.encode()
    if not 0 <= opcode <= 0xF:
        raise ValueError(f"an opcode has 4 bits, not {opcode!r}")
    declared = len(payload) if length is None else length
    if not 0 <= declared < 2**64:
        raise ValueError(f"a payload length has at most 64 bits, not {declared!r}")
    head1 = (fin << 7) | (rsv1 << 6) | (rsv2 << 5) | (rsv3 << 4) | opcode
    masked = 0x80 if mask is not None else 0
    if declared < 126:
        head = struct.pack("!BB", head1, masked | declared)
    elif declared < 65536:
        head = struct.pack("!BBH", head1, masked | 126, declared)
    else:
        head = struct.pack("!BBQ", head1, masked | 127, declared)
    if mask is None:
        return head + payload
    if len(mask) != 4:
        raise ValueError("a masking key is 4 bytes")
    masked_payload = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return head + mask + masked_payload


def deflate(payload: bytes | str) -> bytes:
    """``payload`` compressed as a permessage-deflate message body (RFC 7692 7.2.1).

    Send it in a frame with RSV1 set (``encode_frame(TEXT, deflate(...),
    rsv1=True)``), or use
    [`send_compressed()`][wsclient.testing.HostileConnection.send_compressed].
    A 9-bit window keeps it valid whatever window sizes were negotiated, and
    each body stands alone, so it decodes with or without context takeover.
    ``deflate(bytes(2**24))`` is a 16 KiB bomb that inflates to 16 MiB.
    """
    if isinstance(payload, str):
        payload = payload.encode()
    compressor = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, -9)
    body = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return body[: -len(_DEFLATE_TAIL)] if body.endswith(_DEFLATE_TAIL) else body


@dataclass(frozen=True)
class HostileServerStatistics:
    """A snapshot of a [`HostileServer`][wsclient.testing.HostileServer]'s counters."""

    connections: int
    """Connections whose opening handshake completed."""
    frames_sent: int
    """Frames sent to clients (a raw blob counts as one)."""
    bytes_sent: int
    """Bytes written to clients, handshakes included."""
    messages_received: int
    """Data messages received from clients."""
    close_codes: tuple[int | None, ...]
    """The code each finished connection's client sent in its close frame
    (None: the TCP connection ended without one), in the order they ended."""


class _Counters:
    def __init__(self) -> None:
        self.connections = 0
        self.frames_sent = 0
        self.bytes_sent = 0
        self.messages_received = 0
        self.close_codes: list[int | None] = []


class HostileConnection:
    """One client connection of a [`HostileServer`][wsclient.testing.HostileServer].

    The ``send_*`` methods write complete frames, never interleaved with one
    another or with the pongs and close echo the server writes on its own;
    they return False, sending nothing, once the connection is gone. The
    client's data messages are read in the background and wait for
    [`receive()`][wsclient.testing.HostileConnection.receive].
    """

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        protocol: ServerProtocol,
        request: Request,
        counters: _Counters,
        *,
        answer_close: bool = True,
    ) -> None:
        """Made by the server for each connection it accepts."""
        self._answer_close = answer_close
        self._stream = stream
        self._protocol = protocol
        self._counters = counters
        self._lock = anyio.Lock()
        self._messages: deque[str | bytes] = deque()
        self._arrived = anyio.Event()
        self._finished = anyio.Event()
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._close_sent = False  # by us: what the protocol would write then is moot
        self._closed = False
        self.request = request
        """The client's opening handshake request (path, headers)."""
        self.deflate = bool(protocol.extensions)
        """Whether permessage-deflate was negotiated."""
        self.frames_sent = 0
        """Frames sent on this connection."""

    # Observing

    @property
    def closed(self) -> bool:
        """Whether the TCP connection is gone."""
        return self._closed

    @property
    def close_code(self) -> int | None:
        """The code of the client's close frame; None if it sent none (yet)."""
        received = self._protocol.close_rcvd
        return received.code if received is not None else None

    @property
    def close_reason(self) -> str | None:
        """The reason of the client's close frame; None if it sent none (yet)."""
        received = self._protocol.close_rcvd
        return received.reason if received is not None else None

    def __repr__(self) -> str:
        state = f"closed code={self.close_code}" if self._closed else "open"
        return f"<HostileConnection {state} frames_sent={self.frames_sent}>"

    # Receiving

    async def receive(self) -> str | bytes:
        """The client's next data message: ``str`` for text, ``bytes`` for binary.

        Raises:
            anyio.EndOfStream: the connection ended and every message was read.
        """
        while not self._messages:
            if self._closed:
                raise anyio.EndOfStream
            if self._arrived.is_set():  # spent on messages already taken
                self._arrived = anyio.Event()
            await self._arrived.wait()
        return self._messages.popleft()

    async def receive_json(self) -> Any:
        """The client's next message, decoded as JSON."""
        return orjson.loads(await self.receive())

    async def wait_closed(self) -> int | None:
        """Wait until the TCP connection is gone; return the client's close code (None: none)."""
        await self._finished.wait()
        return self.close_code

    # Sending

    async def send_frames(self, frames: Iterable[bytes]) -> bool:
        """Write raw frames (from [`encode_frame()`][wsclient.testing.encode_frame]) in one go."""
        chunks = list(frames)
        return await self._write(b"".join(chunks), len(chunks))

    async def send_raw(self, data: bytes) -> bool:
        """Write ``data`` as it is: part of a frame, several, or no frame at all (counts as one)."""
        return await self._write(bytes(data), 1)

    async def send_text(self, data: str | bytes) -> bool:
        """One text frame; ``bytes`` go as they are, valid UTF-8 or not."""
        return await self._write(encode_frame(TEXT, data), 1)

    async def send_binary(self, data: bytes) -> bool:
        """One binary frame."""
        return await self._write(encode_frame(BINARY, data), 1)

    async def send_json(self, value: Any) -> bool:
        """``value`` as JSON in one text frame."""
        return await self._write(encode_frame(TEXT, orjson.dumps(value)), 1)

    async def send_compressed(self, data: bytes | str, *, text: bool = True) -> bool:
        """``data`` compressed (see [`deflate()`][wsclient.testing.deflate]) in one frame with RSV1.

        Without permessage-deflate negotiated, RSV1 is a protocol violation.
        """
        frame = encode_frame(TEXT if text else BINARY, deflate(data), rsv1=True)
        return await self._write(frame, 1)

    async def close(self, code: int | None = 1000, reason: bytes | str = b"") -> bool:
        """Send a close frame, any code (None: an empty one), then stay to read the reply.

        The server closes the TCP connection once the client answers, or ends it.
        """
        if isinstance(reason, str):
            reason = reason.encode()
        payload = b"" if code is None else struct.pack("!H", code) + reason
        written = await self._write(encode_frame(CLOSE, payload), 1)
        self._close_sent = True
        return written

    async def abort(self) -> None:
        """Close the TCP connection now (a FIN), with no close frame."""
        await self._finish()

    async def _write(self, data: bytes, frames: int) -> bool:
        async with self._lock:
            if self._closed:
                return False
            try:
                await self._stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await self._finish()
                return False
        self.frames_sent += frames
        self._counters.frames_sent += frames
        self._counters.bytes_sent += len(data)
        return True

    # The background reader

    async def _run(self) -> None:
        protocol = self._protocol
        try:
            while protocol.state is not State.CLOSED:
                try:
                    data = await self._stream.receive(_READ_CHUNK)
                except anyio.EndOfStream:
                    protocol.receive_eof()
                else:
                    protocol.receive_data(data)
                self._take_events()
                if not await self._write_protocol_output():
                    break
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish()

    def _take_events(self) -> None:
        for event in self._protocol.events_received():
            if not isinstance(event, Frame):
                continue
            if event.opcode is Opcode.TEXT or event.opcode is Opcode.BINARY:
                self._fragments = [bytes(event.data)]
                self._fragment_text = event.opcode is Opcode.TEXT
            elif event.opcode is Opcode.CONT:
                self._fragments.append(bytes(event.data))
            else:
                continue
            if event.fin:
                payload = b"".join(self._fragments)
                self._fragments = []
                message: str | bytes = payload
                if self._fragment_text:
                    message = payload.decode(errors="replace")
                self._messages.append(message)
                self._counters.messages_received += 1
                self._arrived.set()

    async def _write_protocol_output(self) -> bool:
        """Write the pongs and close echo the protocol made; False once it wants TCP closed."""
        protocol = self._protocol
        for chunk in protocol.data_to_send():
            if not self._answer_close and protocol.close_rcvd is not None:
                continue  # deaf to the client's close: no echo, TCP stays open
            if not chunk:
                return False  # RFC 6455 7.1.1: the server closes TCP first
            if self._close_sent:
                continue  # our own close frame went first: no echo after it
            async with self._lock:
                if self._closed:
                    return False
                await self._stream.send(chunk)
            self._counters.bytes_sent += len(chunk)
        return True

    async def _finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._counters.close_codes.append(self.close_code)
        self._arrived.set()
        await self._stream.aclose()
        self._finished.set()


class HostileServer:
    """A WebSocket server on 127.0.0.1 that sends clients whatever the test scripts.

    Args:
        handler: run as ``await handler(connection)`` for each connection
            (a [`HostileConnection`][wsclient.testing.HostileConnection]), in the
            server's task group; the TCP connection is dropped when it returns.
            Without one, take connections with
            [`accept()`][wsclient.testing.HostileServer.accept].
        compression: ``"deflate"`` accepts permessage-deflate when a client
            offers it; None never negotiates it.
        handshake: called with each opening handshake request; bytes it
            returns are written instead of the real response (a wrong
            ``Sec-WebSocket-Accept``, a 500, garbage), followed by the end of
            the stream (TCP FIN); the server then waits for the client to leave.
            None (or a call that returns None) answers properly.
        answer_close: False ignores the client's close frame: no echo, and
            the TCP connection stays open until the client drops it (the
            server may go on sending meanwhile).
        port: the port to listen on; 0 lets the OS choose (see
            [`url`][wsclient.testing.HostileServer.url]).

    Use it as an async context manager, from asyncio or trio; leaving it
    drops every connection.
    """

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        compression: Literal["deflate"] | None = "deflate",
        handshake: Handshake | None = None,
        answer_close: bool = True,
        port: int = 0,
    ) -> None:
        if compression not in ("deflate", None):
            raise ValueError(f"compression must be 'deflate' or None, got {compression!r}")
        self._handler = handler
        self._compression = compression
        self._handshake = handshake
        self._answer_close = answer_close
        self._port = port
        self._listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = None
        self._group: anyio.abc.TaskGroup | None = None
        self._accepted: deque[HostileConnection] = deque()
        self._new_connection = anyio.Event()
        self._counters = _Counters()
        self._connections: list[HostileConnection] = []

    @property
    def port(self) -> int:
        """The port the server listens on."""
        if self._listener is None:
            raise InvalidState("the HostileServer is not started")
        port: int = self._listener.extra(anyio.abc.SocketAttribute.local_port)
        return port

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:<port>/``."""
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def connections(self) -> list[HostileConnection]:
        """Every connection whose handshake completed, oldest first."""
        return list(self._connections)

    def statistics(self) -> HostileServerStatistics:
        """A snapshot of the server's counters."""
        counters = self._counters
        return HostileServerStatistics(
            connections=counters.connections,
            frames_sent=counters.frames_sent,
            bytes_sent=counters.bytes_sent,
            messages_received=counters.messages_received,
            close_codes=tuple(counters.close_codes),
        )

    def __repr__(self) -> str:
        where = self.url if self._listener is not None else "not started"
        counters = self._counters
        return (
            f"<HostileServer {where} connections={counters.connections}"
            f" frames_sent={counters.frames_sent}>"
        )

    async def accept(self) -> HostileConnection:
        """The next connection whose opening handshake completed (without a handler)."""
        if self._handler is not None:
            raise InvalidState("connections go to the handler; accept() is not available")
        while not self._accepted:
            if self._new_connection.is_set():  # spent on connections already taken
                self._new_connection = anyio.Event()
            await self._new_connection.wait()
        return self._accepted.popleft()

    async def __aenter__(self) -> HostileServer:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self._port)
        group = anyio.create_task_group()
        await group.__aenter__()
        self._listener, self._group = listener, group
        group.start_soon(listener.serve, self._serve, group)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening and drop every connection; idempotent."""
        group, self._group = self._group, None
        if group is None:
            return
        group.cancel_scope.cancel()
        await group.__aexit__(None, None, None)
        if self._listener is not None:
            await self._listener.aclose()

    async def _serve(self, stream: anyio.abc.SocketStream) -> None:
        extensions = [ServerPerMessageDeflateFactory()] if self._compression else None
        protocol = ServerProtocol(extensions=extensions, max_size=None)
        protocol.debug = False
        try:
            request = await self._read_request(stream, protocol)
            if request is None:
                return
            custom = self._handshake(request) if self._handshake is not None else None
            if custom is not None:
                await stream.send(custom)
                self._counters.bytes_sent += len(custom)
                await stream.send_eof()  # a truncated response must end somewhere
                while True:  # the client should leave now: read until it does
                    await stream.receive(_READ_CHUNK)
            response = protocol.accept(request)
            protocol.send_response(response)
            for chunk in protocol.data_to_send():
                if chunk:
                    await stream.send(chunk)
                    self._counters.bytes_sent += len(chunk)
            if protocol.state is not State.OPEN:
                return
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return
        finally:
            if protocol.state is not State.OPEN:
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
        connection = HostileConnection(
            stream, protocol, request, self._counters, answer_close=self._answer_close
        )
        self._counters.connections += 1
        self._connections.append(connection)
        assert self._group is not None
        self._group.start_soon(connection._run)
        if self._handler is None:
            self._accepted.append(connection)
            self._new_connection.set()
            return
        try:
            await self._handler(connection)
        finally:
            with anyio.CancelScope(shield=True):
                await connection._finish()

    @staticmethod
    async def _read_request(
        stream: anyio.abc.SocketStream, protocol: ServerProtocol
    ) -> Request | None:
        while True:
            try:
                data = await stream.receive(_READ_CHUNK)
            except anyio.EndOfStream:
                return None
            protocol.receive_data(data)
            for event in protocol.events_received():
                if isinstance(event, Request):
                    return event
            if protocol.handshake_exc is not None:
                return None
