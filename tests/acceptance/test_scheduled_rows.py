"""Rows that may not be claimed yet (a producer's run_after, a retry's backoff) are picked up
when they fall due, by `imagend -cron` itself, not by the 5-minute interval run."""

from __future__ import annotations

from support.daemons import DaemonProcess
from support.db import base_env, fetch_image, insert_image, wait_until


def test_rows_due_at_different_times_are_each_claimed_when_due(db_url, conn, tmp_path):
    ids = [insert_image(conn, f"due in {n} s") for n in (1, 2, 3)]
    for n, image_id in enumerate(ids, start=1):
        conn.execute("UPDATE images SET run_after = now() + make_interval(secs => %s) WHERE id = %s", [n, image_id])
    env = base_env(db_url, IMAGEND_GENERATOR_INTERVAL="300", IMAGEND_PROCESSOR_INTERVAL="600")
    daemon = DaemonProcess(["-cron"], env, log_dir=tmp_path)
    try:
        # Only the daemon's own scheduling can explain these: the interval runs are minutes away.
        wait_until(lambda: all(fetch_image(conn, i)["status"] == "ReadyToPublish" for i in ids), timeout=15,
                   what="every scheduled row finished")
    finally:
        assert daemon.stop() == 0, daemon.output()
    rows = [fetch_image(conn, i) for i in ids]
    for row in rows:
        assert row["started_at"] >= row["run_after"], "claimed before it was due"
    assert rows[0]["started_at"] < rows[1]["started_at"] < rows[2]["started_at"]
