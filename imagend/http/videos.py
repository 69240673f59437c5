"""The OpenAI Videos API's shape over video rows (docs/video.md), beside imagend's own API:

    POST /v1/videos                  {prompt, size?, seconds?, model?} and imagend's own video columns
                                     (scenes, video_preset, aspect, …) → the video object
    GET  /v1/videos/{id}             {id, object: "video", status: queued|in_progress|completed|failed,
                                      progress (0-100), …}
    GET  /v1/videos/{id}/content     the MP4 (?variant=thumbnail: the poster), with HTTP Range for browsers

An id is `video_<row id>` (the row's own id is taken too). Writes need the token, reads follow the read
policy, an owner's key reaches its own videos only (auth.py), as on /v1/images."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import psycopg
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from imagend.db.columns import INT4_MAX
from imagend.db.rows import Status
from imagend.db.videos import VideoReads
from imagend.errors import BadInput, clip
from imagend.http import multipart
from imagend.http.api import owned
from imagend.http.auth import authorize, sees
from imagend.http.checks import BadRequest, check_columns, read_body
from imagend.http.context import HttpContext
from imagend.http.responses import error
from imagend.storage import StoreUnavailable
from imagend.video.presets import aspect_of, frame_size, preset_of
from imagend.video.settings import load_video_settings

ID = re.compile(r"(?:video_)?(\d{1,10})")
BODY_MAX_BYTES = 80 * 1024 * 1024  # a background audio of IMAGEND_VIDEO_BACKGROUND_MAX_BYTES, base64, and JSON
# OpenAI's sizes and imagend's own: (preset, aspect).
SIZES = {
    "1280x720": ("standard", "16:9"), "720x1280": ("standard", "9:16"),
    "1920x1080": ("standard", "16:9"), "1080x1920": ("standard", "9:16"), "1080x1080": ("standard", "1:1"),
    "3840x2160": ("ultra", "16:9"), "2160x3840": ("ultra", "9:16"), "2160x2160": ("ultra", "1:1"),
    "1792x1024": ("standard", "16:9"), "1024x1792": ("standard", "9:16"),
}
OWN_COLUMNS = ("scenes", "video_preset", "aspect", "negative_prompt", "style", "seed", "backend", "priority",
               "max_attempts", "background_audio", "loras", "steps", "guidance", "scheduler", "width", "height")
CONTENT_TYPES = {"video": "video/mp4", "thumbnail": "image/jpeg"}
JSON_FIELDS = ("scenes", "loras")
INTEGER_FIELDS = ("seed", "priority", "max_attempts", "steps", "width", "height", "guidance")


def video_status(row: dict[str, Any]) -> str:
    if row["status"] == Status.READY_TO_PUBLISH:
        return "completed"
    if row["status"] == Status.FAILED:
        return "failed"
    if row["status"] == Status.GENERATE or row["phase"] is not None:
        return "in_progress"
    return "queued"


def video_object(row: dict[str, Any]) -> dict[str, Any]:
    status = video_status(row)
    progress = 100 if status == "completed" else round(100 * (row["progress"] or 0))
    if status == "completed" and row["width"] and row["height"]:
        width, height = row["width"], row["height"]
    else:
        try:
            width, height = frame_size(preset_of(row["video_preset"]), aspect_of(row["aspect"]))
        except BadInput:
            width, height = 0, 0
    out: dict[str, Any] = {
        "id": f"video_{row['id']}",
        "object": "video",
        "model": "imagend",
        "status": status,
        "progress": progress,
        "created_at": int(row["created_at"].timestamp()),
        "completed_at": int(row["finished_at"].timestamp()) if status == "completed" and row["finished_at"] else None,
        "seconds": f"{row['video_seconds']:g}" if row["video_seconds"] else "0",
        "size": f"{width}x{height}",
        "quality": row["video_preset"] or "standard",
        "error": {"code": "video_failed", "message": row["error"]} if status == "failed" else None,
        # imagend's own: the phase, the scenes made so far, the cost, and where the files are.
        "phase": row["phase"],
        "scenes": {"done": row["scenes_done"], "total": row["scene_rows"]},
        "cost": row["cost"],
        "content_url": f"/v1/videos/video_{row['id']}/content" if status == "completed" else None,
        "thumbnail_url": f"/v1/videos/video_{row['id']}/content?variant=thumbnail" if status == "completed" else None,
    }
    return out


def _columns(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(400, "the body must be a JSON object: {\"prompt\": …} or {\"scenes\": […]}")
    unknown = sorted(set(body) - {"prompt", "size", "seconds", "model", "input_reference", *OWN_COLUMNS})
    if unknown:
        raise BadRequest(400, f"unknown field {clip(unknown[0], 60)!r}; a video takes prompt, size, seconds, model, "
                              f"and imagend's {', '.join(OWN_COLUMNS)}")
    if body.get("input_reference") is not None:
        raise BadRequest(422, "input_reference is not supported: give the scenes' prompts instead")
    columns = {name: body[name] for name in OWN_COLUMNS if body.get(name) is not None}
    size = body.get("size")
    if size is not None:
        if size not in SIZES:
            raise BadRequest(422, f"size {clip(str(size), 40)!r} is not one of: {', '.join(SIZES)}")
        preset, aspect = SIZES[size]
        columns.setdefault("video_preset", preset)
        columns.setdefault("aspect", aspect)
    prompt = body.get("prompt")
    if not isinstance(prompt, str | None):
        raise BadRequest(422, "prompt must be a string")
    if not (prompt or "").strip() and columns.get("scenes") is None:
        raise BadRequest(422, "give a prompt (an idea, written into scenes by the daemon's IMAGEND_SCRIPT_URL) or "
                              "scenes")
    columns["prompt"] = prompt if (prompt or "").strip() else "a video"
    columns["task"] = "video"
    return check_columns(columns)


def _parsed(body: bytes, content_type: str) -> Any:
    """A JSON object, or multipart/form-data as the openai SDK sends it (text fields; a JSON-valued one such
    as scenes decoded)."""
    if content_type.lower().startswith("multipart/"):
        try:
            form = multipart.parse(body, content_type)
        except multipart.MultipartError as exc:
            raise BadRequest(400, str(exc)) from None
        fields: dict[str, Any] = {}
        for part in form.parts:
            if part.is_file:
                raise BadRequest(422, f"{clip(part.name, 40)}: files are not taken here (input_reference is not "
                                      "supported); background_audio goes as base64 text")
            text = part.data.decode("utf-8", "replace")
            if part.name in JSON_FIELDS or part.name in INTEGER_FIELDS:
                try:
                    fields[part.name] = json.loads(text)
                except (ValueError, RecursionError):
                    raise BadRequest(422, f"{part.name} must be JSON") from None
            else:
                fields[part.name] = text
        return fields
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest(400, "the body is not JSON (nor multipart/form-data)") from None


def _ranged(request: Request, data: bytes, media_type: str) -> Response:
    """`data` whole, or the one byte range the request asks for (206), as a browser's <video> asks."""
    headers = {"Accept-Ranges": "bytes", "X-Content-Type-Options": "nosniff"}
    asked = request.headers.get("range")
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", asked.strip()) if asked else None
    if match is None or match.groups() == ("", ""):
        return Response(data, media_type=media_type, headers=headers)
    first, last = match.groups()
    size = len(data)
    if first == "":
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    return Response(data[start : end + 1], status_code=206, media_type=media_type,
                    headers={**headers, "Content-Range": f"bytes {start}-{end}/{size}"})


