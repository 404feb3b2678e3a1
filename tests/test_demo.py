"""The README's demo runs start to finish with nothing else running."""

from __future__ import annotations

import pytest

from wsclient._demo import run_demo

pytestmark = pytest.mark.anyio


async def test_demo_narrates_every_step() -> None:
    """The demo completes and narrates each numbered step, ending with statistics."""
    lines: list[str] = []
    await run_demo(lines.append)
    numbered = [line.split(".", 1)[0] for line in lines if line[:1].isdigit()]
    assert numbered == [str(i) for i in range(1, 12)]
    assert "connection refused" in lines[9]
    assert "2004 messages sent" in lines[10]
