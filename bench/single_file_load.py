"""Load time of a single-file SDXL checkpoint against its diffusers folder, on the CPU, through imagend's own
loader (pipelines.load_pipeline: the single file with from_single_file and IMAGEND_SINGLE_FILE_CONFIG, the
folder with from_pretrained), and of the folder `imagend -import-model` writes for the file.

    .venv/bin/python bench/single_file_load.py              # the miniature only: ~1 min
    .venv/bin/python bench/single_file_load.py --full       # and full-size SDXL, random fp16 weights: ~10 min,
                                                            # ~14 GB of disk under --workdir, ~8 GB of RAM

Full size: SDXL base 1.0's published component configs (bench/gpu_sdxl.py) with random weights built in
fp16 component by component, saved as a diffusers folder (6.9 GB), then written back as one A1111-layout
.safetensors file (imagend/backends/local/miniature/single_file.py) and loaded in fp16 (IMAGEND_DTYPE=float16;
fp32 would need 14 GB for one copy). The miniature: imagend's SDXL miniature, fp32.

Each load runs in a fresh process (`--child`), alternating folder / file / imported folder for --rounds
rounds, so no process reuses another's Python state; the files were just written, so the OS page cache is
warm for all three alike (a first read from a cold disk adds the file's size / the disk's speed to each).
Prints each median, the ratio file / folder, and the one-off import (-import-model) time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def build_full_size(folder: Path) -> Path:
    """SDXL base's architecture, random fp16 weights, saved one component at a time (peak ~6 GB: the UNet)."""
    import gc

    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    sys.path.insert(0, str(HERE))
    from gpu_sdxl import SDXL_SCHEDULER, SDXL_TEXT_ENCODER, SDXL_TEXT_ENCODER_2, SDXL_UNET, SDXL_VAE

    from imagend.backends.local.miniature.parts import write_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer", "tokenizer_2"):
        write_tokenizer(folder / name)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.eos_token_id}
    builders = {
        "unet": lambda: UNet2DConditionModel(**SDXL_UNET),
        "vae": lambda: AutoencoderKL(**SDXL_VAE),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**SDXL_TEXT_ENCODER, **special)),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_ENCODER_2, **special)),
    }
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        torch.manual_seed(0)
        for name, build in builders.items():
            model = build()
            model.save_pretrained(folder / name, safe_serialization=True)
            del model
            gc.collect()
    finally:
        torch.set_default_dtype(default)
    EulerDiscreteScheduler(**SDXL_SCHEDULER).save_pretrained(folder / "scheduler")
    index = {
        "_class_name": StableDiffusionXLPipeline.__name__,
        "force_zeros_for_empty_prompt": True,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return folder


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def env_for(model: str, config: Path, data_dir: Path, dtype: str) -> dict[str, str]:
    return {
        "IMAGEND_BACKEND": "local", "IMAGEND_MODEL": model, "IMAGEND_SINGLE_FILE_CONFIG": str(config),
        "IMAGEND_DATA_DIR": str(data_dir), "IMAGEND_DEVICE": "cpu", "IMAGEND_DTYPE": dtype, "IMAGEND_VAE": "model",
        "HF_HUB_OFFLINE": "1",
    }


def child(args: argparse.Namespace) -> int:
    """One load in this process: the seconds load_pipeline takes, as JSON on stdout."""
    import torch

    from imagend.backends.local.options import LocalSettings
    from imagend.backends.local.pipelines import load_pipeline
    from imagend.config.settings import load_settings
    from imagend.logs import configure

    env = json.loads(args.child)
    configure(verbose=False)  # JSON log lines: the parent reads single_file_loaded's `how`
    options = LocalSettings.from_settings(load_settings(environ=env, env_file=None), cuda_available=False)
    # The libraries' modules imported before the clock (both ways import the same ones; diffusers imports
    # a pipeline's modules on first use): what is timed is the load itself.
    import diffusers.loaders.single_file_utils
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    del diffusers, AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    del CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
    started = time.perf_counter()
    pipe = load_pipeline(options)
    seconds = time.perf_counter() - started
    params = sum(p.numel() for name in ("unet", "vae", "text_encoder", "text_encoder_2")
                 for p in getattr(pipe, name).parameters())
    print(json.dumps({"seconds": seconds, "parameters": params, "dtype": str(pipe.unet.dtype),
                      "torch_threads": torch.get_num_threads()}))
    return 0


def load_once(env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(env)], capture_output=True, text=True,
                         check=False, env={**os.environ, **env})
    if out.returncode != 0:
        raise SystemExit(f"a load failed:\n{out.stderr[-3000:]}")
    record: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    record["how"] = next((json.loads(line)["how"] for line in (out.stdout + out.stderr).splitlines()
                          if line.startswith("{") and '"single_file_loaded"' in line), "from_pretrained")
    return record


