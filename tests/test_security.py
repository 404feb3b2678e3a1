"""The security pass: secrets stay hidden, credentials need wss://, bounds are on by default.

Secrets (a password and a token in the URL, credential headers, what is given
to ``authenticate()``) carry one marker string; ``assert_hidden`` looks for
it in every repr, statistics snapshot, exception (its cause and context
chain included) and log record of the ``wsclient`` and ``websockets`` loggers
at DEBUG, and the tests of the command line look in its stderr. TLS
verification is covered in ``tests/test_transport.py``
(``test_tls_rejected_without_its_ca``, ``test_tls_verified_against_its_ca``);
here only what the Client adds to it.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import secrets
import socket
import ssl
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

import wsclient
import wsclient.sync
from wsclient import (
    Backoff,
    BufferPolicy,
    Client,
    ConnectError,
    ConnectionState,
    ConnectTimeout,
    DefaultDialect,
    InsecureCredentials,
    InvalidURL,
    MessageTooBig,
    QueuePolicy,
    ReconnectFailed,
    ReconnectingTransport,
    RemoteError,
    Route,
    StateChange,
    SubscriptionState,
    WebSocketFactory,
    WSClientError,
    connect_transport,
    is_retryable,
)
from wsclient._loopthread import LoopThread
from wsclient._redact import redact_error, secret_strings
from wsclient._security import is_loopback_host
from wsclient.server import Hub, HubError, RequestContext

from .servers import closed_port

pytestmark = pytest.mark.anyio

SECRET = f"s3cr3t{secrets.token_hex(6)}"
"""The marker every secret carries; random, so it cannot appear by chance."""

BOUND = 10.0  # a bound on a wait, never a wait
FAST = Backoff(jitter="none", initial=0.01, maximum=0.05, min_uptime=0.0, max_attempts=3)
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
REMOTE = "ws://192.0.2.1:9/"  # TEST-NET-1 (RFC 5737): not this machine, and nothing answers


# Where secrets could show


def secret_url(url: str) -> str:
    """``url`` with a password and a query token carrying the marker."""
    return url.replace("://", f"://user:{SECRET}@", 1) + f"?token={SECRET}"


def secret_headers() -> dict[str, str]:
    """Every credential header, each carrying the marker."""
    return {
        "Authorization": f"Bearer {SECRET}",
        "Proxy-Authorization": f"Basic {SECRET}",
        "Cookie": f"session={SECRET}",
    }


def exception_chain(error: BaseException) -> list[BaseException]:
    """``error`` and all it links to: causes, contexts, ``last_error``, group members."""
    seen: dict[int, BaseException] = {}
    stack: list[Any] = [error]
    while stack:
        item = stack.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen[id(item)] = item
        stack += [item.__cause__, item.__context__, getattr(item, "last_error", None)]
        stack += list(getattr(item, "exceptions", ()))
    return list(seen.values())


def shown(thing: object) -> list[str]:
    """What a person could see of ``thing``: str and repr, an exception's whole traceback."""
    if isinstance(thing, BaseException):
        texts = ["".join(traceback.format_exception(thing))]
        for error in exception_chain(thing):
            texts += [str(error), repr(error)]
        return texts
    return [str(thing), repr(thing)]


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The records of the wsclient and websockets loggers, formatted with their tracebacks."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return [
        formatter.format(record)
        for record in caplog.records
        if record.name.startswith(("wsclient", "websockets"))
    ]


