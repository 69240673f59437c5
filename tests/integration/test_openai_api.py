"""The OpenAI Images API of the listener (imagend/http/openai_images.py) driven by the real `openai` SDK
against a real daemon (`imagend -cron`, placeholder backend): generate with b64_json and url, n images
as n rows, each model alias and the configured mapping, streaming, the SDK's own retries attached to the
rows already queued, a full queue's 429, every bad input in OpenAI's error shape with nothing queued, and
the exact requests Open WebUI's "openai" engine sends (its backend/open_webui/routers/images.py).
Edits and partial images need the local backend: tests/local/test_compatible_apis_local.py."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import psycopg
import pytest
from PIL import Image
from psycopg.rows import dict_row

from support.db import insert_image, wait_until
from support.http_daemon import TOKEN, HttpDaemon, own_database

MODELS = "gpt-image-1-mini=fusionbrain,house=placeholder"


@pytest.fixture(scope="module")
def module_db(server_url: str, template_db: str) -> Iterator[str]:
    with own_database(server_url, template_db) as url:
        yield url


@pytest.fixture(scope="module")
def daemon(module_db: str) -> Iterator[HttpDaemon]:
    # Reads need the token here, so that a `url` answer is served on its signature alone.
    with HttpDaemon(module_db, IMAGEND_OPENAI_MODELS=MODELS, IMAGEND_HTTP_MAX_WAITING="3",
                    IMAGEND_HTTP_READ_TOKEN="required") as running:
        yield running


@pytest.fixture
def db(module_db: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(module_db, autocommit=True, row_factory=dict_row) as connection:
        yield connection


@pytest.fixture
def client(daemon: HttpDaemon) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=TOKEN, timeout=20.0) as sdk:
        yield sdk


def row_count(db: Any) -> int:
    return int(db.execute("SELECT count(*) AS n FROM images").fetchone()["n"])


def rows_with(db: Any, prompt: str) -> list[dict[str, Any]]:
    return list(db.execute("SELECT * FROM images WHERE prompt = %s ORDER BY id", [prompt]).fetchall())


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# -- generations ---------------------------------------------------------------------------------


def test_generate_n3_b64_json_is_three_rows_and_three_images(client, db):
    answer = client.images.with_raw_response.generate(prompt="three red foxes", model="gpt-image-1", n=3,
                                                        size="32x24", response_format="b64_json", user="tester-7")
    images = answer.parse()
    ids = [int(image_id) for image_id in answer.headers["x-imagend-ids"].split(",")]
    assert len(images.data) == 3 and len(ids) == 3
    for item in images.data:
        assert item.url is None
        assert png(base64.b64decode(item.b64_json)).format == "PNG"
    assert images.output_format == "png" and images.size == "16x16"  # the placeholder's own size
    rows = rows_with(db, "three red foxes")
    assert [row["id"] for row in rows] == ids
    assert {(row["width"], row["height"], row["status"]) for row in rows} == {(32, 24, "ReadyToPublish")}
    assert rows[0]["params"] == {"api": "openai", "endpoint": "generations", "client_model": "gpt-image-1",
                                 "user": "tester-7"}


def test_generate_url_is_signed_and_served_without_the_token(client, daemon):
    images = client.images.generate(prompt="a fox by url", model="dall-e-3", response_format="url")
    url = images.data[0].url
    assert url is not None and url.startswith(f"{daemon.url}/v1/images/files/")
    fetched = httpx.get(url)  # no Authorization: the signature is the grant (reads need the token here)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert png(fetched.content).size == (16, 16)
    tampered = httpx.get(url.replace("signature=", "signature=0"))
    assert tampered.status_code == 401 and set(tampered.json()["error"]) == {"message", "type", "param", "code"}
    expired = httpx.get(url.split("?")[0] + "?expires=1&signature=" + url.rsplit("=", 1)[1])
    assert expired.status_code == 401


def test_dall_e_answers_a_url_by_default_and_gpt_image_base64(client):
    assert client.images.generate(prompt="default format", model="dall-e-2").data[0].url is not None
    assert client.images.generate(prompt="default format", model="gpt-image-1.5").data[0].b64_json is not None


@pytest.mark.parametrize("model", ["dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1.5", "house", "placeholder"])
def test_each_model_alias_makes_an_image(client, db, model):
    prompt = f"alias {model}"
    images = client.images.generate(prompt=prompt, model=model, response_format="b64_json",
                                    output_format="webp", output_compression=60)
    assert png(base64.b64decode(images.data[0].b64_json)).format == "WEBP"
    (row,) = rows_with(db, prompt)
    assert row["params"]["client_model"] == model and (row["format"], row["quality"]) == ("webp", 60)
    # Mapped (house, placeholder) or not (the daemon's default, filled in at the claim): placeholder.
    assert row["backend"] == "placeholder" and row["model"] is None


def test_a_model_mapped_to_another_backend_queues_its_rows_there(daemon, db):
    prompt = "mapped to fusion brain"
    with openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=TOKEN, timeout=1.0, max_retries=0) as sdk, \
            pytest.raises(openai.APITimeoutError):
        sdk.images.generate(prompt=prompt, model="gpt-image-1-mini")  # no daemon serves fusionbrain here
    (row,) = rows_with(db, prompt)
    assert (row["backend"], row["status"]) == ("fusionbrain", "ReadyToGenerate")
    db.execute("DELETE FROM images WHERE id = %s", [row["id"]])


def test_quality_maps_to_steps_only_for_the_local_backend(client, db):
    client.images.generate(prompt="quality high", model="dall-e-3", quality="high")
    assert rows_with(db, "quality high")[0]["steps"] is None  # the placeholder: no steps to set


def test_stream_yields_the_completed_image(client, db):
    events = list(client.images.generate(prompt="a streamed fox", model="gpt-image-1", stream=True))
    assert [event.type for event in events] == ["image_generation.completed"]
    assert png(base64.b64decode(events[0].b64_json)).format == "PNG"
    assert events[0].output_format == "png" and events[0].size == "16x16"
    assert len(rows_with(db, "a streamed fox")) == 1


def test_a_prompt_past_999_characters_comes_back_as_the_revised_prompt(client):
    prompt = "fox " * 300
    item = client.images.generate(prompt=prompt, model="gpt-image-1").data[0]
    assert item.revised_prompt == prompt[:999]


# -- a full queue ------------------------------------------------------------------------------------


@pytest.fixture
def paused(daemon: HttpDaemon) -> Iterator[None]:
    assert daemon.post("/v1/backends/placeholder/pause").status_code == 200
    yield
    daemon.post("/v1/backends/*/resume")


def test_a_full_queue_is_429_with_retry_after_and_the_sdks_retry_then_succeeds(daemon, db, paused, caplog):
    blockers = [insert_image(db, "waiting 1"), insert_image(db, "waiting 2"), insert_image(db, "waiting 3")]
    time.sleep(0.6)  # past the listener's cached count of waiting rows
    before = row_count(db)
    with openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=TOKEN, max_retries=0) as sdk, \
            pytest.raises(openai.RateLimitError) as refused:
        sdk.images.generate(prompt="refused while full", model="gpt-image-1")
    headers = refused.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60 and headers["x-should-retry"] == "true"
    assert refused.value.code == "rate_limit_exceeded" and "IMAGEND_HTTP_MAX_WAITING" in refused.value.message
    assert row_count(db) == before  # nothing queued

    threading.Timer(0.5, lambda: daemon.post("/v1/backends/*/resume")).start()
    caplog.set_level(logging.INFO, logger="openai")
    with openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=TOKEN, timeout=20.0) as sdk:
        images = sdk.images.generate(prompt="accepted once there is room", model="gpt-image-1", n=2)
    assert len(images.data) == 2
    assert any("Retrying request" in record.getMessage() for record in caplog.records)
    assert len(rows_with(db, "accepted once there is room")) == 2
    wait_until(lambda: all(row["status"] == "ReadyToPublish" for row in
                           db.execute("SELECT status FROM images WHERE id = ANY(%s)", [blockers]).fetchall()),
               10, what="the blocking rows to finish")


# -- owners' keys (issue 21: docs/owners.md) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def dave_key(module_db: str, daemon: HttpDaemon) -> str:
    """An owner's key; dave's plan lets one row of his wait."""
    from imagend.config.settings import load_settings
    from imagend.db.connect import open_pool
    from imagend.db.owners import OwnersRepository

    from support.db import base_env

    with open_pool(module_db, load_settings(environ=base_env(module_db), env_file=None)) as pool:
        owners = OwnersRepository(pool)
        owners.set_plan("ONE_WAITING", {"max_waiting": 1})
        owners.assign("dave", "ONE_WAITING")
        return owners.create_key("dave")


def test_an_owner_key_queues_for_its_owner_and_a_full_plan_is_a_rate_limit_error(daemon, db, dave_key):
    with openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=dave_key, timeout=20.0, max_retries=0) as sdk:
        answer = sdk.images.with_raw_response.generate(prompt="dave's own", model="gpt-image-1")
        (image_id,) = answer.headers["x-imagend-ids"].split(",")
        assert len(answer.parse().data or []) == 1
        assert db.execute("SELECT owner FROM images WHERE id = %s", [int(image_id)]).fetchone()["owner"] == "dave"
        # Two rows where the plan has room for one: the whole request is refused, nothing queued.
        before = row_count(db)
        with pytest.raises(openai.RateLimitError) as refused:
            sdk.images.generate(prompt="two for dave", model="gpt-image-1", n=2)
        headers = refused.value.response.headers
        assert 1 <= int(headers["retry-after"]) <= 120 and headers["x-should-retry"] == "true"
        assert refused.value.code == "rate_limit_exceeded" and "max_waiting" in refused.value.message
        assert row_count(db) == before
    with httpx.Client(base_url=f"{daemon.url}/v1", timeout=10) as web:
        unknown = web.post("/images/generations", json={"prompt": "x"}, headers={"Authorization": "Bearer imk_0_x"})
    assert unknown.status_code == 401 and unknown.json()["error"]["code"] == "invalid_api_key"



# -- the SDK's retries ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_db(server_url: str, template_db: str) -> Iterator[str]:
    with own_database(server_url, template_db) as url:
        yield url


@pytest.fixture(scope="module")
def slow_daemon(slow_db: str) -> Iterator[HttpDaemon]:
    with HttpDaemon(slow_db, IMAGEND_PLACEHOLDER_DELAY="1.2", IMAGEND_HTTP_MAX_WAIT="2.5") as running:
        yield running


def test_the_sdks_retries_after_client_timeouts_queue_one_set_of_rows(slow_daemon, slow_db, caplog):
    caplog.set_level(logging.INFO, logger="openai")
    started = time.monotonic()
    with openai.OpenAI(base_url=f"{slow_daemon.url}/v1", api_key=TOKEN, timeout=0.7, max_retries=4) as sdk:
        images = sdk.images.generate(prompt="slower than the client's timeout", model="gpt-image-1", n=2)
    assert len(images.data) == 2
    retries = [record for record in caplog.records if "Retrying request" in record.getMessage()]
    assert retries, "the client timed out at least once, and retried"
    assert time.monotonic() - started >= 0.7
    with psycopg.connect(slow_db) as conn:
        (count,) = conn.execute("SELECT count(*) FROM images WHERE prompt = 'slower than the client''s timeout'"
                                ).fetchone()  # type: ignore[misc]
        (keys,) = conn.execute("SELECT count(*) FROM imagend_api_requests").fetchone()  # type: ignore[misc]
    assert count == 2  # not 2 per try
    assert keys == 1


def test_past_the_wait_bound_the_sdks_retry_still_gets_the_images(slow_daemon, slow_db, caplog):
    """Three images at 1.2 s each outlive IMAGEND_HTTP_MAX_WAIT (2.5 s): 503 still_generating, which the
    SDK retries; its retry waits for the same rows and gets them."""
    with openai.OpenAI(base_url=f"{slow_daemon.url}/v1", api_key=TOKEN, timeout=20, max_retries=0) as sdk, \
            pytest.raises(openai.InternalServerError) as bounded:
        sdk.images.generate(prompt="longer than the wait bound, once", model="gpt-image-1", n=3)
    assert bounded.value.status_code == 503 and bounded.value.code == "still_generating"
    assert bounded.value.response.headers["x-should-retry"] == "true"
    assert bounded.value.response.headers["retry-after"] == "1"
    caplog.set_level(logging.INFO, logger="openai")
    with openai.OpenAI(base_url=f"{slow_daemon.url}/v1", api_key=TOKEN, timeout=20, max_retries=2) as sdk:
        images = sdk.images.generate(prompt="longer than the wait bound, retried", model="gpt-image-1", n=3)
    assert len(images.data) == 3
    assert any("Retrying request" in record.getMessage() for record in caplog.records)
    with psycopg.connect(slow_db) as conn:
        (count,) = conn.execute("SELECT count(*) FROM images WHERE prompt = 'longer than the wait bound, retried'"
                                ).fetchone()  # type: ignore[misc]
    assert count == 3


def test_a_retry_header_alone_does_not_attach_a_new_request(slow_daemon, slow_db):
    """Two requests with the same body and retry count 0 are two requests (a user asking twice)."""
    body = {"prompt": "asked twice", "model": "gpt-image-1"}
    headers = {"Authorization": f"Bearer {TOKEN}", "x-stainless-retry-count": "0"}
    with httpx.Client(base_url=slow_daemon.url, timeout=20) as web:
        first = web.post("/v1/images/generations", json=body, headers=headers)
        second = web.post("/v1/images/generations", json=body, headers=headers)
        retried = web.post("/v1/images/generations", json=body, headers={**headers, "x-stainless-retry-count": "1"})
    assert first.status_code == second.status_code == retried.status_code == 200
    assert first.headers["x-imagend-ids"] != second.headers["x-imagend-ids"]
    assert retried.headers["x-imagend-ids"] == second.headers["x-imagend-ids"]


# -- bad input -------------------------------------------------------------------------------------


BAD_GENERATIONS = [
    ({"prompt": "x", "n": 0}, "n", "integer_below_min_value"),
    ({"prompt": "x", "n": 11}, "n", "integer_above_max_value"),
    ({"prompt": "x", "n": "three"}, "n", "invalid_type"),
    ({"prompt": "x", "size": "0x0"}, "size", None),
    ({"prompt": "x", "size": "99999x1"}, "size", None),
    ({"prompt": "x", "size": "big"}, "size", "invalid_value"),
    ({"prompt": "x", "model": "dall-e-4"}, "model", "model_not_found"),
    ({"prompt": "x", "response_format": "xml"}, "response_format", "invalid_value"),
    ({"prompt": "x", "output_format": "gif"}, "output_format", "invalid_value"),
    ({"prompt": "x", "output_compression": 101}, "output_compression", "integer_above_max_value"),
    ({"prompt": "x", "background": "transparent"}, "background", "unsupported_value"),
    ({"prompt": "x", "quality": "ultra"}, "quality", "invalid_value"),
    ({"prompt": "x", "partial_images": 2}, "partial_images", "invalid_value"),
    ({"prompt": "x", "frame_count": 8}, "frame_count", "unsupported_parameter"),
    ({"prompt": "x", "colour": "red"}, "colour", "unknown_parameter"),
    ({"prompt": ""}, "prompt", "invalid_value"),
    ({"model": "dall-e-2"}, "prompt", "missing_required_parameter"),
    ({"prompt": "x\u0000y"}, "prompt", None),
    ({"prompt": "x" * 10_000}, "prompt", None),
]


@pytest.mark.parametrize(("body", "param", "code"), BAD_GENERATIONS, ids=[str(b)[:40] for b, _, _ in BAD_GENERATIONS])
def test_bad_generation_bodies_are_400_in_openais_shape_and_queue_nothing(daemon, db, body, param, code):
    before = row_count(db)
    answer = daemon.post("/v1/images/generations", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert answer.headers["x-should-retry"] == "false"
    assert row_count(db) == before


def test_the_sdk_raises_bad_request_for_n_11(client, db):
    before = row_count(db)
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(prompt="too many", n=11)
    assert refused.value.param == "n" and row_count(db) == before


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_malformed_bodies_are_400(daemon, db, body):
    before = row_count(db)
    answer = daemon.post("/v1/images/generations", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_json"
    assert row_count(db) == before


def test_wrong_or_missing_key_is_401_and_the_key_is_never_echoed(daemon, db):
    before = row_count(db)
    with openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="sk-wrong-key-4242", max_retries=0) as sdk, \
            pytest.raises(openai.AuthenticationError) as refused:
        sdk.images.generate(prompt="not mine")
    assert refused.value.code == "invalid_api_key" and "sk-wrong-key-4242" not in refused.value.response.text
    assert TOKEN not in refused.value.response.text
    answer = daemon.post("/v1/images/generations", auth=False, json={"prompt": "no key"})
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "missing_api_key"
    assert answer.headers["x-should-retry"] == "false"
    assert row_count(db) == before


def test_the_openai_api_is_off_without_a_token(module_db):
    with HttpDaemon(module_db, token=None) as open_daemon:
        answer = open_daemon.client.post("/v1/images/generations", json={"prompt": "x"},
                                         headers={"Authorization": "Bearer anything"})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "writes_off"


def multipart_body(image: bytes, **fields: str) -> dict[str, Any]:
    return {"files": {"image": ("in.png", image, "image/png")}, "data": fields}


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_edit_on_a_backend_without_image_inputs_is_400(daemon, db):
    before = row_count(db)
    answer = daemon.post("/v1/images/edits", **multipart_body(small_png(), prompt="paint it", model="dall-e-2"))
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "unsupported_model"
    variation = daemon.post("/v1/images/variations", **multipart_body(small_png(), model="dall-e-2"))
    assert variation.status_code == 400 and variation.json()["error"]["param"] == "model"
    assert row_count(db) == before


def test_an_oversize_upload_is_413_before_it_is_read_whole(daemon, db):
    before = row_count(db)
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (17 * 1024 * 1024)
    answer = daemon.post("/v1/images/edits", **multipart_body(big, prompt="too big"))
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "file_too_large"
    assert row_count(db) == before


def test_a_body_that_is_not_multipart_is_400(daemon, db):
    answer = daemon.post("/v1/images/edits", json={"prompt": "x"})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_body"


# -- Open WebUI's requests ------------------------------------------------------------------------


def test_open_webuis_openai_engine_requests(daemon, db):
    """routers/images.py's image_generations, engine 'openai': JSON with model, prompt, n, size and
    response_format b64_json (unless the model answers URLs, then none and it fetches the URL with the same
    Authorization header)."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    data = {"model": "gpt-image-1", "prompt": "an owl at dusk", "n": 1, "size": "512x512",
            "response_format": "b64_json"}
    with httpx.Client(base_url=f"{daemon.url}/v1", timeout=20) as web:
        res = web.post("/images/generations", content=json.dumps(data), headers=headers)
        res.raise_for_status()
        image = res.json()["data"][0]
        assert png(base64.b64decode(image["b64_json"])).format == "PNG"

        res = web.post("/images/generations", json={"model": "dall-e-3", "prompt": "an owl at noon", "n": 1},
                       headers=headers)
        res.raise_for_status()
        image_url = res.json()["data"][0]["url"]
        fetched = web.get(image_url, headers={k: v for k, v in headers.items() if k != "Content-Type"})
        assert fetched.status_code == 200 and fetched.headers["content-type"].split("/")[0] == "image"
    assert {row["width"] for row in rows_with(db, "an owl at dusk")} == {512}


