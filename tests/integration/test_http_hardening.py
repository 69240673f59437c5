"""Issue 19 (Hardening III), the HTTP listener's items, against real daemons (`imagend -cron`, the
placeholder backend, IMAGEND_HTTP on a free port) over real HTTP, on a real Postgres:

- 5: run_after outside years 1 to 9999 once in UTC is refused (422); rows whose timestamps Python
  cannot hold ('infinity', BC, year 10000, written in SQL) break no page and no API answer.
- 9: only the object the daemon stored, by the row's id, in the configured store, is served.
- 10: a `Host` this listener does not answer for is refused (421, DNS rebinding);
  IMAGEND_HTTP_ALLOWED_HOSTS adds names; IMAGEND_HTTP_READ_TOKEN=required closes reads on loopback.
- 11: while S3 is down, an image read is 503 naming the store, and /readyz is 503.
- 13: every error is JSON; no redirect to a producer's URL and a CSP without remote images; a huge
  `params` is returned cut; the read cookie expires and can be dropped or revoked; the OpenAPI
  schema refuses the bodies the cross-column rules refuse.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest
from PIL import Image
from psycopg.rows import dict_row

from imagend.backends.placeholder import placeholder_png
from imagend.images.inputs import to_base64_png

from support.daemons import run_imagend
from support.db import base_env, fetch_image, insert_image, wait_until
from support.http_daemon import TOKEN, HttpDaemon, free_port, own_database
from support.s3 import MotoServer

PNG = to_base64_png(Image.new("RGB", (8, 8), (200, 30, 30)))
GHOST = "ghost-host:1:abcdef"  # an owner that never beats: its lease keeps the row 'generating'


@pytest.fixture(scope="module")
def module_db(server_url: str, template_db: str) -> Iterator[str]:
    with own_database(server_url, template_db) as url:
        yield url


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def daemon(module_db: str, store_dir: Path) -> Iterator[HttpDaemon]:
    """Images stored in a folder (IMAGEND_OUTPUT_DIR) and in the row's base64."""
    with HttpDaemon(module_db, IMAGEND_OUTPUT_DIR=str(store_dir)) as running:
        yield running


