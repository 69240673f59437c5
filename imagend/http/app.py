"""The Starlette application: its routes, and the errors every route answers the same way
(JSON with a readable `error`; the dashboard's pages are HTML): Starlette's own 404 and 405 too,
and a 500 says nothing of its cause (the log has it)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imagend.errors import DatabaseUnavailable
from imagend.http import a1111, api, dashboard, openai_images, probes, webapp
from imagend.http.auth import Refused
from imagend.http.compat import Compat
from imagend.http.context import HttpContext
from imagend.http.responses import error
from imagend.http.videos import routes as video_routes

INTERNAL_ERROR = "internal error: the daemon's log says more"


def create_app(context: HttpContext) -> Starlette:
    async def refused(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    async def database_down(_request: Request, exc: Exception) -> Response:
        return error(503, f"the database is not answering: {exc}")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"nothing at {request.url.path[:200]}: see /openapi.json for the API's paths"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed here; allowed: {(exc.headers or {}).get('Allow', 'none')}"
        else:
            message = exc.detail
        answer = error(exc.status_code, message)
        answer.headers.update(exc.headers or {})
        return answer

    async def internal(_request: Request, _exc: Exception) -> Response:
        return error(500, INTERNAL_ERROR)

    compat = Compat.build(context)  # the OpenAI and A1111 APIs (docs/compatible-apis.md)
    app = Starlette(
        routes=[*probes.routes(context), *openai_images.routes(compat), *a1111.routes(compat), *api.routes(context),
                *webapp.routes(context), *video_routes(context), *dashboard.routes(context)],
        exception_handlers={Refused: refused, DatabaseUnavailable: database_down, HTTPException: http_error,
                            500: internal},
    )
    app.state.compat = compat  # its LISTEN thread stops with app.state.compat.completions.close()
    return app
