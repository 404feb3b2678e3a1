"""What the heartbeat of many idle connections costs in one process.

Starts ``echo_server.py`` as a subprocess on 127.0.0.1, then, for each event
loop (asyncio, uvloop, trio), runs a fresh subprocess of this script that opens
N ``wsclient.ReconnectingTransport`` connections with a short heartbeat and
keeps them idle, so that each one is probed about duration / interval times.
It reports the tasks per connection, the memory per connection (tracemalloc
and RSS), the time to open them all, the probes sent, the heartbeat timeouts
(0 on a healthy server) and the client CPU time per probe.

tracemalloc runs in a second subprocess of its own that only opens and closes
the connections: tracing every allocation would inflate the RSS, the open time
and the CPU time measured in the main one.

Run by hand, never by the test suite::

    python benchmarks/heartbeat_bench.py
    python benchmarks/heartbeat_bench.py --connections 200 --duration 5 --loop trio
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import signal
import sys
import time
import traceback
import tracemalloc
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from common import (
    WORKER_ERRORS,
    Closing,
    HandOver,
    add_loop_option,
    available_loops,
    connect_batch,
    environment,
    markdown_table,
    pinning,
    positive,
    put_median,
    raise_file_limit,
    rss_kib,
    run_worker,
    settle,
    task_counter,
    traced_bytes,
    worker_main,
    write_json,
)
from echo_process import start_server, stop_server

HOST = "127.0.0.1"
# Files tracemalloc's report names, per connection.
TOP_FILES = 8


# The worker: one event loop, N connections, in a subprocess of its own.


async def hold_connections(args: argparse.Namespace) -> dict[str, Any]:
    """Open N connections, keep them idle for the duration, close them; measure it all."""
    import anyio

    import wsclient

    count_tasks = task_counter(args.loop)
    heartbeat = wsclient.Heartbeat(interval=args.interval, timeout=args.timeout)
    fallback = wsclient.WebSocketFactory(args.url, compression=None)
    n = args.connections
    result: dict[str, Any] = {"loop": args.loop, "connections": n}

    close_errors: list[str] = []
    with anyio.fail_after(args.time_limit):
        # A first connection, opened and closed, so that what any first use
        # costs (lazy imports, caches) isn't charged to the N.
        warmup = wsclient.ReconnectingTransport(fallback, heartbeat=heartbeat)
        async with Closing(warmup, close_errors):
            await warmup.ping()
        await settle()
        gc.collect()
        result["tasks_before"] = count_tasks()
        rss_before = rss_kib()
        before = None
        if args.tracemalloc:
            tracemalloc.start()
            before = traced_bytes(tracemalloc.take_snapshot())

        connections: list[wsclient.ReconnectingTransport] = []
        async with AsyncExitStack() as stack:
            started = time.perf_counter()
            connect_s = 0.0
            for first in range(0, n, args.batch):
                connecting = time.perf_counter()
                transports = await connect_batch(args.url, min(args.batch, n - first))
                connect_s += time.perf_counter() - connecting
                for transport in transports:
                    connection = wsclient.ReconnectingTransport(
                        HandOver(transport, fallback), heartbeat=heartbeat
                    )
                    connections.append(
                        await stack.enter_async_context(Closing(connection, close_errors))
                    )
            result["open_s"] = time.perf_counter() - started
            result["connect_s"] = connect_s
            await settle()
            gc.collect()

            if before is not None:
                after = traced_bytes(tracemalloc.take_snapshot())
                tracemalloc.stop()
                diff = after.compare_to(before, "filename")
                result["tracemalloc_kib_per_connection"] = (
                    sum(stat.size_diff for stat in diff) / 1024 / n
                )
                result["tracemalloc_top"] = [
                    [stat.traceback[0].filename, stat.size_diff / 1024 / n]
                    for stat in diff[:TOP_FILES]
                ]
                del before, after, diff
            else:
                result["tasks_after"] = count_tasks()
                result["tasks_per_connection"] = (
                    result["tasks_after"] - result["tasks_before"]
                ) / n
                rss_after = rss_kib()
                if rss_before is not None and rss_after is not None:
                    result["rss_kib_per_connection"] = (rss_after - rss_before) / n

                probes_before = sum(c.statistics().heartbeat_probes for c in connections)
                cpu = time.process_time()
                wall = time.perf_counter()
                await anyio.sleep(args.duration)
                idle_cpu_s = time.process_time() - cpu
                idle_s = time.perf_counter() - wall
                stats = [c.statistics() for c in connections]
                probes = sum(s.heartbeat_probes for s in stats) - probes_before
                result.update(
                    idle_s=idle_s,
                    idle_cpu_s=idle_cpu_s,
                    cpu_percent=100 * idle_cpu_s / idle_s,
                    probes=probes,
                    expected_probes=n * args.duration / args.interval,
                    cpu_us_per_probe=idle_cpu_s * 1e6 / probes if probes else None,
                    timeouts=sum(s.heartbeat_timeouts for s in stats),
                    grace_periods=sum(s.heartbeat_grace_periods for s in stats),
                    reconnects=sum(s.reconnects for s in stats),
                    not_open=sum(s.state is not wsclient.ConnectionState.OPEN for s in stats),
                )
            closing = time.perf_counter()
        result["close_s"] = time.perf_counter() - closing
        result["close_errors"] = len(close_errors)
        result["close_error_examples"] = sorted(set(close_errors))[:5]
    return result


# The runner: limits, the echo server, one worker per loop and repetition.


def worker_options(args: argparse.Namespace, loop: str, url: str, traced: bool) -> list[object]:
    options: list[object] = [
        "--url",
        url,
        "--loop",
        loop,
        "--connections",
        args.connections,
        "--interval",
        args.interval,
        "--timeout",
        args.timeout,
        "--duration",
        args.duration,
        "--batch",
        args.batch,
        "--time-limit",
        args.time_limit,
    ]
    if traced:
        options.append("--tracemalloc")
    if args.no_pin:
        options.append("--no-pin")
    return options


def run_one(args: argparse.Namespace, loop: str, url: str, rep: int) -> dict[str, Any]:
    """One repetition on one loop: the main worker, then the tracemalloc one."""
    sample: dict[str, Any] = {"loop": loop, "rep": rep}
    for traced in (False, True):
        try:
            options = worker_options(args, loop, url, traced)
            result = run_worker(__file__, options, timeout=args.time_limit + 30)
        except WORKER_ERRORS as exc:
            phase = "tracemalloc run" if traced else "run"
            sample["error"] = f"{phase}: {exc!r}"
            return sample
        if traced:
            for key in ("tracemalloc_kib_per_connection", "tracemalloc_top"):
                sample[key] = result[key]
            sample["traced_open_s"] = result["open_s"]
            # Closing is measured twice: count what went wrong in either run.
            sample["close_errors"] += result["close_errors"]
            sample["close_error_examples"] += result["close_error_examples"]
        else:
            sample.update(result)
    return sample


# Statistics and report.


FIELDS = (
    "tasks_before",
    "tasks_after",
    "tasks_per_connection",
    "tracemalloc_kib_per_connection",
    "rss_kib_per_connection",
    "open_s",
    "connect_s",
    "close_s",
    "probes",
    "expected_probes",
    "timeouts",
    "grace_periods",
    "reconnects",
    "not_open",
    "close_errors",
    "idle_s",
    "idle_cpu_s",
    "cpu_percent",
    "cpu_us_per_probe",
)
# Any of these above 0 means an unhealthy run.
HEALTH = ("timeouts", "reconnects", "not_open", "close_errors")


def summarize(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for loop in dict.fromkeys(sample["loop"] for sample in samples):
        group = [s for s in samples if s["loop"] == loop]
        ok = [s for s in group if "error" not in s]
        row: dict[str, Any] = {"loop": loop, "reps": len(ok), "errors": len(group) - len(ok)}
        for field in FIELDS:
            put_median(row, field, [s[field] for s in ok if s.get(field) is not None])
        for field in HEALTH:
            row[f"{field}_max"] = max((s.get(field) or 0 for s in ok), default=0)
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    # (header, summary field, format) for the columns between loop and reps.
    columns = [
        ("tasks before", "tasks_before", ".0f"),
        ("tasks after", "tasks_after", ".0f"),
        ("tasks/conn", "tasks_per_connection", ".2f"),
        ("tracemalloc KiB/conn", "tracemalloc_kib_per_connection", ".1f"),
        ("RSS KiB/conn", "rss_kib_per_connection", ".1f"),
        ("open s", "open_s", ".2f"),
        ("probes", "probes", ",.0f"),
        ("timeouts", "timeouts_max", ".0f"),
        ("close errors", "close_errors_max", ".0f"),
        ("idle CPU s", "idle_cpu_s", ".2f"),
        ("CPU %", "cpu_percent", ".1f"),
        ("CPU µs/probe", "cpu_us_per_probe", ".1f"),
    ]
    return markdown_table(rows, ["loop"], columns)


def warnings(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """What looks wrong in the summary."""
    found = []
    for row in rows:
        loop = row["loop"]
        for field in HEALTH:
            if row[f"{field}_max"]:
                found.append(f"{loop}: {field} = {row[f'{field}_max']} in some run (expected 0)")
        per_connection = row.get("tasks_per_connection")
        if per_connection is not None and abs(per_connection - 1) > 0.005:
            found.append(f"{loop}: {per_connection:.3f} tasks per connection (expected 1)")
        probes, expected = row.get("probes"), row.get("expected_probes")
        if probes is not None and expected and not 0.8 <= probes / expected <= 1.05:
            found.append(
                f"{loop}: {probes:,.0f} probes in {args.duration} s, "
                f"expected about {expected:,.0f} (N x duration / interval)"
            )
    return found


def progress(sample: dict[str, Any]) -> str:
    if "error" in sample:
        return f"{sample['loop']}: FAILED {sample['error']}"
    per_probe = sample.get("cpu_us_per_probe")
    return (
        f"{sample['loop']}: {sample['tasks_per_connection']:.2f} tasks/conn, "
        f"{sample.get('tracemalloc_kib_per_connection', 0):.1f} KiB/conn traced, "
        f"{sample.get('rss_kib_per_connection', 0):.1f} KiB/conn RSS, "
        f"opened in {sample['open_s']:.2f} s, {sample['probes']:,} probes, "
        f"{sample['timeouts']} timeouts, {sample['close_errors']} close errors, "
        + (f"{per_probe:.1f} CPU µs/probe" if per_probe is not None else "no probes")
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="What the heartbeat of many idle wsclient connections costs."
    )
    parser.add_argument(
        "--connections", type=positive(int), default=1000, help="connections (default 1000)"
    )
    parser.add_argument(
        "--interval", type=positive(float), default=1.0, help="heartbeat interval (default 1 s)"
    )
    parser.add_argument(
        "--timeout", type=positive(float), default=1.0, help="heartbeat timeout (default 1 s)"
    )
    parser.add_argument(
        "--duration", type=positive(float), default=10.0, help="idle seconds (default 10)"
    )
    add_loop_option(parser)
    parser.add_argument(
        "--batch", type=positive(int), default=100, help="handshakes at once (default 100)"
    )
    parser.add_argument("--repeat", type=positive(int), default=1, help="repetitions (default 1)")
    parser.add_argument("--no-pin", action="store_true", help="don't pin server and client to CPUs")
    parser.add_argument(
        "--time-limit",
        type=positive(float),
        default=300.0,
        help="seconds allowed for one worker run (default 300)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write raw results to PATH")
    # Used by the runner to start its workers.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        if args.url is None or not args.loop or len(args.loop) != 1:
            parser.error("--worker needs --url and exactly one --loop")
        args.loop = args.loop[0]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args, hold_connections)

    loops = available_loops(args.loop)
    file_limit = raise_file_limit(args.connections)
    pin, pinned = pinning(not args.no_pin)
    args.no_pin = not pin  # the workers pin themselves only when the server is pinned too
    print(f"# open-files limit {file_limit}; {pinned}", file=sys.stderr)
    env = environment(pinned, open_files_limit=file_limit)  # before the runs

    # SIGTERM, like Ctrl-C, stops the run, reports what was measured and stops the server.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    samples: list[dict[str, Any]] = []
    process, port = start_server(pin)
    try:
        url = f"ws://{HOST}:{port}/"
        print(f"# echo server pid {process.pid} on {url}", file=sys.stderr)
        for rep in range(1, args.repeat + 1):
            for loop in loops:
                sample = run_one(args, loop, url, rep)
                samples.append(sample)
                print(f"# rep {rep}/{args.repeat} {progress(sample)}", file=sys.stderr)
                if process.poll() is not None:
                    raise RuntimeError(f"echo server exited with {process.returncode}")
    except KeyboardInterrupt:
        print("# interrupted: reporting what was measured", file=sys.stderr)
    except Exception:
        traceback.print_exc()
    finally:
        stop_server(process)

    rows = summarize(samples)
    print(
        f"{args.connections:,} idle connections per loop, heartbeat interval {args.interval:g} s "
        f"and timeout {args.timeout:g} s, idle for {args.duration:g} s, opened {args.batch} "
        f"at a time; median over repetitions (--repeat {args.repeat}); Python {env['python']}, "
        f"wsclient {env['versions']['wsclient']} from {env['wsclient_source']}, "
        f"anyio {env['versions']['anyio']}; {pinned}.\n"
    )
    print(table(rows))
    found = warnings(rows, args)
    for line in found:
        print(f"# WARNING {line}", file=sys.stderr)
    if args.json is not None:
        document = {
            "environment": env,
            "config": {
                key: getattr(args, key)
                for key in ("connections", "interval", "timeout", "duration", "batch", "repeat")
            }
            | {"loops": loops},
            "summary": rows,
            "warnings": found,
            "samples": samples,
        }
        write_json(args.json, document)
    failed = any("error" in sample for sample in samples) or len(samples) < args.repeat * len(loops)
    unhealthy = any(row[f"{field}_max"] for row in rows for field in HEALTH)
    return 1 if failed or unhealthy else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
