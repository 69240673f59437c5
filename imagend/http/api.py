"""The JSON API: the SQL surface for producers that cannot speak SQL (a browser, a webhook, a
mobile app), and the operator's pause and resume.

    POST /v1/images                   a JSON object of producer columns → 201 {"id": …}, Location
    GET  /v1/images/{id}              status, progress, error, position, timings, parameters
    GET  /v1/images/{id}/image        the image bytes (images.py, shared with the dashboard)
    GET  /v1/images/{id}/preview      the image forming (WebP), while the local backend generates it
    POST /v1/images/{id}/cancel       what `UPDATE images SET cancel_requested = true` does
    POST /v1/images/{id}/retry        the README's "Trying again", for a Failed row
    GET  /v1/backends                 every backend: served here, paused
    POST /v1/backends/{name}/pause    `imagend -pause NAME` ('*': all)
    POST /v1/backends/{name}/resume   `imagend -resume NAME` ('*': every pause)
    GET  /openapi.json                the OpenAPI 3.1 description (openapi.py)

Writes need the token, reads follow the read policy (auth.py). The API refuses obviously bad input
up front (4xx with a readable `error`) so that no row is written in a bad state; the daemon stays
the final judge of a row it claims (validation.py), exactly as for a row INSERTed in SQL.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from imagend.backends.registry import BACKEND_NAMES
from imagend.config.settings import PROMPT_MAX_CHARS
from imagend.db.operations import ALL_BACKENDS, INSERTABLE, Pause
from imagend.db.styles import STYLE_NAMES
from imagend.errors import BadInput, clip
from imagend.http.auth import check_read, check_write
from imagend.http.context import HttpContext
from imagend.http.images import image_kind, image_response
from imagend.http.openapi import document
from imagend.http.responses import error
from imagend.images.formats import FORMAT_ALIASES, FORMATS, QUALITY_RANGE
from imagend.queue.validation import (
    GUIDANCE_RANGE,
    MAX_SIDE_PX,
    NAME_MAX_CHARS,
    NEGATIVE_PROMPT_MAX_CHARS,
    REFERENCE_SCALE_RANGE,
    SEED_MAX,
    STEPS_RANGE,
    TASKS,
    UPSCALE_FACTORS,
    decode_params,
    parse_loras,
)

BODY_MAX_BYTES = 64 * 1024  # a request body past this is refused (413) while it is being read
INT4_MAX = 2**31 - 1  # ids, priority and max_attempts are INTEGER columns
# A prompt past PROMPT_MAX_CHARS is cut by the daemon (with a warning), as for SQL producers; past
# this it is not a prompt at all.
PROMPT_REFUSED_CHARS = 10 * PROMPT_MAX_CHARS
ECHO_MAX_CHARS = 60

# Columns the daemon writes: a producer never sets them (README, "The producer's guide").
DAEMON_COLUMNS = frozenset({
    "id", "status", "base64", "error", "warning", "progress", "attempts", "crashes", "locked_by",
    "lease_until", "uuid", "submitted_at", "started_at", "finished_at", "generation_seconds",
    "output_path", "output_url", "thumbnail_url", "thumbnail", "created_at", "updated_at", "preview",
})
# Base64 images a producer hands in (image_inputs.py decodes and checks them when the row is claimed);
# here they only have to fit the body, so big ones are INSERTed in SQL or chained with *_image_id.
IMAGE_COLUMNS = ("init_image", "mask_image", "reference_image")
PREVIEW_CACHE_CONTROL = "no-store"  # it changes every 2 s or so, and is gone once the row ends


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- reading and checking a body ----------------------------------------------------------


async def read_body(request: Request, limit: int = BODY_MAX_BYTES) -> bytes:
    """The body, read a chunk at a time; 413 as soon as it passes `limit` (a declared
    Content-Length past it is refused before a byte is read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"the body is {int(declared)} bytes; at most {limit} bytes are taken")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"the body is over {limit} bytes; at most {limit} bytes are taken")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 for anything else (not UTF-8, not JSON, NaN, too deep)."""
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise BadRequest(400, "the body is not UTF-8 text: send a JSON object") from None
    except (RecursionError, ValueError) as exc:
        raise BadRequest(400, f"the body is not JSON: {clip(str(exc), ECHO_MAX_CHARS)}") from None
    if not isinstance(value, dict):
        raise BadRequest(400, f"the body must be a JSON object of columns, got a JSON {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(422, f"{name} must be an integer, got a JSON {_json_type(value)}")
    if not low <= value <= high:
        raise BadRequest(422, f"{name} must be between {low} and {high}, got {value}")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(422, f"{name} must be a number, got a JSON {_json_type(value)}")
    return float(value)


def _text(name: str, value: Any, max_chars: int) -> str:
    if not isinstance(value, str):
        raise BadRequest(422, f"{name} must be a string, got a JSON {_json_type(value)}")
    if "\x00" in value:
        raise BadRequest(422, f"{name} contains a NUL character, which Postgres text cannot hold")
    if len(value) > max_chars:
        raise BadRequest(422, f"{name} is {len(value)} characters long, at most {max_chars}")
    return value


def _check_column(name: str, value: Any) -> Any:
    """`value` as the column takes it; 422 naming the column when it cannot be right."""
    if name == "prompt":
        prompt = _text(name, value, PROMPT_REFUSED_CHARS)
        if not prompt.strip():
            raise BadRequest(422, "prompt is empty")
        return prompt
    if name == "negative_prompt":
        # The daemon cuts it at NEGATIVE_PROMPT_MAX_CHARS with a warning; ten times that is refused.
        return _text(name, value, 10 * NEGATIVE_PROMPT_MAX_CHARS)
    if name in ("width", "height"):
        return _integer(name, value, 1, MAX_SIDE_PX)
    if name == "seed":
        return _integer(name, value, 0, SEED_MAX)
    if name == "steps":
        return _integer(name, value, *STEPS_RANGE)
    if name == "priority":
        return _integer(name, value, -INT4_MAX - 1, INT4_MAX)
    if name == "max_attempts":
        return _integer(name, value, 1, INT4_MAX)
    if name == "quality":
        return _integer(name, value, *QUALITY_RANGE)
    if name == "guidance":
        guidance = _number(name, value)
        if not GUIDANCE_RANGE[0] <= guidance <= GUIDANCE_RANGE[1]:
            raise BadRequest(422, f"guidance must be between {GUIDANCE_RANGE[0]:g} and {GUIDANCE_RANGE[1]:g}, "
                                  f"got {guidance:g}")
        return guidance
    if name in ("model", "loras", "task", "strength", "reference_scale", "upscale", "init_image_id",
                "reference_image_id", *IMAGE_COLUMNS):
        return _check_input(name, value)
    if name == "scheduler":
        return _text(name, value, NAME_MAX_CHARS)
    if name == "style":
        style = _text(name, value, NAME_MAX_CHARS)
        if style.upper() not in STYLE_NAMES:
            raise BadRequest(422, f"unknown style {clip(style, ECHO_MAX_CHARS)!r}; "
                                  f"use one of: {', '.join(STYLE_NAMES)}")
        return style
    if name == "backend":
        backend = _text(name, value, NAME_MAX_CHARS)
        if backend not in BACKEND_NAMES:
            raise BadRequest(422, f"unknown backend {clip(backend, ECHO_MAX_CHARS)!r}; "
                                  f"use one of: {', '.join(BACKEND_NAMES)}")
        return backend
    if name == "format":
        fmt = _text(name, value, NAME_MAX_CHARS)
        if FORMAT_ALIASES.get(fmt.strip().lower(), fmt.strip().lower()) not in FORMATS:
            raise BadRequest(422, f"format must be one of: {', '.join([*FORMATS, *FORMAT_ALIASES])}; "
                                  f"got {clip(fmt, ECHO_MAX_CHARS)!r}")
        return fmt
    if name == "params":
        if not isinstance(value, dict):
            raise BadRequest(422, f"params must be a JSON object, got a JSON {_json_type(value)}")
        if "\\u0000" in json.dumps(value):
            raise BadRequest(422, "params contains a NUL character, which Postgres jsonb cannot hold")
        return Jsonb(value)
    if name == "run_after":
        text = _text(name, value, NAME_MAX_CHARS)
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise BadRequest(422, f"run_after must be an ISO 8601 time, e.g. 2030-01-01T12:00:00Z; "
                                  f"got {clip(text, ECHO_MAX_CHARS)!r}") from None
        if when.tzinfo is None:
            raise BadRequest(422, "run_after needs a time zone, e.g. 2030-01-01T12:00:00Z or +02:00")
        return when
    raise AssertionError(name)  # pragma: no cover: every INSERTABLE column is handled above


def _check_input(name: str, value: Any) -> Any:
    """The local backend's columns, with the limits validation.image_inputs_of applies at the claim."""
    if name == "model":
        model = _text(name, value, NAME_MAX_CHARS)
        if not model.strip():
            raise BadRequest(422, "model is empty: null (or no model) means the daemon's IMAGEND_MODEL")
        return model
    if name == "loras":
        if not isinstance(value, list):
            raise BadRequest(422, 'loras must be a JSON array like [{"name": "pixel-art", "weight": 0.8}], '
                                  f"got a JSON {_json_type(value)}")
        try:
            parse_loras(json.dumps(value))
        except RecursionError:
            raise BadRequest(422, "loras is nested too deeply: each LoRA is {\"name\": …, \"weight\": …}") from None
        except BadInput as exc:
            message = str(exc)
            raise BadRequest(422, message if message.startswith("loras") else f"loras: {message}") from None
        return Jsonb(value)
    if name == "task":
        task = _text(name, value, NAME_MAX_CHARS)
        if task.strip().lower() not in TASKS:
            raise BadRequest(422, f"unknown task {clip(task, ECHO_MAX_CHARS)!r}; use null (inferred from the "
                                  f"images) or one of: {', '.join(TASKS)}")
        return task
    if name in IMAGE_COLUMNS:
        image = _text(name, value, BODY_MAX_BYTES)
        if not image.strip():
            raise BadRequest(422, f"{name} is empty: a base64-encoded PNG, JPEG or WebP is expected")
        return image
    if name in ("init_image_id", "reference_image_id"):
        return _integer(name, value, 1, INT4_MAX)
    number = _number(name, value)
    if name == "strength" and not 0 < number <= 1:
        raise BadRequest(422, f"strength must be above 0 and at most 1, got {number:g}")
    if name == "reference_scale" and not REFERENCE_SCALE_RANGE[0] <= number <= REFERENCE_SCALE_RANGE[1]:
        raise BadRequest(422, f"reference_scale must be between {REFERENCE_SCALE_RANGE[0]:g} and "
                              f"{REFERENCE_SCALE_RANGE[1]:g}, got {number:g}")
    if name == "upscale" and number not in UPSCALE_FACTORS:
        raise BadRequest(422, f"upscale must be {' or '.join(f'{f:g}' for f in UPSCALE_FACTORS)}, got {number:g}")
    return number


