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
