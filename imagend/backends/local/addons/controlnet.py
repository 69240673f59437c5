"""ControlNet (SDXL): a row's `controls` steer the image with control images (edges, depth, pose …).

`IMAGEND_CONTROLNETS` names the ControlNets a row may use, as IMAGEND_MODELS names checkpoints
(`canny-xl=diffusers/controlnet-canny-sdxl-1.0,depth-xl=/srv/controlnets/depth`); a row's control names
one (or, with one configured, may leave `model` out). A ControlNet is read from disk (or the hub cache)
the first time a row asks for it and kept on the device, at most CONTROLNET_CACHE of them (the least
recently used beyond that dropped).

A batch with controls runs the checkpoint's text-to-image pipeline wrapped with
`StableDiffusionXLControlNetPipeline.from_pipe(pipe, controlnet=…)` (a MultiControlNetModel for several
controls): the same modules, no new weights, and nothing changed on the checkpoint's own pipeline, so the
next row without controls runs the clean model exactly (the tests hold it bitwise). The wrapper is kept
with the checkpoint (LoadedModel.extras, at most CONTROLNET_CACHE sets of ControlNets) and dropped with it.
LoRAs stay what the batch activated (they live on the shared UNet).

The control images were decoded, and a canny control's edges drawn (imagend/images/canny.py), when the
row was validated, off the device; here they are resized to the row's size.
"""

from __future__ import annotations

import importlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image as PILImage

from imagend.backends.base import Control
from imagend.backends.local.models import LoadedModel
from imagend.backends.local.options import LocalSettings
from imagend.errors import BadInput, PermanentError, clip
from imagend.logs import get_logger

log = get_logger()

CONTROLNET_CACHE = 4  # ControlNets kept on the device (an SDXL ControlNet is about 2.5 GB in fp16)
EXTRAS_KEY = "controlnet_pipes"  # LoadedModel.extras: the ControlNet pipelines made from it, by ControlNet names


class ControlNets:
    def __init__(self, options: LocalSettings) -> None:
        self.options = options
        self.sources = options.controlnets
        self.loaded: OrderedDict[str, Any] = OrderedDict()  # by name, most recently used last
        self.loads = 0

    def resolve(self, controls: Sequence[Control]) -> tuple[Control, ...]:
        """At validation, off the device: each control's ControlNet named (the only one where it left it out)."""
        if not controls:
            return ()
        if not self.sources:
            raise BadInput("controls need a ControlNet, and this daemon has none (IMAGEND_CONTROLNETS)")
        known = ", ".join(sorted(self.sources))
        resolved = []
        for index, control in enumerate(controls):
            name = control.model
            if name is None:
                if len(self.sources) > 1:
                    raise BadInput(f"controls[{index}]: name its model; this daemon serves several: {known}")
                name = next(iter(self.sources))
            elif name not in self.sources:
                raise BadInput(f"controls[{index}]: unknown ControlNet {clip(name, 80)!r}; this daemon serves: {known}")
            resolved.append(Control(control.image, control.type, name, control.strength, control.start, control.end))
        return tuple(resolved)

    def model(self, name: str) -> Any:
        """The ControlNetModel `name`, on the device (read once)."""
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return self.loaded[name]
        source = self.sources[name]
        started = time.monotonic()
        diffusers: Any = importlib.import_module("diffusers")
        folder = Path(source).expanduser()
        try:
            net = diffusers.ControlNetModel.from_pretrained(
                str(folder) if folder.exists() else source, torch_dtype=getattr(torch, self.options.dtype)
            )
        except Exception as exc:
            raise PermanentError(
                f"IMAGEND_CONTROLNETS ({name}={source}): cannot load a ControlNet ({type(exc).__name__}: "
                f"{clip(str(exc), 200)}); use a folder or hub id like diffusers/controlnet-canny-sdxl-1.0"
            ) from None
        net.to(self.options.device)
        self.loaded[name] = net
        self.loads += 1
        while len(self.loaded) > CONTROLNET_CACHE:
            dropped, _ = self.loaded.popitem(last=False)  # the pipelines made with it are made again
            log.info("controlnet_unloaded", controlnet=dropped)
        log.info("controlnet_loaded", controlnet=name, source=source, seconds=round(time.monotonic() - started, 2))
        return net

    def pipeline(self, model: LoadedModel, controls: Sequence[Control]) -> Any:
        """The checkpoint's pipeline with the controls' ControlNets (from_pipe: no new weights), made once per
        checkpoint and set of ControlNets: from_pipe moves every module again (10-20 ms on the miniature)."""
        names = tuple(control.model or "" for control in controls)
        made: OrderedDict[tuple[str, ...], Any] = model.extras.setdefault(EXTRAS_KEY, OrderedDict())
        # A pipeline holding a ControlNet the cache dropped would keep it on the device: made again instead.
        for stale in [key for key in made if not all(name in self.loaded for name in key)]:
            del made[stale]
        if names in made:
            made.move_to_end(names)
            return made[names]
        made[names] = pipe = self._wrap(model, names)
        while len(made) > CONTROLNET_CACHE:
            made.popitem(last=False)
        return pipe

    def _wrap(self, model: LoadedModel, names: tuple[str, ...]) -> Any:
        diffusers: Any = importlib.import_module("diffusers")
        nets = [self.model(name) for name in names]
        controlnet = nets[0] if len(nets) == 1 else diffusers.MultiControlNetModel(nets)
        try:
            pipe = diffusers.StableDiffusionXLControlNetPipeline.from_pipe(model.pipe, controlnet=controlnet)
        except Exception as exc:
            raise BadInput(
                f"the ControlNet does not fit model {model.label!r}: {type(exc).__name__}: {clip(str(exc), 200)}"
            ) from None
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @staticmethod
    def call_arguments(controls: Sequence[Control], size: tuple[int, int]) -> dict[str, Any]:
        """The pipeline call's control images (stretched to the row's size) and their settings."""
        images = [c.image if c.image.size == size else c.image.resize(size, PILImage.Resampling.LANCZOS)
                  for c in controls]
        if len(controls) == 1:
            only = controls[0]
            return {"image": images[0], "controlnet_conditioning_scale": only.strength,
                    "control_guidance_start": only.start, "control_guidance_end": only.end}
        return {"image": images, "controlnet_conditioning_scale": [c.strength for c in controls],
                "control_guidance_start": [c.start for c in controls],
                "control_guidance_end": [c.end for c in controls]}

    @staticmethod
    def png_fields(controls: Sequence[Control]) -> list[tuple[str, str]]:
        """As A1111's ControlNet extension writes them: `ControlNet 0: "Module: canny, Model: …, Weight: …"`."""
        return [(f"ControlNet {index}", f'"Module: {c.type}, Model: {c.model}, Weight: {c.strength:g}, '
                 f'Guidance Start: {c.start:g}, Guidance End: {c.end:g}"') for index, c in enumerate(controls)]

    def close(self) -> None:
        self.loaded.clear()