def assert_hidden(*things: object, caplog: pytest.LogCaptureFixture | None = None) -> None:
    """The marker appears in none of ``things`` nor, with ``caplog``, in any log record."""
    texts = [text for thing in things for text in shown(thing)]
    if caplog is not None:
        texts += logged(caplog)
    for text in texts:
        assert SECRET not in text, text[:1000]


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture the wsclient and websockets loggers at DEBUG (before any connection is made)."""
    caplog.set_level(logging.DEBUG, logger="wsclient")
    caplog.set_level(logging.DEBUG, logger="websockets")
    return caplog


@contextmanager
def refusing_server(status: int = 401) -> Iterator[str]:
    """A server in a thread that refuses every handshake with ``status``.

    Like a careless server, it echoes the request's path and credential headers
    in its response, headers, reason phrase and body. Its own logger is not one
    we scan. With 101 it accepts, echoing them in a malformed extension header.
    """
    loop = LoopThread("refusing-server")
    loop.start()

    def refuse(connection: ServerConnection, request: Request) -> Response:
        echoed = "; ".join(
            f"{name}: {request.headers[name]}"
            for name in ("Authorization", "Proxy-Authorization", "Cookie")
            if name in request.headers
        )
        response = connection.respond(status, f"refused {request.path} {echoed}\n")
        response.headers["X-Echo"] = echoed or "-"
        return dataclasses.replace(response, reason_phrase=f"Refused {echoed}")

    def malform(connection: ServerConnection, request: Request, response: Response) -> None:
        response.headers["Sec-WebSocket-Extensions"] = request.headers["Authorization"]

    async def handler(ws: ServerConnection) -> None:
        pass  # never reached: every handshake is refused

    async def start() -> Server:
        logger = logging.getLogger("tests.refusing_server")
        if status == 101:
            return await serve(handler, "127.0.0.1", 0, process_response=malform, logger=logger)
        return await serve(handler, "127.0.0.1", 0, process_request=refuse, logger=logger)

    server = loop.submit(start()).result(BOUND)
    try:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    finally:

        async def stop() -> None:
            server.close()
            await server.wait_closed()

        loop.submit(stop()).result(BOUND)
        loop.stop()


@contextmanager
def silent_listener() -> Iterator[str]:
    """A port that accepts TCP connections and never answers the handshake."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/"


def auth_hub(accepted: list[bool]) -> Hub:
    """A Hub whose auth handler, while ``accepted[0]`` is False, quotes the token it refuses."""
    hub = Hub(ping_interval=None)

    @hub.on_auth
    async def auth(credentials: Any, ctx: RequestContext) -> Any:
        if not accepted[0]:
            raise HubError(f"token {credentials['token']} refused for {credentials['user']}")
        return {"user": "ann"}

    return hub


# Secrets: the handshake


async def test_malformed_handshake_response_quoting_credentials_hides_them(
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    """A 101 whose malformed header quotes our Authorization: the error says so, unshown."""
    with refusing_server(101) as url:
        with pytest.raises(ConnectError) as caught:
            await connect_transport(url, headers={"Authorization": f"Bearer {SECRET}"})
        assert "InvalidHeaderFormat" in str(caught.value)
        assert_hidden(caught.value, caplog=debug_logs)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "callable"])
async def test_refused_handshake_hides_url_and_header_secrets(
    debug_logs: pytest.LogCaptureFixture, dynamic: bool
) -> None:
    """A 401 that echoes our credentials leaves them out of errors, reprs, statistics and logs."""

    async def headers() -> dict[str, str]:
        return secret_headers()

    with refusing_server(401) as url:
        client = wsclient.connect(
            secret_url(url), headers=headers if dynamic else secret_headers(), backoff=FAST
        )
        with pytest.raises(ConnectError) as caught:
            async with client:
                pytest.fail("the server refuses every handshake")
        assert caught.value.status == 401
        assert "127.0.0.1" in str(caught.value)  # still says where
        assert_hidden(
            caught.value,
            client,
            client.transport,
            client.statistics(),
            client.transport.statistics(),
            caplog=debug_logs,
        )


async def test_reconnect_failed_hides_secrets(debug_logs: pytest.LogCaptureFixture) -> None:
    """ReconnectFailed after a refused handshake, its chain and every state change hide secrets."""
    with refusing_server(401) as url:
        factory = WebSocketFactory(secret_url(url), headers=secret_headers())
        rt = ReconnectingTransport(factory, backoff=FAST, heartbeat=None, retry_first_connect=True)
        changes: list[StateChange] = []
        rt.on_state_change(changes.append)
        with pytest.raises(ReconnectFailed) as caught:
            async with rt:
                pytest.fail("the server refuses every handshake")
        assert isinstance(caught.value.last_error, ConnectError)
        assert_hidden(caught.value, factory, rt, rt.statistics(), *changes, caplog=debug_logs)


async def test_connect_timeout_hides_secrets(debug_logs: pytest.LogCaptureFixture) -> None:
    """A handshake that never gets an answer raises ConnectTimeout without secrets."""
    with silent_listener() as url:
        with pytest.raises(ConnectTimeout) as caught:
            await connect_transport(secret_url(url), headers=secret_headers(), open_timeout=0.2)
        assert_hidden(caught.value, caplog=debug_logs)


