"""MemoryTransport: the in-memory Transport pair, on a fake clock, on asyncio and trio."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from wsclient import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidState,
    MessageTooBig,
    Transport,
    TransportState,
)
from wsclient.testing import MemoryTransport

pytestmark = pytest.mark.anyio

now = anyio.current_time


@pytest.fixture
def anyio_backend(fake_clock: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Every test here runs on virtual time, on asyncio (looptime) and trio (MockClock)."""
    return fake_clock


# Messages


async def test_pair_is_open_and_connected() -> None:
    """A new pair is two open ends, client first, each the other's peer."""
    client, server = MemoryTransport.pair()
    assert isinstance(client, Transport)
    assert (client.side, server.side) == ("client", "server")
    assert client.peer is server
    assert server.peer is client
    assert client.state is server.state is TransportState.OPEN
    assert client.close_code is None
    assert client.close_reason is None
    assert client.url == "memory://"
    assert client.subprotocol is None


async def test_text_round_trip_both_directions() -> None:
    """A str sent by either end arrives at the other as the same str."""
    client, server = MemoryTransport.pair()
    await client.send("héllo")
    assert await server.receive() == "héllo"
    await server.send("wörld")
    assert await client.receive() == "wörld"


async def test_bytes_arrive_as_bytes() -> None:
    """bytes (and other bytes-like objects) arrive as bytes."""
    client, server = MemoryTransport.pair()
    await client.send(b"\x00\xff")
    await client.send(bytearray(b"ab"))  # type: ignore[arg-type]
    assert await server.receive() == b"\x00\xff"
    message = await server.receive()
    assert message == b"ab"
    assert type(message) is bytes


async def test_bytes_with_text_true_arrive_as_str() -> None:
    """UTF-8 bytes sent with text=True arrive as str; text=False keeps bytes."""
    client, server = MemoryTransport.pair()
    await client.send("é".encode(), text=True)
    await client.send(b"x", text=False)
    await client.send("s", text=False)
    assert await server.receive() == "é"
    assert await server.receive() == b"x"
    assert await server.receive() == "s"


async def test_send_rejects_other_types() -> None:
    """Sending something that is neither str nor bytes raises TypeError."""
    client, _ = MemoryTransport.pair()
    with pytest.raises(TypeError, match="int"):
        await client.send(42)  # type: ignore[arg-type]


async def test_messages_keep_their_order() -> None:
    """Messages arrive in the order they were sent."""
    client, server = MemoryTransport.pair()
    for i in range(10):
        await client.send(str(i))
    assert [await server.receive() for _ in range(10)] == [str(i) for i in range(10)]


async def test_receive_waits_for_a_message() -> None:
    """receive() blocks until the peer sends, then returns at once."""
    client, server = MemoryTransport.pair()
    start = now()
    async with anyio.create_task_group() as tg:

        async def send_later() -> None:
            await anyio.sleep(3)
            await server.send("late")

        tg.start_soon(send_later)
        assert await client.receive() == "late"
        assert now() - start == 3


# Latency


async def test_latency_delays_each_message() -> None:
    """With latency, a message arrives exactly that many seconds after it was sent."""
    client, server = MemoryTransport.pair(latency=0.5)
    start = now()
    await client.send("a")
    assert now() == start  # sending does not wait for delivery
    assert server.statistics().messages_buffered == 0
    assert await server.receive() == "a"
    assert now() - start == 0.5


async def test_latency_pipelines_messages() -> None:
    """Messages sent together all arrive one latency later, not one latency each."""
    client, server = MemoryTransport.pair(latency=2.0)
    start = now()
    for i in range(3):
        await client.send(str(i))
    assert [await server.receive() for _ in range(3)] == ["0", "1", "2"]
    assert now() - start == 2.0


async def test_set_latency_keeps_order() -> None:
    """Lowering the latency never lets a new message overtake one in flight."""
    client, server = MemoryTransport.pair(latency=4.0)
    start = now()
    await client.send("slow")
    client.set_latency(0.0)
    assert server.latency == 0.0
    await client.send("fast")
    assert await server.receive() == "slow"
    assert await server.receive() == "fast"
    assert now() - start == 4.0
    await client.send("now")
    assert await server.receive() == "now"
    assert now() - start == 4.0


