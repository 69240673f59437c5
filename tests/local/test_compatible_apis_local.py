"""The OpenAI and AUTOMATIC1111 APIs on the local backend (the miniature models, noise, on the CPU), one
`imagend -cron` daemon for the module, driven by the real clients: the `openai` SDK's images.edit with an
image and a mask (inpainting: the mask's transparent part is repainted, the rest stays the input's own
pixels), Open WebUI's edit request, a stream with partial images built from the step previews; webuiapi's
img2img with a mask, its txt2img with enable_hr (the row's hires fix), and a checkpoint chosen with
util_set_model for that caller only."""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import psycopg
import pytest
import webuiapi
from PIL import Image
from psycopg.rows import dict_row

from support.http_daemon import TOKEN, HttpDaemon, own_database
from support.local import TORCH_NUMPY_COPY_WARNING

pytestmark = [TORCH_NUMPY_COPY_WARNING, pytest.mark.slow]  # a local daemon: about a minute in all

SIDE = 64


@pytest.fixture(scope="module")
def module_db(server_url: str, template_db: str) -> Iterator[str]:
    with own_database(server_url, template_db) as url:
        yield url


@pytest.fixture(scope="module")
def daemon(module_db: str, tiny_models: dict[str, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpDaemon]:
    env = {
        "IMAGEND_BACKEND": "local",
        "IMAGEND_MODEL": str(tiny_models["sdxl"]),
        "IMAGEND_MODELS": f"sdxl={tiny_models['sdxl']},sdxl-b={tiny_models['sdxl-b']}",
        "IMAGEND_LOCK_DIR": str(tmp_path_factory.mktemp("locks")),
        "IMAGEND_DEFAULT_STEPS": "100",  # the OpenAI API has no steps: quality "max" is 200 (the stream's)
        # The stream's 200 steps take 1-3 s on a CPU; previews written every 2 s (the default) could all fall
        # after the last step on a fast machine, so none would be streamed.
        "IMAGEND_PREVIEW_SECONDS": "0.2",
        "DEFAULT_IMAGE_WIDTH": str(SIDE),
        "DEFAULT_IMAGE_HEIGHT": str(SIDE),
        "HF_HUB_OFFLINE": "1",
        "IMAGEND_OPENAI_MODELS": "gpt-image-1=local:sdxl-b",
        "IMAGEND_IP_ADAPTER": str(tiny_models["ip-adapter"]),  # an edit's second image (its reference)
    }
    with HttpDaemon(module_db, **env) as running:
        yield running


@pytest.fixture
def db(module_db: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(module_db, autocommit=True, row_factory=dict_row) as connection:
        yield connection


@pytest.fixture
def client(daemon: HttpDaemon) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=TOKEN, timeout=60.0) as sdk:
        yield sdk


def picture() -> Image.Image:
    x = np.linspace(0, 255, SIDE, dtype=np.uint8)[None, :].repeat(SIDE, 0)
    return Image.fromarray(np.stack([x, x[:, ::-1], np.full_like(x, 90)], axis=-1), "RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def openai_mask() -> Image.Image:
    """OpenAI's convention: the transparent part (here the right half) is the part to edit."""
    alpha = np.full((SIDE, SIDE), 255, dtype=np.uint8)
    alpha[:, SIDE // 2:] = 0
    mask = np.zeros((SIDE, SIDE, 4), dtype=np.uint8)
    mask[..., 3] = alpha
    return Image.fromarray(mask, "RGBA")


def decoded(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def test_openai_edit_with_a_mask_inpaints_the_transparent_part(client, db):
    answer = client.images.with_raw_response.edit(image=("in.png", png_bytes(picture()), "image/png"),
                                                  mask=("mask.png", png_bytes(openai_mask()), "image/png"),
                                                  prompt="a red door", model="dall-e-2", size="64x64", n=1,
                                                  response_format="b64_json")
    (item,) = answer.parse().data
    result, source = decoded(item.b64_json), np.asarray(picture(), dtype=np.int16)
    assert result.shape == (SIDE, SIDE, 3)
    # As A1111 does, the pixels outside the mask are the input's own; inside, repainted (noise here).
    assert np.abs(result[:, : SIDE // 2 - 4] - source[:, : SIDE // 2 - 4]).max() <= 2
    assert np.abs(result[:, SIDE // 2 + 4:] - source[:, SIDE // 2 + 4:]).mean() > 10
    (image_id,) = answer.headers["x-imagend-ids"].split(",")
    row = db.execute("SELECT * FROM images WHERE id = %s", [int(image_id)]).fetchone()
    assert row["status"] == "ReadyToPublish" and row["init_image"] and row["mask_image"]
    assert row["params"]["endpoint"] == "edits" and row["model"] is None


def test_open_webuis_edit_request_with_image_brackets(daemon, db):
    """routers/images.py's image_edits, engine 'openai': multipart with model, prompt, n and size as text,
    response_format b64_json, and a list of images sent as `image[]` (uuid.png, image/png)."""
    form = {"model": "gpt-image-1", "prompt": "same scene, dusk", "n": "1", "size": f"{SIDE}x{SIDE}",
            "response_format": "b64_json"}
    files = [("image[]", ("5f0c.png", io.BytesIO(png_bytes(picture())), "image/png"))]
    with httpx.Client(base_url=f"{daemon.url}/v1", timeout=60) as web:
        res = web.post("/images/edits", data=form, files=files, headers={"Authorization": f"Bearer {TOKEN}"})
    res.raise_for_status()
    assert decoded(res.json()["data"][0]["b64_json"]).shape == (SIDE, SIDE, 3)
    row = db.execute("SELECT model, mask_image FROM images WHERE prompt = 'same scene, dusk'").fetchone()
    assert row == {"model": "sdxl-b", "mask_image": None}  # gpt-image-1=local:sdxl-b; image-to-image


def test_an_edit_with_two_images_takes_the_second_as_the_ip_adapter_reference(client, db):
    """gpt-image-1's several input images: the first is edited, the second steers it (IP-Adapter); a
    third is refused in OpenAI's shape, nothing queued."""
    reference = Image.new("RGB", (SIDE, SIDE), (20, 40, 200))
    images = [("in.png", png_bytes(picture()), "image/png"), ("ref.png", png_bytes(reference), "image/png")]
    answer = client.images.with_raw_response.edit(image=images, prompt="two images", model="dall-e-2",
                                                  size=f"{SIDE}x{SIDE}", response_format="b64_json")
    assert decoded(answer.parse().data[0].b64_json).shape == (SIDE, SIDE, 3)
    row = db.execute("SELECT status, init_image, reference_image FROM images WHERE prompt = 'two images'").fetchone()
    assert row["status"] == "ReadyToPublish"
    assert base64.b64decode(row["init_image"]) == images[0][1]
    assert base64.b64decode(row["reference_image"]) == images[1][1]
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.edit(image=[*images, images[1]], prompt="three images", model="dall-e-2")
    assert refused.value.status_code == 400 and refused.value.body["param"] == "image"
    assert db.execute("SELECT count(*) AS n FROM images WHERE prompt = 'three images'").fetchone()["n"] == 0


def test_openai_variations_start_from_the_image_and_its_own_prompt(client, db):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a fox in the snow\nSteps: 30, Sampler: Euler, Seed: 1, Size: 64x64")
    buffer = io.BytesIO()
    picture().save(buffer, format="PNG", pnginfo=info)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the SDK marks the endpoint retired at OpenAI
        answer = client.images.with_raw_response.create_variation(
            image=("fox.png", buffer.getvalue(), "image/png"), n=2, size="64x64", response_format="b64_json")
    assert [decoded(item.b64_json).shape for item in answer.parse().data] == [(SIDE, SIDE, 3)] * 2
    ids = [int(image_id) for image_id in answer.headers["x-imagend-ids"].split(",")]
    rows = db.execute("SELECT prompt, init_image IS NOT NULL AS init, params FROM images WHERE id = ANY(%s)",
                      [ids]).fetchall()
    assert [(row["prompt"], row["init"], row["params"]["endpoint"]) for row in rows] == [
        ("a fox in the snow", True, "variations")] * 2


def test_stream_with_partial_images_yields_previews_then_the_image(client):
    """Previews are written every 0.2 s here: a generation of 256 px at 200 steps gives at least one, and the
    stream carries at most partial_images of them."""
    events = list(client.images.generate(prompt="a slow fox", model="dall-e-3", size="256x256", quality="max",
                                         stream=True, partial_images=2, extra_body={"seed": 3},
                                         timeout=120))
    kinds = [event.type for event in events]
    # One or two previews (as many as were written while it ran, at most partial_images), then the image.
    partials = len(kinds) - 1
    assert 1 <= partials <= 2 and kinds == ["image_generation.partial_image"] * partials + [
        "image_generation.completed"], kinds
    assert [event.partial_image_index for event in events[:partials]] == list(range(partials))
    for event in events[:partials]:
        assert Image.open(io.BytesIO(base64.b64decode(event.b64_json))).format == "PNG"
    assert decoded(events[-1].b64_json).shape == (256, 256, 3)


def test_webuiapi_img2img_with_a_mask(daemon, db):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=daemon.port, username="alice", password=TOKEN)
    mask = Image.fromarray(np.where(np.arange(SIDE)[None, :].repeat(SIDE, 0) >= SIDE // 2, 255, 0).astype(np.uint8))
    result = api.img2img(images=[picture()], mask_image=mask, prompt="a painted door", denoising_strength=0.8,
                         width=SIDE, height=SIDE, seed=11, steps=2)
    assert len(result.images) == 1 and result.images[0].size == (SIDE, SIDE)
    assert result.info["seed"] == 11 and "Denoising strength: 0.8" in result.info["infotexts"][0]
    row = db.execute("SELECT strength, seed, scheduler FROM images WHERE prompt = 'a painted door'").fetchone()
    assert (round(row["strength"], 3), row["seed"], row["scheduler"]) == (0.8, 11, "euler_a")


def test_webuiapi_enable_hr_is_the_rows_own_hires_fix(daemon, db):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=daemon.port, username="alice", password=TOKEN)
    result = api.txt2img(prompt="a hires lighthouse", width=SIDE, height=SIDE, seed=12, steps=3, enable_hr=True,
                         hr_scale=2, hr_upscaler=webuiapi.HiResUpscaler.Lanczos, hr_second_pass_steps=4,
                         denoising_strength=0.5)
    assert len(result.images) == 1 and result.images[0].size == (2 * SIDE, 2 * SIDE)
    infotext = result.info["infotexts"][0]
    for field in (f"Size: {SIDE}x{SIDE}", "Denoising strength: 0.5", "Hires upscale: 2", "Hires steps: 4",
                  "Hires upscaler: Lanczos"):
        assert field in infotext, infotext
    assert result.info["denoising_strength"] == 0.5
    rows = db.execute("SELECT hr_scale, hr_steps, hr_strength, hr_upscaler FROM images "
                      "WHERE prompt = 'a hires lighthouse'").fetchall()
    assert [tuple(row.values()) for row in rows] == [(2.0, 4, 0.5, "lanczos")]  # one row, no upscale rows


def test_util_set_model_switches_the_checkpoint_for_that_caller_only(daemon, db):
    alice = webuiapi.WebUIApi(host="127.0.0.1", port=daemon.port, username="alice", password=TOKEN)
    bob = webuiapi.WebUIApi(host="127.0.0.1", port=daemon.port, username="bob", password=TOKEN)
    assert alice.util_get_model_names() == ["sdxl", "sdxl-b"]
    assert alice.util_get_current_model() == "sdxl"  # IMAGEND_MODEL is sdxl's folder
    alice.util_set_model("sdxl-b")
    assert alice.util_get_current_model() == "sdxl-b" and bob.util_get_current_model() == "sdxl"
    mine = alice.txt2img(prompt="alice's checkpoint", width=SIDE, height=SIDE, steps=2)
    theirs = bob.txt2img(prompt="bob's checkpoint", width=SIDE, height=SIDE, steps=2)
    assert mine.info["sd_model_name"] == "sdxl-b" and "Model: sdxl-b" in mine.info["infotexts"][0]
    assert theirs.info["sd_model_name"] == "sdxl"
    models = {row["prompt"]: row["model"] for row in db.execute(
        "SELECT prompt, model FROM images WHERE prompt LIKE '%''s checkpoint'").fetchall()}
    assert models == {"alice's checkpoint": "sdxl-b", "bob's checkpoint": None}
    one_off = bob.txt2img(prompt="bob's override", width=SIDE, height=SIDE, steps=2,
                          override_settings={"sd_model_checkpoint": "sdxl-b.safetensors [0123abcd]"})
    assert one_off.info["sd_model_name"] == "sdxl-b" and bob.util_get_current_model() == "sdxl"
