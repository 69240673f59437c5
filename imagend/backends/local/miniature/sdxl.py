"""A miniature SDXL pipeline with random weights, written to a folder with no network.

It has SDXL's shape — a UNet with `addition_embed_type="text_time"`, an AutoencoderKL
with the same 8x latent downscale, CLIPTextModel + CLIPTextModelWithProjection, two
CLIP tokenizers (77 tokens, like the real ones) and an Euler scheduler — but every
layer is a few channels wide and every weight is random. It MAKES NOISE: it exists so
the local backend, the tests, the benchmarks and `make demo` run the real diffusers
code path (from_pretrained, compel, scheduler, step callbacks, VAE decode) on a CPU
with no model download.

Its text encoders, tokenizers and VAE are parts.py's (the byte-level CLIP tokenizer: every
character is a token, so ordinary prompts pass 77 tokens quickly and compel's chunking of long
prompts is exercised); its UNet is here.

It is for tests, benchmarks, the demo and `imagend -make-tiny-model`; production code never
imports it. The local backend recognises such a folder by the marker file written here
(`imagend.backends.local.options.is_tiny_model`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from imagend.backends.local.miniature.parts import (
    TEXT_WIDTH,
    TINY_MODEL_SEED,
    autoencoder_kl,
    clip_text_config,
    write_tokenizer,
)
from imagend.backends.local.options import TINY_MODEL_MARKER_FILE, TINY_MODEL_MARKER_TEXT

README_TEXT = """\
imagend miniature SDXL pipeline -- RANDOM WEIGHTS, IT MAKES NOISE.

This folder was written by `imagend -make-tiny-model`. It has the architecture of
Stable Diffusion XL (UNet with text_time conditioning, AutoencoderKL, two CLIP text
encoders, byte-level CLIP tokenizers limited to 77 tokens, Euler scheduler), shrunk to
a few channels, with randomly initialised weights. It loads with
StableDiffusionXLPipeline.from_pretrained(<this folder>) exactly like a real model and
runs on a CPU in milliseconds per step -- and every image it makes is noise.

Use it for tests, benchmarks and demos only. For real images set IMAGEND_MODEL to
stabilityai/stable-diffusion-xl-base-1.0 (or another SDXL checkpoint).
"""
assert TINY_MODEL_MARKER_TEXT in README_TEXT  # what is_tiny_model looks for


def build_tiny_components(
    vocab_size: int, seed: int = TINY_MODEL_SEED, clip_g_width: int | None = None
) -> dict[str, Any]:
    """The miniature modules (random weights drawn from torch's generator seeded with `seed`). `clip_g_width`:
    the second text encoder as wide as that (None: as the first), as SDXL's are (768 and 1280); diffusers'
    single-file loader tells the two apart by their width (miniature/single_file.py)."""
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    diffusers: Any = importlib.import_module("diffusers")  # untyped constructors: keep mypy out of them

    torch.manual_seed(seed)
    text_hidden = TEXT_WIDTH
    text_config = clip_text_config(vocab_size)
    text_g_config = text_config if clip_g_width is None else clip_text_config(vocab_size, hidden=clip_g_width)
    g_width = text_g_config.hidden_size
    time_embed_dim = 8
    unet = diffusers.UNet2DConditionModel(
        sample_size=128,  # 1024 px / 8, as SDXL
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 1),
        cross_attention_dim=text_hidden + g_width,  # both encoders' hidden states side by side
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + g_width,  # 6 time ids + pooled text
        norm_num_groups=8,
    )
    vae = autoencoder_kl(latent_channels=4, scaling_factor=0.13025)  # SDXL's: 8x downscale, its scaling
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": CLIPTextModel(text_config),
        "text_encoder_2": CLIPTextModelWithProjection(text_g_config),
        "scheduler": scheduler,
    }


def write_tiny_model(directory: str | Path, seed: int = TINY_MODEL_SEED, clip_g_width: int | None = None) -> Path:
    """Write the miniature pipeline to `directory` (created); returns its path. No network.

    Another `seed` gives another checkpoint of the same architecture (other weights, other pixels);
    `clip_g_width` another width of the second text encoder (build_tiny_components)."""
    from transformers import CLIPTokenizer

    from imagend.backends.local.pipelines import quiet_libraries

    quiet_libraries()
    diffusers: Any = importlib.import_module("diffusers")

    folder = Path(directory).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(folder / "tokenizer")
    write_tokenizer(folder / "tokenizer_2")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    tokenizer_2 = CLIPTokenizer.from_pretrained(folder / "tokenizer_2")
    components = build_tiny_components(vocab_size=len(tokenizer), seed=seed, clip_g_width=clip_g_width)
    pipe = diffusers.StableDiffusionXLPipeline(
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, force_zeros_for_empty_prompt=True, **components
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / TINY_MODEL_MARKER_FILE).write_text(README_TEXT, encoding="utf-8")
    return folder
