"""The OpenAI Images API on the listener, for the `openai` SDK (`OpenAI(base_url=…/v1)`), Open WebUI's
"openai" engine, LibreChat, LiteLLM and the rest (docs/compatible-apis.md says field by field what is
honoured, mapped, ignored or refused):

    POST /v1/images/generations   JSON: a prompt → n rows
    POST /v1/images/edits         multipart: an image (and a mask: inpainting) → image-to-image rows
    POST /v1/images/variations    multipart: an image alone → image-to-image rows
    GET  /v1/images/files/{id}    a finished image, at the URL `response_format=url` answers (signed)

Each request is checked as imagend's own API checks a row (checks.check_columns), inserted as n rows in
one transaction, and waited for (completions.py); the answer is OpenAI's, errors included
(`{"error": {"message", "type", "param", "code"}}` with OpenAI's statuses; final ones carry
`x-should-retry: false`, a full queue 429 with `Retry-After`). The SDK retries a timeout, a 408, 409,
429 or 5xx with the same body and `x-stainless-retry-count` 1, 2: such a retry is attached to the rows
the first try queued (compat.py, imagend_api_requests), never queued again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from imagend.db.columns import INT4_MAX, NAME_MAX_CHARS, SEED_MAX
from imagend.db.owners import KEY_PREFIX, OwnersRepository
from imagend.errors import BadInput, DatabaseUnavailable, clip
from imagend.http import multipart
from imagend.http.auth import Refused, check_read
from imagend.http.checks import BadRequest, parse_object, read_body
from imagend.http.compat import (
    UPLOAD_MAX_BYTES,
    Compat,
    QueueFull,
    Result,
    checked_columns,
    disconnect_watch,
    reencode,
    release_admission,
    request_key,
)
from imagend.http.completions import Full, Waiter
from imagend.http.images import image_response
from imagend.images.formats import read_parameters
from imagend.images.inputs import MAX_INPUT_BYTES, decode_image_bytes, decode_mask_bytes

N_RANGE = (1, 10)
PARTIAL_IMAGES_MAX = 3
MAX_EDIT_IMAGES = 2  # an edit's image and one reference (the IP-Adapter takes one)
URL_SECONDS = 3600  # a `url` answer is valid this long (OpenAI: 60 minutes), and while retention keeps the row
ECHO_MAX_CHARS = 60
USER_MAX_CHARS = 256
KEEPALIVE_SECONDS = 15.0  # an SSE comment while nothing else is sent: no proxy or client read times out
PREVIEW_POLL_SECONDS = 0.5  # how often a stream asking for partial images reads its rows' previews
SIZE = re.compile(r"([0-9]{1,6})[xX]([0-9]{1,6})")
# quality → the local backend's steps, as a factor of IMAGEND_DEFAULT_STEPS (None: the default itself).
QUALITY_STEPS: dict[str, float | None] = {"auto": None, "standard": None, "medium": None, "low": 0.5, "high": 1.5,
                                          "hd": 1.5, "xhigh": 2.0, "max": 2.0}
OUTPUT_FORMATS = ("png", "jpeg", "webp")
# Accepted and not honoured (said in docs/compatible-apis.md): moderation, style (DALL·E 3's vivid or
# natural), input_fidelity; user and safety_identifier are kept with the rows.
COMMON_FIELDS = frozenset({"model", "n", "size", "response_format", "user", "prompt", "negative_prompt", "seed"})
GENERATION_FIELDS = COMMON_FIELDS | {"quality", "output_format", "output_compression", "background", "style", "stream",
                                     "partial_images", "moderation", "safety_identifier"}
EDIT_FIELDS = COMMON_FIELDS | {"quality", "output_format", "output_compression", "background", "stream",
                               "partial_images", "input_fidelity", "safety_identifier", "strength", "mask",
                               "image", "image[]", "reference_scale"}
VARIATION_FIELDS = COMMON_FIELDS | {"image", "strength"}
# OpenAI fields for what imagend does not make (animations, SVG): refused when set.
REFUSED_FIELDS = frozenset({"complexity", "frame_count", "frame_duration_ms", "svg", "markup"})
VARIATION_PROMPT = "a variation of this picture, same subject, same style"
# imagend's own column names for the OpenAI fields they come from, in the errors' `param`.
PARAM_OF_COLUMN = {"width": "size", "height": "size", "steps": "quality", "format": "output_format",
                   "quality": "output_compression", "init_image": "image", "mask_image": "mask",
                   "reference_image": "image"}
TOKEN_PURPOSE = "imagend openai image url"


class OpenAIError(Exception):
    """An answer in OpenAI's error shape. `retry`: x-should-retry (None: the SDK decides by status)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", retry: bool | None = False,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind
        self.retry = retry
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        headers = dict(self.headers)
        if self.retry is not None:
            headers["x-should-retry"] = "true" if self.retry else "false"
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=headers)


