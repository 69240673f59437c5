"""Postgres refusing connections ("too many connections") is back-pressure: the daemon waits
and goes on with the connections it has; no row fails for it. The daemon runs as a role
limited to three connections (its LISTEN connection and DB_MAX_IDLE_CONNS=2 pooled ones), so
every attempt of its pool to grow towards DB_MAX_OPEN_CONNS=10 is refused."""

from __future__ import annotations

import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from support.daemons import DaemonProcess
from support.db import base_env, wait_until

ROLE = "imagend_limited"


@pytest.mark.slow
def test_refused_connections_slow_the_daemon_and_fail_no_row(db_url, conn, tmp_path):
    role = sql.Identifier(ROLE)
    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 3").format(role))
    try:
        conn.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}").format(role))
        conn.execute(sql.SQL("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {}").format(role))
        url = make_conninfo(**{**conninfo_to_dict(db_url), "user": ROLE})
        env = base_env(url, DB_MAX_OPEN_CONNS="10", DB_MAX_IDLE_CONNS="2", IMAGEND_PLACEHOLDER_DELAY="0.002",
                       IMAGEND_MAX_BATCH="4")
        conn.execute("INSERT INTO images (prompt) SELECT 'squeezed ' || n FROM generate_series(1, 400) AS n")
        daemon = DaemonProcess(["-cron"], env, tmp_path)
        try:
            wait_until(lambda: conn.execute("SELECT count(*) AS n FROM images WHERE status = 'ReadyToPublish'"
                                            ).fetchone()["n"] == 400, 90, what="every row, at the pace allowed")
        finally:
            code = daemon.stop()
        assert code == 0, daemon.output()[-3000:]
        assert conn.execute("SELECT count(*) AS n FROM images WHERE status = 'Failed'").fetchone()["n"] == 0
        assert "too many connections" in daemon.output()  # the refusals really happened
    finally:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [ROLE])
        conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(role))
        conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
