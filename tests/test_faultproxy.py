"""FaultProxy: a TCP proxy between plain anyio clients and a local echo server.

Every test runs on asyncio and on trio, on real sockets on 127.0.0.1. The
only wall-clock waits are the short windows that check nothing arrives
through a blackhole, and the latency being measured.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from wsclient import InvalidState
from wsclient.testing import FaultProxy, FaultProxyStatistics

pytestmark = pytest.mark.anyio

# How long a blackhole is watched for bytes that must not arrive.
QUIET_WINDOW = 0.2


class EchoServer:
    """Echoes each chunk back (after ``prefix``) and records how each connection ended."""

    def __init__(self, prefix: bytes = b"") -> None:
        self.prefix = prefix
        self.connections = 0
        self.received = bytearray()
        # One entry per finished connection: None for a clean end of stream,
        # else the exception its receive or send raised.
        self.endings: list[BaseException | None] = []
        self._ended = anyio.Event()

    async def handle(self, stream: SocketStream) -> None:
        self.connections += 1
        ending: BaseException | None = None
        async with stream:
            try:
                async for chunk in stream:
                    self.received += chunk
                    await stream.send(self.prefix + chunk)
            except anyio.BrokenResourceError as exc:
                ending = exc
        self.endings.append(ending)
        self._ended.set()

    async def wait_endings(self, count: int) -> list[BaseException | None]:
        while len(self.endings) < count:
            self._ended = anyio.Event()
            await self._ended.wait()
        return self.endings


@asynccontextmanager
async def serving(server: EchoServer) -> AsyncIterator[tuple[str, int]]:
    """Run ``server`` on a port of 127.0.0.1 chosen by the OS; yield its address."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as task_group:
        task_group.start_soon(listener.serve, server.handle)
        yield "127.0.0.1", listener.extra(SocketAttribute.local_port)
        task_group.cancel_scope.cancel()


async def connect(proxy: FaultProxy) -> SocketStream:
    return await anyio.connect_tcp(proxy.host, proxy.port)


