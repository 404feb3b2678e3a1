"""``wsclient serve``: run the reference Hub until Ctrl-C."""

from __future__ import annotations

import argparse
import logging

import anyio

from ._exit import EXIT_FAILED, EXIT_OK, EXIT_USAGE

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
    serve.add_argument(
        "--allow-origin",
        metavar="ORIGIN",
        action="append",
        default=[],
        help="accept browser handshakes from ORIGIN, e.g. https://app.test (repeatable);"
        " '*' accepts any. Without it, only clients that send no Origin are accepted",
    )
    serve.add_argument(
        "--max-connections-per-ip",
        metavar="N",
        type=_limit,
        default=256,
        help="connections open at once from one address, 0 for no limit (%(default)s)",
    )
    serve.set_defaults(handler=run)


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 (no limit) or a positive count, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from wsclient.server import Hub

    origins = args.allow_origin
    try:
        hub = Hub(
            allowed_origins="*" if "*" in origins else origins or None,
            max_connections_per_ip=args.max_connections_per_ip or None,
        )
    except ValueError as exc:  # an origin that is not one ("null", "app.test"...)
        logger.error("wsclient serve: %s", exc)
        return EXIT_USAGE

    async def serve_forever() -> None:
        async with hub.serve(args.host, args.port) as server:
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
