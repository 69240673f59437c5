"""A finished row's image bytes over HTTP, shared by the dashboard (/images/{id}/full, /thumbnail)
and the JSON API (/v1/images/{id}/image).

Where the bytes are, in order: the row's base64, its file (output_path, or a file:// output_url),
the configured S3 target (read with the daemon's own store), an http(s) URL (a redirect). The
Content-Type comes from the bytes' magic numbers, else the row's `format`. A file is served only if
it is a regular file that starts like a PNG, JPEG or WebP: `output_path` is a column a producer can
write, so it never serves an arbitrary file of the host.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from starlette.responses import RedirectResponse, Response

from imagend.db.rows import Status
from imagend.http.context import HttpContext
from imagend.http.responses import error
from imagend.images.formats import FORMAT_ALIASES, FORMATS
from imagend.logs import get_logger

log = get_logger()

FINISHED = Status.READY_TO_PUBLISH
# A finished image does not change (a retry is for Failed rows only); the browser may keep it a while.
CACHE_CONTROL = "private, max-age=300"
MAX_FILE_BYTES = 64 * 1024 * 1024  # bigger than any image a backend makes


def image_kind(data: bytes) -> str | None:
    """png, jpeg or webp from the magic numbers; None when `data` is none of them."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _bytes_response(data: bytes, row_format: str | None) -> Response:
    kind = image_kind(data)
    if kind is None and row_format:
        kind = FORMAT_ALIASES.get(row_format.lower(), row_format.lower())
    media_type = FORMATS[kind][1] if kind in FORMATS else "application/octet-stream"
    return Response(data, media_type=media_type,
                    headers={"Cache-Control": CACHE_CONTROL, "X-Content-Type-Options": "nosniff"})


def _decode(text: str | None) -> bytes | None:
    if not text:
        return None
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        return None


def _read_image_file(path_text: str) -> bytes | None:
    """The file's bytes if it is a regular file holding a PNG, JPEG or WebP; else None."""
    path = Path(path_text)
    try:
        if not path.is_absolute() or not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
            return None
        with path.open("rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return data if image_kind(data) else None


def _from_url(context: HttpContext, url: str, row_format: str | None) -> Response | None:
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        data = _read_image_file(unquote(urlsplit(url).path))
        return _bytes_response(data, row_format) if data is not None else None
    if scheme == "s3":
        storage = context.settings.storage
        if storage is None or storage.scheme != "s3" or context.store is None:
            return None
        try:
            data = context.store.read_url(url)
        except Exception as exc:  # not in our bucket, gone, or the store is down: say so in the log
            log.warning("http_image_unreadable", url=url, reason=type(exc).__name__)
            return None
        return _bytes_response(data, row_format)
    if scheme in ("http", "https"):
        return RedirectResponse(url, status_code=307)
    return None


def _full(context: HttpContext, image_id: int, row: dict[str, Any]) -> Response:
    data = _decode(row.get("base64"))
    if data is not None:
        return _bytes_response(data, row.get("format"))
    if row.get("output_path"):
        data = _read_image_file(row["output_path"])
        if data is not None:
            return _bytes_response(data, row.get("format"))
    if row.get("output_url"):
        response = _from_url(context, row["output_url"], row.get("format"))
        if response is not None:
            return response
    return error(404, f"image {image_id} has no image that can be read (retention may have dropped it)")


def image_response(context: HttpContext, image_id: int) -> Response:
    """The image of finished row `image_id`; 404 JSON for an unknown id, a row that is not finished,
    or one whose image cannot be read."""
    row = context.ops.image(image_id)
    if row is None:
        return error(404, f"no image with id {image_id}")
    if row["status"] != FINISHED:
        return error(404, f"image {image_id} has no image: its status is {row['status']}")
    return _full(context, image_id, row)


def thumbnail_response(context: HttpContext, image_id: int) -> Response:
    """The row's thumbnail (its `thumbnail` column, else `thumbnail_url`), else the full image."""
    row = context.ops.thumbnail(image_id)
    if row is None:
        return error(404, f"no image with id {image_id}")
    data = _decode(row.get("thumbnail"))
    if data is not None:
        return _bytes_response(data, "webp")
    if row.get("thumbnail_url"):
        response = _from_url(context, row["thumbnail_url"], None)
        if response is not None:
            return response
    return image_response(context, image_id)
