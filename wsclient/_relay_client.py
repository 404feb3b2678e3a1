"""The local side of the relay: ``connect(url, relay=path)`` and ``ws+relay://`` URLs.

A relayed [`Client`][wsclient.Client] is an ordinary client whose transport
is a WebSocket to the relay's Unix socket (``wsclient relay``, see
``wsclient._relay``) instead of to the server. The handshake carries the
upstream URL and the upstream handshake options (headers, subprotocols,
compression, ``max_size``) in ``Wsclient-Relay-N`` headers; the relay keys its
upstream connections by them, so processes that ask for other credentials never
share a socket. Everything else (requests, channels, sessions, the queue,
reconnection) is the client's own machinery, unchanged.

If nothing answers on the socket, the first attempt starts the relay: under a
lock file next to the socket (so that two processes starting at once end with
one relay) it runs ``python -m wsclient relay --socket PATH``, which returns
once the detached relay listens.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import anyio

from ._checks import check_timeout, cut
from ._exceptions import ConnectError, ConnectTimeout
from ._reconnect import WebSocketFactory, _resolve
from ._transport import (
    HeadersLike,
    Transport,
    _parse_url,
    check_header,
    check_url_credentials,
    connect_transport,
)

__all__: list[str] = []

RELAY_SCHEMES = {"ws+relay": "ws", "wss+relay": "wss"}
"""The relay URL schemes and the upstream scheme each stands for."""

SPEC_HEADER = "Wsclient-Relay-"
"""Prefix of the handshake headers carrying the upstream spec, in chunks numbered from 0."""

SPEC_CHUNK = 4000
"""Characters per spec header: well under the 8 KiB line limit of HTTP parsers."""

MAX_SPEC_CHUNKS = 64

SPEC_VERSION = 1

START_TIMEOUT = 10.0
"""Seconds a process may spend starting the relay (lock, spawn, listen)."""

# A Unix socket path must fit sockaddr_un.sun_path (108 bytes on Linux, 104 on macOS).
MAX_SOCKET_PATH = 103

_LOCK_POLL = 0.02  # seconds between tries of a lock another process holds
_MAX_STARTS = 3


def is_relay_url(url: object) -> bool:
    """True for a ``ws+relay://`` or ``wss+relay://`` URL."""
    return isinstance(url, str) and url.partition("://")[0].lower() in RELAY_SCHEMES


def upstream_url(url: str) -> str:
    """The upstream URL of a relay URL (``ws+relay://h/p`` is ``ws://h/p``); others unchanged."""
    scheme, sep, rest = url.partition("://")
    upstream = RELAY_SCHEMES.get(scheme.lower())
    return f"{upstream}{sep}{rest}" if upstream is not None and sep else url


def default_socket_path() -> str:
    """The relay socket of this user: ``$XDG_RUNTIME_DIR/wsclient/relay.sock``, or
    ``<temp dir>/wsclient-<uid>/relay.sock`` without a runtime directory."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        directory = os.path.join(runtime, "wsclient")
    else:
        directory = os.path.join(tempfile.gettempdir(), f"wsclient-{os.getuid()}")
    return os.path.join(directory, "relay.sock")


def prepare_private_dir(directory: str) -> None:
    """Create ``directory`` (mode 0700) if needed; refuse one that is not this user's alone.

    The default socket lives in a shared temporary directory when there is no
    runtime directory: a directory someone else made there could let them
    replace the socket and see every message.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ConnectError(f"the relay directory {directory} is not a directory of this user")
    if info.st_mode & 0o077:
        raise ConnectError(
            f"the relay directory {directory} is open to other users"
            f" (mode {stat.S_IMODE(info.st_mode):o}); it must be 0700"
        )


