"""Tests of ``wsclient bench``: pure pieces in-process, every scenario as a subprocess.

The subprocesses run for half a second or less against the embedded Hub (a
child process of theirs), a Hub or a plain echo server on an asyncio loop in
a thread of the test process, all on 127.0.0.1 ports the OS chose. Each
subprocess is bounded by ``timeout=``; nothing sleeps to let something happen:
the one test that acts mid-run waits for the Hub to say it is being loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from wsclient._cli import bench
from wsclient._cli._bench_report import Tally, cells, latency_summary, percentile
from wsclient._cli._bench_scenarios import Echoes, hub_request
from wsclient._cli._exit import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE
from wsclient._loopthread import LoopThread
from wsclient.server import Hub, HubServer, RequestContext

from .servers import Handler, closed_port, echo

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TIMEOUT = 30.0  # a bound on each subprocess, never a wait
SHORT = ["--duration", "0.25", "--warmup", "0.05", "--timeout", "5"]


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsclient", "bench", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=ENV,
        stdin=subprocess.DEVNULL,
    )


def bench_json(*args: str) -> dict[str, Any]:
    """Run with --json; the document, after checking the run was clean."""
    result = run_bench(*args, "--json")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    assert document["errors"] == 0
    assert document["error_samples"] == []
    return document


def check_latency(results: dict[str, Any], count: int) -> None:
    latency = results["latency_us"]
    assert latency["count"] == count > 0
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"]
    assert latency["p99"] <= latency["max"]
    assert latency["min"] <= latency["mean"] <= latency["max"]


def check_rates(results: dict[str, Any]) -> None:
    assert results["messages"] > 0
    assert results["elapsed_s"] > 0
    assert results["msgs_per_s"] > 0
    assert results["bytes_sent"] > 0
    assert results["bytes_received"] > 0
    wire = results["bytes_sent"] + results["bytes_received"]
    # elapsed_s is rounded to the millisecond
    assert results["mb_per_s"] == pytest.approx(wire / results["elapsed_s"] / 1e6, rel=0.01)
    check_latency(results, results["messages"])


# Servers in a thread of the test process


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread("bench-test-servers")
    thread.start()
    yield thread
    thread.stop()


@contextlib.contextmanager
def serving(loop_thread: LoopThread, handler: Handler) -> Iterator[str]:
    """Serve ``handler`` on the servers' loop; its URL, until the block ends."""

    async def start() -> Server:
        return await serve(handler, "127.0.0.1", 0, compression=None)

    server = loop_thread.submit(start()).result(timeout=10)

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    try:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    finally:
        loop_thread.submit(stop()).result(timeout=10)


@pytest.fixture(scope="module")
def echo_url(loop_thread: LoopThread) -> Iterator[str]:
    """A plain websockets echo server: it knows nothing of the Hub's dialect."""
    with serving(loop_thread, echo) as url:
        yield url


async def silent(ws: ServerConnection) -> None:
    async for _ in ws:
        pass


async def echo_other_bytes(ws: ServerConnection) -> None:
    """As long as the message, but not the message."""
    async for message in ws:
        await ws.send("y" * len(message))


async def echo_twice(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)
        await ws.send(message)


class DroppingFanout:
    """A Hub-like fanout that drops its second subscriber after five deliveries.

    The deliveries after the drop are held back a moment, so that they are
    still on their way to the other subscribers when the client sees it.
    """

    def __init__(self) -> None:
        self.subscribers: list[ServerConnection] = []
        self.victim_got = 0
        self.victim_dropped = False

    async def handler(self, ws: ServerConnection) -> None:
        async for raw in ws:
            message = json.loads(raw)
            if message.get("type") == "ping":
                await ws.send(json.dumps({"type": "pong"}))
            elif message.get("action") == "subscribe":
                self.subscribers.append(ws)
                confirm = {"type": "subscription_confirm", "channel": message["channel"]}
                await ws.send(json.dumps({"channel": "system", "data": confirm}))
            elif message.get("action") == "publish":
                await self.publish(json.dumps({k: message[k] for k in ("channel", "data")}))

    async def publish(self, frame: str) -> None:
        victim = self.subscribers[1]
        if self.victim_got == 5 and not self.victim_dropped:
            victim.transport.abort()
            self.victim_dropped = True
            await asyncio.sleep(0.3)
        for subscriber in self.subscribers:
            if subscriber is victim:
                if self.victim_dropped:
                    continue
                self.victim_got += 1
            with contextlib.suppress(ConnectionClosed):  # the run may end first
                await subscriber.send(frame)


