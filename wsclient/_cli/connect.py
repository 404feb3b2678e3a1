"""``wsclient connect URL``: talk to a WebSocket server from a terminal or a pipe.

Each input line is a slash command or a message to send:

- ``/sub CHANNEL``, ``/unsub CHANNEL``: (un)subscribe; deliveries are printed
  as they arrive. ``/sub`` waits for the server's confirmation.
- ``/pub CHANNEL JSON``: publish ``JSON`` on ``CHANNEL``.
- ``/query RESOURCE [JSON]``, ``/cmd ACTION [JSON]``: a request with ``JSON``
  parameters (default ``null``); waits for the reply (``--timeout``) and prints it.
- ``/ping``: a protocol ping; prints the round trip. ``/stats``: the client's
  counters. ``/help``: the commands. ``/quit``: close and exit.
- Any other line is sent: a line that parses as JSON is sent as that value
  (through the codec, so ``{"a":1}`` and ``{ "a" : 1 }`` send the same
  message); anything else goes out as a text frame, as typed. A line
  starting with ``//`` sends the rest with one ``/`` (``//x`` sends ``/x``).
  Blank lines are skipped.

Lines are executed one at a time, in order: a request's reply (or error) is
printed before the next line runs. Deliveries are printed as they arrive, in
order with replies; other messages are printed by a task of their own, so
one may follow a reply that arrived just after it.

**Interactive** when stdin is a terminal: errors are shown and the session
goes on until ``/quit`` or Ctrl-D. **Pipe mode** otherwise: each line is
executed, then the client closes at EOF. Queued messages are flushed first:
if the connection is down, it gets ``--timeout`` to come back, and messages
never sent are an error. ``--wait SECONDS`` keeps printing what arrives for
that long after EOF. In pipe mode the first bad line (an unknown command,
invalid JSON) stops the run with exit code 2, as ``set -e`` would: the
lines after it were written for a session that did not happen.

**Output.** Results go to stdout: pretty (rich) when stdout is a terminal,
else (or with ``--json``) one compact JSON object per line, one of::

    {"reply": PAYLOAD}                  a /query or /cmd answered
    {"error": TEXT}                     a line's operation failed (+ "code", "data"
                                        when the server's error carries them)
    {"channel": CHANNEL, "data": DATA}  a delivery on a subscribed channel
    {"message": MESSAGE}                a message no layer consumed
    {"rtt": SECONDS}                    the round trip of a /ping
    {"stats": {...}}                    /stats: the client's statistics()

Connection states (``connected to URL``, ``reconnecting (REASON), attempt N
in 0.50s``), notes and warnings go to stderr as text, never with secrets:
the URL is shown without user info or query values, headers never.
``--quiet`` keeps only the errors there.

**Exit codes**: 0 success; 1 the work failed (the connection was refused
or closed for good, stdout could not be written; in pipe mode also any
line whose operation failed: an error reply, a timeout, a message never
sent); 2 bad usage (invalid URL or option; in pipe mode a bad line); 130
Ctrl-C.
"""

from __future__ import annotations

import argparse
import codecs
import concurrent.futures
import dataclasses
import enum
import functools
import json
import logging
import math
import os
import re
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from anyio.from_thread import BlockingPortal
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from wsclient._channels import Subscription
from wsclient._client import Client, ClientStatistics, connect
from wsclient._exceptions import RemoteError, WSClientError
from wsclient._jsonrpc import JsonRpcDialect
from wsclient._reconnect import ConnectionState, StateChange

from ._exit import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["Command", "UsageError", "add_parser", "parse_line", "run", "split_lines"]

logger = logging.getLogger("wsclient.cli")


