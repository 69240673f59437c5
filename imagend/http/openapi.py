"""The OpenAPI 3.1 description served at /openapi.json, written by hand: the JSON API (api.py) and
the probes (probes.py). The producer columns come from their one table (db/columns.py), as
http/checks.py's checks do."""

from __future__ import annotations

from typing import Any

from imagend import __version__
from imagend.db.columns import BACKEND_NAMES, IMAGES_PER_ROW_MAX, PRODUCER_COLUMNS
from imagend.db.rows import Status
from imagend.images.formats import FORMATS

INT4 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
BIG_IMAGES = ("The request body is at most 64 KiB: a bigger image is INSERTed in SQL, or chained with "
              "init_image_id / reference_image_id (another row's finished image)")


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema["type"]
    return {**schema, "type": [kind, "null"] if isinstance(kind, str) else [*kind, "null"]}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _object(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"type": "object"}}}}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


HOST_ERROR = {"421": _error("The `Host` header names no host this listener answers for (DNS rebinding): "
                            "IMAGEND_HTTP_ALLOWED_HOSTS")}
BUSY = ("Too many requests in flight (Retry-After says when to try again), or the database is not answering")
AUTH_ERRORS = {
    "401": _error("The token is missing or wrong (`Authorization: Bearer <IMAGEND_HTTP_TOKEN>`)"),
    "403": _error("Writes are off: IMAGEND_HTTP_TOKEN is not set"),
    **HOST_ERROR,
    "503": _error(BUSY),
}
READ_ERRORS = {"401": _error("On a non-loopback address (or with IMAGEND_HTTP_READ_TOKEN=required), reads need "
                             "the token too"), **HOST_ERROR, "503": _error(BUSY)}
ID_PARAMETER = {"name": "id", "in": "path", "required": True, "description": "The row's id",
                "schema": {"type": "integer", "minimum": 0}}
INDEX_PARAMETER = {"name": "index", "in": "path", "required": True,
                   "description": "Which of the row's n images (1 is the first, the row's image_url)",
                   "schema": {"type": "integer", "minimum": 1, "maximum": IMAGES_PER_ROW_MAX}}
PLAN_PARAMETER = {"name": "name", "in": "path", "required": True, "description": "A plan's name",
                  "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"}}
NAME_PARAMETER = {"name": "name", "in": "path", "required": True,
                  "description": "A backend's name, or `*` for all of them",
                  "schema": {"type": "string", "enum": [*BACKEND_NAMES, "*"]}}
WRITE: list[dict[str, list[str]]] = [{"bearer": []}]
IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "description": "A unique value per request (a UUID): a retry with the same key and body within "
                                  "IMAGEND_HTTP_RETRY_WINDOW gets the first request's answer, not a second row",
                   "schema": {"type": "string", "minLength": 1, "maxLength": 255}}
SIGNED_LINK = [
    {"name": "expires", "in": "query", "required": False, "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
     "description": "A signed link's expiry (Unix seconds)"},
    {"name": "signature", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "A signed link's HMAC-SHA256 (hex)"},
]


def _given(*names: str) -> dict[str, Any]:
    """A body where each of `names` is present and not null (null means the default, as absent)."""
    return {"required": list(names), "properties": {name: {"not": {"type": "null"}} for name in names}}


def _one_of_given(*names: str) -> dict[str, Any]:
    return {"anyOf": [_given(name) for name in names]}