def routes(context: HttpContext) -> list[BaseRoute]:
    reads = VideoReads(context.ops.pool)
    folders = [folder.resolve() for folder in (load_video_settings(context.settings.env, context.settings.data_dir
                                                                   ).folder, context.settings.storage.folder
                                               if context.settings.storage else None) if folder is not None]

    def _id(request: Request) -> int | None:
        match = ID.fullmatch(request.path_params["video_id"])
        return int(match.group(1)) if match and int(match.group(1)) <= INT4_MAX else None

    def _video(request: Request) -> tuple[int | None, dict[str, Any] | None]:
        caller = authorize(context, request, "read")
        video_id = _id(request)
        if video_id is None or not sees(context, caller, video_id):
            return video_id, None
        row = reads.get(video_id)
        return video_id, row if row is not None and row["task"] == "video" else None

    async def create(request: Request) -> Response:
        caller = authorize(context, request, "submit")
        try:
            body = await read_body(request, BODY_MAX_BYTES)
            columns = owned(caller, _columns(_parsed(body, request.headers.get("content-type", ""))))
            video_id = await run_in_threadpool(context.ops.insert, columns)
        except BadRequest as exc:
            return error(exc.status, exc.message)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            return error(422, f"the database refused the row: {clip(str(exc).splitlines()[0], 200)}")
        row = await run_in_threadpool(reads.get, video_id)
        assert row is not None
        return JSONResponse(video_object(row), headers={"Location": f"/v1/videos/video_{video_id}"})

    def show(request: Request) -> Response:
        _, row = _video(request)
        if row is None:
            return error(404, f"no video with id {request.path_params['video_id'][:40]}")
        return JSONResponse(video_object(row))

    def content(request: Request) -> Response:
        video_id, row = _video(request)
        if row is None:
            return error(404, f"no video with id {request.path_params['video_id'][:40]}")
        variant = request.query_params.get("variant", "video")
        if variant not in CONTENT_TYPES:
            return error(422, f"variant must be one of: {', '.join(CONTENT_TYPES)}")
        if row["status"] != Status.READY_TO_PUBLISH:
            return error(404, f"video {video_id} is not finished: it is {video_status(row)}")
        url = row["output_url"] if variant == "video" else row["thumbnail_url"]
        if url is None:
            return error(404, f"video {video_id} has no {variant} (removed by retention?)")
        if url.startswith("file://"):
            name = Path(url.removeprefix("file://")).name
            # Served only from the folders videos go to, by the names the daemon gives them.
            for folder in folders:
                path = folder / name
                if path.is_file() and re.fullmatch(rf"{video_id}\.(mp4|poster\.jpg)", name):
                    return FileResponse(path, media_type=CONTENT_TYPES[variant],
                                        headers={"X-Content-Type-Options": "nosniff"})
            return error(404, f"video {video_id}'s {variant} is not in a folder this listener serves")
        if context.store is None:
            return error(404, f"video {video_id}'s {variant} is in a store this listener has not configured")
        try:
            data = context.store.read_url(url)
        except StoreUnavailable as exc:
            return error(503, f"the store is not answering: {exc}")
        except Exception:
            return error(404, f"video {video_id}'s {variant} cannot be read from the store")
        return _ranged(request, data, CONTENT_TYPES[variant])

    return [
        Route("/v1/videos", create, methods=["POST"]),
        Route("/v1/videos/{video_id}", show, methods=["GET"]),
        Route("/v1/videos/{video_id}/content", content, methods=["GET"]),
    ]