def _check_inputs_together(columns: dict[str, Any]) -> None:
    """What the local columns need of each other (validation.image_inputs_of says the same at the claim)."""
    def given(name: str) -> bool:
        return columns.get(name) is not None

    for image in ("init_image", "reference_image"):
        if given(image) and given(f"{image}_id"):
            raise BadRequest(422, f"{image} and {image}_id are both set; set one")
    init = given("init_image") or given("init_image_id")
    if given("mask_image") and not init:
        raise BadRequest(422, "mask_image needs an init image (init_image or init_image_id) to paint into")
    if given("strength") and not init:
        raise BadRequest(422, "strength needs an init image (init_image or init_image_id)")
    if given("reference_scale") and not (given("reference_image") or given("reference_image_id")):
        raise BadRequest(422, "reference_scale needs a reference image (reference_image or reference_image_id)")
    upscaling = given("task") and columns["task"].strip().lower() == "upscale"
    if upscaling and not init:
        raise BadRequest(422, "task 'upscale' needs an init image (init_image or init_image_id) to upscale")
    if upscaling and not given("upscale"):
        raise BadRequest(422, f"task 'upscale' needs upscale: {' or '.join(f'{f:g}' for f in UPSCALE_FACTORS)}")
    if given("upscale") and not upscaling:
        raise BadRequest(422, "upscale is only read with task 'upscale'")


