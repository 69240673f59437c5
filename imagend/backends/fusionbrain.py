"""The `fusionbrain` backend: the remote Kandinsky API (Fusion Brain key API) over httpx.

The generator `submit`s a row (one POST), the processor `poll`s its task (one GET per
poll, the first after the `status_time` the API suggests). Both API generations:
the pipeline API (default) and the legacy text2image API (IMAGEND_FUSIONBRAIN_API=legacy).
The protocol, its quirks and every setting are described in docs/fusionbrain.md.

Error mapping (what the row gets):
- connection errors, timeouts, 5xx and 429 are retried here (tenacity, exponential
  backoff with jitter); if they persist the row gets RetryableError (a new attempt);
- 400, 401, 415 and other 4xx are PermanentError, with the reason;
- DISABLED_BY_QUEUE / DISABLED_MANUALLY (under any key name) is QueueClosed: the row
  waits, its attempt not counted;
- a status 404 (results can be read once and expire) and FAIL are RetryableError;
  `censored` is PermanentError unless IMAGEND_KEEP_CENSORED=true.

Images are kept as the API returns them (PNG from the pipeline API, JPEG from the
legacy one), after checking that they decode; IMAGEND_FUSIONBRAIN_PNG=true re-encodes
anything else to PNG. The keys only ever go into the two auth headers.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
)

from imagend import __version__
from imagend.backends import a1111_prompt
from imagend.backends.base import Image, Pending, Request, Submission, refuse_image_inputs
from imagend.config.settings import Settings
from imagend.db.columns import STYLE_NAMES
from imagend.db.rows import ModelPreference
from imagend.errors import BadInput, ConfigError, PermanentError, QueueClosed, RetryableError, clip
from imagend.logs import get_logger
from imagend.retry import http_retry_wait

log = get_logger()

DEFAULT_URL = "https://api-key.fusionbrain.ai/"
DEFAULT_STYLES_URL = "https://cdn.fusionbrain.ai/static/styles/key"
APIS = ("pipeline", "legacy")
STYLES = frozenset(STYLE_NAMES)  # until the API's own list is fetched
# The docs say "up to 1024 per side"; other clients disagree on the minimum, 64 is safe.
MIN_SIDE_PX = 64
MAX_SIDE_PX = 1024
NEGATIVE_PROMPT_MAX_CHARS = 1000
DEFAULT_MAX_BATCH = 32
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_HTTP_ATTEMPTS = 4
DEFAULT_RETRY_WAIT_SECONDS = 0.5
RETRY_WAIT_MAX_SECONDS = 10.0
DEFAULT_QUEUE_BACKOFF_SECONDS = 60.0
MAX_FIRST_POLL_SECONDS = 60.0  # never trust a status_time past this: results expire after ~5 minutes
STYLES_REFRESH_SECONDS = 600.0
STYLES_TIMEOUT_SECONDS = 10.0
QUEUE_CLOSED_STATES = ("DISABLED_BY_QUEUE", "DISABLED_MANUALLY")
QUEUE_STATUS_KEYS = ("model_status", "pipeline_status", "status")  # sources disagree on the key
PENDING_STATES = ("INITIAL", "PROCESSING")
MESSAGE_MAX_CHARS = 300
# Neutral on what happens next: the same text ends a row Failed when its attempts are spent.
EXPIRED_MESSAGE = "the task's result expired, or was already fetched, on Fusion Brain's side"


@dataclass(frozen=True, slots=True)
class FusionBrainConfig:
    base_url: str = DEFAULT_URL
    api: str = "pipeline"
    pipeline_id: str | None = None
    model_id: int | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    http_attempts: int = DEFAULT_HTTP_ATTEMPTS
    retry_wait_seconds: float = DEFAULT_RETRY_WAIT_SECONDS
    max_batch: int = DEFAULT_MAX_BATCH
    queue_backoff_seconds: float = DEFAULT_QUEUE_BACKOFF_SECONDS
    keep_censored: bool = False
    convert_to_png: bool = False
    styles_url: str | None = DEFAULT_STYLES_URL
    check_interval_seconds: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings) -> FusionBrainConfig:
        env = settings.env
        base_url = env.str("FUSION_BRAIN_URL", DEFAULT_URL) or DEFAULT_URL
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"FUSION_BRAIN_URL={base_url!r} is not an http:// or https:// URL")
        styles_url = env.str("IMAGEND_FUSIONBRAIN_STYLES_URL", DEFAULT_STYLES_URL)
        if styles_url is not None and styles_url.lower() in ("off", "none", "false", "0"):
            styles_url = None
        model_id = env.int("IMAGEND_FUSIONBRAIN_MODEL_ID", 0, minimum=0)
        return cls(
            base_url=base_url.rstrip("/") + "/",
            api=env.choice("IMAGEND_FUSIONBRAIN_API", "pipeline", APIS),
            pipeline_id=env.str("IMAGEND_FUSIONBRAIN_PIPELINE_ID"),
            model_id=model_id or None,
            timeout_seconds=env.seconds("IMAGEND_FUSIONBRAIN_TIMEOUT", DEFAULT_TIMEOUT_SECONDS, minimum=0.05),
            http_attempts=env.int("IMAGEND_FUSIONBRAIN_HTTP_ATTEMPTS", DEFAULT_HTTP_ATTEMPTS, minimum=1, maximum=20),
            retry_wait_seconds=env.seconds("IMAGEND_FUSIONBRAIN_RETRY_WAIT", DEFAULT_RETRY_WAIT_SECONDS),
            max_batch=env.int("IMAGEND_FUSIONBRAIN_MAX_BATCH", DEFAULT_MAX_BATCH, minimum=1, maximum=1000),
            queue_backoff_seconds=env.seconds(
                "IMAGEND_FUSIONBRAIN_QUEUE_BACKOFF", DEFAULT_QUEUE_BACKOFF_SECONDS, minimum=0.1
            ),
            keep_censored=env.bool("IMAGEND_KEEP_CENSORED", False),
            convert_to_png=env.bool("IMAGEND_FUSIONBRAIN_PNG", False),
            styles_url=styles_url,
            check_interval_seconds=settings.check_interval_seconds,
        )


# Answers that say the server did not take the request: safe to send again even when it creates.
NOT_TAKEN_STATUSES = frozenset({429, 503})


class _TransientStatus(Exception):
    """A 5xx or 429 answer: worth another try of the same call."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


