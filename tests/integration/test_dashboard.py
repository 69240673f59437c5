"""The dashboard's HTML against a real daemon (IMAGEND_HTTP on, placeholder backend) over real HTTP:
every section, producer strings escaped everywhere (text, attributes, params, errors), the image
routes, a row's page, the buttons with and without a token, and reads on a non-loopback address.
One daemon for the module; the few tests that need another setting start their own."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from markupsafe import escape
from PIL import Image
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from imagend.backends.placeholder import placeholder_png

from support.db import TERMINAL, insert_image, wait_until
from support.http_daemon import HttpDaemon, own_database

XSS = ("<script>window.__xss=1</script>", '"><img src=x onerror=window.__xss=2>', "</textarea><b>bold</b>")
GHOST = "ghost-host:1:abcdef"  # a row 'generating' for an owner that never beats: its lease keeps it


class Site:
    def __init__(self, url: str, daemon: HttpDaemon, conn: psycopg.Connection[dict[str, Any]],
                 ids: dict[str, int]) -> None:
        self.url, self.daemon, self.conn, self.ids = url, daemon, conn, ids

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.daemon.get(path, **kwargs)


@pytest.fixture(scope="module")
def site(server_url: str, template_db: str) -> Iterator[Site]:
    with own_database(server_url, template_db) as url, \
            psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        ids = {f"xss{n}": insert_image(conn, prompt, negative_prompt=prompt, seed=7 + n, width=64, height=64,
                                       params={"model": prompt, "note": prompt})
               for n, prompt in enumerate(XSS)}
        ids["plain"] = insert_image(conn, "a lighthouse at dusk", seed=42, width=64, height=48)
        # A style the placeholder refuses: its error echoes the producer's string.
        ids["failed"] = insert_image(conn, "refused", style=XSS[1])
        # Rows for a backend this daemon does not serve wait; one "runs" for an owner that is not there.
        ids["waiting"] = insert_image(conn, XSS[0] + " waiting", backend="local", priority=5)
        ids["running"] = insert_image(conn, XSS[2] + " running", backend="local")
        conn.execute("UPDATE images SET status = 'Generate', locked_by = %s, lease_until = now() + interval '1 hour', "
                     "started_at = now(), attempts = 1, progress = 0.42 WHERE id = %s", [GHOST, ids["running"]])
        with HttpDaemon(url) as daemon:
            mine = [ids[k] for k in ("xss0", "xss1", "xss2", "plain", "failed")]
            wait_until(lambda: conn.execute("SELECT count(*) AS n FROM images WHERE id = ANY(%s) AND status = ANY(%s)",
                                            [mine, list(TERMINAL)]).fetchone()["n"] == len(mine),  # type: ignore[index]
                       timeout=30, what="the placeholder rows to finish")
            yield Site(url, daemon, conn, ids)


def assert_escaped(text: str) -> None:
    for prompt in XSS:
        assert prompt not in text, f"raw producer markup in the page: {prompt!r}"
    assert "<script>window" not in text and "onerror=window" not in text.replace("&#34;&gt;&lt;img src=x onerror", "")
    assert "<b>bold</b>" not in text


def test_the_page_shows_every_section(site):
    answer = site.get("/")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    page = answer.text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    for section in ("queue", "pauses", "fleet", "in-flight", "waiting", "done", "failed"):
        assert f'id="{section}"' in page, section
    # The fleet: this daemon, its pid and backend, not paused.
    assert f'<td class="num">{site.daemon.process.pid}</td>' in page
    # Queue counts by backend: the waiting 'local' row and the placeholder's finished and failed.
    counts = page[page.index('id="queue"'):page.index('id="pauses"')]
    assert "local" in counts and "placeholder" in counts
    # The running row's bar holds its progress; the waiting row is next up.
    running = page[page.index(f'data-id="{site.ids["running"]}"'):]
    assert re.search(r'<progress class="bar" max="1" value="0.420" data-progress="0.420"', running)
    assert f'<a href="/images/{site.ids["waiting"]}">' in page[page.index('id="waiting"'):]
    # Thumbnails link to the row's page; the failure shows its error.
    assert f'<a href="/images/{site.ids["plain"]}">' in page
    # The thumbnail's link is the API's (issue 23): signed, so it opens without the token or the cookie.
    assert re.search(rf'<img src="/v1/images/{site.ids["plain"]}/thumbnail\?expires=\d+&amp;signature=[0-9a-f]{{64}}" '
                     'alt="a lighthouse at dusk"', page)
    assert "seed 42 · 64\u00d748" in page
    failed = page[page.index('id="failed"'):]
    assert "unknown style" in failed and str(escape(XSS[1])) in failed


def test_fragments_are_the_sections_alone(site):
    live, recent = site.get("/fragments/live"), site.get("/fragments/recent")
    assert live.status_code == recent.status_code == 200
    assert 'id="in-flight"' in live.text and "<html" not in live.text
    assert 'id="done"' in recent.text and "<html" not in recent.text


@pytest.mark.parametrize("path", ["/", "/fragments/live", "/fragments/recent", "/images/{xss0}", "/images/{xss1}",
                                  "/images/{failed}", "/images/{running}", "/images/{waiting}",
                                  "/fragments/images/{running}"])
def test_producer_strings_are_text_everywhere(site, path):
    answer = site.get(path.format(**site.ids))
    assert answer.status_code == 200
    assert_escaped(answer.text)


def test_escaped_prompts_are_in_text_and_attributes(site):
    page = site.get("/").text
    for prompt in XSS:
        assert str(escape(prompt)) in page  # as text …
        assert f'alt="{escape(prompt)!s}"' in page  # … and in the thumbnail's alt attribute


def test_a_finished_rows_page_shows_the_image_and_every_parameter(site):
    image_id = site.ids["xss1"]
    page = site.get(f"/images/{image_id}").text
    assert f'<img class="full" src="/images/{image_id}/full"' in page
    assert "ReadyToPublish" in page and "data-src" not in page.split("<main>")[1]  # finished: no refresh
    for field in ("prompt", "negative prompt", "seed", "width", "height", "model", "params", "generation"):
        assert f"<dt>{field}</dt>" in page, field
    assert "&#34;note&#34;: " in page  # params as indented JSON, escaped


def test_a_waiting_rows_page_shows_its_place_and_refreshes(site):
    page = site.get(f"/images/{site.ids['waiting']}").text
    assert "0 rows ahead; should start" in page
    assert f'data-src="/fragments/images/{site.ids["waiting"]}"' in page
    running = site.get(f"/fragments/images/{site.ids['running']}").text
    assert 'data-progress="0.420"' in running


def test_a_generating_rows_preview_shows_in_the_live_fragment(site):
    """A row in Generate with a step preview: an <img> of the API's preview endpoint (same origin: the
    CSP's img-src 'self'), in the live fragment and on its page; its URL changes with the preview."""
    image_id = insert_image(site.conn, "forming", backend="local")
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 120, 200)).save(buffer, format="WEBP")
    site.conn.execute("UPDATE images SET status = 'Generate', locked_by = %s, lease_until = now() + interval '1 hour', "
                      "started_at = now(), attempts = 1, progress = 0.3, preview = %s WHERE id = %s",
                      [GHOST, base64.b64encode(buffer.getvalue()).decode(), image_id])
    live = site.get("/fragments/live")
    assert "img-src 'self'" in live.headers["content-security-policy"]
    running = live.text[live.text.index(f'data-id="{image_id}"'):]
    running = running[:running.index("</progress>")]
    found = re.search(rf'<img class="preview" src="(/v1/images/{image_id}/preview\?v=[0-9a-f]+)" width="96"', running)
    assert found, running
    answer = site.get(found.group(1))
    assert (answer.status_code, answer.headers["content-type"]) == (200, "image/webp")
    assert answer.content == buffer.getvalue()
    assert f'src="{found.group(1)}"' in site.get(f"/fragments/images/{image_id}").text

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format="WEBP")
    site.conn.execute("UPDATE images SET preview = %s WHERE id = %s", [base64.b64encode(buffer.getvalue()).decode(),
                                                                        image_id])
    assert found.group(1) not in site.get("/fragments/live").text  # a new preview, a new URL: the browser loads it
    # Without a preview (a row of another backend, or the first 2 s), no <img>: no broken image.
    assert f'data-id="{site.ids["running"]}"' in site.get("/fragments/live").text
    assert f"/v1/images/{site.ids['running']}/preview" not in site.get("/fragments/live").text


