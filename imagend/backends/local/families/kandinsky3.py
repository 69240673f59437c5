"""Kandinsky 3: its `Family`. compel has no support for it: the prompt goes in as written
(base.PlainEncoder) and the pipeline encodes it with its T5; its MoVQ decoder wants sides in
multiples of 64."""

from __future__ import annotations

from imagend.backends.local.families.base import Family

KANDINSKY3 = Family(
    name="Kandinsky 3", key="kandinsky3", pipeline_class="Kandinsky3Pipeline", side_multiple=64,
    # Not the Euler ones: its pipeline never calls scale_model_input, which they need.
    schedulers=("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_karras"), default_scheduler="ddpm", default_guidance=3.0,
    negative_prompt=True,
    weighting=False, image_inputs=False,
)
