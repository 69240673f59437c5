"""The spool: finished images the store could not take (down, full, refusing) wait in their rows'
base64 (`spooled_at` set); each processor pass writes them to the store, a batch at a time, then
records where they are and drops what IMAGEND_STORE_BASE64=false does not keep. While the store is
down the daemon asks for a pass every few seconds (SPOOL_RETRY_SECONDS); a store that answers again
(a write, or its check when nothing is spooled) is marked up and claiming resumes."""

from __future__ import annotations

import base64
import binascii
import threading
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from imagend.db.repository import Repository
from imagend.db.rows import Spooled
from imagend.images.formats import FORMATS, sniff
from imagend.logs import get_logger
from imagend.storage import Store, StoredObject, StoreUnavailable, object_names
from imagend.storage.health import StoreHealth

log = get_logger()
Stored = tuple[int, str, str | None, str | None]  # id, output_url, output_path, thumbnail_url

SPOOL_BATCH_ROWS = 100
SPOOL_RETRY_SECONDS = 5.0


@dataclass
class SpoolCounts:
    written: int = 0  # images written to the store and their rows updated
    left: bool = False  # the store refused a write: rows are still spooled


class Spool:
    def __init__(self, repo: Repository, store: Store | None, health: StoreHealth, *, keep_base64: bool,
                 stopping: threading.Event | None = None, batch_rows: int = SPOOL_BATCH_ROWS) -> None:
        self.repo = repo
        self.store = store
        self.health = health
        self.keep_base64 = keep_base64
        self.stopping = stopping
        self.batch_rows = batch_rows

    def run_once(self) -> SpoolCounts:
        counts = SpoolCounts()
        if self.store is None:
            return counts
        after_id = 0
        while self.stopping is None or not self.stopping.is_set():
            rows = self.repo.spooled_batch(after_id, self.batch_rows)
            if not rows:
                break
            after_id = rows[-1].id
            stored, failure = self._write(self.store, rows)
            if stored:
                counts.written += len(self.repo.spool_mark(stored, keep_base64=self.keep_base64))
            if failure is not None:
                self.health.failed(str(failure))
                counts.left = True
                return counts
            self.health.succeeded()
            if len(rows) < self.batch_rows:
                break
        if not self.health.ok:  # nothing (more) spooled: ask the store itself
            try:
                self.store.check()
                self.health.succeeded()
            except Exception as exc:  # the store says why; claiming stays paused
                self.health.failed(f"{type(exc).__name__}: {exc}")
                counts.left = True
        if counts.written:
            log.info("spool_written", rows=counts.written)
        return counts

    def _write(self, store: Store, rows: list[Spooled]) -> tuple[list[Stored], StoreUnavailable | None]:
        """Every object of the batch in one round; a row counts as stored once all of its objects are."""
        objects: list[StoredObject] = []
        owners: list[int] = []
        for row in rows:
            try:
                data = base64.b64decode(row.base64, validate=True)
                thumb = base64.b64decode(row.thumbnail, validate=True) if row.thumbnail else None
            except (binascii.Error, ValueError):
                log.warning("spool_skipped", id=row.id, reason="its base64 does not decode")
                continue
            extension, content_type = FORMATS[row.format if row.format in FORMATS else sniff(data)]
            image_name, thumb_name = object_names(row.id, extension)
            objects.append(StoredObject(image_name, data, content_type))
            owners.append(row.id)
            if thumb is not None:
                objects.append(StoredObject(thumb_name, thumb, "image/webp"))
                owners.append(row.id)
        written: dict[int, list[str]] = {}
        refused: set[int] = set()
        failure: StoreUnavailable | None = None
        for row_id, result in zip(owners, store.put_all(objects), strict=True):
            if isinstance(result, StoreUnavailable):
                failure = failure or result
                refused.add(row_id)
            else:
                written.setdefault(row_id, []).append(result)
        stored = []
        for row_id, urls in written.items():
            if row_id in refused:
                continue
            image_url, thumb_url = urls[0], (urls[1] if len(urls) > 1 else None)
            path = unquote(urlsplit(image_url).path) if image_url.startswith("file:") else None
            stored.append((row_id, image_url, path, thumb_url))
        return stored, failure
