"""Test servers on 127.0.0.1, run on a private asyncio loop in a thread.

Running them outside the test's own event loop lets the same server serve a
client on asyncio and on trio, and keeps the server's work off the client's
loop.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve, unix_serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from wsclient._loopthread import LoopThread

Handler = Callable[[ServerConnection], Awaitable[None]]


class RunningServer:
    """A handle on a server running in a thread."""

    def __init__(self, loop_thread: LoopThread, server: Server, url: str) -> None:
        self.loop_thread = loop_thread
        self.server = server
        self.url = url
        self.requests: list[Request] = []

    @property
    def connections(self) -> list[ServerConnection]:
        return list(self.server.connections)

    async def call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``fn()`` on the server's loop and return its result."""

        async def run() -> Any:
            return await fn()

        return await self.loop_thread.run(run())

    async def abort_all(self) -> None:
        """Kill every client TCP connection without a close frame."""

        async def abort() -> None:
            for connection in self.server.connections:
                connection.transport.abort()

        await self.loop_thread.run(abort())


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


@asynccontextmanager
async def running_server(
    handler: Handler = echo,
    *,
    ssl_context: ssl.SSLContext | None = None,
    unix_path: str | None = None,
    reject: tuple[int, dict[str, str]] | None = None,
    **options: Any,
) -> AsyncIterator[RunningServer]:
    """Serve ``handler`` in a thread; ``reject=(status, headers)`` refuses every handshake."""
    loop_thread = LoopThread("test-server")
    loop_thread.start()
    holder: list[RunningServer] = []

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        holder[0].requests.append(request)
        if reject is not None:
            status, headers = reject
            response = connection.respond(status, "rejected by test server\n")
            for name, value in headers.items():
                response.headers[name] = value
            return response
        return None

    async def start() -> Server:
        if unix_path is not None:
            return await unix_serve(handler, unix_path, process_request=process_request, **options)
        return await serve(
            handler,
            "127.0.0.1",
            0,
            ssl=ssl_context,
            process_request=process_request,
            **options,
        )

    try:
        server = await loop_thread.run(start())
        if unix_path is not None:
            url = "ws://localhost/"
        else:
            port = server.sockets[0].getsockname()[1]
            url = f"{'wss' if ssl_context else 'ws'}://127.0.0.1:{port}/"
        running = RunningServer(loop_thread, server, url)
        holder.append(running)
        yield running

        async def stop() -> None:
            server.close()
            await server.wait_closed()

        await loop_thread.run(stop())
    finally:
        loop_thread.stop()


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def header(request: Request, name: str) -> str | None:
    headers: Headers = request.headers
    return headers.get(name)
