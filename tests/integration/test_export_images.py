"""`imagend -export-images`: finished rows whose image lives only in base64 go to the storage target,
batch by batch; an interrupted export resumes where it stopped; rows in flight are left alone; with
IMAGEND_STORE_BASE64=false the base64 is cleared."""

from __future__ import annotations

import base64
import json

from imagend.maintenance.export import export_images
from imagend.storage import StoreUnavailable, open_store

from support.daemons import InProcess, run_imagend
from support.db import base_env, fetch_image, insert_image
from support.s3 import MotoServer


def finish_without_storage(conn, make_settings, make_repo, count: int) -> list[int]:
    ids = [insert_image(conn, f"made before storage {n}", format="webp" if n == 0 else None) for n in range(count)]
    settings = make_settings()
    run = InProcess(make_repo(settings), settings)
    try:
        assert run.generator.run_once().done == count
    finally:
        run.close()
    return ids


def test_an_interrupted_export_resumes_and_leaves_rows_in_flight_alone(conn, make_settings, make_repo, s3_server,
                                                                         s3_bucket):
    ids = finish_without_storage(conn, make_settings, make_repo, 5)
    in_flight = insert_image(conn, "being generated", status="Generate", base64="AAAA")
    failed = insert_image(conn, "failed", status="Failed")
    settings = make_settings(**s3_server.env(s3_bucket, "old"))
    repo = make_repo(settings)
    store = open_store(settings.storage, settings.env.values)

    first = export_images(repo, store, keep_base64=True, batch_rows=2, max_batches=1)  # interrupted after one batch
    assert (first.exported, first.batches) == (2, 1)
    assert [fetch_image(conn, i)["output_url"] is not None for i in ids] == [True, True, False, False, False]

    rest = export_images(repo, store, keep_base64=True, batch_rows=2)
    assert rest.exported == 3
    for image_id in ids:
        row = fetch_image(conn, image_id)
        data, content_type = s3_server.get(row["output_url"])
        assert data == base64.b64decode(row["base64"])  # kept: IMAGEND_STORE_BASE64 is true
        assert content_type == f"image/{row['format']}"
        assert row["output_url"] == f"s3://{s3_bucket}/old/{image_id}.{row['format']}"
    assert fetch_image(conn, ids[0])["format"] == "webp"
    assert fetch_image(conn, in_flight)["output_url"] is None
    assert fetch_image(conn, failed)["output_url"] is None
    assert export_images(repo, store, keep_base64=True).exported == 0  # nothing left to do


def test_the_cli_exports_and_clears_base64_when_told_to(conn, make_settings, make_repo, db_url, s3_server, s3_bucket):
    ids = finish_without_storage(conn, make_settings, make_repo, 3)
    images = {image_id: base64.b64decode(fetch_image(conn, image_id)["base64"]) for image_id in ids}
    env = base_env(db_url, **s3_server.env(s3_bucket, "", IMAGEND_STORE_BASE64="false"))
    result = run_imagend(["-export-images"], env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["exported"] == 3
    for image_id, data in images.items():
        row = fetch_image(conn, image_id)
        assert row["base64"] is None
        assert s3_server.get(row["output_url"])[0] == data
    again = run_imagend(["-export-images"], env)
    assert json.loads(again.stdout)["exported"] == 0


def test_export_needs_a_storage_target(db_url):
    result = run_imagend(["-export-images"], base_env(db_url))
    assert result.returncode == 2
    assert "-export-images needs IMAGEND_STORAGE_URL" in result.stderr


def test_an_export_the_store_stops_exits_1_and_a_new_run_resumes(conn, make_settings, make_repo, db_url):
    ids = finish_without_storage(conn, make_settings, make_repo, 3)
    with MotoServer() as server:
        bucket = server.create_bucket("imagend-export-away")
        env = base_env(db_url, **server.env(bucket))
        server.stop()
        stopped = run_imagend(["-export-images"], env)
        assert stopped.returncode == 2  # the start's check: the store cannot be reached
        assert "cannot reach the store" in stopped.stderr
        server.start()
        server.create_bucket(bucket)
        settings = make_settings(**server.env(bucket))
        store = open_store(settings.storage, settings.env.values)
        repo = make_repo(settings)
        export_images(repo, store, keep_base64=True, batch_rows=1, max_batches=1)
        server.stop()  # goes away mid-export: the rows it could not write stay as they were
        try:
            export_images(repo, store, keep_base64=True, batch_rows=1)
        except StoreUnavailable as exc:
            assert f"s3://{bucket}/images" in str(exc)
        else:
            raise AssertionError("the export went on without its store")
        assert [fetch_image(conn, i)["output_url"] is not None for i in ids] == [True, False, False]
        server.start()
        server.create_bucket(bucket)
        resumed = run_imagend(["-export-images"], env)
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["exported"] == 2
        for image_id in ids[1:]:
            row = fetch_image(conn, image_id)
            assert server.get(row["output_url"])[0] == base64.b64decode(row["base64"])
