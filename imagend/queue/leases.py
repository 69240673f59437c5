"""A generating batch's leases: the Heartbeat a backend calls at every step (LeaseKeeper), which
renews the leases, writes progress and previews and hears a cancel or a lost row; and, while a
single step runs longer than the lease (a x4 upscale on a CPU: minutes in one call), its watch,
which keeps the leases and the loop's health alive from a thread of its own as long as the process
lives, and ends a row cancelled meanwhile at once instead of when the step returns."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from imagend.backends.base import PreviewSource
from imagend.config.settings import PREVIEW_SECONDS
from imagend.db.repository import Repository
from imagend.errors import Cancelled, DatabaseUnavailable, Interrupted, LostOwnership, RowLocked
from imagend.logs import get_logger

log = get_logger()

PROGRESS_WRITE_SECONDS = 1.0  # at most one progress/lease write a second per batch (each costs the fleet's database)


class LeaseKeeper:
    """The Heartbeat handed to a generating backend for one batch (see backends/base.py).

    It also keeps the leases of rows claimed ahead (`held`), which wait for this batch:
    their progress, cancellation and loss are theirs to report when their turn comes."""

    def __init__(
        self,
        repo: Repository,
        ids: Sequence[int],
        aborting: threading.Event,
        held: Callable[[], list[int]] = list,
        progressed: Callable[[], None] = lambda: None,
        end_cancelled: Callable[[int], None] | None = None,
        preview_seconds: float = PREVIEW_SECONDS,
    ) -> None:
        self.repo = repo
        self.ids = list(ids)
        self.aborting = aborting
        self.held = held
        self.progressed = progressed
        self.interval = min(PROGRESS_WRITE_SECONDS, repo.lease_seconds / 4)
        self.last_write = time.monotonic()
        self.last_preview = self.last_write
        self.preview_seconds = preview_seconds
        self.cancelled: set[int] = set()
        # Rows the watch ended Failed 'cancelled' while a step ran (end_cancelled): done with.
        self.end_cancelled = end_cancelled
        self.ended_early: set[int] = set()
        self.last_call = self.last_write

    def __call__(self, progress: float | None = None, preview: PreviewSource | None = None) -> None:
        if self.aborting.is_set():
            raise Interrupted("daemon stopping")
        self.progressed()
        now = time.monotonic()
        self.last_call = now
        if self.ended_early:
            self.cancelled = set(self.ended_early)
            raise Cancelled()
        if preview is not None and now - self.last_preview >= self.preview_seconds:
            self.last_preview = now
            self._write_previews(preview)
        if now - self.last_write < self.interval:
            return
        self.last_write = now
        try:
            owned = self.repo.extend_lease([*self.ids, *self.held()], progress, progress_ids=self.ids)
        except DatabaseUnavailable:
            log.warning("lease_not_extended", ids=self.ids, reason="database unavailable")
            return
        if not owned.keys() & set(self.ids):
            raise Interrupted("rows are no longer ours")
        self.cancelled = {image_id for image_id in self.ids if owned.get(image_id)}
        if self.cancelled:
            raise Cancelled()

    def _write_previews(self, preview: PreviewSource) -> None:
        previews = {image_id: text for image_id, text in preview().items() if image_id in self.ids}
        try:
            self.repo.set_previews(previews)
        except (DatabaseUnavailable, RowLocked):
            log.debug("preview_not_written", ids=self.ids)  # a preview is worth no wait and no retry

    # -- while one step outlasts the lease ---------------------------------------------------

    @contextlib.contextmanager
    def watching(self, limit_seconds: float) -> Iterator[None]:
        """Around the backend's call: every `interval`, if no step called back since, renew the leases
        and mark progress from here, for at most `limit_seconds` (past it the call is stuck, not slow:
        the leases lapse and the rescue takes the rows)."""
        stop = threading.Event()
        started = time.monotonic()

        def watch() -> None:
            while not stop.wait(self.interval):
                if time.monotonic() - started > limit_seconds:
                    log.warning("step_watch_gave_up", ids=self.ids, seconds=round(limit_seconds))
                    return
                if time.monotonic() - self.last_call < self.interval:
                    continue  # the steps call back: the heartbeat renews
                self._renew_from_watch()

        thread = threading.Thread(target=watch, name="imagend-step-watch", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _renew_from_watch(self) -> None:
        try:
            owned = self.repo.extend_lease([*self.ids, *self.held()], progress_ids=[])
        except DatabaseUnavailable:
            log.warning("lease_not_extended", ids=self.ids, reason="database unavailable")
            return
        self.progressed()
        for image_id in self.ids:
            if owned.get(image_id) and image_id not in self.ended_early and self.end_cancelled is not None:
                with contextlib.suppress(LostOwnership, RowLocked, DatabaseUnavailable):
                    self.end_cancelled(image_id)
                    self.ended_early.add(image_id)
                    log.info("image_cancelled_during_step", id=image_id)
