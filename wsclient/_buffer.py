"""Bounded inbound buffers: where messages wait for a consumer that reads them.

The reader task hands every message over with ``InboundBuffer.put_nowait()``,
which never waits: a consumer that falls behind loses messages by its own
policy ([`BufferPolicy`][wsclient.BufferPolicy]) and never stalls the reader, so replies,
heartbeats and the other consumers go on.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, get_args

import anyio

from ._checks import is_count
from ._exceptions import QueueFull

__all__ = ["BufferPolicy", "BufferStatistics", "InboundOverflow"]

_T = TypeVar("_T")

InboundOverflow = Literal["drop_oldest", "drop_newest", "fail"]
"""What a full inbound buffer does with one more message."""
_OVERFLOWS: tuple[str, ...] = get_args(InboundOverflow)
# Every buffer starts as this one, never added to: an empty deque costs 760 bytes.
_NOTHING: deque[Any] = deque()


@dataclass(frozen=True, kw_only=True)
class BufferPolicy:
    """How many messages a consumer may fall behind, and what happens then.

    Attributes:
        max_messages: messages held for the consumer (default 1024).
        overflow: ``"drop_oldest"`` (default: the newest data wins, as for
            prices), ``"drop_newest"`` (keep what is there), or ``"fail"``
            (the consumer gets what was buffered, then [`QueueFull`][wsclient.QueueFull]:
            for streams where a gap must not go unnoticed). Drops are counted.
    """

    max_messages: int = 1024
    overflow: InboundOverflow = "drop_oldest"

    def __post_init__(self) -> None:
        if not is_count(self.max_messages) or self.max_messages < 1:
            raise ValueError(f"max_messages must be an int >= 1, got {self.max_messages!r}")
        if self.overflow not in _OVERFLOWS:
            raise ValueError(f"overflow must be one of {_OVERFLOWS}, got {self.overflow!r}")


@dataclass(frozen=True)
class BufferStatistics:
    """Counters of one consumer's buffer."""

    received: int
    """Handed to the buffer, dropped ones included."""
    pending: int
    """Waiting to be read now."""
    dropped: int
    """Lost to the overflow policy."""


class InboundBuffer(Generic[_T]):
    """A FIFO the reader fills without waiting and one or more tasks drain.

    ``close()`` ends it: readers drain what is left, then ``get()``
    raises the error given to close, or ``anyio.EndOfStream``.
    """

    __slots__ = (
        "_closed",
        "_dropped",
        "_error",
        "_items",
        "_name",
        "_policy",
        "_received",
        "_wakeup",
    )

    def __init__(self, policy: BufferPolicy, *, name: str) -> None:
        self._policy = policy
        self._name = name
        self._items: deque[_T] = _NOTHING  # made by the first item: most buffers stay empty
        self._wakeup: anyio.Event | None = None  # made when a reader waits
        self._closed = False
        self._error: BaseException | None = None
        self._received = 0
        self._dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def error(self) -> BaseException | None:
        """Why it closed, if it failed."""
        return self._error

    def put_nowait(self, item: _T) -> bool:
        """Add ``item`` by the policy; False if it (or, under ``fail``, the buffer) was dropped."""
        self._received += 1
        if self._closed:
            self._dropped += 1
            return False
        items = self._items
        if items is _NOTHING:
            items = self._items = deque()
        if len(items) >= self._policy.max_messages:
            overflow = self._policy.overflow
            self._dropped += 1
            if overflow == "drop_newest":
                return False
            if overflow == "fail":
                self.close(
                    QueueFull(
                        f"{self._name} fell {self._policy.max_messages} messages behind; "
                        "it was closed, since its policy is overflow='fail'"
                    )
                )
                return False
            items.popleft()
        items.append(item)
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None
        return True

    async def get(self) -> _T:
        """The next item; waits for one. Once closed and drained, raises why it closed."""
        while not self._items:
            if self._closed:
                if self._error is not None:
                    raise self._error.with_traceback(None)
                raise anyio.EndOfStream
            if self._wakeup is None:
                self._wakeup = anyio.Event()
            await self._wakeup.wait()
        return self._items.popleft()

    def close(self, error: BaseException | None = None) -> None:
        """Accept nothing more; readers get what is left, then ``error`` (or EndOfStream)."""
        if self._closed:
            return
        self._closed = True
        self._error = error
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def statistics(self) -> BufferStatistics:
        return BufferStatistics(
            received=self._received, pending=len(self._items), dropped=self._dropped
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<InboundBuffer {self._name} {state} {len(self._items)}/{self._policy.max_messages}"
            f" {self._policy.overflow} dropped={self._dropped}>"
        )
