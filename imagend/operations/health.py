"""Is the daemon alive and ready? What /healthz, /readyz and the systemd watchdog ask.

- Alive: the loops made progress recently, and their passes do not all fail (a pass that raises
  the same error every time is not progress: a bad row or a bug stops the queue while the loop
  spins, so /healthz says `failing` after FAILING_AFTER_PASSES in a row).
- Progress: the loops made progress recently. The pacer marks progress around every pass, the
  generator at every batch and every lease renewal of a generating batch (each diffusion step),
  so a long generation is progress and a hung CUDA call or a deadlock is not.
- Ready: every served backend is loaded (the model, on a GPU host, takes minutes) and the
  database answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from imagend.config.settings import Settings
from imagend.errors import DatabaseUnavailable

READY_CHECK_CACHE_SECONDS = 1.0
FAILING_AFTER_PASSES = 3  # passes failed in a row (not for an unavailable database: /readyz says that)


def stuck_after(settings: Settings) -> float:
    """How long a pass may go without progress: two leases (a lease renewal is progress, and a
    generating batch renews twice a second), and never under a minute."""
    return max(2 * settings.lease_seconds, 60.0)


class LoopHealth:
    """Busy: a pass runs, and must show progress within `stuck_after_seconds`. Idle: the pacer
    waits, and no requested pass may have been due longer than that without starting."""

    def __init__(self, stuck_after_seconds: float) -> None:
        self.stuck_after_seconds = stuck_after_seconds
        self._last = time.monotonic()
        self.busy = False
        self.overdue: Callable[[], float] = lambda: 0.0  # seconds the most overdue pass waits (the pacer's)
        self.failed_passes = 0
        self.last_error: str | None = None

    def progressed(self) -> None:
        """Cheap (one store): called on the loops' paths."""
        self._last = time.monotonic()

    def pass_started(self) -> None:
        self.busy = True
        self.progressed()

    def pass_ended(self) -> None:
        self.busy = False
        self.progressed()

    def pass_failed(self, error: str) -> None:
        self.failed_passes += 1
        self.last_error = error

    def pass_succeeded(self) -> None:
        self.failed_passes = 0
        self.last_error = None

    def failing(self) -> bool:
        return self.failed_passes >= FAILING_AFTER_PASSES

    def state(self) -> dict[str, object]:
        """What /healthz answers: `ok`, `stuck` (no progress) or `failing` (every pass fails)."""
        since = round(self.seconds_since_progress(), 1)
        if not self.alive():
            return {"status": "stuck", "seconds_since_progress": since, "stuck_after_seconds": self.stuck_after_seconds}
        if self.failing():
            return {"status": "failing", "failed_passes": self.failed_passes, "error": self.last_error,
                    "seconds_since_progress": since}
        return {"status": "ok", "seconds_since_progress": since}

    def seconds_since_progress(self) -> float:
        return time.monotonic() - self._last

    def alive(self) -> bool:
        if self.busy:
            return self.seconds_since_progress() <= self.stuck_after_seconds
        return self.overdue() <= self.stuck_after_seconds


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str | None = None


class ReadyCheck:
    """Backends loaded (set once they are) and the database answering (asked at most once a second)."""

    def __init__(self, ping: Callable[[], None]) -> None:
        self.ping = ping
        self.loading = "backends not loaded yet"
        self._lock = threading.Lock()
        self._checked_at = -float("inf")
        self._database: str | None = None

    def backends_loaded(self) -> None:
        self.loading = ""

    def check(self) -> Readiness:
        with self._lock:
            if time.monotonic() - self._checked_at >= READY_CHECK_CACHE_SECONDS:
                self._checked_at = time.monotonic()
                try:
                    self.ping()
                    self._database = None
                except DatabaseUnavailable as exc:
                    self._database = str(exc)
            database = self._database
        if self.loading:
            return Readiness(False, self.loading)
        if database:
            return Readiness(False, database)
        return Readiness(True)
