"""``wsclient bench [URL]``: load a WebSocket server and report what it saw.

With no URL, an embedded Hub is started on 127.0.0.1 in a child process (on
uvloop when it is installed), so the server has a GIL (and, given two cores,
a core) of its own: rates and memory are then the client's. ``--in-process``
runs the Hub in this process instead (on asyncio in the same event loop, on
trio in a thread): every message then costs the client's CPU and the
server's on one core. On a 2-core machine the child process gave 2-3 times
the throughput, fanout deliveries/s and opens/s, and memory per connection
without the server's share; sequential rtt was slightly faster in-process
(one loop, no wake-up of another process per message), so read in-process
rtt as client + server cost.

Scenarios (``--scenario``):

- ``rtt``: one request at a time on each connection; request/response latency.
  Against the Hub, ``Client.query("echo", payload)``; against a plain echo
  server (``--echo``), the bare transport sends numbered text messages and
  waits for each one's own echo (text or binary, byte for byte).
- ``throughput``: ``--window`` messages in flight on each connection: messages/s,
  MB/s, and each message's latency including its wait in the pipeline. Against
  the Hub, ``--window`` tasks per Client make ``echo`` queries; with ``--echo``
  one task sends while another reads the echoes.
- ``fanout``: one publisher and ``--connections`` subscriber Clients on one
  channel; each message carries its publishing time, so the subscribers
  measure delivery latency; every subscriber must get every message (the
  ones lost are errors). Needs a Hub-like server.
- ``connections``: open ``--connections`` Clients at once (heartbeat on): time
  until all are OPEN, opening rate, memory per connection (resident set size of
  this process, with ``--in-process`` the Hub's share too); hold them for
  ``--duration``; close them. Needs a Hub-like server.

The other scenarios first run ``--warmup`` seconds of the same load on the
same connections, not measured. Every reply is waited for ``--timeout`` at
most: a server that does not answer ends the run with errors.

With ``--json``, one JSON document goes to stdout::

    scenario       "rtt" | "throughput" | "fanout" | "connections"
    url            the server, without user info or query values
    server         "embedded Hub (subprocess)" | "embedded Hub (in-process)" | "external"
    backend        "asyncio" | "uvloop" | "trio"
    client         "Client" (the SDK) | "transport" (bare WebSocketTransport, --echo)
    message_size   bytes asked for (null for connections)
    connections    connections measured (fanout: subscribers; the publisher is one more)
    window         messages in flight per connection (throughput, fanout), else null
    rate           fanout publishes per second, null: as fast as the window allows
    duration       seconds measured (connections: held open)
    warmup         seconds of the same load before, not measured (null for connections)
    timeout        seconds allowed for opening, for each reply, for closing
    results        rtt, throughput, fanout: elapsed_s (the measured phase, with
                   its wait for the replies in flight), messages (replies or
                   deliveries in it), message_bytes (one request's or
                   publication's encoded size: at least the Hub's JSON
                   envelope), msgs_per_s, bytes_sent and bytes_received
                   (WebSocket frames, headers included, on every connection),
                   mb_per_s ((bytes_sent + bytes_received) / elapsed_s / 1e6);
                   fanout also: published, subscribers, expected, delivered,
                   lost; connections: opened, failed, time_to_all_open_s,
                   opens_per_s, memory_per_connection_bytes (growth of this
                   process's memory over the opening, per connection),
                   memory_method ("rss", "peak rss" or null), held_s (less if a
                   connection dropped), close_s; all: latency_us {count, min,
                   mean, p50, p90, p99, max} or null, nearest-rank percentiles
                   (connections: each one's time to OPEN; past a million
                   samples the percentiles come from a uniform random sample
                   of a million)
    errors         failed opens and requests, dropped connections, lost deliveries,
                   messages that answer nothing sent (warm-up included)
    error_samples  up to five distinct error messages

Exit codes: 0 no errors, 1 errors counted or no connection opened, 2 bad
usage, 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from wsclient._cli._bench_report import Meter, Tally, report, say, show_progress
from wsclient._cli._bench_scenarios import SCENARIOS, Outcome, Settings
from wsclient._cli._exit import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from wsclient._exceptions import InvalidURL, WSClientError
from wsclient._redact import redact_url
from wsclient._transport import _parse_url

__all__ = ["add_parser", "run", "serve_child"]

RICH_MISSING = "the table and progress bar need rich: pip install 'wsclient[cli]' (or use --json)"
DEFAULT_CONNECTIONS = {"rtt": 1, "throughput": 1, "fanout": 10, "connections": 100}
DEFAULT_WINDOW = 32
DEFAULT_MESSAGE_SIZE = 128
DEFAULT_WARMUP = 0.5
MAX_MESSAGE_SIZE = 64 * 2**20
HUB_START_TIMEOUT = 20.0  # a cold start imports the package in a fresh interpreter
# The JSON fields, documented once, in the docstring (None under python -OO).
JSON_FIELDS = (__doc__ or "").partition("With ``--json``, ")[2].partition("\n\nExit codes")[0]
DESCRIPTION = """\
Load a WebSocket server and report latency percentiles, rates and errors.
With no URL, an embedded Hub on 127.0.0.1 (a child process) is the server.

