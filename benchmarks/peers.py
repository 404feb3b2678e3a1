"""wsclient against its peers: latency, throughput, connection setup and memory, in one run.

Starts ``echo_server.py`` on 127.0.0.1 (pinned to CPU 0 where ``taskset``
works), then, for each repetition, runs every client once, each in a fresh
worker subprocess pinned to CPU 1 with a time limit:

* wsclient's ``Client`` (heartbeat, outbound queue, correlator and dialect on)
  and its bare ``WebSocketTransport``, on asyncio, uvloop and trio;
* ``websockets`` (asyncio, uvloop and trio), ``aiohttp`` and ``picows``
  (asyncio and uvloop), ``websocket-client`` (synchronous, threads), and a
  raw asyncio Protocol that writes precomputed frames (the floor);
* with compression off, plus rows with permessage-deflate for wsclient and
  ``websockets``.

Each run measures sequential round trips (p50, p99; also with client and
server on one core), pipelined throughput at 100 B and 16 KiB, and sequential
connection setup; then a fresh worker per client holds 1,000 idle connections
and reports the growth of its resident set per connection. The
``connections10k`` scenario holds 10,000 heartbeating Clients in one process.

Prints Markdown tables of medians over repetitions, ratios to ``websockets`` on
asyncio, and the issue's targets with PASS or MISS; ``--json`` writes every
sample and the environment, ``--write-docs`` the tables and a plot to ``docs/``.

Run by hand, never by the test suite::

    python benchmarks/peers.py --quick
    python benchmarks/peers.py --scenario all --repeat 5 --write-docs --json peers.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    CLIENT_CPU,
    WORKER_ERRORS,
    Closing,
    environment,
    importable,
    measure_roundtrips,
    percentile,
    pinning,
    positive,
    put_median,
    raise_file_limit,
    rss_kib,
    run_on,
    run_worker,
    settle,
    task_counter,
    write_json,
)
from echo_process import SERVER_CPU, start_server, stop_server
from peer_clients import PEERS, Messages, SyncConnection, opener, peer
from peer_report import report, write_docs

HOST = "127.0.0.1"
# The row every ratio is taken against, and its name in the tables.
REFERENCE = "websockets-asyncio"
PACKAGES = (
    "wsclient",
    "websockets",
    "aiohttp",
    "picows",
    "websocket-client",
    "anyio",
    "trio",
    "uvloop",
    "orjson",
    "matplotlib",
)
# The options that say what a worker does: handed to every worker, and written with the results.
WORK_OPTIONS = (
    "size",
    "big_size",
    "warmup",
    "roundtrips",
    "messages",
    "big_messages",
    "setups",
    "idle",
    "connections",
    "interval",
    "hb_timeout",
    "idle_s",
    "batch",
)
# Environment variables that would send a client through a proxy: only loopback here.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "wss_proxy")


@dataclass(frozen=True)
class Row:
    """One client on one loop, with or without compression: a row of the tables."""

    peer: str
    loop: str
    deflate: bool = False

    @property
    def key(self) -> str:
        return f"{self.peer}-{self.loop}" + ("-deflate" if self.deflate else "")


def all_rows() -> tuple[list[Row], list[str]]:
    """Every row this environment can run, and why the others can't."""
    rows, notes = [], []
    for p in PEERS:
        if not p.installed():
            notes.append(f"{p.label}: not installed ({p.module}): skipped")
            continue
        for loop in p.loops:
            if loop in ("uvloop", "trio") and not importable(loop):
                notes.append(f"{p.label} on {loop}: {loop} is not installed: skipped")
            elif (
                p.name == "websockets"
                and loop == "trio"
                and not importable("websockets.trio.client")
            ):
                notes.append("websockets on trio: this websockets has no trio client: skipped")
            else:
                rows.append(Row(p.name, loop))
        for loop, why in p.missing.items():
            notes.append(f"{p.label}, {loop}: {why}")
    rows += [Row(p.name, "asyncio", deflate=True) for p in PEERS if p.deflate and p.installed()]
    return rows, notes


