"""The README's demo runs start to finish with nothing else running."""

from __future__ import annotations

import pytest

from wsclient._demo import run_demo

pytestmark = pytest.mark.anyio


async def test_demo_narrates_every_step() -> None:
    """The demo completes and narrates each numbered step, ending with statistics."""
    lines: list[str] = []
    await run_demo(lines.append)
    steps = {line.split(".", 1)[0]: line for line in lines if line[:1].isdigit()}
    assert list(steps) == [str(i) for i in range(1, 16)]
    assert "connection refused" in steps["10"]
    assert "2004 messages sent" in steps["11"]
    assert "5 messages queued meanwhile arrived once, in order: [0, 1, 2, 3, 4]" in steps["13"]
    assert "zombie" in steps["14"]
    assert "1 heartbeat timeout, 5 queued messages flushed" in steps["15"]
    assert "    state: RECONNECTING (HeartbeatTimeout), attempt 1 in" in "\n".join(lines)
