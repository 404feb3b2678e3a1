"""Backoff and RetrySchedule: delay sequences, jitter bounds, stop conditions.

Pure logic: no event loop, no clock. The caller's ``now`` is fed by hand the
way the reconnect supervisor does (``now += delay`` after each wait). Jitter
draws come from the global ``random`` module, which tenacity uses, so the
tests that need it seed it and put its state back afterwards.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Iterator
from typing import Any

import pytest

from wsclient._backoff import Backoff, Jitter, RetrySchedule

JITTERS: tuple[Jitter, ...] = ("full", "equal", "none")


@pytest.fixture(autouse=True)
def _keep_global_random() -> Iterator[None]:
    state = random.getstate()
    yield
    random.setstate(state)


def cap(backoff: Backoff, attempt: int) -> float:
    """The un-jittered delay before ``attempt`` (1-based), per the Backoff docstring."""
    return min(backoff.maximum, backoff.initial * backoff.factor ** (attempt - 1))


def run_outage(schedule: RetrySchedule, now: float) -> tuple[list[float], float]:
    """Wait every delay the schedule gives until it gives up; return the delays and the end time."""
    delays: list[float] = []
    while (delay := schedule.next_delay(now)) is not None:
        delays.append(delay)
        now += delay
    return delays, now


# Exact sequences without jitter


def test_doubling_sequence_is_capped_at_maximum() -> None:
    """initial 1, factor 2, maximum 30 without jitter waits 1, 2, 4, 8, 16, then 30 forever."""
    backoff = Backoff(initial=1.0, factor=2.0, maximum=30.0, jitter="none")
    assert list(itertools.islice(backoff.delays(), 10)) == [
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        30.0,
        30.0,
        30.0,
        30.0,
        30.0,
    ]


def test_browser_pattern_grows_by_one_and_a_half() -> None:
    """1 s times 1.5 up to 30 s (the browser reconnect pattern) gives the exact geometric series."""
    backoff = Backoff(initial=1.0, factor=1.5, maximum=30.0, jitter="none")
    assert list(itertools.islice(backoff.delays(), 12)) == [
        1.0,
        1.5,
        2.25,
        3.375,
        5.0625,
        7.59375,
        11.390625,
        17.0859375,
        25.62890625,
        30.0,
        30.0,
        30.0,
    ]


def test_factor_one_gives_a_constant_delay() -> None:
    """factor 1 waits initial every time."""
    backoff = Backoff(initial=0.25, factor=1.0, maximum=10.0, jitter="none", max_attempts=6)
    assert list(backoff.delays()) == [0.25] * 6


def test_maximum_equal_to_initial_gives_a_constant_delay() -> None:
    """maximum == initial caps every delay at initial."""
    backoff = Backoff(initial=3.0, maximum=3.0, jitter="none", max_attempts=5)
    assert list(backoff.delays()) == [3.0] * 5


def test_delay_stays_at_maximum_after_very_many_attempts() -> None:
    """The exponent never overflows: attempt 10 000 still waits exactly maximum."""
    schedule = RetrySchedule(Backoff(jitter="none"), start=0.0, attempts=9_999)
    assert schedule.next_delay(0.0) == 30.0
    assert schedule.attempts == 10_000


def test_delays_follow_the_documented_formula_for_random_settings() -> None:
    """Without jitter, delay n is min(maximum, initial * factor ** (n - 1)) for many settings."""
    rng = random.Random(1871)
    for _ in range(300):
        initial = rng.uniform(0.01, 5.0)
        backoff = Backoff(
            initial=initial,
            maximum=initial * rng.uniform(1.0, 200.0),
            factor=rng.uniform(1.0, 3.0),
            jitter="none",
            max_attempts=rng.randint(1, 40),
        )
        delays = list(backoff.delays())
        assert len(delays) == backoff.max_attempts
        assert delays[0] == pytest.approx(initial)
        for n, delay in enumerate(delays, start=1):
            assert delay == pytest.approx(cap(backoff, n), rel=1e-9)
            assert delay <= backoff.maximum
        assert delays == sorted(delays)


# max_attempts


def test_max_attempts_gives_that_many_delays_then_none() -> None:
    """max_attempts=4 gives exactly four delays, then None, and stays given up."""
    schedule = RetrySchedule(Backoff(jitter="none", max_attempts=4), start=0.0)
    delays, now = run_outage(schedule, 0.0)
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert schedule.attempts == 4
    assert schedule.next_delay(now) is None
    assert schedule.next_delay(now + 1000.0) is None
    assert schedule.attempts == 4


def test_max_attempts_one_gives_a_single_delay() -> None:
    """max_attempts=1 allows one attempt only."""
    assert list(Backoff(jitter="none", max_attempts=1).delays()) == [1.0]


@pytest.mark.parametrize("jitter", JITTERS)
@pytest.mark.parametrize("max_attempts", [1, 2, 7, 25])
def test_delays_generator_length_is_max_attempts(jitter: Jitter, max_attempts: int) -> None:
    """delays() yields exactly max_attempts delays, whatever the jitter."""
    random.seed(max_attempts)
    backoff = Backoff(jitter=jitter, max_attempts=max_attempts)
    assert len(list(backoff.delays())) == max_attempts


def test_delays_with_a_deadline_stop_before_the_attempt_that_would_reach_it() -> None:
    """deadline 20: delays() gives 1, 2, 4, 8 and stops, since 15 + 16 is past 20."""
    backoff = Backoff(initial=1.0, factor=2.0, jitter="none", deadline=20.0)
    assert list(backoff.delays()) == [1.0, 2.0, 4.0, 8.0]


def test_delays_with_a_deadline_stop_at_exactly_the_deadline() -> None:
    """deadline 15: 7 + 8 reaches 15 exactly, so delays() gives only 1, 2, 4."""
    assert list(Backoff(jitter="none", deadline=15.0).delays()) == [1.0, 2.0, 4.0]
    assert list(Backoff(jitter="none", deadline=15.5).delays()) == [1.0, 2.0, 4.0, 8.0]


def test_delays_with_a_deadline_count_capped_delays() -> None:
    """deadline 100, maximum 30: 1, 2, 4, 8, 16, 30, 30 (ending at 91); 91 + 30 is past 100."""
    backoff = Backoff(jitter="none", maximum=30.0, deadline=100.0)
    assert list(backoff.delays()) == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_delays_with_a_deadline_below_the_first_delay_are_empty() -> None:
    """deadline 0.5 with initial 1: delays() yields nothing."""
    assert list(Backoff(jitter="none", deadline=0.5).delays()) == []


def test_delays_stop_at_whichever_limit_comes_first() -> None:
    """delays() honours both max_attempts and deadline, stopping at the earlier."""
    assert list(Backoff(jitter="none", max_attempts=2, deadline=100.0).delays()) == [1.0, 2.0]
    assert list(Backoff(jitter="none", max_attempts=50, deadline=8.0).delays()) == [1.0, 2.0, 4.0]


def test_delays_match_a_schedule_whose_attempts_fail_at_once() -> None:
    """delays() equals the delays of a RetrySchedule whose clock moves only by the waits."""
    rng = random.Random(5150)
    for _ in range(200):
        initial = rng.uniform(0.05, 3.0)
        backoff = Backoff(
            initial=initial,
            maximum=initial * rng.uniform(1.0, 50.0),
            factor=rng.uniform(1.0, 2.5),
            jitter="none",
            deadline=rng.uniform(0.1, 300.0),
            max_attempts=rng.choice([None, rng.randint(1, 40)]),
        )
        delays, _ = run_outage(RetrySchedule(backoff, start=0.0), 0.0)
        assert list(backoff.delays()) == delays


@pytest.mark.parametrize("jitter", JITTERS)
def test_delays_with_a_deadline_end_before_it(jitter: Jitter) -> None:
    """With any jitter, delays() ends, and its delays add up to less than the deadline."""
    random.seed(404)
    for deadline in (0.5, 3.0, 17.0, 60.0, 250.0):
        for _ in range(50):
            delays = list(Backoff(jitter=jitter, deadline=deadline).delays())
            assert sum(delays) < deadline


def test_first_connection_failure_continues_from_attempt_two() -> None:
    """A schedule started with attempts=1 (the first connect failed) begins at the second delay."""
    schedule = RetrySchedule(Backoff(jitter="none"), start=0.0, attempts=1)
    delays = [schedule.next_delay(0.0) for _ in range(5)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 30.0]
    assert schedule.attempts == 6


def test_first_connection_failure_counts_towards_max_attempts() -> None:
    """With attempts=1 at the start, max_attempts=3 leaves two more delays."""
    schedule = RetrySchedule(Backoff(jitter="none", max_attempts=3), start=0.0, attempts=1)
    delays, _ = run_outage(schedule, 0.0)
    assert delays == [2.0, 4.0]
    assert schedule.attempts == 3


def test_attempts_already_at_max_attempts_gives_up_at_once() -> None:
    """A schedule whose attempts already reach max_attempts returns None on the first call."""
    schedule = RetrySchedule(Backoff(jitter="none", max_attempts=1), start=0.0, attempts=1)
    assert schedule.next_delay(0.0) is None
    assert schedule.attempts == 1


# deadline


def test_deadline_gives_up_when_the_attempt_would_start_exactly_at_it() -> None:
    """deadline 15: waits 1, 2, 4 (ending at +7), then gives up since 7 + 8 reaches 15."""
    schedule = RetrySchedule(Backoff(jitter="none", deadline=15.0), start=100.0)
    delays, now = run_outage(schedule, 100.0)
    assert delays == [1.0, 2.0, 4.0]
    assert now == 107.0
    assert schedule.attempts == 3


def test_deadline_just_beyond_the_boundary_allows_the_attempt() -> None:
    """deadline 15.5: 7 + 8 = 15 is before it, so 8 is waited; then 15 + 16 gives up."""
    schedule = RetrySchedule(Backoff(jitter="none", deadline=15.5), start=100.0)
    delays, now = run_outage(schedule, 100.0)
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert now == 115.0
    assert schedule.attempts == 4


def test_deadline_counts_time_spent_outside_the_waits() -> None:
    """Time the attempts themselves take (now jumps ahead) brings the deadline closer."""
    schedule = RetrySchedule(Backoff(jitter="none", deadline=10.0), start=0.0)
    assert schedule.next_delay(0.0) == 1.0
    # The attempt after that wait took 5 seconds to fail: 6 + 2 < 10.
    assert schedule.next_delay(6.0) == 2.0
    # Another slow attempt: 9 + 4 reaches 10.
    assert schedule.next_delay(9.0) is None
    assert schedule.attempts == 2


def test_deadline_smaller_than_the_first_delay_gives_up_at_once() -> None:
    """A deadline of 0.5 s with initial 1 s gives up before any attempt."""
    schedule = RetrySchedule(Backoff(jitter="none", deadline=0.5), start=0.0)
    assert schedule.next_delay(0.0) is None
    assert schedule.attempts == 0


def test_whichever_of_deadline_and_max_attempts_comes_first_stops() -> None:
    """Both limits set: the earlier one wins."""
    by_attempts = RetrySchedule(Backoff(jitter="none", max_attempts=2, deadline=100.0), start=0.0)
    assert run_outage(by_attempts, 0.0)[0] == [1.0, 2.0]
    by_deadline = RetrySchedule(Backoff(jitter="none", max_attempts=50, deadline=8.0), start=0.0)
    assert run_outage(by_deadline, 0.0)[0] == [1.0, 2.0, 4.0]


def test_deadline_boundary_holds_for_random_settings() -> None:
    """Each delay starts its attempt before the deadline; giving up means the next would not."""
    rng = random.Random(4242)
    for _ in range(300):
        initial = rng.uniform(0.05, 3.0)
        deadline = rng.uniform(0.1, 300.0)
        backoff = Backoff(
            initial=initial,
            maximum=initial * rng.uniform(1.0, 50.0),
            factor=rng.uniform(1.0, 2.5),
            jitter="none",
            deadline=deadline,
        )
        start = float(rng.randint(0, 10_000))
        schedule = RetrySchedule(backoff, start=start)
        delays, now = run_outage(schedule, start)
        elapsed = 0.0
        for delay in delays:
            assert elapsed + delay < deadline
            elapsed += delay
        # The delay it refused, from the same schedule without a deadline.
        unlimited = dataclasses.replace(backoff, deadline=None)
        refused = RetrySchedule(unlimited, start=start, attempts=schedule.attempts)
        next_delay = refused.next_delay(now)
        assert next_delay is not None
        assert now - start + next_delay >= deadline


@pytest.mark.parametrize("jitter", ["full", "equal"])
def test_deadline_is_never_crossed_with_jitter(jitter: Jitter) -> None:
    """With jitter too, no returned delay starts an attempt at or past the deadline."""
    random.seed(99)
    for deadline in (0.5, 3.0, 17.0, 60.0, 250.0):
        for _ in range(50):
            schedule = RetrySchedule(Backoff(jitter=jitter, deadline=deadline), start=10.0)
            _, now = run_outage(schedule, 10.0)
            assert now - 10.0 < deadline


# at_least (Retry-After)


def test_at_least_raises_a_short_delay() -> None:
    """A Retry-After of 10 s replaces a 1 s delay."""
    schedule = RetrySchedule(Backoff(jitter="none"), start=0.0)
    assert schedule.next_delay(0.0, at_least=10.0) == 10.0
    assert schedule.attempts == 1


def test_at_least_below_the_delay_changes_nothing() -> None:
    """A Retry-After shorter than the backoff delay leaves the delay as is."""
    schedule = RetrySchedule(Backoff(jitter="none"), start=0.0, attempts=3)
    assert schedule.next_delay(0.0, at_least=2.0) == 8.0


def test_at_least_does_not_speed_up_the_growth() -> None:
    """After a Retry-After, the next delay resumes the normal sequence."""
    schedule = RetrySchedule(Backoff(jitter="none"), start=0.0)
    assert schedule.next_delay(0.0, at_least=25.0) == 25.0
    assert schedule.next_delay(25.0) == 2.0
    assert schedule.next_delay(27.0) == 4.0


def test_at_least_may_exceed_maximum() -> None:
    """The server's Retry-After is honoured even beyond maximum."""
    schedule = RetrySchedule(Backoff(jitter="none", maximum=30.0), start=0.0)
    assert schedule.next_delay(0.0, at_least=120.0) == 120.0


