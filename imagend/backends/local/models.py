"""Several checkpoints in one daemon: the loaded pipelines, least recently used first out.

`IMAGEND_MODELS` names the checkpoints a row may ask for; `IMAGEND_MODEL` is the one a row with
`model` NULL gets (its name is '' here). At most `IMAGEND_MODEL_CACHE` stay on the device; the least
recently used one beyond that is moved to CPU memory while `IMAGEND_MODEL_CACHE_CPU` allows (a reload
is then a copy, not a read from disk), else dropped, and the device's memory is given back.

Each loaded checkpoint is one `LoadedModel`: its text-to-image pipeline, and the image-to-image and
inpainting pipelines made from it with `from_pipe`, which share its modules (one set of weights).
"""

from __future__ import annotations

import importlib
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imagend.backends.local import single_file
from imagend.backends.local.families import SDXL, Family, encoder_for, family_of
from imagend.backends.local.options import LocalSettings, is_tiny_model
from imagend.backends.local.pipelines import Schedulers, free_memory, load_pipeline, place
from imagend.errors import BadInput
from imagend.logs import get_logger

log = get_logger()

TASK_PIPELINES = {  # task -> the diffusers class that drives it, from_pipe of the text-to-image pipeline
    "img2img": "StableDiffusionXLImg2ImgPipeline",
    "inpaint": "StableDiffusionXLInpaintPipeline",
}


class LoadedModel:
    """One checkpoint, loaded: its pipelines (sharing one set of weights), prompt encoder, schedulers."""

    def __init__(self, name: str, source: str, pipe: Any, family: Family = SDXL) -> None:
        self.name = name
        self.source = source
        self.family = family
        self.pipe = pipe  # text-to-image
        self.encoder = encoder_for(family, pipe)
        self.schedulers = Schedulers(pipe.scheduler.config)  # the checkpoint's, before any job replaced it
        single = single_file.parse(source)  # a .safetensors/.ckpt file, perhaps with :family: its file name
        self.label = single.path.name if single else Path(source).name if Path(source).expanduser().exists() else source
        self.tiny = single_file.is_miniature(source) if single else is_tiny_model(source)
        self.on_device = True
        self._task_pipes: dict[str, Any] = {}
        self.extras: dict[str, Any] = {}  # per-model state of loras.py and ip_adapter.py

    def pipeline(self, task: str) -> Any:
        """The pipeline for `task` (txt2img, img2img, inpaint), made once with from_pipe: no new weights."""
        if task == "txt2img":
            return self.pipe
        if task not in self._task_pipes:
            diffusers: Any = importlib.import_module("diffusers")
            pipe = getattr(diffusers, TASK_PIPELINES[task]).from_pipe(self.pipe)
            pipe.set_progress_bar_config(disable=True)
            self._task_pipes[task] = pipe
        return self._task_pipes[task]

    def pipelines(self) -> list[Any]:
        return [self.pipe, *self._task_pipes.values()]

    def release(self) -> None:
        """Drop every reference this object holds, so the weights can be freed."""
        self.pipe = None
        self._task_pipes.clear()
        self.extras.clear()
        self.encoder = None  # it holds the pipeline too


class ModelCache:
    """Loaded checkpoints by name, least recently used first out. Used by the device lock's holder only."""

    def __init__(
        self,
        options: LocalSettings,
        load: Callable[[str, str], Any] | None = None,
        prepare: Callable[[LoadedModel], None] = lambda _model: None,
        speed: Any = None,
    ) -> None:
        self.options = options
        self.speed = speed  # speed.settings.SpeedSettings, applied to every SDXL checkpoint loaded
        self._load = load or self._load_pipeline
        self.prepare = prepare  # the backend's per-model setup (its OOM fallback level)
        self.loaded: OrderedDict[str, LoadedModel] = OrderedDict()  # by source; most recently used last
        self.loads = 0  # from disk (or the hub cache)
        self.vae: Any = None
        self.names = {"": options.model, **options.models}
        self.families: dict[str, Family] = {}  # by source, read from model_index.json before any load

    def known(self) -> list[str]:
        return sorted(self.options.models)

    def source_of(self, name: str | None) -> str:
        if name and name not in self.options.models:
            known = ", ".join(self.known()) or "none (IMAGEND_MODELS is not set)"
            raise BadInput(f"unknown model {name!r}; this daemon serves: {known}")
        return self.options.source_of(name)

    def family(self, name: str | None) -> Family:
        source = self.source_of(name)
        if source not in self.families:
            setting = f"IMAGEND_MODELS ({name})" if name else "IMAGEND_MODEL"
            self.families[source] = family_of(source, setting, asked=bool(name) or self.options.model_set)
        return self.families[source]

    def loaded_names(self) -> tuple[str, ...]:
        """The row `model` values whose checkpoint is on the device ('' for IMAGEND_MODEL)."""
        on_device = {source for source, model in self.loaded.items() if model.on_device}
        return tuple(sorted(name for name, source in self.names.items() if source in on_device))

    def get(self, name: str | None) -> LoadedModel:
        source = self.source_of(name)
        model = self.loaded.get(source)
        if model is not None:
            self.loaded.move_to_end(source)
            if not model.on_device:
                self._to_device(model)
            return model
        started = time.monotonic()
        family = self.family(name)
        model = LoadedModel(name or "", source, self._load(name or "", source), family)
        self.loads += 1
        self.prepare(model)
        self.loaded[source] = model
        self._evict()
        log.info(
            "model_loaded",
            model=name or "(IMAGEND_MODEL)",
            source=source,
            loads=self.loads,
            seconds=round(time.monotonic() - started, 2),
        )
        return model

    def _load_pipeline(self, name: str, source: str) -> Any:
        family = self.families.get(source)
        if family is SDXL and self.vae is None and self.options.vae is not None:
            from imagend.backends.local.pipelines import load_vae

            self.vae = load_vae(self.options)  # shared by every checkpoint
        setting = f"IMAGEND_MODELS ({name})" if name else "IMAGEND_MODEL"
        return load_pipeline(self.options, source, setting, vae=self.vae, family=family, speed=self.speed)

    def _to_device(self, model: LoadedModel) -> None:
        started = time.monotonic()
        place(model.pipe, self.options)
        model.on_device = True
        self._evict()
        log.info("model_restored", model=model.name or "(IMAGEND_MODEL)", seconds=round(time.monotonic() - started, 2))

    def _evict(self) -> None:
        on_device = [m for m in self.loaded.values() if m.on_device]
        for model in on_device[: max(0, len(on_device) - self.options.model_cache)]:
            parked = [m for m in self.loaded.values() if not m.on_device]
            if self.options.model_cache_cpu > len(parked) and self.options.device != "cpu":
                model.pipe.to("cpu")
                model.on_device = False
                log.info("model_parked", model=model.name or "(IMAGEND_MODEL)", where="cpu memory")
            else:
                self.drop(model)
        free_memory(self.options.device)  # the device's cached blocks back to the driver

    def drop(self, model: LoadedModel) -> None:
        self.loaded.pop(model.source, None)
        model.release()
        log.info("model_unloaded", model=model.name or "(IMAGEND_MODEL)")

    def close(self) -> None:
        for model in list(self.loaded.values()):
            self.drop(model)
        self.vae = None
        free_memory(self.options.device)