# -- the completions hub (imagend/http/completions.py) on its own ---------------------------------------


def test_completions_hear_an_end_and_a_recheck_skips_rows_not_committed_yet(module_db):
    """A request registers its rows before it commits them: the LISTEN thread's recheck (after it
    connects) must not take an uncommitted row, which it cannot see, for a deleted one. One that registers
    after its commit (one statement) gets an end heard before it registered."""
    import asyncio

    from imagend.http.completions import Completions

    with psycopg.connect(module_db, autocommit=True) as reader:

        def statuses(ids: Any) -> dict[int, str]:
            rows = reader.execute("SELECT id, status FROM images WHERE id = ANY(%s)", [list(ids)]).fetchall()
            return {int(row[0]): str(row[1]) for row in rows}

        hub = Completions(module_db, statuses, idle_close_seconds=0.5)

        async def scenario() -> dict[int, str]:
            with psycopg.connect(module_db) as writer:  # a transaction left open: the row is not committed
                (image_id,) = writer.execute("INSERT INTO images (prompt, backend) VALUES ('hub', 'fusionbrain') "
                                             "RETURNING id").fetchone()  # type: ignore[misc]
                waiter = hub.register([image_id], asyncio.get_running_loop())
                await asyncio.sleep(0.5)  # the thread connected, listened and rechecked meanwhile
                assert hub.connections == 1 and not waiter.done
                writer.commit()
            assert not await waiter.changed(0.3)
            with psycopg.connect(module_db, autocommit=True) as producer:
                producer.execute("UPDATE images SET status = 'Failed', error = 'x' WHERE id = %s", [image_id])
            assert await waiter.changed(5.0)
            assert hub.waiting_rows == 0  # a waiter whose rows all ended leaves by itself
            hub.release(waiter)  # and releasing it again is nothing
            # A request whose rows went in as one statement registers after its commit: an end heard
            # before that is kept for it (the thread kept connected meanwhile by another waiter).
            keeper = hub.register([2**31 - 1], asyncio.get_running_loop())
            with psycopg.connect(module_db, autocommit=True) as producer:
                (late_id,) = producer.execute("INSERT INTO images (prompt, backend) VALUES ('hub late', "
                                              "'fusionbrain') RETURNING id").fetchone()  # type: ignore[misc]
                producer.execute("UPDATE images SET status = 'Failed', error = 'x' WHERE id = %s", [late_id])
            await asyncio.sleep(0.3)  # heard, nobody waiting for it yet
            late = hub.register([late_id], asyncio.get_running_loop())
            assert await late.changed(2.0) and late.ended == {late_id: "Failed"}
            hub.release(keeper)
            return waiter.ended

        ended = asyncio.run(scenario())
        assert list(ended.values()) == ["Failed"]
        deadline = time.monotonic() + 5
        while hub._thread is not None and time.monotonic() < deadline:  # idle: the thread and connection go
            time.sleep(0.1)
        assert hub._thread is None
