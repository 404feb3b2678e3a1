"""The README's demo runs start to finish with nothing else running."""

from __future__ import annotations

import pytest

from wsclient._demo import run_demo

pytestmark = pytest.mark.anyio


async def test_demo_narrates_every_step() -> None:
    """The demo completes and narrates each numbered step with what it proves."""
    lines: list[str] = []
    await run_demo(lines.append)
    steps = {line.split(".", 1)[0]: line for line in lines if line[:1].isdigit()}
    assert list(steps) == [str(i) for i in range(1, 21)]
    assert "connection refused" in steps["10"]
    assert "2004 messages sent" in steps["11"]
    assert "5 messages queued meanwhile arrived once, in order: [0, 1, 2, 3, 4]" in steps["13"]
    assert "zombie" in steps["14"]
    assert "1 heartbeat timeout, 5 queued messages flushed" in steps["15"]
    assert "    state: RECONNECTING (HeartbeatTimeout), attempt 1 in" in "\n".join(lines)
    assert "returned {'text': 'hello, client'}" in steps["16"]
    assert "raised RemoteError: unknown resource: 'weather'" in steps["16"]
    assert "1000 concurrent requests resolved, 1000 with their own answer" in steps["17"]
    assert "3 sessions received {'headline': 'fan-out'}" in steps["18"]
    assert "the Hub holds 1 subscription and made 1 delivery" in steps["18"]
    assert "60/60 replies reached the session that asked, 0 went astray, 0 leaked" in steps["19"]
    assert "OPEN, 0 pending, 1061 replies, 1 remote error, 0 timeouts, 0 lost" in steps["20"]
    assert "1 server subscription, 3 local (3 subscribed), 1 delivery; 3 sessions" in steps["20"]
    assert lines[-1] == "Done."