def check_columns(body: dict[str, Any]) -> dict[str, Any]:
    """The producer's columns, checked: 400 for columns a producer may not write, 422 for values
    that are wrong whatever the daemon's settings. JSON null means the daemon's default, as NULL
    does in SQL (prompt excepted: it is required)."""
    daemon = sorted(name for name in body if name in DAEMON_COLUMNS)
    if daemon:
        raise BadRequest(400, f"producers cannot set {', '.join(daemon)}: the daemon writes "
                              f"{'it' if len(daemon) == 1 else 'them'}")
    if "cancel_requested" in body:
        raise BadRequest(400, "cancel_requested is not set at insert: POST /v1/images/{id}/cancel cancels a row")
    unknown = sorted(name for name in body if name not in INSERTABLE)
    if unknown:
        shown = ", ".join(clip(name, ECHO_MAX_CHARS) for name in unknown[:10])
        raise BadRequest(400, f"unknown columns: {shown}; a producer may write: {', '.join(INSERTABLE)}")
    if body.get("prompt") is None:
        raise BadRequest(422, "prompt is required")
    columns = {name: None if value is None else _check_column(name, value) for name, value in body.items()}
    _check_inputs_together(columns)
    return columns


# -- what a row looks like ----------------------------------------------------------------

PARAMETERS = ("prompt", "negative_prompt", "style", "width", "height", "seed", "steps", "guidance",
              "scheduler", "backend", "priority", "model", "format", "quality", "max_attempts",
              "task", "init_image_id", "strength", "reference_image_id", "reference_scale", "upscale",
              *IMAGE_COLUMNS)  # the images as whether they are set (images_get), never their bytes
