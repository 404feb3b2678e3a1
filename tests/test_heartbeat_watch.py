"""Heartbeat and HeartbeatWatch: deadlines, probes and verdicts, driven by hand.

Pure logic: the watch is given ``now`` and ``last_received`` (when the
transport last received anything, or None) the way the connection's reader
gives them, so every deadline is checked exactly. interval 10 s and timeout
5 s throughout unless a test says otherwise; times are whole or dyadic
numbers so that the float arithmetic is exact.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import pytest

from wsclient._heartbeat import Heartbeat, HeartbeatWatch, Verdict

CONFIG = Heartbeat(interval=10.0, timeout=5.0)


def new_watch(now: float = 0.0, config: Heartbeat = CONFIG) -> HeartbeatWatch:
    return HeartbeatWatch(config, now=now)


# Normal operation


def test_first_deadline_is_one_interval_away() -> None:
    """A new watch waits one interval from the opening, with no probe sent."""
    watch = new_watch(now=100.0)
    assert watch.deadline == 110.0
    assert watch.probes == 0
    assert watch.grace_periods == 0
    assert not watch.probing


def test_silent_link_is_probed_then_declared_dead() -> None:
    """Last message at 3: ALIVE until 13, PROBE at 13 (due 18), DEAD at 18 with nothing new."""
    watch = new_watch(now=0.0)
    assert watch.check(now=10.0, last_received=3.0) is Verdict.ALIVE
    assert watch.deadline == 13.0
    assert not watch.probing
    assert watch.probes == 0
    assert watch.check(now=13.0, last_received=3.0) is Verdict.PROBE
    assert watch.deadline == 18.0
    assert watch.probing
    assert watch.probes == 1
    assert watch.check(now=18.0, last_received=3.0) is Verdict.DEAD
    assert watch.probes == 1
    assert watch.grace_periods == 0


def test_message_while_a_probe_waits_is_alive() -> None:
    """Probe sent at 13, a message at 16: the check at 18 is ALIVE with deadline 26."""
    watch = new_watch(now=0.0)
    watch.check(now=10.0, last_received=3.0)
    watch.check(now=13.0, last_received=3.0)
    assert watch.check(now=18.0, last_received=16.0) is Verdict.ALIVE
    assert watch.deadline == 26.0
    assert not watch.probing
    assert watch.probes == 1
    # Silence from then on: probed at 26, dead at 31.
    assert watch.check(now=26.0, last_received=16.0) is Verdict.PROBE
    assert watch.deadline == 31.0
    assert watch.check(now=31.0, last_received=16.0) is Verdict.DEAD
    assert watch.probes == 2


@pytest.mark.parametrize("last", [0.5, 3.0, 7.25, 9.75])
def test_probe_and_death_are_timed_from_the_last_message(last: float) -> None:
    """Silence is probed an interval after the last message, DEAD interval + timeout after it."""
    watch = new_watch(now=0.0)
    assert watch.check(now=10.0, last_received=last) is Verdict.ALIVE
    assert watch.deadline == last + 10.0
    assert watch.check(now=watch.deadline, last_received=last) is Verdict.PROBE
    assert watch.deadline == last + 15.0
    assert watch.check(now=watch.deadline, last_received=last) is Verdict.DEAD


def test_silence_from_the_opening_is_probed_then_dead() -> None:
    """Nothing received at all (None): the opening counts, so PROBE at +10 and DEAD at +15."""
    watch = new_watch(now=100.0)
    assert watch.check(now=110.0, last_received=None) is Verdict.PROBE
    assert watch.deadline == 115.0
    assert watch.check(now=115.0, last_received=None) is Verdict.DEAD


def test_message_older_than_the_opening_counts_as_the_opening() -> None:
    """A last_received before the watch started is no later than the opening: PROBE at +10."""
    watch = new_watch(now=100.0)
    assert watch.check(now=110.0, last_received=99.0) is Verdict.PROBE
    assert watch.deadline == 115.0


def test_message_during_the_interval_is_alive_without_a_probe() -> None:
    """A message at 8 of a 10 s interval: ALIVE at 10, next deadline 18, no probe."""
    watch = new_watch(now=0.0)
    assert watch.check(now=10.0, last_received=8.0) is Verdict.ALIVE
    assert watch.deadline == 18.0
    assert watch.probes == 0
    assert not watch.probing


def test_message_exactly_an_interval_ago_is_not_recent() -> None:
    """Silence of exactly one interval already probes: the test is now - last < interval."""
    watch = new_watch(now=0.0)
    assert watch.check(now=12.0, last_received=2.0) is Verdict.PROBE
    assert watch.deadline == 17.0


def test_busy_connection_is_never_probed() -> None:
    """A connection that receives something every second goes a day without a probe."""
    watch = new_watch(now=0.0)
    checks = 0
    while watch.deadline < 24 * 3600:
        now = watch.deadline
        assert watch.check(now=now, last_received=now - 1.0) is Verdict.ALIVE
        assert watch.deadline == now + 9.0
        checks += 1
    assert checks > 9000
    assert watch.probes == 0
    assert watch.grace_periods == 0


def test_timeout_longer_than_interval_probes_again_after_a_late_message() -> None:
    """With timeout > interval, a message after the probe but an interval old sends a new probe."""
    config = Heartbeat(interval=10.0, timeout=15.0)
    watch = new_watch(now=0.0, config=config)
    assert watch.check(now=10.0, last_received=None) is Verdict.PROBE
    assert watch.deadline == 25.0
    # Heard at the very moment of the probe: counts as an answer, not as silence.
    assert watch.check(now=25.0, last_received=10.0) is Verdict.PROBE
    assert watch.deadline == 40.0
    assert watch.probes == 2
    assert watch.grace_periods == 0


def test_timeout_longer_than_interval_still_dies_without_an_answer() -> None:
    """With timeout > interval, a message from before the probe does not save the link."""
    config = Heartbeat(interval=10.0, timeout=15.0)
    watch = new_watch(now=0.0, config=config)
    watch.check(now=10.0, last_received=None)
    assert watch.check(now=25.0, last_received=9.5) is Verdict.DEAD


def test_restart_after_an_answer_starts_a_fresh_interval() -> None:
    """restart() after a pong ends the probe and waits a full interval from the answer."""
    watch = new_watch(now=0.0)
    watch.check(now=10.0, last_received=3.0)
    watch.check(now=13.0, last_received=3.0)
    watch.restart(now=14.0)
    assert not watch.probing
    assert watch.deadline == 24.0
    assert watch.probes == 1
    # The last message predates the restart: silence since 14 probes at 24, not DEAD.
    assert watch.check(now=24.0, last_received=3.0) is Verdict.PROBE
    assert watch.deadline == 29.0
    assert watch.probes == 2
    assert watch.check(now=29.0, last_received=3.0) is Verdict.DEAD


def test_restart_after_a_pause_counts_as_hearing_from_the_server() -> None:
    """restart() after a pause: the interval runs from the restart; later messages still count."""
    watch = new_watch(now=0.0)
    watch.check(now=10.0, last_received=None)  # probing
    watch.restart(now=200.0)
    assert not watch.probing
    assert watch.deadline == 210.0
    assert watch.check(now=210.0, last_received=205.0) is Verdict.ALIVE
    assert watch.deadline == 215.0
    assert watch.check(now=215.0, last_received=150.0) is Verdict.PROBE


def test_probe_cycle_repeats_with_exact_deadlines() -> None:
    """Several probe/answer rounds keep exact deadlines and count every probe."""
    watch = new_watch(now=0.0)
    for round_number in range(1, 6):
        now = watch.deadline
        assert watch.check(now=now, last_received=None) is Verdict.PROBE
        assert watch.deadline == now + 5.0
        watch.restart(now=now + 2.0)
        assert watch.deadline == now + 12.0
        assert watch.probes == round_number
    assert watch.grace_periods == 0


# Late deadlines (suspended process, clock jump)


def test_deadline_noticed_over_an_interval_late_grants_a_grace_period() -> None:
    """Deadline 10 noticed at 21: PROBE with a full interval to answer, and one grace period."""
    watch = new_watch(now=0.0)
    assert watch.check(now=21.0, last_received=None) is Verdict.PROBE
    assert watch.deadline == 31.0
    assert watch.grace_periods == 1
    assert watch.probes == 1
    assert watch.probing


def test_silence_after_a_grace_period_is_dead() -> None:
    """Nothing received by the end of the grace period: DEAD."""
    watch = new_watch(now=0.0)
    watch.check(now=21.0, last_received=None)
    assert watch.check(now=31.0, last_received=None) is Verdict.DEAD
    assert watch.grace_periods == 1


def test_message_during_a_grace_period_is_alive() -> None:
    """A message at 25 during the grace period: ALIVE at 31, next deadline 35."""
    watch = new_watch(now=0.0)
    watch.check(now=21.0, last_received=None)
    assert watch.check(now=31.0, last_received=25.0) is Verdict.ALIVE
    assert watch.deadline == 35.0
    assert not watch.probing


def test_probe_deadline_noticed_late_grants_a_grace_period() -> None:
    """A suspension while a probe waits: a fresh probe with a full interval, not DEAD."""
    watch = new_watch(now=0.0)
    watch.check(now=10.0, last_received=None)  # probe, due at 15
    assert watch.check(now=25.5, last_received=None) is Verdict.PROBE
    assert watch.deadline == 35.5
    assert watch.probes == 2
    assert watch.grace_periods == 1
    assert watch.check(now=35.5, last_received=None) is Verdict.DEAD


def test_stale_message_does_not_prevent_a_grace_period() -> None:
    """Heard after the probe but an interval ago, deadline noticed late: a grace probe."""
    watch = new_watch(now=0.0)
    watch.check(now=10.0, last_received=None)  # probe, due at 15
    assert watch.check(now=40.0, last_received=12.0) is Verdict.PROBE
    assert watch.deadline == 50.0
    assert watch.grace_periods == 1


def test_grace_periods_accumulate_over_repeated_suspensions() -> None:
    """Each deadline noticed over an interval late adds one grace period and one probe."""
    watch = new_watch(now=0.0)
    for n in range(1, 4):
        now = watch.deadline + 100.0
        assert watch.check(now=now, last_received=None) is Verdict.PROBE
        assert watch.deadline == now + 10.0
        assert watch.grace_periods == n
    assert watch.probes == 3


def test_recent_message_wins_over_a_late_deadline() -> None:
    """A deadline noticed very late after a recent message is ALIVE; no grace period is used."""
    watch = new_watch(now=0.0)
    assert watch.check(now=5000.0, last_received=4995.0) is Verdict.ALIVE
    assert watch.deadline == 5005.0
    assert watch.grace_periods == 0
    assert watch.probes == 0


def test_late_by_exactly_one_interval_is_not_a_grace_period() -> None:
    """Deadline 10 noticed at 20 (late by exactly the interval): a normal probe due at 25."""
    watch = new_watch(now=0.0)
    assert watch.check(now=20.0, last_received=None) is Verdict.PROBE
    assert watch.deadline == 25.0
    assert watch.grace_periods == 0


def test_late_by_less_than_an_interval_behaves_normally() -> None:
    """Late by 9 s: a normal probe; silence until its deadline, noticed 9 s late, is DEAD."""
    watch = new_watch(now=0.0)
    assert watch.check(now=19.0, last_received=None) is Verdict.PROBE
    assert watch.deadline == 24.0
    assert watch.grace_periods == 0
    assert watch.check(now=33.0, last_received=None) is Verdict.DEAD


def test_probe_deadline_late_by_less_than_an_interval_is_dead() -> None:
    """A probe's deadline noticed 9 s late (under an interval) is DEAD, not a grace period."""
    watch = new_watch(now=0.0)
    watch.check(now=10.0, last_received=None)
    assert watch.check(now=24.0, last_received=None) is Verdict.DEAD
    assert watch.grace_periods == 0


