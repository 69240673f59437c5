"""What the OpenAI Images routes (openai_images.py) and the AUTOMATIC1111 routes (a1111.py) share:
their settings, the names clients give models, the path from a request to rows, and back.

Every request becomes rows of `images` through imagend's own API's checks (checks.check_columns) and
one transaction (OperationsRepository.insert_request: n images, n rows), so validation, claiming,
storage and retention apply unchanged; the route then waits for its rows (completions.py) and reads
them back (images_api_results; an image kept only in the store through images.py).

Settings (the settings' typed environment reader, each error naming its variable):

- IMAGEND_HTTP_MAX_WAIT (300 s): how long a request waits for its rows before it answers without
  them (the OpenAI API: 503 that the SDK retries, attached to the same rows; A1111: 504).
- IMAGEND_HTTP_RETRY_WINDOW (1 h): how long a request's key is kept to recognise the openai SDK's
  retry of it (schema_operations.sql's imagend_api_requests).
- IMAGEND_HTTP_MAX_WAITING (0: off): with this many rows waiting, these routes answer 429.
- IMAGEND_OPENAI_MODELS: client model names to a backend and checkpoint (ModelMap).
- IMAGEND_A1111_AUTH (`token`): `off` lets A1111 clients in without credentials (loopback only).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import io
import math
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from imagend.config.backends import BACKEND_NAMES
from imagend.config.env import Env
from imagend.config.settings import Settings
from imagend.db.columns import NAME_MAX_CHARS
from imagend.db.operations import Earlier, OwnerRefused
from imagend.db.rows import Status
from imagend.errors import ConfigError, DatabaseUnavailable
from imagend.http.checks import check_columns
from imagend.http.completions import Completions, Waiter
from imagend.http.context import HttpContext
from imagend.http.images import image_kind, image_response
from imagend.logs import get_logger

log = get_logger()

DEFAULT_MAX_WAIT_SECONDS = 300.0
DEFAULT_RETRY_WINDOW_SECONDS = 3600.0
EXPIRE_EVERY_SECONDS = 60.0
WAITING_CACHE_SECONDS = 0.5
FULL_RETRY_AFTER_SECONDS = 2  # what a 429 for a full queue says (the openai SDK honours up to 60 or 120 s)
OWNER_RETRY_AFTER_SECONDS = 10  # an owner past its plan's max_waiting (as POST /v1/images: a row starts by then)
UPLOAD_MAX_BYTES = 16 * 1024 * 1024  # a request carrying images (edits, variations, img2img)
# A body this small is parsed and checked on the event loop, and answers' images this small decoded there:
# a trip to the thread pool and back costs more than it (a prompt and its settings take a few hundred
# bytes). A bigger body carries an image, decoded as the daemon decodes it, and bigger images (or stored
# ones, read from the store): CPU work and I/O kept off the loop.
INLINE_BODY_BYTES = 64 * 1024
DEFAULT_STEPS = 30  # the local backend's IMAGEND_DEFAULT_STEPS default (docs/local.md)
A1111_AUTH_CHOICES = ("token", "off")
# OpenAI's model names, as Open WebUI lists them (routers/images.py) and the SDK types them: each takes
# the daemon's default backend and checkpoint unless IMAGEND_OPENAI_MODELS says otherwise.
OPENAI_NAMES = ("dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5")
DEFAULT_LOCAL_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"  # IMAGEND_MODEL's default (docs/local.md)


# -- the names clients give models ---------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a client's model name stands for: a row's `backend` and `model` (None: the daemon's default)."""

    backend: str | None = None
    model: str | None = None

    def columns(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model}

    def backend_or(self, default: str) -> str:
        return self.backend or default


DEFAULT_TARGET = Target()


@dataclass(frozen=True)
class ModelMap:
    """Model names → targets. `openai`: OpenAI's names (dall-e-2 … gpt-image-1.5 and those configured);
    `own`: imagend's names (IMAGEND_MODELS' checkpoints, the backends); `checkpoints`: what A1111's
    sd-models lists, by title, and `default_checkpoint`, the title a caller starts with."""

    openai: dict[str, Target]
    own: dict[str, Target]
    checkpoints: dict[str, Target]
    default_checkpoint: str

    def resolve(self, name: str) -> Target | None:
        return self.openai.get(name) or self.own.get(name)

    def names(self) -> list[str]:
        return [*self.openai, *(name for name in self.own if name not in self.openai)]

    def checkpoint(self, title: str) -> str | None:
        """The A1111 title `title` names (as A1111: a file suffix and a ` [hash]` are dropped); None."""
        name = title.strip()
        if name.endswith("]") and " [" in name:
            name = name[: name.rindex(" [")]
        for suffix in (".safetensors", ".ckpt"):
            name = name.removesuffix(suffix)
        if name in self.checkpoints:
            return name
        folded = {title.lower(): title for title in self.checkpoints}
        return folded.get(name.lower())


