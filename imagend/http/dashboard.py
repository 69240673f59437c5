"""The dashboard: server-rendered HTML on the listener, readable on a phone, no build chain.

- `GET /` the page: the fleet, queue counts, pauses, rows in flight (progress bars) and waiting,
  the newest finished images (thumbnails) and the recent failures.
- `GET /fragments/live` and `/fragments/recent`: the same sections alone; dashboard.js fetches them
  every second (live) and every few seconds (recent) and swaps them in, so the bars move.
  Rows in flight on the local backend show the image forming (an <img> of the JSON API's
  /v1/images/{id}/preview, its URL tagged with the preview's hash so that a new one loads).
- `GET /images/{id}` a row's page (the image full size, every parameter, its place in the queue);
  `/images/{id}/full` and `/images/{id}/thumbnail` the bytes (images.py, shared with the API).
- `GET /static/dashboard.css|js`.

Every producer-written string goes through Jinja2's autoescape (text and attributes alike); the
script never builds HTML from strings, it only swaps fragments the server rendered. A strict
Content-Security-Policy (scripts from this origin only, no inline script) is a second wall. The
buttons (cancel, retry, pause, resume) call the JSON API's POSTs with the token the operator pastes
(kept in sessionStorage); without IMAGEND_HTTP_TOKEN they are shown disabled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from imagend import __version__
from imagend.db.columns import BACKEND_NAMES
from imagend.db.operations import ALL_BACKENDS
from imagend.db.owners import OwnersRepository
from imagend.db.rows import FleetDaemon, QueueSnapshot, Status
from imagend.db.timestamps import EARLIEST, LATEST
from imagend.db.videos import VideoReads
from imagend.errors import DatabaseUnavailable
from imagend.http.auth import READ_COOKIE, READ_COOKIE_SECONDS, Refused, check_read, check_token, read_cookie_value
from imagend.http.context import HttpContext
from imagend.http.images import image_response, listed_image_response, thumbnail_response
from imagend.http.responses import error

LIVE_REFRESH_MS = 1000  # the progress bars move once a second (progress is written twice a second)
RECENT_REFRESH_MS = 4000
DETAIL_REFRESH_MS = 2000
IN_FLIGHT_SHOWN = 50
WAITING_SHOWN = 10
OWNERS_SHOWN = 10  # the owners with the most rows waiting or running (a top-N: 10,000 owners, one short table)
DONE_SHOWN = 24
FAILED_SHOWN = 20
PARAMS_SHOWN_CHARS = 20_000
STATUSES = tuple(Status)
WAITING, RUNNING, FAILED = Status.READY_TO_GENERATE, Status.GENERATE, Status.FAILED
# The counts' column heads (the status itself is the cell's title).
STATUS_LABELS = {Status.READY_TO_GENERATE: "waiting", Status.GENERATE: "generating", Status.READY_TO_PUBLISH: "done",
                 Status.FAILED: "failed"}

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STATIC = {"dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8"}


def _edge(value: datetime) -> str | None:
    """Words for a time Python cannot hold ('infinity', BC, past 9999: db/timestamps.py reads them as
    its LATEST and EARLIEST) or cannot move to UTC (9999-12-31 23:00-05); None for any other."""
    try:
        in_utc = value.astimezone(UTC)
    except OverflowError:
        return "after 9999 (or infinity)" if value.year > 1 else "before year 1 (or -infinity)"
    if in_utc == LATEST:
        return "after 9999 (or infinity)"
    if in_utc == EARLIEST:
        return "before year 1 (or -infinity)"
    return None


def _when(value: datetime | None) -> str:
    """A timestamp as the page shows it: UTC, to the second; one at the edge of Python's range in words."""
    if value is None:
        return "—"
    return _edge(value) or value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(value: datetime | None) -> str:
    if value is None:
        return "—"
    if (edge := _edge(value)) is not None:
        return edge
    seconds = (datetime.now(UTC) - value).total_seconds()
    ahead = seconds < 0
    seconds = abs(seconds)
    if seconds < 90:
        text = f"{seconds:.0f} s"
    elif seconds < 90 * 60:
        text = f"{seconds / 60:.0f} min"
    elif seconds < 48 * 3600:
        text = f"{seconds / 3600:.1f} h"
    else:
        text = f"{seconds / 86400:.0f} d"
    return f"in {text}" if ahead else f"{text} ago"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}\u00a0s"  # no line break inside "1.0 s"


def _params(text: str | None) -> str:
    """A row's params (JSON text) indented; shown raw when Python cannot decode it (10,000 levels deep,
    an integer of 5,000 digits). Escaped like any other string by the template."""
    if text is None:
        return ""
    if len(text) > PARAMS_SHOWN_CHARS:  # never decoded whole: 50 MB of JSON would be held, twice, per view
        return text[:PARAMS_SHOWN_CHARS] + "\n…"
    try:
        shown = json.dumps(json.loads(text), indent=2, ensure_ascii=False, sort_keys=True)
    except (ValueError, RecursionError):
        shown = text
    return shown if len(shown) <= PARAMS_SHOWN_CHARS else shown[:PARAMS_SHOWN_CHARS] + "\n…"


