"""A busy daemon sums its passes in its log: rows arriving one by one at 50 a second (a pass
each) give at most one generator_pass line per ten seconds, with the counts of all of them,
instead of 50 INFO lines a second."""

from __future__ import annotations

import json
import time

from support.daemons import DaemonProcess
from support.db import base_env, wait_until

ROWS = 150


def test_a_busy_generator_sums_its_passes(db_url, conn, tmp_path):
    daemon = DaemonProcess(["-cron"], base_env(db_url), tmp_path)
    try:
        wait_until(lambda: "daemon_started" in daemon.output(), 30, what="the daemon to start")
        for n in range(ROWS):
            conn.execute("INSERT INTO images (prompt) VALUES (%s)", [f"one at a time {n}"])
            time.sleep(0.02)
        wait_until(lambda: conn.execute("SELECT count(*) AS n FROM images WHERE status = 'ReadyToPublish'"
                                        ).fetchone()["n"] == ROWS, 30, what="every row done")
    finally:
        assert daemon.stop() == 0
    lines = [json.loads(line) for line in daemon.output().splitlines() if '"generator_pass"' in line]
    assert len(lines) <= 3, lines  # the first pass at once; the rest summed (and flushed at the stop)
    assert sum(line.get("done", 0) for line in lines) == ROWS
    assert sum(line.get("passes", 1) for line in lines) > len(lines)
