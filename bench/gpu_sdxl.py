"""GPU benchmark of the local backend's speed options on full-size SDXL, random weights, vs bare diffusers.

Every speed option of imagend/backends/local/speed/ on the full-size SDXL architecture with random
weights, against bare diffusers on the same GPU in one run.

    .venv/bin/python bench/gpu_sdxl.py                        # everything: about an hour on an H100
    .venv/bin/python bench/gpu_sdxl.py --only bare,default,best --batches 1,4
    .venv/bin/python bench/gpu_sdxl.py --dry-run              # no GPU: every code path on the CPU, ~1-2 min
    python3 bench/gpu_sdxl.py --quick --json $OUT/gpu_quick.json    # one call on a lent GPU, <= 8 min
    .venv/bin/python bench/gpu_sdxl.py --quick --dry-run --json /tmp/gpu_quick.json   # its CPU rehearsal, ~1 min

--quick: bare, default and best at batch 1 and 4 (1024x1024, 30 steps, --images 4 per figure) and the
first image after start (best, empty compile cache), inside --budget seconds from the process's start
(450 by default: with the install of the carried wheels, the call stays within 8 minutes); what would
not fit is recorded 'skipped: over budget (...)' rather than run. It writes every figure, measured or
not, as JSON to --json (default $OUT/gpu_quick.json when OUT is set; schema in quick_record) as they
come, then prints a side-by-side table with imagend / bare at each batch size. `make gpu-wheels`
(bench/gpu_wheels.py) packs what a bare GPU host lacks for it; docs/gpu_speed.md has the one command.

No download: the UNet, VAE and both text encoders are built from SDXL base 1.0's published
component configs (written out below) with random weights, and the tokenizers are imagend's
byte-level ones. Images are noise; the compute is SDXL's. FLUX.1-schnell likewise (its transformer,
T5-XXL and CLIP-L at their real sizes, bfloat16: about 34 GB).

Contenders (--list prints them), each at every batch size of --batches (default 1, 4, 8), making
--images images (at least one call) of --side x --side at --steps steps, fp16:
  bare        bare diffusers, eager: pipe(prompt=[...] * batch) -- 1.0x at its batch size;
  default     imagend's LocalBackend.generate, every speed option off (compel, device lock, step
              callback, PNG);
  bf16, fuse_qkv, channels_last, compile, compile_max_autotune, compile_regional, compile_vae:
              imagend with that option alone (exact: the same image up to float rounding);
  best        the fastest exact combination: fused QKV, channels-last, the UNet and the VAE decoder
              compiled with --compile-mode (default max-autotune: CUDA graphs);
  deepcache, best_deepcache, lcm, lightning, hyper: NOT exact -- the step cache, and the step-reduction
              presets (a random LoRA of the real shape, fused: the same compute as the published one).
Every compiled contender is warmed up (one call per batch size) before its clock starts. Printed:
seconds per image at batch 1 (latency), images/s at the others, the ratio to bare diffusers at the
same batch size and to bare diffusers at batch 1, and peak VRAM.

"First image after start": a fresh process builds the pipeline, applies `best`, and makes one image
(compiling inside it), twice: with an empty compile cache, then with the one the first run left
(what a restart of the daemon sees; IMAGEND_COMPILE_CACHE_DIR). Weights are random, so the
checkpoint's read from disk is not in the figure.

Targets (issue): `best` >= 2.0x bare at batch 1, 4 and 8; first image after start <= 60 s.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROCESS_STARTED = time.time()  # the quick mode's budget counts from here

# SDXL base 1.0's published component configs (stabilityai/stable-diffusion-xl-base-1.0).
SDXL_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_embedding_type": "positional",
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
SDXL_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": False,  # as madebyollin/sdxl-vae-fp16-fix, the VAE imagend uses on CUDA
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SDXL_TEXT_ENCODER: dict[str, Any] = {  # CLIP ViT-L/14 text tower
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "vocab_size": 49408,
}
SDXL_TEXT_ENCODER_2: dict[str, Any] = {  # OpenCLIP ViT-bigG/14 text tower
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
    "vocab_size": 49408,
}
SDXL_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}
# FLUX.1-schnell's published configs (black-forest-labs/FLUX.1-schnell): transformer, T5 v1.1 XXL
# encoder, CLIP-L text encoder, the 16-channel VAE, the flow-matching scheduler.
FLUX_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": False,  # schnell: no distilled-guidance input
    "axes_dims_rope": (16, 56, 56),
}
FLUX_T5: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "dense_act_fn": "gelu_new",
    "is_gated_act": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
}
FLUX_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "force_upcast": True,
}
FLUX_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": False,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
FLUX_MIN_GPU_BYTES = 60 * 2**30  # ~34 GB of bf16 weights, activations at 1024^2 and batch 4, headroom
# Under 75 characters: one 77-token chunk with the byte-level tokenizer, as with SDXL's for ordinary
# prompts, so bare diffusers (which truncates at 77) and compel encode the same amount of text.
PROMPT = "an astronaut riding a horse on the moon, dramatic light, {i}"
WARMUP_STEPS = 2


@dataclasses.dataclass(frozen=True)
class Contender:
    key: str
    label: str
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    dtype: str = "float16"
    exact: bool = True
    bare: bool = False
    compiles: bool = False


def contenders(compile_mode: str) -> list[Contender]:
    compile_env = {"IMAGEND_COMPILE": "1", "IMAGEND_COMPILE_MODE": "default"}
    best = {
        "IMAGEND_FUSE_QKV": "1",
        "IMAGEND_CHANNELS_LAST": "1",
        "IMAGEND_COMPILE": "1",
        "IMAGEND_COMPILE_VAE": "1",
        "IMAGEND_COMPILE_MODE": compile_mode,
    }
    return [
        Contender("bare", "bare diffusers, eager", bare=True),
        Contender("default", "imagend, every option off"),
        Contender("bf16", "imagend, bfloat16", dtype="bfloat16"),
        Contender("fuse_qkv", "imagend + fused QKV", {"IMAGEND_FUSE_QKV": "1"}),
        Contender("channels_last", "imagend + channels-last", {"IMAGEND_CHANNELS_LAST": "1"}),
        Contender("compile", "imagend + compile UNet (default mode)", compile_env, compiles=True),
        Contender(
            "compile_max_autotune",
            "imagend + compile UNet (max-autotune, CUDA graphs)",
            {**compile_env, "IMAGEND_COMPILE_MODE": "max-autotune"},
            compiles=True,
        ),
        Contender(
            "compile_regional",
            "imagend + compile UNet blocks (regional)",
            {**compile_env, "IMAGEND_COMPILE_REGIONAL": "1"},
            compiles=True,
        ),
        Contender("compile_vae", "imagend + compile VAE decoder", {"IMAGEND_COMPILE_VAE": "1"}, compiles=True),
        Contender("best", f"imagend best exact ({compile_mode})", best, compiles=True),
        Contender(
            "deepcache", "imagend + step cache 1:3 (NOT exact)", {"IMAGEND_STEP_CACHE": "deepcache"}, exact=False
        ),
        Contender(
            "best_deepcache",
            "best + step cache 1:3 (NOT exact)",
            {**best, "IMAGEND_STEP_CACHE": "deepcache"},
            exact=False,
            compiles=True,
        ),
        *(
            Contender(name, f"imagend preset {name} (NOT exact)", {"IMAGEND_FAST_PRESET": name}, exact=False)
            for name in ("lcm", "lightning", "hyper")
        ),
    ]


# -- building the pipelines ---------------------------------------------------------------------------


def build_sdxl(tokenizer_dir: Path, device: str, dtype: Any) -> Any:
    """SDXL base's architecture with random weights, created directly on `device`."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from imagend.backends.local.miniature.parts import write_tokenizer

    write_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    with torch.device(device):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**SDXL_UNET)
        vae = AutoencoderKL(**SDXL_VAE)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(**SDXL_TEXT_ENCODER, **special, pad_token_id=special["eos_token_id"])
        )
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(**SDXL_TEXT_ENCODER_2, **special, pad_token_id=special["eos_token_id"])
        )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=True,
    )
    if device != "meta":
        pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_flux(tokenizer_dir: Path, device: str) -> Any:
    """FLUX.1-schnell's architecture with random weights in bfloat16, created directly on `device`."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    from imagend.backends.local.miniature.parts import t5_tokenizer, write_tokenizer

    write_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # never the 48 GB of a float32 transformer
    try:
        with torch.device(device):
            torch.manual_seed(0)
            transformer = FluxTransformer2DModel(**FLUX_TRANSFORMER)
            text_encoder_2 = T5EncoderModel(T5Config(**FLUX_T5))
            text_encoder = CLIPTextModel(
                CLIPTextConfig(**SDXL_TEXT_ENCODER, **special, pad_token_id=special["eos_token_id"])
            )
            vae = AutoencoderKL(**FLUX_VAE)
    finally:
        torch.set_default_dtype(previous)
    pipe = FluxPipeline(
        transformer=transformer,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer(),
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parameter_counts(pipe: Any) -> dict[str, int]:
    return {
        name: sum(p.numel() for p in module.parameters())
        for name, module in pipe.components.items()
        if hasattr(module, "parameters")
    }


def fresh_copy(pristine: Any, dtype: Any) -> Any:
    """A pipeline of deep copies of `pristine`'s modules (the options change them in place), in `dtype`."""
    import torch

    components: dict[str, Any] = {}
    for name, component in pristine.components.items():
        if isinstance(component, torch.nn.Module):
            module = copy.deepcopy(component)
            components[name] = module if getattr(module, "dtype", dtype) == dtype else module.to(dtype=dtype)
        elif hasattr(component, "config") and hasattr(type(component), "from_config"):
            components[name] = type(component).from_config(component.config)  # a scheduler
        else:
            components[name] = component  # tokenizers, read only
    pipe = type(pristine)(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_random_lora(unet: Any, path: Path, rank: int = 8) -> Path:
    """A diffusers-format LoRA for `unet`'s attention projections, random: its compute once fused is
    the published step-reduction LoRAs' (which cannot be downloaded on a benchmark host)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator("cpu").manual_seed(0)
    tensors: dict[str, Any] = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(("to_q", "to_k", "to_v", "to_out.0")):
            tensors[f"unet.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=generator) * 1e-3
            tensors[f"unet.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=generator) * 1e-3
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


# -- measuring ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    key: str
    label: str
    batch: int
    images: int
    seconds: float
    peak_bytes: int

    @property
    def rate(self) -> float:
        return self.images / self.seconds


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(key: str, label: str, batch: int, images: int, body: Callable[[], None], device: str) -> Result:
    import torch

    on_cuda = device.startswith("cuda")
    synchronize(device)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    body()
    synchronize(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() if on_cuda else 0
    return Result(key, label, batch, images, seconds, peak)


def imagend_backend(pipe: Any, device: str, batch: int, side: int, steps: int, workdir: Path,
                    dtype: str = "float16", model: str = "sdxl-architecture-random-weights") -> Any:
    from imagend.backends.local import LocalBackend
    from imagend.backends.local.options import LocalSettings
    from imagend.config.settings import load_settings

    settings = load_settings(
        environ={
            "IMAGEND_MODEL": model,
            "IMAGEND_DEVICE": device,
            "IMAGEND_DTYPE": dtype if device.startswith("cuda") else "float32",
            "IMAGEND_VAE": "model",
            "IMAGEND_LOCK_DIR": str(workdir / "locks"),
            "IMAGEND_MAX_BATCH": str(batch),
            "IMAGEND_DEFAULT_STEPS": str(steps),
            "IMAGEND_PREVIEWS": "false",
            "DEFAULT_IMAGE_WIDTH": str(side),
            "DEFAULT_IMAGE_HEIGHT": str(side),
            "IMAGEND_DATA_DIR": str(workdir),
        },
        env_file=None,
    )
    options = LocalSettings.from_settings(settings, cuda_available=device.startswith("cuda"))
    return LocalBackend(options, pipe, max_batch=batch)


def requests(backend: Any, count: int, side: int, steps: int, guidance: float | None, first_id: int = 0) -> list[Any]:
    from imagend.backends.base import Request

    return [
        backend.validate(
            Request(
                id=first_id + i,
                prompt=PROMPT.format(i=i),
                negative_prompt=None,
                style=None,
                width=side,
                height=side,
                seed=i,
                steps=steps,
                guidance=guidance,
                scheduler=None,
            )
        )
        for i in range(count)
    ]


def no_heartbeat(progress: float | None = None, preview: Any = None) -> None:
    return None


@dataclasses.dataclass
class Runner:
    """How one contender makes `count` images in calls of `batch`."""

    make: Callable[[int, int, int], None]  # (count, batch, steps)
    steps: int


def bare_runner(pipe: Any, side: int, steps: int, extra: dict[str, Any] | None = None) -> Runner:
    import torch

    def make(count: int, batch: int, run_steps: int) -> None:
        for start in range(0, count, batch):
            size = min(batch, count - start)
            pipe(
                prompt=[PROMPT.format(i=start + i) for i in range(size)],
                width=side,
                height=side,
                num_inference_steps=run_steps,
                generator=[torch.Generator("cpu").manual_seed(start + i) for i in range(size)],
                **(extra or {}),
            )

    return Runner(make, steps)


def imagend_runner(backend: Any, side: int, steps: int, guidance: float | None) -> Runner:
    def make(count: int, batch: int, run_steps: int) -> None:
        rows = requests(backend, count, side, run_steps, guidance)
        for start in range(0, count, batch):
            backend.generate(rows[start : start + batch], no_heartbeat)

    return Runner(make, steps)


def measure_contender(key: str, label: str, runner: Runner, args: argparse.Namespace, device: str) -> list[Result]:
    """Warm up at each batch size (compiles every shape), then time each."""
    for batch in args.batch_sizes:
        runner.make(batch, batch, WARMUP_STEPS)
    results = []
    for batch in args.batch_sizes:
        count = max(batch, -(-args.images // batch) * batch)
        results.append(measure(key, label, batch, count, lambda b=batch, c=count: runner.make(c, b, runner.steps),
                               device))
    return results


def speed_settings(env: dict[str, str], workdir: Path, dry_run: bool) -> Any:
    from imagend.backends.local.speed.settings import SpeedSettings
    from imagend.config.env import Env

    speed = SpeedSettings.from_env(Env(env), data_dir=workdir)
    if dry_run:
        # dynamo traces, no code generation: inductor takes minutes per graph on a small CPU.
        speed = dataclasses.replace(speed, compile_backend="eager")
    return speed


def release(device: str) -> None:
    import torch

    with contextlib.suppress(Exception):
        import torch._dynamo

        torch._dynamo.reset()
    if device.startswith("cuda"):
        with contextlib.suppress(Exception):
            from torch._inductor.cudagraph_trees import reset_cudagraph_trees

            reset_cudagraph_trees()
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def run_sdxl(args: argparse.Namespace, device: str, pristine: Any, workdir: Path, lora: Path) -> list[Result]:
    import torch

    from imagend.backends.local.speed.apply import apply_speed, preset_scheduler

    results: list[Result] = []
    for contender in contenders(args.compile_mode):
        if args.only and contender.key not in args.only:
            continue
        if args.no_compile and contender.compiles:
            continue
        started = time.perf_counter()
        dtype = getattr(torch, contender.dtype) if device.startswith("cuda") else torch.float32
        pipe = fresh_copy(pristine, dtype)
        env = dict(contender.env)
        if "IMAGEND_FAST_PRESET" in env:
            env["IMAGEND_FAST_LORA"] = str(lora)
        speed = speed_settings(env, workdir, args.dry_run)
        applied = [] if contender.bare else apply_speed(pipe, speed, device)
        preset = speed.preset
        steps = preset.steps if preset else args.steps
        if contender.bare:
            runner = bare_runner(pipe, args.side, steps)
        else:
            backend = imagend_backend(pipe, device, max(args.batch_sizes), args.side, steps, workdir,
                                      dtype=contender.dtype)
            if preset is not None:
                # What the backend's wiring does with a preset: its scheduler for every job.
                model = backend.current
                model.schedulers.fresh = lambda _name, c=model.schedulers.config, p=preset: preset_scheduler(c, p)
            runner = imagend_runner(backend, args.side, steps, preset.guidance if preset else None)
        print(f"  {contender.key}: {', '.join(applied) or 'nothing applied'}", flush=True)
        measured = measure_contender(contender.key, contender.label, runner, args, device)
        results += measured
        print(
            f"    {', '.join(f'batch {r.batch}: {r.rate:.3f} img/s' for r in measured)} "
            f"({time.perf_counter() - started:.0f} s with warm-up)",
            flush=True,
        )
        del pipe, runner
        release(device)
    return results


def run_flux(args: argparse.Namespace, device: str, workdir: Path) -> list[Result]:
    """FLUX.1-schnell, 4 steps: bare diffusers, imagend, imagend with compile + fused QKV."""
    import torch

    from imagend.backends.local.speed.apply import apply_speed

    if args.dry_run:
        from diffusers import FluxPipeline

        from imagend.backends.local.miniature.families import write_tiny_pipeline

        pristine = FluxPipeline.from_pretrained(write_tiny_pipeline(workdir / "tiny-flux", "flux"),
                                                dtype=torch.float32)
        pristine.set_progress_bar_config(disable=True)
        side = 32
    else:
        total = torch.cuda.get_device_properties(0).total_memory
        if total < FLUX_MIN_GPU_BYTES:
            print(f"FLUX.1-schnell skipped: {total / 2**30:.0f} GiB on this GPU, it needs about "
                  f"{FLUX_MIN_GPU_BYTES / 2**30:.0f}")
            return []
        started = time.perf_counter()
        pristine = build_flux(workdir / "flux-tokenizer", device)
        counts = parameter_counts(pristine)
        print(f"FLUX.1-schnell architecture, random weights, bf16, built in {time.perf_counter() - started:.0f} s ("
              + ", ".join(f"{k} {v / 1e9:.2f}B" for k, v in counts.items()) + ")", flush=True)
        side = args.side
    steps, batches = args.flux_steps, args.flux_batch_sizes
    flux_args = argparse.Namespace(**{**vars(args), "batch_sizes": batches})
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    results: list[Result] = []
    plans = [
        ("flux_bare", "FLUX.1-schnell bare diffusers, eager", None),
        ("flux_default", "FLUX.1-schnell imagend, options off", {}),
        ("flux_best", f"FLUX.1-schnell imagend, fused QKV + compile ({args.compile_mode})",
         {"IMAGEND_FUSE_QKV": "1", "IMAGEND_COMPILE": "1", "IMAGEND_COMPILE_VAE": "1",
          "IMAGEND_COMPILE_MODE": args.compile_mode}),
    ]
    for key, label, env in plans:
        if args.no_compile and env and "IMAGEND_COMPILE" in env:
            continue
        pipe = fresh_copy(pristine, dtype)
        if env is None:
            runner = bare_runner(pipe, side, steps, {"guidance_scale": 0.0, "max_sequence_length": 256})
        else:
            applied = apply_speed(pipe, speed_settings(env, workdir, args.dry_run), device)
            print(f"  {key}: {', '.join(applied) or 'nothing applied'}", flush=True)
            backend = imagend_backend(pipe, device, max(batches), side, steps, workdir, dtype="bfloat16",
                                      model="flux-architecture-random-weights")
            runner = imagend_runner(backend, side, steps, None)
        measured = measure_contender(key, label, runner, flux_args, device)
        results += measured
        print(f"  {key}: {', '.join(f'batch {r.batch}: {r.rate:.3f} img/s' for r in measured)}", flush=True)
        del pipe, runner
        release(device)
    del pristine
    release(device)
    return results


# -- first image after start ------------------------------------------------------------------------------


def first_image_child(args: argparse.Namespace) -> int:
    """In a fresh process: build, apply `best`, make one image; print the seconds as JSON."""
    started = time.perf_counter()
    import torch

    from imagend.backends.local.speed.apply import apply_speed

    quiet()
    imported = time.perf_counter()
    workdir = Path(args.first_image_child)
    device = "cpu" if args.dry_run else "cuda"
    if args.dry_run:
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline.from_pretrained(str(workdir / "tiny"), dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
    else:
        pipe = build_sdxl(workdir / "tokenizer", device, torch.float16)
    built = time.perf_counter()
    best = next(c for c in contenders(args.compile_mode) if c.key == "best")
    env = {**best.env, "IMAGEND_COMPILE_CACHE_DIR": str(workdir / "first-image-cache")}
    applied = apply_speed(pipe, speed_settings(env, workdir, args.dry_run), device)
    backend = imagend_backend(pipe, device, 1, args.side, args.steps, workdir)
    backend.generate(requests(backend, 1, args.side, args.steps, None), no_heartbeat)
    synchronize(device)
    done = time.perf_counter()
    print(json.dumps({
        "import_s": imported - started,
        "build_s": built - imported,
        "apply_and_first_image_s": done - built,
        "process_s": done - started,
        "applied": applied,
    }))
    return 0


def first_image(args: argparse.Namespace, workdir: Path) -> list[tuple[str, dict[str, Any], float]]:
    """Run the child twice on one fresh compile cache: cold, then as a restart finds it."""
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    command = [sys.executable, __file__, "--first-image-child", str(workdir), "--side", str(args.side),
               "--steps", str(args.steps), "--compile-mode", args.compile_mode]
    if args.dry_run:
        command.append("--dry-run")
    runs = []
    # The dry run's compile (dynamo's eager backend) writes no cache: one run says all there is.
    names = ["empty compile cache"] + ([] if args.dry_run else ["compile cache of the run before"])
    for name in names:
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600, check=False)
        wall = time.perf_counter() - started
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode or not lines:
            print(f"  first image ({name}) failed, exit {done.returncode}:\n{done.stderr[-3000:]}")
            return runs
        runs.append((name, json.loads(lines[-1]), wall))
    return runs


# -- the quick mode: one call on a lent GPU --------------------------------------------------------------
#
# bare, default and best at batch 1 and 4, plus the first image after start, inside a wall-clock budget
# counted from this process's start (PROCESS_STARTED): 450 s by default, so that the whole call, pip
# install of the carried wheels included, stays within 8 minutes on an H100. bare and default run in
# this process (eager: predictable); best runs in a fresh child process whose first image is the cold
# start (empty compile cache), which then times batch 1 and compiles and times batch 4 if the budget
# allows (the batch-1 compile is the estimate for the next shape). Before each call the budget is
# checked against an estimate; what would not fit is recorded 'skipped: over budget (...)' instead of
# run, and the child is killed at the deadline whatever it does. The figures go to --json as they come.

QUICK_SCHEMA = "imagend-gpu-quick/1"
QUICK_KEYS = ("bare", "default", "best")
QUICK_BATCHES = "1,4"
QUICK_IMAGES = 4
QUICK_BUDGET_S = 450.0
QUICK_EVENT = "QUICK-EVENT "  # the child's lines for the parent
QUICK_WRAP_UP_S = 3.0  # kept back from the child's deadline for the parent's report
OVER_BUDGET = "skipped: over budget"
CELL_KEYS = ("status", "calls", "images", "seconds", "seconds_per_image", "images_per_s", "warmup_s",
             "peak_vram_bytes")
FIRST_IMAGE_KEYS = ("status", "process_s", "import_s", "build_s", "apply_and_first_image_s", "compile_cache",
                    "applied")


@dataclasses.dataclass(frozen=True)
class Budget:
    """Seconds from `started` (time.time(), so that a child process shares the deadline)."""

    total_s: float
    started: float

    @property
    def deadline(self) -> float:
        return self.started + self.total_s

    def left(self, now: float | None = None) -> float:
        return self.deadline - (time.time() if now is None else now)

    def check(self, need_s: float, what: str, now: float | None = None) -> str | None:
        """None when `need_s` more seconds fit before the deadline, else the note that `what` was skipped."""
        left = self.left(now)
        if need_s <= left:
            return None
        return (f"{OVER_BUDGET} ({what} needs ~{need_s:.0f} s, {max(left, 0.0):.0f} s left of "
                f"{self.total_s:.0f} s)")


def next_shape_need(first_image_s: float, seconds_per_image: float | None, batch: int) -> float:
    """Seconds to compile and time a new batch size in `best`: its compile, estimated by the first
    image's apply + compile + image (an over-estimate by one image), and `batch` images at the speed
    measured at batch 1 (else at the first image's, compile included)."""
    return first_image_s + batch * (seconds_per_image if seconds_per_image is not None else first_image_s)


def empty_cell(status: str = "not run") -> dict[str, Any]:
    return {**dict.fromkeys(CELL_KEYS), "status": status}


def quick_label(key: str, compile_mode: str) -> str:
    return {"bare": "bare diffusers, eager", "default": "imagend, every option off",
            "best": f"imagend best exact ({compile_mode})"}[key]


def quick_record(args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    """Every key of the JSON the quick mode writes, before anything is measured."""
    batches = [str(b) for b in args.batch_sizes]
    return {
        "schema": QUICK_SCHEMA,
        "dry_run": bool(args.dry_run),
        "argv": sys.argv[1:],
        "settings": {"side": args.side, "steps": args.steps, "batches": list(args.batch_sizes),
                     "images": args.images, "compile_mode": args.compile_mode,
                     "dtype": "float32" if args.dry_run else "float16", "budget_s": budget.total_s},
        "environment": {},
        "build": {"seconds": None, "parameters": {}, "full_size_parameters": {}},
        "contenders": {
            key: {"label": quick_label(key, args.compile_mode), "applied": [],
                  "batches": {b: empty_cell() for b in batches}}
            for key in QUICK_KEYS
        },
        "ratios": {key: dict.fromkeys(batches) for key in QUICK_KEYS if key != "bare"},
        "first_image": {**dict.fromkeys(FIRST_IMAGE_KEYS), "status": "not run", "compile_cache": "empty",
                        "applied": []},
        "skipped": [],
        "phases": {},
        "total_s": None,
        "within_budget": None,
    }


def fill_ratios(record: dict[str, Any]) -> None:
    """imagend's images/s over bare diffusers' at the same batch size, where both were measured."""
    bare = record["contenders"]["bare"]["batches"]
    for key, ratios in record["ratios"].items():
        for batch in ratios:
            mine, theirs = record["contenders"][key]["batches"][batch], bare[batch]
            if mine["images_per_s"] and theirs["images_per_s"]:
                ratios[batch] = mine["images_per_s"] / theirs["images_per_s"]


def write_record(record: dict[str, Any], path: Path | None) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    partial.replace(path)


def source_digest(package: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def quick_environment(device: str) -> dict[str, Any]:
    import importlib.metadata
    import platform

    import torch

    import imagend

    versions: dict[str, str | None] = {}
    for name in ("torch", "diffusers", "transformers", "compel", "peft", "accelerate", "huggingface-hub",
                 "tokenizers", "numpy", "imagend"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    installed = Path(imagend.__file__).resolve().parent
    checkout = Path(__file__).resolve().parents[1] / "imagend"
    manifest = checkout.parent / ".gpu-wheels" / "manifest.json"
    on_cuda = device.startswith("cuda")
    return {
        "python": platform.python_version(),
        "versions": versions,
        "imagend_file": str(installed),
        # The wheel built by bench/gpu_wheels.py against the checkout it travels with: False means stale.
        "imagend_matches_checkout": (installed == checkout or source_digest(installed) == source_digest(checkout))
        if checkout.is_dir() else None,
        "wheels_commit": json.loads(manifest.read_text()).get("commit") if manifest.is_file() else None,
        "device": torch.cuda.get_device_name() if on_cuda else "cpu",
        "gpu_memory_bytes": torch.cuda.get_device_properties(0).total_memory if on_cuda else None,
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
    }


def measure_cell(runner: Runner, batch: int, images: int, budget: Budget, device: str, warmups: int) -> dict[str, Any]:
    """Warm up at `batch` (`warmups` calls of WARMUP_STEPS steps), then time calls of `batch` images until
    `images` are made, each call only if the budget holds it (estimated from the warm-up, then from the
    calls before)."""
    import torch

    note = budget.check(0.0, f"the batch-{batch} warm-up")
    if note:
        return empty_cell(note)
    started = time.perf_counter()
    for _ in range(warmups):
        runner.make(batch, batch, WARMUP_STEPS)
    synchronize(device)
    warmup_s = time.perf_counter() - started
    # A warm-up's fixed costs (text encoders, VAE decode) scaled with its steps: an over-estimate.
    estimate = warmup_s / warmups * max(runner.steps, WARMUP_STEPS) / WARMUP_STEPS
    calls = max(1, -(-images // batch))
    on_cuda = device.startswith("cuda")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds, done, note = 0.0, 0, None
    for _ in range(calls):
        note = budget.check(seconds / done if done else estimate, f"a batch-{batch} call")
        if note:
            break
        synchronize(device)
        started = time.perf_counter()
        runner.make(batch, batch, runner.steps)
        synchronize(device)
        seconds += time.perf_counter() - started
        done += 1
    cell = empty_cell(note or "ok")
    cell["warmup_s"] = warmup_s
    if done:
        made = done * batch
        cell.update(status="ok" if done == calls else f"ok, {done} of {calls} calls: {note}", calls=done, images=made,
                    seconds=seconds, seconds_per_image=seconds / made, images_per_s=made / seconds,
                    peak_vram_bytes=torch.cuda.max_memory_allocated() if on_cuda else None)
    return cell


def quick_eager(key: str, pristine: Any, args: argparse.Namespace, device: str, workdir: Path, budget: Budget,
                record: dict[str, Any], save: Callable[[], None]) -> None:
    import torch

    from imagend.backends.local.speed.apply import apply_speed

    contender = record["contenders"][key]
    note = budget.check(0.0, key)
    if note:
        contender["batches"] = {b: empty_cell(note) for b in contender["batches"]}
        return
    pipe = fresh_copy(pristine, torch.float16 if device.startswith("cuda") else torch.float32)
    if key == "bare":
        runner = bare_runner(pipe, args.side, args.steps)
    else:
        contender["applied"] = apply_speed(pipe, speed_settings({}, workdir, args.dry_run), device)
        backend = imagend_backend(pipe, device, max(args.batch_sizes), args.side, args.steps, workdir)
        runner = imagend_runner(backend, args.side, args.steps, None)
    for batch in args.batch_sizes:
        contender["batches"][str(batch)] = cell = measure_cell(runner, batch, args.images, budget, device, warmups=1)
        save()
        print(f"  {key} batch {batch}: {cell_text(cell, batch)}", flush=True)


def cell_text(cell: dict[str, Any], batch: int) -> str:
    if cell["images_per_s"] is None:
        return str(cell["status"])
    text = f"{cell['seconds_per_image']:.3f} s/img" if batch == 1 else f"{cell['images_per_s']:.3f} img/s"
    return text + f" ({cell['images']} images, warm-up {cell['warmup_s']:.1f} s)"


def quick_best_child(args: argparse.Namespace) -> int:
    """In a fresh process: build, apply `best` with an empty compile cache, make the first image (the
    cold start); then time batch 1, and compile and time each other batch size the budget holds. Each
    figure is printed as a line (QUICK_EVENT + JSON) the moment it is known."""
    import torch

    from imagend.backends.local.speed.apply import apply_speed

    def emit(**fields: Any) -> None:
        print(QUICK_EVENT + json.dumps(fields), flush=True)

    quiet()
    spawned = args.spawned_at
    imported = time.time()
    budget = Budget(args.deadline - spawned, spawned)
    workdir = Path(args.quick_best_child)
    device = "cpu" if args.dry_run else "cuda"
    if args.dry_run:
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline.from_pretrained(str(workdir / "tiny"), dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
    else:
        pipe = build_sdxl(workdir / "child-tokenizer", device, torch.float16)
    built = time.time()
    best = next(c for c in contenders(args.compile_mode) if c.key == "best")
    cache = workdir / "quick-compile-cache"  # new: nothing compiled before, as on a fresh host
    applied = apply_speed(pipe, speed_settings({**best.env, "IMAGEND_COMPILE_CACHE_DIR": str(cache)}, workdir,
                                               args.dry_run), device)
    emit(event="applied", applied=applied)
    backend = imagend_backend(pipe, device, max(args.batch_sizes), args.side, args.steps, workdir)
    backend.generate(requests(backend, 1, args.side, args.steps, None), no_heartbeat)
    synchronize(device)
    done = time.time()
    emit(event="first_image", import_s=imported - spawned, build_s=built - imported,
         apply_and_first_image_s=done - built, process_s=done - spawned)
    runner = imagend_runner(backend, args.side, args.steps, None)
    compiled, per_image = {1}, None
    for batch in args.batch_sizes:
        if batch not in compiled:
            note = budget.check(next_shape_need(done - built, per_image, batch), f"compiling and timing batch {batch}")
            if note:
                emit(event="cell", batch=batch, cell=empty_cell(note))
                continue
        cell = measure_cell(runner, batch, args.images, budget, device, warmups=2)
        compiled.add(batch)
        if cell["seconds_per_image"] is not None and per_image is None:
            per_image = cell["seconds_per_image"]
        emit(event="cell", batch=batch, cell=cell)
    return 0


def quick_best(args: argparse.Namespace, workdir: Path, budget: Budget, record: dict[str, Any],
               save: Callable[[], None]) -> None:
    """The child above, stopped at the deadline; its figures into `record` as they come."""
    contender, first = record["contenders"]["best"], record["first_image"]
    note = budget.check(0.0, "best and the first image after start")
    if note:
        contender["batches"] = {b: empty_cell(note) for b in contender["batches"]}
        first["status"] = note
        return
    spawned = time.time()
    command = [sys.executable, str(Path(__file__).resolve()), "--quick-best-child", str(workdir),
               "--spawned-at", repr(spawned), "--deadline", repr(budget.deadline - QUICK_WRAP_UP_S),
               "--side", str(args.side),
               "--steps", str(args.steps), "--batches", ",".join(map(str, args.batch_sizes)),
               "--images", str(args.images), "--compile-mode", args.compile_mode]
    if args.dry_run:
        command.append("--dry-run")
    # The child's own compile cache, empty: none inherited from this shell.
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    out_path, err_path = workdir / "best-child.out", workdir / "best-child.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        child = subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True)
        try:
            returncode: int | None = child.wait(timeout=max(budget.left() - QUICK_WRAP_UP_S, 1.0))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            returncode = None
    for line in out_path.read_text().splitlines():
        if not line.startswith(QUICK_EVENT):
            continue
        event = json.loads(line[len(QUICK_EVENT):])
        if event["event"] == "applied":
            contender["applied"] = first["applied"] = event["applied"]
        elif event["event"] == "first_image":
            first.update({k: v for k, v in event.items() if k != "event"}, status="ok")
        elif event["event"] == "cell":
            contender["batches"][str(event["batch"])] = event["cell"]
    ran = time.time() - spawned
    if returncode is None:
        why = f"{OVER_BUDGET} (the child was stopped at the deadline, {ran:.0f} s after its start)"
    elif returncode:
        lines = err_path.read_text().strip().splitlines()
        why = f"failed: exit {returncode}: {lines[-1] if lines else 'no message'}"
        print(f"  best: the child failed, exit {returncode}:\n" + "\n".join(lines[-40:]), flush=True)
    else:
        why = "not run"
    if first["status"] == "not run":
        first["status"] = why
    for batch, cell in contender["batches"].items():
        if cell["status"] == "not run":
            contender["batches"][batch] = empty_cell(why)
    save()


def run_quick(args: argparse.Namespace) -> int:
    import torch

    budget = Budget(args.budget, PROCESS_STARTED)
    path = Path(args.json) if args.json else (Path(os.environ["OUT"]) / "gpu_quick.json" if os.environ.get("OUT")
                                               else None)
    quiet()
    if args.dry_run:
        args.side, args.steps = 64, 2
    record = quick_record(args, budget)
    device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run and not torch.cuda.is_available():
        record["skipped"].append("everything: no CUDA device (torch.cuda.is_available() is False)")
        write_record(record, path)
        print("bench/gpu_sdxl.py --quick: no CUDA device; nothing measured. Try --dry-run.")
        return 1
    record["environment"] = quick_environment(device)

    def save() -> None:
        record["total_s"] = time.time() - PROCESS_STARTED
        write_record(record, path)

    with tempfile.TemporaryDirectory(prefix="imagend-gpu-quick-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        if args.dry_run:
            full = build_sdxl(workdir / "tokenizer", "meta", torch.float16)
            record["build"]["full_size_parameters"] = parameter_counts(full)
            del full
            from diffusers import StableDiffusionXLPipeline

            from imagend.backends.local.miniature.sdxl import write_tiny_model

            pristine = StableDiffusionXLPipeline.from_pretrained(str(write_tiny_model(workdir / "tiny")),
                                                                 dtype=torch.float32)
            pristine.set_progress_bar_config(disable=True)
            record["skipped"] += [
                "the GPU: a dry run, on the CPU with the miniature model at 64x64, 2 steps "
                "(the full-size SDXL built on the meta device for its parameter counts); its figures mean nothing",
                "peak_vram_bytes: no CUDA device",
                "inductor: compile traced by dynamo's eager backend (code generation takes minutes on a small CPU)",
            ]
        else:
            pristine = build_sdxl(workdir / "tokenizer", device, torch.float16)
        record["build"].update(seconds=time.perf_counter() - started, parameters=parameter_counts(pristine))
        record["phases"]["start_and_build_s"] = time.time() - PROCESS_STARTED
        print(f"{record['environment']['device']}: SDXL {'miniature' if args.dry_run else 'architecture'}, "
              f"random weights, built in {record['build']['seconds']:.0f} s; {args.side}x{args.side}, "
              f"{args.steps} steps, batches {args.batch_sizes}; budget {budget.total_s:.0f} s, "
              f"{budget.left():.0f} s left", flush=True)
        save()
        for key in ("bare", "default"):
            started = time.perf_counter()
            quick_eager(key, pristine, args, device, workdir, budget, record, save)
            record["phases"][f"{key}_s"] = time.perf_counter() - started
            release(device)
            save()
        del pristine
        release(device)
        started = time.perf_counter()
        quick_best(args, workdir, budget, record, save)
        record["phases"]["best_s"] = time.perf_counter() - started
    record["skipped"] += sorted({entry for entry in record["contenders"]["best"]["applied"]
                                 if entry.startswith("skipped ")})
    for key, contender in record["contenders"].items():
        record["skipped"] += [f"{key} batch {b}: {c['status']}" for b, c in contender["batches"].items()
                              if c["status"] != "ok"]
    if not str(record["first_image"]["status"]).startswith("ok"):
        record["skipped"].append(f"first image: {record['first_image']['status']}")
    fill_ratios(record)
    save()
    record["within_budget"] = record["total_s"] <= budget.total_s
    save()
    quick_report(record)
    if path is not None:
        print(f"figures: {path}")
    return 0


def quick_report(record: dict[str, Any]) -> None:
    """The side-by-side table: each contender at each batch size, and imagend / bare."""
    settings, env = record["settings"], record["environment"]
    batches = [str(b) for b in settings["batches"]]
    print(f"\nSDXL {settings['side']}x{settings['side']}, {settings['steps']} steps, {settings['dtype']}, "
          f"{env.get('device')}{' (DRY RUN: the figures mean nothing)' if record['dry_run'] else ''}")
    header = f"  {'':44}" + "".join(f" {'b' + b + ' s/img':>10} {'img/s':>7} {'x bare':>6}" for b in batches)
    print(header + f" {'peak VRAM':>9}")
    notes = []
    for key, contender in record["contenders"].items():
        line = f"  {contender['label'][:44]:44}"
        peaks = []
        for b in batches:
            cell = contender["batches"][b]
            if cell["images_per_s"] is None:
                notes.append(f"  {key} batch {b}: {cell['status']}")
                line += f" {'-':>10} {'-':>7} {'-':>6}"
                continue
            ratio = 1.0 if key == "bare" else record["ratios"][key][b]
            line += (f" {cell['seconds_per_image']:10.3f} {cell['images_per_s']:7.3f} "
                     f"{(f'{ratio:.2f}' if ratio else '-'):>6}")
            if cell["peak_vram_bytes"]:
                peaks.append(cell["peak_vram_bytes"])
        print(line + (f" {max(peaks) / 2**30:8.1f}G" if peaks else f" {'-':>9}"))
    first = record["first_image"]
    if first["process_s"] is not None:
        print(f"  first image after start, best, empty compile cache: {first['process_s']:.1f} s "
              f"(import {first['import_s']:.1f} s, build {first['build_s']:.1f} s, apply + compile + first image "
              f"{first['apply_and_first_image_s']:.1f} s; random weights: no checkpoint read)")
    else:
        notes.append(f"  first image after start: {first['status']}")
    if notes:
        print("\n".join(["not measured:", *notes]))
    print(f"x bare: imagend's images/s over bare diffusers' at the same batch size. "
          f"{record['total_s']:.0f} s in all of a {settings['budget_s']:.0f} s budget")


# -- the report ----------------------------------------------------------------------------------------


def report(results: list[Result], batches: list[int], title: str) -> None:
    bare = {r.batch: r.rate for r in results if r.key.endswith("bare")}
    one = bare.get(1)
    print(f"\n{title}: ratios to bare diffusers at the same batch size (x) and to bare at batch 1 (x1)")
    header = f"  {'':52}"
    for batch in batches:
        header += f" {'b1 s/img' if batch == 1 else f'b{batch} img/s':>10} {'x':>5} {'x1':>5}"
    print(header + f" {'peak VRAM':>9}")
    by_key: dict[str, list[Result]] = {}
    for r in results:
        by_key.setdefault(r.key, []).append(r)
    for rows in by_key.values():
        line = f"  {rows[0].label[:52]:52}"
        cells = {r.batch: r for r in rows}
        for batch in batches:
            r = cells.get(batch)
            if r is None:
                line += f" {'':>10} {'':>5} {'':>5}"
                continue
            value = r.seconds / r.images if batch == 1 else r.rate
            same = r.rate / bare[batch] if batch in bare else float("nan")
            first = r.rate / one if one else float("nan")
            line += f" {value:10.3f} {same:5.2f} {first:5.2f}"
        peak = max(r.peak_bytes for r in rows)
        print(line + f" {peak / 2**30:8.1f}G")


def quiet() -> None:
    """No progress bars, no per-batch log lines, no diffusers notes on casting copies."""
    import logging

    import structlog

    from imagend.backends.local.pipelines import quiet_libraries

    quiet_libraries()
    importlib.import_module("diffusers.utils.logging").set_verbosity_error()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def parse_batches(text: str) -> list[int]:
    return sorted({int(part) for part in text.split(",") if part.strip()})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--quick", action="store_true",
                   help="bare, default and best at batch 1 and 4, and the first image after start, within --budget "
                   "seconds (one call on a lent GPU; docs/gpu_speed.md)")
    p.add_argument("--json", default=None,
                   help="--quick: write the figures here as JSON (default $OUT/gpu_quick.json when OUT is set)")
    p.add_argument("--budget", type=float, default=QUICK_BUDGET_S,
                   help="--quick: seconds from the process's start; what would not fit is recorded skipped")
    p.add_argument("--images", type=int, default=None,
                   help=f"images per measurement (at least one call; default 16, --quick {QUICK_IMAGES})")
    p.add_argument("--batch", type=int, default=None, help="(older flag) measure batch 1 and this one")
    p.add_argument("--batches", default=None,
                   help=f"batch sizes to measure, comma-separated (default 1,4,8; --quick {QUICK_BATCHES})")
    p.add_argument("--side", type=int, default=1024)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--no-compile", action="store_true", help="skip every contender that compiles")
    p.add_argument("--compile-mode", default="max-autotune", help="the mode of `best` and FLUX's compile")
    p.add_argument("--only", default="", help="contender keys, comma-separated (see --list)")
    p.add_argument("--list", action="store_true", help="print the contenders and exit")
    p.add_argument("--skip-flux", action="store_true")
    p.add_argument("--skip-first-image", action="store_true")
    p.add_argument("--flux-steps", type=int, default=4)
    p.add_argument("--flux-batches", default="1,4")
    p.add_argument("--first-image-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--quick-best-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--spawned-at", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="no GPU: build the real configs on the meta device, then run every contender on the CPU "
        "with the miniature models at 64x64 (FLUX 32x32), 2 steps; compiles trace with dynamo's eager backend",
    )
    args = p.parse_args()
    if args.list:
        for contender in contenders(args.compile_mode):
            print(f"{contender.key:22} {contender.label}  {contender.env or ''}")
        print(f"{'flux_bare, flux_default, flux_best':22} FLUX.1-schnell, {args.flux_steps} steps (--skip-flux)")
        return 0
    args.only = {key.strip() for key in args.only.split(",") if key.strip()}
    quick = args.quick or args.quick_best_child
    if args.json and not args.quick:
        p.error("--json goes with --quick")
    if args.images is None:
        args.images = QUICK_IMAGES if quick else 16
    batches = args.batches or (QUICK_BATCHES if quick else "1,4,8")
    args.batch_sizes = sorted({1, args.batch}) if args.batch else parse_batches(batches)
    args.flux_batch_sizes = parse_batches(args.flux_batches)
    if args.quick_best_child:
        return quick_best_child(args)
    if args.quick:
        return run_quick(args)
    if args.first_image_child:
        if args.dry_run:
            args.side, args.steps = 64, 2
        return first_image_child(args)

    import torch

    quiet()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="imagend-gpu-bench-") as tmp:
        workdir = Path(tmp)
        if args.dry_run:
            counts = parameter_counts(build_sdxl(workdir / "tokenizer", "meta", torch.float16))
            print("SDXL architecture (meta device, no memory):",
                  ", ".join(f"{k} {v / 1e6:,.0f}M" for k, v in counts.items()))
            with torch.device("meta"):
                from diffusers import FluxTransformer2DModel

                flux = sum(p.numel() for p in FluxTransformer2DModel(**FLUX_TRANSFORMER).parameters())
            print(f"FLUX.1-schnell transformer (meta device): {flux / 1e9:.2f}B parameters")
            from diffusers import StableDiffusionXLPipeline

            from imagend.backends.local.miniature.extras import write_tiny_lora
            from imagend.backends.local.miniature.sdxl import write_tiny_model

            tiny = write_tiny_model(workdir / "tiny")
            pristine = StableDiffusionXLPipeline.from_pretrained(str(tiny), dtype=torch.float32)
            pristine.set_progress_bar_config(disable=True)
            lora = write_tiny_lora(workdir / "fast_4step_lora.safetensors", tiny, format="diffusers", seed=1)
            args.side, args.steps, args.images = 64, 2, 2
            args.batch_sizes, args.flux_batch_sizes = [1, 2], [1]
            device = "cpu"
            print("dry run: the miniature random-weights models on the CPU, 64x64, 2 steps (figures mean nothing)")
        else:
            if not torch.cuda.is_available():
                print(
                    "bench/gpu_sdxl.py: no CUDA device (torch.cuda.is_available() is False); nothing to measure. "
                    "Run it on a host with an NVIDIA GPU and a CUDA build of torch, or try --dry-run."
                )
                return 0
            device = "cuda"
            started = time.perf_counter()
            pristine = build_sdxl(workdir / "tokenizer", device, torch.float16)
            counts = parameter_counts(pristine)
            print(
                f"{torch.cuda.get_device_name()}: SDXL architecture, random weights, fp16, built in "
                f"{time.perf_counter() - started:.0f} s ("
                + ", ".join(f"{k} {v / 1e6:,.0f}M" for k, v in counts.items())
                + f"); {args.images} images per measurement, {args.side}x{args.side}, {args.steps} steps, "
                f"batches {args.batch_sizes}",
                flush=True,
            )
            lora = write_random_lora(pristine.unet, workdir / "random_lora.safetensors")
        results = run_sdxl(args, device, pristine, workdir, lora)
        del pristine
        release(device)
        flux = [] if args.skip_flux or (args.only and not any(k.startswith("flux") for k in args.only)) else (
            run_flux(args, device, workdir))
        firsts = [] if args.skip_first_image else first_image(args, workdir)
    report(results, args.batch_sizes, f"SDXL {args.side}x{args.side}, {args.steps} steps")
    if flux:
        report(flux, args.flux_batch_sizes, f"FLUX.1-schnell {args.side if not args.dry_run else 32}px, "
               f"{args.flux_steps} steps")
    for name, times, wall in firsts:
        print(f"\nfirst image after start, best exact, {name}: {wall:.1f} s for the process "
              f"(import {times['import_s']:.1f} s, build {times['build_s']:.1f} s, apply + compile + first image "
              f"{times['apply_and_first_image_s']:.1f} s; random weights: no checkpoint read)")
    print(f"\nbench/gpu_sdxl.py: {time.perf_counter() - began:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