def test_at_least_raises_a_jittered_delay() -> None:
    """With full jitter, the delay is never below at_least."""
    random.seed(5)
    for attempts in range(10):
        schedule = RetrySchedule(Backoff(jitter="full"), start=0.0, attempts=attempts)
        delay = schedule.next_delay(0.0, at_least=0.75)
        assert delay is not None
        assert delay >= 0.75


def test_at_least_beyond_the_deadline_gives_up() -> None:
    """A Retry-After that would start the attempt at or past the deadline gives up."""
    schedule = RetrySchedule(Backoff(jitter="none", deadline=60.0), start=0.0)
    assert schedule.next_delay(0.0, at_least=60.0) is None
    assert schedule.next_delay(0.0, at_least=3600.0) is None
    assert schedule.attempts == 0
    assert schedule.next_delay(0.0, at_least=59.0) == 59.0
    assert schedule.attempts == 1


def test_at_least_within_the_deadline_is_checked_against_time_elapsed() -> None:
    """A Retry-After late in the outage gives up if elapsed + Retry-After reaches the deadline."""
    schedule = RetrySchedule(Backoff(jitter="none", deadline=60.0), start=0.0)
    assert schedule.next_delay(0.0) == 1.0
    assert schedule.next_delay(40.0, at_least=19.5) == 19.5
    assert schedule.next_delay(59.5, at_least=0.5) is None


