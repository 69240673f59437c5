"""What a web app needs of the API besides POST /v1/images (issue 23; docs/operations.md):

    POST /v1/uploads                  an image (raw body, or multipart's first file) → 201 {"id": …}: an id
                                      that init_image_id / reference_image_id take
    GET  /v1/images/{id}/events       the row forming, as Server-Sent Events (events.py)
    GET  /v1/images/{id}/thumbnail    the thumbnail (a signed link needs no token, as /image)
    GET  /example, /example.js        a small web page: upload a photo, image-to-image, watch it form

An upload is a finished row of its own (task 'upload', queries_webapp.sql), so every place a row id
is taken as an input takes it, it is served as /v1/images/{id}/image, and retention removes it. It is
decoded as the daemon decodes an input (images/inputs.py: PNG, JPEG or WebP, at most
MAX_INPUT_PIXELS, so a decompression bomb is refused) before anything is stored, and kept in the
store when there is one (`<id>.<ext>`, as a finished image), else in the row.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from imagend.db.columns import COLUMNS, INT4_MAX, Kind
from imagend.db.webapp import KeyReused, WebAppRepository
from imagend.errors import BadInput, clip
from imagend.http.auth import authorize, check_read, sees
from imagend.http.checks import BODY_MAX_BYTES, BadRequest, parse_object, read_body
from imagend.http.context import HttpContext
from imagend.http.events import EventHub, TooMany
from imagend.http.images import thumbnail_response
from imagend.http.multipart import MultipartError, Part, parse
from imagend.http.responses import error
from imagend.images.formats import FORMATS, sniff
from imagend.images.inputs import decode_image_bytes, decode_mask_bytes
from imagend.storage import StoredObject, StoreUnavailable, object_names
from imagend.webhooks import targets

IDEMPOTENCY_KEY_MAX_BYTES = 255
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # the form's own fields and framing, beside the image
# Uploads at once (past it 503, Retry-After): each holds up to IMAGEND_UPLOAD_MAX_BYTES and, while it is
# checked, its decoded pixels (up to 48 MiB), so the listener's memory stays bounded under a flood.
MAX_UPLOADS_AT_ONCE = 4
FILENAME_MAX_CHARS = 200
EXAMPLE_HEADERS = {
    # The example page shows images from where the links point: a bucket or CDN as well as this listener.
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                "img-src 'self' data: https: http:; connect-src 'self'; base-uri 'none'; "
                                "form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class IdempotencyKey:
    stored: str  # what imagend_api_requests keeps: a hash, namespaced by endpoint (never the key itself)
    body_hash: str


def idempotency_key(request: Request, endpoint: str, body: bytes, owner: str | None = None) -> IdempotencyKey | None:
    """The request's Idempotency-Key, hashed with its endpoint and its caller's owner (two owners' keys
    never meet); BadRequest 400 when it is unusable."""
    value = request.headers.get("idempotency-key")
    if value is None:
        return None
    raw = value.encode("latin-1", errors="replace")
    if not value.strip():
        raise BadRequest(400, "Idempotency-Key is empty: send a unique value per request (a UUID)")
    if len(raw) > IDEMPOTENCY_KEY_MAX_BYTES:
        raise BadRequest(400, f"Idempotency-Key is {len(raw)} bytes; at most {IDEMPOTENCY_KEY_MAX_BYTES} are taken "
                              "(a UUID is 36)")
    caller = (owner or "").encode() + b"\0"
    stored = f"{endpoint}:" + hashlib.sha256(caller + raw).hexdigest()
    return IdempotencyKey(stored=stored, body_hash=hashlib.sha256(body).hexdigest())


def retry_window_seconds(context: HttpContext) -> float:
    return context.settings.webapp.retry_window_seconds


def upload_limit(context: HttpContext) -> int:
    return context.settings.webapp.upload_max_bytes


class Uploads:
    """Decoding and storing an upload (sync: run in the thread pool)."""

    def __init__(self, context: HttpContext, repo: WebAppRepository) -> None:
        self.context = context
        self.repo = repo

    def save(self, data: bytes, filename: str | None, key: IdempotencyKey | None = None,
             owner: str | None = None) -> tuple[dict[str, Any], bool]:
        """The upload's description and whether it is a replay; BadRequest 422 for what is not an image."""
        if not data:
            raise BadRequest(422, "the upload is empty: send a PNG, JPEG or WebP")
        try:
            image = decode_image_bytes(data, "the upload")
        except BadInput as exc:
            raise BadRequest(422, str(exc)) from None
        width, height = image.size
        kind = sniff(data)
        ext, content_type = FORMATS[kind]
        params = {"upload": {"filename": clip(filename, FILENAME_MAX_CHARS) if filename else None, "bytes": len(data)}}
        store = self.context.store

        def put(image_id: int) -> str:
            assert store is not None
            name, _thumbnail = object_names(image_id, ext)
            written = store.put_all([StoredObject(name=name, data=data, content_type=content_type)])[0]
            if isinstance(written, StoreUnavailable):
                raise written
            return written

        try:
            image_id, replay = self.repo.upload(
                fmt=kind, width=width, height=height, params=params, owner=owner,
                base64=None if store is not None else base64.b64encode(data).decode("ascii"),
                key=key.stored if key else None, body_hash=key.body_hash if key else None,
                window_seconds=retry_window_seconds(self.context), store=put if store is not None else None)
        except KeyReused:
            raise BadRequest(422, "this Idempotency-Key was used with another body: use a new key per "
                                  "request") from None
        except StoreUnavailable as exc:
            raise BadRequest(503, f"the upload could not be stored: {exc}") from None
        return {"id": image_id, "width": width, "height": height, "format": kind, "bytes": len(data),
                "image_url": self.context.links.link(image_id, "image", None, True)}, replay