async def test_set_latency_rejects_negative() -> None:
    """A negative or infinite latency is a ValueError."""
    client, _ = MemoryTransport.pair()
    with pytest.raises(ValueError, match="latency"):
        client.set_latency(-1)
    with pytest.raises(ValueError, match="latency"):
        client.set_latency(float("inf"))


async def test_state_and_statistics_follow_the_clock() -> None:
    """A message in flight shows up in the receiver's statistics once it is due."""
    client, server = MemoryTransport.pair(latency=1.0)
    await client.send("a")
    await anyio.sleep(0.75)
    assert server.statistics().messages_buffered == 0
    await anyio.sleep(0.25)
    assert server.statistics().messages_buffered == 1


# Ping


async def test_ping_without_latency_is_instant() -> None:
    """With no latency the pong comes back at once and the RTT is 0."""
    client, server = MemoryTransport.pair()
    assert await client.ping() == 0.0
    assert await server.ping(b"custom") == 0.0


async def test_ping_rtt_is_twice_the_latency() -> None:
    """A ping's round trip takes exactly two latencies, measured on the clock."""
    client, server = MemoryTransport.pair(latency=0.25)
    start = now()
    assert await client.ping() == 0.5
    assert now() - start == 0.5
    assert await server.ping() == 0.5
    assert client.statistics().last_rtt == 0.5


async def test_concurrent_pings_each_get_their_pong() -> None:
    """Several pings in flight at once each return their own RTT."""
    client, _ = MemoryTransport.pair(latency=1.0)
    rtts: list[float] = []

    async def ping() -> None:
        rtts.append(await client.ping())

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(ping)
    assert rtts == [2.0, 2.0, 2.0]


async def test_ping_with_a_payload_in_flight_is_invalid() -> None:
    """A second ping with the payload of one still waiting raises InvalidState."""
    client, _ = MemoryTransport.pair(latency=1.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.ping, b"same")
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(InvalidState):
            await client.ping(b"same")


async def test_ping_payload_longer_than_125_bytes_is_rejected() -> None:
    """Ping payloads follow the control frame limit of RFC 6455 5.5."""
    client, _ = MemoryTransport.pair()
    with pytest.raises(ValueError, match="125"):
        await client.ping(b"x" * 126)


# Backpressure


async def test_send_waits_while_peer_buffer_is_full_and_resumes_after_receive() -> None:
    """send() blocks when the peer holds max_queue messages and resumes after a receive."""
    client, server = MemoryTransport.pair(max_queue=2)
    await client.send("1")
    await client.send("2")
    with anyio.move_on_after(10) as scope:
        await client.send("3")
    assert scope.cancelled_caught
    assert server.statistics().messages_buffered == 2

    sent = anyio.Event()
    sent_at: list[float] = []

    async def sender() -> None:
        await client.send("3")
        sent_at.append(now())
        sent.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(sender)
        with anyio.move_on_after(5):
            await sent.wait()
        assert not sent.is_set()  # still nothing freed room
        received_at = now()
        assert await server.receive() == "1"
    assert sent_at == [received_at]
    assert [await server.receive() for _ in range(2)] == ["2", "3"]


async def test_cancelled_send_sends_nothing() -> None:
    """A send cancelled while waiting for room is not delivered later."""
    client, server = MemoryTransport.pair(max_queue=1)
    await client.send("kept")
    with anyio.move_on_after(1):
        await client.send("cancelled")
    assert await server.receive() == "kept"
    await client.send("next")
    assert await server.receive() == "next"
    assert server.statistics().messages_received == 2


async def test_messages_in_flight_count_against_the_buffer() -> None:
    """With latency, messages still on the wire take room in the peer's buffer."""
    client, server = MemoryTransport.pair(max_queue=1, latency=1.0)
    start = now()
    await client.send("a")
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.send, "b")
        assert await server.receive() == "a"  # due at 1; frees room for "b"
        assert now() - start == 1.0
    assert await server.receive() == "b"  # sent at 1, due at 2
    assert now() - start == 2.0


async def test_read_pauses_count_full_buffers() -> None:
    """Filling the buffer to max_queue is counted as a read pause."""
    client, server = MemoryTransport.pair(max_queue=2)
    await client.send("1")
    assert server.statistics().read_pauses == 0
    await client.send("2")
    assert server.statistics().read_pauses == 1


# Cancellation


