"""The schema: idempotent, upgrades the Go service's table in place, NOTIFY channels, status view."""

from __future__ import annotations

import json
from datetime import timedelta

import psycopg
import pytest
from psycopg.rows import dict_row

from imagend.db.connect import apply_schema, open_pool
from imagend.db.repository import Repository

from support.daemons import InProcess
from support.db import fetch_image, idle_daemon, insert_image

ANCESTOR_TABLE = """
CREATE TABLE images (
    id SERIAL PRIMARY KEY,
    prompt TEXT NOT NULL,
    uuid TEXT,
    status TEXT NOT NULL DEFAULT 'ReadyToGenerate',
    base64 TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
)
"""


def schema_objects(conn) -> dict[str, list]:
    return {
        "columns": conn.execute("""SELECT column_name, data_type, is_nullable, column_default
                                    FROM information_schema.columns WHERE table_name = 'images'
                                    ORDER BY column_name""").fetchall(),
        "indexes": conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'images' "
                                "ORDER BY indexname").fetchall(),
        "constraints": conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = 'images'::regclass "
                                    "ORDER BY conname").fetchall(),
        "triggers": conn.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'images'::regclass "
                                 "AND NOT tgisinternal ORDER BY tgname").fetchall(),
    }


def test_schema_is_idempotent(db_url, conn):
    image_id = insert_image(conn, "kept across re-application")
    before = schema_objects(conn)
    apply_schema(db_url)
    apply_schema(db_url)
    assert schema_objects(conn) == before
    assert fetch_image(conn, image_id)["prompt"] == "kept across re-application"
    names = {row["indexname"] for row in before["indexes"]}
    assert {"images_pkey", "images_ready_idx", "images_lease_idx"} <= names
    assert {row["tgname"] for row in before["triggers"]} == {
        "images_touch_updated_at", "images_inserted", "images_notify_done",
        "images_requeue_finished", "images_count_updated", "images_count_deleted",
        "images_count_truncated", "images_cancel_waiting", "images_wake_requeued", "images_wake_dependents",
        "images_refuse_chain_cycle",
        # Owners (schema_owners.sql)
        "images_owner_inserted", "images_owner_moved", "images_owner_deleted",
        "images_owners_truncated",
        # Webhooks' outbox (schema.sql)
        "images_webhook_enqueue",
        # Video rows (schema_video.sql)
        "images_video_scene_ended", "images_video_retried", "images_video_failed"}