class LoadedHub:
    """A Hub in the test process that counts the echo queries it answered."""

    def __init__(self, server: HubServer, busy: threading.Event, answered: list[int]) -> None:
        self.server = server
        self.busy = busy  # set at the tenth
        self.answered = answered


@pytest.fixture
def hub(loop_thread: LoopThread) -> Iterator[LoadedHub]:
    """A Hub the test can act on while a bench subprocess loads it."""
    hub, busy, answered = Hub(), threading.Event(), [0]

    @hub.on_query("echo")
    async def counting_echo(parameters: Any, ctx: RequestContext) -> Any:
        answered[0] += 1
        if answered[0] == 10:
            busy.set()
        return parameters

    stop = asyncio.Event()
    ready: concurrent.futures.Future[HubServer] = concurrent.futures.Future()

    async def serve_until_stopped() -> None:
        async with hub.serve("127.0.0.1", 0) as server:
            ready.set_result(server)
            await stop.wait()

    done = loop_thread.submit(serve_until_stopped())
    yield LoadedHub(ready.result(timeout=10), busy, answered)
    loop_thread.loop.call_soon_threadsafe(stop.set)
    done.result(timeout=10)


# Pure pieces, in-process


def test_percentile_is_nearest_rank() -> None:
    """Nearest rank: the smallest value with at least q of the data at or below it."""
    data = list(range(1, 101))
    assert [percentile(data, q) for q in (0.01, 0.5, 0.9, 0.99, 1.0)] == [1, 50, 90, 99, 100]
    assert percentile([7], 0.99) == 7
    assert percentile([1, 2], 0.5) == 1


def test_latency_summary_in_microseconds() -> None:
    """Nanosecond samples summarise to ordered µs percentiles; no samples, no summary."""
    summary = latency_summary([3000, 1000, 2000, 10_000])
    assert summary == {
        "count": 4,
        "min": 1.0,
        "mean": 4.0,
        "p50": 2.0,
        "p90": 10.0,
        "p99": 10.0,
        "max": 10.0,
    }
    assert latency_summary([]) is None


def test_tally_keeps_a_few_distinct_error_samples() -> None:
    """Every error is counted; only the first five distinct messages are kept."""
    tally = Tally()
    for i in range(20):
        tally.error(f"error {i % 7}")
    tally.error(ValueError())
    assert tally.errors == 21
    assert tally.error_samples == [f"error {i}" for i in range(5)]


def test_tally_samples_past_its_capacity() -> None:
    """Past its capacity the tally keeps a uniform sample: exact count and extremes."""
    tally = Tally(capacity=100)
    for latency in range(1000, 10_001_000, 1000):  # 1 µs to 10 ms, 10,000 of them
        tally.record(latency)
    assert (tally.messages, len(tally.samples)) == (10_000, 100)
    summary = tally.latency()
    assert summary is not None
    assert (summary["count"], summary["min"], summary["max"]) == (10_000, 1.0, 10_000.0)
    assert summary["mean"] == 5000.5
    assert 2500 < summary["p50"] < 7500  # a sample of 100: roughly the middle
    assert summary["min"] <= summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["max"]


def test_hub_request_is_the_size_asked() -> None:
    """The echo query's frame is the size asked, or its bare envelope when that is bigger."""
    parameters, size = hub_request(1000)
    assert size == 1000
    assert len(parameters["pad"]) > 800
    parameters, size = hub_request(10)
    assert parameters == {"pad": ""}
    assert 80 < size < 130