scenarios:
  rtt          one request at a time: request/response latency
  throughput   --window messages in flight per connection: msgs/s, MB/s
  fanout       1 publisher, --connections subscribers: delivery latency, losses
  connections  open --connections Clients at once: time to OPEN, rate, memory

rtt and throughput work against any echo server with --echo (bare transport)."""
EXIT_CODES = """

exit codes: 0 no errors, 1 errors counted or no connection opened, 2 bad usage,
130 interrupted (Ctrl-C)."""


class _Usage(Exception):
    """Options that do not go together."""


class BenchFailed(Exception):
    """The run could not start (no connection opened, the embedded Hub did not start)."""


def add_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = verbs.add_parser(
        "bench",
        help="load a server and report latency and throughput",
        description=DESCRIPTION,
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("url", nargs="?", type=_ws_url, help="ws:// or wss:// URL (default: a Hub)")
    bench.add_argument("--scenario", choices=list(SCENARIOS), default="rtt", help="(%(default)s)")
    bench.add_argument(
        "--echo", action="store_true", help="URL is a plain echo server (rtt, throughput)"
    )
    bench.add_argument(
        "--connections",
        metavar="N",
        type=_positive(int),
        help="connections (rtt 1, throughput 1, fanout 10 subscribers, connections 100)",
    )
    bench.add_argument(
        "--duration",
        metavar="S",
        type=_positive(float),
        default=5.0,
        help="seconds measured (%(default)s)",
    )
    bench.add_argument(
        "--warmup",
        metavar="S",
        type=_positive(float, zero=True),
        help=f"seconds of load before, not measured (default {DEFAULT_WARMUP}; 0: none)",
    )
    bench.add_argument(
        "--message-size",
        metavar="BYTES",
        type=_positive(int),
        help=f"bytes a message (default {DEFAULT_MESSAGE_SIZE}; a Hub request is at least ~100)",
    )
    bench.add_argument(
        "--window",
        metavar="N",
        type=_positive(int),
        help=f"messages in flight per connection: throughput, fanout ({DEFAULT_WINDOW})",
    )
    bench.add_argument(
        "--rate",
        metavar="R",
        type=_positive(float),
        help="fanout: publishes per second (default: no pacing)",
    )
    bench.add_argument(
        "--timeout",
        metavar="S",
        type=_positive(float),
        default=10.0,
        help="seconds to open, to wait for a reply, to close (%(default)s)",
    )
    bench.add_argument(
        "--backend", choices=["asyncio", "uvloop", "trio"], default="asyncio", help="(%(default)s)"
    )
    bench.add_argument(
        "--in-process",
        action="store_true",
        help="run the embedded Hub in this process, not a child process",
    )
    bench.add_argument("--json", action="store_true", help="print one JSON document to stdout")
    bench.set_defaults(handler=run)


def _epilog() -> str:
    fields = JSON_FIELDS.replace("::", ":").replace("``", "'")
    return (f"With --json, {fields}" if fields else "") + EXIT_CODES


def _positive(kind: Callable[[str], float], *, zero: bool = False) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not ((value > 0 or (zero and value == 0)) and math.isfinite(value)):
            least = "zero or more" if zero else "a positive number"
            raise argparse.ArgumentTypeError(f"must be {least}, not {text}")
        return value

    return parse


def _ws_url(text: str) -> str:
    try:
        _parse_url(text)
    except InvalidURL as exc:  # its message has no secrets
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _settings(args: argparse.Namespace) -> Settings:
    """The options checked together; raises :class:`_Usage`."""
    scenario = args.scenario
    if args.echo and args.url is None:
        raise _Usage("--echo needs the URL of an echo server")
    if args.echo and scenario not in ("rtt", "throughput"):
        raise _Usage(f"--echo works with rtt and throughput; {scenario} needs a Hub-like server")
    if args.in_process and args.url is not None:
        raise _Usage("--in-process applies to the embedded Hub: give no URL")
    if args.window is not None and scenario not in ("throughput", "fanout"):
        raise _Usage(f"--window applies to throughput and fanout, not {scenario}")
    if args.rate is not None and scenario != "fanout":
        raise _Usage(f"--rate applies to fanout, not {scenario}")
    if scenario == "connections":
        if args.message_size is not None:
            raise _Usage("the connections scenario sends no messages: drop --message-size")
        if args.warmup is not None:
            raise _Usage("the connections scenario has no warm-up: its opening is measured")
    size = args.message_size or DEFAULT_MESSAGE_SIZE
    warmup = DEFAULT_WARMUP if args.warmup is None else args.warmup
    if size > MAX_MESSAGE_SIZE:
        raise _Usage(f"--message-size is at most {MAX_MESSAGE_SIZE} bytes")
    if args.backend != "asyncio" and not _importable(args.backend):
        raise _Usage(f"--backend {args.backend}: {args.backend} is not installed")
    return Settings(
        scenario=scenario,
        url=args.url or "",
        echo=args.echo,
        connections=args.connections or DEFAULT_CONNECTIONS[scenario],
        duration=args.duration,
        warmup=0.0 if scenario == "connections" else warmup,
        message_size=size,
        window=args.window or DEFAULT_WINDOW,
        rate=args.rate,
        timeout=args.timeout,
    )


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def run(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
    except _Usage as exc:
        say(str(exc))
        return EXIT_USAGE
    has_rich = _importable("rich")
    if not args.json and not has_rich:
        say(RICH_MISSING)
        return EXIT_FAILED
    show = has_rich and sys.stderr.isatty()  # a bar in a pipe or a log file is noise
    _quiet_logs()
    extra = settings.connections + 1 if args.in_process else 0  # the Hub's side of each
    _raise_open_files(settings.connections + 1 + extra)
    options = {"use_uvloop": True} if args.backend == "uvloop" else None
    backend = "trio" if args.backend == "trio" else "asyncio"
    try:
        document = anyio.run(_bench, settings, args, show, backend=backend, backend_options=options)
    except BaseException as exc:
        return _failed(exc)
    report(document, args.json)
    return EXIT_FAILED if document["errors"] else EXIT_OK


def _failed(exc: BaseException) -> int:
    """An exit code for what ended the run; raises what is a bug, not a failure."""
    leaves = _leaves(exc)
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        say("interrupted")
        return EXIT_INTERRUPTED
    if all(isinstance(leaf, (BenchFailed, WSClientError, OSError)) for leaf in leaves):
        say(str(leaves[0]) or type(leaves[0]).__name__)
        return EXIT_FAILED
    raise exc


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions in ``exc``, exception groups opened (trio wraps even Ctrl-C in one)."""
    nested = getattr(exc, "exceptions", None)
    if isinstance(nested, tuple) and nested:
        return [leaf for inner in nested for leaf in _leaves(inner)]
    return [exc]


