"""The ``wsclient`` command line: ``wsclient <verb> [options]``.

Each verb lives in its own module, which declares its sub-parser in
``add_parser(verbs)`` and sets ``handler`` to a ``run(args) -> int`` function;
``main()`` dispatches.

- ``connect``: talk to a server from a terminal or a pipe.
- ``serve``: run the reference Hub until Ctrl-C.
- ``bench``: load a server and report what it saw.
- ``demo``: show the SDK at work against an embedded Hub.
- ``relay``: share one upstream connection per URL between local processes.

Exit codes: 0 success, 1 the work failed (a refused connection, errors
counted), 2 bad usage, 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from . import bench, connect, demo, relay, serve
from ._exit import EXIT_INTERRUPTED, EXIT_USAGE

__all__ = ["main"]

Runner = Callable[[argparse.Namespace], int]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsclient",
        description="A resilient WebSocket client SDK: command line tools.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="<command>")
    for verb in (connect, serve, bench, demo, relay):
        verb.add_parser(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``wsclient`` command line with ``argv`` (default: ``sys.argv[1:]``)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    handler: Runner | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # websockets' own lifecycle lines repeat ours at INFO.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        return handler(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
