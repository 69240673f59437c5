"""Several images per row over imagend's own HTTP API and dashboard, against a real daemon (`imagend -cron`,
placeholder backend, a folder store with thumbnails): POST n and a preset, GET /v1/images/{id} lists every
image with its seed and links, each link serves that image's bytes (the stored `<id>-<k>.png`) and its
thumbnail, and the detail page shows them all."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from PIL import Image
from psycopg.rows import dict_row

from support.db import TERMINAL, insert_image, wait_until
from support.http_daemon import HttpDaemon, own_database


@pytest.fixture(scope="module")
def site(server_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[HttpDaemon, psycopg.Connection[dict[str, Any]], Path]]:
    out = tmp_path_factory.mktemp("store")
    with own_database(server_url, template_db) as url, \
            psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn, \
            HttpDaemon(url, IMAGEND_OUTPUT_DIR=str(out), IMAGEND_THUMBNAIL="32") as daemon:
        yield daemon, conn, out


def finished(conn: psycopg.Connection[dict[str, Any]], image_id: int) -> None:
    wait_until(lambda: conn.execute("SELECT status FROM images WHERE id = %s", [image_id]).fetchone()["status"]
               in TERMINAL, timeout=30, what=f"row {image_id} to finish")


def test_the_api_lists_and_serves_every_image_of_a_row(site: Any) -> None:
    daemon, conn, out = site
    created = daemon.post("/v1/images", json={"prompt": "a red fox", "n": 3, "seed": 4})
    assert created.status_code == 201, created.text
    image_id = created.json()["id"]
    finished(conn, image_id)

    shown = daemon.get(f"/v1/images/{image_id}", headers=daemon.auth).json()
    assert shown["status"] == "ReadyToPublish"
    assert (shown["parameters"]["n"], shown["parameters"]["seed"]) == (3, 4)
    listed = shown["images"]
    assert [(entry["index"], entry["seed"], entry["format"]) for entry in listed] == [
        (1, 4, "png"), (2, 5, "png"), (3, 6, "png")]
    for entry in listed:
        k = entry["index"]
        assert entry["output_url"] == (out / f"{image_id}-{k}.png").resolve().as_uri()
        image = daemon.get(entry["image_url"])  # a signed link: no token
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert image.content == (out / f"{image_id}-{k}.png").read_bytes()
        thumb = daemon.get(entry["thumbnail_url"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
        assert thumb.content == (out / f"{image_id}-{k}.thumb.webp").read_bytes()
    assert shown["image_url"] and daemon.get(shown["image_url"]).content == (out / f"{image_id}-1.png").read_bytes()
    signatures = {entry[key].split("signature=")[1] for entry in listed for key in ("image_url", "thumbnail_url")}
    assert len(signatures) == 6  # each link signs its own image (the kind images/<k> is in the MAC)
    assert daemon.get(f"/v1/images/{image_id}/images/4", headers=daemon.auth).status_code == 404
    assert daemon.get(f"/v1/images/{image_id}/images/9", headers=daemon.auth).status_code == 404


def test_a_row_of_one_image_lists_none_and_its_image_one_is_its_image(site: Any) -> None:
    daemon, conn, out = site
    image_id = insert_image(conn, "a lighthouse", seed=3)
    finished(conn, image_id)
    shown = daemon.get(f"/v1/images/{image_id}", headers=daemon.auth).json()
    assert shown["images"] is None and shown["parameters"]["n"] is None
    first = daemon.get(f"/v1/images/{image_id}/images/1", headers=daemon.auth)
    assert first.status_code == 200 and first.content == (out / f"{image_id}.png").read_bytes()
    assert daemon.get(f"/v1/images/{image_id}/images/2", headers=daemon.auth).status_code == 404


def test_a_bad_n_is_refused_by_the_api_with_no_row_written(site: Any) -> None:
    daemon, conn, _ = site
    before = conn.execute("SELECT count(*) AS n FROM images").fetchone()["n"]
    for n in (0, 9, "two"):
        refused = daemon.post("/v1/images", json={"prompt": "a cat", "n": n})
        assert refused.status_code == 422 and "n" in refused.json()["error"], refused.text
    assert conn.execute("SELECT count(*) AS n FROM images").fetchone()["n"] == before


def test_the_dashboard_shows_every_image_of_a_row(site: Any) -> None:
    daemon, conn, _ = site
    conn.execute("INSERT INTO imagend_presets (name, prompt, n) VALUES ('pair', 'a pair of {prompt}', 2)")
    image_id = insert_image(conn, "owls", preset="pair", seed=11)
    finished(conn, image_id)
    page = daemon.get(f"/images/{image_id}").text
    for k, seed in ((1, 11), (2, 12)):
        assert f'src="/images/{image_id}/images/{k}/thumbnail"' in page
        assert f"{k} · seed {seed}" in page
        thumb = daemon.get(f"/images/{image_id}/images/{k}/thumbnail")
        assert thumb.status_code == 200
        assert Image.open(io.BytesIO(thumb.content)).format == "WEBP"
        assert daemon.get(f"/images/{image_id}/images/{k}").headers["content-type"] == "image/png"
    assert "<dt>effective prompt</dt><dd class=\"prompt\">a pair of owls</dd>" in page
    assert "<dt>preset</dt><dd>pair</dd>" in page and "<dt>n</dt><dd>2</dd>" in page