async def test_cancelled_receive_loses_nothing() -> None:
    """Cancelling receive(), even as the message arrives, never loses it."""
    client, server = MemoryTransport.pair(latency=1.0)
    await client.send("a")
    received: list[str | bytes] = []
    with anyio.move_on_after(1.0):  # the deadline is the message's arrival time
        received.append(await server.receive())
    with anyio.move_on_after(0.5):
        received.append(await server.receive())
    assert received == ["a"]
    with anyio.move_on_after(1.0) as scope:
        await server.receive()
    assert scope.cancelled_caught
    await client.send("b")
    assert await server.receive() == "b"


async def test_cancelled_ping_can_be_repeated() -> None:
    """A cancelled ping forgets its payload, so the same payload can be sent again."""
    client, _ = MemoryTransport.pair(latency=1.0)
    with anyio.move_on_after(1.0):
        await client.ping(b"p")
    # The first ping's pong, due at 2, answers the second one (RFC 6455 5.5.3).
    assert await client.ping(b"p") == 1.0
    # The second ping's own pong, due at 3, is stale by then and answers nothing.
    assert await client.ping(b"q") == 2.0


# Closing


async def test_client_close_reaches_server_with_code_and_reason() -> None:
    """aclose(1000) makes the peer's receive raise ConnectionClosedOK with code and reason."""
    client, server = MemoryTransport.pair()
    await client.aclose(1000, "bye")
    assert client.state is server.state is TransportState.CLOSED
    assert (client.close_code, client.close_reason) == (1000, "bye")
    assert (server.close_code, server.close_reason) == (1000, "bye")
    with pytest.raises(ConnectionClosedOK) as info:
        await server.receive()
    assert (info.value.code, info.value.reason, info.value.sent_code) == (1000, "bye", 1000)
    with pytest.raises(ConnectionClosedOK):
        await client.receive()


async def test_server_close_going_away_is_ok() -> None:
    """A close with 1001 from the server side is a normal close for the client."""
    client, server = MemoryTransport.pair()
    await server.aclose(1001, "restart")
    with pytest.raises(ConnectionClosedOK) as info:
        await client.receive()
    assert (info.value.code, info.value.reason) == (1001, "restart")
    assert client.close_code == 1001


@pytest.mark.parametrize("code", [1011, 4000])
async def test_close_with_error_code_is_an_error_on_both_sides(code: int) -> None:
    """Any code other than 1000/1001 raises ConnectionClosedError on both ends."""
    client, server = MemoryTransport.pair()
    await server.aclose(code, "oops")
    for end in (client, server):
        with pytest.raises(ConnectionClosedError) as info:
            await end.receive()
        assert not isinstance(info.value, ConnectionClosedOK)
        assert (info.value.code, info.value.reason) == (code, "oops")
        assert end.close_code == code


async def test_pending_messages_are_received_before_the_close() -> None:
    """Messages sent before aclose() are still received, then the close is raised."""
    client, server = MemoryTransport.pair(latency=0.5)
    await client.send("1")
    await client.send("2")
    await client.aclose()
    assert [await server.receive() for _ in range(2)] == ["1", "2"]
    with pytest.raises(ConnectionClosedOK):
        await server.receive()


async def test_closing_handshake_takes_one_round_trip() -> None:
    """State goes OPEN, CLOSING, CLOSED; the peer closes after one latency, we after two."""
    client, server = MemoryTransport.pair(latency=0.5)
    start = now()
    closed_at: list[float] = []
    async with anyio.create_task_group() as tg:

        async def close() -> None:
            await client.aclose()
            closed_at.append(now() - start)

        tg.start_soon(close)
        await anyio.wait_all_tasks_blocked()
        assert client.state is TransportState.CLOSING
        assert server.state is TransportState.OPEN
        with pytest.raises(ConnectionClosedOK):
            await server.receive()
        assert now() - start == 0.5
        assert server.state is TransportState.CLOSED
        assert client.state is TransportState.CLOSING
    assert closed_at == [1.0]
    assert client.state is TransportState.CLOSED


async def test_peer_can_still_send_while_the_close_is_in_flight() -> None:
    """A message the peer sent before our close reached it is still received."""
    client, server = MemoryTransport.pair(latency=1.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.aclose)
        await anyio.sleep(0.5)
        await server.send("crossing")  # the server has not seen the close yet
    assert await client.receive() == "crossing"
    with pytest.raises(ConnectionClosedOK):
        await client.receive()


