"""The diffusers families the local backend drives, one module each as diffusers' `pipelines/<family>/`
(`sdxl`, `flux`, `sd3`, `kandinsky3`: its rules and its prompt encoder; `base`: what they share), and
their registry here: `FAMILIES` by pipeline class, `family_of` a checkpoint, `encoder_for` a pipeline.

A checkpoint's family comes from its `model_index.json` (`_class_name`), read before it is loaded, so
rows are validated against the right rules.

No torch at import: the families are plain data, and their encoders import torch when they encode.
"""

from __future__ import annotations

import json
from typing import Any

from imagend.backends.local.families.base import DISCRETE, FLOW, Family, PlainEncoder
from imagend.backends.local.families.flux import FLUX, FluxEncoder
from imagend.backends.local.families.kandinsky3 import KANDINSKY3
from imagend.backends.local.families.sd3 import SD3
from imagend.backends.local.families.sdxl import SDXL, PromptEncoder
from imagend.backends.local.hub import model_index_text
from imagend.errors import ConfigError

__all__ = [
    "DISCRETE", "FAMILIES", "FLOW", "FLUX", "KANDINSKY3", "SD3", "SDXL", "Family", "encoder_for", "family_of",
    "supported",
]

FAMILIES = {family.pipeline_class: family for family in (SDXL, FLUX, SD3, KANDINSKY3)}


def supported() -> str:
    return ", ".join(f"{f.name} ({f.pipeline_class})" for f in FAMILIES.values())


def family_of(source: str, setting: str, *, asked: bool = True) -> Family:
    """The family of the checkpoint at `source` (a folder, or a hub id: from the Hugging Face cache, or
    downloaded where `asked` and the hub answers; hub.py), from its model_index.json; ConfigError naming
    `setting` when it is none we drive, or cannot be read. A single .safetensors/.ckpt file: from its keys
    (single_file.py)."""
    from imagend.backends.local import single_file

    if single_file.parse(source) is not None:
        key = single_file.family_key(source, setting)
        return next(family for family in FAMILIES.values() if family.key == key)
    try:
        text = model_index_text(source, setting, asked=asked)
        class_name = json.loads(text).get("_class_name")
    except ConfigError:
        raise
    except Exception as exc:  # missing, unreadable, not in the cache and no network: the setting is wrong
        raise ConfigError(
            f"{setting}={source}: cannot read its model_index.json ({type(exc).__name__}); set {setting} to a "
            f"folder written by save_pretrained or a hub id in the Hugging Face cache"
        ) from None
    family = FAMILIES.get(class_name if isinstance(class_name, str) else "")
    if family is None:
        raise ConfigError(
            f"{setting}={source}: a {class_name} pipeline, which the local backend does not drive; "
            f"supported families: {supported()}"
        )
    return family


def encoder_for(family: Family, pipe: Any) -> Any:
    """The family's prompt encoder for `pipe`: compel for SDXL (sdxl.PromptEncoder), diffusers' or compel's
    for FLUX.1 (flux.FluxEncoder), the prompt as written for the others (base.PlainEncoder)."""
    if family.key == SDXL.key:
        return PromptEncoder(pipe)
    if family.key == FLUX.key:
        return FluxEncoder(pipe, family)
    return PlainEncoder(family)
