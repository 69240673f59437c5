"""Stable Diffusion XL: its `Family`, and its prompt encoder, compel's CompelForSDXL.

Each row's prompt is encoded alone (`PromptEncoder`), so a row's conditioning is the same whatever
else is in its batch (see docs/local.md, reproducibility); `stack` puts a call's rows together.
compel's parser (`parse_prompt`, built once, its parses remembered) and its syntax check
(`syntax_error`, `is_weighted`) also serve validation and FLUX's encoder.

No torch at import: torch is imported when a prompt is encoded.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imagend.backends.local.families.base import DISCRETE, Family

if TYPE_CHECKING:
    import torch

SDXL = Family(
    name="SDXL", key="sdxl", pipeline_class="StableDiffusionXLPipeline", side_multiple=8, schedulers=DISCRETE,
    default_scheduler="euler", default_guidance=5.0, negative_prompt=True, weighting=True, image_inputs=True,
)

PARSED_PROMPTS_KEPT = 256
# Characters compel's syntax needs (weights, groups, blends, escapes): a prompt with none of
# them is plain text and need not be parsed.
MAYBE_SYNTAX = re.compile(r'[()\[\]+\-"\\]')


@functools.lru_cache(maxsize=1)
def _prompt_parser() -> Any:
    from compel.prompt_parser import PromptParser

    return PromptParser()


@functools.lru_cache(maxsize=PARSED_PROMPTS_KEPT)
def parse_prompt(text: str) -> Any:
    """compel's parse of `text`. compel builds its pyparsing grammar anew for every string it parses,
    and validation and every encoder (both of SDXL's, FLUX's) parse the same strings: one parser built
    once, and its (read-only) results remembered, parse the same way for a fraction of the time."""
    return _prompt_parser().parse_conjunction(text)


def syntax_error(text: str) -> str | None:
    """Why compel cannot parse `text` (e.g. a blend with more weights than prompts), or None."""
    if not MAYBE_SYNTAX.search(text):
        return None
    from compel.prompt_parser import PromptParser

    try:
        parse_prompt(text)
    except PromptParser.ParsingException as exc:
        return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return None


def is_weighted(text: str) -> bool:
    """compel would read `text` as more than plain text (weights, groups, blends)."""
    if not MAYBE_SYNTAX.search(text) or syntax_error(text):
        return False
    conjunction = parse_prompt(text)
    fragments = getattr(conjunction.prompts[0], "children", None) if len(conjunction.prompts) == 1 else None
    return not (fragments and len(fragments) == 1 and fragments[0].weight == 1.0)


@dataclass(frozen=True)
class Conditioning:
    """One row's compel output: [1, tokens, dim] embeddings and [1, dim] pooled, for both sides."""

    embeds: torch.Tensor
    pooled: torch.Tensor
    negative_embeds: torch.Tensor
    negative_pooled: torch.Tensor

    @property
    def tokens(self) -> int:
        return int(self.embeds.shape[1])


class PromptEncoder:
    """compel for SDXL's two text encoders: weighting syntax, and no 77-token truncation."""

    def __init__(self, pipe: Any) -> None:
        from compel import CompelForSDXL

        self.pipe = pipe
        # Read once: the property walks every module of the pipeline (milliseconds per call).
        self.device = pipe._execution_device
        self.compel = CompelForSDXL(pipe, device=str(self.device))
        for compel in (self.compel.compel_1, self.compel.compel_2):
            compel.parse_prompt_string = parse_prompt  # only the lock holder encodes
        # diffusers' own rule: with no negative prompt, the unconditional side is zeros.
        self.zero_empty_negative = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))

    def is_plain(self, text: str) -> bool:
        """No weighting (compel parses it to one fragment of weight 1) and within one 77-token window."""
        if MAYBE_SYNTAX.search(text):
            conjunction = parse_prompt(text)
            prompts = conjunction.prompts
            if len(prompts) != 1 or getattr(conjunction, "loras", None):
                return False
            fragments = getattr(prompts[0], "children", None)
            if not fragments or len(fragments) != 1 or fragments[0].weight != 1.0:
                return False
        return all(
            len(tokenizer(text).input_ids) <= tokenizer.model_max_length
            for tokenizer in (self.pipe.tokenizer, self.pipe.tokenizer_2)
        )

    def encode(self, prompt: str, negative: str | None) -> Conditioning:
        import torch

        with torch.no_grad():
            zero_negative = not negative and self.zero_empty_negative
            if self.is_plain(prompt) and (zero_negative or self.is_plain(negative or "")):
                # What compel computes for a plain prompt is exactly diffusers' own encoding (the
                # tests hold them bitwise equal), which runs each text encoder once instead of
                # compel's three passes: the common case, taken the short way.
                embeds, pooled = self._encode_plain(prompt)
                if zero_negative:
                    return Conditioning(embeds, pooled, torch.zeros_like(embeds), torch.zeros_like(pooled))
                return Conditioning(embeds, pooled, *self._encode_plain(negative or ""))
            return self.encode_with_compel(prompt, negative)

    def encode_with_compel(self, prompt: str, negative: str | None) -> Conditioning:
        import torch

        if not negative and self.zero_empty_negative:
            out = self.compel(main_prompt=prompt)  # no need to encode a negative that becomes zeros
            return Conditioning(
                out.embeds, out.pooled_embeds, torch.zeros_like(out.embeds), torch.zeros_like(out.pooled_embeds)
            )
        out = self.compel(main_prompt=prompt, negative_prompt=negative or "")
        return Conditioning(out.embeds, out.pooled_embeds, out.negative_embeds, out.negative_pooled_embeds)

    def arguments(self, conditionings: list[Any]) -> dict[str, torch.Tensor]:
        return stack(conditionings)

    def _encode_plain(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            text, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return embeds, pooled


def stack(conditionings: list[Conditioning]) -> dict[str, torch.Tensor]:
    """The pipeline's embedding arguments for a batch whose rows all have the same token length."""
    import torch

    return {
        "prompt_embeds": torch.cat([c.embeds for c in conditionings]),
        "pooled_prompt_embeds": torch.cat([c.pooled for c in conditionings]),
        "negative_prompt_embeds": torch.cat([c.negative_embeds for c in conditionings]),
        "negative_pooled_prompt_embeds": torch.cat([c.negative_pooled for c in conditionings]),
    }
