"""``wsclient demo``: the SDK at work against an embedded Hub, narrated.

It needs nothing else running: it starts a Hub on an OS-chosen loopback port,
connects a transport to it and shows, step by step, what a backend sees.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import orjson

from ._codec import JsonCodec
from ._exceptions import ConnectError, ConnectionClosedError
from ._transport import WebSocketTransport, connect_transport

__all__ = ["run_demo"]


async def run_demo(say: Callable[[str], None] = print) -> None:
    """Run the demo, narrating through ``say``."""
    from .server import Hub

    codec = JsonCodec()
    hub = Hub()

    @hub.on_query("greeting")
    async def greeting(parameters: object, ctx: object) -> object:
        name = parameters.get("name", "world") if isinstance(parameters, dict) else "world"
        return {"text": f"hello, {name}"}

    async with hub.serve("127.0.0.1", 0) as server:
        say(f"1. Started an embedded Hub at {server.url}")
        async with await connect_transport(server.url) as transport:
            say(f"2. Connected: {transport!r}, compression {_extensions(transport)}")

            started = time.perf_counter()
            await transport.send(codec.encode(_query(1, "echo", {"n": 42})), text=True)
            reply = codec.decode(await transport.receive())
            elapsed = (time.perf_counter() - started) * 1e6
            say(f"3. Request/response: echo query answered {reply['payload']} in {elapsed:.0f} µs")

            await transport.send(codec.encode(_query(2, "greeting", {"name": "demo"})), text=True)
            reply = codec.decode(await transport.receive())
            say(f"4. A handler registered with @hub.on_query replied {reply['payload']}")

            await transport.send(codec.encode({"action": "subscribe", "channel": "news"}))
            confirm = codec.decode(await transport.receive())
            say(f"5. Subscribed to 'news': the Hub confirmed with {_compact(confirm)}")
            await transport.send(
                codec.encode({"action": "publish", "channel": "news", "data": {"headline": "hi"}})
            )
            delivery = codec.decode(await transport.receive())
            say(f"6. Published on 'news' and received the delivery {_compact(delivery)}")

            rtts = [await transport.ping() for _ in range(5)]
            say(f"7. Protocol pings: median round trip {sorted(rtts)[2] * 1e6:.0f} µs")

            count = 2000
            started = time.perf_counter()
            async with anyio.create_task_group() as tg:

                async def drain() -> None:
                    for _ in range(count):
                        await transport.receive()

                tg.start_soon(drain)
                for i in range(count):
                    await transport.send(codec.encode(_query(100 + i, "echo", i)), text=True)
            rate = count / (time.perf_counter() - started)
            say(f"8. Pipelined {count} requests through the Hub: {rate:,.0f} round trips/s")

            await server.abort_connections()
            try:
                await transport.receive()
            except ConnectionClosedError as exc:
                say(f"9. The server dropped the TCP connection; the client saw: {exc}")

    try:
        # The Hub is gone now: its port refuses connections.
        await connect_transport(server.url, open_timeout=5)
    except ConnectError as exc:
        say(f"10. After the Hub stopped, connecting failed cleanly: {exc}")

    stats = transport.statistics()
    say(
        f"11. Statistics: {stats.messages_sent} messages sent, "
        f"{stats.messages_received} received, {stats.bytes_sent:,} bytes out, "
        f"{stats.bytes_received:,} bytes in, {stats.pings_sent} pings"
    )
    say("Done. Reconnection, heartbeats and queued sends arrive with the resilience layer.")


def _query(request_id: int, resource: str, parameters: object) -> dict[str, object]:
    return {
        "id": request_id,
        "type": "query",
        "timestamp": int(time.time() * 1000),
        "payload": {"resource": resource, "parameters": parameters},
    }


def _compact(message: object) -> str:
    return orjson.dumps(message).decode()


def _extensions(transport: WebSocketTransport) -> str:
    names = [extension.name for extension in transport._protocol.extensions]
    return ", ".join(names) if names else "off"