def test_table_cells_pick_one_latency_unit() -> None:
    """The row's latency unit follows its median and is named in the headers."""
    results = {
        "messages": 12345,
        "msgs_per_s": 2469.0,
        "mb_per_s": 0.316,
        "latency_us": {"p50": 250.0, "p90": 1500.0, "p99": 9.5, "max": 20_000.0},
    }
    assert cells("rtt", results) == [
        ("messages", "12,345"),
        ("msgs/s", "2,469"),
        ("MB/s", "0.32"),
        ("p50 µs", "250"),
        ("p90 µs", "1,500"),
        ("p99 µs", "9.50"),
        ("max µs", "20,000"),
    ]
    results["latency_us"] = {"p50": 2500.0, "p90": 15_000.0, "p99": 16_000.0, "max": 99_000.0}
    assert [value for _, value in cells("rtt", results)[3:]] == [
        "2.50",
        "15.0",
        "16.0",
        "99.0",
    ]


def test_errors_inside_exception_groups_are_found() -> None:
    """Ctrl-C wrapped by trio's nurseries still exits 130; a refused connection exits 1."""
    group = BaseExceptionGroup("outer", [BaseExceptionGroup("inner", [KeyboardInterrupt()])])
    assert bench._failed(group) == EXIT_INTERRUPTED
    assert bench._failed(ExceptionGroup("g", [bench.BenchFailed("refused")])) == EXIT_FAILED
    with pytest.raises(ExceptionGroup):
        bench._failed(ExceptionGroup("g", [RuntimeError("a bug")]))


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--echo"], "--echo needs the URL of an echo server"),
        (["ws://h/", "--echo", "--scenario", "fanout"], "--echo works with rtt and throughput"),
        (["ws://h/", "--echo", "--scenario", "connections"], "connections needs a Hub-like"),
        (["ws://h/", "--in-process"], "--in-process applies to the embedded Hub"),
        (["--window", "4"], "--window applies to throughput and fanout, not rtt"),
        (["--scenario", "throughput", "--rate", "5"], "--rate applies to fanout"),
        (["--scenario", "connections", "--message-size", "9"], "sends no messages"),
        (["--scenario", "connections", "--warmup", "1"], "has no warm-up"),
        (["--message-size", str(2**30)], "--message-size is at most"),
    ],
)
def test_options_that_do_not_go_together(argv: list[str], message: str) -> None:
    """Contradictory options are refused before anything runs, saying why."""
    with pytest.raises(bench._Usage, match=message):
        bench._settings(parse(*argv))


def test_echoes_are_numbered_and_matched_byte_for_byte() -> None:
    """Each echo message is distinct and its own size; text or binary, only its echo matches."""
    echoes = Echoes(8)
    first, second = echoes.message(0), echoes.message(0x1F)
    assert (first, second) == (b"0xxxxxxx", b"1fxxxxxx")
    assert echoes.matches(first, 0)
    assert echoes.matches(first.decode(), 0)
    assert not echoes.matches(second, 0)
    assert not echoes.matches(b"yyyyyyyy", 0)
    assert Echoes(1).message(0x1F) == b"f"  # too short for the number: its last digits


def test_defaults_depend_on_the_scenario() -> None:
    """Connections default per scenario; the window and message size have one default."""
    settings = bench._settings(parse("--scenario", "fanout"))
    assert (settings.connections, settings.window, settings.message_size) == (10, 32, 128)
    assert bench._settings(parse("--scenario", "connections")).connections == 100
    assert bench._settings(parse()).connections == 1


# The verb, as a subprocess


def test_rtt_against_the_embedded_hub() -> None:
    """rtt --json: the Client's echo queries on one connection, with sane percentiles."""
    document = bench_json("--scenario", "rtt", "--message-size", "200", *SHORT)
    assert document["scenario"] == "rtt"
    assert document["server"] == "embedded Hub (subprocess)"
    assert document["url"].startswith("ws://127.0.0.1:")
    assert (document["backend"], document["client"]) == ("asyncio", "Client")
    assert (document["connections"], document["window"], document["message_size"]) == (1, None, 200)
    assert (document["duration"], document["warmup"]) == (0.25, 0.05)
    results = document["results"]
    assert results["message_bytes"] == 200
    check_rates(results)


