"""Miniature add-ons for the miniature SDXL model: LoRAs, an IP-Adapter and an x4 upscaler.

Like the miniature SDXL model (sdxl.py), everything here has the real thing's layout and architecture,
shrunk to a few channels, with random weights; the text and image encoders, the tokenizer and the VAE
are parts.py's. They MAKE NOISE: they exist so the local backend's per-row models, LoRAs, style
transfer and upscaling run diffusers' real loaders and pipelines in tests and demos on a CPU, with no
download. Production code never imports this module.

- `write_tiny_lora`: a `.safetensors` LoRA for the tiny SDXL UNet and both text encoders, in the
  diffusers/peft key format (`unet.….to_q.lora_A.weight`) or the kohya/A1111 one
  (`lora_unet_input_blocks_…_to_q.lora_down.weight`, `.lora_up.weight`, `.alpha`, SGM block names
  as kohya's SDXL LoRAs have them). Its B matrices are not zero, so it changes the pixels.
- `write_mismatched_lora`: a LoRA for a model with another cross-attention width: loading it raises.
- `write_tiny_ip_adapter`: h94/IP-Adapter's layout (`sdxl_models/ip-adapter_sdxl.safetensors` and
  `sdxl_models/image_encoder/`), the plain IP-Adapter (ImageProjection, 4 image tokens).
- `write_tiny_upscaler`: a StableDiffusionUpscalePipeline (UNet with 7 input channels, a VAE with
  a 4x downscale, noise-level class embeddings), saved with save_pretrained.
- `write_tiny_models`: all of the above under one folder, as `imagend -make-tiny-models DIR` writes it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from imagend.backends.local.miniature.controlnet import write_tiny_controlnet
from imagend.backends.local.miniature.parts import (
    TEXT_WIDTH,
    TINY_MODEL_SEED,
    autoencoder_kl,
    clip_text_config,
    clip_vision_config,
    write_tokenizer,
)
from imagend.backends.local.miniature.sdxl import write_tiny_model
from imagend.backends.local.options import TINY_MODEL_MARKER_FILE, TINY_MODEL_MARKER_TEXT

IP_ADAPTER_SUBFOLDER = "sdxl_models"  # as in h94/IP-Adapter
IP_ADAPTER_WEIGHT_NAME = "ip-adapter_sdxl.safetensors"
IP_ADAPTER_IMAGE_TOKENS = 4  # the plain IP-Adapter's ImageProjection
LORA_STRENGTH = 1.0  # the LoRA's change to a weight is about as large as the weight: visible in the pixels
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")

UPSCALER_README_TEXT = """\
imagend miniature x4 upscaler -- RANDOM WEIGHTS, IT MAKES NOISE.

This folder was written by `imagend -make-tiny-models`. It has the architecture of
stabilityai/stable-diffusion-x4-upscaler (UNet with 7 input channels and noise-level class
embeddings, AutoencoderKL with a 4x downscale, a CLIP text encoder, DDPM low-res scheduler, DDIM
scheduler), shrunk to a few channels, with randomly initialised weights. It loads with
StableDiffusionUpscalePipeline.from_pretrained(<this folder>) and returns an image 4x the size of
its input -- and every image it makes is noise.

Use it for tests and demos only.
"""
IP_ADAPTER_README_TEXT = """\
imagend miniature IP-Adapter -- RANDOM WEIGHTS, IT MAKES NOISE.

