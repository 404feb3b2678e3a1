"""wsclient: a resilient, fast, typed WebSocket client SDK for asyncio and trio."""

from ._backoff import Backoff, Jitter
from ._buffer import BufferPolicy, BufferStatistics, InboundOverflow
from ._channels import (
    ChannelStatistics,
    Subscription,
    SubscriptionState,
    SubscriptionStatistics,
)
from ._client import Client, ClientStatistics, connect
from ._codec import Codec, JsonCodec, RawCodec
from ._correlator import InFlight, RequestStatistics
from ._dialect import DefaultDialect, Dialect, Inbound, Route
from ._exceptions import (
    ConnectError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    ConnectionLost,
    ConnectTimeout,
    HeartbeatTimeout,
    InsecureCredentials,
    InvalidState,
    InvalidURL,
    MessageTooBig,
    ProtocolError,
    QueueFull,
    ReconnectFailed,
    RemoteError,
    RequestTimeout,
    WSClientError,
)
from ._heartbeat import Heartbeat
from ._jsonrpc import JsonRpcDialect
from ._mux import Session, SessionStatistics
from ._outbound import Overflow, QueuePolicy, QueueStatistics
from ._pool import Pool, PoolPolicy, PoolStatistics, PoolSubscription
from ._reconnect import (
    ConnectionState,
    ConnectionStatistics,
    ReconnectingTransport,
    StateChange,
    WebSocketFactory,
    is_retryable,
)
from ._relay import Relay, RelayState, RelayStatistics, UpstreamStatistics
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
    "BufferPolicy",
    "BufferStatistics",
    "ChannelStatistics",
    "Client",
    "ClientStatistics",
    "Codec",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "ConnectionLost",
    "ConnectionState",
    "ConnectionStatistics",
    "DefaultDialect",
    "Dialect",
    "Heartbeat",
    "HeartbeatTimeout",
    "InFlight",
    "Inbound",
    "InboundOverflow",
    "InsecureCredentials",
    "InvalidState",
    "InvalidURL",
    "Jitter",
    "JsonCodec",
    "JsonRpcDialect",
    "MessageTooBig",
    "Overflow",
    "Pool",
    "PoolPolicy",
    "PoolStatistics",
    "PoolSubscription",
    "ProtocolError",
    "QueueFull",
    "QueuePolicy",
    "QueueStatistics",
    "RawCodec",
    "ReconnectFailed",
    "ReconnectingTransport",
    "Relay",
    "RelayState",
    "RelayStatistics",
    "RemoteError",
    "RequestStatistics",
    "RequestTimeout",
    "Route",
    "Session",
    "SessionStatistics",
    "StateChange",
    "Subscription",
    "SubscriptionState",
    "SubscriptionStatistics",
    "Transport",
    "TransportState",
    "TransportStatistics",
    "UpstreamStatistics",
    "WSClientError",
    "WebSocketFactory",
    "WebSocketTransport",
    "__version__",
    "connect",
    "connect_transport",
    "is_retryable",
]
