"""``wsclient serve``: run the reference Hub until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import os

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
    serve.add_argument(
        "--redis",
        metavar="URL",
        # From the environment, a password in the URL stays out of `ps`.
        default=os.environ.get("WSCLIENT_REDIS_URL") or None,
        help="fan channels out through Redis pub/sub at URL (redis://[:password@]host:port/db,"
        " rediss:// or unix:///path), so that several Hubs behind a load balancer act as one."
        " If Redis cannot be reached, the Hub starts anyway, warns once, refuses"
        " subscriptions and keeps reconnecting with backoff. Default: $WSCLIENT_REDIS_URL,"
        " which keeps a password out of the process list",
    )
    serve.add_argument(
        "--redis-prefix",
        metavar="PREFIX",
        default="wsclient:",
        help="put before each channel name on Redis, to keep clusters apart (%(default)s)",
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
    from wsclient._redact import redact_url
    from wsclient.server import Hub

    redis_url: str | None = args.redis
    if redis_url is not None:
        from wsclient.server._backplane import check_redis_url

        try:
            check_redis_url(redis_url, "--redis")
        except ValueError as exc:  # the message never shows the URL's password
            logger.error("wsclient serve: %s", exc)
            return EXIT_USAGE
        except ImportError:
            logger.error("wsclient serve: --redis needs redis-py: pip install 'wsclient[server]'")
            return EXIT_FAILED
    origins = args.allow_origin
    try:
        hub = Hub(
            allowed_origins="*" if "*" in origins else origins or None,
            max_connections_per_ip=args.max_connections_per_ip or None,
            redis_url=redis_url,
            redis_prefix=args.redis_prefix,
        )
    except ValueError as exc:  # an origin that is not one ("null", "app.test"...)
        logger.error("wsclient serve: %s", exc)
        return EXIT_USAGE
    through = f" (channels through Redis at {redact_url(redis_url)})" if redis_url else ""

    async def serve_forever() -> None:
        async with hub.serve(args.host, args.port) as server:
            logger.info("serving on ws://%s:%d%s", args.host, server.port, through)
            await anyio.sleep_forever()

    try:
        anyio.run(serve_forever)
    except KeyboardInterrupt:
        logger.info("stopped")
    except OSError as exc:  # the port is taken, the address is not ours...
        logger.error("cannot listen on %s:%d: %s", args.host, args.port, exc.strerror or exc)
        return EXIT_FAILED
    return EXIT_OK
