"""Hardening III, item 2: a waiting row with created_at or run_after at ±infinity (or in a year
Python cannot hold) fails no statement of anyone else's: every pass, the wake-up query, the queue
gauges and `imagend -status` go on, and /healthz does not say ok while every pass fails."""

from __future__ import annotations

import json

import pytest

from imagend.db.operations import OperationsRepository
from imagend.operations.health import LoopHealth
from imagend.queue.pacer import GENERATOR

from support.daemons import InProcess, run_imagend
from support.db import base_env, fetch_image, insert_image

ODD_TIMES = ("-infinity", "infinity", "4000-01-01 00:00:00+00 BC", "12000-01-01 00:00:00+00")


@pytest.mark.parametrize("column", ["created_at", "run_after"])
def test_rows_at_odd_times_stop_nobody(conn, make_settings, make_repo, db_url, column):
    good = insert_image(conn, "an ordinary row")
    odd = {when: insert_image(conn, f"{column} {when}") for when in ODD_TIMES}
    for when, image_id in odd.items():
        conn.execute(f"UPDATE images SET {column} = %s::timestamptz WHERE id = %s", [when, image_id])
    settings = make_settings()
    repo = make_repo(settings)
    run = InProcess(repo, settings)
    try:
        for _ in range(3):
            counts = run.generator.run_once()
            assert counts is not None
        repo.next_wakeups(["placeholder"])  # the query after every pass
        assert repo.queue_status() is not None
        repo.unserved([])
        OperationsRepository(repo.pool, dead_after_seconds=10).snapshot()  # /metrics' queue gauges
    finally:
        run.close()
    assert fetch_image(conn, good)["status"] == "ReadyToPublish"
    for when, image_id in odd.items():
        row = fetch_image(conn, image_id)  # readable at all, in Python
        due = column == "created_at" or when in ("-infinity", "4000-01-01 00:00:00+00 BC")
        assert row["status"] == ("ReadyToPublish" if due else "ReadyToGenerate"), (when, row["error"])
    status = run_imagend(["-status"], base_env(db_url))
    assert status.returncode == 0, status.stderr[-2000:]
    assert json.loads(status.stdout)["queue"]


def test_healthz_says_failing_while_every_pass_fails(conn, make_settings, make_repo):
    settings = make_settings()
    run = InProcess(make_repo(settings), settings)
    daemon = run.daemon
    daemon.health = LoopHealth(60.0)

    def broken():
        raise RuntimeError("every pass fails")

    daemon.generator.run_once = broken
    try:
        for _ in range(3):
            daemon._run_pass(GENERATOR, broken)
        state = daemon.health.state()
        assert state["status"] == "failing" and "every pass fails" in state["error"]
        daemon._run_pass(GENERATOR, lambda: type(daemon.generator).run_once(daemon.generator))
        assert daemon.health.state()["status"] == "ok"
    finally:
        run.close()
