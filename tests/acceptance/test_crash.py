"""The crash test: three `imagend -cron` daemons on 500 rows, one of them killed with SIGKILL and
restarted every second. Every row ends terminal, none is finished twice (an audit trigger records
every terminal write), and rows held by a killed daemon are rescued promptly once it counts as dead
(IMAGEND_DEAD_AFTER=2 s here, the lease 2 s: both run out about together)."""

from __future__ import annotations

import time

import pytest

from support.daemons import DaemonProcess
from support.db import base_env, install_audit, terminal_writes

ROWS = 500
LEASE_SECONDS = 2.0
PROCESSOR_INTERVAL_SECONDS = 0.5
# A rescue may wait for the rescuer's current 0.2 s image and its next processor run.
RESCUE_SLACK_SECONDS = 3.0
KILL_SECONDS = 40


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill_9_every_second_loses_nothing_and_finishes_nothing_twice(db_url, conn, tmp_path):
    install_audit(conn)
    conn.execute("INSERT INTO images (prompt) SELECT 'crash test ' || n FROM generate_series(1, %s) AS n", [ROWS])
    env = base_env(
        db_url,
        IMAGEND_PLACEHOLDER_DELAY="0.2",
        IMAGEND_LEASE_SECONDS=str(LEASE_SECONDS),
        IMAGEND_PROCESSOR_INTERVAL=str(PROCESSOR_INTERVAL_SECONDS),
        IMAGEND_GENERATOR_INTERVAL="1",
        IMAGEND_DEAD_AFTER="2",
        # A row may be caught in flight by several kills (they aim at rows in flight: to imagend that looks
        # like a poison pill); it must still finish.
        DEFAULT_MAX_ATTEMPTS="20",
        IMAGEND_MAX_CRASHES="20",
    )
    steady = [DaemonProcess(["-cron"], env, tmp_path) for _ in range(2)]
    victim = DaemonProcess(["-cron"], env, tmp_path)
    kills = killed_in_flight = 0

    def remaining() -> int:
        return conn.execute("SELECT count(*) AS n FROM images WHERE status NOT IN ('ReadyToPublish', 'Failed')"
                            ).fetchone()["n"]

    def victim_holds_a_row() -> bool:
        return conn.execute("SELECT count(*) AS n FROM images WHERE status = 'Generate' AND locked_by LIKE %s",
                            [victim.owner_pattern]).fetchone()["n"] > 0

    kill_until = time.monotonic() + KILL_SECONDS
    try:
        while remaining() and time.monotonic() < kill_until:
            # Kill within the second, preferably while the victim holds a row in flight.
            started = time.monotonic()
            while time.monotonic() - started < 1.0 and not victim_holds_a_row():
                time.sleep(0.02)
            killed_in_flight += victim_holds_a_row()
            victim.kill()
            kills += 1
            assert all(d.alive() for d in steady), [d.output()[-3000:] for d in steady]
            victim = DaemonProcess(["-cron"], env, tmp_path)
        # Then no more kills: rows a kill caught several times wait out their crash backoff (<= 30 s).
        finish_by = time.monotonic() + 90
        while remaining() and time.monotonic() < finish_by:
            time.sleep(0.2)
        assert remaining() == 0, f"rows left after {kills} kills"
        # The last victim finishes its in-flight work on SIGTERM; the steady ones drain cleanly.
        victim.kill()
    finally:
        codes = [d.stop() for d in steady]
        victim.kill()
    assert codes == [0, 0], [d.output()[-3000:] for d in steady]
    assert kills >= 5 and killed_in_flight >= 1

    # Every row finished, exactly once.
    statuses = conn.execute("SELECT status, count(*) AS n FROM images GROUP BY status").fetchall()
    assert statuses == [{"status": "ReadyToPublish", "n": ROWS}]
    ids = [r["id"] for r in conn.execute("SELECT id FROM images").fetchall()]
    assert terminal_writes(conn) == dict.fromkeys(ids, 1)
    assert conn.execute("SELECT count(*) AS n FROM images_audit WHERE new_status = 'ReadyToPublish' "
                        "AND old_status <> 'Generate'").fetchone()["n"] == 0
    assert conn.execute("SELECT count(*) AS n FROM images WHERE base64 IS NULL OR locked_by IS NOT NULL"
                        ).fetchone()["n"] == 0

    # Rows a killed daemon held were rescued promptly once their lease ran out.
    rescues = conn.execute(
        """SELECT image_id, old_owner, EXTRACT(EPOCH FROM at - old_lease) AS late
           FROM images_audit
           WHERE old_status = 'Generate' AND new_status = 'ReadyToGenerate'"""
    ).fetchall()
    assert len(rescues) >= 1
    late = [r for r in rescues if r["late"] > RESCUE_SLACK_SECONDS]
    assert late == [], late
    # Only rows held by killed daemons were rescued: the steady daemons kept their leases alive.
    steady_owners = [f":{d.pid}:" for d in steady]
    assert not [r for r in rescues if any(p in r["old_owner"] for p in steady_owners)]
