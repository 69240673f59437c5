"""The speed options (imagend.backends.local.speed) as the daemon applies them: read from the environment at start,
applied to every SDXL checkpoint it loads, and a fast preset sampling every SDXL row its own way."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from imagend.backends.local.png_metadata import read_parameters

from support.local import TORCH_NUMPY_COPY_WARNING, RecordingHeartbeat, request

pytestmark = TORCH_NUMPY_COPY_WARNING


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_exact_options_keep_the_image(make_backend: Callable[..., Any]) -> None:
    plain = make_backend()
    fast = make_backend(IMAGEND_FUSE_QKV="true", IMAGEND_CHANNELS_LAST="true")
    row = request(seed=5)
    one = plain.generate([plain.validate(row)], RecordingHeartbeat())[0].png
    two = fast.generate([fast.validate(row)], RecordingHeartbeat())[0].png
    assert np.abs(pixels(one) - pixels(two)).max() <= 1


def test_a_fast_preset_samples_every_row_with_its_scheduler_steps_and_guidance(
    make_backend: Callable[..., Any], tiny_models: dict[str, Path]
) -> None:
    backend = make_backend(IMAGEND_FAST_PRESET="lcm", IMAGEND_FAST_LORA=str(tiny_models["lora-diffusers"]))
    validated = backend.validate(request(steps=None, guidance=None, scheduler="euler"))
    assert (validated.steps, validated.guidance, validated.scheduler) == (4, 1.0, "preset")
    assert any("IMAGEND_FAST_PRESET=lcm samples with its own (LCM)" in note for note in validated.notes)
    png = backend.generate([validated], RecordingHeartbeat())[0].png
    parameters = read_parameters(png) or ""
    assert "Sampler: LCM," in parameters and "Steps: 4," in parameters
    assert type(backend.pipe.scheduler).__name__ == "LCMScheduler"