def _bad(message: str, param: str | None = None, code: str | None = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


# -- auth --------------------------------------------------------------------------------------------


async def _credential(compat: Compat, request: Request) -> tuple[str, str | None]:
    """The request's key, checked: a digest of it for the retry key (never the key itself), and the owner
    whose rows it queues (None: the operator's token). An owner's key (docs/owners.md) needs `submit`."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() == "bearer" and given.startswith(KEY_PREFIX):
        key = await run_in_threadpool(OwnersRepository(compat.context.ops.pool).find_key, given)
        if key is None:
            raise OpenAIError(401, "Incorrect API key provided: this key is unknown or revoked",
                              code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        if "submit" not in key.scopes:
            raise OpenAIError(403, "this API key lacks the 'submit' scope", code="insufficient_scope")
        return hashlib.sha256(given.encode()).hexdigest(), key.owner
    token = compat.context.http.token
    if token is None:
        raise OpenAIError(403, "the OpenAI API writes rows, and writes over HTTP are off here: the operator sets "
                               "IMAGEND_HTTP_TOKEN, the key clients send", code="writes_off")
    if scheme.lower() != "bearer" or not given:
        raise OpenAIError(401, "You didn't provide an API key: send 'Authorization: Bearer <IMAGEND_HTTP_TOKEN>' "
                               "(the openai SDK's api_key)", code="missing_api_key",
                          headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.encode(), token.reveal().encode()):
        raise OpenAIError(401, "Incorrect API key provided: use the daemon's IMAGEND_HTTP_TOKEN",
                          code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    return hashlib.sha256(token.reveal().encode()).hexdigest(), None


# -- the request, checked -----------------------------------------------------------------------------


@dataclass
class Plan:
    """One request, checked: the columns of each of its n rows and how to answer."""

    endpoint: str
    model: str
    columns: dict[str, Any]
    n: int = 1
    response_format: str = "b64_json"
    output_format: str | None = None
    quality: str | None = None
    stream: bool = False
    partial_images: int = 0
    notes: list[str] = field(default_factory=list)


def _string(body: dict[str, Any], name: str, max_chars: int = NAME_MAX_CHARS) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"Invalid type for '{name}': expected a string.", name, "invalid_type")
    if len(value) > max_chars:
        raise _bad(f"'{name}' is {len(value)} characters long, at most {max_chars}.", name, "string_above_max_length")
    return value


def _choice(body: dict[str, Any], name: str, choices: tuple[str, ...] | list[str]) -> str | None:
    value = _string(body, name)
    if value is not None and value not in choices:
        raise _bad(f"Invalid value: {clip(value, ECHO_MAX_CHARS)!r}. Supported values are: "
                   f"{', '.join(repr(choice) for choice in choices)}.", name)
    return value


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,20}", value.strip()):  # a multipart field is text
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"Invalid type for '{name}': expected an integer.", name, "invalid_type")
    if not low <= value <= high:
        raise _bad(f"Invalid '{name}': {value}; it must be between {low} and {high}.", name,
                   "integer_below_min_value" if value < low else "integer_above_max_value")
    return value


def _boolean(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if isinstance(value, str):
        value = {"true": True, "false": False}.get(value.strip().lower(), value)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"Invalid type for '{name}': expected a boolean.", name, "invalid_type")
    return value


def _size(body: dict[str, Any]) -> tuple[int | None, int | None]:
    value = _string(body, "size")
    if value is None or value == "auto":
        return None, None
    match = SIZE.fullmatch(value.strip())
    if match is None:
        raise _bad(f"Invalid value: {clip(value, ECHO_MAX_CHARS)!r}. size is WIDTHxHEIGHT (e.g. 1024x1024) or "
                   "'auto'.", "size")
    return int(match.group(1)), int(match.group(2))


def _plan(compat: Compat, body: dict[str, Any], endpoint: str) -> Plan:
    allowed = {"generations": GENERATION_FIELDS, "edits": EDIT_FIELDS, "variations": VARIATION_FIELDS}[endpoint]
    for name in body:
        if name in REFUSED_FIELDS and body[name] is not None:
            raise _bad(f"'{name}' is not supported: imagend makes still raster images.", name, "unsupported_parameter")
        if name not in allowed and name not in REFUSED_FIELDS:
            raise _bad(f"Unknown parameter: {clip(name, ECHO_MAX_CHARS)!r}.", clip(name, ECHO_MAX_CHARS),
                       "unknown_parameter")
    settings = compat.settings
    model = _string(body, "model") or "dall-e-2"
    target = settings.models.resolve(model)
    if target is None:
        raise _bad(f"Invalid value: {clip(model, ECHO_MAX_CHARS)!r}. Supported values are: "
                   f"{', '.join(repr(name) for name in settings.models.names())}.", "model", "model_not_found")
    backend = target.backend_or(compat.context.settings.default_backend)
    plan = Plan(endpoint=endpoint, model=model, columns=target.columns())
    prompt = body.get("prompt")
    if endpoint == "variations" and prompt is None:
        prompt = VARIATION_PROMPT
    if not isinstance(prompt, str) or not prompt.strip():
        raise _bad("'prompt' is required: a description of the image." if prompt is None else
                   "Invalid 'prompt': it must be a non-empty string.", "prompt",
                   "missing_required_parameter" if prompt is None else "invalid_value")
    plan.columns["prompt"] = prompt
    plan.n = _integer(body, "n", *N_RANGE) or 1
    width, height = _size(body)
    plan.columns.update(width=width, height=height)
    response_format = _choice(body, "response_format", ["url", "b64_json"])
    plan.response_format = response_format or ("url" if model.startswith("dall-e") else "b64_json")
    plan.output_format = _choice(body, "output_format", OUTPUT_FORMATS)
    compression = _integer(body, "output_compression", 0, 100)
    if plan.output_format is not None:
        plan.columns["format"] = plan.output_format
        if compression is not None and plan.output_format != "png":
            plan.columns["quality"] = max(1, compression)
    quality = _choice(body, "quality", list(QUALITY_STEPS))
    plan.quality = quality
    factor = QUALITY_STEPS.get(quality or "auto")
    if factor is not None and backend == "local":
        plan.columns["steps"] = max(1, min(200, round(settings.default_steps * factor)))
    if _choice(body, "background", ["transparent", "opaque", "auto"]) == "transparent":
        raise _bad("background 'transparent' is not supported: imagend's images are opaque; use 'opaque' or 'auto'.",
                   "background", "unsupported_value")
    for name, choices in (("style", ["vivid", "natural"]), ("moderation", ["low", "auto"]),
                          ("input_fidelity", ["high", "low"])):
        if _choice(body, name, choices) is not None:
            plan.notes.append(name)
    plan.stream = _boolean(body, "stream")
    plan.partial_images = _integer(body, "partial_images", 0, PARTIAL_IMAGES_MAX) or 0
    if plan.partial_images and not plan.stream:
        raise _bad("'partial_images' needs 'stream': true.", "partial_images")
    if plan.stream and endpoint == "variations":
        raise _bad("variations do not stream.", "stream", "unsupported_parameter")
    negative = _string(body, "negative_prompt", 10_000)
    if negative is not None:
        plan.columns["negative_prompt"] = negative
    seed = _integer(body, "seed", 0, SEED_MAX)
    if seed is not None:
        plan.columns["seed"] = seed
    kept = {name: _string(body, name, USER_MAX_CHARS) for name in ("user", "safety_identifier")}
    plan.columns["params"] = {"api": "openai", "endpoint": endpoint, "client_model": model,
                              **{name: value for name, value in kept.items() if value is not None}}
    if endpoint != "generations":
        if backend != "local":
            raise _bad(f"model {model!r} makes images with the {backend} backend, which takes no input image: "
                       "edits and variations need a model of the local backend (IMAGEND_OPENAI_MODELS).", "model",
                       "unsupported_model")
        for name in ("strength", "reference_scale"):
            value = body.get(name)
            if value is not None:
                try:
                    plan.columns[name] = float(value)
                except (TypeError, ValueError):
                    raise _bad(f"Invalid '{name}': a number.", name, "invalid_type") from None
    return plan


def _checked(columns: dict[str, Any]) -> dict[str, Any]:
    try:
        return checked_columns(columns)
    except BadRequest as exc:
        column = exc.message.split(" ", 1)[0]
        raise _bad(exc.message, PARAM_OF_COLUMN.get(column, column if column in GENERATION_FIELDS else None)) from None


# -- uploads -------------------------------------------------------------------------------------------


def _image_parts(form: multipart.Form, endpoint: str) -> list[bytes]:
    """The input images: one, or for an edit two (gpt-image-1 takes several as `image[]`): the first is
    the picture edited (init image), the second a reference the local backend's IP-Adapter follows
    (reference_image; a daemon without IMAGEND_IP_ADAPTER fails the row saying so). More: 400."""
    parts = form.all("image", "image[]")
    if not parts:
        raise _bad("'image' is required: the picture to start from (a PNG, JPEG or WebP file).", "image",
                   "missing_required_parameter")
    most = MAX_EDIT_IMAGES if endpoint == "edits" else 1
    if len(parts) > most:
        raise _bad(f"{len(parts)} images were sent: imagend takes at most {most} per {endpoint[:-1]} (an edit: the "
                   "image edited, then one reference image for the IP-Adapter).", "image", "unsupported_value")
    images = []
    for part in parts:
        data = part.data
        if not part.is_file:
            try:  # a data URL or base64 text in a text field (some gateways send one)
                text = part.text().strip()
                data = base64.b64decode(text.split(",", 1)[1] if text.startswith("data:") else text, validate=True)
            except (ValueError, multipart.MultipartError):
                raise _bad("'image' is neither a file nor base64 text.", "image") from None
        images.append(data)
    return images


def _checked_image(data: bytes, param: str) -> Any:
    if len(data) > MAX_INPUT_BYTES:
        raise OpenAIError(413, f"'{param}' is {len(data)} bytes; at most {MAX_INPUT_BYTES} bytes.", param=param,
                          code="file_too_large")
    try:
        return decode_image_bytes(data, param)
    except BadInput as exc:
        raise _bad(f"Invalid '{param}': {exc}".replace(f"{param}: ", "", 1), param, "invalid_image") from None


def _mask(data: bytes, image_size: tuple[int, int]) -> str:
    """OpenAI's mask (transparent = edit) as imagend's (white = repaint), a base64 PNG. A mask without an
    alpha channel is read as imagend and A1111 read one: white repaints."""
    from PIL import Image, ImageOps

    if len(data) > MAX_INPUT_BYTES:
        raise OpenAIError(413, f"'mask' is {len(data)} bytes; at most {MAX_INPUT_BYTES} bytes.", param="mask",
                          code="file_too_large")
    try:
        plain = decode_mask_bytes(data, "mask")  # every limit checked, as the daemon checks it
    except BadInput as exc:
        raise _bad(f"Invalid 'mask': {str(exc).removeprefix('mask: ')}", "mask", "invalid_image") from None
    if plain.size != image_size:
        raise _bad(f"Invalid 'mask': it is {plain.size[0]}x{plain.size[1]}, the image "
                   f"{image_size[0]}x{image_size[1]}; they must be the same size.", "mask", "invalid_image")
    with Image.open(io.BytesIO(data)) as opened:
        picture = ImageOps.exif_transpose(opened) or opened
        if picture.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in picture.info:
            alpha = picture.convert("RGBA").getchannel("A")
            plain = alpha.point(lambda value: 255 if value < 128 else 0)
    buffer = io.BytesIO()
    plain.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _form_fields(form: multipart.Form) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for part in form.parts:
        if part.name in ("image", "image[]", "mask"):
            continue
        if part.is_file:
            raise _bad(f"'{clip(part.name, ECHO_MAX_CHARS)}' must be a text field, not a file.", part.name)
        fields[part.name] = part.text()
    return fields


def _upload_plan(compat: Compat, body: bytes, content_type: str, endpoint: str) -> tuple[Plan, bytes]:
    """An edit's or a variation's multipart body, checked: its plan and its canonical form (for the retry
    key: the fields and a hash of each file, whatever the boundary)."""
    try:
        form = multipart.parse(body, content_type)
        fields = _form_fields(form)
    except multipart.MultipartError as exc:
        raise _bad(f"{exc}: send the fields and files as multipart/form-data, as the openai SDK does.",
                   code="invalid_body") from None
    files = [name for name in form.names() if name in ("image", "image[]", "mask")]
    plan = _plan(compat, {**fields, **dict.fromkeys(files, "")}, endpoint)
    image_data, *references = _image_parts(form, endpoint)
    picture = _checked_image(image_data, "image")
    plan.columns["init_image"] = base64.b64encode(image_data).decode("ascii")
    for reference in references:
        _checked_image(reference, "image")
        plan.columns["reference_image"] = base64.b64encode(reference).decode("ascii")
    masks = form.all("mask")
    if masks and endpoint == "edits":
        plan.columns["mask_image"] = _mask(masks[0].data, picture.size)
    if endpoint == "variations" and "prompt" not in fields:
        try:
            with_parameters = read_parameters(image_data)
        except Exception:  # Pillow's many errors on a file it opened once already: no parameters
            with_parameters = None
        if with_parameters and with_parameters.strip():
            plan.columns["prompt"] = with_parameters.strip().splitlines()[0][:999]
    digest = hashlib.sha256()
    for part in sorted(form.parts, key=lambda p: (p.name, p.data)):
        digest.update(part.name.encode() + b"\0" + hashlib.sha256(part.data).digest())
    return plan, digest.digest()


# -- answers ------------------------------------------------------------------------------------------


def _signature(token: str, image_id: int, expires: int) -> str:
    message = f"{TOKEN_PURPOSE}:{image_id}:{expires}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()[:32]


def _url(compat: Compat, request: Request, image_id: int) -> str:
    token = compat.context.http.token
    assert token is not None  # the request was authorised with it
    expires = int(time.time()) + URL_SECONDS
    return (f"{str(request.base_url).rstrip('/')}/v1/images/files/{image_id}?expires={expires}"
            f"&signature={_signature(token.reveal(), image_id, expires)}")


def _entry(compat: Compat, request: Request, plan: Plan, result: Result) -> dict[str, Any]:
    entry: dict[str, Any] = {"url": _url(compat, request, result.id)} if plan.response_format == "url" else {
        "b64_json": result.image_base64}
    prompt = str(result.row.get("prompt") or "")
    warning = result.row.get("warning") or ""
    if "prompt" in warning and len(prompt) > 999:
        entry["revised_prompt"] = prompt[:999]  # the daemon cut it (PROMPT_MAX_CHARS), its warning says so
    return entry


def _size_text(result: Result | None) -> str | None:
    return f"{result.size[0]}x{result.size[1]}" if result is not None and result.size else None


def _images_response(compat: Compat, request: Request, plan: Plan, results: list[Result]) -> Response:
    finished = [result for result in results if result.finished]
    failed = [result for result in results if not result.finished]
    if not finished:
        first = failed[0]
        raise OpenAIError(500, f"image {first.id} failed: {clip(first.error or first.status, 500)}",
                          kind="server_error", code="image_generation_failed", retry=False)
    body: dict[str, Any] = {
        "created": int(time.time()),
        "data": [_entry(compat, request, plan, result) for result in finished],
        "background": "opaque",
        "output_format": finished[0].kind,
        "size": _size_text(finished[0]),
    }
    if plan.quality in ("low", "medium", "high"):
        body["quality"] = plan.quality
    headers = {"x-imagend-ids": ",".join(str(result.id) for result in results)}
    if failed:
        headers["x-imagend-failed"] = ",".join(str(result.id) for result in failed)
    if plan.notes:
        headers["x-imagend-ignored"] = ",".join(plan.notes)
    return JSONResponse(body, headers=headers)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


USAGE = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}, "output_tokens": 0,
         "total_tokens": 0}  # imagend counts no tokens


def _stream(compat: Compat, plan: Plan, ids: list[int], waiter: Waiter) -> StreamingResponse:
    prefix = "image_generation" if plan.endpoint == "generations" else "image_edit"
    ops = compat.context.ops
    fmt = plan.output_format or "png"

    def common(size: str | None) -> dict[str, Any]:
        return {"created_at": int(time.time()), "size": size or "auto", "quality": plan.quality or "auto",
                "background": "opaque", "output_format": fmt}

    def partial(image_id: int, index: int) -> bytes | None:
        row = ops.preview(image_id)
        text = row.get("preview") if row else None
        if not text:
            return None
        data = reencode(base64.b64decode(text), fmt)
        return _sse(f"{prefix}.partial_image", {"type": f"{prefix}.partial_image", **common(None),
                                                "b64_json": base64.b64encode(data).decode("ascii"),
                                                "partial_image_index": index})

    async def completed(image_id: int) -> bytes:
        result = (await compat.results([image_id]))[0]
        if not result.finished:
            error = {"message": f"image {image_id} failed: {clip(result.error or result.status, 500)}",
                     "type": "server_error", "param": None, "code": "image_generation_failed"}
            return _sse("error", {"type": "error", "error": error})
        return _sse(f"{prefix}.completed", {"type": f"{prefix}.completed", **common(_size_text(result)),
                                            "b64_json": result.image_base64, "usage": USAGE})

    async def events() -> AsyncIterator[bytes]:
        try:
            async for chunk in stream_events():
                yield chunk
        except DatabaseUnavailable as exc:
            error = {"message": f"the database is not answering: {exc}", "type": "server_error", "param": None,
                     "code": "database_unavailable"}
            yield _sse("error", {"type": "error", "error": error})
        finally:
            compat.completions.release(waiter)

    async def stream_events() -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + compat.settings.max_wait_seconds
        sent_partials = dict.fromkeys(ids, 0)
        tags: dict[int, str | None] = {}
        answered: set[int] = set()
        quiet_since = loop.time()
        while True:
            for image_id in [i for i in ids if i in waiter.ended and i not in answered]:
                answered.add(image_id)
                quiet_since = loop.time()
                yield await completed(image_id)
            if waiter.done:
                return
            if plan.partial_images:
                for row in await run_in_threadpool(ops.progress_of, list(waiter.pending)):
                    image_id, tag = int(row["id"]), row["preview_tag"]
                    if tag and tag != tags.get(image_id) and sent_partials[image_id] < plan.partial_images:
                        tags[image_id] = tag
                        chunk = await run_in_threadpool(partial, image_id, sent_partials[image_id])
                        if chunk is not None:
                            sent_partials[image_id] += 1
                            quiet_since = loop.time()
                            yield chunk
            if loop.time() >= deadline:
                error = {"message": f"images {', '.join(map(str, sorted(waiter.pending)))} are still being "
                                    f"generated after {compat.settings.max_wait_seconds:g} s "
                                    "(IMAGEND_HTTP_MAX_WAIT): GET /v1/images/{id} tells when they are done",
                         "type": "server_error", "param": None, "code": "still_generating"}
                yield _sse("error", {"type": "error", "error": error})
                return
            if loop.time() - quiet_since >= KEEPALIVE_SECONDS:
                quiet_since = loop.time()
                yield b": still generating\n\n"
            wait = PREVIEW_POLL_SECONDS if plan.partial_images else KEEPALIVE_SECONDS
            await waiter.changed(min(wait, max(0.0, deadline - loop.time())))

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "x-imagend-ids": ",".join(map(str, ids))})


# -- the routes -----------------------------------------------------------------------------------------


def _retry_count(request: Request) -> int | None:
    value = request.headers.get("x-stainless-retry-count")
    return int(value) if value is not None and value.strip().isdigit() else None


async def _answer(compat: Compat, request: Request, plan: Plan, credential: tuple[str, str | None],
                  canonical: bytes) -> Response:
    """Queue the request's rows (or attach a retry to them) and answer once they end. An owner's key's
    rows carry its owner (its plan's cap, weight and limits apply)."""
    credential_digest, owner = credential
    columns = _checked({**plan.columns, "owner": owner} if owner is not None else plan.columns)
    retries = _retry_count(request)
    key = request_key("openai", request.url.path, credential_digest, canonical) if retries is not None else None
    attach = retries is not None and retries > 0
    try:
        if not attach:
            await compat.check_room()
        ids, waiter = await compat.submit([columns] * plan.n, key, attach=attach)
        del columns
        plan.columns = {}  # the images it may hold are in the rows now: a waiting request keeps none
        release_admission(request)
    except QueueFull as exc:
        if exc.over_budget:  # as OpenAI's quota: 429 insufficient_quota, final until the next period
            raise OpenAIError(429, exc.message, kind="insufficient_quota", code="insufficient_quota",
                              retry=False) from None
        raise OpenAIError(429, exc.message, kind="requests", code="rate_limit_exceeded", retry=True,
                          headers={"Retry-After": str(exc.retry_after)}) from None
    except (psycopg.DataError, psycopg.IntegrityError) as exc:
        raise _bad(f"the database refused the row: {clip(str(exc).splitlines()[0], 200)}") from None
    if plan.stream:
        return _stream(compat, plan, ids, waiter)
    try:
        async with disconnect_watch(request) as gone:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + compat.settings.max_wait_seconds
            while not waiter.done and not gone.is_set():
                left = deadline - loop.time()
                if left <= 0:
                    pending = ", ".join(map(str, sorted(waiter.pending)))
                    raise OpenAIError(503, f"images {pending} are still being generated after "
                                           f"{compat.settings.max_wait_seconds:g} s (IMAGEND_HTTP_MAX_WAIT): this "
                                           "request sent again by the openai SDK (its retry) waits for the same "
                                           "images", kind="server_error", code="still_generating", retry=True,
                                      headers={"Retry-After": "1"})
                await waiter.changed(min(left, 1.0))
            if gone.is_set():
                return Response(status_code=499)  # nobody reads it; the rows finish anyway
    finally:
        compat.completions.release(waiter)
    results = await compat.results(ids)
    return _images_response(compat, request, plan, results)


def routes(compat: Compat) -> list[BaseRoute]:
    context = compat.context

    async def handled(call: Callable[[Request], Any], request: Request) -> Response:
        try:
            response: Response = await call(request)
            return response
        except OpenAIError as exc:
            return exc.response()
        except Full as exc:
            return OpenAIError(429, f"the listener is busy: {exc}", kind="requests", code="rate_limit_exceeded",
                               retry=True, headers={"Retry-After": "2"}).response()
        except DatabaseUnavailable as exc:
            return OpenAIError(503, f"the database is not answering: {exc}", kind="server_error",
                               code="database_unavailable", retry=True, headers={"Retry-After": "1"}).response()

    async def generations(request: Request) -> Response:
        credential = await _credential(compat, request)
        try:
            body = parse_object(await read_body(request))
        except BadRequest as exc:
            raise OpenAIError(exc.status if exc.status == 413 else 400, exc.message, code="invalid_json") from None
        plan = _plan(compat, body, "generations")
        return await _answer(compat, request, plan, credential, json.dumps(body, sort_keys=True).encode())

    async def uploads(request: Request, endpoint: str) -> Response:
        credential = await _credential(compat, request)
        try:
            body = await read_body(request, UPLOAD_MAX_BYTES)
        except BadRequest as exc:
            raise OpenAIError(exc.status if exc.status == 413 else 400, exc.message,
                              code="file_too_large" if exc.status == 413 else "invalid_body") from None
        # Parsing and decoding up to 16 MiB (the image checked as the daemon checks it) is CPU work:
        # off the event loop. Only the plan survives it (the body, the form and the pixels are dropped).
        plan, canonical = await run_in_threadpool(_upload_plan, compat, body, request.headers.get("content-type", ""),
                                                  endpoint)
        del body
        return await _answer(compat, request, plan, credential, canonical)

    async def edits(request: Request) -> Response:
        return await uploads(request, "edits")

    async def variations(request: Request) -> Response:
        return await uploads(request, "variations")

    def file(request: Request) -> Response:
        image_id = int(request.path_params["id"])
        token = context.http.token
        expires = request.query_params.get("expires", "")
        signature = request.query_params.get("signature", "")
        if image_id > INT4_MAX:
            return OpenAIError(404, f"no image with id {image_id}", code="not_found").response()
        signed = (token is not None and expires.isdigit() and len(expires) <= 12 and int(expires) > time.time()
                  and hmac.compare_digest(signature.encode(),
                                          _signature(token.reveal(), image_id, int(expires)).encode()))
        if not signed:
            try:
                check_read(context, request)
            except Refused as exc:
                return OpenAIError(exc.status, "this image URL has expired or is not signed (it is valid for "
                                               f"{URL_SECONDS // 60} minutes): " + exc.message,
                                   code="url_expired").response()
        return image_response(context, image_id)

    async def generations_route(request: Request) -> Response:
        return await handled(generations, request)

    async def edits_route(request: Request) -> Response:
        return await handled(edits, request)

    async def variations_route(request: Request) -> Response:
        return await handled(variations, request)

    return [
        Route("/v1/images/generations", generations_route, methods=["POST"]),
        Route("/v1/images/edits", edits_route, methods=["POST"]),
        Route("/v1/images/variations", variations_route, methods=["POST"]),
        Route("/v1/images/files/{id:int}", file, methods=["GET"]),
    ]

