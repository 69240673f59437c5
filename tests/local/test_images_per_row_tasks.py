"""A row's n on every task of the local backend, in process on the miniature models (noise), each row
through the daemon's own validation: text-to-image, image-to-image, inpainting, the IP-Adapter, LoRAs,
ControlNet and the hires fix make n different images with consecutive seeds in one call (each that
seed's image up to batched rounding); the x4 upscale, which has nothing to vary but its noise, makes
one image and refuses n > 1 readably."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

from imagend.config.settings import load_settings
from imagend.db.rows import ClaimedRow
from imagend.errors import BadInput
from imagend.queue.validation import validate_row

from support.local import SIDE_PX, STEPS, TORCH_NUMPY_COPY_WARNING, RecordingHeartbeat

pytestmark = [TORCH_NUMPY_COPY_WARNING,
              pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")]


def png_b64(image: PILImage.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def gradient() -> PILImage.Image:
    x = np.linspace(0, 255, SIDE_PX, dtype=np.uint8)[None, :].repeat(SIDE_PX, 0)
    return PILImage.fromarray(np.stack([x, x[:, ::-1], np.full_like(x, 128)], axis=-1), "RGB")


def half_mask() -> PILImage.Image:
    mask = np.zeros((SIDE_PX, SIDE_PX), dtype=np.uint8)
    mask[:, SIDE_PX // 2 :] = 255
    return PILImage.fromarray(mask, "L")


@pytest.fixture
def backend(extras_env: Callable[..., dict[str, str]], tiny_models: dict[str, Path], tmp_path: Path
            ) -> Iterator[tuple[Any, Any]]:
    from imagend.backends.local import LocalBackend

    env = extras_env(IMAGEND_CONTROLNETS=f"canny={tiny_models['controlnet']}")
    settings = load_settings(environ={"IMAGEND_DATA_DIR": str(tmp_path / "data"), **env}, env_file=None)
    made = LocalBackend.from_settings(settings)
    yield made, settings
    made.close()


def request(backend: tuple[Any, Any], row_id: int, **columns: Any) -> Any:
    local, settings = backend
    values: dict[str, Any] = {"width": SIDE_PX, "height": SIDE_PX, "steps": STEPS, "seed": 40}
    values.update(columns)
    fields = {name: values.pop(name, None) for name in ("negative_prompt", "style", "guidance", "scheduler",
                                                         "params", "max_attempts")}
    row = ClaimedRow(id=row_id, attempt=1, prompt="a red fox in the snow", backend="local", **fields, **values)
    return local.validate(validate_row(row, settings).request)


def pixels(png: bytes) -> np.ndarray:
    with PILImage.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB")).astype(int)


TASKS: dict[str, dict[str, Any]] = {
    "txt2img": {},
    "img2img": {"init_image": png_b64(gradient()), "strength": 0.7},
    "inpaint": {"init_image": png_b64(gradient()), "mask_image": png_b64(half_mask())},
    "reference": {"reference_image": png_b64(gradient()), "reference_scale": 0.8},
    "lora": {"loras": json.dumps([{"name": "pixel-kohya", "weight": 0.8}])},
    "controlnet": {"controls": json.dumps([{"image": png_b64(gradient()), "type": "canny", "strength": 0.9}])},
    "hires": {"hr_scale": 1.5, "hr_steps": 2},
}


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_makes_n_images_with_consecutive_seeds(backend: tuple[Any, Any], task: str) -> None:
    local, _ = backend
    several = request(backend, 1, n=3, **TASKS[task])
    (image,) = local.generate([several], RecordingHeartbeat())
    pictures = [image, *image.others]
    assert [picture.seed for picture in pictures] == [40, 41, 42]
    made = [pixels(picture.png) for picture in pictures]
    assert all(not np.array_equal(made[k], made[j]) for k in range(3) for j in range(k)), "three different images"
    (alone,) = local.generate([request(backend, 2, seed=41, **TASKS[task])], RecordingHeartbeat())
    difference = np.abs(pixels(alone.png) - made[1])
    assert difference.max() <= 4 and difference.mean() < 0.5, (task, difference.max(), difference.mean())


def test_the_upscale_task_makes_one_image(backend: tuple[Any, Any]) -> None:
    with pytest.raises(BadInput, match=r"task 'upscale' makes one image per row \(n = 1\), got n = 2"):
        request(backend, 1, n=2, task="upscale", upscale=2.0, init_image=png_b64(gradient()), steps=2)
