"""What ``wsclient bench`` counts and how it shows it.

Pure pieces first, tested without an event loop: nearest-rank percentiles,
the :class:`Tally` of latencies, messages and errors, the :class:`Meter` of
the phase under way. Then what is drawn: the live progress bar, the results
table, the JSON. rich is imported only when a bar or a table is drawn (the
``cli`` extra); ``--json`` needs nothing but the standard library.
"""

from __future__ import annotations

import array
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio

__all__ = [
    "Meter",
    "Tally",
    "cells",
    "latency_summary",
    "percentile",
    "rate",
    "report",
    "say",
    "show_progress",
]

# Error messages kept as examples in the report; the count has them all.
ERROR_SAMPLES = 5
# Latencies kept for the percentiles: 8 MB, and a sort of a second or so.
MAX_SAMPLES = 1_000_000


def percentile(ordered: Sequence[int], q: float) -> int:
    """The nearest-rank ``q`` percentile (0 < q <= 1) of already sorted, non-empty data.

    The smallest value with at least ``q`` of the data at or below it: always
    a value that was measured, never an interpolation between two.
    """
    index = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def latency_summary(samples_ns: Sequence[int]) -> dict[str, float | int] | None:
    """count, min, mean, p50, p90, p99 and max of ``samples_ns``, in µs; None without samples."""
    if not samples_ns:
        return None
    ordered = sorted(samples_ns)
    return {
        "count": len(ordered),
        "min": _us(ordered[0]),
        "mean": _us(sum(ordered) / len(ordered)),
        "p50": _us(percentile(ordered, 0.50)),
        "p90": _us(percentile(ordered, 0.90)),
        "p99": _us(percentile(ordered, 0.99)),
        "max": _us(ordered[-1]),
    }


def _us(ns: float) -> float:
    return round(ns / 1000, 1)


