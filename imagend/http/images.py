"""A finished row's image bytes over HTTP, shared by the dashboard (/images/{id}/full, /thumbnail)
and the JSON API (/v1/images/{id}/image).

Only what the daemon stored is served, found by the row's id: the row's base64 (or thumbnail), else
the object the daemon wrote in its configured store (IMAGEND_STORAGE_URL or IMAGEND_OUTPUT_DIR)
under the name it gives it, `<id>.<ext>` (thumbnails `<id>.thumb.webp`; queue/publishing.py's
object_names). `output_path`, `output_url` and `thumbnail_url` are columns a producer can write, so a
location is served only when it is exactly that object: a file in the store's folder (symbolic links
resolved, so none leads out of it), or that key in the store's bucket and prefix. Nothing else is
read, and nothing is redirected to (an http(s) URL a producer wrote would be an open redirect, and an
<img> the viewers' browsers fetch). The Content-Type comes from the bytes' magic numbers, else the
row's `format`; a file that is no PNG, JPEG or WebP is not served. While the store does not answer,
the answer is 503 naming it (the image is not lost, only out of reach).
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from starlette.responses import Response

from imagend.db.rows import Status
from imagend.http.context import HttpContext
from imagend.http.responses import error
from imagend.images.formats import FORMAT_ALIASES, FORMATS
from imagend.logs import get_logger
from imagend.storage import THUMBNAIL_SUFFIX

log = get_logger()

FINISHED = Status.READY_TO_PUBLISH
# A finished image does not change (a retry is for Failed rows only); the browser may keep it a while.
CACHE_CONTROL = "private, max-age=300"
MAX_FILE_BYTES = 64 * 1024 * 1024  # bigger than any image a backend makes
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class StoreUnreachable(Exception):
    """The store did not answer a read: 503, naming it."""


def image_kind(data: bytes) -> str | None:
    """png, jpeg or webp from the magic numbers; None when `data` is none of them."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def stored_names(image_id: int, thumbnail: bool) -> frozenset[str]:
    """The names the daemon gives row `image_id`'s image (one per format) or its thumbnail."""
    if thumbnail:
        return frozenset({f"{image_id}{THUMBNAIL_SUFFIX}"})
    return frozenset(f"{image_id}.{extension}" for extension, _ in FORMATS.values())


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


def _store_file(context: HttpContext, path_text: str, names: frozenset[str]) -> Path | None:
    """`path_text` resolved, if it is one of `names` right in the folder store's folder; else None."""
    target = context.settings.storage
    if target is None or target.scheme != "file" or target.folder is None:
        return None
    path = Path(path_text)
    if not path.is_absolute():
        return None
    try:
        folder = target.folder.resolve()
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):  # gone, or a loop of links
        return None
    return resolved if resolved.parent == folder and resolved.name in names else None


