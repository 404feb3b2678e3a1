"""One connection shared by several tabs: sessions on one client, like a SharedWorker.

This mirrors seeds/000, where a SharedWorker holds the only WebSocket and the
browser's tabs talk through it: each tab marks what it sends with its id in
``from``, the server copies ``from`` onto its answer so the worker hands it to
that tab alone, a message without ``from`` goes to every tab, and the
connection's state is broadcast to all of them. Here the worker is one
:class:`wsclient.Client` and each tab a ``client.session()``:

- each tab asks its own ``whoami`` query and gets its own reply;
- each tab sends a ``hello`` event; the server answers it with a message
  addressed (``from``) to that tab, which reaches that tab only;
- one tab has the server ``announce`` something without ``from``: every tab
  gets it;
- the server restarts its connections: every tab sees the shared connection
  go RECONNECTING, then OPEN, and at the end CLOSING and CLOSED.

Run it alone (it starts an embedded Hub with these handlers)::

    python examples/shared_sessions.py

Given a URL, it talks to a server that runs the handlers of :func:`make_hub`,
and skips the restart, which needs the embedded server.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio

import wsclient
from wsclient.server import Hub, HubServer, RequestContext

TABS = ("tab-1", "tab-2", "tab-3")


def make_hub() -> Hub:
    """A Hub that answers tabs by their ``from`` and can speak to every tab at once."""
    hub = Hub()

    @hub.on_query("whoami")
    async def whoami(parameters: Any, ctx: RequestContext) -> Any:
        return {"tab": ctx.origin, "connection": ctx.connection_id}

    @hub.on_event("hello")
    async def hello(data: Any, ctx: RequestContext) -> None:
        # As the seed's server does: answer with the tab's own id in "from".
        await ctx.send(
            {"type": "greeting", "text": f"Hello tab id: {ctx.origin}", "from": ctx.origin}
        )

    @hub.on_command("announce")
    async def announce(parameters: Any, ctx: RequestContext) -> Any:
        # No "from": the message is for every tab on the connection.
        text = parameters.get("text") if isinstance(parameters, dict) else None
        await ctx.send({"type": "announcement", "text": text})
        return {"announced": True}

    return hub


async def main(url: str | None = None) -> None:
    """Share one connection among the tabs, on an embedded Hub unless ``url`` is given."""
    if url is None:
        async with make_hub().serve() as server:
            print(f"Started an embedded Hub at {server.url}")
            await share(server.url, server)
    else:
        await share(url, None)


async def share(url: str, server: HubServer | None) -> None:
    states: dict[str, list[str]] = {tab: [] for tab in TABS}
    reopened = anyio.Event()
    backoff = wsclient.Backoff(initial=0.05, maximum=0.5)
    with anyio.fail_after(10):
        async with wsclient.connect(url, backoff=backoff) as client:
            tabs = [client.session(tab) for tab in TABS]
            for tab in tabs:

                def on_state(change: wsclient.StateChange, tab_id: str = tab.id) -> None:
                    states[tab_id].append(change.state.name)
                    if change.state is wsclient.ConnectionState.OPEN:
                        reopened.set()

                tab.on_state(on_state)
            print(f"{len(tabs)} tabs share one client: {client!r}")

            replies: dict[str, Any] = {}

            async def ask(tab: wsclient.Session) -> None:
                replies[tab.id] = await tab.query("whoami")

            async with anyio.create_task_group() as tg:
                for tab in tabs:
                    tg.start_soon(ask, tab)
            for tab in tabs:
                print(f"{tab.id} asked whoami and got the reply for {replies[tab.id]['tab']}")
            connections = {reply["connection"] for reply in replies.values()}
            print(f"The server saw {len(connections)} connection for {len(tabs)} tabs")

            for tab in tabs:
                await tab.publish_event("hello")
            for tab in tabs:
                greeting = await tab.receive()
                print(f"{tab.id} received: {greeting['text']}")

            await tabs[1].command("announce", {"text": "maintenance at noon"})
            for tab in tabs:
                # A greeting sent to the wrong tab would be read here instead.
                announcement = await tab.receive()
                print(f"{tab.id} received the broadcast: {announcement['text']}")

            if server is None:
                print("(no restart: it needs the embedded server)")
            else:
                await server.close_connections(1012, "service restart")
                await reopened.wait()
                reply = await tabs[2].query("whoami")
                fresh = reply["connection"] not in connections
                print(f"After the restart {tabs[2].id} asked again, on a new connection: {fresh}")

    for tab_id, seen in states.items():
        print(f"{tab_id} saw the connection go: {' -> '.join(seen)}")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else None)
