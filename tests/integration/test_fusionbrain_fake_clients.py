"""The Fusion Brain fake against a real client of the real API: the official fusionbrain-sdk-python
(a dev dependency), unchanged, pointed at the fake by its own API_HOST / STYLES_URL attributes.
Then the fake's wire answers where the API's sources disagree: defaults as the SDKs read them,
the rest opt-in."""

from __future__ import annotations

import asyncio
import base64
import os

import httpx
import pytest

from imagend.testing.fusionbrain_fake import (
    DISABLED_PIPELINE_ID,
    INPAINTING_PIPELINE_ID,
    PIPELINE_ID,
    FusionBrainFake,
)

from support.db import fetch_image, insert_image
from support.fusionbrain import drive, fake_server, rig


@pytest.fixture(scope="module")
def sdk():
    # The SDK runs load_dotenv() at import: keep whatever .env it finds out of this process's environment.
    saved = dict(os.environ)
    import fusionbrain_sdk_python

    os.environ.clear()
    os.environ.update(saved)
    return fusionbrain_sdk_python


@pytest.fixture
def fake():
    with FusionBrainFake(generation_seconds=0.2, status_time=0) as server:
        yield server


def pointed_at(client, fake: FusionBrainFake):
    client.API_HOST = fake.url
    client.STYLES_URL = fake.url + "static/styles/key"
    return client


@pytest.fixture
def client(sdk, fake, monkeypatch):
    monkeypatch.delenv("FB_API_KEY", raising=False)
    monkeypatch.delenv("FB_API_SECRET", raising=False)
    return pointed_at(sdk.FBClient(x_key=fake.api_key, x_secret=fake.secret_key), fake)


def first_active(pipelines):
    return next(p for p in pipelines if p.status.value == "ACTIVE")


def test_the_sdk_lists_pipelines_and_styles(sdk, client):
    every = client.get_pipelines()  # every pipeline must validate: no type the SDK does not know
    text2image = client.get_pipelines_by_type(sdk.PipelineType.TEXT2IMAGE)
    assert [str(p.id) for p in every] == [str(p.id) for p in text2image] == [DISABLED_PIPELINE_ID, PIPELINE_ID]
    assert str(first_active(text2image).id) == PIPELINE_ID
    assert {style.name for style in client.get_styles()} == {"KANDINSKY", "UHD", "ANIME", "DEFAULT"}


def test_the_sdk_generates_an_image(sdk, client, fake):
    pipeline = first_active(client.get_pipelines_by_type(sdk.PipelineType.TEXT2IMAGE))
    assert client.get_pipeline_availability(pipeline.id) == sdk.PipelineStatus.ACTIVE
    run = client.run_pipeline(pipeline_id=pipeline.id, prompt="a red cat sitting on a table",
                              negative_prompt="blurry", style="ANIME", width=512, height=768)
    assert isinstance(run, sdk.RunPipelineResult)
    done = client.wait_for_completion(request_id=run.uuid, initial_delay=run.status_time, sleep_interval=0.1)
    assert done.status == sdk.PipelineResultStatus.DONE
    assert done.result is not None and not done.result.censored
    assert base64.b64decode(done.result.files[0]).startswith(b"\x89PNG")
    [submitted] = fake.submitted
    assert (submitted.pipeline_id, submitted.params["style"], submitted.params["width"]) == (PIPELINE_ID, "ANIME", 512)


def test_the_sdk_sees_a_failed_generation(sdk, client):
    pipeline = first_active(client.get_pipelines_by_type(sdk.PipelineType.TEXT2IMAGE))
    run = client.run_pipeline(pipeline_id=pipeline.id, prompt="this one #fail")
    done = client.wait_for_completion(request_id=run.uuid, initial_delay=0, sleep_interval=0.1)
    assert done.status == sdk.PipelineResultStatus.FAIL


@pytest.mark.parametrize("state", ["DISABLED_BY_QUEUE", "DISABLED_MANUALLY"])
def test_the_sdk_reads_a_closed_queue(sdk, client, fake, state):
    fake.queue = state
    assert client.get_pipeline_availability(PIPELINE_ID) == sdk.PipelineStatus(state)
    blocked = client.run_pipeline(pipeline_id=PIPELINE_ID, prompt="waits for the queue")
    assert isinstance(blocked, sdk.RunPipelineBlockedResult)
    assert blocked.model_status.value == state
    assert fake.submitted == []


