"""The listener's life: its own small pool, the collectors added to the daemon's metrics, uvicorn
in a daemon thread (started before the backends load, so /readyz can say it is loading) with the
connection guards of connections.py, stopped with the daemon."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import uvicorn
from psycopg_pool import ConnectionPool

from imagend.config.settings import HttpSettings, Settings
from imagend.db.connect import APPLICATION_NAME, check_unless_fresh
from imagend.db.operations import OperationsRepository
from imagend.db.operations_async import AsyncOperations
from imagend.errors import ConfigError
from imagend.http.app import create_app
from imagend.http.connections import KEEP_ALIVE_SECONDS, GuardedH11Protocol
from imagend.http.context import HttpContext
from imagend.http.guards import Guards, ListenerPolicy
from imagend.http.store_watch import StoreWatch
from imagend.logs import get_logger
from imagend.operations.health import LoopHealth, ReadyCheck
from imagend.operations.metrics import GpuCollector, Metrics, QueueCollector
from imagend.storage import Store
from imagend.storage.links import Links

log = get_logger()

HTTP_POOL_MAX = 3  # requests never take (or wait for) the loops' connections
# A probe or a scrape while Postgres is down answers (503, or stale gauges) within about a second,
# well inside a load balancer's health-check timeout; the loops' pool waits longer (db.py).
HTTP_POOL_WAIT_SECONDS = 1.0
STARTUP_TIMEOUT_SECONDS = 10.0
SHUTDOWN_GRACE_SECONDS = 3.0  # requests still answering at stop; the thread is joined within 5 s


class HttpServer:
    def __init__(self, http: HttpSettings, settings: Settings, database_url: str, metrics: Metrics,
                 health: LoopHealth, served_backends: tuple[str, ...], store: Store | None = None,
                 store_problem: Callable[[], str | None] | None = None, links: Links | None = None) -> None:
        """`store_problem`: None while the store takes writes, else why not (the loops' view of their
        last writes). /readyz also asks the store itself now and then (store_watch.py), so an outage
        shows while the daemon is idle too."""
        self.http = http
        policy = ListenerPolicy.read(settings.env, http)
        self.pool = ConnectionPool(
            database_url, min_size=0, max_size=HTTP_POOL_MAX, timeout=HTTP_POOL_WAIT_SECONDS, open=False,
            kwargs={"autocommit": True, "prepare_threshold": None, "application_name": f"{APPLICATION_NAME}-http"},
            check=check_unless_fresh, name="imagend-http",
        )
        ops = OperationsRepository(self.pool, dead_after_seconds=settings.dead_after_seconds)
        self.requests = AsyncOperations(database_url, max_size=HTTP_POOL_MAX, wait_seconds=HTTP_POOL_WAIT_SECONDS,
                                        application_name=f"{APPLICATION_NAME}-http")
        queue = QueueCollector(ops, settings.default_backend)
        metrics.registry.register(queue)
        metrics.registry.register(GpuCollector())
        self.ready = ReadyCheck(ops.ping)
        self.context = HttpContext(
            settings=settings, http=http, ops=ops, requests=self.requests, registry=metrics.registry, queue=queue,
            health=health, ready=self.ready, served_backends=served_backends, store=store,
            policy=policy,
            store_problem=_either(store_problem, StoreWatch(store).problem if store is not None else None),
            links=links if links is not None else Links(store=store, secret=None, seconds=settings.webapp.link_seconds),
        )
        self.app = create_app(self.context)
        config = uvicorn.Config(
            Guards(self.app, policy), host=http.host, port=http.port, log_config=None,
            log_level="warning", access_log=False, lifespan="off", server_header=False,
            # Open connections are not counted (connections.py caps them and times out slow ones);
            # requests in flight are (guards.py), never the probes.
            http=GuardedH11Protocol, ws="none", limit_concurrency=None, timeout_keep_alive=int(KEEP_ALIVE_SECONDS),
            timeout_graceful_shutdown=int(SHUTDOWN_GRACE_SECONDS),
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._serve, name="imagend-http", daemon=True)

    def _serve(self) -> None:
        """uvicorn's Server.run, with the async pool closed in the same event loop once it has stopped."""
        async def serve() -> None:
            try:
                await self.server.serve()
            finally:
                await self.requests.close()

        with asyncio.Runner(loop_factory=self.server.config.get_loop_factory()) as runner:
            runner.run(serve())

    @property
    def url(self) -> str:
        host = f"[{self.http.host}]" if ":" in self.http.host else self.http.host
        return f"http://{host}:{self.http.port}/"

    def start(self) -> None:
        self.pool.open(wait=False)
        self.thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"IMAGEND_HTTP={self.http.host}:{self.http.port}: cannot listen there "
                                  "(the port is taken, or the address is not this host's)")
            time.sleep(0.02)
        log.info("http_listening", url=self.url, writes="on" if self.http.token else "off (no IMAGEND_HTTP_TOKEN)")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.app.state.compat.completions.close()  # the compatible APIs' LISTEN connection
        self.pool.close()


def _either(*sources: Callable[[], str | None] | None) -> Callable[[], str | None]:
    """The first problem any of `sources` reports (each asked in turn), else None."""
    asked = [source for source in sources if source is not None]

    def problem() -> str | None:
        return next((found for source in asked if (found := source()) is not None), None)

    return problem
