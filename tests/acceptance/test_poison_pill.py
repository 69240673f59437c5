"""A poison pill: a row whose generation kills its daemon every time (the placeholder's
test-only IMAGEND_PLACEHOLDER_KILL_ON SIGKILLs the process, as an OOM kill would). It ends
Failed after IMAGEND_MAX_CRASHES deaths with an error that says so, while 100 other rows
finish and the restarted daemons keep working; no other row is charged for the deaths."""

from __future__ import annotations

import time

import pytest

from support.daemons import DaemonProcess
from support.db import base_env, fetch_image, insert_image

POISON = "this prompt kills its daemon"


@pytest.mark.slow
def test_a_poison_pill_fails_after_max_crashes_and_the_fleet_goes_on(db_url, conn, tmp_path):
    poison = insert_image(conn, POISON, priority=1)  # first in line
    conn.execute("INSERT INTO images (prompt) SELECT 'healthy ' || n FROM generate_series(1, 100) AS n")
    env = base_env(db_url, IMAGEND_PLACEHOLDER_DELAY="0.05", IMAGEND_PLACEHOLDER_KILL_ON=POISON,
                   IMAGEND_DEAD_AFTER="2", IMAGEND_MAX_CRASHES="3")
    daemons = [DaemonProcess(["-cron"], env, tmp_path) for _ in range(3)]
    restarts = 0

    def remaining() -> int:
        return conn.execute("SELECT count(*) AS n FROM images WHERE status NOT IN ('ReadyToPublish', 'Failed')"
                            ).fetchone()["n"]

    try:
        deadline = time.monotonic() + 90
        while remaining() and time.monotonic() < deadline:
            for n, daemon in enumerate(daemons):  # what systemd's Restart=always does
                if not daemon.alive():
                    daemon.kill()
                    daemons[n] = DaemonProcess(["-cron"], env, tmp_path)
                    restarts += 1
            time.sleep(0.1)
        assert remaining() == 0
    finally:
        for daemon in daemons:
            daemon.stop()
    row = fetch_image(conn, poison)
    assert (row["status"], row["crashes"]) == ("Failed", 3)
    assert row["error"] == "the daemon died 3 times while generating this row (IMAGEND_MAX_CRASHES=3)"
    assert row["attempts"] == 0  # deaths are crashes, not attempts
    assert restarts == 3
    healthy = conn.execute("SELECT status, count(*) AS n, max(attempts) AS attempts, max(crashes) AS crashes "
                           "FROM images WHERE id <> %s GROUP BY status", [poison]).fetchall()
    assert healthy == [{"status": "ReadyToPublish", "n": 100, "attempts": 1, "crashes": 0}]
