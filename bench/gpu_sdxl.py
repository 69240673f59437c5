"""GPU benchmark: the full-size SDXL architecture with random weights, imagend's local
backend against bare diffusers on the same GPU in one run.

    .venv/bin/python bench/gpu_sdxl.py [--images 8] [--batch 4] [--side 1024] [--steps 30]
    .venv/bin/python bench/gpu_sdxl.py --dry-run     # no GPU: check the configs and the code path on CPU

No download: the UNet, VAE and both text encoders are built from SDXL base 1.0's
published component configs (written out below) with random weights, in fp16, and the
tokenizers are imagend's byte-level ones. Images are noise; the compute is SDXL's.

Contenders, each making --images images of --side x --side at --steps steps:
  1. bare diffusers, batch 1: pipe(prompt=..., generator=CPU generator) per image;
  2. imagend batch 1: LocalBackend.generate([row]) (compel, device lock, step callback, PNG);
  3. imagend batched: --batch rows per generate call;
  4. imagend batched + torch.compile of the UNet (warmed up before the clock starts).
For each: images/s, the ratio to (1), and peak VRAM (torch.cuda.max_memory_allocated).
The database is not in this benchmark (bench/local_overhead.py measures the daemon's
cost per row); this one measures what the backend adds or saves on a real GPU.
Targets (issue 4): imagend >= 1.0x bare at batch 1, >= 1.3x with batching and compile.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
# Under 75 characters: one 77-token chunk with the byte-level tokenizer, as with SDXL's for ordinary
# prompts, so bare diffusers (which truncates at 77) and compel encode the same amount of text.
PROMPT = "an astronaut riding a horse on the moon, dramatic light, {i}"


def build_sdxl(tokenizer_dir: Path, device: str, dtype: Any) -> Any:
    """SDXL base's architecture with random weights, created directly on `device`."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from imagend.testing.tiny_model import write_tokenizer

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


def parameter_counts(pipe: Any) -> dict[str, int]:
    return {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("unet", "vae", "text_encoder", "text_encoder_2")
    }


@dataclasses.dataclass
class Result:
    name: str
    images: int
    seconds: float
    peak_bytes: int

    @property
    def rate(self) -> float:
        return self.images / self.seconds


def measure(name: str, images: int, body: Callable[[], None], device: str) -> Result:
    import torch

    on_cuda = device.startswith("cuda")
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    body()
    if on_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() if on_cuda else 0
    return Result(name, images, seconds, peak)


def imagend_backend(pipe: Any, device: str, batch: int, side: int, steps: int, lock_dir: Path) -> Any:
    from imagend.backends.local import LocalBackend
    from imagend.backends.local.options import LocalSettings
    from imagend.config import load_settings

    settings = load_settings(
        environ={
            "IMAGEND_MODEL": "sdxl-architecture-random-weights",
            "IMAGEND_DEVICE": device,
            "IMAGEND_VAE": "model",
            "IMAGEND_LOCK_DIR": str(lock_dir),
            "IMAGEND_MAX_BATCH": str(batch),
            "IMAGEND_DEFAULT_STEPS": str(steps),
            "DEFAULT_IMAGE_WIDTH": str(side),
            "DEFAULT_IMAGE_HEIGHT": str(side),
            "IMAGEND_DATA_DIR": str(lock_dir),
        },
        env_file=None,
    )
    options = LocalSettings.from_settings(settings, cuda_available=device.startswith("cuda"))
    return LocalBackend(options, pipe, max_batch=batch)