@pytest.mark.parametrize(
    "url",
    [
        f"ws://user:{SECRET}@127.0.0.1:bad/",
        f"http://user:{SECRET}@127.0.0.1/?token={SECRET}",
        f"ws://user:{SECRET}@127.0.0.1/#{SECRET}",
        f"ws://user:pa/{SECRET}@127.0.0.1/",  # "pa/..." reads as the port
        f"ws://user:{SECRET}@[::1/",
    ],
)
def test_invalid_url_hides_secrets(url: str) -> None:
    """InvalidURL from connect() never repeats the URL's password, token or fragment."""
    with pytest.raises(InvalidURL) as caught:
        wsclient.connect(url)
    assert_hidden(caught.value)


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({"Authorization": f"Bearer {SECRET}\r\nX-Forged: 1"}, ValueError),
        ({"Authorization": f"Bearer {SECRET}\n"}, ValueError),
        ({"Authorization": f"Bearer {SECRET}\x00"}, ValueError),
        ({f"Authorization: Bearer {SECRET}": ""}, ValueError),
        ({"Authorization": SECRET.encode()}, TypeError),
        ([("Cookie", None)], TypeError),
    ],
)
def test_malformed_headers_are_refused_without_showing_them(
    headers: Any, error: type[Exception]
) -> None:
    """A header that could forge others, or is not a str, is refused at once; its value unshown."""
    with pytest.raises(error) as caught:
        wsclient.connect("ws://127.0.0.1:1/", headers=headers)
    assert "header" in str(caught.value)
    assert_hidden(caught.value)


async def test_malformed_header_from_a_callable_fails_the_attempt_unshown() -> None:
    """A header callable returning a forged header fails its attempt, fatally, without the value."""
    with silent_listener() as url:
        factory = WebSocketFactory(url, headers=lambda: {"Authorization": f"x{SECRET}\r\nA: b"})
        rt = ReconnectingTransport(factory, backoff=FAST, heartbeat=None, retry_first_connect=True)
        with pytest.raises(ReconnectFailed) as caught:
            async with rt:
                pytest.fail("the header is invalid")
        assert isinstance(caught.value.last_error, ValueError)
        assert caught.value.attempts == 1  # not retried: it would fail the same way
        assert_hidden(caught.value, rt.statistics())


# Secrets: authenticate()


