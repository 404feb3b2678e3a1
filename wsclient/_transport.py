"""The transport: one WebSocket connection, the layer everything stacks on.

[`Transport`][wsclient.Transport] is the small interface every upper layer uses.
[`WebSocketTransport`][wsclient.WebSocketTransport] implements RFC 6455 by driving ``websockets``'
Sans-I/O ``ClientProtocol`` over a byte link (see
``wsclient._links``): an ``asyncio.Protocol`` on asyncio, an anyio
byte stream elsewhere. The transport owns every protocol decision; the link
only moves bytes.

The per-message paths skip what they can of the protocol's machinery, where
that changes nothing: a final data frame is serialised here, and final,
unmasked text and binary frames from the server are framed here too
(``_read_frames``); anything else (control frames, fragments, errors,
compression) goes through websockets. A consumer that only hands messages on
can take them as they are read (``_set_message_handler``) instead of waking
a task per message, and a sender that must not wait can queue a frame
(``_send_nowait``): the asyncio loop writes it, or on a stream link a task
of the caller's does (``_drain``), a burst in a few writes.
"""

from __future__ import annotations

import asyncio
import enum
import http
import logging
import math
import os
import re
import socket
import ssl as ssl_module
import struct
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Literal, TypeVar

import anyio
import anyio.abc
import sniffio
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI, PayloadTooBig
from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, State
from websockets.typing import Origin, Subprotocol
from websockets.uri import WebSocketURI, parse_uri

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

from ._checks import check_timeout, is_count
from ._exceptions import (
    ConnectError,
    ConnectionClosed,
    ConnectionClosedOK,
    ConnectTimeout,
    InvalidState,
    InvalidURL,
    closed_error,
)
from ._links import AsyncioLink, Link, LinkOwner, StreamLink
from ._redact import credential_pieces, redact_url
from ._security import check_credentials, credential_headers
from ._version import __version__

__all__ = [
    "Transport",
    "TransportState",
    "TransportStatistics",
    "WebSocketTransport",
    "connect_transport",
]

logger = logging.getLogger("wsclient.transport")

USER_AGENT = f"wsclient/{__version__}"

_TEXT, _BINARY, _CONT, _PONG = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.PONG
_FRAME_PARSER = Protocol.parse  # websockets' frame parser, without the client's handshake
# Python 3.11 looks enum members up slowly (about 0.1 µs): the hot paths use these.
_OPEN = State.OPEN
# Every buffer starts as this one, never added to: an empty deque costs 760 bytes,
# and a connection whose messages go to a handler never needs its own.
_NO_MESSAGES: deque[str | bytes] = deque()
_CONTROL_OPCODES = frozenset({0x9, 0xA})  # ping, pong: may overtake queued data

# Masking keys are drawn from os.urandom in bulk: one system call per 256
# frames rather than one per frame, from the same strong source (RFC 6455 5.3).
_MASK_POOL = 1024
_HEAD_SHORT = struct.Struct("!BB").pack
_HEAD_MEDIUM = struct.Struct("!BBH").pack
_HEAD_LONG = struct.Struct("!BBQ").pack


_TransportT = TypeVar("_TransportT", bound="Transport")

# What Transport._send_nowait() did with a message.
SENT = 1  # written, or the event loop writes it
QUEUED = 2  # queued in order: a task must await _drain()
# Messages a stream link holds for its writer before send() waits for it again.
WRITE_BEHIND_LIMIT = 512


class TransportState(enum.Enum):
    """Where a transport is in its life (RFC 6455 4.1, 7.1.3, 7.1.4)."""

    CONNECTING = "connecting"
    """The opening handshake is under way."""
    OPEN = "open"
    """Messages flow both ways."""
    CLOSING = "closing"
    """The closing handshake is under way."""
    CLOSED = "closed"
    """Final: the connection is closed, ``close_code`` and ``close_reason`` are set."""


@dataclass(frozen=True)
class TransportStatistics:
    """Counters of one transport, from [`Transport.statistics()`][wsclient.Transport.statistics]."""

    state: TransportState
    """The transport's state."""
    messages_sent: int
    """Messages written."""
    messages_received: int
    """Messages received and buffered for ``receive()``."""
    bytes_sent: int
    """Bytes written to the wire."""
    bytes_received: int
    """Bytes read from the wire."""
    pings_sent: int
    """Pings sent."""
    pongs_received: int
    """Pongs received."""
    last_rtt: float | None
    """Seconds the last answered ping took; None before any."""
    messages_buffered: int
    """Messages received and not read yet."""
    read_pauses: int
    """Times reading paused because ``max_queue`` messages waited to be read."""
    messages_discarded: int
    """Messages received after our close began, beyond ``max_queue``: read to reach the
    server's close frame, then dropped."""
    last_received_at: float | None = None
    """When the last bytes arrived, on the event loop's clock (``anyio.current_time()``)."""


@dataclass(slots=True)
class TransportCounters:
    """The running counters every transport keeps; ``snapshot()`` freezes them."""

    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    pings_sent: int = 0
    pongs_received: int = 0
    last_rtt: float | None = None
    read_pauses: int = 0
    messages_discarded: int = 0
    last_received_at: float | None = None

    def snapshot(self, state: TransportState, messages_buffered: int) -> TransportStatistics:
        return TransportStatistics(
            state=state,
            messages_sent=self.messages_sent,
            messages_received=self.messages_received,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            pings_sent=self.pings_sent,
            pongs_received=self.pongs_received,
            last_rtt=self.last_rtt,
            messages_buffered=messages_buffered,
            read_pauses=self.read_pauses,
            messages_discarded=self.messages_discarded,
            last_received_at=self.last_received_at,
        )


