"""Byte links: how a [`WebSocketTransport`][wsclient.WebSocketTransport] reaches the network.

The transport owns the Sans-I/O protocol and every decision; a link only moves
bytes. There are two, chosen by the running event loop:

* ``AsyncioLink`` is an ``asyncio.Protocol``. The loop pushes
  received bytes into the transport from ``data_received`` and writes go
  to the asyncio transport: no stream wrapper, no task and no extra loop pass
  per message, which is what makes the asyncio path fast. Data frames sent in
  one burst are written together, in one system call, before the loop next
  waits for I/O (see ``AsyncioLink.queue()``).
* ``StreamLink`` runs over any anyio byte stream (trio, or asyncio when a
  stream is all we have). It is pull-based, like httpcore's HTTP/2 connection:
  whichever task needs inbound data (``receive``, ``ping``, ``aclose``) reads
  one chunk and feeds the protocol for everyone, so the link needs no
  background task of its own. Likewise one task at a time writes, and it
  writes what the other tasks queue meanwhile.

Both apply backpressure the same way: data frames wait while the socket's
buffer is over its high-water mark; ping and pong frames are written at once
and never wait behind queued data. Close frames keep their place after data.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import cast

import anyio
import anyio.abc
import anyio.lowlevel
import sniffio

__all__ = ["AsyncioLink", "Link", "LinkOwner", "StreamLink"]

# Bytes handed to the socket per write call on the stream path; a control
# frame queued behind data waits for at most one such batch.
WRITE_BATCH = 64 * 1024
READ_CHUNK = 64 * 1024
# Seconds a reader may spend writing the protocol's replies (pongs, close
# echo) while its caller's cancellation waits.
REPLY_WRITE_LIMIT = 10.0

# What a broken or closed stream raises; the link turns each into a loss.
_STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
# Data frames the asyncio link holds before writing them at once, in bytes.
CORK_LIMIT = 16 * 1024
# What AsyncioLink._pending starts as; never added to.
_NO_DATA: deque[bytes] = deque()


class LinkOwner(ABC):
    """What a link calls back into: the transport."""

    @abstractmethod
    def bytes_received(self, data: bytes) -> None:
        """Feed bytes from the network to the protocol."""

    @abstractmethod
    def eof_received(self) -> None:
        """The peer half-closed the connection."""

    @abstractmethod
    def link_lost(self, exc: BaseException | None) -> None:
        """The connection is gone; ``exc`` says why when it broke."""


class Link(ABC):
    """Moves bytes for a transport; see the module docstring."""

    lost: bool = False

    @abstractmethod
    def clock(self) -> float:
        """The event loop's time (``anyio.current_time()``), cheaply."""

    @abstractmethod
    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, making inbound progress meanwhile."""

    @abstractmethod
    def wake(self) -> None:
        """Tell waiters that the transport's state changed."""

    @property
    @abstractmethod
    def backlogged(self) -> bool:
        """True when queued frames wait for the peer: callers should ``flush()``."""

    @abstractmethod
    def queue(self, chunks: list[bytes], *, control: bool) -> None:
        """Queue frames for writing, in order; ``control`` frames go ahead of data."""

    @abstractmethod
    async def flush(self, *, control_only: bool = False) -> None:
        """Return once everything queued so far is handed to the operating system.

        ``control_only`` returns once the queued ping and pong frames are out
        (or are next in line for the task already writing): a heartbeat must
        not wait for a backlog of data to drain.
        """

    @abstractmethod
    def write_eof(self) -> None:
        """Half-close our side after what is queued, when the transport supports it."""

    @abstractmethod
    def pause_reading(self) -> None:
        """Stop reading from the socket (inbound buffer is full)."""

    @abstractmethod
    def resume_reading(self) -> None:
        """Read from the socket again."""

    @abstractmethod
    async def abort(self) -> None:
        """Close the socket now, dropping unsent data, and wait until it is closed."""

    def write_nowait(self, data: bytes) -> bool:
        """Write a data frame now, if nothing is queued or being written and the
        socket takes it without waiting; a part it does not take is queued to go
        first. False, with nothing written or queued, if it cannot."""
        return False


