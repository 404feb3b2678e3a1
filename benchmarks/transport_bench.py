"""Latency and pipelined throughput: wsclient's transport against websockets.

Starts ``echo_server.py`` as a subprocess on 127.0.0.1 (pinned to CPU 0 with
``taskset`` when it exists), pins this process to CPU 1 when it can, then for
each repetition runs every client once, each in a fresh event loop:

* latency: N sequential round trips (send one message, await its echo) after a
  warm-up; p50 and p99 in microseconds;
* pipelined throughput: on the same connection, a sender task sends M messages
  while a receiver task receives the M echoes; msgs/s = M / elapsed.

Every message is the same JSON text (100 bytes by default) made with ``orjson``, sent as
``str``. Prints a Markdown table of medians over repetitions, with ratios to the
``websockets`` asyncio client; ``--json PATH`` writes the raw samples too.

Run by hand, never by the test suite::

    python benchmarks/transport_bench.py --quick
    python benchmarks/transport_bench.py --json results.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import os
import shutil
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple

import orjson
from common import (
    CLIENT_CPU,
    Concurrently,
    anyio_task_group,
    asyncio_gather,
    environment,
    importable,
    markdown_table,
    measure_roundtrips,
    padded_json,
    percentile,
    positive,
    put_median,
    run_on,
    trio_nursery,
    write_json,
)
from common import measure_pipelined as pipelined
from echo_process import SERVER_CPU, start_server, stop_server

HOST = "127.0.0.1"

Send = Callable[[str], Awaitable[None]]
Recv = Callable[[], Awaitable[Any]]


class Measurement(NamedTuple):
    latencies_ns: list[int]
    latency_cpu_s: float  # client process CPU time (user + sys) for the timed round trips
    pipelined_s: float
    pipelined_cpu_s: float


@dataclass(frozen=True)
class Config:
    url: str
    payload: str
    compression: Literal["deflate"] | None
    warmup: int
    roundtrips: int
    messages: int
    timeout: float


@dataclass(frozen=True)
class Sample:
    """One client, one repetition."""

    client: str
    loop: str
    compression: str | None
    rep: int
    p50_us: float | None = None
    p99_us: float | None = None
    mean_us: float | None = None
    cpu_us_per_rt: float | None = None
    msgs_per_s: float | None = None
    cpu_us_per_msg: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Client:
    name: str
    loop: str
    run: Callable[[Config], Measurement]

    @property
    def key(self) -> str:
        return f"{self.name}-{self.loop}"


# Measurements shared by every client: only send/recv and "run two tasks" differ.


PAYLOAD_TEMPLATE = {"type": "bench", "seq": 123456, "ts": 1700000000.123, "pad": ""}
MIN_SIZE = len(orjson.dumps(PAYLOAD_TEMPLATE))


def make_payload(size: int) -> str:
    """A JSON object of exactly ``size`` bytes, padded with seeded random letters."""
    return orjson.dumps(padded_json(lambda pad: {**PAYLOAD_TEMPLATE, "pad": pad}, size)).decode()


async def measure_latency(send: Send, recv: Recv, cfg: Config) -> tuple[list[int], float]:
    """Sequential round trips; returns nanoseconds per round trip and CPU seconds."""
    payload = cfg.payload

    async def roundtrip() -> Any:
        await send(payload)
        return await recv()

    return await measure_roundtrips(
        roundtrip, lambda echo: echo == payload, cfg.warmup, cfg.roundtrips
    )


async def measure_pipelined(
    send: Send, recv: Recv, concurrently: Concurrently, cfg: Config
) -> tuple[float, float]:
    """One sender and one receiver on one connection; returns seconds and CPU seconds."""
    payload = cfg.payload
    elapsed, cpu, last = await pipelined(send, recv, payload, cfg.messages, concurrently)
    if last != payload:
        raise RuntimeError(f"echo mismatch: sent {payload!r}, got {last!r}")
    return elapsed, cpu


# websockets' own clients: the reference.


async def websockets_asyncio_session(cfg: Config) -> Measurement:
    from websockets.asyncio.client import connect

    async with connect(cfg.url, compression=cfg.compression) as ws:
        latency = await measure_latency(ws.send, ws.recv, cfg)
        pipelined = await measure_pipelined(ws.send, ws.recv, asyncio_gather, cfg)
    return Measurement(*latency, *pipelined)


def run_websockets_asyncio(cfg: Config) -> Measurement:
    return asyncio.run(asyncio.wait_for(websockets_asyncio_session(cfg), cfg.timeout))


def run_websockets_uvloop(cfg: Config) -> Measurement:
    import uvloop

    return uvloop.run(asyncio.wait_for(websockets_asyncio_session(cfg), cfg.timeout))


def run_websockets_trio(cfg: Config) -> Measurement:
    import trio
    from websockets.trio.client import connect

    async def session() -> Measurement:
        with trio.fail_after(cfg.timeout):
            async with connect(cfg.url, compression=cfg.compression) as ws:
                latency = await measure_latency(ws.send, ws.recv, cfg)
                pipelined = await measure_pipelined(ws.send, ws.recv, trio_nursery, cfg)
        return Measurement(*latency, *pipelined)

    return trio.run(session)


# The floor: what the server and the kernel cost, with next to no client.


def run_raw_socket(cfg: Config) -> Measurement:
    """Blocking socket, precomputed masked frame, echo counted in bytes, not parsed.

    What a client can't go below on this machine: p50 minus this row is the
    client's own cost per round trip.
    """
    import socket
    import threading

    from websockets.client import ClientProtocol
    from websockets.frames import Frame, Opcode
    from websockets.http11 import Response
    from websockets.uri import parse_uri

    if cfg.compression is not None:
        raise ValueError("the raw-socket floor runs without compression only")
    data = cfg.payload.encode()
    frame = Frame(Opcode.TEXT, data).serialize(mask=True, extensions=[])
    echo_size = len(Frame(Opcode.TEXT, data).serialize(mask=False, extensions=[]))
    uri = parse_uri(cfg.url)
    protocol = ClientProtocol(uri)
    with socket.create_connection((uri.host, uri.port), timeout=cfg.timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        protocol.send_request(protocol.connect())
        sock.sendall(b"".join(protocol.data_to_send()))
        while not any(isinstance(e, Response) for e in protocol.events_received()):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed during the handshake")
            protocol.receive_data(chunk)
        if protocol.handshake_exc is not None:
            raise protocol.handshake_exc

        def roundtrip() -> None:
            sock.sendall(frame)
            received = 0
            while received < echo_size:
                received += len(sock.recv(65536))

        for _ in range(cfg.warmup):
            roundtrip()
        clock = time.perf_counter_ns
        latencies = [0] * cfg.roundtrips
        latency_cpu = time.process_time()
        for i in range(cfg.roundtrips):
            start = clock()
            roundtrip()
            latencies[i] = clock() - start
        latency_cpu = time.process_time() - latency_cpu

        def sender() -> None:
            for _ in range(cfg.messages):
                sock.sendall(frame)

        expected = echo_size * cfg.messages
        received = 0
        pipelined_cpu = time.process_time()
        start_s = time.perf_counter()
        thread = threading.Thread(target=sender)
        thread.start()
        try:
            while received < expected:
                chunk = sock.recv(262144)
                if not chunk:
                    raise ConnectionError("connection closed while pipelining")
                received += len(chunk)
        finally:
            thread.join()
        elapsed = time.perf_counter() - start_s
        pipelined_cpu = time.process_time() - pipelined_cpu
    return Measurement(latencies, latency_cpu, elapsed, pipelined_cpu)


# wsclient's transport, through anyio on every backend.


async def wsclient_session(cfg: Config) -> Measurement:
    import anyio

    from wsclient import connect_transport

    with anyio.fail_after(cfg.timeout):
        transport = await connect_transport(cfg.url, compression=cfg.compression)
        try:
            latency = await measure_latency(transport.send, transport.receive, cfg)
            pipelined = await measure_pipelined(
                transport.send, transport.receive, anyio_task_group, cfg
            )
        finally:
            await transport.aclose()
    return Measurement(*latency, *pipelined)


def wsclient_runner(loop: str) -> Callable[[Config], Measurement]:
    return partial(run_on, loop, wsclient_session)


def available_clients() -> tuple[list[Client], list[str]]:
    """Every client this environment can run, and why the others can't."""
    clients = [
        Client("raw-socket", "blocking", run_raw_socket),
        Client("websockets", "asyncio", run_websockets_asyncio),
    ]
    notes = []
    has_uvloop = importable("uvloop")
    has_trio = importable("trio")
    has_wsclient = importable("wsclient") and wsclient_has_transport()
    if has_uvloop:
        clients.append(Client("websockets", "uvloop", run_websockets_uvloop))
    if has_trio and importable("websockets.trio.client"):
        clients.append(Client("websockets", "trio", run_websockets_trio))
    if has_wsclient:
        clients.append(Client("wsclient", "asyncio", wsclient_runner("asyncio")))
        if has_uvloop:
            clients.append(Client("wsclient", "uvloop", wsclient_runner("uvloop")))
        if has_trio:
            clients.append(Client("wsclient", "trio", wsclient_runner("trio")))
    else:
        notes.append("wsclient.connect_transport is not importable: wsclient rows skipped")
    if not has_uvloop:
        notes.append("uvloop is not installed: uvloop rows skipped")
    if not has_trio:
        notes.append("trio is not installed: trio rows skipped")
    return clients, notes


