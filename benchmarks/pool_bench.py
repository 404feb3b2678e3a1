"""Requests per second through a ``wsclient.Pool`` of 1, 2 and 4 members.

Against one Hub process, and against the cluster of the cluster test: three
``wsclient serve --redis`` processes sharing channels through Redis, reached
through nginx (seeds/004's configuration) or directly. The cluster pieces
(Redis, nginx, the Hub processes) are the test suite's own harnesses in
``tests/``, so this runner needs the dev install and a checkout, and Redis and
nginx (``scripts/ensure-redis``, ``scripts/ensure-nginx``).

Each run keeps ``--concurrency`` ``pool.query("echo")`` calls in flight for
``--seconds`` and counts the replies; then it publishes for ``--seconds``
through the pool, round robin over the members, with ``--concurrency``
publishes not yet delivered, and counts the deliveries to one pool
subscription (on the cluster, each has gone through Redis). The configurations are interleaved
(repetition 1 runs every one, then repetition 2...), and the table shows the
median of ``--repeat`` repetitions, with the Hub processes' CPU use (100% is
one core) read from /proc over the same window.

    .venv/bin/python benchmarks/pool_bench.py              # 5 repetitions of 3 s
    .venv/bin/python benchmarks/pool_bench.py --quick      # a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import wsclient  # noqa: E402
from tests.hub_process import HubProcess  # noqa: E402
from tests.nginx_server import running_nginx  # noqa: E402
from tests.redis_server import start_redis  # noqa: E402

SIZES = (1, 2, 4)
PAYLOAD = {"symbol": "WSC", "price": 101.25, "note": "x" * 40}  # about 100 bytes on the wire


@dataclass(frozen=True)
class Target:
    """Where a configuration's pool connects, and which processes serve it."""

    name: str
    urls: list[str]
    servers: list[HubProcess]


@dataclass(frozen=True)
class Sample:
    target: str
    size: int
    replies_per_second: float
    deliveries_per_second: float
    hub_cpu: float  # the serving Hubs' CPU time over wall time, 1.0 = one core
    errors: int


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(target: Target, size: int, seconds: float, concurrency: int) -> Sample:
    urls = target.urls[:size]  # a pool needs a member per URL: 1 member, 1 node
    async with wsclient.Pool(urls, size=size, compression=None) as pool:
        for _ in range(200):  # warm-up, not measured: connections and caches settle
            await pool.query("echo", PAYLOAD)
        cpu_before = sum(cpu_seconds(s.process.pid) for s in target.servers)
        started = time.perf_counter()
        replies, errors = await keep_querying(pool, seconds, concurrency)
        deliveries = await keep_publishing(pool, seconds, concurrency)
        elapsed = time.perf_counter() - started
        cpu = sum(cpu_seconds(s.process.pid) for s in target.servers) - cpu_before
    return Sample(target.name, size, replies / seconds, deliveries / seconds, cpu / elapsed, errors)


async def keep_querying(pool: wsclient.Pool, seconds: float, concurrency: int) -> tuple[int, int]:
    """Replies and errors with ``concurrency`` queries in flight for ``seconds``."""
    replies = errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal replies, errors
        while time.perf_counter() < stop_at:
            try:
                await pool.query("echo", PAYLOAD)
                replies += 1
            except wsclient.WSClientError:
                errors += 1

    async with anyio.create_task_group() as group:
        for _ in range(concurrency):
            group.start_soon(worker)
    return replies, errors


async def keep_publishing(pool: wsclient.Pool, seconds: float, window: int) -> int:
    """Deliveries to one pool subscription in ``seconds``, ``window`` publishes in flight.

    Publishes go round robin over the members; the subscription is pinned to
    one. On the cluster every delivery has gone through Redis.
    """
    in_flight = anyio.Semaphore(window)
    delivered = 0
    async with pool.subscribe("bench") as sub:
        await sub.confirmed(timeout=10)
        stop_at = time.perf_counter() + seconds

        async def publisher() -> None:
            while time.perf_counter() < stop_at:
                await in_flight.acquire()
                await pool.publish("bench", PAYLOAD)

        async def receiver() -> None:
            nonlocal delivered
            while True:
                await sub.receive()
                delivered += 1
                in_flight.release()

        with anyio.fail_after(seconds + 10):  # a lost delivery would stall the window
            async with anyio.create_task_group() as group:
                group.start_soon(receiver)
                async with anyio.create_task_group() as publishers:
                    for _ in range(4):
                        publishers.start_soon(publisher)
                group.cancel_scope.cancel()
    return delivered


def run(args: argparse.Namespace) -> list[Sample]:
    samples: list[Sample] = []
    with ExitStack() as stack:
        single = HubProcess().wait_listening()
        stack.callback(single.stop)
        redis = stack.enter_context(start_redis())
        nodes = [HubProcess(["--redis", redis.url]) for _ in range(3)]
        for node in nodes:
            stack.callback(node.stop)
            node.wait_listening()
        nginx = stack.enter_context(running_nginx([node.port for node in nodes]))
        targets = [
            Target("one Hub", [single.url], [single]),
            Target("3 nodes via nginx", [nginx.url], nodes),
            Target("3 nodes direct", [node.url for node in nodes], nodes),
        ]
        for rep in range(1, args.repeat + 1):
            for target in targets:
                for size in SIZES:
                    sample = anyio.run(measure, target, size, args.seconds, args.concurrency)
                    samples.append(sample)
                    print(
                        f"rep {rep}: {target.name}, pool of {size}:"
                        f" {sample.replies_per_second:,.0f} replies/s,"
                        f" {sample.deliveries_per_second:,.0f} deliveries/s,"
                        f" Hub CPU {sample.hub_cpu:.0%}, errors {sample.errors}",
                        file=sys.stderr,
                    )
    return samples


def table(samples: Sequence[Sample]) -> str:
    rows = [
        "| target | pool size | query replies/s | range | publish deliveries/s | range"
        " | Hub CPU | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base_replies = base_deliveries = 0.0
    for name in dict.fromkeys(s.target for s in samples):
        for size in SIZES:
            group = [s for s in samples if s.target == name and s.size == size]
            replies = [s.replies_per_second for s in group]
            deliveries = [s.deliveries_per_second for s in group]
            base_replies = base_replies or statistics.median(replies)
            base_deliveries = base_deliveries or statistics.median(deliveries)
            rows.append(
                f"| {name} | {size} | {ratio(replies, base_replies)} | {spread(replies)}"
                f" | {ratio(deliveries, base_deliveries)} | {spread(deliveries)}"
                f" | {statistics.median(s.hub_cpu for s in group):.0%}"
                f" | {sum(s.errors for s in group)} |"
            )
    return "\n".join(rows)


def ratio(values: Sequence[float], baseline: float) -> str:
    median = statistics.median(values)
    return f"{median:,.0f} ({median / baseline:.2f}x)"


def spread(values: Sequence[float]) -> str:
    return f"{min(values):,.0f} to {max(values):,.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="repetitions (%(default)s)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per run (%(default)s)")
    parser.add_argument(
        "--concurrency", type=int, default=64, help="queries in flight (%(default)s)"
    )
    parser.add_argument("--quick", action="store_true", help="1 repetition of 1 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.seconds = 1, 1.0
    samples = run(args)
    print(f"{args.concurrency} queries in flight, {args.seconds:g} s per run,")
    print(f"median of {args.repeat}; ratios to a pool of 1 on one Hub.\n")
    print(table(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
