"""A private asyncio event loop running in a daemon thread.

Servers built on the ``websockets`` asyncio server (the reference Hub, the
test servers) need an asyncio loop. Code running on trio, or on an asyncio
loop that must not be blocked, runs them here instead and talks to them
through ``LoopThread.run()``, which any anyio backend can await.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import anyio.to_thread

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """Own an asyncio loop in a daemon thread; start with ``start()``, stop with ``stop()``."""

    def __init__(self, name: str = "wsclient-loop") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("LoopThread is not started")
        return self._loop

    def start(self) -> None:
        """Start the loop and return once it runs."""
        ready = threading.Event()
        loop = asyncio.new_event_loop()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                # Tasks still running (a handler mid-close) are cancelled and
                # awaited, so nothing is left half-finished on a closed loop.
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=main, name=self._name, daemon=True)
        self._thread.start()
        ready.wait()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule ``coro`` on the loop; return a thread-safe future."""
        # A fresh context: the caller's may say (through sniffio) that trio is
        # running, and anyio code on this loop would then pick the wrong backend.
        return contextvars.Context().run(asyncio.run_coroutine_threadsafe, coro, self.loop)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and await its result from any anyio backend."""
        future = self.submit(coro)
        try:
            return await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)
        finally:
            future.cancel()

    def stop(self) -> None:
        """Stop the loop and join the thread (idempotent)."""
        if self._loop is None or self._thread is None:
            return
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop = None
        self._thread = None
