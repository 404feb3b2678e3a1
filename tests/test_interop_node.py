"""Interop with a Node ``ws`` pub/sub server written from seeds/004, on asyncio and trio.

The server (``tests/interop/pubsub_server.js``) speaks the seed's wire format:
``{"action": "subscribe" | "unsubscribe" | "publish", "channel", "data"}`` in,
``{"channel", "data"}`` out, with confirmations on the ``system`` channel. The
first tests drive it with raw transports; the last ones with ``wsclient.connect``.
Without Node.js every test here is skipped (see ``scripts/ensure-node``).

Ordering makes these tests free of sleeps: the server handles each
connection's messages in order, so a reply to a later message proves an
earlier one (an unsubscribe, which has no reply) was handled.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import orjson
import pytest

import wsclient
from wsclient import Transport, connect_transport
from wsclient.testing import FaultProxy

from .node_interop import node_pubsub_server, require_node

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0


@pytest.fixture
def node_installed() -> None:
    # A sync fixture: the skip happens before any event loop runs.
    require_node()


@pytest.fixture
async def server_url(node_installed: None) -> AsyncIterator[str]:
    async with node_pubsub_server() as url:
        yield url


def confirmation(channel: str) -> dict[str, Any]:
    return {"channel": "system", "data": {"type": "subscription_confirm", "channel": channel}}


async def send_json(transport: Transport, message: Any) -> None:
    await transport.send(orjson.dumps(message).decode())


async def receive_json(transport: Transport) -> Any:
    return orjson.loads(await transport.receive())


async def subscribe(transport: Transport, channel: str) -> None:
    await send_json(transport, {"action": "subscribe", "channel": channel})
    assert await receive_json(transport) == confirmation(channel)


async def publish(transport: Transport, channel: str, data: Any) -> None:
    await send_json(transport, {"action": "publish", "channel": channel, "data": data})


# The seed's protocol, with raw transports


async def test_subscribe_is_confirmed_on_the_system_channel(server_url: str) -> None:
    """A subscribe is answered with a subscription_confirm on the system channel."""
    with anyio.fail_after(TIMEOUT):
        async with await connect_transport(server_url) as transport:
            await send_json(transport, {"action": "subscribe", "channel": "prices"})
            assert await receive_json(transport) == {
                "channel": "system",
                "data": {"type": "subscription_confirm", "channel": "prices"},
            }


async def test_publish_reaches_a_subscriber_on_another_connection(server_url: str) -> None:
    """A publish is delivered to a subscriber elsewhere as {"channel", "data"}, data intact."""
    data = {"p": 1.5, "tags": ["bid", "ask"], "note": "héllo ✓", "none": None}
    with anyio.fail_after(TIMEOUT):
        async with (
            await connect_transport(server_url) as subscriber,
            await connect_transport(server_url) as publisher,
        ):
            await subscribe(subscriber, "prices")
            await publish(publisher, "prices", data)
            assert await receive_json(subscriber) == {"channel": "prices", "data": data}


async def test_unsubscribe_stops_deliveries(server_url: str) -> None:
    """After an unsubscribe the channel's publishes stop arriving; other channels go on."""
    with anyio.fail_after(TIMEOUT):
        async with (
            await connect_transport(server_url) as subscriber,
            await connect_transport(server_url) as publisher,
        ):
            await subscribe(subscriber, "prices")
            await publish(publisher, "prices", 1)
            assert await receive_json(subscriber) == {"channel": "prices", "data": 1}
            await send_json(subscriber, {"action": "unsubscribe", "channel": "prices"})
            await subscribe(subscriber, "news")  # its confirmation: the unsubscribe is done
            await publish(publisher, "prices", 2)
            await publish(publisher, "news", 3)
            assert await receive_json(subscriber) == {"channel": "news", "data": 3}


async def test_every_subscriber_receives_a_publish(server_url: str) -> None:
    """Two subscribers of a channel both get one publish from a third connection."""
    with anyio.fail_after(TIMEOUT):
        async with (
            await connect_transport(server_url) as first,
            await connect_transport(server_url) as second,
            await connect_transport(server_url) as publisher,
        ):
            await subscribe(first, "prices")
            await subscribe(second, "prices")
            await publish(publisher, "prices", {"p": 1})
            assert await receive_json(first) == {"channel": "prices", "data": {"p": 1}}
            assert await receive_json(second) == {"channel": "prices", "data": {"p": 1}}