def wsclient_has_transport() -> bool:
    try:
        from wsclient import connect_transport  # noqa: F401
    except ImportError:
        return False
    return True


# Processes and CPUs.


def pin_client(enabled: bool) -> str:
    if not enabled:
        return "client not pinned (--no-pin)"
    if not hasattr(os, "sched_setaffinity"):
        return "client not pinned (no os.sched_setaffinity on this platform)"
    allowed = os.sched_getaffinity(0)
    if CLIENT_CPU not in allowed or SERVER_CPU not in allowed:
        return f"client not pinned (allowed CPUs: {sorted(allowed)})"
    os.sched_setaffinity(0, {CLIENT_CPU})
    return f"client pinned to CPU {CLIENT_CPU} (os.sched_setaffinity)"


def pin_server(enabled: bool) -> tuple[bool, str]:
    """Whether to pin the echo server to its CPU, and what to print about it."""
    if not enabled:
        return False, "server not pinned (--no-pin)"
    if shutil.which("taskset") is None:
        return False, "server not pinned (taskset not found)"
    return True, f"server pinned to CPU {SERVER_CPU} (taskset)"


# Statistics and report.


def run_one(client: Client, cfg: Config, rep: int) -> Sample:
    gc.collect()
    try:
        result = client.run(cfg)
    except Exception as exc:
        traceback.print_exc()
        return Sample(client.name, client.loop, cfg.compression, rep, error=repr(exc))
    latencies = sorted(result.latencies_ns)
    return Sample(
        client.name,
        client.loop,
        cfg.compression,
        rep,
        p50_us=percentile(latencies, 0.50) / 1000,
        p99_us=percentile(latencies, 0.99) / 1000,
        mean_us=statistics.fmean(latencies) / 1000,
        cpu_us_per_rt=result.latency_cpu_s * 1e6 / cfg.roundtrips,
        msgs_per_s=cfg.messages / result.pipelined_s,
        cpu_us_per_msg=result.pipelined_cpu_s * 1e6 / cfg.messages,
    )


