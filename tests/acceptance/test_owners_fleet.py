"""Issue 21 with daemons as subprocesses (the placeholder, a short delay per image): owners share the fleet
round-robin by weight, a cap holds across daemons and a SIGKILL (sampled every 20 ms and audited by a
trigger), a lone owner gets the whole fleet up to its cap. bench/owners.py prints the same figures."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

from support.daemons import DaemonProcess, run_imagend
from support.db import base_env, wait_until

DELAY = "0.05"  # seconds per image: rows start in a visible order, and the tests stay short

# Every status change of an owned row, in commit-independent wall-clock order: the intervals each row
# spent in Generate, from which the most rows of one owner ever in Generate at once is computed.
AUDIT = """
CREATE TABLE owner_audit (id int, owner text, entered boolean, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION owner_audit_note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.status = 'Generate') <> (NEW.status = 'Generate') THEN
        INSERT INTO owner_audit (id, owner, entered) VALUES (NEW.id, NEW.owner, NEW.status = 'Generate');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER owner_audit AFTER UPDATE ON images FOR EACH ROW WHEN (NEW.owner IS NOT NULL)
    EXECUTE FUNCTION owner_audit_note();
"""


def insert(conn, owner: str, count: int) -> None:
    conn.execute("INSERT INTO images (prompt, owner) SELECT 'row ' || g, %s, FROM generate_series(1, %s) g"
                 .replace(", FROM", " FROM"), [owner, count])


def start_order(conn) -> list[str]:
    """Owners of the rows that started, in the order they started."""
    return [row["owner"] for row in conn.execute(
        "SELECT owner FROM images WHERE started_at IS NOT NULL ORDER BY started_at, id")]


def daemons(db_url: str, count: int, **env: str) -> list[DaemonProcess]:
    settings = base_env(db_url, **{"IMAGEND_PLACEHOLDER_DELAY": DELAY, "IMAGEND_DEAD_AFTER": "2", **env})
    return [DaemonProcess(["-cron"], settings) for _ in range(count)]


def stop(fleet: list[DaemonProcess]) -> None:
    for daemon in fleet:
        daemon.stop()


def test_late_owners_start_before_the_backlogs_40th_row_and_weights_share_3_to_1(db_url, conn):
    env = base_env(db_url)
    assert run_imagend(["-plan", "GOLD", "weight=3"], env).returncode == 0
    assert run_imagend(["-plan", "BASIC", "weight=1"], env).returncode == 0
    assert run_imagend(["-assign", "gold", "GOLD"], env).returncode == 0
    assert run_imagend(["-assign", "basic", "BASIC"], env).returncode == 0
    insert(conn, "A", 300)
    insert(conn, "B", 10)
    insert(conn, "C", 10)
    fleet = daemons(db_url, 3)
    try:
        wait_until(lambda: Counter(start_order(conn))["A"] >= 40, 60, 0.1, "A's 40th row")
        order = start_order(conn)
        fortieth = [n for n, owner in enumerate(order) if owner == "A"][39]
        assert Counter(order[:fortieth]) >= Counter({"B": 10, "C": 10}), order[:fortieth + 1]
        conn.execute("DELETE FROM images WHERE status = 'ReadyToGenerate'")  # on to the weights
        wait_until(lambda: not conn.execute("SELECT 1 FROM images WHERE status = 'Generate'").fetchone(), 30, 0.05,
                   "the fleet idle")
        conn.execute("UPDATE images SET started_at = NULL")
        insert(conn, "gold", 150)
        insert(conn, "basic", 150)
        wait_until(lambda: len(start_order(conn)) >= 120, 60, 0.1, "120 rows started")
        counts = Counter(start_order(conn)[:120])  # both waited all along
        assert 3 * 0.8 <= counts["gold"] / counts["basic"] <= 3 * 1.2, counts
    finally:
        stop(fleet)


def test_a_cap_of_one_holds_across_four_daemons_and_a_sigkill(db_url, conn):
    conn.execute(AUDIT)
    env = base_env(db_url)
    assert run_imagend(["-plan", "ONE", "max_running=1"], env).returncode == 0
    assert run_imagend(["-assign", "capped", "ONE"], env).returncode == 0
    insert(conn, "capped", 50)
    insert(conn, "others", 400)
    samples: list[tuple[int, int]] = []
    stopping = threading.Event()

    def sample() -> None:
        import psycopg

        with psycopg.connect(db_url, autocommit=True) as watcher:
            while not stopping.is_set():
                row = watcher.execute("SELECT count(*) FILTER (WHERE owner = 'capped'), count(*) FROM images "
                                      "WHERE status = 'Generate'").fetchone()
                assert row is not None
                samples.append((row[0], row[1]))
                time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    fleet = daemons(db_url, 4)
    try:
        wait_until(lambda: conn.execute("SELECT count(*) AS n FROM images WHERE owner = 'capped' AND status = "
                                        "'ReadyToPublish'").fetchone()["n"] >= 5, 60, 0.05, "5 capped rows done")
        # SIGKILL the daemon generating a capped row: the row is rescued once that daemon counts as dead (2 s),
        # and the cap must hold through the rescue, the retry and the restarted daemon.
        holder = wait_until(lambda: conn.execute("SELECT locked_by FROM images WHERE owner = 'capped' AND status = "
                                                 "'Generate' AND locked_by IS NOT NULL").fetchone(), 10, 0.01,
                            "a capped row generating")["locked_by"]
        victim = next(n for n, daemon in enumerate(fleet) if f":{daemon.pid}:" in holder)
        fleet[victim].kill()
        fleet[victim] = daemons(db_url, 1)[0]
        wait_until(lambda: conn.execute("SELECT count(*) AS n FROM images WHERE owner = 'capped' AND status "
                                        "IN ('ReadyToPublish', 'Failed')").fetchone()["n"] == 50, 90, 0.1,
                   "every capped row done")
    finally:
        stopping.set()
        sampler.join(10)
        stop(fleet)
    assert samples and max(capped for capped, _ in samples) == 1, Counter(samples)
    # Others filled the remaining daemons meanwhile: 4 rows in Generate at times (1 capped, 3 others).
    assert max(total for _, total in samples) >= 4
    # The audit: the intervals each capped row spent in Generate never overlap.
    events = conn.execute("SELECT entered FROM owner_audit WHERE owner = 'capped' ORDER BY at, entered").fetchall()
    running = peak = 0
    for event in events:
        running += 1 if event["entered"] else -1
        peak = max(peak, running)
    assert peak == 1, events


def test_a_lone_owner_capped_at_four_runs_four_at_a_time(db_url, conn):
    env = base_env(db_url)
    assert run_imagend(["-plan", "FOUR", "max_running=4"], env).returncode == 0
    assert run_imagend(["-assign", "solo", "FOUR"], env).returncode == 0
    insert(conn, "solo", 60)
    fleet = daemons(db_url, 4, IMAGEND_PLACEHOLDER_DELAY="0.2")
    try:
        seen: list[int] = []

        def four() -> bool:
            row = conn.execute("SELECT count(*) AS n FROM images WHERE status = 'Generate'").fetchone()
            seen.append(row["n"])
            return seen.count(4) >= 10  # sampled often enough to see it held, not a single moment
        wait_until(four, 30, 0.02, "four rows generating at once")
        assert max(seen) <= 4
    finally:
        stop(fleet)


def test_bad_plans_owners_and_keys_at_the_cli(db_url, conn):
    env = base_env(db_url)
    for args in (["-plan", "P", "max_running=0"], ["-plan", "P", "weight=-1"], ["-plan", "P", "weight=nan"],
                 ["-plan", "P", "colour=blue"], ["-plan", "has space"], ["-assign", "someone", "NO_SUCH_PLAN"],
                 ["-assign", "x" * 10_000, "-"], ["-key-create", "evil\nowner"], ["-key-revoke", "imk_00000000"]):
        done = run_imagend(args, env)
        assert done.returncode == 2 and done.stderr.startswith("imagend: "), (args[:2], done.stderr)
    created = run_imagend(["-key-create", "alice", "read"], env)
    key = created.stdout.strip()
    assert created.returncode == 0 and len(created.stdout.splitlines()) == 1 and key.startswith("imk_")
    stored = conn.execute("SELECT prefix, hash, owner, scopes FROM imagend_api_keys").fetchone()
    assert key not in str(stored) and stored["owner"] == "alice" and stored["scopes"] == ["read"]
    assert run_imagend(["-key-revoke", key[:12]], env).returncode == 0


def test_plans_lists_each_plan_with_its_owners_as_json(db_url, conn):
    env = base_env(db_url)
    assert run_imagend(["-plan", "PRO", "max_running=2", "weight=3", "max_waiting=50"], env).returncode == 0
    assert run_imagend(["-assign", "carol", "PRO"], env).returncode == 0
    insert(conn, "carol", 3)
    listed = run_imagend(["-plans"], env)
    assert listed.returncode == 0, listed.stderr
    plans = {plan["name"]: plan for plan in json.loads(listed.stdout)["plans"]}
    pro = plans["PRO"]
    assert (pro["max_running"], pro["weight"], pro["max_waiting"], pro["owners"], pro["waiting"], pro["running"]) == (
        2, 3, 50, 1, 3, 0), pro
