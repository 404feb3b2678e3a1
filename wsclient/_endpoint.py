"""The messaging API a [`Client`][wsclient.Client] and its sessions share.

An endpoint is a client, or one session on a client's shared connection
(its ``origin``, the session id, rides along in what it sends). Everything
here delegates to the client's machinery with that origin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from ._buffer import BufferPolicy, InboundBuffer
from ._channels import DeliveryCallback, Subscription
from ._correlator import InFlight
from ._reconnect import ConnectionState

if TYPE_CHECKING:
    from ._client import Client

__all__: list[str] = []


class Endpoint:
    """Requests, events, channels and unhandled messages, for one origin."""

    _client: Client
    _origin: Any
    _messages: InboundBuffer[Any]

    def _check_usable(self) -> None:
        """Raise if this endpoint may not send any more (a closed session)."""

    async def send(self, message: Any) -> bool:
        """Encode ``message`` with the codec and send it, or queue it while offline.

        Returns False if the queue's ``drop_newest`` policy dropped it.
        A session's message is marked with its id (the dialect's ``address``).
        """
        self._check_usable()
        if self._origin is not None:
            message = self._client.dialect.address(message, self._origin)
        return await self._client._send_frame(message)

    async def request(
        self,
        type: str,
        payload: Any = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a high-level convenience
        in_flight: InFlight | None = None,
    ) -> Any:
        """Send a request of kind ``type`` and return its reply's payload.

        Args:
            type: the request's kind (``"query"``, ``"command"``, ``"auth"``,
                or a JSON-RPC method name with that dialect).
            payload: what the request carries.
            timeout: seconds to wait for the reply, queueing included (default:
                the client's ``request_timeout``; ``math.inf`` waits as long as
                the connection lives).
            in_flight: what happens if the connection drops while the request
                is in flight: ``"fail"`` raises [`ConnectionLost`][wsclient.ConnectionLost]
                at once, ``"resend"`` sends it again after the reconnect (for
                idempotent requests only). Default: the client's ``in_flight``.

        Raises:
            RemoteError: the server answered with an error.
            RequestTimeout: no reply in time.
            ConnectionLost: the connection dropped with the request in flight.
            QueueFull: the outbound queue refused or dropped the request.
        """
        self._check_usable()
        return await self._client._request(type, payload, timeout, in_flight, self._origin)

    async def query(
        self,
        resource: str,
        parameters: Any = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        in_flight: InFlight | None = None,
    ) -> Any:
        """Ask for ``resource``; returns the reply's payload (see
        [`request()`][wsclient.Client.request])."""
        self._check_usable()
        kind, payload = self._client.dialect.query(resource, parameters)
        return await self._client._request(kind, payload, timeout, in_flight, self._origin)

    async def command(
        self,
        action: str,
        parameters: Any = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        in_flight: InFlight | None = None,
    ) -> Any:
        """Have the server do ``action``; returns the reply's payload (see
        [`request()`][wsclient.Client.request]).

        Commands are rarely idempotent: leave ``in_flight`` at ``"fail"``
        unless the server deduplicates them.
        """
        self._check_usable()
        kind, payload = self._client.dialect.command(action, parameters)
        return await self._client._request(kind, payload, timeout, in_flight, self._origin)

    async def publish_event(self, event: str, data: Any = None) -> bool:
        """Send a fire-and-forget event; no reply is expected. False if the queue dropped it."""
        self._check_usable()
        client = self._client
        frame = client.dialect.event(client._correlator.new_id(), event, data, origin=self._origin)
        return await client._send_frame(frame)

    def subscribe(
        self,
        channel: str,
        *,
        callback: DeliveryCallback | None = None,
        buffer: BufferPolicy | None = None,
    ) -> Subscription:
        """Subscribe to ``channel``: ``async with client.subscribe("prices") as sub``.

        Iterate the subscription for each delivery's data, or give
        ``callback`` (called in the reader task; it must not block) and open
        it with ``await client.subscribe(...)``. ``buffer`` overrides the
        client's ``subscriber_buffer`` policy for this subscriber.
        """
        self._check_usable()
        return self._client._channels.subscription(
            channel, callback=callback, buffer=buffer, origin=self._origin, check=self._check_usable
        )

    async def publish(self, channel: str, data: Any) -> bool:
        """Publish ``data`` on ``channel``; False if the queue dropped it."""
        self._check_usable()
        return await self._client._send_frame(self._client.dialect.publish(channel, data))

    @property
    def state(self) -> ConnectionState:
        """The shared connection's state."""
        return self._client._rt.state

    async def wait_state(self, *states: ConnectionState) -> ConnectionState:
        """Return once the connection's state is one of ``states`` (see ReconnectingTransport)."""
        return await self._client._rt.wait_state(*states)

    async def receive(self) -> Any:
        """The next message that no layer consumed (not a reply, delivery or heartbeat).

        Raises once the endpoint is closed and its messages are read.
        """
        try:
            return await self._messages.get()
        except anyio.EndOfStream:
            pass
        # Raised outside the except block: the reason may be an exception
        # shared with other callers, whose cause must stay as it is.
        raise self._closed_reason()

    def _closed_reason(self) -> BaseException:
        return self._client._rt._closed_reason()

    def __aiter__(self) -> Endpoint:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._messages.get()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
