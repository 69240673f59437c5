"""The dashboard in a real headless browser (Debian's chromium under Selenium) against a real daemon
(`imagend -cron`, placeholder backend slowed to a second an image, batches of 6, so a batch's progress
moves in sixths): the bars move while the page is open, finished thumbnails really load, XSS prompts
stay text through the live swaps, a thumbnail opens the row's page, and the page fits a phone.

The last test saves a screenshot: into docs/dashboard.png with IMAGEND_UPDATE_SCREENSHOT=1, else
into the test's temporary folder. Skips only when chromium or chromedriver is missing."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from support.browser import find_chromium, headless_chromium
from support.db import insert_image, wait_until
from support.http_daemon import HttpDaemon, own_database

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DOCS_SCREENSHOT = ROOT / "docs" / "dashboard.png"
BATCH = 6
DELAY_SECONDS = "1.0"
XSS = ("<script>window.__xss=1</script>", '"><img src=x onerror=window.__xss=2>', "</textarea><b>bold</b>")


class Board:
    def __init__(self, daemon: HttpDaemon, conn: psycopg.Connection[dict[str, Any]], browser: Any) -> None:
        self.daemon, self.conn, self.browser = daemon, conn, browser
        self.finished: dict[str, int] | None = None

    def open(self, path: str = "/") -> None:
        self.browser.get(self.daemon.url + path)

    def js(self, script: str, *args: Any) -> Any:
        return self.browser.execute_script(script, *args)

    def insert_batch(self, prompts: list[str], **columns: Any) -> list[int]:
        """One transaction, so the daemon claims them as one batch."""
        with self.conn.transaction():
            return [insert_image(self.conn, prompt, **columns) for prompt in prompts]

    def status(self, ids: list[int]) -> set[str]:
        rows = self.conn.execute("SELECT status FROM images WHERE id = ANY(%s)", [ids]).fetchall()
        return {row["status"] for row in rows}

    def bar(self, image_id: int) -> float | None:
        """The progress the page shows for a row in flight (its data attribute and the element's value)."""
        found = self.js("const bar = document.querySelector('#in-flight [data-id=\"' + arguments[0] + '\"] progress');"
                        "return bar ? [bar.dataset.progress, bar.value] : null;", image_id)
        if found is None:
            return None
        data, value = float(found[0]), float(found[1])
        assert abs(data - value) < 1e-3
        return data

    def thumbnail(self, image_id: int) -> list[Any] | None:
        return self.js("const img = document.querySelector('#done [data-id=\"' + arguments[0] + '\"] img');"
                       "return img ? [img.complete, img.naturalWidth] : null;", image_id)


@pytest.fixture(scope="module")
def board(server_url: str, template_db: str) -> Iterator[Board]:
    found = find_chromium()
    if isinstance(found, str):
        pytest.skip(found)
    with own_database(server_url, template_db) as url, \
            psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn, \
            HttpDaemon(url, IMAGEND_PLACEHOLDER_DELAY=DELAY_SECONDS, IMAGEND_MAX_BATCH=str(BATCH)) as daemon, \
            headless_chromium(*found) as browser:
        yield Board(daemon, conn, browser)


@pytest.fixture
def finished(board: Board) -> dict[str, int]:
    """The XSS prompts and a plain one, generated while the page watches (module-wide, made once)."""
    if board.finished is None:
        board.open()
        ids = board.insert_batch([*XSS, "a lighthouse at dusk"])
        wait_until(lambda: board.status(ids) == {"ReadyToPublish"}, timeout=30, what="the batch to finish")
        wait_until(lambda: all(board.thumbnail(i) for i in ids), timeout=15, what="the thumbnails on the page")
        board.finished = {"xss0": ids[0], "xss1": ids[1], "xss2": ids[2], "plain": ids[3]}
    return board.finished


def test_a_running_rows_progress_bar_moves(board):
    board.open()
    ids = board.insert_batch([f"a slow fox, frame {n}" for n in range(BATCH)])
    def early() -> tuple[float] | None:  # a tuple: 0.0 is a value seen
        value = board.bar(ids[0])
        return (value,) if value is not None and value < 0.5 else None

    (seen,) = wait_until(early, timeout=15, what="the first row's progress bar")

    def moved() -> float | None:
        value = board.bar(ids[0])
        return value if value is not None and value > seen else None

    later = wait_until(moved, timeout=10, what=f"the bar to move past {seen}")
    assert later > seen
    assert board.js("return document.getElementById('live').classList.contains('stale')") is False
    wait_until(lambda: board.status(ids) == {"ReadyToPublish"}, timeout=30, what="the batch to finish")


def test_finished_thumbnails_really_load(board, finished):
    for image_id in finished.values():
        complete, width = board.thumbnail(image_id)
        assert complete and width > 0, image_id


def test_xss_prompts_are_text_and_never_run(board, finished):
    time.sleep(1.5)  # at least one more live swap with the rows on the page
    assert board.js("return typeof window.__xss") == "undefined"
    shown = board.js("return Array.from(document.querySelectorAll('#done .prompt')).map(e => e.textContent)")
    for prompt in XSS:
        assert prompt in shown
    assert board.js("return document.querySelectorAll('img[src=\"x\"], #done b, textarea, main script').length") == 0
    alts = board.js("return Array.from(document.querySelectorAll('#done img')).map(i => i.alt)")
    assert set(XSS) <= set(alts)


def test_a_thumbnail_opens_the_rows_page(board, finished):
    image_id = finished["xss1"]
    board.open()
    wait_until(lambda: board.thumbnail(image_id), timeout=10, what="the thumbnail")
    board.js("document.querySelector('#done [data-id=\"' + arguments[0] + '\"] a').click()", image_id)
    wait_until(lambda: board.browser.current_url.endswith(f"/images/{image_id}"), timeout=10, what="the row's page")
    full = wait_until(lambda: board.js("const i = document.querySelector('img.full');"
                                       "return i && i.complete && i.naturalWidth > 0 ? i.naturalWidth : null"),
                      timeout=10, what="the full image")
    assert full > 0
    assert board.js("return document.querySelector('dd.prompt').textContent") == XSS[1]
    assert board.js("return typeof window.__xss") == "undefined"


def test_a_button_sends_the_pasted_token(board, finished):
    board.open()
    pause_all = "button[data-post='/v1/backends/%2A/pause']"
    wait_until(lambda: board.js(f"return document.querySelector(\"{pause_all}\")"), timeout=10, what="the button")
    board.js(f"document.querySelector(\"{pause_all}\").click()")  # no token yet: said, nothing sent
    assert "Paste the token" in board.js("return document.getElementById('note').textContent")
    board.browser.find_element("id", "token").send_keys(board.daemon.token)
    board.browser.find_element("css selector", "#token-form button[type=submit]").click()
    board.js(f"document.querySelector(\"{pause_all}\").click()")
    wait_until(lambda: board.js("return document.getElementById('note').textContent") == "paused all", timeout=10,
               what="the pause to be answered")
    assert board.conn.execute("SELECT backend FROM imagend_paused").fetchall() == [{"backend": "*"}]
    resume_all = "button[data-post='/v1/backends/%2A/resume']"
    wait_until(lambda: board.js(f"return document.querySelector(\"{resume_all}\")"), timeout=10,
               what="the page to show the pause")
    board.js(f"document.querySelector(\"{resume_all}\").click()")
    wait_until(lambda: not board.conn.execute("SELECT 1 FROM imagend_paused").fetchall(), timeout=10,
               what="the resume")
    assert board.js("return sessionStorage.getItem('imagend.token')") == board.daemon.token


def test_the_page_fits_a_phone(board, finished):
    board.browser.set_window_size(390, 844)
    try:
        board.open()
        wait_until(lambda: board.thumbnail(finished["plain"]), timeout=10, what="the page")
        assert board.js("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        columns = board.js("return getComputedStyle(document.querySelector('.gallery')).gridTemplateColumns")
        assert len(columns.split()) >= 2  # thumbnails two abreast, not one huge one
    finally:
        board.browser.set_window_size(1280, 1000)


def test_screenshot(board, finished, tmp_path):
    """The page mid-work: a batch generating, a paused backend with a row waiting, a failure."""
    board.conn.execute("INSERT INTO imagend_paused (backend, paused_by) VALUES ('local', 'operator')")
    insert_image(board.conn, "a watercolour harbour at dawn", backend="local", priority=3)
    insert_image(board.conn, "a portrait, 9000 pixels wide", width=9000)
    ids = board.insert_batch([f"{subject}, detailed, soft light" for subject in (
        "an owl in a library", "a red bicycle in the rain", "a mountain lake at noon",
        "a robot tending a garden", "a lantern festival", "a desert caravan at night")], seed=1234)
    board.open()
    wait_until(lambda: (lambda v: v is not None and v >= 0.3)(board.bar(ids[0])), timeout=20,
               what="the screenshot's batch under way")
    wait_until(lambda: board.js("return document.querySelectorAll('#failed [data-id]').length"), timeout=10,
               what="the failure on the page")
    # The whole page, beyond the window (Chrome DevTools' capture).
    width, height = board.js("return [document.documentElement.clientWidth, document.documentElement.scrollHeight]")
    shot = board.browser.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    target = DOCS_SCREENSHOT if os.environ.get("IMAGEND_UPDATE_SCREENSHOT") == "1" else tmp_path / "dashboard.png"
    target.write_bytes(base64.b64decode(shot["data"]))
    assert target.stat().st_size > 10_000
