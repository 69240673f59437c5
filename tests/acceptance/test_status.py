"""`imagend -status`: the queue status view as JSON a machine can read, and rows nobody serves (there
and in a starting daemon's log)."""

from __future__ import annotations

import json

from psycopg.conninfo import conninfo_to_dict

from support.daemons import DaemonProcess, run_imagend
from support.db import base_env, insert_image, wait_until


def test_status_gives_ages_and_times_in_seconds_as_numbers(db_url, conn):
    insert_image(conn, "waiting for a minute and a half")
    # Waiting since it fell due (created, and due since): 90 s.
    conn.execute("UPDATE images SET created_at = now() - interval '90 seconds', "
                 "run_after = now() - interval '90 seconds'")
    insert_image(conn, "done", status="ReadyToPublish", generation_seconds=1.5)
    insert_image(conn, "done too", status="ReadyToPublish", generation_seconds=2.5)
    result = run_imagend(["-status"], base_env(db_url))
    assert result.returncode == 0, result.stderr
    lines = {(line["status"], line["backend"]): line for line in json.loads(result.stdout)["queue"]}
    waiting = lines[("ReadyToGenerate", "placeholder")]  # NULL: IMAGEND_BACKEND's, named as /metrics names it
    assert isinstance(waiting["oldest_waiting_seconds"], float)
    assert 85 <= waiting["oldest_waiting_seconds"] < 600
    assert "oldest_waiting" not in waiting  # no Python timedelta text ("0:01:30.0412")
    finished = lines[("ReadyToPublish", "placeholder")]
    assert finished["avg_generation_seconds"] == 2.0
    assert finished["oldest_waiting_seconds"] is None


def test_status_shows_waiting_rows_that_no_running_daemon_serves(db_url, conn):
    insert_image(conn, "for a GPU host that is not running", backend="local")
    insert_image(conn, "for the default backend")  # NULL: IMAGEND_BACKEND's (placeholder here)
    conn.execute("INSERT INTO imagend_daemons (owner, host, pid, version, backends) "
                 "VALUES ('busy:1:a', 'busy', 1, 'test', '{placeholder}')")
    result = run_imagend(["-status"], base_env(db_url))
    assert result.returncode == 0, result.stderr
    lines = {(line["status"], line["backend"]): line for line in json.loads(result.stdout)["queue"]}
    local = lines[("ReadyToGenerate", "local")]
    assert (local["unserved"], local["daemons_serving"]) == (True, 0)
    default = lines[("ReadyToGenerate", "placeholder")]
    assert (default["unserved"], default["daemons_serving"]) == (False, 1)


def test_a_daemon_says_at_start_that_rows_wait_for_a_backend_nobody_serves(db_url, conn, tmp_path):
    insert_image(conn, "for a GPU host that is not running", backend="local")
    daemon = DaemonProcess(["-cron"], base_env(db_url, IMAGEND_BACKENDS="placeholder"), tmp_path)
    try:
        wait_until(lambda: "daemon_started" in daemon.output(), 30, what="the daemon to start")
    finally:
        daemon.stop()
    lines = [json.loads(line) for line in daemon.output().splitlines() if line.startswith("{")]
    [warning] = [line for line in lines if line["event"] == "rows_unserved"]
    assert (warning["backend"], warning["rows"], warning["daemons_serving"]) == ("local", 1, 0)
    assert warning["served_here"] == ["placeholder"]
    assert "IMAGEND_BACKENDS" in warning["hint"]


def test_status_says_which_database_it_read(db_url, conn):
    """An empty queue must never be mistaken for a dead fleet: the report names where it looked (issue 25,
    item 4), never with a password."""
    result = run_imagend(["-status"], base_env(db_url))
    assert result.returncode == 0, result.stderr
    database = json.loads(result.stdout)["database"]
    target = conninfo_to_dict(db_url)
    assert database.startswith("DATABASE_URL: ") and f"database {target['dbname']}" in database
    assert not target.get("password") or target["password"] not in database


def test_status_where_no_database_is_configured_starts_no_empty_one(tmp_path):
    """From a folder without the daemon's .env and no DATABASE_URL: exit 2 saying so, instead of starting
    an empty embedded Postgres and reporting no queue and no daemons with exit 0."""
    data_dir = tmp_path / "data"
    for args in (["-status"], ["-pause"], ["-resume"]):
        result = run_imagend(args, {"IMAGEND_DATA_DIR": str(data_dir)}, cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "no database to read: neither DATABASE_URL nor DB_HOST/DB_NAME is set" in result.stderr
        assert f"no {tmp_path / '.env'}" in result.stderr and "-env-file PATH" in result.stderr
        assert result.stdout == ""
    assert not (data_dir / "postgres").exists()  # nothing was started


def test_status_names_a_null_backend_as_imagend_backend_as_metrics_does(db_url, conn):
    """A NULL backend is IMAGEND_BACKEND's: -status shows that name (not null), one line with the rows
    that named it (issue 25, item 11)."""
    insert_image(conn, "left to the default")
    insert_image(conn, "named", backend="placeholder")
    conn.execute("UPDATE images SET created_at = now() - interval '1 minute', run_after = now() - interval '1 minute' "
                 "WHERE backend IS NULL")
    result = run_imagend(["-status"], base_env(db_url, IMAGEND_BACKEND="placeholder"))
    assert result.returncode == 0, result.stderr
    waiting = [line for line in json.loads(result.stdout)["queue"] if line["status"] == "ReadyToGenerate"]
    assert [(line["backend"], line["rows"]) for line in waiting] == [("placeholder", 2)]
    assert waiting[0]["oldest_waiting_seconds"] >= 59  # the older of the two
