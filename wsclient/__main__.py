"""The ``wsclient`` command line: ``wsclient <verb> [options]``.

Each verb is one ``_add_<verb>`` function that declares its sub-parser and sets
``handler`` to a ``_run_<verb>(args) -> int`` function; :func:`main` dispatches.

- ``serve``: run the reference Hub until Ctrl-C.
- ``demo``: show the SDK at work against an embedded Hub.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

import anyio

__all__ = ["main"]

logger = logging.getLogger("wsclient.cli")

Runner = Callable[[argparse.Namespace], int]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsclient",
        description="A resilient WebSocket client SDK: command line tools.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="<command>")
    _add_serve(verbs)
    _add_demo(verbs)
    return parser


def _add_serve(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = verbs.add_parser(
        "serve",
        help="run the reference Hub (default dialect) until Ctrl-C",
        description="Run the reference Hub, speaking the default dialect, until Ctrl-C.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    serve.add_argument(
        "--port", type=int, default=8765, help="port to listen on, 0 for any (%(default)s)"
    )
    serve.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from wsclient.server import Hub

    async def serve_forever() -> None:
        async with Hub().serve(args.host, args.port) as server:
            logger.info("serving on ws://%s:%d", args.host, server.port)
            await anyio.sleep_forever()

    try:
        anyio.run(serve_forever)
    except KeyboardInterrupt:
        logger.info("stopped")
    return 0


def _add_demo(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = verbs.add_parser(
        "demo",
        help="show the SDK at work against an embedded Hub",
        description="Start an embedded Hub and narrate a client using it. Needs no network.",
    )
    demo.add_argument(
        "--backend", choices=["asyncio", "trio"], default="asyncio", help="event loop to use"
    )
    demo.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from wsclient._demo import run_demo

    # The demo narrates state changes itself; the log would say them twice.
    logging.getLogger("wsclient.reconnect").setLevel(logging.WARNING)
    try:
        anyio.run(run_demo, backend=args.backend)
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``wsclient`` command line with ``argv`` (default: ``sys.argv[1:]``)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    handler: Runner | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # websockets' own lifecycle lines repeat ours at INFO.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
