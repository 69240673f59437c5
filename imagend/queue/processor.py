"""The processor pass: the maintenance services in turn (the rescue of rows whose daemon died or whose
lease ran out, then retention when configured and due), then the polls of remote tasks that are due."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import structlog

from imagend.backends.base import Backend, Pending, RemoteBackend
from imagend.config.settings import Settings
from imagend.db.repository import Repository
from imagend.db.rows import RemoteTask
from imagend.errors import LostOwnership, RetryableError, RowError, RowLocked, unexpected
from imagend.logs import get_logger
from imagend.maintenance.rescue import Rescue
from imagend.maintenance.retention import Retention
from imagend.maintenance.spool import Spool
from imagend.operations.metrics import Metrics
from imagend.queue.finishing import Outcomes
from imagend.queue.pass_counts import PassCounts
from imagend.queue.videos import default_video_store
from imagend.storage import Store
from imagend.storage.health import StoreHealth
from imagend.video.settings import load_video_settings

log = get_logger()


class Processor:
    def __init__(
        self,
        repo: Repository,
        backends: Mapping[str, Backend],
        settings: Settings,
        *,
        stopping: threading.Event,
        io_pool: ThreadPoolExecutor,
        metrics: Metrics | None = None,
        store: Store | None = None,
        store_health: StoreHealth | None = None,
    ) -> None:
        self.repo = repo
        self.remote = {name: b for name, b in backends.items() if isinstance(b, RemoteBackend)}
        self.settings = settings
        self.stopping = stopping
        self.io_pool = io_pool
        self.store_health = store_health or StoreHealth()
        self.outcomes = Outcomes(repo, settings, metrics, store, self.store_health)
        self.rescue = Rescue(repo, max_crashes=settings.max_crashes, default_backend=settings.default_backend,
                             metrics=self.outcomes.metrics)
        # With no storage target, videos live in their folder (queue/videos.py), which retention clears too.
        video_folder = load_video_settings(settings.env, settings.data_dir).folder
        self.retention = Retention(repo, settings.retention, store,
                                   videos=(lambda: default_video_store(video_folder)) if video_folder else None)
        self.spool = Spool(repo, store, self.store_health, keep_base64=settings.store_base64, stopping=stopping)

    def run_once(self) -> PassCounts:
        counts = PassCounts()
        rescued = self.rescue.run_once()
        counts.rescued += rescued.rescued
        counts.failed += rescued.failed
        counts.spooled_written += self.spool.run_once().written
        self.repo.fold_queue_counts()
        counts.failed += self.repo.fail_over_budget()
        if self.retention.due():
            kept = self.retention.run_once()
            counts.expired += kept.rows
            counts.more = counts.more or kept.more
            for what, rows in kept.summary().items():
                if what != "more":
                    self.outcomes.metrics.retention.labels(what).inc(rows)
        for name, backend in self.remote.items():
            # Each due task is polled once per pass: a pending one is pushed into the future.
            while not self.stopping.is_set():
                tasks = self.repo.claim_polls([name], backend.max_batch)
                if not tasks:
                    break
                for one in self.io_pool.map(lambda task, b=backend: self._poll(b, task), tasks):
                    counts.merge(one)
        return counts

    def _poll(self, backend: RemoteBackend, task: RemoteTask) -> PassCounts:
        counts = PassCounts(polled=1)
        with structlog.contextvars.bound_contextvars(id=task.id):
            try:
                outcome = backend.poll(task.task_id)
            except RowError as exc:
                self.outcomes.fail(backend.name, task.claim, exc, counts)
                return counts
            except Exception as exc:
                log.exception("backend_error", backend=backend.name)
                self.outcomes.fail(backend.name, task.claim, unexpected(backend.name, exc), counts)
                return counts
        if not isinstance(outcome, Pending):
            self.outcomes.done(backend.name, [(task.claim, outcome)], counts)
            return counts
        age = (datetime.now(UTC) - task.submitted_at).total_seconds() if task.submitted_at else 0.0
        if age > self.settings.generation_timeout_seconds:
            limit = self.settings.generation_timeout_seconds
            error = RetryableError(f"no result after {age:.0f} s (DEFAULT_GENERATION_TIMEOUT={limit:g} s)")
            self.outcomes.fail(backend.name, task.claim, error, counts)
            return counts
        try:
            self.repo.poll_later(task.claim, outcome.poll_after_seconds)
        except (LostOwnership, RowLocked):  # its lease brings it back to a poller
            counts.lost += 1
        return counts
