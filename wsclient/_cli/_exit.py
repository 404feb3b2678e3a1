"""The exit codes every ``wsclient`` verb returns, for scripts to test."""

from __future__ import annotations

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE"]

EXIT_OK = 0
# The work failed: a refused connection, an error reply, errors counted.
EXIT_FAILED = 1
# Bad usage: an invalid URL or option (argparse's own code for usage errors).
EXIT_USAGE = 2
# Ctrl-C: 128 + SIGINT, as shells report it.
EXIT_INTERRUPTED = 130
