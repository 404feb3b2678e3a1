"""WebSocketTransport's own logic over a scripted link: no sockets, no clock."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

from wsclient import ConnectionClosedError, TransportState, WebSocketTransport, connect_transport
from wsclient._links import Link

from .servers import running_server

pytestmark = pytest.mark.anyio


class StuckLink(Link):
    """A link whose peer never reads: flush() waits until the test lets it go."""

    def __init__(self) -> None:
        self.queued: list[bytes] = []
        self.released = anyio.Event()
        self.flushing = anyio.Event()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        await self.released.wait()

    def wake(self) -> None:
        pass

    @property
    def backlogged(self) -> bool:
        return bool(self.queued)

    def queue(self, chunks: list[bytes], *, control: bool) -> None:
        self.queued.extend(chunks)

    def clock(self) -> float:
        return anyio.current_time()

    async def flush(self, *, control_only: bool = False) -> None:
        self.flushing.set()
        await self.released.wait()

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    async def abort(self) -> None:
        self.lost = True


def open_transport(link: Link) -> WebSocketTransport:
    protocol = ClientProtocol(parse_uri("ws://peer.test/"), state=State.OPEN)
    transport = WebSocketTransport(
        protocol, display_url="ws://peer.test/", max_queue=4, close_timeout=1
    )
    transport._link = link
    return transport


async def test_send_waiting_on_a_slow_peer_fails_when_the_link_dies() -> None:
    """A send() whose frame never left our buffer raises instead of reporting success."""
    link = StuckLink()
    transport = open_transport(link)
    outcome: list[BaseException | None] = []

    async def send() -> None:
        try:
            await transport.send("never written")
            outcome.append(None)
        except ConnectionClosedError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(send)
        await link.flushing.wait()
        transport.link_lost(ConnectionResetError("reset by peer"))
        link.released.set()
    assert isinstance(outcome[0], ConnectionClosedError)
    assert outcome[0].code == 1006
    assert isinstance(outcome[0].__cause__, ConnectionResetError)


async def test_bytes_after_the_link_was_lost_are_ignored() -> None:
    """Data a read returns after an abort (a trio race) is dropped, not an EOFError."""
    async with running_server() as server:
        transport = await connect_transport(server.url)
        await transport.abort()
        transport.bytes_received(b"\x81\x01x")  # a text frame "x", too late
        assert transport.state is TransportState.CLOSED
        with pytest.raises(ConnectionClosedError):
            await transport.receive()


@pytest.mark.parametrize(
    "headers",
    [{"Upgrade": "h2c"}, [("X-Fine", "1"), ("sec-websocket-key", "x")], (("Connection", "close"),)],
)
def test_handshake_headers_are_refused_when_the_client_is_made(headers: object) -> None:
    """A header the handshake sets itself is refused by connect(), before any attempt."""
    import wsclient

    with pytest.raises(ValueError, match="header is set by the WebSocket handshake itself"):
        wsclient.connect("ws://127.0.0.1:1/", headers=headers)


def test_headers_from_a_generator_are_not_consumed_when_the_client_is_made() -> None:
    """Headers given as a one-shot iterable are left for the attempt to read."""
    from wsclient._reconnect import WebSocketFactory

    headers = iter([("X-Token", "1")])
    WebSocketFactory("ws://127.0.0.1:1/", headers=headers)
    assert list(headers) == [("X-Token", "1")]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"open_timeout": -1}, "open_timeout must be a positive number of seconds, got -1"),
        ({"open_timeout": float("nan")}, "open_timeout must be a positive number"),
        ({"max_size": -5}, "max_size must be None or an int of at least 1, got -5"),
        ({"max_size": 2.5}, "max_size must be None or an int of at least 1, got 2.5"),
        ({"compression": "gzip"}, "compression must be 'deflate' or None, got 'gzip'"),
    ],
)
def test_impossible_connection_options_are_refused_when_the_client_is_made(
    options: dict[str, object], match: str
) -> None:
    """open_timeout, max_size and compression are checked by connect(), not at the first attempt."""
    import wsclient

    with pytest.raises(ValueError, match=match):
        wsclient.connect("ws://127.0.0.1:1/", **options)


@pytest.mark.anyio
async def test_connect_transport_refuses_impossible_options_before_connecting() -> None:
    """connect_transport() refuses a bad max_queue or max_size without opening a socket."""
    with pytest.raises(ValueError, match="max_queue must be an int of at least 1, got 0"):
        await connect_transport("ws://127.0.0.1:1/", max_queue=0)
    with pytest.raises(ValueError, match="max_size must be None or an int of at least 1"):
        await connect_transport("ws://127.0.0.1:1/", max_size=0)
