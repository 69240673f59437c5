"""FLUX.1 (schnell, dev): its `Family`, and its prompt encoder.

`FluxEncoder` turns one row's prompt into what the pipeline call takes, one row at a time, so a
row's conditioning does not depend on its batch; `arguments` stacks a call's rows. A plain prompt
goes through diffusers' own `encode_prompt`, one with weighting syntax through compel's
CompelForFlux: both give T5 embeddings padded to 512 tokens and CLIP's pooled embedding. FLUX.1 has
no classifier-free guidance, so no negative prompt.

No torch at import: torch is imported when a prompt is encoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imagend.backends.local.families.base import FLOW, Family
from imagend.backends.local.families.sdxl import is_weighted

if TYPE_CHECKING:
    import torch

FLUX = Family(
    name="FLUX.1", key="flux", pipeline_class="FluxPipeline", side_multiple=16, schedulers=FLOW,
    default_scheduler="flow_euler", default_guidance=3.5, negative_prompt=False, weighting=True,
    image_inputs=False, max_sequence_length=512,
    guidance_note="distilled guidance, fed to the model (schnell ignores it); no classifier-free guidance",
)


@dataclass(frozen=True)
class FluxConditioning:
    embeds: torch.Tensor  # [1, tokens, dim] (T5)
    pooled: torch.Tensor  # [1, dim] (CLIP)

    @property
    def tokens(self) -> int:
        return int(self.embeds.shape[1])


class FluxEncoder:
    def __init__(self, pipe: Any, family: Family) -> None:
        self.pipe = pipe
        self.family = family
        self.device = pipe._execution_device
        self._compel: Any = None

    def encode(self, prompt: str, negative: str | None) -> FluxConditioning:
        import torch

        del negative  # FLUX.1 has no classifier-free guidance: validate warned the row
        with torch.no_grad():
            if is_weighted(prompt):
                if self._compel is None:
                    from compel import CompelForFlux

                    self._compel = CompelForFlux(self.pipe, device=str(self.device))
                out = self._compel(main_prompt=prompt)
                return FluxConditioning(out.embeds, out.pooled_embeds)
            embeds, pooled, _text_ids = self.pipe.encode_prompt(
                prompt=prompt, prompt_2=prompt, device=self.device, num_images_per_prompt=1,
                max_sequence_length=self.family.max_sequence_length or 512,
            )
            return FluxConditioning(embeds, pooled)

    def arguments(self, conditionings: list[Any]) -> dict[str, Any]:
        import torch

        return {
            "prompt_embeds": torch.cat([c.embeds for c in conditionings]),
            "pooled_prompt_embeds": torch.cat([c.pooled for c in conditionings]),
        }