class Transport(ABC):
    """One message-oriented connection to a server.

    Use it as an async context manager, or call [`aclose()`][wsclient.Transport.aclose]. Iterating
    over it yields messages until the connection closes normally; an abnormal
    close raises [`ConnectionClosedError`][wsclient.ConnectionClosedError].
    """

    @abstractmethod
    async def send(self, data: str | bytes, *, text: bool | None = None) -> None:
        """Send one message: ``str`` as a text frame, ``bytes`` as binary.

        ``text=True`` sends ``bytes`` that are already UTF-8 (orjson output)
        as a text frame without decoding them first.

        Raises the [`ConnectionClosed`][wsclient.ConnectionClosed] subclass if the
        connection is closed, or dies while the message waits for the peer to
        read. Whenever ``send()`` raises or is cancelled, the message may or
        may not have been delivered: callers that retry must tolerate a duplicate.
        """

    @abstractmethod
    async def receive(self) -> str | bytes:
        """Return the next message; raise [`ConnectionClosed`][wsclient.ConnectionClosed] once
        closed."""

    @abstractmethod
    async def ping(self, data: bytes | None = None) -> float:
        """Send a ping and return the round-trip time in seconds when its pong arrives."""

    @abstractmethod
    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection with ``code`` and ``reason``; idempotent."""

    @abstractmethod
    async def abort(self) -> None:
        """Drop the connection at once, without a closing handshake; idempotent.

        For a peer that no longer answers (a heartbeat gave up on it): unlike
        [`aclose()`][wsclient.Transport.aclose] it does not wait. Both sides see code 1006.
        """

    @property
    @abstractmethod
    def state(self) -> TransportState:
        """The connection's state."""

    @property
    @abstractmethod
    def close_code(self) -> int | None:
        """The close code the peer sent (1006 if none), or None while not closed."""

    @property
    @abstractmethod
    def close_reason(self) -> str | None:
        """The close reason the peer sent, or None while not closed."""

    @abstractmethod
    def statistics(self) -> TransportStatistics:
        """A snapshot of this transport's counters."""

    def _send_nowait(self, data: str | bytes, text: bool | None) -> int:
        """Send one message now if that needs no waiting, as ``send()`` would.

        Returns ``SENT`` (written, or the event loop writes it), ``QUEUED``
        (queued in order: some task must ``await _drain()``), or 0 with nothing
        sent: then ``await send()``.
        """
        return 0

    async def _drain(self) -> None:  # noqa: B027 - optional, like _send_nowait
        """Write what ``_send_nowait`` queued (for ``QUEUED``)."""

    def _set_message_handler(self, handler: Callable[[str | bytes], None]) -> bool:
        """Hand every message to ``handler`` as it arrives instead of buffering it.

        For a reader that would only hand each message on: no task wakes up per
        message. ``receive()`` then returns only the end of the connection.
        False if this transport cannot: keep calling ``receive()``.
        """
        return False

    async def __aenter__(self: _TransportT) -> _TransportT:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        try:
            while True:
                yield await self.receive()
        except ConnectionClosedOK:
            return


