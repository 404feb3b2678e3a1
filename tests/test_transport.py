"""WebSocketTransport against real servers on 127.0.0.1, on asyncio and trio."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import tempfile
import threading

import anyio
import pytest
import trustme
from websockets.asyncio.server import ServerConnection

from wsclient import (
    ConnectError,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidURL,
    MessageTooBig,
    TransportState,
    WebSocketTransport,
    connect_transport,
)

from .servers import closed_port, header, running_server

pytestmark = pytest.mark.anyio


async def test_handshake_sends_headers_and_negotiates_subprotocol() -> None:
    """The handshake carries extra headers and user agent, and selects a subprotocol."""
    async with running_server(subprotocols=["chat.v2"]) as server:
        transport = await connect_transport(
            server.url, headers={"X-Trace": "abc"}, subprotocols=["chat.v1", "chat.v2"]
        )
        async with transport:
            assert transport.state is TransportState.OPEN
            assert transport.subprotocol == "chat.v2"
            request = server.requests[0]
            assert header(request, "X-Trace") == "abc"
            assert (header(request, "User-Agent") or "").startswith("wsclient/")
        assert transport.state is TransportState.CLOSED


async def test_text_and_binary_round_trips() -> None:
    """str comes back as str, bytes as bytes, and UTF-8 bytes with text=True as str."""
    async with running_server() as server, await connect_transport(server.url) as transport:
        await transport.send("héllo")
        assert await transport.receive() == "héllo"
        await transport.send(b"\x00\xff\x10")
        assert await transport.receive() == b"\x00\xff\x10"
        await transport.send(b'{"a": 1}', text=True)
        assert await transport.receive() == '{"a": 1}'
        stats = transport.statistics()
        assert (stats.messages_sent, stats.messages_received) == (3, 3)
        assert stats.bytes_sent > 0
        assert stats.bytes_received > 0


@pytest.mark.parametrize("data", [3, None, ["list"]])
async def test_send_refuses_what_is_not_str_or_bytes(data: object) -> None:
    """send() raises TypeError for other types instead of sending garbage; the link lives on."""
    async with running_server() as server, await connect_transport(server.url) as transport:
        with pytest.raises(TypeError, match="str or bytes"):
            await transport.send(data)  # type: ignore[arg-type]
        await transport.send(memoryview(b"still fine"))
        assert await transport.receive() == b"still fine"


async def test_messages_keep_their_order() -> None:
    """Many pipelined messages come back complete and in order."""
    async with running_server() as server, await connect_transport(server.url) as transport:
        received: list[str | bytes] = []

        async def reader() -> None:
            for _ in range(2000):
                received.append(await transport.receive())

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            for i in range(2000):
                await transport.send(str(i))
        assert received == [str(i) for i in range(2000)]


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_message_of_exactly_max_size_round_trips(compression: str | None) -> None:
    """A message of exactly max_size bytes is accepted, with or without compression.

    With compression the payload must be compressible: websockets also applies
    max_size to the compressed frame, which random bytes make larger.
    """
    size = 256 * 1024
    async with (
        running_server(max_size=None, compression=compression) as server,
        await connect_transport(
            server.url,
            max_size=size,
            compression="deflate" if compression else None,
        ) as transport,
    ):
        payload = (b"wsclient " * size)[:size] if compression else os.urandom(size)
        await transport.send(payload)
        assert await transport.receive() == payload


async def test_inbound_message_over_max_size_raises_message_too_big() -> None:
    """A message one byte over max_size fails the connection with 1009 and MessageTooBig."""
    async with (
        running_server(max_size=None) as server,
        await connect_transport(server.url, max_size=1000) as transport,
    ):
        await transport.send(b"x" * 1000)
        assert await transport.receive() == b"x" * 1000
        await transport.send(b"x" * 1001)
        with pytest.raises(MessageTooBig) as info:
            await transport.receive()
        assert info.value.sent_code == 1009
        assert "max_size" in str(info.value)
        assert "1000 bytes" in str(info.value)
        assert transport.state is TransportState.CLOSED


async def test_outbound_message_over_server_limit_raises_message_too_big() -> None:
    """When the server closes with 1009 because our message was too big, we say so."""
    async with (
        running_server(max_size=100) as server,
        await connect_transport(server.url) as transport,
    ):
        await transport.send("y" * 101)
        with pytest.raises(MessageTooBig) as info:
            await transport.receive()
        assert info.value.code == 1009


async def test_fragmented_message_is_reassembled() -> None:
    """A message sent in fragments is received as one message."""

    async def fragments(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(["frag", "ment", "ed"])
        await ws.send([b"\x01", b"\x02"])
        await ws.wait_closed()

    async with running_server(fragments) as server, await connect_transport(server.url) as t:
        await t.send("go")
        assert await t.receive() == "fragmented"
        assert await t.receive() == b"\x01\x02"


async def test_ping_measures_round_trip_time() -> None:
    """ping() returns a positive round-trip time and counts pings and pongs."""
    async with running_server() as server, await connect_transport(server.url) as transport:
        rtts = [await transport.ping() for _ in range(3)]
        assert all(0 < rtt < 5 for rtt in rtts)
        stats = transport.statistics()
        assert (stats.pings_sent, stats.pongs_received) == (3, 3)
        assert stats.last_rtt == rtts[-1]


async def test_ping_while_another_task_receives() -> None:
    """A ping completes while another task is blocked in receive()."""
    async with running_server() as server, await connect_transport(server.url) as transport:
        async with anyio.create_task_group() as tg:
            got: list[str | bytes] = []

            async def reader() -> None:
                got.append(await transport.receive())

            tg.start_soon(reader)
            with anyio.fail_after(5):
                assert await transport.ping() > 0
            await transport.send("done")
        assert got == ["done"]


async def test_client_close_sends_code_and_reason() -> None:
    """aclose(code, reason) reaches the server, and our own close gives ConnectionClosedOK."""
    seen: list[tuple[int | None, str | None]] = []

    async def record(ws: ServerConnection) -> None:
        await ws.wait_closed()
        seen.append((ws.close_code, ws.close_reason))

    async with running_server(record) as server:
        transport = await connect_transport(server.url)
        await transport.aclose(1001, "going away")
        assert transport.state is TransportState.CLOSED
        assert transport.close_code == 1001
        with pytest.raises(ConnectionClosedOK):
            await transport.send("late")
        with pytest.raises(ConnectionClosedOK):
            await transport.receive()
        await transport.aclose()  # idempotent
    assert seen == [(1001, "going away")]


@pytest.mark.parametrize(
    ("code", "exception"), [(1000, ConnectionClosedOK), (4001, ConnectionClosedError)]
)
async def test_server_close_surfaces_code_and_reason(code: int, exception: type[Exception]) -> None:
    """A server-initiated close delivers buffered messages first, then raises with the code."""

    async def close_after_two(ws: ServerConnection) -> None:
        await ws.send("one")
        await ws.send("two")
        await ws.close(code, "bye now")

    async with running_server(close_after_two) as server:
        transport = await connect_transport(server.url)
        assert [await transport.receive(), await transport.receive()] == ["one", "two"]
        with pytest.raises(exception) as info:
            await transport.receive()
        assert (info.value.code, info.value.reason) == (code, "bye now")  # type: ignore[attr-defined]
        assert transport.state is TransportState.CLOSED
        assert (transport.close_code, transport.close_reason) == (code, "bye now")
        await transport.aclose()


async def test_async_iteration_ends_at_normal_close() -> None:
    """async for yields every message and stops at a normal close."""

    async def three(ws: ServerConnection) -> None:
        for i in range(3):
            await ws.send(str(i))
        await ws.close()

    async with running_server(three) as server, await connect_transport(server.url) as t:
        assert [message async for message in t] == ["0", "1", "2"]


async def test_abrupt_server_death_raises_connection_closed_error() -> None:
    """A TCP connection dropped without a close frame gives ConnectionClosedError 1006."""
    async with running_server() as server, await connect_transport(server.url) as transport:
        await transport.send("x")
        assert await transport.receive() == "x"
        await server.abort_all()
        with pytest.raises(ConnectionClosedError) as info:
            await transport.receive()
        assert info.value.code == 1006
        with pytest.raises(ConnectionClosedError):
            await transport.send("after death")
        with pytest.raises(ConnectionClosedError):
            await transport.ping()


async def test_invalid_utf8_from_server_fails_with_1007() -> None:
    """A text frame with invalid UTF-8 fails the connection with close code 1007."""

    async def bad_text(ws: ServerConnection) -> None:
        await ws.send("fine")
        await ws.send(b"\xff\xfe", text=True)
        await ws.wait_closed()

    async with running_server(bad_text) as server, await connect_transport(server.url) as t:
        assert await t.receive() == "fine"
        with pytest.raises(ConnectionClosedError) as info:
            await t.receive()
        assert info.value.sent_code == 1007
        assert isinstance(info.value.__cause__, UnicodeDecodeError)


async def test_connect_to_closed_port_gives_connect_error() -> None:
    """Connecting where nothing listens raises ConnectError saying it was refused."""
    with pytest.raises(ConnectError, match="refused"):
        await connect_transport(f"ws://127.0.0.1:{closed_port()}/")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.test/", "scheme"),
        ("ws:///path-only", "hostname"),
        ("ws://host.test:99999/", "Port out of range"),
        ("ws://user@host.test/", "password"),
    ],
)
async def test_bad_url_gives_invalid_url(url: str, reason: str) -> None:
    """A malformed URL raises InvalidURL naming the problem, before any I/O."""
    with pytest.raises(InvalidURL, match=reason):
        await connect_transport(url)


async def test_invalid_url_message_hides_password_and_query() -> None:
    """InvalidURL never repeats a password or query token from the URL."""
    with pytest.raises(InvalidURL) as info:
        await connect_transport("wss://alice:s3cret@host.test/#frag?token=t0ken")
    assert "s3cret" not in str(info.value)
    with pytest.raises(InvalidURL) as info:
        await connect_transport("http://alice:s3cret@host.test/?token=t0ken")
    assert "s3cret" not in str(info.value)
    assert "t0ken" not in str(info.value)


async def test_handshake_rejected_with_403_gives_status() -> None:
    """An HTTP 403 answer to the handshake raises ConnectError with status 403."""
    async with running_server(reject=(403, {})) as server:
        with pytest.raises(ConnectError, match="403") as info:
            await connect_transport(server.url)
        assert info.value.status == 403
        assert info.value.retry_after is None


async def test_handshake_rejected_with_429_reports_retry_after() -> None:
    """A 429 with Retry-After exposes the delay the server asked for."""
    async with running_server(reject=(429, {"Retry-After": "7"})) as server:
        with pytest.raises(ConnectError) as info:
            await connect_transport(server.url)
        assert (info.value.status, info.value.retry_after) == (429, 7.0)


async def test_credentials_in_url_are_sent_but_never_shown() -> None:
    """user:password in the URL becomes Basic auth and stays out of repr and errors."""
    async with running_server(reject=(401, {})) as server:
        url = server.url.replace("ws://", "ws://alice:s3cret@") + "?token=t0ken"
        with pytest.raises(ConnectError) as info:
            await connect_transport(url)
        assert "s3cret" not in str(info.value)
        assert "t0ken" not in str(info.value)
        assert (header(server.requests[0], "Authorization") or "").startswith("Basic ")
    async with running_server() as server:
        url = server.url.replace("ws://", "ws://alice:s3cret@") + "?token=t0ken"
        async with await connect_transport(url) as transport:
            assert "s3cret" not in repr(transport)
            assert "t0ken" not in repr(transport)
            assert "t0ken" not in transport.url


@pytest.fixture(scope="module")
def tls_ca() -> trustme.CA:
    return trustme.CA()


def _server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


async def test_tls_verified_against_its_ca(tls_ca: trustme.CA) -> None:
    """wss:// to a server whose self-signed CA we trust works end to end."""
    client_context = ssl.create_default_context()
    tls_ca.configure_trust(client_context)
    async with running_server(ssl_context=_server_context(tls_ca)) as server:
        assert server.url.startswith("wss://")
        async with await connect_transport(server.url, ssl=client_context) as transport:
            await transport.send("secure")
            assert await transport.receive() == "secure"


