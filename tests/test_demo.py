"""The README's demo runs start to finish with nothing else running."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wsclient._demo import run_demo

pytestmark = pytest.mark.anyio


async def test_demo_narrates_every_step() -> None:
    """The demo completes and narrates each numbered step with what it proves."""
    lines: list[str] = []
    await run_demo(lines.append)
    steps = {line.split(".", 1)[0]: line for line in lines if line[:1].isdigit()}
    assert list(steps) == [str(i) for i in range(1, 11)]
    assert "and a FaultProxy in front of it" in steps["1"]
    assert "OPEN pending=0" in steps["2"]
    assert "query('greeting') returned {'text': 'hello, client'}" in steps["3"]
    assert "raised RemoteError: unknown resource: 'weather'" in steps["3"]
    assert "1000 concurrent requests resolved, 1000 with their own answer" in steps["4"]
    assert "received {'headline': 'wsclient ships'}" in steps["5"]
    assert "subscribed to 'news' again, then flushed the 5 publishes" in steps["6"]
    assert "arrived once, in order: [0, 1, 2, 3, 4]" in steps["6"]
    assert "zombie" in steps["7"]
    assert "query('echo') returned 'still here'" in steps["7"]
    assert "3 sessions received {'headline': 'fan-out'}" in steps["8"]
    assert "over 1 connection holding 1 subscription on the Hub" in steps["8"]
    assert "60/60 replies reached the session that asked, 0 went astray, 0 leaked" in steps["9"]
    narrated = "\n".join(lines)
    assert "    state: RECONNECTING (ConnectionClosedOK), attempt 1 in" in narrated
    assert "    state: RECONNECTING (HeartbeatTimeout), attempt 1 in" in narrated
    table = "\n".join(lines[lines.index(steps["10"]) + 1 : -1])
    # The client closes before either Hub: no reconnect after the table.
    assert "state:" not in table
    for row in (
        "│ connection │ state ",
        "│ OPEN ",
        "│ connection │ attempts / reconnects ",
        "│ connection │ heartbeat probes / timeouts",
        "│ queue      │ queued while offline / sent     │ 5 / 5 ",
        "│ queue      │ dropped                         │ 0 ",
        "│ requests   │ pending                         │ 0 ",
        "│ requests   │ remote errors / timeouts / lost │ 1 / 0 / 0 ",
        "│ channels   │ server subscriptions            │ 1 ",
        "│ errors     │ reported to on_error            │ 0 ",
    ):
        assert row in table
    assert lines[-1] == "Done."


def test_demo_command_exits_zero() -> None:
    """``python -m wsclient demo`` prints every step and exits 0 well within its bound."""
    result = subprocess.run(
        [sys.executable, "-m", "wsclient", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for step in range(1, 11):
        assert f"\n{step}. " in "\n" + result.stdout
    assert result.stdout.rstrip().endswith("Done.")
    assert "Traceback" not in result.stderr