#: Slash commands: name -> (arguments, what it does). ``/help`` and ``--help`` show this.
COMMANDS: dict[str, tuple[str, str]] = {
    "sub": ("CHANNEL", "subscribe to CHANNEL; its deliveries are printed"),
    "unsub": ("CHANNEL", "unsubscribe from CHANNEL"),
    "pub": ("CHANNEL JSON", "publish JSON on CHANNEL"),
    "query": ("RESOURCE [JSON]", "ask for RESOURCE with JSON parameters; print the reply"),
    "cmd": ("ACTION [JSON]", "have the server do ACTION with JSON parameters; print the reply"),
    "ping": ("", "ping the server; print the round trip"),
    "stats": ("", "print the client's counters"),
    "help": ("", "list the commands"),
    "quit": ("", "close the connection and exit"),
}

HELP = "\n".join(
    [
        "commands:",
        *(
            f"  /{name} {arguments}".ljust(26) + text
            for name, (arguments, text) in COMMANDS.items()
        ),
        "other lines are sent: JSON as its value, anything else as text;",
        "a line starting with // sends the rest with one /",
    ]
)

_EPILOG = f"""{HELP}

output (stdout): pretty on a terminal; otherwise, or with --json, one JSON
object per line: {{"reply": P}}, {{"error": TEXT}}, {{"channel": C, "data": D}},
{{"message": M}}, {{"rtt": SECONDS}}, {{"stats": {{...}}}}. Connection states
and notes go to stderr.

stdin not a terminal (pipe mode): lines run in order, the client closes at
EOF (see --wait); the first bad line stops the run with exit code 2.

exit codes: 0 ok, 1 the work failed (connection refused or lost for good;
in pipe mode any failed line), 2 bad usage, 130 Ctrl-C."""

_RICH_MISSING = "pretty output needs rich: pip install 'wsclient[cli]' (or pass --json)"

# RFC 9110 5.1: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

# C0 (but newline and tab), DEL and C1: in the server's text they could drive the terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

# Longer compact JSON is shown as is: rich takes seconds to indent and colour
# a few hundred kilobytes, and the client's reader task waits meanwhile.
_PRETTY_LIMIT = 32 * 1024


# The command line


