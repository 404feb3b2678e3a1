"""Codecs turn application values into WebSocket payloads and back.

A codec is the only place that serialises: upper layers hand it Python values
and the transport sends what it returns. ``encode`` may return ``bytes`` meant
for a *text* frame (orjson produces UTF-8 bytes); ``Codec.text`` says which
frame type its output belongs in, so no layer re-encodes to ``str`` on the way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import orjson

from ._exceptions import ProtocolError

__all__ = ["Codec", "JsonCodec", "RawCodec"]


class Codec(ABC):
    """Encode outgoing values to frame payloads and decode incoming ones."""

    text: bool = True
    """True when [`encode()`][wsclient.Codec.encode] output goes in a text frame (it is UTF-8)."""

    @abstractmethod
    def encode(self, value: Any) -> str | bytes:
        """Serialise ``value`` into a frame payload."""

    @abstractmethod
    def decode(self, data: str | bytes) -> Any:
        """Parse a received frame payload; raise [`ProtocolError`][wsclient.ProtocolError] on bad
        input."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class JsonCodec(Codec):
    """JSON through orjson: ``encode`` returns UTF-8 bytes for a text frame.

    Both text and binary frames are decoded as JSON, since servers differ in
    which they use. ``option`` is passed to ``orjson.dumps()`` (for example
    ``orjson.OPT_NON_STR_KEYS``).
    """

    text = True

    def __init__(self, *, option: int | None = None) -> None:
        self._option = option

    def encode(self, value: Any) -> bytes:
        try:
            return orjson.dumps(value, option=self._option)
        except TypeError as exc:
            raise TypeError(f"cannot encode {type(value).__name__} as JSON: {exc}") from exc

    def decode(self, data: str | bytes) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"received invalid JSON: {exc}") from exc


class RawCodec(Codec):
    """No serialisation: ``str`` goes in text frames and ``bytes`` in binary frames."""

    text = True

    def encode(self, value: Any) -> str | bytes:
        if isinstance(value, (str, bytes)):
            return value
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value)
        raise TypeError(f"RawCodec sends str or bytes, not {type(value).__name__}")

    def decode(self, data: str | bytes) -> str | bytes:
        return data
