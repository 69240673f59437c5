"""An SDXL diffusers folder written back as one A1111/civitai-style checkpoint file, for the tests and the
benchmark of single-file loading (`bench/single_file_load.py`). No network.

The layout is the original Stability one that A1111, ComfyUI and the model sites use, and that diffusers'
`from_single_file` reads (`diffusers.loaders.single_file_utils`): `model.diffusion_model.*` (the UNet in
LDM/SGM naming: `input_blocks`, `middle_block`, `output_blocks`), `first_stage_model.*` (the VAE in LDM
naming, attention projections as 1x1 convolutions), `conditioner.embedders.0.transformer.text_model.*` (the
CLIP ViT-L text encoder, as transformers names it) and `conditioner.embedders.1.model.*` (the OpenCLIP
ViT-bigG text encoder in open_clip's naming: `resblocks`, fused `in_proj_weight`, `text_projection`
transposed). It is the inverse of diffusers' `convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint` and
`convert_open_clip_checkpoint`, written for any block count and `layers_per_block` (diffusers' own
`scripts/convert_diffusers_to_original_sdxl.py` is fixed to SDXL's 3 blocks of 2 layers, so it cannot write
the miniature). The tests hold it exact: the file loaded with `from_single_file` has every weight of the
folder, bit for bit.

`write_config_folder` copies what `from_single_file` needs besides the weights (every `.json` and `.txt`:
model_index.json, the components' configs, the tokenizers), which is what `IMAGEND_SINGLE_FILE_CONFIG` names.

It makes no model of its own: a miniature folder gives a miniature (noise-making) file, and the file's
metadata says so (`imagend` key), which `single_file.is_miniature` reads.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from imagend.backends.local.options import TINY_MODEL_MARKER_TEXT, is_tiny_model
from imagend.backends.local.single_file import SAFETENSORS_DTYPES

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
CLIP_G_PREFIX = "conditioner.embedders.1.model."
MINIATURE_METADATA = f"imagend miniature SDXL checkpoint, {TINY_MODEL_MARKER_TEXT}: it makes noise"

# diffusers' resnet names -> LDM's (update_unet_resnet_ldm_to_diffusers, inverted)
UNET_RESNET_NAMES = (
    ("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"),
)
UNET_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
VAE_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPEN_CLIP_LAYER_NAMES = (
    ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
    ("self_attn.out_proj", "attn.out_proj"),
)


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return dict(load_file(str(path)))


def _component(folder: Path, name: str) -> dict[str, Any]:
    files = sorted((folder / name).glob("*.safetensors"))
    if len(files) != 1:
        raise ValueError(f"{folder / name}: expected one .safetensors weight file, found {len(files)}")
    return _load_safetensors(files[0])


def _resnet(name: str) -> str:
    for new, old in UNET_RESNET_NAMES:
        name = re.sub(rf"(^|\.){re.escape(new)}(?=\.)", rf"\g<1>{old}", name, count=1)
    return name


def unet_to_original(tensors: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A diffusers UNet2DConditionModel state dict in LDM/SGM naming (without the `model.diffusion_model.`
    prefix), for any block count and an int `layers_per_block`."""
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError(f"layers_per_block {layers!r}: only one value for every block is written")
    per_block = layers + 1  # a down block: its resnets and its downsampler; an up block: one more resnet
    up_with_attention = {int(k.split(".")[1]) for k in tensors if k.startswith("up_blocks.") and ".attentions." in k}
    out: dict[str, Any] = {}
    for key, value in tensors.items():
        module, _, leaf = key.rpartition(".")
        if module in UNET_TOP_LEVEL:
            out[f"{UNET_TOP_LEVEL[module]}.{leaf}"] = value
            continue
        parts = key.split(".")
        if parts[0] == "down_blocks":
            block, kind = int(parts[1]), parts[2]
            if kind == "downsamplers":  # down_blocks.b.downsamplers.0.conv.* -> input_blocks.n.0.op.*
                out[".".join(["input_blocks", str((block + 1) * per_block), "0", "op", *parts[5:]])] = value
                continue
            index = 1 + block * per_block + int(parts[3])
            rest = ".".join(parts[4:])
            if kind == "resnets":
                out[f"input_blocks.{index}.0.{_resnet(rest)}"] = value
            else:  # attentions
                out[f"input_blocks.{index}.1.{rest}"] = value
        elif parts[0] == "mid_block":
            rest = ".".join(parts[3:])
            if parts[1] == "resnets":
                out[f"middle_block.{2 * int(parts[2])}.{_resnet(rest)}"] = value
            else:
                out[f"middle_block.1.{rest}"] = value
        elif parts[0] == "up_blocks":
            block, kind = int(parts[1]), parts[2]
            if kind == "upsamplers":  # the last layer of the block: after its resnet (and attention, if any)
                slot = 2 if block in up_with_attention else 1
                out[".".join(["output_blocks", str(block * per_block + layers), str(slot), "conv", *parts[5:]])] = value
                continue
            index = block * per_block + int(parts[3])
            rest = ".".join(parts[4:])
            if kind == "resnets":
                out[f"output_blocks.{index}.0.{_resnet(rest)}"] = value
            else:
                out[f"output_blocks.{index}.1.{rest}"] = value
        else:
            raise ValueError(f"UNet weight {key!r} has no place in the original layout")
    return out