def _loras(text: str | None) -> str:
    """A row's loras (JSON text) as `name (weight), …`; an entry of another shape as its JSON, the whole
    as its text when it is no array or Python cannot decode it. Plain text: the template escapes it."""
    if text is None:
        return ""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, list):
        return _params(text)  # the JSON indented, or raw; cut at PARAMS_SHOWN_CHARS
    parts = []
    for entry in value:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str) and set(entry) <= {"name", "weight"}:
            parts.append(f"{entry['name']} ({json.dumps(entry.get('weight', 1))})")
        else:
            parts.append(entry if isinstance(entry, str) else json.dumps(entry, ensure_ascii=False))
    shown = ", ".join(parts) or "none"
    return shown if len(shown) <= PARAMS_SHOWN_CHARS else shown[:PARAMS_SHOWN_CHARS] + "…"


def environment() -> Environment:
    env = Environment(loader=PackageLoader("imagend.http"), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=_when, ago=_ago, seconds=_seconds, params=_params, loras=_loras)
    return env


@dataclass(frozen=True, slots=True)
class CountsTable:
    statuses: list[str]
    rows: list[tuple[str, list[int], int]]  # backend, rows per status, total
    totals: list[int]


def counts_table(snap: QueueSnapshot, default_backend: str) -> CountsTable:
    statuses = list(STATUSES) + sorted({s for s, _, _ in snap.counts} - set(STATUSES))
    per: dict[str, dict[str, int]] = {}
    for status, backend, rows in snap.counts:
        by_status = per.setdefault(backend or default_backend, {})
        by_status[status] = by_status.get(status, 0) + rows
    rows_out: list[tuple[str, list[int], int]] = []
    for backend in sorted(per):
        cells = [per[backend].get(status, 0) for status in statuses]
        rows_out.append((backend, cells, sum(cells)))
    totals = [sum(row[1][i] for row in rows_out) for i in range(len(statuses))]
    return CountsTable(statuses, rows_out, totals)


class Dashboard:
    def __init__(self, context: HttpContext) -> None:
        self.context = context
        self.env = environment()
        self.writes = context.http.token is not None
        self.static = {name: resources.files("imagend.http").joinpath("static", name).read_bytes() for name in STATIC}
        # Thumbnails come from the links the API gives (storage/links.py): a bucket's presigned URL or a CDN
        # may be another origin, allowed here for images only.
        policy = SECURITY_HEADERS["Content-Security-Policy"]
        others = "".join(f" {origin}" for origin in context.links.origins())
        policy = policy.replace("img-src 'self' data:", f"img-src 'self' data:{others}")
        self.headers = {**SECURITY_HEADERS, "Content-Security-Policy": policy}

    # -- what the sections show ---------------------------------------------------------

    def _paused(self, snap: QueueSnapshot | None) -> set[str]:
        return {p.backend for p in snap.paused} if snap else set()

    def _daemon_paused(self, daemon: FleetDaemon, paused: set[str]) -> list[str]:
        if ALL_BACKENDS in paused:
            return list(daemon.backends)
        return [b for b in daemon.backends if b in paused]

    def live(self) -> dict[str, Any]:
        snap, stale = self.context.queue.snapshot()
        default = self.context.settings.default_backend
        paused = self._paused(snap)
        backends = {default, *self.context.served_backends}
        if snap is not None:
            backends |= {b for d in snap.daemons for b in d.backends}
            backends |= {backend or default for _, backend, _ in snap.counts}
            backends &= set(BACKEND_NAMES)  # a producer's unknown backend is in the counts, not pausable
            backends |= paused - {ALL_BACKENDS}
        return {
            "snap": snap,
            "stale": stale,
            "counts": counts_table(snap, default) if snap else None,
            "labels": STATUS_LABELS,
            "oldest": sorted(((b or default, s) for b, s in snap.oldest_waiting.items())) if snap else [],
            # A backend no running daemon serves is not "claiming" (its rows wait for one to start).
            "serving": sorted({b for d in snap.daemons for b in d.backends}) if snap else [],
            "pauses": snap.paused if snap else [],
            "paused": paused,
            "all_paused": ALL_BACKENDS in paused,
            "backends": sorted(backends),
            "fleet": [(d, self._daemon_paused(d, paused)) for d in snap.daemons] if snap else [],
            "in_flight": self.context.ops.in_flight(IN_FLIGHT_SHOWN),
            "waiting": self.context.ops.waiting(WAITING_SHOWN),
            # Owners (docs/owners.md): the busiest few, with their plan and today's usage; none: no section.
            "owners": OwnersRepository(self.context.ops.pool).top_owners(OWNERS_SHOWN),
        }

    def recent(self) -> dict[str, Any]:
        ops = self.context.ops
        done = ops.recent_done(DONE_SHOWN)
        for row in done:  # the API's own links: opened without the token, or straight from the bucket
            row["thumbnail_link"] = self.context.links.link(row["id"], "thumbnail", row["thumbnail_url"] or
                                                            row["output_url"], bool(row["has_image"]))
        return {"done": done, "failed": ops.recent_failed(FAILED_SHOWN)}

    # -- rendering ----------------------------------------------------------------------

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(
            writes=self.writes, version=__version__, live_ms=LIVE_REFRESH_MS, recent_ms=RECENT_REFRESH_MS,
            detail_ms=DETAIL_REFRESH_MS, **values,
        )
        return HTMLResponse(html, status_code=status, headers=self.headers)

    def guarded(self, template: str, values: Callable[[], dict[str, Any]]) -> Response:
        """A fragment: read access checked, the database's absence said in the fragment itself."""
        try:
            return self.render(template, **values())
        except DatabaseUnavailable as exc:
            return self.render("unavailable.html", status=503, reason=str(exc))


