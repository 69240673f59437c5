"""SIGTERM: stop claiming, finish (or release) what is in flight, exit 0; nothing stays owned."""

from __future__ import annotations

import signal
import time

from support.daemons import DaemonProcess, run_imagend
from support.db import TERMINAL, base_env, insert_image, wait_until


def owned_by(conn, daemon: DaemonProcess) -> list[dict]:
    return conn.execute("SELECT id, status, attempts, progress FROM images WHERE locked_by LIKE %s",
                        [daemon.owner_pattern]).fetchall()


def in_flight(conn, daemon: DaemonProcess) -> list[int]:
    """Rows whose generation has begun (not those claimed ahead)."""
    return [r["id"] for r in conn.execute("SELECT id FROM imagend_working WHERE owner LIKE %s ORDER BY id",
                                          [daemon.owner_pattern]).fetchall()]


def test_sigterm_finishes_work_in_flight_and_exits_0(db_url, conn):
    ids = [insert_image(conn, f"slow {n}") for n in range(20)]
    env = base_env(db_url, IMAGEND_PLACEHOLDER_DELAY="0.5", IMAGEND_DRAIN_SECONDS="5",
                   IMAGEND_GENERATOR_INTERVAL="300", IMAGEND_PROCESSOR_INTERVAL="300")
    daemon = DaemonProcess(["-cron"], env)
    try:
        busy = wait_until(lambda: in_flight(conn, daemon), 30, interval=0.02, what="a row in flight")
        daemon.signal(signal.SIGTERM)
        sent = time.monotonic()
        rc = daemon.wait(timeout=5 + 5)
        took = time.monotonic() - sent
    finally:
        daemon.kill()
    assert rc == 0, daemon.output()
    assert took < 5, daemon.output()  # one 0.5 s image to finish, well inside the drain timeout
    assert owned_by(conn, daemon) == []  # nothing left held by the stopped daemon
    rows = {r["id"]: r for r in conn.execute("SELECT id, status, attempts FROM images").fetchall()}
    assert rows[busy[0]]["status"] == "ReadyToPublish"  # the image in flight was finished, not dropped
    finished = [i for i in ids if rows[i]["status"] in TERMINAL]
    waiting = [i for i in ids if rows[i]["status"] == "ReadyToGenerate"]
    assert len(finished) + len(waiting) == len(ids)
    assert waiting, "the daemon stopped claiming: some rows must still be waiting"
    assert all(rows[i]["attempts"] == 0 for i in waiting)  # never claimed, or released uncounted
    assert "daemon_stopped" in daemon.output()


def test_sigterm_releases_work_that_outlasts_the_drain(db_url, conn):
    image_id = insert_image(conn, "too slow to finish")
    env = base_env(db_url, IMAGEND_PLACEHOLDER_DELAY="3", IMAGEND_DRAIN_SECONDS="0.5",
                   IMAGEND_GENERATOR_INTERVAL="300", IMAGEND_PROCESSOR_INTERVAL="300")
    daemon = DaemonProcess(["-cron"], env)
    try:
        wait_until(lambda: in_flight(conn, daemon), 30, interval=0.02, what="the row in flight")
        daemon.signal(signal.SIGTERM)
        rc = daemon.wait(timeout=0.5 + 5 + 5)  # drain, interrupt grace, slack
    finally:
        daemon.kill()
    assert rc == 0, daemon.output()
    row = conn.execute("SELECT status, attempts, locked_by, base64 FROM images WHERE id = %s",
                       [image_id]).fetchone()
    # Released: back in the queue, the interrupted attempt not counted.
    assert row == {"status": "ReadyToGenerate", "attempts": 0, "locked_by": None, "base64": None}, daemon.output()


def test_a_second_signal_exits_at_once_and_the_row_is_rescued_once_the_daemon_counts_as_dead(db_url, conn):
    image_id = insert_image(conn, "abandoned")
    env = base_env(db_url, IMAGEND_PLACEHOLDER_DELAY="20", IMAGEND_DRAIN_SECONDS="30", IMAGEND_DEAD_AFTER="2",
                   IMAGEND_GENERATOR_INTERVAL="300", IMAGEND_PROCESSOR_INTERVAL="300")
    daemon = DaemonProcess(["-cron"], env)
    try:
        wait_until(lambda: in_flight(conn, daemon), 30, interval=0.02, what="the row in flight")
        daemon.signal(signal.SIGTERM)
        time.sleep(0.2)
        daemon.signal(signal.SIGTERM)
        rc = daemon.wait(timeout=5)
    finally:
        daemon.kill()
    assert rc != 0  # stopped now, not drained
    # The row is still marked as the stopped daemon's; once its heartbeat is IMAGEND_DEAD_AFTER old,
    # any processor rescues it (long before its 30 s lease), as a crash rather than an attempt.
    assert conn.execute("SELECT status FROM images WHERE id = %s", [image_id]).fetchone()["status"] == "Generate"
    wait_until(lambda: conn.execute("SELECT bool_and(heartbeat_at < now() - interval '2 s') AS dead "
                                    "FROM imagend_daemons").fetchone()["dead"], 10, what="the daemon to count as dead")
    result = run_imagend(["-processor"], env)
    assert result.returncode == 0, result.stderr
    row = conn.execute("SELECT status, attempts, crashes, locked_by FROM images WHERE id = %s", [image_id]).fetchone()
    assert row == {"status": "ReadyToGenerate", "attempts": 0, "crashes": 1, "locked_by": None}
