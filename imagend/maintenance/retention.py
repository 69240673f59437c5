"""Retention: the processor keeps the table small for years (IMAGEND_RETENTION_*).

- `Failed` rows finished longer ago than IMAGEND_RETENTION_FAILED are deleted;
- `ReadyToPublish` rows finished longer ago than IMAGEND_RETENTION_DONE are deleted;
- the base64 of stored rows finished longer ago than IMAGEND_RETENTION_BASE64 is dropped (the row stays).

Terminal rows only, oldest first, BATCH_ROWS per statement (a short lock, a small burst of WAL, rows a
producer holds skipped), at most MAX_BATCHES_PER_PASS per pass: a pass with more left sets `more` so the
pacer runs the processor again soon, between generator passes, instead of one long pass. The objects of
deleted rows go too with IMAGEND_RETENTION_DELETE_OBJECTS=true (rows first: a row never points at a
deleted object; a store that is down then leaves objects behind, logged). With no storage target,
the videos' folder (IMAGEND_VIDEO_DIR: a video never stays in its row) is that store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields

from imagend.config.settings import RetentionSettings
from imagend.db.repository import Repository
from imagend.db.rows import Expired, Status
from imagend.logs import get_logger
from imagend.storage import Store, StoreUnavailable

log = get_logger()

BATCH_ROWS = 2000
MAX_BATCHES_PER_PASS = 25


@dataclass
class RetentionCounts:
    failed_deleted: int = 0
    done_deleted: int = 0
    base64_dropped: int = 0
    objects_deleted: int = 0
    objects_left: int = 0  # rows deleted whose objects the store would not delete
    more: bool = False  # stopped at MAX_BATCHES_PER_PASS with rows left

    @property
    def rows(self) -> int:
        return self.failed_deleted + self.done_deleted + self.base64_dropped

    def summary(self) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name)}


def prepare(repo: Repository, policy: RetentionSettings) -> None:
    """At start: the indexes retention's statements need, built once (CONCURRENTLY: writes go on)."""
    if policy.failed_seconds is not None or policy.done_seconds is not None:
        repo.build_index("images_retention_index_finished")
    if policy.base64_seconds is not None:
        repo.build_index("images_retention_index_inline")
    for name in repo.invalid_indexes():
        log.warning("index_invalid", index=name, action=f"an index build was interrupted: DROP INDEX CONCURRENTLY "
                                                        f"{name}; the next start rebuilds it")


class Retention:
    def __init__(self, repo: Repository, policy: RetentionSettings, store: Store | None,
                 videos: Callable[[], Store] | None = None) -> None:
        """`videos`: the videos' own folder, asked for when there is no `store` and a row expires with an
        object (only a video, or its poster, has one then)."""
        self.repo = repo
        self.policy = policy
        self.store = store if policy.delete_objects else None
        self.videos = videos if policy.delete_objects and store is None else None
        self._next_at = 0.0

    @property
    def enabled(self) -> bool:
        return self.policy.enabled

    @property
    def idle_seconds(self) -> float:
        """After a pass that finished its work (each look is one index probe per policy; processor passes
        come every few seconds while remote tasks are in flight): RetentionSettings.look_again_seconds.
        An idle daemon's processor interval is held to it too (config/settings.py), so the look comes."""
        return self.policy.look_again_seconds

    def due(self, now: float | None = None) -> bool:
        return self.enabled and (time.monotonic() if now is None else now) >= self._next_at

    def run_once(self) -> RetentionCounts:
        """One pass over every policy; logs what it removed."""
        counts = RetentionCounts()
        budget = MAX_BATCHES_PER_PASS
        steps = [
            (Status.FAILED, self.policy.failed_seconds, "failed_deleted"),
            (Status.READY_TO_PUBLISH, self.policy.done_seconds, "done_deleted"),
        ]
        for status, age, field_name in steps:
            while age is not None and budget > 0:
                budget -= 1
                expired = self.repo.expire(status, age, BATCH_ROWS)
                setattr(counts, field_name, getattr(counts, field_name) + len(expired))
                self._delete_objects(expired, counts)
                if len(expired) < BATCH_ROWS:
                    break
            else:
                counts.more = counts.more or age is not None
        while self.policy.base64_seconds is not None and budget > 0:
            budget -= 1
            dropped = self.repo.drop_base64(self.policy.base64_seconds, BATCH_ROWS)
            counts.base64_dropped += dropped
            if dropped < BATCH_ROWS:
                break
        else:
            counts.more = counts.more or self.policy.base64_seconds is not None
        self._next_at = 0.0 if counts.more else time.monotonic() + self.idle_seconds
        if counts.rows:
            log.info("retention_pass", **counts.summary())
        return counts

    def _delete_objects(self, expired: list[Expired], counts: RetentionCounts) -> None:
        if self.store is None and self.videos is None:
            return
        urls = [url for row in expired for url in (row.output_url, row.thumbnail_url) if url]
        urls += [url for row in expired for url in row.image_urls or () if url not in urls]  # rows of n images
        if self.store is not None:
            urls += [row.output_path for row in expired if row.output_path and not row.output_url]
        if not urls:
            return
        store = self.store if self.store is not None else self.videos() if self.videos is not None else None
        assert store is not None
        try:
            counts.objects_deleted += store.delete_urls(urls)
        except StoreUnavailable as exc:
            counts.objects_left += len(urls)
            log.warning("retention_objects_left", objects=len(urls), error=str(exc),
                        first=urls[:3], reason="the rows are gone; delete these objects by hand or leave them")