def _on_trio() -> bool:
    try:
        return sniffio.current_async_library() == "trio"
    except sniffio.AsyncLibraryNotFoundError:
        return False


def _write_now(transport: asyncio.Transport, chunks: list[bytes]) -> None:
    if len(chunks) == 1:
        transport.write(chunks[0])
    else:
        transport.writelines(chunks)


class AsyncioLink(asyncio.Protocol, Link):
    """A link driven by asyncio's protocol callbacks."""

    def __init__(self, owner: LinkOwner) -> None:
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._write_paused = False
        # Data held back while writing is paused; made when first needed (a deque
        # costs 760 bytes, and most connections never need one).
        self._pending: deque[bytes] = _NO_DATA
        self._eof_after_pending = False
        self._cork: list[bytes] = []  # data of the current burst, written together
        self._cork_size = 0
        self._uncork_scheduled = False
        # A data frame went out since a task last waited or _uncork_soon ran.
        self._burst = False
        self._drained: list[asyncio.Future[None]] = []
        self._reading_paused = False
        self._lost_future: asyncio.Future[None] = self._loop.create_future()

    def clock(self) -> float:
        return self._loop.time()

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._cork:
            # A reply came in: what is sent next starts a new burst, and goes at
            # once, even when no task waited here (a handler took the message).
            self._burst = False
        self._owner.bytes_received(data)
        self.wake()

    def eof_received(self) -> None:
        self._owner.eof_received()
        self.wake()
        # Returning None lets asyncio close the transport; TLS ignores EOF anyway.

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._owner.link_lost(exc)
        if not self._lost_future.done():
            self._lost_future.set_result(None)
        self._pending.clear()
        self._take_cork()
        self._release(self._drained)
        self.wake()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        transport = self._transport
        while self._pending and not self._write_paused and transport is not None:
            transport.write(self._pending.popleft())
        if not self._pending:
            if self._eof_after_pending and transport is not None and not self.lost:
                self._eof_after_pending = False
                transport.write_eof()
            self._release(self._drained)

    # Link

    @staticmethod
    def _release(futures: list[asyncio.Future[None]]) -> None:
        for future in futures:
            if not future.done():
                future.set_result(None)
        futures.clear()

    async def _wait_for_release(self, futures: list[asyncio.Future[None]]) -> None:
        """Wait until ``_release()`` is called on ``futures``."""
        future = self._loop.create_future()
        futures.append(future)
        try:
            await future
        finally:
            if not future.done():
                future.cancel()
                futures.remove(future)

    def wake(self) -> None:
        if self._waiters:
            self._release(self._waiters)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        # One future per waiting task: cancelling one waiter cannot disturb another.
        while not condition():
            self._burst = False
            if self._cork:
                self._uncork()  # the reply we wait for may depend on it
            await self._wait_for_release(self._waiters)

    @property
    def backlogged(self) -> bool:
        return bool(self._pending)

    def queue(self, chunks: list[bytes], *, control: bool) -> None:
        transport = self._transport
        if transport is None or self.lost:
            return
        if control:
            _write_now(transport, chunks)
        elif self._write_paused or self._pending:
            # Slow peer: hold data here, not in asyncio's buffer, so that
            # control frames can still go out first.
            if self._cork:
                self._uncork()
            if self._pending is _NO_DATA:
                self._pending = deque()
            self._pending.extend(chunks)
        elif not self._burst:
            # A lone message (request, then wait for the reply) goes at once.
            self._burst = True
            _write_now(transport, chunks)
        else:
            # More follow: a system call per frame costs more than the frame,
            # so gather the frames sent before the loop runs again (or a task
            # waits, see wait_until) and write them at once.
            self._cork.extend(chunks)
            for chunk in chunks:
                self._cork_size += len(chunk)
            if self._cork_size >= CORK_LIMIT:
                self._uncork()
            elif not self._uncork_scheduled:
                self._uncork_scheduled = True
                self._loop.call_soon(self._uncork_soon)

    def _uncork_soon(self) -> None:
        self._uncork_scheduled = False
        self._burst = False
        if self._cork:
            self._uncork()

    def _take_cork(self) -> list[bytes]:
        cork = self._cork
        self._cork = []
        self._cork_size = 0
        return cork

    def _uncork(self) -> None:
        cork = self._take_cork()
        transport = self._transport
        if transport is not None and not self.lost:
            transport.write(cork[0] if len(cork) == 1 else b"".join(cork))

    async def flush(self, *, control_only: bool = False) -> None:
        if control_only:
            return  # control frames are never held back here (see queue)
        if self._cork:
            self._uncork()
        if self._pending:
            await self._wait_for_release(self._drained)

    def write_eof(self) -> None:
        transport = self._transport
        if transport is not None and not self.lost and transport.can_write_eof():
            if self._cork:
                self._uncork()
            if self._pending:
                # Held-back data (a close echo among it) must go out first.
                self._eof_after_pending = True
            else:
                transport.write_eof()

    def pause_reading(self) -> None:
        if self._transport is not None and not self._reading_paused and not self.lost:
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and self._reading_paused and not self.lost:
            self._reading_paused = False
            self._transport.resume_reading()

    async def abort(self) -> None:
        transport = self._transport
        self._take_cork()  # dropped, like asyncio's own unsent buffer
        if transport is not None and not self.lost:
            transport.abort()
        # connection_lost runs on the next loop pass; wait for it so the socket
        # is really closed when we return. Shielded: closing must finish.
        if transport is not None:
            with anyio.CancelScope(shield=True):
                await asyncio.shield(self._lost_future)