async def receive_exactly(stream: SocketStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += await stream.receive()
    return data


async def echo(stream: SocketStream, data: bytes) -> bytes:
    await stream.send(data)
    return await receive_exactly(stream, len(data))


async def receive_until_broken(stream: SocketStream) -> tuple[bytes, anyio.BrokenResourceError]:
    """Read until the stream breaks; return what arrived first and the error."""
    data = b""
    while True:
        try:
            data += await stream.receive()
        except anyio.BrokenResourceError as exc:
            return data, exc


def proxy_tasks() -> list[str]:
    """Names of the running tasks that belong to a FaultProxy."""
    names = (task.name or "" for task in anyio.get_running_tasks())
    return [name for name in names if name.startswith("wsclient._faultproxy.")]


def assert_reset(error: BaseException | None) -> None:
    """A reset: anyio raises BrokenResourceError from ConnectionResetError on both backends."""
    assert isinstance(error, anyio.BrokenResourceError)
    assert isinstance(error.__cause__, ConnectionResetError)


async def test_bytes_pass_both_ways() -> None:
    """Bytes sent by the client reach the server and its reply comes back, counted."""
    server = EchoServer(prefix=b"echo:")
    async with serving(server) as address, FaultProxy(address) as proxy:
        assert proxy.url("/ws") == f"ws://127.0.0.1:{proxy.port}/ws"
        async with await connect(proxy) as client:
            await client.send(b"hello")
            assert await receive_exactly(client, 10) == b"echo:hello"
            assert proxy.statistics() == FaultProxyStatistics(
                connections_accepted=1,
                connections_active=1,
                upstream_failures=0,
                cuts=0,
                bytes_upstream=5,
                bytes_downstream=10,
                faults=0,
            )
    assert server.received == b"hello"


async def test_end_of_stream_passes_through() -> None:
    """A client's half-close reaches the server, and the server's close reaches the client."""
    server = EchoServer()
    async with (
        serving(server) as address,
        FaultProxy(address) as proxy,
        await connect(proxy) as client,
    ):
        await client.send(b"bye")
        await client.send_eof()
        assert await receive_exactly(client, 3) == b"bye"
        with pytest.raises(anyio.EndOfStream):
            await client.receive()
        assert await server.wait_endings(1) == [None]


async def test_cut_resets_both_sides() -> None:
    """cut() resets the client and the server connection at once and counts the cut."""
    server = EchoServer()
    async with serving(server) as address, FaultProxy(address) as proxy:
        async with await connect(proxy) as client:
            assert await echo(client, b"hi") == b"hi"
            assert proxy.cut() == 1
            assert proxy.cut() == 0  # already being reset
            _, error = await receive_until_broken(client)
            assert_reset(error)
            [ending] = await server.wait_endings(1)
            assert_reset(ending)
        stats = proxy.statistics()
        assert (stats.cuts, stats.faults) == (1, 2)


async def test_blackhole_holds_bytes_until_restore() -> None:
    """blackhole() passes nothing, even on new connections; restore() delivers it once, in order."""
    server = EchoServer()
    async with serving(server) as address, FaultProxy(address) as proxy:
        async with await connect(proxy) as old:
            assert await echo(old, b"hi") == b"hi"
            proxy.blackhole()
            await old.send(b"one")
            await old.send(b"two")
            async with await connect(proxy) as new:  # the proxy still accepts
                await new.send(b"new")
                arrived: list[bytes] = []

                async def watch(stream: SocketStream) -> None:
                    arrived.append(await stream.receive())

                with anyio.move_on_after(QUIET_WINDOW):
                    async with anyio.create_task_group() as task_group:
                        task_group.start_soon(watch, old)
                        task_group.start_soon(watch, new)
                assert arrived == []
                assert server.received == b"hi"
                assert server.connections == 1
                assert "blackhole" in repr(proxy)

                proxy.restore()
                assert await receive_exactly(old, 6) == b"onetwo"
                assert await receive_exactly(new, 3) == b"new"
                assert await echo(old, b"!") == b"!"  # nothing held back was sent twice
        assert server.received.count(b"onetwo") == 1
        assert proxy.statistics().faults == 1


async def test_latency_delays_each_direction() -> None:
    """latency(d) delays every chunk by at least d each way, so a round trip by 2 d."""
    delay = 0.1
    async with serving(EchoServer()) as address, FaultProxy(address) as proxy:
        async with await connect(proxy) as client:
            assert await echo(client, b"warm") == b"warm"
            proxy.latency(delay)
            start = anyio.current_time()
            assert await echo(client, b"ping") == b"ping"
            assert anyio.current_time() - start >= 2 * delay
            assert f"latency={delay:g}s" in repr(proxy)
            proxy.latency(0)
            assert "latency" not in repr(proxy)
            assert await echo(client, b"again") == b"again"
        assert proxy.statistics().faults == 1  # latency(0) removes a fault


async def test_refuse_then_accept_on_the_same_port() -> None:
    """refuse() makes connect() fail with a refusal; accept() listens on the same port again."""
    async with serving(EchoServer()) as address, FaultProxy(address) as proxy:
        port = proxy.port
        async with await connect(proxy) as old:
            await proxy.refuse()
            assert "refusing" in repr(proxy)
            with pytest.raises(OSError, match="All connection attempts failed") as exc_info:
                await anyio.connect_tcp(proxy.host, port)
            assert isinstance(exc_info.value.__cause__, ConnectionRefusedError)
            assert await echo(old, b"still here") == b"still here"

            await proxy.accept()
            assert proxy.port == port
            async with await connect(proxy) as new:
                assert await echo(new, b"back") == b"back"
        stats = proxy.statistics()
        assert (stats.connections_accepted, stats.faults) == (2, 1)


async def test_limit_bytes_cuts_after_n_bytes() -> None:
    """limit_bytes(n) resets each connection after n more bytes, both directions together."""
    server = EchoServer()
    async with serving(server) as address, FaultProxy(address) as proxy:
        async with await connect(proxy) as first:
            assert await echo(first, b"abc") == b"abc"  # before the limit: not counted
            proxy.limit_bytes(8)
            # 5 bytes up, so only 3 of the 5 echoed come back.
            await first.send(b"01234")
            data, error = await receive_until_broken(first)
            assert data == b"012"
            assert_reset(error)
        async with await connect(proxy) as second:  # counted from its start
            await second.send(b"0123456789")
            data, error = await receive_until_broken(second)
            assert data == b""
            assert_reset(error)
        endings = await server.wait_endings(2)
        assert_reset(endings[0])
        assert_reset(endings[1])
        assert server.received == b"abc" + b"01234" + b"01234567"

        proxy.limit_bytes(None)
        async with await connect(proxy) as third:
            assert await echo(third, b"0123456789") == b"0123456789"
        stats = proxy.statistics()
        assert (stats.cuts, stats.faults) == (2, 1)


async def test_upstream_change_routes_new_connections() -> None:
    """Setting upstream sends new connections to the new server; open ones stay put."""
    async with (
        serving(EchoServer(prefix=b"A")) as first_address,
        serving(EchoServer(prefix=b"B")) as second_address,
        FaultProxy(first_address) as proxy,
        await connect(proxy) as old,
    ):
        assert await echo(old, b"1") == b"A1"
        proxy.upstream = second_address
        assert proxy.upstream == second_address
        async with await connect(proxy) as new:
            assert await echo(new, b"2") == b"B2"
        assert await echo(old, b"3") == b"A3"


async def test_aclose_closes_every_connection_and_task() -> None:
    """aclose() closes every socket and ends every task of the proxy, with bytes in flight."""
    async with serving(EchoServer()) as address:
        proxy = FaultProxy(address)
        await proxy.start()
        async with await connect(proxy) as idle, await connect(proxy) as delayed:
            assert await echo(idle, b"x") == b"x"
            assert await echo(delayed, b"x") == b"x"
            proxy.latency(60)
            await delayed.send(b"held")  # waits in the proxy for a minute
            assert proxy.statistics().connections_active == 2
            assert proxy_tasks()
            await proxy.aclose()  # the per-test timeout bounds it
            assert proxy.statistics().connections_active == 0
            assert proxy_tasks() == []
            for client in (idle, delayed):
                with pytest.raises(anyio.EndOfStream):
                    await client.receive()
        await proxy.aclose()  # idempotent
        assert "CLOSED" in repr(proxy)


async def test_refused_upstream_resets_the_client() -> None:
    """A client whose upstream connection is refused is reset at once and counted."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    address = ("127.0.0.1", listener.extra(SocketAttribute.local_port))
    await listener.aclose()  # nothing listens there any more
    async with FaultProxy(address) as proxy:
        async with await connect(proxy) as client:
            _, error = await receive_until_broken(client)
            assert_reset(error)
        stats = proxy.statistics()
        assert (stats.connections_accepted, stats.upstream_failures) == (1, 1)


async def test_misuse_is_rejected() -> None:
    """Bad arguments raise ValueError; refuse() and accept() need a running proxy."""
    proxy = FaultProxy(("127.0.0.1", 9))
    assert repr(proxy) == "<FaultProxy 127.0.0.1:0 -> 127.0.0.1:9 NEW faults=[] active=0>"
    with pytest.raises(ValueError, match="latency"):
        proxy.latency(-1)
    with pytest.raises(ValueError, match="limit"):
        proxy.limit_bytes(-1)
    with pytest.raises(ValueError, match="port"):
        proxy.upstream = ("127.0.0.1", 0)
    with pytest.raises(InvalidState):
        await proxy.refuse()
    with pytest.raises(InvalidState):
        await proxy.accept()
    async with proxy:
        with pytest.raises(InvalidState):
            await proxy.start()
