"""An idle daemon gives back the connections a burst opened (those above DB_MAX_IDLE_CONNS as soon as it
is idle, the rest after DB_CONN_MAX_IDLE_TIME), so a fleet of daemons does not hold every Postgres
connection slot once the queue has drained: at rest a daemon holds one pooled connection, and its host
one LISTEN connection (application_name imagend-listen)."""

from __future__ import annotations

import time

import pytest

from support.daemons import DaemonProcess
from support.db import base_env, wait_until


def daemon_sessions(conn) -> int:
    return conn.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
                        "AND application_name = 'imagend'").fetchone()["n"]


@pytest.mark.slow
def test_an_idle_daemon_gives_its_extra_connections_back(db_url, conn, tmp_path):
    env = base_env(db_url, DB_MAX_OPEN_CONNS="10", DB_MAX_IDLE_CONNS="1", DB_CONN_MAX_IDLE_TIME="1s",
                   IMAGEND_PLACEHOLDER_DELAY="0.002", IMAGEND_MAX_BATCH="4")
    daemon = DaemonProcess(["-cron"], env, tmp_path)
    try:
        wait_until(lambda: "daemon_started" in daemon.output(), 30, what="the daemon to start")
        # Claiming ahead, finishing in the background and the heartbeat use connections at once.
        conn.execute("INSERT INTO images (prompt) SELECT 'busy ' || n FROM generate_series(1, 1000) AS n")
        busiest = 0
        while conn.execute("SELECT count(*) AS n FROM images WHERE status = 'ReadyToPublish'").fetchone()["n"] < 1000:
            busiest = max(busiest, daemon_sessions(conn))
            time.sleep(0.05)
        wait_until(lambda: daemon_sessions(conn) <= 1 + 1, 30, interval=0.5, what="idle connections given back")
    finally:
        daemon.stop()
    assert busiest > 1 + 1  # the pool had grown: giving connections back is what brought it down
