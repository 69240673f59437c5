"""The rescue: rows in `Generate` whose owner died (its heartbeat went stale) or whose lease ran out
go back to waiting, or end Failed once they crashed their daemons too often. A row whose work had
not begun is handed back uncharged; one whose owner died while generating counts a crash, not an
attempt (crash_backoffs spaces the next try). Run by the processor, first thing in its pass."""

from __future__ import annotations

from dataclasses import dataclass

from imagend.db.repository import Repository
from imagend.db.rows import Status
from imagend.logs import get_logger
from imagend.operations.metrics import Metrics
from imagend.retry import crash_backoffs

log = get_logger()


@dataclass(slots=True)
class RescueCounts:
    rescued: int = 0
    failed: int = 0  # of those, ended Failed (too many crashes, or attempts spent)


class Rescue:
    def __init__(self, repo: Repository, *, max_crashes: int, default_backend: str, metrics: Metrics) -> None:
        self.repo = repo
        self.max_crashes = max_crashes
        self.default_backend = default_backend
        self.metrics = metrics

    def run_once(self) -> RescueCounts:
        counts = RescueCounts()
        for row in self.repo.rescue(crash_backoffs(self.max_crashes)):
            counts.rescued += 1
            counts.failed += row.status == Status.FAILED
            backend = row.backend or self.default_backend
            self.metrics.count(backend, "rescued")
            if row.status == Status.FAILED:
                self.metrics.failed(backend, "crashed" if row.crashed else "lease_expired", final=True)
            if not row.begun:
                log.info("row_requeued", id=row.id, status=row.status, owner=row.old_owner,
                         reason="its daemon is gone; it had not begun, so nothing is charged")
            elif row.crashed:
                log.warning("daemon_died_generating", id=row.id, status=row.status, owner=row.old_owner,
                            crashes=row.crashes, error=row.error)
            else:
                log.info("lease_expired", id=row.id, status=row.status, owner=row.old_owner, error=row.error)
        return counts