def add_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = verbs.add_parser(
        "connect",
        help="talk to a server from a terminal or a pipe",
        # Raw text (for the epilog's table): the line breaks are written out.
        description=(
            "Connect to URL and talk to it: lines typed are sent, slash commands\n"
            "subscribe, publish, query..., and what arrives is printed. Reconnects\n"
            "on its own and says so on stderr. Reads a pipe too, for scripts."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", metavar="URL", help="ws:// or wss:// URL of the server")
    parser.add_argument(
        "--header",
        metavar="NAME:VALUE",
        type=_header,
        action="append",
        default=[],
        help="extra handshake header (repeatable); never printed",
    )
    parser.add_argument(
        "--allow-insecure-credentials",
        action="store_true",
        help="send credentials (URL user info, an Authorization or Cookie header) over"
        " ws:// to another host, in clear text; refused by default",
    )
    parser.add_argument(
        "--subprotocol",
        metavar="NAME",
        action="append",
        default=[],
        help="subprotocol to offer (repeatable)",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive,
        default=10.0,
        help="how long a request, /sub or /ping waits for its answer (%(default)s)",
    )
    parser.add_argument(
        "--no-reconnect",
        action="store_true",
        help="exit (code 1) when the connection drops instead of reconnecting",
    )
    parser.add_argument(
        "--jsonrpc", action="store_true", help="speak JSON-RPC 2.0 instead of the default dialect"
    )
    parser.add_argument(
        "--wait",
        metavar="SECONDS",
        type=_not_negative,
        default=0.0,
        help="after EOF, keep printing what arrives for SECONDS before closing (%(default)s)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per line even when stdout is a terminal",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="print no connection states or notes on stderr"
    )
    parser.add_argument(
        "--backend", choices=["asyncio", "trio"], default="asyncio", help="event loop to use"
    )
    parser.set_defaults(handler=run)


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    # The message never repeats the argument: the value may be a token.
    if not colon or not _TOKEN.fullmatch(name):
        raise argparse.ArgumentTypeError("expected NAME:VALUE (the value is not shown)")
    if any(c in value for c in "\r\n\0"):
        raise argparse.ArgumentTypeError(f"the value of header {name} has a line break or NUL")
    return name, value


def _positive(text: str) -> float:
    seconds = _seconds(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return seconds


def _not_negative(text: str) -> float:
    seconds = _seconds(text)
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return seconds


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds, got {text!r}")
    return seconds


def run(args: argparse.Namespace) -> int:
    interactive = _is_terminal(sys.stdin)
    try:
        out = (
            _RichOutput(quiet=args.quiet)
            if _is_terminal(sys.stdout) and not args.json
            else _JsonOutput(quiet=args.quiet)
        )
    except _RichMissing:
        print(f"wsclient connect: {_RICH_MISSING}", file=sys.stderr)
        return EXIT_FAILED
    # Our state lines say what the reconnect log would say, without the noise.
    # The levels are put back after: run() may be called in-process (tests).
    loggers = [logging.getLogger("wsclient.reconnect")]
    if args.quiet:
        loggers.append(logging.getLogger("wsclient"))
    levels = [(log, log.level) for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        return anyio.run(_main, args, out, interactive, backend=args.backend)
    except BaseException as exc:
        # On trio a Ctrl-C can come out of a task group, inside an exception group.
        if _interrupted(exc):
            return EXIT_INTERRUPTED
        if isinstance(exc, ModuleNotFoundError) and exc.name == args.backend:
            print(f"wsclient connect: the {args.backend} backend is not installed", file=sys.stderr)
            return EXIT_FAILED
        raise
    finally:
        for log, level in levels:
            log.setLevel(level)
        if out.broken:
            _silence_stdout()


def _is_terminal(stream: Any) -> bool:
    try:
        return stream is not None and bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced, or closed
        return False


def _interrupted(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    # An exception group (builtin from 3.11, the backport before) holds the real ones.
    inner = getattr(exc, "exceptions", None)
    return isinstance(inner, tuple) and any(
        _interrupted(e) for e in inner if isinstance(e, BaseException)
    )


def _silence_stdout() -> None:
    """The reader of stdout is gone: point stdout at devnull so exiting flushes quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


# Parsing input lines: pure functions, no I/O.


class UsageError(ValueError):
    """An input line that is not a valid command; the message says why."""


@dataclass(frozen=True)
class Command:
    """One input line, parsed: a slash command, or a message to send."""

    name: str  # a key of COMMANDS, or "send"
    target: str | None = None  # the channel, resource or action
    data: Any = None  # the JSON argument; for "send", the message (when ``text`` is None)
    text: str | None = None  # "send" of a line that is not JSON: sent as a text frame, as is


def parse_line(line: str) -> Command | None:
    """Parse one input line (without its newline); None for a blank line.

    Raises :class:`UsageError` for an unknown command, missing or extra
    arguments, or invalid JSON.
    """
    stripped = line.strip()
    if not stripped:
        return None
    if stripped.startswith("//"):
        return _message(stripped[1:])
    if not stripped.startswith("/"):
        return _message(line)
    parts = stripped[1:].split(None, 1)
    name = parts[0] if parts else ""
    rest = parts[1] if len(parts) > 1 else ""
    if name not in COMMANDS:
        raise UsageError(f"unknown command /{name} (/help lists them)")
    arguments = COMMANDS[name][0]
    if not arguments:
        if rest:
            raise UsageError(f"/{name} takes no arguments")
        return Command(name)
    if name in ("sub", "unsub"):
        if not rest or len(rest.split()) != 1:
            raise UsageError(f"usage: /{name} {arguments}")
        return Command(name, rest)
    fields = rest.split(None, 1)
    target = fields[0] if fields else ""
    argument = fields[1] if len(fields) > 1 else ""
    if not target or (name == "pub" and not argument):
        raise UsageError(f"usage: /{name} {arguments}")
    return Command(name, target, _json(argument, name) if argument else None)


def _message(text: str) -> Command:
    try:
        return Command("send", data=orjson.loads(text))
    except orjson.JSONDecodeError:
        return Command("send", text=text)


def _json(text: str, name: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"invalid JSON for /{name}: {exc}") from None


def split_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Lines of UTF-8 text read in chunks, without ``\\n`` or ``\\r\\n``; the last may lack one.

    Undecodable bytes become U+FFFD rather than ending the session.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    # The start of the current line, in pieces: only each new chunk is split,
    # so a long line costs linear time, not a rescan of all of it per read.
    pieces: list[str] = []
    for chunk in chunks:
        first, *rest = decoder.decode(chunk).split("\n")
        pieces.append(first)
        if rest:
            yield "".join(pieces).removesuffix("\r")
            *complete, last = rest
            for line in complete:
                yield line.removesuffix("\r")
            pieces = [last]
    pending = "".join(pieces) + decoder.decode(b"", final=True)
    if pending:
        yield pending.removesuffix("\r")


# Reading stdin


@asynccontextmanager
async def _stdin_lines() -> AsyncIterator[MemoryObjectReceiveStream[str]]:
    """Stdin's lines as a stream that ends at EOF, on any anyio backend.

    A blocking read cannot be cancelled, so it runs in a daemon thread of
    its own (anyio's worker threads are joined at exit on asyncio: one
    waiting for a line would keep the process alive after /quit or
    Ctrl-C). The thread hands each line over through a portal and waits
    until the session takes it, so it reads at most one line ahead.
    """
    send, receive = anyio.create_memory_object_stream[str](0)
    async with BlockingPortal() as portal:
        threading.Thread(
            target=_read_stdin, args=(portal, send), name="wsclient-stdin", daemon=True
        ).start()
        try:
            yield receive
        finally:
            receive.close()
            # The thread's pending hand-over is cancelled, and later ones refused.
            await portal.stop(cancel_remaining=True)


def _read_stdin(portal: BlockingPortal, send: MemoryObjectSendStream[str]) -> None:
    try:
        for line in split_lines(_stdin_chunks()):
            portal.call(send.send, line)
        portal.call(send.close)
    except (
        RuntimeError,  # the portal stopped: the session is over
        anyio.BrokenResourceError,
        anyio.ClosedResourceError,
        concurrent.futures.CancelledError,
    ):
        pass
    except BaseException:
        # Anything else: most likely the interpreter finalizing around this
        # daemon thread after Ctrl-C, where a traceback would only be cut off
        # halfway. Nobody can act on it, so it goes to the debug log, and the
        # input ends in case the session still waits for it.
        logger.debug("reading stdin failed", exc_info=True)
        with suppress(BaseException):
            portal.call(send.close)


def _stdin_chunks() -> Iterator[bytes]:
    # os.read, not sys.stdin: a thread blocked inside sys.stdin holds its
    # lock, which interpreter shutdown may need ("could not acquire lock").
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # no stdin at all: EOF at once
        return
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # closed or unreadable: as good as EOF
            return
        if not chunk:
            return
        yield chunk


# The session


async def _main(args: argparse.Namespace, out: _Output, interactive: bool) -> int:
    try:
        client = connect(
            args.url,
            dialect=JsonRpcDialect() if args.jsonrpc else None,
            reconnect=not args.no_reconnect,
            request_timeout=args.timeout,
            headers=args.header or None,
            subprotocols=args.subprotocol or None,
            allow_insecure_credentials=args.allow_insecure_credentials,
        )
    except ValueError as exc:  # InvalidURL and InsecureCredentials are ones
        out.warn(f"wsclient connect: {exc}")
        return EXIT_USAGE
    session = _Session(client, out, interactive=interactive, wait=args.wait)
    client.on_state(session.on_state)
    client.on_error(session.on_error)
    entered = False
    try:
        async with client:
            entered = True
            async with _stdin_lines() as lines:
                return await session.run(lines)
    except (WSClientError, ValueError) as exc:
        if entered:
            raise
        # The error says what failed and where, without secrets; no traceback.
        out.warn(f"wsclient connect: {exc}")
        # A ValueError here is an option the first attempt refused (a header it sets itself).
        return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILED


class _Session:
    """Runs input lines against a client and prints what comes back."""

    def __init__(self, client: Client, out: _Output, *, interactive: bool, wait: float) -> None:
        self.client = client
        self.out = out
        self.interactive = interactive
        self.wait = wait
        self.subscriptions: dict[str, Subscription] = {}
        self.failed = False  # a line's operation failed
        self.bad_line = False  # pipe mode stopped at a bad line
        self.closed: BaseException | None = None  # why the client closed by itself
        self.lost = False  # the client closed by itself

    async def run(self, lines: MemoryObjectReceiveStream[str]) -> int:
        if self.interactive:
            self.out.note("type /help for the commands, /quit or Ctrl-D to leave")
        async with anyio.create_task_group() as tg:
            self.out.on_broken = tg.cancel_scope.cancel
            tg.start_soon(self._print_messages)
            tg.start_soon(self._watch_closed, tg.cancel_scope)
            at_eof = await self._run_lines(lines)
            if at_eof:
                await self._wait_to_flush()
                if self.wait:
                    await anyio.sleep(self.wait)
            tg.cancel_scope.cancel()
        await self.client.aclose()  # flushes the queue: what is left there is discarded
        self._report_unsent()
        if self.bad_line:
            return EXIT_USAGE
        if self.lost or self.out.broken:
            return EXIT_FAILED
        if self.failed and not self.interactive:
            return EXIT_FAILED
        return EXIT_OK

    async def _run_lines(self, lines: MemoryObjectReceiveStream[str]) -> bool:
        """Run each line; True at EOF, False after /quit or a bad line in pipe mode."""
        number = 0
        async for line in lines:
            number += 1
            try:
                command = parse_line(line)
            except UsageError as exc:
                if self.interactive:
                    self.out.warn(f"error: {exc}")
                    continue
                self.out.warn(f"wsclient connect: line {number}: {exc}")
                self.bad_line = True
                return False
            if command is None:
                continue
            if command.name == "quit":
                return False
            await self.execute(command)
        return True

    async def _wait_to_flush(self) -> None:
        """Queued messages wait for a connection: give it ``--timeout`` to come back."""
        if self.client.transport.statistics().queue.messages:
            with anyio.move_on_after(self.client.request_timeout):
                await self.client.wait_state(ConnectionState.OPEN, ConnectionState.CLOSED)

    def _report_unsent(self) -> None:
        """Messages accepted into the queue but never sent are a failure, not a silence."""
        queue = self.client.transport.statistics().queue
        unsent = queue.dropped_oldest + queue.expired + queue.discarded
        if unsent:
            were = "message was" if unsent == 1 else "messages were"
            self._fail(f"{unsent} {were} queued and never sent: the connection was down")

    async def execute(self, command: Command) -> None:
        """Run one command; a failure is printed (and remembered), never raised."""
        try:
            await self._execute(command)
        except RemoteError as exc:
            self._fail(str(exc), exc.code, exc.data)
        except (WSClientError, TypeError) as exc:  # TypeError: a value the codec refuses
            self._fail(str(exc))
        except TimeoutError:  # only /ping's own deadline: requests raise RequestTimeout
            self._fail(f"no pong within {self.client.request_timeout}s")

    async def _execute(self, command: Command) -> None:
        client, out, name = self.client, self.out, command.name
        if name == "send":
            if command.text is not None:
                # Not JSON: as typed, in a text frame, past the codec (which would quote it).
                sent = await client.transport.send(command.text, text=True)
            else:
                sent = await client.send(command.data)
            if not sent:
                self._fail("the outbound queue dropped the message")
        elif name == "query" or name == "cmd":
            assert command.target is not None
            request = client.query if name == "query" else client.command
            out.reply(await request(command.target, command.data))
        elif name == "sub":
            await self._subscribe(command.target or "")
        elif name == "unsub":
            channel = command.target or ""
            subscription = self.subscriptions.pop(channel, None)
            if subscription is None:
                self._fail(f"not subscribed to {channel}")
                return
            await subscription.aclose()
            out.note(f"unsubscribed from {channel}")
        elif name == "pub":
            assert command.target is not None
            if not await client.publish(command.target, command.data):
                self._fail("the outbound queue dropped the message")
        elif name == "ping":
            with anyio.fail_after(client.request_timeout):
                out.rtt(await client.ping())
        elif name == "stats":
            out.stats(client.statistics())
        elif name == "help":
            out.help(HELP)

    async def _subscribe(self, channel: str) -> None:
        if channel in self.subscriptions:
            self.out.note(f"already subscribed to {channel}")
            return
        subscription = await self.client.subscribe(
            channel, callback=functools.partial(self.out.delivery, channel)
        )
        self.subscriptions[channel] = subscription
        try:
            # A timeout keeps the subscription: the server may confirm it yet.
            await subscription.confirmed()
        except RemoteError:  # refused: the subscription is over
            del self.subscriptions[channel]
            raise
        self.out.note(f"subscribed to {channel}")

    def _fail(self, text: str, code: Any = None, data: Any = None) -> None:
        self.failed = True
        self.out.error(text, code, data)

    async def _print_messages(self) -> None:
        try:
            async for message in self.client:
                self.out.message(message)
        except WSClientError:
            pass  # the stream ends with why the client closed: _watch_closed says it

    async def _watch_closed(self, scope: anyio.CancelScope) -> None:
        await self.client.wait_state(ConnectionState.CLOSED)
        # Only the client itself closes it while the session runs: it gave up.
        self.lost = True
        self.out.warn(f"wsclient connect: closed: {self.closed or 'the connection closed'}")
        scope.cancel()

    # Client callbacks: called from the client's tasks, they must not raise.

    def on_state(self, change: StateChange) -> None:
        if change.state is ConnectionState.OPEN:
            self.out.note(f"connected to {self.client.name}")
        elif change.state is ConnectionState.RECONNECTING:
            reason = str(change.error) if change.error is not None else "connection lost"
            delay = f" in {change.delay:.2f}s" if change.delay is not None else ""
            self.out.note(f"reconnecting ({reason}), attempt {change.attempt}{delay}")
        elif change.state is ConnectionState.CLOSED:
            self.closed = change.error

    def on_error(self, error: BaseException) -> None:
        # What the server said is also on stdout (as a message) when it came as one.
        kind = "server error" if isinstance(error, RemoteError) else "warning"
        self.out.note(f"{kind}: {error}")


# Output


class _RichMissing(Exception):
    pass


def _nothing() -> None:
    pass


class _Output:
    """Where results go (stdout) and where notes and warnings go (stderr).

    Methods never raise: they run in the client's reader task too. When
    stdout's reader is gone (``| head -1``) the output is ``broken`` and
    ``on_broken()`` ends the session.
    """

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.broken = False
        self.on_broken: Callable[[], None] = _nothing

    def reply(self, payload: Any) -> None:
        raise NotImplementedError

    def error(self, text: str, code: Any = None, data: Any = None) -> None:
        raise NotImplementedError

    def delivery(self, channel: str, data: Any) -> None:
        raise NotImplementedError

    def message(self, message: Any) -> None:
        raise NotImplementedError

    def rtt(self, seconds: float) -> None:
        raise NotImplementedError

    def stats(self, stats: ClientStatistics) -> None:
        raise NotImplementedError

    def help(self, text: str) -> None:
        raise NotImplementedError

    def note(self, text: str) -> None:
        """A state change or a note for the person watching; ``--quiet`` hides it."""
        if not self.quiet:
            self.warn(text)

    def warn(self, text: str) -> None:
        """An error the person must see (stderr)."""
        if sys.stderr is None:  # started with stderr closed: print() would pick stdout
            return
        with suppress(OSError, ValueError):
            print(_printable(text), file=sys.stderr, flush=True)

    def _lost_stdout(self, why: object = None) -> None:
        """Stdout failed; ``why`` is told unless its reader just left (``| head -1``)."""
        if not self.broken:
            self.broken = True
            if why is not None:
                self.warn(f"wsclient connect: cannot write to stdout: {why}")
            self.on_broken()


class _JsonOutput(_Output):
    """One compact JSON object per line on stdout, flushed at once, for scripts."""

    def reply(self, payload: Any) -> None:
        self._emit({"reply": payload})

    def error(self, text: str, code: Any = None, data: Any = None) -> None:
        line: dict[str, Any] = {"error": text}
        if code is not None:
            line["code"] = code
        if data is not None:
            line["data"] = data
        self._emit(line)

    def delivery(self, channel: str, data: Any) -> None:
        self._emit({"channel": channel, "data": data})

    def message(self, message: Any) -> None:
        self._emit({"message": message})

    def rtt(self, seconds: float) -> None:
        self._emit({"rtt": round(seconds, 6)})

    def stats(self, stats: ClientStatistics) -> None:
        self._emit({"stats": _jsonable(stats)})

    def help(self, text: str) -> None:
        self.warn(text)  # stdout stays JSON

    def _emit(self, fields: dict[str, Any]) -> None:
        if self.broken:
            return
        # Field by field: a value that cannot be printed spoils only itself.
        items = (_dumps(key) + b":" + _dumps(value) for key, value in fields.items())
        line = b"{" + b",".join(items) + b"}\n"
        stdout = sys.stdout
        if stdout is None:  # started with stdout closed (>&-)
            self._lost_stdout("it is closed")
            return
        try:
            # Bytes, so the output is UTF-8 whatever the locale says.
            buffer = getattr(stdout, "buffer", None)
            if buffer is not None:
                buffer.write(line)
                buffer.flush()
            else:
                stdout.write(line.decode())
                stdout.flush()
        except BrokenPipeError:
            self._lost_stdout()
        except (OSError, ValueError) as exc:  # a full disk, a closed stdout
            self._lost_stdout(exc)


class _RichOutput(_Output):
    """Pretty JSON, labels and a table, through rich, for a person at a terminal."""

    def __init__(self, *, quiet: bool) -> None:
        super().__init__(quiet=quiet)
        try:
            from rich.console import Console
        except ImportError:
            raise _RichMissing from None
        # highlight=False: only the JSON is coloured, never what the server wrote as text.
        self.console: Console = Console(highlight=False)
        self.stderr: Console = Console(stderr=True, highlight=False)

    def reply(self, payload: Any) -> None:
        self._print(self._label("reply", "green"), self._json(payload))

    def error(self, text: str, code: Any = None, data: Any = None) -> None:
        from rich.text import Text

        details = f" (code {code})" if code is not None else ""
        parts: list[Any] = [self._label("error", "bold red"), Text(_printable(text + details))]
        if data is not None:
            parts.append(self._json(data))
        self._print(*parts)

    def delivery(self, channel: str, data: Any) -> None:
        self._print(self._label(f"[{channel}]", "cyan"), self._json(data))

    def message(self, message: Any) -> None:
        self._print(self._label("<", "magenta"), self._json(message))

    def rtt(self, seconds: float) -> None:
        from rich.text import Text

        self._print(self._label("pong", "green"), Text(f"in {seconds * 1000:.2f} ms"))

    def stats(self, stats: ClientStatistics) -> None:
        from rich.table import Table
        from rich.text import Text

        table = Table(title="client statistics", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        for name, value in _stats_rows(stats):
            # Text, not str: a str cell is markup, and the last error quotes the server.
            table.add_row(name, Text(_printable(value)))
        self._print(table)

    def help(self, text: str) -> None:
        from rich.text import Text

        self._print(Text(text))

    def note(self, text: str) -> None:
        if not self.quiet:
            self._write(self.stderr, "dim", text)

    def warn(self, text: str) -> None:
        self._write(self.stderr, "yellow", text)

    def _label(self, text: str, style: str) -> Any:
        from rich.text import Text

        return Text(text, style=style)

    def _json(self, value: Any) -> Any:
        from rich.json import JSON
        from rich.text import Text

        compact = _dumps(value)
        if len(compact) <= _PRETTY_LIMIT:
            with suppress(TypeError, ValueError, RecursionError):  # too deep for json
                return JSON.from_data(value, default=repr)
        return Text(compact.decode())

    def _write(self, console: Console, style: str, text: str) -> None:
        from rich.text import Text

        with suppress(OSError, ValueError):
            console.print(Text(_printable(text), style=style))

    def _print(self, *renderables: Any) -> None:
        if self.broken:
            return
        try:
            self.console.print(*renderables)
        except BrokenPipeError:
            self._lost_stdout()
        except (OSError, ValueError) as exc:  # the terminal hung up, stdout was closed
            self._lost_stdout(exc)


def _printable(text: str) -> str:
    """``text`` with its control characters escaped, so that it cannot drive the terminal."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _dumps(value: Any) -> bytes:
    """``value`` as compact JSON, what JSON lacks as its repr; never raises."""
    try:
        return orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # nested deeper than orjson's 254 levels, an int past 64 bits
        pass
    try:
        return json.dumps(value, default=repr, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError):  # deeper than Python's recursion limit
        return orjson.dumps(f"<{type(value).__name__} that cannot be printed as JSON>")


def _stats_rows(stats: ClientStatistics) -> list[tuple[str, str]]:
    """The counters a person looks at first; ``--json`` gives all of them."""
    connection, requests, channels = stats.connection, stats.requests, stats.channels
    queue, messages = connection.queue, stats.messages

    def seconds(value: float | None, scale: float = 1.0, unit: str = "s") -> str:
        return "-" if value is None else f"{value * scale:.2f} {unit}"

    dropped = queue.dropped_oldest + queue.dropped_newest + queue.rejected + queue.expired
    return [
        ("state", stats.state.value),
        ("uptime", seconds(connection.uptime)),
        ("reconnects", str(connection.reconnects)),
        ("attempts", f"{connection.attempts} ({connection.failed_attempts} failed)"),
        ("last error", "-" if connection.last_error is None else str(connection.last_error)),
        ("heartbeat rtt", seconds(connection.last_rtt, 1000, "ms")),
        (
            "requests",
            f"{requests.sent} sent, {requests.replies} answered, {requests.remote_errors}"
            f" errors, {requests.timeouts} timed out, {requests.lost} lost,"
            f" {requests.pending} pending",
        ),
        (
            "channels",
            f"{channels.channels} subscribed, {channels.deliveries} deliveries,"
            f" {channels.dropped} dropped, {channels.resubscribes} resubscribed",
        ),
        ("outbound queue", f"{queue.messages} waiting, {queue.sent} sent, {dropped} dropped"),
        ("other messages", f"{messages.received} received, {messages.dropped} dropped"),
        ("errors", f"{stats.errors} reported, {stats.invalid_messages} invalid messages"),
    ]


def _jsonable(value: Any) -> Any:
    """A statistics snapshot as JSON values: enums by value, errors as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if isinstance(value, dict):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