class StreamLink(Link):
    """A pull-based link over an anyio byte stream (see the module docstring)."""

    def __init__(self, owner: LinkOwner, stream: anyio.abc.ByteStream) -> None:
        self._owner = owner
        self._stream = stream
        # A plain TCP or Unix socket (not TLS) takes writes at once: write_nowait().
        # Only on trio, whose stream writes straight to the socket; anyio's asyncio
        # stream has a buffer of its own that a direct write would overtake.
        self._socket: socket.socket | None = None
        if isinstance(stream, anyio.abc.SocketStream) and _on_trio():
            self._socket = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        # Flags, not locks: they are tested and set with no await between, so
        # one task at a time reads (or writes), and taking them costs nothing
        # when, as usual, no other task wants them.
        self._reading = False
        self._writing = False
        self._written: anyio.Event | None = None  # set when the writer is done
        self._full_writes = 0  # writer runs that wrote until everything queued was out
        # Made when first needed, like AsyncioLink._pending.
        self._data: deque[bytes] = _NO_DATA
        self._control: deque[bytes] = _NO_DATA
        self._changed: anyio.Event | None = None  # made by a task that waits for news
        self._waiting = 0  # tasks waiting on _changed
        self._reading_paused = False
        self._eof_requested = False
        # A frame went out by write_nowait() since a read or a wait: more of the
        # same burst are left to a writer, which sends them together.
        self._burst = False

    def clock(self) -> float:
        return anyio.current_time()

    def wake(self) -> None:
        changed = self._changed
        if changed is not None:
            self._changed = None  # the next task to wait makes a fresh one
            changed.set()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        self._burst = False
        while not condition():
            if self.lost:
                return
            if self._reading_paused or self._reading:
                # Someone else reads, or the inbound buffer is full: wait for news.
                if self._changed is None:
                    self._changed = anyio.Event()
                self._waiting += 1
                try:
                    await self._changed.wait()
                finally:
                    self._waiting -= 1
                continue
            self._reading = True
            try:
                await self._read_once()
            finally:
                self._reading = False

    async def _read_once(self) -> None:
        try:
            data = await self._stream.receive(READ_CHUNK)
        except anyio.EndOfStream:
            self._owner.eof_received()
            await self._lose(None)
        except _STREAM_ERRORS as exc:
            await self._lose(exc)
        else:
            self._burst = False  # a reply came in: what is sent next starts a new burst
            self._owner.bytes_received(data)
            # Pongs and close echoes go out now, unless a writer is busy: it
            # sends them with its next batch, and waiting for it here could
            # deadlock with a peer that only reads once we read.
            if self.backlogged and not self._writing:
                # Shielded: a receive() timing out must not cut a reply in
                # half (that would fail the link); bounded for a peer that
                # stopped reading altogether.
                with anyio.CancelScope(shield=True), anyio.move_on_after(REPLY_WRITE_LIMIT):
                    await self.flush()
        finally:
            self.wake()

    async def _lose(self, exc: BaseException | None) -> None:
        if self.lost:
            return
        self.lost = True
        self._data.clear()
        self._control.clear()
        self._eof_requested = False
        self._owner.link_lost(exc)
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()

    @property
    def backlogged(self) -> bool:
        return bool(self._data or self._control or self._eof_requested)

    def queue(self, chunks: list[bytes], *, control: bool) -> None:
        if not self.lost:
            if control:
                if self._control is _NO_DATA:
                    self._control = deque()
                self._control.extend(chunks)
            else:
                if self._data is _NO_DATA:
                    self._data = deque()
                self._data.extend(chunks)

    def write_eof(self) -> None:
        self._eof_requested = True

    def write_nowait(self, data: bytes) -> bool:
        # Like asyncio's transport.write(): a send() per frame costs trio's
        # checkpoints and a scheduler pass, and a frame left for a writer task
        # could go out after a frame sent later on another connection.
        sock = self._socket
        if (
            sock is None
            or self._burst
            or self.lost
            or self._writing
            or self._data
            or self._control
            or self._eof_requested
        ):
            return False
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            return False  # the socket is full: the frame waits in the queue
        except OSError:
            return False  # the writer's send() finds the error and loses the link
        self._burst = True
        if sent < len(data):
            # The rest of a frame partly on the wire goes before anything else.
            self._control = deque([data[sent:]])
        return True

    async def flush(self, *, control_only: bool = False) -> None:
        if control_only and (self._writing or not self._control):
            # The busy writer sends control frames first in its next batch.
            return
        # The writer writes everything queued, including frames other tasks
        # queue meanwhile: they only wait for it to finish. Once one full run
        # ended after we began to wait, our frames are out (or the link is
        # lost): a newer writer busy with others' frames is no reason to wait.
        seen = self._full_writes
        while self._writing:
            if self._written is None:
                self._written = anyio.Event()
            await self._written.wait()
            if self._full_writes != seen:
                return
        if not self.backlogged:
            return
        self._writing = True
        finished = False
        try:
            await self._write_all(control_only)
            finished = True
        finally:
            self._writing = False
            # A run cut short by cancellation may leave frames queued: then
            # the waiters must see it did not count, and one writes them.
            if not control_only and (finished or self.lost):
                self._full_writes += 1
                self._burst = False
            if self._written is not None:
                self._written.set()
                self._written = None

    async def _write_all(self, control_only: bool = False) -> None:
        while (self._control or (self._data and not control_only)) and not self.lost:
            # Take cancellation here, while the batch is still queued...
            await anyio.lowlevel.checkpoint_if_cancelled()
            batch = self._next_batch(control_only)
            try:
                await self._stream.send(batch)
            except _STREAM_ERRORS as exc:
                await self._lose(exc)
            except BaseException:
                # ...because once send() is cancelled part of a frame may
                # be on the wire, and the stream cannot carry on after it.
                await self._lose(
                    anyio.BrokenResourceError("a write was interrupted in the middle of a frame")
                )
                raise
        if self._eof_requested and not self.lost and not control_only:
            self._eof_requested = False
            send_eof = getattr(self._stream, "send_eof", None)
            if send_eof is not None:
                # TLS streams cannot half-close (NotImplementedError): the EOF
                # is only a courtesy after a failed handshake, so skip it.
                with contextlib.suppress(*_STREAM_ERRORS, NotImplementedError):
                    await send_eof()

    def _next_batch(self, control_only: bool = False) -> bytes:
        if not self._control and len(self._data) == 1:
            return self._data.popleft()  # the usual case: one message, no copy
        batch: list[bytes] = []
        size = 0
        for queue in (self._control,) if control_only else (self._control, self._data):
            while queue and size < WRITE_BATCH:
                chunk = queue.popleft()
                batch.append(chunk)
                size += len(chunk)
        return b"".join(batch)

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self.wake()

    async def abort(self) -> None:
        await self._lose(None)
