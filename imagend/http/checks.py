"""The JSON API's body and column checks: what POST /v1/images refuses up front (4xx with a readable
`error`) so that no row is written in a bad state. Types, ranges and choices come from the one table
of producer columns (db/columns.py); the daemon stays the final judge of a row it claims
(queue/validation.py), exactly as for a row INSERTed in SQL."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb
from starlette.requests import ClientDisconnect, Request

from imagend.db.columns import (
    COLUMNS,
    DAEMON_COLUMNS,
    INSERTABLE,
    NAME_MAX_CHARS,
    UPSCALE_FACTORS,
    Column,
    Kind,
    check_style,
)
from imagend.errors import BadInput, clip
from imagend.images.formats import FORMAT_ALIASES, FORMATS
from imagend.queue.validation import parse_controls, parse_loras
from imagend.video.settings import VIDEO_MAX_SECONDS
from imagend.video.storyboard import check_storyboard

BODY_MAX_BYTES = 64 * 1024  # a request body past this is refused (413) while it is being read
API_ECHO_MAX_CHARS = 60


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(request: Request, limit: int = BODY_MAX_BYTES) -> bytes:
    """The body, read a chunk at a time; 413 as soon as it passes `limit` (a declared
    Content-Length past it is refused before a byte is read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"the body is {int(declared)} bytes; at most {limit} bytes are taken")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, f"the body is over {limit} bytes; at most {limit} bytes are taken")
            chunks.append(chunk)
    except ClientDisconnect:  # gone, or closed for sending too slowly (connections.py): no one to answer
        raise BadRequest(400, "the client went away before its body was read") from None
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
        raise BadRequest(400, f"the body is not JSON: {clip(str(exc), API_ECHO_MAX_CHARS)}") from None
    if not isinstance(value, dict):
        raise BadRequest(400, f"the body must be a JSON object of columns, got a JSON {json_type(value)}")
    return value


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _text(column: Column, value: Any, max_chars: int) -> str:
    if not isinstance(value, str):
        raise BadRequest(422, f"{column.name} must be a string, got a JSON {json_type(value)}")
    if "\x00" in value:
        raise BadRequest(422, f"{column.name} contains a NUL character, which Postgres text cannot hold")
    if len(value) > max_chars:
        raise BadRequest(422, f"{column.name} is {len(value)} characters long, at most {max_chars}")
    return value