async def test_simultaneous_close_completes_on_both_sides() -> None:
    """When both ends close at once, each gets the other's code."""
    client, server = MemoryTransport.pair(latency=1.0)
    start = now()
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.aclose, 1000, "client")
        tg.start_soon(server.aclose, 1001, "server")
    assert now() - start == 1.0
    assert (client.close_code, client.close_reason) == (1001, "server")
    assert (server.close_code, server.close_reason) == (1000, "client")


async def test_aclose_is_idempotent() -> None:
    """Closing twice, or closing an end the peer closed, does nothing more."""
    client, server = MemoryTransport.pair()
    await client.aclose(4001)
    await client.aclose(1000)
    await server.aclose()
    assert client.close_code == server.close_code == 4001


async def test_aclose_finishes_when_its_caller_is_cancelled() -> None:
    """A cancelled aclose() still completes the handshake (it is shielded)."""
    client, server = MemoryTransport.pair(latency=1.0)
    with anyio.move_on_after(0.5):
        await client.aclose()
    assert client.state is TransportState.CLOSED
    assert server.close_code == 1000


async def test_aclose_rejects_invalid_codes() -> None:
    """Codes that cannot go in a close frame, and over-long reasons, are ValueErrors."""
    client, _ = MemoryTransport.pair()
    for code in (1005, 1006, 1015, 999, 5000):
        with pytest.raises(ValueError, match="close code"):
            await client.aclose(code)
    with pytest.raises(ValueError, match="123"):
        await client.aclose(1000, "x" * 124)
    assert client.state is TransportState.OPEN


async def test_context_manager_closes_normally() -> None:
    """Leaving `async with` closes with 1000."""
    client, server = MemoryTransport.pair()
    async with client as transport:
        assert transport is client
        await transport.send("x")
    assert client.state is TransportState.CLOSED
    assert await server.receive() == "x"
    with pytest.raises(ConnectionClosedOK):
        await server.receive()


async def test_send_and_ping_after_close_raise() -> None:
    """Sending or pinging on a closed end raises the same ConnectionClosed subclass."""
    client, server = MemoryTransport.pair()
    await client.aclose()
    for end in (client, server):
        with pytest.raises(ConnectionClosedOK):
            await end.send("x")
        with pytest.raises(ConnectionClosedOK):
            await end.ping()


async def test_send_while_closing_raises() -> None:
    """Once aclose() started, send() raises at once, like the real transport."""
    client, _ = MemoryTransport.pair(latency=1.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.aclose)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(ConnectionClosed) as info:
            await client.send("x")
        # Mirrors WebSocketTransport: no close frame received yet, so code 1006.
        assert (info.value.code, info.value.sent_code) == (1006, 1000)


async def test_async_iteration_ends_on_normal_close() -> None:
    """`async for` yields every message and stops quietly on a normal close."""
    client, server = MemoryTransport.pair()
    await client.send("a")
    await client.send("b")
    await client.aclose()
    assert [message async for message in server] == ["a", "b"]


async def test_async_iteration_raises_on_error_close() -> None:
    """`async for` raises ConnectionClosedError on an abnormal close."""
    client, server = MemoryTransport.pair()
    await client.send("a")
    await client.aclose(1011)
    received: list[str | bytes] = []

    async def consume() -> None:
        async for message in server:
            received.append(message)

    with pytest.raises(ConnectionClosedError):
        await consume()
    assert received == ["a"]


# Failing the connection


async def test_message_too_big_fails_with_1009() -> None:
    """A message over the receiver's max_size fails the link; both ends raise MessageTooBig."""
    client, server = MemoryTransport.pair(max_size=10)
    await client.send("ok")
    await client.send(b"x" * 11)
    assert await server.receive() == "ok"  # what came before is kept
    with pytest.raises(MessageTooBig) as info:
        await server.receive()
    # Like a real client that fails the link: the reply is ignored, so 1006 (sent 1009).
    assert (info.value.code, info.value.sent_code) == (1006, 1009)
    assert "message too big" in str(info.value)
    with pytest.raises(MessageTooBig) as info:
        await client.receive()
    assert info.value.code == 1009
    assert client.close_code == 1009
    assert server.close_code == 1006
    with pytest.raises(MessageTooBig):
        await client.send("more")