class WebSocketTransport(Transport, LinkOwner):
    """A WebSocket client connection (RFC 6455) on ``websockets``' Sans-I/O core.

    Open one with [`connect_transport()`][wsclient.connect_transport]. Messages received are
    buffered (up to ``max_queue``, then the socket is no longer read, which pushes back
    on the server); [`receive()`][wsclient.Transport.receive] takes them in order and cancelling it
    loses none. Control frames never wait behind queued data.
    """

    def __init__(
        self,
        protocol: ClientProtocol,
        *,
        display_url: str,
        max_queue: int,
        close_timeout: float,
    ) -> None:
        self._protocol = protocol
        self._display_url = display_url
        self._close_timeout = close_timeout
        self._high_water = max(1, max_queue)
        self._low_water = self._high_water // 4
        self._link: Link | None = None
        self._inbox: deque[str | bytes] = _NO_MESSAGES  # made by the first message it holds
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._pings: dict[bytes, tuple[float, anyio.Event]] = {}
        self._handshake_done = False
        self._closed = False
        self._close_cause: BaseException | None = None
        self._close_exc: ConnectionClosed | None = None
        self._counters = TransportCounters()
        self._masks = b""
        self._mask_at = _MASK_POOL
        # See _set_message_handler; _ended wakes a reader that has nothing to read.
        self._handler: Callable[[str | bytes], None] | None = None
        self._ended: asyncio.Future[None] | None = None
        self._push = False  # the link is an AsyncioLink: the loop reads and writes for us
        self._unflushed = 0  # messages _send_nowait queued on a stream link since the last flush
        # See _read_frames: whether it frames inbound bytes, and a partial frame.
        self._framing = False
        self._fresh_parser = False
        self._partial = bytearray()
        self._partial_need = 0

    # Public API

    @property
    def state(self) -> TransportState:
        if self._closed:
            return TransportState.CLOSED
        return _STATES[self._protocol.state]

    @property
    def close_code(self) -> int | None:
        return self._protocol.close_code if self._closed else None

    @property
    def close_reason(self) -> str | None:
        return self._protocol.close_reason if self._closed else None

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server selected, if any."""
        return self._protocol.subprotocol

    @property
    def url(self) -> str:
        """The server's URL with secrets masked."""
        return self._display_url

    def statistics(self) -> TransportStatistics:
        return self._counters.snapshot(self.state, len(self._inbox))

    def _set_message_handler(self, handler: Callable[[str | bytes], None]) -> bool:
        self._handler = handler
        inbox = self._inbox
        while inbox:  # what came before the handler, in order
            handler(inbox.popleft())
        if self._link is not None:
            self._link.resume_reading()
        return True

    def __repr__(self) -> str:
        state = self.state.name
        if self._closed:
            state += f" code={self.close_code}"
        return f"<WebSocketTransport {self._display_url} {state}>"

    async def send(self, data: str | bytes, *, text: bool | None = None) -> None:
        protocol = self._protocol
        if protocol.state is not _OPEN:
            raise self._not_open_error()
        link = self._require_link()
        self._queue_message(link, data, text)
        if link.backlogged:
            await link.flush()
            if self._closed:
                # The link died while our frame waited for the peer to read it.
                raise self._closed_exception()
            if not link.backlogged:
                self._unflushed = 0  # what _send_nowait queued went out too

    def _send_nowait(self, data: str | bytes, text: bool | None) -> int:
        """Send one message without waiting: on an asyncio link the loop writes it
        (``SENT``); on a stream link it is written at once if the socket takes it
        (``SENT``), else queued for some task to ``_drain()`` (``QUEUED``). 0,
        with nothing sent, where ``send()`` would wait."""
        link = self._link
        protocol = self._protocol
        if protocol.state is not _OPEN or link is None:
            return 0
        push = self._push
        if push:
            if link.backlogged:
                return 0  # a slow peer: send() waits for it
        elif self._unflushed >= WRITE_BEHIND_LIMIT:
            return 0  # the writer is behind: send() waits for it
        if type(data) is not bytes or (
            protocol.extensions or protocol.expect_continuation_frame or protocol.writes
        ):
            self._queue_message(link, data, text)
            if push:
                return SENT
            self._unflushed += 1
            return QUEUED
        # _queue_message's common case, inlined: this runs once per message sent.
        at = self._mask_at
        if at == _MASK_POOL:
            self._masks = os.urandom(_MASK_POOL)
            at = 0
        self._mask_at = at + 4
        mask = self._masks[at : at + 4]
        first = 0x81 if text else 0x82  # FIN and the opcode
        length = len(data)
        if length < 126:
            head = _HEAD_SHORT(first, 0x80 | length)
        elif length < 65536:
            head = _HEAD_MEDIUM(first, 0xFE, length)
        else:
            head = _HEAD_LONG(first, 0xFF, length)
        frame = head + mask + apply_mask(data, mask)
        counters = self._counters
        counters.bytes_sent += len(frame)
        counters.messages_sent += 1
        if push:
            link.queue([frame], control=False)
            return SENT
        if link.write_nowait(frame):
            return QUEUED if link.backlogged else SENT  # QUEUED: the socket took a part
        # A stream link already writing, or a full socket: a task of the
        # caller's writes the frames of the burst, in a few writes.
        link.queue([frame], control=False)
        self._unflushed += 1
        return QUEUED

    async def _drain(self) -> None:
        link = self._link
        while link is not None and link.backlogged and not self._closed:
            self._unflushed = 0  # this flush writes every frame queued so far
            await link.flush()

    def _queue_message(self, link: Link, data: str | bytes, text: bool | None) -> None:
        """Frame one message and queue it on ``link``, in order."""
        protocol = self._protocol
        if isinstance(data, str):
            data, opcode = data.encode(), _TEXT
        else:
            if not isinstance(data, (bytes, bytearray)):
                if not isinstance(data, memoryview):
                    # bytes(3) would send three zero bytes: refuse instead.
                    raise TypeError(f"data must be str or bytes, not {type(data).__name__}")
                data = bytes(data)  # a memoryview's len() counts items, not bytes
            opcode = _TEXT if text else _BINARY
        if protocol.extensions or protocol.expect_continuation_frame or protocol.writes:
            # Compression, or something unusual: let websockets do all of it.
            if opcode is _TEXT:
                protocol.send_text(data)
            else:
                protocol.send_binary(data)
            self._write_output(link)
        else:
            # The common case: one unfragmented frame and nothing else waiting
            # to go out, so the protocol's state cannot change; skip its
            # per-frame overhead.
            frame = self._serialize(opcode, data)
            self._counters.bytes_sent += len(frame)
            link.queue([frame], control=False)
        self._counters.messages_sent += 1

    async def receive(self) -> str | bytes:
        while not self._inbox:
            link = self._require_link()
            if self._closed:
                raise self._closed_exception()
            if self._protocol.state is _OPEN:
                if self._handler is not None and self._push:
                    # Messages go to the handler as the loop reads them: only
                    # the end of the connection is left to wait for (a bare
                    # future: an idle connection waits here all its life).
                    ended = self._ended
                    if ended is None or ended.done():  # cancelled with the last wait
                        ended = self._ended = asyncio.get_running_loop().create_future()
                    await ended
                else:
                    await link.wait_until(self._receivable)
            else:
                # Closing: messages sent before the server's close frame may
                # still come in; otherwise wait for the end, bounded.
                await self._finish_closing()
        inbox = self._inbox
        message = inbox.popleft()
        if len(inbox) == self._low_water and self._link is not None:
            self._link.resume_reading()
        return message

    async def ping(self, data: bytes | None = None) -> float:
        protocol = self._protocol
        if protocol.state is not _OPEN:
            raise self._not_open_error()
        if data is None:
            data = os.urandom(4)
            while data in self._pings:
                data = os.urandom(4)
        elif len(data) > 125:  # RFC 6455 5.5: control frame payloads fit in 125 bytes
            raise ValueError("a ping payload is at most 125 bytes")
        elif data in self._pings:
            raise InvalidState("a ping with this payload is already waiting for its pong")
        arrived = anyio.Event()
        sent_at = time.perf_counter()  # loop clocks can tick in ms (uvloop)
        self._pings[data] = (sent_at, arrived)
        protocol.send_ping(data)
        self._counters.pings_sent += 1
        link = self._require_link()
        link.resume_reading()
        try:
            self._write_output(link)
            if link.backlogged:
                # The ping goes ahead of queued data and does not wait for it:
                # a heartbeat must not fail a slow but healthy link.
                await link.flush(control_only=True)
            await link.wait_until(lambda: arrived.is_set() or self._closed)
        finally:
            self._pings.pop(data, None)
        if not arrived.is_set():
            raise self._closed_exception()
        rtt = time.perf_counter() - sent_at
        self._counters.last_rtt = rtt
        return rtt

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        check_close(code, reason)
        link = self._link
        if link is None or self._closed:
            return
        # Closing must finish even if our caller is cancelled; close_timeout bounds it.
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(self._close_timeout):
                if self._protocol.state is _OPEN:
                    self._protocol.send_close(code, reason)
                    self._wake_reader()
                    self._write_output(link)
                    await link.flush()
                # The server's close frame may be behind messages nobody will
                # read now: keep reading, or we would wait out close_timeout.
                link.resume_reading()
                # RFC 6455 7.1.1: the client waits for the server to close TCP.
                await link.wait_until(lambda: self._closed)
            if not self._closed:
                logger.debug("%s: server did not close TCP in time, aborting", self._display_url)
                await link.abort()

    async def abort(self) -> None:
        link = self._link
        if link is not None and not self._closed:
            await link.abort()

    # Link callbacks: run synchronously as bytes arrive, so they must not block.

    def bytes_received(self, data: bytes) -> None:
        if self._closed:
            # A read that raced an abort (trio hands back data already read):
            # the protocol has seen the end of the stream and takes no more.
            return
        counters = self._counters
        counters.bytes_received += len(data)
        link = self._link
        if link is not None:
            counters.last_received_at = link.clock()  # the heartbeat's evidence of life
        protocol = self._protocol
        if self._framing and protocol.state is not _OPEN:
            data = self._stop_framing(data)  # we began to close: its parser, from here on
        if self._framing:
            fed = self._read_frames(data)
        else:
            # Frames that came before a violation in these bytes came before our
            # close too: only those read once closing may be discarded (_deliver).
            closing = protocol.state is not _OPEN
            protocol.receive_data(data)
            self._process_events(closing)
            fed = True
            self._framing = self._can_frame()  # after the handshake, say
        if protocol.state is not _OPEN:
            self._wake_reader()
        if link is not None:
            if fed:
                self._write_output(link)
            # A waiting ping keeps reading going: the heartbeat measures the
            # link, and a slow consumer must not look like a dead server.
            # Once closing, reading goes on to reach the close frame.
            if len(self._inbox) >= self._high_water and not self._pings and protocol.state is _OPEN:
                self._counters.read_pauses += 1
                link.pause_reading()

    def _process_events(self, closing: bool) -> None:
        """Act on what the protocol parsed: messages, fragments, pongs, the handshake."""
        protocol = self._protocol
        for event in protocol.events_received():
            if self._close_cause is not None:
                break  # we failed the connection: RFC 6455 7.1.7, process nothing more
            if not isinstance(event, Frame):  # the handshake response
                self._handshake_done = protocol.handshake_exc is None
                continue
            opcode = event.opcode
            if opcode is _TEXT or opcode is _BINARY:
                if event.fin:
                    self._deliver(event.data, opcode is _TEXT, closing)
                else:
                    self._fragments = [bytes(event.data)]
                    self._fragment_text = opcode is _TEXT
            elif opcode is _CONT:
                self._fragments.append(bytes(event.data))
                if event.fin:
                    payload = b"".join(self._fragments)
                    self._fragments = []
                    self._deliver(payload, self._fragment_text, closing)
            elif opcode is _PONG:
                self._pong_received(bytes(event.data))

    def _read_frames(self, data: bytes) -> bool:
        """Deliver the whole, final, unmasked text and binary frames in ``data`` ourselves.

        The protocol's parser costs more than the rest of a message's way in.
        At the first frame of another kind (control, fragment, too big,
        invalid) the protocol gets every byte from there on, and frames again
        until its parser is back between frames (``_can_frame``). A partial
        frame waits here for the rest. True if the protocol got bytes.
        """
        pending = self._partial
        if pending:
            pending += data
            if len(pending) < self._partial_need:
                return False
            data = bytes(pending)
            pending.clear()
        protocol = self._protocol
        max_size = protocol.max_message_size
        end = len(data)
        at = 0
        while at < end:
            # RFC 6455 5.2: FIN, RSV1-3, opcode; MASK (never set by a server), length.
            if end - at < 2:
                need = 2
                break
            head1 = data[at]
            length = data[at + 1]
            start = at + 2
            if length & 0x80:
                length = -1  # masked: wrong from a server, the protocol says so
            elif length == 126:
                if end - at < 4:
                    need = 4
                    break
                length = (data[at + 2] << 8) | data[at + 3]
                start = at + 4
            elif length == 127:
                if end - at < 10:
                    need = 10
                    break
                length = int.from_bytes(data[at + 2 : at + 10], "big")
                start = at + 10
            opcode = head1 & 0x0F
            if (
                head1 & 0xF0 != 0x80  # a fragment, or a reserved bit set
                or length < 0
                or not (opcode == 1 or opcode == 2)
                or (max_size is not None and length > max_size)
            ):
                self._framing = False
                protocol.receive_data(data[at:] if at else data)
                self._process_events(False)
                self._framing = self._can_frame()
                return True
            stop = start + length
            if stop > end:
                need = stop - at
                break
            handler = self._handler
            if handler is None:
                self._deliver(data[start:stop], opcode == 1, False)
            elif opcode == 2:
                self._counters.messages_received += 1
                handler(data[start:stop])
            else:
                # _deliver's common case, inlined: this runs once per message received.
                try:
                    message = str(data[start:stop], "utf-8")
                except UnicodeDecodeError:
                    self._deliver(data[start:stop], True, False)  # fails the connection
                else:
                    self._counters.messages_received += 1
                    handler(message)
            if self._close_cause is not None:
                self._framing = False  # invalid UTF-8 failed the connection: nothing more
                return True
            at = stop
        else:
            return False
        self._partial += data[at:]
        self._partial_need = need
        return False

    def _stop_framing(self, data: bytes = b"") -> bytes:
        """Leave framing to the protocol again; ``data`` with the partial frame kept here first."""
        self._framing = False
        partial = self._partial
        if partial:
            data = bytes(partial) + data
            partial.clear()
        return data

    def _can_frame(self) -> bool:
        """Whether ``_read_frames`` may take over: the protocol is open, without
        extensions or a fragmented message, and its parser waits between frames."""
        protocol = self._protocol
        if (
            protocol.state is not _OPEN
            or (self._fresh_parser and protocol.extensions)  # compressed: its parser's
            or getattr(protocol, "current_size", 0) is not None
            or protocol.reader.buffer
            or self._close_cause is not None
        ):
            return False
        parser = protocol.parser
        inner = getattr(parser, "gi_yieldfrom", None)
        while inner is not None:
            parser, inner = inner, getattr(inner, "gi_yieldfrom", None)
        code = getattr(parser, "gi_code", None)
        if getattr(code, "co_name", None) != "at_eof":
            return False  # mid-frame (or a websockets we do not know): keep its parser
        if not self._fresh_parser:
            # The handshake's parser holds its HTTP response for the life of the
            # connection; between frames, a frame parser can take its place.
            self._fresh_parser = True
            parser = _FRAME_PARSER(protocol)
            next(parser)
            protocol.parser = parser
        return not protocol.extensions and hasattr(protocol, "max_message_size")

    def eof_received(self) -> None:
        if self._framing:
            partial = self._stop_framing()
            if partial and not self._closed:
                self._protocol.receive_data(partial)  # EOF within a frame: its parser's to say
        self._protocol.receive_eof()
        self._wake_reader()
        if self._link is not None:
            self._write_output(self._link)

    def link_lost(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._protocol.receive_eof()  # idempotent; moves the protocol to CLOSED
        self._closed = True
        if self._close_cause is None:
            # The parser's own error (too big, bad frame) explains more than the
            # socket's; its EOFError only restates that the socket went away.
            parser_exc = self._protocol.parser_exc
            if parser_exc is not None and not isinstance(parser_exc, EOFError):
                self._close_cause = parser_exc
            else:
                self._close_cause = exc or parser_exc
        for _, arrived in self._pings.values():
            arrived.set()  # ping() sees _closed and raises
        self._wake_reader()
        logger.debug("%s: connection closed (code %s)", self._display_url, self.close_code)

    # Internals

    def _deliver(
        self, payload: bytes | bytearray | memoryview, is_text: bool, closing: bool
    ) -> None:
        if is_text:
            try:
                message: str | bytes = str(payload, "utf-8")
            except UnicodeDecodeError as exc:
                # RFC 6455 8.1: invalid UTF-8 in a text message fails the connection.
                self._close_cause = exc
                self._protocol.fail(1007, "invalid UTF-8 in a text frame")
                return
        else:
            message = bytes(payload)
        handler = self._handler
        if handler is not None:
            self._counters.messages_received += 1
            handler(message)
            return
        inbox = self._inbox
        if len(inbox) >= self._high_water and closing:
            # Closing: we read on to reach the close frame, but nobody is
            # likely to consume more than a buffer's worth, so the rest goes.
            self._counters.messages_discarded += 1
            return
        self._counters.messages_received += 1
        if inbox is _NO_MESSAGES:
            inbox = self._inbox = deque()
        inbox.append(message)

    def _pong_received(self, data: bytes) -> None:
        self._counters.pongs_received += 1
        # RFC 6455 5.5.3: a pong answers its ping and every earlier one; an
        # unsolicited pong answers nothing (it must not fake liveness).
        if data not in self._pings:
            return
        for payload, (_, arrived) in self._pings.items():
            arrived.set()
            if payload == data:
                break

    def _serialize(self, opcode: Opcode, payload: bytes) -> bytes:
        """A final, masked frame, as ``Frame.serialize`` makes it without extensions."""
        at = self._mask_at
        if at == _MASK_POOL:
            self._masks = os.urandom(_MASK_POOL)
            at = 0
        self._mask_at = at + 4
        mask = self._masks[at : at + 4]
        length = len(payload)
        if length < 126:
            head = _HEAD_SHORT(0x80 | opcode, 0x80 | length)
        elif length < 65536:
            head = _HEAD_MEDIUM(0x80 | opcode, 0xFE, length)
        else:
            head = _HEAD_LONG(0x80 | opcode, 0xFF, length)
        return head + mask + apply_mask(payload, mask)

    def _write_output(self, link: Link) -> None:
        """Hand what the protocol wants to send to the link, control frames first."""
        for chunk in self._protocol.data_to_send():
            if chunk:
                self._counters.bytes_sent += len(chunk)
                link.queue([chunk], control=(chunk[0] & 0x0F) in _CONTROL_OPCODES)
            else:
                link.write_eof()

    def _wake_reader(self) -> None:
        """The connection left OPEN: a reader waiting in handler mode must look."""
        ended = self._ended
        if ended is not None:
            self._ended = None
            if not ended.done():
                ended.set_result(None)

    def _receivable(self) -> bool:
        return bool(self._inbox) or self._closed or self._protocol.state is not _OPEN

    def _require_link(self) -> Link:
        if self._link is None:
            raise InvalidState("transport is not connected; use connect_transport()")
        return self._link

    def _not_open_error(self) -> Exception:
        if self._protocol.state is State.CONNECTING:
            return InvalidState("transport is still connecting")
        return self._closed_exception()

    async def _finish_closing(self) -> None:
        """Wait (bounded) for the server to close TCP once the close handshake is done."""
        link = self._require_link()
        if self._closed:
            return
        with anyio.move_on_after(self._close_timeout):
            await link.wait_until(lambda: self._closed or bool(self._inbox))
        if not self._closed and not self._inbox:
            await link.abort()

    def _closed_exception(self) -> ConnectionClosed:
        if self._close_exc is not None:
            return self._close_exc
        protocol = self._protocol
        rcvd, sent = protocol.close_rcvd, protocol.close_sent
        cause = self._close_cause or protocol.parser_exc
        message = None
        if isinstance(cause, PayloadTooBig):
            message = f"received a message over max_size ({cause}); closed with code 1009"
        elif rcvd is not None and rcvd.code == 1009:
            message = f"the server refused a message as too big (code 1009) {rcvd.reason}"
        error = closed_error(
            rcvd.code if rcvd is not None else 1006,
            rcvd.reason if rcvd is not None else "",
            sent_code=sent.code if sent is not None else None,
            message=message.rstrip() if message else None,
        )
        error.__cause__ = cause
        if self._closed:  # final: the codes cannot change any more
            self._close_exc = error
        return error

    # Opening

    async def _open(
        self, link: Link, request_bytes: list[bytes], secrets: Sequence[str] = ()
    ) -> None:
        """Send the handshake request and wait for the response (caller bounds time).

        ``secrets``: what a rejection must not quote back (our credentials).
        """
        self._link = link
        self._push = isinstance(link, AsyncioLink)
        link.queue(request_bytes, control=False)
        await link.flush()
        protocol = self._protocol
        await link.wait_until(
            lambda: self._handshake_done or protocol.handshake_exc is not None or self._closed
        )
        if protocol.handshake_exc is not None:
            raise _handshake_error(protocol.handshake_exc, self._display_url, secrets)
        # A server may accept and then close at once: that is still an open
        # that succeeded, and the messages it sent are waiting in the inbox.
        if not self._handshake_done:
            raise ConnectError(
                f"connection to {self._display_url} closed during the opening handshake"
            )


def check_close(code: int, reason: str) -> None:
    """Reject a close code or reason that RFC 6455 does not allow us to send."""
    # 7.4.1/7.4.2: 1004-1006 and 1015 are reserved, 1000-2999 are the
    # protocol's own, 3000-4999 are for libraries and applications.
    if not (code in _SENDABLE_CODES or 3000 <= code <= 4999):
        raise ValueError(f"close code {code} cannot be sent (use 1000-1014 or 3000-4999)")
    if len(reason.encode()) > 123:  # 5.5: 125-byte payload, 2 of them for the code
        raise ValueError("a close reason is at most 123 bytes of UTF-8")


_SENDABLE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)