async def test_refused_credentials_are_masked_in_the_error(
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    """A server quoting the credentials it refuses: the RemoteError shows *** instead."""
    async with auth_hub([False]).serve() as server:
        client = wsclient.connect(secret_url(server.url), headers=secret_headers())
        async with client:
            with pytest.raises(RemoteError) as caught:
                await client.authenticate({"user": "ann", "token": SECRET})
            assert str(caught.value) == "token *** refused for ann"  # 3 characters: shown
            session = client.session()
            async with client.subscribe("news") as sub:
                assert_hidden(
                    caught.value,
                    client,
                    client.transport,
                    client.statistics(),
                    session,
                    session.statistics(),
                    sub,
                    sub.statistics(),
                    caplog=debug_logs,
                )


async def test_refused_reauthentication_gives_up_without_secrets(
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    """Credentials refused after a reconnect end in ReconnectFailed; no secret anywhere."""
    accepted = [True]
    async with auth_hub(accepted).serve() as server:
        client = wsclient.connect(
            secret_url(server.url), headers=secret_headers(), backoff=FAST, heartbeat=None
        )
        changes: list[StateChange] = []
        client.on_state(changes.append)
        async with client:
            await client.authenticate({"user": "ann", "token": SECRET})
            accepted[0] = False
            await server.abort_connections()
            with anyio.fail_after(BOUND):
                await client.transport.wait_state(ConnectionState.CLOSED)
            with pytest.raises(ReconnectFailed) as caught:
                await client.query("echo")
            assert isinstance(caught.value.__cause__, RemoteError)
            assert "token ***" in str(caught.value)
            assert_hidden(
                caught.value,
                client,
                client.statistics(),
                *changes,
                *(change.error for change in changes if change.error is not None),
                caplog=debug_logs,
            )


def test_credential_strings_are_found_and_masked() -> None:
    """Every string in the credentials, however nested, is masked in an error's text and data."""
    credentials: dict[str, Any] = {"user": "anne", "keys": [SECRET, ("pins", f"{SECRET}-2")]}
    credentials["self"] = credentials  # a cycle must not loop forever
    found = secret_strings(credentials)
    assert found[0] == f"{SECRET}-2"  # longest first: masked whole
    assert set(found) == {"anne", SECRET, "pins", f"{SECRET}-2"}
    error = RemoteError(f"no {SECRET}-2 for anne", data={"tried": [SECRET]}, code=401)
    redact_error(error, found)
    assert (str(error), error.data, error.code) == ("no *** for ***", {"tried": ["***"]}, 401)
    assert secret_strings(SECRET) == [SECRET]


def test_short_credential_strings_are_not_masked() -> None:
    """Strings under 4 characters are left alone ("en" would mangle "token"); numbers count."""
    found = secret_strings({"user": "a", "lang": "en", "v": 1, "pin": 482913, "ok": True})
    assert found == ["482913"]
    error = RemoteError("token for a (en) refused: pin 482913")
    redact_error(error, found)
    assert str(error) == "token for a (en) refused: pin ***"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sync_client_hides_secrets(backend: str, caplog: pytest.LogCaptureFixture) -> None:
    """The blocking client's reprs, statistics and errors hide URL, header and auth secrets."""
    caplog.set_level(logging.DEBUG, logger="wsclient")
    caplog.set_level(logging.DEBUG, logger="websockets")
    loop = LoopThread("security-hub")
    loop.start()
    try:
        serving = auth_hub([False]).serve("127.0.0.1", 0, in_thread=False)
        server = loop.submit(serving.__aenter__()).result(BOUND)
        try:
            url = secret_url(server.url)
            with wsclient.sync.connect(url, headers=secret_headers(), backend=backend) as client:
                with pytest.raises(RemoteError) as caught:
                    client.authenticate({"user": "ann", "token": SECRET})
                session = client.session()
                with client.subscribe("news") as sub:
                    assert_hidden(
                        caught.value, client, client.statistics(), session, sub, caplog=caplog
                    )
                assert SECRET not in " ".join(thread.name for thread in threading.enumerate())
        finally:
            loop.submit(serving.__aexit__(None, None, None)).result(BOUND)
    finally:
        loop.stop()


# Secrets: the command line


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m wsclient ARGS`` with empty stdin, bounded."""
    return subprocess.run(
        [sys.executable, "-m", "wsclient", *args],
        input="",
        capture_output=True,
        text=True,
        timeout=15,
        env=ENV,
        cwd=ROOT,
    )


def test_cli_connect_refused_hides_secrets() -> None:
    """`wsclient connect` refused with 401 (credentials echoed) says so on stderr, no secret."""
    with refusing_server(401) as url:
        done = run_cli(
            "connect",
            secret_url(url),
            "--header",
            f"Authorization: Bearer {SECRET}",
            "--header",
            f"Cookie: session={SECRET}",
        )
    assert done.returncode == 1
    assert "HTTP 401" in done.stderr
    assert SECRET not in done.stderr + done.stdout


def test_cli_connect_refuses_credentials_over_plain_ws() -> None:
    """`wsclient connect` with a credential header to a remote ws:// URL: usage error, unshown."""
    done = run_cli("connect", REMOTE, "--header", f"Authorization: Bearer {SECRET}")
    assert done.returncode == 2
    assert "wss://" in done.stderr
    assert "--allow-insecure-credentials" in run_cli("connect", "--help").stdout
    assert SECRET not in done.stderr + done.stdout


# Credentials need wss://


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        (f"ws://user:{SECRET}@example.test/", None),
        (f"ws://{SECRET}:x@example.test/", None),
        ("ws://example.test/", {"Authorization": f"Bearer {SECRET}"}),
        ("ws://example.test/", {"proxy-authorization": f"Basic {SECRET}"}),
        ("ws://example.test/", [("COOKIE", f"session={SECRET}")]),
        ("ws://10.1.2.3:8765/", {"Authorization": f"Bearer {SECRET}"}),
    ],
)
def test_credentials_over_plain_ws_to_another_host_are_refused(url: str, headers: Any) -> None:
    """User info or a credential header over ws:// to another host raises InsecureCredentials."""
    with pytest.raises(InsecureCredentials) as caught:
        wsclient.connect(url, headers=headers)
    assert isinstance(caught.value, WSClientError)
    assert isinstance(caught.value, ValueError)
    assert "wss://" in str(caught.value)
    assert "allow_insecure_credentials" in str(caught.value)
    assert_hidden(caught.value)
    # The same with wss://, or with the explicit opt-out, is accepted.
    wsclient.connect(url.replace("ws://", "wss://"), headers=headers)
    wsclient.connect(url, headers=headers, allow_insecure_credentials=True)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.8.9.10", "[::1]", "[::ffff:127.0.0.1]", "localhost", "LOCALHOST"]
)
def test_loopback_hosts_may_receive_credentials_over_plain_ws(host: str) -> None:
    """This machine is exempt: loopback addresses and localhost take credentials over ws://."""
    wsclient.connect(f"ws://user:{SECRET}@{host}:8765/", headers=secret_headers())