@pytest.fixture
def db(module_db: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(module_db, autocommit=True, row_factory=dict_row) as connection:
        yield connection


def row_count(db: Any) -> int:
    return int(db.execute("SELECT count(*) AS n FROM images").fetchone()["n"])


def finished_row(daemon: HttpDaemon, prompt: str) -> int:
    image_id = int(daemon.post("/v1/images", json={"prompt": prompt}).json()["id"])
    wait_until(lambda: daemon.get(f"/v1/images/{image_id}").json()["status"] == "ReadyToPublish", 20,
               what=f"image {image_id} to finish")
    return image_id


# -- item 5: timestamps outside Python's datetime -------------------------------------------------


@pytest.mark.parametrize("run_after", ["0001-01-01T00:00:00+14:00", "0001-01-01T13:59:59+14:00",
                                       "9999-12-31T23:59:59-14:00", "9999-12-31T23:00:00-01:00"])
def test_run_after_outside_years_1_to_9999_in_utc_is_422(daemon, db, run_after):
    before = row_count(db)
    answer = daemon.post("/v1/images", json={"prompt": "out of range", "run_after": run_after})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"].startswith("run_after must be between 0001-01-01 and 9999-12-31 in UTC")
    assert row_count(db) == before


def test_the_edges_of_the_range_are_taken(daemon, db):
    for run_after in ("0001-01-01T14:00:00+14:00", "9999-12-31T23:59:59Z"):
        answer = daemon.post("/v1/images", json={"prompt": "edge", "run_after": run_after, "backend": "local"})
        assert answer.status_code == 201, answer.text
        shown = daemon.get(f"/v1/images/{answer.json()['id']}").json()["timings"]["run_after"]
        assert shown.startswith(("0001-01-01T00:00:00", "9999-12-31T23:59:59")), shown
        db.execute("DELETE FROM images WHERE id = %s", [answer.json()["id"]])


def test_rows_with_timestamps_python_cannot_hold_break_no_page(daemon, db):
    png = base64.b64encode(placeholder_png("edge")).decode()
    ids = [
        # Waiting for a backend this daemon does not serve, so they stay as written.
        insert_image(db, "never runs", backend="local", run_after="infinity"),
        insert_image(db, "runs since 1 BC", backend="local", run_after="0001-12-31 10:00:00+00 BC"),
        insert_image(db, "runs in 10000", backend="local", run_after="10000-01-01 13:59:59+00"),
        insert_image(db, "done at infinity", status="ReadyToPublish", base64=png, created_at="-infinity",
                     started_at="10000-01-01", finished_at="infinity"),
        insert_image(db, "failed long ago", status="Failed", error="boom", finished_at="-infinity"),
    ]
    running = insert_image(db, "generating since -infinity", backend="local")
    db.execute("UPDATE images SET status = 'Generate', locked_by = %s, lease_until = now() + interval '1 hour', "
               "started_at = '-infinity', attempts = 1, progress = 0.5 WHERE id = %s", [GHOST, running])
    ids.append(running)
    try:
        for path in ("/", "/fragments/live", "/fragments/recent", "/metrics", "/v1/backends"):
            answer = daemon.get(path)
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
        for image_id in ids:
            for path in (f"/v1/images/{image_id}", f"/images/{image_id}", f"/fragments/images/{image_id}",
                         f"/v1/images/{image_id}/image", f"/images/{image_id}/thumbnail",
                         f"/v1/images/{image_id}/preview"):
                answer = daemon.get(path)
                assert answer.status_code < 500, (path, answer.status_code, answer.text[:300])
        never = daemon.get(f"/v1/images/{ids[0]}").json()["timings"]
        assert never["run_after"] == "9999-12-31T23:59:59.999999+00:00"
        assert daemon.get(f"/v1/images/{ids[1]}").json()["timings"]["run_after"] == "0001-01-01T00:00:00+00:00"
        done = daemon.get(f"/v1/images/{ids[3]}").json()
        assert done["timings"]["created_at"] == "0001-01-01T00:00:00+00:00"
        assert done["timings"]["finished_at"] == "9999-12-31T23:59:59.999999+00:00"
        assert daemon.get(f"/v1/images/{ids[3]}/image").status_code == 200
        page = daemon.get(f"/images/{ids[0]}").text
        assert "after 9999 (or infinity)" in page
        assert "before year 1 (or -infinity)" in daemon.get(f"/images/{ids[4]}").text
    finally:
        db.execute("DELETE FROM images WHERE id = ANY(%s)", [ids])


# -- item 9: only what the daemon stored --------------------------------------------------------


def png_file(path: Path, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (1, 2, 3)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def test_only_the_daemons_own_file_for_the_row_is_served(daemon, db, store_dir, tmp_path):
    image_id = finished_row(daemon, "stored in the folder")
    other_id = finished_row(daemon, "another row")
    stored = fetch_image(db, image_id)
    assert stored["output_path"] == str((store_dir / f"{image_id}.png").resolve())
    db.execute("UPDATE images SET base64 = NULL, thumbnail = NULL WHERE id = ANY(%s)", [[image_id, other_id]])
    answer = daemon.get(f"/v1/images/{image_id}/image")
    assert (answer.status_code, answer.content) == (200, (store_dir / f"{image_id}.png").read_bytes())

    outside = tmp_path / f"{image_id}.png"
    png_file(outside)
    (store_dir / "link").mkdir()
    (store_dir / "link" / f"{image_id}.png").symlink_to(outside)

    def producer_row(**columns: Any) -> int:
        return insert_image(db, "a producer's location", status="ReadyToPublish", backend="local", **columns)

    refused = {
        "a file outside the store": producer_row(output_path=str(outside)),
        "a file:// URL outside the store": producer_row(output_url=outside.as_uri(), format="png"),
        "another row's stored file": producer_row(output_path=str(store_dir / f"{other_id}.png")),
        "another row's file URL": producer_row(output_url=(store_dir / f"{other_id}.png").as_uri()),
        "a file in a folder of the store": producer_row(output_path=str(store_dir / "link" / f"{image_id}.png")),
        "a relative path": producer_row(output_path=f"{image_id}.png"),
        "the host's files": producer_row(output_path="/etc/passwd", output_url="file:///etc/hostname"),
    }
    # A link in the store's folder under the row's own name, leading out of it.
    link_row = producer_row()
    (store_dir / f"{link_row}.png").symlink_to(outside)
    db.execute("UPDATE images SET output_path = %s WHERE id = %s", [str(store_dir / f"{link_row}.png"), link_row])
    refused["a link in the store leading out"] = link_row
    for what, row_id in refused.items():
        for path in (f"/v1/images/{row_id}/image", f"/images/{row_id}/full", f"/images/{row_id}/thumbnail"):
            answer = daemon.get(path)
            assert answer.status_code == 404, (what, path, answer.status_code)
            assert "a location written by a producer is not served" in answer.json()["error"], (what, path)
    # The other row's file stays its own: served for it, by its id.
    assert daemon.get(f"/v1/images/{other_id}/image").status_code == 200
    db.execute("DELETE FROM images WHERE id = ANY(%s)", [list(refused.values())])


def test_a_producers_thumbnail_url_outside_the_store_is_not_read(daemon, db, tmp_path):
    outside = tmp_path / "1.thumb.webp"
    Image.new("RGB", (8, 8)).save(outside, format="WEBP")
    png = placeholder_png("full")
    row = insert_image(db, "thumb elsewhere", status="ReadyToPublish", backend="local",
                       base64=base64.b64encode(png).decode(), thumbnail_url=outside.as_uri())
    answer = daemon.get(f"/images/{row}/thumbnail")
    assert (answer.status_code, answer.content) == (200, png)  # the full image, not the producer's file


# -- item 13: no open redirect, no remote images -----------------------------------------------


def test_a_producers_http_url_is_neither_redirected_to_nor_an_image_the_page_loads(daemon, db):
    row = insert_image(db, "elsewhere", status="ReadyToPublish", backend="local",
                       output_url="https://evil.example/1.png", thumbnail_url="https://evil.example/1.webp")
    for path in (f"/v1/images/{row}/image", f"/images/{row}/full", f"/images/{row}/thumbnail"):
        answer = daemon.client.get(path, follow_redirects=False)
        assert answer.status_code == 404, (path, answer.status_code)
        assert "location" not in answer.headers
    policy = daemon.get("/").headers["content-security-policy"]
    img_src = next(part.split()[1:] for part in policy.split(";") if part.split()[:1] == ["img-src"])
    assert img_src == ["'self'", "data:"]
    assert "evil.example" not in "".join(
        line for line in daemon.get(f"/images/{row}").text.splitlines() if "<img" in line)


# -- item 13: every error in JSON ----------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/images/-1", 404), ("GET", "/v1/nothing", 404), ("GET", "/nothing/at/all", 404),
    ("GET", "/static/nope.js", 404), ("PATCH", "/v1/images/1", 405), ("GET", "/v1/images/1/cancel", 405),
    ("PUT", "/v1/images", 405),
])
def test_every_error_is_the_apis_json(daemon, method, path, status):
    answer = daemon.client.request(method, path, headers=daemon.auth)
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/json"
    assert isinstance(answer.json()["error"], str) and answer.json()["error"]


