"""The operator's limits, without sockets: the token bucket of --rate, --max-failures parsed,
and the failure brake over its window of settled jobs."""

from __future__ import annotations

import pytest

from taskmaster.config import FAILURE_MIN_JOBS, FAILURE_WINDOW_JOBS
from taskmaster.errors import ConfigError
from taskmaster.limits import FailureBrake, MaxFailures, TokenBucket


def test_no_rate_means_no_limit() -> None:
    bucket = TokenBucket(None, 0.0)
    assert bucket.available(0.0) >= 1 << 40
    bucket.spend(10**9)
    assert bucket.available(0.0) >= 1 << 40


def test_tokens_accrue_at_the_rate_up_to_one_second_of_them() -> None:
    bucket = TokenBucket(10.0, 0.0)
    assert bucket.available(0.0) == 0  # starts empty: no burst at the start
    assert bucket.available(0.5) == 5
    bucket.spend(5)
    assert bucket.available(0.5) == 0
    assert bucket.available(100.0) == 10  # a long idle time saves up one second only


def test_over_a_long_time_what_goes_out_is_the_rate() -> None:
    bucket, sent, now = TokenBucket(37.0, 0.0), 0, 0.0
    while now < 30.0:  # asked every 0.25 s, as the master's tick does, by a greedy slave
        now += 0.25
        take = bucket.available(now)
        bucket.spend(take)
        sent += take
    assert 37 * 30 - 37 <= sent <= 37 * 30


def test_a_rate_below_one_a_second_still_hands_out_jobs() -> None:
    bucket = TokenBucket(0.5, 0.0)
    assert bucket.available(1.9) == 0
    assert bucket.available(2.0) == 1


def test_a_new_rate_takes_effect_without_a_burst() -> None:
    bucket = TokenBucket(1000.0, 0.0)
    assert bucket.available(1.0) == 1000
    bucket.set(2.0, 1.0)
    assert bucket.available(1.0) == 2  # capped to one second of the new rate
    bucket.set(None, 1.0)
    assert bucket.available(1.0) >= 1 << 40


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan"), float("inf")])
def test_a_rate_must_be_positive_and_finite(rate: float) -> None:
    with pytest.raises(ConfigError, match="positive"):
        TokenBucket(rate, 0.0)


@pytest.mark.parametrize("text, parsed", [
    ("10", MaxFailures(count=10)), (" 1 ", MaxFailures(count=1)),
    ("5%", MaxFailures(percent=5.0)), ("0.5%", MaxFailures(percent=0.5)),
    ("100%", MaxFailures(percent=100.0)),
])
def test_max_failures_is_a_count_or_a_percentage(text: str, parsed: MaxFailures) -> None:
    assert MaxFailures.parse(text) == parsed


@pytest.mark.parametrize("text", ["0", "-3", "0%", "101%", "ten", "5 %%", "", "nan%", "1.5"])
def test_a_bad_max_failures_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="--max-failures must be"):
        MaxFailures.parse(text)


def test_a_count_stops_at_that_many_failures_of_this_session() -> None:
    brake = FailureBrake(MaxFailures(count=3))
    brake.settled(1000, 2)
    assert brake.why() == ""
    brake.settled(0, 1)
    assert "3 jobs failed for good this session (--max-failures 3)" in brake.why()


def test_a_percentage_is_judged_only_after_enough_settled_jobs() -> None:
    brake = FailureBrake(MaxFailures(percent=10.0))
    brake.settled(0, FAILURE_MIN_JOBS - 1)  # all failed, but too few to judge
    assert brake.why() == ""
    brake.settled(0, 1)
    assert "of the last 100 settled jobs failed (100%, --max-failures 10%)" in brake.why()


def test_a_percentage_looks_at_the_last_window_only() -> None:
    brake = FailureBrake(MaxFailures(percent=10.0))
    brake.settled(0, 99)  # a burst of failures at the start...
    brake.settled(FAILURE_WINDOW_JOBS, 0)  # ...then a whole window of good ones
    assert brake.why() == ""
    brake.settled(FAILURE_WINDOW_JOBS - 50, 0)
    brake.settled(0, 100)  # 100 of the last 1000 is 10 %: not more than 10 %
    assert brake.why() == ""
    brake.settled(0, 1)
    assert "101 of the last 1000" in brake.why()


def test_a_percentage_trims_part_of_an_acknowledgement() -> None:
    brake = FailureBrake(MaxFailures(percent=39.95))
    brake.settled(0, 600)  # one acknowledged run of failures...
    brake.settled(600, 0)  # ...of which 400 are still among the last 1000
    assert "400 of the last 1000" in brake.why()
    brake.settled(1, 0)
    assert brake.why() == ""  # 399 of 1000: 39.9 %