def routes(context: HttpContext) -> list[BaseRoute]:
    board = Dashboard(context)

    def session(request: Request) -> Response:
        """POST: the read cookie (auth.py) for a browser that pasted the token, so links and images load;
        DELETE: the cookie dropped from this browser (no token needed to forget it)."""
        response = Response(status_code=204)
        if request.method == "DELETE":
            response.delete_cookie(READ_COOKIE, httponly=True, samesite="strict", path="/")
            return response
        check_token(context, request)
        response.set_cookie(READ_COOKIE, read_cookie_value(context) or "", max_age=READ_COOKIE_SECONDS, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https", path="/")
        return response

    def index(request: Request) -> Response:
        try:
            check_read(context, request)
        except Refused as refused:
            # A browser's navigation cannot carry the token: the page's shell asks for it, and its
            # script fetches the sections with it. The shell holds no data.
            return board.render("index.html", status=refused.status, refused=refused.message)
        try:
            return board.render("index.html", refused=None, **board.live(), **board.recent())
        except DatabaseUnavailable as exc:
            return board.render("index.html", status=503, refused=None, unavailable=str(exc))

    def live(request: Request) -> Response:
        check_read(context, request)
        return board.guarded("live.html", board.live)

    def recent(request: Request) -> Response:
        check_read(context, request)
        return board.guarded("recent.html", board.recent)

    videos = VideoReads(context.ops.pool)  # a video row's page: its phase, scenes and player (docs/video.md)

    def _image_values(image_id: int) -> dict[str, Any] | None:
        row = context.ops.get(image_id)
        if row is None:
            return None
        video = videos.get(image_id) if row.get("task") == "video" else None
        return {"row": row, "params": context.ops.params(image_id, PARAMS_SHOWN_CHARS + 1),
                "terminal": row["status"] not in (WAITING, RUNNING), "video": video,
                "scenes": videos.scenes(image_id) if video is not None else []}

    def _image(request: Request, template: str) -> Response:
        check_read(context, request)
        image_id = request.path_params["id"]
        values = _image_values(image_id)
        if values is None:
            return board.render("missing.html", status=404, image_id=image_id)
        return board.render(template, **values)

    def image_page(request: Request) -> Response:
        return _image(request, "image.html")

    def image_fragment(request: Request) -> Response:
        return _image(request, "image_body.html")

    def full(request: Request) -> Response:
        check_read(context, request)
        return image_response(context, request.path_params["id"])

    def thumbnail(request: Request) -> Response:
        check_read(context, request)
        return thumbnail_response(context, request.path_params["id"])

    def listed(request: Request) -> Response:
        """Image k of a row of n > 1 images, or its thumbnail (the detail page's gallery)."""
        check_read(context, request)
        return listed_image_response(context, request.path_params["id"], request.path_params["index"],
                                     thumbnail=request.url.path.endswith("/thumbnail"))

    def static(request: Request) -> Response:
        check_read(context, request)
        name = request.path_params["name"]
        if name not in STATIC:
            return error(404, "no such static file")
        return Response(board.static[name], media_type=STATIC[name],
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    # Sync endpoints: Starlette runs them in its thread pool (the queries are blocking psycopg calls).
    return [
        Route("/", index, methods=["GET"]),
        Route("/fragments/live", live, methods=["GET"]),
        Route("/fragments/recent", recent, methods=["GET"]),
        Route("/fragments/images/{id:int}", image_fragment, methods=["GET"]),
        Route("/images/{id:int}", image_page, methods=["GET"]),
        Route("/images/{id:int}/full", full, methods=["GET"]),
        Route("/images/{id:int}/thumbnail", thumbnail, methods=["GET"]),
        Route("/images/{id:int}/images/{index:int}", listed, methods=["GET"]),
        Route("/images/{id:int}/images/{index:int}/thumbnail", listed, methods=["GET"]),
        Route("/static/{name:str}", static, methods=["GET"]),
        Route("/session", session, methods=["POST", "DELETE"]),
    ]