def test_a_request_that_is_not_http_gets_a_json_400(daemon):
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"content-type: application/json" in head.lower()
    assert "error" in json.loads(body)


# -- item 13: a huge params is returned cut --------------------------------------------------------


def test_a_huge_params_is_returned_cut_and_says_so(daemon, db):
    blob = "x" * (5 * 1024 * 1024)
    row = insert_image(db, "huge params", backend="local", params={"blob": blob})
    answer = daemon.get(f"/v1/images/{row}")
    assert answer.status_code == 200
    assert len(answer.content) < 200_000
    parameters = answer.json()["parameters"]
    assert parameters["params_truncated"] is True
    assert parameters["params"].startswith('{"blob": "xxx') and len(parameters["params"]) == 64 * 1024
    page = daemon.get(f"/images/{row}")
    assert page.status_code == 200 and len(page.content) < 200_000
    small = daemon.get(f"/v1/images/{insert_image(db, 'small', backend='local', params={'a': 1})}").json()
    assert small["parameters"]["params"] == {"a": 1} and small["parameters"]["params_truncated"] is False
    db.execute("DELETE FROM images WHERE prompt IN ('huge params', 'small')")


# -- item 13: the cross-column rules are in the OpenAPI document --------------------------------


CROSS_COLUMN_REFUSED = [
    {"prompt": "p", "mask_image": PNG},
    {"prompt": "p", "mask_image": PNG, "init_image": None},
    {"prompt": "p", "strength": 0.5},
    {"prompt": "p", "init_image": PNG, "init_image_id": 1},
    {"prompt": "p", "reference_image": PNG, "reference_image_id": 1},
    {"prompt": "p", "reference_scale": 0.5},
    {"prompt": "p", "task": "upscale", "init_image": PNG},
    {"prompt": "p", "task": "upscale", "upscale": 4},
    {"prompt": "p", "upscale": 4},
    {"prompt": "   "},
    {"prompt": "p", "model": " "},
]
CROSS_COLUMN_TAKEN = [
    {"prompt": "p", "init_image": PNG, "strength": 0.5, "mask_image": PNG},
    {"prompt": "p", "init_image": None, "init_image_id": None, "mask_image": None, "strength": None},
    {"prompt": "p", "reference_image": PNG, "reference_scale": 0.5},
    {"prompt": "p", "task": "upscale", "init_image": PNG, "upscale": 4},
]


