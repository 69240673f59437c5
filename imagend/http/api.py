"""The JSON API: the SQL surface for producers that cannot speak SQL (a browser, a webhook, a
mobile app), and the operator's pause and resume.

    POST /v1/images                   a JSON object of producer columns → 201 {"id": …}, Location
    GET  /v1/images/{id}              status, progress, error, position, timings, parameters
    GET  /v1/images/{id}/image        the image bytes (images.py, shared with the dashboard)
    GET  /v1/images/{id}/preview      the image forming (WebP), while the local backend generates it
    POST /v1/images/{id}/cancel       what `UPDATE images SET cancel_requested = true` does
    POST /v1/images/{id}/retry        docs/producers.md's "Trying again", for a Failed row
    GET  /v1/images?status=&cursor=   an owner's rows, newest first (docs/owners.md)
    DELETE /v1/images/{id}            the row, its image and its thumbnail (file or S3)
    GET  /v1/usage                    an owner's usage per day: rows, GPU seconds, cost
    GET  /v1/plans, PUT|DELETE /v1/plans/{name}, PUT /v1/owners/{owner}/plan   the operator's plans
    GET  /v1/backends                 every backend: served here, paused
    POST /v1/backends/{name}/pause    `imagend -pause NAME` ('*': all)
    POST /v1/backends/{name}/resume   `imagend -resume NAME` ('*': every pause)
    GET  /openapi.json                the OpenAPI 3.1 description (openapi.py)

Writes need the token, reads follow the read policy (auth.py); an owner's key (docs/owners.md) reaches
that owner's rows only, on every route (404 for any other), and submits with `owner` set to its own.
The API refuses obviously bad input up front (4xx with a readable `error`) so that no row is written
in a bad state; the daemon stays the final judge of a row it claims (validation.py), exactly as for a
row INSERTed in SQL.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from typing import Any

import psycopg
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from imagend.db.columns import BACKEND_NAMES, IMAGE_COLUMNS, IMAGES_PER_ROW_MAX, INT4_MAX
from imagend.db.operations import ALL_BACKENDS
from imagend.db.owners import OwnersRepository, owner_problem, parse_plan_values
from imagend.db.rows import Pause, Status
from imagend.db.webapp import KeyReused, WebAppRepository
from imagend.errors import BadInput, clip
from imagend.http import webapp
from imagend.http.auth import Caller, Refused, authorize, check_read, check_write, sees
from imagend.http.checks import BadRequest, check_columns, parse_object, read_body
from imagend.http.context import HttpContext
from imagend.http.images import image_kind, image_response, listed_image_response
from imagend.http.openapi import document
from imagend.http.responses import error
from imagend.images.formats import FORMATS
from imagend.queue.validation import decode_params
from imagend.storage import StoreUnavailable
from imagend.storage.links import Links

ECHO_MAX_CHARS = 60
# A row's params as GET /v1/images/{id} returns them: past this, its first characters as text and
# `params_truncated` true (a producer may store megabytes there; the whole is in the row, for SQL).
PARAMS_RETURNED_MAX_CHARS = 64 * 1024
PREVIEW_CACHE_CONTROL = "no-store"  # it changes every 2 s or so, and is gone once the row ends
RETRY_AFTER_SECONDS = 10  # an owner past its plan's max_waiting: when to try again (a row starts by then, mostly)
LIST_DEFAULT, LIST_MAX = 50, 500  # GET /v1/images: rows per page


# -- what a row looks like ----------------------------------------------------------------

PARAMETERS = ("prompt", "negative_prompt", "style", "width", "height", "seed", "steps", "guidance",
              "scheduler", "backend", "priority", "model", "format", "quality", "max_attempts",
              "task", "init_image_id", "strength", "reference_image_id", "reference_scale", "upscale",
              "n", "preset", "effective_prompt",
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


def _returned_params(text: str | None) -> tuple[Any, bool]:
    """The params as returned, and whether they were cut (never decoded whole past the cap)."""
    if text is not None and len(text) > PARAMS_RETURNED_MAX_CHARS:
        return text[:PARAMS_RETURNED_MAX_CHARS], True
    return _params(text), False


def describe(row: dict[str, Any], params: str | None, links: Links | None = None) -> dict[str, Any]:
    """One row as GET /v1/images/{id} answers it: never the image bytes (see `image_url`: a link a
    browser opens, storage/links.py)."""
    image_id = row["id"]
    finished = row["status"] == Status.READY_TO_PUBLISH and row["has_image"]
    returned_params, params_truncated = _returned_params(params)
    return {
        "id": image_id,
        "status": row["status"],
        "progress": row["progress"],
        "error": row["error"],
        "warning": row["warning"],
        "attempts": row["attempts"],
        "cancel_requested": row["cancel_requested"],
        "position": row["position"],
        "waiting_for": row["waiting_for"],  # a chained row's source that has not ended yet
        "estimated_start": _json_value(row["estimated_start"]),
        "timings": {name: _json_value(row[name]) for name in TIMINGS},
        "parameters": {**{name: row[name] for name in PARAMETERS}, "loras": _loras(row["loras"]),
                       "params": returned_params, "params_truncated": params_truncated},
        "image_url": (links.link(image_id, "image", row["output_url"], finished) if links is not None
                      else f"/v1/images/{image_id}/image" if finished else None),
        "preview_url": f"/v1/images/{image_id}/preview" if row["preview_tag"] is not None else None,
        "output_url": row["output_url"],
        # A link a browser opens (storage/links.py); the store's own location is `output_url`.
        "thumbnail_url": (links.link(image_id, "thumbnail", row["thumbnail_url"] or row["output_url"], finished)
                          if links is not None else row["thumbnail_url"]),
        "events_url": f"/v1/images/{image_id}/events",
        "images": listed_images(row, links) if finished else None,
    }


def listed_images(row: dict[str, Any], links: Links | None) -> list[dict[str, Any]] | None:
    """A finished row of n > 1 images: each one's index, seed, format and links (`images/{k}`, its thumbnail);
    None for a row of one image (its image_url is all)."""
    entries = row.get("images")
    if not isinstance(entries, list):
        return None
    image_id = row["id"]
    listed = []
    for k, entry in enumerate(entries, start=1):
        entry = entry if isinstance(entry, dict) else {}
        image, thumb = f"images/{k}", f"images/{k}/thumbnail"
        url, thumb_url = entry.get("url"), entry.get("thumbnail_url") or entry.get("url")
        listed.append({
            "index": k, "seed": entry.get("seed"), "format": entry.get("format"), "output_url": url,
            "image_url": (links.link(image_id, image, url, True) if links is not None
                          else f"/v1/images/{image_id}/{image}"),
            "thumbnail_url": (links.link(image_id, thumb, thumb_url, True) if links is not None
                              else f"/v1/images/{image_id}/{thumb}"),
        })
    return listed


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


def by_method(**handlers: Callable[[Request], Any]) -> Callable[[Request], Awaitable[Response]]:
    """One endpoint for several methods of a path: async handlers awaited, sync ones run in the thread pool
    (as Starlette runs a sync endpoint)."""
    async def endpoint(request: Request) -> Response:
        handler = handlers[request.method]
        if inspect.iscoroutinefunction(handler):
            answer: Response = await handler(request)
            return answer
        result: Response = await run_in_threadpool(handler, request)
        return result

    return endpoint


def owned(caller: Caller, columns: dict[str, Any]) -> dict[str, Any]:
    """The row's columns as the caller may insert them: an owner's key sets `owner` itself (a body naming
    another owner is refused); the operator may name any owner imagend takes."""
    given = columns.get("owner")
    if caller.owner is not None:
        if given is not None and given != caller.owner:
            raise BadRequest(403, "this API key submits for its own owner only: leave owner out")
        return {**columns, "owner": caller.owner}
    if given is not None and (problem := owner_problem(given)) is not None:
        raise BadRequest(422, problem)
    return columns


def routes(context: HttpContext) -> list[BaseRoute]:
    ops = context.ops
    owners = OwnersRepository(ops.pool)

    async def create(request: Request) -> Response:
        caller = authorize(context, request, "submit")
        uploads = webapp.Uploads(context, WebAppRepository(ops.pool))
        try:
            # JSON, or multipart with the images inline; an Idempotency-Key makes a retry safe (webapp.py).
            body = await read_body(request, webapp.submit_limit(context, request))
            key = webapp.idempotency_key(request, "v1/images", body, caller.owner)
            if key is not None and (replay := await run_in_threadpool(webapp.replayed, uploads.repo, context, key)):
                return replay
            fields, images = await run_in_threadpool(webapp.submitted, request, body)
            del body
            columns = check_columns({**fields, **webapp.placeholders(images)})
            columns = owned(caller, columns)
            webapp.check_callback(context, columns)
            if images:
                columns = await run_in_threadpool(webapp.store_inline, uploads, columns, images)
            image_id, replayed = await run_in_threadpool(webapp.insert, context, columns, key)
        except BadRequest as exc:
            return error(exc.status, exc.message)
        except KeyReused:
            return error(422, "this Idempotency-Key was used with another body: use a new key per request")
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            # Checked above; Postgres still has the last word (a constraint added later, say).
            return error(422, f"the database refused the row: {clip(str(exc).splitlines()[0], 200)}")
        if columns.get("owner") is not None and not replayed:
            refused = await run_in_threadpool(owners.refused_at_insert, image_id)
            if refused is not None:  # the owner's plan: max_waiting (429, try later) or its budget (402)
                reason, waiting_full = refused
                answer = error(429 if waiting_full else 402, reason)
                if waiting_full:
                    answer.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
                return answer
        headers = {"Location": f"/v1/images/{image_id}", **({"Idempotent-Replayed": "true"} if replayed else {})}
        return JSONResponse({"id": image_id}, status_code=201, headers=headers)

    def show(request: Request) -> Response:
        caller = authorize(context, request, "read")
        image_id = _id_or_none(request)
        row = ops.get(image_id) if image_id is not None and sees(context, caller, image_id) else None
        if row is None:
            return _not_found(request.path_params["id"])
        return JSONResponse(describe(row, ops.params(row["id"], PARAMS_RETURNED_MAX_CHARS + 1), context.links))

    def image(request: Request) -> Response:
        image_id = _id_or_none(request)
        query = request.query_params  # a signed link (storage/links.py) needs no token
        signed = image_id is not None and context.links.valid(image_id, "image", query.get("expires"),
                                                             query.get("signature"))
        if not signed and not sees(context, authorize(context, request, "read"), image_id):
            return _not_found(request.path_params["id"])
        if image_id is None:
            return _not_found(request.path_params["id"])
        return image_response(context, image_id)

    def listed(request: Request) -> Response:
        """Image k of a row of n > 1 images (or its thumbnail): as `image`, a signed link needs no token."""
        image_id = _id_or_none(request)
        index = request.path_params["index"]
        thumbnail = request.url.path.endswith("/thumbnail")
        kind = f"images/{index}/thumbnail" if thumbnail else f"images/{index}"
        query = request.query_params
        signed = image_id is not None and context.links.valid(image_id, kind, query.get("expires"),
                                                             query.get("signature"))
        if not signed and not sees(context, authorize(context, request, "read"), image_id):
            return _not_found(request.path_params["id"])
        if image_id is None or not 1 <= index <= IMAGES_PER_ROW_MAX:
            return _not_found(request.path_params["id"])
        return listed_image_response(context, image_id, index, thumbnail)

    def preview(request: Request) -> Response:
        caller = authorize(context, request, "read")
        image_id = _id_or_none(request)
        row = ops.preview(image_id) if image_id is not None and sees(context, caller, image_id) else None
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
        caller = authorize(context, request, "cancel")
        image_id = _id_or_none(request)
        if not sees(context, caller, image_id):
            return _not_found(request.path_params["id"])
        status = ops.cancel(image_id) if image_id is not None else None
        if status is not None:
            return JSONResponse({"id": image_id, "status": status, "cancel_requested": True}, status_code=202)
        current = ops.status_of(image_id) if image_id is not None else None
        if current is None:
            return _not_found(request.path_params["id"])
        return error(409, f"image {image_id} is {current}: only a waiting (ReadyToGenerate) or running "
                          "(Generate) image can be cancelled")

    def retry(request: Request) -> Response:
        caller = authorize(context, request, "submit")
        image_id = _id_or_none(request)
        if not sees(context, caller, image_id):
            return _not_found(request.path_params["id"])
        if image_id is not None and ops.retry(image_id):
            return JSONResponse({"id": image_id, "status": Status.READY_TO_GENERATE})
        current = ops.status_of(image_id) if image_id is not None else None
        if current is None:
            return _not_found(request.path_params["id"])
        return error(409, f"image {image_id} is {current}: only a Failed image can be retried")

    def listing(request: Request) -> Response:
        """GET /v1/images?status=&cursor=&limit=: an owner's rows, newest first (the operator names ?owner=)."""
        caller = authorize(context, request, "read")
        query = request.query_params
        owner = caller.owner if caller.owner is not None else query.get("owner")
        if owner is None:
            return error(400, "name the owner whose rows to list: ?owner=… (an owner's key lists its own)")
        status = query.get("status")
        if status is not None and status not in set(Status):
            return error(400, f"unknown status {clip(status, ECHO_MAX_CHARS)!r}; use one of: {', '.join(Status)}")
        cursor, limit = query.get("cursor"), query.get("limit", str(LIST_DEFAULT))
        if (cursor is not None and not (cursor.isdigit() and int(cursor) <= INT4_MAX)) or not (
                limit.isdigit() and 1 <= int(limit) <= LIST_MAX):
            return error(400, f"cursor is the last id seen (digits); limit is 1 to {LIST_MAX}")
        rows = owners.list_owned(owner, status, int(cursor) if cursor else None, int(limit))
        listed = [{k: _json_value(v) for k, v in row.items()} for row in rows]
        more = len(rows) == int(limit)
        return JSONResponse({"images": listed, "next_cursor": str(rows[-1]["id"]) if more else None})

    def delete(request: Request) -> Response:
        """DELETE /v1/images/{id}: the row, then its image and thumbnail in the store (file or S3)."""
        caller = authorize(context, request, "delete")
        image_id = _id_or_none(request)
        gone = owners.delete(image_id, caller.owner) if image_id is not None else None
        if gone is None:
            return _not_found(request.path_params["id"])
        urls = [url for url in (gone["output_url"], gone["thumbnail_url"]) if url]
        left = 0
        if urls and context.store is not None:
            try:
                left = len(urls) - context.store.delete_urls(urls)
            except StoreUnavailable:
                left = len(urls)
        return JSONResponse({"id": image_id, "deleted": True, "objects_left": left})

    def usage(request: Request) -> Response:
        """GET /v1/usage: an owner's usage per day (UTC), newest first (the operator names ?owner=)."""
        caller = authorize(context, request, "read")
        owner = caller.owner if caller.owner is not None else request.query_params.get("owner")
        if owner is None:
            return error(400, "name the owner: ?owner=… (an owner's key reads its own)")
        days = [{k: _json_value(v) for k, v in row.items()} for row in owners.usage(owner)]
        return JSONResponse({"owner": owner, "days": days})

    def operator(request: Request, scope: str) -> None:
        """The plans are the operator's: an owner's key gets 403 here."""
        if authorize(context, request, scope).owner is not None:
            raise Refused(403, "plans are the operator's: use IMAGEND_HTTP_TOKEN, not an owner's key")

    def plans(request: Request) -> Response:
        operator(request, "read")
        return JSONResponse({"plans": [{k: _json_value(v) for k, v in plan.items()} for plan in owners.plans()]})

    async def plan_put(request: Request) -> Response:
        """PUT /v1/plans/{name}: create or change (only the keys given; null clears a limit), as -plan."""
        operator(request, "submit")
        try:
            body = parse_object(await read_body(request))
            words = [f"{key}={'none' if value is None else str(value).lower()}" for key, value in body.items()]
            await run_in_threadpool(owners.set_plan, request.path_params["name"], parse_plan_values(words))
        except BadRequest as exc:
            return error(exc.status, exc.message)
        except BadInput as exc:
            return error(422, str(exc))
        return plans(request)

    def plan_delete(request: Request) -> Response:
        operator(request, "submit")
        if not owners.delete_plan(request.path_params["name"]):
            return error(404, f"no plan named {clip(request.path_params['name'], ECHO_MAX_CHARS)!r}")
        return plans(request)

    async def assign(request: Request) -> Response:
        """PUT /v1/owners/{owner}/plan {"plan": NAME or null (the default plan)}, as -assign."""
        operator(request, "submit")
        try:
            body = parse_object(await read_body(request))
            plan = body.get("plan")
            if plan is not None and not isinstance(plan, str):
                raise BadRequest(422, "plan must be a plan's name, or null for the default plan")
            await run_in_threadpool(owners.assign, request.path_params["owner"], plan)
        except BadRequest as exc:
            return error(exc.status, exc.message)
        except BadInput as exc:
            return error(422, str(exc))
        return JSONResponse({"owner": request.path_params["owner"], "plan": plan})

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
        # One Route per path (a 405 names every method of the path in Allow), dispatching by method.
        Route("/v1/images", by_method(POST=create, GET=listing), methods=["POST", "GET"]),
        Route("/v1/images/{id:int}", by_method(GET=show, DELETE=delete), methods=["GET", "DELETE"]),
        Route("/v1/usage", usage, methods=["GET"]),
        Route("/v1/plans", plans, methods=["GET"]),
        Route("/v1/plans/{name}", by_method(PUT=plan_put, DELETE=plan_delete), methods=["PUT", "DELETE"]),
        Route("/v1/owners/{owner}/plan", assign, methods=["PUT"]),
        Route("/v1/images/{id:int}/image", image, methods=["GET"]),
        Route("/v1/images/{id:int}/images/{index:int}", listed, methods=["GET"]),
        Route("/v1/images/{id:int}/images/{index:int}/thumbnail", listed, methods=["GET"]),
        Route("/v1/images/{id:int}/preview", preview, methods=["GET"]),
        Route("/v1/images/{id:int}/cancel", cancel, methods=["POST"]),
        Route("/v1/images/{id:int}/retry", retry, methods=["POST"]),
        Route("/v1/backends", backends, methods=["GET"]),
        Route("/v1/backends/{name}/pause", pause_or_resume, methods=["POST"]),
        Route("/v1/backends/{name}/resume", pause_or_resume, methods=["POST"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
    ]
