"""ControlNet and the hires fix (issue 26) on the miniature models (random weights: noise): canny edges drawn
with numpy, a ControlNet that changes the pixels and leaves the next plain row bitwise as it was, several
controls in one call, the hires fix's two passes (size, progress, PNG fields), every bad input a readable
error; then the same end to end with `imagend -cron` against a real Postgres."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from PIL import Image as PILImage
from PIL import ImageDraw

from imagend.backends.base import Control, Hires, ImageInputs
from imagend.backends.local.png_metadata import read_parameters
from imagend.db.rows import ClaimedRow
from imagend.errors import BadInput
from imagend.images.canny import canny
from imagend.images.inputs import to_base64_png
from imagend.queue.validation import image_inputs_of, parse_controls

from support.daemons import DaemonProcess
from support.db import base_env, fetch_image, insert_image, wait_until
from support.local import SIDE_PX, TORCH_NUMPY_COPY_WARNING, RecordingHeartbeat, request

pytestmark = [TORCH_NUMPY_COPY_WARNING]


def disc(side: int = SIDE_PX) -> PILImage.Image:
    picture = PILImage.new("RGB", (side, side), "black")
    ImageDraw.Draw(picture).ellipse((side // 6, side // 6, side * 5 // 6, side * 5 // 6), fill="white")
    return picture


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(png)).convert("RGB"))


def controls(*entries: dict[str, Any]) -> str:
    return json.dumps(list(entries))


# -- canny -----------------------------------------------------------------------------------------


def test_canny_draws_a_squares_outline_and_nothing_inside_or_outside() -> None:
    square = PILImage.new("RGB", (64, 64), "black")
    ImageDraw.Draw(square).rectangle((16, 16, 47, 47), fill="white")
    edges = np.asarray(canny(square))[:, :, 0]
    assert set(np.unique(edges)) == {0, 255}
    assert edges[20:44, 15:18].max() == 255 and edges[20:44, 46:49].max() == 255  # the left and right sides
    assert edges[24:40, 24:40].max() == 0 and edges[:8].max() == 0  # a flat inside, a flat outside
    assert np.asarray(canny(PILImage.new("RGB", (32, 32), "gray"))).max() == 0
    # Higher thresholds keep fewer edges.
    noisy = PILImage.effect_noise((64, 64), 40).convert("RGB")
    assert (np.asarray(canny(noisy, 50, 100)) > 0).sum() > (np.asarray(canny(noisy, 200, 400)) > 0).sum()


# -- the backend -------------------------------------------------------------------------------------


@pytest.fixture
def backend(make_backend: Callable[..., Any], tiny_models: dict[str, Path]) -> Any:
    return make_backend(IMAGEND_MODEL=str(tiny_models["sdxl"]), IMAGEND_UPSCALER=str(tiny_models["upscaler"]),
                        IMAGEND_CONTROLNETS=f"canny={tiny_models['controlnet']},canny-b={tiny_models['controlnet']}")


def made(backend: Any, image_id: int, **inputs: Any) -> tuple[bytes, RecordingHeartbeat]:
    heartbeat = RecordingHeartbeat()
    [image] = backend.generate([backend.validate(request(image_id, seed=11, inputs=ImageInputs(**inputs)))],
                               heartbeat)
    return image.png, heartbeat


def test_a_controlnet_changes_the_image_and_the_next_plain_row_is_bitwise_the_one_before(backend: Any) -> None:
    before, _ = made(backend, 1)
    edges = canny(disc())
    steered, _ = made(backend, 2, controls=(Control(edges, "canny", "canny", 0.9, 0.0, 1.0),))
    after, _ = made(backend, 3)
    assert np.abs(pixels(steered).astype(int) - pixels(before)).mean() > 2  # noise, but other noise
    assert np.array_equal(pixels(after), pixels(before))
    assert 'ControlNet 0: "Module: canny, Model: canny, Weight: 0.9, Guidance Start: 0, Guidance End: 1"' in (
        read_parameters(steered) or "")
    # Strength, start and end reach the pipeline: each changes the pixels.
    weaker, _ = made(backend, 4, controls=(Control(edges, "canny", "canny", 0.3),))
    later, _ = made(backend, 5, controls=(Control(edges, "canny", "canny", 0.9, 0.5, 1.0),))
    assert not np.array_equal(pixels(weaker), pixels(steered)) and not np.array_equal(pixels(later), pixels(steered))
    # Two controls: one call through a MultiControlNetModel.
    both, _ = made(backend, 6, controls=(Control(edges, "canny", "canny", 0.9),
                                        Control(disc(), "depth", "canny-b", 0.5, 0.0, 0.5)))
    assert not np.array_equal(pixels(both), pixels(steered))
    assert "ControlNet 1: " in (read_parameters(both) or "")
    again, _ = made(backend, 7)
    assert np.array_equal(pixels(again), pixels(before))
    assert backend.controlnets.loads == 2  # each read once


@pytest.mark.parametrize("upscaler", ["latent", "lanczos", "nearest", "upscaler"])
def test_hires_fix_makes_the_scaled_size_with_its_fields_and_progress_over_every_pass(
    backend: Any, upscaler: str
) -> None:
    png, heartbeat = made(backend, 1, hires=Hires(scale=2.0, steps=4, strength=0.5, upscaler=upscaler))
    assert PILImage.open(io.BytesIO(png)).size == (2 * SIDE_PX, 2 * SIDE_PX)
    text = read_parameters(png) or ""
    name = {"latent": "Latent", "lanczos": "Lanczos", "nearest": "Nearest", "upscaler": "upscaler"}[upscaler]
    for field in (f"Size: {SIDE_PX}x{SIDE_PX}", "Denoising strength: 0.5", "Hires upscale: 2", "Hires steps: 4",
                  f"Hires upscaler: {name}"):
        assert field in text, text
    progress = [p for p in heartbeat.progress if p is not None]
    # 3 steps, (the x4 upscaler's 4), then 0.5 x 4: one heartbeat a step, rising across the passes.
    assert len(progress) == 3 + (4 if upscaler == "upscaler" else 0) + 2
    assert progress == sorted(progress) and progress[-1] == pytest.approx(0.99)
    assert progress[2] == pytest.approx(3 / len(progress))  # the first pass's share, not all of it


def test_hires_fix_is_two_passes_that_differ_from_a_plain_upscale(backend: Any) -> None:
    latent, _ = made(backend, 1, hires=Hires(2.0, None, 0.7, "latent"))
    plain, _ = made(backend, 2)
    lanczos, _ = made(backend, 3, hires=Hires(2.0, None, 0.7, "lanczos"))
    assert not np.array_equal(pixels(latent), pixels(lanczos))
    assert "Hires steps: 3" in (read_parameters(latent) or "")  # NULL hr_steps: the row's
    resized = np.asarray(PILImage.open(io.BytesIO(plain)).convert("RGB").resize((2 * SIDE_PX, 2 * SIDE_PX)))
    assert not np.array_equal(pixels(lanczos), resized)


def test_the_backend_refuses_what_it_cannot_serve(
    make_backend: Callable[..., Any], backend: Any, tiny_models: dict[str, Path]
) -> None:
    edges = canny(disc())

    def error(target: Any, **fields: Any) -> str:
        with pytest.raises(BadInput) as caught:
            target.validate(request(**fields))
        return str(caught.value)

    assert error(backend, inputs=ImageInputs(controls=(Control(edges, "canny", "nope"),))) == (
        "controls[0]: unknown ControlNet 'nope'; this daemon serves: canny, canny-b")
    assert error(backend, inputs=ImageInputs(controls=(Control(edges, "canny", None),))) == (
        "controls[0]: name its model; this daemon serves several: canny, canny-b")
    bare = make_backend(IMAGEND_MODEL=str(tiny_models["sdxl"]))
    assert error(bare, inputs=ImageInputs(controls=(Control(edges, "canny", None),))) == (
        "controls need a ControlNet, and this daemon has none (IMAGEND_CONTROLNETS)")
    assert error(bare, inputs=ImageInputs(hires=Hires(2.0, None, 0.7, "upscaler"))).startswith(
        "hr_upscaler 'upscaler' needs an upscaling model, and this daemon has none (IMAGEND_UPSCALER)")
    assert error(backend, width=1024, height=1024, inputs=ImageInputs(hires=Hires(4.0, None, 0.7, "latent"))) == (
        "hr_scale 4 makes 1024x1024 into 4096x4096, above this daemon's limit of 2048 a side (IMAGEND_MAX_SIDE)")
    assert error(backend, inputs=ImageInputs(hires=Hires(2.0, 2, 0.3, "latent"))).startswith(
        "hr_strength 0.3 of 2 hires steps runs no step")
    one = make_backend(IMAGEND_MODEL=str(tiny_models["sdxl"]), IMAGEND_CONTROLNETS=f"only={tiny_models['controlnet']}")
    validated = one.validate(request(inputs=ImageInputs(controls=(Control(edges, "canny", None),))))
    assert validated.inputs.controls[0].model == "only"  # the one ControlNet, named


def test_controlnet_on_a_family_without_it_fails_naming_it(
    make_backend: Callable[..., Any], tiny_families: dict[str, Path], tiny_models: dict[str, Path]
) -> None:
    flux = make_backend(IMAGEND_MODEL=str(tiny_families["flux"]), IMAGEND_CONTROLNETS=f"c={tiny_models['controlnet']}",
                        DEFAULT_IMAGE_WIDTH="64", DEFAULT_IMAGE_HEIGHT="64")
    for inputs in (ImageInputs(controls=(Control(canny(disc()), "canny", "c"),)),
                   ImageInputs(hires=Hires(2.0, None, 0.7, "latent"))):
        with pytest.raises(BadInput) as caught:
            flux.validate(request(inputs=inputs))
        assert "is FLUX.1, which takes text only here" in str(caught.value)
        assert "need an SDXL model" in str(caught.value)


# -- the row's columns, as validation reads them -------------------------------------------------------------


def claimed(**columns: Any) -> ClaimedRow:
    base: dict[str, Any] = {"id": 9, "attempt": 1, "prompt": "a fox", "negative_prompt": None, "style": None,
                            "width": None, "height": None, "seed": None, "steps": None, "guidance": None,
                            "scheduler": None, "backend": "local", "params": None, "max_attempts": None}
    return ClaimedRow(**{**base, **columns})


CONTROL = {"image": to_base64_png(disc()), "type": "canny"}

BAD_ROWS = [
    ({"controls": "{}"}, 'controls must be a JSON array like [{"image": "<base64>", "type": "canny", "model": '
                         '"canny-xl", "strength": 0.8}], got {}'),
    ({"controls": controls({**CONTROL, "type": "sketch"})},
     'controls[0]: unknown type "sketch"; use one of: canny, depth, pose, lineart, softedge, scribble, normal, seg, '
     "mlsd, tile, none (canny is drawn from the image; bring the others drawn)"),
    ({"controls": controls({**CONTROL, "strength": 2.5})}, "controls[0].strength must be between 0 and 2, got 2.5"),
    ({"controls": controls({**CONTROL, "strength": "high"})}, 'controls[0].strength must be a number, got "high"'),
    ({"controls": controls({**CONTROL, "start": 0.8, "end": 0.2})},
     "controls[0]: start and end are fractions of the steps, 0 <= start < end <= 1; got start 0.8, end 0.2"),
    ({"controls": controls({**CONTROL, "image": "not an image!"})},
     "controls[0].image: not valid base64 (the character '!' at offset 12)"),
    ({"controls": controls({**CONTROL, "image": base64.b64encode(b"GIF89a...").decode()})},
     "controls[0].image: GIF is not accepted (PNG, JPEG or WebP expected)"),
    ({"controls": controls({"type": "canny"})},
     "controls[0]: set one of image (base64) and image_id (a finished row or an upload)"),
    ({"controls": controls({**CONTROL, "image_id": 4})},
     "controls[0]: set one of image (base64) and image_id (a finished row or an upload)"),
    ({"controls": controls({"image_id": 4, "type": "canny"})}, "controls[0].image_id 4: no such row"),
    ({"controls": controls({**CONTROL, "weight": 1})},
     "controls[0]: unknown key 'weight'; a control takes: end, high, image, image_id, low, model, start, "
     "strength, type"),
    ({"controls": controls({**CONTROL, "type": "depth", "low": 5})},
     "controls[0]: low and high are canny's thresholds; type depth takes its image as drawn"),
    ({"controls": controls(*[CONTROL] * 9)}, "controls lists 9 control images; at most 8"),
    ({"controls": controls(CONTROL), "init_image": to_base64_png(disc())},
     "controls take text-to-image rows only here (no init_image, mask_image, reference_image or task)"),
    ({"hr_scale": 5.0}, "hr_scale must be above 1 and at most 4, got 5"),
    ({"hr_scale": 1.0}, "hr_scale must be above 1 and at most 4, got 1"),
    ({"hr_steps": 10}, "hr_steps needs hr_scale (the hires fix)"),
    ({"hr_strength": 0.5, "hr_upscaler": "latent"}, "hr_strength, hr_upscaler need hr_scale (the hires fix)"),
    ({"hr_scale": 2.0, "hr_strength": 0.0}, "hr_strength must be above 0 and at most 1, got 0"),
    ({"hr_scale": 2.0, "hr_upscaler": "esrgan"},
     "unknown hr_upscaler 'esrgan'; use NULL (latent) or one of: latent, lanczos, nearest, upscaler"),
    ({"hr_scale": 2.0, "init_image": to_base64_png(disc())},
     "hr_scale (the hires fix) is for text-to-image rows (no init_image, reference_image or task)"),
]


@pytest.mark.parametrize(("columns", "error"), BAD_ROWS, ids=[e[:40] for _, e in BAD_ROWS])
def test_each_bad_column_fails_with_a_readable_error(columns: dict[str, Any], error: str) -> None:
    with pytest.raises(BadInput) as caught:
        image_inputs_of(claimed(**columns), {}, None)
    assert str(caught.value) == error


def test_good_columns_become_inputs() -> None:
    inputs = image_inputs_of(claimed(controls=controls({**CONTROL, "model": "canny-xl", "strength": 0.8, "end": 0.6},
                                                       {"image": to_base64_png(disc()), "type": "depth"}),
                                     hr_scale=1.5, hr_upscaler="Lanczos"), {}, None)
    canny_control, depth = inputs.controls
    assert (canny_control.model, canny_control.strength, canny_control.start, canny_control.end) == (
        "canny-xl", 0.8, 0.0, 0.6)
    assert np.array_equal(np.asarray(canny_control.image), np.asarray(canny(disc())))  # drawn at validation
    assert np.array_equal(np.asarray(depth.image), np.asarray(disc()))  # a depth map comes drawn
    assert inputs.hires == Hires(scale=1.5, steps=None, strength=0.7, upscaler="lanczos")
    assert parse_controls(controls(CONTROL))[0].image is None  # the API's check decodes nothing
    assert claimed(controls=controls({"image_id": 4, "type": "canny"}, {"image_id": 4, "type": "depth"}),
                   init_image_id=3).source_ids == [3, 4]


# -- end to end: imagend -cron ---------------------------------------------------------------------------------


FINISHED = ("ReadyToPublish", "Failed")
SMALL = {"width": 64, "height": 64, "steps": 3}


@pytest.fixture
def start_daemon(
    db_url: str, extras_env: Callable[..., dict[str, str]], tiny_models: dict[str, Path], tmp_path: Path
) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(**overrides: str) -> DaemonProcess:
        env = extras_env(IMAGEND_CONTROLNETS=f"canny={tiny_models['controlnet']}", **overrides)
        daemon = DaemonProcess(["-cron"], base_env(db_url, **env), log_dir=tmp_path)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def wait_finished(conn: psycopg.Connection[Any], ids: list[int], daemon: DaemonProcess, timeout: float = 180) -> None:
    def done() -> bool:
        assert daemon.alive(), daemon.output()[-3000:]
        statuses = conn.execute("SELECT status FROM images WHERE id = ANY(%s)", [ids]).fetchall()
        return all(row["status"] in FINISHED for row in statuses)

    wait_until(done, timeout, interval=0.2, what=f"rows {ids} to finish")


@pytest.mark.slow
def test_controlnet_and_hires_fix_from_an_insert(
    conn: psycopg.Connection[Any], start_daemon: Callable[..., DaemonProcess]
) -> None:
    upload = insert_image(conn, "a disc", **SMALL, seed=1)  # stands for an upload: a finished row's image
    before = insert_image(conn, "a lighthouse", seed=5, **SMALL)
    steered = insert_image(conn, "a lighthouse", seed=5, **SMALL, controls=controls(
        {"image": to_base64_png(disc()), "type": "canny", "strength": 0.9},
        {"image_id": upload, "type": "depth", "strength": 0.4, "start": 0.2, "end": 0.8}))
    after = insert_image(conn, "a lighthouse", seed=5, **SMALL)
    hires = insert_image(conn, "a lighthouse", seed=5, **SMALL, hr_scale=2, hr_steps=4, hr_strength=0.5)
    hires_x4 = insert_image(conn, "a lighthouse", seed=5, **SMALL, hr_scale=1.5, hr_upscaler="upscaler")
    bad = {
        insert_image(conn, "x", **SMALL, controls=controls({**CONTROL, "model": "depth-xl"})):
            "controls[0]: unknown ControlNet 'depth-xl'; this daemon serves: canny",
        insert_image(conn, "x", **SMALL, controls=controls({"image": "aGVsbG8=", "type": "canny"})):
            "controls[0].image: not an image (PNG, JPEG or WebP expected)",
        insert_image(conn, "x", **SMALL, controls=controls({**CONTROL, "type": "openpose"})):
            'controls[0]: unknown type "openpose"; use one of: canny, depth, pose, lineart, softedge, scribble, '
            "normal, seg, mlsd, tile, none (canny is drawn from the image; bring the others drawn)",
        insert_image(conn, "x", **SMALL, controls=controls({**CONTROL, "strength": -1})):
            "controls[0].strength must be between 0 and 2, got -1",
        insert_image(conn, "x", **SMALL, hr_scale=8):
            "hr_scale must be above 1 and at most 4, got 8",
        insert_image(conn, "x", **SMALL, hr_steps=8): "hr_steps needs hr_scale (the hires fix)",
    }
    ids = [upload, before, steered, after, hires, hires_x4, *bad]
    daemon = start_daemon()
    wait_finished(conn, ids, daemon)
    rows = {image_id: fetch_image(conn, image_id) for image_id in ids}
    for image_id in (upload, before, steered, after, hires, hires_x4):
        assert (rows[image_id]["status"], rows[image_id]["error"]) == ("ReadyToPublish", None), rows[image_id]
    png = {image_id: base64.b64decode(rows[image_id]["base64"]) for image_id in (before, steered, after, hires,
                                                                                 hires_x4)}
    assert not np.array_equal(pixels(png[steered]), pixels(png[before]))
    assert png[after] == png[before]  # bitwise: the ControlNet left nothing behind
    assert "ControlNet 1: \"Module: depth, Model: canny, Weight: 0.4, Guidance Start: 0.2, Guidance End: 0.8\"" in (
        read_parameters(png[steered]) or "")
    assert PILImage.open(io.BytesIO(png[hires])).size == (128, 128)
    assert (rows[hires]["width"], rows[hires]["height"]) == (64, 64)  # the row's own size stays as written
    text = read_parameters(png[hires]) or ""
    for field in ("Size: 64x64", "Denoising strength: 0.5", "Hires upscale: 2", "Hires steps: 4",
                  "Hires upscaler: Latent"):
        assert field in text, text
    assert PILImage.open(io.BytesIO(png[hires_x4])).size == (96, 96)
    assert "Hires upscaler: upscaler" in (read_parameters(png[hires_x4]) or "")
    for image_id, error in bad.items():
        assert (rows[image_id]["status"], rows[image_id]["error"]) == ("Failed", error)
    assert daemon.alive()