_STATES = {
    State.CONNECTING: TransportState.CONNECTING,
    State.OPEN: TransportState.OPEN,
    State.CLOSING: TransportState.CLOSING,
    State.CLOSED: TransportState.CLOSED,
}


def _handshake_error(exc: Exception, display_url: str, secrets: Sequence[str] = ()) -> ConnectError:
    if isinstance(exc, InvalidStatus):
        response = exc.response
        # Its repr would show the response's headers and body, and a server may
        # echo our Authorization there; str() and .response stay as they were.
        exc.args = ()
        status = response.status_code
        # The standard phrase, not the server's: it may quote our Authorization too.
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        error = ConnectError(
            f"server at {display_url} rejected the WebSocket handshake: "
            f"HTTP {status} {phrase}".rstrip(),
            status=status,
            retry_after=_retry_after(response.headers),
        )
    else:
        detail = str(exc)
        quoted = any(secret in detail for secret in secrets)
        if quoted:  # a response header echoing a credential, found malformed
            detail = f"{type(exc).__name__} (its text quotes our credentials; not shown)"
        if isinstance(exc, InvalidHandshake):
            error = ConnectError(
                f"invalid WebSocket handshake response from {display_url}: {detail}"
            )
        else:
            error = ConnectError(f"WebSocket handshake with {display_url} failed: {detail}")
        if quoted:
            return error  # without the cause, whose text would show in a traceback
    error.__cause__ = exc
    return error


