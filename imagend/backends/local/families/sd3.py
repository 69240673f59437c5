"""Stable Diffusion 3 / 3.5: its `Family`. compel has no support for it: the prompt goes in as written
(base.PlainEncoder) and the pipeline encodes it with its two CLIPs and, unless IMAGEND_SD3_T5=false, T5."""

from __future__ import annotations

from imagend.backends.local.families.base import FLOW, Family

SD3 = Family(
    name="SD3", key="sd3", pipeline_class="StableDiffusion3Pipeline", side_multiple=16, schedulers=FLOW,
    default_scheduler="flow_euler", default_guidance=7.0, negative_prompt=True, weighting=False,
    image_inputs=False, max_sequence_length=256,
)