def test_the_schema_refuses_what_the_cross_column_rules_refuse(daemon, db):
    document = daemon.get("/openapi.json").json()
    schema = {**document["components"]["schemas"]["ImageCreate"], "components": document["components"]}
    validator = jsonschema.Draft202012Validator(schema)
    before = row_count(db)
    for body in CROSS_COLUMN_REFUSED:
        assert daemon.post("/v1/images", json=body).status_code == 422, body
        assert not validator.is_valid(body), f"the schema takes a body the API refuses: {body}"
    assert row_count(db) == before
    for body in CROSS_COLUMN_TAKEN:
        assert validator.is_valid(body), body
        answer = daemon.post("/v1/images", json={**body, "backend": "local"})
        assert answer.status_code == 201, (body, answer.text)
        db.execute("DELETE FROM images WHERE id = %s", [answer.json()["id"]])


# -- item 10: Host, and the token for every read ------------------------------------------------


def test_a_host_this_listener_does_not_answer_for_is_421(daemon, db):
    before = row_count(db)
    for host in ("evil.example", f"evil.example:{daemon.port}", "127.0.0.1.evil.example", "localhost.evil"):
        for method, path in (("GET", "/v1/backends"), ("GET", "/"), ("GET", "/metrics"), ("POST", "/v1/images")):
            answer = daemon.client.request(method, path, headers={"Host": host, **daemon.auth}, json={"prompt": "x"})
            assert answer.status_code == 421, (host, path, answer.status_code)
            assert "IMAGEND_HTTP_ALLOWED_HOSTS" in answer.json()["error"]
    assert row_count(db) == before
    for probe in ("/healthz", "/readyz"):  # open to anyone anyway: a kubelet names the pod's address
        assert daemon.get(probe, headers={"Host": "10.0.0.7:9464"}).status_code == 200
    for host in (f"127.0.0.1:{daemon.port}", "127.0.0.1", f"localhost:{daemon.port}", "LOCALHOST",
                 f"[::1]:{daemon.port}"):
        assert daemon.get("/v1/backends", headers={"Host": host}).status_code == 200, host


def test_allowed_hosts_and_the_read_token_on_loopback(module_db):
    env = {"IMAGEND_HTTP_ALLOWED_HOSTS": "imagend.example, 10.1.2.3", "IMAGEND_HTTP_READ_TOKEN": "required"}
    with HttpDaemon(module_db, **env) as guarded:
        assert guarded.get("/v1/backends", headers={"Host": "imagend.example:443", **guarded.auth}).status_code == 200
        assert guarded.get("/v1/backends", headers={"Host": "10.1.2.3", **guarded.auth}).status_code == 200
        assert guarded.get("/v1/backends", headers={"Host": "other.example", **guarded.auth}).status_code == 421
        for path in ("/v1/backends", "/openapi.json", "/metrics", "/fragments/live", "/images/1"):
            refused = guarded.get(path)
            assert refused.status_code == 401, path
            assert "IMAGEND_HTTP_READ_TOKEN=required" in refused.json()["error"]
            assert guarded.get(path, headers=guarded.auth).status_code in (200, 404), path
        assert guarded.get("/").status_code == 401  # the page's shell, asking for the token
        assert guarded.get("/healthz").status_code == 200 and guarded.get("/readyz").status_code == 200
    assert TOKEN not in guarded.process.output()


