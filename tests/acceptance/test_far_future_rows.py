"""Rows scheduled for 'infinity' or beyond year 9999 (which Python's datetime cannot hold) simply
wait; the daemon's own scheduling is unaffected: a row due in 1.5 s is claimed then, not at the
5-minute interval run."""

from __future__ import annotations

from support.daemons import DaemonProcess
from support.db import base_env, wait_until


def test_infinite_run_after_does_not_break_the_next_wakeup(db_url, conn, tmp_path):
    conn.execute("INSERT INTO images (prompt, run_after) VALUES ('never', 'infinity'), "
                 "('far', '20000-01-01T00:00:00Z')")
    env = base_env(db_url, IMAGEND_GENERATOR_INTERVAL="300", IMAGEND_PROCESSOR_INTERVAL="600")
    daemon = DaemonProcess(["-cron"], env, tmp_path)
    try:
        wait_until(lambda: "daemon_started" in daemon.output(), 30, what="the daemon to start")
        # Idle, with the two far rows read, and hearing wake-ups: the row below then wakes it. (A row inserted
        # while its first claim marks it idle may miss its wake-up; the heartbeat makes that up, but later
        # than this test allows: a start-up race, not what it is about.)
        wait_until(lambda: conn.execute("SELECT count(*) AS n FROM imagend_daemons WHERE idle_since IS NOT NULL "
                                        "AND wake_channel IS NOT NULL").fetchone()["n"] == 1,
                   30, what="the daemon to be idle")
        soon = conn.execute("INSERT INTO images (prompt, run_after) VALUES ('soon', now() + interval '1.5 s') "
                            "RETURNING id").fetchone()["id"]
        wait_until(lambda: conn.execute("SELECT status FROM images WHERE id = %s", [soon]).fetchone()["status"]
                   == "ReadyToPublish", 10, what="the row due in 1.5 s")
        late = conn.execute("SELECT extract(epoch FROM started_at - run_after) AS s FROM images WHERE id = %s",
                            [soon]).fetchone()["s"]
    finally:
        assert daemon.stop() == 0, daemon.output()
    assert float(late) < 1.0
    assert conn.execute("SELECT count(*) AS n FROM images WHERE status = 'ReadyToGenerate'").fetchone()["n"] == 2
    assert "pass_failed" not in daemon.output()
