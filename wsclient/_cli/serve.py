"""``wsclient serve``: run the reference Hub until Ctrl-C."""

from __future__ import annotations

import argparse
import logging

import anyio

from ._exit import EXIT_FAILED, EXIT_OK

__all__ = ["add_parser", "run"]

logger = logging.getLogger("wsclient.cli")


def add_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = verbs.add_parser(
        "serve",
        help="run the reference Hub (default dialect) until Ctrl-C",
        description="Run the reference Hub, speaking the default dialect, until Ctrl-C.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    serve.add_argument(
        "--port", type=int, default=8765, help="port to listen on, 0 for any (%(default)s)"
    )
    serve.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from wsclient.server import Hub

    async def serve_forever() -> None:
        async with Hub().serve(args.host, args.port) as server:
            logger.info("serving on ws://%s:%d", args.host, server.port)
            await anyio.sleep_forever()

    try:
        anyio.run(serve_forever)
    except KeyboardInterrupt:
        logger.info("stopped")
    except OSError as exc:  # the port is taken, the address is not ours...
        logger.error("cannot listen on %s:%d: %s", args.host, args.port, exc.strerror or exc)
        return EXIT_FAILED
    return EXIT_OK
