"""Retention (IMAGEND_RETENTION_*): each policy removes only old terminal rows, in batches; rows in
flight and young rows are untouched; base64 goes only where a stored copy exists; objects go with their
rows only when IMAGEND_RETENTION_DELETE_OBJECTS=true."""

from __future__ import annotations

import json

from imagend.maintenance import retention
from imagend.maintenance.retention import Retention

from support.daemons import InProcess, run_imagend
from support.db import base_env, fetch_image, insert_image

OLD, YOUNG = "2 hours", "10 minutes"


def finished(conn, status: str, age: str, **columns) -> int:
    image_id = insert_image(conn, f"{status} {age}", **columns)
    conn.execute(
        "UPDATE images SET status = %s, finished_at = now() - %s::interval WHERE id = %s", [status, age, image_id]
    )
    return image_id


def remaining(conn) -> set[int]:
    return {row["id"] for row in conn.execute("SELECT id FROM images").fetchall()}


def retention_for(make_settings, make_repo, **env) -> Retention:
    settings = make_settings(**env)
    repo = make_repo(settings)
    retention.prepare(repo, settings.retention)
    from imagend.storage import open_store

    store = open_store(settings.storage, settings.env.values) if settings.storage else None
    return Retention(repo, settings.retention, store)


def test_each_policy_deletes_only_old_rows_of_its_status_and_never_rows_in_flight(conn, make_settings, make_repo):
    old_failed, young_failed = finished(conn, "Failed", OLD), finished(conn, "Failed", YOUNG)
    old_done, young_done = finished(conn, "ReadyToPublish", OLD), finished(conn, "ReadyToPublish", YOUNG)
    # In flight or waiting, with a finished_at from an earlier life (a producer put them back): never touched.
    in_flight = finished(conn, "Generate", OLD)
    waiting = finished(conn, "ReadyToGenerate", OLD)
    conn.execute("UPDATE images SET finished_at = now() - interval '1 day' WHERE id = ANY(%s)", [[in_flight, waiting]])

    only_failed = retention_for(make_settings, make_repo, IMAGEND_RETENTION_FAILED="1h").run_once()
    assert (only_failed.failed_deleted, only_failed.done_deleted) == (1, 0)
    assert remaining(conn) == {young_failed, old_done, young_done, in_flight, waiting}

    both = retention_for(make_settings, make_repo, IMAGEND_RETENTION_FAILED="1h", IMAGEND_RETENTION_DONE="1h")
    counts = both.run_once()
    assert (counts.failed_deleted, counts.done_deleted, counts.more) == (0, 1, False)
    assert remaining(conn) == {young_failed, young_done, in_flight, waiting}
    assert old_failed not in remaining(conn)


def test_days_and_batches(conn, make_settings, make_repo, monkeypatch):
    conn.execute("INSERT INTO images (prompt, status, finished_at) "
                 "SELECT 'old ' || n, 'Failed', now() - interval '31 days' FROM generate_series(1, 25) AS n")
    young = finished(conn, "Failed", "29 days")
    monkeypatch.setattr(retention, "BATCH_ROWS", 10)
    monkeypatch.setattr(retention, "MAX_BATCHES_PER_PASS", 2)
    policy = retention_for(make_settings, make_repo, IMAGEND_RETENTION_FAILED="30d")
    first = policy.run_once()
    assert (first.failed_deleted, first.more) == (20, True)  # two statements of 10, then the pass yields
    assert policy.due()
    second = policy.run_once()
    assert (second.failed_deleted, second.more) == (5, False)
    assert not policy.due()  # nothing left: the next look is RETENTION_LOOK_AGAIN_SECONDS (or half an age) away
    assert remaining(conn) == {young}


def test_base64_is_dropped_only_where_a_stored_copy_exists(conn, make_settings, make_repo, tmp_path):
    stored_old = finished(conn, "ReadyToPublish", OLD, base64="AAAA", output_url="file:///x/1.png")
    stored_young = finished(conn, "ReadyToPublish", YOUNG, base64="AAAA", output_url="file:///x/2.png")
    unstored_old = finished(conn, "ReadyToPublish", OLD, base64="AAAA")
    counts = retention_for(make_settings, make_repo, IMAGEND_STORAGE_URL=(tmp_path / "images").as_uri(),
                           IMAGEND_RETENTION_BASE64="1h").run_once()
    assert counts.base64_dropped == 1
    assert fetch_image(conn, stored_old)["base64"] is None
    assert fetch_image(conn, stored_old)["status"] == "ReadyToPublish"
    assert fetch_image(conn, stored_young)["base64"] == "AAAA"
    assert fetch_image(conn, unstored_old)["base64"] == "AAAA"


