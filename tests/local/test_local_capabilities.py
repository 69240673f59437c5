"""The local backend's capabilities beyond one model's text-to-image, in process on the miniature
models (noise): models per row and their cache, LoRAs, image-to-image, inpainting, IP-Adapter,
upscaling, step previews, and the PNG metadata. Each row goes through the daemon's own validation
(validation.validate_row, then the backend's validate), as a claimed row does."""

from __future__ import annotations

import base64
import gc
import io
import json
import os
import re
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

from imagend.backends.local.png_metadata import read_parameters
from imagend.config.settings import load_settings
from imagend.db.rows import ClaimedRow
from imagend.errors import BadInput
from imagend.queue.validation import validate_row

from support.local import SIDE_PX, STEPS, TORCH_NUMPY_COPY_WARNING, RecordingHeartbeat

pytestmark = [
    TORCH_NUMPY_COPY_WARNING,
    # peft warns when a second adapter joins a model that has one; that is how adapters are kept.
    pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning"),
]


def png_b64(image: PILImage.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def gradient(width: int = SIDE_PX, height: int = SIDE_PX, flip: bool = False) -> PILImage.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    channels = [x, x[:, ::-1], np.full_like(x, 128)]
    return PILImage.fromarray(np.stack(channels[::-1] if flip else channels, axis=-1), "RGB")


def half_mask(width: int = SIDE_PX, height: int = SIDE_PX) -> PILImage.Image:
    """White (repaint) on the right half, black (keep) on the left."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:, width // 2 :] = 255
    return PILImage.fromarray(mask, "L").convert("RGB")


class Rows:
    """Claimed rows as the daemon sees them, validated the daemon's way."""

    def __init__(self, backend: Any, settings: Any) -> None:
        self.backend = backend
        self.settings = settings
        self.next_id = 1

    def request(self, prompt: str = "a red fox in the snow", **columns: Any) -> Any:
        values: dict[str, Any] = {"width": SIDE_PX, "height": SIDE_PX, "steps": STEPS, "seed": 7}
        values.update(columns)
        if isinstance(values.get("loras"), list):
            values["loras"] = json.dumps(values["loras"])
        fields = {name: values.pop(name, None) for name in ("negative_prompt", "style", "guidance", "scheduler",
                                                             "params", "max_attempts")}
        row = ClaimedRow(id=self.next_id, attempt=1, prompt=prompt, backend="local", **fields, **values)
        self.next_id += 1
        return self.backend.validate(validate_row(row, self.settings).request)

    def image(self, prompt: str = "a red fox in the snow", heartbeat: Any = None, **columns: Any) -> PILImage.Image:
        return PILImage.open(io.BytesIO(self.png(prompt, heartbeat, **columns)))

    def png(self, prompt: str = "a red fox in the snow", heartbeat: Any = None, **columns: Any) -> bytes:
        request = self.request(prompt, **columns)
        return self.backend.generate([request], heartbeat or RecordingHeartbeat())[0].png


@pytest.fixture
def make_rows(extras_env: Callable[..., dict[str, str]], tmp_path: Path) -> Iterator[Callable[..., Rows]]:
    from imagend.backends.local import LocalBackend

    made: list[Any] = []

    def make(**overrides: str) -> Rows:
        settings = load_settings(environ={"IMAGEND_DATA_DIR": str(tmp_path / "data"), **extras_env(**overrides)},
                                 env_file=None)
        backend = LocalBackend.from_settings(settings)
        made.append(backend)
        return Rows(backend, settings)

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def rows(make_rows: Callable[..., Rows]) -> Rows:
    return make_rows()


def pixels(image: PILImage.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# -- models ---------------------------------------------------------------------------------------


def test_a_row_names_its_model_and_two_models_give_two_images(rows: Rows) -> None:
    default = pixels(rows.image())
    named_default = pixels(rows.image(model="sdxl"))
    other = pixels(rows.image(model="sdxl-b"))
    assert np.array_equal(default, named_default)  # NULL is IMAGEND_MODEL, here also named sdxl
    assert not np.array_equal(default, other)
    assert "Model: sdxl-b" in (read_parameters(rows.png(model="sdxl-b")) or "")


def test_an_unknown_model_fails_with_the_known_names(rows: Rows) -> None:
    with pytest.raises(BadInput, match=r"unknown model 'juggernaut'; this daemon serves: sdxl, sdxl-b"):
        rows.request(model="juggernaut")


def test_the_cache_keeps_its_size_and_frees_what_it_drops(make_rows: Callable[..., Rows]) -> None:
    rows = make_rows(IMAGEND_MODEL_CACHE="1")
    cache = rows.backend.models
    first = pixels(rows.image(model="sdxl-b"))
    unet = weakref.ref(cache.get("sdxl-b").pipe.unet)
    rows.image()  # back to the default model: sdxl-b is dropped
    assert [m.name for m in cache.loaded.values()] == [""]
    gc.collect()
    assert unet() is None  # nothing holds the dropped checkpoint's weights
    assert np.array_equal(pixels(rows.image(model="sdxl-b")), first)  # reloaded, the same image
    assert cache.loads == 3  # sdxl-b, the default again, sdxl-b again (the start's load is not counted)

    two = make_rows(IMAGEND_MODEL_CACHE="2")
    for name in ("sdxl-b", None, "sdxl-b", None):
        two.image(model=name)
    assert two.backend.models.loads == 1 and len(two.backend.models.loaded) == 2
    assert two.backend.claim_preference().loaded == ("", "sdxl", "sdxl-b")


def test_image_to_image_and_inpainting_share_the_checkpoints_weights(rows: Rows) -> None:
    rows.image(init_image=png_b64(gradient()))
    rows.image(init_image=png_b64(gradient()), mask_image=png_b64(half_mask()))
    model = rows.backend.models.get(None)
    unets = {id(pipe.unet) for pipe in model.pipelines()}
    assert len(model.pipelines()) == 3 and len(unets) == 1


# -- LoRAs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("lora", ["pixel-kohya", "pixel-diffusers"])
def test_a_lora_changes_the_pixels_and_the_next_row_gets_the_clean_model(rows: Rows, lora: str) -> None:
    before = pixels(rows.image())
    with_lora = pixels(rows.image(loras=[{"name": lora, "weight": 0.8}]))
    after = pixels(rows.image())
    assert not np.array_equal(before, with_lora)
    assert np.array_equal(before, after)  # bitwise: the LoRA is not left on the model
    stronger = pixels(rows.image(loras=[{"name": lora, "weight": 1.6}]))
    assert not np.array_equal(with_lora, stronger)  # the weight is applied


def test_a_lora_is_read_from_disk_once_and_named_in_the_png(rows: Rows) -> None:
    for weight in (0.5, 1.0, 0.5):
        png = rows.png(loras=[{"name": "pixel-kohya", "weight": weight}])
    assert rows.backend.loras.disk_reads == 1
    parameters = read_parameters(png) or ""
    assert "<lora:pixel-kohya:0.5>" in parameters.splitlines()[0]
    assert 'Lora hashes: "pixel-kohya: ' in parameters


def test_a1111_prompt_syntax_is_what_compel_and_loras_make(rows: Rows) -> None:
    """Issue 25, item 8: `(red:1.5)` and `<lora:pixel-kohya:0.8>` make, bit for bit, the image of compel's
    `(red)1.5` with the LoRA in `loras`; the row says what was read, and the PNG names the LoRA as A1111 does."""
    a1111 = rows.request("a (red:1.5) fox, <lora:pixel-kohya:0.8>")
    assert a1111.prompt == "a (red)1.5 fox"
    assert [(lora.name, lora.weight) for lora in a1111.inputs.loras] == [("pixel-kohya", 0.8)]
    assert any("read as compel's weighting" in note for note in a1111.notes)
    png = rows.png("a (red:1.5) fox, <lora:pixel-kohya:0.8>")
    compel = rows.png("a (red)1.5 fox", loras=[{"name": "pixel-kohya", "weight": 0.8}])
    assert np.array_equal(pixels(PILImage.open(io.BytesIO(png))), pixels(PILImage.open(io.BytesIO(compel))))
    unweighted = rows.png("a red fox", loras=[{"name": "pixel-kohya", "weight": 0.8}])
    assert not np.array_equal(pixels(PILImage.open(io.BytesIO(png))), pixels(PILImage.open(io.BytesIO(unweighted))))
    parameters = read_parameters(png) or ""
    assert parameters.splitlines()[0] == "a (red)1.5 fox <lora:pixel-kohya:0.8>"


@pytest.mark.parametrize(
    ("loras", "error"),
    [
        ([{"name": "no-such-lora"}], r"unknown LoRA 'no-such-lora'; .* holds: .*pixel-kohya"),
        ([{"name": "pixel-kohya", "weight": 4.5}], r"weight must be between -4 and 4, got 4.5"),
        ([{"name": "../../etc/passwd"}], r"is not a file name"),
        ([{"name": "pixel-kohya", "scale": 1}], r'each LoRA is \{"name"'),
        ({"name": "pixel-kohya"}, r"loras must be a JSON array"),
        ([{"name": "pixel-kohya"}, {"name": "pixel-kohya"}], r"names the same LoRA twice"),
    ],
)
def test_bad_loras_fail_the_row_before_the_device(rows: Rows, loras: Any, error: str) -> None:
    with pytest.raises(BadInput, match=error):
        rows.request(loras=json.dumps(loras))


def test_a_lora_that_does_not_fit_fails_its_row_and_leaves_the_model_clean(rows: Rows) -> None:
    before = pixels(rows.image())
    with pytest.raises(BadInput, match=r"LoRA 'misfit' does not fit model 'sdxl'"):
        rows.png(loras=[{"name": "misfit"}])
    with pytest.raises(BadInput, match=r"not-a-lora.safetensors is not a readable .safetensors file"):
        rows.png(loras=[{"name": "not-a-lora"}])
    assert np.array_equal(pixels(rows.image()), before)


# -- image-to-image and inpainting ----------------------------------------------------------------


def test_image_to_image_depends_on_the_init_image_and_the_strength(rows: Rows) -> None:
    one = pixels(rows.image(init_image=png_b64(gradient())))
    other = pixels(rows.image(init_image=png_b64(gradient(flip=True))))
    stronger = pixels(rows.image(init_image=png_b64(gradient()), strength=1.0))
    assert not np.array_equal(one, other)
    assert not np.array_equal(one, stronger)
    parameters = read_parameters(rows.png(init_image=png_b64(gradient()), strength=0.5)) or ""
    assert "Denoising strength: 0.5" in parameters


def test_without_a_size_the_init_images_size_is_kept_rounded_to_8(rows: Rows) -> None:
    image = rows.image(init_image=png_b64(gradient(77, 45)), width=None, height=None)
    assert image.size == (72, 40)


def test_inpainting_keeps_the_unmasked_region(rows: Rows) -> None:
    init = gradient()
    result = pixels(rows.image(init_image=png_b64(init), mask_image=png_b64(half_mask())))
    kept, repainted = result[:, : SIDE_PX // 2], result[:, SIDE_PX // 2 :]
    source = pixels(init)
    assert np.abs(kept - source[:, : SIDE_PX // 2]).max() <= 2  # the unmasked half is the input's
    assert np.abs(repainted - source[:, SIDE_PX // 2 :]).mean() > 10  # the masked half is new


@pytest.mark.parametrize(
    ("columns", "error"),
    [
        ({"init_image": "bm90IGFuIGltYWdl"}, r"init_image: "),
        ({"init_image": "%%%"}, r"init_image: "),
        ({"mask_image": "x"}, r"mask_image needs an init image|mask_image: "),
        ({"strength": 0.5}, r"strength needs an init image"),
        ({"init_image": "PNG", "strength": 1.5}, r"init_image: |strength must be above 0 and at most 1"),
        ({"reference_scale": 3.0}, r"reference_scale must be between 0 and 2|needs a reference image"),
        ({"task": "outpaint"}, r"unknown task 'outpaint'"),
        ({"upscale": 2.0}, r"upscale is only read with task 'upscale'"),
    ],
)
def test_bad_image_inputs_name_their_column(rows: Rows, columns: dict[str, Any], error: str) -> None:
    with pytest.raises(BadInput, match=error):
        rows.request(**columns)


def test_a_mask_of_another_size_and_a_strength_that_runs_no_step_fail(rows: Rows) -> None:
    with pytest.raises(BadInput, match=r"mask_image is 32x32 but the init image is 64x64"):
        rows.request(init_image=png_b64(gradient()), mask_image=png_b64(half_mask(32, 32)))
    with pytest.raises(BadInput, match=r"strength 0.1 of 3 steps runs no step"):
        rows.request(init_image=png_b64(gradient()), strength=0.1)


# -- IP-Adapter -----------------------------------------------------------------------------------


def test_a_reference_image_steers_the_image_and_is_then_unloaded(rows: Rows) -> None:
    before = pixels(rows.image())
    styled = pixels(rows.image(reference_image=png_b64(gradient()), reference_scale=1.0))
    other_style = pixels(rows.image(reference_image=png_b64(gradient(flip=True)), reference_scale=1.0))
    assert not np.array_equal(before, styled) and not np.array_equal(styled, other_style)
    assert np.array_equal(pixels(rows.image()), before)  # the adapter is gone for a plain row
    assert "IP-Adapter scale: 1" in (read_parameters(rows.png(reference_image=png_b64(gradient()),
                                                              reference_scale=1.0)) or "")


def test_without_an_ip_adapter_a_reference_fails_with_the_setting(make_rows: Callable[..., Rows]) -> None:
    rows = make_rows(IMAGEND_IP_ADAPTER="")
    with pytest.raises(BadInput, match=r"needs an IP-Adapter, and this daemon has none \(IMAGEND_IP_ADAPTER\)"):
        rows.request(reference_image=png_b64(gradient()))


# -- upscaling ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("factor", "size"), [(4.0, (96, 64)), (2.0, (48, 32))])
def test_upscale_makes_the_image_bigger_by_its_factor(rows: Rows, factor: float, size: tuple[int, int]) -> None:
    png = rows.png("sharp details", task="upscale", upscale=factor, init_image=png_b64(gradient(24, 16)),
                   width=None, height=None)
    assert PILImage.open(io.BytesIO(png)).size == size
    assert f"Postprocess upscale by: {factor:g}" in (read_parameters(png) or "")


def test_upscale_needs_a_factor_an_image_and_an_upscaler(make_rows: Callable[..., Rows], rows: Rows) -> None:
    with pytest.raises(BadInput, match=r"upscale must be 2 or 4 for task 'upscale', got 3"):
        rows.request(task="upscale", upscale=3.0, init_image=png_b64(gradient()))
    with pytest.raises(BadInput, match=r"task 'upscale' needs an init image"):
        rows.request(task="upscale", upscale=2.0)
    with pytest.raises(BadInput, match=r"gives 8192x8192, above the 4096 px limit"):
        rows.request(task="upscale", upscale=4.0, init_image=png_b64(gradient(2048, 2048)))
    without = make_rows(IMAGEND_UPSCALER="")
    with pytest.raises(BadInput, match=r"this daemon has none \(IMAGEND_UPSCALER\)"):
        without.request(task="upscale", upscale=2.0, init_image=png_b64(gradient()))


# -- step previews --------------------------------------------------------------------------------


def test_each_step_offers_a_small_webp_preview_of_the_latents(rows: Rows) -> None:
    heartbeat = RecordingHeartbeat()
    request = rows.request(steps=4)
    rows.backend.generate([request], heartbeat)
    assert len(heartbeat.previews) == 4
    preview = PILImage.open(io.BytesIO(base64.b64decode(heartbeat.previews[-1][request.id])))
    assert preview.format == "WEBP" and preview.size == (SIDE_PX // 8, SIDE_PX // 8)
    assert heartbeat.previews[0][request.id] != heartbeat.previews[-1][request.id]  # the image forms


def test_previews_are_off_with_the_setting(make_rows: Callable[..., Rows]) -> None:
    rows = make_rows(IMAGEND_PREVIEWS="false")
    heartbeat = RecordingHeartbeat()
    rows.backend.generate([rows.request()], heartbeat)
    assert heartbeat.previews == [] and len([p for p in heartbeat.progress if p is not None]) == STEPS


def test_a_lora_replaced_on_disk_is_read_again(rows: Rows, tiny_models: dict[str, Path]) -> None:
    """Hardening III, item 13: a LoRA file replaced on disk kept its old weights and hash until a restart."""
    from imagend.backends.local.miniature.extras import write_tiny_lora

    path = tiny_models["loras"] / "swapped.safetensors"
    write_tiny_lora(path, tiny_models["sdxl"], format="kohya", seed=11)
    first_png = rows.png(loras=[{"name": "swapped"}])
    first = pixels(PILImage.open(io.BytesIO(first_png)))
    write_tiny_lora(path, tiny_models["sdxl"], format="kohya", seed=12)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))  # a new mtime, even within a tick
    second_png = rows.png(loras=[{"name": "swapped"}])
    assert not np.array_equal(first, pixels(PILImage.open(io.BytesIO(second_png))))  # the new weights
    hashes = [re.search(r'Lora hashes: "swapped: (\w+)"', read_parameters(png) or "")
              for png in (first_png, second_png)]
    assert hashes[0] and hashes[1] and hashes[0].group(1) != hashes[1].group(1)
    assert rows.backend.loras.disk_reads >= 2
