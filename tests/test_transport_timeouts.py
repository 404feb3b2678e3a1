"""Open and close timeouts, on virtual time (trio MockClock, looptime on asyncio).

The peers here are plain blocking sockets in threads that go silent at the
moment that matters, so the only thing left for the client to wait on is its
own deadline: the fake clock jumps straight to it and the tests can assert
the exact virtual time that passed.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
from websockets.server import ServerProtocol

from wsclient import ConnectionClosedError, ConnectTimeout, TransportState, connect_transport

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend(fake_clock: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return fake_clock


@contextmanager
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


@contextmanager
def mute_after_handshake() -> Iterator[int]:
    """A server that completes the WebSocket handshake, then never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            protocol = ServerProtocol()
            while not (events := protocol.events_received()):
                data = connection.recv(65536)
                if not data:
                    return
                protocol.receive_data(data)
            protocol.send_response(protocol.accept(events[0]))  # type: ignore[arg-type]
            connection.sendall(b"".join(protocol.data_to_send()))
            # Silent from here on: read and ignore until the client drops us.
            while connection.recv(65536):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(timeout=5)


async def test_open_timeout_when_the_server_never_answers() -> None:
    """A server that accepts TCP but never answers the handshake hits open_timeout exactly."""
    with silent_listener() as port:
        started = anyio.current_time()
        with pytest.raises(ConnectTimeout, match="open_timeout=7"):
            await connect_transport(f"ws://127.0.0.1:{port}/", open_timeout=7)
        assert anyio.current_time() - started == pytest.approx(7)


async def test_close_timeout_when_the_server_never_closes() -> None:
    """aclose() gives up on a mute server after close_timeout and drops the socket."""
    with mute_after_handshake() as port:
        transport = await connect_transport(
            f"ws://127.0.0.1:{port}/", open_timeout=None, close_timeout=3
        )
        assert transport.state is TransportState.OPEN
        started = anyio.current_time()
        await transport.aclose()
        assert anyio.current_time() - started == pytest.approx(3)
        assert transport.state is TransportState.CLOSED
        assert transport.close_code == 1006
        with pytest.raises(ConnectionClosedError):
            await transport.receive()


async def test_cancelled_aclose_still_closes_within_close_timeout() -> None:
    """Cancelling the caller of aclose() cannot leave the socket open."""
    with mute_after_handshake() as port:
        transport = await connect_transport(
            f"ws://127.0.0.1:{port}/", open_timeout=None, close_timeout=3
        )
        started = anyio.current_time()
        with anyio.move_on_after(1):
            await transport.aclose()
        assert anyio.current_time() - started == pytest.approx(3)
        assert transport.state is TransportState.CLOSED