TIMINGS = ("created_at", "run_after", "started_at", "finished_at", "generation_seconds")


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime | date) else value


def _params(text: str | None) -> Any:
    """The producer's params: the object, or the text itself when Python cannot decode it."""
    try:
        return decode_params(text)
    except BadInput:
        return text


def _loras(text: str | None) -> Any:
    """The row's loras: the JSON value, or the text itself when Python cannot decode it."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except (RecursionError, ValueError):
        return text


def describe(row: dict[str, Any], params: str | None) -> dict[str, Any]:
    """One row as GET /v1/images/{id} answers it: never the image bytes (see `image_url`)."""
    image_id = row["id"]
    return {
        "id": image_id,
        "status": row["status"],
        "progress": row["progress"],
        "error": row["error"],
        "warning": row["warning"],
        "attempts": row["attempts"],
        "cancel_requested": row["cancel_requested"],
        "position": row["position"],
        "estimated_start": _json_value(row["estimated_start"]),
        "timings": {name: _json_value(row[name]) for name in TIMINGS},
        "parameters": {**{name: row[name] for name in PARAMETERS}, "loras": _loras(row["loras"]),
                       "params": _params(params)},
        "image_url": f"/v1/images/{image_id}/image" if row["status"] == "ReadyToPublish" and row["has_image"]
        else None,
        "preview_url": f"/v1/images/{image_id}/preview" if row["preview_tag"] is not None else None,
        "output_url": row["output_url"],
        "thumbnail_url": row["thumbnail_url"],
    }


def backends_state(context: HttpContext, pauses: list[Pause]) -> dict[str, Any]:
    paused = {pause.backend: pause for pause in pauses}
    everything = paused.get(ALL_BACKENDS)
    listed = []
    for name in BACKEND_NAMES:
        pause = paused.get(name) or everything
        listed.append({
            "name": name,
            "served": name in context.served_backends,
            "paused": pause is not None,
            "paused_at": _json_value(pause.paused_at) if pause else None,
            "paused_by": pause.paused_by if pause else None,
        })
    return {"backends": listed, "all_paused": everything is not None,
            "pauses": [{"backend": p.backend, "paused_at": _json_value(p.paused_at), "paused_by": p.paused_by}
                       for p in pauses]}


# -- the routes ---------------------------------------------------------------------------


def _id_or_none(request: Request) -> int | None:
    """The path's id (Starlette's int converter: digits only); None past an INTEGER (no such row)."""
    image_id = int(request.path_params["id"])
    return image_id if image_id <= INT4_MAX else None


def _decode_preview(text: str | None) -> tuple[bytes, str] | None:
    """The preview's bytes and kind (webp; png or jpeg if someone wrote one); None when it is not an image."""
    if not text:
        return None
    try:
        data = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        return None
    kind = image_kind(data)
    return (data, kind) if kind is not None else None


def _not_found(image_id: int | str) -> JSONResponse:
    return error(404, f"no image with id {image_id}")