def rate(count: float, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


class Tally:
    """What a run counted: latency samples, completed messages, errors.

    Memory is bounded: past ``capacity`` samples, a uniform random sample of
    them is kept (reservoir sampling), so percentiles stay unbiased estimates
    while the count, minimum, mean and maximum stay exact.
    """

    def __init__(self, capacity: int = MAX_SAMPLES) -> None:
        self.capacity = capacity
        self.errors = 0
        self.error_samples: list[str] = []
        self.restart()

    def restart(self) -> None:
        """Forget the latencies and messages counted so far (the warm-up's); errors stay."""
        # Signed 64-bit integers: 8 bytes a sample, not a Python int's 28 and its pointer.
        self.samples = array.array("q")
        self.messages = 0
        self._exact: list[int] | None = None  # min, max, sum once sampling began

    def record(self, latency_ns: int) -> None:
        self.messages += 1
        if len(self.samples) < self.capacity:
            self.samples.append(latency_ns)
        else:
            self._sample(latency_ns)

    def _sample(self, latency_ns: int) -> None:
        exact = self._exact
        if exact is None:
            exact = self._exact = [min(self.samples), max(self.samples), sum(self.samples)]
        exact[0] = min(exact[0], latency_ns)
        exact[1] = max(exact[1], latency_ns)
        exact[2] += latency_ns
        slot = random.randrange(self.messages)  # Algorithm R: keep it with p = capacity / n
        if slot < self.capacity:
            self.samples[slot] = latency_ns

    def latency(self) -> dict[str, float | int] | None:
        """The summary of every latency recorded (percentiles from the sample, if sampled)."""
        summary = latency_summary(self.samples)
        if summary is not None and self._exact is not None:
            low, high, total = self._exact
            summary.update(
                count=self.messages,
                min=_us(low),
                mean=_us(total / self.messages),
                max=_us(high),
            )
        return summary

    def error(self, what: BaseException | str, count: int = 1) -> None:
        """Count ``count`` errors of one kind; keep its message as a sample if it is new."""
        self.errors += count
        text = what if isinstance(what, str) else _describe(what)
        if len(self.error_samples) < ERROR_SAMPLES and text not in self.error_samples:
            self.error_samples.append(text)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Meter:
    """What the progress bar shows: a phase, and how far it is (counted, or timed)."""

    def __init__(self) -> None:
        self.phase = "starting"
        self.total: float | None = None
        self.unit = ""
        self._done = 0.0
        self._since: float | None = None

    def count(self, phase: str, total: int) -> None:
        """Start a phase of ``total`` steps, advanced by :meth:`advance`."""
        self.phase, self.total, self.unit, self._done, self._since = phase, total, "", 0.0, None

    def time(self, phase: str, seconds: float) -> None:
        """Start a phase that lasts ``seconds``: it advances by itself."""
        self.phase, self.total, self.unit = phase, seconds, "s"
        self._since = time.perf_counter()

    def advance(self) -> None:
        self._done += 1

    @property
    def completed(self) -> float:
        if self._since is None:
            return self._done
        return min(self.total or 0.0, time.perf_counter() - self._since)


# What is shown

# A redraw takes about a millisecond of the event loop (rich, on a 2-core VM):
# five a second cost the measured load under 0.5% of its time.
PROGRESS_INTERVAL = 0.2
CAPTIONS = {
    "rtt": "latency: request sent to its reply received",
    "throughput": "latency: message sent to its reply received, pipeline wait included",
    "fanout": "latency: publish to delivery, at each subscriber",
    "connections": "latency: start to OPEN, per connection; memory: growth of this process",
}
BYTES_CAPTION = "MB/s: WebSocket bytes both ways, frame headers included"


def say(message: str) -> None:
    print(f"wsclient bench: {message}", file=sys.stderr)


async def show_progress(meter: Meter, tally: Tally) -> None:
    """Redraw a bar on stderr until cancelled: the phase, how far it is, messages, errors."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description:<13}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    # No refresh thread: this task redraws, so nothing else competes for the GIL.
    with Progress(
        *columns, console=Console(stderr=True), transient=True, auto_refresh=False
    ) as progress:
        task = progress.add_task(meter.phase, total=None, detail="")
        while True:
            done, total = meter.completed, meter.total or None
            of = "" if total is None else f"{done:.0f}/{total:g}  "
            if meter.unit and total is not None:
                of = f"{done:.1f}/{total:g} s  "
            detail = f"{of}{tally.messages:,} msgs  {tally.errors} errors"
            progress.update(
                task, description=meter.phase, total=total, completed=done, detail=detail
            )
            progress.refresh()
            await anyio.sleep(PROGRESS_INTERVAL)


def report(document: dict[str, Any], as_json: bool) -> None:
    """The error samples on stderr, then the document as JSON or a table on stdout."""
    for sample in document["error_samples"]:
        say(f"error: {sample}")
    if as_json:
        print(json.dumps(document, indent=2))
        return
    from rich.console import Console
    from rich.measure import Measurement

    console = Console()
    table = _table(document)
    if not console.is_terminal:
        # A file or a pipe has no width: take the table's, not rich's default 80 columns.
        width = Measurement.get(console, console.options.update_width(1000), table).maximum
        console = Console(width=max(width, 40))
    console.print(table)


def _table(document: dict[str, Any]) -> Any:
    from rich import box
    from rich.table import Table

    scenario = document["scenario"]
    size = f" · {document['message_size']} B" if document["message_size"] else ""
    window = f" · window {document['window']}" if document["window"] else ""
    duration = f"{document['duration']:g} s"
    if scenario == "connections":
        duration = f"held open {duration}"
    elif document["warmup"]:
        duration += f" measured after a {document['warmup']:g} s warm-up"
    caption = CAPTIONS[scenario]
    if scenario != "connections":
        caption += f"\n{BYTES_CAPTION}"
    table = Table(
        title=f"{scenario} · {document['url']} · {document['server']}\n"
        f"{document['backend']} · client: {document['client']} · "
        f"{document['connections']} conn{size}{window}\n{duration}",
        caption=caption,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    row = [*cells(scenario, document["results"]), ("errors", str(document["errors"]))]
    for header, _ in row:
        table.add_column(header, justify="right", no_wrap=True)
    table.add_row(*(value for _, value in row))
    return table


def cells(scenario: str, results: dict[str, Any]) -> list[tuple[str, str]]:
    """(header, value) pairs of the table's row, before the errors."""
    latency = results.get("latency_us") or {}
    unit, scale = _latency_unit(latency.get("p50"))
    percentiles = [
        (f"{q} {unit}", _figure(latency[q] / scale) if latency else "n/a")
        for q in ("p50", "p90", "p99", "max")
    ]
    if scenario == "connections":
        memory = results["memory_per_connection_bytes"]
        return [
            ("opened", f"{results['opened']:,}"),
            ("all OPEN", f"{results['time_to_all_open_s']:.3f} s"),
            ("opens/s", f"{results['opens_per_s']:,.0f}"),
            (
                f"mem/conn ({results['memory_method'] or 'n/a'})",
                "n/a" if memory is None else f"{memory / 1024:,.1f} KiB",
            ),
            *percentiles[:3],  # the max is "all OPEN"
        ]
    head = [("messages", f"{results['messages']:,}")]
    if scenario == "fanout":
        head = [("sent", f"{results['published']:,}"), ("delivered", head[0][1])]
    return [
        *head,
        ("msgs/s", f"{results['msgs_per_s']:,.0f}"),
        ("MB/s", f"{results['mb_per_s']:.2f}"),
        *percentiles,
    ]


def _latency_unit(p50_us: float | None) -> tuple[str, float]:
    """One unit for a row's latencies, chosen by its median, named in the headers."""
    if p50_us is None or p50_us < 1000:
        return "µs", 1.0
    if p50_us < 1_000_000:
        return "ms", 1000.0
    return "s", 1_000_000.0


def _figure(value: float) -> str:
    """Three significant digits or so: 85.9, 7.00, 135, 12,345."""
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"
