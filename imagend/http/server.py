"""The listener's life: its own small pool, the collectors added to the daemon's metrics, uvicorn
in a daemon thread (started before the backends load, so /readyz can say it is loading), stopped
with the daemon."""

from __future__ import annotations

import threading
import time

import uvicorn
from psycopg_pool import ConnectionPool

from imagend.config.settings import HttpSettings, Settings
from imagend.db.connect import APPLICATION_NAME
from imagend.db.operations import OperationsRepository
from imagend.errors import ConfigError
from imagend.http.app import create_app
from imagend.http.context import HttpContext
from imagend.logs import get_logger
from imagend.operations.health import LoopHealth, ReadyCheck
from imagend.operations.metrics import GpuCollector, Metrics, QueueCollector
from imagend.storage import Store

log = get_logger()

HTTP_POOL_MAX = 3  # requests never take (or wait for) the loops' connections
# A probe or a scrape while Postgres is down answers (503, or stale gauges) within about a second,
# well inside a load balancer's health-check timeout; the loops' pool waits longer (db.py).
HTTP_POOL_WAIT_SECONDS = 1.0
STARTUP_TIMEOUT_SECONDS = 10.0


class HttpServer:
    def __init__(self, http: HttpSettings, settings: Settings, database_url: str, metrics: Metrics,
                 health: LoopHealth, served_backends: tuple[str, ...], store: Store | None = None) -> None:
        self.http = http
        self.pool = ConnectionPool(
            database_url, min_size=0, max_size=HTTP_POOL_MAX, timeout=HTTP_POOL_WAIT_SECONDS, open=False,
            kwargs={"autocommit": True, "prepare_threshold": None, "application_name": f"{APPLICATION_NAME}-http"},
            check=ConnectionPool.check_connection, name="imagend-http",
        )
        ops = OperationsRepository(self.pool, dead_after_seconds=settings.dead_after_seconds)
        queue = QueueCollector(ops, settings.default_backend)
        metrics.registry.register(queue)
        metrics.registry.register(GpuCollector())
        self.ready = ReadyCheck(ops.ping)
        self.context = HttpContext(
            settings=settings, http=http, ops=ops, registry=metrics.registry, queue=queue, health=health,
            ready=self.ready, served_backends=served_backends, store=store,
        )
        config = uvicorn.Config(
            create_app(self.context), host=http.host, port=http.port, log_config=None, log_level="warning",
            access_log=False,
            lifespan="off", server_header=False,
            # Bodies beyond the API's limit are refused while being read (api.py); this bounds the rest.
            limit_concurrency=64, timeout_keep_alive=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="imagend-http", daemon=True)

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
        self.pool.close()
