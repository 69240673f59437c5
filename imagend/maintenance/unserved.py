"""Rows nobody serves: waiting rows whose backend this daemon does not serve are said in its log at
start, then at most every REPORT_EVERY_SECONDS while they wait, with how many running daemons do
serve that backend (none: the rows will wait forever until one starts, or their backend changes)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from imagend.db.repository import Repository
from imagend.db.rows import UnservedRows
from imagend.errors import DatabaseUnavailable
from imagend.logs import get_logger

log = get_logger()

REPORT_EVERY_SECONDS = 300.0


class UnservedReport:
    """`run_once()` asks the database and logs what waits for other backends, unless it did so less than
    `every_seconds` ago: cheap to call from any loop, and quiet between reports."""

    def __init__(
        self,
        repo: Repository,
        served: Sequence[str],
        every_seconds: float = REPORT_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repo = repo
        self.served = list(served)
        self.every_seconds = every_seconds
        self.clock = clock
        self._last: float | None = None

    def run_once(self) -> list[UnservedRows]:
        """Log the waiting rows this daemon does not serve, if a report is due; returns what it found
        (empty when no report was due or the database could not be asked)."""
        now = self.clock()
        if self._last is not None and now - self._last < self.every_seconds:
            return []
        self._last = now
        try:
            found = self.repo.unserved(self.served)
        except DatabaseUnavailable as exc:
            log.debug("rows_unserved_check_failed", error=str(exc))
            return []
        for entry in found:
            fields = {
                "backend": entry.backend,
                "rows": entry.rows,
                "oldest_waiting_seconds": round(entry.oldest_waiting_seconds, 1),
                "served_here": self.served,
                "daemons_serving": entry.daemons_serving,
            }
            if entry.daemons_serving:
                log.info("rows_for_other_backends", **fields)
            else:
                log.warning(
                    "rows_unserved",
                    **fields,
                    hint=f"no running daemon serves {entry.backend!r}: start one whose IMAGEND_BACKENDS lists it, "
                    "or UPDATE the rows' backend",
                )
        return found