async def test_max_size_counts_utf8_bytes_and_allows_the_limit() -> None:
    """max_size compares encoded bytes: exactly max_size passes, one more fails."""
    client, server = MemoryTransport.pair(max_size=4)
    await client.send("éé")  # 4 bytes
    assert await server.receive() == "éé"
    await server.send("ééé")  # 6 bytes
    with pytest.raises(MessageTooBig):
        await client.receive()


async def test_message_too_big_with_latency_closes_after_round_trip() -> None:
    """The receiver fails on arrival; the sender closes one latency later, the receiver two."""
    client, server = MemoryTransport.pair(max_size=1, latency=1.0)
    start = now()
    await client.send(b"xx")
    with pytest.raises(MessageTooBig):
        await client.receive()
    assert now() - start == 2.0  # the close frame took one latency
    assert server.state is TransportState.CLOSING  # waits for the client to close
    with pytest.raises(MessageTooBig):
        await server.receive()
    assert now() - start == 3.0


async def test_invalid_utf8_text_fails_with_1007() -> None:
    """Invalid UTF-8 sent with text=True fails the link with 1007: an error on both ends."""
    client, server = MemoryTransport.pair()
    await client.send(b"\xff\xfe", text=True)
    with pytest.raises(ConnectionClosedError) as info:
        await server.receive()
    assert info.value.sent_code == 1007
    assert isinstance(info.value.__cause__, UnicodeDecodeError)
    with pytest.raises(ConnectionClosedError) as info:
        await client.receive()
    assert (info.value.code, info.value.reason) == (1007, "invalid UTF-8 in a text frame")
    assert client.close_code == 1007


# Faults: break_link


async def test_break_link_closes_both_ends_with_1006() -> None:
    """break_link() closes both ends abnormally; receive, send and ping raise errors."""
    client, server = MemoryTransport.pair()
    server.break_link()
    for end in (client, server):
        assert end.state is TransportState.CLOSED
        assert (end.close_code, end.close_reason) == (1006, "")
        with pytest.raises(ConnectionClosedError) as info:
            await end.receive()
        assert info.value.code == 1006
        with pytest.raises(ConnectionClosedError):
            await end.send("x")
        with pytest.raises(ConnectionClosedError):
            await end.ping()
    await client.aclose()  # nothing left to do, no error


async def test_abort_drops_both_ends_at_once_with_1006() -> None:
    """abort() is the Transport-level break_link: no waiting, 1006 on both ends."""
    client, server = MemoryTransport.pair(latency=5, close_timeout=60)
    started = anyio.current_time()
    await client.abort()
    assert anyio.current_time() == started
    for end in (client, server):
        assert (end.state, end.close_code) == (TransportState.CLOSED, 1006)
    await client.abort()  # idempotent


async def test_break_link_keeps_received_messages_and_loses_those_in_flight() -> None:
    """Messages already received stay readable; messages still on the wire are lost."""
    client, server = MemoryTransport.pair(latency=1.0)
    await client.send("arrived")
    await anyio.sleep(1.0)
    await client.send("in flight")
    client.break_link()
    assert await server.receive() == "arrived"
    with pytest.raises(ConnectionClosedError):
        await server.receive()


async def test_break_link_fails_waiting_operations() -> None:
    """A waiting ping, receive and send all fail the moment the link breaks."""
    client, server = MemoryTransport.pair(max_queue=1, latency=10.0)
    await client.send("fills the buffer")
    start = now()
    failures: list[tuple[str, float]] = []

    async def expect_failure(name: str, operation: Any) -> None:
        with pytest.raises(ConnectionClosedError):
            await operation()
        failures.append((name, now() - start))

    async with anyio.create_task_group() as tg:
        tg.start_soon(expect_failure, "ping", client.ping)
        tg.start_soon(expect_failure, "receive", client.receive)
        tg.start_soon(expect_failure, "send", lambda: client.send("blocked"))
        await anyio.sleep(3)
        server.break_link()
    assert sorted(failures) == [("ping", 3), ("receive", 3), ("send", 3)]


# Faults: blackhole


async def test_blackhole_makes_ping_never_return() -> None:
    """On a blackholed link a ping gets no pong; only a deadline ends the wait."""
    client, server = MemoryTransport.pair(latency=0.1)
    client.blackhole()
    assert server.blackholed
    start = now()
    with pytest.raises(TimeoutError):
        with anyio.fail_after(5):
            await client.ping()
    assert now() - start == 5
    assert client.state is server.state is TransportState.OPEN