UPSCALING = {"required": ["task"], "properties": {"task": {"const": "upscale"}}}
# What the columns need of each other (http/checks.py's _check_inputs_together, the claim's validation):
# a body that breaks one is refused with 422 naming the rule.
INPUT_RULES: list[dict[str, Any]] = [
    {"not": _given("init_image", "init_image_id"), "description": "init_image and init_image_id: set one"},
    {"not": _given("reference_image", "reference_image_id"),
     "description": "reference_image and reference_image_id: set one"},
    {"if": _given("mask_image"), "then": _one_of_given("init_image", "init_image_id"),
     "description": "mask_image needs an init image (init_image or init_image_id)"},
    {"if": _given("strength"), "then": _one_of_given("init_image", "init_image_id"),
     "description": "strength needs an init image (init_image or init_image_id)"},
    {"if": _given("reference_scale"), "then": _one_of_given("reference_image", "reference_image_id"),
     "description": "reference_scale needs a reference image (reference_image or reference_image_id)"},
    {"if": UPSCALING, "then": {"allOf": [_one_of_given("init_image", "init_image_id"), _given("upscale")]},
     "description": "task 'upscale' needs an init image and upscale"},
    {"if": _given("upscale"), "then": UPSCALING, "description": "upscale is only read with task 'upscale'"},
]
NOT_BLANK = r"\S"  # a prompt or model of spaces only is refused (422), as an empty one


def _image_create() -> dict[str, Any]:
    properties = {column.name: column.json_schema() for column in PRODUCER_COLUMNS}
    for name in ("prompt", "model"):
        properties[name] = {**properties[name], "pattern": NOT_BLANK}
    properties["run_after"] = {**properties["run_after"], "description": properties["run_after"]["description"]
                               + "; between 0001-01-01 and 9999-12-31 once in UTC (422 otherwise)"}
    rules = "; ".join(rule["description"] for rule in INPUT_RULES)
    return {"type": "object", "required": ["prompt"], "additionalProperties": False, "properties": properties,
            "allOf": INPUT_RULES,
            "description": "The columns a producer may INSERT (docs/producers.md); null or absent: "
                           "the daemon's default. The daemon's columns (status, base64, …) are refused (400). "
                           f"The local backend's inputs (docs/local.md) come last. {BIG_IMAGES}. The inputs "
                           f"together (allOf; 422 otherwise): {rules}."}


def _image() -> dict[str, Any]:
    timestamp = {"type": ["string", "null"], "format": "date-time",
                 "description": "UTC; a time Postgres holds beyond years 1 to 9999 (or ±infinity) is given as "
                                "9999-12-31T23:59:59.999999+00:00 or 0001-01-01T00:00:00+00:00"}
    return {
        "type": "object",
        "required": ["id", "status", "progress", "error", "position", "timings", "parameters"],
        "properties": {
            "id": {"type": "integer"},
            "status": {"type": "string", "enum": [status.value for status in Status]},
            "progress": {"type": ["number", "null"], "description": "0 … 1 while generated"},
            "error": {"type": ["string", "null"]},
            "warning": {"type": ["string", "null"]},
            "attempts": {"type": "integer"},
            "cancel_requested": {"type": "boolean"},
            "position": {"type": ["integer", "null"],
                         "description": "Rows ahead of it while it waits (imagend_position); null otherwise"},
            "estimated_start": timestamp,
            "timings": {"type": "object", "properties": {
                "created_at": timestamp, "run_after": timestamp, "started_at": timestamp,
                "finished_at": timestamp, "generation_seconds": {"type": ["number", "null"]}}},
            "parameters": {"type": "object", "description": "What the producer asked for (and the daemon filled "
                           "in); `params` is the producer's object (its text if it is not valid JSON), as is "
                           "`loras`; params longer than 65,536 characters as JSON text are given as their first "
                           "65,536 characters (a string) with `params_truncated` true (the row keeps them whole); "
                           "init_image, mask_image and reference_image say whether they are set "
                           "(true/false), never the image",
                           "properties": {"params_truncated": {"type": "boolean"}}},
            "image_url": {"type": ["string", "null"], "description": "A link a browser opens without the token, "
                          "once finished: presigned (S3), under IMAGEND_PUBLIC_BASE_URL, or signed on this listener "
                          "(expiring after IMAGEND_LINK_SECONDS)"},
            "preview_url": {"type": ["string", "null"],
                            "description": "Where the image forming is served while the local backend generates it"},
            "output_url": {"type": ["string", "null"], "description": "Where the daemon stored the image (as "
                           "written in the row; only what the daemon stored is served, at image_url)"},
            "thumbnail_url": {"type": ["string", "null"], "description": "The thumbnail's link, as image_url"},
            "events_url": {"type": "string", "description": "The row's live stream (Server-Sent Events)"},
            "images": {"type": ["array", "null"], "description": "A finished row of n > 1 images: each one, in seed "
                       "order (image 1 is image_url); null for one image", "items": {"type": "object", "properties": {
                           "index": {"type": "integer", "minimum": 1}, "seed": {"type": ["integer", "null"]},
                           "format": {"type": ["string", "null"]},
                           "output_url": {"type": ["string", "null"], "description": "Where the daemon stored it"},
                           "image_url": {"type": "string", "description": "A link a browser opens, as image_url"},
                           "thumbnail_url": {"type": "string", "description": "Its thumbnail's link"}}}},
        },
    }


