"""Tests of ``wsclient connect``: line parsing in-process, the verb as a subprocess.

The subprocesses talk to a reference Hub on 127.0.0.1 (an OS-chosen port),
run on an asyncio loop in a thread of the test process, and are driven
through a pipe, so they run in pipe mode and print one JSON object per line.
Every wait is bounded; none sleeps to let something happen.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import errno
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pytest
import rich.console

import wsclient
from wsclient import _cli
from wsclient._cli import connect, main
from wsclient._cli.connect import Command, UsageError, parse_line, split_lines
from wsclient._loopthread import LoopThread
from wsclient.server import Hub, HubServer, RequestContext

from .servers import closed_port

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TIMEOUT = 15.0  # a bound on each subprocess, never a wait

# Parsing lines (pure, in-process)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/sub news", Command("sub", "news")),
        ("  /unsub   news  ", Command("unsub", "news")),
        ('/pub news {"a": [1, 2]}', Command("pub", "news", {"a": [1, 2]})),
        ("/pub news 1", Command("pub", "news", 1)),
        ('/query echo {"x": "y z"}', Command("query", "echo", {"x": "y z"})),
        ("/query\ttime", Command("query", "time")),
        ("/cmd reset null", Command("cmd", "reset")),
        ('/cmd double  "21"', Command("cmd", "double", "21")),
        ("/ping", Command("ping")),
        ("/stats", Command("stats")),
        ("/help", Command("help")),
        ("/quit", Command("quit")),
        ('{"type": "ping"}', Command("send", data={"type": "ping"})),
        ("42", Command("send", data=42)),
        ("null", Command("send", data=None)),
        ("hello there ", Command("send", text="hello there ")),
        ("//sub news", Command("send", text="/sub news")),
        ('//{"a": 1}', Command("send", text='/{"a": 1}')),
        ("", None),
        ("   \t", None),
    ],
)
def test_parse_line(line: str, expected: Command | None) -> None:
    """Slash commands parse to their arguments; other lines to a JSON value or raw text."""
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/bogus", "unknown command /bogus"),
        ("/", "unknown command /"),
        ("/sub", "usage: /sub CHANNEL"),
        ("/sub a b", "usage: /sub CHANNEL"),
        ("/unsub", "usage: /unsub CHANNEL"),
        ("/pub news", "usage: /pub CHANNEL JSON"),
        ("/pub news {bad", "invalid JSON for /pub"),
        ("/query", "usage: /query RESOURCE [JSON]"),
        ("/query echo [1,", "invalid JSON for /query"),
        ("/cmd go NaN", "invalid JSON for /cmd"),
        ("/ping now", "/ping takes no arguments"),
        ("/quit please", "/quit takes no arguments"),
    ],
)
def test_parse_line_rejects(line: str, message: str) -> None:
    """Unknown commands, wrong arguments and invalid JSON raise UsageError saying why."""
    with pytest.raises(UsageError, match="^" + message.replace("[", r"\[")):
        parse_line(line)


def test_split_lines_across_chunks() -> None:
    """Lines split across reads, CRLF endings, a split UTF-8 character and no final newline."""
    chunks = [b"/sub n", b'ews\r\n\n/pub news "\xc3', b'\xa9t\xc3\xa9"\nbad \xff\nlast']
    assert list(split_lines(chunks)) == ["/sub news", "", '/pub news "été"', "bad \ufffd", "last"]


def test_split_lines_takes_linear_time_on_a_long_line() -> None:
    """A 4 MB line read in 1 KB chunks is split without rescanning it at every read."""
    chunks = [b"x" * 1024] * 4096 + [b"\n"]
    started = time.perf_counter()
    assert [len(line) for line in split_lines(chunks)] == [4 * 2**20]
    assert time.perf_counter() - started < 1.0  # quadratic, it took seconds


# Options and output, in-process


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`connect --help` exits 0 and lists every slash command, the output format and exit codes."""
    with pytest.raises(SystemExit) as exit_info:
        main(["connect", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in connect.COMMANDS:
        assert f"/{command}" in text
    for word in ("--wait", "--header", '{"reply": P}', "exit codes", "130"):
        assert word in text


@pytest.mark.parametrize(
    "options",
    [["--timeout", "0"], ["--wait", "-1"], ["--timeout", "nan"], ["--header", "Bearer s3cret"]],
)
def test_bad_options_are_usage_errors(
    options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Invalid option values exit with 2 before connecting; a header's value is never echoed."""
    with pytest.raises(SystemExit) as exit_info:
        main(["connect", "ws://127.0.0.1:1/", *options])
    assert exit_info.value.code == 2
    assert "s3cret" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "options", "reason"),
    [
        ("http://u:s3cret@127.0.0.1/", [], "invalid WebSocket URL http://***@127.0.0.1/"),
        ("ws://127.0.0.1:1/", ["--header", "Upgrade: s3cret"], "the Upgrade header is set"),
    ],
)
def test_invalid_url_or_header_exits_2(
    url: str, options: list[str], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid URL, or a header the handshake sets itself, is bad usage: exit code 2."""
    args = _cli._build_parser().parse_args(["connect", url, *options])
    assert connect.run(args) == 2
    stderr = capsys.readouterr().err
    assert reason in stderr
    assert "s3cret" not in stderr


def test_pretty_output_needs_rich(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a terminal without rich installed, connect says how to install it and exits 1."""
    monkeypatch.setitem(sys.modules, "rich.console", None)  # import fails
    monkeypatch.setattr(connect, "_is_terminal", lambda stream: True)
    # run() itself, not main(): main() would configure logging for the whole test process.
    assert connect.run(_cli._build_parser().parse_args(["connect", "ws://127.0.0.1:1/"])) == 1
    assert "pip install 'wsclient[cli]'" in capsys.readouterr().err


def test_pretty_output_renders_json_labels_and_a_table() -> None:
    """On a terminal, replies, deliveries, messages, errors and /stats are shown with rich."""
    out = connect._RichOutput(quiet=False)
    buffer = io.StringIO()
    out.console = rich.console.Console(file=buffer, width=100, color_system=None)
    out.reply({"a": 1})
    out.delivery("news", [1, 2])
    out.message("[bold]not markup[/bold]")
    out.error("unknown resource: 'x'", code=-32601)
    out.rtt(0.00125)
    out.stats(wsclient.connect("ws://127.0.0.1:1/").statistics())
    text = buffer.getvalue()
    assert 'reply {\n  "a": 1\n}' in text
    assert "[news] [\n  1,\n  2\n]" in text
    assert '< "[bold]not markup[/bold]"' in text
    assert "error unknown resource: 'x' (code -32601)" in text
    assert "pong in 1.25 ms" in text
    assert "client statistics" in text
    assert "reconnects" in text


def deeply_nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_json_output_prints_values_too_deep_for_orjson(capsys: pytest.CaptureFixture[str]) -> None:
    """Values orjson refuses (over 254 levels) still print; past json's reach, a placeholder."""
    out = connect._JsonOutput(quiet=False)
    out.delivery("news", deeply_nested(300))
    out.message(deeply_nested(300))
    out.reply(deeply_nested(1100))
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0]) == {"channel": "news", "data": deeply_nested(300)}
    assert json.loads(lines[1]) == {"message": deeply_nested(300)}
    assert json.loads(lines[2]) == {"reply": "<list that cannot be printed as JSON>"}
    assert not out.broken


