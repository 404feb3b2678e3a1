"""Test helpers: an in-memory [`Transport`][wsclient.Transport] pair, and a fault-injecting proxy.

[`MemoryTransport.pair()`][wsclient.testing.MemoryTransport.pair] returns two connected ends that
behave like [`WebSocketTransport`][wsclient.WebSocketTransport] (messages, backpressure, ping/pong,
the closing handshake, failing the connection on oversized messages or invalid
UTF-8) without sockets, so every upper layer can be tested on a fake clock:

```python
client, server = MemoryTransport.pair(latency=0.5)
await client.send("hello")
assert await server.receive() == "hello"  # at t + 0.5
assert await client.ping() == 1.0
```

The link between the ends is a small discrete-event simulation. Every frame
(data, ping, pong, close, end of stream) is stamped with the time it is due at
the other end; nothing runs in the background. Whoever touches the link
(any method or property of either end) first delivers every frame that is due
by now, and a task that has to wait sleeps until the next frame is due or
something changes. So time only moves through ``anyio`` and a fake clock
makes every delay exact.

Faults for upper-layer tests:
[`MemoryTransport.break_link()`][wsclient.testing.MemoryTransport.break_link] (abrupt death, code
1006), [`MemoryTransport.blackhole()`][wsclient.testing.MemoryTransport.blackhole] (a zombie link
that silently drops everything, which only a heartbeat detects) and
[`MemoryTransport.set_latency()`][wsclient.testing.MemoryTransport.set_latency].

To break a real TCP path between a client and a server instead, put a
[`FaultProxy`][wsclient.testing.FaultProxy] between them. To have a server send
malformed messages and invalid frames, use a
[`HostileServer`][wsclient.testing.HostileServer].
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import anyio.lowlevel

from ._exceptions import ConnectionClosed, InvalidState, closed_error
from ._faultproxy import FaultProxy, FaultProxyStatistics
from ._hostile import (
    HostileConnection,
    HostileServer,
    HostileServerStatistics,
    deflate,
    encode_frame,
)
from ._transport import Transport, TransportCounters, TransportState, TransportStatistics

__all__ = [
    "MemoryTransport",
    "FaultProxy",
    "FaultProxyStatistics",
    "HostileConnection",
    "HostileServer",
    "HostileServerStatistics",
    "deflate",
    "encode_frame",
]


# RFC 6455 7.4.1 and 7.4.2: codes an endpoint may put in a close frame
# (the same set websockets accepts in send_close()).
_SENDABLE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})
_MAX_CONTROL_PAYLOAD = 125  # RFC 6455 5.5: control frames carry at most 125 bytes


class _Kind(enum.Enum):
    DATA = "data"
    PING = "ping"
    PONG = "pong"
    CLOSE = "close"
    EOF = "eof"  # the peer closed its end of the byte stream (TCP FIN)


@dataclass(frozen=True)
class _Frame:
    kind: _Kind
    payload: str | bytes = b""
    text: bool = False  # bytes to be delivered as str (send(..., text=True))
    size: int = 0  # payload length in bytes, what max_size is checked against
    code: int = 0
    reason: str = ""


class _Link:
    """The wire between two ends: frames in flight, latency and faults."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.blackholed = False
        self.broken = False
        # A heap of (due, seq, receiver, frame). seq keeps frames of equal due
        # time in the order they were sent.
        self._in_flight: list[tuple[float, int, MemoryTransport, _Frame]] = []
        self._seq = itertools.count()
        # Created lazily: pair() may be called outside an event loop.
        self._changed: anyio.Event | None = None

    def post(self, receiver: MemoryTransport, frame: _Frame, sent_at: float) -> None:
        """Put a frame on the wire; it is due at the receiver after the latency."""
        if self.broken or self.blackholed:
            return  # the sender cannot tell: that is what makes a zombie link
        # Never before an earlier frame: the wire keeps order even if the latency drops.
        due = max(sent_at + self.latency, receiver._last_due)
        receiver._last_due = due
        if frame.kind is _Kind.DATA:
            receiver._in_flight += 1
        heapq.heappush(self._in_flight, (due, next(self._seq), receiver, frame))

    def next_due(self) -> float | None:
        return self._in_flight[0][0] if self._in_flight else None

    def advance(self) -> None:
        """Deliver every frame that is due by now, in order."""
        if not self._in_flight:
            return  # also keeps properties usable outside an event loop
        now = anyio.current_time()
        delivered = False
        while self._in_flight and self._in_flight[0][0] <= now:
            due, _, receiver, frame = heapq.heappop(self._in_flight)
            delivered = True
            if frame.kind is _Kind.DATA:
                receiver._in_flight -= 1
            if not self.blackholed:
                # Frames it sends in reply are due later (or now, with no latency)
                # and are picked up by this same loop.
                receiver._frame_received(frame, due)
        if delivered:
            self.notify()

    def drop_all(self) -> None:
        for _, _, receiver, _ in self._in_flight:
            receiver._in_flight = 0
        self._in_flight.clear()

    def notify(self) -> None:
        """Wake every task waiting on this link so it rechecks its condition."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait(self, deadline: float | None) -> None:
        """Wait until ``notify()`` is called or ``deadline`` passes."""
        if self._changed is None:
            self._changed = anyio.Event()
        changed = self._changed
        with anyio.CancelScope(deadline=math.inf if deadline is None else deadline):
            await changed.wait()


class MemoryTransport(Transport):
    """One end of an in-memory connection; create a connected pair with
    [`pair()`][wsclient.testing.MemoryTransport.pair].

    It behaves like [`WebSocketTransport`][wsclient.WebSocketTransport]:

    * ``str`` arrives as ``str``, ``bytes`` as ``bytes``, ``bytes`` sent with
      ``text=True`` as ``str`` (invalid UTF-8 fails the connection with 1007);
    * a message bigger than the receiver's ``max_size`` makes the receiver fail
      the connection with 1009 ([`MessageTooBig`][wsclient.MessageTooBig]);
    * each end buffers up to ``max_queue`` messages (those in flight count);
      [`send()`][wsclient.testing.MemoryTransport.send] waits while the peer's buffer is full;
    * [`aclose()`][wsclient.testing.MemoryTransport.aclose] runs the closing handshake; the peer can
      still receive what was sent before, then gets the close code and reason;
    * like a real client that fails the connection, the end that failed it
      ignores the peer's reply, so its [`close_code`][wsclient.Transport.close_code] is 1006 and
      only ``sent_code`` of the exception holds 1007 or 1009.

    Messages already received stay readable after the connection dies, as
    with the real transport; what was still in flight is lost.
    """

    def __init__(
        self,
        link: _Link,
        *,
        side: str,
        max_queue: int,
        max_size: int | None,
        close_timeout: float,
    ) -> None:
        """Use [`pair()`][wsclient.testing.MemoryTransport.pair]; an end is useless without its
        peer."""
        self._link = link
        self._side = side
        self._peer: MemoryTransport = self
        self._max_queue = max_queue
        self._max_size = max_size
        self._close_timeout = close_timeout
        self._inbox: deque[str | bytes] = deque()
        self._in_flight = 0  # data frames on their way to this end
        self._last_due = -math.inf
        self._close_sent: tuple[int, str] | None = None
        self._close_rcvd: tuple[int, str] | None = None
        # RFC 6455 1.4 and 7.1.7: after a close frame, or after failing the
        # connection, an endpoint discards whatever else the peer sends.
        self._discarding = False
        self._closing_deadline: float | None = None
        self._closed = False
        self._close_cause: BaseException | None = None
        self._close_note: str | None = None
        self._close_exc: ConnectionClosed | None = None
        self._pings: dict[bytes, float | None] = {}  # payload -> pong arrival time
        self._ping_ids = itertools.count()
        self._counters = TransportCounters()

    @classmethod
    def pair(
        cls,
        *,
        max_queue: int = 32,
        max_size: int | None = 2**20,
        latency: float = 0.0,
        close_timeout: float = 10.0,
    ) -> tuple[MemoryTransport, MemoryTransport]:
        """Return two connected, open ends: ``(client, server)``.

        Args:
            max_queue: messages each end buffers before the peer's
                [`send()`][wsclient.testing.MemoryTransport.send] waits.
            max_size: largest message each end accepts, in bytes (None: no limit).
            latency: seconds each frame (message, ping, pong, close) takes to arrive.
            close_timeout: seconds an end that sent a close frame waits for the
                handshake to finish before dropping the link (as the real one does).
        """
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if max_size is not None and max_size < 0:
            raise ValueError("max_size must be None or at least 0")
        _check_latency(latency)
        if close_timeout < 0:
            raise ValueError("close_timeout must be at least 0")
        link = _Link(latency)
        client, server = (
            cls(
                link,
                side=side,
                max_queue=max_queue,
                max_size=max_size,
                close_timeout=close_timeout,
            )
            for side in ("client", "server")
        )
        client._peer, server._peer = server, client
        return client, server

    # Transport API

    @property
    def state(self) -> TransportState:
        self._link.advance()
        if self._closed:
            return TransportState.CLOSED
        if self._close_sent is not None:
            return TransportState.CLOSING
        return TransportState.OPEN

    @property
    def close_code(self) -> int | None:
        self._link.advance()
        if not self._closed:
            return None
        return self._close_rcvd[0] if self._close_rcvd is not None else 1006

    @property
    def close_reason(self) -> str | None:
        self._link.advance()
        if not self._closed:
            return None
        return self._close_rcvd[1] if self._close_rcvd is not None else ""

    @property
    def side(self) -> str:
        """``"client"`` or ``"server"``: which end of the pair this is."""
        return self._side

    @property
    def peer(self) -> MemoryTransport:
        """The other end of the pair."""
        return self._peer

    @property
    def url(self) -> str:
        """A placeholder URL, for code that logs the transport's URL."""
        return "memory://"

    @property
    def subprotocol(self) -> str | None:
        """Always None: no subprotocol is negotiated in memory."""
        return None

    @property
    def latency(self) -> float:
        """Seconds a frame currently takes to cross the link."""
        return self._link.latency

    @property
    def blackholed(self) -> bool:
        """Whether the link currently drops everything (see
        [`blackhole()`][wsclient.testing.MemoryTransport.blackhole])."""
        return self._link.blackholed

    def statistics(self) -> TransportStatistics:
        """A snapshot of this end's counters; byte counts are payload bytes."""
        return self._counters.snapshot(self.state, len(self._inbox))

    def __repr__(self) -> str:
        state = self.state.name
        if self._closed:
            state += f" code={self.close_code}"
        return f"<MemoryTransport {self._side} {state}>"

    async def send(self, data: str | bytes, *, text: bool | None = None) -> None:
        """Send one message; wait while the peer's buffer is full.

        Raises:
            ConnectionClosed: this end is closing or closed.
        """
        if isinstance(data, str):
            payload: str | bytes = data
            size = len(data.encode())
        elif isinstance(data, bytes | bytearray | memoryview):
            payload = bytes(data)
            size = len(payload)
        else:
            raise TypeError(f"data must be str or bytes, not {type(data).__name__}")
        self._link.advance()
        if self._closed or self._close_sent is not None:
            raise self._closed_exception()
        peer = self._peer
        await self._wait_until(
            lambda: self._closed or self._close_sent is not None or self._peer_has_room()
        )
        if self._closed or self._close_sent is not None:
            raise self._closed_exception()
        self._counters.messages_sent += 1
        self._counters.bytes_sent += size
        frame = _Frame(
            _Kind.DATA, payload, text=bool(text) and isinstance(payload, bytes), size=size
        )
        self._post(peer, frame)

    async def receive(self) -> str | bytes:
        """Return the next message; cancelling this loses none.

        Raises:
            ConnectionClosed: the connection is closed and every message was read.
        """
        inbox = self._inbox
        await self._wait_until(lambda: bool(inbox) or self._closed)
        if inbox:
            message = inbox.popleft()
            self._link.notify()  # a sender may be waiting for room
            return message
        raise self._closed_exception()

    async def ping(self, data: bytes | None = None) -> float:
        """Send a ping and return the round-trip time when the peer's pong arrives.

        Raises:
            ConnectionClosed: the connection closed before the pong arrived.
            InvalidState: a ping with this payload is already waiting.
        """
        self._link.advance()
        if self._closed or self._close_sent is not None:
            raise self._closed_exception()
        pings = self._pings
        key: bytes
        if data is None:
            key = struct.pack("!I", next(self._ping_ids) & 0xFFFFFFFF)
            while key in pings:
                key = struct.pack("!I", next(self._ping_ids) & 0xFFFFFFFF)
        else:
            key = bytes(data)
            if len(key) > _MAX_CONTROL_PAYLOAD:
                raise ValueError(f"ping payload is {len(key)} bytes; at most 125 allowed")
            if key in pings:
                raise InvalidState("a ping with this payload is already waiting for its pong")
        pings[key] = None
        sent_at = anyio.current_time()
        self._counters.pings_sent += 1
        try:
            self._post(self._peer, _Frame(_Kind.PING, key))
            await self._wait_until(lambda: pings[key] is not None or self._closed)
            arrived_at = pings[key]
        finally:
            del pings[key]
        if arrived_at is None:
            raise self._closed_exception()
        # The pong's due time, not the time this task woke up: exact on any clock.
        rtt = arrived_at - sent_at
        self._counters.last_rtt = rtt
        return rtt

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Run the closing handshake with ``code`` and ``reason``; idempotent.

        Waits for the peer's reply for at most ``close_timeout`` seconds, then
        drops the link (code 1006), like the real transport.
        """
        self._link.advance()
        if self._closed:
            return
        if code not in _SENDABLE_CLOSE_CODES and not 3000 <= code < 5000:
            raise ValueError(f"close code {code} cannot be sent in a close frame")
        if len(reason.encode()) > _MAX_CONTROL_PAYLOAD - 2:
            raise ValueError("close reason is longer than 123 bytes in UTF-8")
        # Closing must finish even if our caller is cancelled; close_timeout bounds it.
        with anyio.CancelScope(shield=True):
            if self._close_sent is None:
                self._send_close(code, reason, anyio.current_time())
                self._link.notify()
            await self._wait_until(lambda: self._closed)

    # Fault injection

    async def abort(self) -> None:
        """Drop the connection at once, as a TCP reset would: see
        [`break_link()`][wsclient.testing.MemoryTransport.break_link]."""
        if not self._closed:
            self.break_link()
        await anyio.lowlevel.checkpoint()

    def break_link(self) -> None:
        """Kill the link abruptly: both ends CLOSED with code 1006, frames in flight lost.

        Messages each end had already received can still be read, then
        [`receive()`][wsclient.testing.MemoryTransport.receive] raises
        [`ConnectionClosedError`][wsclient.ConnectionClosedError]; waiting pings and sends fail with
        it.
        """
        link = self._link
        link.advance()  # what is due has arrived before the link dies
        link.broken = True
        link.drop_all()
        for end in (self, self._peer):
            end._closed = True
        link.notify()

    def blackhole(self, enabled: bool = True) -> None:
        """Make the link silently drop everything, both ways, until called with False.

        Sends still succeed and nothing closes: a zombie connection that only a
        heartbeat (a ping that never returns) detects. Frames dropped are lost
        for good; frames sent after the link is restored flow again.
        """
        link = self._link
        link.advance()
        link.blackholed = enabled
        link.notify()  # senders waiting for room now drop into the void

    def set_latency(self, seconds: float) -> None:
        """Set how long frames sent from now on take to arrive (both ways).

        Frames already in flight keep their arrival time, and a new frame
        never overtakes an earlier one.
        """
        _check_latency(seconds)
        self._link.advance()
        self._link.latency = seconds

    # Internals

    def _peer_has_room(self) -> bool:
        peer = self._peer
        if peer._closed or peer._discarding or self._link.blackholed:
            return True  # the message will be dropped: nothing to wait for
        return len(peer._inbox) + peer._in_flight < peer._max_queue

    async def _wait_until(self, ready: Callable[[], bool]) -> None:
        """Let time pass, delivering frames, until ``ready()`` holds."""
        link = self._link
        while True:
            link.advance()
            if ready():
                return
            deadline = link.next_due()
            if self._closing_deadline is not None and not self._closed:
                if anyio.current_time() >= self._closing_deadline:
                    # The peer never finished the handshake: drop the link.
                    self._set_closed(anyio.current_time())
                    link.notify()
                    continue
                if deadline is None or self._closing_deadline < deadline:
                    deadline = self._closing_deadline
            await link.wait(deadline)

    def _post(self, receiver: MemoryTransport, frame: _Frame) -> None:
        self._link.post(receiver, frame, anyio.current_time())
        self._link.advance()  # with no latency the frame arrives right away

    def _send_close(self, code: int, reason: str, at: float) -> None:
        self._close_sent = (code, reason)
        self._closing_deadline = at + self._close_timeout
        self._link.post(self._peer, _Frame(_Kind.CLOSE, code=code, reason=reason), at)

    def _set_closed(self, at: float) -> None:
        """Both close frames are through, or the link is gone: close the stream."""
        if self._closed:
            return
        self._closed = True
        self._link.post(self._peer, _Frame(_Kind.EOF), at)

    def _fail(self, code: int, reason: str, at: float) -> None:
        # RFC 6455 7.1.7. Fail the WebSocket Connection: send a close frame
        # and process nothing more from the peer, not even its reply.
        self._discarding = True
        if self._close_sent is None:
            self._send_close(code, reason, at)

    def _frame_received(self, frame: _Frame, at: float) -> None:
        """Handle a frame due now; called by the link, must not block."""
        if self._closed:
            return
        self._counters.last_received_at = at
        kind = frame.kind
        if kind is _Kind.EOF:
            self._set_closed(at)
            return
        if self._discarding:
            return
        if kind is _Kind.DATA:
            self._deliver(frame, at)
        elif kind is _Kind.PING:
            # RFC 6455 5.5.2: answer every ping with a pong carrying its payload.
            self._link.post(self._peer, _Frame(_Kind.PONG, frame.payload), at)
        elif kind is _Kind.PONG:
            self._pong_received(frame.payload, at)
        elif kind is _Kind.CLOSE:
            self._close_rcvd = (frame.code, frame.reason)
            self._discarding = True
            if self._close_sent is None:
                # RFC 6455 5.5.1: echo the close frame we did not initiate.
                self._send_close(frame.code, frame.reason, at)
            # RFC 6455 7.1.2: both close frames are through; close the stream.
            self._set_closed(at)

    def _deliver(self, frame: _Frame, at: float) -> None:
        max_size = self._max_size
        if max_size is not None and frame.size > max_size:
            reason = f"message of {frame.size} bytes exceeds limit of {max_size} bytes"
            self._close_note = f"message too big ({reason})"
            self._fail(1009, reason, at)
            return
        message = frame.payload
        if frame.text and isinstance(message, bytes):
            try:
                message = str(message, "utf-8")
            except UnicodeDecodeError as exc:
                # RFC 6455 8.1: invalid UTF-8 in a text message fails the connection.
                self._close_cause = exc
                self._fail(1007, "invalid UTF-8 in a text frame", at)
                return
        self._counters.messages_received += 1
        self._counters.bytes_received += frame.size
        self._inbox.append(message)
        if len(self._inbox) == self._max_queue:
            self._counters.read_pauses += 1  # the real transport stops reading the socket here

    def _pong_received(self, data: str | bytes, at: float) -> None:
        self._counters.pongs_received += 1
        if data not in self._pings:
            return  # RFC 6455 5.5.3: unsolicited (or stale) pongs answer nothing
        # A pong answers its ping and every earlier one (pongs may be coalesced).
        for payload, arrived_at in self._pings.items():
            if arrived_at is None:
                self._pings[payload] = at
            if payload == data:
                break

    def _closed_exception(self) -> ConnectionClosed:
        if self._close_exc is not None:
            return self._close_exc
        rcvd, sent = self._close_rcvd, self._close_sent
        error = closed_error(
            rcvd[0] if rcvd is not None else 1006,
            rcvd[1] if rcvd is not None else "",
            sent_code=sent[0] if sent is not None else None,
        )
        if self._close_note is not None:
            error.args = (f"{error.args[0]}: {self._close_note}",)
        error.__cause__ = self._close_cause
        if self._closed:  # final: the codes cannot change any more
            self._close_exc = error
        return error


def _check_latency(seconds: float) -> None:
    if not seconds >= 0 or math.isinf(seconds):
        raise ValueError("latency must be a finite number of seconds, at least 0")
