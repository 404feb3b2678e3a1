"""A fault-injecting TCP proxy for tests: [`FaultProxy`][wsclient.testing.FaultProxy].

The proxy listens on a local port and relays each client connection to its
own connection to ``upstream``. Tests command it at run time to break the
path between a client and a real server the way networks break:

```python
async with FaultProxy(("127.0.0.1", server_port)) as proxy:
    client = await connect(proxy.url("/ws"))
    proxy.blackhole()       # a zombie path: open sockets, no bytes
    proxy.restore()         # held bytes flow again, in order
    proxy.latency(0.5)      # every chunk waits half a second, both ways
    proxy.cut()             # reset every connection (TCP RST)
    await proxy.refuse()    # the port refuses new connections...
    await proxy.accept()    # ...and accepts them again, on the same port
    proxy.limit_bytes(100)  # reset each connection after 100 more bytes
```

It runs in the caller's event loop (asyncio or trio) inside its own task
group, entered by [`FaultProxy.start()`][wsclient.testing.FaultProxy.start] and left by
[`FaultProxy.aclose()`][wsclient.testing.FaultProxy.aclose]; nothing runs in threads or outside that
group.

Each connection has two directions; each direction is a reader task that
stamps every chunk with the time it is due (now plus the latency) and a
writer task that forwards chunks in order once they are due. A blackhole
stops both: readers stop reading, so bytes wait in the kernel's socket
buffers (at most one chunk per direction waits inside the proxy), and
writers hold what they have.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
from dataclasses import dataclass
from types import TracebackType

import anyio
import sniffio
from anyio.abc import Listener, SocketAttribute, SocketListener, SocketStream, TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from anyio.streams.stapled import MultiListener

from ._exceptions import InvalidState

__all__ = ["FaultProxy", "FaultProxyStatistics"]

_CHUNK_SIZE = 65536
# Chunks read but not yet forwarded, per direction: with a latency this bounds
# what the proxy holds in memory (and so the throughput to a window per delay).
_QUEUE_CHUNKS = 16
# SO_LINGER on with a zero timeout: close() sends RST and drops unsent data.
_LINGER_RESET = struct.pack("ii", 1, 0)

# (due time, bytes)
_Chunk = tuple[float, bytes]


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


@dataclass(frozen=True)
class FaultProxyStatistics:
    """A snapshot of a [`FaultProxy`][wsclient.testing.FaultProxy]'s counters.

    Connections the kernel refuses while [`FaultProxy.refuse()`][wsclient.testing.FaultProxy.refuse]
    is in force never reach the proxy, so they are not counted.
    """

    connections_accepted: int
    """Client connections accepted since the proxy started."""
    connections_active: int
    """Client connections whose sockets are not closed yet."""
    upstream_failures: int
    """Accepted client connections reset because connecting to the upstream failed."""
    cuts: int
    """Connections reset by [`FaultProxy.cut()`][wsclient.testing.FaultProxy.cut] or by a byte
    limit."""
    bytes_upstream: int
    """Bytes forwarded from clients to the upstream."""
    bytes_downstream: int
    """Bytes forwarded from the upstream to clients."""
    faults: int
    """Fault commands applied: ``cut``, ``blackhole``, ``latency`` with a
    positive delay, ``refuse`` and ``limit_bytes`` with a limit."""


class _Connection:
    """One client connection and its upstream connection."""

    def __init__(self, client: SocketStream, budget: int | None) -> None:
        self.client = client
        self.upstream: SocketStream | None = None
        self.scope = anyio.CancelScope()
        # Bytes it may still forward (both directions together); None: no limit.
        self.budget = budget
        self.reset = False  # close both sockets with an RST rather than a FIN
        self.closing = False  # its sockets are being closed: too late to cut

    def abort(self) -> None:
        """Reset both sides; the sockets close as soon as its task unwinds."""
        self.reset = True
        self.scope.cancel()


class _Listening:
    """The listening socket's accept task: cancel ``scope``, then wait for ``stopped``."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        self.scope = anyio.CancelScope()
        self.stopped = anyio.Event()
        self.sockets = sockets

    def stop(self) -> None:
        """Cancel the accept tasks; wait for ``stopped`` after."""
        if sniffio.current_async_library() == "asyncio":
            # A connection this loop pass found has its accept callback queued:
            # run after the cancellation it would accept into a cancelled future,
            # raise InvalidStateError and drop the socket (CPython gh-153761).
            # Removing the reader cancels that callback; the connection waits.
            loop = asyncio.get_running_loop()
            for sock in self.sockets:
                if sock.fileno() >= 0:  # not closed yet
                    loop.remove_reader(sock)
        self.scope.cancel()


