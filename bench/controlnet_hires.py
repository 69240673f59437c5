"""ControlNet and hires fix overhead, CPU, miniature models (random weights: they make noise): rows through
`imagend -cron` against a bare script that does the same with diffusers, in the same run.

    .venv/bin/python bench/controlnet_hires.py [--rows 16] [--side 128] [--steps 4] [--rounds 3]

Three kinds of row, each `--rows` of them, `--side` px, `--steps` steps, one image per pipeline call:
- plain: text-to-image (the baseline both sides share);
- controlnet: one canny control (a base64 PNG in the row): decoded, edges drawn (imagend/images/canny.py,
  which the bare script calls too), StableDiffusionXLControlNetPipeline at conditioning scale 0.8;
- hires: the hires fix, x2 latent, the second pass at strength 0.5 over --steps steps (the bare script:
  output_type="latent", bilinear interpolation, StableDiffusionXLImg2ImgPipeline).
The bare script encodes prompts with compel's CompelForSDXL, as imagend does, builds its ControlNet and
image-to-image pipelines once (from_pipe), and encodes each PNG. imagend: one `imagend -cron` daemon
(IMAGEND_MAX_BATCH=1), models loaded and each kind run once before the clock; a kind's time is its rows'
first created_at to last finished_at (Postgres' clock), so claims, validation, progress writes, PNG metadata
and the finishing UPDATE are inside it, and so is imagend's from_pipe per ControlNet batch. Each figure is
the median of --rounds rounds, interleaved; the bare script runs in its own process. Both sides run torch on
one thread (OMP_NUM_THREADS=1, unless set): on a shared machine two threads that wait for each other at every
operator made the figures swing tenfold from one run to the next.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from imagend.db.connect import apply_schema

from _common import daemon, fresh_database, parser, postgres, wait_until

KINDS = ("plain", "controlnet", "hires")
CONTROL_SCALE = 0.8
HR_SCALE, HR_STRENGTH = 2, 0.5


def control_png(side: int) -> str:
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (side, side), "black")
    ImageDraw.Draw(picture).ellipse((side // 6, side // 6, side * 5 // 6, side * 5 // 6), fill="white")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def bare(model: Path, controlnet: Path, rows: int, side: int, steps: int) -> dict[str, float]:
    """Images per second of each kind, diffusers alone (plus compel and the same canny)."""
    import torch
    from compel import CompelForSDXL
    from diffusers import (
        ControlNetModel,
        StableDiffusionXLControlNetPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    from imagend.images.canny import canny
    from imagend.images.inputs import decode_base64_image

    pipe = StableDiffusionXLPipeline.from_pretrained(str(model), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.enable_slicing()
    net = ControlNetModel.from_pretrained(str(controlnet), dtype=torch.float32)
    with_control = StableDiffusionXLControlNetPipeline.from_pipe(pipe, controlnet=net)
    with_control.set_progress_bar_config(disable=True)
    img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    compel = CompelForSDXL(pipe)
    control = control_png(side)

    def one(kind: str, i: int, steps: int) -> None:
        c = compel(main_prompt=f"bench prompt {i}")
        embeds = {"prompt_embeds": c.embeds, "pooled_prompt_embeds": c.pooled_embeds}
        generator = torch.Generator("cpu").manual_seed(i)
        if kind == "controlnet":
            edges = canny(decode_base64_image(control, "control"))
            image = with_control(**embeds, image=edges, controlnet_conditioning_scale=CONTROL_SCALE, width=side,
                                 height=side, num_inference_steps=steps, generator=generator).images[0]
        elif kind == "hires":
            latents = pipe(**embeds, width=side, height=side, num_inference_steps=steps, generator=generator,
                           output_type="latent").images
            big = torch.nn.functional.interpolate(latents, scale_factor=HR_SCALE, mode="bilinear", antialias=False)
            image = img2img(**embeds, image=big, strength=HR_STRENGTH, num_inference_steps=steps,
                            generator=torch.Generator("cpu").manual_seed(i)).images[0]
        else:
            image = pipe(**embeds, width=side, height=side, num_inference_steps=steps, generator=generator).images[0]
        image.save(io.BytesIO(), format="PNG")

    rates = {}
    for kind in KINDS:
        one(kind, 0, 2)
        started = time.perf_counter()
        for i in range(rows):
            one(kind, i, steps)
        rates[kind] = rows / (time.perf_counter() - started)
    return rates


def bare_in_subprocess(model: Path, controlnet: Path, rows: int, side: int, steps: int) -> dict[str, float]:
    args = [sys.executable, __file__, "--bare-only", "--model", str(model), "--controlnet", str(controlnet),
            "--rows", str(rows), "--side", str(side), "--steps", str(steps)]
    out = subprocess.run(args, check=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    rates: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return rates


def columns(kind: str, side: int, steps: int) -> dict[str, Any]:
    row: dict[str, Any] = {"width": side, "height": side, "steps": steps}
    if kind == "controlnet":
        row["controls"] = json.dumps([{"image": control_png(side), "type": "canny", "strength": CONTROL_SCALE}])
    if kind == "hires":
        row.update(hr_scale=HR_SCALE, hr_strength=HR_STRENGTH, hr_upscaler="latent")
    return row


def through_daemon(conn: psycopg.Connection[Any], kind: str, rows: int, side: int, steps: int, tag: str) -> float:
    """Images per second of `rows` rows of `kind`, inserted in one statement, drained by the daemon."""
    row = columns(kind, side, steps)
    conn.execute(
        "INSERT INTO images (prompt, width, height, steps, seed, controls, hr_scale, hr_strength, hr_upscaler, params) "
        "SELECT 'bench prompt ' || g, %s, %s, %s, g, %s::jsonb, %s, %s, %s, jsonb_build_object('tag', %s::text) "
        "FROM generate_series(0, %s - 1) g",
        [row["width"], row["height"], row["steps"], row.get("controls"), row.get("hr_scale"), row.get("hr_strength"),
         row.get("hr_upscaler"), tag, rows],
    )

    def drained() -> bool:
        done = conn.execute("SELECT count(*) FROM images WHERE params->>'tag' = %s "
                            "AND status IN ('ReadyToPublish', 'Failed')", [tag]).fetchone()
        return done is not None and done[0] == rows

    wait_until(drained, timeout=900, interval=0.05)
    failed = conn.execute("SELECT count(*), max(error) FROM images WHERE params->>'tag' = %s AND status = 'Failed'",
                          [tag]).fetchone()
    if failed and failed[0]:
        raise RuntimeError(f"{failed[0]} {kind} rows failed: {failed[1]}")
    span = conn.execute("SELECT extract(epoch FROM max(finished_at) - min(created_at)) FROM images "
                        "WHERE params->>'tag' = %s", [tag]).fetchone()
    assert span is not None
    return rows / float(span[0])


def main() -> None:
    p = parser(__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--side", type=int, default=128)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bare-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--controlnet", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the bare script and the daemon
    if args.bare_only:
        print(json.dumps(bare(args.model, args.controlnet, args.rows, args.side, args.steps)))
        return

    from imagend.backends.local.miniature.controlnet import write_tiny_controlnet
    from imagend.backends.local.miniature.sdxl import write_tiny_model

    with tempfile.TemporaryDirectory(prefix="imagend-bench-cn-") as tmp, postgres(args.database_url) as server:
        workdir = Path(tmp)
        model = write_tiny_model(workdir / "tiny-sdxl")
        controlnet = write_tiny_controlnet(workdir / "tiny-controlnet", model, seed=5)
        print(f"miniature random-weights SDXL + ControlNet (they make noise); {args.rows} rows of each kind, "
              f"{args.side}x{args.side}, {args.steps} steps, CPU ({os.cpu_count()} cores); median of {args.rounds} "
              f"rounds")
        db = fresh_database(server, "bench_controlnet_hires")
        apply_schema(db)
        env = {"IMAGEND_BACKEND": "local", "IMAGEND_BACKENDS": "local", "IMAGEND_MODEL": str(model),
               "IMAGEND_CONTROLNETS": f"canny={controlnet}", "IMAGEND_MAX_BATCH": "1",
               "IMAGEND_LOCK_DIR": str(workdir / "locks"), "IMAGEND_DATA_DIR": str(workdir / "data"),
               "HF_HUB_OFFLINE": "1"}
        bare_rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
        imagend_rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
        with daemon(db, workdir / "daemon.log", **env), psycopg.connect(db, autocommit=True) as conn:
            for kind in KINDS:  # warm: the ControlNet read, every pipeline made once
                through_daemon(conn, kind, 1, args.side, 2, f"warm-{kind}")
            for round_ in range(args.rounds):
                for kind, rate in bare_in_subprocess(model, controlnet, args.rows, args.side, args.steps).items():
                    bare_rates[kind].append(rate)
                for kind in KINDS:
                    imagend_rates[kind].append(through_daemon(conn, kind, args.rows, args.side, args.steps,
                                                              f"{kind}-{round_}"))
        bare_m = {kind: statistics.median(v) for kind, v in bare_rates.items()}
        imagend_m = {kind: statistics.median(v) for kind, v in imagend_rates.items()}
        print(f"  {'':12} {'bare img/s':>10} {'imagend img/s':>13} {'imagend/bare':>12} "
              f"{'bare vs plain':>13} {'imagend vs plain':>16}   rounds (bare | imagend)")
        for kind in KINDS:
            print(f"  {kind:12} {bare_m[kind]:10.2f} {imagend_m[kind]:13.2f} {imagend_m[kind] / bare_m[kind]:12.2f} "
                  f"{bare_m[kind] / bare_m['plain']:13.2f} {imagend_m[kind] / imagend_m['plain']:16.2f}   "
                  f"{_fmt(bare_rates[kind])} | {_fmt(imagend_rates[kind])}")
        # The ControlNet's and the hires fix's own cost, per image: seconds beyond a plain image's.
        for kind in ("controlnet", "hires"):
            extra_bare = 1 / bare_m[kind] - 1 / bare_m["plain"]
            extra_imagend = 1 / imagend_m[kind] - 1 / imagend_m["plain"]
            print(f"  {kind} adds per image: bare {extra_bare * 1000:.1f} ms, imagend {extra_imagend * 1000:.1f} ms")


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