async def test_blackhole_drops_messages_both_ways_while_sends_succeed() -> None:
    """Sends on a blackholed link succeed, but nothing arrives in either direction."""
    client, server = MemoryTransport.pair(max_queue=1)
    server.blackhole()
    for _ in range(5):  # more than max_queue: dropped messages take no room
        await client.send("lost")
        await server.send("lost")
    for end in (client, server):
        with anyio.move_on_after(60) as scope:
            await end.receive()
        assert scope.cancelled_caught
    assert client.statistics().messages_sent == 5
    assert server.statistics().messages_received == 0


async def test_blackhole_drops_frames_already_in_flight() -> None:
    """A message on the wire when the link goes dark does not arrive."""
    client, server = MemoryTransport.pair(latency=1.0)
    await client.send("on the wire")
    client.blackhole()
    await anyio.sleep(2)
    client.blackhole(False)
    with anyio.move_on_after(10) as scope:
        await server.receive()
    assert scope.cancelled_caught


async def test_restoring_a_blackholed_link_restores_flow() -> None:
    """After blackhole(False), pings return and new messages flow again."""
    client, server = MemoryTransport.pair(latency=0.5)
    client.blackhole()
    await client.send("lost")
    with anyio.move_on_after(3):
        await client.ping()
    client.blackhole(False)
    assert not server.blackholed
    assert await client.ping() == 1.0
    await client.send("found")
    assert await server.receive() == "found"
    await server.send("back")
    assert await client.receive() == "back"


async def test_blackhole_frees_a_blocked_sender() -> None:
    """A send waiting for room proceeds (into the void) when the link goes dark."""
    client, server = MemoryTransport.pair(max_queue=1)
    await client.send("a")
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.send, "b")
        await anyio.wait_all_tasks_blocked()
        server.blackhole()
    assert server.statistics().messages_buffered == 1


async def test_aclose_on_blackholed_link_gives_up_after_close_timeout() -> None:
    """With no reply to the close frame, aclose() drops the link after close_timeout."""
    client, server = MemoryTransport.pair(close_timeout=3.0)
    client.blackhole()
    start = now()
    await client.aclose()
    assert now() - start == 3.0
    assert client.close_code == 1006
    with pytest.raises(ConnectionClosedError) as info:
        await client.receive()
    assert info.value.sent_code == 1000
    assert server.state is TransportState.OPEN  # a zombie: it never heard a thing


# Introspection


async def test_statistics_count_traffic() -> None:
    """statistics() counts messages, payload bytes, pings, pongs and the last RTT."""
    client, server = MemoryTransport.pair(latency=0.5)
    await client.send("héllo")  # 6 bytes
    await client.send(b"abc")
    await server.send("x")
    assert await client.ping() == 1.0
    stats = client.statistics()
    assert stats.state is TransportState.OPEN
    assert (stats.messages_sent, stats.bytes_sent) == (2, 9)
    assert (stats.messages_received, stats.bytes_received) == (1, 1)
    assert (stats.pings_sent, stats.pongs_received, stats.last_rtt) == (1, 1, 1.0)
    assert stats.messages_buffered == 1
    stats = server.statistics()
    assert (stats.messages_received, stats.bytes_received, stats.messages_buffered) == (2, 9, 2)
    assert (stats.pings_sent, stats.pongs_received, stats.last_rtt) == (0, 0, None)
    await server.receive()
    assert server.statistics().messages_buffered == 1
    await client.aclose()
    assert client.statistics().state is TransportState.CLOSED


async def test_repr_shows_side_state_and_code() -> None:
    """repr() names the side and the state, with the close code once closed."""
    client, server = MemoryTransport.pair()
    assert repr(client) == "<MemoryTransport client OPEN>"
    await server.aclose(4000)
    assert repr(server) == "<MemoryTransport server CLOSED code=4000>"


async def test_pair_validates_its_arguments() -> None:
    """pair() rejects a zero queue, a negative max_size, latency or close_timeout."""
    with pytest.raises(ValueError, match="max_queue"):
        MemoryTransport.pair(max_queue=0)
    with pytest.raises(ValueError, match="max_size"):
        MemoryTransport.pair(max_size=-1)
    with pytest.raises(ValueError, match="latency"):
        MemoryTransport.pair(latency=-0.1)
    with pytest.raises(ValueError, match="close_timeout"):
        MemoryTransport.pair(close_timeout=-1)