def routes(context: HttpContext) -> list[BaseRoute]:
    ops = context.ops

    async def create(request: Request) -> Response:
        check_write(context, request)
        try:
            columns = check_columns(parse_object(await read_body(request)))
        except BadRequest as exc:
            return error(exc.status, exc.message)
        try:
            image_id = await run_in_threadpool(ops.insert, columns)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            # Checked above; Postgres still has the last word (a constraint added later, say).
            return error(422, f"the database refused the row: {clip(str(exc).splitlines()[0], 200)}")
        return JSONResponse({"id": image_id}, status_code=201, headers={"Location": f"/v1/images/{image_id}"})

    def show(request: Request) -> Response:
        check_read(context, request)
        image_id = _id_or_none(request)
        row = ops.get(image_id) if image_id is not None else None
        if row is None:
            return _not_found(request.path_params["id"])
        return JSONResponse(describe(row, ops.params(row["id"])))

    def image(request: Request) -> Response:
        check_read(context, request)
        image_id = _id_or_none(request)
        if image_id is None:
            return _not_found(request.path_params["id"])
        return image_response(context, image_id)

    def preview(request: Request) -> Response:
        check_read(context, request)
        image_id = _id_or_none(request)
        row = ops.preview(image_id) if image_id is not None else None
        if row is None:
            return _not_found(request.path_params["id"])
        decoded = _decode_preview(row["preview"])
        if decoded is None:
            return error(404, f"image {image_id} has no preview: one is written every 2 s or so while the local "
                              f"backend generates it, and its status is {row['status']}")
        data, kind = decoded
        return Response(data, media_type=FORMATS[kind][1],
                        headers={"Cache-Control": PREVIEW_CACHE_CONTROL, "X-Content-Type-Options": "nosniff"})

    def cancel(request: Request) -> Response:
        check_write(context, request)
        image_id = _id_or_none(request)
        status = ops.cancel(image_id) if image_id is not None else None
        if status is not None:
            return JSONResponse({"id": image_id, "status": status, "cancel_requested": True}, status_code=202)
        current = ops.status_of(image_id) if image_id is not None else None
        if current is None:
            return _not_found(request.path_params["id"])
        return error(409, f"image {image_id} is {current}: only a waiting (ReadyToGenerate) or running "
                          "(Generate) image can be cancelled")

    def retry(request: Request) -> Response:
        check_write(context, request)
        image_id = _id_or_none(request)
        if image_id is not None and ops.retry(image_id):
            return JSONResponse({"id": image_id, "status": "ReadyToGenerate"})
        current = ops.status_of(image_id) if image_id is not None else None
        if current is None:
            return _not_found(request.path_params["id"])
        return error(409, f"image {image_id} is {current}: only a Failed image can be retried")

    def backends(request: Request) -> Response:
        check_read(context, request)
        return JSONResponse(backends_state(context, ops.paused()))

    def pause_or_resume(request: Request) -> Response:
        check_write(context, request)
        name = request.path_params["name"]
        if name != ALL_BACKENDS and name not in BACKEND_NAMES:
            return error(404, f"unknown backend {clip(name, ECHO_MAX_CHARS)!r}; use one of: "
                              f"{', '.join(BACKEND_NAMES)} or '*' (all)")
        if request.url.path.endswith("/pause"):
            client = request.client.host if request.client else "?"
            ops.pause([name], by=f"HTTP API ({client})")
        else:
            ops.resume([] if name == ALL_BACKENDS else [name])  # '*': every pause, per backend ones too
        return JSONResponse(backends_state(context, ops.paused()))

    openapi = document()

    def openapi_json(request: Request) -> Response:
        check_read(context, request)
        return JSONResponse(openapi)

    # The database calls are blocking psycopg: sync endpoints run in Starlette's thread pool.
    return [
        Route("/v1/images", create, methods=["POST"]),
        Route("/v1/images/{id:int}", show, methods=["GET"]),
        Route("/v1/images/{id:int}/image", image, methods=["GET"]),
        Route("/v1/images/{id:int}/preview", preview, methods=["GET"]),
        Route("/v1/images/{id:int}/cancel", cancel, methods=["POST"]),
        Route("/v1/images/{id:int}/retry", retry, methods=["POST"]),
        Route("/v1/backends", backends, methods=["GET"]),
        Route("/v1/backends/{name}/pause", pause_or_resume, methods=["POST"]),
        Route("/v1/backends/{name}/resume", pause_or_resume, methods=["POST"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
    ]
