"""A small stateful chat: the server keeps the room, clients join, talk and catch up.

This mirrors the stateful server of seeds/003: the server remembers who is
connected, tells the others when someone arrives, and passes each message on
to everyone else. Here the server is a :class:`wsclient.server.Hub` with
command and query handlers that keep the room's state:

- command ``join`` ``{"room", "user"}``: remembers the user on its connection
  and announces the arrival on the room's channel;
- command ``say`` ``{"text"}``: adds a line to the room's history and fans it
  out on the channel (refused until the connection has joined);
- query ``history`` ``{"room"}``: the room's lines so far.

Alice and Bob join and talk; Carol arrives late, is refused when she speaks
before joining, joins, reads the history she missed and says hello.

Run it alone (it starts an embedded Hub with these handlers)::

    python examples/chat.py

Given a URL, it talks to a server that runs the handlers of :func:`make_hub`.
"""

from __future__ import annotations

import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio

import wsclient
from wsclient.server import Hub, HubError, RequestContext

ROOM = "lobby"


@dataclass
class Room:
    """What the server remembers of one room."""

    members: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


def channel_of(room: str) -> str:
    return f"chat:{room}"


def make_hub() -> Hub:
    """A Hub whose handlers keep the rooms' state (members and history) in memory."""
    hub = Hub()
    rooms: dict[str, Room] = {}

    def text_field(parameters: Any, name: str) -> str:
        value = parameters.get(name) if isinstance(parameters, dict) else None
        if not isinstance(value, str) or not value:
            raise HubError(f"{name!r} must be a non-empty string")
        return value

    @hub.on_command("join")
    async def join(parameters: Any, ctx: RequestContext) -> Any:
        name, user = text_field(parameters, "room"), text_field(parameters, "user")
        room = rooms.setdefault(name, Room())
        if user not in room.members:
            room.members.append(user)
        # The connection is the user from now on, as in the seed's client list.
        ctx.state.update(room=name, user=user)
        await ctx.publish(channel_of(name), {"event": "joined", "user": user})
        return {"members": room.members, "lines": len(room.history)}

    @hub.on_command("say")
    async def say(parameters: Any, ctx: RequestContext) -> Any:
        if "user" not in ctx.state:
            raise HubError("join a room first")
        name, user = ctx.state["room"], ctx.state["user"]
        room = rooms[name]
        line = {"n": len(room.history) + 1, "user": user, "text": text_field(parameters, "text")}
        room.history.append(line)
        await ctx.publish(channel_of(name), {"event": "said", **line})
        return {"n": line["n"]}

    @hub.on_query("history")
    async def history(parameters: Any, ctx: RequestContext) -> Any:
        room = rooms.get(text_field(parameters, "room"))
        return room.history if room is not None else []

    return hub


class Member:
    """One chat user: a client and its subscription to the room's channel."""

    def __init__(self, name: str, client: wsclient.Client) -> None:
        self.name = name
        self.client = client
        self.subscription: wsclient.Subscription | None = None

    async def join(self, stack: AsyncExitStack) -> None:
        """Listen to the room first, so that nothing said after joining is missed."""
        self.subscription = await stack.enter_async_context(self.client.subscribe(channel_of(ROOM)))
        await self.subscription.confirmed()
        reply = await self.client.command("join", {"room": ROOM, "user": self.name})
        print(f"{self.name} joined {ROOM!r}: members {reply['members']}, {reply['lines']} lines")

    async def say(self, text: str) -> None:
        await self.client.command("say", {"text": text})

    async def hear(self) -> None:
        """Take the room's next event and show it, unless it is this member's own."""
        assert self.subscription is not None
        event = await self.subscription.receive()
        if event.get("user") == self.name:
            return  # the seed's server sends nothing back to the sender
        if event.get("event") == "joined":
            print(f"  {self.name} sees: * {event['user']} joined")
        else:
            print(f"  {self.name} sees: {event['user']}: {event['text']}")


async def main(url: str | None = None) -> None:
    """Run the chat, on an embedded Hub unless ``url`` is given."""
    if url is None:
        async with make_hub().serve() as server:
            print(f"Started an embedded chat Hub at {server.url}")
            await chat(server.url)
    else:
        await chat(url)


async def chat(url: str) -> None:
    with anyio.fail_after(10):
        async with AsyncExitStack() as stack:
            members: list[Member] = []

            async def arrive(name: str) -> Member:
                client = await stack.enter_async_context(wsclient.connect(url))
                return Member(name, client)

            async def everyone_hears() -> None:
                for member in members:
                    await member.hear()

            for name in ("alice", "bob"):
                member = await arrive(name)
                await member.join(stack)
                members.append(member)
                await everyone_hears()

            alice, bob = members
            for speaker, text in [
                (alice, "hi bob"),
                (bob, "hi alice! is the build green?"),
                (alice, "green since this morning"),
            ]:
                print(f"{speaker.name} says: {text}")
                await speaker.say(text)
                await everyone_hears()

            carol = await arrive("carol")
            try:
                await carol.say("anyone here?")
            except wsclient.RemoteError as exc:
                print(f"carol spoke before joining and was refused: {exc}")
            await carol.join(stack)
            members.append(carol)
            await everyone_hears()

            lines = await carol.client.query("history", {"room": ROOM})
            print(f"carol read {len(lines)} lines of history:")
            for line in lines:
                print(f"  [{line['n']}] {line['user']}: {line['text']}")

            print("carol says: hello both")
            await carol.say("hello both")
            await everyone_hears()

            lines = await alice.client.query("history", {"room": ROOM})
            print(f"{ROOM!r} now holds {len(lines)} lines from {len(members)} members")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else None)