def test_pretty_output_shows_deep_or_big_values_as_compact_text() -> None:
    """On a terminal, values too deep for json or too big to indent quickly print compact."""
    out = connect._RichOutput(quiet=False)
    buffer = io.StringIO()
    out.console = rich.console.Console(file=buffer, width=100, color_system=None)
    out.reply(deeply_nested(1100))
    assert buffer.getvalue() == 'reply "<list that cannot be printed as JSON>"\n'
    buffer.seek(0)
    buffer.truncate()
    out.message([{"n": n} for n in range(5000)])  # 54 kB; indented, 15,000 lines
    assert '[{"n":0},{"n":1},' in buffer.getvalue()
    assert buffer.getvalue().count("\n") < 1000


class FullDisk:
    """A stdout whose writes fail as on a full disk."""

    class buffer:  # stands for sys.stdout.buffer
        @staticmethod
        def write(data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    ("stdout", "reason"),
    [(None, "it is closed"), (FullDisk(), "[Errno 28] No space left on device")],
)
def test_unwritable_stdout_ends_the_session_with_a_reason(
    stdout: Any, reason: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A closed stdout (>&-) or a full disk ends the session saying why, with no traceback."""
    out = connect._JsonOutput(quiet=False)
    ended: list[bool] = []
    out.on_broken = lambda: ended.append(True)
    monkeypatch.setattr(sys, "stdout", stdout)
    out.reply(1)
    out.reply(2)
    assert out.broken
    assert ended == [True]
    assert capsys.readouterr().err == f"wsclient connect: cannot write to stdout: {reason}\n"


def test_server_text_cannot_drive_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    """Control characters in what the server wrote are escaped in notes and error lines."""
    evil = "bad\x1b[2J\x1b]0;title\x07\x9b"
    connect._JsonOutput(quiet=False).note(f"server error: {evil}")
    assert capsys.readouterr().err == "server error: bad\\x1b[2J\\x1b]0;title\\x07\\x9b\n"
    out = connect._RichOutput(quiet=False)
    buffer = io.StringIO()
    out.console = rich.console.Console(file=buffer, width=100, color_system=None)
    out.error(evil)
    assert buffer.getvalue() == "error bad\\x1b[2J\\x1b]0;title\\x07\\x9b\n"


def test_pretty_stats_show_the_last_error_as_text() -> None:
    """/stats on a terminal shows the last error (which quotes the server) as text, not markup."""
    stats = wsclient.connect("ws://127.0.0.1:1/").statistics()
    error = ConnectionError("closed with code 1011: oops[/]\x1b[2J[bold]")
    stats = dataclasses.replace(
        stats, connection=dataclasses.replace(stats.connection, last_error=error)
    )
    out = connect._RichOutput(quiet=False)
    buffer = io.StringIO()
    out.console = rich.console.Console(file=buffer, width=200, color_system=None)
    out.stats(stats)  # raised MarkupError: "closing tag '[/]' ... has nothing to close"
    assert "closed with code 1011: oops[/]\\x1b[2J[bold]" in buffer.getvalue()


def test_notes_never_go_to_stdout_when_stderr_is_closed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With stderr closed (2>&-) notes are dropped: print() would have sent them to stdout."""
    monkeypatch.setattr(sys, "stderr", None)
    connect._JsonOutput(quiet=False).note("connected to ws://127.0.0.1:1/")
    assert capsys.readouterr().out == ""


# The verb as a subprocess, against a Hub


class RunningHub:
    """A Hub serving on 127.0.0.1 from an asyncio loop in a thread."""

    def __init__(self, loop_thread: LoopThread, server: HubServer) -> None:
        self.loop_thread = loop_thread
        self.server = server
        self.url = server.url

    def call(self, make: Callable[[HubServer], Coroutine[Any, Any, Any]]) -> Any:
        """Run ``make(server)`` on the Hub's loop and wait (bounded) for its result."""
        return self.loop_thread.submit(make(self.server)).result(timeout=TIMEOUT)


@contextlib.contextmanager
def serving(hub: Hub, loop_thread: LoopThread) -> Iterator[RunningHub]:
    """Serve ``hub`` from ``loop_thread`` for the duration of the context."""
    started: concurrent.futures.Future[HubServer] = concurrent.futures.Future()
    stop = asyncio.Event()

    async def serve() -> None:
        async with hub.serve("127.0.0.1", 0) as server:
            started.set_result(server)
            await stop.wait()

    served = loop_thread.submit(serve())
    try:
        yield RunningHub(loop_thread, started.result(timeout=TIMEOUT))
    finally:
        loop_thread.loop.call_soon_threadsafe(stop.set)
        served.result(timeout=TIMEOUT)


@pytest.fixture(scope="module")
def hub() -> Iterator[RunningHub]:
    hub = Hub()

    @hub.on_command("double")
    async def double(parameters: Any, ctx: RequestContext) -> Any:
        return parameters * 2

    loop_thread = LoopThread("test-cli-hub")
    loop_thread.start()
    try:
        with serving(hub, loop_thread) as running:
            yield running
    finally:
        loop_thread.stop()


def run_connect(url: str, *options: str, lines: Sequence[str] = ()) -> tuple[int, list[Any], str]:
    """Pipe ``lines`` to `wsclient connect URL`; its exit code, stdout's JSON objects, stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "wsclient", "connect", url, *options],
        input="".join(line + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=ENV,
        cwd=ROOT,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()], done.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_pipe_runs_each_line_and_prints_json(hub: RunningHub, backend: str) -> None:
    """Piped lines run in order; deliveries, messages, replies, /ping and /stats print as JSON."""
    code, output, stderr = run_connect(
        hub.url,
        "--backend",
        backend,
        "--wait",
        "0.1",
        lines=[
            "/sub news",
            '/pub news {"n": 1}',
            '{"action": "bogus"}',  # sent as is; the Hub's system error comes back unhandled
            '/query echo {"a": [1, 2]}',  # the Hub answers in order: everything above is in
            "/cmd double 21",
            "/ping",
            "/stats",
            "/unsub news",
        ],
    )
    assert code == 0, stderr
    # Other messages are printed by a task of their own: in any order with replies.
    unknown = {"type": "error", "message": "unknown action: 'bogus'"}
    output.remove({"message": {"channel": "system", "data": unknown}})
    assert output[:3] == [
        {"channel": "news", "data": {"n": 1}},
        {"reply": {"a": [1, 2]}},
        {"reply": 42},
    ]
    rtt, stats = output[3:]
    assert 0 < rtt["rtt"] < TIMEOUT
    assert stats["stats"]["state"] == "open"
    assert stats["stats"]["requests"]["replies"] == 2
    assert stats["stats"]["channels"]["deliveries"] == 1
    assert f"connected to {hub.url}" in stderr
    assert "subscribed to news" in stderr
    assert "unsubscribed from news" in stderr


def test_pipe_error_reply_prints_an_error_and_exits_1(hub: RunningHub) -> None:
    """An error reply prints {"error": ...}, later lines still run, and the exit code is 1."""
    code, output, _ = run_connect(
        hub.url, "--quiet", lines=["/query nope", "/cmd double 2", "/unsub never"]
    )
    assert code == 1
    assert output == [
        {"error": "unknown resource: 'nope'"},
        {"reply": 4},
        {"error": "not subscribed to never"},
    ]


def test_pipe_bad_line_stops_with_exit_2(hub: RunningHub) -> None:
    """In a pipe the first bad line stops the run: its number and why on stderr, exit code 2."""
    code, output, stderr = run_connect(
        hub.url, lines=["/cmd double 1", "/pub news {bad", "/cmd double 3"]
    )
    assert code == 2
    assert output == [{"reply": 2}]
    assert "line 2: invalid JSON for /pub" in stderr


def test_refused_connection_exits_1_without_secrets() -> None:
    """A refused first connection is one line on stderr, exit code 1, no secret from the URL."""
    url = f"ws://user:s3cret@127.0.0.1:{closed_port()}/?token=t0ken"
    code, output, stderr = run_connect(url, lines=["/ping"])
    assert code == 1
    assert output == []
    assert "cannot connect to 127.0.0.1" in stderr
    assert "s3cret" not in stderr
    assert "t0ken" not in stderr


class Streams:
    """A running `wsclient connect`, its stdout and stderr read line by line in threads."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        assert process.stdout is not None
        assert process.stderr is not None
        self.threads: list[threading.Thread] = []
        self.stdout = self._pump(process.stdout)
        self.stderr = self._pump(process.stderr)
        self.seen: list[str] = []  # stderr read so far

    def _pump(self, stream: IO[str]) -> queue.Queue[str]:
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            for line in stream:
                lines.put(line)

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        self.threads.append(thread)
        return lines

    def close(self) -> str:
        """Stop the process if it still runs, close its pipes; return all its stderr."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=TIMEOUT)
        for thread in self.threads:
            thread.join(timeout=TIMEOUT)  # the pipes reach EOF once the process is gone
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        while not self.stderr.empty():
            self.seen.append(self.stderr.get())
        return "".join(self.seen)

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def expect_output(self, value: Any) -> None:
        line = self.stdout.get(timeout=TIMEOUT)
        assert json.loads(line) == value

    def expect_note(self, start: str) -> str:
        while True:
            line = self.stderr.get(timeout=TIMEOUT)
            self.seen.append(line)
            if line.startswith(start):
                return line


def start_connect(url: str, *options: str) -> Streams:
    # The default SIGINT handler, which a child of a background job would not have.
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from wsclient._cli import main; raise SystemExit(main(sys.argv[1:]))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, "connect", url, *options],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
    )
    return Streams(process)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_reconnect_is_shown_then_ctrl_c_exits_130(hub: RunningHub, backend: str) -> None:
    """Drops show 'reconnecting', channels come back, --wait outlives EOF, Ctrl-C exits 130."""
    connected = start_connect(hub.url, "--backend", backend, "--wait", "60")
    try:
        connected.expect_note("connected to ")
        connected.send("/sub live")
        connected.expect_note("subscribed to live")
        hub.call(lambda server: server.publish("live", {"n": 1}))
        connected.expect_output({"channel": "live", "data": {"n": 1}})

        hub.call(lambda server: server.abort_connections())
        reconnecting = connected.expect_note("reconnecting (")
        # Attempt 2 here: a connection that dies within min_uptime counts as a failed attempt.
        assert re.search(r"\), attempt \d+ in \d+\.\d\ds$", reconnecting), reconnecting
        connected.expect_note("connected to ")
        connected.send('/pub live {"n": 2}')  # after the resubscription, on the new connection
        connected.expect_output({"channel": "live", "data": {"n": 2}})

        assert connected.process.stdin is not None
        connected.process.stdin.close()  # EOF: --wait keeps it listening
        hub.call(lambda server: server.publish("live", {"n": 3}))
        connected.expect_output({"channel": "live", "data": {"n": 3}})

        connected.process.send_signal(signal.SIGINT)
        assert connected.process.wait(timeout=TIMEOUT) == 130
    finally:
        stderr = connected.close()
    assert "Traceback" not in stderr


def test_no_reconnect_exits_1_when_the_connection_drops(hub: RunningHub) -> None:
    """With --no-reconnect a dropped connection ends the session: the reason on stderr, exit 1."""
    connected = start_connect(hub.url, "--no-reconnect")
    try:
        connected.expect_note("connected to ")
        hub.call(lambda server: server.abort_connections())
        closed = connected.expect_note("wsclient connect: closed: ")
        assert "1006" in closed
        assert connected.process.wait(timeout=TIMEOUT) == 1
    finally:
        stderr = connected.close()
    assert "Traceback" not in stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_messages_never_sent_fail_the_pipe(hub: RunningHub, backend: str) -> None:
    """At EOF queued messages wait --timeout for a reconnect; those never sent are an error."""
    with contextlib.ExitStack() as stack:
        with serving(Hub(), hub.loop_thread) as going:
            connected = start_connect(going.url, "--backend", backend, "--timeout", "0.3")
            stack.callback(connected.close)
            connected.expect_note("connected to ")
        # That Hub has stopped: the message waits for a connection that never comes.
        connected.expect_note("reconnecting (")
        connected.send('{"type": "ping"}')
        assert connected.process.stdin is not None
        connected.process.stdin.close()
        assert connected.process.wait(timeout=TIMEOUT) == 1
        connected.expect_output(
            {"error": "1 message was queued and never sent: the connection was down"}
        )
    assert "Traceback" not in "".join(connected.seen)