This folder was written by `imagend -make-tiny-models`, in the layout of h94/IP-Adapter:
sdxl_models/ip-adapter_sdxl.safetensors and sdxl_models/image_encoder/, for the miniature SDXL
model only. Load it with pipe.load_ip_adapter(<this folder>, subfolder="sdxl_models",
weight_name="ip-adapter_sdxl.safetensors"). Use it for tests and demos only.
"""
assert TINY_MODEL_MARKER_TEXT in UPSCALER_README_TEXT and TINY_MODEL_MARKER_TEXT in IP_ADAPTER_README_TEXT


def _diffusers() -> Any:
    """diffusers, typed Any: its constructors and from_pretrained are untyped."""
    from imagend.backends.local.pipelines import quiet_libraries

    quiet_libraries()
    return importlib.import_module("diffusers")


# --- LoRAs ---------------------------------------------------------------------------------------


def _lora_targets(model_dir: Path) -> Iterator[tuple[str, str, int, int]]:
    """(component, module path, in features, out features) of every attention projection a LoRA of
    the tiny model adapts: the UNet's transformer blocks and both text encoders' self-attention."""
    from torch import nn
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = _diffusers().UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    text_encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder")
    text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(model_dir, subfolder="text_encoder_2")
    for component, model, projections in (
        ("unet", unet, ATTENTION_PROJECTIONS),
        ("text_encoder", text_encoder, TEXT_ATTENTION_PROJECTIONS),
        ("text_encoder_2", text_encoder_2, TEXT_ATTENTION_PROJECTIONS),
    ):
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name.endswith(projections):
                if component != "unet" and not name.startswith("text_model."):
                    # transformers 5 dropped CLIPTextModel's `text_model` level; LoRAs in the wild
                    # name it (lora_te1_text_model_encoder_…) and diffusers maps both spellings.
                    name = f"text_model.{name}"
                yield component, name, module.in_features, module.out_features


def _sgm_unet_name(diffusers_name: str, layers_per_block: int) -> str:
    """A diffusers UNet module path in the SGM/LDM naming kohya's SDXL LoRAs use:
    down_blocks.1.attentions.0.… → input_blocks.3.1.…, mid_block.attentions.0.… → middle_block.1.…,
    up_blocks.0.attentions.1.… → output_blocks.1.1.… (the inverse of diffusers'
    `_maybe_map_sgm_blocks_to_diffusers`)."""
    parts = diffusers_name.split(".")
    per_block = layers_per_block + 1  # down: resnets + the downsampler; up: one more resnet
    if parts[0] == "down_blocks" and parts[2] == "attentions":
        block, layer = int(parts[1]), int(parts[3])
        return ".".join(["input_blocks", str(1 + block * per_block + layer), "1", *parts[4:]])
    if parts[0] == "mid_block" and parts[1] == "attentions":
        return ".".join(["middle_block", "1", *parts[3:]])
    if parts[0] == "up_blocks" and parts[2] == "attentions":
        block, layer = int(parts[1]), int(parts[3])
        return ".".join(["output_blocks", str(block * per_block + layer), "1", *parts[4:]])
    raise ValueError(f"no SGM name for {diffusers_name}")


def _lora_pair(generator: Any, rank: int, in_features: int, out_features: int) -> tuple[Any, Any]:
    """(down/A, up/B), both random: B @ A is about as large as the layer's own weight."""
    import torch

    down = torch.randn(rank, in_features, generator=generator) / in_features**0.5
    up = torch.randn(out_features, rank, generator=generator) * (LORA_STRENGTH / rank**0.5)
    return down.contiguous(), up.contiguous()


def _lora_state_dict(
    targets: list[tuple[str, str, int, int]],
    *,
    format: Literal["kohya", "diffusers"],
    seed: int,
    rank: int,
    layers_per_block: int,
) -> dict[str, Any]:
    import torch

    generator = torch.Generator("cpu").manual_seed(seed)
    kohya_prefix = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    tensors: dict[str, Any] = {}
    for component, name, in_features, out_features in targets:
        down, up = _lora_pair(generator, rank, in_features, out_features)
        if format == "diffusers":
            tensors[f"{component}.{name}.lora_A.weight"] = down
            tensors[f"{component}.{name}.lora_B.weight"] = up
        else:
            module = _sgm_unet_name(name, layers_per_block) if component == "unet" else name
            key = kohya_prefix[component] + module.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = down
            tensors[f"{key}.lora_up.weight"] = up
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))  # alpha / rank = 1: B @ A as it is
    return tensors


def _unet_layers_per_block(model_dir: Path) -> int:
    config = _diffusers().UNet2DConditionModel.load_config(model_dir, subfolder="unet")
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError(f"the tiny UNet has one layers_per_block for every block, not {layers!r}")
    return layers


