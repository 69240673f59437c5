"""A faithful local fake of the Fusion Brain (Kandinsky) key API, over real HTTP.

It follows docs/fusionbrain.md and the protocol notes the backend was written from:
both API generations (pipeline and legacy text2image), the `X-Key: Key …` /
`X-Secret: Secret …` headers (401 otherwise), multipart with a `params` part that
must be `application/json` (415 otherwise), the 1000-character prompt limit (400),
INITIAL → PROCESSING → DONE/FAIL timing, `status_time`, results that can be read
once (404 afterwards) and expire when nobody reads them, censorship (DONE with
`censored: true` and a placeholder image), and a queue that answers
DISABLED_BY_QUEUE.

Its defaults are what the public clients of the real API were written against (the
official fusionbrain-sdk-python drives it unchanged: tests/integration/test_fusionbrain_fake_clients.py):
a closed queue is `{"status": …}` from availability and `{"model_status": …}` (still 201)
from a run; the listing holds TEXT2IMAGE pipelines only, one of them DISABLED_MANUALLY,
which availability reports as such and which refuses runs. What the real API's sources
disagree on is opt-in: `queue_key` (the key of both closed-queue answers, e.g. the docs'
`pipeline_status`) and `inpainting_pipeline` (an INPAINTING pipeline listed first).

Use it in-process:

    with FusionBrainFake(latency_seconds=0.1) as fake:
        fake.url            # base URL for FUSION_BRAIN_URL
        fake.inject("run", 503, times=2)
        fake.count("status")

or as a server: `python -m imagend.testing.fusionbrain_fake --port 8765`.

Faults (`inject(endpoint, kind, times)`), endpoint one of ENDPOINTS or "*":
- an HTTP status code (500, 502, 503, 429, 400, 401, 415, …): answered before the
  request is handled, so nothing happens on the fake's side;
- "reset": the connection is closed without a response (TCP RST);
- "timeout": the fake waits `hang_seconds`, then closes without a response;
- "malformed_json": the request is handled (a task is created, a result is consumed),
  then the JSON body is cut in half;
- "truncated_base64": the request is handled and a returned image's base64 is cut;
- "reset_after": the request is handled (a task is created), then the connection is closed
  without a response: the client cannot know that its POST went through.

A prompt containing `#fail` ends FAIL; one containing `#censor` ends DONE censored.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

DEFAULT_API_KEY = "fake-fusion-brain-api-key"
DEFAULT_SECRET_KEY = "fake-fusion-brain-secret-key"
PROMPT_MAX_CHARS = 1000
NEGATIVE_PROMPT_MAX_CHARS = 1000
MAX_SIDE_PX = 1024
LEGACY_MODEL_ID = 4
PIPELINE_ID = "6e4fb56e-5d6b-4f6e-9c1d-2a0b8f3c7d11"
DISABLED_PIPELINE_ID = "9a1b2c3d-0000-4000-8000-00000000dead"
INPAINTING_PIPELINE_ID = "0b6a2c1e-7f0e-4a55-9a51-1d2f3e4a5b6c"
QUEUE_STATES = ("ACTIVE", "DISABLED_BY_QUEUE", "DISABLED_MANUALLY")
STYLES = ("KANDINSKY", "UHD", "ANIME", "DEFAULT")
ENDPOINTS = ("pipelines", "models", "availability", "run", "status", "styles")
TEXT_FAULTS = ("reset", "timeout", "malformed_json", "truncated_base64", "reset_after")
API_PREFIX = "key/api/v1/"
RESULT_SIDE_PX = 32


def _encoded_image(fmt: str, colour: tuple[int, int, int]) -> str:
    """A small real image (a gradient over `colour`), base64 as the API sends it."""
    from PIL import Image

    image = Image.new("RGB", (RESULT_SIDE_PX, RESULT_SIDE_PX), colour)
    pixels = image.load()
    assert pixels is not None
    for x in range(RESULT_SIDE_PX):
        for y in range(RESULT_SIDE_PX):
            pixels[x, y] = (colour[0], (x * 8) % 256, (y * 8) % 256)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class Task:
    uuid: str
    api: str  # "pipeline" or "legacy"
    prompt: str
    created: float
    outcome: str  # "DONE", "FAIL" or "CENSORED"


@dataclass
class Submitted:
    """What the fake received for one accepted run, for tests to assert on."""

    uuid: str
    api: str
    params: dict[str, Any]
    pipeline_id: str | None = None
    model_id: int | None = None


@dataclass
class _Fault:
    kind: int | str
    remaining: float  # math.inf for "every call"


@dataclass
class _Reply:
    code: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog is 5: a batch of concurrent submits on a loaded machine overflowed
    # it, and each refused SYN came back a second later, past the 1 s timeout the tests give the client.
    request_queue_size = 128
    fake: FusionBrainFake

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Faults close sockets under the handler on purpose; a client that gave up
        # (timeout) leaves a broken pipe. Neither is worth a traceback.
        pass


class FusionBrainFake:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = DEFAULT_API_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        latency_seconds: float = 0.0,
        generation_seconds: float = 1.0,
        status_time: int = 1,
        expiry_seconds: float = 300.0,
        hang_seconds: float = 5.0,
        queue: str = "ACTIVE",
        queue_key: str | None = None,
        styles: tuple[str, ...] = STYLES,
        inpainting_pipeline: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self.secret_key = secret_key
        # Mutable between calls: tests change them as a run goes on.
        self.latency_seconds = latency_seconds
        self.generation_seconds = generation_seconds
        self.status_time = status_time
        self.expiry_seconds = expiry_seconds
        self.hang_seconds = hang_seconds
        self.queue = queue  # ACTIVE, DISABLED_BY_QUEUE or DISABLED_MANUALLY
        # The key of a closed-queue answer. None: what the SDKs read, `status` from availability and
        # `model_status` from a run; a name (the docs show `pipeline_status`): that key in both.
        self.queue_key = queue_key
        self.styles = styles
        self.inpainting_pipeline = inpainting_pipeline  # an INPAINTING pipeline listed first (opt-in)
        self.fail_all = False
        self.censor_all = False
        self.fail_description = "Internal generation error"
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._status_reads: Counter[str] = Counter()
        self._tasks: dict[str, Task] = {}
        self._gone: set[str] = set()  # read once, or expired
        self._faults: dict[str, list[_Fault]] = {}
        self._clock_offset = 0.0
        self._first_run_at: float | None = None
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.submitted: list[Submitted] = []
        self.images = {
            "PNG": _encoded_image("PNG", (40, 90, 200)),
            "JPEG": _encoded_image("JPEG", (200, 90, 40)),
            "CENSORED_PNG": _encoded_image("PNG", (30, 200, 30)),
            "CENSORED_JPEG": _encoded_image("JPEG", (30, 200, 30)),
        }

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> FusionBrainFake:
        server = _Server((self.host, self.port), _Handler)
        server.fake = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fusionbrain-fake", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FusionBrainFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def client_env(self) -> dict[str, str]:
        """The variables that point imagend's fusionbrain backend at this fake."""
        return {
            "FUSION_BRAIN_URL": self.url,
            "FUSION_BRAIN_API_KEY": self.api_key,
            "FUSION_BRAIN_SECRET_KEY": self.secret_key,
            "IMAGEND_FUSIONBRAIN_STYLES_URL": self.url + "static/styles/key",
        }

    # -- control and inspection -------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() + self._clock_offset

    def advance(self, seconds: float) -> None:
        """Move the fake's clock forward: tasks finish and results expire without waiting."""
        with self._lock:
            self._clock_offset += seconds

    def inject(self, endpoint: str, kind: int | str, times: float = 1) -> None:
        if endpoint != "*" and endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; use one of {', '.join(ENDPOINTS)} or '*'")
        if isinstance(kind, str) and kind not in TEXT_FAULTS:
            raise ValueError(f"unknown fault {kind!r}; use an HTTP status code or one of {', '.join(TEXT_FAULTS)}")
        with self._lock:
            self._faults.setdefault(endpoint, []).append(_Fault(kind, times))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def count(self, endpoint: str) -> int:
        with self._lock:
            return self._calls[endpoint]

    def status_reads(self) -> dict[str, int]:
        """How many times each task's status was read (tests: no task polled twice after DONE)."""
        with self._lock:
            return dict(self._status_reads)

    @property
    def first_run_at(self) -> float | None:
        """time.monotonic() of the first accepted run (benchmarks time from it)."""
        return self._first_run_at

    # -- used by the handler ----------------------------------------------------------

    def _take_fault(self, endpoint: str, when: str) -> int | str | None:
        """The next fault for this call. when: "before" (codes, reset, timeout) or "after" (body faults)."""
        after = ("malformed_json", "truncated_base64", "reset_after")
        with self._lock:
            for key in (endpoint, "*"):
                for fault in self._faults.get(key, []):
                    if fault.remaining <= 0 or (fault.kind in after) != (when == "after"):
                        continue
                    if fault.kind == "truncated_base64" and endpoint != "status":
                        continue
                    fault.remaining -= 1
                    return fault.kind
        return None

    def _count(self, endpoint: str) -> None:
        with self._lock:
            self._calls[endpoint] += 1
            self._calls["total"] += 1

    def _authorised(self, headers: Any) -> bool:
        return bool(
            headers.get("X-Key") == f"Key {self.api_key}" and headers.get("X-Secret") == f"Secret {self.secret_key}"
        )

    def _create_task(self, api: str, params: dict[str, Any], pipeline_id: str | None, model_id: int | None) -> str:
        prompt = params["generateParams"]["query"]
        outcome = "DONE"
        if self.fail_all or "#fail" in prompt:
            outcome = "FAIL"
        elif self.censor_all or "#censor" in prompt:
            outcome = "CENSORED"
        task_id = str(uuid.uuid4())
        with self._lock:
            self._tasks[task_id] = Task(task_id, api, prompt, self.now(), outcome)
            self.submitted.append(Submitted(task_id, api, params, pipeline_id, model_id))
            if self._first_run_at is None:
                self._first_run_at = time.monotonic()
        return task_id

    def _task_state(self, api: str, task_id: str) -> dict[str, Any] | None:
        """The status reply for a task, or None (404). A final status is handed out once."""
        with self._lock:
            self._status_reads[task_id] += 1
            task = self._tasks.get(task_id)
            if task is None or task.api != api:
                return None
            age = self.now() - task.created
            if age > self.generation_seconds + self.expiry_seconds:
                del self._tasks[task_id]
                self._gone.add(task_id)
                return None
            if age < self.generation_seconds / 3:
                status = "INITIAL"
            elif age < self.generation_seconds:
                status = "PROCESSING"
            else:
                status = "FAIL" if task.outcome == "FAIL" else "DONE"
                del self._tasks[task_id]  # one-shot: the next read is a 404
                self._gone.add(task_id)
        censored = task.outcome == "CENSORED"
        fmt = "PNG" if api == "pipeline" else "JPEG"
        files = [self.images[("CENSORED_" if censored else "") + fmt]] if status == "DONE" else None
        error = self.fail_description if status == "FAIL" else None
        generation_time = round(self.generation_seconds) if status in ("DONE", "FAIL") else None
        if api == "pipeline":
            result = {"files": files, "censored": censored} if status == "DONE" else None
            return {
                "uuid": task_id,
                "status": status,
                "errorDescription": error,
                "result": result,
                "generationTime": generation_time,
            }
        return {
            "uuid": task_id,
            "status": status,
            "images": files,
            "errorDescription": error,
            "censored": censored if status == "DONE" else False,
            "generationTime": generation_time,
        }

    def _pipelines(self) -> list[dict[str, Any]]:
        stamp = "2025-04-01T00:00:00.000+00:00"
        common: dict[str, Any] = {
            "description": "",
            "descriptionEn": "",
            "imagePreview": None,
            "createdDate": stamp,
            "lastModified": stamp,
            "tags": [],
        }
        status = "ACTIVE" if self.queue == "ACTIVE" else self.queue
        # Listed before the active one on purpose: a client must pick the first ACTIVE TEXT2IMAGE one.
        inpainting = {
            "id": INPAINTING_PIPELINE_ID,
            "name": "Inpainting",
            "nameEn": "Inpainting",
            "version": 3.1,
            "status": "ACTIVE",
            "type": "INPAINTING",
            **common,
        }
        return [
            *([inpainting] if self.inpainting_pipeline else []),
            {
                "id": DISABLED_PIPELINE_ID,
                "name": "Kandinsky 3.0",
                "nameEn": "Kandinsky 3.0",
                "version": 3.0,
                "status": "DISABLED_MANUALLY",
                "type": "TEXT2IMAGE",
                **common,
            },
            {
                "id": PIPELINE_ID,
                "name": "Kandinsky",
                "nameEn": "Kandinsky",
                "version": 3.1,
                "status": status,
                "type": "TEXT2IMAGE",
                **common,
            },
        ]


