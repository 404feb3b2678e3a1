"""What the benchmark runners share besides the echo server process.

Command-line helpers, event loops and CPU pinning, worker subprocesses, the
pipelined measurement, the helpers the workers hold connections with, the
statistics, the Markdown tables and the environment reported with the results.

Imported as a sibling module, like ``echo_process``: the runners are run as
scripts, so this directory is on ``sys.path``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import string
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from echo_process import SERVER_CPU, preexec

T = TypeVar("T")

CLIENT_CPU = 1
LOOPS = ("asyncio", "uvloop", "trio")
# The distributions whose versions go with the results.
PACKAGES = ("wsclient", "websockets", "anyio", "trio", "uvloop", "orjson")
# Descriptors a process needs besides its sockets: stdio, the selector, the
# loop's self-pipe, the interpreter's own files, with room to spare.
SPARE_FILES = 64

Task = Callable[[], Coroutine[Any, Any, None]]
Concurrently = Callable[[Task, Task], Awaitable[None]]


# The command line.


def positive(kind: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type``: ``kind(text)``, which must be above 0."""

    def parse(text: str) -> T:
        value = kind(text)
        if not value > 0:  # type: ignore[operator]
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names it in "invalid int value"
    return parse


def add_loop_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        action="append",
        help="event loop; repeat the option for several (default: all three)",
    )


def importable(module: str) -> bool:
    """Whether ``module`` (a loop's, or websockets' trio client) imports."""
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def available_loops(requested: Sequence[str] | None) -> list[str]:
    """The loops asked for (all by default), in order, but those not installed (said on stderr)."""
    loops = []
    for loop in dict.fromkeys(requested or LOOPS):
        if importable(loop):
            loops.append(loop)
        else:
            print(f"# {loop} is not installed: skipped", file=sys.stderr)
    return loops


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"# raw results written to {path}", file=sys.stderr)


# CPUs and event loops.


def pinning(enabled: bool) -> tuple[bool, str]:
    """Whether the servers and the clients get a CPU each, and what to print about it."""
    if not enabled:
        return False, "not pinned (--no-pin)"
    if not hasattr(os, "sched_setaffinity") or shutil.which("taskset") is None:
        return False, "not pinned (no os.sched_setaffinity or taskset)"
    allowed = os.sched_getaffinity(0)
    if not {CLIENT_CPU, SERVER_CPU} <= allowed:
        return False, f"not pinned (allowed CPUs: {sorted(allowed)})"
    return True, f"server on CPU {SERVER_CPU}, clients on CPU {CLIENT_CPU}"


def pin_self() -> None:
    """Pin this process to :data:`CLIENT_CPU`, where it and the server's CPU are allowed."""
    if hasattr(os, "sched_setaffinity"):
        allowed = os.sched_getaffinity(0)
        if {CLIENT_CPU, SERVER_CPU} <= allowed:
            os.sched_setaffinity(0, {CLIENT_CPU})