def test_loopback_detection() -> None:
    """Only localhost and loopback IP literals count as this machine."""
    assert all(map(is_loopback_host, ["127.0.0.1", "127.255.0.1", "::1", "[::1]", "localhost"]))
    assert is_loopback_host("::ffff:127.0.0.1")
    others = ["0.0.0.0", "10.0.0.1", "example.test", "localhost.example.test", "::", "fe80::1"]
    # Names DNS may answer (a fully qualified localhost.), shorthand IPv4 read by inet_aton.
    others += ["localhost.", "127.1", "2130706433", "localhost6", "my.localhost"]
    for host in others:
        assert not is_loopback_host(host), host


def test_other_requests_need_no_wss() -> None:
    """Without credentials, or with other headers and a query string, ws:// is fine."""
    wsclient.connect("ws://example.test/feed?room=7", headers={"X-Trace": "1"})
    WebSocketFactory(REMOTE, headers={"Authorization": "x"}, unix_socket="/tmp/app.sock")


async def test_transport_refuses_before_any_network() -> None:
    """connect_transport() raises InsecureCredentials before resolving or connecting."""
    with pytest.raises(InsecureCredentials):
        await connect_transport("ws://host.invalid/", headers={"Authorization": f"Bearer {SECRET}"})
    with pytest.raises(ConnectError) as caught:  # the opt-out goes on to connect (and fails)
        await connect_transport(
            # Not a loopback name to the check, yet the kernel keeps it on this machine.
            f"ws://0.0.0.0:{closed_port()}/",
            headers={"Authorization": f"Bearer {SECRET}"},
            allow_insecure_credentials=True,
            open_timeout=0.2,
        )
    assert not isinstance(caught.value, InsecureCredentials)


async def test_header_callable_is_checked_at_each_attempt() -> None:
    """Credentials from a header callable are checked per attempt; the refusal is not retried."""
    calls: list[int] = []

    def headers() -> dict[str, str]:
        calls.append(1)
        return {"Authorization": f"Bearer {SECRET}"}

    factory = WebSocketFactory(REMOTE, headers=headers)  # nothing to check yet
    assert not calls
    rt = ReconnectingTransport(factory, backoff=FAST, heartbeat=None, retry_first_connect=True)
    with pytest.raises(ReconnectFailed) as caught:
        async with rt:
            pytest.fail("the credentials must not be sent")
    assert isinstance(caught.value.last_error, InsecureCredentials)
    assert caught.value.attempts == 1
    assert calls == [1]
    assert not is_retryable(InsecureCredentials("x"))
    assert_hidden(caught.value)


async def test_authenticate_is_checked_when_called() -> None:
    """authenticate() over ws:// to another host raises InsecureCredentials before sending."""
    client = wsclient.connect(REMOTE)
    with pytest.raises(InsecureCredentials) as caught:
        await client.authenticate({"token": SECRET})
    assert "authenticate()" in str(caught.value)
    assert_hidden(caught.value, client)
    # Opted out, or over wss://, the check passes (and the unopened client says so).
    for other in (
        wsclient.connect(REMOTE, allow_insecure_credentials=True),
        wsclient.connect(REMOTE.replace("ws://", "wss://")),
    ):
        with pytest.raises(WSClientError) as caught:
            with anyio.fail_after(BOUND):
                await other.authenticate({"token": SECRET}, timeout=0.01)
        assert not isinstance(caught.value, InsecureCredentials)