def test_a_rows_page_shows_the_local_inputs_escaped(site):
    script = "<script>alert(1)</script>"
    image_id = insert_image(site.conn, "chained", backend="local", model=XSS[1], task="upscale", upscale=2,
                            strength=0.75, reference_scale=0.5, init_image_id=site.ids["plain"],
                            reference_image_id=site.ids["xss0"],
                            loras=Jsonb([{"name": script, "weight": 0.5}, {"name": "pixel-art"}]))
    page = site.get(f"/images/{image_id}").text
    assert script not in page and XSS[1] not in page
    assert f"<dt>loras</dt><dd class=\"wrap\">{escape(script)} (0.5), pixel-art (1)</dd>" in page
    assert f"<dt>model</dt><dd>{escape(XSS[1])}</dd>" in page
    for name, shown in (("task", "upscale"), ("strength", "0.75"), ("reference_scale", "0.5"), ("upscale", "2.0")):
        assert f"<dt>{name}</dt><dd>{shown}</dd>" in page, name
    assert f'<dt>init image</dt><dd><a href="/images/{site.ids["plain"]}">#{site.ids["plain"]}</a>' in page
    assert f'<dt>reference image</dt><dd><a href="/images/{site.ids["xss0"]}">#{site.ids["xss0"]}</a>' in page
    assert "<dt>mask image</dt>" not in page
    assert_escaped(page)


