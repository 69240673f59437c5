"""The AUTOMATIC1111 (and Forge) API on the listener, `/sdapi/v1/…`, for Open WebUI's default image
engine, SillyTavern, LibreChat's stable-diffusion tool, `webuiapi` and the rest (docs/compatible-apis.md
says field by field what is honoured, mapped, ignored or refused):

    POST txt2img, img2img          a request → batch_size x n_iter rows, answered with the images
    GET  progress                  the caller's request: its rows' progress and step preview
    POST interrupt, skip           cancel the caller's rows (all of them; the running one)
    GET  options, POST options     sd_model_checkpoint: the caller's checkpoint for its later requests
    GET  sd-models, samplers, schedulers, upscalers, latent-upscale-modes, sd-vae, scripts, loras
    POST png-info, refresh-checkpoints

A caller is the Basic auth user name and the client's address: A1111 serves one user, imagend serves
many, so a checkpoint chosen, a progress read or an interrupt concerns that caller's requests only.
Auth (IMAGEND_A1111_AUTH): `token` (default), HTTP Basic with IMAGEND_HTTP_TOKEN as the password and
any user name (A1111's `--api-auth user:pass`; a Bearer token works too); `off`, no credentials, on a
loopback listener only. An owner's key (docs/owners.md) as the password or a Bearer token, either way:
its rows carry that owner, and its plan's refusal answers 429 (max_waiting) or 402 (budget). Errors
take A1111's shape, `{"error", "detail", "body", "errors"}`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import io
import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from imagend import __version__
from imagend.db.columns import NAME_MAX_CHARS, SEED_MAX
from imagend.db.operations import Earlier
from imagend.db.owners import KEY_PREFIX, OwnersRepository
from imagend.db.rows import Status
from imagend.errors import BadInput, DatabaseUnavailable, clip
from imagend.http.checks import BadRequest, parse_object, read_body
from imagend.http.compat import (
    DEFAULT_TARGET,
    INLINE_BODY_BYTES,
    UPLOAD_MAX_BYTES,
    Compat,
    QueueFull,
    Result,
    checked_columns,
    disconnect_watch,
    reencode,
    release_admission,
)
from imagend.http.completions import Full, Waiter
from imagend.images.formats import read_parameters
from imagend.images.inputs import decode_base64_image, decode_base64_mask

MAX_ROWS = 16  # batch_size x n_iter of one request
MAX_CALLERS = 4096  # callers whose checkpoint choice is remembered (the least recent forgotten first)
ECHO_MAX_CHARS = 60
SEED_RANDOM_BELOW = 2**32 - 1  # A1111 draws a random seed below this for seed -1
# A1111's sampler names → imagend's schedulers (docs/local.md); imagend's own names are taken too.
SAMPLERS: dict[str, str] = {
    "Euler": "euler", "Euler a": "euler_a", "DPM++ 2M": "dpmpp_2m", "DPM++ 2M Karras": "dpmpp_2m_karras",
    "DDIM": "ddim", "DDPM": "ddpm", "Flow Euler": "flow_euler", "Flow DPM++ 2M": "flow_dpmpp_2m",
    "Flow UniPC": "flow_unipc",
}
SAMPLER_ALIASES: dict[str, list[str]] = {
    "Euler": ["k_euler"], "Euler a": ["k_euler_a", "k_euler_ancestral"], "DPM++ 2M": ["k_dpmpp_2m"],
    "DPM++ 2M Karras": ["k_dpmpp_2m_ka"], "DDIM": ["ddim"], "DDPM": ["ddpm"], "Flow Euler": ["flow_euler"],
    "Flow DPM++ 2M": ["flow_dpmpp_2m"], "Flow UniPC": ["flow_unipc"],
}
SCHEDULE_TYPES = ("automatic", "karras")  # A1111's `scheduler`; others are ignored (said in `info`)
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')  # A1111's re_param


class A1111Error(Exception):
    """An answer in A1111's error shape (its api_middleware's handle_exception)."""

    def __init__(self, status: int, detail: str, *, error: str = "HTTPException",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.error = error
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": self.error, "detail": self.detail, "body": "", "errors": f"{self.status}: {self.detail}"}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# -- callers ---------------------------------------------------------------------------------------


@dataclass
class Job:
    """One txt2img or img2img request of a caller, while it waits."""

    kind: str
    ids: list[int]
    steps: int
    started: float = field(default_factory=time.time)
    interrupted: bool = False

    @property
    def timestamp(self) -> str:
        return datetime.fromtimestamp(self.started).strftime("%Y%m%d%H%M%S")


class Callers:
    """Per caller: the checkpoint it chose (POST options; in memory, MAX_CALLERS at most) and its
    requests waiting now."""

    def __init__(self, max_callers: int = MAX_CALLERS) -> None:
        self.max_callers = max_callers
        self._lock = threading.Lock()
        self._models: OrderedDict[str, str] = OrderedDict()
        self._jobs: dict[str, list[Job]] = {}

    def model(self, caller: str) -> str | None:
        with self._lock:
            return self._models.get(caller)

    def choose(self, caller: str, title: str) -> None:
        with self._lock:
            self._models[caller] = title
            self._models.move_to_end(caller)
            while len(self._models) > self.max_callers:
                self._models.popitem(last=False)

    @contextlib.contextmanager
    def running(self, caller: str, job: Job) -> Iterator[Job]:
        with self._lock:
            self._jobs.setdefault(caller, []).append(job)
        try:
            yield job
        finally:
            with self._lock:
                jobs = self._jobs.get(caller, [])
                if job in jobs:
                    jobs.remove(job)
                if not jobs:
                    self._jobs.pop(caller, None)

    def jobs(self, caller: str) -> list[Job]:
        with self._lock:
            return list(self._jobs.get(caller, ()))


OWNER_SCOPE = "imagend.owner"  # the ASGI scope's entry naming the owner whose key the caller sent


async def _caller(compat: Compat, request: Request) -> str:
    """Who asks (`user@address`, `user@address owner` with an owner's key), once its credentials are
    checked (A1111Error 401/403 otherwise). An owner's key (docs/owners.md), as the Basic password or a
    Bearer token, needs its `submit` scope; its rows carry its owner (request.scope[OWNER_SCOPE])."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    user, presented = "", None
    if scheme.lower() == "basic" and value.strip():
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise A1111Error(401, "Incorrect username or password", headers={"WWW-Authenticate": "Basic"}) from None
        user, _, presented = decoded.partition(":")
    elif scheme.lower() == "bearer" and value.strip():
        presented = value.strip()
    address = request.client.host if request.client else "?"
    if presented is not None and presented.startswith(KEY_PREFIX):
        key = await run_in_threadpool(OwnersRepository(compat.context.ops.pool).find_key, presented)
        if key is None:
            raise A1111Error(401, "Incorrect username or password", headers={"WWW-Authenticate": "Basic"})
        if "submit" not in key.scopes:
            raise A1111Error(403, f"this API key lacks the 'submit' scope (it has: {', '.join(key.scopes)})")
        request.scope[OWNER_SCOPE] = key.owner
        return f"{clip(user, NAME_MAX_CHARS)}@{address} {key.owner}"
    if compat.settings.a1111_auth == "token":
        token = compat.context.http.token
        if token is None:
            raise A1111Error(403, "the A1111 API writes rows, and writes over HTTP are off here: the operator sets "
                                  "IMAGEND_HTTP_TOKEN (clients send it as the Basic auth password), or "
                                  "IMAGEND_A1111_AUTH=off on a loopback listener")
        if presented is None or not hmac.compare_digest(presented.encode(), token.reveal().encode()):
            raise A1111Error(401, "Incorrect username or password", headers={"WWW-Authenticate": "Basic"})
    return f"{clip(user, NAME_MAX_CHARS)}@{address}"


# -- the request, checked -----------------------------------------------------------------------------


def _unprocessable(detail: str) -> A1111Error:
    return A1111Error(422, detail)


def _int(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _unprocessable(f"{name} must be an integer")
    if not low <= value <= high:
        raise _unprocessable(f"{name} must be between {low} and {high}, got {value}")
    return value


def _float(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _unprocessable(f"{name} must be a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _unprocessable(f"{name} must be a number")
    return float(value)


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _unprocessable(f"{name} must be a string")
    return value


def _scheduler(body: dict[str, Any], notes: list[str]) -> tuple[str | None, str | None]:
    """(imagend's scheduler or None for the daemon's default, the A1111 sampler name shown in `info`)."""
    name = _text(body, "sampler_name") or _text(body, "sampler_index")
    if not name:
        return None, None
    by_lower = {key.lower(): key for key in SAMPLERS}
    own = {value: key for key, value in SAMPLERS.items()}
    sampler = by_lower.get(name.strip().lower()) or own.get(name.strip().lower())
    if sampler is None:
        raise A1111Error(404, "Sampler not found")
    schedule = (_text(body, "scheduler") or "automatic").strip().lower()
    if schedule == "karras" and sampler == "DPM++ 2M":
        sampler = "DPM++ 2M Karras"
    elif schedule not in SCHEDULE_TYPES:
        notes.append(f"scheduler {clip(schedule, ECHO_MAX_CHARS)!r} ignored")
    return SAMPLERS[sampler], sampler


def _image_text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _unprocessable(f"{name} must be a base64 image (a data: URL or bare base64)")
    if value.startswith(("http://", "https://")):
        raise A1111Error(422, f"{name}: images are sent as base64, not fetched from a URL")
    return value


def _mask_text(body: dict[str, Any]) -> str | None:
    mask = body.get("mask")
    if mask is None or mask == "":
        return None
    text = _image_text(mask, "mask")
    try:
        picture = decode_base64_mask(text, "mask")
    except BadInput as exc:
        raise _unprocessable(str(exc)) from None
    if _int(body, "inpainting_mask_invert", 0, 1) == 1:
        from PIL import ImageOps

        buffer = io.BytesIO()
        ImageOps.invert(picture).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii")
    return text


@dataclass
class Plan:
    kind: str
    checkpoint: str
    columns: list[dict[str, Any]]  # every row, in order
    answer: slice  # the rows whose images are the answer (all of them: enable_hr is each row's hires fix)
    seeds: list[int]
    steps: int
    sampler: str | None
    notes: list[str]


def _plan(compat: Compat, caller_model: str | None, body: dict[str, Any], kind: str) -> Plan:
    models = compat.settings.models
    notes: list[str] = []
    override = body.get("override_settings") or {}
    if not isinstance(override, dict):
        raise _unprocessable("override_settings must be an object")
    wanted = override.get("sd_model_checkpoint")
    title = caller_model or models.default_checkpoint
    target = models.checkpoints.get(caller_model) if caller_model else DEFAULT_TARGET
    if wanted:
        found = models.checkpoint(str(wanted))
        if found is None:
            raise A1111Error(404, "Model not found")
        title, target = found, models.checkpoints[found]
    target = target or DEFAULT_TARGET
    if body.get("script_name"):
        raise A1111Error(422, f"Script '{clip(str(body['script_name']), ECHO_MAX_CHARS)}' not found")
    ignored = [name for name in (body.get("alwayson_scripts") or {}) if isinstance(name, str)]
    if ignored:
        notes.append(f"alwayson_scripts ignored: {', '.join(clip(name, ECHO_MAX_CHARS) for name in ignored[:8])}")
    if body.get("styles"):
        notes.append("styles ignored")
    prompt = _text(body, "prompt") or ""
    if not prompt.strip():
        raise _unprocessable("prompt is empty: imagend generates from a prompt")
    batch = _int(body, "batch_size", 1, MAX_ROWS) or 1
    iterations = _int(body, "n_iter", 1, MAX_ROWS) or 1
    count = batch * iterations
    if count > MAX_ROWS:
        raise _unprocessable(f"batch_size x n_iter is {count}, at most {MAX_ROWS} images per request")
    seed = _int(body, "seed", -1, SEED_MAX)
    base = secrets.randbelow(SEED_RANDOM_BELOW) if seed is None or seed == -1 else seed
    seeds = [min(base + index, SEED_MAX) for index in range(count)]
    scheduler, sampler = _scheduler(body, notes)
    steps = _int(body, "steps", 1, 200)
    backend = target.backend_or(compat.context.settings.default_backend)
    common: dict[str, Any] = {
        **target.columns(),
        "prompt": prompt,
        "negative_prompt": _text(body, "negative_prompt") or None,
        "width": _int(body, "width", 1, 8192),
        "height": _int(body, "height", 1, 8192),
        "steps": steps,
        "guidance": _float(body, "cfg_scale"),
        "scheduler": scheduler,
        "format": "png",  # A1111 answers PNGs (samples_format), with their parameters text
        "params": {"api": "a1111", "endpoint": kind, "checkpoint": title},
    }
    rows = [{**common, "seed": seed_of_row} for seed_of_row in seeds]
    if kind == "img2img":
        images = body.get("init_images")
        if not isinstance(images, list) or not images:
            raise A1111Error(404, "Init image not found")
        if backend != "local":
            raise _unprocessable(f"checkpoint {title!r} is the {backend} backend, which takes no init image: "
                                 "img2img needs a checkpoint of the local backend")
        texts = [_image_text(image, "init_images") for image in images[:MAX_ROWS]]
        for text in dict.fromkeys(texts):
            try:
                decode_base64_image(text, "init_images")
            except BadInput as exc:
                raise _unprocessable(str(exc)) from None
        strength = _float(body, "denoising_strength")
        strength = 0.75 if strength is None else strength  # A1111's default
        mask = _mask_text(body)
        for index, row in enumerate(rows):
            row.update(init_image=texts[index % len(texts)], strength=strength, mask_image=mask)
    answer = slice(0, len(rows))
    if kind == "txt2img" and body.get("enable_hr") is True:
        for row in rows:
            row.update(_hires_columns(body, backend, notes))
    return Plan(kind=kind, checkpoint=title, columns=rows, answer=answer, seeds=seeds,
                steps=steps or compat.settings.default_steps, sampler=sampler, notes=notes)


def _hires_columns(body: dict[str, Any], backend: str, notes: list[str]) -> dict[str, Any]:
    """enable_hr as imagend's hires fix (hr_scale, hr_steps, hr_strength, hr_upscaler; docs/local.md): the same
    two passes in the same row, A1111's defaults (x2, denoising 0.7, Latent)."""
    if backend != "local":
        raise _unprocessable(f"enable_hr (the hires fix) runs on the local backend, not the {backend} backend")
    if _int(body, "hr_resize_x", 0, 8192) or _int(body, "hr_resize_y", 0, 8192):
        notes.append("hr_resize_x/hr_resize_y ignored: the hires fix scales by hr_scale")
    strength = _float(body, "denoising_strength")
    wanted = _text(body, "hr_upscaler") or "Latent"
    name = wanted.strip().lower()
    upscaler = "latent" if name.startswith("latent") else name if name in ("lanczos", "nearest") else "lanczos"
    if name != upscaler:  # "Latent (nearest)", an ESRGAN model's name, "None"
        notes.append(f"hr_upscaler {clip(wanted, ECHO_MAX_CHARS)!r}: imagend's {upscaler} used")
    steps = _int(body, "hr_second_pass_steps", 0, 200) or None  # 0: A1111's "the same as steps"
    return {"hr_scale": _float(body, "hr_scale") or 2.0, "hr_steps": steps,
            "hr_strength": 0.7 if strength is None else strength, "hr_upscaler": upscaler}


def _checked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    checked = []
    for row in rows:
        earlier = {name: value for name, value in row.items() if isinstance(value, Earlier)}
        try:
            done = checked_columns({**row, **dict.fromkeys(earlier, 1)})
        except BadRequest as exc:
            raise _unprocessable(exc.message) from None
        checked.append({**done, **earlier})
    return checked


# -- answers ---------------------------------------------------------------------------------------------


def _infotext(plan: Plan, result: Result) -> str:
    """The image's own parameters text (the PNG's, as A1111 writes it), else one written the same way."""
    if result.image is not None:
        with contextlib.suppress(Exception):
            text = read_parameters(result.image)
            if text:
                return text
    row = result.row
    negative = f"\nNegative prompt: {row.get('negative_prompt')}" if row.get("negative_prompt") else ""
    size = result.size or (row.get("width"), row.get("height"))
    fields = {"Steps": row.get("steps") or plan.steps, "Sampler": plan.sampler, "CFG scale": row.get("guidance"),
              "Seed": row.get("seed"), "Size": f"{size[0]}x{size[1]}", "Model": plan.checkpoint,
              "Version": f"imagend {__version__}"}
    shown = ", ".join(f"{key}: {value}" for key, value in fields.items() if value is not None)
    return f"{row.get('prompt')}{negative}\n{shown}"


def _info(plan: Plan, job: Job, results: list[Result], body: dict[str, Any]) -> str:
    finished = [result for result in results if result.finished]
    first = finished[0] if finished else None
    rows = [result.row for result in results]
    seeds = [int(row["seed"]) if row.get("seed") is not None else plan.seeds[index]
             for index, row in enumerate(rows)] or plan.seeds
    extra: dict[str, Any] = {"imagend ids": [result.id for result in results]}
    if plan.notes:
        extra["imagend notes"] = "; ".join(plan.notes)
    if job.interrupted:
        extra["imagend interrupted"] = True
    failed = [f"{result.id}: {clip(result.error or result.status, 200)}" for result in results if not result.finished]
    if failed:
        extra["imagend failed"] = failed
    size = first.size if first is not None and first.size else (body.get("width"), body.get("height"))
    info = {
        "prompt": body.get("prompt"), "all_prompts": [row.get("prompt") for row in rows],
        "negative_prompt": body.get("negative_prompt") or "",
        "all_negative_prompts": [row.get("negative_prompt") or "" for row in rows],
        "seed": seeds[0] if seeds else -1, "all_seeds": seeds, "subseed": -1, "all_subseeds": [-1] * len(seeds),
        "subseed_strength": 0, "width": size[0], "height": size[1], "sampler_name": plan.sampler,
        "cfg_scale": body.get("cfg_scale"), "steps": plan.steps, "batch_size": body.get("batch_size") or 1,
        "restore_faces": False, "face_restoration_model": None, "sd_model_name": plan.checkpoint,
        "sd_model_hash": None, "sd_vae_name": None, "sd_vae_hash": None, "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": body.get("denoising_strength") if plan.kind == "img2img" or body.get("enable_hr") is True
        else None,
        "extra_generation_params": extra, "index_of_first_image": 0,
        "infotexts": [_infotext(plan, result) for result in finished], "styles": body.get("styles") or [],
        "job_timestamp": job.timestamp, "clip_skip": 1, "is_using_inpainting_conditioning": False,
        "version": f"imagend {__version__}",
    }
    return json.dumps(info, default=str)


def _parameters(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("include_init_images"):
        return body
    return {name: value for name, value in body.items() if name not in ("init_images", "mask")}


def _parse_infotext(text: str) -> dict[str, Any]:
    """A1111's parse_generation_parameters, simply: the prompt, the negative prompt, `Key: value` pairs."""
    lines = text.strip().splitlines()
    parsed: dict[str, Any] = {}
    pairs = _PARAM.findall(lines[-1]) if lines else []
    if len(pairs) >= 3:  # as A1111: a last line of three `Key: value` pairs or more is the parameters line
        lines.pop()
        parsed.update({key.strip(): value.strip().strip('"') for key, value in pairs})
    negative = [index for index, line in enumerate(lines) if line.startswith("Negative prompt: ")]
    if negative:
        parsed["Negative prompt"] = "\n".join(lines[negative[0]:]).removeprefix("Negative prompt: ")
        lines = lines[: negative[0]]
    parsed["Prompt"] = "\n".join(lines)
    return parsed


# -- the routes -----------------------------------------------------------------------------------------


class _Released:
    """The waiter of a request, released when the request ends (contextlib.closing)."""

    def __init__(self, compat: Compat, waiter: Waiter) -> None:
        self.compat, self.waiter = compat, waiter

    def close(self) -> None:
        self.compat.completions.release(self.waiter)


def routes(compat: Compat) -> list[BaseRoute]:
    context = compat.context
    ops = context.ops
    callers = Callers()
    models = compat.settings.models

    def guarded(call: Callable[[Request, str], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await call(request, await _caller(compat, request))
            except A1111Error as exc:
                return exc.response()
            except Full as exc:
                return A1111Error(429, f"the listener is busy: {exc}", headers={"Retry-After": "2"}).response()
            except DatabaseUnavailable as exc:
                return A1111Error(503, f"the database is not answering: {exc}", error="DatabaseUnavailable",
                                  headers={"Retry-After": "1"}).response()

        return endpoint

    async def body_of(request: Request, limit: int = UPLOAD_MAX_BYTES) -> dict[str, Any]:
        try:
            return parse_object(await read_body(request, limit))
        except BadRequest as exc:
            raise A1111Error(exc.status if exc.status == 413 else 422, exc.message) from None

    def planned(raw: bytes, chosen: str | None, kind: str,
                owner: str | None) -> tuple[dict[str, Any], Plan, list[dict[str, Any]]]:
        """The body parsed and checked, its images decoded as the daemon decodes them: CPU work for a
        16 MiB body, run off the event loop (past INLINE_BODY_BYTES). `owner`: the rows' (an owner's key),
        its plan applies."""
        try:
            body = parse_object(raw)
        except BadRequest as exc:
            raise A1111Error(422, exc.message) from None
        plan = _plan(compat, chosen, body, kind)
        owned = [{**row, "owner": owner} for row in plan.columns] if owner is not None else plan.columns
        return body, plan, _checked(owned)

    async def generate(request: Request, caller: str, kind: str) -> Response:
        try:
            raw = await read_body(request, UPLOAD_MAX_BYTES)
        except BadRequest as exc:
            raise A1111Error(exc.status if exc.status == 413 else 422, exc.message) from None
        chosen, owner = callers.model(caller), request.scope.get(OWNER_SCOPE)
        if len(raw) <= INLINE_BODY_BYTES:
            body, plan, rows = planned(raw, chosen, kind, owner)
        else:
            body, plan, rows = await run_in_threadpool(planned, raw, chosen, kind, owner)
        del raw
        if not body.get("include_init_images"):  # echoed without them, as A1111: a waiting request keeps none
            body = {name: value for name, value in body.items() if name not in ("init_images", "mask")}
        try:
            await compat.check_room()
            ids, waiter = await compat.submit(rows)
            del rows
            plan.columns = []
            release_admission(request)
        except QueueFull as exc:
            if exc.over_budget:  # the owner's plan's budget: 402, as imagend's own API (no Retry-After)
                raise A1111Error(402, exc.message) from None
            raise A1111Error(429, exc.message, headers={"Retry-After": str(exc.retry_after)}) from None
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            raise _unprocessable(f"the database refused the row: {clip(str(exc).splitlines()[0], 200)}") from None
        job = Job(kind=kind, ids=ids, steps=plan.steps)
        loop = asyncio.get_running_loop()
        with callers.running(caller, job), contextlib.closing(_Released(compat, waiter)):
            async with disconnect_watch(request) as gone:
                deadline = loop.time() + compat.settings.max_wait_seconds
                while not waiter.done and not gone.is_set():
                    left = deadline - loop.time()
                    if left <= 0:
                        pending = ", ".join(map(str, sorted(waiter.pending)))
                        raise A1111Error(504, f"images {pending} are still being generated after "
                                              f"{compat.settings.max_wait_seconds:g} s (IMAGEND_HTTP_MAX_WAIT): "
                                              "GET /v1/images/{id} tells when they are done")
                    await waiter.changed(min(left, 1.0))
                if gone.is_set():
                    return Response(status_code=499)  # nobody reads it; the rows finish (interrupt cancels)
        results = await compat.results(ids[plan.answer])
        finished = [result for result in results if result.finished]
        if not finished and not job.interrupted:
            first = results[0]
            raise A1111Error(500, f"image {first.id} failed: {clip(first.error or first.status, 500)}",
                             error="GenerationFailed")
        send = body.get("send_images", True) is not False
        images = [result.image_base64 for result in finished] if send else []
        answer = {"images": images, "parameters": _parameters(body), "info": _info(plan, job, results, body)}
        return JSONResponse(answer, headers={"x-imagend-ids": ",".join(map(str, ids))})

    async def txt2img(request: Request, caller: str) -> Response:
        return await generate(request, caller, "txt2img")

    async def img2img(request: Request, caller: str) -> Response:
        return await generate(request, caller, "img2img")

    def idle_progress() -> dict[str, Any]:
        state = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
                 "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
        return {"progress": 0, "eta_relative": 0, "state": state, "current_image": None, "textinfo": None}

    def read_progress(job: Job, with_image: bool) -> dict[str, Any]:
        rows = {int(row["id"]): row for row in ops.progress_of(job.ids)}
        ended = [image_id for image_id in job.ids if rows.get(image_id, {}).get("status", Status.FAILED)
                 in (Status.READY_TO_PUBLISH, Status.FAILED)]
        running = [rows[image_id] for image_id in job.ids
                   if image_id in rows and rows[image_id]["status"] == Status.GENERATE]
        current = running[0] if running else None
        fraction = float(current["progress"] or 0.0) if current is not None else 0.0
        total = len(job.ids)
        progress = min(1.0, 0.01 + (len(ended) + sum(float(row["progress"] or 0.0) for row in running)) / total)
        elapsed = max(0.0, time.time() - job.started)
        image = None
        if with_image and current is not None and current["preview_tag"]:
            preview = ops.preview(int(current["id"]))
            text = preview.get("preview") if preview else None
            if text:
                with contextlib.suppress(Exception):
                    image = base64.b64encode(reencode(base64.b64decode(text), "png")).decode("ascii")
        state = {"skipped": False, "interrupted": job.interrupted, "stopping_generation": False,
                 "job": f"scripts_{job.kind}", "job_count": total, "job_timestamp": job.timestamp,
                 "job_no": len(ended), "sampling_step": round(fraction * job.steps), "sampling_steps": job.steps}
        return {"progress": progress, "eta_relative": elapsed / progress - elapsed, "state": state,
                "current_image": image, "textinfo": None}

    async def progress(request: Request, caller: str) -> Response:
        jobs = callers.jobs(caller)
        if not jobs:
            return JSONResponse(idle_progress())
        with_image = request.query_params.get("skip_current_image", "false").lower() not in ("true", "1")
        return JSONResponse(await run_in_threadpool(read_progress, jobs[-1], with_image))

    async def interrupt(request: Request, caller: str) -> Response:
        jobs = callers.jobs(caller)
        for job in jobs:
            job.interrupted = True
        ids = [image_id for job in jobs for image_id in job.ids]
        if ids:
            await run_in_threadpool(ops.cancel_rows, ids, [Status.READY_TO_GENERATE, Status.GENERATE])
        return JSONResponse({})

    async def skip(request: Request, caller: str) -> Response:
        ids = [image_id for job in callers.jobs(caller) for image_id in job.ids]
        if ids:
            await run_in_threadpool(ops.cancel_rows, ids, [Status.GENERATE])
        return JSONResponse(None)

    def current_title(caller: str) -> str:
        chosen = callers.model(caller)
        return chosen if chosen in models.checkpoints else models.default_checkpoint

    async def get_options(request: Request, caller: str) -> Response:
        return JSONResponse({"sd_model_checkpoint": current_title(caller), "sd_checkpoint_hash": None,
                             "samples_format": "png", "sd_vae": "Automatic", "CLIP_stop_at_last_layers": 1,
                             "eta_noise_seed_delta": 0, "live_previews_enable": True})

    async def set_options(request: Request, caller: str) -> Response:
        body = await body_of(request)
        wanted = body.get("sd_model_checkpoint")
        if wanted is not None:
            found = models.checkpoint(str(wanted))
            if found is None:
                raise A1111Error(404, "Model not found")
            callers.choose(caller, found)
        return JSONResponse(None)

    async def sd_models(request: Request, caller: str) -> Response:
        return JSONResponse([{"title": title, "model_name": title, "hash": None, "sha256": None, "filename": title,
                              "config": None} for title in models.checkpoints])

    async def samplers(request: Request, caller: str) -> Response:
        return JSONResponse([{"name": name, "aliases": SAMPLER_ALIASES[name], "options": {"imagend": scheduler}}
                             for name, scheduler in SAMPLERS.items()])

    async def schedulers(request: Request, caller: str) -> Response:
        return JSONResponse([{"name": name, "label": name.capitalize(), "aliases": None, "default_rho": -1,
                              "need_inner_model": False} for name in SCHEDULE_TYPES])

    async def upscalers(request: Request, caller: str) -> Response:
        return JSONResponse([{"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 1},
                             {"name": "imagend upscaler", "model_name": "IMAGEND_UPSCALER", "model_path": None,
                              "model_url": None, "scale": 4}])

    async def empty_list(request: Request, caller: str) -> Response:
        return JSONResponse([])

    async def scripts(request: Request, caller: str) -> Response:
        return JSONResponse({"txt2img": [], "img2img": []})

    async def nothing(request: Request, caller: str) -> Response:
        return JSONResponse(None)

    async def png_info(request: Request, caller: str) -> Response:
        body = await body_of(request)
        text = _image_text(body.get("image"), "image").strip()
        try:
            data = base64.b64decode(text.split(",", 1)[1] if text.startswith("data:") else text)
            info = read_parameters(data) or ""
        except Exception:  # Pillow's and binascii's many errors: it is not an image
            raise A1111Error(500, "Invalid encoded image") from None
        return JSONResponse({"info": info, "items": {}, "parameters": _parse_infotext(info) if info else {}})

    get, post = ["GET"], ["POST"]
    table: list[tuple[str, Callable[[Request, str], Awaitable[Response]], list[str]]] = [
        ("txt2img", txt2img, post), ("img2img", img2img, post), ("progress", progress, get),
        ("interrupt", interrupt, post), ("skip", skip, post), ("options", get_options, get),
        ("options", set_options, post), ("sd-models", sd_models, get), ("samplers", samplers, get),
        ("schedulers", schedulers, get), ("upscalers", upscalers, get), ("latent-upscale-modes", empty_list, get),
        ("sd-vae", empty_list, get), ("loras", empty_list, get), ("scripts", scripts, get),
        ("png-info", png_info, post), ("refresh-checkpoints", nothing, post), ("refresh-vae", nothing, post),
    ]
    by_path: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
    for path, call, methods in table:
        for method in methods:
            by_path.setdefault(path, {})[method] = guarded(call)

    def dispatcher(handlers: dict[str, Callable[[Request], Awaitable[Response]]]) -> Callable[..., Any]:
        async def endpoint(request: Request) -> Response:
            return await (handlers.get(request.method) or handlers["GET"])(request)

        return endpoint

    return [Route(f"/sdapi/v1/{path}", dispatcher(handlers), methods=list(handlers))
            for path, handlers in by_path.items()]