def run_on(loop: str, func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``func(*args)`` in a fresh event loop: anyio on asyncio, uvloop or trio."""
    import anyio

    backend = "trio" if loop == "trio" else "asyncio"
    options = {"use_uvloop": True} if loop == "uvloop" else None
    return anyio.run(func, *args, backend=backend, backend_options=options)


# Worker subprocesses: a runner starts its own script with --worker.

# What run_worker raises when a worker fails, times out or prints no result.
WORKER_ERRORS = (subprocess.SubprocessError, ValueError, IndexError)


def run_worker(script: str, options: Sequence[object], timeout: float) -> dict[str, Any]:
    """Run ``python script --worker OPTIONS``; the JSON object it prints last on stdout."""
    command = [sys.executable, str(Path(script).resolve()), "--worker", *map(str, options)]
    completed = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        timeout=timeout,
        check=True,
        preexec_fn=preexec(),
    )
    result: dict[str, Any] = json.loads(completed.stdout.decode().strip().splitlines()[-1])
    return result


def worker_main(
    args: argparse.Namespace, session: Callable[[argparse.Namespace], Awaitable[Any]]
) -> int:
    """In a worker: pin unless ``--no-pin``, run ``session(args)`` on ``args.loop``, print it."""
    if not args.no_pin:
        pin_self()
    result = run_on(args.loop, session, args)
    print(json.dumps(result), flush=True)
    return 0


# The work: messages of a given size, round trips, pipelining.


def padded_json(frame: Callable[[str], Any], size: int) -> Any:
    """``frame(pad)``, its JSON (orjson) exactly ``size`` bytes; ``pad``: seeded random letters.

    Random letters rather than one repeated character, so that compression
    isn't flattered by a payload that deflates to nothing.
    """
    import orjson

    spare = size - len(orjson.dumps(frame("")))
    if spare < 0:
        raise ValueError(f"size must be at least {size - spare} bytes")
    rng = random.Random(size)
    framed = frame("".join(rng.choices(string.ascii_letters, k=spare)))
    assert len(orjson.dumps(framed)) == size
    return framed


def echo_dialect() -> Any:
    """A dialect whose requests are framed as their own replies, for the plain echo server.

    ``{"type": "response", "requestId": id, "payload": P}``: the echo of a
    request is, unchanged, its reply, so the server does no work of its own.
    """
    import wsclient

    class EchoDialect(wsclient.DefaultDialect):
        def request(self, request_id: int, kind: str, payload: Any, *, origin: Any = None) -> Any:
            return {"type": "response", "requestId": request_id, "payload": payload}

    return EchoDialect()


async def measure_roundtrips(
    roundtrip: Callable[[], Awaitable[Any]],
    check: Callable[[Any], bool],
    warmup: int,
    count: int,
) -> tuple[list[int], float]:
    """``warmup`` untimed round trips (the last reply checked), then ``count`` timed ones.

    Returns nanoseconds per timed round trip and this process's CPU seconds for them.
    """
    reply = None
    for _ in range(warmup):
        reply = await roundtrip()
    if warmup and not check(reply):
        raise RuntimeError(f"unexpected reply {reply!r}")
    clock = time.perf_counter_ns
    samples = [0] * count
    cpu = time.process_time()
    for i in range(count):
        start = clock()
        await roundtrip()
        samples[i] = clock() - start
    return samples, time.process_time() - cpu


# The pipelined test: one sender and one receiver on one connection.


async def asyncio_gather(a: Task, b: Task) -> None:
    import asyncio

    await asyncio.gather(a(), b())


async def anyio_task_group(a: Task, b: Task) -> None:
    import anyio

    async with anyio.create_task_group() as tg:
        tg.start_soon(a)
        tg.start_soon(b)


async def trio_nursery(a: Task, b: Task) -> None:
    import trio

    async with trio.open_nursery() as nursery:
        nursery.start_soon(a)
        nursery.start_soon(b)


async def measure_pipelined(
    send: Callable[[str], Awaitable[Any]],
    receive: Callable[[], Awaitable[Any]],
    message: str,
    count: int,
    concurrently: Concurrently,
) -> tuple[float, float, Any]:
    """``count`` messages sent by one task, received by another; seconds, CPU seconds, last."""
    last: list[Any] = [None]

    async def sender() -> None:
        for _ in range(count):
            await send(message)

    async def receiver() -> None:
        reply = None
        for _ in range(count):
            reply = await receive()
        last[0] = reply

    cpu = time.process_time()
    start = time.perf_counter()
    await concurrently(sender, receiver)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    return elapsed, cpu, last[0]


# In the workers: many idle connections in one task, their tasks and memory.


def count_tasks_asyncio() -> int:
    import asyncio

    return len(asyncio.all_tasks())


def count_tasks_trio() -> int:
    """Every task in the run: from the root task down through each nursery."""
    import trio

    count = 0
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        if task is None:
            continue
        count += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return count


def task_counter(loop: str) -> Callable[[], int]:
    return count_tasks_trio if loop == "trio" else count_tasks_asyncio


class Closing:
    """Enters a connection; on leaving, records an error from closing it instead of raising it.

    Hundreds of connections are nested in one task: an error raised while
    closing one would reach every connection closed after it, each task group
    wrapping it once more, until the exception is too deep to handle.
    """

    def __init__(self, connection: Any, errors: list[str]) -> None:
        self._connection = connection
        self._errors = errors

    async def __aenter__(self) -> Any:
        return await self._connection.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool:
        try:
            await self._connection.__aexit__(*exc_info)
        except Exception as error:
            if exc_info[1] is not None:
                raise  # not from closing: leaving the block failed already
            self._errors.append(repr(error))
        return False


async def settle() -> None:
    """Wait until no task is runnable: the short-lived tasks of each open are gone."""
    import anyio

    with anyio.fail_after(30):
        await anyio.wait_all_tasks_blocked()


def rss_kib() -> int | None:
    """This process's resident set size (VmRSS) in KiB; None where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class HandOver:
    """A factory that first returns a transport opened beforehand, then opens new ones.

    The connections are opened in concurrent batches, but a
    ``ReconnectingTransport`` (or a ``Client``) must be entered and left by the
    task that holds it (its task group lives there), so the handshakes run
    first, in a task group, and each transport is then handed to its
    connection. Reconnections, if any, go through ``then``.
    """

    def __init__(self, first: Any, then: Any) -> None:
        self._first = first
        self._then = then
        self.display_url = then.display_url

    async def __call__(self) -> Any:
        first, self._first = self._first, None
        if first is not None:
            return first
        return await self._then()


async def connect_batch(url: str, count: int) -> list[Any]:
    """``count`` wsclient transports, their handshakes run concurrently."""
    import anyio

    from wsclient import connect_transport

    opened: list[Any] = []

    async def connect_one() -> None:
        opened.append(await connect_transport(url, compression=None))

    try:
        async with anyio.create_task_group() as group:
            for _ in range(count):
                group.start_soon(connect_one)
    except BaseException:
        with anyio.CancelScope(shield=True):
            for transport in opened:
                await transport.abort()
        raise
    return opened


def raise_file_limit(connections: int) -> int:
    """Raise the soft limit on open files to the hard one; exit if N can't fit.

    The echo server and the workers are children of this process and inherit it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        target = soft
    else:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            print(f"# could not raise the open-files limit to {target}: {exc}", file=sys.stderr)
            target = soft
    if target != resource.RLIM_INFINITY and connections + SPARE_FILES > target:
        sys.exit(
            f"{connections} connections need about {connections + SPARE_FILES} open files "
            f"in the client and as many in the echo server, but the limit is {target} "
            f"(soft {soft}, hard {hard}). Raise the hard limit (ulimit -Hn, as root, or "
            f"/etc/security/limits.conf) or open at most {max(1, target - SPARE_FILES)}."
        )
    return target


def traced_bytes(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    # The snapshot taken before is alive while the one after is taken: leave
    # tracemalloc's own objects out of the difference.
    return snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])


# Statistics and tables.


def percentile(ordered: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of already sorted data."""
    index = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def put_median(row: dict[str, Any], field: str, values: Sequence[float]) -> None:
    """``row[field]``, the median of ``values``, and ``row[field_spread]``, (max - min) / median.

    Nothing without values; no spread for a median of 0.
    """
    if values:
        row[field] = statistics.median(values)
        if row[field]:
            row[f"{field}_spread"] = (max(values) - min(values)) / row[field]


def cell(row: dict[str, Any], field: str, spec: str, missing: str = "n/a") -> str:
    value = row.get(field)
    return missing if value is None else format(value, spec)


def markdown_table(
    rows: list[dict[str, Any]],
    keys: Sequence[str],
    columns: Sequence[tuple[str, str, str]],
    *,
    missing: str = "n/a",
    failed: str | None = None,
) -> str:
    """One line a row: ``keys`` as they are, then ``(header, field, format spec)`` columns, reps.

    ``missing`` stands for a value the row lacks; ``failed``, if given, fills
    every column of a row without a successful repetition.
    """
    lines = [
        "| " + " | ".join([*keys, *(header for header, _, _ in columns), "reps"]) + " |",
        "|" + "---|" * len(keys) + "---:|" * (len(columns) + 1),
    ]
    for row in rows:
        if failed is not None and not row["reps"]:
            cells = [failed] * len(columns)
        else:
            cells = [cell(row, field, spec, missing) for _, field, spec in columns]
        reps = f"{row['reps']}" + (f" ({row['errors']} failed)" if row["errors"] else "")
        lines.append("| " + " | ".join([*(f"{row[key]}" for key in keys), *cells, reps]) + " |")
    return "\n".join(lines)


# The environment the results come from.


def version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def wsclient_source() -> str | None:
    """Where the workers import wsclient from, and its commit (``+dirty``: changed since)."""
    import importlib.util

    spec = importlib.util.find_spec("wsclient")
    if spec is None or spec.origin is None:
        return None
    package = Path(spec.origin).parent
    git = shutil.which("git")
    if git is None:
        return str(package)
    try:
        commit = subprocess.run(
            [git, "rev-parse", "--short", "HEAD"], cwd=package, capture_output=True, check=True
        ).stdout.decode()
        changes = subprocess.run(
            [git, "status", "--porcelain", "--", "."], cwd=package, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return str(package)  # not in a git checkout
    return f"{package} at {commit.strip()}" + ("+dirty" if changes.strip() else "")


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(
    pinned: object, *, packages: Sequence[str] = PACKAGES, **extra: Any
) -> dict[str, Any]:
    """The machine, Python, the pinning, ``extra`` and the versions of ``packages``.

    Take it before the runs: wsclient's source may change meanwhile.
    """
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wsclient_source": wsclient_source(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "kernel": platform.release(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "pinning": pinned,
        **extra,
        "versions": {name: version(name) for name in packages},
    }