def _backends() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["backends", "all_paused", "pauses"],
        "properties": {
            "backends": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "served": {"type": "boolean", "description": "By this daemon"},
                "paused": {"type": "boolean"}, "paused_at": {"type": ["string", "null"], "format": "date-time"},
                "paused_by": {"type": ["string", "null"]}}}},
            "all_paused": {"type": "boolean"},
            "pauses": {"type": "array", "items": {"type": "object"}},
        },
    }


def document() -> dict[str, Any]:
    image_types = {FORMATS[kind][1]: {"schema": {"type": "string", "contentMediaType": FORMATS[kind][1]}}
                   for kind in FORMATS}
    text = {"text/plain": {"schema": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imagend",
            "version": __version__,
            "description": "The JSON API of an imagend daemon (IMAGEND_HTTP): the producer's SQL surface over HTTP, "
                           "pause and resume, and the probes. Errors are `{\"error\": \"<readable message>\"}`.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "IMAGEND_HTTP_TOKEN"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "ImageCreate": _image_create(),
                "Created": {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}},
                "Image": _image(),
                "Backends": _backends(),
            },
        },
        "paths": {
            "/v1/images": {"post": {
                "summary": "Queue an image (INSERT INTO images)",
                "operationId": "createImage",
                "security": WRITE,
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": {"required": True, "description": f"JSON: at most 64 KiB. {BIG_IMAGES}. Or "
                                "multipart/form-data: the columns as fields (or a `json` field holding them) and the "
                                "images inline as files `init_image`, `reference_image`, `mask_image` (each at most "
                                "IMAGEND_UPLOAD_MAX_BYTES; stored as uploads).", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ImageCreate"}},
                    "multipart/form-data": {"schema": {"type": "object", "properties": {
                        "json": {"type": "string", "description": "A JSON object of columns"},
                        "init_image": {"type": "string", "contentMediaType": "application/octet-stream"},
                        "reference_image": {"type": "string", "contentMediaType": "application/octet-stream"},
                        "mask_image": {"type": "string", "contentMediaType": "application/octet-stream"}}}}}},
                "responses": {
                    "201": {**_json("Queued (or, a retry under the same Idempotency-Key and body, the row queued "
                                    "then: Idempotent-Replayed: true); Location names the row", "Created"),
                            "headers": {"Location": {"schema": {"type": "string"}},
                                        "Idempotent-Replayed": {"schema": {"type": "string"}}}},
                    "400": _error("Not a JSON object, unknown columns, columns the daemon writes, or an "
                                  "Idempotency-Key over 255 bytes"),
                    **AUTH_ERRORS,
                    "413": _error("The body is over 64 KiB (JSON) or the images' limit (multipart)"),
                    "422": _error("A column of the wrong type or out of its range; a callback_url the daemon will "
                                  "not call; an inline image that is not one; an Idempotency-Key used with another "
                                  "body"),
                    "402": _error("The owner's plan budget is spent for its period (docs/owners.md)"),
                    "429": {**_error("The owner has its plan's max_waiting rows waiting: try again after "
                                     "Retry-After seconds (no row was left)"),
                            "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
                },
            }, "get": {
                "summary": "An owner's rows, newest first (an owner's key: its own; the operator names ?owner=)",
                "operationId": "listImages",
                "parameters": [
                    {"name": "owner", "in": "query", "schema": {"type": "string"}},
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": [
                        "ReadyToGenerate", "Generate", "ReadyToPublish", "Failed"]}},
                    {"name": "cursor", "in": "query", "description": "next_cursor of the page before",
                     "schema": {"type": "string", "pattern": "^[0-9]+$"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}}],
                "responses": {"200": _object("images (id, status, prompt, error, progress, created_at, finished_at, "
                                             "cost, output_url, thumbnail_url) and next_cursor (null: the last page)"),
                              "400": _error("No owner named, an unknown status, a bad cursor or limit"),
                              **READ_ERRORS},
            }},
            "/v1/usage": {"get": {
                "summary": "An owner's usage per day (UTC): rows done, failed, cancelled, GPU seconds, cost",
                "operationId": "getUsage",
                "parameters": [{"name": "owner", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": _object("owner and days, newest first"),
                              "400": _error("No owner named (the operator's token)"), **READ_ERRORS},
            }},
            "/v1/uploads": {"post": {
                "summary": "Upload an input image: its id is taken by init_image_id and reference_image_id",
                "operationId": "uploadImage",
                "security": WRITE,
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": {"required": True, "description": "The image's bytes (PNG, JPEG or WebP), or "
                                "multipart/form-data with the image as its first file; at most "
                                "IMAGEND_UPLOAD_MAX_BYTES (20 MiB)", "content": {
                    "application/octet-stream": {"schema": {"type": "string", "contentMediaType":
                                                            "application/octet-stream"}},
                    "multipart/form-data": {"schema": {"type": "object", "properties": {
                        "file": {"type": "string", "contentMediaType": "application/octet-stream"}}}}}},
                "responses": {
                    "201": {"description": "Stored: a finished row of its own (task `upload`)", "content": {
                        "application/json": {"schema": {"type": "object", "required": ["id"], "properties": {
                            "id": {"type": "integer"}, "width": {"type": "integer"}, "height": {"type": "integer"},
                            "format": {"type": "string"}, "bytes": {"type": "integer"},
                            "image_url": {"type": ["string", "null"]}}}}},
                        "headers": {"Location": {"schema": {"type": "string"}}}},
                    "400": _error("A multipart body without a file; an Idempotency-Key over 255 bytes"),
                    **AUTH_ERRORS,
                    "413": _error("Over IMAGEND_UPLOAD_MAX_BYTES (cut while it streams in)"),
                    "422": _error("Not a PNG, JPEG or WebP, damaged, or over the decoder's limits (a decompression "
                                  "bomb); an Idempotency-Key used with another body"),
                },
            }},
            "/v1/images/{id}/events": {"get": {
                "summary": "The row forming, as Server-Sent Events: `status` (status, progress, error), `preview` "
                           "(a new step preview's URL), then `end` (status, error, image and thumbnail links) or "
                           "`gone`",
                "operationId": "streamImageEvents",
                "parameters": [ID_PARAMETER],
                "responses": {
                    "200": {"description": "The stream: each event's `data` is a JSON object", "content": {
                        "text/event-stream": {"schema": {
                            "type": "object", "required": ["event", "data"], "properties": {
                                "event": {"type": "string", "enum": ["status", "preview", "end", "gone"]},
                                "data": {"type": "string", "contentMediaType": "application/json"}}}}}},
                    **READ_ERRORS,
                    "404": _error("No such row"),
                    "429": _error("This client has IMAGEND_SSE_MAX_PER_CLIENT streams open"),
                },
            }},
            "/v1/images/{id}/thumbnail": {"get": {
                "summary": "The finished image's thumbnail (else the image); a signed link needs no token",
                "operationId": "getImageThumbnail",
                "parameters": [ID_PARAMETER, *SIGNED_LINK],
                "responses": {
                    "200": {"description": "The thumbnail", "content": image_types},
                    **READ_ERRORS,
                    "404": _error("No such row, or no image"),
                },
            }},
            "/v1/images/{id}": {"get": {
                "summary": "A row: status, progress, error, queue position, timings, parameters (never the bytes)",
                "operationId": "getImage",
                "parameters": [ID_PARAMETER],
                "responses": {"200": _json("The row", "Image"), **READ_ERRORS, "404": _error("No such row")},
            }, "delete": {
                "summary": "Delete a row and its stored image and thumbnail (file or S3)",
                "operationId": "deleteImage",
                "security": WRITE,
                "parameters": [ID_PARAMETER],
                "responses": {"200": _object("Deleted; objects_left: stored objects the store would not delete"),
                              **AUTH_ERRORS, "404": _error("No such row (or another owner's)")},
            }},
            "/v1/images/{id}/image": {"get": {
                "summary": "The finished image's bytes; a signed link (image_url) needs no token",
                "operationId": "getImageBytes",
                "parameters": [ID_PARAMETER, *SIGNED_LINK],
                "responses": {
                    "200": {"description": "The image, its Content-Type from its bytes", "content": image_types},
                    **READ_ERRORS,
                    "404": _error("No such row, not finished, or no image this daemon stored (retention may "
                                  "have dropped it; a location written by a producer is never served)"),
                    "503": _error("The store (IMAGEND_STORAGE_URL) does not answer: the image is kept there; or "
                                  "too many requests in flight"),
                },
            }},
            "/v1/images/{id}/images/{index}": {"get": {
                "summary": "Image k of a finished row of n > 1 images (images[k-1].image_url); a signed link needs "
                           "no token",
                "operationId": "getListedImageBytes",
                "parameters": [ID_PARAMETER, INDEX_PARAMETER, *SIGNED_LINK],
                "responses": {
                    "200": {"description": "The image, its Content-Type from its bytes", "content": image_types},
                    **READ_ERRORS,
                    "404": _error("No such row or image, not finished, or no image this daemon stored"),
                    "503": _error("The store (IMAGEND_STORAGE_URL) does not answer; or too many requests in flight"),
                },
            }},
            "/v1/images/{id}/images/{index}/thumbnail": {"get": {
                "summary": "Image k's thumbnail (IMAGEND_THUMBNAIL; else the image itself)",
                "operationId": "getListedImageThumbnail",
                "parameters": [ID_PARAMETER, INDEX_PARAMETER, *SIGNED_LINK],
                "responses": {
                    "200": {"description": "The thumbnail (WebP) or the image", "content": image_types},
                    **READ_ERRORS,
                    "404": _error("No such row or image, not finished, or no image this daemon stored"),
                    "503": _error("The store (IMAGEND_STORAGE_URL) does not answer; or too many requests in flight"),
                },
            }},
            "/v1/images/{id}/preview": {"get": {
                "summary": "The image forming: a small WebP the local backend writes every 2 s or so while it "
                           "generates the row (never cached)",
                "operationId": "getImagePreview",
                "parameters": [ID_PARAMETER],
                "responses": {
                    "200": {"description": "The preview", "content": {
                        "image/webp": {"schema": {"type": "string", "contentMediaType": "image/webp"}}}},
                    **READ_ERRORS,
                    "404": _error("No such row, or it has no preview (not generating, or not on the local backend)"),
                },
            }},
            "/v1/images/{id}/cancel": {"post": {
                "summary": "Ask a waiting or running row to stop (it ends Failed with error `cancelled`)",
                "operationId": "cancelImage",
                "security": WRITE,
                "parameters": [ID_PARAMETER],
                "responses": {
                    "202": _object("Asked; the daemon fails the row at its next look"),
                    **AUTH_ERRORS,
                    "404": _error("No such row"),
                    "409": _error("The row is finished already"),
                },
            }},
            "/v1/images/{id}/retry": {"post": {
                "summary": "Queue a Failed row again (attempts reset)",
                "operationId": "retryImage",
                "security": WRITE,
                "parameters": [ID_PARAMETER],
                "responses": {
                    "200": _object("Waiting again"),
                    **AUTH_ERRORS,
                    "404": _error("No such row"),
                    "409": _error("The row is not Failed"),
                },
            }},
            "/v1/plans": {"get": {
                "summary": "The plans (docs/owners.md), each with its owners' rows running and waiting; the operator's",
                "operationId": "listPlans",
                "responses": {"200": _object("plans"), **READ_ERRORS,
                              "403": _error("An owner's key: plans are the operator's")},
            }},
            "/v1/plans/{name}": {"put": {
                "summary": "Create or change a plan (the keys given only; null clears a limit), as `imagend -plan`",
                "operationId": "putPlan",
                "security": WRITE,
                "parameters": [PLAN_PARAMETER],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "max_running": {"type": ["integer", "null"], "minimum": 1},
                        "weight": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000000},
                        "max_waiting": {"type": ["integer", "null"], "minimum": 1},
                        "rate_per_minute": {"type": ["number", "null"], "exclusiveMinimum": 0},
                        "budget": {"type": ["number", "null"], "exclusiveMinimum": 0},
                        "budget_period": {"type": "string", "enum": ["day", "week", "month"]},
                        "is_default": {"type": "boolean"}}}}}},
                "responses": {"200": _object("plans"), **AUTH_ERRORS,
                              "400": _error("Not a JSON object"), "413": _error("The body is over 64 KiB"),
                              "422": _error("A value out of range, an unknown key, a bad name")},
            }, "delete": {
                "summary": "Delete a plan: its owners fall back to the default plan",
                "operationId": "deletePlan",
                "security": WRITE,
                "parameters": [PLAN_PARAMETER],
                "responses": {"200": _object("plans"), **AUTH_ERRORS, "404": _error("No such plan")},
            }},
            "/v1/owners/{owner}/plan": {"put": {
                "summary": "Put an owner on a plan (null: the default plan), as `imagend -assign`",
                "operationId": "assignPlan",
                "security": WRITE,
                "parameters": [{"name": "owner", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"plan": {"type": ["string", "null"]}}}}}},
                "responses": {"200": _object("owner and plan"), **AUTH_ERRORS,
                              "400": _error("Not a JSON object"), "413": _error("The body is over 64 KiB"),
                              "422": _error("An unknown plan, or an owner imagend does not take")},
            }},
            "/v1/backends": {"get": {
                "summary": "Every backend: served by this daemon, paused (on every daemon)",
                "operationId": "listBackends",
                "responses": {"200": _json("The backends", "Backends"), **READ_ERRORS},
            }},
            "/v1/backends/{name}/pause": {"post": {
                "summary": "Stop claiming rows of a backend on every daemon (`*`: all); rows held are finished",
                "operationId": "pauseBackend",
                "security": WRITE,
                "parameters": [NAME_PARAMETER],
                "responses": {"200": _json("The backends now", "Backends"), **AUTH_ERRORS,
                              "404": _error("Unknown backend")},
            }},
            "/v1/backends/{name}/resume": {"post": {
                "summary": "Lift a backend's pause (`*`: every pause); a pause of `*` still holds a named backend",
                "operationId": "resumeBackend",
                "security": WRITE,
                "parameters": [NAME_PARAMETER],
                "responses": {"200": _json("The backends now", "Backends"), **AUTH_ERRORS,
                              "404": _error("Unknown backend")},
            }},
            "/openapi.json": {"get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {"200": _object("OpenAPI 3.1"), **READ_ERRORS},
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics (text format); `imagend_queue_stale` 1 while the database is down",
                "operationId": "metrics",
                "responses": {"200": {"description": "The metrics", "content": text}, **READ_ERRORS},
            }},
            "/healthz": {"get": {
                "summary": "200 while the daemon's loops progress, 503 when they are stuck",
                "operationId": "healthz",
                "responses": {"200": _object("Alive"), "503": _object("Stuck")},
            }},
            "/readyz": {"get": {
                "summary": "200 when every served backend is loaded, the database answers and the store takes "
                           "writes; 503 with a reason",
                "operationId": "readyz",
                "responses": {"200": _object("Ready"), "503": _object("Not ready: `reason` says why")},
            }},
        },
    }
