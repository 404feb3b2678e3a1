"""Heartbeat: notice a connection that is open but dead (a zombie).

A NAT that forgot the flow, a server that hung, a cable pulled between two
routers: the socket stays open and nothing arrives. [`Heartbeat`][wsclient.Heartbeat] is the
configuration; ``HeartbeatWatch`` is the bookkeeping for one connection,
pure and clock-agnostic, driven by the connection's reader:

* Any inbound byte counts as life: a busy connection is never probed.
* Once nothing has been received for ``interval`` seconds, the reader sends a probe
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
from dataclasses import dataclass

from ._checks import is_finite_number

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
            if not (is_finite_number(value) and value > 0):
                raise ValueError(f"heartbeat {name} must be a positive number, not {value!r}")


class Verdict(enum.Enum):
    """What the reader does when the watch's deadline passes."""

    ALIVE = "alive"  # heard from the server lately: wait until the next deadline
    PROBE = "probe"  # silence for an interval: send a probe, wait for an answer
    DEAD = "dead"  # silence after a probe: fail the connection


class HeartbeatWatch:
    """The heartbeat state of one connection; see the module docstring.

    ``last_received`` is when the transport last received anything (its
    ``statistics().last_received_at``), on the same clock as ``now``. The
    watch probes once nothing has arrived for ``interval`` seconds, so a link
    that goes silent is declared dead ``interval + timeout`` after the last
    thing it delivered.
    """

    __slots__ = ("_probed_at", "_since", "config", "deadline", "grace_periods", "probes")

    def __init__(self, config: Heartbeat, *, now: float) -> None:
        self.config = config
        self.deadline = now + config.interval
        self.probes = 0
        self.grace_periods = 0
        self._since = now  # the connection opening counts as hearing from the server
        self._probed_at: float | None = None

    @property
    def probing(self) -> bool:
        """True while a probe waits for an answer."""
        return self._probed_at is not None

    def unanswered(self, last_received: float | None) -> bool:
        """True while a probe went out and nothing has arrived since (as in ``check()``)."""
        probed_at = self._probed_at
        return probed_at is not None and (last_received is None or last_received < probed_at)

    def check(self, *, now: float, last_received: float | None) -> Verdict:
        """Decide what to do now that the deadline has passed."""
        config = self.config
        heard = self._since if last_received is None else max(last_received, self._since)
        quiet_until = heard + config.interval
        if now < quiet_until:  # compared as computed, so float rounding cannot loop
            self._probed_at = None
            self.deadline = quiet_until
            return Verdict.ALIVE
        if now - self.deadline > config.interval:
            # We slept through our own deadline: the process, not the peer,
            # was silent. Probe again and give the answer a full interval.
            self.grace_periods += 1
            self._probe(now, config.interval)
            return Verdict.PROBE
        probed_at = self._probed_at
        if probed_at is not None and heard < probed_at:
            return Verdict.DEAD
        self._probe(now, config.timeout)
        return Verdict.PROBE

    def restart(self, *, now: float) -> None:
        """Start a fresh interval: after a probe's answer, or a pause of the reader."""
        self._since = now
        self._probed_at = None
        self.deadline = now + self.config.interval

    def _probe(self, now: float, wait: float) -> None:
        self.probes += 1
        self._probed_at = now
        self.deadline = now + wait

    def __repr__(self) -> str:
        state = "probing" if self.probing else "waiting"
        return f"<HeartbeatWatch {state} deadline={self.deadline:.3f} probes={self.probes}>"
