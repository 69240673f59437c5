"""The daemon behind a real PgBouncer in transaction mode (the usual production set-up):
pickup with IMAGEND_LISTEN_URL straight to Postgres, and without it (the daemon finds its
LISTEN deaf, says so, and polls); 1,000 rows through the pooler with three daemons, none
lost or doubled; and no `imagend_new` notification leaks into another client's session."""

from __future__ import annotations

import time

import psycopg
import pytest

from support.daemons import DaemonProcess
from support.db import base_env, insert_image, install_audit, terminal_writes, wait_until

IDLE = {"IMAGEND_GENERATOR_INTERVAL": "300", "IMAGEND_PROCESSOR_INTERVAL": "600"}


def pickup_seconds(conn, image_id: int) -> float:
    row = conn.execute("SELECT extract(epoch FROM started_at - created_at) AS s FROM images WHERE id = %s",
                       [image_id]).fetchone()
    return float(row["s"])


def claimed(conn, image_id: int) -> bool:
    return conn.execute("SELECT started_at IS NOT NULL AS c FROM images WHERE id = %s", [image_id]).fetchone()["c"]


def test_pickup_through_the_pooler_with_a_direct_listen_url(db_url, conn, pgbouncer, tmp_path):
    env = base_env(pgbouncer.url_for(db_url), IMAGEND_LISTEN_URL=db_url, **IDLE)
    daemon = DaemonProcess(["-cron"], env, tmp_path)
    try:
        wait_until(lambda: "daemon_started" in daemon.output(), 30, what="the daemon to start")
        time.sleep(1.0)
        ids = []
        for n in range(5):
            ids.append(insert_image(conn, f"pooled {n}"))
            time.sleep(0.1)
        wait_until(lambda: all(claimed(conn, i) for i in ids), 10, what="the rows to be claimed")
    finally:
        assert daemon.stop() == 0, daemon.output()
    assert max(pickup_seconds(conn, i) for i in ids) < 0.5  # a NOTIFY, not a poll (5 minutes)
    assert "listen_not_working" not in daemon.output()


def test_without_a_listen_url_the_daemon_warns_and_polls(db_url, conn, pgbouncer, tmp_path):
    env = base_env(pgbouncer.url_for(db_url), IMAGEND_POLL_SECONDS="0.5", **IDLE)
    daemon = DaemonProcess(["-cron"], env, tmp_path)
    try:
        wait_until(lambda: "listen_not_working" in daemon.output(), 30, what="the deaf LISTEN to be noticed")
        image_id = insert_image(conn, "found by polling")
        wait_until(lambda: claimed(conn, image_id), 10, what="the row to be claimed")
    finally:
        assert daemon.stop() == 0, daemon.output()
    assert pickup_seconds(conn, image_id) < 0.5 + 0.5  # one poll interval, and a little
    assert "IMAGEND_LISTEN_URL" in daemon.output()


@pytest.mark.slow
def test_a_thousand_rows_through_the_pooler_with_three_daemons(db_url, conn, pgbouncer, tmp_path):
    install_audit(conn)
    env = base_env(pgbouncer.url_for(db_url), IMAGEND_LISTEN_URL=db_url, IMAGEND_GENERATOR_INTERVAL="1",
                   IMAGEND_PLACEHOLDER_DELAY="0.001", IMAGEND_MAX_BATCH="5")
    received: list[str] = []
    # A bystander through the same pooler, busy with queries the whole time: were any of the
    # daemons' LISTENs run through the pooler, their notifications would reach its session.
    bystander = psycopg.connect(pgbouncer.url_for(db_url), autocommit=True, prepare_threshold=None)
    bystander.add_notify_handler(lambda n: received.append(n.channel))
    daemons = [DaemonProcess(["-cron"], env, tmp_path) for _ in range(3)]
    try:
        for _ in range(10):
            conn.execute("INSERT INTO images (prompt) SELECT 'pooled ' || n FROM generate_series(1, 100) AS n")
            bystander.execute("SELECT 1")

        def done() -> bool:
            bystander.execute("SELECT 1")
            return conn.execute("SELECT count(*) AS n FROM images WHERE status = 'ReadyToPublish'"
                                ).fetchone()["n"] == 1000

        wait_until(done, 120, interval=0.05, what="1,000 rows published")
    finally:
        codes = [d.stop() for d in daemons]
        bystander.close()
    assert codes == [0, 0, 0], [d.output()[-3000:] for d in daemons]
    for daemon in daemons:
        assert "DuplicatePreparedStatement" not in daemon.output()
        assert "pass_failed" not in daemon.output()
    ids = [r["id"] for r in conn.execute("SELECT id FROM images").fetchall()]
    assert terminal_writes(conn) == dict.fromkeys(ids, 1)
    assert "imagend_new" not in received
