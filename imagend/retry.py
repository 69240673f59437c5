"""Every wait imagend computes before trying again, in one place: a failed attempt, a
daemon crash, a pass that met an unavailable database or an unexpected error, a lost
LISTEN connection, a remote backend's HTTP call; and the retry used for writes that must
survive a database blip."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential, wait_random
from tenacity.wait import wait_base

from imagend.errors import DatabaseUnavailable

T = TypeVar("T")

# A failed attempt's backoff (IMAGEND_RETRY_BACKOFF sets the base), capped.
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 600.0
CRASH_BACKOFF_BASE_SECONDS = 1.0
CRASH_BACKOFF_MAX_SECONDS = 30.0
PASS_RETRY_BASE_SECONDS = 0.5
PASS_RETRY_MAX_SECONDS = 30.0


def _exponential(n: int, base: float, cap: float) -> float:
    # The exponent is clamped: 2.0 ** 1100 overflows a float, and the cap is reached long before.
    return min(cap, base * 2.0 ** min(max(n - 1, 0), 32))


def backoff_seconds(attempt: int, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_MAX_SECONDS) -> float:
    """After failed attempt `attempt`: exponential, with jitter in [0.5, 1.5) so retries spread out."""
    return _exponential(attempt, base, cap) * random.uniform(0.5, 1.5)


def crash_backoffs(max_crashes: int) -> list[float]:
    """The wait before a row is claimed again after its n-th crash (index n-1): none after the
    first (a daemon dies for many reasons: a deploy, a node lost, another row's OOM), then
    doubling from 1 s (capped at 30 s), so a row that keeps killing its daemon (a poison pill)
    is handed on ever more slowly; with the IMAGEND_DEAD_AFTER it takes to notice each death,
    it cannot take a fleet down at once. Passed to images_rescue."""
    return [0.0] + [
        _exponential(n, CRASH_BACKOFF_BASE_SECONDS, CRASH_BACKOFF_MAX_SECONDS) * random.uniform(0.75, 1.25)
        for n in range(1, max_crashes)
    ]


def pass_retry_seconds(failures: int) -> float:
    """A pass failed `failures` times in a row (database unavailable, or a bug): run it again after this."""
    return _exponential(failures, PASS_RETRY_BASE_SECONDS, PASS_RETRY_MAX_SECONDS)


def reconnect_seconds(failures: int) -> float:
    """The LISTEN connection was lost `failures` times in a row: reconnect after this."""
    return _exponential(failures, PASS_RETRY_BASE_SECONDS, PASS_RETRY_MAX_SECONDS)


def http_retry_wait(base_seconds: float, cap_seconds: float) -> wait_base:
    """Between retries of one HTTP call (a remote backend): exponential from `base_seconds`, capped,
    plus up to `base_seconds` of jitter (spelled so that tenacity 8 and 9 both accept it)."""
    return wait_exponential(multiplier=base_seconds, max=cap_seconds) + wait_random(0, base_seconds)


def retry_database(call: Callable[[], T], budget_seconds: float) -> T:
    """Run `call`, retrying while the database is unreachable, for up to `budget_seconds`.

    Used for the writes that end a row: a finished image is worth waiting for while
    Postgres restarts. The guard in each statement keeps a late retry harmless."""
    retrying = Retrying(
        retry=retry_if_exception_type(DatabaseUnavailable),
        stop=stop_after_delay(budget_seconds),
        # Not wait_exponential_jitter(initial=…): tenacity >= 9.1 warns that `initial` is deprecated.
        wait=wait_exponential(multiplier=0.1, max=5.0) + wait_random(0, 0.1),
        reraise=True,
    )
    return retrying(call)
