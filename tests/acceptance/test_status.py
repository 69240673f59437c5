"""`imagend -status`: the queue status view as JSON a machine can read."""

from __future__ import annotations

import json

from support.daemons import run_imagend
from support.db import base_env, insert_image


def test_status_gives_ages_and_times_in_seconds_as_numbers(db_url, conn):
    insert_image(conn, "waiting for a minute and a half")
    conn.execute("UPDATE images SET created_at = now() - interval '90 seconds'")
    insert_image(conn, "done", status="ReadyToPublish", generation_seconds=1.5)
    insert_image(conn, "done too", status="ReadyToPublish", generation_seconds=2.5)
    result = run_imagend(["-status"], base_env(db_url))
    assert result.returncode == 0, result.stderr
    lines = {(line["status"], line["backend"]): line for line in json.loads(result.stdout)}
    waiting = lines[("ReadyToGenerate", None)]
    assert isinstance(waiting["oldest_waiting_seconds"], float)
    assert 85 <= waiting["oldest_waiting_seconds"] < 600
    assert "oldest_waiting" not in waiting  # no Python timedelta text ("0:01:30.0412")
    finished = lines[("ReadyToPublish", None)]
    assert finished["avg_generation_seconds"] == 2.0
    assert finished["oldest_waiting_seconds"] is None
