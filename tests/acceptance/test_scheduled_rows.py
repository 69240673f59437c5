"""Rows that may not be claimed yet (a producer's run_after, a retry's backoff) are picked up
when they fall due, by `imagend -cron` itself, not by the 5-minute interval run."""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, generate_latest

from imagend.db.operations import OperationsRepository
from imagend.operations.metrics import QueueCollector

from support.daemons import DaemonProcess, run_imagend
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



def oldest_waiting_gauge(pool: Any) -> float:
    """/metrics' imagend_queue_oldest_waiting_seconds (what the documented ImagendQueueTooOld rule reads)."""
    registry = CollectorRegistry()
    registry.register(QueueCollector(OperationsRepository(pool, dead_after_seconds=10), "placeholder"))
    text = generate_latest(registry).decode()
    match = re.search(r'^imagend_queue_oldest_waiting_seconds\{backend="placeholder"\} (\S+)$', text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


def test_a_row_scheduled_for_later_waits_for_nobody_before_its_time(db_url, conn, make_settings, make_repo):
    """Issue 25, item 3: a row due in an hour does not trip the oldest-waiting alert, gets its run_after as
    estimated start, and a cancel ends it at once rather than leaving it "cancelling" for an hour."""
    later = insert_image(conn, "in an hour")
    conn.execute("UPDATE images SET created_at = now() - interval '10 minutes', "
                 "run_after = now() + interval '1 hour' WHERE id = %s", [later])
    due = insert_image(conn, "due for a minute")
    conn.execute("UPDATE images SET created_at = now() - interval '1 hour', "
                 "run_after = now() - interval '1 minute' WHERE id = %s", [due])
    # Waiting since each fell due: the due row's minute, not the scheduled row's ten minutes nor an hour.
    assert 55 <= oldest_waiting_gauge(make_repo(make_settings()).pool) < 120
    status = run_imagend(["-status"], base_env(db_url))
    [waiting] = [line for line in json.loads(status.stdout)["queue"] if line["status"] == "ReadyToGenerate"]
    assert waiting["rows"] == 2 and 55 <= waiting["oldest_waiting_seconds"] < 120
    # Its place: the due row is claimed first, and it starts not before its time.
    position = conn.execute("SELECT ahead, extract(epoch FROM estimated_start - now()) AS wait "
                            "FROM imagend_position(%s)", [later]).fetchone()
    assert position["ahead"] == 1 and float(position["wait"]) > 3500
    assert conn.execute("SELECT ahead FROM imagend_position(%s)", [due]).fetchone()["ahead"] == 0
    # A producer's cancel ends it now, not when it falls due.
    conn.execute("UPDATE images SET cancel_requested = true WHERE id = %s", [later])
    row = fetch_image(conn, later)
    assert (row["status"], row["error"], row["attempts"]) == ("Failed", "cancelled", 0)
    assert row["finished_at"] is not None
    assert fetch_image(conn, due)["status"] == "ReadyToGenerate"  # only the row asked for


def test_a_cancelled_waiting_row_notifies_its_producer(db_url, conn):
    """The cancel's terminal write is like any other: imagend_done says so to a LISTENing producer."""
    image_id = insert_image(conn, "never mind")
    conn.execute("UPDATE images SET run_after = now() + interval '1 day' WHERE id = %s", [image_id])
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN imagend_done")
        conn.execute("UPDATE images SET cancel_requested = true WHERE id = %s", [image_id])
        notes = list(listener.notifies(timeout=5, stop_after=1))
    assert [json.loads(n.payload) for n in notes] == [{"id": image_id, "status": "Failed"}]


def test_retention_keeps_its_age_on_an_idle_daemon(db_url, conn, tmp_path):
    """Issue 25, item 11: with IMAGEND_RETENTION_FAILED=4s a failed row goes within about half that after
    its age, on a daemon with nothing to do and the default 10-minute processor interval; it went at the
    next interval run (minutes) before."""
    env = base_env(db_url, IMAGEND_RETENTION_FAILED="4s")
    env.pop("IMAGEND_PROCESSOR_INTERVAL", None)
    daemon = DaemonProcess(["-cron"], env, log_dir=tmp_path)
    try:
        wait_until(lambda: "daemon_started" in daemon.output(), 30, what="the daemon to start")
        image_id = insert_image(conn, "failed just now", status="Failed", error="an old failure")
        conn.execute("UPDATE images SET finished_at = now() WHERE id = %s", [image_id])
        gone = lambda: conn.execute("SELECT 1 FROM images WHERE id = %s", [image_id]).fetchone() is None  # noqa: E731
        wait_until(gone, timeout=15, what="retention to delete the row 4 s past its finish")
    finally:
        assert daemon.stop() == 0, daemon.output()
    assert '"processor_interval": 2.0' in daemon.output()  # half the shortest age: the processor runs that often