# Random timings


def test_verdicts_for_random_timings() -> None:
    """For random configs, lateness, messages and restarts, verdicts follow the rules."""
    rng = random.Random(2718)

    def grid(low: float, high: float) -> float:
        # Quarter seconds: sums and differences of these are exact floats.
        return rng.randint(math.ceil(low * 4), math.floor(high * 4)) / 4

    for _ in range(300):
        config = Heartbeat(interval=grid(0.25, 60.0), timeout=grid(0.25, 60.0))
        interval = config.interval
        since = grid(0.0, 1e4)
        watch = HeartbeatWatch(config, now=since)
        last: float | None = None
        probed_at: float | None = None
        now = since
        for _ in range(40):
            if rng.random() < 0.1:
                since = grid(now, watch.deadline)
                watch.restart(now=since)
                probed_at = None
                assert watch.deadline == since + interval
                assert not watch.probing
            old_deadline = watch.deadline
            lateness = rng.choice([0.0, 0.0, grid(0.0, interval), grid(0.0, 3 * interval)])
            previous = now
            now = old_deadline + lateness
            if rng.random() < 0.4:
                last = grid(previous, now)
            heard = since if last is None else max(since, last)
            probes = watch.probes
            grace_periods = watch.grace_periods
            was_probing = watch.probing
            verdict = watch.check(now=now, last_received=last)
            if verdict is Verdict.DEAD:
                assert was_probing
                assert probed_at is not None
                assert heard < probed_at
                assert now - old_deadline <= interval
                assert watch.probes == probes
                break
            assert watch.deadline > now
            if verdict is Verdict.ALIVE:
                assert now - heard < interval
                assert watch.deadline == heard + interval
                assert watch.probes == probes
                assert watch.grace_periods == grace_periods
                assert not watch.probing
                probed_at = None
                continue
            assert verdict is Verdict.PROBE
            assert now - heard >= interval
            assert watch.probes == probes + 1
            assert watch.probing
            if now - old_deadline > interval:
                assert watch.grace_periods == grace_periods + 1
                assert watch.deadline == now + interval
            else:
                assert watch.grace_periods == grace_periods
                assert watch.deadline == now + config.timeout
                # A probe left unanswered and noticed in time is never forgiven.
                assert not (probed_at is not None and heard < probed_at)
            probed_at = now


