"""Crash fairness under chaos, as measured in the core issue: three `imagend -cron` daemons
(placeholder, 0.2 s an image, lease 5 s, the default DEFAULT_MAX_ATTEMPTS=3), one of them
SIGKILLed and restarted
20 times, a second apart, each time once it holds a row. Every row must end ReadyToPublish, none
finished twice: a kill charges nothing to rows the dead daemon had only claimed ahead,
and a death while generating is a crash, not an attempt."""

from __future__ import annotations

import time

import pytest

from support.daemons import DaemonProcess
from support.db import base_env, install_audit, terminal_writes

ROWS = 300
CHAOS_SECONDS = 20


def at_work(conn, daemon: DaemonProcess, timeout: float) -> None:
    """Wait (at most `timeout`) until `daemon` holds a row in Generate, while rows wait: on a loaded machine a
    restarted daemon can take more than the second between kills to claim, and then no kill catches a row."""
    held = f"%:{daemon.pid}:%"  # locked_by is host:pid:suffix (queue/daemon.py)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute("SELECT EXISTS (SELECT 1 FROM images WHERE status = 'Generate' AND locked_by LIKE %s) "
                           "OR NOT EXISTS (SELECT 1 FROM images WHERE status = 'ReadyToGenerate') AS ready",
                           [held]).fetchone()
        if row["ready"]:
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_kill_9_every_second_fails_no_healthy_row(db_url, conn, tmp_path):
    install_audit(conn)
    conn.execute("INSERT INTO images (prompt) SELECT 'chaos ' || n FROM generate_series(1, %s) AS n", [ROWS])
    env = base_env(db_url, IMAGEND_PLACEHOLDER_DELAY="0.2", IMAGEND_LEASE_SECONDS="5")
    env.pop("IMAGEND_DRAIN_SECONDS")
    daemons = [DaemonProcess(["-cron"], env, tmp_path) for _ in range(3)]
    kills = 0
    try:
        for _ in range(CHAOS_SECONDS):  # a kill a second, each once the daemon holds a row (at most 2 s more)
            time.sleep(1.0)
            at_work(conn, daemons[0], timeout=2.0)
            daemons[0].kill()
            kills += 1
            daemons[0] = DaemonProcess(["-cron"], env, tmp_path)
            assert all(d.alive() for d in daemons[1:]), [d.output()[-3000:] for d in daemons[1:]]

        def remaining() -> int:
            return conn.execute("SELECT count(*) AS n FROM images WHERE status NOT IN ('ReadyToPublish', 'Failed')"
                                ).fetchone()["n"]

        finish_by = time.monotonic() + 120
        while remaining() and time.monotonic() < finish_by:
            time.sleep(0.2)
        assert remaining() == 0
    finally:
        codes = [d.stop() for d in daemons]
    assert kills >= CHAOS_SECONDS - 1
    assert codes == [0, 0, 0], [d.output()[-3000:] for d in daemons]
    failed = conn.execute("SELECT id, error FROM images WHERE status = 'Failed'").fetchall()
    assert failed == []
    assert conn.execute("SELECT count(*) AS n FROM images WHERE status = 'ReadyToPublish' AND base64 IS NOT NULL"
                        ).fetchone()["n"] == ROWS
    ids = [r["id"] for r in conn.execute("SELECT id FROM images").fetchall()]
    assert terminal_writes(conn) == dict.fromkeys(ids, 1)
    # The kills really caught rows in flight: some were taken back from dead daemons.
    assert conn.execute("SELECT count(*) AS n FROM images_audit WHERE old_status = 'Generate' "
                        "AND new_status = 'ReadyToGenerate'").fetchone()["n"] >= 1