def test_throughput_against_the_embedded_hub() -> None:
    """throughput --json: a window of queries in flight on each of two connections."""
    document = bench_json("--scenario", "throughput", "--connections", "2", "--window", "8", *SHORT)
    assert (document["connections"], document["window"]) == (2, 8)
    check_rates(document["results"])


def test_fanout_delivers_every_message_to_every_subscriber() -> None:
    """fanout --json: delivered == published x subscribers, nothing lost."""
    document = bench_json("--scenario", "fanout", "--connections", "3", "--window", "4", *SHORT)
    results = document["results"]
    assert results["subscribers"] == document["connections"] == 3
    assert results["published"] > 0
    assert results["delivered"] == results["expected"] == results["published"] * 3
    assert results["lost"] == 0
    check_rates(results)


def test_connections_open_all_and_measure_memory() -> None:
    """connections --json: all N open, a rate, a time to all OPEN, memory per connection."""
    document = bench_json("--scenario", "connections", "--connections", "20", "--duration", "0.2")
    assert document["message_size"] is None
    results = document["results"]
    assert (results["opened"], results["failed"]) == (20, 0)
    assert results["time_to_all_open_s"] > 0
    assert results["opens_per_s"] > 0
    assert results["close_s"] >= 0
    check_latency(results, 20)
    assert results["latency_us"]["max"] <= results["time_to_all_open_s"] * 1e6 + 10
    if sys.platform == "linux":
        assert results["memory_method"] == "rss"
        assert results["memory_per_connection_bytes"] is not None


def test_trio_with_the_hub_in_process() -> None:
    """--backend trio --in-process: the Hub runs in a thread of the benchmarking process."""
    document = bench_json("--scenario", "rtt", "--backend", "trio", "--in-process", *SHORT)
    assert (document["backend"], document["server"]) == ("trio", "embedded Hub (in-process)")
    check_rates(document["results"])


@pytest.mark.parametrize("scenario", ["rtt", "throughput"])
def test_echo_server_with_the_bare_transport(echo_url: str, scenario: str) -> None:
    """--echo: rtt and throughput work against a plain echo server, through the transport."""
    document = bench_json(
        echo_url, "--echo", "--scenario", scenario, "--message-size", "50", *SHORT
    )
    assert (document["client"], document["server"]) == ("transport", "external")
    results = document["results"]
    assert results["message_bytes"] == 50
    check_rates(results)
    # Real bytes, both ways: a masked frame of 50 bytes out (6 of header), unmasked back (2).
    assert results["bytes_sent"] == results["messages"] * 56
    assert results["bytes_received"] == results["messages"] * 52


@pytest.mark.parametrize("handler", [echo_other_bytes, echo_twice])
def test_echo_is_matched_to_its_own_message(loop_thread: LoopThread, handler: Handler) -> None:
    """An echo server whose replies are not the message sent, or extra: errors, exit 1."""
    with serving(loop_thread, handler) as url:
        argv = ["--echo", "--duration", "0.2", "--warmup", "0.05", "--timeout", "0.3"]
        result = run_bench(url, *argv, "--json")
    assert result.returncode == EXIT_FAILED, result.stderr
    document = json.loads(result.stdout)
    assert document["errors"] > 0
    assert "a message that echoes nothing we sent" in document["error_samples"]
    if handler is echo_twice:  # every echo still matched its own message, once
        assert 0 < document["results"]["messages"] <= document["errors"] + 1


