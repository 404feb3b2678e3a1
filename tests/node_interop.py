"""Run the Node ``ws`` pub/sub server of ``tests/interop`` for interop tests.

The server is written from the seeds/004 example (``pubsub_server.js``);
:func:`node_pubsub_server` starts it on a port the OS chooses and stops it on
exit, on asyncio and on trio. Tests call :func:`require_node` first: without
Node.js they are skipped, loudly.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["INTEROP_DIR", "NODE_MISSING_REASON", "node_pubsub_server", "require_node"]

INTEROP_DIR = Path(__file__).resolve().parent / "interop"

NODE_MISSING_REASON = (
    "Node.js is not installed: the interop test against a ws server written "
    "from seeds/004 did not run; run scripts/ensure-node"
)

# npm ci installs one small package; the bound keeps it under pytest's timeout.
NPM_CI_TIMEOUT = 90.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


def _node_and_npm() -> tuple[str, str] | None:
    node, npm = shutil.which("node"), shutil.which("npm")
    return (node, npm) if node is not None and npm is not None else None


def require_node() -> None:
    """Skip the calling test, with :data:`NODE_MISSING_REASON`, if node or npm is missing."""
    if _node_and_npm() is None:
        pytest.skip(NODE_MISSING_REASON)


async def _install_node_modules(npm: str) -> None:
    """Run ``npm ci`` in ``tests/interop`` unless ``ws`` is already installed."""
    if (INTEROP_DIR / "node_modules" / "ws").is_dir():
        return
    try:
        with anyio.fail_after(NPM_CI_TIMEOUT):
            await anyio.run_process(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=INTEROP_DIR
            )
    except TimeoutError as exc:
        raise RuntimeError(f"npm ci in {INTEROP_DIR} took over {NPM_CI_TIMEOUT:.0f} s") from exc
    except subprocess.CalledProcessError as exc:
        output = (exc.stderr or b"").decode(errors="replace").strip()
        raise RuntimeError(f"npm ci in {INTEROP_DIR} failed:\n{output}") from exc


async def _stop(process: anyio.abc.Process) -> None:
    """Terminate ``process``, kill it if it lingers, and reap it."""
    if process.returncode is None:
        process.terminate()
        with anyio.move_on_after(STOP_TIMEOUT):
            await process.wait()
        if process.returncode is None:
            process.kill()
    # Closes the pipes (the server also exits when its stdin closes) and waits.
    await process.aclose()


@asynccontextmanager
async def node_pubsub_server() -> AsyncIterator[str]:
    """Run ``pubsub_server.js`` and yield its ``ws://127.0.0.1:<port>`` URL.

    Raises:
        RuntimeError: node or npm is missing (call :func:`require_node` first to
            skip instead), ``npm ci`` failed, or the server did not start.
    """
    found = _node_and_npm()
    if found is None:
        raise RuntimeError(NODE_MISSING_REASON)
    node, npm = found
    await _install_node_modules(npm)
    # stderr is inherited: pytest captures the server's log with the test's output.
    process = await anyio.open_process(
        [node, "pubsub_server.js"],
        cwd=INTEROP_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,
    )
    try:
        assert process.stdout is not None
        stdout = BufferedByteReceiveStream(process.stdout)
        try:
            with anyio.fail_after(START_TIMEOUT):
                line = await stdout.receive_until(b"\n", 256)
        except TimeoutError as exc:
            raise RuntimeError(
                f"pubsub_server.js printed no LISTENING line within {START_TIMEOUT:.0f} s"
            ) from exc
        except (anyio.IncompleteRead, anyio.EndOfStream) as exc:
            with anyio.move_on_after(STOP_TIMEOUT):
                await process.wait()
            raise RuntimeError(
                f"pubsub_server.js exited with code {process.returncode} before listening"
            ) from exc
        word, _, port = line.decode(errors="replace").partition(" ")
        if word != "LISTENING" or not port.isdigit():
            raise RuntimeError(f"pubsub_server.js printed {line!r}, not 'LISTENING <port>'")
        yield f"ws://127.0.0.1:{port}"
    finally:
        with anyio.CancelScope(shield=True):
            await _stop(process)