def test_image_bytes(site):
    for route in ("thumbnail", "full"):
        answer = site.get(f"/images/{site.ids['plain']}/{route}")
        assert answer.status_code == 200, route
        assert answer.headers["content-type"] == "image/png"
        assert answer.content.startswith(b"\x89PNG\r\n\x1a\n")
    waiting = site.get(f"/images/{site.ids['waiting']}/full")
    assert waiting.status_code == 404 and "ReadyToGenerate" in waiting.json()["error"]
    failed = site.get(f"/images/{site.ids['failed']}/thumbnail")
    assert failed.status_code == 404 and "error" in failed.json()
    missing = site.get("/images/987654/full")
    assert missing.status_code == 404 and missing.json() == {"error": "no image with id 987654"}


def test_where_the_image_lives(site, tmp_path):
    """images.py serves the row's base64 and thumbnail, and never a location a producer wrote: a file
    outside the daemon's store (this daemon has none; test_http_hardening.py serves a stored one), an
    http(s) URL (no redirect), a file that is no image (issue 19, items 9 and 13)."""
    png = placeholder_png("stored")
    (tmp_path / "1.png").write_bytes(png)
    (tmp_path / "not-an-image.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")

    def finished(**columns: Any) -> int:
        return insert_image(site.conn, "stored", status="ReadyToPublish", backend="local", **columns)

    in_file = finished(output_path=str(tmp_path / "1.png"))
    in_file_url = finished(output_url=(tmp_path / "1.png").as_uri(), format="png")
    elsewhere = finished(output_url="https://images.example/1.png", thumbnail_url="https://images.example/1.webp")
    passwd = finished(output_path="/etc/passwd", output_url=(tmp_path / "not-an-image.txt").as_uri())
    webp = b"RIFF\0\0\0\0WEBPVP8 "
    thumb = finished(base64=base64.b64encode(png).decode(), thumbnail=base64.b64encode(webp).decode())
    for image_id in (in_file, in_file_url, elsewhere):
        for route in ("full", "thumbnail"):
            answer = site.daemon.client.get(f"/images/{image_id}/{route}", follow_redirects=False)
            assert answer.status_code == 404 and "location" not in answer.headers, (image_id, route)
            assert "a location written by a producer is not served" in answer.json()["error"]
    refused = site.get(f"/images/{passwd}/full")
    assert refused.status_code == 404 and "root:" not in refused.text
    assert site.get(f"/images/{thumb}/thumbnail").headers["content-type"] == "image/webp"
    assert site.get(f"/images/{thumb}/full").content == png


