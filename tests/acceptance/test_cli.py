"""The CLI as a user runs it: `python -m imagend …` in a subprocess, configured by its environment."""

from __future__ import annotations

import json
import time

import pytest

from support.daemons import DaemonProcess, run_imagend
from support.db import base_env, fetch_image, insert_image, wait_until


def expired_row(conn, prompt: str = "orphaned by a dead daemon") -> int:
    return insert_image(conn, prompt, status="Generate", locked_by="dead-host:1:abc", attempts=1,
                        lease_until="2000-01-01T00:00:00Z")


def test_generator_flag_makes_the_waiting_rows_then_exits(db_url, conn):
    ids = [insert_image(conn, f"sunset number {n}") for n in range(3)]
    orphan = expired_row(conn)
    result = run_imagend(["-generator"], base_env(db_url))
    assert result.returncode == 0, result.stderr
    for image_id in ids:
        assert fetch_image(conn, image_id)["status"] == "ReadyToPublish"
    assert fetch_image(conn, orphan)["status"] == "Generate"  # rescue is the processor's job


def test_processor_flag_rescues_expired_rows_then_exits(db_url, conn):
    waiting = insert_image(conn, "waiting")
    orphan = expired_row(conn)
    result = run_imagend(["-processor"], base_env(db_url))
    assert result.returncode == 0, result.stderr
    assert fetch_image(conn, orphan)["status"] == "ReadyToGenerate"
    assert fetch_image(conn, waiting)["status"] == "ReadyToGenerate"  # generating is not its job


def test_both_flags_run_both_passes(db_url, conn):
    waiting = insert_image(conn, "waiting")
    orphan = expired_row(conn)
    result = run_imagend(["-generator", "-processor"], base_env(db_url))
    assert result.returncode == 0, result.stderr
    assert fetch_image(conn, waiting)["status"] == "ReadyToPublish"
    assert fetch_image(conn, orphan)["status"] in ("ReadyToGenerate", "ReadyToPublish")
    assert fetch_image(conn, orphan)["locked_by"] is None


def test_verbose_logs_debug_lines_with_file_and_line(db_url, conn):
    insert_image(conn, "verbose")
    result = run_imagend(["-generator", "-verbose"], base_env(db_url))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    debug = [line for line in lines if line.get("level") == "debug"]
    assert debug and all("filename" in line and "lineno" in line for line in debug)


def test_no_flags_exits_2_with_usage(db_url):
    result = run_imagend([], base_env(db_url))
    assert result.returncode == 2
    assert "usage: imagend" in result.stderr
    assert "-cron" in result.stderr


def test_an_unknown_flag_exits_2(db_url):
    result = run_imagend(["-cronn"], base_env(db_url))
    assert result.returncode == 2
    assert "usage: imagend" in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [("IMAGEND_LEASE_SECONDS", "abc"), ("DEFAULT_IMAGE_WIDTH", "wide"), ("IMAGEND_BACKEND", "dalle"),
     ("DB_CONN_MAX_LIFETIME", "forever")],
)
def test_a_bad_setting_exits_2_naming_the_variable(db_url, conn, name, value):
    image_id = insert_image(conn, "must not be touched")
    result = run_imagend(["-cron"], base_env(db_url, **{name: value}), timeout=30)
    assert result.returncode == 2, result.stderr
    assert name in result.stderr
    assert "Traceback" not in result.stderr
    assert fetch_image(conn, image_id)["status"] == "ReadyToGenerate"


def test_status_prints_the_queue_as_json(db_url, conn):
    insert_image(conn, "one")
    insert_image(conn, "two", backend="local")
    result = run_imagend(["-status"], base_env(db_url))
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["queue"]
    assert {(r["status"], r["backend"], r["rows"]) for r in rows} == {  # NULL: IMAGEND_BACKEND's, named
        ("ReadyToGenerate", "placeholder", 1), ("ReadyToGenerate", "local", 1)}


def test_cron_picks_up_a_new_insert_at_once_via_listen(db_url, conn):
    # Intervals of five minutes: only the LISTEN wake-up can explain a pick-up within seconds.
    env = base_env(db_url, IMAGEND_GENERATOR_INTERVAL="300", IMAGEND_PROCESSOR_INTERVAL="300")
    daemon = DaemonProcess(["-cron"], env)
    try:
        first = insert_image(conn, "first: proves the daemon is up")
        wait_until(lambda: fetch_image(conn, first)["status"] == "ReadyToPublish", 30, what="daemon start")
        for n in range(3):
            time.sleep(0.3)  # let the daemon go idle between inserts
            image_id = insert_image(conn, f"woken {n}")
            inserted = time.monotonic()
            wait_until(lambda i=image_id: fetch_image(conn, i)["status"] == "ReadyToPublish", 5,
                       what=f"row {image_id} to be picked up by the LISTEN wake-up\n{daemon.output()}")
            assert time.monotonic() - inserted < 5
        assert daemon.alive()
    finally:
        rc = daemon.stop()
    assert rc == 0, daemon.output()
