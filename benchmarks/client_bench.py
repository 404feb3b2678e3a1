"""What the Client costs on top of the transport: round trips, concurrency, memory.

Starts ``echo_server.py`` and the reference Hub (``python -m wsclient serve``)
as subprocesses on 127.0.0.1, pinned to CPU 0 with ``taskset`` when it exists,
pins this process to CPU 1 when it can, then for each repetition runs every
client once on every loop (asyncio, uvloop, trio), each in a fresh event loop:

* latency: sequential round trips after a warm-up, p50 and p90 in microseconds;
* throughput: a Client runs ``--tasks`` tasks, each making requests one after
  the other, ``--requests`` in all; the transport and websockets pipeline the
  same number of messages (one sender task, one receiver task).

Against the echo server the Client uses a dialect that frames each request as
the reply it expects, ``{"type": "response", "requestId": id, "payload": P}``:
the echo of a request answers it, so the server does no work of its own and
what is measured is the Client's cost. Against the Hub, ``query("echo", P)``
is answered by the Hub's ``echo`` handler, as a real server would.

Then one worker subprocess per loop and kind opens ``--clients`` idle Clients
(or ReconnectingTransports) to the echo server under ``tracemalloc`` and
reports the memory and tasks per connection.

Prints Markdown tables of medians over repetitions, with ratios to peers on
the same loop in the same repetition; ``--json PATH`` writes every sample.

Run by hand, never by the test suite::

    python benchmarks/client_bench.py --quick
    python benchmarks/client_bench.py --repeat 3 --json client.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from common import (
    WORKER_ERRORS,
    Closing,
    Concurrently,
    add_loop_option,
    anyio_task_group,
    asyncio_gather,
    available_loops,
    cell,
    echo_dialect,
    environment,
    importable,
    markdown_table,
    measure_roundtrips,
    padded_json,
    percentile,
    pin_self,
    pinning,
    positive,
    put_median,
    run_on,
    run_worker,
    settle,
    task_counter,
    traced_bytes,
    trio_nursery,
    worker_main,
    write_json,
)
from common import measure_pipelined as pipelined
from echo_process import on_server_cpu, preexec, start_server, stop_server

HOST = "127.0.0.1"
HUB_START_TIMEOUT = 15.0
# Files tracemalloc's report names, per connection.
TOP_FILES = 6

RoundTrip = Callable[[], Awaitable[Any]]


# The work: the same payload, framed for each client.


@dataclass(frozen=True)
class Config:
    echo_url: str
    hub_url: str | None
    text: str  # what the transport and websockets send to the echo server
    payload: dict[str, Any]  # what a Client request carries
    hub_query: str  # a query for the Hub's echo handler, framed by hand, for the transport
    warmup: int
    roundtrips: int
    requests: int
    tasks: int
    timeout: float


def make_payload(size: int) -> tuple[str, dict[str, Any]]:
    """A JSON text of ``size`` bytes, and a payload whose framed Client request is that size.

    The request's size depends on its id by a few bytes; it is exact for 5-digit ids.
    """

    def payload(pad: str) -> dict[str, Any]:
        return {"seq": 123456, "ts": 1700000000.123, "pad": pad}

    text = orjson.dumps(padded_json(lambda pad: {"type": "bench", **payload(pad)}, size)).decode()
    framed = padded_json(
        lambda pad: {"type": "response", "requestId": 10_000, "payload": payload(pad)}, size
    )
    return text, framed["payload"]


class Measurement(NamedTuple):
    latencies_ns: list[int]
    latency_cpu_s: float  # this process's CPU time (user + sys) for the timed round trips
    throughput_s: float
    throughput_cpu_s: float


async def measure_latency(
    roundtrip: RoundTrip, check: Callable[[Any], bool], cfg: Config
) -> tuple[list[int], float]:
    """Sequential round trips; nanoseconds per round trip and CPU seconds."""
    return await measure_roundtrips(roundtrip, check, cfg.warmup, cfg.roundtrips)


async def measure_concurrent(
    roundtrip: RoundTrip, check: Callable[[Any], bool], cfg: Config
) -> tuple[float, float]:
    """``cfg.tasks`` tasks making ``cfg.requests`` requests in all; seconds and CPU seconds."""
    import anyio

    share, extra = divmod(cfg.requests, cfg.tasks)
    wrong: list[Any] = []

    async def worker(count: int) -> None:
        for _ in range(count):
            reply = await roundtrip()
            if not check(reply):
                wrong.append(reply)

    cpu = time.process_time()
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for k in range(cfg.tasks):
            tg.start_soon(worker, share + (k < extra))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    if wrong:
        raise RuntimeError(f"{len(wrong)} unexpected replies, the first {wrong[0]!r}")
    return elapsed, cpu


async def measure_pipelined(
    send: Callable[[str], Awaitable[Any]],
    receive: Callable[[], Awaitable[Any]],
    message: str,
    check: Callable[[Any], bool],
    concurrently: Concurrently,
    cfg: Config,
) -> tuple[float, float]:
    """One sender and one receiver, ``cfg.requests`` messages; seconds and CPU seconds."""
    elapsed, cpu, last = await pipelined(send, receive, message, cfg.requests, concurrently)
    if not check(last):
        raise RuntimeError(f"unexpected last reply {last!r}")
    return elapsed, cpu


# wsclient: the Client and the bare transport, through anyio on every loop.


async def client_on_echo(cfg: Config) -> Measurement:
    import anyio

    import wsclient

    payload = cfg.payload

    def check(reply: Any) -> bool:
        return bool(reply == payload)

    with anyio.fail_after(cfg.timeout):
        async with wsclient.connect(cfg.echo_url, dialect=echo_dialect(), compression=None) as c:

            async def roundtrip() -> Any:
                return await c.request("bench", payload)

            latency = await measure_latency(roundtrip, check, cfg)
            throughput = await measure_concurrent(roundtrip, check, cfg)
            if c.statistics().requests.pending:
                raise RuntimeError("requests still pending after the run")
    return Measurement(*latency, *throughput)


async def client_on_hub(cfg: Config) -> Measurement:
    import anyio

    import wsclient

    assert cfg.hub_url is not None
    payload = cfg.payload

    def check(reply: Any) -> bool:
        return bool(reply == payload)

    with anyio.fail_after(cfg.timeout):
        async with wsclient.connect(cfg.hub_url, compression=None) as c:

            async def roundtrip() -> Any:
                return await c.query("echo", payload)

            latency = await measure_latency(roundtrip, check, cfg)
            throughput = await measure_concurrent(roundtrip, check, cfg)
    return Measurement(*latency, *throughput)


async def transport_session(cfg: Config, url: str, message: str, check: Any) -> Measurement:
    import anyio

    from wsclient import connect_transport

    with anyio.fail_after(cfg.timeout):
        transport = await connect_transport(url, compression=None)
        try:

            async def roundtrip() -> Any:
                await transport.send(message)
                return await transport.receive()

            latency = await measure_latency(roundtrip, check, cfg)
            throughput = await measure_pipelined(
                transport.send, transport.receive, message, check, anyio_task_group, cfg
            )
        finally:
            await transport.aclose()
    return Measurement(*latency, *throughput)


async def transport_on_echo(cfg: Config) -> Measurement:
    return await transport_session(cfg, cfg.echo_url, cfg.text, lambda reply: reply == cfg.text)


async def transport_on_hub(cfg: Config) -> Measurement:
    assert cfg.hub_url is not None

    def check(reply: Any) -> bool:
        return bool(orjson.loads(reply).get("payload") == cfg.payload)

    return await transport_session(cfg, cfg.hub_url, cfg.hub_query, check)


def anyio_runner(
    session: Callable[[Config], Coroutine[Any, Any, Measurement]], loop: str
) -> Callable[[Config], Measurement]:
    return partial(run_on, loop, session)


# websockets' own clients on the echo server: the reference.


async def websockets_asyncio_session(cfg: Config) -> Measurement:
    from websockets.asyncio.client import connect

    def check(reply: Any) -> bool:
        return bool(reply == cfg.text)

    async with connect(cfg.echo_url, compression=None) as ws:

        async def roundtrip() -> Any:
            await ws.send(cfg.text)
            return await ws.recv()

        latency = await measure_latency(roundtrip, check, cfg)
        throughput = await measure_pipelined(ws.send, ws.recv, cfg.text, check, asyncio_gather, cfg)
    return Measurement(*latency, *throughput)


def run_websockets(loop: str) -> Callable[[Config], Measurement]:
    def run(cfg: Config) -> Measurement:
        session = asyncio.wait_for(websockets_asyncio_session(cfg), cfg.timeout)
        if loop == "uvloop":
            import uvloop

            return uvloop.run(session)
        return asyncio.run(session)

    return run


def run_websockets_trio(cfg: Config) -> Measurement:
    import trio
    from websockets.trio.client import connect

    def check(reply: Any) -> bool:
        return bool(reply == cfg.text)

    async def session() -> Measurement:
        with trio.fail_after(cfg.timeout):
            async with connect(cfg.echo_url, compression=None) as ws:

                async def roundtrip() -> Any:
                    await ws.send(cfg.text)
                    return await ws.recv()

                latency = await measure_latency(roundtrip, check, cfg)
                throughput = await measure_pipelined(
                    ws.send, ws.recv, cfg.text, check, trio_nursery, cfg
                )
        return Measurement(*latency, *throughput)

    return trio.run(session)


@dataclass(frozen=True)
class Runner:
    name: str  # client, transport or websockets
    server: str  # echo or hub
    loop: str
    run: Callable[[Config], Measurement]

    @property
    def key(self) -> str:
        return f"{self.name}-{self.server}-{self.loop}"


def runners(loops: Sequence[str], hub: bool) -> list[Runner]:
    found = []
    for loop in loops:
        if loop != "trio":
            found.append(Runner("websockets", "echo", loop, run_websockets(loop)))
        elif importable("websockets.trio.client"):
            found.append(Runner("websockets", "echo", loop, run_websockets_trio))
        found += [
            Runner("transport", "echo", loop, anyio_runner(transport_on_echo, loop)),
            Runner("client", "echo", loop, anyio_runner(client_on_echo, loop)),
        ]
        if hub:
            found += [
                Runner("transport", "hub", loop, anyio_runner(transport_on_hub, loop)),
                Runner("client", "hub", loop, anyio_runner(client_on_hub, loop)),
            ]
    return found


# Samples, medians and ratios.


@dataclass(frozen=True)
class Sample:
    """One runner, one repetition."""

    name: str
    server: str
    loop: str
    rep: int
    p50_us: float | None = None
    p90_us: float | None = None
    p99_us: float | None = None
    cpu_us_per_rt: float | None = None
    per_s: float | None = None
    cpu_us_per_request: float | None = None
    error: str | None = None


def run_one(runner: Runner, cfg: Config, rep: int) -> Sample:
    gc.collect()
    try:
        result = runner.run(cfg)
    except Exception as exc:
        traceback.print_exc()
        return Sample(runner.name, runner.server, runner.loop, rep, error=repr(exc))
    latencies = sorted(result.latencies_ns)
    return Sample(
        runner.name,
        runner.server,
        runner.loop,
        rep,
        p50_us=percentile(latencies, 0.50) / 1000,
        p90_us=percentile(latencies, 0.90) / 1000,
        p99_us=percentile(latencies, 0.99) / 1000,
        cpu_us_per_rt=result.latency_cpu_s * 1e6 / cfg.roundtrips,
        per_s=cfg.requests / result.throughput_s,
        cpu_us_per_request=result.throughput_cpu_s * 1e6 / cfg.requests,
    )


FIELDS = ("p50_us", "p90_us", "p99_us", "cpu_us_per_rt", "per_s", "cpu_us_per_request")
# (ratio name, field, the peer it is taken against): peers run on the same loop.
RATIOS = (
    ("p50_vs_transport", "p50_us", "transport"),
    ("p50_vs_websockets", "p50_us", "websockets"),
    ("cpu_rt_vs_transport", "cpu_us_per_rt", "transport"),
    ("per_s_vs_transport", "per_s", "transport"),
    ("per_s_vs_websockets", "per_s", "websockets"),
)


def summarize(samples: list[Sample]) -> list[dict[str, Any]]:
    """Medians per runner, and medians of per-repetition ratios to the peers on its loop.

    A ratio is taken within one repetition (the two ran a few seconds apart),
    then the median over repetitions is reported: drift on the machine between
    repetitions doesn't leak into it. websockets only runs against the echo server.
    """
    ok = [s for s in samples if s.error is None]
    peers = {(s.name, s.server, s.loop, s.rep): s for s in ok}
    rows = []
    for key in dict.fromkeys((s.name, s.server, s.loop) for s in samples):
        name, server, loop = key
        group = [s for s in samples if (s.name, s.server, s.loop) == key]
        good = [s for s in group if s.error is None]
        row: dict[str, Any] = {
            "client": name,
            "server": server,
            "loop": loop,
            "reps": len(good),
            "errors": len(group) - len(good),
        }
        for field in FIELDS:
            put_median(row, field, [getattr(s, field) for s in good])
        for ratio, field, peer_name in RATIOS:
            if peer_name == name:
                continue
            ratios = [
                getattr(s, field) / getattr(peer, field)
                for s in good
                if (peer := peers.get((peer_name, server, loop, s.rep))) is not None
            ]
            if ratios:
                row[ratio] = statistics.median(ratios)
        rows.append(row)
    return rows


def latency_table(rows: list[dict[str, Any]]) -> str:
    columns = [
        ("p50 µs", "p50_us", ".1f"),
        ("p90 µs", "p90_us", ".1f"),
        ("p99 µs", "p99_us", ".1f"),
        ("p50 / transport", "p50_vs_transport", ".2f"),
        ("p50 / websockets", "p50_vs_websockets", ".2f"),
        ("CPU µs/rt", "cpu_us_per_rt", ".1f"),
        ("CPU / transport", "cpu_rt_vs_transport", ".2f"),
    ]
    return table(rows, columns)


def throughput_table(rows: list[dict[str, Any]]) -> str:
    columns = [
        ("requests/s", "per_s", ",.0f"),
        ("/ transport", "per_s_vs_transport", ".2f"),
        ("/ websockets", "per_s_vs_websockets", ".2f"),
        ("CPU µs/request", "cpu_us_per_request", ".1f"),
    ]
    return table(rows, columns)


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    return markdown_table(rows, ["client", "server", "loop"], columns, missing="")


# Memory: idle connections in a worker subprocess, under tracemalloc.


async def hold_idle(args: argparse.Namespace) -> dict[str, Any]:
    """Open N idle Clients or ReconnectingTransports with default options; measure; close."""
    import anyio

    import wsclient

    def make() -> Any:
        if args.kind == "client":
            return wsclient.connect(args.url)
        return wsclient.ReconnectingTransport(wsclient.WebSocketFactory(args.url))

    count_tasks = task_counter(args.loop)
    n = args.clients
    errors: list[str] = []
    result: dict[str, Any] = {"kind": args.kind, "loop": args.loop, "clients": n}
    with anyio.fail_after(args.time_limit):
        # One first, opened and closed, so that first-use costs aren't charged to the N.
        async with Closing(make(), errors):
            pass
        await settle()
        gc.collect()
        tasks_before = count_tasks()
        tracemalloc.start()
        before = traced_bytes(tracemalloc.take_snapshot())
        async with AsyncExitStack() as stack:
            started = time.perf_counter()
            for _ in range(n):
                await stack.enter_async_context(Closing(make(), errors))
            result["open_s"] = time.perf_counter() - started
            await settle()
            gc.collect()
            after = traced_bytes(tracemalloc.take_snapshot())
            tracemalloc.stop()
            diff = after.compare_to(before, "filename")
            result["kib_per_connection"] = sum(stat.size_diff for stat in diff) / 1024 / n
            result["top"] = [
                [stat.traceback[0].filename, stat.size_diff / 1024 / n] for stat in diff[:TOP_FILES]
            ]
            del before, after, diff
            result["tasks_per_connection"] = (count_tasks() - tasks_before) / n
    result["close_errors"] = len(errors)
    return result


def memory_sample(args: argparse.Namespace, kind: str, loop: str, url: str) -> dict[str, Any]:
    options: list[object] = ["--kind", kind, "--loop", loop, "--url", url]
    options += ["--clients", args.clients, "--timeout", args.timeout]
    if args.no_pin:
        options.append("--no-pin")
    try:
        return run_worker(__file__, options, timeout=args.timeout + 30)
    except WORKER_ERRORS as exc:
        return {"kind": kind, "loop": loop, "error": repr(exc)}


def memory_table(samples: list[dict[str, Any]]) -> str:
    lines = [
        "| loop | Client KiB/conn | ReconnectingTransport KiB/conn | ratio "
        "| Client tasks/conn | transport tasks/conn | reps |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for loop in dict.fromkeys(s["loop"] for s in samples):
        medians: dict[str, dict[str, float]] = {}
        reps = []
        for kind in ("client", "transport"):
            good = [
                s for s in samples if (s["loop"], s["kind"]) == (loop, kind) and "error" not in s
            ]
            reps.append(len(good))
            medians[kind] = {
                field: statistics.median(s[field] for s in good)
                for field in ("kib_per_connection", "tasks_per_connection")
                if good
            }
        client, transport = medians["client"], medians["transport"]
        ratio = (
            format(client["kib_per_connection"] / transport["kib_per_connection"], ".2f")
            if client and transport
            else ""
        )
        lines.append(
            f"| {loop} | {cell(client, 'kib_per_connection', '.1f', '')} "
            f"| {cell(transport, 'kib_per_connection', '.1f', '')} | {ratio} "
            f"| {cell(client, 'tasks_per_connection', '.2f', '')} "
            f"| {cell(transport, 'tasks_per_connection', '.2f', '')} | {min(reps)} |"
        )
    return "\n".join(lines)


# Servers: the echo server (shared with the other benchmarks) and the Hub.


def start_hub(pin: bool, log: Any) -> tuple[subprocess.Popen[bytes], int]:
    """``python -m wsclient serve --port 0`` in its own process; its port, read from its log.

    The log goes to a file rather than a pipe, so that a chatty server can
    never fill a pipe nobody reads and stall.
    """
    command = [sys.executable, "-m", "wsclient", "serve", "--host", HOST, "--port", "0"]
    if pin:
        command = on_server_cpu(command)
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=log, preexec_fn=preexec())
    deadline = time.monotonic() + HUB_START_TIMEOUT
    pattern = re.compile(r"serving on ws://\S+:(\d+)")
    while time.monotonic() < deadline and process.poll() is None:
        found = pattern.search(Path(log.name).read_text(errors="replace"))
        if found:
            return process, int(found.group(1))
        time.sleep(0.05)
    stop_server(process)
    raise RuntimeError(f"the Hub did not start: {Path(log.name).read_text()[-500:]!r}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Round trips, concurrent throughput and memory of wsclient's Client."
    )
    parser.add_argument("--repeat", type=positive(int), default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--roundtrips",
        type=positive(int),
        default=10_000,
        help="timed round trips (default 10,000)",
    )
    parser.add_argument(
        "--warmup", type=int, default=1_000, help="untimed round trips first (default 1,000)"
    )
    parser.add_argument(
        "--requests", type=positive(int), default=20_000, help="requests in the throughput test"
    )
    parser.add_argument(
        "--tasks", type=positive(int), default=64, help="Client tasks in the throughput test (64)"
    )
    parser.add_argument(
        "--size",
        type=positive(int),
        default=100,
        help="bytes per request on the wire (default 100)",
    )
    parser.add_argument(
        "--clients",
        type=positive(int),
        default=300,
        help="idle connections in the memory test (300)",
    )
    add_loop_option(parser)
    parser.add_argument("--no-hub", action="store_true", help="skip the runs against the Hub")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory test")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1,000 round trips, 2,000 requests, 50 idle connections, repeat 1",
    )
    parser.add_argument("--no-pin", action="store_true", help="don't pin servers and client")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds allowed for one run (default 300)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write raw results to PATH")
    # Used by the runner to start its memory workers.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=("client", "transport"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.roundtrips, args.warmup, args.requests, args.clients, args.repeat = (
            1_000,
            200,
            2_000,
            50,
            1,
        )
    args.time_limit = args.timeout
    if args.worker:
        if args.url is None or args.kind is None or not args.loop or len(args.loop) != 1:
            parser.error("--worker needs --url, --kind and exactly one --loop")
        args.loop = args.loop[0]
    return args


def progress(sample: Sample) -> str:
    name = f"{sample.name} on {sample.server}, {sample.loop}"
    if sample.error is not None:
        return f"{name}: FAILED {sample.error}"
    return (
        f"{name}: p50 {sample.p50_us:.1f} µs, p90 {sample.p90_us:.1f} µs, "
        f"{sample.cpu_us_per_rt:.1f} CPU µs/rt, {sample.per_s:,.0f} requests/s, "
        f"{sample.cpu_us_per_request:.1f} CPU µs/request"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args, hold_idle)

    loops = available_loops(args.loop)
    pin, pinned = pinning(not args.no_pin)
    args.no_pin = not pin  # workers pin themselves only when the servers are pinned too
    print(f"# {pinned}", file=sys.stderr)
    env = environment(pinned)  # before the runs: wsclient's source may change meanwhile
    text, payload = make_payload(args.size)
    hub_query = orjson.dumps(
        {"id": 1, "type": "query", "payload": {"resource": "echo", "parameters": payload}}
    ).decode()

    # SIGTERM, like Ctrl-C, stops the run, reports what was measured and stops the servers.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    samples: list[Sample] = []
    memory: list[dict[str, Any]] = []
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.NamedTemporaryFile("w+b", prefix="wsclient-hub-", suffix=".log") as log:
        try:
            echo, echo_port = start_server(pin)
            processes.append(echo)
            hub_url = None
            if not args.no_hub:
                hub, hub_port = start_hub(pin, log)
                processes.append(hub)
                hub_url = f"ws://{HOST}:{hub_port}/"
            if pin:
                pin_self()
            cfg = Config(
                echo_url=f"ws://{HOST}:{echo_port}/",
                hub_url=hub_url,
                text=text,
                payload=payload,
                hub_query=hub_query,
                warmup=args.warmup,
                roundtrips=args.roundtrips,
                requests=args.requests,
                tasks=args.tasks,
                timeout=args.timeout,
            )
            print(f"# echo server on {cfg.echo_url}, Hub on {hub_url}", file=sys.stderr)
            for rep in range(1, args.repeat + 1):
                # Interleaved: drift on the machine hits every runner alike.
                for runner in runners(loops, not args.no_hub):
                    sample = run_one(runner, cfg, rep)
                    samples.append(sample)
                    print(f"# rep {rep}/{args.repeat} {progress(sample)}", file=sys.stderr)
                    for process in processes:
                        if process.poll() is not None:
                            raise RuntimeError(f"a server exited with {process.returncode}")
                if args.no_memory:
                    continue
                for loop in loops:
                    for kind in ("client", "transport"):
                        result = memory_sample(args, kind, loop, cfg.echo_url)
                        result["rep"] = rep
                        memory.append(result)
                        print(f"# rep {rep}/{args.repeat} memory {result}", file=sys.stderr)
        except KeyboardInterrupt:
            print("# interrupted: reporting what was measured", file=sys.stderr)
        finally:
            for process in processes:
                stop_server(process)
    return report(args, env, samples, memory, len(text.encode()))


def report(
    args: argparse.Namespace,
    env: dict[str, Any],
    samples: list[Sample],
    memory: list[dict[str, Any]],
    size: int,
) -> int:
    rows = summarize(samples)
    print(
        f"{size}-byte JSON requests; {args.roundtrips:,} round trips after {args.warmup:,} "
        f"warm-up; {args.requests:,} requests by {args.tasks} Client tasks, or pipelined; "
        f"median over repetitions (--repeat {args.repeat}); Python {env['python']}, "
        f"wsclient from {env['wsclient_source']}, websockets {env['versions']['websockets']}, "
        f"anyio {env['versions']['anyio']}; {env['pinning']}.\n"
    )
    print("Round trips (sequential):\n")
    print(latency_table(rows))
    print("\nThroughput (Client: concurrent tasks; transport and websockets: pipelined):\n")
    print(throughput_table(rows))
    if memory:
        print(f"\nMemory of {args.clients} idle connections to the echo server (tracemalloc):\n")
        print(memory_table(memory))
    if args.json is not None:
        document = {
            "environment": env,
            "config": {
                key: getattr(args, key)
                for key in ("size", "roundtrips", "warmup", "requests", "tasks", "clients")
            }
            | {"repeat": args.repeat},
            "summary": rows,
            "samples": [dataclasses.asdict(sample) for sample in samples],
            "memory": memory,
        }
        write_json(args.json, document)
    failed = any(s.error for s in samples) or any("error" in m for m in memory)
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
