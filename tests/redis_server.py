"""Run a real ``redis-server`` for tests of the Hub's Redis backplane.

:func:`start_redis` starts one on 127.0.0.1, on a free port the OS chose,
with no persistence, in a temporary directory, and returns once it answers
``PING``::

    with start_redis() as redis:
        hub = Hub(redis_url=redis.url)
        redis.kill()      # crash it (SIGKILL)
        redis.restart()   # the same port again, empty

The ``redis_server`` fixture shares one for the whole session; a test that
kills or restarts Redis starts its own. Without ``redis-server``, the first
use runs ``scripts/ensure-redis`` (which installs it with apt-get); if that
fails too, the tests are skipped, loudly, saying so.

Everything here is synchronous (subprocess and a raw socket for ``PING``),
so it serves asyncio tests, trio tests and plain ones alike.
"""

from __future__ import annotations

import atexit
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

__all__ = [
    "REDIS_MISSING_REASON",
    "RedisProcess",
    "redis_server",
    "require_redis",
    "start_redis",
]

ENSURE_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "ensure-redis"

REDIS_MISSING_REASON = (
    "redis-server is not installed and scripts/ensure-redis could not install it: "
    "the tests of the Hub's Redis backplane did not run; run scripts/ensure-redis"
)

ENSURE_TIMEOUT = 300.0  # apt-get update and install, on a slow mirror
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

_ensured: bool | None = None  # None: not tried yet in this session
# Servers still running: killed when Python exits, even if pytest dies first.
_running: set[RedisProcess] = set()


@atexit.register
def _kill_leftovers() -> None:
    for redis in list(_running):
        redis.kill()


def _redis_server() -> str | None:
    global _ensured
    found = shutil.which("redis-server")
    if found is not None or _ensured is not None:
        return found
    _ensured = False
    try:
        subprocess.run([str(ENSURE_SCRIPT)], check=True, timeout=ENSURE_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None
    _ensured = True
    return shutil.which("redis-server")


def require_redis() -> str:
    """Return the path of ``redis-server``, installing it first if need be; else skip."""
    found = _redis_server()
    if found is None:
        pytest.skip(REDIS_MISSING_REASON)
    return found


def _free_port() -> int:
    # redis-server cannot be told "port 0" (that turns TCP off): ask the OS for
    # a free port and hand it over. Another process taking it in between is
    # the rare case start_redis() retries.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int, password: str | None, timeout: float) -> bool:
    """Whether a Redis server answers ``PING`` on ``port`` (authenticating first)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            command = b"PING\r\n"
            if password is not None:
                secret = password.encode()
                command = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret) + command
            sock.sendall(command)
            answer = b""
            while answer.count(b"\r\n") < (2 if password is not None else 1):
                chunk = sock.recv(1024)
                if not chunk:
                    return False
                answer += chunk
            return answer.endswith(b"+PONG\r\n")
    except OSError:
        return False


class RedisProcess:
    """A ``redis-server`` child process on 127.0.0.1 (see :func:`start_redis`).

    ``url`` is ``redis://127.0.0.1:<port>/0`` (with ``:password@`` when it has
    one) and ``unix_url`` the same server through its Unix socket.
    """

    def __init__(self, executable: str, port: int, password: str | None, directory: Path) -> None:
        self.executable = executable
        self.port = port
        self.password = password
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def socket_path(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        query = f"&password={urllib.parse.quote(self.password, safe='')}" if self.password else ""
        return f"unix://{self.socket_path}?db=0{query}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the server on :attr:`port` and wait (bounded) until it answers ``PING``."""
        if self.alive():
            raise RuntimeError("this redis-server is already running")
        command = [
            self.executable,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--unixsocket",
            str(self.socket_path),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.directory / "redis.log"),
            "--daemonize",
            "no",
        ]
        if self.password is not None:
            command += ["--requirepass", self.password]
        _running.add(self)
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for pytest does not reach it
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start:\n{self.log()}")
            if _ping(self.port, self.password, timeout=1.0):
                return
            time.sleep(0.01)  # polling a condition, with a deadline
        self.kill()
        raise RuntimeError(f"redis-server did not answer PING within {START_TIMEOUT} s")

    def log(self) -> str:
        """The server's log so far, for failure messages."""
        try:
            return (self.directory / "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers) and reap it."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        self.process = None
        _running.discard(self)

    def kill(self) -> None:
        """Crash the server (SIGKILL): its clients see their connections reset."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait(timeout=STOP_TIMEOUT)
        self.process = None
        _running.discard(self)

    def restart(self) -> None:
        """Start again on the same port (after :meth:`kill` or :meth:`stop`), empty."""
        self.kill()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.alive() else "stopped"
        return f"<RedisProcess 127.0.0.1:{self.port} {state}>"


def start_redis(*, password: str | None = None) -> RedisProcess:
    """Start a ``redis-server`` on a free port of 127.0.0.1; skip the test if there is none.

    ``password`` sets ``requirepass``. Close it with :meth:`RedisProcess.close`
    (or use it as a context manager).
    """
    executable = require_redis()
    for attempt in range(3):
        directory = Path(tempfile.mkdtemp(prefix="wsclient-redis-"))
        redis = RedisProcess(executable, _free_port(), password, directory)
        try:
            redis.start()
        except RuntimeError:
            redis.close()
            if attempt == 2:
                raise
            continue  # most likely the port was taken meanwhile: another one
        return redis
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """One Redis for the session's tests that do not kill it."""
    with start_redis() as redis:
        yield redis
