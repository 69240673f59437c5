"""/metrics (Prometheus text format), /healthz (the loops progress) and /readyz (backends loaded,
database answering). Probes answer without the token: load balancers and systemd ask them."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagend.http.auth import check_read
from imagend.http.context import HttpContext


def routes(context: HttpContext) -> list[Route]:
    def metrics(request: Request) -> Response:
        check_read(context, request)
        return Response(generate_latest(context.registry), media_type=CONTENT_TYPE_LATEST)

    def healthz(_request: Request) -> Response:
        state = context.health.state()
        return JSONResponse(state, status_code=200 if state["status"] == "ok" else 503)

    def readyz(_request: Request) -> Response:
        readiness = context.ready.check()
        if readiness.ready:
            return JSONResponse({"status": "ready", "backends": list(context.served_backends)})
        return JSONResponse({"status": "not ready", "reason": readiness.reason}, status_code=503)

    # Sync endpoints: Starlette runs them in its thread pool, so a slow database read never
    # blocks the event loop (and the queries are the pool's blocking psycopg calls anyway).
    return [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
