"""Storage targets against a real S3-protocol server (moto on 127.0.0.1, see support/s3.py): images stored
before their row finishes, read back over HTTP; thumbnails; formats with their parameters; base64 off; a
store that goes away mid-run; a missing bucket and bad credentials at start."""

from __future__ import annotations

import base64
import io

import piexif
import piexif.helper
from PIL import Image as PILImage

from imagend.backends.placeholder import PlaceholderBackend
from imagend.images.formats import read_parameters

from support.daemons import InProcess, run_imagend
from support.db import base_env, fetch_image, insert_image
from support.fusionbrain import drive, fake_server, rig
from support.s3 import MotoServer


def run_generator(make_settings, make_repo, **env):
    settings = make_settings(**env)
    run = InProcess(make_repo(settings), settings)
    try:
        return run.generator.run_once()
    finally:
        run.close()


def a1111_user_comment(data: bytes) -> str:
    """The parameters as A1111 reads a JPEG or WebP back (piexif, its own reader)."""
    with PILImage.open(io.BytesIO(data)) as image:
        exif = piexif.load(image.info["exif"])
    return piexif.helper.UserComment.load(exif["Exif"][piexif.ExifIFD.UserComment])


def test_an_image_is_stored_before_its_row_finishes_and_reads_back(conn, make_settings, make_repo, s3_server,
                                                                   s3_bucket):
    image_id = insert_image(conn, "a lighthouse in a storm", seed=7, format="png")
    assert run_generator(make_settings, make_repo, **s3_server.env(s3_bucket, "gallery/2026")).done == 1
    row = fetch_image(conn, image_id)
    assert row["status"] == "ReadyToPublish"
    assert row["output_url"] == f"s3://{s3_bucket}/gallery/2026/{image_id}.png"
    assert row["format"] == "png"
    data, content_type = s3_server.get(row["output_url"])
    assert content_type == "image/png"
    assert base64.b64decode(row["base64"]) == data  # IMAGEND_STORE_BASE64 is true by default
    assert read_parameters(data).startswith("a lighthouse in a storm\nSeed: 7")
    assert s3_server.keys(s3_bucket) == {f"gallery/2026/{image_id}.png"}  # the start's write probe is gone


def test_base64_off_leaves_the_image_in_storage_only(conn, make_settings, make_repo, s3_server, s3_bucket):
    image_id = insert_image(conn, "only in the bucket")
    run_generator(make_settings, make_repo, **s3_server.env(s3_bucket, IMAGEND_STORE_BASE64="false"))
    row = fetch_image(conn, image_id)
    assert (row["status"], row["base64"]) == ("ReadyToPublish", None)
    data, _ = s3_server.get(row["output_url"])
    assert data.startswith(b"\x89PNG")


def test_a_thumbnail_is_stored_beside_the_image(conn, make_settings, make_repo, s3_server, s3_bucket):
    image_id = insert_image(conn, "a thumbnail for the list page")
    run_generator(make_settings, make_repo, **s3_server.env(s3_bucket, "p", IMAGEND_THUMBNAIL="16"))
    row = fetch_image(conn, image_id)
    assert row["thumbnail_url"] == f"s3://{s3_bucket}/p/{image_id}.thumb.webp"
    assert row["thumbnail"] is None
    data, content_type = s3_server.get(row["thumbnail_url"])
    assert content_type == "image/webp"
    with PILImage.open(io.BytesIO(data)) as thumb:
        assert thumb.format == "WEBP" and max(thumb.size) <= 16


def test_without_a_storage_target_the_thumbnail_is_base64_in_the_row(conn, make_settings, make_repo):
    image_id = insert_image(conn, "a thumbnail in the row")
    run_generator(make_settings, make_repo, IMAGEND_THUMBNAIL="16")
    row = fetch_image(conn, image_id)
    assert (row["thumbnail_url"], row["output_url"]) == (None, None)
    with PILImage.open(io.BytesIO(base64.b64decode(row["thumbnail"]))) as thumb:
        assert thumb.format == "WEBP" and max(thumb.size) <= 16


def test_formats_and_quality_with_their_parameters(conn, make_settings, make_repo, s3_server, s3_bucket):
    ids = {
        "png": insert_image(conn, "a fox, png", seed=1, negative_prompt="blurry", format="png"),
        "webp": insert_image(conn, "a fox, webp", seed=2, negative_prompt="blurry", format="webp", quality=60),
        "jpeg": insert_image(conn, "a fox, jpeg", seed=3, negative_prompt="blurry", format="JPG", quality=95),
    }
    run_generator(make_settings, make_repo, **s3_server.env(s3_bucket))
    expected = {"png": ("png", "image/png", "PNG"), "webp": ("webp", "image/webp", "WEBP"),
                "jpeg": ("jpg", "image/jpeg", "JPEG")}
    for fmt, image_id in ids.items():
        row = fetch_image(conn, image_id)
        extension, content_type, pillow_format = expected[fmt]
        assert (row["status"], row["format"]) == ("ReadyToPublish", fmt)
        assert row["output_url"].endswith(f"/{image_id}.{extension}")
        data, stored_type = s3_server.get(row["output_url"])
        assert stored_type == content_type
        assert base64.b64decode(row["base64"]) == data
        with PILImage.open(io.BytesIO(data)) as image:
            assert image.format == pillow_format
        parameters = read_parameters(data)
        assert parameters is not None and parameters.startswith(f"a fox, {fmt}\nNegative prompt: blurry\nSeed: ")
        if fmt != "png":
            assert a1111_user_comment(data) == parameters


