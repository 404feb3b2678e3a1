"""A real nginx in front of Hub processes, for the cluster test.

The configuration is seeds/004's load balancer (``hash $remote_addr
consistent``, the WebSocket upgrade headers, hour-long proxy timeouts), on
127.0.0.1 and a free port, with every file nginx writes kept in a temporary
directory. nginx comes from Debian's package, which ``scripts/ensure-nginx``
installs; without it the tests that need it are skipped, loudly.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

ENSURE_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "ensure-nginx"
NGINX_MISSING_REASON = "nginx is not installed and scripts/ensure-nginx could not install it"
START_TIMEOUT = 15.0

# seeds/004's configuration; the paths and ports are filled in per run.
CONFIG = """\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    upstream websocket_servers {{
        hash $remote_addr consistent;
{servers}
    }}

    server {{
        listen 127.0.0.1:{port};
        server_name localhost;

        location /ws/ {{
            proxy_pass http://websocket_servers;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            # A dead node refuses at once: let nginx try the next one.
            proxy_connect_timeout 2s;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    """The nginx executable, installing it with scripts/ensure-nginx if missing."""
    found = shutil.which("nginx") or _sbin("nginx")
    if found:
        return found
    result = subprocess.run([str(ENSURE_SCRIPT)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return None
    return shutil.which("nginx") or _sbin("nginx")


def _sbin(name: str) -> str | None:
    path = Path("/usr/sbin") / name
    return str(path) if path.exists() else None


def require_nginx() -> str:
    """The nginx executable, or skip the calling test loudly."""
    binary = nginx_binary()
    if binary is None:
        pytest.skip(NGINX_MISSING_REASON)
    return binary


class Nginx:
    """A running nginx: ``url`` is the WebSocket location, ``stop()`` ends it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, prefix: Path) -> None:
        self.process = process
        self.port = port
        self.prefix = prefix

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/"

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: finish, then exit
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_listening(process: subprocess.Popen[bytes], port: int) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)  # nginx is starting; polling a port has no event to wait on
    return False


@contextmanager
def running_nginx(backend_ports: Sequence[int]) -> Iterator[Nginx]:
    """nginx balancing WebSocket connections over 127.0.0.1:``backend_ports``."""
    binary = require_nginx()
    with tempfile.TemporaryDirectory(prefix="wsclient-nginx-") as directory:
        prefix = Path(directory)
        servers = "\n".join(f"        server 127.0.0.1:{port};" for port in backend_ports)
        last_log = ""
        # The free port is found by binding and releasing it, so another process
        # may take it before nginx does: retry with another.
        for _ in range(5):
            port = _free_port()
            config = prefix / "nginx.conf"
            config.write_text(CONFIG.format(prefix=prefix, servers=servers, port=port))
            process = subprocess.Popen(
                [binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,  # Ctrl-C on pytest is the test's to handle
            )
            nginx = Nginx(process, port, prefix)
            if _wait_listening(process, port):
                try:
                    yield nginx
                finally:
                    nginx.stop()
                    if process.stderr is not None:
                        process.stderr.close()
                return
            nginx.stop()
            last_log = nginx.error_log()
            if process.stderr is not None:
                last_log += process.stderr.read().decode(errors="replace")
                process.stderr.close()
        raise RuntimeError(f"nginx did not start: {last_log.strip()[-2000:]}")
