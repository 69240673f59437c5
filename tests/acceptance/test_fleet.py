"""Issue 20, a fleet on one Postgres: 12 daemons on 4 simulated hosts (UTS namespaces with their own
hostnames). A new row wakes one idle daemon, not the fleet: claims and all UPDATE statements per row
stay small; each host holds one LISTEN connection; a host's relay that dies is replaced without a
wake-up lost for longer than IMAGEND_POLL_SECONDS; a burst into an idle fleet is spread over it."""

from __future__ import annotations

import os
import signal
import time

import pytest

from support.daemons import DaemonProcess
from support.db import base_env, wait_until

HOSTS = ("fleet-h1", "fleet-h2", "fleet-h3", "fleet-h4")
PER_HOST = 3
DELAY_SECONDS = 1.0
POLL_SECONDS = 2.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="simulated hosts need unshare --uts, as root (CI runs as root)"),
]

AUDIT = """
CREATE TABLE fleet_updates (n int NOT NULL);
INSERT INTO fleet_updates VALUES (0);
CREATE TABLE fleet_empty_updates (n int NOT NULL);
INSERT INTO fleet_empty_updates VALUES (0);
CREATE FUNCTION fleet_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE fleet_updates SET n = n + 1;
    IF NOT EXISTS (SELECT 1 FROM changed) THEN UPDATE fleet_empty_updates SET n = n + 1; END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER fleet_count_updates AFTER UPDATE ON images REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION fleet_count_update();
CREATE TABLE fleet_claims (id int, owner text);
CREATE FUNCTION fleet_note_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO fleet_claims VALUES (NEW.id, NEW.locked_by); RETURN NULL; END $$;
CREATE TRIGGER fleet_note_claims AFTER UPDATE OF status ON images FOR EACH ROW
    WHEN (NEW.status = 'Generate') EXECUTE FUNCTION fleet_note_claim();
"""


def insert_rows(conn, count: int, per_second: float | None = None) -> list[int]:
    ids = []
    for n in range(count):
        row = conn.execute("INSERT INTO images (prompt) VALUES (%s) RETURNING id", [f"fleet {n}"]).fetchone()
        ids.append(row["id"])
        if per_second:
            time.sleep(1 / per_second)
    return ids


def all_done(conn, ids: list[int]) -> bool:
    row = conn.execute("SELECT count(*) AS n FROM images WHERE id = ANY(%s) AND status = 'ReadyToPublish'",
                       [ids]).fetchone()
    return row["n"] == len(ids)


def sessions(conn) -> int:
    return conn.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
                        "AND application_name IN ('imagend', 'imagend-listen')").fetchone()["n"]


def idle_fleet(conn, daemons: int) -> bool:
    row = conn.execute("SELECT count(*) AS n FROM imagend_daemons WHERE idle_since IS NOT NULL "
                       "AND wake_channel IS NOT NULL AND heartbeat_at > now() - interval '5 s'").fetchone()
    return row["n"] == daemons


def test_a_fleet_wakes_one_daemon_per_row_and_one_listener_per_host(db_url, conn, tmp_path):
    conn.execute(AUDIT)
    env = base_env(db_url, IMAGEND_PLACEHOLDER_DELAY=str(DELAY_SECONDS), IMAGEND_MAX_BATCH="1",
                   IMAGEND_GENERATOR_INTERVAL="300",
                   IMAGEND_PROCESSOR_INTERVAL="600", IMAGEND_POLL_SECONDS=str(POLL_SECONDS),
                   IMAGEND_RUNTIME_DIR=str(tmp_path / "run"))
    daemons = {host: [DaemonProcess(["-cron"], env, tmp_path, host=host) for _ in range(PER_HOST)] for host in HOSTS}
    fleet = [d for group in daemons.values() for d in group]
    try:
        wait_until(lambda: idle_fleet(conn, len(fleet)), 60, what="every daemon up and idle")
        listeners = conn.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
                                 "AND application_name = 'imagend-listen'").fetchone()["n"]
        assert listeners == len(HOSTS)  # one LISTEN connection per host, not per daemon
        hosts = conn.execute("SELECT count(DISTINCT wake_channel) AS n FROM imagend_daemons").fetchone()["n"]
        assert hosts == len(HOSTS)

        conn.execute("UPDATE fleet_updates SET n = 0")
        conn.execute("UPDATE fleet_empty_updates SET n = 0")
        rows = insert_rows(conn, 24, per_second=10)
        wait_until(lambda: all_done(conn, rows), 30, what="the rows at 10 a second")
        updates = conn.execute("SELECT n FROM fleet_updates").fetchone()["n"]
        empty = conn.execute("SELECT n FROM fleet_empty_updates").fetchone()["n"]
        # Per row: its claim, begin_work, lease renewals (two a second), the finishing write, the woken
        # daemon's last claim, which finds nothing. A broadcast made every idle daemon claim: 12 claims
        # a row, 11 of them empty. About 1 empty claim a row on a quiet machine (bench/fleet.py); on a
        # loaded one a daemon finishing its row sometimes takes the new row before the daemon woken for
        # it, whose claim then finds nothing too (CI measured 1.6): the bound tells one from the fleet.
        assert empty / len(rows) <= 3, empty / len(rows)
        assert updates / len(rows) <= 8, updates / len(rows)

        # The relay of a host dies: another daemon of the host takes over; no wake-up is lost for long.
        relay = next(d for d in daemons[HOSTS[0]] if "wake_relay_started" in d.output())
        relay.signal(signal.SIGKILL)
        relay.wait(10)
        time.sleep(0.5)
        for image_id in insert_rows(conn, 6, per_second=4):
            started = time.monotonic()
            wait_until(lambda i=image_id: all_done(conn, [i]), POLL_SECONDS + 3, what="a row after the relay died")
            assert time.monotonic() - started < POLL_SECONDS + DELAY_SECONDS + 1
        assert sum("wake_relay_started" in d.output() for d in daemons[HOSTS[0]] if d is not relay) == 1

        # A burst into an idle fleet is spread over it.
        wait_until(lambda: idle_fleet(conn, len(fleet) - 1), 20, what="the fleet idle again")
        conn.execute("DELETE FROM fleet_claims")
        burst = insert_rows(conn, 33)
        wait_until(lambda: all_done(conn, burst), 30, what="the burst")
        owners = conn.execute("SELECT count(DISTINCT owner) AS n FROM fleet_claims WHERE id = ANY(%s)",
                              [burst]).fetchone()["n"]
        assert owners == len(fleet) - 1  # every live daemon took part

        # At rest again, each daemon holds one connection of its own and each host one LISTEN.
        try:
            wait_until(lambda: sessions(conn) <= len(fleet) - 1 + len(HOSTS), 10, interval=0.5,
                       what="the burst's connections given back within 10 s")
        except AssertionError:
            rows = conn.execute("SELECT application_name, state, left(query, 60) AS q FROM pg_stat_activity "
                                "WHERE datname = current_database() ORDER BY 1").fetchall()
            print("\n".join(str(r) for r in rows))
            raise
    finally:
        for daemon in fleet:
            if daemon.alive():
                daemon.stop()
            else:
                daemon.kill()
