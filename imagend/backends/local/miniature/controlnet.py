"""A miniature SDXL ControlNet for the miniature SDXL model, random weights: it MAKES NOISE.

`ControlNetModel.from_unet` gives the architecture of an SDXL ControlNet for the miniature UNet (its
down blocks and mid block copied, a conditioning embedding that brings a control image down 8x to the
latents' size); its zero convolutions, zero in a real ControlNet before training, get random weights here,
so that the control image changes the pixels. Saved with `save_pretrained` and loaded back with
`ControlNetModel.from_pretrained`, exactly as a real ControlNet (e.g. diffusers/controlnet-canny-sdxl-1.0)
is. Production code never imports this module.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from imagend.backends.local.options import TINY_MODEL_MARKER_FILE, TINY_MODEL_MARKER_TEXT

CONDITIONING_CHANNELS = (8, 16, 16, 32)  # 3 stride-2 convolutions: 8x down, as the VAE
ZERO_CONV_STD = 0.5  # the trained zero convolutions' stand-in: large enough to move the pixels visibly

README_TEXT = """\
imagend miniature SDXL ControlNet -- RANDOM WEIGHTS, IT MAKES NOISE.

This folder was written by `imagend -make-tiny-models`. It has the architecture of an SDXL
ControlNet (ControlNetModel.from_unet of the miniature SDXL UNet) with random weights. It loads with
ControlNetModel.from_pretrained(<this folder>) and drives StableDiffusionXLControlNetPipeline for the
miniature SDXL model only. Use it for tests and demos only.
"""
assert TINY_MODEL_MARKER_TEXT in README_TEXT


def write_tiny_controlnet(directory: Path, model_dir: Path, seed: int) -> Path:
    """The miniature ControlNet of the miniature SDXL model in `model_dir`, written to `directory`."""
    import torch

    from imagend.backends.local.pipelines import quiet_libraries

    quiet_libraries()
    diffusers: Any = importlib.import_module("diffusers")
    unet = diffusers.UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    torch.manual_seed(seed)
    controlnet = diffusers.ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                      controlnet.controlnet_cond_embedding.conv_out]
        for conv in zero_convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * ZERO_CONV_STD)
    folder = Path(directory).expanduser().resolve()
    controlnet.save_pretrained(folder, safe_serialization=True)
    (folder / TINY_MODEL_MARKER_FILE).write_text(README_TEXT, encoding="utf-8")
    return folder
