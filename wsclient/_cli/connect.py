"""``wsclient connect``: placeholder until the verb lands (not yet registered)."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare nothing yet."""
