"""The exceptions wsclient raises.

Every error is a [`WSClientError`][wsclient.WSClientError]; foreign errors (``OSError``, ``ssl``,
``websockets``, anyio) are translated once, at the transport boundary, and
chained with ``raise ... from original`` so the cause stays visible:

```text
WSClientError
├── InvalidURL                    (also a ValueError)
├── InsecureCredentials           credentials over ws:// to another host (also a ValueError)
├── ConnectError                  refused, DNS, TLS, handshake rejected (.status, .retry_after)
│   └── ConnectTimeout            the opening handshake took too long
├── ConnectionClosed              (.code, .reason, .sent_code)
│   ├── ConnectionClosedOK        both sides closed with 1000, 1001 or no status (1005)
│   └── ConnectionClosedError     anything else: abrupt death, protocol error...
│       ├── MessageTooBig         a message exceeded a size limit (close code 1009)
│       └── HeartbeatTimeout      the server stopped answering: a zombie connection
├── ReconnectFailed               reconnecting gave up (.last_error, .attempts)
├── ConnectionLost                the connection dropped while a request was in flight
├── RequestTimeout                no reply within the request's timeout (also a TimeoutError)
├── RemoteError                   the server answered with an error (.code, .data, .request_id)
├── QueueFull                     a queue or buffer has no room for a message
├── ProtocolError                 the peer broke the WebSocket or message protocol
└── InvalidState                  the operation is not allowed in the current state
```

Messages never contain secrets: URLs are shown without their password and
query string, and headers are never shown.
"""

from __future__ import annotations

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "ConnectionLost",
    "HeartbeatTimeout",
    "InsecureCredentials",
    "InvalidState",
    "InvalidURL",
    "MessageTooBig",
    "ProtocolError",
    "QueueFull",
    "ReconnectFailed",
    "RemoteError",
    "RequestTimeout",
    "WSClientError",
]

# RFC 6455 7.4.1: codes that mean the connection ended as intended; 1005
# (7.1.5) is what an empty close frame, a close without a status, reads as.
OK_CLOSE_CODES = frozenset({1000, 1001, 1005})


class WSClientError(Exception):
    """Base class of every exception wsclient raises."""


class InvalidURL(WSClientError, ValueError):
    """The URL is not a valid ``ws://`` or ``wss://`` URL."""


class InsecureCredentials(WSClientError, ValueError):
    """Credentials would cross the network in clear text.

    Raised before anything is sent when credentials (user info in the URL, an
    ``Authorization``, ``Proxy-Authorization`` or ``Cookie`` header, or a call
    to ``authenticate()``) would go over ``ws://`` to a host other than this
    machine (loopback addresses, ``localhost`` and Unix sockets are exempt).
    Use ``wss://``, or opt out with ``allow_insecure_credentials=True``.
    """


class ConnectError(WSClientError):
    """Opening the connection failed: refused, DNS, TLS, or the handshake was rejected.

    ``status`` is the HTTP status when the server answered the handshake with
    something other than 101, else ``None``. ``retry_after`` is the server's
    ``Retry-After`` delay in seconds when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class ConnectTimeout(ConnectError):
    """The TCP, TLS or WebSocket opening handshake did not finish in time."""


class ConnectionClosed(WSClientError):
    """The WebSocket connection is closed.

    ``code`` and ``reason`` are those the peer sent (1006 and ``""`` when the
    connection died without a close frame); ``sent_code`` is the code we sent,
    if any.
    """

    def __init__(
        self,
        code: int,
        reason: str = "",
        *,
        sent_code: int | None = None,
        message: str | None = None,
    ) -> None:
        self.code = code
        self.reason = reason
        self.sent_code = sent_code
        super().__init__(message or self._describe())

    def _describe(self) -> str:
        if self.code == 1006:
            text = "connection closed abnormally (code 1006: no close frame received)"
        else:
            text = f"connection closed by the server with code {self.code}"
            if self.reason:
                text += f": {self.reason}"
        if self.sent_code is not None and self.sent_code != self.code:
            text += f"; we sent code {self.sent_code}"
        return text

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.code, self.reason), self.__dict__)


class ConnectionClosedOK(ConnectionClosed):
    """The connection was closed normally (1000, 1001 or no status code, both ways)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection was closed with an error, or died without a closing handshake."""


class MessageTooBig(ConnectionClosedError):
    """A message exceeded a size limit: ours (``max_size``) or the server's (code 1009)."""


class HeartbeatTimeout(ConnectionClosedError):
    """Nothing came from the server within the heartbeat's deadline after a probe.

    The connection was dropped (code 1006) because the server, or something
    between us, stopped answering while the socket stayed open.
    """

    def __init__(self, message: str) -> None:
        super().__init__(1006, "", message=message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self),), self.__dict__)


class ReconnectFailed(WSClientError):
    """Reconnecting gave up: the error was fatal, or attempts or time ran out.

    ``last_error`` is the error of the last attempt (also the ``__cause__``)
    and ``attempts`` the number of consecutive failed attempts.
    """

    def __init__(
        self, message: str, *, last_error: BaseException | None = None, attempts: int = 0
    ) -> None:
        super().__init__(message)
        self.last_error = last_error
        self.attempts = attempts


class ConnectionLost(WSClientError):
    """The connection dropped while this request was in flight.

    The server may or may not have processed it. Raised at once when the
    connection drops (the ``fail`` policy), or when the client closes with
    requests pending. ``__cause__`` is the error that ended the connection.
    """


class RequestTimeout(WSClientError, TimeoutError):
    """No reply came within the request's timeout; the waiter is gone."""


class RemoteError(WSClientError):
    """The server answered with an error.

    ``str(exc)`` is the server's message; ``code`` and ``data`` are what the
    protocol carries besides (JSON-RPC's error code and data), and
    ``request_id`` the id of the request it answers, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        data: object = None,
        request_id: object = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.data = data
        self.request_id = request_id

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self),), self.__dict__)


class QueueFull(WSClientError):
    """A queue or buffer is at its bound and its policy refuses the message."""


class ProtocolError(WSClientError):
    """The peer sent data that breaks the WebSocket protocol or the message protocol."""


class InvalidState(WSClientError):
    """The operation is not allowed in the object's current state."""


def closed_error(
    code: int, reason: str, *, sent_code: int | None = None, message: str | None = None
) -> ConnectionClosed:
    """Build the right ``ConnectionClosed`` subclass for a close code pair."""
    cls: type[ConnectionClosed]
    if code == 1009 or sent_code == 1009:
        cls = MessageTooBig
    elif code in OK_CLOSE_CODES and (sent_code is None or sent_code in OK_CLOSE_CODES):
        cls = ConnectionClosedOK
    else:
        cls = ConnectionClosedError
    return cls(code, reason, sent_code=sent_code, message=message)
