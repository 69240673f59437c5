"""Backoff: exponential in the attempt, jitter within [0.5, 1.5) of the step, capped."""

from __future__ import annotations

import random

import pytest

from imagend.errors import DatabaseUnavailable
from imagend.retry import BACKOFF_BASE_SECONDS, BACKOFF_MAX_SECONDS, backoff_seconds, retry_database


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 12])
def test_backoff_stays_within_its_jitter_bounds(attempt):
    random.seed(attempt)
    step = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
    samples = [backoff_seconds(attempt) for _ in range(500)]
    assert all(0.5 * step <= s < 1.5 * step for s in samples)
    # Jitter really spreads retries: samples cover most of the band, not one value.
    assert max(samples) - min(samples) > 0.8 * step


def test_backoff_grows_with_the_attempt():
    assert backoff_seconds(1, base=5, cap=10_000) < 7.5 <= backoff_seconds(3, base=5, cap=10_000) < 30
    assert backoff_seconds(0) < 1.5 * BACKOFF_BASE_SECONDS  # attempt 0 (never claimed) counts as the first


@pytest.mark.parametrize("attempt", [20, 200, 1100, 10_000])
def test_backoff_is_capped_for_any_attempt_count(attempt):
    # A producer may set max_attempts as high as it likes; the backoff must stay a number.
    assert 0.5 * BACKOFF_MAX_SECONDS <= backoff_seconds(attempt) < 1.5 * BACKOFF_MAX_SECONDS


def test_retry_database_retries_only_database_faults():
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise DatabaseUnavailable("down")
        return "written"

    assert retry_database(flaky, budget_seconds=30) == "written"
    assert len(calls) == 3

    def broken() -> str:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        retry_database(broken, budget_seconds=30)
