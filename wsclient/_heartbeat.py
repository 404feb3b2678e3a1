"""Heartbeat: notice a connection that is open but dead (a zombie).

A NAT that forgot the flow, a server that hung, a cable pulled between two
routers: the socket stays open and nothing arrives. :class:`Heartbeat` is the
configuration; :class:`HeartbeatWatch` is the bookkeeping for one connection,
pure and clock-agnostic, driven by the connection's reader:

* Any inbound byte counts as life: a busy connection is never probed.
* After ``interval`` seconds with nothing received, the reader sends a probe
  (a protocol ping, or the dialect's ping message) and waits ``timeout``
  seconds for anything at all to arrive.
* Nothing arrived: the connection is declared dead (``HeartbeatTimeout``).
* A deadline noticed far too late means the process was suspended (a laptop
  lid, a stopped container, a debugger): the silence is ours, not the
  server's, so the watch sends a fresh probe and grants one more interval.

The watch costs no task: the reader waits for messages under a single cancel
scope whose deadline is the watch's, so a thousand idle connections cost a
thousand timers, one tick per interval each.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

__all__ = ["Heartbeat"]


@dataclass(frozen=True, kw_only=True)
class Heartbeat:
    """How often to check that the server is still there, and how long to wait for it.

    Attributes:
        interval: seconds of inbound silence before a probe is sent.
        timeout: seconds to wait, after a probe, for anything from the server.
        app_level: probe with the dialect's ping message instead of a
            WebSocket ping frame, for servers (or proxies) that want one.
    """

    interval: float = 20.0
    timeout: float = 10.0
    app_level: bool = False

    def __post_init__(self) -> None:
        for name in ("interval", "timeout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"heartbeat {name} must be a positive number, not {value!r}")


class Verdict(enum.Enum):
    """What the reader does when the watch's deadline passes."""

    ALIVE = "alive"  # something arrived: wait another interval
    PROBE = "probe"  # silence: send a probe, wait for an answer
    DEAD = "dead"  # silence after a probe: fail the connection


class HeartbeatWatch:
    """The heartbeat state of one connection; see the module docstring.

    ``activity`` is any counter that grows when something is received (the
    transport's ``bytes_received``); the watch only compares its values.
    """

    __slots__ = ("_activity", "_probing", "config", "deadline", "grace_periods", "probes")

    def __init__(self, config: Heartbeat, *, now: float, activity: int) -> None:
        self.config = config
        self.deadline = now + config.interval
        self.probes = 0
        self.grace_periods = 0
        self._activity = activity
        self._probing = False

    @property
    def probing(self) -> bool:
        """True while a probe waits for an answer."""
        return self._probing

    def check(self, *, now: float, activity: int) -> Verdict:
        """Decide what to do now that the deadline has passed."""
        config = self.config
        late = now - self.deadline
        if activity != self._activity:
            self._activity = activity
            self._probing = False
            self.deadline = now + config.interval
            return Verdict.ALIVE
        if late > config.interval:
            # We slept through our own deadline: the process, not the peer,
            # was silent. Probe again and give the answer a full interval.
            self.grace_periods += 1
            self._probe(now, config.interval)
            return Verdict.PROBE
        if not self._probing:
            self._probe(now, config.timeout)
            return Verdict.PROBE
        return Verdict.DEAD

    def answered(self, *, now: float, activity: int) -> None:
        """A probe's answer arrived (a pong): back to waiting an interval."""
        self._activity = activity
        self._probing = False
        self.deadline = now + self.config.interval

    def restart(self, *, now: float, activity: int) -> None:
        """Start a fresh interval (after the reader was paused by a slow consumer)."""
        self.answered(now=now, activity=activity)

    def _probe(self, now: float, wait: float) -> None:
        self.probes += 1
        self._probing = True
        self.deadline = now + wait

    def __repr__(self) -> str:
        state = "probing" if self._probing else "waiting"
        return f"<HeartbeatWatch {state} deadline={self.deadline:.3f} probes={self.probes}>"
