"""Inbound buffers and the correlator's pure logic (no sockets)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import wsclient
from wsclient import BufferPolicy, ConnectionLost, QueueFull, RemoteError
from wsclient._buffer import InboundBuffer
from wsclient._correlator import Correlator, _as_id
from wsclient._dialect import Inbound, Route


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_messages": 0}, "max_messages"),
        ({"max_messages": True}, "max_messages"),
        ({"max_messages": 1.5}, "max_messages"),
        ({"overflow": "block"}, "overflow"),
    ],
)
def test_buffer_policy_validates(options: dict[str, Any], match: str) -> None:
    """A policy refuses sizes that are not positive ints and unknown overflow modes."""
    with pytest.raises(ValueError, match=match):
        BufferPolicy(**options)


def fill(policy: BufferPolicy, count: int) -> InboundBuffer[int]:
    buffer: InboundBuffer[int] = InboundBuffer(policy, name="test")
    for n in range(count):
        buffer.put_nowait(n)
    return buffer


def drain(buffer: InboundBuffer[int]) -> list[int]:
    items: list[int] = []

    async def run() -> None:
        while True:
            try:
                items.append(await buffer.get())
            except anyio.EndOfStream:
                return

    buffer.close()
    anyio.run(run)
    return items


def test_drop_oldest_keeps_the_newest() -> None:
    """drop_oldest keeps the last max_messages items and counts the rest."""
    buffer = fill(BufferPolicy(max_messages=3), 10)
    assert buffer.statistics().dropped == 7
    assert drain(buffer) == [7, 8, 9]


def test_drop_newest_keeps_the_first() -> None:
    """drop_newest keeps what arrived first and refuses the rest."""
    buffer = fill(BufferPolicy(max_messages=3, overflow="drop_newest"), 10)
    assert buffer.put_nowait(99) is False
    assert buffer.statistics().dropped == 8
    assert drain(buffer) == [0, 1, 2]


def test_fail_hands_over_what_was_buffered_then_raises() -> None:
    """Under fail, the reader gets every buffered item, then QueueFull; nothing later gets in."""
    buffer = fill(BufferPolicy(max_messages=3, overflow="fail"), 5)
    assert buffer.closed
    items: list[int] = []

    async def run() -> None:
        for _ in range(3):
            items.append(await buffer.get())
        with pytest.raises(QueueFull, match="fell 3 messages behind"):
            await buffer.get()

    anyio.run(run)
    assert items == [0, 1, 2]
    assert buffer.statistics().dropped == 2


def test_a_waiting_reader_is_woken_by_put_and_by_close() -> None:
    """get() waits for an item; close() ends a waiting get() with the error given."""
    buffer: InboundBuffer[str] = InboundBuffer(BufferPolicy(), name="test")
    results: list[object] = []

    async def run() -> None:
        async with anyio.create_task_group() as group:

            async def reader() -> None:
                results.append(await buffer.get())
                try:
                    await buffer.get()
                except RuntimeError as exc:
                    results.append(exc)

            group.start_soon(reader)
            await anyio.sleep(0.01)
            buffer.put_nowait("one")
            await anyio.sleep(0.01)
            buffer.close(RuntimeError("gone"))

    anyio.run(run)
    assert results[0] == "one"
    assert str(results[1]) == "gone"
    assert buffer.put_nowait("late") is False


@pytest.mark.parametrize(
    ("echoed", "expected"),
    [(7, 7), ("7", 7), (7.0, 7), ("07", 7), ("x7", "x7"), (True, None), ("\u0667", "\u0667")],
)
def test_reply_ids_echoed_as_strings_or_floats_still_match(
    echoed: object, expected: object
) -> None:
    """Servers that echo an int id as a string or float are understood; bools never match."""
    assert _as_id(echoed) == expected


def test_correlator_in_flight_decisions() -> None:
    """On a drop, only requests that left the queue fail or wait for a resend."""
    correlator = Correlator()
    sent = correlator.open()
    sent.number = 1
    queued = correlator.open()
    queued.number = 2
    again = correlator.open(policy="resend", payload=b"x")
    again.number = 3
    direct = correlator.open()
    direct.transport = object()
    correlator.connection_lost(OSError("reset"), left_queue=lambda n: n in (1, 3))
    assert isinstance(sent.error, ConnectionLost)
    assert isinstance(sent.error.__cause__, OSError)
    assert isinstance(direct.error, ConnectionLost)
    assert not queued.done
    assert not again.done
    assert [w.id for w in correlator.to_resend()] == [again.id]
    assert list(correlator.to_resend()) == []  # each counted once
    stats = correlator.statistics()
    assert (stats.pending, stats.lost, stats.resent) == (2, 2, 1)


def test_correlator_resolves_errors_and_counts_unknown_replies() -> None:
    """A reply wakes its waiter with the result or the RemoteError; others are counted."""
    correlator = Correlator()
    ok, bad = correlator.open(), correlator.open()
    error = RemoteError("nope", request_id=bad.id)
    assert correlator.resolve(Inbound(Route.REPLY, {}, request_id=str(ok.id), result=1))
    assert correlator.resolve(Inbound(Route.REPLY, {}, request_id=bad.id, error=error))
    assert not correlator.resolve(Inbound(Route.REPLY, {}, request_id=ok.id, result=2))
    assert (ok.result, bad.error) == (1, error)
    stats = correlator.statistics()
    assert (stats.replies, stats.remote_errors, stats.unknown_replies, stats.pending) == (
        1,
        1,
        1,
        0,
    )


def test_correlator_fails_by_session_and_refuses_after_close() -> None:
    """fail(origin=) touches one session's requests; after close(), open() raises."""
    correlator = Correlator()
    mine, theirs = correlator.open(origin="a"), correlator.open(origin="b")
    correlator.fail(RuntimeError("closed"), origin="a")
    assert mine.done
    assert not theirs.done
    assert correlator.pending_for("b") == 1
    correlator.close(ConnectionLost("bye"))
    assert isinstance(theirs.error, ConnectionLost)
    with pytest.raises(ConnectionLost):
        correlator.open()


@pytest.mark.parametrize("option", ["subscriber_buffer", "message_buffer"])
@pytest.mark.parametrize("value", [None, 5, {"max_messages": 10}])
def test_client_refuses_a_buffer_option_that_is_not_a_policy(option: str, value: Any) -> None:
    """A buffer option that is not a BufferPolicy: TypeError naming it, as the client is made."""
    with pytest.raises(TypeError, match=option):
        wsclient.Client("ws://127.0.0.1:1/", **{option: value})