async def test_a_subscribed_publisher_gets_its_own_message(server_url: str) -> None:
    """The server echoes a publish to its publisher when that one is subscribed too."""
    with anyio.fail_after(TIMEOUT):
        async with await connect_transport(server_url) as transport:
            await subscribe(transport, "prices")
            await publish(transport, "prices", "mine")
            assert await receive_json(transport) == {"channel": "prices", "data": "mine"}


async def test_subscribers_leaving_keep_the_channel_for_the_others(server_url: str) -> None:
    """One subscriber unsubscribing and another disconnecting leave the third subscribed."""
    with anyio.fail_after(TIMEOUT):
        async with (
            await connect_transport(server_url) as leaving,
            await connect_transport(server_url) as staying,
        ):
            await subscribe(staying, "prices")
            await subscribe(leaving, "prices")
            async with await connect_transport(server_url) as closing:
                await subscribe(closing, "prices")
            await send_json(leaving, {"action": "unsubscribe", "channel": "prices"})
            await subscribe(leaving, "news")
            await publish(leaving, "prices", 1)
            await publish(leaving, "news", 2)
            assert await receive_json(staying) == {"channel": "prices", "data": 1}
            assert await receive_json(leaving) == {"channel": "news", "data": 2}


async def test_unknown_action_is_logged_and_ignored(
    capfd: pytest.CaptureFixture[str], node_installed: None
) -> None:
    """An unknown action is logged to stderr; the connection goes on working."""
    # Started here, not by a fixture: capfd holds fd 2 only while the test runs,
    # and the server writes to the fd 2 it was started with.
    async with node_pubsub_server() as url:
        with anyio.fail_after(TIMEOUT):
            async with await connect_transport(url) as transport:
                await send_json(transport, {"action": "shout", "channel": "prices"})
                await subscribe(transport, "prices")
        # The confirmation came after the log line, written straight to a file.
        assert "Unknown action: shout" in capfd.readouterr().err


# wsclient.connect against the same server


async def test_client_subscribes_publishes_and_receives(server_url: str) -> None:
    """With the default dialect, a client's subscription is confirmed and gets its publish."""
    with anyio.fail_after(TIMEOUT):
        async with wsclient.connect(server_url) as client, client.subscribe("prices") as sub:
            await sub.confirmed()
            await client.publish("prices", {"p": 1})
            assert await sub.receive() == {"p": 1}


async def test_two_clients_both_receive_a_publish(server_url: str) -> None:
    """When one of two subscribed clients publishes, both receive the data."""
    with anyio.fail_after(TIMEOUT):
        async with (
            wsclient.connect(server_url) as first,
            wsclient.connect(server_url) as second,
            first.subscribe("prices") as first_sub,
            second.subscribe("prices") as second_sub,
        ):
            await first_sub.confirmed()
            await second_sub.confirmed()
            await first.publish("prices", {"p": 2})
            assert await first_sub.receive() == {"p": 2}
            assert await second_sub.receive() == {"p": 2}


async def test_leaving_a_subscription_unsubscribes(server_url: str) -> None:
    """Leaving client.subscribe() unsubscribes: the server stops sending that channel."""
    # The client reaches the server through a proxy that counts the bytes sent
    # to it: a large publish on the old channel must not be among them.
    padding = secrets.token_hex(2048)
    address = urlsplit(server_url)
    assert address.hostname is not None
    assert address.port is not None
    with anyio.fail_after(TIMEOUT):
        async with (
            FaultProxy((address.hostname, address.port)) as proxy,
            await connect_transport(server_url) as raw,
            wsclient.connect(proxy.url()) as client,
            client.subscribe("news") as news,
        ):
            await subscribe(raw, "prices")
            await subscribe(raw, "news")
            await news.confirmed()
            async with client.subscribe("prices") as prices:
                await prices.confirmed()
            before = proxy.statistics().bytes_downstream
            # Sent after the unsubscribe on the same connection, so handled after it.
            await client.publish("prices", {"pad": padding})
            await client.publish("news", {"n": 1})
            assert await receive_json(raw) == {"channel": "prices", "data": {"pad": padding}}
            assert await receive_json(raw) == {"channel": "news", "data": {"n": 1}}
            assert await news.receive() == {"n": 1}
            received = proxy.statistics().bytes_downstream - before
            assert received < len(padding) // 4, "the old channel's publish reached the client"
