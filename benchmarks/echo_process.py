"""The benchmarks' echo server as a child process: start it, read its port, stop it.

Shared by the runners in this directory, which import it as a sibling module
(they are run as scripts, so this directory is on ``sys.path``).
"""

from __future__ import annotations

import selectors
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

SERVER_SCRIPT = Path(__file__).with_name("echo_server.py")
SERVER_START_TIMEOUT = 15.0
# The CPU the servers are pinned to; the runners pin themselves to another.
SERVER_CPU = 0


def die_with_parent() -> None:
    """In a child process: get SIGTERM if the runner dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # Not Linux: the runners' try/finally still stops the server.


def preexec() -> Callable[[], None] | None:
    """The ``preexec_fn`` for child processes: :func:`die_with_parent` where it works."""
    return die_with_parent if sys.platform == "linux" else None


def on_server_cpu(command: list[str]) -> list[str]:
    """``command`` run by ``taskset``, pinned to :data:`SERVER_CPU`."""
    return [shutil.which("taskset") or "taskset", "-c", str(SERVER_CPU), *command]


def start_server(pin: bool, compression: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``echo_server.py`` on a port the OS chooses (on :data:`SERVER_CPU` if ``pin``).

    Returns the process and its port; stops the process if it prints no port.
    """
    command = [sys.executable, str(SERVER_SCRIPT), "--port", "0"]
    if compression:
        command.append("--compression")
    if pin:
        command = on_server_cpu(command)
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, preexec_fn=preexec()
    )
    try:
        port = read_port(process)
    except BaseException:
        stop_server(process)
        raise
    return process, port


def read_port(process: subprocess.Popen[bytes]) -> int:
    """The port from the server's first line, ``PORT <n>``, waited for at most 15 s."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(SERVER_START_TIMEOUT):
            raise RuntimeError(f"echo server printed no port in {SERVER_START_TIMEOUT} s")
    line = process.stdout.readline().decode().strip()
    keyword, _, port = line.partition(" ")
    if keyword != "PORT" or not port.isdigit():
        raise RuntimeError(f"echo server did not start: first line {line!r}")
    return int(port)


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """Terminate the server (kill it after 5 s) and close its pipe."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
