"""The fusionbrain backend against the fake over real HTTP, on a real Postgres: both API
generations, what goes on the wire, discovery, cadence, validation and settings."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from PIL import Image as PILImage

from imagend.backends import create_backends
from imagend.errors import ConfigError
from imagend.testing.fusionbrain_fake import DEFAULT_API_KEY, DEFAULT_SECRET_KEY, PIPELINE_ID, FusionBrainFake

from support.db import fetch_image, insert_image
from support.fusionbrain import drive, fake_server, fb_env, make_due, rig


@pytest.fixture
def fake() -> Iterator[FusionBrainFake]:
    with fake_server() as server:
        yield server


def image_format(encoded: str) -> str | None:
    with PILImage.open(io.BytesIO(base64.b64decode(encoded))) as image:
        image.load()
        return image.format


def test_pipeline_api_rows_end_ready_to_publish_with_a_png(conn, make_settings, make_repo, fake):
    ids = [insert_image(conn, f"a lighthouse at dusk {i}") for i in range(3)]
    with rig(make_settings, make_repo, fake) as r:
        drive(r, conn, fake, ids)
    for image_id in ids:
        row = fetch_image(conn, image_id)
        assert row["status"] == "ReadyToPublish", row["error"]
        assert row["attempts"] == 1
        assert row["uuid"] in {s.uuid for s in fake.submitted}
        assert image_format(row["base64"]) == "PNG"
        assert row["error"] is None
    # Discovery once (cached), one submission and one poll per row: no hot polling.
    assert fake.calls() == {"pipelines": 1, "run": 3, "status": 3, "total": 7}
    assert {s.pipeline_id for s in fake.submitted} == {PIPELINE_ID}


def test_legacy_api_rows_end_ready_to_publish_with_the_jpeg_as_returned(conn, make_settings, make_repo, fake):
    ids = [insert_image(conn, "a red fox in snow", negative_prompt="blurry") for _ in range(2)]
    with rig(make_settings, make_repo, fake, IMAGEND_FUSIONBRAIN_API="legacy") as r:
        drive(r, conn, fake, ids)
    for image_id in ids:
        row = fetch_image(conn, image_id)
        assert row["status"] == "ReadyToPublish", row["error"]
        assert image_format(row["base64"]) == "JPEG"
    assert fake.count("models") == 1 and fake.count("pipelines") == 0
    assert all(s.api == "legacy" and s.model_id == 4 for s in fake.submitted)
    assert all(s.params.get("negativePromptUnclip") == "blurry" for s in fake.submitted)


def test_legacy_jpeg_can_be_converted_to_png(conn, make_settings, make_repo, fake):
    image_id = insert_image(conn, "a red fox in snow")
    with rig(make_settings, make_repo, fake, IMAGEND_FUSIONBRAIN_API="legacy", IMAGEND_FUSIONBRAIN_PNG="true") as r:
        drive(r, conn, fake, [image_id])
    assert image_format(fetch_image(conn, image_id)["base64"]) == "PNG"


def test_what_goes_on_the_wire_applies_defaults_and_truncation(conn, make_settings, make_repo, fake):
    long_prompt = "ж" * 1200  # over the API's limit; imagend cuts to 999 characters
    first = insert_image(conn, long_prompt, style="anime", negative_prompt="lowres", width=768, height=512)
    second = insert_image(conn, "a quiet harbour")
    overrides = {"DEFAULT_STYLE": "UHD", "DEFAULT_NEGATIVE_PROMPT": "text, watermark",
                 "DEFAULT_IMAGE_WIDTH": "640", "DEFAULT_IMAGE_HEIGHT": "896"}
    with rig(make_settings, make_repo, fake, **overrides) as r:
        drive(r, conn, fake, [first, second])
    by_query = {s.params["generateParams"]["query"]: s.params for s in fake.submitted}
    sent = by_query["ж" * 999]
    assert sent == {"type": "GENERATE", "numImages": 1, "width": 768, "height": 512, "style": "ANIME",
                    "negativePromptDecoder": "lowres", "generateParams": {"query": "ж" * 999}}
    defaults = by_query["a quiet harbour"]
    assert (defaults["style"], defaults["negativePromptDecoder"]) == ("UHD", "text, watermark")
    assert (defaults["width"], defaults["height"]) == (640, 896)
    assert fetch_image(conn, first)["warning"] == "prompt truncated from 1200 to 999 characters"
    assert fetch_image(conn, first)["status"] == "ReadyToPublish"


def test_a_configured_pipeline_id_skips_discovery(conn, make_settings, make_repo, fake):
    image_id = insert_image(conn)
    with rig(make_settings, make_repo, fake, IMAGEND_FUSIONBRAIN_PIPELINE_ID=PIPELINE_ID) as r:
        drive(r, conn, fake, [image_id])
    assert fetch_image(conn, image_id)["status"] == "ReadyToPublish"
    assert fake.count("pipelines") == 0


def test_an_unknown_configured_pipeline_fails_the_row_naming_the_setting(conn, make_settings, make_repo, fake):
    image_id = insert_image(conn)
    with rig(make_settings, make_repo, fake, IMAGEND_FUSIONBRAIN_PIPELINE_ID="no-such-pipeline") as r:
        r.generate()
    row = fetch_image(conn, image_id)
    assert row["status"] == "Failed"
    assert "IMAGEND_FUSIONBRAIN_PIPELINE_ID" in row["error"] and "404" in row["error"]


def seconds_until_lease(conn, image_id: int) -> float:
    row = fetch_image(conn, image_id)
    return (row["lease_until"] - datetime.now(UTC)).total_seconds()


def test_first_poll_waits_status_time_then_every_check_interval(conn, make_settings, make_repo, fake):
    fake.status_time = 11
    image_id = insert_image(conn)
    with rig(make_settings, make_repo, fake, DEFAULT_CHECK_INTERVAL="7") as r:
        r.generate()
        assert 9.5 < seconds_until_lease(conn, image_id) <= 11
        assert r.process().polled == 0  # not due yet: nobody polls before status_time
        make_due(conn)
        assert r.process().polled == 1  # still INITIAL on the fake
        assert 5.5 < seconds_until_lease(conn, image_id) <= 7
    assert fetch_image(conn, image_id)["status"] == "Generate"
    assert fake.count("status") == 1


def test_bad_sizes_and_styles_fail_before_any_call(conn, make_settings, make_repo, fake):
    too_wide = insert_image(conn, width=2048)
    too_small = insert_image(conn, height=32)
    bad_style = insert_image(conn, style="watercolour")
    with rig(make_settings, make_repo, fake) as r:
        r.generate()
    errors = {i: fetch_image(conn, i) for i in (too_wide, too_small, bad_style)}
    assert all(row["status"] == "Failed" for row in errors.values())
    assert "width 2048" in errors[too_wide]["error"] and "1024" in errors[too_wide]["error"]
    assert "height 32" in errors[too_small]["error"]
    assert "unknown style 'watercolour'" in errors[bad_style]["error"]
    assert "KANDINSKY" in errors[bad_style]["error"]
    assert fake.count("run") == 0


def test_a_long_negative_prompt_is_cut_to_what_fusion_brain_takes_with_a_warning(conn, make_settings, make_repo, fake):
    image_id = insert_image(conn, negative_prompt="x" * 1001)
    with rig(make_settings, make_repo, fake) as r:
        drive(r, conn, fake, [image_id])
    row = fetch_image(conn, image_id)
    assert row["status"] == "ReadyToPublish"
    assert row["warning"] == "negative_prompt truncated from 1001 to 1000 characters"


def test_a_style_the_styles_endpoint_lists_is_accepted(conn, make_settings, make_repo, fake):
    fake.styles = (*fake.styles, "NEON")
    image_id = insert_image(conn, style="neon")
    with rig(make_settings, make_repo, fake) as r:
        drive(r, conn, fake, [image_id])
    assert fetch_image(conn, image_id)["status"] == "ReadyToPublish"
    assert fake.submitted[0].params["style"] == "NEON"
    assert fake.count("styles") == 1


def test_missing_keys_stop_the_start_naming_both_variables(make_settings, fake):
    env = fb_env(fake, FUSION_BRAIN_API_KEY="", FUSION_BRAIN_SECRET_KEY="")
    with pytest.raises(ConfigError, match="FUSION_BRAIN_API_KEY and FUSION_BRAIN_SECRET_KEY"):
        create_backends(make_settings(**env))


@pytest.mark.parametrize(
    ("variable", "value"),
    [("IMAGEND_FUSIONBRAIN_API", "v2"), ("IMAGEND_FUSIONBRAIN_TIMEOUT", "soon"), ("FUSION_BRAIN_URL", "ftp://x"),
     ("IMAGEND_KEEP_CENSORED", "maybe"), ("IMAGEND_FUSIONBRAIN_MAX_BATCH", "0")],
)
def test_a_bad_setting_stops_the_start_naming_the_variable(make_settings, fake, variable, value):
    with pytest.raises(ConfigError, match=variable):
        create_backends(make_settings(**fb_env(fake, **{variable: value})))


def test_two_daemons_never_poll_the_same_task(conn, make_settings, make_repo, fake):
    fake.latency_seconds = 0.02  # both processors are mid-round at the same time
    ids = [insert_image(conn, f"a crowd of {i} owls") for i in range(40)]
    with rig(make_settings, make_repo, fake, owner="daemon-a") as a, \
            rig(make_settings, make_repo, fake, owner="daemon-b", IMAGEND_FUSIONBRAIN_MAX_BATCH="8") as b:
        a.generate()
        fake.advance(5)
        start = threading.Barrier(2)
        polled: dict[str, int] = {}

        def process(name: str, the_rig) -> None:
            start.wait()
            polled[name] = the_rig.process().polled

        threads = [threading.Thread(target=process, args=(n, x)) for n, x in (("a", a), ("b", b))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert polled["a"] + polled["b"] == 40
    assert all(row["status"] == "ReadyToPublish" for row in (fetch_image(conn, i) for i in ids))
    # Each task's status was read exactly once: no 404 from a second reader.
    assert sorted(fake.status_reads().values()) == [1] * 40


def test_the_fake_enforces_the_protocol(fake):
    """The fake refuses what the real API refuses, so the backend's tests mean something."""
    auth = {"X-Key": f"Key {DEFAULT_API_KEY}", "X-Secret": f"Secret {DEFAULT_SECRET_KEY}"}
    params = '{"type": "GENERATE", "numImages": 1, "width": 64, "height": 64, "generateParams": {"query": "%s"}}'
    with httpx.Client(base_url=fake.url) as client:
        assert client.get("key/api/v1/pipelines").status_code == 401
        assert client.get("key/api/v1/pipelines", headers={**auth, "X-Key": "Key wrong"}).status_code == 401
        as_text = client.post("key/api/v1/pipeline/run", headers=auth, data={"pipeline_id": PIPELINE_ID},
                              files={"params": (None, params % "cat", "text/plain")})
        assert as_text.status_code == 415
        too_long = client.post("key/api/v1/pipeline/run", headers=auth, data={"pipeline_id": PIPELINE_ID},
                               files={"params": (None, params % ("a" * 1001), "application/json")})
        assert too_long.status_code == 400 and "too long" in too_long.json()["message"]
        by_query = client.post("key/api/v1/pipeline/run", headers=auth, params={"pipeline_id": PIPELINE_ID},
                               files={"params": (None, params % "cat", "application/json")})
        assert by_query.status_code == 201 and by_query.json()["status"] == "INITIAL"
        legacy_quoted = client.post("key/api/v1/text2image/run", headers=auth, data={"model_id": '"4"'},
                                    files={"params": (None, params % "cat", "application/json")})
        assert legacy_quoted.status_code == 400
        task = by_query.json()["uuid"]
        assert client.get(f"key/api/v1/pipeline/status/{task}", headers=auth).json()["status"] == "INITIAL"
        fake.advance(2)
        done = client.get(f"key/api/v1/pipeline/status/{task}", headers=auth).json()
        assert done["status"] == "DONE" and done["result"]["censored"] is False
        assert client.get(f"key/api/v1/pipeline/status/{task}", headers=auth).status_code == 404  # once only
        assert client.get("static/styles/key").status_code == 200  # the CDN needs no auth