def test_objects_go_with_their_rows_only_when_asked(conn, make_settings, make_repo, s3_server, s3_bucket):
    env = s3_server.env(s3_bucket, "r", IMAGEND_THUMBNAIL="16")
    settings = make_settings(**env)
    run = InProcess(make_repo(settings), settings)
    ids = [insert_image(conn, f"stored {n}") for n in range(4)]
    try:
        assert run.generator.run_once().done == 4
    finally:
        run.close()
    assert len(s3_server.keys(s3_bucket)) == 8  # image and thumbnail each
    conn.execute("UPDATE images SET finished_at = now() - interval '2 hours' WHERE id = ANY(%s)", [ids[:2]])

    kept = retention_for(make_settings, make_repo, **env, IMAGEND_RETENTION_DONE="1h").run_once()
    assert (kept.done_deleted, kept.objects_deleted) == (2, 0)
    assert len(s3_server.keys(s3_bucket)) == 8

    conn.execute("UPDATE images SET finished_at = now() - interval '2 hours' WHERE id = ANY(%s)", [ids[2:3]])
    gone = retention_for(make_settings, make_repo, **env, IMAGEND_RETENTION_DONE="1h",
                         IMAGEND_RETENTION_DELETE_OBJECTS="true").run_once()
    assert (gone.done_deleted, gone.objects_deleted) == (1, 2)
    assert s3_server.keys(s3_bucket) == {key for key in s3_server.keys(s3_bucket) if f"/{ids[2]}." not in key}
    assert len(s3_server.keys(s3_bucket)) == 6
    assert remaining(conn) == {ids[3]}


def test_the_processor_pass_runs_retention(conn, make_settings, make_repo, db_url):
    old = finished(conn, "Failed", OLD)
    young = finished(conn, "Failed", YOUNG)
    result = run_imagend(["-processor"], base_env(db_url, IMAGEND_RETENTION_FAILED="1h"))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(line["event"] == "retention_pass" and line["failed_deleted"] == 1 for line in lines), result.stderr
    assert remaining(conn) == {young}
    assert old not in remaining(conn)
    indexes = {row["indexname"] for row in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'images'")}
    assert "images_finished_idx" in indexes


def test_bad_ages_stop_the_start_naming_the_variable(db_url):
    result = run_imagend(["-processor"], base_env(db_url, IMAGEND_RETENTION_DONE="30 days"))
    assert result.returncode == 2
    assert "IMAGEND_RETENTION_DONE='30 days' is not an age" in result.stderr
    result = run_imagend(["-processor"], base_env(db_url, IMAGEND_RETENTION_BASE64="1h"))
    assert result.returncode == 2
    assert "IMAGEND_RETENTION_BASE64 needs IMAGEND_STORAGE_URL" in result.stderr


def test_retention_is_counted_in_the_metrics(conn, make_settings, make_repo):
    finished(conn, "Failed", OLD)
    finished(conn, "ReadyToPublish", OLD)
    settings = make_settings(IMAGEND_RETENTION_FAILED="1h", IMAGEND_RETENTION_DONE="1h")
    repo = make_repo(settings)
    retention.prepare(repo, settings.retention)
    run = InProcess(repo, settings)
    try:
        counts = run.processor.run_once()
    finally:
        run.close()
    assert counts.expired == 2
    registry = run.processor.outcomes.metrics.registry
    for what in ("failed_deleted", "done_deleted"):
        assert registry.get_sample_value("imagend_retention_total", {"what": what}) == 1
    assert remaining(conn) == set()


def test_with_no_storage_target_a_videos_folder_is_cleared_with_its_rows(conn, make_settings, make_repo, tmp_path):
    """No IMAGEND_STORAGE_URL: videos live in IMAGEND_VIDEO_DIR; the processor's retention deletes an expired
    video's MP4 and poster there, and only with IMAGEND_RETENTION_DELETE_OBJECTS=true."""
    from imagend.queue.videos import default_video_store

    folder = tmp_path / "videos"
    default_video_store(folder)  # makes the folder, as the first video does
    urls = {}
    for name in ("old", "young"):
        (folder / f"{name}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
        (folder / f"{name}.poster.jpg").write_bytes(b"\xff\xd8\xff")
        urls[name] = ((folder / f"{name}.mp4").resolve().as_uri(), (folder / f"{name}.poster.jpg").resolve().as_uri())
    old = finished(conn, "ReadyToPublish", OLD, task="video", output_url=urls["old"][0], thumbnail_url=urls["old"][1])
    young = finished(conn, "ReadyToPublish", YOUNG, task="video", output_url=urls["young"][0],
                     thumbnail_url=urls["young"][1])
    settings = make_settings(IMAGEND_RETENTION_DONE="1h", IMAGEND_RETENTION_DELETE_OBJECTS="true",
                             IMAGEND_VIDEO_DIR=str(folder))
    run = InProcess(make_repo(settings), settings)
    try:
        counts = run.processor.retention.run_once()
    finally:
        run.close()
    assert (counts.done_deleted, counts.objects_deleted) == (1, 2)
    assert remaining(conn) >= {young} and old not in remaining(conn)
    assert sorted(p.name for p in folder.iterdir()) == ["young.mp4", "young.poster.jpg"]
