"""The diffusers families the local backend drives, and what each one's call takes.

A checkpoint's family comes from its `model_index.json` (`_class_name`), read before it is
loaded, so rows are validated against the right rules. One `Family` per pipeline class says
what a row may ask of it: the side multiple (8 for SDXL's UNet; 16 for the packed-latent
transformers; 64 for Kandinsky 3's MoVQ), the schedulers it can use, whether it takes a negative
prompt, and how its prompt is encoded (compel where compel supports the family: SDXL, and FLUX
through CompelForFlux; elsewhere the prompt goes in as written). SDXL alone takes the image
inputs, LoRAs and the IP-Adapter here.

No torch at import: options-only code (validation at start) reads this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from imagend.errors import ConfigError

# Schedulers (names of options.SCHEDULERS) by kind: the UNet families are trained on discrete
# noise schedules, FLUX and SD3 on flow matching.
DISCRETE = ("euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim")
FLOW = ("flow_euler", "flow_dpmpp_2m", "flow_unipc")


@dataclass(frozen=True)
class Family:
    name: str  # as the logs, the PNG and the errors name it
    key: str  # what `-make-tiny-model --family` and the docs call it
    pipeline_class: str
    side_multiple: int
    schedulers: tuple[str, ...]
    default_scheduler: str
    default_guidance: float
    negative_prompt: bool  # False: a negative prompt is ignored, with a warning on the row
    weighting: bool  # compel encodes the prompt (weights, blends); False: as written, warned if it has syntax
    image_inputs: bool  # init/mask/reference images, LoRAs, IP-Adapter
    max_sequence_length: int | None = None  # T5 tokens, where the pipeline takes the argument
    guidance_note: str = ""


SDXL = Family(
    name="SDXL", key="sdxl", pipeline_class="StableDiffusionXLPipeline", side_multiple=8, schedulers=DISCRETE,
    default_scheduler="euler", default_guidance=5.0, negative_prompt=True, weighting=True, image_inputs=True,
)
FLUX = Family(
    name="FLUX.1", key="flux", pipeline_class="FluxPipeline", side_multiple=16, schedulers=FLOW,
    default_scheduler="flow_euler", default_guidance=3.5, negative_prompt=False, weighting=True,
    image_inputs=False, max_sequence_length=512,
    guidance_note="distilled guidance, fed to the model (schnell ignores it); no classifier-free guidance",
)
SD3 = Family(
    name="SD3", key="sd3", pipeline_class="StableDiffusion3Pipeline", side_multiple=16, schedulers=FLOW,
    default_scheduler="flow_euler", default_guidance=7.0, negative_prompt=True, weighting=False,
    image_inputs=False, max_sequence_length=256,
)
KANDINSKY3 = Family(
    name="Kandinsky 3", key="kandinsky3", pipeline_class="Kandinsky3Pipeline", side_multiple=64,
    # Not the Euler ones: its pipeline never calls scale_model_input, which they need.
    schedulers=("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_karras"), default_scheduler="ddpm", default_guidance=3.0,
    negative_prompt=True,
    weighting=False, image_inputs=False,
)
FAMILIES = {family.pipeline_class: family for family in (SDXL, FLUX, SD3, KANDINSKY3)}
BY_KEY = {family.key: family for family in FAMILIES.values()}


def supported() -> str:
    return ", ".join(f"{f.name} ({f.pipeline_class})" for f in FAMILIES.values())


def family_of(source: str, setting: str) -> Family:
    """The family of the checkpoint at `source` (a folder, or a hub id in the Hugging Face cache), from
    its model_index.json; ConfigError naming `setting` when it is none we drive."""
    folder = Path(source).expanduser()
    try:
        if folder.is_dir():
            text = (folder / "model_index.json").read_text(encoding="utf-8")
        else:
            from huggingface_hub import hf_hub_download

            text = Path(hf_hub_download(source, "model_index.json")).read_text(encoding="utf-8")
        class_name = json.loads(text).get("_class_name")
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