def check_socket_path(path: object, name: str = "relay") -> str:
    """``path`` as a str, or ValueError if it cannot be a Unix socket's path."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"{name} must be a socket path (str or os.PathLike), not {type(path).__name__}"
        )
    text = os.fspath(path)
    if not isinstance(text, str) or not text:
        raise ValueError(f"{name} must be a non-empty socket path")
    if "\0" in text:
        raise ValueError(f"{name} must not contain a NUL character")
    size = len(os.fsencode(text))
    if size > MAX_SOCKET_PATH:
        raise ValueError(
            f"{name} is too long for a Unix socket path ({size} bytes, at most {MAX_SOCKET_PATH})"
        )
    return text


def resolve_socket(relay: object) -> tuple[str, bool]:
    """The socket path for ``relay=`` (a path, or True/None for the default) and
    whether it is the default one."""
    if relay is None or relay is True:
        return default_socket_path(), True
    if relay is False:
        raise ValueError("relay=False with a ws+relay:// URL: use a ws:// URL instead")
    given = check_socket_path(relay)
    # Absolute, so that a change of directory does not change the relay.
    return check_socket_path(os.path.abspath(given)), False


def encode_spec(
    url: str,
    headers: Iterable[tuple[str, str]],
    *,
    subprotocols: list[str] | None,
    compression: str | None,
    max_size: int | None,
    open_timeout: float | None,
    allow_insecure_credentials: bool,
) -> list[tuple[str, str]]:
    """The upstream spec as handshake headers: JSON in ASCII, cut in numbered chunks."""
    spec = {
        "v": SPEC_VERSION,
        "url": url,
        "headers": [[name, value] for name, value in headers],
        "subprotocols": list(subprotocols or ()),
        "compression": compression,
        "max_size": max_size,
        "open_timeout": open_timeout
        if open_timeout is None or math.isfinite(open_timeout)
        else None,
        "allow_insecure_credentials": allow_insecure_credentials,
    }
    text = json.dumps(spec, ensure_ascii=True, separators=(",", ":"))
    chunks = [text[i : i + SPEC_CHUNK] for i in range(0, len(text), SPEC_CHUNK)]
    if len(chunks) > MAX_SPEC_CHUNKS:
        raise ValueError(
            f"the upstream URL and headers are too large for the relay handshake"
            f" ({len(text)} characters, at most {SPEC_CHUNK * MAX_SPEC_CHUNKS})"
        )
    return [(f"{SPEC_HEADER}{i}", chunk) for i, chunk in enumerate(chunks)]


def _header_list(headers: object) -> list[tuple[str, str]]:
    """``headers`` (a mapping or pairs) as a checked list of pairs."""
    if headers is None:
        return []
    items: Iterable[Any] = headers.items() if isinstance(headers, Mapping) else headers  # type: ignore[assignment]
    pairs = []
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError("headers must be a mapping or (name, value) pairs")
        name, value = item
        check_header(name, value)
        pairs.append((name, value))
    return pairs


class _NoRelay(Exception):
    """Nothing answered on the socket: no relay runs there (yet)."""


class RelayFactory(WebSocketFactory):
    """Opens each connection of a relayed client: a WebSocket to the relay, naming the upstream.

    It is a [`WebSocketFactory`][wsclient.WebSocketFactory] for the upstream URL as
    far as the client's credential checks go (``authenticate()`` over ``ws://`` to
    another host is refused as for a direct connection); its connections go to
    the relay's Unix socket, which it starts when nothing answers there.
    """

    def __init__(
        self,
        url: str,
        *,
        relay: object,
        headers: HeadersLike | Callable[[], HeadersLike | Awaitable[HeadersLike]] | None = None,
        subprotocols: list[str] | None = None,
        ssl: Any = None,
        max_size: int | None = 2**20,
        compression: str | None = "deflate",
        open_timeout: float | None = 10.0,
        close_timeout: float = 10.0,
        allow_insecure_credentials: bool = False,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        if ssl is not None:
            raise ValueError(
                "ssl= cannot be used with a relay: the relay opens the upstream connection and"
                " verifies its certificate against the system's trust store"
            )
        if subprotocols is not None and (
            isinstance(subprotocols, str) or not all(isinstance(s, str) for s in subprotocols)
        ):
            raise TypeError("subprotocols must be a list of str")
        path, default = resolve_socket(relay)
        upstream = upstream_url(url)
        _parse_url(upstream)  # an invalid URL fails here, not on the first attempt
        super().__init__(
            upstream,
            headers=headers,
            subprotocols=subprotocols,
            max_size=max_size,
            compression=compression,
            open_timeout=open_timeout,
            close_timeout=close_timeout,
            allow_insecure_credentials=allow_insecure_credentials,
        )
        if not callable(headers):
            # Static headers are encoded once: too large a handshake fails here.
            encode_spec(
                upstream,
                _header_list(headers),
                **self._spec_options(),
            )
        self.socket_path = path
        """The relay's Unix socket."""
        self._default_socket = default
        self._start_timeout = check_timeout(start_timeout, "start_timeout")
        self.display_url = f"{self.display_url} via relay {path}"

    def _spec_options(self) -> dict[str, Any]:
        options = self._options
        return {
            "subprotocols": options.get("subprotocols"),
            "compression": options.get("compression"),
            "max_size": options.get("max_size"),
            "open_timeout": options.get("open_timeout"),
            "allow_insecure_credentials": bool(options.get("allow_insecure_credentials")),
        }

    async def __call__(self) -> Transport:
        url = self._url
        assert isinstance(url, str)
        headers = _header_list(await _resolve(self._headers))
        # Credentials go on to the upstream over the network: the rule of a direct
        # connection applies (the Unix socket to the relay is not the whole path).
        check_url_credentials(
            url,
            headers,
            allow_insecure_credentials=bool(self._options.get("allow_insecure_credentials")),
        )
        spec = encode_spec(url, headers, **self._spec_options())
        if self._default_socket:
            # In a shared temporary directory, someone else's socket could be waiting.
            prepare_private_dir(os.path.dirname(self.socket_path))
        starts = 0
        while True:
            try:
                return await self._open(spec)
            except _NoRelay as exc:
                # Again if a relay that answered the start's probe stopped since (idle).
                if starts == _MAX_STARTS:
                    raise ConnectError(
                        f"the relay on {self.socket_path} was started but does not answer"
                    ) from exc.__cause__
            starts += 1
            await start_relay(self.socket_path, timeout=self._start_timeout)

    async def _open(self, spec: list[tuple[str, str]]) -> Transport:
        options = self._options
        try:
            return await connect_transport(
                "ws://localhost/",
                headers=spec,
                subprotocols=options.get("subprotocols"),
                compression=None,  # pointless on a Unix socket
                max_size=options.get("max_size"),
                open_timeout=options.get("open_timeout"),
                close_timeout=options["close_timeout"],
                unix_socket=self.socket_path,
            )
        except ConnectTimeout:
            raise
        except ConnectError as exc:
            if exc.status is None:
                # No socket, refused, or closed mid-handshake (a relay stopping):
                # nobody serves it; starting one is the answer.
                raise _NoRelay() from exc
            raise ConnectError(
                f"relay {self.socket_path}: {_relay_reason(exc)}",
                status=exc.status,
                retry_after=exc.retry_after,
            ) from exc

    def __repr__(self) -> str:
        return f"<RelayFactory {self.display_url}>"


