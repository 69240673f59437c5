"""Miniature random-weights pipelines of the other diffusers families, written to a folder with no network.

`write_tiny_pipeline(folder, family)` does for FLUX.1, Stable Diffusion 3 and Kandinsky 3 what
`sdxl.write_tiny_model` does for SDXL: the family's real architecture (its transformer or UNet,
its text encoders, its VAE with the real latent channels and 8x downscale, its scheduler), shrunk to
a few channels, with random weights from a fixed seed. Each MAKES NOISE: they exist so the backend's
adapters for these families run the real diffusers code path on a CPU with no model download. Built as
diffusers' own fast tests build them (tests/pipelines/<family>/), except that every tokenizer is
written instead of downloaded. The text encoders, tokenizers and VAEs are parts.py's:

- CLIP: the byte-level tokenizer (one token per character, 77 tokens);
- T5: a Unigram tokenizer of single characters (`T5Tokenizer(vocab=...)`, saved as tokenizer.json).

Kandinsky 5 (diffusers' Kandinsky5T2IPipeline) is not here: its `tokenizer` slot is a Qwen2VLProcessor,
which transformers 5 cannot construct (nor load) without torchvision, and imagend does not install it.

The folder carries the marker file `is_tiny_model` looks for, and `DiffusionPipeline.from_pretrained`
loads it to the family's pipeline class (model_index.json's `_class_name`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from imagend.backends.local.miniature.parts import (
    FAST_TEST_CLIP_INTERMEDIATE,
    TEXT_WIDTH,
    TINY_MODEL_SEED,
    autoencoder_kl,
    clip_text_config,
    clip_tokenizer,
    t5_encoder,
    t5_tokenizer,
)
from imagend.backends.local.options import TINY_MODEL_MARKER_FILE, TINY_MODEL_MARKER_TEXT

# family -> (the diffusers pipeline class, the real model it shrinks)
FAMILIES: dict[str, tuple[str, str]] = {
    "flux": ("FluxPipeline", "FLUX.1 (black-forest-labs/FLUX.1-dev)"),
    "sd3": ("StableDiffusion3Pipeline", "Stable Diffusion 3 / 3.5 (stabilityai/stable-diffusion-3.5-medium)"),
    "kandinsky3": ("Kandinsky3Pipeline", "Kandinsky 3 (kandinsky-community/kandinsky-3)"),
}

README_TEMPLATE = """\
imagend miniature {model} pipeline -- RANDOM WEIGHTS, IT MAKES NOISE.

This folder was written by imagend.backends.local.miniature.families.write_tiny_pipeline(folder, "{family}").
It has the architecture of {model}, shrunk to a few channels, with randomly initialised weights
and tokenizers written locally. It loads with {pipeline}.from_pretrained(<this folder>)
(or DiffusionPipeline.from_pretrained) like a real model and runs on a CPU in milliseconds per
step -- and every image it makes is noise. Use it for tests only.
"""


def _diffusers() -> Any:
    return importlib.import_module("diffusers")  # untyped constructors: keep mypy out of them


def _transformers() -> Any:
    return importlib.import_module("transformers")


def _clip_config(vocab_size: int) -> Any:
    """The FLUX.1 and SD3 miniatures' CLIP (diffusers' fast tests' feed-forward width)."""
    return clip_text_config(vocab_size, intermediate=FAST_TEST_CLIP_INTERMEDIATE)


def _flow_vae(scaling_factor: float, shift_factor: float) -> Any:
    """FLUX's and SD3's AutoencoderKL: 16 latent channels, 8x downscale (4 blocks), no quant convs."""
    return autoencoder_kl(
        latent_channels=16, scaling_factor=scaling_factor, shift_factor=shift_factor, quant_convs=False
    )


