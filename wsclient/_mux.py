"""Sessions: many logical clients on one shared connection (the SharedWorker pattern).

A [`Session`][wsclient.Session] has its own id, carried in what it sends (``from``). The
server copies ``from`` onto its answers, so a message addressed to a session
goes to that session only; a message with no ``from`` goes to every session
(and the client). Replies find their request by id, whichever session asked.
Closing a session fails its own pending requests and drops its own
subscriptions, nothing else.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._buffer import BufferPolicy, BufferStatistics, InboundBuffer
from ._endpoint import Endpoint
from ._exceptions import InvalidState
from ._reconnect import ConnectionState, StateCallback, StateChange

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["Session", "SessionStatistics"]

logger = logging.getLogger("wsclient.mux")


@dataclass(frozen=True)
class SessionStatistics:
    """Counters of one [`Session`][wsclient.Session]."""

    id: str
    """The session's id."""
    closed: bool
    """Whether the session is closed."""
    pending_requests: int
    """Its requests waiting for a reply now."""
    subscriptions: int
    """Its subscriptions open now."""
    messages: BufferStatistics
    """The buffer of its unhandled messages: addressed to it, or to everyone."""


class Session(Endpoint):
    """One logical client on a [`Client`][wsclient.Client]'s shared connection.

    Made by [`Client.session()`][wsclient.Client.session]; use it as an async context manager or
    close it with [`aclose()`][wsclient.Session.aclose]. It offers the client's messaging API
    (``request``, ``query``, ``command``, ``publish_event``, ``send``,
    ``subscribe``, ``publish``, ``async for``), and [`on_state()`][wsclient.Session.on_state] for
    the shared connection's state changes. Authentication belongs to the
    connection: call it on the client.
    """

    def __init__(self, client: Client, session_id: str, policy: BufferPolicy) -> None:
        self._client = client
        self._origin = session_id
        self._messages = InboundBuffer(policy, name=f"session {session_id}")
        self._state_callbacks: list[StateCallback] = []
        self._closed = False

    @property
    def id(self) -> str:
        """This session's id, sent as ``from``."""
        return str(self._origin)

    @property
    def closed(self) -> bool:
        """Whether the session is closed (by ``aclose()``, or with its client)."""
        return self._closed

    def _check_usable(self) -> None:
        if self._closed:
            raise self._closed_reason()

    def _closed_reason(self) -> BaseException:
        if self._client.state is ConnectionState.CLOSED:
            return super()._closed_reason()
        return InvalidState(f"session {self.id} is closed")

    def on_state(self, callback: StateCallback) -> StateCallback:
        """Call ``callback(change)`` on every state change of the shared connection.

        It must not block. Returns ``callback``, so it can be a decorator.
        """
        self._state_callbacks.append(callback)
        return callback

    async def aclose(self) -> None:
        """Close the session: its pending requests fail, its subscriptions end. Idempotent."""
        if self._closed:
            return
        self._closed = True
        client = self._client
        client._mux.remove(self)
        self._messages.close()
        self._state_callbacks.clear()
        client._correlator.fail(InvalidState(f"session {self.id} was closed"), origin=self._origin)
        for frame in client._channels.release_origin(self._origin):
            await client._send_frame_quietly(frame)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def statistics(self) -> SessionStatistics:
        client = self._client
        return SessionStatistics(
            id=self.id,
            closed=self._closed,
            pending_requests=client._correlator.pending_for(self._origin),
            subscriptions=client._channels.count_for(self._origin),
            messages=self._messages.statistics(),
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.state.name
        return f"<Session {self.id} {state} pending={len(self._messages)}>"

    def _state_changed(self, change: StateChange) -> None:
        for callback in list(self._state_callbacks):
            try:
                callback(change)
            except Exception:
                logger.exception("session %s: state callback raised", self.id)


class Mux:
    """The sessions of one client, and where unaddressed messages go."""

    def __init__(self, client: Client, policy: BufferPolicy) -> None:
        self._client = client
        self._policy = policy
        self._sessions: dict[str, Session] = {}
        self.unknown_origin = 0  # messages addressed to no session we have

    def __len__(self) -> int:
        return len(self._sessions)

    def new(self, session_id: str | None = None) -> Session:
        if session_id is None:
            session_id = uuid.uuid4().hex
        elif not isinstance(session_id, str) or not session_id:
            raise ValueError(f"a session id is a non-empty string, not {session_id!r}")
        if session_id in self._sessions:
            raise ValueError(f"a session {session_id!r} is already open on this client")
        session = Session(self._client, session_id, self._policy)
        self._sessions[session_id] = session
        return session

    def remove(self, session: Session) -> None:
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]

    def route(self, message: Any, origin: Any, own: InboundBuffer[Any]) -> None:
        """Hand an unconsumed message to its session, or (no ``from``) to everyone."""
        if origin is not None:
            session = self._sessions.get(origin) if isinstance(origin, str) else None
            if session is not None:
                session._messages.put_nowait(message)
                return
            self.unknown_origin += 1
            own.put_nowait(message)
            return
        own.put_nowait(message)
        for session in self._sessions.values():
            session._messages.put_nowait(message)

    def state_changed(self, change: StateChange) -> None:
        for session in list(self._sessions.values()):
            session._state_changed(change)

    def close(self, error: BaseException | None) -> None:
        """The client closed: every session ends."""
        for session in list(self._sessions.values()):
            session._closed = True
            session._messages.close(error)
            session._state_callbacks.clear()
        self._sessions.clear()
