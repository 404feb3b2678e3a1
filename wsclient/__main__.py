"""``python -m wsclient``: the same command line as the ``wsclient`` script."""

from __future__ import annotations

from wsclient._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
