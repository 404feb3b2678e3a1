"""Fast WebSocket echo server for the benchmarks.

It drives the Sans-I/O ``websockets.server.ServerProtocol`` straight from an
``asyncio.Protocol``: no tasks, no queues, no futures per message, so the
server costs as little as possible and the clients being measured dominate the
round trip. Text and binary frames are echoed frame by frame (fragmented
messages come back fragmented the same way); pings are answered and close
frames handled by the protocol core.

Usage::

    python benchmarks/echo_server.py [--port 0] [--compression] [--backlog 16384]

The first line on stdout is ``PORT <number>``, the port the OS chose (or the
one given). The server listens on 127.0.0.1 only and exits on SIGINT/SIGTERM.
It raises its own limit on open files to the hard limit, so that it can hold
as many connections as the system lets it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import signal
import sys
from collections.abc import Callable, Sequence
from typing import cast

from websockets.extensions.base import ServerExtensionFactory
from websockets.extensions.permessage_deflate import enable_server_permessage_deflate
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import SEND_EOF
from websockets.server import ServerProtocol

HOST = "127.0.0.1"


class EchoProtocol(asyncio.Protocol):
    """One connection: bytes in, Sans-I/O protocol, echoed frames out."""

    def __init__(self, extensions: Sequence[ServerExtensionFactory] | None) -> None:
        # No size limit: the benchmark controls what it sends.
        self.ws = ServerProtocol(extensions=extensions, max_size=None)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Frame):
                opcode = event.opcode
                if opcode is Opcode.TEXT:
                    ws.send_text(event.data, fin=event.fin)
                elif opcode is Opcode.BINARY:
                    ws.send_binary(event.data, fin=event.fin)
                elif opcode is Opcode.CONT:
                    ws.send_continuation(event.data, fin=event.fin)
                # PING (answered by the core), PONG and CLOSE need nothing more here.
            elif isinstance(event, Request):
                ws.send_response(ws.accept(event))
        self.flush()

    def eof_received(self) -> bool:
        self.ws.receive_eof()
        self.flush()
        # Returning False closes the transport once the writes are flushed.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def pause_writing(self) -> None:
        # Back-pressure: a client that stops reading stops being read from.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        writes = self.ws.data_to_send()
        if not writes:
            return
        eof = writes[-1] == SEND_EOF
        if eof:
            writes.pop()
        if len(writes) == 1:
            transport.write(writes[0])
        elif writes:
            # One write, one syscall, for a burst of echoed frames.
            transport.write(b"".join(writes))
        if eof:
            # RFC 6455 7.1.1: the server closes the TCP connection first.
            # close() flushes the buffer before closing the socket.
            transport.close()
            self.transport = None


def make_factory(compression: bool) -> Callable[[], EchoProtocol]:
    extensions = enable_server_permessage_deflate(None) if compression else None

    def factory() -> EchoProtocol:
        return EchoProtocol(extensions)

    return factory


async def serve(port: int, compression: bool, backlog: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, request_stop)
    server = await loop.create_server(make_factory(compression), HOST, port, backlog=backlog)
    bound_port = server.sockets[0].getsockname()[1]
    print(f"PORT {bound_port}", flush=True)
    async with server:
        await stop


def raise_open_files() -> None:
    """Soft limit on open files up to the hard one: one descriptor per connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0 lets the OS choose (default)")
    parser.add_argument(
        "--compression",
        action="store_true",
        help="accept permessage-deflate when a client offers it",
    )
    parser.add_argument(
        "--backlog",
        type=int,
        default=16384,
        help="listen backlog (default 16384; the kernel caps it at net.core.somaxconn)",
    )
    args = parser.parse_args(argv)
    raise_open_files()
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args.port, args.compression, args.backlog))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