def vae_to_original(tensors: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A diffusers AutoencoderKL state dict in LDM naming (without `first_stage_model.`)."""
    blocks = len(config["up_block_types"])
    out: dict[str, Any] = {}
    for key, value in tensors.items():
        name = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        name = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", name)
        name = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", name)
        up = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.(.*)$", name)
        if up:  # the decoder's blocks are numbered from the bottom in LDM
            where = "block." if up.group(2) == "resnets" else "upsample."
            name = f"decoder.up.{blocks - 1 - int(up.group(1))}.{where}{up.group(3)}"
        name = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m.group(1)) + 1}.", name)
        attention = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)$", name)
        if attention:
            name = f"{attention.group(1)}.mid.attn_1.{VAE_ATTENTION_NAMES[attention.group(2)]}.{attention.group(3)}"
            if attention.group(3) == "weight" and attention.group(2) != "group_norm":
                value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        out[name] = value
    return out


def clip_l_to_original(tensors: dict[str, Any]) -> dict[str, Any]:
    """CLIPTextModel's state dict as SDXL files carry it: transformers' names under `text_model.`
    (transformers 5 saves them without that level)."""
    return {key if key.startswith("text_model.") else f"text_model.{key}": value for key, value in tensors.items()}


def clip_g_to_original(tensors: dict[str, Any]) -> dict[str, Any]:
    """CLIPTextModelWithProjection's state dict in open_clip's naming: fused q/k/v `in_proj_*`,
    `text_projection` transposed (the inverse of diffusers' convert_open_clip_checkpoint)."""
    plain = {key.removeprefix("text_model."): value for key, value in tensors.items()}
    out: dict[str, Any] = {
        "token_embedding.weight": plain.pop("embeddings.token_embedding.weight"),
        "positional_embedding": plain.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": plain.pop("final_layer_norm.weight"),
        "ln_final.bias": plain.pop("final_layer_norm.bias"),
        "text_projection": plain.pop("text_projection.weight").T.contiguous(),
    }
    import torch

    layers = sorted({int(k.split(".")[2]) for k in plain if k.startswith("encoder.layers.")})
    for layer in layers:
        source, target = f"encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            out[f"{target}attn.in_proj_{kind}"] = torch.cat(
                [plain.pop(f"{source}self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")]
            )
        for key in [k for k in plain if k.startswith(source)]:
            name = key.removeprefix(source)
            for new, old in OPEN_CLIP_LAYER_NAMES:
                name = name.replace(new, old)
            out[target + name] = plain.pop(key)
    if plain:
        raise ValueError(f"text_encoder_2 weights with no place in open_clip's layout: {sorted(plain)[:5]}")
    return out


def original_state_dict(folder: Path, dtype: Any = None) -> dict[str, Any]:
    """Every weight of the SDXL diffusers folder, in the single-file layout (`dtype`: cast, e.g. torch.float16)."""
    folder = Path(folder)
    unet_config = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    vae_config = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    parts = (
        (UNET_PREFIX, unet_to_original(_component(folder, "unet"), unet_config)),
        (VAE_PREFIX, vae_to_original(_component(folder, "vae"), vae_config)),
        (CLIP_L_PREFIX, clip_l_to_original(_component(folder, "text_encoder"))),
        (CLIP_G_PREFIX, clip_g_to_original(_component(folder, "text_encoder_2"))),
    )
    tensors = {prefix + key: value for prefix, part in parts for key, value in part.items()}
    if dtype is not None:
        tensors = {key: value.to(dtype) for key, value in tensors.items()}
    return tensors


def write_single_file(folder: str | Path, path: str | Path, dtype: Any = None) -> Path:
    """The SDXL diffusers `folder` as one checkpoint file at `path`: `.safetensors`, or `.ckpt` (torch.save of
    `{"state_dict": ...}`, as the original checkpoints); a miniature's says so (the safetensors metadata's, or the
    checkpoint's, `imagend` entry). Returns the path."""
    import torch

    target = Path(path).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.contiguous() for key, value in original_state_dict(Path(folder), dtype).items()}
    marker = {"imagend": MINIATURE_METADATA} if is_tiny_model(str(folder)) else {}
    if target.suffix == ".safetensors":
        save_safetensors(tensors, target, metadata={"format": "pt", **marker})
    else:
        torch.save({"state_dict": tensors, **marker}, target)
    return target


DTYPE_NAMES = {torch_name: name for name, torch_name in SAFETENSORS_DTYPES.items()}  # torch's name -> the file's


def save_safetensors(tensors: dict[str, Any], path: Path, metadata: dict[str, str]) -> None:
    """The safetensors format written tensor by tensor (header, then each tensor's bytes), so a full-size
    checkpoint (7 GB in fp16) is never held twice in memory, as safetensors.torch.save_file's byte copies do."""
    import torch

    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for key in sorted(tensors):
        size = tensors[key].numel() * tensors[key].element_size()
        dtype = DTYPE_NAMES[str(tensors[key].dtype).removeprefix("torch.")]
        header[key] = {"dtype": dtype, "shape": list(tensors[key].shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with path.open("wb") as file:
        file.write(len(text).to_bytes(8, "little"))
        file.write(text)
        for key in sorted(tensors):
            file.write(tensors[key].contiguous().reshape(-1).view(torch.uint8).numpy().data)


def write_config_folder(folder: str | Path, target: str | Path) -> Path:
    """What from_single_file takes from a diffusers folder besides the weights: every .json and .txt
    (model_index.json, the components' configs, the tokenizers), copied to `target`. Returns its path."""
    source, destination = Path(folder), Path(target).expanduser().resolve()
    for file in source.rglob("*"):
        if file.is_file() and file.suffix in (".json", ".txt"):
            (destination / file.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, destination / file.relative_to(source))
    return destination
