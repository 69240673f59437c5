"""Backoff for failed attempts, and the retry used for writes that must survive a database blip."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential, wait_random

from imagend.config import BACKOFF_BASE_SECONDS, BACKOFF_MAX_SECONDS
from imagend.errors import DatabaseUnavailable

T = TypeVar("T")


def backoff_seconds(attempt: int, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_MAX_SECONDS) -> float:
    """Exponential in the attempt number, with full jitter in [0.5, 1.5) so retries spread out."""
    # The exponent is clamped: 2.0 ** 1100 overflows a float, and the cap is reached long before.
    exponential: float = base * 2.0 ** min(max(attempt - 1, 0), 32)
    return min(cap, exponential) * random.uniform(0.5, 1.5)


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