def _save(tensors: dict[str, Any], path: Path, kind: str) -> Path:
    from safetensors.torch import save_file

    path = Path(path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt", "imagend": f"{kind}, random weights: it makes noise"})
    return path


def write_tiny_lora(
    path: Path,
    model_dir: Path,
    *,
    format: Literal["kohya", "diffusers"],
    seed: int,
    rank: int = 4,
) -> Path:
    """A LoRA for the tiny SDXL model at `model_dir` (its UNet's attention projections and both text
    encoders' self-attention), written to `path` (.safetensors); `load_lora_weights` reads either
    format. Returns the path."""
    targets = list(_lora_targets(Path(model_dir)))
    layers_per_block = _unet_layers_per_block(Path(model_dir))
    tensors = _lora_state_dict(targets, format=format, seed=seed, rank=rank, layers_per_block=layers_per_block)
    return _save(tensors, Path(path), f"imagend miniature {format} LoRA")


def write_mismatched_lora(path: Path, model_dir: Path, *, seed: int = 0, rank: int = 4) -> Path:
    """A diffusers-format LoRA that does not fit the tiny model: its cross-attention key and value
    projections read text embeddings twice as wide as the model's (as an SD 1.5 LoRA on SDXL), so
    `load_lora_weights` raises on the shapes. Returns the path."""
    targets = [
        (component, name, in_features * 2 if ".attn2.to_k" in name or ".attn2.to_v" in name else in_features, out)
        for component, name, in_features, out in _lora_targets(Path(model_dir))
        if component == "unet"
    ]
    layers_per_block = _unet_layers_per_block(Path(model_dir))
    tensors = _lora_state_dict(targets, format="diffusers", seed=seed, rank=rank, layers_per_block=layers_per_block)
    return _save(tensors, Path(path), "imagend LoRA that does not fit the miniature model")


# --- IP-Adapter ----------------------------------------------------------------------------------


def write_tiny_ip_adapter(directory: Path, model_dir: Path, seed: int) -> Path:
    """An IP-Adapter (plain, ImageProjection) for the tiny SDXL model at `model_dir`, in h94's layout:
    `directory/sdxl_models/ip-adapter_sdxl.safetensors` (`image_proj.*`, `ip_adapter.<n>.to_k_ip/
    to_v_ip.weight` for each cross-attention in the UNet's attn_processors order, n = 1, 3, 5, …)
    and `directory/sdxl_models/image_encoder/` (a CLIPVisionModelWithProjection on 32 px images).
    Returns `directory`, what `load_ip_adapter` takes with subfolder="sdxl_models"."""
    import torch
    from transformers import CLIPVisionModelWithProjection

    folder = Path(directory).expanduser().resolve()
    models = folder / IP_ADAPTER_SUBFOLDER
    models.mkdir(parents=True, exist_ok=True)
    unet = _diffusers().UNet2DConditionModel.from_pretrained(Path(model_dir), subfolder="unet")
    cross_dim = unet.config.cross_attention_dim
    channels = list(unet.config.block_out_channels)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder_config = clip_vision_config()
        CLIPVisionModelWithProjection(encoder_config).save_pretrained(models / "image_encoder", safe_serialization=True)

    generator = torch.Generator("cpu").manual_seed(seed)
    embed_dim = encoder_config.projection_dim
    tensors: dict[str, Any] = {
        "image_proj.proj.weight": torch.randn(IP_ADAPTER_IMAGE_TOKENS * cross_dim, embed_dim, generator=generator)
        / embed_dim**0.5,
        "image_proj.proj.bias": torch.zeros(IP_ADAPTER_IMAGE_TOKENS * cross_dim),
        "image_proj.norm.weight": torch.ones(cross_dim),
        "image_proj.norm.bias": torch.zeros(cross_dim),
    }
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue  # self-attention: no image tokens
        # the hidden size of the block, as diffusers' _convert_ip_adapter_attn_to_diffusers reads it
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name.split(".")[1])]
        else:
            hidden = channels[int(name.split(".")[1])]
        for projection in ("to_k_ip", "to_v_ip"):
            # larger than a fresh Linear: the image tokens then visibly steer the picture at scale 1
            weight = torch.randn(hidden, cross_dim, generator=generator) * (2.0 / cross_dim**0.5)
            tensors[f"ip_adapter.{key_id}.{projection}.weight"] = weight
        key_id += 2
    _save(tensors, models / IP_ADAPTER_WEIGHT_NAME, "imagend miniature IP-Adapter")
    (folder / TINY_MODEL_MARKER_FILE).write_text(IP_ADAPTER_README_TEXT, encoding="utf-8")
    return folder


