"""Chained rows: a row whose init_image_id or reference_image_id names another row takes that row's
finished image as its input.

The claim skips a row until its source has ended (images_claim_batch), and a source that ends wakes
the daemons (images_notify_sources_done), so by the time a chained row is claimed its source is
ReadyToPublish, Failed, or gone. The image is read where the source keeps it: its base64, else its
stored copy (IMAGEND_STORAGE_URL, read through the daemon's own store).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping

from imagend.db.rows import SourceRow, Status
from imagend.errors import BadInput, clip

FINISHED = Status.READY_TO_PUBLISH
ERROR_ECHO_CHARS = 120


def source_image_bytes(
    source_id: int,
    column: str,
    own_id: int,
    sources: Mapping[int, SourceRow],
    read_stored: Callable[[str], bytes] | None,
) -> bytes:
    """The image bytes of row `source_id`, or BadInput naming `column` and why there are none."""
    if source_id == own_id:
        raise BadInput(f"{column} {source_id} is this row itself; name another row")
    source = sources.get(source_id)
    if source is None:
        raise BadInput(f"{column} {source_id}: no such row")
    if source.status == Status.FAILED:
        reason = f" ({clip(source.error, ERROR_ECHO_CHARS)})" if source.error else ""
        raise BadInput(f"{column} {source_id} failed{reason}, so there is no image to start from")
    if source.status != FINISHED:
        # The claim waits for the source; a source that a producer put back since is not finished.
        raise BadInput(f"{column} {source_id} is {source.status}, not finished; insert this row again once it is")
    if source.base64:
        try:
            return base64.b64decode(source.base64, validate=False)
        except (binascii.Error, ValueError):
            raise BadInput(f"{column} {source_id}: its base64 cannot be decoded") from None
    if source.output_url and read_stored is not None:
        try:
            return read_stored(source.output_url)
        except Exception as exc:  # the store says why (missing object, no access): the row's error tells it
            raise BadInput(f"{column} {source_id}: its stored image cannot be read ({type(exc).__name__})") from None
    raise BadInput(
        f"{column} {source_id} has no image left (removed by retention, or stored where this daemon cannot read)"
    )