async def test_authenticate_queued_while_reconnecting_is_checked_on_the_new_url() -> None:
    """authenticate() queued while offline is checked against the URL the queue flushes to."""
    seen: list[Any] = []
    hub = Hub(ping_interval=None)

    @hub.on_auth
    async def auth(credentials: Any, ctx: RequestContext) -> Any:
        seen.append(credentials)
        return {"user": "ann"}

    async with hub.serve() as server:
        gate = anyio.Event()
        calls: list[int] = []

        async def url() -> str:
            calls.append(1)
            if len(calls) > 1:
                await gate.wait()
                # This machine, but not by the rule's reading: it stands for another host.
                return server.url.replace("127.0.0.1", "127.1")
            return server.url

        client = wsclient.connect(WebSocketFactory(url), heartbeat=None, backoff=FAST)
        errors: list[BaseException] = []
        async with client:
            await server.abort_connections()
            with anyio.fail_after(BOUND):
                while len(calls) < 2:  # offline, the next URL not known yet
                    await anyio.sleep(0.01)

                async def authenticate() -> None:
                    try:
                        await client.authenticate({"token": SECRET})
                    except WSClientError as exc:
                        errors.append(exc)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(authenticate)
                    while client.transport.statistics().queue.messages == 0:
                        await anyio.sleep(0)
                    gate.set()
                await client.transport.wait_state(ConnectionState.CLOSED)
        assert seen == []
        assert len(errors) == 1
        last = client.statistics().connection.last_error
        assert any(isinstance(e, InsecureCredentials) for e in exception_chain(last)), last


async def test_authenticate_over_loopback_ws_is_allowed() -> None:
    """authenticate() over ws:// to 127.0.0.1 is sent: this machine is exempt."""
    async with auth_hub([True]).serve() as server, wsclient.connect(server.url) as client:
        assert await client.authenticate({"user": "ann", "token": SECRET}) == {"user": "ann"}


# TLS: what the Client adds to tests/test_transport.py's tests