def run(args: argparse.Namespace, device: str, pipe: Any, workdir: Path) -> list[Result]:
    import torch

    from imagend.backends.base import Request
    from imagend.backends.local.sdxl import compile_unet

    side, steps, n = args.side, args.steps, args.images

    def bare() -> None:
        for i in range(n):
            generator = torch.Generator("cpu").manual_seed(i)
            pipe(prompt=PROMPT.format(i=i), width=side, height=side, num_inference_steps=steps, generator=generator)

    def rows(backend: Any) -> list[Any]:
        return [
            backend.validate(
                Request(
                    id=i,
                    prompt=PROMPT.format(i=i),
                    negative_prompt=None,
                    style=None,
                    width=side,
                    height=side,
                    seed=i,
                    steps=steps,
                    guidance=None,
                    scheduler=None,
                )
            )
            for i in range(n)
        ]

    def through(backend: Any) -> Callable[[], None]:
        def body() -> None:
            batch = rows(backend)
            for start in range(0, n, backend.max_batch):
                backend.generate(batch[start : start + backend.max_batch], lambda progress=None, preview=None: None)

        return body

    one = imagend_backend(pipe, device, 1, side, steps, workdir)
    batched = imagend_backend(pipe, device, args.batch, side, steps, workdir)
    print("  warming up (one image each way)", flush=True)
    pipe(prompt="warm-up", width=side, height=side, num_inference_steps=2)
    one.generate([rows(one)[0]], lambda progress=None, preview=None: None)
    results = [
        measure("bare diffusers, batch 1", n, bare, device),
        measure("imagend, batch 1", n, through(one), device),
        measure(f"imagend, batch {args.batch}", n, through(batched), device),
    ]
    if not args.no_compile:
        compile_unet(pipe, args.compile_mode)
        started = time.perf_counter()
        batched.warm_up()
        print(f"  torch.compile warm-up: {time.perf_counter() - started:.0f} s", flush=True)
        results.append(measure(f"imagend, batch {args.batch} + compile", n, through(batched), device))
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--side", type=int, default=1024)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--compile-mode", default="default")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="no GPU: build the configs on the meta device, then "
        "run every contender on the CPU with the miniature model at 64x64, 2 steps",
    )
    args = p.parse_args()

    import torch

    from imagend.backends.local.sdxl import quiet_libraries

    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="imagend-gpu-bench-") as tmp:
        workdir = Path(tmp)
        if args.dry_run:
            counts = parameter_counts(build_sdxl(workdir / "tokenizer", "meta", torch.float16))
            print(
                "SDXL architecture (meta device, no memory):",
                ", ".join(f"{k} {v / 1e6:,.0f}M" for k, v in counts.items()),
            )
            from diffusers import StableDiffusionXLPipeline

            from imagend.testing.tiny_model import write_tiny_model

            pipe = StableDiffusionXLPipeline.from_pretrained(
                str(write_tiny_model(workdir / "tiny")), dtype=torch.float32
            )
            pipe.set_progress_bar_config(disable=True)
            args.side, args.steps, args.images, args.batch = 64, 2, 4, 2
            device = "cpu"
            print("dry run: the miniature random-weights model on the CPU, 64x64, 2 steps (figures mean nothing)")
        else:
            if not torch.cuda.is_available():
                print(
                    "bench/gpu_sdxl.py: no CUDA device (torch.cuda.is_available() is False); nothing to measure. "
                    "Run it on a host with an NVIDIA GPU and a CUDA build of torch, or try --dry-run."
                )
                return 0
            device = "cuda"
            started = time.perf_counter()
            pipe = build_sdxl(workdir / "tokenizer", device, torch.float16)
            counts = parameter_counts(pipe)
            print(
                f"{torch.cuda.get_device_name()}: SDXL architecture, random weights, fp16, built in "
                f"{time.perf_counter() - started:.0f} s ("
                + ", ".join(f"{k} {v / 1e6:,.0f}M" for k, v in counts.items())
                + f"); {args.images} images of {args.side}x{args.side}, {args.steps} steps"
            )
        results = run(args, device, pipe, workdir)
    base = results[0].rate
    print(f"  {'':34} {'images/s':>9} {'vs bare':>8} {'peak VRAM':>10}")
    for r in results:
        print(f"  {r.name:34} {r.rate:9.3f} {r.rate / base:8.2f} {r.peak_bytes / 2**30:9.1f}G")
    return 0


if __name__ == "__main__":
    sys.exit(main())
