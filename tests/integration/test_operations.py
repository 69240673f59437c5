"""Operations against a real Postgres: the exact queue counts (statement triggers), pause and
resume (the claim reads the pause), imagend_position(), and `imagend -status` / `-pause` /
`-resume` as a user runs them."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from imagend.db.operations import OperationsRepository
from imagend.db.rows import Claim, Finished

from support.daemons import InProcess, run_imagend
from support.db import base_env, idle_daemon, insert_image


def counts(conn: Any) -> dict[tuple[str, str | None], int]:
    rows = conn.execute("SELECT status, backend, rows FROM imagend_queue_counts()").fetchall()
    return {(r["status"], r["backend"]): int(r["rows"]) for r in rows}


def truth(conn: Any) -> dict[tuple[str, str | None], int]:
    rows = conn.execute("SELECT status, backend, count(*) AS n FROM images GROUP BY 1, 2").fetchall()
    return {(r["status"], r["backend"]): int(r["n"]) for r in rows}


def test_queue_counts_follow_every_kind_of_write(conn, make_settings, make_repo):
    repo = make_repo(make_settings())
    for n in range(5):
        insert_image(conn, f"waiting {n}")
    insert_image(conn, "for local", backend="local")
    insert_image(conn, "finished already", status="ReadyToPublish", backend="placeholder")
    assert counts(conn) == truth(conn) == {("ReadyToGenerate", None): 5, ("ReadyToGenerate", "local"): 1,
                                           ("ReadyToPublish", "placeholder"): 1}
    claimed = repo.claim_batch("placeholder", 3)  # NULL backend filled in at the claim
    assert counts(conn) == truth(conn)
    assert counts(conn)[("Generate", "placeholder")] == 3
    repo.mark_done([Finished(Claim(claimed[0].id, claimed[0].attempt), base64="iVBORw0KGgo=", seed=1,
                             output_path=None, generation_seconds=0.5)])
    repo.fail_attempt(Claim(claimed[1].id, claimed[1].attempt), "bad", retryable=False, backoff_seconds=0)
    repo.extend_lease([claimed[2].id], 0.5)  # no status change: nothing to count
    assert counts(conn) == truth(conn)
    # A producer's retry, a delete, an UPDATE of many rows at once.
    conn.execute("UPDATE images SET status = 'ReadyToGenerate' WHERE id = %s", [claimed[1].id])
    conn.execute("DELETE FROM images WHERE id = %s", [claimed[0].id])
    conn.execute("UPDATE images SET backend = 'fusionbrain' WHERE status = 'ReadyToGenerate' AND backend IS NULL")
    assert counts(conn) == truth(conn)
    conn.execute("TRUNCATE images")
    assert counts(conn) == truth(conn) == {}


def test_queue_counts_fold_their_changes_and_stay_exact(conn):
    conn.execute("INSERT INTO images (prompt) SELECT 'p' || g FROM generate_series(1, 1500) g")
    for n in range(1200):  # one change row per statement
        insert_image(conn, f"single {n}")
    assert conn.execute("SELECT count(*) AS n FROM imagend_queue_changes").fetchone()["n"] >= 1000
    assert counts(conn) == truth(conn) == {("ReadyToGenerate", None): 2700}
    # That read folded the changes into the totals (it found more than 1,000).
    assert conn.execute("SELECT count(*) AS n FROM imagend_queue_changes").fetchone()["n"] == 0
    conn.execute("UPDATE images SET status = 'Failed' WHERE id % 3 = 0")
    assert counts(conn) == truth(conn)


def test_a_processor_pass_folds_the_changes_when_nobody_reads_the_counts(conn, make_settings, make_repo):
    settings = make_settings()
    repo = make_repo(settings)
    for n in range(1100):  # one change row per statement
        insert_image(conn, f"single {n}")
    daemon = InProcess(repo, settings)
    try:
        daemon.processor.run_once()
    finally:
        daemon.close()
    assert conn.execute("SELECT count(*) AS n FROM imagend_queue_changes").fetchone()["n"] == 0
    assert counts(conn) == truth(conn) == {("ReadyToGenerate", None): 1100}


def test_the_status_view_reads_the_counts_not_the_table(conn):
    conn.execute("INSERT INTO images (prompt, status, generation_seconds) "
                 "SELECT 'old', 'ReadyToPublish', 9 FROM generate_series(1, 20000)")
    for n in range(3):
        insert_image(conn, f"done {n}", status="ReadyToPublish", generation_seconds=float(n + 1))
    conn.execute("ANALYZE images")
    plan = conn.execute("EXPLAIN SELECT * FROM images_queue_status").fetchall()
    text = "\n".join(row["QUERY PLAN"] for row in plan)
    assert "Seq Scan on images" not in text, text
    [line] = conn.execute("SELECT * FROM images_queue_status").fetchall()
    assert (line["status"], line["rows"]) == ("ReadyToPublish", 20003)
    # The mean of the newest 1,000 finished rows: 997 x 9 s and 1 + 2 + 3 s.
    assert line["avg_generation_seconds"] == pytest.approx((997 * 9 + 6) / 1000)


def test_a_paused_backend_is_not_claimed_until_resumed(conn, db_url, make_settings, make_repo):
    repo = make_repo(make_settings())
    ops = OperationsRepository(repo.pool, dead_after_seconds=10)
    insert_image(conn, "waits out the pause")
    ops.pause(["placeholder"], by="test")
    assert repo.claim_batch("placeholder", 10) == []
    ops.resume(["local"])  # another backend's resume lifts nothing here
    assert repo.claim_batch("placeholder", 10) == []
    idle_daemon(conn, "imagend_wake_resumed")
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN imagend_wake_resumed")
        assert ops.resume(["placeholder"]) == ["placeholder"]
        assert [n.channel for n in listener.notifies(timeout=2, stop_after=1)] == ["imagend_wake_resumed"]  # woken
    assert len(repo.claim_batch("placeholder", 10)) == 1


def test_pausing_everything_pauses_every_backend(conn, make_settings, make_repo):
    repo = make_repo(make_settings())
    ops = OperationsRepository(repo.pool, dead_after_seconds=10)
    insert_image(conn, "one")
    ops.pause([], by="test")
    assert [p.backend for p in ops.paused()] == ["*"]
    assert repo.claim_batch("placeholder", 10) == []
    ops.resume([])
    assert ops.paused() == []
    assert len(repo.claim_batch("placeholder", 10)) == 1


def test_position_counts_the_rows_claimed_before_it(conn):
    first = insert_image(conn, "first")
    second = insert_image(conn, "second")
    urgent = insert_image(conn, "urgent", priority=5)
    insert_image(conn, "another backend's", backend="local")
    for n in range(4):  # recent pace: 2 s an image
        insert_image(conn, f"done {n}", status="ReadyToPublish", generation_seconds=2.0)

    def position(image_id: int) -> dict[str, Any]:
        return conn.execute("SELECT ahead, extract(epoch FROM estimated_start - now()) AS wait "
                            "FROM imagend_position(%s)", [image_id]).fetchone()

    assert position(urgent)["ahead"] == 0
    assert position(first)["ahead"] == 1
    later = position(second)
    assert later["ahead"] == 2
    assert float(later["wait"]) == pytest.approx(4.0, abs=0.5)  # 2 ahead x 2 s
    conn.execute("UPDATE images SET status = 'Generate' WHERE id = %s", [first])
    assert conn.execute("SELECT * FROM imagend_position(%s)", [first]).fetchall() == []  # not waiting


def test_position_estimates_from_the_recent_pace(conn):
    for n in range(4):
        insert_image(conn, f"done {n}", status="ReadyToPublish", generation_seconds=3.0, backend="local")
    ids = [insert_image(conn, f"waiting {n}", backend="local") for n in range(3)]
    row = conn.execute("SELECT ahead, extract(epoch FROM estimated_start - now()) AS wait "
                       "FROM imagend_position(%s)", [ids[2]]).fetchone()
    assert row["ahead"] == 2
    assert float(row["wait"]) == pytest.approx(6.0, abs=0.5)  # 2 ahead x 3 s, one daemon at most


def test_the_cli_pauses_resumes_and_shows_it_in_status(db_url, conn):
    env = base_env(db_url)
    paused = run_imagend(["-pause", "placeholder"], env)
    assert paused.returncode == 0, paused.stderr
    assert json.loads(paused.stdout) == {"paused": ["placeholder"]}
    image_id = insert_image(conn, "stays waiting")
    assert run_imagend(["-generator"], env).returncode == 0
    assert conn.execute("SELECT status FROM images WHERE id = %s", [image_id]).fetchone()["status"] == \
        "ReadyToGenerate"
    conn.execute("INSERT INTO imagend_daemons (owner, host, pid, version, backends) "
                 "VALUES ('gpu1:7:abc', 'gpu1', 7, '0.1.0', '{placeholder}')")
    status = json.loads(run_imagend(["-status"], env).stdout)
    assert [p["backend"] for p in status["paused"]] == ["placeholder"]
    [daemon] = status["daemons"]
    assert (daemon["host"], daemon["pid"], daemon["backends"], daemon["paused"]) == ("gpu1", 7, ["placeholder"], True)
    resumed = run_imagend(["-resume"], env)
    assert json.loads(resumed.stdout) == {"paused": []}
    assert run_imagend(["-generator"], env).returncode == 0
    assert conn.execute("SELECT status FROM images WHERE id = %s", [image_id]).fetchone()["status"] == \
        "ReadyToPublish"


def test_the_cli_refuses_an_unknown_backend_to_pause(db_url):
    result = run_imagend(["-pause", "dalle"], base_env(db_url))
    assert result.returncode == 2
    assert "unknown backend 'dalle'" in result.stderr