# --- x4 upscaler ---------------------------------------------------------------------------------


def _upscaler_components(vocab_size: int) -> dict[str, Any]:
    """stable-diffusion-x4-upscaler's modules and schedulers, a few channels wide (torch's generator
    seeded by the caller)."""
    from transformers import CLIPTextModel

    diffusers = _diffusers()
    text_hidden = TEXT_WIDTH
    text_encoder = CLIPTextModel(clip_text_config(vocab_size, layers=2, projection=False))
    unet = diffusers.UNet2DConditionModel(
        sample_size=32,
        in_channels=7,  # the latents (4) and the low-resolution image (3) side by side
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=text_hidden,
        num_class_embeds=1000,  # the noise level is a class label, as in the x4 upscaler
        norm_num_groups=8,
    )
    # 3 blocks: the x4 upscaler's 4x latent downscale; its scaling factor
    vae = autoencoder_kl(latent_channels=4, scaling_factor=0.08333, blocks=3, sample_size=256)
    # The x4 upscaler's schedulers (its scheduler_config.json and low_res_scheduler's).
    low_res_scheduler = diffusers.DDPMScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    scheduler = diffusers.DDIMScheduler(
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "low_res_scheduler": low_res_scheduler,
        "scheduler": scheduler,
    }


def write_tiny_upscaler(directory: Path, seed: int) -> Path:
    """A miniature x4 StableDiffusionUpscalePipeline (random weights, it makes noise) saved to
    `directory` with the README marker file; returns its path. A 16x16 input comes back 64x64."""
    import torch
    from transformers import CLIPTokenizer

    diffusers = _diffusers()
    folder = Path(directory).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = _upscaler_components(vocab_size=len(tokenizer))
    pipe = diffusers.StableDiffusionUpscalePipeline(tokenizer=tokenizer, max_noise_level=350, **components)
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / TINY_MODEL_MARKER_FILE).write_text(UPSCALER_README_TEXT, encoding="utf-8")
    return folder


# --- everything ----------------------------------------------------------------------------------


def write_tiny_models(directory: str | Path) -> dict[str, Path]:
    """Every miniature model a demo or a test of the local backend's extras needs, under `directory`:
    sdxl/ (the default seed), sdxl-b/ (another checkpoint), loras/pixel-kohya.safetensors,
    loras/pixel-diffusers.safetensors, ip-adapter/, upscaler/ and controlnet/ (miniature/controlnet.py). Returns
    the paths by name ("sdxl", "sdxl-b", "loras", "lora-kohya", "lora-diffusers", "ip-adapter", "upscaler",
    "controlnet")."""
    root = Path(directory).expanduser().resolve()
    sdxl = write_tiny_model(root / "sdxl")
    loras = root / "loras"
    return {
        "sdxl": sdxl,
        "sdxl-b": write_tiny_model(root / "sdxl-b", seed=TINY_MODEL_SEED + 1),
        "loras": loras,
        "lora-kohya": write_tiny_lora(loras / "pixel-kohya.safetensors", sdxl, format="kohya", seed=1),
        "lora-diffusers": write_tiny_lora(loras / "pixel-diffusers.safetensors", sdxl, format="diffusers", seed=2),
        "ip-adapter": write_tiny_ip_adapter(root / "ip-adapter", sdxl, seed=3),
        "upscaler": write_tiny_upscaler(root / "upscaler", seed=4),
        "controlnet": write_tiny_controlnet(root / "controlnet", sdxl, seed=5),
    }