def _integer(column: Column, value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 512.0 is an integer to JSON Schema (and to every JSON encoder that writes it)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(422, f"{column.name} must be an integer, got a JSON {json_type(value)}")
    if not column.in_range(value):
        raise BadRequest(422, f"{column.name} must be between {int(column.low or 0)} and {int(column.high or 0)}, "
                              f"got {value}")
    return value


def _number(column: Column, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(422, f"{column.name} must be a number, got a JSON {json_type(value)}")
    number = float(value)
    if column.choices is not None and number not in column.choices:
        raise BadRequest(422, f"{column.name} must be {' or '.join(f'{c:g}' for c in column.choices)}, "
                              f"got {number:g}")
    if column.low is not None and not column.in_range(number):
        raise BadRequest(422, f"{column.name} must be {column.range_text()}, got {number:g}")
    return number


def _choice(column: Column, value: str) -> str:
    """A text column with choices (backend, task, format): the value as written, if it names one."""
    name = value.strip().lower()
    if column.name == "format":
        if FORMAT_ALIASES.get(name, name) not in FORMATS:
            raise BadRequest(422, f"format must be one of: {', '.join([*FORMATS, *FORMAT_ALIASES])}; "
                                  f"got {clip(value, API_ECHO_MAX_CHARS)!r}")
        return value
    choices = column.choices or ()
    if (name if column.name == "task" else value) not in choices:
        null = " (inferred from the images)" if column.name == "task" else ""
        raise BadRequest(422, f"unknown {column.name} {clip(value, API_ECHO_MAX_CHARS)!r}; "
                              f"use {'null' + null + ' or ' if null else ''}one of: {', '.join(choices)}")
    return value


def _check_column(column: Column, value: Any) -> Any:
    """`value` as the column takes it; 422 naming the column when it cannot be right."""
    name = column.name
    if column.kind is Kind.INTEGER:
        return _integer(column, value)
    if column.kind is Kind.NUMBER:
        return _number(column, value)
    if column.kind is Kind.OBJECT:  # params
        if not isinstance(value, dict):
            raise BadRequest(422, f"{name} must be a JSON object, got a JSON {json_type(value)}")
        if "\\u0000" in json.dumps(value):
            raise BadRequest(422, f"{name} contains a NUL character, which Postgres jsonb cannot hold")
        return Jsonb(value)
    if column.kind is Kind.ARRAY:  # loras, a video's scenes
        if name == "controls":
            return _controls(value)
        return _loras(value) if name == "loras" else _scenes(value)
    if column.kind is Kind.IMAGE:
        # Here they only have to fit the body, so big ones are INSERTed in SQL or chained with *_image_id.
        image = _text(column, value, BODY_MAX_BYTES)
        if not image.strip():
            raise BadRequest(422, f"{name} is empty: a base64-encoded PNG, JPEG or WebP is expected")
        return image
    text = _text(column, value, column.max_chars or NAME_MAX_CHARS)
    if column.kind is Kind.TIME:
        return _time(column, text)
    if name == "prompt" and not text.strip():
        raise BadRequest(422, "prompt is empty")
    if name == "model" and not text.strip():
        raise BadRequest(422, "model is empty: null (or no model) means the daemon's IMAGEND_MODEL")
    if name == "style":
        try:
            check_style(text)
        except BadInput as exc:
            raise BadRequest(422, str(exc).removesuffix(" (or NULL)")) from None
        return text
    if column.choices is not None:
        return _choice(column, text)
    return text


def _time(column: Column, text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(422, f"{column.name} must be an ISO 8601 time, e.g. 2030-01-01T12:00:00Z; "
                              f"got {clip(text, API_ECHO_MAX_CHARS)!r}") from None
    if when.tzinfo is None:
        raise BadRequest(422, f"{column.name} needs a time zone, e.g. 2030-01-01T12:00:00Z or +02:00")
    try:
        when.astimezone(UTC)  # what Postgres stores: 0001-01-01T00:00+14:00 is 1 BC, which no reader takes back
    except OverflowError:
        raise BadRequest(422, f"{column.name} must be between 0001-01-01 and 9999-12-31 in UTC; "
                              f"got {clip(text, API_ECHO_MAX_CHARS)!r}") from None
    return when


def _scenes(value: Any) -> Jsonb:
    """A video's storyboard, checked as the daemon checks it (video/storyboard.py; the daemon's own
    IMAGEND_VIDEO_MAX_SECONDS has the last word)."""
    try:
        check_storyboard(value, max_seconds=VIDEO_MAX_SECONDS)
    except BadInput as exc:
        raise BadRequest(422, str(exc)) from None
    except RecursionError:
        raise BadRequest(422, "scenes is nested too deeply") from None
    if "\\u0000" in json.dumps(value):
        raise BadRequest(422, "scenes contains a NUL character, which Postgres jsonb cannot hold")
    return Jsonb(value)


def _loras(value: Any) -> Jsonb:
    if not isinstance(value, list):
        raise BadRequest(422, 'loras must be a JSON array like [{"name": "pixel-art", "weight": 0.8}], '
                              f"got a JSON {json_type(value)}")
    try:
        parse_loras(json.dumps(value))
    except RecursionError:
        raise BadRequest(422, "loras is nested too deeply: each LoRA is {\"name\": …, \"weight\": …}") from None
    except BadInput as exc:
        message = str(exc)
        raise BadRequest(422, message if message.startswith("loras") else f"loras: {message}") from None
    return Jsonb(value)


def _controls(value: Any) -> Jsonb:
    """ControlNet's controls, their shape checked as the daemon checks it (the images are decoded there)."""
    if not isinstance(value, list):
        raise BadRequest(422, f'controls must be a JSON array like [{{"image": "<base64>", "type": "canny"}}], '
                              f"got a JSON {json_type(value)}")
    try:
        parse_controls(json.dumps(value))
    except RecursionError:
        raise BadRequest(422, "controls is nested too deeply") from None
    except BadInput as exc:
        raise BadRequest(422, str(exc)) from None
    if "\\u0000" in json.dumps(value):
        raise BadRequest(422, "controls contains a NUL character, which Postgres jsonb cannot hold")
    return Jsonb(value)


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
    hires_given = [name for name in ("hr_steps", "hr_strength", "hr_upscaler") if given(name)]
    if hires_given and not given("hr_scale"):
        raise BadRequest(422, f"{', '.join(hires_given)} {'needs' if len(hires_given) == 1 else 'need'} hr_scale "
                              "(the hires fix)")


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
    unknown = sorted(name for name in body if name not in COLUMNS)
    if unknown:
        shown = ", ".join(clip(name, API_ECHO_MAX_CHARS) for name in unknown[:10])
        raise BadRequest(400, f"unknown columns: {shown}; a producer may write: {', '.join(INSERTABLE)}")
    if body.get("prompt") is None:
        raise BadRequest(422, "prompt is required")
    columns = {name: None if value is None else _check_column(COLUMNS[name], value) for name, value in body.items()}
    _check_inputs_together(columns)
    return columns



