"""Hardening III, item 6: producer-written backend names never become unbounded labels or lines:
10,000 rows with distinct unknown backends give one `unknown` series in /metrics' queue gauges and
one line per status in `imagend -status`, read with grouped queries (not one per line)."""

from __future__ import annotations

import json
import time

from prometheus_client import CollectorRegistry, generate_latest

from imagend.db.operations import UNKNOWN_BACKEND, OperationsRepository
from imagend.operations.metrics import QueueCollector

from support.daemons import run_imagend
from support.db import base_env, insert_image

ROWS = 10_000


def test_unknown_backends_fold_into_one_label(conn, make_settings, make_repo, db_url):
    conn.execute("INSERT INTO images (prompt, backend) SELECT 'x', 'made-up-' || n FROM generate_series(1, %s) AS n",
                 [ROWS])
    insert_image(conn, "a known one", backend="placeholder")
    conn.execute("ANALYZE images")
    repo = make_repo(make_settings())
    registry = CollectorRegistry()
    registry.register(QueueCollector(OperationsRepository(repo.pool, dead_after_seconds=10), "placeholder"))
    text = generate_latest(registry).decode()
    series = [line for line in text.splitlines() if line.startswith("imagend_queue_rows{")]
    assert len(series) == 2, series
    assert f'imagend_queue_rows{{backend="{UNKNOWN_BACKEND}",status="ReadyToGenerate"}} {ROWS}.0' in text
    assert len(text) < 10_000
    started = time.monotonic()
    status = run_imagend(["-status"], base_env(db_url))
    took = time.monotonic() - started
    assert status.returncode == 0, status.stderr[-2000:]
    lines = json.loads(status.stdout)["queue"]
    assert {(line["backend"], line["rows"]) for line in lines} == {("placeholder", 1), (UNKNOWN_BACKEND, ROWS)}
    assert took < 15, took  # a subquery per line took 4-21 s; the CLI's own start is most of this
