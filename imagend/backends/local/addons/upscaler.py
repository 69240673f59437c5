"""`task = 'upscale'`: a real upscaling model, diffusers' StableDiffusionUpscalePipeline (the
architecture of stabilityai/stable-diffusion-x4-upscaler), named by `IMAGEND_UPSCALER`.

Why this one and not a Real-ESRGAN file through spandrel (what ComfyUI loads): spandrel imports
torchvision, which has no build for the CPU-only torch our hosts and CI run, so it could be neither
installed with the pinned torch nor tested here; the x4 upscaler runs through the same diffusers code
as every other model of this backend (from_pretrained, the step callback for progress, cancel and
leases, the device lock) and is prompt-guided. It makes 4x; a row asking 2x gets the 4x image scaled
down by 2 with Lanczos (sharper than a 2x model's output, at the 4x model's cost). Loaded on the first
upscale row and kept.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

import torch

from imagend.backends.local.options import LocalSettings, is_tiny_model
from imagend.errors import BadInput, PermanentError, clip
from imagend.logs import get_logger

log = get_logger()

NOISE_LEVEL = 20  # diffusers' default: how much noise the low-resolution image gets before it guides
UPSCALE_MAX_OUTPUT_SIDE = 4096


class Upscaler:
    def __init__(self, options: LocalSettings) -> None:
        self.options = options
        self.pipe: Any = None
        self.label = ""
        self.tiny = False

    def check(self, width: int, height: int, factor: float) -> None:
        if self.options.upscaler is None:
            raise BadInput("task 'upscale' needs an upscaling model, and this daemon has none (IMAGEND_UPSCALER)")
        out_w, out_h = int(width * factor), int(height * factor)
        if max(out_w, out_h) > UPSCALE_MAX_OUTPUT_SIDE:
            raise BadInput(
                f"upscaling the {width}x{height} init image by {factor:g} gives {out_w}x{out_h}, above the "
                f"{UPSCALE_MAX_OUTPUT_SIDE} px limit of a side; upscale a smaller image"
            )

    def pipeline(self) -> Any:
        if self.pipe is None:
            source = self.options.upscaler
            assert source is not None
            started = time.monotonic()
            diffusers: Any = importlib.import_module("diffusers")
            folder = Path(source).expanduser()
            try:
                pipe = diffusers.StableDiffusionUpscalePipeline.from_pretrained(
                    str(folder) if folder.exists() else source, dtype=getattr(torch, self.options.dtype)
                )
            except Exception as exc:
                raise PermanentError(
                    f"IMAGEND_UPSCALER={source}: cannot load a diffusers upscaler ({type(exc).__name__}: "
                    f"{clip(str(exc), 200)}); use a folder or hub id like stabilityai/stable-diffusion-x4-upscaler"
                ) from None
            pipe.set_progress_bar_config(disable=True)
            pipe.to(self.options.device)
            pipe.vae.enable_tiling()  # a 4x decode is large: tiles keep it within memory
            self.pipe = pipe
            self.label = folder.name if folder.exists() else source
            self.tiny = is_tiny_model(source)
            log.info("upscaler_loaded", source=source, seconds=round(time.monotonic() - started, 2))
        return self.pipe

    @staticmethod
    def call_arguments(image: Any) -> dict[str, Any]:
        """Always the model's 4x; finish() brings it to the row's factor."""
        return {"image": image, "noise_level": NOISE_LEVEL}

    @staticmethod
    def finish(image: Any, source_size: tuple[int, int], factor: float) -> Any:
        """The model's 4x output brought to the row's factor."""
        wanted = (int(source_size[0] * factor), int(source_size[1] * factor))
        if image.size == wanted:
            return image
        from PIL import Image as PILImage

        return image.resize(wanted, PILImage.Resampling.LANCZOS)

    def close(self) -> None:
        self.pipe = None