@pytest.mark.parametrize(
    ("opened", "interval"),
    [(25.9, 0.7), (9204.938554384978, 1.624207073508302), (552859.5762929651, 1.7)],
)
def test_silence_checked_at_the_deadline_probes_despite_rounding(
    opened: float, interval: float
) -> None:
    """Nothing received, checked exactly at the first deadline: PROBE, with a deadline after now."""
    watch = new_watch(now=opened, config=Heartbeat(interval=interval, timeout=1.0))
    now = watch.deadline
    assert watch.check(now=now, last_received=None) is Verdict.PROBE
    assert watch.deadline > now


# repr


def test_repr_shows_state_deadline_and_probes() -> None:
    """repr shows waiting or probing, the deadline to the millisecond, and the probe count."""
    watch = new_watch(now=100.0)
    assert repr(watch) == "<HeartbeatWatch waiting deadline=110.000 probes=0>"
    watch.check(now=110.0, last_received=None)
    assert repr(watch) == "<HeartbeatWatch probing deadline=115.000 probes=1>"
    watch.restart(now=111.25)
    assert repr(watch) == "<HeartbeatWatch waiting deadline=121.250 probes=1>"


# Heartbeat configuration


def test_heartbeat_defaults() -> None:
    """Defaults: probe after 20 s of silence, wait 10 s, WebSocket ping frames."""
    config = Heartbeat()
    assert (config.interval, config.timeout, config.app_level) == (20.0, 10.0, False)


