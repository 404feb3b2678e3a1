"""wsclient: a resilient, fast, typed WebSocket client SDK for asyncio and trio."""

from ._codec import Codec, JsonCodec, RawCodec
from ._exceptions import (
    ConnectError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    ConnectTimeout,
    InvalidState,
    InvalidURL,
    MessageTooBig,
    ProtocolError,
    WSClientError,
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
    "Codec",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "InvalidState",
    "InvalidURL",
    "JsonCodec",
    "MessageTooBig",
    "ProtocolError",
    "RawCodec",
    "Transport",
    "TransportState",
    "TransportStatistics",
    "WSClientError",
    "WebSocketTransport",
    "__version__",
    "connect_transport",
]
