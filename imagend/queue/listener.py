"""LISTEN on a connection of its own (the host's wake-up channel, wakeups.py), so an idle daemon claims
a new row within milliseconds instead of at its next interval run.

The connection goes to IMAGEND_LISTEN_URL (default: the database's URL). Behind a
transaction pooler (PgBouncer's usual mode) a LISTEN made through the pooler hears
nothing, and the pooler hands its server connection to other clients. So before it
listens, the listener checks on a throwaway channel that a NOTIFY sent through the pool
really reaches it; if not, it says so naming IMAGEND_LISTEN_URL, never LISTENs on its channel
through the pooler, and the daemons poll every IMAGEND_POLL_SECONDS.

A network that drops without a FIN leaves a connection half-open: nothing arrives and
nothing fails. TCP keepalives make the kernel notice, and every IMAGEND_LISTEN_CHECK the
listener repeats the probe on its live connection; a probe that goes unheard means the
connection is deaf, and it reconnects.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from imagend.db.repository import Repository
from imagend.errors import DatabaseUnavailable
from imagend.logs import get_logger
from imagend.retry import reconnect_seconds

log = get_logger()

PROBE_SECONDS = 3.0  # how long a probe NOTIFY may take to arrive
NOTIFY_WAIT_SECONDS = 1.0  # how often the loop looks at `stopping`
# libpq's TCP keepalives (ignored on a Unix socket): a dead peer is noticed within about a minute.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


class Deaf(Exception):
    """The LISTEN connection stopped hearing NOTIFYs (half-open, or its server session is gone)."""


class Listener:
    def __init__(
        self,
        url: str,
        repo: Repository,
        *,
        channel: str,
        on_notify: Callable[[str | None], None],
        on_deaf: Callable[[], None],
        stopping: threading.Event,
        check_seconds: float = 30.0,
    ) -> None:
        self.url = url
        self.channel = channel
        self.check_seconds = check_seconds
        self.repo = repo
        self.on_notify = on_notify
        self.on_deaf = on_deaf
        self.stopping = stopping
        self.thread = threading.Thread(target=self._run, name="imagend-listen", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        failures = 0
        heard_before = False
        while not self.stopping.is_set():
            try:
                with psycopg.connect(
                    make_conninfo(self.url, application_name="imagend-listen", **KEEPALIVES),
                    autocommit=True,
                    prepare_threshold=None,
                ) as conn:
                    probe = f"imagend_probe_{uuid.uuid4().hex}"
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(probe)))
                    if not self._hears(conn, probe):
                        if heard_before:  # it worked on an earlier connection: a blip, not a pooler
                            raise Deaf("a probe NOTIFY went unheard after reconnecting")
                        log.warning(
                            "listen_not_working",
                            reason="a NOTIFY sent through the database pool did not reach the LISTEN connection "
                            "(a transaction pooler such as PgBouncer in between?)",
                            fix="set IMAGEND_LISTEN_URL to a direct connection to Postgres",
                            fallback="polling for new rows every IMAGEND_POLL_SECONDS",
                        )
                        self.on_deaf()
                        return
                    heard_before = True
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    if failures:
                        log.info("listen_connection_restored")
                    failures = 0
                    self.on_notify(None)  # rows inserted while we were not listening
                    self._listen(conn, probe)
            except (psycopg.OperationalError, DatabaseUnavailable, Deaf) as exc:
                failures += 1
                retry_in = reconnect_seconds(failures)
                log.warning("listen_connection_lost", error=type(exc).__name__, retry_in_seconds=retry_in)
                self.stopping.wait(retry_in)

    def _listen(self, conn: psycopg.Connection[tuple[object, ...]], probe: str) -> None:
        checked = time.monotonic()
        while not self.stopping.is_set():
            for note in conn.notifies(timeout=NOTIFY_WAIT_SECONDS, stop_after=1):
                self.on_notify(note.payload)
            if time.monotonic() - checked >= self.check_seconds:
                if not self._hears(conn, probe):
                    log.warning("listen_connection_deaf", action="reconnecting")
                    raise Deaf("a probe NOTIFY went unheard")
                checked = time.monotonic()

    def _hears(self, conn: psycopg.Connection[tuple[object, ...]], probe: str) -> bool:
        """Does a NOTIFY sent through the pool reach this connection? Checked on a throwaway
        channel this connection listens on, so a pooler that hands the LISTEN to another client
        leaks nothing that matters. Only waits on the connection, never sends on it: a statement
        on a half-open connection would block. Wake-ups that arrive meanwhile are passed on."""
        self.repo.listen_probe(probe)
        for note in conn.notifies(timeout=PROBE_SECONDS):
            if note.channel == probe:
                return True
            self.on_notify(note.payload)
        return False