# Jitter bounds


def test_full_jitter_stays_between_zero_and_the_cap() -> None:
    """Full jitter draws each delay in [0, cap], spread over the range and not all equal."""
    random.seed(20240)
    backoff = Backoff(jitter="full", max_attempts=8)
    draws: list[list[float]] = [[] for _ in range(8)]
    for _ in range(500):
        for n, delay in enumerate(backoff.delays(), start=1):
            assert 0.0 <= delay <= cap(backoff, n)
            draws[n - 1].append(delay)
    for n, values in enumerate(draws, start=1):
        assert len(set(values)) > 400
        # Full range used: near zero and near the cap both occur.
        assert min(values) < 0.05 * cap(backoff, n)
        assert max(values) > 0.95 * cap(backoff, n)


def test_equal_jitter_stays_between_half_the_cap_and_the_cap() -> None:
    """Equal jitter draws each delay in [cap/2, cap], and not all equal."""
    random.seed(777)
    backoff = Backoff(jitter="equal", max_attempts=8)
    draws: list[list[float]] = [[] for _ in range(8)]
    for _ in range(500):
        for n, delay in enumerate(backoff.delays(), start=1):
            limit = cap(backoff, n)
            assert limit / 2 <= delay <= limit
            draws[n - 1].append(delay)
    for n, values in enumerate(draws, start=1):
        assert len(set(values)) > 400
        assert min(values) < 0.55 * cap(backoff, n)
        assert max(values) > 0.95 * cap(backoff, n)


