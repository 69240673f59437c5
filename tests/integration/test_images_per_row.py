"""Several images per row (issue 26, item 4) through the generator against a real Postgres, on the
placeholder backend (its images derive from prompt and seed alone): n images with consecutive seeds,
listed in `images`, image 1 in the row's base64; stored as `<id>-<k>.<ext>` with thumbnails; a bad n
fails its row readably while the others go on; Fusion Brain refuses n > 1."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import psycopg

from support.daemons import InProcess
from support.db import fetch_image, insert_image
from support.fusionbrain import drive, fake_server, rig


def run_generator(make_settings: Any, make_repo: Any, **env: str) -> None:
    settings = make_settings(**env)
    run = InProcess(make_repo(settings), settings)
    try:
        run.generator.run_once()
    finally:
        run.close()


def test_a_row_of_n_images_has_n_seeds_in_a_row_each_the_image_of_its_seed_alone(
    conn: psycopg.Connection[Any], make_settings: Any, make_repo: Any
) -> None:
    several = insert_image(conn, "a red fox", seed=10, n=3)
    alone = {seed: insert_image(conn, "a red fox", seed=seed) for seed in (10, 11, 12)}
    unseeded = insert_image(conn, "a blue fox", n=2)

    run_generator(make_settings, make_repo)

    row = fetch_image(conn, several)
    assert (row["status"], row["error"], row["seed"], row["n"]) == ("ReadyToPublish", None, 10, 3)
    listed = row["images"]
    assert [entry["index"] for entry in listed] == [1, 2, 3]
    assert [entry["seed"] for entry in listed] == [10, 11, 12]
    pictures = [base64.b64decode(entry["base64"]) for entry in listed]
    assert len(set(pictures)) == 3  # three different images
    assert base64.b64decode(row["base64"]) == pictures[0]  # image 1 is the row's own
    for entry in listed:  # each one is what a row of n = 1 with its seed makes, byte for byte
        assert entry["base64"] == fetch_image(conn, alone[entry["seed"]])["base64"]
        assert entry["format"] == "png"
    for seed in alone:
        assert fetch_image(conn, alone[seed])["images"] is None  # one image: nothing listed
    unseeded_row = fetch_image(conn, unseeded)
    seeds = [entry["seed"] for entry in unseeded_row["images"]]
    assert unseeded_row["seed"] == seeds[0] and seeds == [seeds[0], seeds[0] + 1]  # a random first, then +1


def test_stored_images_are_named_id_dash_k_with_a_thumbnail_each(
    conn: psycopg.Connection[Any], make_settings: Any, make_repo: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    several = insert_image(conn, "a lighthouse", seed=5, n=4)
    single = insert_image(conn, "a lighthouse", seed=5)

    run_generator(make_settings, make_repo, IMAGEND_OUTPUT_DIR=str(out), IMAGEND_THUMBNAIL="64")

    row = fetch_image(conn, several)
    assert row["status"] == "ReadyToPublish"
    listed = row["images"]
    for k, entry in enumerate(listed, start=1):
        image, thumb = out / f"{several}-{k}.png", out / f"{several}-{k}.thumb.webp"
        assert entry["url"] == image.resolve().as_uri() and entry["path"] == str(image.resolve())
        assert entry["thumbnail_url"] == thumb.resolve().as_uri()
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and thumb.read_bytes()[8:12] == b"WEBP"
        assert "base64" not in entry  # in the store, not in the row
    assert [entry["seed"] for entry in listed] == [5, 6, 7, 8]
    assert len({(out / f"{several}-{k}.png").read_bytes() for k in range(1, 5)}) == 4
    assert row["output_url"] == listed[0]["url"] and row["thumbnail_url"] == listed[0]["thumbnail_url"]
    assert base64.b64decode(row["base64"]) == (out / f"{several}-1.png").read_bytes()  # IMAGEND_STORE_BASE64
    assert (out / f"{single}.png").exists() and not (out / f"{single}-1.png").exists()  # n = 1 as before
    assert (out / f"{single}.png").read_bytes() == (out / f"{several}-1.png").read_bytes()


def test_a_bad_n_fails_its_row_readably_and_the_others_go_on(
    conn: psycopg.Connection[Any], make_settings: Any, make_repo: Any
) -> None:
    too_many = insert_image(conn, "a cat", n=9)
    none = insert_image(conn, "a cat", n=0)
    fine = insert_image(conn, "a cat", n=8)

    run_generator(make_settings, make_repo)

    assert (fetch_image(conn, too_many)["status"], fetch_image(conn, too_many)["error"]) == (
        "Failed", "n must be between 1 and 8, got 9")
    assert fetch_image(conn, none)["error"] == "n must be between 1 and 8, got 0"
    row = fetch_image(conn, fine)
    assert row["status"] == "ReadyToPublish" and len(row["images"]) == 8


def test_fusion_brain_refuses_more_than_one_image_per_row(
    conn: psycopg.Connection[Any], make_settings: Any, make_repo: Any
) -> None:
    several = insert_image(conn, "a lighthouse at dusk", n=2)
    single = insert_image(conn, "a lighthouse at dusk")
    with fake_server() as fake, rig(make_settings, make_repo, fake) as r:
        drive(r, conn, fake, [several, single])
    row = fetch_image(conn, several)
    assert row["status"] == "Failed"
    assert row["error"].startswith("Fusion Brain makes one image per task (its numImages is 1 only), got n = 2")
    assert fetch_image(conn, single)["status"] == "ReadyToPublish"


def test_retention_deletes_every_image_of_the_row(
    conn: psycopg.Connection[Any], make_settings: Any, make_repo: Any, tmp_path: Path
) -> None:
    from imagend.maintenance.retention import Retention
    from imagend.storage import open_store

    out = tmp_path / "out"
    several = insert_image(conn, "a lighthouse", seed=5, n=3)
    env = {"IMAGEND_OUTPUT_DIR": str(out), "IMAGEND_THUMBNAIL": "64"}
    run_generator(make_settings, make_repo, **env)
    assert len(list(out.iterdir())) == 6
    conn.execute("UPDATE images SET finished_at = now() - interval '400 days' WHERE id = %s", [several])
    settings = make_settings(**env, IMAGEND_RETENTION_DONE="30d", IMAGEND_RETENTION_DELETE_OBJECTS="true")
    assert settings.storage is not None
    store = open_store(settings.storage, settings.env.values)
    Retention(make_repo(settings), settings.retention, store).run_once()
    assert conn.execute("SELECT count(*) AS c FROM images WHERE id = %s", [several]).fetchone()["c"] == 0
    assert list(out.iterdir()) == []


def test_images_column_is_json_a_producer_reads_with_sql(
    conn: psycopg.Connection[Any], make_settings: Any, make_repo: Any
) -> None:
    several = insert_image(conn, "a red fox", seed=1, n=2)
    run_generator(make_settings, make_repo)
    seeds = conn.execute("SELECT jsonb_path_query_array(images, '$[*].seed') AS s FROM images WHERE id = %s",
                         [several]).fetchone()["s"]
    assert seeds == [1, 2]
    assert json.loads(json.dumps(fetch_image(conn, several)["images"]))[1]["index"] == 2
