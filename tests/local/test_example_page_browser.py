"""Issue 23's example page (/example) in a real browser (headless Chromium under Selenium, as the
dashboard's test), against a daemon on the local backend (the miniature SDXL, noise, on the CPU): the
page uploads a photo, queues image-to-image from it with an Idempotency-Key, and shows the row forming
through the live stream (progress, then the finished image, loaded from its signed link)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from PIL import Image
from psycopg.rows import dict_row

from support.browser import find_chromium, headless_chromium
from support.db import fetch_image, wait_until
from support.http_daemon import TOKEN, HttpDaemon, own_database
from support.local import TORCH_NUMPY_COPY_WARNING

pytestmark = [TORCH_NUMPY_COPY_WARNING, pytest.mark.slow]

SIDE = 64


@pytest.fixture(scope="module")
def chromium() -> tuple[str, str]:
    found = find_chromium()
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.fixture(scope="module")
def daemon(server_url: str, template_db: str, tiny_model: Path, chromium: tuple[str, str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HttpDaemon, str]]:
    env = {
        "IMAGEND_BACKEND": "local",
        "IMAGEND_MODEL": str(tiny_model),
        "IMAGEND_LOCK_DIR": str(tmp_path_factory.mktemp("locks")),
        "DEFAULT_IMAGE_WIDTH": str(SIDE),
        "DEFAULT_IMAGE_HEIGHT": str(SIDE),
        "HF_HUB_OFFLINE": "1",
    }
    with own_database(server_url, template_db) as url, HttpDaemon(url, **env) as running:
        yield running, url


def test_the_example_page_uploads_submits_and_shows_the_image_forming(daemon, chromium, tmp_path):
    running, url = daemon
    photo = tmp_path / "photo.png"
    Image.radial_gradient("L").resize((SIDE, SIDE)).convert("RGB").save(photo)
    with headless_chromium(*chromium) as browser:
        browser.get(f"{running.url}/example")
        browser.find_element("id", "token").send_keys(TOKEN)
        browser.find_element("id", "photo").send_keys(str(photo))
        prompt = browser.find_element("id", "prompt")
        prompt.clear()
        prompt.send_keys("a watercolour of a glowing orb")
        browser.find_element("id", "submit").click()

        def result() -> list[Any] | None:
            loaded: list[Any] | None = browser.execute_script(
                "const img = document.getElementById('result');"
                "return !img.hidden && img.complete && img.naturalWidth > 0 ? [img.naturalWidth, img.src] : null;")
            return loaded

        width, src = wait_until(result, timeout=90, what="the finished image on the page")
        log = browser.find_element("id", "log").text
        progress = float(browser.execute_script("return document.getElementById('progress').value"))
    assert width == SIDE and "signature=" in src
    assert "uploaded as" in log and "queued as image" in log and "is ready" in log
    assert progress == 1
    image_id = int(log.split("queued as image ")[1].split()[0])
    assert f"image {image_id}: " in log  # the stream's status events were shown as they came
    with psycopg.connect(url, row_factory=dict_row) as conn:
        row = fetch_image(conn, image_id)
        source = fetch_image(conn, row["init_image_id"])
        uploads = conn.execute("SELECT count(*) AS n FROM images WHERE task = 'upload'").fetchone()
    assert row["status"] == "ReadyToPublish" and row["strength"] == pytest.approx(0.6)
    assert source["task"] == "upload" and (source["width"], source["height"]) == (SIDE, SIDE)
    assert uploads is not None and uploads["n"] == 1
