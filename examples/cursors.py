"""Cursor sharing: several users see each other's pointers move, through one channel.

This mirrors the cursor-sharing demo of seeds/002: every user sends its pointer
position and every connected user is shown everyone else's cursor, each in its
own colour. In the seed the server stamps each message with the sender's id and
colour and sends it to all connections. Here the channel does the fan-out: each
client subscribes to ``cursors``, publishes its own position (stamped with its
name and colour) and keeps a "screen" of the other users' cursors, skipping its
own echo.

Run it alone (it starts an embedded Hub) or against any server that speaks the
default dialect, such as ``wsclient serve``::

    python examples/cursors.py
    python examples/cursors.py ws://127.0.0.1:8765/
"""

from __future__ import annotations

import sys
from contextlib import AsyncExitStack
from typing import Any

import anyio

import wsclient
from wsclient.server import Hub

CHANNEL = "cursors"
#: Each user and the hue of its cursor (the seed draws a random one).
USERS = {"ana": 20, "ben": 140, "cy": 260}
#: How many times each user moves its pointer.
MOVES = 5


def position(user: str, step: int) -> tuple[int, int]:
    """Where ``user``'s pointer is after ``step`` moves: each user draws its own line."""
    index = list(USERS).index(user)
    return 100 + 200 * index + 10 * step, 50 + (index + 1) * 15 * step


async def main(url: str | None = None) -> None:
    """Share cursors among the users, on an embedded Hub unless ``url`` is given."""
    if url is None:
        async with Hub().serve() as server:
            print(f"Started an embedded Hub at {server.url}")
            await share_cursors(server.url)
    else:
        await share_cursors(url)


async def share_cursors(url: str) -> None:
    with anyio.fail_after(10):
        async with AsyncExitStack() as stack:
            clients: dict[str, wsclient.Client] = {}
            subscriptions: dict[str, wsclient.Subscription] = {}
            for user in USERS:
                client = await stack.enter_async_context(wsclient.connect(url))
                subscription = await stack.enter_async_context(client.subscribe(CHANNEL))
                await subscription.confirmed()
                clients[user], subscriptions[user] = client, subscription
            print(f"{', '.join(USERS)} connected and subscribed to {CHANNEL!r}")

            screens: dict[str, dict[str, dict[str, Any]]] = {user: {} for user in USERS}
            seen = dict.fromkeys(USERS, 0)
            async with anyio.create_task_group() as tg:
                for user in USERS:
                    tg.start_soon(watch, user, subscriptions[user], screens[user], seen)
                # The pointers move in turns, the way several mice would.
                for step in range(MOVES):
                    for user, hue in USERS.items():
                        x, y = position(user, step)
                        cursor = {"sender": user, "color": hue, "x": x, "y": y, "step": step}
                        await clients[user].publish(CHANNEL, cursor)
            print(f"Each user moved its pointer {MOVES} times")

            for user, screen in screens.items():
                cursors = ", ".join(
                    f"{other} at ({c['x']}, {c['y']}) in hue {c['color']}"
                    for other, c in sorted(screen.items())
                )
                print(f"{user}'s screen: {cursors} ({seen[user]} moves seen)")
            deliveries = clients[next(iter(USERS))].statistics().channels.deliveries
            print(f"Each client received {deliveries} deliveries, its own {MOVES} echoes included")


async def watch(
    user: str,
    subscription: wsclient.Subscription,
    screen: dict[str, dict[str, Any]],
    seen: dict[str, int],
) -> None:
    """Draw the other users' cursors until every user, this one too, made its last move."""
    last_steps: dict[str, int] = {}
    async for cursor in subscription:
        sender = cursor.get("sender") if isinstance(cursor, dict) else None
        if sender not in USERS:
            continue  # someone else's traffic on a shared server
        last_steps[sender] = cursor["step"]
        if sender != user:  # our own echo moves nothing on our screen
            screen[sender] = cursor
            seen[user] += 1
        if all(last_steps.get(other) == MOVES - 1 for other in USERS):
            return


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else None)