@pytest.mark.parametrize("path", ["/images/987654", "/images/99999999999999999999999", "/images/1;DROP",
                                  "/images/..%2F..%2Fetc%2Fpasswd", "/images/-1/full", "/images/1x/thumbnail",
                                  "/static/../dashboard.py", "/static/nope.js"])
def test_unknown_ids_and_paths_are_404(site, path):
    answer = site.get(path)
    assert answer.status_code == 404
    assert "root:" not in answer.text


def test_static_files(site):
    script = site.get("/static/dashboard.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "innerHTML = html" in script.text  # only server-rendered fragments go in
    assert site.get("/static/dashboard.css").headers["content-type"].startswith("text/css")


def test_buttons_call_the_api_with_the_token(site):
    page = site.get("/").text
    assert f'data-post="/v1/images/{site.ids["running"]}/cancel"' in page
    assert f'data-post="/v1/images/{site.ids["waiting"]}/cancel"' in page
    assert f'data-post="/v1/images/{site.ids["failed"]}/retry"' in page
    assert 'data-post="/v1/backends/placeholder/pause"' in page and 'data-post="/v1/backends/%2A/pause"' in page
    assert not re.search(r"data-post=[^>]* disabled", page)  # a token is configured: the buttons work
    assert 'id="token"' in page


def test_pauses_show_on_the_page(site):
    site.conn.execute("INSERT INTO imagend_paused (backend, paused_by) VALUES ('local', 'test')")
    try:
        def paused() -> str | None:
            page = site.get("/fragments/live").text
            return page if 'data-post="/v1/backends/local/resume"' in page else None
        page = wait_until(paused, timeout=10, what="the pause to show")  # the snapshot is cached 2 s
        assert "paused" in page[page.index('data-backend="local"'):]
    finally:
        site.conn.execute("DELETE FROM imagend_paused WHERE backend = 'local'")


def test_without_a_token_the_buttons_are_disabled_with_a_hint(site):
    with HttpDaemon(site.url, token=None) as daemon:
        page = daemon.get("/").text
    buttons = re.findall(r"<button[^>]*data-post=[^>]*>", page)
    assert buttons and all("disabled" in b and "IMAGEND_HTTP_TOKEN" in b for b in buttons)
    assert "read-only: no IMAGEND_HTTP_TOKEN" in page and 'id="token"' not in page


def test_reads_off_loopback_need_the_token(site):
    with HttpDaemon(site.url, host="0.0.0.0") as daemon:
        shell = daemon.get("/")
        assert shell.status_code == 401
        assert "Reads need the token" in shell.text and "lighthouse" not in shell.text  # the shell holds no data
        for path in ("/fragments/live", "/fragments/recent", f"/images/{site.ids['plain']}",
                     f"/images/{site.ids['plain']}/thumbnail", f"/images/{site.ids['plain']}/full",
                     f"/fragments/images/{site.ids['plain']}", "/static/dashboard.js"):
            assert daemon.get(path).status_code == 401, path
            assert daemon.get(path, headers=daemon.auth).status_code == 200, path


def test_the_buttons_urls_are_the_apis(site):
    """Each button's URL, POSTed with the token as dashboard.js does, is a working API call (last in
    the module: it changes rows)."""
    page = site.get("/").text
    urls = set(re.findall(r'data-post="([^"]+)"', page))
    pauses = sorted(u for u in urls if u.startswith("/v1/backends/") and u.endswith("/pause"))
    assert "/v1/backends/%2A/pause" in pauses
    for url in pauses:
        assert site.daemon.post(url).status_code < 300, url
        assert site.daemon.post(url.replace("/pause", "/resume")).status_code < 300, url
    assert site.conn.execute("SELECT count(*) AS n FROM imagend_paused").fetchone()["n"] == 0
    assert site.daemon.post(f"/v1/images/{site.ids['waiting']}/cancel").status_code < 300
    assert site.daemon.post(f"/v1/images/{site.ids['failed']}/retry").status_code < 300
    assert site.daemon.post(f"/v1/images/{site.ids['failed']}/retry", auth=False).status_code == 401