class FaultProxy:
    """A TCP proxy on a local port that injects network faults on command.

    Args:
        upstream: ``(host, port)`` of the server each client connection is
            relayed to; see [`upstream`][wsclient.testing.FaultProxy.upstream].
        host: the address to listen on.
        port: the port to listen on; 0 lets the OS choose one (see
            [`port`][wsclient.testing.FaultProxy.port]).

    Use it as an async context manager, or call [`start()`][wsclient.testing.FaultProxy.start] and
    [`aclose()`][wsclient.testing.FaultProxy.aclose] from the same task. Its tasks run in a task
    group entered by [`start()`][wsclient.testing.FaultProxy.start], in the caller's event loop.

    Faults apply to every connection, current and future, until undone:
    [`blackhole()`][wsclient.testing.FaultProxy.blackhole] /
    [`restore()`][wsclient.testing.FaultProxy.restore],
    [`latency()`][wsclient.testing.FaultProxy.latency],
    [`refuse()`][wsclient.testing.FaultProxy.refuse] /
    [`accept()`][wsclient.testing.FaultProxy.accept] and
    [`limit_bytes()`][wsclient.testing.FaultProxy.limit_bytes];
    [`cut()`][wsclient.testing.FaultProxy.cut] acts once, on the connections open at the time. Only
    [`refuse()`][wsclient.testing.FaultProxy.refuse] and
    [`accept()`][wsclient.testing.FaultProxy.accept] are coroutines, because they close and reopen
    the listening socket: when they return, the port refuses, or accepts, connections. The other
    commands take effect at once, without waiting.

    When either side of a connection closes cleanly, the proxy passes the
    end of stream on to the other side and closes both sockets once both
    directions have ended; when either side fails (a reset, say), the proxy
    resets the other side.
    """

    def __init__(
        self, upstream: tuple[str, int], *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._upstream = _check_address(upstream)
        self._host = host
        self._port = port
        self._state = _State.NEW
        self._stack: contextlib.AsyncExitStack | None = None
        self._task_group: TaskGroup | None = None
        self._listening: _Listening | None = None
        self._listen_lock: anyio.Lock | None = None
        self._connections: set[_Connection] = set()
        # Faults
        self._blackholed = False
        self._flowing: anyio.Event | None = None  # set when the blackhole lifts
        self._latency = 0.0
        self._limit: int | None = None
        self._limit_changed: anyio.Event | None = None
        # Counters
        self._accepted = 0
        self._upstream_failures = 0
        self._cuts = 0
        self._bytes_upstream = 0
        self._bytes_downstream = 0
        self._faults = 0

    # Configuration

    @property
    def host(self) -> str:
        """The address the proxy listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The port the proxy listens on: the one the OS chose once started with port 0."""
        return self._port

    @property
    def upstream(self) -> tuple[str, int]:
        """``(host, port)`` new connections are relayed to.

        Set it to point the proxy at another server (one restarted on a new
        port, say): connections made from then on go there, current ones stay.
        """
        return self._upstream

    @upstream.setter
    def upstream(self, address: tuple[str, int]) -> None:
        self._upstream = _check_address(address)

    def url(self, path: str = "/") -> str:
        """The ``ws://`` URL of ``path`` through the proxy."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        if not path.startswith("/"):
            path = "/" + path
        return f"ws://{host}:{self._port}{path}"

    # Life cycle

    async def start(self) -> None:
        """Start listening; [`port`][wsclient.testing.FaultProxy.port] is the bound port when this
        returns.

        Raises:
            InvalidState: the proxy was already started.
            OSError: the address cannot be bound.
        """
        if self._state is not _State.NEW:
            raise InvalidState(f"the proxy is {self._state.value}; it can be started once")
        async with contextlib.AsyncExitStack() as stack:
            self._task_group = await stack.enter_async_context(anyio.create_task_group())
            self._listen_lock = anyio.Lock()
            await self._listen()
            self._stack = stack.pop_all()
            self._state = _State.RUNNING

    async def aclose(self) -> None:
        """Stop listening and close every connection; idempotent.

        Every task is cancelled and every socket closed before this returns;
        closing cannot hang. Call it from the task that called
        [`start()`][wsclient.testing.FaultProxy.start], outside any cancel scope entered since: the
        proxy's task group was entered by [`start()`][wsclient.testing.FaultProxy.start] and is left
        here.
        """
        await self._close(None, None, None)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return await self._close(exc_type, exc, tb)

    async def _close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        stack, self._stack = self._stack, None
        self._state = _State.CLOSED
        if stack is None:
            return False
        assert self._task_group is not None
        if self._listening is not None:
            self._listening.stop()
        self._task_group.cancel_scope.cancel()
        # The exception (maybe the cancellation of a failed task group) goes to
        # the task group, which decides whether it propagates.
        return bool(await stack.__aexit__(exc_type, exc, tb))

    # Faults

    def cut(self) -> int:
        """Reset every current connection, both sides; return how many were cut.

        Both sockets are closed with ``SO_LINGER`` 0, so the client and the
        upstream see a reset (not a clean end of stream) as soon as the
        proxy's tasks run, and bytes not yet forwarded are lost.
        """
        self._faults += 1
        cut = 0
        for connection in self._connections:
            if not (connection.reset or connection.closing):
                connection.abort()
                cut += 1
        self._cuts += cut
        return cut

    def blackhole(self) -> None:
        """Stop every byte in both directions, on every connection, until
        [`restore()`][wsclient.testing.FaultProxy.restore].

        Sockets stay open and nothing is lost: the proxy stops reading, so
        bytes wait in the kernel's buffers. New connections are still
        accepted, but the proxy connects them to the upstream only once the
        blackhole lifts.
        """
        self._faults += 1
        self._blackholed = True

    def restore(self) -> None:
        """Lift the [`blackhole()`][wsclient.testing.FaultProxy.blackhole]: held bytes flow again,
        in order."""
        self._blackholed = False
        if self._flowing is not None:
            self._flowing.set()
            self._flowing = None

    def latency(self, seconds: float) -> None:
        """Delay every chunk read from now on by ``seconds``, both ways (0 removes the delay).

        Chunks keep their order: one is never forwarded before an earlier one,
        even when the latency drops. The delay is slept with ``anyio.sleep_until()``,
        so a fake clock drives it.
        """
        if not seconds >= 0 or seconds == float("inf"):
            raise ValueError("latency must be a finite number of seconds, at least 0")
        if seconds > 0:
            self._faults += 1
        self._latency = seconds

    async def refuse(self) -> None:
        """Close the listening socket: new connections are refused (``ECONNREFUSED``).

        Current connections go on. When this returns the port refuses
        connections. Does nothing more if it already refuses.

        Raises:
            InvalidState: the proxy is not running.
        """
        lock = self._running_lock()
        self._faults += 1
        async with lock:
            listening, self._listening = self._listening, None
            if listening is not None:
                listening.stop()
                await listening.stopped.wait()

    async def accept(self) -> None:
        """Listen again on the same port after [`refuse()`][wsclient.testing.FaultProxy.refuse].

        When this returns the port accepts connections. Does nothing if it
        already does.

        Raises:
            InvalidState: the proxy is not running.
            OSError: the port cannot be bound again (another socket took it).
        """
        async with self._running_lock():
            if self._listening is None:
                await self._listen()

    def limit_bytes(self, n: int | None) -> None:
        """Reset each connection once it has forwarded ``n`` more bytes (None: no limit).

        Both directions count together: current connections from now on, new
        ones from their start. The chunk that reaches the limit is forwarded
        up to it, then both sides are reset, as with [`cut()`][wsclient.testing.FaultProxy.cut].
        """
        if n is not None and n < 0:
            raise ValueError("the byte limit must be None or at least 0")
        if n is not None:
            self._faults += 1
        self._limit = n
        for connection in self._connections:
            connection.budget = n
            if n == 0 and not (connection.reset or connection.closing):
                self._cuts += 1
                connection.abort()
        if self._limit_changed is not None:
            self._limit_changed.set()
            self._limit_changed = None

    # Introspection

    def statistics(self) -> FaultProxyStatistics:
        """A snapshot of the proxy's counters."""
        return FaultProxyStatistics(
            connections_accepted=self._accepted,
            connections_active=len(self._connections),
            upstream_failures=self._upstream_failures,
            cuts=self._cuts,
            bytes_upstream=self._bytes_upstream,
            bytes_downstream=self._bytes_downstream,
            faults=self._faults,
        )

    def __repr__(self) -> str:
        upstream_host, upstream_port = self._upstream
        faults = []
        if self._state is _State.RUNNING and self._listening is None:
            faults.append("refusing")
        if self._blackholed:
            faults.append("blackhole")
        if self._latency:
            faults.append(f"latency={self._latency:g}s")
        if self._limit is not None:
            faults.append(f"limit={self._limit}B")
        return (
            f"<FaultProxy {self._host}:{self._port} -> {upstream_host}:{upstream_port}"
            f" {self._state.name} faults=[{', '.join(faults)}]"
            f" active={len(self._connections)}>"
        )

    # Listening

    def _running_lock(self) -> anyio.Lock:
        if self._state is not _State.RUNNING or self._listen_lock is None:
            raise InvalidState(f"the proxy is {self._state.value}, not running")
        return self._listen_lock

    async def _listen(self) -> None:
        # anyio sets SO_REUSEADDR, so the port can be bound again after refuse().
        listener = await anyio.create_tcp_listener(local_host=self._host, local_port=self._port)
        self._port = listener.extra(SocketAttribute.local_port)
        sockets = [one.extra(SocketAttribute.raw_socket) for one in listener.listeners]
        listening = self._listening = _Listening(sockets)
        assert self._task_group is not None
        self._task_group.start_soon(self._accept_all, listener, listening)

    async def _accept_all(
        self, listener: MultiListener[SocketStream], listening: _Listening
    ) -> None:
        try:
            with listening.scope:
                async with anyio.create_task_group() as task_group:
                    for one in listener.listeners:
                        task_group.start_soon(self._accept_loop, one)
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
            listening.stopped.set()

    async def _accept_loop(self, listener: Listener[SocketStream]) -> None:
        assert isinstance(listener, SocketListener)  # what create_tcp_listener() makes
        assert self._task_group is not None
        while True:
            try:
                client = await listener.accept()
            except ConnectionAbortedError:
                continue  # the client gave up before it was accepted
            self._task_group.start_soon(self._serve, client)

    # Relaying

    async def _serve(self, client: SocketStream) -> None:
        connection = _Connection(client, self._limit)
        self._connections.add(connection)
        self._accepted += 1
        try:
            with connection.scope:
                if connection.budget == 0:
                    self._cuts += 1
                    connection.abort()
                await self._wait_flowing()  # a blackholed upstream sees no connection
                try:
                    upstream = await anyio.connect_tcp(*self._upstream)
                except OSError:
                    self._upstream_failures += 1
                    connection.reset = True
                    return
                connection.upstream = upstream
                async with anyio.create_task_group() as task_group:
                    for source, target, outbound in (
                        (client, upstream, True),
                        (upstream, client, False),
                    ):
                        sender, receiver = anyio.create_memory_object_stream[_Chunk](_QUEUE_CHUNKS)
                        task_group.start_soon(self._read, connection, source, sender)
                        task_group.start_soon(self._write, connection, receiver, target, outbound)
        finally:
            connection.closing = True
            with anyio.CancelScope(shield=True):
                for stream in (connection.upstream, client):
                    if stream is None:
                        continue
                    if connection.reset:
                        _set_reset_on_close(stream)
                    await stream.aclose()
            self._connections.discard(connection)

    async def _read(
        self,
        connection: _Connection,
        source: SocketStream,
        queue: MemoryObjectSendStream[_Chunk],
    ) -> None:
        async with queue:  # closing it tells the writer the stream ended
            while True:
                await self._wait_flowing()
                try:
                    data = await source.receive(_CHUNK_SIZE)
                except anyio.EndOfStream:
                    return
                except (anyio.BrokenResourceError, OSError):
                    connection.abort()
                    return
                await queue.send((anyio.current_time() + self._latency, data))

    async def _write(
        self,
        connection: _Connection,
        queue: MemoryObjectReceiveStream[_Chunk],
        target: SocketStream,
        outbound: bool,
    ) -> None:
        async with queue:
            async for due, data in queue:
                await anyio.sleep_until(due)
                await self._wait_flowing()
                while connection.budget == 0:
                    # The other direction used the last bytes and resets the
                    # connection once they are sent, unless the limit changes.
                    await self._wait_limit_changed()
                budget = connection.budget
                if budget is not None:
                    data = data[:budget]
                    connection.budget = budget - len(data)
                # Counted before sending: the peer may read them before this task resumes.
                if outbound:
                    self._bytes_upstream += len(data)
                else:
                    self._bytes_downstream += len(data)
                try:
                    await target.send(data)
                except (anyio.BrokenResourceError, OSError):
                    connection.abort()
                    return
                if connection.budget == 0 and not connection.reset:
                    self._cuts += 1
                    connection.abort()
                    return
            await self._wait_flowing()
            try:
                await target.send_eof()
            except (anyio.BrokenResourceError, OSError):
                connection.abort()

    async def _wait_flowing(self) -> None:
        while self._blackholed:
            if self._flowing is None:
                self._flowing = anyio.Event()
            await self._flowing.wait()

    async def _wait_limit_changed(self) -> None:
        if self._limit_changed is None:
            self._limit_changed = anyio.Event()
        await self._limit_changed.wait()


def _check_address(address: tuple[str, int]) -> tuple[str, int]:
    host, port = address
    if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"expected (host, port) with a port in 1..65535, got {address!r}")
    return (host, port)


def _set_reset_on_close(stream: SocketStream) -> None:
    # OSError: the event loop already closed it after an error; nothing to reset.
    with contextlib.suppress(OSError):
        stream.extra(SocketAttribute.raw_socket).setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET
        )