def test_a_bad_format_or_quality_fails_the_row_with_a_readable_error(conn, make_settings, make_repo):
    gif = insert_image(conn, "a gif please", format="gif")
    low = insert_image(conn, "quality zero", format="webp", quality=0)
    good = insert_image(conn, "the next row is not held up")
    counts = run_generator(make_settings, make_repo)
    assert (counts.failed, counts.done) == (2, 1)
    assert fetch_image(conn, gif)["error"] == "format must be one of: png, webp, jpeg; got 'gif'"
    assert fetch_image(conn, low)["error"] == "quality must be between 1 and 100, got 0"
    assert fetch_image(conn, good)["status"] == "ReadyToPublish"


def test_fusion_brain_jpegs_are_stored_as_jpeg(conn, make_settings, make_repo, tmp_path):
    image_id = insert_image(conn, "a legacy jpeg")
    target = tmp_path / "images"
    with fake_server() as fake, rig(make_settings, make_repo, fake, IMAGEND_FUSIONBRAIN_API="legacy",
                                    IMAGEND_STORAGE_URL=target.as_uri()) as r:
        drive(r, conn, fake, [image_id])
    row = fetch_image(conn, image_id)
    assert (row["status"], row["format"]) == ("ReadyToPublish", "jpeg")
    assert row["output_url"] == (target / f"{image_id}.jpg").resolve().as_uri()
    assert row["output_path"] == str((target / f"{image_id}.jpg").resolve())
    assert (target / f"{image_id}.jpg").read_bytes()[:3] == b"\xff\xd8\xff"


def test_a_store_that_goes_away_spools_images_spends_no_attempt_and_pauses_claiming(
    conn, make_settings, make_repo
):
    """Hardening III, item 4: a 32 s outage failed 127 of 400 rows for good, each generated three times."""
    with MotoServer() as server:
        bucket = server.create_bucket("imagend-goes-away")
        settings = make_settings(**server.env(bucket, IMAGEND_STORE_BASE64="false", DEFAULT_MAX_ATTEMPTS="1"))
        backends = {"placeholder": PlaceholderBackend(max_batch=4)}
        run = InProcess(make_repo(settings), settings, backends)
        try:
            before = [insert_image(conn, f"before {n}") for n in range(3)]
            assert run.generator.run_once().done == 3
            stored = {image_id: fetch_image(conn, image_id)["output_url"] for image_id in before}
            assert all(server.get(url)[0].startswith(b"\x89PNG") for url in stored.values())

            server.stop()
            during = [insert_image(conn, f"during {n}") for n in range(5)]
            counts = run.generator.run_once()
            assert (counts.done, counts.retried, counts.failed) == (5, 0, 0)
            spooled = [fetch_image(conn, image_id) for image_id in during]
            for row in spooled:
                assert (row["status"], row["output_url"], row["locked_by"], row["attempts"]) == (
                    "ReadyToPublish", None, None, 1)
                assert row["base64"] and row["spooled_at"] is not None  # kept until the store is back
                assert f"s3://{bucket}/images" in row["warning"] and server.secret not in row["warning"]
            later = insert_image(conn, "waits while the store is down")
            assert run.generator.run_once().claimed == 0  # claiming paused: an image now could only be spooled
            assert fetch_image(conn, later)["status"] == "ReadyToGenerate"
            assert run.processor.run_once().spooled_written == 0

            server.start()  # an empty store on the same port
            server.create_bucket(bucket)
            assert run.processor.run_once().spooled_written == 5
            assert run.generator.run_once().done == 1
        finally:
            run.close()
        for image_id in during:
            row = fetch_image(conn, image_id)
            assert (row["status"], row["attempts"], row["error"], row["spooled_at"]) == (
                "ReadyToPublish", 1, None, None)
            assert row["base64"] is None  # IMAGEND_STORE_BASE64=false: dropped once stored
            assert server.get(row["output_url"])[0].startswith(b"\x89PNG")
        states = conn.execute("SELECT status, count(*) AS n FROM images GROUP BY status").fetchall()
        assert {s["status"]: s["n"] for s in states} == {"ReadyToPublish": 9}


def test_a_missing_bucket_stops_the_start_naming_the_variable(db_url, s3_server):
    result = run_imagend(["-generator"], base_env(db_url, **s3_server.env("no-such-bucket")))
    assert result.returncode == 2, result.stderr
    assert "IMAGEND_STORAGE_URL=s3://no-such-bucket/images" in result.stderr
    assert "the bucket 'no-such-bucket' does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_credentials_stop_the_start_and_are_never_shown(db_url):
    with MotoServer(check_credentials=True) as server:
        bucket = server.create_bucket("imagend-checked")
        wrong = "wrong-secret-0123456789abcdef"
        result = run_imagend(["-generator"], base_env(db_url, **server.env(bucket, AWS_SECRET_ACCESS_KEY=wrong)))
        assert result.returncode == 2, result.stderr
        assert f"IMAGEND_STORAGE_URL=s3://{bucket}/images" in result.stderr
        assert "refused these credentials" in result.stderr
        assert wrong not in result.stderr + result.stdout
        # The right keys pass the same check, and a row is stored.
        ok = run_imagend(["-generator"], base_env(db_url, **server.env(bucket)))
        assert ok.returncode == 0, ok.stderr