async def test_client_verifies_tls_by_default_and_never_retries_a_bad_certificate() -> None:
    """A self-signed server fails the Client's first connect at once; trusting its CA works."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    loop = LoopThread("tls-server")
    loop.start()
    try:

        async def start() -> Server:
            async def echo(ws: ServerConnection) -> None:
                async for message in ws:
                    await ws.send(message)

            return await serve(echo, "127.0.0.1", 0, ssl=server_context)

        server = loop.submit(start()).result(BOUND)
        url = f"wss://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        client = wsclient.connect(url, headers=secret_headers(), retry_first_connect=True)
        with pytest.raises(ReconnectFailed) as caught:
            async with client:
                pytest.fail("an untrusted certificate was accepted")
        assert "certificate verification failed" in str(caught.value)
        assert caught.value.attempts == 1
        trusting = ssl.create_default_context()
        ca.configure_trust(trusting)
        async with wsclient.connect(url, ssl=trusting, heartbeat=None) as client:
            await client.send({"ok": 1})
            with anyio.fail_after(BOUND):
                assert await client.receive() == {"ok": 1}

        async def stop() -> None:
            server.close()
            await server.wait_closed()

        loop.submit(stop()).result(BOUND)
    finally:
        loop.stop()


# Bounds on by default


def _default(function: Any, name: str) -> Any:
    return inspect.signature(function).parameters[name].default


def test_bounds_are_on_by_default() -> None:
    """Every size, queue and buffer bound has a finite default; no opt-out is on by default."""
    assert _default(connect_transport, "max_size") == 2**20
    assert _default(connect_transport, "max_queue") == 32
    assert _default(Client, "max_size") == 2**20
    assert _default(Client, "queue") == QueuePolicy(max_messages=1000, max_bytes=8 * 2**20)
    assert _default(Client, "subscriber_buffer") == BufferPolicy(max_messages=1024)
    assert _default(Client, "message_buffer") == BufferPolicy(max_messages=1024)
    assert _default(ReconnectingTransport, "queue") == QueuePolicy()
    assert _default(ReconnectingTransport, "max_inbound") == 1024
    for function in (connect_transport, Client):
        assert _default(function, "allow_insecure_credentials") is False
    hub = Hub()
    assert hub.max_message_size == 2**20
    assert hub.max_subscriptions == 1000
    assert hub.max_connections_per_ip == 256
    assert hub.allowed_origins is None
    assert (hub.max_queued_messages, hub.max_queued_bytes) == (1024, 16 * 2**20)


async def test_client_refuses_a_message_over_one_mib_by_default() -> None:
    """With default options a message over 1 MiB ends the connection with MessageTooBig (1009)."""
    loop = LoopThread("big-server")
    loop.start()
    try:

        async def flood(ws: ServerConnection) -> None:
            await ws.send(b"x" * 2**20)
            await ws.send(b"x" * (2**20 + 1))
            await ws.wait_closed()

        async def start() -> Server:
            return await serve(flood, "127.0.0.1", 0, max_size=None, compression=None)

        server = loop.submit(start()).result(BOUND)
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        client = wsclient.connect(url, reconnect=False, heartbeat=None, codec=wsclient.RawCodec())
        async with client:
            with anyio.fail_after(BOUND):
                assert await client.receive() == b"x" * 2**20
                await client.transport.wait_state(ConnectionState.CLOSED)
            error = client.statistics().connection.last_error
            assert isinstance(error, MessageTooBig)
            assert error.sent_code == 1009

        async def stop() -> None:
            server.close()
            await server.wait_closed()

        loop.submit(stop()).result(BOUND)
    finally:
        loop.stop()


# The Hub's limits


@asynccontextmanager
async def serving(hub: Hub) -> AsyncIterator[str]:
    async with hub.serve() as server:
        yield server.url


async def test_hub_limits_connections_per_ip() -> None:
    """Past max_connections_per_ip the handshake gets HTTP 429; a closed one frees its place."""
    hub = Hub(ping_interval=None, max_connections_per_ip=2)
    async with hub.serve() as server:
        first = await connect_transport(server.url)
        second = await connect_transport(server.url)
        with pytest.raises(ConnectError) as caught:
            await connect_transport(server.url)
        assert caught.value.status == 429
        assert is_retryable(caught.value)
        assert server.statistics().connections_refused == 1
        await first.aclose()
        with anyio.fail_after(BOUND):
            while server.statistics().connections_open > 1:
                await anyio.sleep(0.01)
        third = await connect_transport(server.url)
        for transport in (second, third):
            await transport.aclose()


async def test_refused_handshakes_do_not_count_against_the_address() -> None:
    """Handshakes refused (a disallowed Origin) leave the per-address count unchanged."""
    hub = Hub(ping_interval=None, max_connections_per_ip=1)
    async with hub.serve() as server:
        for _ in range(3):
            with pytest.raises(ConnectError) as caught:
                await connect_transport(server.url, origin="https://evil.test")
            assert caught.value.status == 403
        transport = await connect_transport(server.url)
        await transport.aclose()
        assert server.statistics().connections_refused == 3


_HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def test_handshakes_cut_short_free_their_place() -> None:
    """Clients resetting right after their request (no handler runs) do not lock the address out."""
    hub = Hub(ping_interval=None, max_connections_per_ip=2)
    async with hub.serve() as server:
        for _ in range(30):  # blocking: request and reset arrive before the Hub reads either
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.sendall(_HANDSHAKE)
        statuses: set[int | None] = set()
        with anyio.fail_after(BOUND):
            while True:  # the resets are noticed soon; until then 429 is right
                try:
                    transport = await connect_transport(server.url)
                except ConnectError as exc:
                    statuses.add(exc.status)
                    await anyio.sleep(0.01)
                else:
                    break
        assert statuses <= {429}
        second = await connect_transport(server.url)
        await transport.aclose()
        await second.aclose()


async def test_hub_refuses_a_subscription_past_its_limit_and_stays_open() -> None:
    """Past max_subscriptions the subscribe is refused (RemoteError); the connection stays open."""
    errors: list[BaseException] = []
    hub = Hub(ping_interval=None, max_subscriptions=2)
    async with hub.serve() as server, wsclient.connect(server.url, heartbeat=None) as client:
        client.on_error(errors.append)
        async with client.subscribe("a") as a, client.subscribe("b") as b:
            await a.confirmed()
            await b.confirmed()
            async with client.subscribe("c") as c:
                with pytest.raises(RemoteError, match="subscription limit reached"):
                    await c.confirmed()
                assert c.state is SubscriptionState.FAILED
            assert await client.query("echo", {"still": "open"}) == {"still": "open"}
            assert a.state is SubscriptionState.SUBSCRIBED
        assert [str(error) for error in errors] == ["subscription limit reached (2)"]
        assert client.statistics().connection.reconnects == 0


async def test_hub_refuses_browser_origins_unless_allowed() -> None:
    """By default only handshakes without Origin are accepted; others need allowed_origins."""
    async with serving(Hub(ping_interval=None)) as url:
        await (await connect_transport(url)).aclose()
        with pytest.raises(ConnectError) as caught:
            await connect_transport(url, origin="https://evil.test")
        assert caught.value.status == 403
        assert not is_retryable(caught.value)
    async with serving(Hub(ping_interval=None, allowed_origins=["https://app.test"])) as url:
        await (await connect_transport(url)).aclose()
        await (await connect_transport(url, origin="https://app.test")).aclose()
        with pytest.raises(ConnectError, match="403"):
            await connect_transport(url, origin="https://evil.test")
    async with serving(Hub(ping_interval=None, allowed_origins="*")) as url:
        await (await connect_transport(url, origin="https://evil.test")).aclose()
    # Written loosely, an origin still matches what browsers send, and only that.
    hub = Hub(ping_interval=None, allowed_origins=["HTTPS://App.test:443/", "http://h.test:8080"])
    assert hub.allowed_origins == ["https://app.test", "http://h.test:8080"]
    async with serving(hub) as url:
        await (await connect_transport(url, origin="https://app.test")).aclose()
        await (await connect_transport(url, origin="http://h.test:8080")).aclose()
        for origin in ("http://app.test", "https://app.test:8443", "null", "http://h.test"):
            with pytest.raises(ConnectError, match="403"):
                await connect_transport(url, origin=origin)


def test_default_dialect_reads_a_channel_error_as_a_refused_subscription() -> None:
    """A system error naming a channel is a CONFIRM carrying the error; without one, SYSTEM."""
    data = {"type": "error", "message": "subscription limit reached (2)", "channel": "c"}
    inbound = DefaultDialect().route({"channel": "system", "data": data})
    assert (inbound.route, inbound.channel) == (Route.CONFIRM, "c")
    assert str(inbound.error) == "subscription limit reached (2)"
    del data["channel"]
    assert DefaultDialect().route({"channel": "system", "data": data}).route is Route.SYSTEM


@pytest.mark.parametrize(
    "options",
    [
        {"allowed_origins": "https://app.test"},
        {"allowed_origins": [None]},
        {"allowed_origins": ["null"]},
        {"allowed_origins": ["app.test"]},
        {"allowed_origins": ["https://app.test/path"]},
        {"max_connections_per_ip": 0},
    ],
)
def test_hub_refuses_bad_limits(options: dict[str, Any]) -> None:
    """A bare origin string, a non-str origin or a zero limit is a ValueError."""
    with pytest.raises(ValueError, match=next(iter(options))):
        Hub(**options)


async def test_hub_logs_no_credentials_at_debug(debug_logs: pytest.LogCaptureFixture) -> None:
    """The Hub's websockets debug log (headers, payloads) is off: credentials stay out of it."""
    async with auth_hub([True]).serve() as server:
        url = secret_url(server.url)
        async with wsclient.connect(url, headers=secret_headers()) as client:
            await client.authenticate({"user": "ann", "token": SECRET})
    assert any(record.name.startswith("wsclient") for record in debug_logs.records)
    assert_hidden(caplog=debug_logs)