class FusionBrainBackend:
    name = "fusionbrain"

    def __init__(self, config: FusionBrainConfig, api_key: str, secret_key: str) -> None:
        self.config = config
        # Concurrent submissions (generator) and polls (processor) per round.
        self.max_batch = config.max_batch
        self._client = httpx.Client(
            base_url=config.base_url,
            headers={
                "X-Key": f"Key {api_key}",
                "X-Secret": f"Secret {secret_key}",
                "User-Agent": f"imagend/{__version__}",
            },
            timeout=httpx.Timeout(config.timeout_seconds),
            limits=httpx.Limits(max_connections=config.max_batch, max_keepalive_connections=config.max_batch),
        )
        self._discovery_lock = threading.Lock()
        self._pipeline_id: str | None = config.pipeline_id
        self._model_id: int | None = config.model_id
        self._styles_lock = threading.Lock()
        self._styles = STYLES
        self._styles_checked_at = float("-inf")

    @classmethod
    def from_settings(cls, settings: Settings) -> FusionBrainBackend:
        keys = {
            "FUSION_BRAIN_API_KEY": settings.fusion_brain_api_key,
            "FUSION_BRAIN_SECRET_KEY": settings.fusion_brain_secret_key,
        }
        missing = [name for name, value in keys.items() if value is None]
        if missing:
            raise ConfigError(f"{' and '.join(missing)} must be set to serve the fusionbrain backend")
        api_key, secret_key = (value.reveal() for value in keys.values() if value is not None)
        return cls(FusionBrainConfig.from_settings(settings), api_key, secret_key)

    def claim_preference(self) -> ModelPreference | None:
        return None

    def device_and_model(self) -> tuple[str | None, str | None]:
        return None, None

    def close(self) -> None:
        self._client.close()

    # -- validate -----------------------------------------------------------------------

    def validate(self, request: Request) -> Request:
        # A1111's `(red:1.5)`, `<lora:…>`: Fusion Brain reads plain text (weights dropped, tags removed, noted).
        request = a1111_prompt.apply(request, weighting=False, takes_loras=False)
        refuse_image_inputs(request, self.name)
        if request.n > 1:  # its API takes numImages = 1 only (fusionbrain-api.md)
            raise BadInput(f"Fusion Brain makes one image per task (its numImages is 1 only), got n = {request.n}; "
                           "insert n rows, or use the local or placeholder backend")
        if request.post:  # a remote image comes back in the processor, which knows no preset
            raise BadInput("the fusionbrain backend does not post-process images (the row's preset names "
                           f"{', '.join(step.name for step in request.post)}); use the local or placeholder backend")
        for side_name, side in (("width", request.width), ("height", request.height)):
            if not MIN_SIDE_PX <= side <= MAX_SIDE_PX:
                raise BadInput(
                    f"{side_name} {side} is outside what Fusion Brain accepts: {MIN_SIDE_PX} to {MAX_SIDE_PX} "
                    "pixels per side (multiples of 64 work best)"
                )
        if request.negative_prompt is not None and len(request.negative_prompt) > NEGATIVE_PROMPT_MAX_CHARS:
            raise BadInput(
                f"negative_prompt is {len(request.negative_prompt)} characters; Fusion Brain accepts at most "
                f"{NEGATIVE_PROMPT_MAX_CHARS}"
            )
        if request.style is None:
            return request
        style = request.style.strip().upper()
        known = self._known_styles(style)
        if style not in known:
            raise BadInput(f"unknown style {request.style!r} for Fusion Brain; use one of: {', '.join(sorted(known))}")
        return dataclasses.replace(request, style=style)

    def _known_styles(self, wanted: str) -> frozenset[str]:
        """The built-in styles, plus those the styles endpoint lists (looked up only for an unknown name)."""
        if wanted in self._styles or self.config.styles_url is None:
            return self._styles
        with self._styles_lock:
            if time.monotonic() - self._styles_checked_at < STYLES_REFRESH_SECONDS:
                return self._styles
            self._styles_checked_at = time.monotonic()
            try:
                # The CDN needs no auth: a bare request, so the keys never go to another host.
                response = httpx.get(
                    self.config.styles_url, timeout=min(self.config.timeout_seconds, STYLES_TIMEOUT_SECONDS)
                )
                response.raise_for_status()
                names = {str(s["name"]).upper() for s in response.json() if isinstance(s, dict) and s.get("name")}
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                log.warning("fusionbrain_styles_unavailable", error=type(exc).__name__)
                return self._styles
            self._styles = self._styles | names
            log.info("fusionbrain_styles_refreshed", styles=sorted(self._styles))
            return self._styles

    # -- submit -------------------------------------------------------------------------

    def submit(self, request: Request) -> Submission:
        params = json.dumps(self._params(request), ensure_ascii=False)
        files = {"params": (None, params, "application/json")}  # the part must carry application/json (else 415)
        if self.config.api == "pipeline":
            pipeline_id = self._pipeline()
            response = self._call(
                "POST", "key/api/v1/pipeline/run", "run", creates=True, data={"pipeline_id": pipeline_id}, files=files
            )
            if response.status_code == 404:
                self._pipeline_not_found(pipeline_id)
        else:
            model_id = self._model()
            response = self._call(
                "POST", "key/api/v1/text2image/run", "run", creates=True, data={"model_id": str(model_id)}, files=files
            )
        body = self._json(response, "run")
        closed = _queue_closed(body)
        if closed is not None:
            raise QueueClosed(
                f"Fusion Brain queue is {closed}; will submit again later", self.config.queue_backoff_seconds
            )
        task_id = body.get("uuid") if isinstance(body, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise RetryableError(f"Fusion Brain accepted the run (HTTP {response.status_code}) but sent no task uuid")
        status_time = body.get("status_time")
        if isinstance(status_time, int | float) and not isinstance(status_time, bool) and status_time >= 0:
            wait = min(float(status_time), MAX_FIRST_POLL_SECONDS)
        else:  # the legacy API does not suggest one
            wait = self.config.check_interval_seconds
        log.debug(
            "fusionbrain_submitted", id=request.id, attempt=request.attempt, uuid=task_id, poll_after_seconds=wait
        )
        return Submission(task_id, wait)

    def _params(self, request: Request) -> dict[str, Any]:
        params: dict[str, Any] = {
            "type": "GENERATE",
            "numImages": 1,
            "width": request.width,
            "height": request.height,
            "generateParams": {"query": request.prompt},
        }
        if request.style:
            params["style"] = request.style
        if request.negative_prompt:
            # The field was renamed between the API generations.
            key = "negativePromptDecoder" if self.config.api == "pipeline" else "negativePromptUnclip"
            params[key] = request.negative_prompt
        return params

    def _pipeline(self) -> str:
        """The configured pipeline, else the first ACTIVE TEXT2IMAGE one (looked up once, then cached)."""
        with self._discovery_lock:
            if self._pipeline_id is not None:
                return self._pipeline_id
            body = self._json(
                self._call("GET", "key/api/v1/pipelines", "pipelines", params={"type": "TEXT2IMAGE"}), "pipelines"
            )
            if not isinstance(body, list):
                raise RetryableError("Fusion Brain's pipeline list is not a list")
            text2image = [p for p in body if isinstance(p, dict) and p.get("type") == "TEXT2IMAGE"]
            for pipeline in text2image:
                # The docs' example says `uuid`, every client reads `id`.
                pipeline_id = pipeline.get("id") or pipeline.get("uuid")
                if pipeline.get("status") == "ACTIVE" and isinstance(pipeline_id, str):
                    self._pipeline_id = pipeline_id
                    log.info(
                        "fusionbrain_pipeline_found", pipeline_id=pipeline_id, pipeline_name=str(pipeline.get("name"))
                    )
                    return pipeline_id
            seen = sorted({str(p.get("status")) for p in text2image}) or ["none"]
            raise QueueClosed(
                f"Fusion Brain has no ACTIVE TEXT2IMAGE pipeline (statuses seen: {', '.join(seen)})",
                self.config.queue_backoff_seconds,
            )

    def _pipeline_not_found(self, pipeline_id: str) -> None:
        if self.config.pipeline_id is not None:
            raise PermanentError(
                f"Fusion Brain does not know pipeline {pipeline_id} (HTTP 404); check IMAGEND_FUSIONBRAIN_PIPELINE_ID"
            )
        with self._discovery_lock:
            self._pipeline_id = None
        raise RetryableError(
            f"Fusion Brain no longer knows pipeline {pipeline_id} (HTTP 404); it will be looked up again"
        )

    def _model(self) -> int:
        """The configured legacy model id, else the first TEXT2IMAGE model (looked up once, then cached)."""
        with self._discovery_lock:
            if self._model_id is not None:
                return self._model_id
            body = self._json(self._call("GET", "key/api/v1/models", "models"), "models")
            models = body if isinstance(body, list) else []
            for model in models:
                if isinstance(model, dict) and model.get("type", "TEXT2IMAGE") == "TEXT2IMAGE":
                    model_id = model.get("id")
                    if isinstance(model_id, int) and not isinstance(model_id, bool):
                        self._model_id = model_id
                        log.info("fusionbrain_model_found", model_id=model_id, model_name=str(model.get("name")))
                        return model_id
            raise RetryableError("Fusion Brain lists no TEXT2IMAGE model")

    # -- poll ---------------------------------------------------------------------------

    def poll(self, task_id: str) -> Image | Pending:
        api_path = "pipeline" if self.config.api == "pipeline" else "text2image"
        response = self._call("GET", f"key/api/v1/{api_path}/status/{task_id}", "status")
        if response.status_code == 404:
            raise RetryableError(EXPIRED_MESSAGE)
        body = self._json(response, "status")
        if not isinstance(body, dict):
            raise RetryableError("Fusion Brain's task status is not a JSON object")
        status = body.get("status")
        if status in PENDING_STATES:
            return Pending(self.config.check_interval_seconds)
        if status == "DONE":
            return self._image(task_id, body)
        if status == "FAIL":
            result: dict[str, Any] = body["result"] if isinstance(body.get("result"), dict) else {}
            description = (
                body.get("errorDescription") or result.get("errorDescription") or body.get("statusDescription")
            )
            described = clip(str(description or "no errorDescription given"), MESSAGE_MAX_CHARS)
            raise RetryableError(f"Fusion Brain task failed: {described}")
        if status == "CANCEL":
            raise RetryableError("Fusion Brain cancelled the task")
        # Unknown states are waited out; DEFAULT_GENERATION_TIMEOUT bounds the wait.
        log.warning("fusionbrain_unknown_status", uuid=task_id, status=clip(str(status), 40))
        return Pending(self.config.check_interval_seconds)

    def _image(self, task_id: str, body: dict[str, Any]) -> Image:
        # Pipeline API: result.files / result.censored; legacy: top-level images / censored.
        result = body.get("result") if isinstance(body.get("result"), dict) else body
        assert isinstance(result, dict)
        files = result.get("files") or result.get("images") or body.get("images")
        censored = result.get("censored", body.get("censored", False))
        if censored is True or str(censored).lower() == "true":
            if not self.config.keep_censored:
                raise PermanentError(
                    "Fusion Brain censored this prompt and returned a placeholder image instead "
                    "(set IMAGEND_KEEP_CENSORED=true to keep the placeholder)"
                )
            log.info("fusionbrain_censored_kept", uuid=task_id)
        if not isinstance(files, list) or not files or not isinstance(files[0], str):
            raise RetryableError("Fusion Brain reported DONE but sent no image")
        data, (width, height) = _decode_image(files[0], self.config.convert_to_png)
        generation_time = body.get("generationTime")
        seconds = float(generation_time) if isinstance(generation_time, int | float) else None
        return Image(data, seed=None, generation_seconds=seconds, width=width, height=height)

    # -- HTTP ---------------------------------------------------------------------------

    def _call(self, method: str, path: str, what: str, *, creates: bool = False, **kwargs: Any) -> httpx.Response:
        """One API call, retried on connection errors, timeouts, 5xx and 429. Other answers are returned.

        A call that `creates` something (the submit: a paid task) is retried only when the request
        cannot have reached the server (it never connected), or the server said it did not take it
        (429, 503); after a timeout or a dropped connection it may already exist, so the attempt
        fails instead (RetryableError) and a later attempt submits again, after a backoff."""

        def once() -> httpx.Response:
            response = self._client.request(method, path, **kwargs)
            if response.status_code >= 500 or response.status_code == 429:
                raise _TransientStatus(response)
            return response

        def worth_retrying(exc: BaseException) -> bool:
            if isinstance(exc, _TransientStatus):
                return not creates or exc.response.status_code in NOT_TAKEN_STATUSES
            if creates:
                return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
            return isinstance(exc, httpx.TransportError)

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            log.info(
                "fusionbrain_http_retry",
                call=what,
                attempt=state.attempt_number,
                error=str(error) if isinstance(error, _TransientStatus) else type(error).__name__,
            )

        retrying = Retrying(
            retry=retry_if_exception(worth_retrying),
            stop=stop_after_attempt(self.config.http_attempts),
            wait=http_retry_wait(self.config.retry_wait_seconds, RETRY_WAIT_MAX_SECONDS),
            before_sleep=before_sleep,
            reraise=True,
        )
        tries = self.config.http_attempts
        try:
            response = retrying(once)
        except _TransientStatus as exc:
            raise RetryableError(
                f"Fusion Brain {what} call failed: HTTP {exc.response.status_code}{_detail(exc.response)} "
                f"({tries} tries)"
            ) from None
        except httpx.TimeoutException as exc:
            raise RetryableError(
                f"Fusion Brain {what} call timed out ({type(exc).__name__} after {self.config.timeout_seconds:g} s, "
                f"{tries} tries)"
            ) from None
        except httpx.TransportError as exc:
            raise RetryableError(f"Fusion Brain {what} call failed: {type(exc).__name__} ({tries} tries)") from None
        _raise_for_refusal(response, what)
        return response

    def _json(self, response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise RetryableError(
                f"Fusion Brain {what} reply is not valid JSON "
                f"(HTTP {response.status_code}, {len(response.content)} bytes)"
            ) from None


def _raise_for_refusal(response: httpx.Response, what: str) -> None:
    """4xx answers other than 404 (which callers interpret) are permanent; say why."""
    code = response.status_code
    if code < 400 or code == 404:
        return
    if code == 401:
        raise PermanentError(
            f"Fusion Brain {what} call refused: HTTP 401, the API key or secret was not accepted "
            "(check FUSION_BRAIN_API_KEY and FUSION_BRAIN_SECRET_KEY)"
        )
    if code == 415:
        raise PermanentError(
            f"Fusion Brain {what} call refused: HTTP 415, the request's params part was not taken as "
            f"application/json{_detail(response)}"
        )
    if code == 400:
        raise PermanentError(f"Fusion Brain {what} call refused: HTTP 400, bad parameters{_detail(response)}")
    raise PermanentError(f"Fusion Brain {what} call refused: HTTP {code}{_detail(response)}")


def _detail(response: httpx.Response) -> str:
    """The server's own message (Spring's `message` field), clipped, for the row's error."""
    try:
        body = response.json()
    except ValueError:
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return f": {clip(str(message), MESSAGE_MAX_CHARS)}" if message else ""


def _queue_closed(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    for key in QUEUE_STATUS_KEYS:
        if body.get(key) in QUEUE_CLOSED_STATES:
            return str(body[key])
    return None


def _decode_image(encoded: str, convert_to_png: bool) -> tuple[bytes, tuple[int, int]]:
    """base64 → bytes that Pillow fully decodes, and the image's size; RetryableError (a new attempt) otherwise."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    if encoded.startswith("data:"):
        encoded = encoded.partition(",")[2]
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise RetryableError("Fusion Brain returned an image whose base64 does not decode (truncated?)") from None
    try:
        with PILImage.open(io.BytesIO(data)) as image:
            image.load()  # decodes every pixel: a truncated file fails here
            if not convert_to_png or image.format == "PNG":
                return data, image.size
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return buffer.getvalue(), image.size
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, PILImage.DecompressionBombError) as exc:
        raise RetryableError(
            f"Fusion Brain returned {len(data)} bytes that are not a complete image ({type(exc).__name__})"
        ) from None
