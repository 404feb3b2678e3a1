"""The examples in examples/ run start to finish on an embedded Hub and narrate what happened.

Each example is imported from its file and its ``main()`` awaited with no URL,
on asyncio and on trio; the assertions pick the narration lines that prove the
behaviour happened, not just that the example returned.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import anyio
import pytest

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` by path, as a module of its own."""
    spec = importlib.util.spec_from_file_location(
        f"wsclient_example_{name}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


async def run(name: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Run the example's ``main()`` with a deadline; return the lines it printed."""
    module = load(name)
    with anyio.fail_after(20):
        await module.main()
    return capsys.readouterr().out.splitlines()


async def test_cursors_each_user_sees_the_others_final_positions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every user's screen shows the other users' last positions, and not its own cursor."""
    cursors = load("cursors")
    lines = await run("cursors", capsys)
    assert lines[0].startswith("Started an embedded Hub at ws://127.0.0.1:")
    users = list(cursors.USERS)
    final = cursors.MOVES - 1
    screens = [line for line in lines if "'s screen: " in line]
    expected = []
    for user in users:
        others = ", ".join(
            f"{other} at {cursors.position(other, final)} in hue {cursors.USERS[other]}"
            for other in users
            if other != user
        )
        moves = cursors.MOVES * (len(users) - 1)
        expected.append(f"{user}'s screen: {others} ({moves} moves seen)")
    assert screens == expected
    deliveries = cursors.MOVES * len(users)
    assert lines[-1] == (
        f"Each client received {deliveries} deliveries, its own {cursors.MOVES} echoes included"
    )


async def test_chat_late_joiner_reads_the_history(capsys: pytest.CaptureFixture[str]) -> None:
    """The Hub keeps the room: notices and lines reach the others, and Carol catches up."""
    lines = await run("chat", capsys)
    history = [
        "  [1] alice: hi bob",
        "  [2] bob: hi alice! is the build green?",
        "  [3] alice: green since this morning",
    ]
    start = lines.index("carol read 3 lines of history:")
    assert lines[start + 1 : start + 4] == history
    assert "carol spoke before joining and was refused: join a room first" in lines
    assert "carol joined 'lobby': members ['alice', 'bob', 'carol'], 3 lines" in lines
    heard = [line for line in lines if " sees: " in line]
    assert heard == [
        "  alice sees: * bob joined",
        "  bob sees: alice: hi bob",
        "  alice sees: bob: hi alice! is the build green?",
        "  bob sees: alice: green since this morning",
        "  alice sees: * carol joined",
        "  bob sees: * carol joined",
        "  alice sees: carol: hello both",
        "  bob sees: carol: hello both",
    ]
    assert lines[-1] == "'lobby' now holds 4 lines from 3 members"


async def test_shared_sessions_route_by_from_and_share_state(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each tab gets its own reply and greeting, all get the broadcast and the state changes."""
    lines = await run("shared_sessions", capsys)
    tabs = ["tab-1", "tab-2", "tab-3"]
    for tab in tabs:
        assert f"{tab} asked whoami and got the reply for {tab}" in lines
        assert f"{tab} received: Hello tab id: {tab}" in lines
        assert f"{tab} received the broadcast: maintenance at noon" in lines
        assert f"{tab} saw the connection go: RECONNECTING -> OPEN -> CLOSING -> CLOSED" in lines
    assert "The server saw 1 connection for 3 tabs" in lines
    assert "After the restart tab-3 asked again, on a new connection: True" in lines
