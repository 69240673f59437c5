"""How a pass ends rows: done, failed (or back for another attempt), released.

Shared by the generator and the processor so that both write, count and log the same
way. Every write is guarded by the row's claim (see repository.py); a write that lost
its guard is counted as `lost` and logged, and the result is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from imagend.backends.base import Image
from imagend.config.settings import Settings
from imagend.db.repository import Repository
from imagend.db.rows import Claim, Finished, Status
from imagend.errors import Cancelled, LostOwnership, RowError, RowLocked
from imagend.logs import get_logger, redact
from imagend.operations.metrics import Metrics
from imagend.queue.pass_counts import PassCounts
from imagend.queue.publishing import Results
from imagend.retry import backoff_seconds, retry_database
from imagend.storage import Store, StoreUnavailable
from imagend.storage.health import StoreHealth

log = get_logger()
T = TypeVar("T")


class Outcomes:
    """Every outcome is also counted in `metrics` (by the row's backend), a batch at a time."""

    def __init__(
        self, repo: Repository, settings: Settings, metrics: Metrics | None = None, store: Store | None = None,
        store_health: StoreHealth | None = None,
    ) -> None:
        self.repo = repo
        self.settings = settings
        self.results = Results(settings, store, store_health)
        self.metrics = metrics or Metrics()

    def done(self, backend: str, results: Sequence[tuple[Claim, Image]], counts: PassCounts) -> None:
        """The image goes to storage first (publishing.py), then the row is finished in one statement,
        fenced by each claim. An image the store cannot take (down, refusing, a folder that cannot be
        written) is spooled into its row, never failed: generating it again would not help the store."""
        rows, failed = self.results.finished(results)
        for claim, error in failed:
            self.fail(backend, claim, error, counts)
        if not rows:
            return
        statuses: dict[int, str] = {}

        def write(batch: list[Finished]) -> Iterable[int]:
            statuses.update(self.repo.mark_done_or_cancelled(batch))
            return [row.claim.id for row in batch if row.claim.id in statuses]

        ours = self._per_row_if_locked(write, rows, lambda row: row.claim.id)
        cancelled = {image_id for image_id in ours if statuses.get(image_id) == Status.FAILED}
        written = ours - cancelled
        if cancelled:
            self._cancelled_at_the_finish(backend, [row for row in rows if row.claim.id in cancelled], counts)
        counts.done += len(written)
        self.metrics.count(backend, "done", len(written))
        self.metrics.generation_seconds.observe(
            backend, (image.generation_seconds for claim, image in results if claim.id in written))
        kept = {row.claim for row in rows}
        for claim, image in results:
            if claim not in kept or claim.id in cancelled:
                continue
            if claim.id in written:
                log.debug(
                    "image_done",
                    id=claim.id,
                    status=Status.READY_TO_PUBLISH,
                    attempt=claim.attempt,
                    seconds=image.generation_seconds,
                )
            else:
                counts.lost += 1
                self.metrics.lost.labels(backend).inc()
                log.warning(
                    "result_dropped",
                    id=claim.id,
                    status=Status.GENERATE,
                    attempt=claim.attempt,
                    reason="row is no longer ours (lease expired, the producer changed it, or holds it locked)",
                )

    def _cancelled_at_the_finish(self, backend: str, rows: Sequence[Finished], counts: PassCounts) -> None:
        """Rows a producer cancelled while their image was made (images_mark_done ended them Failed
        'cancelled'): what was stored for them goes too, so that a cancelled row leaves nothing behind."""
        counts.failed += len(rows)
        for row in rows:
            self.metrics.failed(backend, Cancelled(), final=True)
            log.info("image_failed", id=row.claim.id, status=Status.FAILED, attempt=row.claim.attempt,
                     error="cancelled", result="dropped: the cancel came while it was made")
        urls = [url for row in rows for url in (row.output_url, row.thumbnail_url, *row.other_urls) if url]
        store = self.results.store
        if urls and store is not None:
            try:
                store.delete_urls(urls)
            except StoreUnavailable as exc:  # retention's IMAGEND_RETENTION_DELETE_OBJECTS would not find them
                log.warning("cancelled_objects_kept", ids=[row.claim.id for row in rows], error=str(exc))

    def _per_row_if_locked(self, write: Callable[[list[T]], Iterable[int]], items: Sequence[T],
                           row_id: Callable[[T], int]) -> set[int]:
        """Run a batch write; if a row of it is locked by another session, write row by row so that
        the locked one (dropped: its lease brings it back) delays only itself."""
        try:
            return set(retry_database(lambda: write(list(items)), self.settings.lease_seconds))
        except RowLocked:
            if len(items) == 1:
                log.warning("row_locked", id=row_id(items[0]), action="dropped; its lease brings it back")
                return set()
        return {written for item in items for written in self._per_row_if_locked(write, [item], row_id)}

    def fail(self, backend: str, claim: Claim, error: RowError | str, counts: PassCounts, *,
             retryable: bool | None = None) -> None:
        message = redact(str(error))
        if retryable is None:
            retryable = isinstance(error, RowError) and error.retryable
        backoff = backoff_seconds(claim.attempt, self.settings.retry_base_seconds) if retryable else 0.0
        try:
            status = retry_database(
                lambda: self.repo.fail_attempt(claim, message, retryable=retryable, backoff_seconds=backoff),
                self.settings.lease_seconds,
            )
        except (LostOwnership, RowLocked):
            counts.lost += 1
            self.metrics.lost.labels(backend).inc()
            log.warning("failure_dropped", id=claim.id, status=Status.GENERATE, attempt=claim.attempt, error=message)
            return
        self.metrics.failed(backend, error, final=status == Status.FAILED)
        if status == Status.FAILED:
            counts.failed += 1
            log.info("image_failed", id=claim.id, status=status, attempt=claim.attempt, error=message)
        else:
            counts.retried += 1
            log.info(
                "image_retry_later",
                id=claim.id,
                status=status,
                attempt=claim.attempt,
                error=message,
                backoff_seconds=round(backoff, 1),
            )

    def fail_all(self, backend: str, failures: Sequence[tuple[Claim, RowError]], counts: PassCounts) -> None:
        """Rows that cannot succeed (bad input, cancelled): Failed for good, in one write per batch;
        a retryable error goes through fail() (its attempts and backoff are the row's own)."""
        final = [(claim, error) for claim, error in failures if not error.retryable]
        for claim, error in failures:
            if error.retryable:
                self.fail(backend, claim, error, counts)
        if not final:
            return
        messages = {claim.id: (claim, error, redact(str(error))) for claim, error in final}
        written = self._per_row_if_locked(
            lambda batch: self.repo.fail_batch([(claim, message) for claim, _, message in batch]),
            list(messages.values()), lambda item: item[0].id,
        )
        for claim, error, message in messages.values():
            if claim.id not in written:
                counts.lost += 1
                self.metrics.lost.labels(backend).inc()
                log.warning("failure_dropped", id=claim.id, status=Status.GENERATE, attempt=claim.attempt,
                            error=message)
                continue
            counts.failed += 1
            self.metrics.failed(backend, error, final=True)
            log.info("image_failed", id=claim.id, status=Status.FAILED, attempt=claim.attempt, error=message)

    def release(
        self, backend: str, ids: Sequence[int], counts: PassCounts, *, delay_seconds: float = 0.0,
        reason: str | None = None,
    ) -> None:
        if not ids:
            return
        released = self._per_row_if_locked(
            lambda batch: self.repo.release(batch, delay_seconds=delay_seconds, reason=reason), ids, lambda i: i
        )
        counts.released += len(released)
        self.metrics.count(backend, "released", len(released))
        for image_id in released:
            log.info("image_released", id=image_id, reason=reason or "daemon stopping")