FIELDS = ("p50_us", "p99_us", "mean_us", "cpu_us_per_rt", "msgs_per_s", "cpu_us_per_msg")


def summarize(samples: list[Sample]) -> list[dict[str, Any]]:
    """Medians per (client, loop, compression), with ratios to websockets on asyncio."""
    groups: dict[tuple[str, str, str | None], list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.client, sample.loop, sample.compression), []).append(sample)
    rows = []
    for (name, loop, compression), group in groups.items():
        ok = [s for s in group if s.error is None]
        row: dict[str, Any] = {
            "client": name,
            "loop": loop,
            "compression": compression,
            "reps": len(ok),
            "errors": len(group) - len(ok),
        }
        for field in FIELDS:
            put_median(row, field, [getattr(s, field) for s in ok])
        rows.append(row)
    for row in rows:
        reference = next(
            (
                r
                for r in rows
                if r["client"] == "websockets"
                and r["loop"] == "asyncio"
                and r["compression"] == row["compression"]
                and "p50_us" in r
            ),
            None,
        )
        if reference is not None and "p50_us" in row:
            row["latency_ratio"] = row["p50_us"] / reference["p50_us"]
            row["throughput_ratio"] = row["msgs_per_s"] / reference["msgs_per_s"]
            row["cpu_per_rt_ratio"] = row["cpu_us_per_rt"] / reference["cpu_us_per_rt"]
            row["cpu_per_msg_ratio"] = row["cpu_us_per_msg"] / reference["cpu_us_per_msg"]
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    columns = [
        ("p50 µs", "p50_us", ".1f"),
        ("p99 µs", "p99_us", ".1f"),
        ("latency ratio", "latency_ratio", ".2f"),
        ("CPU µs/rt", "cpu_us_per_rt", ".1f"),
        ("msgs/s", "msgs_per_s", ",.0f"),
        ("throughput ratio", "throughput_ratio", ".2f"),
        ("CPU µs/msg", "cpu_us_per_msg", ".1f"),
    ]
    shown = [{**row, "compression": row["compression"] or "off"} for row in rows]
    return markdown_table(shown, ["client", "loop", "compression"], columns, failed="failed")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Round-trip latency and pipelined throughput of wsclient vs websockets."
    )
    parser.add_argument("--repeat", type=positive(int), default=5, help="repetitions (default 5)")
    parser.add_argument(
        "--roundtrips",
        type=positive(int),
        default=20_000,
        help="timed round trips (default 20,000)",
    )
    parser.add_argument(
        "--warmup", type=int, default=1_000, help="untimed round trips first (default 1,000)"
    )
    parser.add_argument(
        "--messages", type=positive(int), default=60_000, help="pipelined messages (default 60,000)"
    )
    parser.add_argument(
        "--size", type=positive(int), default=100, help="message size in bytes (default 100)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2,000 round trips, 5,000 pipelined messages, repeat 2",
    )
    parser.add_argument(
        "--compression",
        action="store_true",
        help="also run every client with permessage-deflate on (extra rows)",
    )
    parser.add_argument(
        "--clients",
        help="comma-separated subset, e.g. websockets-asyncio,wsclient-trio (default: all)",
    )
    parser.add_argument("--no-pin", action="store_true", help="don't pin server and client to CPUs")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds allowed for one client run"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write raw results to PATH")
    args = parser.parse_args(argv)
    if args.size < MIN_SIZE:
        parser.error(f"--size must be at least {MIN_SIZE} (the JSON without padding)")
    if args.quick:
        args.roundtrips, args.warmup, args.messages, args.repeat = 2_000, 200, 5_000, 2
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    payload = make_payload(args.size)
    clients, notes = available_clients()
    if args.clients:
        wanted = {name.strip() for name in args.clients.split(",")}
        unknown = wanted - {client.key for client in clients}
        if unknown:
            known = ", ".join(client.key for client in clients)
            sys.exit(f"unknown or unavailable clients: {', '.join(sorted(unknown))} (have {known})")
        clients = [client for client in clients if client.key in wanted]
    compressions: list[Literal["deflate"] | None] = [None]
    if args.compression:
        compressions.append("deflate")

    pin, server_pinning = pin_server(not args.no_pin)
    client_pinning = pin_client(not args.no_pin)
    for line in (server_pinning, client_pinning, *notes):
        print(f"# {line}", file=sys.stderr)

    # SIGTERM, like Ctrl-C, stops the run, reports what was measured and stops the server.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    samples: list[Sample] = []
    env = environment([server_pinning, client_pinning])  # before the runs
    process, port = start_server(pin, compression=args.compression)
    try:
        url = f"ws://{HOST}:{port}/"
        print(f"# echo server pid {process.pid} on {url}", file=sys.stderr)
        for rep in range(1, args.repeat + 1):
            for compression in compressions:
                cfg = Config(
                    url=url,
                    payload=payload,
                    compression=compression,
                    warmup=args.warmup,
                    roundtrips=args.roundtrips,
                    messages=args.messages,
                    timeout=args.timeout,
                )
                for client in clients:
                    if client.name == "raw-socket" and compression is not None:
                        continue
                    sample = run_one(client, cfg, rep)
                    samples.append(sample)
                    print(f"# rep {rep}/{args.repeat} {progress(sample)}", file=sys.stderr)
                    if process.poll() is not None:
                        raise RuntimeError(f"echo server exited with {process.returncode}")
    except KeyboardInterrupt:
        print("# interrupted: reporting what was measured", file=sys.stderr)
    finally:
        stop_server(process)

    rows = summarize(samples)
    print(
        f"{args.size}-byte JSON text messages; {args.roundtrips:,} round trips after "
        f"{args.warmup:,} warm-up; {args.messages:,} pipelined messages; "
        f"median over repetitions (--repeat {args.repeat}); Python {env['python']}, "
        f"websockets {env['versions']['websockets']}, {server_pinning}, {client_pinning}.\n"
    )
    print(table(rows))
    if args.json is not None:
        document = {
            "environment": env,
            "config": {
                "size": args.size,
                "payload": payload,
                "warmup": args.warmup,
                "roundtrips": args.roundtrips,
                "messages": args.messages,
                "repeat": args.repeat,
                "compression": compressions,
            },
            "summary": rows,
            "samples": [dataclasses.asdict(sample) for sample in samples],
        }
        write_json(args.json, document)
    return 1 if any(sample.error for sample in samples) else 0


def progress(sample: Sample) -> str:
    name = f"{sample.client} {sample.loop} compression={sample.compression or 'off'}"
    if sample.error is not None:
        return f"{name}: FAILED {sample.error}"
    return (
        f"{name}: p50 {sample.p50_us:.1f} µs, p99 {sample.p99_us:.1f} µs, "
        f"{sample.cpu_us_per_rt:.1f} CPU µs/rt, {sample.msgs_per_s:,.0f} msgs/s, "
        f"{sample.cpu_us_per_msg:.1f} CPU µs/msg"
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
