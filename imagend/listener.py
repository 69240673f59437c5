"""LISTEN `imagend_new` on a connection of its own, so an idle daemon claims a new row
within milliseconds instead of at its next interval run.

The connection goes to IMAGEND_LISTEN_URL (default: the database's URL). Behind a
transaction pooler (PgBouncer's usual mode) a LISTEN made through the pooler hears
nothing, and the pooler hands its server connection to other clients. So before it
listens, the listener checks on a throwaway channel that a NOTIFY sent through the pool
really reaches it; if not, it says so naming IMAGEND_LISTEN_URL, never LISTENs on
`imagend_new` through the pooler, and the daemon polls every IMAGEND_POLL_SECONDS.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import psycopg
from psycopg import sql

from imagend.errors import DatabaseUnavailable
from imagend.logs import get_logger
from imagend.repository import Repository
from imagend.retry import reconnect_seconds

log = get_logger()

CHANNEL = "imagend_new"
PROBE_SECONDS = 3.0  # how long a probe NOTIFY may take to arrive
NOTIFY_WAIT_SECONDS = 1.0  # how often the loop looks at `stopping`


class Listener:
    def __init__(
        self,
        url: str,
        repo: Repository,
        *,
        on_notify: Callable[[], None],
        on_deaf: Callable[[], None],
        stopping: threading.Event,
    ) -> None:
        self.url = url
        self.repo = repo
        self.on_notify = on_notify
        self.on_deaf = on_deaf
        self.stopping = stopping
        self.thread = threading.Thread(target=self._run, name="imagend-listen", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, prepare_threshold=None) as conn:
                    if not self._hears(conn):
                        log.warning(
                            "listen_not_working",
                            reason="a NOTIFY sent through the database pool did not reach the LISTEN connection "
                            "(a transaction pooler such as PgBouncer in between?)",
                            fix="set IMAGEND_LISTEN_URL to a direct connection to Postgres",
                            fallback="polling for new rows every IMAGEND_POLL_SECONDS",
                        )
                        self.on_deaf()
                        return
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    if failures:
                        log.info("listen_connection_restored")
                    failures = 0
                    self.on_notify()  # rows inserted while we were not listening
                    while not self.stopping.is_set():
                        for _ in conn.notifies(timeout=NOTIFY_WAIT_SECONDS, stop_after=1):
                            self.on_notify()
            except (psycopg.OperationalError, DatabaseUnavailable) as exc:
                failures += 1
                retry_in = reconnect_seconds(failures)
                log.warning("listen_connection_lost", error=type(exc).__name__, retry_in_seconds=retry_in)
                self.stopping.wait(retry_in)

    def _hears(self, conn: psycopg.Connection[tuple[object, ...]]) -> bool:
        """Does a NOTIFY sent through the pool reach this connection? Checked on a throwaway
        channel, so a pooler that hands this LISTEN to another client leaks nothing that matters."""
        probe = f"imagend_probe_{uuid.uuid4().hex}"
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(probe)))
        self.repo.listen_probe(probe)
        heard = any(True for _ in conn.notifies(timeout=PROBE_SECONDS, stop_after=1))
        conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(probe)))
        return heard