def select(rows: list[Row], wanted: str | None) -> list[Row]:
    """The rows named in ``--clients`` (a key, or a client's name for all its rows), and the
    reference row."""
    if not wanted:
        return rows
    names = {name.strip() for name in wanted.split(",") if name.strip()}
    known = {row.key for row in rows} | {row.peer for row in rows}
    unknown = names - known
    if unknown:
        sys.exit(
            f"--clients: unknown or unavailable {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )
    return [row for row in rows if row.key == REFERENCE or row.key in names or row.peer in names]


# The workers: one job each, in a subprocess of their own, one JSON line back.


@contextlib.contextmanager
def on_cpu(cpu: int) -> Iterator[None]:
    """This thread on ``cpu`` for the block, then back on :data:`CLIENT_CPU`."""
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, {CLIENT_CPU})


def latency_fields(samples: list[int], cpu_s: float, prefix: str = "") -> dict[str, float]:
    ordered = sorted(samples)
    return {
        f"{prefix}p50_us": percentile(ordered, 0.50) / 1000,
        f"{prefix}p99_us": percentile(ordered, 0.99) / 1000,
        f"{prefix}cpu_us_per_rt": cpu_s * 1e6 / len(samples),
    }


def pipelined_fields(
    prefix: str, count: int, size: int, elapsed: float, cpu_s: float
) -> dict[str, float]:
    return {
        f"{prefix}msgs_per_s": count / elapsed,
        f"{prefix}mib_per_s": count * size / elapsed / 2**20,
        f"{prefix}cpu_us_per_msg": cpu_s * 1e6 / count,
    }


def check_echo(last: Any, message: Any, what: str) -> None:
    if last != message:
        raise RuntimeError(f"{what}: the last echo differs from what was sent: {last!r:.200}")


async def run_async(job: dict[str, Any]) -> dict[str, Any]:
    """The measurements of one run, for an async client on the running loop."""
    import anyio

    messages = Messages.make(job["size"], job["big_size"])
    url, deflate = job["url"], job["deflate"]
    result: dict[str, Any] = {}
    with anyio.fail_after(job["timeout"]):
        async with opener(job["peer"], job["loop"], messages) as open_:
            conn = await open_(url, deflate, max(job["messages"], job["big_messages"]))
            try:
                latency = await measure_roundtrips(
                    conn.roundtrip, conn.reply_ok, job["warmup"], job["roundtrips"]
                )
                result.update(latency_fields(*latency))
                if job["one_core"]:
                    with on_cpu(SERVER_CPU):
                        latency = await measure_roundtrips(
                            conn.roundtrip, conn.reply_ok, job["warmup"], job["roundtrips"]
                        )
                    result.update(latency_fields(*latency, prefix="one_core_"))
                for prefix, message, count, size in (
                    ("", conn.small, job["messages"], job["size"]),
                    ("big_", conn.big, job["big_messages"], job["big_size"]),
                ):
                    elapsed, cpu, last = await conn.pipelined(message, count)
                    check_echo(last, message, f"pipelined {size} B")
                    result.update(pipelined_fields(prefix, count, size, elapsed, cpu))
            finally:
                await conn.aclose()
            cpu = time.process_time()
            start = time.perf_counter()
            for _ in range(job["setups"]):
                conn = await open_(url, deflate, None)
                await conn.aclose()
            result["setup_per_s"] = job["setups"] / (time.perf_counter() - start)
            result["setup_cpu_us"] = (time.process_time() - cpu) * 1e6 / job["setups"]
    return result


