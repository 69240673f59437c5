"""What describes a family of the local backend: the `Family` dataclass, the scheduler kinds, and the
prompt encoder shared by the families whose pipeline encodes the prompt itself (SD3, Kandinsky 3).

One `Family` per pipeline class says what a row may ask of it: the side multiple (8 for SDXL's UNet;
16 for the packed-latent transformers; 64 for Kandinsky 3's MoVQ), the schedulers it can use, whether
it takes a negative prompt, and how its prompt is encoded (compel where compel supports the family:
SDXL, and FLUX through CompelForFlux; elsewhere the prompt goes in as written). SDXL alone takes the
image inputs, LoRAs and the IP-Adapter here.

No torch at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class Written:
    """A prompt as written (SD3, Kandinsky 3): the pipeline encodes it."""

    prompt: str
    negative: str | None
    tokens: int = 0  # one group per call: the pipeline pads every prompt of a call alike


class PlainEncoder:
    """The prompt as written (compel has no support for SD3 nor Kandinsky 3); the pipeline encodes it.
    A weighting syntax in it gets a warning on the row (backend.validate), not a change."""

    def __init__(self, family: Family) -> None:
        self.family = family

    def encode(self, prompt: str, negative: str | None) -> Written:
        return Written(prompt, negative)

    def arguments(self, conditionings: list[Any]) -> dict[str, Any]:
        arguments: dict[str, Any] = {"prompt": [c.prompt for c in conditionings]}
        if self.family.negative_prompt:
            arguments["negative_prompt"] = [c.negative or "" for c in conditionings]
        return arguments
