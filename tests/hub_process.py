"""Hub processes for the cluster test: ``wsclient serve`` as a child process.

Each node is the real command a deployment runs (``wsclient serve --redis``),
on 127.0.0.1 and a port the OS chooses, which it prints when it listens.
"""

from __future__ import annotations

import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

START_TIMEOUT = 20.0
SERVE = (sys.executable, "-m", "wsclient", "serve", "--host", "127.0.0.1", "--port", "0")
_LISTENING = re.compile(rb"serving on ws://127\.0\.0\.1:(\d+)")


class HubProcess:
    """One ``wsclient serve`` child: ``port`` once it listens, ``kill()`` to crash it.

    Starting returns at once; ``wait_listening()`` reads the port, so several
    nodes start side by side (each takes a while to import).
    """

    def __init__(self, extra_args: Sequence[str] = ()) -> None:
        self.process = subprocess.Popen(
            [*SERVE, *extra_args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.output = b""
        self.port = 0

    def wait_listening(self) -> HubProcess:
        """Wait (bounded) until the node prints the port it listens on."""
        self.port = self._read_port()
        return self

    def _read_port(self) -> int:
        assert self.process.stderr is not None
        deadline = time.monotonic() + START_TIMEOUT
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stderr, selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0:
                if not selector.select(left):
                    break
                chunk = self.process.stderr.read1(4096)  # type: ignore[attr-defined]
                if not chunk:
                    break
                self.output += chunk
                found = _LISTENING.search(self.output)
                if found:
                    return int(found.group(1))
        self.kill()
        raise RuntimeError(f"wsclient serve did not start: {self.output.decode(errors='replace')}")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """Crash the node: SIGKILL, no close frames, as when a machine dies."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._close_pipe()

    def stop(self) -> None:
        """Stop the node the way an operator does (Ctrl-C), killing it if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.process.stderr is not None and not self.process.stderr.closed:
            self.process.stderr.close()