def test_watch_uses_its_config() -> None:
    """The watch keeps the Heartbeat it was given and times its deadlines by it."""
    config = Heartbeat(interval=1.5, timeout=0.25)
    watch = HeartbeatWatch(config, now=0.0)
    assert watch.config is config
    assert watch.deadline == 1.5
    watch.check(now=1.5, last_received=None)
    assert watch.deadline == 1.75


@pytest.mark.parametrize("field", ["interval", "timeout"])
@pytest.mark.parametrize("value", [0, 0.0, -1.0, math.nan, math.inf, -math.inf, "5", None])
def test_bad_heartbeat_value_raises_value_error_naming_it(field: str, value: Any) -> None:
    """interval and timeout must be positive finite numbers; the error names the field."""
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=f"heartbeat {field}"):
        Heartbeat(**kwargs)


@pytest.mark.parametrize("field", ["interval", "timeout"])
@pytest.mark.parametrize("value", [True, False])
def test_bool_heartbeat_value_is_rejected(field: str, value: bool) -> None:
    """A bool is not a number of seconds: interval=True or timeout=True raises ValueError."""
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=f"heartbeat {field}"):
        Heartbeat(**kwargs)


@pytest.mark.parametrize("field", ["interval", "timeout"])
def test_huge_int_heartbeat_value_raises_value_error(field: str) -> None:
    """An int too large to be a float of seconds raises ValueError naming the field."""
    kwargs: dict[str, Any] = {field: 10**400}
    with pytest.raises(ValueError, match=f"heartbeat {field}"):
        Heartbeat(**kwargs)


@pytest.mark.parametrize("kwargs", [{"interval": 1}, {"timeout": 1e-3}, {"interval": 3600.0}])
def test_positive_numbers_are_accepted(kwargs: dict[str, Any]) -> None:
    """ints and small or large positive floats are valid."""
    Heartbeat(**kwargs)


def test_heartbeat_is_frozen_and_keyword_only() -> None:
    """Heartbeat is a frozen, keyword-only value."""
    config = Heartbeat()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.interval = 5.0  # type: ignore[misc]
    assert all(field.kw_only for field in dataclasses.fields(Heartbeat))
    assert Heartbeat(interval=5.0) == Heartbeat(interval=5.0)