def _model_names(env: Env) -> dict[str, str]:
    """IMAGEND_MODELS' names and sources (the local backend checks its syntax at start)."""
    models: dict[str, str] = {}
    for item in (env.str("IMAGEND_MODELS") or "").split(","):
        name, sep, source = (part.strip() for part in item.partition("="))
        if sep and name and source:
            models[name] = source
    return models


def _target(text: str, local_models: dict[str, str], setting: str) -> Target:
    value = text.strip()
    if value.lower() == "default":
        return DEFAULT_TARGET
    backend, sep, model = (part.strip() for part in value.partition(":"))
    if sep:
        if backend not in BACKEND_NAMES or not model or len(model) > NAME_MAX_CHARS:
            raise ConfigError(f"{setting}: {value!r} is not backend:model (backends: {', '.join(BACKEND_NAMES)})")
        if backend != "local":
            raise ConfigError(f"{setting}: {value!r}: only the local backend takes a checkpoint name")
        return Target("local", model)
    if value in BACKEND_NAMES:
        return Target(value, None)
    if value in local_models:
        return Target("local", value)
    raise ConfigError(f"{setting}: {value!r} is neither a backend ({', '.join(BACKEND_NAMES)}), backend:model, "
                      f"a name of IMAGEND_MODELS nor 'default'")


def read_models(settings: Settings, served: Sequence[str]) -> ModelMap:
    env = settings.env
    default_backend = settings.default_backend
    local_models = _model_names(env)
    local_used = default_backend == "local" or "local" in served
    own: dict[str, Target] = {name: Target(name, None) for name in BACKEND_NAMES}
    if local_used:
        own.update({name: Target("local", name) for name in local_models})
    openai = dict.fromkeys(OPENAI_NAMES, DEFAULT_TARGET)
    setting = "IMAGEND_OPENAI_MODELS"
    for item in (env.str(setting) or "").split(","):
        if not item.strip():
            continue
        name, sep, target = (part.strip() for part in item.partition("="))
        if not sep or not name or not target or len(name) > NAME_MAX_CHARS:
            raise ConfigError(f"{setting}: {item.strip()!r} is not name=target, e.g. "
                              f"{setting}=dall-e-3=local:sdxl,gpt-image-1=fusionbrain")
        openai[name] = _target(target, local_models, setting)

    checkpoints: dict[str, Target] = {}
    default_checkpoint = default_backend
    if local_used:
        checkpoints.update({name: Target("local", name) for name in local_models})
        named = env.str("IMAGEND_MODEL") or DEFAULT_LOCAL_MODEL
        same = next((name for name, source in local_models.items() if named in (name, source)), None)
        if same is None:
            same = named.rstrip("/").rsplit("/", 1)[-1] or "local"
            checkpoints.setdefault(same, Target("local", None))
        if default_backend == "local":
            default_checkpoint = same
    for backend in BACKEND_NAMES:
        # The placeholder is served everywhere by default, for tests and trials: not a checkpoint to offer.
        if backend != "local" and (backend == default_backend or (backend in served and backend != "placeholder")):
            checkpoints.setdefault(backend, Target(backend, None))
    return ModelMap(openai=openai, own=own, checkpoints=checkpoints, default_checkpoint=default_checkpoint)


# -- settings --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompatSettings:
    max_wait_seconds: float
    retry_window_seconds: float
    max_waiting: int  # 0: no limit
    a1111_auth: str  # "token" | "off"
    default_steps: int
    models: ModelMap

    @classmethod
    def read(cls, settings: Settings, served: Sequence[str], loopback: bool) -> CompatSettings:
        env = settings.env
        auth = env.choice("IMAGEND_A1111_AUTH", "token", A1111_AUTH_CHOICES)
        if auth == "off" and not loopback:
            raise ConfigError("IMAGEND_A1111_AUTH=off lets anyone who reaches the listener queue images: it is "
                              "taken on a loopback IMAGEND_HTTP only (elsewhere A1111 clients send the token as "
                              "their Basic auth password)")
        return cls(
            max_wait_seconds=env.seconds("IMAGEND_HTTP_MAX_WAIT", DEFAULT_MAX_WAIT_SECONDS, minimum=0.001),
            retry_window_seconds=env.seconds("IMAGEND_HTTP_RETRY_WINDOW", DEFAULT_RETRY_WINDOW_SECONDS, minimum=1.0),
            max_waiting=env.int("IMAGEND_HTTP_MAX_WAITING", 0, minimum=0),
            a1111_auth=auth,
            default_steps=env.int("IMAGEND_DEFAULT_STEPS", DEFAULT_STEPS, minimum=1, maximum=200),
            models=read_models(settings, served),
        )


