"""wsclient: a resilient, fast, typed WebSocket client SDK for asyncio and trio."""

from ._backoff import Backoff, Jitter
from ._codec import Codec, JsonCodec, RawCodec
from ._exceptions import (
    ConnectError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    ConnectTimeout,
    HeartbeatTimeout,
    InvalidState,
    InvalidURL,
    MessageTooBig,
    ProtocolError,
    QueueFull,
    ReconnectFailed,
    WSClientError,
)
from ._heartbeat import Heartbeat
from ._outbound import Overflow, QueuePolicy, QueueStatistics
from ._reconnect import (
    ConnectionState,
    ConnectionStatistics,
    ReconnectingTransport,
    StateChange,
    WebSocketFactory,
    is_retryable,
)
from ._transport import (
    Transport,
    TransportState,
    TransportStatistics,
    WebSocketTransport,
    connect_transport,
)
from ._version import __version__

__all__ = [
    "Backoff",
    "Codec",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "ConnectionState",
    "ConnectionStatistics",
    "Heartbeat",
    "HeartbeatTimeout",
    "InvalidState",
    "InvalidURL",
    "Jitter",
    "JsonCodec",
    "MessageTooBig",
    "Overflow",
    "ProtocolError",
    "QueueFull",
    "QueuePolicy",
    "QueueStatistics",
    "RawCodec",
    "ReconnectFailed",
    "ReconnectingTransport",
    "StateChange",
    "Transport",
    "TransportState",
    "TransportStatistics",
    "WSClientError",
    "WebSocketFactory",
    "WebSocketTransport",
    "__version__",
    "connect_transport",
    "is_retryable",
]
