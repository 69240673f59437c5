"""The JSON API (/v1/images…, /openapi.json). Being built."""

from __future__ import annotations

from starlette.routing import BaseRoute

from imagend.http.context import HttpContext


def routes(context: HttpContext) -> list[BaseRoute]:
    return []