@pytest.mark.parametrize("jitter", ["full", "equal"])
def test_jitter_bounds_hold_for_random_settings(jitter: Jitter) -> None:
    """For many random settings, jittered delays stay within their documented bounds."""
    rng = random.Random(31337)
    random.seed(31337)
    for _ in range(200):
        initial = rng.uniform(0.01, 5.0)
        backoff = Backoff(
            initial=initial,
            maximum=initial * rng.uniform(1.0, 100.0),
            factor=rng.uniform(1.0, 3.0),
            jitter=jitter,
            max_attempts=rng.randint(1, 30),
        )
        low_share = 0.0 if jitter == "full" else 0.5
        for n, delay in enumerate(backoff.delays(), start=1):
            limit = cap(backoff, n)
            assert limit * low_share * (1 - 1e-9) <= delay <= limit * (1 + 1e-9)


def test_jitter_follows_the_global_random_seed() -> None:
    """The same seed gives the same jittered delays (tests can reproduce a draw)."""
    backoff = Backoff(jitter="full", max_attempts=6)
    random.seed(12)
    first = list(backoff.delays())
    random.seed(12)
    assert list(backoff.delays()) == first


# Validation


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("initial", 0.0),
        ("initial", -1.0),
        ("initial", math.nan),
        ("initial", math.inf),
        ("maximum", 0.5),
        ("maximum", math.nan),
        ("maximum", math.inf),
        ("factor", 0.99),
        ("factor", 0.0),
        ("factor", -2.0),
        ("factor", math.nan),
        ("factor", math.inf),
        ("jitter", "random"),
        ("jitter", "None"),
        ("max_attempts", 0),
        ("max_attempts", -3),
        ("max_attempts", True),
        ("max_attempts", False),
        ("max_attempts", 3.0),
        ("max_attempts", 2.5),
        ("max_attempts", "3"),
        ("max_attempts", math.inf),
        ("deadline", 0.0),
        ("deadline", -0.0),
        ("deadline", -5.0),
        ("deadline", math.nan),
        ("deadline", math.inf),
        ("min_uptime", -0.1),
        ("min_uptime", math.nan),
        ("min_uptime", math.inf),
    ],
)
def test_bad_field_raises_value_error_naming_it(field: str, value: Any) -> None:
    """Each invalid setting raises ValueError whose message starts with the field's name."""
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        Backoff(**kwargs)


