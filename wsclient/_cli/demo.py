"""``wsclient demo``: the SDK at work against an embedded Hub, narrated."""

from __future__ import annotations

import argparse
import logging

import anyio

from ._exit import EXIT_INTERRUPTED, EXIT_OK

__all__ = ["add_parser", "run"]


def add_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = verbs.add_parser(
        "demo",
        help="show the SDK at work against an embedded Hub",
        description="Start an embedded Hub and narrate a client using it. Needs no network.",
    )
    demo.add_argument(
        "--backend", choices=["asyncio", "trio"], default="asyncio", help="event loop to use"
    )
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from wsclient._demo import run_demo

    # The demo narrates state changes itself; the log would say them twice.
    logging.getLogger("wsclient.reconnect").setLevel(logging.WARNING)
    try:
        anyio.run(run_demo, backend=args.backend)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK
