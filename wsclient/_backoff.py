"""When to try again: exponential backoff with jitter, attempt and time limits.

[`Backoff`][wsclient.Backoff] is the policy, a frozen value users configure.
``RetrySchedule`` applies it to one outage: it counts the attempts made
since the link was lost and answers "how long until the next one, or give
up?". The delays and stop conditions are tenacity's strategies; the clock is
the caller's (``anyio.current_time()``), so a fake clock drives them exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from tenacity import RetryCallState
from tenacity.stop import stop_after_attempt, stop_any, stop_base, stop_before_delay, stop_never
from tenacity.wait import (
    wait_base,
    wait_combine,
    wait_exponential,
    wait_random_exponential,
)

from ._checks import is_finite_number

__all__ = ["Backoff", "Jitter"]

Jitter = Literal["full", "equal", "none"]
"""How a delay of [`Backoff`][wsclient.Backoff] is randomised (see ``Backoff.jitter``)."""
_JITTERS = ("full", "equal", "none")


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """How long to wait between connection attempts, and when to give up.

    The delay before attempt *n* of an outage is
    ``min(maximum, initial * factor ** (n - 1))``, randomised by ``jitter``:
    ``"full"`` draws it uniformly from zero to that value (clients that lost
    the same server spread out instead of returning together), ``"equal"``
    keeps at least half of it, ``"none"`` uses it as is. The defaults and why
    they were chosen are in the docs (how-to/resilience).

    Attributes:
        initial: seconds before the first attempt (before jitter).
        maximum: the longest delay, in seconds.
        factor: how much each delay grows over the one before.
        jitter: ``"full"``, ``"equal"`` or ``"none"``.
        max_attempts: give up after this many failed attempts in a row (None: never).
        deadline: give up when the next attempt would start this many seconds
            or more after the outage began (None: never).
        min_uptime: a connection that dies within this many seconds of opening
            counts as a failed attempt, so the backoff keeps growing instead of
            starting over (a server that accepts and then drops at once).
    """

    initial: float = 1.0
    maximum: float = 30.0
    factor: float = 2.0
    jitter: Jitter = "full"
    max_attempts: int | None = None
    deadline: float | None = None
    min_uptime: float = 5.0

    def __post_init__(self) -> None:
        for name in ("initial", "maximum", "factor", "min_uptime"):
            _require_number(name, getattr(self, name))
        if self.initial <= 0:
            raise ValueError(f"initial must be a positive number of seconds, not {self.initial!r}")
        if self.maximum < self.initial:
            raise ValueError(f"maximum ({self.maximum!r}) must be at least initial")
        if self.factor < 1:
            raise ValueError(f"factor must be at least 1, not {self.factor!r}")
        if self.jitter not in _JITTERS:
            raise ValueError(f"jitter must be one of {', '.join(_JITTERS)}, not {self.jitter!r}")
        attempts = self.max_attempts
        if attempts is not None and (type(attempts) is not int or attempts < 1):
            raise ValueError(f"max_attempts must be None or an int of at least 1, not {attempts!r}")
        if self.deadline is not None:
            _require_number("deadline", self.deadline)
            if self.deadline <= 0:
                raise ValueError(f"deadline must be None or positive, not {self.deadline!r}")
        if self.min_uptime < 0:
            raise ValueError(f"min_uptime must be zero or more seconds, not {self.min_uptime!r}")

    def wait_strategy(self) -> wait_base:
        """The tenacity wait strategy for these settings."""
        if self.jitter == "full":
            return wait_random_exponential(
                multiplier=self.initial, max=self.maximum, exp_base=self.factor
            )
        if self.jitter == "equal":
            half = {"multiplier": self.initial / 2, "max": self.maximum / 2}
            return wait_combine(
                wait_exponential(exp_base=self.factor, **half),
                wait_random_exponential(exp_base=self.factor, **half),
            )
        return wait_exponential(multiplier=self.initial, max=self.maximum, exp_base=self.factor)

    def stop_strategy(self) -> stop_base:
        """The tenacity stop strategy for these settings."""
        stops: list[stop_base] = []
        if self.max_attempts is not None:
            stops.append(stop_after_attempt(self.max_attempts))
        if self.deadline is not None:
            stops.append(stop_before_delay(self.deadline))
        return stop_any(*stops) if stops else stop_never

    def delays(self) -> Iterator[float]:
        """The delays before attempts 1, 2, ... if every attempt failed at once.

        Ends after ``max_attempts`` delays, or when the next attempt would
        start at or past ``deadline``; endless when neither is set.
        """
        schedule = RetrySchedule(self, start=0.0)
        now = 0.0
        while (delay := schedule.next_delay(now)) is not None:
            now += delay
            yield delay


def _require_number(name: str, value: object) -> None:
    if not is_finite_number(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")


class RetrySchedule:
    """The attempts of one outage: how long to wait before each, and when to stop.

    ``attempts`` counts the attempts made so far, all of which failed (a
    connection that died within ``min_uptime`` counts as one). Attempts made
    before the schedule began (the very first connection failed) are
    ``prior_attempts``: they count toward ``max_attempts``, but the delays
    still start at ``initial``. Call ``next_delay()`` before each attempt.
    """

    def __init__(
        self, backoff: Backoff, *, start: float, attempts: int = 0, prior_attempts: int = 0
    ) -> None:
        self.backoff = backoff
        self.start = start
        self.attempts = attempts + prior_attempts
        # Attempts made before the schedule began (a first connection that
        # failed) count toward max_attempts, but the delays start at initial.
        self._before = prior_attempts
        self._wait = backoff.wait_strategy()
        self._stop = backoff.stop_strategy()
        # tenacity's strategies read their inputs from a call state; we fill
        # one in by hand so that the time is ours, not time.monotonic().
        self._state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        self._state.start_time = start

    def next_delay(self, now: float, *, at_least: float = 0.0) -> float | None:
        """Seconds to wait before the next attempt, or None to give up.

        ``at_least`` raises the delay (a server's ``Retry-After``); a delay
        that would start the attempt past ``deadline`` gives up instead.
        """
        state = self._state
        # The wait strategy numbers the retries of this schedule from 1.
        state.attempt_number = self.attempts - self._before + 1
        delay = max(float(self._wait(state)), at_least)
        state.attempt_number = self.attempts  # failed so far
        state.outcome_timestamp = now
        state.upcoming_sleep = delay
        if self._stop(state):
            return None
        self.attempts += 1
        return delay

    def __repr__(self) -> str:
        return f"<RetrySchedule attempts={self.attempts} {self.backoff!r}>"
