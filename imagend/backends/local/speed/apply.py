"""Applying the GPU speed options (settings.py) to a loaded SDXL pipeline: `apply_speed`, the fast
presets (`apply_fast_preset`, `preset_scheduler`), fused QKV, channels-last, the step cache
(step_cache.py) and torch.compile with its on-disk cache.

`apply_speed(pipe, speed, device)` applies them to a loaded pipeline in this order, and returns
what it did (and what it skipped, and why) for the start log:

1. the fast preset: the LoRA is loaded, fused into the weights and its adapter dropped (so rows'
   own LoRAs load on top as usual, and nothing is left to compute per layer), then its scheduler;
2. fused QKV: after the preset's LoRA (which targets to_q/to_k/to_v), before compile traces;
3. channels-last: before compile, which specialises its kernels on the memory format;
4. the step cache: its hooks wrap the UNet's blocks, so the UNet is then compiled by region (its
   transformer blocks, inside the hooks) and never whole;
5. torch.compile, with static shapes (`dynamic=False`): max-autotune and CUDA graphs specialise
   on each (batch, size), and a symbolic shape would cost speed at every step. A new shape
   compiles once; the backend compiles every batch size and IMAGEND_COMPILE_SIZES at start
   (`SpeedSettings.warmup_shapes`), the recompile limit is raised so that no shape falls back to
   eager, and inductor's caches live in IMAGEND_COMPILE_CACHE_DIR (by default under
   IMAGEND_DATA_DIR, not /tmp: the systemd units have PrivateTmp), so a restart reads the
   compiled code instead of compiling again.

CUDA-only parts (CUDA graphs, inductor's GPU kernel tuning) are skipped on other devices, with
the reason in the returned list, never an error.
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from imagend.backends.local.speed.settings import FastPreset, SpeedSettings
from imagend.backends.local.speed.step_cache import StepCache
from imagend.errors import ConfigError, first_line

FAST_ADAPTER = "imagend-fast-preset"
LIBRARY_MESSAGE_MAX_CHARS = 300  # of a library's message (its first line) in a load error
RECOMPILE_LIMIT = 64  # graphs per compiled function: batch sizes x sizes, with room (torch's default: 8)
CUDA_GRAPH_MODES = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}
# diffusers' SDXL recipe (docs: "Accelerate inference of text-to-image diffusion models"), GPU kernels only.
INDUCTOR_GPU_FLAGS: dict[str, bool] = {
    "conv_1x1_as_mm": True,
    "coordinate_descent_tuning": True,
    "coordinate_descent_check_all_directions": True,
    "epilogue_fusion": False,
}
SKIPPED = "skipped "  # the prefix of a returned entry that names an option not applied, and why


def apply_speed(pipe: Any, speed: SpeedSettings, device: str) -> list[str]:
    """Apply `speed` to a loaded pipeline already on `device` (see the module's docstring for the
    order); return what was applied, and each option skipped with `skipped <what>: <why>`."""
    applied: list[str] = []
    on_cuda = device.startswith("cuda")
    unet = getattr(pipe, "unet", None)
    preset = speed.preset
    if preset is not None:
        applied.append(apply_fast_preset(pipe, preset))
    if speed.fuse_qkv:
        applied.append(_fuse_qkv(pipe))
    compiled_vae = speed.compile_vae and getattr(pipe, "vae", None) is not None
    layouts = [name for name in ("unet", "vae") if getattr(pipe, name, None) is not None and (
        speed.channels_last or (name == "unet" and speed.compile_unet) or (name == "vae" and compiled_vae))]
    for name in layouts:
        getattr(pipe, name).to(memory_format=torch.channels_last)
    if layouts:
        applied.append(f"channels_last ({', '.join(layouts)})")
    regional = speed.compile_regional
    if speed.step_cache == "deepcache":
        if not _is_sdxl_unet(unet):
            applied.append(f"{SKIPPED}step_cache: DeepCache needs SDXL's UNet, {type(pipe).__name__} has none")
        else:
            StepCache(unet, speed.step_cache_interval).attach()
            applied.append(f"step_cache=deepcache (interval {speed.step_cache_interval})")
            if speed.compile_unet and not regional:
                regional = True
                applied.append("compile_unet by region: the step cache wraps the UNet's blocks")
    if speed.compiles:
        applied += _compile(pipe, speed, on_cuda, regional)
    vae = getattr(pipe, "vae", None)
    upcasts = hasattr(pipe, "upcast_vae") and getattr(getattr(vae, "config", None), "force_upcast", False)
    if upcasts and vae is not None and vae.dtype == torch.float16:  # SDXL then decodes in float32, every image
        applied.append(
            "note vae_upcast: this VAE decodes in float32 (force_upcast); IMAGEND_VAE's fp16-fix VAE does not"
        )
    return applied


def apply_fast_preset(pipe: Any, preset: FastPreset) -> str:
    """Load the preset's LoRA, fuse it into the weights, drop its adapter, and set its scheduler."""
    if not _is_sdxl_unet(getattr(pipe, "unet", None)) or not hasattr(pipe, "load_lora_weights"):
        raise ConfigError(f"IMAGEND_FAST_PRESET={preset.name}: its LoRAs are for SDXL, not {type(pipe).__name__}")
    try:
        if preset.weight_name is None:
            pipe.load_lora_weights(preset.lora, adapter_name=FAST_ADAPTER)
        else:
            pipe.load_lora_weights(preset.lora, weight_name=preset.weight_name, adapter_name=FAST_ADAPTER)
        pipe.fuse_lora(adapter_names=[FAST_ADAPTER], lora_scale=1.0)
        pipe.unload_lora_weights()  # the fused weights stay; no adapter left for rows' LoRAs to meet
    except Exception as exc:
        where = f"{preset.lora}:{preset.weight_name}" if preset.weight_name else preset.lora
        raise ConfigError(
            f"IMAGEND_FAST_LORA={where}: cannot load the {preset.name} LoRA ({type(exc).__name__}: "
            f"{first_line(exc, LIBRARY_MESSAGE_MAX_CHARS)}). Set IMAGEND_FAST_LORA to "
            f"the .safetensors file, or a hub id already in the Hugging Face cache"
        ) from exc
    pipe.scheduler = preset_scheduler(pipe.scheduler.config, preset)
    spacing = preset.scheduler_overrides.get("timestep_spacing")
    return (
        f"fast_preset={preset.name} ({preset.lora}{':' + preset.weight_name if preset.weight_name else ''} fused; "
        f"{preset.scheduler_class}{' ' + str(spacing) if spacing else ''}; {preset.steps} steps, "
        f"guidance {preset.guidance:g})"
    )


