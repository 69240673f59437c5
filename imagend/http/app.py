"""The Starlette application: its routes, and the errors every route answers the same way
(JSON with a readable `error`; the dashboard's pages are HTML)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imagend.errors import DatabaseUnavailable
from imagend.http import api, dashboard, probes
from imagend.http.auth import Refused
from imagend.http.context import HttpContext
from imagend.http.responses import error


def create_app(context: HttpContext) -> Starlette:
    async def refused(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    async def database_down(_request: Request, exc: Exception) -> Response:
        return error(503, f"the database is not answering: {exc}")

    return Starlette(
        routes=[*probes.routes(context), *api.routes(context), *dashboard.routes(context)],
        exception_handlers={Refused: refused, DatabaseUnavailable: database_down},
    )
