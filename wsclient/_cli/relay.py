"""``wsclient relay``: share one upstream connection per URL between local processes.

By default the relay detaches: the command returns once it listens (exit 0),
or says why it could not start (exit 1), and the relay runs on in the
background until no process has used it for ``--idle-timeout`` seconds. With
``--foreground`` it runs in the terminal, logging to stderr, until idle or
Ctrl-C. ``connect(url, relay=path)`` runs this command when no relay answers.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import select
import signal
import time
from typing import TYPE_CHECKING

import anyio

from ._exit import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from wsclient._relay import Relay

__all__ = ["add_parser", "run"]

logger = logging.getLogger("wsclient.cli")

IDLE_TIMEOUT_ENV = "WSCLIENT_RELAY_IDLE_TIMEOUT"
DEFAULT_IDLE_TIMEOUT = 5.0
# Seconds the command waits for the detached relay to listen.
READY_TIMEOUT = 30.0


def add_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    relay = verbs.add_parser(
        "relay",
        help="share one upstream connection per URL between the processes of this user",
        description=(
            "Run a relay: local processes connect to it with"
            " wsclient.connect(url, relay=PATH) or a ws+relay:// URL, and share one upstream"
            " connection per URL and handshake options. Detaches unless --foreground."
        ),
    )
    relay.add_argument(
        "--socket",
        metavar="PATH",
        help="the Unix socket to listen on (default: $XDG_RUNTIME_DIR/wsclient/relay.sock,"
        " or wsclient-UID/relay.sock in the temporary directory)",
    )
    relay.add_argument(
        "--idle-timeout",
        metavar="SECONDS",
        type=_idle_timeout,
        default=None,
        help=f"stop after this long without a local connection; 0 never stops"
        f" (default: ${IDLE_TIMEOUT_ENV}, or {DEFAULT_IDLE_TIMEOUT:g})",
    )
    relay.add_argument(
        "--foreground",
        action="store_true",
        help="run in this terminal, logging to stderr, instead of detaching",
    )
    relay.add_argument(
        "--log-file",
        metavar="PATH",
        help="where the detached relay logs (default: nowhere)",
    )
    relay.add_argument("-v", "--verbose", action="store_true", help="log every local connection")
    relay.set_defaults(handler=run)


def _idle_timeout(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds (0: never), got {text!r}")
    return value or None


def run(args: argparse.Namespace) -> int:
    from wsclient._relay import Relay
    from wsclient._relay_client import default_socket_path, prepare_private_dir

    idle = args.idle_timeout
    if idle is None:
        env = os.environ.get(IDLE_TIMEOUT_ENV)
        try:
            idle = _idle_timeout(env) if env else DEFAULT_IDLE_TIMEOUT
        except argparse.ArgumentTypeError as exc:
            logger.error("wsclient relay: %s: %s", IDLE_TIMEOUT_ENV, exc)
            return EXIT_USAGE
    try:
        if args.socket is None:
            path = default_socket_path()
            prepare_private_dir(os.path.dirname(path))
        else:
            # Absolute: the detached relay leaves the current directory.
            path = os.path.abspath(args.socket)
        relay = Relay(path, idle_timeout=idle)
    except (ValueError, TypeError) as exc:
        logger.error("wsclient relay: %s", exc)
        return EXIT_USAGE
    except Exception as exc:  # the default directory is someone else's
        logger.error("wsclient relay: %s", exc)
        return EXIT_FAILED
    if args.verbose:
        logging.getLogger("wsclient.relay").setLevel(logging.DEBUG)
    if args.foreground:
        return _serve(relay, None)
    return _detach(relay, args.log_file)


def _serve(relay: Relay, ready_fd: int | None) -> int:
    """Run ``relay`` until it stops; tell ``ready_fd`` (if any) whether it started."""
    interrupted = False

    async def watch_signals() -> None:
        nonlocal interrupted
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for received in signals:
                interrupted = received == signal.SIGINT
                relay.close()  # closes the locals and upstreams cleanly
                return

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_signals)
            try:
                await _run_relay(relay, ready_fd)
            finally:
                tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        logger.error("wsclient relay: %s", _first(exc))
        return EXIT_FAILED
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


async def _run_relay(relay: Relay, ready_fd: int | None) -> None:
    async with anyio.create_task_group() as tg:
        try:
            await tg.start(relay.run)
        except Exception as exc:
            _tell(ready_fd, f"error: {_first(exc)}")
            raise
        _tell(ready_fd, "ready")  # the relay logged where it listens


def _first(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (a task group's), or ``exc``."""
    while True:
        inner = getattr(exc, "exceptions", None)  # BaseExceptionGroup is 3.11+
        if not isinstance(inner, tuple) or not inner or not isinstance(inner[0], BaseException):
            return exc
        exc = inner[0]


def _tell(fd: int | None, text: str) -> None:
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(fd, text.encode("utf-8", "replace")[:1000] + b"\n")
        os.close(fd)


def _detach(relay: Relay, log_file: str | None) -> int:
    """Fork the relay into the background; return once it listens, or failed to."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the relay
        os.close(read_fd)
        code = EXIT_FAILED
        try:
            os.setsid()  # no controlling terminal: the shell's Ctrl-C and hangup are not ours
            _redirect_stdio(log_file)
            os.umask(0o077)
            os.chdir("/")  # holds no directory in use (the socket path is absolute)
            code = _serve(relay, write_fd)
        finally:
            os._exit(code)
    os.close(write_fd)
    answer = _read_answer(read_fd, READY_TIMEOUT)
    os.close(read_fd)
    if answer == "ready":
        return EXIT_OK
    # The relay could not start: another serves the path, the socket cannot be made...
    logger.error("wsclient relay: %s", answer.removeprefix("error: ") or "the relay did not start")
    return EXIT_FAILED


def _redirect_stdio(log_file: str | None) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    out = null
    if log_file:
        try:
            out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError:
            out = null
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)


def _read_answer(fd: int, timeout: float) -> str:
    """The relay's first line on ``fd``, or "" if it ended or took longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return ""
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            return ""
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.partition(b"\n")[0].decode("utf-8", "replace").strip()
