"""A miniature SDXL pipeline with random weights, written to a folder with no network.

It has SDXL's shape — a UNet with `addition_embed_type="text_time"`, an AutoencoderKL
with the same 8x latent downscale, CLIPTextModel + CLIPTextModelWithProjection, two
CLIP tokenizers (77 tokens, like the real ones) and an Euler scheduler — but every
layer is a few channels wide and every weight is random. It MAKES NOISE: it exists so
the local backend, the tests, the benchmarks and `make demo` run the real diffusers
code path (from_pretrained, compel, scheduler, step callbacks, VAE decode) on a CPU
with no model download.

The tokenizer is byte-level BPE with no merges, whose vocab.json and merges.txt are
written here: every character is a token, so ordinary prompts pass 77 tokens quickly
and compel's chunking of long prompts is exercised.

It is for tests, benchmarks, the demo and `imagend -make-tiny-model`; production code never
imports it. The local backend recognises such a folder by the marker file written here
(`imagend.backends.local.options.is_tiny_model`).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from imagend.backends.local.options import TINY_MODEL_MARKER_FILE, TINY_MODEL_MARKER_TEXT

TOKENIZER_MAX_TOKENS = 77  # as in SDXL's CLIP tokenizers
TINY_MODEL_SEED = 20240601  # the weights are random but the same on every machine
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


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map (byte-level BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def byte_level_vocab() -> dict[str, int]:
    """Every byte as a token, alone and as a word end (`</w>`), then the two specials (as CLIP orders them)."""
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [f"{char}</w>" for char in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def write_tokenizer(folder: Path) -> None:
    """vocab.json + merges.txt (no merges: one token per character) + the config transformers reads."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(byte_level_vocab(), ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": TOKENIZER_MAX_TOKENS,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(
        json.dumps({k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}, indent=2),
        encoding="utf-8",
    )


def build_tiny_components(vocab_size: int, seed: int = TINY_MODEL_SEED) -> dict[str, Any]:
    """The miniature modules (random weights drawn from torch's generator seeded with `seed`)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    diffusers: Any = importlib.import_module("diffusers")  # untyped constructors: keep mypy out of them

    torch.manual_seed(seed)
    text_hidden = 32
    text_config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=text_hidden,
        intermediate_size=64,
        num_hidden_layers=3,  # compel takes the penultimate layer, as SDXL does
        num_attention_heads=4,
        max_position_embeddings=TOKENIZER_MAX_TOKENS,
        projection_dim=text_hidden,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_act="gelu",
    )
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
        cross_attention_dim=2 * text_hidden,  # both encoders' hidden states side by side
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + text_hidden,  # 6 time ids + pooled text
        norm_num_groups=8,
    )
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,  # 4 blocks: the same 8x downscale as SDXL's VAE
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=1024,
        scaling_factor=0.13025,  # SDXL's
    )
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
        "text_encoder_2": CLIPTextModelWithProjection(text_config),
        "scheduler": scheduler,
    }


def write_tiny_model(directory: str | Path, seed: int = TINY_MODEL_SEED) -> Path:
    """Write the miniature pipeline to `directory` (created); returns its path. No network.

    Another `seed` gives another checkpoint of the same architecture (other weights, other pixels)."""
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
    components = build_tiny_components(vocab_size=len(tokenizer), seed=seed)
    pipe = diffusers.StableDiffusionXLPipeline(
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, force_zeros_for_empty_prompt=True, **components
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / TINY_MODEL_MARKER_FILE).write_text(README_TEXT, encoding="utf-8")
    return folder