class _BadRequest(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API behind its proxy
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.fake is not None and getattr(self.server, "verbose", False):
            sys.stderr.write("fusionbrain-fake: " + (format % args) + "\n")

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    # -- dispatch ---------------------------------------------------------------------

    def _serve(self, method: str) -> None:
        fake = self.server.fake
        parts = urlsplit(self.path)
        path = parts.path.lstrip("/")
        query = parse_qs(parts.query)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path == "_fake/stats":
            self._send(_Reply(200, {"calls": fake.calls(), "tasks": len(fake._tasks)}))
            return
        endpoint = _endpoint(method, path)
        if endpoint is not None:
            fake._count(endpoint)
        if fake.latency_seconds and fake._stopping.wait(fake.latency_seconds):
            return
        fault = fake._take_fault(endpoint, "before") if endpoint else None
        if fault == "reset":
            self._reset()
            return
        if fault == "timeout":
            fake._stopping.wait(fake.hang_seconds)
            self._reset()
            return
        if isinstance(fault, int):
            self._send(_spring_error(fault, f"injected fault {fault}", path))
            return
        try:
            reply = self._route(method, path, query, body, endpoint)
        except _BadRequest as exc:
            reply = _spring_error(exc.code, exc.message, path)
        after = fake._take_fault(endpoint, "after") if endpoint and reply.code < 400 else None
        if after == "truncated_base64":
            _truncate_images(reply.body)
        if after == "reset_after":
            self._reset()
            return
        self._send(reply, malformed=after == "malformed_json")

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes, endpoint: str | None) -> _Reply:
        fake = self.server.fake
        if endpoint == "styles":
            return _Reply(
                200, [{"name": s, "title": s.title(), "titleEn": s.title(), "image": ""} for s in fake.styles]
            )
        if endpoint is None:
            raise _BadRequest(404, "Not Found")
        if not fake._authorised(self.headers):
            raise _BadRequest(401, "Unauthorized")
        rest = path[len(API_PREFIX) :]
        if endpoint == "pipelines":
            wanted = query.get("type", [None])[0]
            return _Reply(200, [p for p in fake._pipelines() if wanted in (None, p["type"])])
        if endpoint == "models":
            return _Reply(200, [{"id": LEGACY_MODEL_ID, "name": "Kandinsky", "version": 3.1, "type": "TEXT2IMAGE"}])
        if endpoint == "availability":
            pipeline = None
            if rest.startswith("pipeline/"):
                pipeline = {p["id"]: p for p in fake._pipelines()}.get(rest.split("/")[1])
                if pipeline is None:
                    raise _BadRequest(404, "Pipeline not found")
            return _Reply(200, self._availability(pipeline))
        if endpoint == "run":
            return self._run(rest, query, body)
        api = "pipeline" if rest.startswith("pipeline/") else "legacy"
        state = fake._task_state(api, rest.rsplit("/", 1)[-1])
        if state is None:
            raise _BadRequest(404, "Task not found")
        return _Reply(200, state)

    def _availability(self, pipeline: dict[str, Any] | None) -> dict[str, str]:
        """Availability of a pipeline (its own status: a DISABLED_MANUALLY one says so), or of the
        legacy model (the queue's)."""
        fake = self.server.fake
        state = pipeline["status"] if pipeline is not None else fake.queue
        if state == "ACTIVE":
            return {"status": "ACTIVE"}
        return {fake.queue_key or "status": state}

    def _refused_run(self, state: str) -> _Reply:
        """A run the queue (or a disabled pipeline) does not take: 201 and a status object instead
        of a uuid, as the SDKs read it."""
        return _Reply(201, {self.server.fake.queue_key or "model_status": state})

    def _run(self, rest: str, query: dict[str, list[str]], body: bytes) -> _Reply:
        fake = self.server.fake
        api = "pipeline" if rest.startswith("pipeline/") else "legacy"
        fields = self._multipart(body)
        if "params" not in fields:
            raise _BadRequest(400, "Required part 'params' is not present.")
        content_type, raw_params = fields["params"]
        if content_type != "application/json":
            raise _BadRequest(415, f"Content type '{content_type}' not supported")
        pipeline_id = model_id = None
        if api == "pipeline":
            pipeline_id = fields["pipeline_id"][1].decode() if "pipeline_id" in fields else None
            pipeline_id = pipeline_id or query.get("pipeline_id", [None])[0]
            if not pipeline_id:
                raise _BadRequest(400, "Required parameter 'pipeline_id' is not present.")
            known = {p["id"]: p for p in fake._pipelines()}
            if pipeline_id not in known or known[pipeline_id]["type"] != "TEXT2IMAGE":
                raise _BadRequest(404, f"Pipeline {pipeline_id} not found")
            if known[pipeline_id]["status"] != "ACTIVE":  # disabled (by hand, or the queue): no task
                _check_params(raw_params, fake.styles)
                return self._refused_run(known[pipeline_id]["status"])
        else:
            raw_model = fields["model_id"][1].decode() if "model_id" in fields else ""
            try:
                model_id = int(raw_model)
            except ValueError:
                raise _BadRequest(
                    400, f"Failed to convert value of type 'java.lang.String' to required type 'int'; {raw_model!r}"
                ) from None
            if model_id != LEGACY_MODEL_ID:
                raise _BadRequest(404, f"Model {model_id} not found")
        params = _check_params(raw_params, fake.styles)
        if fake.queue != "ACTIVE":
            return self._refused_run(fake.queue)
        task_id = fake._create_task(api, params, pipeline_id, model_id)
        reply: dict[str, Any] = {"uuid": task_id, "status": "INITIAL"}
        if api == "pipeline":
            reply["status_time"] = fake.status_time
        return _Reply(201, reply)

    def _multipart(self, body: bytes) -> dict[str, tuple[str, bytes]]:
        content_type = self.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data"):
            raise _BadRequest(415, f"Content type '{content_type}' not supported")
        message = BytesParser(policy=policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        if not message.is_multipart():
            raise _BadRequest(400, "Failed to parse multipart servlet request")
        fields: dict[str, tuple[str, bytes]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                # A part without its own Content-Type is text/plain, as Spring sees it.
                fields[name] = (part.get_content_type(), payload)
        return fields

    # -- replies ----------------------------------------------------------------------

    def _send(self, reply: _Reply, malformed: bool = False) -> None:
        data = json.dumps(reply.body, ensure_ascii=False).encode()
        if malformed:
            data = data[: max(1, len(data) // 2)]
        self.send_response(reply.code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _reset(self) -> None:
        """Close the connection with a TCP RST and no response."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # drop the makefile reference so close() really closes now
            self.connection.close()
        except OSError:
            pass


def _endpoint(method: str, path: str) -> str | None:
    if method == "GET" and path.startswith("static/styles/"):
        return "styles"
    if not path.startswith(API_PREFIX):
        return None
    rest = path[len(API_PREFIX) :]
    segments = rest.split("/")
    if method == "GET" and rest in ("pipelines",):
        return "pipelines"
    if method == "GET" and rest == "models":
        return "models"
    if method == "GET" and (
        (len(segments) == 3 and segments[0] == "pipeline" and segments[2] == "availability")
        or rest == "text2image/availability"
    ):
        return "availability"
    if method == "POST" and rest in ("pipeline/run", "text2image/run"):
        return "run"
    if method == "GET" and len(segments) == 3 and segments[0] in ("pipeline", "text2image") and segments[1] == "status":
        return "status"
    return None


def _check_params(raw: bytes, styles: tuple[str, ...]) -> dict[str, Any]:
    try:
        params = json.loads(raw)
    except ValueError:
        raise _BadRequest(400, "JSON parse error: params is not a JSON document") from None
    if not isinstance(params, dict):
        raise _BadRequest(400, "params must be a JSON object")
    if params.get("type") != "GENERATE":
        raise _BadRequest(400, "type must be GENERATE")
    num_images = params.get("numImages", params.get("num_images", 1))
    if num_images != 1:
        raise _BadRequest(400, "numImages must be 1")
    for side in ("width", "height"):
        value = params.get(side, MAX_SIDE_PX)
        if not isinstance(value, int) or not 1 <= value <= MAX_SIDE_PX:
            raise _BadRequest(400, f"{side} must be an integer up to {MAX_SIDE_PX}")
    style = params.get("style")
    if style is not None and style not in styles:
        raise _BadRequest(400, f"Unknown style {style}")
    generate = params.get("generateParams")
    query = generate.get("query") if isinstance(generate, dict) else None
    if not isinstance(query, str) or not query.strip():
        raise _BadRequest(400, "generateParams.query is required")
    if len(query) > PROMPT_MAX_CHARS:
        raise _BadRequest(400, f"Text is too long: {len(query)} characters, at most {PROMPT_MAX_CHARS}")
    for key in ("negativePromptDecoder", "negativePromptUnclip"):
        negative = params.get(key)
        if negative is not None and (not isinstance(negative, str) or len(negative) > NEGATIVE_PROMPT_MAX_CHARS):
            raise _BadRequest(400, f"{key} is too long (at most {NEGATIVE_PROMPT_MAX_CHARS} characters)")
    return params


def _truncate_images(body: Any) -> None:
    if not isinstance(body, dict):
        return
    holders = [body, body.get("result") or {}]
    for holder in holders:
        for key in ("files", "images"):
            files = holder.get(key)
            if isinstance(files, list) and files:
                holder[key] = [f[: len(f) // 2] for f in files]


def _spring_error(code: int, message: str, path: str) -> _Reply:
    try:
        reason = HTTPStatus(code).phrase
    except ValueError:
        reason = "Error"
    return _Reply(
        code,
        {
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "status": code,
            "error": reason,
            "message": message,
            "path": "/" + path,
        },
    )


def _parse_fault(spec: str) -> tuple[str, int | str, float]:
    pieces = spec.split(":")
    if len(pieces) not in (2, 3):
        raise argparse.ArgumentTypeError(f"--fault {spec!r}: use ENDPOINT:KIND[:TIMES]")
    kind: int | str = int(pieces[1]) if pieces[1].isdigit() else pieces[1]
    times = float(pieces[2]) if len(pieces) == 3 else float("inf")
    return pieces[0], kind, times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imagend.testing.fusionbrain_fake",
        description="A local fake of the Fusion Brain key API (both generations): try imagend without an account.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--secret-key", default=DEFAULT_SECRET_KEY)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every HTTP call")
    parser.add_argument("--generation-seconds", type=float, default=5.0, help="submission to DONE")
    parser.add_argument("--status-time", type=int, default=2, help="first-poll hint returned by pipeline/run")
    parser.add_argument("--expiry-seconds", type=float, default=300.0, help="unread results vanish after this")
    parser.add_argument("--queue", default="ACTIVE", choices=QUEUE_STATES)
    parser.add_argument(
        "--queue-key",
        help="the key of closed-queue answers (default: status from availability, model_status from a run, "
        "as the SDKs read them; the docs show pipeline_status)",
    )
    parser.add_argument(
        "--inpainting-pipeline", action="store_true", help="also list an INPAINTING pipeline, first (opt-in)"
    )
    parser.add_argument(
        "--fault",
        action="append",
        type=_parse_fault,
        default=[],
        metavar="ENDPOINT:KIND[:TIMES]",
        help=f"inject a fault, e.g. run:503:2 or status:reset (endpoints: {', '.join(ENDPOINTS)}, *)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    fake = FusionBrainFake(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        secret_key=args.secret_key,
        latency_seconds=args.latency,
        generation_seconds=args.generation_seconds,
        status_time=args.status_time,
        expiry_seconds=args.expiry_seconds,
        queue=args.queue,
        queue_key=args.queue_key,
        inpainting_pipeline=args.inpainting_pipeline,
    )
    for endpoint, kind, times in args.fault:
        fake.inject(endpoint, kind, times)
    fake.start()
    assert fake._server is not None
    fake._server.verbose = args.verbose  # type: ignore[attr-defined]
    stop = threading.Event()

    def handle(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    print(f"fusionbrain fake listening on {fake.url} (stats: {fake.url}_fake/stats)", flush=True)
    for name, value in fake.client_env().items():
        print(f"  {name}={value}", flush=True)
    stop.wait()
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