def measure(label: str, folder: Path, workdir: Path, rounds: int, dtype: str) -> dict[str, Any]:
    from imagend.backends.local.families import SDXL
    from imagend.backends.local.miniature.single_file import write_config_folder, write_single_file
    from imagend.backends.local.options import LocalSettings
    from imagend.backends.local.single_file import import_model
    from imagend.config.settings import load_settings

    started = time.perf_counter()
    file = write_single_file(folder, workdir / f"{label}.safetensors")
    write_seconds = time.perf_counter() - started
    config = write_config_folder(folder, workdir / f"{label}-config")
    plain, imported = workdir / f"{label}-data-plain", workdir / f"{label}-data-imported"
    env = env_for(str(file), config, imported, dtype)
    options = LocalSettings.from_settings(load_settings(environ=env, env_file=None), cuda_available=False)
    _, import_seconds = import_model(str(file), label, SDXL, options)
    contenders = {
        "folder": env_for(str(folder), config, plain, dtype),
        "file": env_for(str(file), config, plain, dtype),
        "imported": env,
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    hows: dict[str, str] = {}
    for _ in range(rounds):
        for name, contender in contenders.items():
            record = load_once(contender)
            times[name].append(record["seconds"])
            hows[name] = record["how"]
            print(f"  {label:<9} {name:<9} {record['seconds']:7.2f} s  ({record['how']}, {record['parameters']:,} "
                  f"parameters, {record['dtype']})", flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "label": label, "dtype": dtype, "rounds": rounds, "file_mb": round(size_mb(file), 1),
        "folder_mb": round(size_mb(folder), 1), "write_file_seconds": round(write_seconds, 2),
        "import_seconds": import_seconds, "seconds": times, "median": medians, "how": hows,
        "file_over_folder": medians["file"] / medians["folder"],
        "imported_over_folder": medians["imported"] / medians["folder"],
    }


def report(results: list[dict[str, Any]]) -> None:
    print()
    print(f"{'model':<10}{'size':>10}{'folder':>10}{'file':>10}{'imported':>10}{'file/folder':>13}"
          f"{'import (once)':>15}")
    for r in results:
        m = r["median"]
        print(f"{r['label']:<10}{r['file_mb']:>8.0f}MB{m['folder']:>9.2f}s{m['file']:>9.2f}s{m['imported']:>9.2f}s"
              f"{r['file_over_folder']:>12.2f}x{r['import_seconds']:>14.1f}s")
    print("(medians of fresh processes; file = from_single_file with IMAGEND_SINGLE_FILE_CONFIG; imported = the "
          "folder -import-model wrote, found by the file's path, size and mtime)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also full-size SDXL (random fp16 weights, ~7 GB)")
    parser.add_argument("--rounds", type=int, default=0, help="loads of each (default 5 miniature, 2 full size)")
    parser.add_argument("--workdir", type=Path, help="where the models are written (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    from imagend.backends.local.miniature.sdxl import write_tiny_model
    from imagend.backends.local.pipelines import quiet_libraries

    quiet_libraries()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="imagend-single-file-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        print("miniature SDXL (fp32):", flush=True)
        tiny = write_tiny_model(workdir / "miniature", clip_g_width=48)
        results.append(measure("miniature", tiny, workdir, args.rounds or 5, "float32"))
        if args.full:
            print("full-size SDXL (random fp16 weights): building ...", flush=True)
            started = time.perf_counter()
            folder = build_full_size(workdir / "sdxl-full")
            print(f"  built and saved in {time.perf_counter() - started:.0f} s ({size_mb(folder):.0f} MB)", flush=True)
            results.append(measure("full-size", folder, workdir, args.rounds or 2, "float16"))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
