"""The byte links under the transport: control frames never wait behind data."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import anyio.abc
import pytest

from wsclient._links import AsyncioLink, LinkOwner, StreamLink

pytestmark = pytest.mark.anyio

PING = b"\x89\x80mask"  # a masked, empty ping frame
DATA = [b"\x82\x85mask" + bytes([i]) * 5 for i in range(3)]  # three binary frames


class Owner(LinkOwner):
    def __init__(self) -> None:
        self.lost: list[BaseException | None] = []

    def bytes_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> None:
        pass

    def link_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


class RecordingTransport(asyncio.Transport):
    """An asyncio transport that records writes instead of sending them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.writes.extend(bytes(chunk) for chunk in list_of_data)

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_link_lets_pings_overtake_held_back_data(anyio_backend: str) -> None:
    """While the socket buffer is full, data is held back and a ping goes out first."""
    link = AsyncioLink(Owner())
    transport = RecordingTransport()
    link.connection_made(transport)
    link.pause_writing()  # asyncio says: the socket's buffer is over its high-water mark
    link.queue([DATA[0]], control=False)
    link.queue([DATA[1]], control=False)
    assert link.backlogged
    link.queue([PING], control=True)
    assert transport.writes == [PING]
    link.resume_writing()
    assert transport.writes == [PING, DATA[0], DATA[1]]
    assert not link.backlogged


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_link_flush_waits_for_held_back_data(anyio_backend: str) -> None:
    """flush() returns only once held-back data has been handed to the socket."""
    link = AsyncioLink(Owner())
    transport = RecordingTransport()
    link.connection_made(transport)
    link.pause_writing()
    link.queue([DATA[0]], control=False)
    async with anyio.create_task_group() as tg:
        flushed = anyio.Event()

        async def flush() -> None:
            await link.flush()
            flushed.set()

        tg.start_soon(flush)
        await anyio.wait_all_tasks_blocked()
        assert not flushed.is_set()
        link.resume_writing()
    assert flushed.is_set()
    assert transport.writes == [DATA[0]]


class RecordingStream(anyio.abc.ByteStream):
    """A byte stream whose first send blocks until released; records every send."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.release = anyio.Event()

    async def send(self, item: bytes) -> None:
        if not self.sent:
            self.sent.append(item)
            await self.release.wait()  # the peer is slow to read the first batch
        else:
            self.sent.append(item)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def test_stream_link_sends_pings_before_queued_data() -> None:
    """Frames queued behind a slow write go out as one batch, pings first."""
    stream = RecordingStream()
    link = StreamLink(Owner(), stream)
    async with anyio.create_task_group() as tg:
        link.queue([DATA[0]], control=False)
        tg.start_soon(link.flush)
        await anyio.wait_all_tasks_blocked()  # the first batch is stuck in send()
        link.queue([DATA[1]], control=False)
        link.queue([DATA[2]], control=False)
        link.queue([PING], control=True)
        tg.start_soon(link.flush)  # waits for the writer, which takes everything
        await anyio.wait_all_tasks_blocked()
        stream.release.set()
    assert stream.sent == [DATA[0], PING + DATA[1] + DATA[2]]
    assert not link.backlogged


async def test_stream_link_control_flush_does_not_wait_for_a_busy_writer() -> None:
    """flush(control_only=True) returns at once while a writer is stuck; the ping goes next."""
    stream = RecordingStream()
    link = StreamLink(Owner(), stream)
    async with anyio.create_task_group() as tg:
        link.queue([DATA[0]], control=False)
        tg.start_soon(link.flush)
        await anyio.wait_all_tasks_blocked()  # the data writer is stuck in send()
        link.queue([DATA[1]], control=False)
        link.queue([PING], control=True)
        with anyio.fail_after(1):
            await link.flush(control_only=True)  # a heartbeat must not wait for the data
        assert stream.sent == [DATA[0]]
        stream.release.set()
    assert stream.sent == [DATA[0], PING + DATA[1]]


async def test_stream_link_control_flush_writes_only_control_frames() -> None:
    """With no writer busy, flush(control_only=True) writes the ping and leaves the data queued."""
    stream = RecordingStream()
    stream.sent.append(b"earlier")  # sends no longer block
    link = StreamLink(Owner(), stream)
    link.queue([DATA[0]], control=False)
    link.queue([PING], control=True)
    await link.flush(control_only=True)
    assert stream.sent == [b"earlier", PING]
    assert link.backlogged
    await link.flush()
    assert stream.sent == [b"earlier", PING, DATA[0]]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_link_control_flush_ignores_held_back_data(anyio_backend: str) -> None:
    """On asyncio the ping is written at once; flush(control_only=True) does not wait for data."""
    link = AsyncioLink(Owner())
    transport = RecordingTransport()
    link.connection_made(transport)
    link.pause_writing()
    link.queue([DATA[0]], control=False)
    link.queue([PING], control=True)
    with anyio.fail_after(1):
        await link.flush(control_only=True)
    assert transport.writes == [PING]
    assert link.backlogged