def _quiet_logs() -> None:
    # Each client's state changes would print a line per connection; the
    # report counts what went wrong. The Hub's warnings (slow consumers) stay.
    logging.getLogger("wsclient").setLevel(logging.ERROR)
    logging.getLogger("wsclient.server").setLevel(logging.WARNING)


def _raise_open_files(needed: int) -> None:
    """Raise the soft limit on open files towards the hard one when ``needed`` is near it."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed + 64  # the interpreter's own files, the progress bar's terminal
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
        if target < wanted:
            say(f"warning: {needed} connections need more open files than the limit {target}")


# The run


async def _bench(settings: Settings, args: argparse.Namespace, show: bool) -> dict[str, Any]:
    tally, meter = Tally(), Meter()
    async with anyio.create_task_group() as tg:
        if show:
            tg.start_soon(show_progress, meter, tally)
        try:
            async with _server(settings, args.in_process) as (url, server):
                settings = dataclasses.replace(settings, url=url)
                outcome = await SCENARIOS[settings.scenario](settings, tally, meter)
        finally:
            tg.cancel_scope.cancel()
    if outcome.failure is not None:
        raise BenchFailed(outcome.failure)
    return _document(settings, args, server, outcome, tally)


def _document(
    settings: Settings, args: argparse.Namespace, server: str, outcome: Outcome, tally: Tally
) -> dict[str, Any]:
    messages = settings.scenario != "connections"
    return {
        "scenario": settings.scenario,
        "url": redact_url(settings.url),
        "server": server,
        "backend": args.backend,
        "client": outcome.client,
        "message_size": settings.message_size if messages else None,
        "connections": outcome.connections,
        "window": outcome.window,
        "rate": settings.rate,
        "duration": settings.duration,
        "warmup": settings.warmup if messages else None,
        "timeout": settings.timeout,
        "results": outcome.results,
        "errors": tally.errors,
        "error_samples": tally.error_samples,
    }


@asynccontextmanager
async def _server(settings: Settings, in_process: bool) -> AsyncIterator[tuple[str, str]]:
    """The URL to load and what serves it: the given one, or an embedded Hub."""
    if settings.url:
        yield settings.url, "external"
    elif in_process:
        from wsclient.server import Hub

        # On asyncio the Hub runs in our loop; on trio, in a thread (Hub.serve decides).
        # Every bench connection comes from 127.0.0.1: no per-address limit.
        embedded = Hub(max_message_size=settings.max_size, max_connections_per_ip=None)
        async with embedded.serve("127.0.0.1", 0) as hub:
            yield hub.url, "embedded Hub (in-process)"
    else:
        async with _hub_process(settings.max_size) as url:
            yield url, "embedded Hub (subprocess)"


@asynccontextmanager
async def _hub_process(max_size: int) -> AsyncIterator[str]:
    """A Hub in a child process: it prints its port, and stops when its stdin closes.

    Closing stdin stops it even if we die, without signals: it ignores SIGINT,
    which a Ctrl-C sends the whole process group.
    """
    code = "from wsclient._cli.bench import serve_child; serve_child()"
    with tempfile.TemporaryFile() as stderr:
        process = await anyio.open_process(
            [sys.executable, "-c", code, str(max_size)], stderr=stderr
        )
        try:
            try:
                with anyio.fail_after(HUB_START_TIMEOUT):
                    port = await _read_port(process)
            except (TimeoutError, anyio.EndOfStream, ValueError) as exc:
                stderr.seek(0)
                lines = stderr.read().decode(errors="replace").strip().splitlines()
                why = lines[-1] if lines else _startup_failure(exc)
                raise BenchFailed(f"the embedded Hub did not start: {why}") from None
            yield f"ws://127.0.0.1:{port}/"
        finally:
            with anyio.CancelScope(shield=True):
                await _stop(process)


def _startup_failure(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return f"no port within {HUB_START_TIMEOUT:g} s"
    if isinstance(exc, anyio.EndOfStream):
        return "it exited at once"
    return str(exc)


async def _read_port(process: anyio.abc.Process) -> int:
    assert process.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        line += await process.stdout.receive()
    keyword, _, port = line.decode().strip().partition(" ")
    if keyword != "PORT":
        raise ValueError(f"unexpected first line {line!r}")
    return int(port)


async def _stop(process: anyio.abc.Process) -> None:
    if process.stdin is not None:
        await process.stdin.aclose()
    with anyio.move_on_after(5):
        await process.wait()
    if process.returncode is None:
        process.kill()
    await process.aclose()


def serve_child() -> None:
    """In the Hub's child process: serve on 127.0.0.1, print ``PORT n``, stop at EOF on stdin."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us, cleanly
    # Handshakes cut short by a client log tracebacks at ERROR; the parent counts errors.
    logging.disable(logging.ERROR)
    max_size = int(sys.argv[1])
    options = {"use_uvloop": True} if _importable("uvloop") else None
    anyio.run(_serve_until_eof, max_size, backend="asyncio", backend_options=options)


async def _serve_until_eof(max_size: int) -> None:
    import anyio.to_thread

    from wsclient.server import Hub

    # Every bench connection comes from 127.0.0.1: no per-address limit.
    embedded = Hub(max_message_size=max_size, max_connections_per_ip=None)
    async with embedded.serve("127.0.0.1", 0) as hub:
        print(f"PORT {hub.port}", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.buffer.read, abandon_on_cancel=True)