NOT_NUMBERS: tuple[object, ...] = (True, False, "1", "30", b"1", [1.0], 1j)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        *(
            (field, value)
            for field in ("initial", "maximum", "factor", "min_uptime", "deadline")
            for value in NOT_NUMBERS
        ),
        *((field, None) for field in ("initial", "maximum", "factor", "min_uptime")),
    ],
)
def test_non_number_raises_value_error_naming_the_field(field: str, value: Any) -> None:
    """bools, strings and other non-numbers are rejected for every number field, naming it."""
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        Backoff(**kwargs)


@pytest.mark.parametrize("field", ["initial", "maximum", "deadline"])
def test_int_too_large_for_a_float_raises_value_error(field: str) -> None:
    """An int beyond the float range is not a usable number of seconds: ValueError naming it."""
    kwargs: dict[str, Any] = {field: 10**400}
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        Backoff(**kwargs)


def test_ints_are_accepted_for_number_fields() -> None:
    """Plain ints are valid for every number field and for max_attempts."""
    backoff = Backoff(initial=1, maximum=30, factor=2, min_uptime=0, deadline=20, max_attempts=3)
    assert list(dataclasses.replace(backoff, jitter="none").delays()) == [1.0, 2.0, 4.0]


def test_large_max_attempts_is_accepted() -> None:
    """max_attempts may be any int of at least 1, however large."""
    assert Backoff(max_attempts=10**30).max_attempts == 10**30


