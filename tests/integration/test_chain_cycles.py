"""Hardening III, item 3: chained rows in a cycle fail with an error that names the cycle instead of
waiting forever; a chained row says which row it waits for; a finishing write wakes the daemons only
when a waiting row's source ended."""

from __future__ import annotations

import psycopg

from imagend.db.operations import OperationsRepository
from imagend.db.rows import Claim, Finished

from support.daemons import InProcess
from support.db import fetch_image, idle_daemon, insert_image


def test_a_cycle_closed_by_insert_fails_every_row_naming_it(conn, make_settings, make_repo):
    start = conn.execute("SELECT nextval('images_id_seq') AS n").fetchone()["n"] + 10
    a, b, c = start, start + 1, start + 2
    conn.execute("INSERT INTO images (id, prompt, init_image_id) VALUES (%s, 'a', %s), (%s, 'b', %s), (%s, 'c', %s)",
                 [a, c, b, a, c, b])
    closing = fetch_image(conn, c)
    assert closing["status"] == "Failed"
    assert closing["error"].startswith(f"chained rows form a cycle: {c} -> {b} -> {a} -> {c}")
    settings = make_settings()
    run = InProcess(make_repo(settings), settings)
    try:
        for _ in range(3):
            run.generator.run_once()
    finally:
        run.close()
    for image_id in (a, b):
        row = fetch_image(conn, image_id)
        assert row["status"] == "Failed"
        assert "chained rows form a cycle" in row["error"] or "failed (" in row["error"], row["error"]
    assert "cycle" in fetch_image(conn, a)["error"]


def test_a_cycle_closed_by_update_fails_at_once(conn):
    a = insert_image(conn, "a")
    b = insert_image(conn, "b", init_image_id=a)
    conn.execute("UPDATE images SET init_image_id = %s WHERE id = %s", [b, a])
    assert fetch_image(conn, a)["status"] == "Failed"
    assert "cycle" in fetch_image(conn, a)["error"]
    assert fetch_image(conn, b)["status"] == "ReadyToGenerate"  # fails at its claim: its source failed
    c = insert_image(conn, "c", reference_image_id=b)  # a plain chain: no cycle
    assert fetch_image(conn, c)["status"] == "ReadyToGenerate"


def test_a_chained_row_says_what_it_waits_for(conn, make_settings, make_repo):
    source = insert_image(conn, "the source", priority=-5)
    chained = insert_image(conn, "waits for it", init_image_id=source)
    repo = make_repo(make_settings())
    row = OperationsRepository(repo.pool, dead_after_seconds=10).get(chained)
    assert row is not None and row["waiting_for"] == source and row["estimated_start"] is None


def test_finishing_an_unrelated_row_wakes_nobody(conn, db_url):
    source = insert_image(conn, "far back in the queue")
    insert_image(conn, "waits for it", init_image_id=source)
    unrelated = insert_image(conn, "unrelated")
    idle_daemon(conn, "imagend_wake_chains")
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN imagend_wake_chains")
        conn.execute("UPDATE images SET status = 'Generate' WHERE id = %s", [unrelated])
        conn.execute("UPDATE images SET status = 'ReadyToPublish' WHERE id = %s", [unrelated])
        assert list(listener.notifies(timeout=0.3, stop_after=1)) == []
        conn.execute("UPDATE images SET status = 'Failed' WHERE id = %s", [source])
        assert len(list(listener.notifies(timeout=2, stop_after=1))) == 1


def test_the_finishing_write_wakes_a_daemon_for_each_chained_row_once(conn, db_url, make_settings, make_repo):
    """images_mark_done wakes its rows' chained rows in one probe per batch (the row trigger stands aside
    for it): one NOTIFY naming one idle daemon for the one waiting row, none for the unrelated row."""
    repo = make_repo(make_settings())
    source = insert_image(conn, "the source")
    unrelated = insert_image(conn, "unrelated")
    claimed = {row.id: row for row in repo.claim_batch("placeholder", 10)}
    assert set(claimed) == {source, unrelated}
    insert_image(conn, "waits for it", init_image_id=source)
    idle_daemon(conn, "imagend_wake_finish")
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN imagend_wake_finish")
        done = repo.mark_done([Finished(Claim(i, claimed[i].attempt), base64="iVBORw0KGgo=", seed=1, output_path=None,
                                        generation_seconds=0.1) for i in (source, unrelated)])
        assert done == {source, unrelated}
        notes = list(listener.notifies(timeout=1, stop_after=2))
    assert len(notes) == 1 and len(notes[0].payload.split()) == 1, [n.payload for n in notes]
