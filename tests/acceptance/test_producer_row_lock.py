"""A producer holding `SELECT … FOR UPDATE` on a row in Generate (an admin tool, an ORM) delays
only that row: the daemon's finishing write waits at most the lock timeout for it, then drops
it (its lease brings it back once the lock is gone), and every other row goes on meanwhile."""

from __future__ import annotations

import time

import psycopg
import pytest

from support.daemons import DaemonProcess
from support.db import base_env, insert_image, install_audit, terminal_writes, wait_until

LOCK_HELD_SECONDS = 20


def done(conn, ids) -> int:
    return conn.execute("SELECT count(*) AS n FROM images WHERE id = ANY(%s) AND status = 'ReadyToPublish'",
                        [ids]).fetchone()["n"]


@pytest.mark.slow
def test_a_row_locked_by_a_producer_delays_only_itself(db_url, conn, tmp_path):
    install_audit(conn)
    env = base_env(db_url, IMAGEND_PLACEHOLDER_DELAY="0.5", IMAGEND_LEASE_SECONDS="5")
    locked = insert_image(conn, "held by an admin tool")
    daemon = DaemonProcess(["-cron"], env, tmp_path)
    try:
        wait_until(lambda: conn.execute("SELECT count(*) AS n FROM imagend_working WHERE id = %s",
                                        [locked]).fetchone()["n"], 30, what="the row to begin")
        with psycopg.connect(db_url) as producer:  # not autocommit: the lock lasts until the rollback
            producer.execute("SELECT * FROM images WHERE id = %s FOR UPDATE", [locked])
            others = [insert_image(conn, f"not locked {n}") for n in range(10)]
            started = time.monotonic()
            wait_until(lambda: done(conn, others) == len(others), LOCK_HELD_SECONDS - 5,
                       what="the other rows, while the lock is held")
            took = time.monotonic() - started
            assert conn.execute("SELECT status FROM images WHERE id = %s", [locked]).fetchone()["status"] == "Generate"
            time.sleep(max(0.0, LOCK_HELD_SECONDS - (time.monotonic() - started)))
            producer.rollback()
        wait_until(lambda: done(conn, [locked]) == 1, 30, what="the locked row, once the lock is gone")
    finally:
        code = daemon.stop()
    assert code == 0, daemon.output()
    assert took < 10, took  # 10 rows of 0.5 s, plus at most a lock timeout or two
    assert "row_locked" in daemon.output()
    assert set(terminal_writes(conn).values()) == {1}
