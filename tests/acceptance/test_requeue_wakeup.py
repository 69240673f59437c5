"""The README's retry statement, on any Failed row (a cancelled one too), wakes an idle daemon
whose interval is 5 minutes: the row is claimed within 50 ms, by the database's clock."""

from __future__ import annotations

import pytest

from support.daemons import DaemonProcess
from support.db import base_env, fetch_image, insert_image, wait_until

README_RETRY = "UPDATE images SET status = 'ReadyToGenerate', attempts = 0, error = NULL WHERE id = %s"


@pytest.mark.parametrize("failed_how", ["bad input", "cancelled"])
def test_a_failed_row_put_back_is_claimed_within_50_ms(db_url, conn, tmp_path, failed_how):
    if failed_how == "cancelled":
        image_id = insert_image(conn, "cancel me", cancel_requested=True)
    else:
        image_id = insert_image(conn, "too wide", width=99999)
    env = base_env(db_url, IMAGEND_GENERATOR_INTERVAL="300", IMAGEND_PROCESSOR_INTERVAL="600")
    daemon = DaemonProcess(["-cron"], env, tmp_path)
    try:
        wait_until(lambda: fetch_image(conn, image_id)["status"] == "Failed", 30, what="the row to fail")
        if failed_how == "bad input":
            conn.execute("UPDATE images SET width = NULL WHERE id = %s", [image_id])  # the producer fixes it
        wait_until(lambda: "generator_pass" in daemon.output(), 5, what="the daemon to go idle")
        requeued_at = conn.execute(README_RETRY + " RETURNING clock_timestamp() AS t", [image_id]).fetchone()["t"]
        wait_until(lambda: fetch_image(conn, image_id)["status"] == "ReadyToPublish", 10, what="the retried row")
    finally:
        code = daemon.stop()
    assert code == 0, daemon.output()
    row = fetch_image(conn, image_id)
    waited = (row["started_at"] - requeued_at).total_seconds()
    assert waited < 0.05, waited
    assert (row["error"], row["cancel_requested"], row["attempts"]) == (None, False, 1)
