"""The AUTOMATIC1111 API of the listener (imagend/http/a1111.py) driven by the real `webuiapi` client
against a real daemon (`imagend -cron`, placeholder backend): txt2img with its seeds and infotexts,
progress that rises during a slow generation, interrupt, the checkpoint list and options, auth (HTTP Basic
with the token as the password), every bad input in A1111's error shape with nothing queued, and the exact
requests Open WebUI's default engine (routers/images.py) and LibreChat's stable-diffusion tool send.
img2img and a checkpoint switched per caller need the local backend: tests/local/test_compatible_apis_local.py."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import webuiapi
from PIL import Image
from psycopg.rows import dict_row

from support.db import wait_until
from support.http_daemon import TOKEN, HttpDaemon, own_database


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


def client_for(daemon: HttpDaemon, user: str = "alice", password: str | None = TOKEN) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=daemon.port, username=user if password else None,
                             password=password)


@pytest.fixture
def api(daemon: HttpDaemon) -> webuiapi.WebUIApi:
    return client_for(daemon)


def basic(user: str = "alice", password: str = TOKEN) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def row_count(db: Any) -> int:
    return int(db.execute("SELECT count(*) AS n FROM images").fetchone()["n"])


def rows_with(db: Any, prompt: str) -> list[dict[str, Any]]:
    return list(db.execute("SELECT * FROM images WHERE prompt = %s ORDER BY id", [prompt]).fetchall())


# -- txt2img --------------------------------------------------------------------------------------


def test_txt2img_returns_decodable_images_and_the_seeds_in_info(api, db):
    result = api.txt2img(prompt="a lighthouse, A1111 style", negative_prompt="blurry", seed=1234, batch_size=2,
                         n_iter=2, width=64, height=48, cfg_scale=6.5, steps=12)
    assert len(result.images) == 4
    assert all(image.format == "PNG" and image.size == (16, 16) for image in result.images)
    info = result.info
    assert info["seed"] == 1234 and info["all_seeds"] == [1234, 1235, 1236, 1237]
    assert info["sd_model_name"] == "placeholder" and info["job_timestamp"].isdigit()
    assert len(info["infotexts"]) == 4 and "Seed: 1234" in info["infotexts"][0]
    assert info["infotexts"][0].startswith("a lighthouse, A1111 style\nNegative prompt: blurry\n")
    assert result.parameters["prompt"] == "a lighthouse, A1111 style"
    rows = rows_with(db, "a lighthouse, A1111 style")
    assert [row["seed"] for row in rows] == [1234, 1235, 1236, 1237]
    assert {(row["width"], row["height"], row["steps"], row["guidance"], row["scheduler"], row["format"])
            for row in rows} == {(64, 48, 12, 6.5, "euler_a", "png")}  # webuiapi's default sampler: "Euler a"
    assert rows[0]["params"]["api"] == "a1111"


def test_seed_minus_one_draws_one_and_says_which(api, db):
    result = api.txt2img(prompt="a random seed", seed=-1, batch_size=2)
    seeds = result.info["all_seeds"]
    assert seeds[0] >= 0 and seeds[1] == seeds[0] + 1
    assert [row["seed"] for row in rows_with(db, "a random seed")] == seeds


def test_send_images_false_and_ignored_scripts(api):
    result = api.txt2img(prompt="not sent", send_images=False, alwayson_scripts={"ADetailer": {"args": [False]}})
    assert result.images == []
    assert "alwayson_scripts ignored: ADetailer" in result.info["extra_generation_params"]["imagend notes"]


def test_png_info_reads_the_parameters_back(api):
    image = api.txt2img(prompt="read me back", seed=77).image
    info = api.png_info(image)
    assert info.info.startswith("read me back\n") and "Seed: 77" in info.info
    assert info.parameters["Prompt"] == "read me back" and info.parameters["Seed"] == "77"


def test_the_lists_clients_read(api, daemon):
    assert [model["title"] for model in api.get_sd_models()] == ["placeholder"]
    assert api.util_get_current_model() == "placeholder"
    assert "Euler a" in api.util_get_sampler_names() and "DPM++ 2M Karras" in api.util_get_sampler_names()
    assert {"automatic", "karras"} <= set(api.util_get_scheduler_names())
    assert api.get_scripts() == {"txt2img": [], "img2img": []}
    assert api.get_sd_vae() == [] and api.get_latent_upscale_modes() == []
    assert api.get_upscalers()[0]["name"] == "None"
    assert api.get_progress()["state"]["job_count"] == 0
    assert api.refresh_checkpoints() is None


# -- progress and interrupt -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_db(server_url: str, template_db: str) -> Iterator[str]:
    with own_database(server_url, template_db) as url:
        yield url


@pytest.fixture(scope="module")
def slow_daemon(slow_db: str) -> Iterator[HttpDaemon]:
    with HttpDaemon(slow_db, IMAGEND_PLACEHOLDER_DELAY="0.4", IMAGEND_HTTP_MAX_WAIT="3") as running:
        yield running


def in_thread(call: Any) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except Exception as exc:  # the test asserts on it
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_progress_rises_during_a_slow_generation(slow_daemon):
    api = client_for(slow_daemon)
    thread, outcome = in_thread(lambda: api.txt2img(prompt="slowly, four of them", batch_size=4, steps=8))
    seen: list[float] = []
    states: list[dict[str, Any]] = []
    while thread.is_alive():
        answer = api.get_progress()
        if answer["state"]["job_count"]:
            seen.append(answer["progress"])
            states.append(answer["state"])
        time.sleep(0.05)
    thread.join()
    assert "error" not in outcome and len(outcome["result"].images) == 4
    assert states and {state["job_count"] for state in states} == {4}
    assert states[0]["sampling_steps"] == 8 and states[0]["job"] == "scripts_txt2img"
    assert seen == sorted(seen) and seen[-1] - seen[0] >= 0.5, seen  # from about 0 to past 0.75
    assert max(state["job_no"] for state in states) >= 2
    other = client_for(slow_daemon, user="bob")  # another caller sees none of alice's progress
    assert other.get_progress()["state"]["job_count"] == 0


def test_interrupt_cancels_the_callers_rows_and_answers_what_was_made(slow_daemon, slow_db):
    api = client_for(slow_daemon)
    started = time.monotonic()
    thread, outcome = in_thread(lambda: api.txt2img(prompt="interrupted midway", batch_size=6))
    wait_until(lambda: api.get_progress()["state"]["job_no"] >= 1, 10, what="the first image")
    client_for(slow_daemon, user="bob").interrupt()  # another caller's interrupt touches nothing of alice's
    assert api.interrupt() == {}
    thread.join(10)
    assert "error" not in outcome
    result = outcome["result"]
    assert 1 <= len(result.images) < 6 and time.monotonic() - started < 6 * 0.4
    assert result.info["extra_generation_params"]["imagend interrupted"] is True
    with psycopg.connect(slow_db, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT status, error FROM images WHERE prompt = 'interrupted midway'").fetchall()
    assert len(rows) == 6
    assert {row["error"] for row in rows if row["status"] == "Failed"} == {"cancelled"}
    assert sum(row["status"] == "ReadyToPublish" for row in rows) == len(result.images)


def test_skip_cancels_the_running_image_only(slow_daemon, slow_db):
    api = client_for(slow_daemon, user="carol")
    thread, outcome = in_thread(lambda: api.txt2img(prompt="one of three skipped", batch_size=3))
    with psycopg.connect(slow_db, autocommit=True) as conn:
        wait_until(lambda: conn.execute("SELECT 1 FROM images WHERE prompt = 'one of three skipped' AND status = "
                                        "'Generate'").fetchone(), 10, interval=0.02, what="the first image to start")
    assert api.skip() is None
    thread.join(10)
    assert "error" not in outcome and len(outcome["result"].images) == 2
    with psycopg.connect(slow_db, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT status, error FROM images WHERE prompt = 'one of three skipped' ORDER BY id"
                            ).fetchall()
    assert [row["status"] for row in rows].count("Failed") == 1 and rows[0]["error"] == "cancelled"


def test_past_the_wait_bound_txt2img_answers_504_and_the_rows_finish(slow_daemon, slow_db):
    answer = slow_daemon.client.post("/sdapi/v1/txt2img", json={"prompt": "nine, slower than 3 s", "batch_size": 9},
                                     headers=basic(), timeout=20)
    assert answer.status_code == 504 and "IMAGEND_HTTP_MAX_WAIT" in answer.json()["detail"]

    def finished() -> bool:
        with psycopg.connect(slow_db) as conn:
            rows = conn.execute("SELECT status FROM images WHERE prompt = 'nine, slower than 3 s'").fetchall()
        return len(rows) == 9 and all(row[0] == "ReadyToPublish" for row in rows)

    wait_until(finished, 10, what="the nine rows to finish anyway")


# -- options and checkpoints -----------------------------------------------------------------------


def test_options_round_trip_and_an_unknown_checkpoint_is_404(api, daemon):
    options = api.get_options()
    assert options["sd_model_checkpoint"] == "placeholder"
    assert api.set_options(options) is None  # Open WebUI posts every option back
    answer = daemon.client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope.safetensors"},
                                headers=basic())
    assert answer.status_code == 404 and answer.json()["detail"] == "Model not found"
    assert api.util_get_current_model() == "placeholder"


# -- auth -------------------------------------------------------------------------------------------


def test_401_without_credentials_and_with_a_wrong_password(daemon, db):
    before = row_count(db)
    with pytest.raises(RuntimeError) as refused:
        client_for(daemon, password=None).txt2img(prompt="no credentials")
    assert refused.value.args[0] == 401
    body = json.loads(refused.value.args[1])
    assert set(body) == {"error", "detail", "body", "errors"} and body["detail"] == "Incorrect username or password"
    wrong = daemon.client.post("/sdapi/v1/txt2img", json={"prompt": "wrong"}, headers=basic(password="nope" * 5))
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Basic"
    assert TOKEN not in wrong.text
    assert daemon.client.get("/sdapi/v1/sd-models").status_code == 401  # reads too, as A1111's --api-auth
    bearer = daemon.client.get("/sdapi/v1/sd-models", headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200
    assert row_count(db) == before


def test_auth_off_takes_clients_without_credentials(module_db):
    with HttpDaemon(module_db, IMAGEND_A1111_AUTH="off") as open_daemon:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=open_daemon.port)
        assert len(api.txt2img(prompt="no auth needed", width=64, height=64).images) == 1
        # Open WebUI sends an empty Authorization header when no auth is configured.
        answer = open_daemon.client.get("/sdapi/v1/options", headers={"authorization": ""})
        assert answer.status_code == 200


# -- bad input ------------------------------------------------------------------------------------


BAD = [
    ("txt2img", {"prompt": ""}, 422, "prompt is empty"),
    ("txt2img", {"prompt": "x", "batch_size": 0}, 422, "batch_size"),
    ("txt2img", {"prompt": "x", "batch_size": 9, "n_iter": 2}, 422, "at most 16"),
    ("txt2img", {"prompt": "x", "width": 99999}, 422, "width"),
    ("txt2img", {"prompt": "x", "width": 0}, 422, "width"),
    ("txt2img", {"prompt": "x", "steps": "many"}, 422, "steps"),
    ("txt2img", {"prompt": "x", "cfg_scale": 99}, 422, "guidance"),
    ("txt2img", {"prompt": "x", "sampler_name": "Heun++ 9"}, 404, "Sampler not found"),
    ("txt2img", {"prompt": "x", "override_settings": {"sd_model_checkpoint": "missing"}}, 404, "Model not found"),
    ("txt2img", {"prompt": "x", "script_name": "x/y plot"}, 422, "Script"),
    ("txt2img", {"prompt": "x", "enable_hr": True, "hr_scale": 2}, 422, "enable_hr"),
    ("txt2img", {"prompt": "x", "seed": -2}, 422, "seed"),
    ("img2img", {"prompt": "x"}, 404, "Init image not found"),
    ("img2img", {"prompt": "x", "init_images": ["aGVsbG8="]}, 422, "local backend"),
]


@pytest.mark.parametrize(("path", "body", "status", "says"), BAD, ids=[f"{p}-{str(b)[:40]}" for p, b, _, _ in BAD])
def test_bad_bodies_answer_a1111s_error_shape_and_queue_nothing(daemon, db, path, body, status, says):
    before = row_count(db)
    answer = daemon.client.post(f"/sdapi/v1/{path}", json=body, headers=basic())
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert set(error) == {"error", "detail", "body", "errors"} and says in error["detail"]
    assert row_count(db) == before


def test_malformed_json_and_an_oversize_body(daemon, db):
    before = row_count(db)
    broken = daemon.client.post("/sdapi/v1/txt2img", content=b"{prompt", headers=basic())
    assert broken.status_code == 422 and "not JSON" in broken.json()["detail"]
    big = daemon.client.post("/sdapi/v1/img2img", content=b"{" + b" " * (17 * 1024 * 1024) + b"}",
                             headers={**basic(), "Content-Type": "application/json"})
    assert big.status_code == 413
    assert row_count(db) == before


# -- the clients' own requests ---------------------------------------------------------------------


def test_open_webuis_automatic1111_engine_requests(daemon, db):
    """routers/images.py with engine 'automatic1111' (its default): GET options with the Basic header
    (AUTOMATIC1111_API_AUTH 'user:password'), set_image_model's GET then POST of every option, sd-models
    as id/name, then txt2img with prompt, batch_size, width, height, steps, negative_prompt."""
    auth = {"authorization": basic("webui")["Authorization"]}
    with httpx.Client(base_url=daemon.url, timeout=20) as web:
        options = web.get("/sdapi/v1/options", headers=auth).json()
        model = options["sd_model_checkpoint"]
        web.post("/sdapi/v1/options", json={**options, "sd_model_checkpoint": model}, headers=auth).raise_for_status()
        models = [{"id": m["title"], "name": m["model_name"]} for m in web.get("/sdapi/v1/sd-models",
                                                                                headers=auth).json()]
        assert models == [{"id": "placeholder", "name": "placeholder"}]
        data = {"prompt": "an owl, Open WebUI", "batch_size": 2, "width": 512, "height": 512, "steps": 20,
                "negative_prompt": "text"}
        res = web.post("/sdapi/v1/txt2img", json=data, headers=auth).json()
    assert len(res["images"]) == 2
    for image in res["images"]:  # get_image_data: no comma, so image/png, base64-decoded
        assert Image.open(io.BytesIO(base64.b64decode(image))).format == "PNG"
    assert json.loads(res["info"])["width"] == 16
    assert {row["width"] for row in rows_with(db, "an owl, Open WebUI")} == {512}


def test_librechats_stable_diffusion_tool_request(module_db, db):
    """LibreChat's StableDiffusion.js: no auth header (or user:password in SD_WEBUI_URL), sampler_index
    'DPM++ 2M Karras', then images[0] and info's width, height, seed, infotexts[0]."""
    payload = {"prompt": "a fox, LibreChat", "negative_prompt": "lowres", "sampler_index": "DPM++ 2M Karras",
               "cfg_scale": 4.5, "steps": 22, "width": 1024, "height": 1024}
    with HttpDaemon(module_db, IMAGEND_A1111_AUTH="off") as open_daemon:
        data = open_daemon.client.post("/sdapi/v1/txt2img", json=payload, timeout=20).json()
    buffer = base64.b64decode(data["images"][0].split(",", 1)[0])
    info = json.loads(data["info"])
    assert Image.open(io.BytesIO(buffer)).format == "PNG"
    assert isinstance(info["seed"], int) and info["height"] == 16
    assert info["infotexts"][0].split("\n").pop().startswith("Seed: ")
    (row,) = rows_with(db, "a fox, LibreChat")
    assert (row["scheduler"], row["guidance"], row["steps"]) == ("dpmpp_2m_karras", 4.5, 22)