def test_cli_serve_takes_allowed_origins_and_a_connection_limit() -> None:
    """`wsclient serve --allow-origin O --max-connections-per-ip N` configures the Hub so."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wsclient",
            "serve",
            "--port",
            "0",
            "--allow-origin",
            "https://app.test",
            "--max-connections-per-ip",
            "1",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()  # "serving on ws://127.0.0.1:PORT"
        assert "serving on" in line, line
        url = line.split()[-1] + "/"

        async def check() -> None:
            with anyio.fail_after(BOUND):
                with pytest.raises(ConnectError, match="403"):
                    await connect_transport(url, origin="https://evil.test")
                async with await connect_transport(url, origin="https://app.test"):
                    with pytest.raises(ConnectError, match="429"):
                        await connect_transport(url)

        anyio.run(check)
    finally:
        process.terminate()
        process.wait(BOUND)
        if process.stderr is not None:
            process.stderr.close()


@pytest.mark.parametrize("origin", ["null", "app.test", "https://app.test/path"])
def test_cli_serve_refuses_an_origin_that_is_not_one(origin: str) -> None:
    """`wsclient serve --allow-origin` with a non-origin is a usage error (2), not a traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "wsclient", "serve", "--port", "0", "--allow-origin", origin],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "wsclient serve: allowed_origins" in result.stderr
    assert "Traceback" not in result.stderr