def _retry_after(headers: Headers) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # "inf" or "1e999" would mean never retrying: not a delay, ignore it.
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


HeadersLike = Mapping[str, str] | Iterable[tuple[str, str]]

# RFC 6455 4.1: headers whose values the opening handshake depends on.
_HANDSHAKE_HEADERS = frozenset(
    {
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)


# RFC 9110 5.1 and 5.5: a field name is a token; a value is visible ASCII,
# obs-text, spaces and tabs. Anything else (a CR or LF) could forge headers.
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def check_header(name: object, value: object) -> None:
    """Refuse a header that is malformed or that the opening handshake sets itself.

    The errors (TypeError, ValueError) never repeat a value, which may be a
    token, nor a malformed name, which may be a whole ``Name: value`` line.
    """
    if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
        raise ValueError("a header name is not a valid HTTP field name (it is not shown)")
    if name.lower() in _HANDSHAKE_HEADERS:
        raise ValueError(f"the {name} header is set by the WebSocket handshake itself")
    if not isinstance(value, str):
        raise TypeError(f"the value of header {name} must be a str, not {type(value).__name__}")
    if not _FIELD_VALUE.fullmatch(value):
        raise ValueError(
            f"the value of header {name} has a line break or a control character (it is not shown)"
        )


def check_headers(headers: object) -> None:
    """Check ``headers`` given as a mapping or a list now, rather than at the first attempt.

    Other iterables are left alone: checking would consume them.
    """
    for item in _header_items(headers):
        if isinstance(item, tuple) and len(item) == 2:
            check_header(*item)


def _header_items(headers: object) -> Iterable[object]:
    """The items of ``headers`` given as a mapping or a list; none for other iterables,
    which checking in advance would consume."""
    if isinstance(headers, Mapping):
        return headers.items()
    if isinstance(headers, (list, tuple)):
        return headers
    return ()


def check_url_credentials(
    url: str,
    headers: object,
    *,
    unix_socket: str | os.PathLike[str] | None = None,
    allow_insecure_credentials: bool = False,
) -> None:
    """Raise [`InsecureCredentials`][wsclient.InsecureCredentials] now, rather than at the first
    attempt, if ``url`` or ``headers`` (a mapping or a list) would send credentials in clear text.

    Other iterables of headers are left alone: checking would consume them.
    """
    names = [
        item[0]
        for item in _header_items(headers)
        if isinstance(item, tuple) and item and isinstance(item[0], str)
    ]
    _check_credentials(_parse_url(url), names, unix_socket, allow_insecure_credentials)


def _check_credentials(
    uri: WebSocketURI,
    header_names: list[str],
    unix_socket: str | os.PathLike[str] | None,
    allowed: bool,
) -> None:
    found = [f"the {name} header" for name in credential_headers(header_names)]
    # websockets turns the URL's user info into an Authorization header, unless one is given.
    if uri.user_info is not None and not any(n.lower() == "authorization" for n in header_names):
        found.insert(0, "the credentials in the URL")
    if found:
        check_credentials(
            secure=uri.secure,
            host=uri.host,
            what=" and ".join(found),
            unix_socket=unix_socket,
            allowed=allowed,
        )


def check_options(**options: object) -> None:
    """Refuse impossible values of ``connect_transport()``'s options with a ValueError.

    Only the options named here are checked; the others are left to their use.
    A reconnecting client checks them when it is made, not at its first attempt.
    """
    if "compression" in options and options["compression"] not in ("deflate", None):
        raise ValueError(f"compression must be 'deflate' or None, got {options['compression']!r}")
    max_size = options.get("max_size")
    if max_size is not None and (not is_count(max_size) or max_size < 1):
        raise ValueError(f"max_size must be None or an int of at least 1, got {max_size!r}")
    max_queue = options.get("max_queue", 1)
    if not is_count(max_queue) or max_queue < 1:
        raise ValueError(f"max_queue must be an int of at least 1, got {max_queue!r}")
    if options.get("open_timeout") is not None:
        check_timeout(options["open_timeout"], "open_timeout")
    if "close_timeout" in options:
        check_timeout(options["close_timeout"], "close_timeout")


async def connect_transport(
    url: str,
    *,
    headers: HeadersLike | None = None,
    subprotocols: Sequence[str] | None = None,
    origin: str | None = None,
    user_agent: str | None = USER_AGENT,
    compression: Literal["deflate"] | None = "deflate",
    max_size: int | None = 2**20,
    max_queue: int = 32,
    ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
    unix_socket: str | os.PathLike[str] | None = None,
    open_timeout: float | None = 10.0,
    close_timeout: float = 10.0,
    allow_insecure_credentials: bool = False,
) -> WebSocketTransport:
    """Open a WebSocket connection and return it, ready to use.

    Args:
        url: ``ws://`` or ``wss://`` URL; ``user:password@`` becomes HTTP Basic auth.
        headers: extra HTTP headers for the handshake request.
        subprotocols: subprotocols to offer, most preferred first.
        origin: value of the ``Origin`` header.
        user_agent: ``User-Agent`` header; None sends none.
        compression: ``"deflate"`` negotiates permessage-deflate (RFC 7692); None disables it.
        max_size: largest message accepted, in bytes (None: no limit). A bigger one
            fails the connection with code 1009 and [`MessageTooBig`][wsclient.MessageTooBig].
        max_queue: messages buffered before the socket stops being read.
        ssl: TLS context for ``wss://``; by default one that verifies certificates
            against the system's trust store.
        server_hostname: host name to verify the certificate against (default: the URL's).
        unix_socket: connect to this Unix socket path instead of the URL's host and port.
        open_timeout: seconds for TCP connect, TLS and the opening handshake (None: no limit).
        close_timeout: seconds to wait for the closing handshake before dropping the socket.
        allow_insecure_credentials: send credentials (user info in the URL, an
            ``Authorization``, ``Proxy-Authorization`` or ``Cookie`` header) over
            ``ws://`` to a host other than this machine, in clear text.

    Raises:
        InvalidURL: the URL is not a WebSocket URL.
        InsecureCredentials: credentials would go over ``ws://`` to another host.
        ConnectError: the connection was refused, DNS or TLS failed, or the server
            rejected the handshake (``status`` holds the HTTP status).
        ConnectTimeout: ``open_timeout`` elapsed.
    """
    uri = _parse_url(url)
    display_url = redact_url(url)
    if ssl is not None and not uri.secure:
        raise InvalidURL(f"ssl= was given for a non-TLS URL {display_url}; use wss://")
    if uri.secure and ssl is None:
        ssl = ssl_module.create_default_context()
    check_options(
        compression=compression,
        max_size=max_size,
        max_queue=max_queue,
        open_timeout=open_timeout,
        close_timeout=close_timeout,
    )

    protocol = ClientProtocol(
        uri,
        origin=Origin(origin) if origin is not None else None,
        extensions=enable_client_permessage_deflate(None) if compression == "deflate" else None,
        subprotocols=[Subprotocol(s) for s in subprotocols] if subprotocols else None,
        max_size=max_size,
        logger=logger,
    )
    # websockets' debug logs print headers and payloads; those may hold secrets.
    protocol.debug = False
    request = protocol.connect()
    given: list[str] = []
    if headers is not None:
        items = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in items:
            check_header(name, value)
            # Replace, not add: a Host or Authorization given here wins over the URL's.
            if name in request.headers:
                del request.headers[name]
            request.headers[name] = value
            given.append(name)
    _check_credentials(uri, given, unix_socket, allow_insecure_credentials)
    if user_agent is not None and "User-Agent" not in request.headers:
        request.headers["User-Agent"] = user_agent
    secrets = credential_pieces(
        [value for name, value in request.headers.raw_items() if credential_headers([name])]
        + list(uri.user_info or ())
    )
    protocol.send_request(request)

    transport = WebSocketTransport(
        protocol, display_url=display_url, max_queue=max_queue, close_timeout=close_timeout
    )
    try:
        with anyio.fail_after(open_timeout):
            link = await _open_link(transport, uri, ssl, server_hostname, unix_socket, display_url)
            try:
                await transport._open(link, protocol.data_to_send(), secrets)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await link.abort()
                raise
    except TimeoutError as exc:
        raise ConnectTimeout(
            f"opening {display_url} took longer than open_timeout={open_timeout}s"
        ) from exc
    return transport


def _parse_url(url: str) -> WebSocketURI:
    if not isinstance(url, str):
        raise InvalidURL(f"URL must be a str, not {type(url).__name__}")
    try:
        return parse_uri(url)
    except InvalidURI as exc:
        reason = exc.msg
    except ValueError as exc:  # urllib: bad port, bad IPv6 literal
        # A message quoting the port or host it read is not shown: that can be
        # part of a password (in "ws://user:pa/ss@host/" the port is "pa").
        reason = str(exc)
        if "'" in reason or '"' in reason:
            reason = "malformed host or port"
    # Raised outside the except clauses: websockets' error repeats the URL,
    # password included, and must not be reachable even as __context__.
    raise InvalidURL(f"invalid WebSocket URL {redact_url(url)}: {reason}")


async def _open_link(
    transport: WebSocketTransport,
    uri: WebSocketURI,
    ssl: ssl_module.SSLContext | None,
    server_hostname: str | None,
    unix_socket: str | os.PathLike[str] | None,
    display_url: str,
) -> Link:
    """Open the socket (and TLS) and wrap it in the right link for this event loop."""
    where = str(unix_socket) if unix_socket is not None else f"{uri.host}:{uri.port}"
    hostname = (server_hostname or uri.host) if ssl is not None else None
    try:
        if sniffio.current_async_library() == "asyncio":
            loop = asyncio.get_running_loop()
            # The loop runs our protocol callbacks, which hand messages to the
            # consumer's handler, in this task's context: there, as in a task,
            # code that asks which async library runs must find one.
            sniffio.current_async_library_cvar.set("asyncio")
            if unix_socket is not None:
                _, asyncio_link = await loop.create_unix_connection(
                    lambda: AsyncioLink(transport),
                    os.fspath(unix_socket),
                    ssl=ssl,
                    server_hostname=hostname,
                )
            else:
                _, asyncio_link = await loop.create_connection(
                    lambda: AsyncioLink(transport),
                    uri.host,
                    uri.port,
                    ssl=ssl,
                    server_hostname=hostname,
                )
            return asyncio_link
        stream: anyio.abc.ByteStream
        if unix_socket is not None:
            stream = await anyio.connect_unix(unix_socket)
            if ssl is not None:
                from anyio.streams.tls import TLSStream

                stream = await TLSStream.wrap(
                    stream, hostname=hostname, ssl_context=ssl, standard_compatible=False
                )
        elif ssl is not None:
            # Not "standard compatible": many servers close without TLS close_notify.
            stream = await anyio.connect_tcp(
                uri.host,
                uri.port,
                ssl_context=ssl,
                tls_hostname=hostname,
                tls_standard_compatible=False,
            )
        else:
            stream = await anyio.connect_tcp(uri.host, uri.port)
        return StreamLink(transport, stream)
    except ssl_module.SSLCertVerificationError as exc:
        raise ConnectError(
            f"TLS certificate verification failed for {display_url}: {exc.verify_message}"
        ) from exc
    except ssl_module.SSLError as exc:
        raise ConnectError(f"TLS handshake with {display_url} failed: {exc.reason}") from exc
    except socket.gaierror as exc:
        raise ConnectError(f"cannot resolve host {uri.host!r}: {exc.strerror}") from exc
    except OSError as exc:
        raise ConnectError(f"cannot connect to {where}: {_os_reason(exc)}") from exc
    except (anyio.BrokenResourceError, anyio.EndOfStream) as exc:
        # trio: the peer closed or reset the connection during the TLS handshake.
        raise ConnectError(
            f"connection to {where} closed during the TLS handshake ({_describe(exc)})"
        ) from exc


def _os_reason(exc: OSError) -> str:
    # anyio wraps the per-address errors of a multi-address connect in one OSError.
    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    if isinstance(exc, ConnectionRefusedError) or isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, ConnectionResetError) and not cause.strerror:
        return "connection reset by the server"
    return cause.strerror or _describe(cause)


def _describe(exc: BaseException) -> str:
    """The exception's text, or its class name (and its cause's) when it has none."""
    text = str(exc)
    if text:
        return text
    if exc.__cause__ is not None and exc.__cause__ is not exc:
        return f"{type(exc).__name__}: {_describe(exc.__cause__)}"
    return type(exc).__name__