def _is_sdxl_unet(unet: Any) -> bool:
    return type(getattr(unet, "_orig_mod", unet)).__name__ == "UNet2DConditionModel"


def preset_scheduler(config: Any, preset: FastPreset) -> Any:
    """A fresh scheduler of the preset's kind from a checkpoint's scheduler config."""
    diffusers: Any = importlib.import_module("diffusers")
    return getattr(diffusers, preset.scheduler_class).from_config(config, **preset.scheduler_overrides)


def _fuse_qkv(pipe: Any) -> str:
    fused = []
    for name in ("unet", "transformer", "vae"):
        module = getattr(pipe, name, None)
        if module is not None and hasattr(module, "fuse_qkv_projections"):
            module.fuse_qkv_projections()
            fused.append(name)
    return f"fuse_qkv ({', '.join(fused)})" if fused else f"{SKIPPED}fuse_qkv: nothing to fuse in {type(pipe).__name__}"


def _compile(pipe: Any, speed: SpeedSettings, on_cuda: bool, regional: bool) -> list[str]:
    import torch._dynamo
    import torch._inductor.config as inductor_config

    done: list[str] = []
    inductor = speed.compile_backend == "inductor"
    if speed.compile_cache_dir is not None and inductor:
        done.append(_use_compile_cache(speed.compile_cache_dir))
    dynamo_config: Any = torch._dynamo.config
    dynamo_config.recompile_limit = max(int(dynamo_config.recompile_limit), RECOMPILE_LIMIT)
    mode: str | None = speed.compile_mode
    if inductor and on_cuda:
        for flag, value in INDUCTOR_GPU_FLAGS.items():
            setattr(inductor_config, flag, value)
        done.append("inductor_tuning (" + ", ".join(f"{k}={v}" for k, v in INDUCTOR_GPU_FLAGS.items()) + ")")
    elif inductor:
        done.append(f"{SKIPPED}inductor_tuning: GPU kernel tuning, not on this device")
    if not on_cuda and mode in CUDA_GRAPH_MODES:
        done.append(f"{SKIPPED}cuda_graphs: IMAGEND_COMPILE_MODE={mode} records CUDA graphs, which need CUDA; "
                    f"{CUDA_GRAPH_MODES[mode]} instead")
        mode = CUDA_GRAPH_MODES[mode]
    options: dict[str, Any] = {"dynamic": False, "backend": speed.compile_backend}
    if inductor:
        options["mode"] = mode
    label = f"mode={mode if inductor else 'none, backend=' + speed.compile_backend}, dynamic=False"
    with warnings.catch_warnings():
        # torch's own modules, imported by the first torch.compile, deprecate torch.jit.script_method.
        warnings.filterwarnings(
            "ignore", message=".*torch.jit.script_method. is deprecated", category=DeprecationWarning
        )
        done += _compile_modules(pipe, speed, options, label, regional)
    return done


def _compile_modules(pipe: Any, speed: SpeedSettings, options: dict[str, Any], label: str, regional: bool) -> list[str]:
    done: list[str] = []
    denoiser_name = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    denoiser = getattr(pipe, denoiser_name, None)
    if speed.compile_unet and denoiser is not None:
        if regional and getattr(denoiser, "_repeated_blocks", None):
            denoiser.compile_repeated_blocks(**options)
            blocks = ", ".join(denoiser._repeated_blocks)
            done.append(f"compile_{denoiser_name} by region ({blocks}; {label})")
        else:
            setattr(pipe, denoiser_name, torch.compile(denoiser, **options))
            done.append(f"compile_{denoiser_name} ({label})")
    vae = getattr(pipe, "vae", None)
    if speed.compile_vae and vae is not None:
        vae.decode = torch.compile(vae.decode, **options)
        done.append(f"compile_vae_decode ({label})")
    return done


def _use_compile_cache(folder: Path) -> str:
    """Inductor's FX graph, autotuning and Triton caches in `folder`, kept across restarts. Set once
    per process, before the first compile; a TORCHINDUCTOR_CACHE_DIR set by hand wins."""
    import torch._inductor.config as inductor_config

    folder = folder.expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"IMAGEND_COMPILE_CACHE_DIR={folder}: cannot create it ({exc.strerror})") from exc
    chosen = os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    os.environ.setdefault("TRITON_CACHE_DIR", str(Path(chosen) / "triton"))
    inductor_config.fx_graph_cache = True
    inductor_config.autotune_local_cache = True
    return f"compile_cache_dir={chosen}"