def _read_file(path: Path) -> bytes | None:
    """The file's bytes if it is a regular file (not a link) holding a PNG, JPEG or WebP; else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE_BYTES:
            return None
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) <= MAX_FILE_BYTES and image_kind(data) else None


def _s3_object(context: HttpContext, url: str, names: frozenset[str]) -> bytes | None:
    """The object at `url` if `url` is one of `names` in the store's bucket and prefix; None when it is
    not (or is gone); StoreUnreachable when the store does not answer."""
    target, store = context.settings.storage, context.store
    if target is None or target.scheme != "s3" or store is None:
        return None
    if url not in {f"s3://{target.bucket}/{target.key(name)}" for name in names}:
        return None
    try:
        return store.read_url(url)
    except Exception as exc:  # botocore's, without importing it (boto3 is an extra)
        code = str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code") or type(exc).__name__)
        if code in _MISSING_CODES:
            return None
        log.warning("http_store_unreachable", store=target.describe(), reason=code)
        raise StoreUnreachable(f"the store {target.describe()} did not answer ({code}): the image is kept "
                               "there; try again when it is back") from None


def _stored(context: HttpContext, location: str, names: frozenset[str], row_format: str | None) -> Response | None:
    """The stored object `location` (a path or a file:// or s3:// URL) names, if it is ours; else None."""
    parts = urlsplit(location)
    scheme = parts.scheme.lower()
    if scheme == "s3":
        data = _s3_object(context, location, names)
    elif scheme == "file" or (not scheme and location.startswith("/")):
        path = _store_file(context, unquote(parts.path) if scheme else location, names)
        data = _read_file(path) if path is not None else None
    else:
        return None  # http(s) and the rest: never fetched, never redirected to
    return _bytes_response(data, row_format) if data is not None else None


def _full(context: HttpContext, image_id: int, row: dict[str, Any]) -> Response:
    data = _decode(row.get("base64"))
    if data is not None:
        return _bytes_response(data, row.get("format"))
    names = stored_names(image_id, thumbnail=False)
    for location in (row.get("output_path"), row.get("output_url")):
        if location:
            response = _stored(context, location, names, row.get("format"))
            if response is not None:
                return response
    return error(404, f"image {image_id} has no image this daemon stored that can be read (retention may have "
                      "dropped it; a location written by a producer is not served)")


def _unreachable(image_id: int, exc: StoreUnreachable) -> Response:
    return error(503, f"image {image_id}: {exc}")


def image_response(context: HttpContext, image_id: int) -> Response:
    """The image of finished row `image_id`; 404 JSON for an unknown id, a row that is not finished,
    or one whose image cannot be read; 503 JSON while the store does not answer."""
    row = context.ops.image(image_id)
    if row is None:
        return error(404, f"no image with id {image_id}")
    if row["status"] != FINISHED:
        return error(404, f"image {image_id} has no image: its status is {row['status']}")
    try:
        return _full(context, image_id, row)
    except StoreUnreachable as exc:
        return _unreachable(image_id, exc)


def listed_names(image_id: int, index: int, thumbnail: bool) -> frozenset[str]:
    """The names the daemon gives image `index` of a row of n > 1 images (`<id>-<k>.<ext>`) or its thumbnail."""
    if thumbnail:
        return frozenset({f"{image_id}-{index}{THUMBNAIL_SUFFIX}"})
    return frozenset(f"{image_id}-{index}.{extension}" for extension, _ in FORMATS.values())


def listed_image_response(context: HttpContext, image_id: int, index: int, thumbnail: bool = False) -> Response:
    """Image `index` (1..n) of finished row `image_id` of n > 1 images (its `images` entry: the base64 kept in
    the row, else the object the daemon stored under `<id>-<k>.<ext>`), or its thumbnail (else the image).
    Image 1 of a row of one image is the row's image. 404 JSON for what is not there; 503 while the store
    does not answer."""
    found = context.ops.listed_image(image_id, index)
    if found is None:
        return error(404, f"no image with id {image_id}")
    if found["status"] != FINISHED:
        return error(404, f"image {image_id} has no image: its status is {found['status']}")
    entry = found["entry"]
    if not isinstance(entry, dict):
        if index == 1:  # a row of one image: its own
            return thumbnail_response(context, image_id) if thumbnail else image_response(context, image_id)
        return error(404, f"image {image_id} has no image {index}")
    fmt = entry.get("format") if isinstance(entry.get("format"), str) else found["format"]
    try:
        if thumbnail:
            data = _decode(entry.get("thumbnail"))
            if data is not None:
                return _bytes_response(data, "webp")
            location = entry.get("thumbnail_url")
            if isinstance(location, str):
                response = _stored(context, location, listed_names(image_id, index, True), None)
                if response is not None:
                    return response
        data = _decode(entry.get("base64"))
        if data is not None:
            return _bytes_response(data, fmt)
        for key in ("path", "url"):
            location = entry.get(key)
            if isinstance(location, str):
                response = _stored(context, location, listed_names(image_id, index, False), fmt)
                if response is not None:
                    return response
    except StoreUnreachable as exc:
        return _unreachable(image_id, exc)
    return error(404, f"image {image_id} has no image {index} this daemon stored that can be read")


def thumbnail_response(context: HttpContext, image_id: int) -> Response:
    """The row's thumbnail (its `thumbnail` column, else the stored thumbnail), else the full image."""
    row = context.ops.thumbnail(image_id)
    if row is None:
        return error(404, f"no image with id {image_id}")
    data = _decode(row.get("thumbnail"))
    if data is not None:
        return _bytes_response(data, "webp")
    if row.get("thumbnail_url"):
        try:
            response = _stored(context, row["thumbnail_url"], stored_names(image_id, thumbnail=True), None)
        except StoreUnreachable as exc:
            return _unreachable(image_id, exc)
        if response is not None:
            return response
    return image_response(context, image_id)