# -- owners' keys (issue 21: docs/owners.md) ---------------------------------------------------------------


def test_an_owner_key_as_the_password_or_a_bearer_queues_for_its_owner(daemon, db, module_db):
    from imagend.config.settings import load_settings
    from imagend.db.connect import open_pool
    from imagend.db.owners import OwnersRepository

    from support.db import base_env

    with open_pool(module_db, load_settings(environ=base_env(module_db), env_file=None)) as pool:
        owners = OwnersRepository(pool)
        owners.set_plan("ONE_WAITING", {"max_waiting": 1})
        owners.assign("frank", "ONE_WAITING")
        key = owners.create_key("frank")
    result = client_for(daemon, user="frank", password=key).txt2img(prompt="frank's own", width=32, height=32)
    assert len(result.images) == 1
    assert [row["owner"] for row in rows_with(db, "frank's own")] == ["frank"]
    bearer = {"Authorization": f"Bearer {key}"}
    assert daemon.client.get("/sdapi/v1/sd-models", headers=bearer).status_code == 200
    # Two rows where frank's plan has room for one: 429 with Retry-After, nothing queued.
    before = row_count(db)
    refused = daemon.client.post("/sdapi/v1/txt2img", json={"prompt": "two for frank", "batch_size": 2},
                                 headers=bearer)
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 120
    assert "max_waiting" in refused.json()["detail"] and row_count(db) == before
    assert daemon.client.get("/sdapi/v1/options", headers=basic("frank", "imk_0_unknown")).status_code == 401
