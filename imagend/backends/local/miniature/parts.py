"""The parts every miniature model is built from, defined once: the seed, the tokenizers written here
(no download), the tiny CLIP text and vision encoders, the tiny T5 encoder and the tiny
AutoencoderKL. sdxl.py, families.py and extras.py build their pipelines from them.

Each part is the real thing's architecture a few channels wide. Where two miniatures have always
differed (the CLIP feed-forward width of the SDXL and upscaler encoders, 64, and of the FLUX.1 and
SD3 ones, 37 as in diffusers' fast tests), the difference is an argument here, kept: the tests
compare pixels of models drawn from a fixed seed, and another width would be another model.

- CLIP: a byte-level BPE tokenizer with no merges, whose vocab.json and merges.txt are written here:
  every character is a token, so ordinary prompts pass 77 tokens quickly and compel's chunking of
  long prompts is exercised.
- T5: a Unigram tokenizer of single characters (`T5Tokenizer(vocab=...)`).

No torch at import; the builders import diffusers and transformers when called.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

TINY_MODEL_SEED = 20240601  # the weights are random but the same on every machine
TEXT_WIDTH = 32  # every miniature text encoder's hidden size
TOKENIZER_MAX_TOKENS = 77  # as in the real CLIP tokenizers
T5_MAX_TOKENS = 512  # the real T5 tokenizers' model_max_length; the pipelines cap max_sequence_length at 512
T5_ALPHABET = [chr(code) for code in range(ord("!"), ord("~") + 1)]  # other characters become <unk>
CLIP_INTERMEDIATE = 64  # the feed-forward width of the SDXL and upscaler miniatures' CLIPs
FAST_TEST_CLIP_INTERMEDIATE = 37  # of the FLUX.1 and SD3 miniatures' CLIPs, as diffusers' fast tests
VAE_CHANNELS = (8, 8, 16, 16)  # per block; 4 blocks: the 8x latent downscale of SDXL's, FLUX's and SD3's VAEs


def _diffusers() -> Any:
    return importlib.import_module("diffusers")  # untyped constructors: keep mypy out of them


def _transformers() -> Any:
    return importlib.import_module("transformers")


# --- tokenizers ----------------------------------------------------------------------------------


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
    """The CLIP tokenizer: vocab.json + merges.txt (no merges: one token per character) + the config
    transformers reads."""
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


def clip_tokenizer(folder: Path) -> Any:
    """The CLIP tokenizer, written to `folder` and loaded from it."""
    write_tokenizer(folder)
    return _transformers().CLIPTokenizer.from_pretrained(folder)


def t5_tokenizer() -> Any:
    """T5's Unigram tokenizer over single characters: <pad>=0, </s>=1, <unk>=2 as in T5, no sentinels."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(char, -3.0) for char in T5_ALPHABET]
    return _transformers().T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_TOKENS)


# --- encoders ------------------------------------------------------------------------------------


def clip_text_config(
    vocab_size: int,
    *,
    hidden: int = TEXT_WIDTH,
    intermediate: int = CLIP_INTERMEDIATE,
    layers: int = 3,  # compel takes the penultimate layer, as SDXL does
    projection: bool = True,
) -> Any:
    """A CLIPTextConfig for a CLIP tokenizer of `vocab_size` (its two specials last). `projection`:
    the projection is as wide as the encoder (CLIPTextModelWithProjection's pooled output); False
    leaves transformers' default, for an encoder that has none."""
    widths: dict[str, Any] = {"projection_dim": hidden} if projection else {}
    return _transformers().CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=TOKENIZER_MAX_TOKENS,
        **widths,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_act="gelu",
    )


def clip_vision_config() -> Any:
    """A CLIPVisionConfig on 32 px images (the IP-Adapter's image encoder)."""
    return _transformers().CLIPVisionConfig(
        hidden_size=TEXT_WIDTH,
        intermediate_size=CLIP_INTERMEDIATE,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=TEXT_WIDTH,
        hidden_act="gelu",
    )


def t5_encoder(vocab_size: int, width: int) -> Any:
    """A T5EncoderModel for the T5 tokenizer (`vocab_size`), `width` wide, in eval mode."""
    transformers = _transformers()
    config = transformers.T5Config(
        vocab_size=vocab_size,
        d_model=width,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return transformers.T5EncoderModel(config).eval()


# --- VAE -----------------------------------------------------------------------------------------


def autoencoder_kl(
    *,
    latent_channels: int,
    scaling_factor: float,
    shift_factor: float | None = None,
    blocks: int = 4,
    sample_size: int = 1024,
    quant_convs: bool = True,
) -> Any:
    """An AutoencoderKL of `blocks` blocks (4: an 8x latent downscale; 3: 4x, the x4 upscaler's), with the
    real model's latent channels and scaling (and shift) factors. `quant_convs` False: none, as FLUX's
    and SD3's."""
    return _diffusers().AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=VAE_CHANNELS[:blocks],
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=sample_size,
        use_quant_conv=quant_convs,
        use_post_quant_conv=quant_convs,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )
