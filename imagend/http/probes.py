"""/metrics (Prometheus text format), /healthz (the loops progress) and /readyz (backends loaded,
database answering, the store taking writes). Probes answer without the token (load balancers and
systemd ask them; /metrics follows the read policy) and whatever the load: they are never refused
by admission (guards.py), /healthz reads memory on the event loop, and /readyz and /metrics, which
may wait for the database, run on threads of their own, never queued behind the API's."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
from anyio.to_thread import run_sync
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagend.http.auth import check_read
from imagend.http.context import HttpContext

PROBE_THREADS = 4
T = TypeVar("T")


def routes(context: HttpContext) -> list[Route]:
    limiter: anyio.CapacityLimiter | None = None

    async def on_probe_thread(call: Callable[[], T]) -> T:
        nonlocal limiter
        if limiter is None:  # made on the event loop it serves
            limiter = anyio.CapacityLimiter(PROBE_THREADS)
        return await run_sync(call, limiter=limiter)

    async def metrics(request: Request) -> Response:
        check_read(context, request)
        return Response(await on_probe_thread(lambda: generate_latest(context.registry)),
                        media_type=CONTENT_TYPE_LATEST)

    async def healthz(_request: Request) -> Response:
        since = round(context.health.seconds_since_progress(), 1)
        if context.health.alive():
            return JSONResponse({"status": "ok", "seconds_since_progress": since})
        return JSONResponse({"status": "stuck", "seconds_since_progress": since,
                             "stuck_after_seconds": context.health.stuck_after_seconds}, status_code=503)

    async def readyz(_request: Request) -> Response:
        readiness = await on_probe_thread(context.ready.check)
        reason = (readiness.reason or "not ready") if not readiness.ready else context.store_problem()
        if reason is None:
            return JSONResponse({"status": "ready", "backends": list(context.served_backends)})
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)

    return [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
