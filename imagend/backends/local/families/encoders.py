"""Prompt encoding for the families other than SDXL (SDXL's is sdxl.PromptEncoder).

Each encoder turns one row's prompt into what its pipeline call takes, one row at a time, so a
row's conditioning does not depend on its batch; `arguments` stacks a call's rows.

- FLUX.1: diffusers' own `encode_prompt` for a plain prompt, compel's CompelForFlux for one with
  weighting syntax (both give T5 embeddings padded to 512 tokens and CLIP's pooled embedding).
- SD3 and Kandinsky 3: the prompt as written (compel has no support for them); the pipeline
  encodes it. A weighting syntax in it gets a warning on the row (backend.validate), not a change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from imagend.backends.local.families.catalog import Family
from imagend.backends.local.pipelines import MAYBE_SYNTAX, parse_prompt, syntax_error


def is_weighted(text: str) -> bool:
    """compel would read `text` as more than plain text (weights, groups, blends)."""
    if not MAYBE_SYNTAX.search(text) or syntax_error(text):
        return False
    conjunction = parse_prompt(text)
    fragments = getattr(conjunction.prompts[0], "children", None) if len(conjunction.prompts) == 1 else None
    return not (fragments and len(fragments) == 1 and fragments[0].weight == 1.0)


@dataclass(frozen=True)
class Written:
    """A prompt as written (SD3, Kandinsky 3): the pipeline encodes it."""

    prompt: str
    negative: str | None
    tokens: int = 0  # one group per call: the pipeline pads every prompt of a call alike


class PlainEncoder:
    def __init__(self, family: Family) -> None:
        self.family = family

    def encode(self, prompt: str, negative: str | None) -> Written:
        return Written(prompt, negative)

    def arguments(self, conditionings: list[Any]) -> dict[str, Any]:
        arguments: dict[str, Any] = {"prompt": [c.prompt for c in conditionings]}
        if self.family.negative_prompt:
            arguments["negative_prompt"] = [c.negative or "" for c in conditionings]
        return arguments


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

    @torch.no_grad()
    def encode(self, prompt: str, negative: str | None) -> FluxConditioning:
        del negative  # FLUX.1 has no classifier-free guidance: validate warned the row
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
        return {
            "prompt_embeds": torch.cat([c.embeds for c in conditionings]),
            "pooled_prompt_embeds": torch.cat([c.pooled for c in conditionings]),
        }


def encoder_for(family: Family, pipe: Any) -> Any:
    """The family's encoder (SDXL: sdxl.PromptEncoder)."""
    if family.key == "sdxl":
        from imagend.backends.local.pipelines import PromptEncoder

        return PromptEncoder(pipe)
    if family.key == "flux":
        return FluxEncoder(pipe, family)
    return PlainEncoder(family)