def first_file(body: bytes, content_type: str) -> tuple[bytes, str | None]:
    try:
        form = parse(body, content_type)
    except MultipartError as exc:
        raise BadRequest(400, str(exc)) from None
    found = next((part for part in form.parts if part.is_file), None)
    if found is None:
        raise BadRequest(400, "the multipart body has no file part: send the image as a file (name 'file')")
    return found.data, found.filename


# -- POST /v1/images: multipart with the images inline, Idempotency-Key, callback_url ---------------

INLINE_IMAGES = {"init_image": "init_image_id", "reference_image": "reference_image_id", "mask_image": "mask_image"}
PLACEHOLDER_MASK = "placeholder"  # stands for the mask part while the columns are checked


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


def submit_limit(context: HttpContext, request: Request) -> int:
    """POST /v1/images's body limit: 64 KiB of JSON, or the images' limit for a multipart form."""
    return upload_limit(context) * 2 + MULTIPART_OVERHEAD_BYTES if is_multipart(request) else BODY_MAX_BYTES


def _typed(name: str, text: str) -> Any:
    """A form field as the column's JSON type (the form sends text)."""
    column = COLUMNS.get(name)
    if column is None or column.kind in (Kind.TEXT, Kind.TIME, Kind.IMAGE) or text == "":
        return None if text == "" else text
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise BadRequest(422, f"{name} must be a JSON {column.kind.value}, got {clip(text, 40)!r}") from None


def submitted(request: Request, body: bytes) -> tuple[dict[str, Any], dict[str, Part]]:
    """The body's columns and its inline image files (multipart: fields, a `json` field of columns,
    files named init_image / reference_image / mask_image). Sync: run in the thread pool."""
    if not is_multipart(request):
        return parse_object(body), {}
    try:
        form = parse(body, request.headers["content-type"])
    except MultipartError as exc:
        raise BadRequest(400, str(exc)) from None
    fields: dict[str, Any] = {}
    images: dict[str, Part] = {}
    for part in form.parts:
        if part.is_file:
            if part.name not in INLINE_IMAGES:
                raise BadRequest(400, f"file part {clip(part.name, 40)!r}: files are taken as "
                                      f"{', '.join(INLINE_IMAGES)}")
            images[part.name] = part
            continue
        try:
            text = part.text()
        except MultipartError as exc:
            raise BadRequest(400, str(exc)) from None
        if part.name == "json":
            fields.update(parse_object(part.data))
        else:
            fields[part.name] = _typed(part.name, text)
    return fields, images


def placeholders(images: dict[str, Part]) -> dict[str, Any]:
    """What the inline images stand for while the columns are checked (the ids they will get)."""
    return {INLINE_IMAGES[name]: PLACEHOLDER_MASK if name == "mask_image" else 1 for name in images}


def check_callback(context: HttpContext, columns: dict[str, Any]) -> None:
    url = columns.get("callback_url")
    if url is not None:
        try:
            targets.check_literal(url, context.settings.webapp.webhook_allow_hosts)
        except targets.Refused as exc:
            raise BadRequest(422, str(exc)) from None


def store_inline(uploads: Uploads, columns: dict[str, Any], images: dict[str, Part]) -> dict[str, Any]:
    """The columns with each inline image stored (an upload) or, a mask, checked and inlined."""
    for name, part in images.items():
        if name == "mask_image":
            try:
                decode_mask_bytes(part.data, "mask_image")
            except BadInput as exc:
                raise BadRequest(422, str(exc)) from None
            columns["mask_image"] = base64.b64encode(part.data).decode("ascii")
        else:
            columns[INLINE_IMAGES[name]] = uploads.save(part.data, part.filename, owner=columns.get("owner"))[0]["id"]
    return columns


def replayed(repo: WebAppRepository, context: HttpContext, key: IdempotencyKey) -> Response | None:
    """The answer to a retry of a request noted under `key` (None: not seen within the window)."""
    found = repo.find_key(key.stored, retry_window_seconds(context))
    if found is None:
        return None
    ids, body_hash = found
    if body_hash != key.body_hash:
        return error(422, "this Idempotency-Key was used with another body: use a new key per request")
    return JSONResponse({"id": ids[0]}, status_code=201,
                        headers={"Location": f"/v1/images/{ids[0]}", "Idempotent-Replayed": "true"})


