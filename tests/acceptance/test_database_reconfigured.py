"""A database made read-only, or given a 1 ms statement_timeout, for a few seconds (then RESET):
the daemon treats it as "unavailable for now", recycles the connections that carry the bad
session state, and processes every row once the database is itself again; SIGTERM still
drains and exits 0 without a traceback."""

from __future__ import annotations

import time

import pytest
from psycopg import sql

from support.daemons import DaemonProcess
from support.db import base_env, wait_until

SETTINGS = {"read-only": ("default_transaction_read_only", "on"), "statement timeout": ("statement_timeout", "1")}


def drop_daemon_sessions(conn) -> None:
    """New sessions pick up the database's settings; old ones keep theirs."""
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE datname = current_database() AND pid <> pg_backend_pid()")


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(SETTINGS))
def test_a_database_reconfigured_for_a_while_wedges_nothing(db_url, conn, tmp_path, fault):
    name, value = SETTINGS[fault]
    database = sql.Identifier(conn.info.dbname)
    env = base_env(db_url, IMAGEND_PLACEHOLDER_DELAY="0.01", IMAGEND_GENERATOR_INTERVAL="300",
                   IMAGEND_PROCESSOR_INTERVAL="600")
    daemon = DaemonProcess(["-cron"], env, tmp_path)
    try:
        wait_until(lambda: "daemon_started" in daemon.output(), 30, what="the daemon to start")
        conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(database, sql.Identifier(name),
                                                                    sql.Literal(value)))
        drop_daemon_sessions(conn)
        conn.execute("INSERT INTO images (prompt) SELECT 'during ' || n FROM generate_series(1, 100) AS n")
        time.sleep(5)
        conn.execute(sql.SQL("ALTER DATABASE {} RESET {}").format(database, sql.Identifier(name)))
        conn.execute("INSERT INTO images (prompt) SELECT 'after ' || n FROM generate_series(1, 100) AS n")
        wait_until(lambda: conn.execute("SELECT count(*) AS n FROM images WHERE status = 'ReadyToPublish'"
                                        ).fetchone()["n"] == 200, 60, what="every row processed")
    finally:
        conn.execute(sql.SQL("ALTER DATABASE {} RESET {}").format(database, sql.Identifier(name)))
        code = daemon.stop()
    assert code == 0, daemon.output()[-3000:]
    assert "Traceback" not in daemon.output()
    assert "database_unavailable" in daemon.output()