def test_maximum_below_a_large_initial_is_rejected() -> None:
    """initial above the default maximum is rejected, naming maximum."""
    with pytest.raises(ValueError, match="maximum"):
        Backoff(initial=40.0)
    assert Backoff(initial=40.0, maximum=40.0).maximum == 40.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"factor": 1.0},
        {"maximum": 1.0},
        {"max_attempts": 1},
        {"deadline": 0.001},
        {"min_uptime": 0.0},
        {"initial": 1e-6, "maximum": 1e6},
    ],
)
def test_edge_values_are_accepted(kwargs: dict[str, Any]) -> None:
    """The smallest valid values of each limit are accepted."""
    Backoff(**kwargs)


def test_defaults() -> None:
    """Defaults: 1 s doubling to 30 s with full jitter, no limits, 5 s min_uptime."""
    backoff = Backoff()
    assert (backoff.initial, backoff.maximum, backoff.factor) == (1.0, 30.0, 2.0)
    assert backoff.jitter == "full"
    assert backoff.max_attempts is None
    assert backoff.deadline is None
    assert backoff.min_uptime == 5.0


def test_min_uptime_is_configurable() -> None:
    """min_uptime keeps the value given, including zero."""
    assert Backoff(min_uptime=0.0).min_uptime == 0.0
    assert Backoff(min_uptime=12.5).min_uptime == 12.5


def test_backoff_is_frozen() -> None:
    """Assigning to a Backoff field raises FrozenInstanceError."""
    backoff = Backoff()
    with pytest.raises(dataclasses.FrozenInstanceError):
        backoff.initial = 2.0  # type: ignore[misc]


def test_backoff_is_keyword_only() -> None:
    """Backoff takes no positional arguments."""
    assert all(field.kw_only for field in dataclasses.fields(Backoff))
    with pytest.raises(TypeError):
        Backoff(1.0)  # type: ignore[call-arg]


def test_backoff_is_a_hashable_value() -> None:
    """Equal settings compare and hash equal."""
    assert Backoff(initial=2.0) == Backoff(initial=2.0)
    assert hash(Backoff(initial=2.0)) == hash(Backoff(initial=2.0))
    assert Backoff(initial=2.0) != Backoff(initial=3.0)


# RetrySchedule bookkeeping


def test_schedule_counts_only_the_delays_it_gives() -> None:
    """attempts grows by one per delay given, and not when it gives up."""
    schedule = RetrySchedule(Backoff(jitter="none", max_attempts=2), start=0.0)
    assert schedule.attempts == 0
    schedule.next_delay(0.0)
    assert schedule.attempts == 1
    schedule.next_delay(1.0)
    assert schedule.attempts == 2
    assert schedule.next_delay(3.0) is None
    assert schedule.attempts == 2


def test_schedules_are_independent() -> None:
    """Two schedules of one Backoff do not share their attempt count."""
    backoff = Backoff(jitter="none")
    first = RetrySchedule(backoff, start=0.0)
    second = RetrySchedule(backoff, start=50.0)
    assert [first.next_delay(0.0) for _ in range(3)] == [1.0, 2.0, 4.0]
    assert second.next_delay(50.0) == 1.0


def test_schedule_repr_shows_attempts_and_settings() -> None:
    """repr(schedule) shows the attempt count and the Backoff."""
    schedule = RetrySchedule(Backoff(jitter="none", max_attempts=3), start=0.0, attempts=2)
    text = repr(schedule)
    assert text.startswith("<RetrySchedule attempts=2 Backoff(")
    assert "max_attempts=3" in text
