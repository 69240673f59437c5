"""`imagend -export-images`: move the images of finished rows that live only in their base64 into the
storage target, a batch at a time.

Resumable: rows are taken in id order after a cursor, and a row once exported has its output_url, so an
interrupted run started again goes on where it stopped. Safe while daemons run: it touches finished rows
only, holds no lock while writing objects, and its write is guarded (a row a producer put back since is
left alone). With IMAGEND_STORE_BASE64=false the base64 is dropped in the same write.
"""

from __future__ import annotations

import base64
import binascii
import threading
from dataclasses import dataclass

from imagend.db.repository import Repository
from imagend.images.formats import FORMATS, sniff
from imagend.logs import get_logger
from imagend.storage import Store, StoredObject, StoreUnavailable

log = get_logger()

EXPORT_BATCH_ROWS = 500  # a batch's base64 is held in memory: 500 SDXL PNGs is about 1 GB at most


@dataclass
class ExportCounts:
    exported: int = 0
    skipped: int = 0  # base64 that does not decode: left as it is, logged
    changed: int = 0  # put back or exported by someone else between the read and the write
    batches: int = 0


def export_images(
    repo: Repository,
    store: Store,
    *,
    keep_base64: bool,
    batch_rows: int = EXPORT_BATCH_ROWS,
    max_batches: int | None = None,
    stopping: threading.Event | None = None,
) -> ExportCounts:
    """Export until no row is left (or `max_batches`, or `stopping`). Raises StoreUnavailable when the
    store fails a write: what was exported so far is recorded, a new run resumes."""
    counts = ExportCounts()
    after_id = 0
    while max_batches is None or counts.batches < max_batches:
        if stopping is not None and stopping.is_set():
            break
        rows = repo.export_batch(after_id, batch_rows)
        if not rows:
            break
        counts.batches += 1
        after_id = rows[-1].id
        ids, objects, formats = [], [], []
        for row in rows:
            try:
                data = base64.b64decode(row.base64, validate=True)
            except (binascii.Error, ValueError):
                counts.skipped += 1
                log.warning("export_skipped", id=row.id, reason="its base64 does not decode")
                continue
            fmt = row.format if row.format in FORMATS else sniff(data)
            extension, content_type = FORMATS[fmt]
            ids.append(row.id)
            formats.append(fmt)
            objects.append(StoredObject(f"{row.id}.{extension}", data, content_type))
        results = store.put_all(objects)
        stored = [(i, url, fmt) for i, url, fmt in zip(ids, results, formats, strict=True)
                  if not isinstance(url, StoreUnavailable)]
        if stored:
            marked = repo.export_mark([s[0] for s in stored], [str(s[1]) for s in stored], [s[2] for s in stored],
                                      keep_base64=keep_base64)
            counts.exported += len(marked)
            counts.changed += len(stored) - len(marked)
        log.info("export_batch", rows=len(stored), last_id=after_id, exported=counts.exported)
        failure = next((url for url in results if isinstance(url, StoreUnavailable)), None)
        if failure is not None:
            raise failure
    return counts