def _flux(folder: Path) -> Any:
    diffusers = _diffusers()
    tokenizer = clip_tokenizer(folder / "tokenizer")
    tokenizer_2 = t5_tokenizer()
    text_width = TEXT_WIDTH
    return diffusers.FluxPipeline(
        transformer=diffusers.FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,  # 16 latent channels packed 2x2
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=text_width,  # T5's width
            pooled_projection_dim=text_width,  # CLIP's pooled output
            guidance_embeds=True,  # as FLUX.1-dev: guidance_scale is an input of the model
            axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
        ),
        vae=_flow_vae(scaling_factor=0.3611, shift_factor=0.1159),  # FLUX's
        text_encoder=_transformers().CLIPTextModel(_clip_config(len(tokenizer))),
        tokenizer=tokenizer,
        text_encoder_2=t5_encoder(len(tokenizer_2), text_width),
        tokenizer_2=tokenizer_2,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
    )


def _sd3(folder: Path) -> Any:
    diffusers = _diffusers()
    transformers = _transformers()
    tokenizer = clip_tokenizer(folder / "tokenizer")
    tokenizer_2 = clip_tokenizer(folder / "tokenizer_2")
    tokenizer_3 = t5_tokenizer()
    clip_width = TEXT_WIDTH
    t5_width = 2 * clip_width  # the two CLIPs' hidden states side by side are padded to T5's width
    return diffusers.StableDiffusion3Pipeline(
        transformer=diffusers.SD3Transformer2DModel(
            sample_size=128,  # 1024 px / 8
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=t5_width,
            caption_projection_dim=32,  # heads * head dim
            pooled_projection_dim=2 * clip_width,  # both CLIPs' pooled projections
            pos_embed_max_size=96,
        ),
        vae=_flow_vae(scaling_factor=1.5305, shift_factor=0.0609),  # SD3's
        text_encoder=transformers.CLIPTextModelWithProjection(_clip_config(len(tokenizer))),
        tokenizer=tokenizer,
        text_encoder_2=transformers.CLIPTextModelWithProjection(_clip_config(len(tokenizer_2))),
        tokenizer_2=tokenizer_2,
        text_encoder_3=t5_encoder(len(tokenizer_3), t5_width),
        tokenizer_3=tokenizer_3,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


def _kandinsky3(folder: Path) -> Any:
    diffusers = _diffusers()
    tokenizer = t5_tokenizer()
    text_width = TEXT_WIDTH
    return diffusers.Kandinsky3Pipeline(
        unet=diffusers.Kandinsky3UNet(
            in_channels=4,
            time_embedding_dim=4,
            groups=2,
            attention_head_dim=4,
            layers_per_block=3,
            block_out_channels=(32, 64),
            cross_attention_dim=4,
            encoder_hid_dim=text_width,
        ),
        movq=diffusers.VQModel(  # MoVQ: spatially conditioned norms, 8x downscale (4 blocks), as Kandinsky 3's
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
            up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
            block_out_channels=(32, 32, 32, 32),  # SpatialNorm's GroupNorm has 32 groups
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            norm_type="spatial",
            num_vq_embeddings=16,
            vq_embed_dim=4,
        ),
        text_encoder=t5_encoder(len(tokenizer), text_width),
        tokenizer=tokenizer,
        scheduler=diffusers.DDPMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="squaredcos_cap_v2",
            steps_offset=1,
            clip_sample=True,
            thresholding=False,
        ),
    )


_BUILDERS = {"flux": _flux, "sd3": _sd3, "kandinsky3": _kandinsky3}


def write_tiny_pipeline(directory: str | Path, family: str, seed: int = TINY_MODEL_SEED) -> Path:
    """Write the miniature `family` pipeline (a key of FAMILIES) to `directory` (created); returns its path."""
    import torch

    from imagend.backends.local.pipelines import quiet_libraries

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: one of {', '.join(FAMILIES)}")
    quiet_libraries()
    folder = Path(directory).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    pipe = _BUILDERS[family](folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    pipeline, model = FAMILIES[family]
    readme = README_TEMPLATE.format(model=model, family=family, pipeline=pipeline)
    (folder / TINY_MODEL_MARKER_FILE).write_text(readme, encoding="utf-8")
    return folder


assert TINY_MODEL_MARKER_TEXT in README_TEMPLATE  # what is_tiny_model looks for
