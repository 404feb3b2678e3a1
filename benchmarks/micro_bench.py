"""CPU cost of WebSocketTransport's own code per message, with no network.

Drives a connected ``WebSocketTransport`` over a fake link that drops what is
written and feeds back server frames made in advance, so what is timed is the
transport (and websockets' Sans-I/O protocol under it), not the kernel or the
echo server. Steadier than ``transport_bench.py`` on a busy machine; use it to
compare two versions of the transport, then confirm with the real benchmark.

    python benchmarks/micro_bench.py [--size 100] [--messages 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from wsclient._links import Link
from wsclient._transport import WebSocketTransport

HANDSHAKE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


class NullLink(Link):
    """Writes go nowhere; reads never block (the benchmark feeds bytes itself)."""

    def __init__(self) -> None:
        self.written = 0

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        if not condition():
            raise RuntimeError("the benchmark should have fed a message first")

    def wake(self) -> None:
        pass

    @property
    def backlogged(self) -> bool:
        return False

    def queue(self, chunks: list[bytes], *, control: bool) -> None:
        self.written += len(chunks)

    async def flush(self, *, control_only: bool = False) -> None:
        pass

    def clock(self) -> float:
        return time.perf_counter()

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    async def abort(self) -> None:
        pass


def open_transport() -> tuple[WebSocketTransport, NullLink]:
    """A transport whose opening handshake succeeded, on a NullLink."""
    protocol = ClientProtocol(parse_uri("ws://bench.invalid/"))
    protocol.debug = False
    request = protocol.connect()
    protocol.send_request(request)
    protocol.data_to_send()
    transport = WebSocketTransport(
        protocol, display_url="ws://bench.invalid/", max_queue=2**30, close_timeout=1.0
    )
    link = NullLink()
    transport._link = link
    from websockets.utils import accept_key

    response = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(request.headers['Sec-WebSocket-Key'])}\r\n\r\n"
    )
    transport.bytes_received(response.encode())
    assert transport.state.name == "OPEN", transport.state
    return transport, link


async def bench_send(payload: str, count: int) -> float:
    transport, _ = open_transport()
    send = transport.send
    start = time.process_time()
    for _ in range(count):
        await send(payload)
    return (time.process_time() - start) / count


async def bench_receive(payload: str, count: int, batch: int) -> float:
    """``batch`` frames per chunk of bytes received, as when the peer writes a burst."""
    transport, _ = open_transport()
    frame = Frame(Opcode.TEXT, payload.encode()).serialize(mask=False, extensions=[])
    chunk = frame * batch
    feed, receive = transport.bytes_received, transport.receive
    start = time.process_time()
    for _ in range(count // batch):
        feed(chunk)
        for _ in range(batch):
            await receive()
    return (time.process_time() - start) / (count // batch * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100, help="payload bytes (default 100)")
    parser.add_argument("--messages", type=int, default=200_000, help="per measurement")
    parser.add_argument("--repeat", type=int, default=5, help="median over this many")
    args = parser.parse_args()
    payload = "x" * args.size
    cases: dict[str, Callable[[], float]] = {
        "send": lambda: asyncio.run(bench_send(payload, args.messages)),
        "receive 1/chunk": lambda: asyncio.run(bench_receive(payload, args.messages, 1)),
        "receive 50/chunk": lambda: asyncio.run(bench_receive(payload, args.messages, 50)),
    }
    for name, case in cases.items():
        samples = [case() * 1e6 for _ in range(args.repeat)]
        print(f"{name:18} {statistics.median(samples):6.3f} CPU µs/msg (min {min(samples):.3f})")


if __name__ == "__main__":
    main()