def test_the_disabled_pipeline_says_so_and_refuses_runs(sdk, client, fake):
    assert client.get_pipeline_availability(DISABLED_PIPELINE_ID) == sdk.PipelineStatus.DISABLED_MANUALLY
    blocked = client.run_pipeline(pipeline_id=DISABLED_PIPELINE_ID, prompt="on a pipeline switched off")
    assert isinstance(blocked, sdk.RunPipelineBlockedResult)
    assert blocked.model_status.value == "DISABLED_MANUALLY"
    assert fake.submitted == []  # no task was created


def test_the_async_sdk_client_generates_an_image(sdk, fake, monkeypatch):
    monkeypatch.delenv("FB_API_KEY", raising=False)
    monkeypatch.delenv("FB_API_SECRET", raising=False)
    client = pointed_at(sdk.AsyncFBClient(x_key=fake.api_key, x_secret=fake.secret_key), fake)

    async def generate():
        pipeline = first_active(await client.get_pipelines_by_type(sdk.PipelineType.TEXT2IMAGE))
        run = await client.run_pipeline(pipeline_id=pipeline.id, prompt="a blue bird flying in the sky")
        return await client.wait_for_completion(request_id=run.uuid, initial_delay=0, sleep_interval=0.1)

    done = asyncio.run(generate())
    assert done.status == sdk.PipelineResultStatus.DONE


# -- the wire answers, where the API's sources disagree ------------------------------------------


def api(fake: FusionBrainFake) -> httpx.Client:
    headers = {"X-Key": f"Key {fake.api_key}", "X-Secret": f"Secret {fake.secret_key}"}
    return httpx.Client(base_url=fake.url + "key/api/v1/", headers=headers)


def run_files(pipeline_id: str) -> dict:
    return {"pipeline_id": (None, pipeline_id),
            "params": (None, '{"type": "GENERATE", "generateParams": {"query": "a fox"}}', "application/json")}


def test_closed_queue_answers_default_to_the_keys_the_sdks_read(fake):
    fake.queue = "DISABLED_BY_QUEUE"
    with api(fake) as http:
        assert http.get(f"pipeline/{PIPELINE_ID}/availability").json() == {"status": "DISABLED_BY_QUEUE"}
        run = http.post("pipeline/run", files=run_files(PIPELINE_ID))
        assert (run.status_code, run.json()) == (201, {"model_status": "DISABLED_BY_QUEUE"})
        assert http.get("text2image/availability", params={"model_id": 4}).json() == {"status": "DISABLED_BY_QUEUE"}


def test_the_docs_key_is_opt_in(fake):
    fake.queue, fake.queue_key = "DISABLED_BY_QUEUE", "pipeline_status"
    with api(fake) as http:
        assert http.get(f"pipeline/{PIPELINE_ID}/availability").json() == {"pipeline_status": "DISABLED_BY_QUEUE"}
        assert http.post("pipeline/run", files=run_files(PIPELINE_ID)).json() == {
            "pipeline_status": "DISABLED_BY_QUEUE"}


def test_an_open_queue_and_a_disabled_pipeline_answer_apart(fake):
    with api(fake) as http:
        assert http.get(f"pipeline/{PIPELINE_ID}/availability").json() == {"status": "ACTIVE"}
        assert http.get(f"pipeline/{DISABLED_PIPELINE_ID}/availability").json() == {"status": "DISABLED_MANUALLY"}
        refused = http.post("pipeline/run", files=run_files(DISABLED_PIPELINE_ID))
        assert (refused.status_code, refused.json()) == (201, {"model_status": "DISABLED_MANUALLY"})
        accepted = http.post("pipeline/run", files=run_files(PIPELINE_ID))
        assert accepted.status_code == 201 and "uuid" in accepted.json()
    assert [s.pipeline_id for s in fake.submitted] == [PIPELINE_ID]


def test_the_inpainting_pipeline_is_opt_in():
    with FusionBrainFake() as plain, api(plain) as http:
        assert "INPAINTING" not in {p["type"] for p in http.get("pipelines").json()}
    with FusionBrainFake(inpainting_pipeline=True) as extra, api(extra) as http:
        listed = http.get("pipelines").json()
        assert (listed[0]["id"], listed[0]["type"]) == (INPAINTING_PIPELINE_ID, "INPAINTING")
        assert INPAINTING_PIPELINE_ID not in {p["id"] for p in http.get("pipelines?type=TEXT2IMAGE").json()}


def test_imagends_client_skips_the_opt_in_inpainting_pipeline(conn, make_settings, make_repo):
    image_id = insert_image(conn, "a lighthouse at dusk")
    with fake_server(inpainting_pipeline=True) as extra, rig(make_settings, make_repo, extra) as r:
        drive(r, conn, extra, [image_id])
        assert fetch_image(conn, image_id)["status"] == "ReadyToPublish"
        assert [s.pipeline_id for s in extra.submitted] == [PIPELINE_ID]