def insert(context: HttpContext, columns: dict[str, Any], key: IdempotencyKey | None) -> tuple[int, bool]:
    """The row (under `key`, once: a retry gets the first request's row); KeyReused for another body."""
    if key is None:
        return context.ops.insert(columns), False
    ids, replay = context.ops.insert_request([columns], key.stored, attach=True,
                                             window_seconds=retry_window_seconds(context), body_hash=key.body_hash)
    return ids[0], replay


def routes(context: HttpContext) -> list[BaseRoute]:
    repo = WebAppRepository(context.ops.pool)
    uploads = Uploads(context, repo)
    webapp = context.settings.webapp
    hub = EventHub(repo.events_state, webapp.sse_max_streams, webapp.sse_max_per_client)
    static = files("imagend.http").joinpath("static")
    example_html = static.joinpath("example.html").read_bytes()
    example_js = static.joinpath("example.js").read_bytes()
    busy = [0]  # uploads being read, decoded or stored now

    async def upload(request: Request) -> Response:
        caller = authorize(context, request, "submit")  # an owner's upload is its own row (404 to the others)
        content_type = request.headers.get("content-type", "")
        multipart = content_type.lower().startswith("multipart/form-data")
        limit = upload_limit(context) + (MULTIPART_OVERHEAD_BYTES if multipart else 0)
        if busy[0] >= MAX_UPLOADS_AT_ONCE:  # each may hold its body and its decoded pixels: memory is bounded
            answer = error(503, f"busy: {busy[0]} uploads are being read; try again in a second")
            answer.headers["Retry-After"] = "1"
            return answer
        busy[0] += 1  # the event loop's thread only: no lock
        try:
            body = await read_body(request, limit)
            key = idempotency_key(request, "v1/uploads", body, caller.owner)
            data, filename = await run_in_threadpool(first_file, body, content_type) if multipart else (body, None)
            del body
            if len(data) > upload_limit(context):
                raise BadRequest(413, f"the image is {len(data)} bytes; at most {upload_limit(context)} are taken "
                                      "(IMAGEND_UPLOAD_MAX_BYTES)")
            described, replay = await run_in_threadpool(uploads.save, data, filename, key, caller.owner)
        except BadRequest as exc:
            return error(exc.status, exc.message)
        finally:
            busy[0] -= 1
        headers = {"Location": f"/v1/images/{described['id']}"}
        if replay:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(described, status_code=201, headers=headers)

    async def events(request: Request) -> Response:
        caller = authorize(context, request, "read")
        image_id = int(request.path_params["id"])
        if image_id > INT4_MAX:
            return error(404, f"no image with id {request.path_params['id']}")
        client = request.client.host if request.client else "?"
        try:
            sub = hub.subscribe(image_id, client)
        except TooMany as exc:
            answer = error(exc.status, exc.message)
            answer.headers["Retry-After"] = "5"
            return answer
        # From here it is bounded by the streams' own limits, not by the requests in flight: hundreds of
        # browsers opening their streams at once are not told 'busy' (it only waits from now on).
        release = request.scope.get("imagend.release_admission")
        if release is not None:
            release()
        try:
            found = await run_in_threadpool(sees, context, caller, image_id)
            found = found and bool(await run_in_threadpool(repo.events_state, [image_id]))
        except BaseException:
            hub.unsubscribe(sub)
            raise
        if not found:
            hub.unsubscribe(sub)
            return error(404, f"no image with id {image_id}")

        def end(state: dict[str, Any]) -> dict[str, Any]:
            finished = state["status"] == "ReadyToPublish"
            has_image = finished and bool(state["has_image"])
            return {"id": image_id, "status": state["status"], "error": state["error"],
                    "image_url": context.links.link(image_id, "image", state["output_url"], has_image),
                    "thumbnail_url": context.links.link(image_id, "thumbnail",
                                                        state["thumbnail_url"] or state["output_url"], has_image)}

        return StreamingResponse(
            hub.stream(sub, end, lambda tag: f"/v1/images/{image_id}/preview?v={tag[:12]}"),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    def thumbnail(request: Request) -> Response:
        image_id = int(request.path_params["id"])
        if image_id > INT4_MAX:
            return error(404, f"no image with id {request.path_params['id']}")
        query = request.query_params
        if not context.links.valid(image_id, "thumbnail", query.get("expires"), query.get("signature")) and not sees(
                context, authorize(context, request, "read"), image_id):
            return error(404, f"no image with id {request.path_params['id']}")  # an owner's key: its rows only
        return thumbnail_response(context, image_id)

    def example(request: Request) -> Response:
        check_read(context, request)
        return Response(example_html, media_type="text/html; charset=utf-8", headers=EXAMPLE_HEADERS)

    def example_script(request: Request) -> Response:
        check_read(context, request)
        return Response(example_js, media_type="text/javascript; charset=utf-8", headers=EXAMPLE_HEADERS)

    return [
        Route("/v1/uploads", upload, methods=["POST"]),
        Route("/v1/images/{id:int}/events", events, methods=["GET"]),
        Route("/v1/images/{id:int}/thumbnail", thumbnail, methods=["GET"]),
        Route("/example", example, methods=["GET"]),
        Route("/example.js", example_script, methods=["GET"]),
    ]