def test_silent_echo_server_times_out_each_message(loop_thread: LoopThread) -> None:
    """A server that never echoes: each message in flight is an error after --timeout."""
    with serving(loop_thread, silent) as url:
        argv = ["--scenario", "throughput", "--window", "4", "--timeout", "0.3", "--warmup", "0"]
        result = run_bench(url, "--echo", *argv, "--duration", "0.1", "--json")
    assert result.returncode == EXIT_FAILED, result.stderr
    document = json.loads(result.stdout)
    assert document["errors"] == 4
    assert document["error_samples"] == ["no echo within --timeout 0.3 s"]
    assert document["results"]["messages"] == 0


def test_warmup_is_not_measured(hub: LoadedHub) -> None:
    """Queries answered during the warm-up are not in the results."""
    document = bench_json(hub.server.url, "--duration", "0.2", "--warmup", "0.1")
    assert document["warmup"] == 0.1
    assert 0 < document["results"]["messages"] < hub.answered[0]


def test_fanout_drop_loses_only_what_the_dropped_subscriber_missed(
    loop_thread: LoopThread,
) -> None:
    """A subscriber dropped mid-run: the others still get everything in flight; exit 1."""
    server = DroppingFanout()
    with serving(loop_thread, server.handler) as url:
        argv = ["--connections", "3", "--window", "8", "--warmup", "0", "--duration", "20"]
        result = run_bench(url, "--scenario", "fanout", *argv, "--json")
    assert result.returncode == EXIT_FAILED, result.stderr
    document = json.loads(result.stdout)
    results = document["results"]
    published = results["published"]
    assert published > 5
    assert results["delivered"] == 2 * published + 5  # the victim got five
    assert results["lost"] == published - 5
    assert document["errors"] == results["lost"] + 1  # and the drop
    assert results["elapsed_s"] < 15  # it ended at the drop, not after 20 s


def test_table_output() -> None:
    """Without --json: a table with the percentiles and rates, nothing on stderr."""
    result = run_bench("--in-process", *SHORT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for header in ("messages", "msgs/s", "MB/s", "p50 µs", "p90 µs", "p99 µs", "max µs", "errors"):
        assert header in result.stdout
    assert "client: Client" in result.stdout


def test_refused_connection_exits_1() -> None:
    """A refused URL exits 1 with one line saying so, no traceback, no secrets."""
    result = run_bench(f"ws://user:s3cret@127.0.0.1:{closed_port()}/?token=t0ken", "--json")
    assert result.returncode == EXIT_FAILED
    assert result.stdout == ""
    assert result.stderr.startswith("wsclient bench: cannot connect to 127.0.0.1:")
    assert "connection refused" in result.stderr
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr
    assert "t0ken" not in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["ws://127.0.0.1:9/", "--echo", "--scenario", "fanout"],
        ["http://127.0.0.1/"],
        ["--duration", "0"],
        ["--connections", "-3"],
    ],
)
def test_bad_usage_exits_2(argv: list[str]) -> None:
    """--echo with fanout, a non-WebSocket URL and non-positive numbers exit 2, no traceback."""
    result = run_bench(*argv)
    assert result.returncode == EXIT_USAGE
    assert "Traceback" not in result.stderr
    assert result.stderr.strip()


DROP_ARGS = ["--duration", "20", "--warmup", "0"]  # the drop comes in the measured phase


def test_server_dropping_connections_ends_the_run(hub: LoadedHub, loop_thread: LoopThread) -> None:
    """The server dropping every connection mid-run: errors counted, exit 1, a clean report."""
    process = subprocess.Popen(
        [sys.executable, "-m", "wsclient", "bench", hub.server.url, "--json", *DROP_ARGS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=ENV,
    )
    try:
        assert hub.busy.wait(timeout=TIMEOUT)
        loop_thread.submit(hub.server.abort_connections()).result(timeout=10)
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == EXIT_FAILED, err
    assert "Traceback" not in err
    document = json.loads(out)
    assert document["errors"] >= 1
    assert "connection dropped" in " ".join(document["error_samples"])
    assert document["results"]["messages"] >= 10
    assert document["results"]["elapsed_s"] < 15  # it ended at the drop, not after 20 s