async def test_tls_rejected_without_its_ca(tls_ca: trustme.CA) -> None:
    """With default verification a self-signed certificate is refused with ConnectError."""
    async with running_server(ssl_context=_server_context(tls_ca)) as server:
        with pytest.raises(ConnectError, match="certificate verif"):
            await connect_transport(server.url)


async def test_ssl_context_with_plain_url_is_refused() -> None:
    """Passing ssl= with a ws:// URL is a mistake reported as InvalidURL."""
    with pytest.raises(InvalidURL, match="wss://"):
        await connect_transport("ws://127.0.0.1:1/", ssl=ssl.create_default_context())


async def test_unix_socket() -> None:
    """A server on a Unix socket is reached with unix_socket=."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "ws.sock")
        async with running_server(unix_path=path) as server:
            transport = await connect_transport(server.url, unix_socket=path)
            async with transport:
                await transport.send("over unix")
                assert await transport.receive() == "over unix"


async def test_cancelled_receive_loses_nothing() -> None:
    """Receives cancelled at random points never lose or reorder a message."""
    count = 3000

    async def burst(ws: ServerConnection) -> None:
        await ws.recv()
        for i in range(count):
            await ws.send(str(i))
        await ws.wait_closed()

    async with running_server(burst) as server, await connect_transport(server.url) as t:
        await t.send("start")
        received: list[str | bytes] = []
        attempts = cancelled = 0
        with anyio.fail_after(30):
            while len(received) < count:
                attempts += 1
                # A zero-length scope cancels receive() whenever it would block.
                with anyio.move_on_after(0 if attempts % 3 else 0.001) as scope:
                    received.append(await t.receive())
                cancelled += scope.cancelled_caught
        assert received == [str(i) for i in range(count)]
        assert cancelled > 0


async def test_pending_receive_cancelled_then_message_arrives() -> None:
    """A receive() cancelled while waiting leaves the next message for the next receive()."""
    async with running_server() as server, await connect_transport(server.url) as t:
        with anyio.move_on_after(0.01) as scope:
            await t.receive()
        assert scope.cancelled_caught
        await t.send("still here")
        assert await t.receive() == "still here"


async def wait_for_read_pause(transport: WebSocketTransport) -> None:
    """Wait, without consuming anything, until the inbound buffer filled and reading paused."""
    assert transport._link is not None
    with anyio.fail_after(10):
        await transport._link.wait_until(lambda: transport.statistics().read_pauses > 0)


async def test_slow_reader_pauses_the_socket_and_loses_nothing() -> None:
    """With a full inbound buffer reading pauses, and every message is still delivered."""
    filler = "z" * 1000

    async def flood(ws: ServerConnection) -> None:
        await ws.recv()
        for i in range(500):
            await ws.send(f"{i} {filler}")
        await ws.send("end")
        await ws.wait_closed()

    async with (
        running_server(flood, compression=None) as server,
        await connect_transport(server.url, max_queue=8, compression=None) as transport,
    ):
        await transport.send("go")
        await wait_for_read_pause(transport)
        assert 8 <= transport.statistics().messages_buffered < 500
        received = []
        while (message := await transport.receive()) != "end":
            received.append(message)
        assert received == [f"{i} {filler}" for i in range(500)]


async def test_ping_answered_while_the_inbound_buffer_is_full() -> None:
    """A ping completes even when nobody consumes and the buffer is full."""

    async def flood(ws: ServerConnection) -> None:
        await ws.recv()
        for i in range(300):
            await ws.send(str(i) * 200)
        await ws.wait_closed()

    async with (
        running_server(flood, compression=None) as server,
        await connect_transport(server.url, max_queue=4, compression=None) as transport,
    ):
        await transport.send("go")
        await wait_for_read_pause(transport)
        with anyio.fail_after(10):
            assert await transport.ping() > 0
        for i in range(300):
            assert await transport.receive() == str(i) * 200


async def test_compression_negotiated_by_default_and_can_be_disabled() -> None:
    """permessage-deflate is on by default, off with compression=None."""
    async with running_server() as server:
        async with await connect_transport(server.url) as transport:
            assert [e.name for e in transport._protocol.extensions] == ["permessage-deflate"]
            await transport.send("a" * 100_000)
            assert await transport.receive() == "a" * 100_000
            assert transport.statistics().bytes_sent < 10_000
        async with await connect_transport(server.url, compression=None) as transport:
            assert transport._protocol.extensions == []


async def test_no_task_or_socket_left_after_200_cycles() -> None:
    """200 open/send/close cycles leave no task, thread or file descriptor behind."""
    async with running_server() as server:
        # Warm up lazily created resources (thread pools, resolver) first.
        async with await connect_transport(server.url) as transport:
            await transport.send("warm")
            await transport.receive()
        fds_before = len(os.listdir("/proc/self/fd"))
        tasks_before = len(anyio.get_running_tasks())
        threads_before = threading.active_count()
        for i in range(200):
            transport = await connect_transport(server.url)
            await transport.send(str(i))
            assert await transport.receive() == str(i)
            await transport.aclose()
            assert transport.state is TransportState.CLOSED
        assert len(anyio.get_running_tasks()) == tasks_before
        assert threading.active_count() == threads_before
        # The server runs in this process too and may still be closing its
        # side of the last connection; a client leak would show 200 more.
        assert len(os.listdir("/proc/self/fd")) <= fds_before + 2


async def test_transport_used_without_connecting_is_invalid() -> None:
    """A transport that never connected says so instead of failing obscurely."""
    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    from wsclient import InvalidState

    transport = WebSocketTransport(
        ClientProtocol(parse_uri("ws://h.test/")),
        display_url="ws://h.test/",
        max_queue=4,
        close_timeout=1,
    )
    with pytest.raises(InvalidState):
        await transport.send("x")
    with pytest.raises(InvalidState):
        await transport.receive()


@pytest.mark.parametrize("anyio_backend", [("asyncio", {"use_uvloop": True})])
async def test_works_on_uvloop(anyio_backend: object) -> None:
    """On uvloop (whose transports do not subclass asyncio's) the fast path works."""
    async with running_server() as server, await connect_transport(server.url) as transport:
        await transport.send("on uvloop")
        assert await transport.receive() == "on uvloop"
        assert await transport.ping() > 0


# Regressions found in review; each test pins one fix.


async def test_empty_close_frame_is_a_normal_close() -> None:
    """A close frame without a status (1005) ends iteration normally."""

    async def empty_close(ws: ServerConnection) -> None:
        await ws.send("one")
        ws.protocol.send_close()  # no code: an empty close frame
        ws.send_data()
        await ws.wait_closed()

    async with running_server(empty_close) as server, await connect_transport(server.url) as t:
        assert [message async for message in t] == ["one"]
        assert t.close_code == 1005


async def test_aclose_with_a_full_inbound_buffer_completes_the_handshake() -> None:
    """Closing while unread messages fill the buffer still gets the server's close frame."""
    seen: list[int | None] = []

    async def flood(ws: ServerConnection) -> None:
        try:
            for i in range(5000):  # more than the socket buffers hold
                await ws.send(f"{i} " + "f" * 500)
            await ws.wait_closed()
        finally:
            await ws.wait_closed()
            seen.append(ws.close_code)

    async with running_server(flood, compression=None) as server:
        transport = await connect_transport(
            server.url, max_queue=4, compression=None, close_timeout=30
        )
        await wait_for_read_pause(transport)
        with anyio.fail_after(10):
            # Bounded well below close_timeout: reaching it would mean we waited it out.
            await transport.aclose(1000, "done reading")
        assert transport.close_code == 1000
    assert seen == [1000]


async def test_wss_handshake_rejection_keeps_its_status(tls_ca: trustme.CA) -> None:
    """A 403 over TLS is a ConnectError with status 403 on every backend."""
    client_context = ssl.create_default_context()
    tls_ca.configure_trust(client_context)
    async with running_server(ssl_context=_server_context(tls_ca), reject=(403, {})) as server:
        with pytest.raises(ConnectError) as info:
            await connect_transport(server.url, ssl=client_context)
        assert info.value.status == 403


async def test_tls_handshake_cut_short_is_a_connect_error() -> None:
    """A server that closes during the TLS handshake gives ConnectError, not a raw error."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def accept_and_close() -> None:
            connection, _ = listener.accept()
            connection.recv(1024)  # the TLS ClientHello
            connection.close()

        thread = threading.Thread(target=accept_and_close, daemon=True)
        thread.start()
        with pytest.raises(ConnectError) as info:
            await connect_transport(f"wss://127.0.0.1:{port}/", open_timeout=10)
        assert not str(info.value).endswith((": ", "()"))  # says why, not an empty reason
        thread.join(timeout=5)


async def test_headers_replace_url_credentials_and_refuse_handshake_headers() -> None:
    """A given Authorization replaces the URL's; handshake headers cannot be overridden."""
    async with running_server() as server:
        url = server.url.replace("ws://", "ws://alice:s3cret@")
        async with await connect_transport(url, headers={"Authorization": "Bearer t"}):
            assert server.requests[0].headers.get_all("Authorization") == ["Bearer t"]
    with pytest.raises(ValueError, match="Sec-WebSocket-Key"):
        await connect_transport("ws://127.0.0.1:1/", headers={"Sec-WebSocket-Key": "x"})


async def test_abort_drops_the_connection_without_waiting() -> None:
    """abort() closes at once with 1006; the server sees an abnormal closure."""
    seen: list[int | None] = []

    async def record(ws: ServerConnection) -> None:
        await ws.wait_closed()
        seen.append(ws.close_code)

    async with running_server(record) as server:
        transport = await connect_transport(server.url, close_timeout=30)
        with anyio.fail_after(5):  # far below close_timeout: no handshake was awaited
            await transport.abort()
        assert transport.state is TransportState.CLOSED
        assert transport.close_code == 1006
        with pytest.raises(ConnectionClosedError):
            await transport.send("after abort")
        await transport.abort()  # idempotent
        await transport.aclose()  # and aclose after abort is a no-op
    assert seen == [1006]


async def test_memoryview_of_wide_items_is_sent_as_its_bytes() -> None:
    """A memoryview over 4-byte items is framed by its byte length, not its item count."""
    from array import array

    payload = array("i", [1, 2, 3, 4])
    async with running_server() as server:
        for compression in ("deflate", None):
            async with await connect_transport(server.url, compression=compression) as t:
                await t.send(memoryview(payload))  # type: ignore[arg-type]
                assert await t.receive() == payload.tobytes()


async def test_inbound_buffer_stays_bounded_while_closing() -> None:
    """After aclose() starts, messages beyond max_queue are discarded, not buffered."""

    async def stream_forever(ws: ServerConnection) -> None:
        # Never reads, so it never sees our close frame: only close_timeout ends this.
        with contextlib.suppress(Exception):
            while True:
                await ws.send("s" * 1024)

    async with running_server(stream_forever, compression=None, max_queue=1) as server:
        # The server never answers our close, so a short real close_timeout
        # ends the test; a fake clock would jump while data is still flowing.
        transport = await connect_transport(
            server.url, max_queue=4, compression=None, close_timeout=0.3
        )
        await transport.aclose()
        stats = transport.statistics()
        assert stats.messages_buffered <= 4 + 64  # one read chunk past the mark at most
        assert stats.messages_discarded > 0