def test_the_ancestors_table_is_upgraded_in_place(bare_db_url, make_settings):
    with psycopg.connect(bare_db_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(ANCESTOR_TABLE)
        conn.execute("""INSERT INTO images (prompt, status, base64, uuid) VALUES
            ('a beautiful sunset over mountains', 'ReadyToGenerate', NULL, NULL),
            ('a cat in a hat', 'ReadyToGenerate', NULL, NULL),
            ('published long ago', 'ReadyToPublish', 'iVBORw0KGgoOLD', 'task-1'),
            ('failed long ago', 'Failed', NULL, 'task-2'),
            ('in flight at Fusion Brain', 'Generate', NULL, 'task-3')""")
        before = {row["id"]: row for row in conn.execute("SELECT * FROM images ORDER BY id").fetchall()}

        apply_schema(bare_db_url)
        apply_schema(bare_db_url)  # and again: still idempotent on an upgraded table

        after = {row["id"]: row for row in conn.execute("SELECT * FROM images ORDER BY id").fetchall()}
        assert after.keys() == before.keys()
        for image_id, old in before.items():
            for column, value in old.items():
                if column != "updated_at":  # the upgrade's own UPDATE may touch it
                    assert after[image_id][column] == value, (image_id, column)
        # The ancestor's columns keep their types; the new ones are there.
        types = {r["column_name"]: r["data_type"] for r in conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'images'")}
        assert types["created_at"] == "timestamp without time zone"
        assert types["prompt"] == "text" and types["id"] == "integer"
        for column in ("negative_prompt", "style", "width", "height", "seed", "steps", "guidance", "backend",
                       "priority", "params", "run_after", "attempts", "max_attempts", "error", "progress",
                       "locked_by", "lease_until", "started_at", "finished_at", "generation_seconds", "output_path"):
            assert column in types, column
        # The Fusion Brain task in flight is marked for resumption by polling, not resubmission.
        in_flight = next(r for r in after.values() if r["uuid"] == "task-3")
        assert (in_flight["status"], in_flight["backend"]) == ("Generate", "fusionbrain")

        # A Go-service producer keeps inserting the way it always did.
        conn.execute("INSERT INTO images (prompt) VALUES ('inserted after the upgrade')")

        # The daemon processes the ancestor's waiting rows and the new one.
        settings = make_settings(DATABASE_URL=bare_db_url)
        pool = open_pool(bare_db_url, settings)
        repo = Repository(pool, "upgrader", lease_seconds=30, default_backend="placeholder", default_max_attempts=3)
        run = InProcess(repo, settings)
        try:
            assert run.generator.run_once().done == 3
            # The status view works over the ancestor's timestamp columns too.
            assert {r["status"] for r in repo.queue_status()} == {"ReadyToPublish", "Failed", "Generate"}
        finally:
            run.close()
            pool.close()
        statuses = {r["prompt"]: r["status"] for r in conn.execute("SELECT prompt, status FROM images")}
        assert statuses == {
            "a beautiful sunset over mountains": "ReadyToPublish",
            "a cat in a hat": "ReadyToPublish",
            "inserted after the upgrade": "ReadyToPublish",
            "published long ago": "ReadyToPublish",
            "failed long ago": "Failed",
            "in flight at Fusion Brain": "Generate",
        }


def test_an_insert_wakes_one_idle_daemon_per_row_on_its_hosts_channel(db_url, conn):
    """Issue 20: not a broadcast to every daemon; longest idle first; a busy fleet is signalled nothing."""
    a = idle_daemon(conn, "imagend_wake_host_a", idle_seconds=5)
    b = idle_daemon(conn, "imagend_wake_host_b", idle_seconds=1)
    idle_daemon(conn, "imagend_wake_host_c", idle=False)  # busy
    with psycopg.connect(db_url, autocommit=True) as listener:
        for channel in ("a", "b", "c"):
            listener.execute(f"LISTEN imagend_wake_host_{channel}")
        insert_image(conn, "wake up")
        assert [(n.channel, n.payload) for n in listener.notifies(timeout=2, stop_after=1)] == [
            ("imagend_wake_host_a", a)]
        conn.execute("INSERT INTO images (prompt) SELECT 'burst' FROM generate_series(1, 5)")
        woken = sorted((n.channel, n.payload) for n in listener.notifies(timeout=1, stop_after=2))
        assert woken == [("imagend_wake_host_b", b)]  # a was woken and has not claimed yet: b, the other idle one
        conn.execute("UPDATE imagend_daemons SET idle_since = NULL")
        insert_image(conn, "a busy fleet")
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []


def test_terminal_transitions_notify_imagend_done_with_id_and_status(db_url, conn, make_settings, make_repo):
    good = insert_image(conn, "good")
    bad = insert_image(conn, "bad", width=0)
    settings = make_settings()
    repo = make_repo(settings)
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN imagend_done")
        # Non-terminal changes stay silent: a claim, a retry, a release.
        retry = insert_image(conn, "retry")
        repo.claim_batch("placeholder", 1)  # takes `good` (lowest id)
        repo.release(None)
        [row] = [r for r in repo.claim_batch("placeholder", 10) if r.id == retry]
        repo.fail_attempt(row.claim, "transient", retryable=True, backoff_seconds=3600)
        repo.release(None)
        assert list(listener.notifies(timeout=0.3)) == []

        run = InProcess(repo, settings)
        run.generator.run_once()
        run.close()
        notes = list(listener.notifies(timeout=5, stop_after=2))
    assert {n.channel for n in notes} == {"imagend_done"}
    payloads = sorted((json.loads(n.payload) for n in notes), key=lambda p: p["id"])
    assert payloads == [{"id": good, "status": "ReadyToPublish"}, {"id": bad, "status": "Failed"}]
    assert row.id == retry


def test_queue_status_view(conn, make_settings, make_repo):
    conn.execute("""INSERT INTO images (prompt, status, backend, generation_seconds, created_at) VALUES
        ('w1', 'ReadyToGenerate', NULL, NULL, now() - interval '10 minutes'),
        ('w2', 'ReadyToGenerate', NULL, NULL, now() - interval '1 minute'),
        ('w3', 'ReadyToGenerate', 'local', NULL, now() - interval '3 minutes'),
        ('g1', 'Generate', 'fusionbrain', NULL, now()),
        ('d1', 'ReadyToPublish', 'placeholder', 2.0, now()),
        ('d2', 'ReadyToPublish', 'placeholder', 4.0, now()),
        ('d3', 'ReadyToPublish', 'local', 30.0, now()),
        ('f1', 'Failed', 'placeholder', NULL, now())""")
    conn.execute("UPDATE images SET run_after = created_at")  # each due since it was created
    rows = make_repo(make_settings()).queue_status()
    view = {(r["status"], r["backend"]): r for r in rows}
    assert {k: r["rows"] for k, r in view.items()} == {
        ("ReadyToGenerate", None): 2, ("ReadyToGenerate", "local"): 1, ("Generate", "fusionbrain"): 1,
        ("ReadyToPublish", "placeholder"): 2, ("ReadyToPublish", "local"): 1, ("Failed", "placeholder"): 1}
    oldest = view[("ReadyToGenerate", None)]["oldest_waiting"]
    assert timedelta(minutes=10) <= oldest < timedelta(minutes=11)
    assert view[("ReadyToGenerate", "local")]["oldest_waiting"] >= timedelta(minutes=3)
    assert view[("ReadyToPublish", "placeholder")]["oldest_waiting"] is None
    assert view[("ReadyToPublish", "placeholder")]["avg_generation_seconds"] == pytest.approx(3.0)
    assert view[("ReadyToPublish", "local")]["avg_generation_seconds"] == pytest.approx(30.0)


def test_updated_at_is_maintained_by_a_trigger(conn):
    image_id = insert_image(conn, "touch", created_at="2001-01-01T00:00:00Z", updated_at="2001-01-01T00:00:00Z")
    conn.execute("UPDATE images SET priority = 3 WHERE id = %s", [image_id])
    row = fetch_image(conn, image_id)
    assert row["updated_at"] > row["created_at"] + timedelta(days=365)
