"""The JSON API against a real daemon (`imagend -cron`, placeholder backend, IMAGEND_HTTP on a free
port, one daemon for the module): every endpoint, end to end, and every bad input and attack of
issue 8 answered with a 4xx and a readable JSON error, with no row written."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from PIL import Image
from psycopg.rows import dict_row

from imagend.db.columns import BACKEND_NAMES
from imagend.images.inputs import to_base64_png

from support.db import fetch_image, wait_until
from support.http_daemon import HttpDaemon, own_database

PNG = to_base64_png(Image.new("RGB", (8, 8), (200, 30, 30)))
MASK = to_base64_png(Image.new("L", (8, 8), 255))


def webp_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 120, 200)).save(buffer, format="WEBP", quality=60)
    return buffer.getvalue()


XSS_PROMPTS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "</textarea><script>alert(document.cookie)</script>",
]


@pytest.fixture(scope="module")
def module_db(server_url: str, template_db: str) -> Iterator[str]:
    with own_database(server_url, template_db) as url:
        yield url


@pytest.fixture(scope="module")
def daemon(module_db: str) -> Iterator[HttpDaemon]:
    with HttpDaemon(module_db) as running:
        yield running


@pytest.fixture
def db(module_db: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(module_db, autocommit=True, row_factory=dict_row) as connection:
        yield connection


def row_count(db: Any) -> int:
    return int(db.execute("SELECT count(*) AS n FROM images").fetchone()["n"])


def wait_status(daemon: HttpDaemon, image_id: int, statuses: tuple[str, ...], timeout: float = 15.0) -> Any:
    def finished() -> Any:
        body = daemon.get(f"/v1/images/{image_id}").json()
        return body if body["status"] in statuses else None

    return wait_until(finished, timeout, what=f"image {image_id} to reach {statuses}")


@pytest.fixture
def paused(daemon: HttpDaemon) -> Iterator[None]:
    """The placeholder backend paused for the test, resumed after it whatever happens."""
    assert daemon.post("/v1/backends/placeholder/pause").status_code == 200
    yield
    daemon.post("/v1/backends/*/resume")


# -- the happy paths -------------------------------------------------------------------------


def test_an_inserted_row_is_generated_and_its_image_downloads(daemon, db):
    answer = daemon.post("/v1/images", json={"prompt": "a red fox", "width": 32, "height": 24, "seed": 7,
                                             "params": {"model": "m1", "mine": [1, 2]}, "priority": 3})
    assert answer.status_code == 201, answer.text
    image_id = answer.json()["id"]
    assert answer.headers["location"] == f"/v1/images/{image_id}"
    row = fetch_image(db, image_id)
    assert (row["prompt"], row["width"], row["height"], row["seed"], row["priority"]) == ("a red fox", 32, 24, 7, 3)
    assert row["params"] == {"model": "m1", "mine": [1, 2]}

    body = wait_status(daemon, image_id, ("ReadyToPublish",))
    assert body["id"] == image_id and body["error"] is None and body["position"] is None
    assert body["parameters"]["prompt"] == "a red fox" and body["parameters"]["model"] == "m1"
    assert body["parameters"]["width"] == 32 and body["parameters"]["backend"] == "placeholder"
    assert body["parameters"]["params"] == {"model": "m1", "mine": [1, 2]}
    assert body["timings"]["finished_at"] and body["timings"]["created_at"]
    # A link a browser opens: signed with a key derived from the token, so it needs none (issue 23).
    assert body["image_url"].startswith(f"/v1/images/{image_id}/image?expires=")
    assert "base64" not in body and "base64" not in daemon.get(f"/v1/images/{image_id}").text

    image = daemon.get(body["image_url"])
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert image.content == base64.b64decode(fetch_image(db, image_id)["base64"])
    assert Image.open(io.BytesIO(image.content)).format == "PNG"  # the placeholder makes 16x16 whatever the size


@pytest.mark.parametrize(("fmt", "content_type", "pil_format"),
                         [("webp", "image/webp", "WEBP"), ("jpg", "image/jpeg", "JPEG")])
def test_the_image_comes_with_its_formats_content_type(daemon, fmt, content_type, pil_format):
    image_id = daemon.post("/v1/images", json={"prompt": "a format", "format": fmt, "quality": 70}).json()["id"]
    wait_status(daemon, image_id, ("ReadyToPublish",))
    image = daemon.get(f"/v1/images/{image_id}/image")
    assert image.headers["content-type"] == content_type
    assert Image.open(io.BytesIO(image.content)).format == pil_format


def test_an_image_in_a_file_outside_the_store_is_not_served(daemon, db, tmp_path):
    """Only what the daemon stored is served (issue 19, item 9; test_http_hardening.py serves a stored
    file): this daemon has no store, so a file a producer names is never read."""
    image_id = daemon.post("/v1/images", json={"prompt": "moved to a file"}).json()["id"]
    wait_status(daemon, image_id, ("ReadyToPublish",))
    path = Path(tmp_path) / f"{image_id}.png"
    path.write_bytes(base64.b64decode(fetch_image(db, image_id)["base64"]))
    db.execute("UPDATE images SET base64 = NULL, output_path = %s WHERE id = %s", [str(path), image_id])
    image = daemon.get(f"/v1/images/{image_id}/image")
    assert image.status_code == 404
    assert "a location written by a producer is not served" in image.json()["error"]


def test_xss_prompts_round_trip_as_data(daemon, db):
    for prompt in XSS_PROMPTS:
        answer = daemon.post("/v1/images", json={"prompt": prompt, "negative_prompt": prompt})
        assert answer.status_code == 201
        image_id = answer.json()["id"]
        assert fetch_image(db, image_id)["prompt"] == prompt
        shown = daemon.get(f"/v1/images/{image_id}")
        assert shown.headers["content-type"] == "application/json"
        assert shown.json()["parameters"]["prompt"] == prompt
        assert shown.json()["parameters"]["negative_prompt"] == prompt


def test_null_columns_take_the_daemons_defaults(daemon, db, paused):
    answer = daemon.post("/v1/images", json={"prompt": "defaults", "width": None, "backend": None, "priority": None})
    assert answer.status_code == 201, answer.text
    row = fetch_image(db, answer.json()["id"])
    # Read while the backend is paused: generating the row records the width it used.
    assert (row["width"], row["priority"]) == (None, 0)
    assert daemon.post("/v1/backends/*/resume").status_code == 200
    assert wait_status(daemon, row["id"], ("ReadyToPublish",))["parameters"]["backend"] == "placeholder"


def test_the_local_backends_inputs_round_trip_and_show(daemon, db, paused):
    """Every local column through the API into the row; GET shows them, the images as set or not."""
    source = daemon.post("/v1/images", json={
        "prompt": "inpaint a fox", "backend": "local", "model": "sdxl-base",
        "loras": [{"name": "pixel-art", "weight": 0.8}, {"name": "film grain"}],
        "init_image": PNG, "strength": 0.6, "mask_image": MASK, "reference_image": PNG, "reference_scale": 0.5,
    })
    assert source.status_code == 201, source.text
    source_id = source.json()["id"]
    row = fetch_image(db, source_id)
    assert (row["model"], row["strength"], row["reference_scale"]) == ("sdxl-base", 0.6, 0.5)
    assert row["loras"] == [{"name": "pixel-art", "weight": 0.8}, {"name": "film grain"}]
    assert (row["init_image"], row["mask_image"], row["reference_image"]) == (PNG, MASK, PNG)
    assert (row["task"], row["upscale"], row["init_image_id"], row["reference_image_id"]) == (None,) * 4

    chained = daemon.post("/v1/images", json={"prompt": "bigger", "backend": "local", "task": "upscale",
                                              "upscale": 2, "init_image_id": source_id,
                                              "reference_image_id": source_id, "reference_scale": 2})
    assert chained.status_code == 201, chained.text
    chained_id = chained.json()["id"]
    row = fetch_image(db, chained_id)
    assert (row["task"], row["upscale"], row["init_image_id"], row["reference_image_id"]) == \
        ("upscale", 2.0, source_id, source_id)
    assert (row["init_image"], row["loras"], row["model"]) == (None, None, None)

    shown = daemon.get(f"/v1/images/{source_id}")
    parameters = shown.json()["parameters"]
    assert parameters["model"] == "sdxl-base" and parameters["strength"] == 0.6
    assert parameters["loras"] == [{"name": "pixel-art", "weight": 0.8}, {"name": "film grain"}]
    assert (parameters["init_image"], parameters["mask_image"], parameters["reference_image"]) == (True,) * 3
    assert parameters["reference_scale"] == 0.5 and parameters["task"] is None and parameters["upscale"] is None
    assert PNG not in shown.text and MASK not in shown.text  # whether they are set, never the images
    parameters = daemon.get(f"/v1/images/{chained_id}").json()["parameters"]
    assert (parameters["task"], parameters["upscale"], parameters["reference_scale"]) == ("upscale", 2.0, 2.0)
    assert (parameters["init_image_id"], parameters["reference_image_id"]) == (source_id, source_id)
    assert (parameters["init_image"], parameters["mask_image"], parameters["reference_image"]) == (False,) * 3
    assert parameters["loras"] is None


def test_the_preview_of_a_row_is_served_while_it_has_one(daemon, db, paused):
    image_id = daemon.post("/v1/images", json={"prompt": "forming"}).json()["id"]
    none_yet = daemon.get(f"/v1/images/{image_id}/preview")
    assert none_yet.status_code == 404
    assert none_yet.json()["error"].startswith(f"image {image_id} has no preview")
    assert daemon.get(f"/v1/images/{image_id}").json()["preview_url"] is None

    webp = webp_bytes()
    db.execute("UPDATE images SET preview = %s WHERE id = %s", [base64.b64encode(webp).decode(), image_id])
    answer = daemon.get(f"/v1/images/{image_id}/preview")
    assert answer.status_code == 200
    assert (answer.headers["content-type"], answer.headers["cache-control"]) == ("image/webp", "no-store")
    assert answer.content == webp and Image.open(io.BytesIO(answer.content)).format == "WEBP"
    assert daemon.get(f"/v1/images/{image_id}").json()["preview_url"] == f"/v1/images/{image_id}/preview"

    db.execute("UPDATE images SET preview = 'not an image' WHERE id = %s", [image_id])
    assert daemon.get(f"/v1/images/{image_id}/preview").status_code == 404
    db.execute("UPDATE images SET preview = NULL WHERE id = %s", [image_id])
    assert daemon.get(f"/v1/images/{image_id}/preview").status_code == 404


def test_a_waiting_row_shows_its_position_and_estimated_start(daemon, paused):
    first = daemon.post("/v1/images", json={"prompt": "first"}).json()["id"]
    second = daemon.post("/v1/images", json={"prompt": "second"}).json()["id"]
    one, two = daemon.get(f"/v1/images/{first}").json(), daemon.get(f"/v1/images/{second}").json()
    assert one["status"] == two["status"] == "ReadyToGenerate"
    assert two["position"] == one["position"] + 1
    assert two["estimated_start"] is not None


def test_a_row_scheduled_for_later_waits(daemon, db):
    answer = daemon.post("/v1/images", json={"prompt": "later", "run_after": "2999-01-01T00:00:00Z"})
    assert answer.status_code == 201, answer.text
    row = fetch_image(db, answer.json()["id"])
    assert row["run_after"].year == 2999
    assert daemon.get(f"/v1/images/{row['id']}").json()["timings"]["run_after"].startswith("2999-01-01")


# -- cancel and retry ------------------------------------------------------------------------


def test_cancel_and_retry_end_to_end(daemon, db):
    assert daemon.post("/v1/backends/placeholder/pause").status_code == 200
    try:
        image_id = daemon.post("/v1/images", json={"prompt": "changed my mind"}).json()["id"]
        waiting = daemon.post("/v1/images", json={"prompt": "still wanted"}).json()["id"]
        answer = daemon.post(f"/v1/images/{image_id}/cancel")
        assert answer.status_code == 202
        # A waiting row ends in the cancel's own statement: no daemon need claim it first (issue 25, item 3).
        assert answer.json() == {"id": image_id, "status": "Failed", "cancel_requested": True}
        # Retrying a row that is not Failed is refused, and changes nothing.
        refused = daemon.post(f"/v1/images/{waiting}/retry")
        assert refused.status_code == 409
        assert refused.json()["error"] == (f"image {waiting} is ReadyToGenerate: only a Failed image can be retried")
    finally:
        assert daemon.post("/v1/backends/placeholder/resume").status_code == 200
    failed = wait_status(daemon, image_id, ("Failed", "ReadyToPublish"))
    assert (failed["status"], failed["error"]) == ("Failed", "cancelled")
    assert daemon.get(f"/v1/images/{image_id}/image").status_code == 404

    retried = daemon.post(f"/v1/images/{image_id}/retry")
    assert retried.status_code == 200 and retried.json() == {"id": image_id, "status": "ReadyToGenerate"}
    done = wait_status(daemon, image_id, ("ReadyToPublish", "Failed"))
    assert (done["status"], done["error"], done["cancel_requested"]) == ("ReadyToPublish", None, False)

    # A finished row can be neither cancelled nor retried: 409, and the row is as it was.
    for action in ("cancel", "retry"):
        answer = daemon.post(f"/v1/images/{image_id}/{action}")
        assert answer.status_code == 409
        assert "ReadyToPublish" in answer.json()["error"]
    row = fetch_image(db, image_id)
    assert (row["status"], row["cancel_requested"]) == ("ReadyToPublish", False)


def test_cancel_and_retry_of_an_unknown_id_are_404(daemon):
    for action in ("cancel", "retry"):
        answer = daemon.post(f"/v1/images/987654/{action}")
        assert answer.status_code == 404
        assert answer.json() == {"error": "no image with id 987654"}


# -- pause and resume ------------------------------------------------------------------------


def test_pause_stops_claims_and_resume_starts_them_again(daemon, db):
    answer = daemon.post("/v1/backends/placeholder/pause")
    assert answer.status_code == 200
    state = {b["name"]: b for b in answer.json()["backends"]}
    assert state["placeholder"]["paused"] and state["placeholder"]["served"]
    assert state["placeholder"]["paused_by"].startswith("HTTP API")
    try:
        image_id = daemon.post("/v1/images", json={"prompt": "while paused"}).json()["id"]
        time.sleep(1.5)
        assert fetch_image(db, image_id)["status"] == "ReadyToGenerate"
    finally:
        resumed = daemon.post("/v1/backends/placeholder/resume")
    assert resumed.status_code == 200
    assert not {b["name"]: b for b in resumed.json()["backends"]}["placeholder"]["paused"]
    started = time.monotonic()
    wait_status(daemon, image_id, ("ReadyToPublish",), timeout=5.0)
    assert time.monotonic() - started < 3.0


def test_pausing_everything_and_resuming_everything(daemon, db):
    answer = daemon.post("/v1/backends/*/pause")
    assert answer.status_code == 200
    assert answer.json()["all_paused"]
    assert all(b["paused"] for b in answer.json()["backends"])
    try:
        # A named backend's resume does not lift the pause of all.
        still = daemon.post("/v1/backends/placeholder/resume").json()
        assert {b["name"]: b["paused"] for b in still["backends"]}["placeholder"]
        image_id = daemon.post("/v1/images", json={"prompt": "all paused"}).json()["id"]
        time.sleep(1.0)
        assert fetch_image(db, image_id)["status"] == "ReadyToGenerate"
        daemon.post("/v1/backends/local/pause")
    finally:
        resumed = daemon.post("/v1/backends/*/resume")
    assert resumed.json()["pauses"] == [] and not resumed.json()["all_paused"]
    wait_status(daemon, image_id, ("ReadyToPublish",), timeout=5.0)


def test_backends_lists_every_backend_served_and_paused(daemon):
    answer = daemon.get("/v1/backends")
    assert answer.status_code == 200
    backends = answer.json()["backends"]
    assert [b["name"] for b in backends] == list(BACKEND_NAMES)
    assert {b["name"] for b in backends if b["served"]} == {"placeholder"}
    assert not any(b["paused"] for b in backends)


def test_an_unknown_backend_cannot_be_paused(daemon, db):
    for action in ("pause", "resume"):
        answer = daemon.post(f"/v1/backends/dalle/{action}")
        assert answer.status_code == 404
        assert "unknown backend 'dalle'" in answer.json()["error"]
    assert db.execute("SELECT count(*) AS n FROM imagend_paused").fetchone()["n"] == 0


# -- bad input: 4xx, a readable error, no row --------------------------------------------------


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"prompt=hello", 400, "the body is not JSON"),
    (b"{\"prompt\": \"unterminated", 400, "the body is not JSON"),
    (b"", 400, "the body is not JSON"),
    (b"\xff\xfe{}", 400, "the body is not UTF-8"),
    (b"[\"a prompt\"]", 400, "the body must be a JSON object of columns, got a JSON array"),
    (b"\"a prompt\"", 400, "got a JSON string"),
    (b"null", 400, "got a JSON null"),
    (b"{\"prompt\": \"x\", \"width\": NaN}", 400, "the body is not JSON"),
    (b"[" * 100_000, 413, "at most 65536 bytes"),
    (b"[" * 50_000, 400, "the body is not JSON"),  # too deep for the parser: RecursionError, not a 500
])
def test_a_body_that_is_not_a_json_object_is_refused(daemon, db, body, status, message):
    before = row_count(db)
    answer = daemon.post("/v1/images", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]
    assert row_count(db) == before


@pytest.mark.parametrize(("columns", "message"), [
    ({"prompt": "x", "colour": "red", "size": 3}, "unknown columns: colour, size; a producer may write: prompt, "),
    ({"prompt": "x", "status": "ReadyToPublish"}, "producers cannot set status: the daemon writes it"),
    ({"prompt": "x", "base64": "AAAA", "error": None}, "producers cannot set base64, error: the daemon writes them"),
    ({"prompt": "x", "id": 1}, "producers cannot set id"),
    ({"prompt": "x", "locked_by": "me", "attempts": 0}, "producers cannot set attempts, locked_by"),
    ({"prompt": "x", "output_path": "/etc/passwd"}, "producers cannot set output_path"),
    ({"prompt": "x", "cancel_requested": True}, "cancel_requested is not set at insert"),
    ({"prompt": "x", "preview": "AAAA"}, "producers cannot set preview: the daemon writes it"),
])
def test_columns_a_producer_may_not_write_are_400(daemon, db, columns, message):
    before = row_count(db)
    answer = daemon.post("/v1/images", json=columns)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]
    assert row_count(db) == before


@pytest.mark.parametrize(("columns", "message"), [
    ({}, "prompt is required"),
    ({"prompt": None}, "prompt is required"),
    ({"prompt": "   "}, "prompt is empty"),
    ({"prompt": 42}, "prompt must be a string, got a JSON number"),
    ({"prompt": ["a"]}, "prompt must be a string, got a JSON array"),
    ({"prompt": "nul \x00 byte"}, "prompt contains a NUL character"),
    ({"prompt": "x" * 20_000}, "prompt is 20000 characters long, at most 9990"),
    ({"prompt": "x", "width": -5}, "width must be between 1 and 8192, got -5"),
    ({"prompt": "x", "height": 0}, "height must be between 1 and 8192, got 0"),
    ({"prompt": "x", "width": 100_000}, "width must be between 1 and 8192, got 100000"),
    ({"prompt": "x", "width": "512"}, "width must be an integer, got a JSON string"),
    ({"prompt": "x", "width": 512.5}, "width must be an integer, got a JSON number"),
    ({"prompt": "x", "width": True}, "width must be an integer, got a JSON boolean"),
    ({"prompt": "x", "seed": -1}, "seed must be between 0 and"),
    ({"prompt": "x", "seed": 2**64}, "seed must be between 0 and"),
    ({"prompt": "x", "steps": 0}, "steps must be between 1 and 200, got 0"),
    ({"prompt": "x", "guidance": 99.5}, "guidance must be between 0 and 50, got 99.5"),
    ({"prompt": "x", "guidance": "high"}, "guidance must be a number, got a JSON string"),
    ({"prompt": "x", "priority": 2**40}, "priority must be between"),
    ({"prompt": "x", "max_attempts": 0}, "max_attempts must be between 1 and"),
    ({"prompt": "x", "params": [1, 2]}, "params must be a JSON object, got a JSON array"),
    ({"prompt": "x", "params": "{}"}, "params must be a JSON object, got a JSON string"),
    ({"prompt": "x", "params": {"k": "nul \x00"}}, "params contains a NUL character"),
    ({"prompt": "x", "backend": "dalle"}, "unknown backend 'dalle'; use one of: local, fusionbrain, placeholder"),
    ({"prompt": "x", "format": "gif"}, "format must be one of: png, webp, jpeg, jpg; got 'gif'"),
    ({"prompt": "x", "quality": 0}, "quality must be between 1 and 100, got 0"),
    ({"prompt": "x", "quality": 101}, "quality must be between 1 and 100, got 101"),
    ({"prompt": "x", "style": "VAPORWAVE"}, "unknown style 'VAPORWAVE'; use one of: DEFAULT, KANDINSKY, UHD, ANIME"),
    ({"prompt": "x", "scheduler": "s" * 100}, "scheduler is 100 characters long, at most 64"),
    ({"prompt": "x", "run_after": "tomorrow"}, "run_after must be an ISO 8601 time"),
    ({"prompt": "x", "run_after": "2030-01-01T00:00:00"}, "run_after needs a time zone"),
    # The local backend's inputs, one column at a time …
    ({"prompt": "x", "model": ""}, "model is empty"),
    ({"prompt": "x", "model": 5}, "model must be a string, got a JSON number"),
    ({"prompt": "x", "model": "m" * 100}, "model is 100 characters long, at most 64"),
    ({"prompt": "x", "loras": {"name": "a"}}, "loras must be a JSON array like"),
    ({"prompt": "x", "loras": "pixel-art"}, "loras must be a JSON array like"),
    ({"prompt": "x", "loras": [{"weight": 1}]}, 'loras: each LoRA is {"name": "<file name>"'),
    ({"prompt": "x", "loras": [{"name": "a", "scale": 1}]}, "loras: each LoRA is"),
    ({"prompt": "x", "loras": [7]}, "loras: each LoRA is"),
    ({"prompt": "x", "loras": [{"name": "a", "weight": "high"}]}, "loras: LoRA 'a': weight must be a number"),
    ({"prompt": "x", "loras": [{"name": "a", "weight": 9}]}, "loras: LoRA 'a': weight must be between -4 and 4"),
    ({"prompt": "x", "loras": [{"name": "../../etc/passwd"}]}, "is not a file name"),
    ({"prompt": "x", "loras": [{"name": f"l{n}"} for n in range(9)]}, "loras lists 9 LoRAs; at most 8"),
    ({"prompt": "x", "loras": [{"name": "a"}, {"name": "a"}]}, "loras names the same LoRA twice"),
    ({"prompt": "x", "task": "inpaint"}, "unknown task 'inpaint'; use null (inferred from the images) or one of"),
    ({"prompt": "x", "task": 1}, "task must be a string, got a JSON number"),
    ({"prompt": "x", "strength": 0}, "strength must be above 0 and at most 1, got 0"),
    ({"prompt": "x", "strength": 1.5}, "strength must be above 0 and at most 1, got 1.5"),
    ({"prompt": "x", "strength": "0.5"}, "strength must be a number, got a JSON string"),
    ({"prompt": "x", "reference_scale": 3}, "reference_scale must be between 0 and 2, got 3"),
    ({"prompt": "x", "reference_scale": -0.5}, "reference_scale must be between 0 and 2, got -0.5"),
    ({"prompt": "x", "upscale": 3}, "upscale must be 2 or 4, got 3"),
    ({"prompt": "x", "upscale": True}, "upscale must be a number, got a JSON boolean"),
    ({"prompt": "x", "init_image_id": 0}, "init_image_id must be between 1 and 2147483647, got 0"),
    ({"prompt": "x", "init_image_id": 2**31}, "init_image_id must be between 1 and"),
    ({"prompt": "x", "reference_image_id": "7"}, "reference_image_id must be an integer, got a JSON string"),
    ({"prompt": "x", "init_image": 5}, "init_image must be a string, got a JSON number"),
    ({"prompt": "x", "mask_image": "  "}, "mask_image is empty"),
    ({"prompt": "x", "reference_image": "nul \x00"}, "reference_image contains a NUL character"),
    # … and what they need of each other.
    ({"prompt": "x", "init_image": PNG, "init_image_id": 1}, "init_image and init_image_id are both set; set one"),
    ({"prompt": "x", "reference_image": PNG, "reference_image_id": 1},
     "reference_image and reference_image_id are both set; set one"),
    ({"prompt": "x", "strength": 0.5}, "strength needs an init image (init_image or init_image_id)"),
    ({"prompt": "x", "mask_image": MASK}, "mask_image needs an init image"),
    ({"prompt": "x", "reference_scale": 1}, "reference_scale needs a reference image"),
    ({"prompt": "x", "task": "upscale", "upscale": 2}, "task 'upscale' needs an init image"),
    ({"prompt": "x", "task": "Upscale", "init_image": PNG}, "task 'upscale' needs upscale: 2 or 4"),
    ({"prompt": "x", "init_image": PNG, "upscale": 4}, "upscale is only read with task 'upscale'"),
])
def test_wrong_types_and_ranges_are_422_with_a_readable_error(daemon, db, columns, message):
    before = row_count(db)
    answer = daemon.post("/v1/images", json=columns)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert message in answer.json()["error"]
    assert row_count(db) == before


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_50_mb_body_is_refused_without_being_read(daemon, db):
    before, peak_before = row_count(db), _peak_rss_kib(daemon.process.pid)
    body = b'{"prompt": "' + b"x" * (50 * 1024 * 1024) + b'"}'
    declared = daemon.post("/v1/images", content=body, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413
    assert "at most 65536 bytes" in declared.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused once 64 KiB have come
        for start in range(0, len(body), 1024 * 1024):
            yield body[start:start + 1024 * 1024]

    streamed = daemon.post("/v1/images", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert row_count(db) == before
    assert _peak_rss_kib(daemon.process.pid) - peak_before < 20 * 1024, "the daemon held the body in memory"
    assert daemon.get("/healthz").status_code == 200  # and it still answers


@pytest.mark.parametrize("path", [
    "/v1/images/../../etc/passwd",
    "/v1/images/..%2F..%2Fetc%2Fpasswd",
    "/v1/images/1;DROP",
    "/v1/images/1;DROP%20TABLE%20images",
    "/v1/images/1%27%20OR%20%271%27=%271",
    "/v1/images/-1",
    "/v1/images/1.5",
    "/v1/images/0x10",
    "/v1/images/abc/image",
    "/v1/images/1;DROP/image",
])
def test_path_traversal_and_injection_in_ids_are_404(daemon, db, path):
    before = row_count(db)
    answer = daemon.client.get(path)
    assert answer.status_code == 404
    assert daemon.client.post(path, headers=daemon.auth).status_code in (404, 405)
    assert daemon.post(f"{path}/cancel").status_code == 404
    assert row_count(db) == before
    assert "root:" not in answer.text


@pytest.mark.parametrize("image_id", [0, 987654, 2**31 - 1, 2**31, 10**30])
def test_an_unknown_id_is_404(daemon, image_id):
    for path in (f"/v1/images/{image_id}", f"/v1/images/{image_id}/image", f"/v1/images/{image_id}/preview"):
        answer = daemon.get(path)
        assert answer.status_code == 404
        assert answer.json() == {"error": f"no image with id {image_id}"}


def test_the_image_of_a_row_not_finished_is_404(daemon, paused):
    image_id = daemon.post("/v1/images", json={"prompt": "not yet"}).json()["id"]
    answer = daemon.get(f"/v1/images/{image_id}/image")
    assert answer.status_code == 404
    assert answer.json()["error"] == f"image {image_id} has no image: its status is ReadyToGenerate"
    assert daemon.get(f"/v1/images/{image_id}").json()["image_url"] is None


def test_wrong_methods_are_405(daemon):
    assert daemon.client.patch("/v1/images/1", headers=daemon.auth).status_code == 405  # DELETE: docs/owners.md
    assert daemon.client.get("/v1/images/1/cancel").status_code == 405
    assert daemon.client.put("/v1/images", json={"prompt": "x"}, headers=daemon.auth).status_code == 405


# -- the OpenAPI document ----------------------------------------------------------------------


def test_the_openapi_document_is_served_and_valid(daemon):
    answer = daemon.get("/openapi.json")
    assert answer.status_code == 200
    document = answer.json()
    assert document["openapi"].startswith("3.1")
    assert document["components"]["schemas"]["ImageCreate"]["required"] == ["prompt"]
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)


def test_params_python_cannot_decode_are_shown_as_their_text(daemon, db):
    huge = "9" * 5000  # Postgres takes it; Python's int-string limit does not
    image_id = db.execute(f"INSERT INTO images (prompt, params, run_after) VALUES ('raw', '{{\"n\": {huge}}}', "
                          "'2999-01-01') RETURNING id").fetchone()["id"]
    assert daemon.get(f"/v1/images/{image_id}").json()["parameters"]["params"] == f'{{"n": {huge}}}'