def _relay_reason(exc: ConnectError) -> str:
    """The relay's explanation of a refused handshake (its response's body), or the status."""
    response = getattr(exc.__cause__, "response", None)
    body = getattr(response, "body", None)
    if isinstance(body, (bytes, bytearray)) and body.strip():
        return cut(bytes(body).decode("utf-8", "replace").strip(), 500)
    return str(exc)


async def start_relay(path: str, *, timeout: float = START_TIMEOUT) -> None:  # noqa: ASYNC109
    """Start a relay on ``path`` unless one answers there; return once one does.

    Processes starting at once take turns on the lock file ``PATH.start``: the
    first starts the relay, the others find it answering.
    """
    try:
        with anyio.fail_after(timeout):
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW  # no planted link
            fd = os.open(f"{path}.start", flags, 0o600)
            try:
                await lock_file(fd)
                if await relay_answers(path):
                    return
                await _spawn(path)
            finally:
                os.close(fd)  # releases the lock
    except TimeoutError:
        raise ConnectTimeout(
            f"starting the relay on {path} took longer than {timeout:g}s"
        ) from None
    except OSError as exc:
        raise ConnectError(f"cannot start a relay on {path}: {exc.strerror or exc}") from exc


async def lock_file(fd: int) -> None:
    """Take an exclusive ``flock`` on ``fd``, trying again while another process holds it.

    Polled rather than blocking in a thread: a blocked ``flock`` cannot be
    cancelled, and would take the lock after its caller gave up.
    """
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        await anyio.sleep(_LOCK_POLL)


async def relay_answers(path: str) -> bool:
    """Whether something accepts connections on the Unix socket ``path``."""
    try:
        stream = await anyio.connect_unix(path)
    except OSError:
        return False
    await stream.aclose()
    return True


async def _spawn(path: str) -> None:
    """Run ``wsclient relay`` for ``path``: it returns once the detached relay listens."""
    command = [sys.executable, "-m", "wsclient", "relay", "--socket", path]
    log = os.environ.get("WSCLIENT_RELAY_LOG")
    if log:
        command += ["--log-file", log]
    result = await anyio.run_process(command, check=False, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = cut(lines[-1], 300) if lines else f"exit code {result.returncode}"
        raise ConnectError(f"could not start a relay on {path}: {detail}")