# -- a request's rows --------------------------------------------------------------------------------


class QueueFull(Exception):
    """429: the queue is full (IMAGEND_HTTP_MAX_WAITING), or an owner's plan refused the request: its
    max_waiting (try again in `retry_after` s) or, `over_budget`, its budget (not before its next period)."""

    def __init__(self, message: str, retry_after: int, over_budget: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.over_budget = over_budget


@dataclass
class Result:
    """One row of a request, read back once it ended."""

    id: int
    status: str
    error: str | None
    row: dict[str, Any]
    image: bytes | None = None  # the image's bytes (None: failed, or unreadable now)
    image_base64: str | None = None
    kind: str | None = None  # png, jpeg, webp
    size: tuple[int, int] | None = None  # the image's own (the placeholder makes 16x16 whatever is asked)

    @property
    def finished(self) -> bool:
        return self.status == Status.READY_TO_PUBLISH and self.image is not None


@dataclass
class Compat:
    """The shared state of the two APIs, one per listener: settings, the completions, the queue gate,
    the retry keys' upkeep."""

    context: HttpContext
    settings: CompatSettings
    completions: Completions
    _waiting: tuple[float, int] = (-math.inf, 0)
    _expired_at: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, context: HttpContext) -> Compat:
        settings = CompatSettings.read(context.settings, context.served_backends, context.http.loopback)
        ops = context.ops
        listen = context.settings.listen_url
        conninfo = listen.reveal() if listen is not None else str(getattr(ops.pool, "conninfo", ""))

        def statuses(ids: Sequence[int]) -> dict[int, str]:
            return {int(row["id"]): str(row["status"]) for row in ops.progress_of(ids)}

        return cls(context=context, settings=settings, completions=Completions(conninfo, statuses))

    # -- before inserting ------------------------------------------------------------------

    async def check_room(self) -> None:
        """QueueFull while IMAGEND_HTTP_MAX_WAITING rows or more wait (read at most every 0.5 s)."""
        if self.settings.max_waiting:
            await run_in_threadpool(self._check_room)

    def _check_room(self) -> None:
        limit = self.settings.max_waiting
        with self._lock:
            read_at, waiting = self._waiting
            if time.monotonic() - read_at >= WAITING_CACHE_SECONDS:
                waiting = self.context.ops.waiting_rows()
                self._waiting = (time.monotonic(), waiting)
        if waiting >= limit:
            raise QueueFull(f"the queue is full: {waiting} images wait (IMAGEND_HTTP_MAX_WAITING={limit}); try again "
                            "in a few seconds", FULL_RETRY_AFTER_SECONDS)

    async def submit(self, rows: Sequence[dict[str, Any]], key: str | None = None,
                     attach: bool = False) -> tuple[list[int], Waiter]:
        """The rows in one transaction, their waiter registered before the commit (so no end is missed);
        for a retry of a request noted under `key`, that request's rows, their waiter caught up with what
        ended already. The caller releases the waiter (completions.release), or it goes once the rows end."""
        if key is not None:
            self._expire_keys()
        loop = asyncio.get_running_loop()
        if not attach and all(_plain(row) for row in rows):
            # One statement, one round trip, committed when it returns; the waiter registered after it
            # takes the ends heard meanwhile (completions.py keeps the recent ones).
            ids = await self.context.requests.insert_plain(rows, key)
            return ids, self.completions.register(ids, loop)
        registered: list[Waiter] = []

        def register(ids: list[int]) -> None:
            registered.append(self.completions.register(ids, loop))

        try:
            ids, _attached = await run_in_threadpool(
                self.context.ops.insert_request, rows, key, attach=attach,
                window_seconds=self.settings.retry_window_seconds, before_commit=register, refuse_owned=True)
        except OwnerRefused as exc:  # rolled back: nothing queued
            for waiter in registered:
                self.completions.release(waiter)
            raise QueueFull(exc.reason, OWNER_RETRY_AFTER_SECONDS, over_budget=not exc.waiting_full) from None
        except BaseException:
            for waiter in registered:
                self.completions.release(waiter)
            raise
        if registered:
            return ids, registered[0]
        waiter = self.completions.register(ids, loop)
        try:
            await self.completions.catch_up(waiter)
        except BaseException:
            self.completions.release(waiter)
            raise
        return ids, waiter

    @contextlib.asynccontextmanager
    async def submitted(self, rows: Sequence[dict[str, Any]], key: str | None = None,
                        attach: bool = False) -> AsyncIterator[tuple[list[int], Waiter]]:
        """`submit`, the waiter released on leaving."""
        ids, waiter = await self.submit(rows, key, attach)
        try:
            yield ids, waiter
        finally:
            self.completions.release(waiter)

    def _expire_keys(self) -> None:
        with self._lock:
            if time.monotonic() - self._expired_at < EXPIRE_EVERY_SECONDS:
                return
            self._expired_at = time.monotonic()

        def expire() -> None:
            try:
                gone = self.context.ops.expire_requests(self.settings.retry_window_seconds)
            except DatabaseUnavailable as exc:
                log.warning("http_retry_keys_not_expired", reason=str(exc))
                return
            if gone:
                log.debug("http_retry_keys_expired", rows=gone)

        threading.Thread(target=expire, name="imagend-http-retry-keys", daemon=True).start()

    # -- after the rows ended ---------------------------------------------------------------------

    async def results(self, ids: Sequence[int]) -> list[Result]:
        """The rows as they are now, in the order of `ids`. Their images are decoded (and a stored one
        read) on the event loop while they are small, else in the thread pool."""
        by_id = {int(row["id"]): row for row in await self.context.requests.results(ids)}
        found = []
        for image_id in ids:
            row = by_id.get(image_id)
            if row is None:
                found.append(Result(image_id, Status.FAILED, "the row is gone (deleted before it was answered)", {}))
                continue
            found.append(Result(image_id, str(row["status"]), row["error"], row))
        finished = [result for result in found if result.status == Status.READY_TO_PUBLISH]
        inline = all(result.row.get("base64") for result in finished) and sum(
            len(result.row["base64"]) for result in finished) <= INLINE_BODY_BYTES
        if inline:
            self._attach_images(finished)
        elif finished:
            await run_in_threadpool(self._attach_images, finished)
        return found

    def _attach_images(self, results: Sequence[Result]) -> None:
        for result in results:
            _attach_image(self.context, result)


