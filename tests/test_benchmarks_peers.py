"""benchmarks/peers.py: its command line starts, and its summary computes what the docs show.

The benchmark itself is never run here (benchmarks are not timed assertions);
these check the runner's imports and its arithmetic on made-up samples.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SIBLINGS = ("peers", "peer_clients", "peer_report", "common", "echo_process")


@pytest.fixture
def peers(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The runner imported as its script would be, its sibling modules forgotten afterwards."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import peers

    yield peers
    for name in SIBLINGS:
        sys.modules.pop(name, None)


def sample(key: str, rep: int, **fields: Any) -> dict[str, Any]:
    name, _, loop = key.partition("-")
    row = {"kind": "run", "key": key, "peer": name, "loop": loop, "deflate": False, "rep": rep}
    return row | fields


def test_list_prints_the_reference_row() -> None:
    """`peers.py --list` imports every module it needs and lists its rows, the reference too."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "peers.py"), "--list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = done.stdout.split()
    assert "websockets-asyncio" in rows
    assert "client-asyncio" in rows


def test_ratios_are_medians_of_per_repetition_ratios(peers: ModuleType) -> None:
    """A ratio is taken within each repetition, then the median; failed runs count, unused."""
    samples = [
        sample("websockets-asyncio", 1, p50_us=100.0, msgs_per_s=1000.0),
        sample("client-asyncio", 1, p50_us=80.0, msgs_per_s=2500.0),
        sample("websockets-asyncio", 2, p50_us=200.0, msgs_per_s=1000.0),
        sample("client-asyncio", 2, p50_us=100.0, msgs_per_s=1500.0),
        sample("client-asyncio", 3, error="TimeoutExpired()"),
    ]
    summary = peers.summarize(samples)
    client = next(row for row in summary["rows"] if row["key"] == "client-asyncio")
    # Per repetition 0.8 and 0.5: their median, not the ratio of medians (90 / 150 = 0.6).
    assert client["p50_us_ratio"] == pytest.approx(0.65)
    assert client["msgs_per_s_ratio"] == pytest.approx(2.0)
    assert (client["reps"], client["errors"]) == (2, 1)
    verdicts = {t["target"]: (t["shown"], t["verdict"]) for t in summary["targets"]}
    assert verdicts["Client.request round trip p50 / websockets send+recv p50 (asyncio)"] == (
        "0.65",
        "PASS",
    )
    assert verdicts["pipelined Client.send + receive, msgs/s / websockets' (asyncio, 100 B)"] == (
        "2.00",
        "PASS",
    )
    assert verdicts["Client round trip p50 on trio / on asyncio"] == ("not run", "not run")


def test_targets_miss_when_the_measure_falls_short(peers: ModuleType) -> None:
    """A slower Client, heavier idle connections and trio too slow give MISS."""
    samples = [
        sample("websockets-asyncio", 1, p50_us=100.0, msgs_per_s=1000.0),
        sample("client-asyncio", 1, p50_us=95.0, msgs_per_s=1900.0),
        sample("client-trio", 1, p50_us=190.0, msgs_per_s=1000.0),
        {**sample("client-asyncio", 1, rss_kib_per_conn=9.0), "kind": "memory"},
    ]
    verdicts = {t["target"]: t["verdict"] for t in peers.summarize(samples)["targets"]}
    assert set(verdicts.values()) == {"MISS", "not run"}
    assert verdicts["Client round trip p50 on trio / on asyncio"] == "MISS"
    assert verdicts["Client pipelined msgs/s on asyncio / on trio"] == "MISS"
    assert verdicts["KiB of RSS per idle heartbeating Client, 1,000 in one process (asyncio)"] == (
        "MISS"
    )