def test_the_read_token_required_without_a_token_stops_the_start(module_db):
    env = base_env(module_db, IMAGEND_HTTP=f"127.0.0.1:{free_port()}", IMAGEND_HTTP_READ_TOKEN="required")
    result = run_imagend(["-cron"], env, timeout=30)
    assert result.returncode != 0
    assert "IMAGEND_HTTP_READ_TOKEN=required needs IMAGEND_HTTP_TOKEN" in result.stdout + result.stderr


# -- item 13: the read cookie ---------------------------------------------------------------------


def test_the_read_cookie_expires_and_is_dropped_or_revoked(module_db):
    with HttpDaemon(module_db, host="0.0.0.0") as daemon:
        answer = daemon.post("/session")
        assert answer.status_code == 204
        set_cookie = answer.headers["set-cookie"].lower()
        assert "max-age=43200" in set_cookie and "httponly" in set_cookie and "samesite=strict" in set_cookie
        cookie = answer.cookies["imagend_read"]
        daemon.client.cookies.clear()
        expires, _, signature = cookie.partition(".")
        assert abs(int(expires) - (time.time() + 43200)) < 120

        def read_with(value: str) -> int:
            return daemon.get("/v1/backends", headers={"Cookie": f"imagend_read={value}"}).status_code

        assert read_with(cookie) == 200
        assert read_with(f"{int(time.time()) - 1}.{signature}") == 401  # an expiry of its own: the signature binds it
        assert read_with(f"{int(expires) + 86400}.{signature}") == 401
        assert read_with(signature) == 401
        dropped = daemon.client.delete("/session")
        assert dropped.status_code == 204
        assert "max-age=0" in dropped.headers["set-cookie"].lower()  # the browser forgets it
    other_token = "another-token-0123456789abcdef"
    with HttpDaemon(module_db, host="0.0.0.0", token=other_token) as rotated:
        # The token changed: every cookie made with the old one is refused.
        assert rotated.get("/v1/backends", headers={"Cookie": f"imagend_read={cookie}"}).status_code == 401


# -- item 11: S3 down ------------------------------------------------------------------------------


def test_while_s3_is_down_images_are_503_naming_the_store_and_readyz_is_503(server_url, template_db):
    # A database of its own: the module's daemon would claim the row and keep it in base64.
    with own_database(server_url, template_db) as url, MotoServer() as s3:
        bucket = s3.create_bucket("imagend-down")
        env = s3.env(bucket, "images", IMAGEND_STORE_BASE64="false")
        with HttpDaemon(url, **env) as daemon:
            image_id = finished_row(daemon, "kept in S3")
            assert daemon.get(f"/v1/images/{image_id}/image").status_code == 200
            s3.stop()
            answer = daemon.get(f"/v1/images/{image_id}/image")
            assert answer.status_code == 503, answer.text
            assert f"IMAGEND_STORAGE_URL=s3://{bucket}/images" in answer.json()["error"]
            assert daemon.get(f"/images/{image_id}/thumbnail").status_code == 503

            def readyz_is(status: int) -> Any:
                answer = daemon.get("/readyz")
                return answer.json() if answer.status_code == status else None

            not_ready = wait_until(lambda: readyz_is(503), 30, interval=0.5, what="/readyz to say 503")
            assert "store" in not_ready["reason"] and bucket in not_ready["reason"]
            assert daemon.get("/healthz").status_code == 200  # alive: only not ready
            s3.start()
            s3.create_bucket(bucket)  # moto keeps nothing across a restart
            wait_until(lambda: readyz_is(200), 30, interval=0.5, what="/readyz to be ready again")
        assert s3.secret not in daemon.process.output()