def _plain(row: dict[str, Any]) -> bool:
    """A row insert_plain takes: no owner (its plan may refuse it: insert_request checks that before the
    commit), no chained row, no input image (megabytes: sent as parameters, not bound into the text)."""
    return row.get("owner") is None and not any(isinstance(value, Earlier) for value in row.values()) and not any(
        row.get(name) is not None for name in IMAGE_COLUMNS_CHECKED_HERE)


def _attach_image(context: HttpContext, result: Result) -> None:
    text = result.row.get("base64")
    data: bytes | None = None
    if text:
        with contextlib.suppress(binascii.Error, ValueError):
            data = base64.b64decode(text, validate=False)
    if data is None:
        response = image_response(context, result.id)  # the row's stored copy (IMAGEND_STORE_BASE64=false)
        if response.status_code == 200:
            data = bytes(response.body)
            text = None
        else:
            result.error = f"its image cannot be read now (HTTP {response.status_code} from the store)"
            return
    result.image = data
    result.image_base64 = text or base64.b64encode(data).decode("ascii")
    result.kind = image_kind(data)
    result.size = image_size(data)


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the header (nothing decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(image.size[0]), int(image.size[1])
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def reencode(data: bytes, kind: str) -> bytes:
    """An image (a step preview's WebP) as png, jpeg or webp."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        picture = image.convert("RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format={"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}.get(kind, "PNG"))
    return buffer.getvalue()


def request_key(*parts: str | bytes) -> str:
    """A request's key: a hash of its parts, each length-prefixed (no two lists of parts collide)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


@contextlib.asynccontextmanager
async def disconnect_watch(request: Request) -> AsyncIterator[Any]:
    """An asyncio.Event set when the client goes away (read after its body: the next message is the
    disconnect). Not for streaming answers, which watch the disconnect themselves."""
    gone = asyncio.Event()

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                gone.set()
                return

    task = asyncio.create_task(watch())
    try:
        yield gone
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


IMAGE_COLUMNS_CHECKED_HERE = ("init_image", "mask_image", "reference_image")


def checked_columns(columns: dict[str, Any]) -> dict[str, Any]:
    """`columns` through imagend's own API's checks (checks.check_columns; BadRequest as it raises it).
    The images are checked by the routes under their upload limit (the JSON API's is 64 KiB), so only
    their presence goes through (what needs an init image, a mask needing one)."""
    images = {name: columns[name] for name in IMAGE_COLUMNS_CHECKED_HERE if columns.get(name) is not None}
    checked = check_columns({**columns, **dict.fromkeys(images, "x")})
    checked.update(images)
    return checked


ADMISSION_RELEASE = "imagend.release_admission"


def release_admission(request: Request) -> None:
    """From here the request only waits for its rows (no thread, no connection, its body dropped; the
    completions bound it): it stops counting against the listener's requests in flight, if the
    listener's admission (guards.py) offers that (a callable in the ASGI scope under ADMISSION_RELEASE)."""
    release = request.scope.get(ADMISSION_RELEASE)
    if callable(release):
        release()