def run_sync(job: dict[str, Any]) -> dict[str, Any]:
    """The same measurements for websocket-client: blocking calls, threads to pipeline.

    It pipelines a tenth of the large messages: it checks UTF-8 in pure
    Python, a few milliseconds per 16 KiB, and the full count would take
    minutes for the same rate.
    """
    messages = Messages.make(job["size"], job["big_size"])
    result: dict[str, Any] = {}
    conn = SyncConnection(messages, job["url"])
    try:

        def latency() -> tuple[list[int], float]:
            reply = None
            for _ in range(job["warmup"]):
                reply = conn.roundtrip()
            check_echo(reply, conn.small, "warm-up")
            clock, samples = time.perf_counter_ns, [0] * job["roundtrips"]
            cpu = time.process_time()
            for i in range(job["roundtrips"]):
                start = clock()
                conn.roundtrip()
                samples[i] = clock() - start
            return samples, time.process_time() - cpu

        result.update(latency_fields(*latency()))
        if job["one_core"]:
            with on_cpu(SERVER_CPU):
                result.update(latency_fields(*latency(), prefix="one_core_"))
        for prefix, message, count, size in (
            ("", conn.small, job["messages"], job["size"]),
            ("big_", conn.big, max(1, job["big_messages"] // 10), job["big_size"]),
        ):
            elapsed, cpu, last = conn.pipelined(message, count)
            check_echo(last, message, f"pipelined {size} B")
            result.update(pipelined_fields(prefix, count, size, elapsed, cpu))
    finally:
        conn.close()
    cpu = time.process_time()
    start = time.perf_counter()
    for _ in range(job["setups"]):
        SyncConnection(messages, job["url"]).close()
    result["setup_per_s"] = job["setups"] / (time.perf_counter() - start)
    result["setup_cpu_us"] = (time.process_time() - cpu) * 1e6 / job["setups"]
    return result


async def hold_async(job: dict[str, Any]) -> dict[str, Any]:
    """N idle connections of one client in this process: RSS growth and tasks per connection.

    Opened one after the other and held in this task, closed in reverse
    order. Each client's defaults otherwise: the Client's heartbeat is on.
    """
    import anyio

    messages = Messages.make(job["size"], job["big_size"])
    url, deflate, n = job["url"], job["deflate"], job["idle"]
    count_tasks = task_counter(job["loop"])
    result: dict[str, Any] = {}
    errors: list[str] = []
    with anyio.fail_after(job["timeout"]):
        async with opener(job["peer"], job["loop"], messages) as open_:
            # One first, opened and closed, so that first-use costs aren't charged to the N.
            await (await open_(url, deflate, None)).aclose()
            await settle()
            gc.collect()
            tasks_before, rss_before = count_tasks(), rss_kib()
            held = []
            try:
                start = time.perf_counter()
                for _ in range(n):
                    held.append(await open_(url, deflate, None))
                result["open_s"] = time.perf_counter() - start
                await settle()
                gc.collect()
                rss_after = rss_kib()
                result["tasks_per_conn"] = (count_tasks() - tasks_before) / n
                if rss_before is not None and rss_after is not None:
                    result["rss_kib_per_conn"] = (rss_after - rss_before) / n
            finally:
                for conn in reversed(held):
                    try:
                        await conn.aclose()
                    except Exception as error:
                        errors.append(repr(error))
    result["close_errors"] = len(errors)
    result["close_error_examples"] = sorted(set(errors))[:3]
    return result


def hold_sync(job: dict[str, Any]) -> dict[str, Any]:
    """:func:`hold_async` for websocket-client: N blocking sockets, no thread each."""
    messages = Messages.make(job["size"], job["big_size"])
    SyncConnection(messages, job["url"]).close()
    gc.collect()
    threads, rss_before = threading.active_count(), rss_kib()
    held: list[SyncConnection] = []
    result: dict[str, Any] = {}
    errors = []
    try:
        start = time.perf_counter()
        for _ in range(job["idle"]):
            held.append(SyncConnection(messages, job["url"]))
        result["open_s"] = time.perf_counter() - start
        gc.collect()
        rss_after = rss_kib()
        result["tasks_per_conn"] = (threading.active_count() - threads) / job["idle"]
        if rss_before is not None and rss_after is not None:
            result["rss_kib_per_conn"] = (rss_after - rss_before) / job["idle"]
    finally:
        for conn in reversed(held):
            try:
                conn.close()
            except Exception as error:
                errors.append(repr(error))
    result["close_errors"] = len(errors)
    result["close_error_examples"] = sorted(set(errors))[:3]
    return result


async def hold_many(job: dict[str, Any]) -> dict[str, Any]:
    """``--connections`` heartbeating Clients, each held by a task of its own, for ``--idle-s``.

    A task per connection, as a service would hold them, so that the opening
    handshakes run concurrently (``--batch`` at a time) and the Clients'
    task groups are siblings rather than nested thousands deep.
    """
    import anyio

    import wsclient

    n = job["connections"]
    heartbeat = wsclient.Heartbeat(interval=job["interval"], timeout=job["hb_timeout"])
    count_tasks = task_counter(job["loop"])
    result: dict[str, Any] = {"connections": n}
    errors: list[str] = []
    clients: list[Any] = []
    opening = anyio.Semaphore(job["batch"])
    all_open = anyio.Event()
    stop = anyio.Event()

    def connect() -> Any:
        return wsclient.connect(job["url"], heartbeat=heartbeat, compression=None)

    async def hold() -> None:
        async with contextlib.AsyncExitStack() as stack:
            async with opening:
                clients.append(await stack.enter_async_context(Closing(connect(), errors)))
            if len(clients) == n:
                all_open.set()
            await stop.wait()

    with anyio.fail_after(job["timeout"]):
        async with Closing(connect(), errors):
            pass
        await settle()
        gc.collect()
        tasks_before, rss_before = count_tasks(), rss_kib()
        async with anyio.create_task_group() as group:
            start = time.perf_counter()
            for _ in range(n):
                group.start_soon(hold)
            await all_open.wait()
            result["open_s"] = time.perf_counter() - start
            await settle()
            gc.collect()
            rss_after = rss_kib()
            result["tasks_per_conn"] = (count_tasks() - tasks_before) / n
            if rss_before is not None and rss_after is not None:
                result["rss_kib_per_conn"] = (rss_after - rss_before) / n
                result["rss_mib"] = (rss_after - rss_before) / 1024

            def probes() -> int:
                return sum(c.transport.statistics().heartbeat_probes for c in clients)

            before, cpu, wall = probes(), time.process_time(), time.perf_counter()
            await anyio.sleep(job["idle_s"])
            result["idle_s"] = time.perf_counter() - wall
            result["idle_cpu_percent"] = 100 * (time.process_time() - cpu) / result["idle_s"]
            stats = [c.transport.statistics() for c in clients]
            result["probes"] = sum(s.heartbeat_probes for s in stats) - before
            result["expected_probes"] = n * job["idle_s"] / job["interval"]
            result["timeouts"] = sum(s.heartbeat_timeouts for s in stats)
            result["reconnects"] = sum(s.reconnects for s in stats)
            result["not_open"] = sum(s.state is not wsclient.ConnectionState.OPEN for s in stats)
            del stats
            closing = time.perf_counter()
            stop.set()
        result["close_s"] = time.perf_counter() - closing
    result["close_errors"] = len(errors)
    result["close_error_examples"] = sorted(set(errors))[:3]
    return result


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job in this (worker) process."""
    if job["pin"]:
        os.sched_setaffinity(0, {CLIENT_CPU})
    if job["kind"] == "connections":
        raise_file_limit(job["connections"])
        return run_on(job["loop"], hold_many, job)
    if job["loop"] == "threads":
        return run_sync(job) if job["kind"] == "run" else hold_sync(job)
    session = run_async if job["kind"] == "run" else hold_async
    return run_on(job["loop"], session, job)


# The runner.


def start_job(
    args: argparse.Namespace, kind: str, row: Row, url: str, pin: bool, rep: int
) -> dict[str, Any]:
    """Run one job in a worker subprocess: its sample, with ``error`` if it failed."""
    job = {
        "kind": kind,
        "peer": row.peer,
        "loop": row.loop,
        "deflate": row.deflate,
        "url": url,
        "pin": pin,
        "one_core": pin and not args.no_one_core,
        "timeout": args.timeout,
        **{name: getattr(args, name) for name in WORK_OPTIONS},
    }
    sample: dict[str, Any] = {"kind": kind, "key": row.key, **job_row(row), "rep": rep}
    started = time.perf_counter()
    try:
        # The worker's own limit first, so that it reports; this one if it hangs.
        sample.update(run_worker(__file__, [json.dumps(job)], timeout=args.timeout + 30))
    except WORKER_ERRORS as error:
        sample["error"] = repr(error)
    sample["worker_s"] = time.perf_counter() - started
    return sample


def job_row(row: Row) -> dict[str, Any]:
    return {"peer": row.peer, "loop": row.loop, "deflate": row.deflate}


def progress(sample: dict[str, Any]) -> str:
    name = f"{sample['kind']} {sample['key']}"
    if "error" in sample:
        return f"{name}: FAILED {sample['error']}"
    shown = {
        "p50_us": "p50 {:.1f} µs",
        "one_core_p50_us": "1-core p50 {:.1f} µs",
        "msgs_per_s": "{:,.0f} msgs/s",
        "big_msgs_per_s": "{:,.0f} msgs/s at 16 KiB",
        "setup_per_s": "{:,.0f} conn/s",
        "rss_kib_per_conn": "{:.1f} KiB/conn",
        "tasks_per_conn": "{:.2f} tasks/conn",
        "open_s": "opened in {:.2f} s",
        "probes": "{:,} probes",
        "timeouts": "{} timeouts",
    }
    parts = [spec.format(sample[field]) for field, spec in shown.items() if field in sample]
    return f"{name}: " + ", ".join(parts) + f" ({sample['worker_s']:.1f} s)"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="wsclient against websockets, aiohttp, picows and websocket-client."
    )
    parser.add_argument(
        "--scenario",
        choices=("peers", "connections10k", "all"),
        default="peers",
        help="peers: every client's latency, throughput, setup and memory (default); "
        "connections10k: 10,000 heartbeating Clients in one process; all: both",
    )
    parser.add_argument("--repeat", type=positive(int), default=5, help="repetitions (default 5)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 repetition, few messages, 200 idle connections, 1,000 in connections10k",
    )
    parser.add_argument(
        "--clients",
        help="comma-separated rows (e.g. client-trio,picows-asyncio) or clients (aiohttp); "
        f"{REFERENCE} always runs: every ratio is to it (default: all)",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the rows this environment can run, and exit"
    )
    group = parser.add_argument_group("the work")
    group.add_argument("--size", type=positive(int), default=100, help="small message (100 B)")
    group.add_argument(
        "--big-size", type=positive(int), default=16384, help="large message (16384 B)"
    )
    group.add_argument("--warmup", type=int, default=1000, help="untimed round trips (1,000)")
    group.add_argument(
        "--roundtrips", type=positive(int), default=10_000, help="timed round trips (10,000)"
    )
    group.add_argument(
        "--messages", type=positive(int), default=60_000, help="pipelined small messages (60,000)"
    )
    group.add_argument(
        "--big-messages",
        type=positive(int),
        default=2_000,
        help="pipelined large ones (2,000; websocket-client a tenth of that)",
    )
    group.add_argument(
        "--setups", type=positive(int), default=200, help="connections opened and closed (200)"
    )
    group.add_argument(
        "--idle", type=positive(int), default=1000, help="idle connections per client (1,000)"
    )
    group.add_argument("--no-one-core", action="store_true", help="skip the 1-core round trips")
    group = parser.add_argument_group("connections10k")
    group.add_argument(
        "--connections", type=positive(int), default=10_000, help="Clients held (10,000)"
    )
    group.add_argument(
        "--interval", type=positive(float), default=5.0, help="their heartbeat interval (5 s)"
    )
    group.add_argument(
        "--hb-timeout", type=positive(float), default=5.0, help="their heartbeat timeout (5 s)"
    )
    group.add_argument(
        "--idle-s", type=positive(float), default=20.0, help="seconds held idle (20 s)"
    )
    group.add_argument(
        "--batch", type=positive(int), default=100, help="opening handshakes at once (100)"
    )
    group.add_argument(
        "--loops",
        default="asyncio",
        help="comma-separated loops for connections10k: asyncio, uvloop, trio (default asyncio)",
    )
    group = parser.add_argument_group("output")
    group.add_argument("--json", type=Path, metavar="PATH", help="write every sample to PATH")
    group.add_argument(
        "--write-docs",
        action="store_true",
        help="write the tables into docs/explanation/benchmarks.md and the plot to "
        "docs/assets/benchmarks.png (needs --repeat 5 or more, not --quick)",
    )
    group.add_argument("--no-pin", action="store_true", help="don't pin server and clients")
    group.add_argument(
        "--timeout",
        type=positive(float),
        default=300.0,
        help="seconds allowed for one worker (default 300)",
    )
    parser.add_argument("--worker", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return args
    if args.quick:
        if args.write_docs:
            parser.error("--write-docs needs a full run: leave out --quick")
        args.repeat, args.warmup, args.roundtrips = 1, 200, 2_000
        args.messages, args.big_messages, args.setups, args.idle = 5_000, 500, 50, 200
        args.connections, args.interval, args.hb_timeout, args.idle_s = 1_000, 2.0, 2.0, 5.0
    if args.write_docs and args.repeat < 5:
        parser.error("--write-docs needs --repeat 5 or more (medians of 5 repetitions)")
    if args.big_size < args.size:
        parser.error("--big-size must be at least --size")
    args.loops = [loop.strip() for loop in args.loops.split(",") if loop.strip()]
    for loop in args.loops:
        if loop not in ("asyncio", "uvloop", "trio"):
            parser.error(f"--loops: unknown loop {loop!r} (asyncio, uvloop, trio)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    rows, notes = all_rows()
    if args.list:
        print("\n".join(row.key for row in rows))
        return 0
    rows = select(rows, args.clients)
    scenarios = ["peers", "connections10k"] if args.scenario == "all" else [args.scenario]
    loops10k = [loop for loop in args.loops if importable(loop)]

    for name in list(os.environ):
        if name.lower() in PROXY_VARIABLES:
            del os.environ[name]
    file_limit = raise_file_limit(
        max(args.idle, args.connections if "connections10k" in scenarios else 0)
    )
    pin, pinned = pinning(not args.no_pin)
    for line in (pinned, f"open-files limit {file_limit}", *notes):
        print(f"# {line}", file=sys.stderr)
    env = environment(
        pinned, packages=PACKAGES, open_files_limit=file_limit, load_before=os.getloadavg()
    )

    # SIGTERM, like Ctrl-C, stops the run, reports what was measured and stops the server.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    samples: list[dict[str, Any]] = []
    started = time.perf_counter()
    process, port = start_server(pin, compression=True)
    try:
        url = f"ws://{HOST}:{port}/"
        print(f"# echo server pid {process.pid} on {url}", file=sys.stderr)
        for rep in range(1, args.repeat + 1):
            jobs: list[tuple[str, Row]] = []
            if "peers" in scenarios:
                # Interleaved: drift on the machine hits every client alike.
                jobs += [("run", row) for row in rows] + [("memory", row) for row in rows]
            if "connections10k" in scenarios:
                jobs += [("connections", Row("client", loop)) for loop in loops10k]
            for kind, row in jobs:
                sample = start_job(args, kind, row, url, pin, rep)
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
    elapsed = time.perf_counter() - started
    env["load_after"] = os.getloadavg()

    config = {name: getattr(args, name) for name in ("scenario", "repeat", *WORK_OPTIONS)} | {
        "loops10k": loops10k,
        "not_run": notes,
        "quick": args.quick,
        "elapsed_s": elapsed,
    }
    summary = summarize(samples)
    text = report(summary, config, env, scenarios)
    print(text)
    print(f"# {elapsed / 60:.1f} minutes", file=sys.stderr)
    if args.json is not None:
        write_json(
            args.json,
            {"environment": env, "config": config, "summary": summary, "samples": samples},
        )
    if args.write_docs:
        write_docs(summary, config, env, scenarios)
    return 1 if any("error" in sample for sample in samples) else 0


# Medians and ratios.

RUN_FIELDS = (
    "p50_us",
    "p99_us",
    "cpu_us_per_rt",
    "one_core_p50_us",
    "one_core_p99_us",
    "msgs_per_s",
    "cpu_us_per_msg",
    "big_msgs_per_s",
    "big_mib_per_s",
    "big_cpu_us_per_msg",
    "setup_per_s",
    "setup_cpu_us",
)
MEMORY_FIELDS = ("rss_kib_per_conn", "tasks_per_conn", "open_s", "close_errors")
CONNECTIONS_FIELDS = (
    "open_s",
    "rss_kib_per_conn",
    "rss_mib",
    "tasks_per_conn",
    "probes",
    "expected_probes",
    "idle_cpu_percent",
    "close_s",
)
# Any of these above 0 in a 10k run means an unhealthy run.
HEALTH = ("timeouts", "reconnects", "not_open", "close_errors")
RATIO_FIELDS = (
    "p50_us",
    "one_core_p50_us",
    "msgs_per_s",
    "big_msgs_per_s",
    "setup_per_s",
    "rss_kib_per_conn",
)


def per_rep_ratios(
    samples: list[dict[str, Any]], field: str, key: str, reference: str
) -> list[float]:
    """``field`` of ``key`` over that of ``reference``, within each repetition both ran."""
    by_rep = {(s["key"], s["rep"]): s[field] for s in samples if "error" not in s and field in s}
    return [
        value / by_rep[(reference, rep)]
        for (k, rep), value in by_rep.items()
        if k == key and by_rep.get((reference, rep))
    ]


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per row: medians over repetitions, and medians of per-repetition ratios to the reference.

    A ratio is taken within one repetition, whose runs were minutes apart at
    most; drift between repetitions doesn't leak into it.
    """
    runs = [s for s in samples if s["kind"] in ("run", "memory")]
    rows = []
    for key in dict.fromkeys(s["key"] for s in runs):
        group = [s for s in runs if s["key"] == key]
        good = [s for s in group if "error" not in s]
        first = group[0]
        reference = REFERENCE + ("-deflate" if first["deflate"] else "")
        row: dict[str, Any] = {
            "key": key,
            "peer": first["peer"],
            "label": peer(first["peer"]).label,
            "loop": first["loop"],
            "deflate": first["deflate"],
            "reps": len({s["rep"] for s in good if s["kind"] == "run"}),
            "memory_reps": len({s["rep"] for s in good if s["kind"] == "memory"}),
            "errors": len(group) - len(good),
            "error_examples": sorted({s["error"] for s in group if "error" in s})[:3],
        }
        for field in RUN_FIELDS + MEMORY_FIELDS:
            put_median(row, field, [s[field] for s in good if field in s])
        for field in RATIO_FIELDS:
            ratios = per_rep_ratios(runs, field, key, reference)
            if ratios:
                row[f"{field}_ratio"] = statistics.median(ratios)
        rows.append(row)

    connections = []
    many = [s for s in samples if s["kind"] == "connections"]
    for key in dict.fromkeys(s["key"] for s in many):
        group = [s for s in many if s["key"] == key]
        good = [s for s in group if "error" not in s]
        row = {
            "key": key,
            "loop": group[0]["loop"],
            "reps": len(good),
            "errors": len(group) - len(good),
            "error_examples": sorted({s["error"] for s in group if "error" in s})[:3],
            "connections": max((s["connections"] for s in good), default=0),
        }
        for field in CONNECTIONS_FIELDS:
            put_median(row, field, [s[field] for s in good if field in s])
        for field in HEALTH:
            row[f"{field}_max"] = max((s.get(field) or 0 for s in good), default=0)
        connections.append(row)

    return {
        "rows": rows,
        "connections": connections,
        "targets": targets(samples, rows, connections),
    }


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    measure: Callable[[], float | None]
    passes: Callable[[float], bool]
    spec: str = ".2f"


def targets(
    samples: list[dict[str, Any]], rows: list[dict[str, Any]], connections: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Issue 7's targets, each with its measured value and PASS, MISS or not run."""
    runs = [s for s in samples if s["kind"] in ("run", "memory")]

    def ratio(field: str, key: str, reference: str, invert: bool = False) -> float | None:
        values = per_rep_ratios(runs, field, key, reference)
        if not values:
            return None
        value = statistics.median(values)
        return 1 / value if invert else value

    def median(key: str, field: str) -> float | None:
        row = next((r for r in rows if r["key"] == key), None)
        return None if row is None else row.get(field)

    def many_ok() -> float | None:
        row = next((r for r in connections if r["loop"] == "asyncio"), None)
        if row is None or not row["reps"]:
            return None
        healthy = not any(row[f"{field}_max"] for field in HEALTH) and row.get("probes", 0) > 0
        return row["connections"] if healthy else 0

    found = [
        Target(
            "Client.request round trip p50 / websockets send+recv p50 (asyncio)",
            "≤ 0.9",
            lambda: ratio("p50_us", "client-asyncio", REFERENCE),
            lambda value: value <= 0.9,
        ),
        Target(
            "pipelined Client.send + receive, msgs/s / websockets' (asyncio, 100 B)",
            "≥ 2",
            lambda: ratio("msgs_per_s", "client-asyncio", REFERENCE),
            lambda value: value >= 2,
        ),
        Target(
            "KiB of RSS per idle heartbeating Client, 1,000 in one process (asyncio)",
            "≤ 8 KiB",
            lambda: median("client-asyncio", "rss_kib_per_conn"),
            lambda value: value <= 8,
            ".1f",
        ),
        Target(
            "heartbeating Clients held at once by one process, heartbeats flowing (asyncio)",
            "10,000",
            many_ok,
            lambda value: value >= 10_000,
            ",.0f",
        ),
        Target(
            "Client round trip p50 on trio / on asyncio",
            "≤ 1.5",
            lambda: ratio("p50_us", "client-trio", "client-asyncio"),
            lambda value: value <= 1.5,
        ),
        Target(
            "Client pipelined msgs/s on asyncio / on trio",
            "≤ 1.5",
            lambda: ratio("msgs_per_s", "client-trio", "client-asyncio", invert=True),
            lambda value: value <= 1.5,
        ),
    ]
    results = []
    for target in found:
        value = target.measure()
        results.append(
            {
                "target": target.name,
                "goal": target.goal,
                "value": value,
                "shown": "not run" if value is None else format(value, target.spec),
                "verdict": "not run"
                if value is None
                else ("PASS" if target.passes(value) else "MISS"),
            }
        )
    return results


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
