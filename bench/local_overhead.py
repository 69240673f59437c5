"""Daemon overhead, CPU, miniature model (random weights: it makes noise): rows through
`imagend -cron` with the local backend against a bare script that calls the same
pipeline, loaded the same way, in the same run.

    .venv/bin/python bench/local_overhead.py [--rows 40] [--side 128] [--steps 4] [--batch 8] [--rounds 3]

- bare diffusers: a script loads the pipeline and calls it once per image (seeded CPU
  generator, diffusers' own 77-token prompt encoding), encoding each PNG.
- bare diffusers + compel: the same with compel's CompelForSDXL encoding the prompt, the
  work imagend does per row (no truncation, weighting). On this miniature model the text
  encoders cost about as much as the UNet, so this is the like-for-like baseline; on a real
  SDXL the prompt is ~1% of an image and the two baselines meet.
- imagend: `imagend -cron` (a subprocess, model loaded before the clock starts) drains
  the rows inserted in one statement; the time is the rows' first created_at to last
  finished_at (Postgres' clock): claims, compel, progress writes, PNG metadata, base64
  into the row and the finishing UPDATE are all inside it. Once with IMAGEND_MAX_BATCH=1,
  once with --batch.

Targets (issue 4): imagend/bare >= 0.95 at batch 1, >= 1.3 with batching. Each figure
is the median of --rounds runs, interleaved; every contender runs in its own process.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

from imagend.db.connect import apply_schema

from _common import daemon, fresh_database, parser, postgres, wait_until


def bare_loop(model: Path, rows: int, side: int, steps: int, compel: bool) -> float:
    """The bare script: load, warm up, then one pipeline call per image and a PNG each."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(model), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.enable_slicing()  # as the backend's default
    encode = None
    if compel:
        from compel import CompelForSDXL

        compel_sdxl = CompelForSDXL(pipe)

        def encode(prompt: str) -> dict[str, torch.Tensor]:
            c = compel_sdxl(main_prompt=prompt)
            return {"prompt_embeds": c.embeds, "pooled_prompt_embeds": c.pooled_embeds}

    def one(i: int, steps: int) -> None:
        prompt = f"bench prompt {i}"
        inputs: dict[str, object] = {"prompt": prompt} if encode is None else encode(prompt)
        generator = torch.Generator("cpu").manual_seed(i)
        image = pipe(**inputs, width=side, height=side, num_inference_steps=steps, generator=generator).images[0]
        image.save(io.BytesIO(), format="PNG")

    one(0, 1)
    started = time.perf_counter()
    for i in range(rows):
        one(i, steps)
    return rows / (time.perf_counter() - started)


def bare_in_subprocess(model: Path, rows: int, side: int, steps: int, compel: bool) -> float:
    """Each measurement in its own process, as the daemon is: no state carried between them."""
    args = [sys.executable, __file__, "--bare-only", "compel" if compel else "plain", "--model", str(model)]
    args += ["--rows", str(rows), "--side", str(side), "--steps", str(steps)]
    out = subprocess.run(args, check=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return float(json.loads(out.stdout.strip().splitlines()[-1])["images_per_second"])


@contextlib.contextmanager
def local_daemon(db: str, model: Path, batch: int, workdir: Path) -> Iterator[Path]:
    log_path = workdir / f"daemon-batch{batch}.log"
    env = {
        "IMAGEND_BACKEND": "local",
        "IMAGEND_BACKENDS": "local",
        "IMAGEND_MODEL": str(model),
        "IMAGEND_MAX_BATCH": str(batch),
        "IMAGEND_LOCK_DIR": str(workdir / "locks"),
        "IMAGEND_DATA_DIR": str(workdir / "data"),
        "HF_HUB_OFFLINE": "1",
    }
    with daemon(db, log_path, **env):
        yield log_path


def through_daemon(server_url: str, model: Path, rows: int, side: int, steps: int, batch: int, workdir: Path) -> float:
    db = fresh_database(server_url, f"bench_local_b{batch}")
    apply_schema(db)
    with local_daemon(db, model, batch, workdir), psycopg.connect(db, autocommit=True) as conn:
        time.sleep(0.5)  # listening and idle
        conn.execute(
            "INSERT INTO images (prompt, width, height, steps, seed) "
            "SELECT 'bench prompt ' || g, %s, %s, %s, g FROM generate_series(0, %s - 1) g",
            [side, side, steps, rows],
        )

        def drained() -> bool:
            row = conn.execute("SELECT count(*) FROM images WHERE status IN ('ReadyToPublish', 'Failed')").fetchone()
            return row is not None and row[0] == rows

        wait_until(drained, timeout=600, interval=0.05)
        failed = conn.execute("SELECT count(*), max(error) FROM images WHERE status = 'Failed'").fetchone()
        if failed and failed[0]:
            raise RuntimeError(f"{failed[0]} rows failed: {failed[1]}")
        row = conn.execute("SELECT extract(epoch FROM max(finished_at) - min(created_at)) FROM images").fetchone()
        assert row is not None
        return rows / float(row[0])


def main() -> None:
    p = parser(__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--rows", type=int, default=40)
    p.add_argument("--side", type=int, default=128)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bare-only", choices=("plain", "compel"), help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bare_only:
        rate = bare_loop(args.model, args.rows, args.side, args.steps, compel=args.bare_only == "compel")
        print(json.dumps({"images_per_second": rate}))
        return

    from imagend.backends.local.miniature.sdxl import write_tiny_model

    with tempfile.TemporaryDirectory(prefix="imagend-bench-local-") as tmp, postgres(args.database_url) as server:
        workdir = Path(tmp)
        model = write_tiny_model(workdir / "tiny-sdxl")
        print(
            f"miniature random-weights SDXL (it makes noise); {args.rows} rows of {args.side}x{args.side}, "
            f"{args.steps} steps, CPU ({os.cpu_count()} cores); median of {args.rounds} rounds"
        )
        batched = f"max_batch={args.batch}"
        runs: dict[str, Callable[[], float]] = {
            "bare diffusers": lambda: bare_in_subprocess(model, args.rows, args.side, args.steps, compel=False),
            "bare diffusers + compel": lambda: bare_in_subprocess(model, args.rows, args.side, args.steps, compel=True),
            "imagend, max_batch=1": lambda: through_daemon(server, model, args.rows, args.side, args.steps, 1, workdir),
            f"imagend, {batched}": lambda: through_daemon(
                server, model, args.rows, args.side, args.steps, args.batch, workdir
            ),
        }
        results: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):  # interleaved, so a noisy minute hurts every contender alike
            for name, run in runs.items():
                results[name].append(run())
        medians = {name: statistics.median(values) for name, values in results.items()}
        plain, same_work = medians["bare diffusers"], medians["bare diffusers + compel"]
        print(f"  {'':28} {'images/s':>9} {'vs bare+compel':>15} {'vs bare':>8}   rounds")
        for name, rate in medians.items():
            print(f"  {name:28} {rate:9.2f} {rate / same_work:15.2f} {rate / plain:8.2f}   {_fmt(results[name])}")


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
