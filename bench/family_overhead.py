"""Daemon overhead per diffusers family, CPU, miniature models (random weights: they make noise):
FLUX.1, SD3 and Kandinsky 3 rows through `imagend -cron` with the local backend against a bare
script that calls the same pipeline, in the same run; the miniature SDXL as the reference line.

    .venv/bin/python bench/family_overhead.py [--rows 24] [--side 64] [--steps 4] [--rounds 3]

- bare diffusers: a script (its own process) loads the family's miniature with
  `DiffusionPipeline.from_pretrained(folder, dtype=torch.float32)`, turns on VAE slicing where the
  decoder has it (as the backend's default), warms up, then calls the pipeline once per image with a
  seeded CPU generator at the same size, steps, guidance and scheduler the daemon uses (FLUX.1, SD3:
  the checkpoint's FlowMatchEulerDiscreteScheduler; Kandinsky 3: its DDPMScheduler; SDXL: Euler),
  the prompt as diffusers encodes it, and encodes each PNG.
- imagend: one `imagend -cron` for the whole run, IMAGEND_BACKEND=local, IMAGEND_MODEL the miniature
  SDXL, IMAGEND_MODELS naming the three others, IMAGEND_MODEL_CACHE=4 (all stay loaded),
  IMAGEND_MAX_BATCH=1 (one image per call, as the bare loop). Per family and round: one warm-up row of
  that family (its model loaded, its scheduler made), then --rows rows inserted in one statement,
  naming their `model`, steps and guidance; the time is those rows' first created_at to last
  finished_at (Postgres' clock): claims, prompt encoding, progress writes, PNG metadata, base64 into
  the row and the finishing UPDATE are all inside it. SDXL rows leave `model` NULL (IMAGEND_MODEL);
  imagend encodes SDXL's prompt with compel, the bare loop with diffusers (see local_overhead.py).

Ratio: imagend rows/s / bare images/s. Each figure is the median of --rounds rounds, interleaved
(bare, imagend, per family, each round). Overall: the three families' timed images over their summed
median times, each side, and the geometric mean of their ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from imagend.db.connect import apply_schema

from _common import daemon, fresh_database, parser, postgres, wait_until


@dataclass(frozen=True)
class Contender:
    key: str  # the IMAGEND_MODELS name (miniature.families' family); "sdxl": IMAGEND_MODEL, model NULL
    label: str
    scheduler: str  # the diffusers class of the family's default scheduler in imagend
    guidance: float  # imagend's default for the family


CONTENDERS = (
    Contender("flux", "FLUX.1", "FlowMatchEulerDiscreteScheduler", 3.5),
    Contender("sd3", "SD3", "FlowMatchEulerDiscreteScheduler", 7.0),
    Contender("kandinsky3", "Kandinsky 3", "DDPMScheduler", 3.0),
    Contender("sdxl", "SDXL (reference)", "EulerDiscreteScheduler", 5.0),
)
FAMILIES = tuple(c for c in CONTENDERS if c.key != "sdxl")


def bare_loop(folder: Path, scheduler: str, rows: int, side: int, steps: int, guidance: float) -> float:
    """The bare script: load, warm up, then one pipeline call per image and a PNG each."""
    import diffusers
    import torch

    pipe = diffusers.DiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    if type(pipe.scheduler).__name__ != scheduler:  # the one the daemon uses, from the checkpoint's config
        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    decoder = getattr(pipe, "vae", None) or getattr(pipe, "movq", None)
    with contextlib.suppress(AttributeError, NotImplementedError):  # Kandinsky's MoVQ has no slicing
        decoder.enable_slicing()

    def one(i: int, steps: int) -> None:
        generator = torch.Generator("cpu").manual_seed(i)
        image = pipe(
            prompt=f"bench prompt {i}",
            width=side,
            height=side,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
        ).images[0]
        image.save(io.BytesIO(), format="PNG")

    one(0, steps)  # warm-up at the measured shape, as the daemon's warm-up row
    started = time.perf_counter()
    for i in range(rows):
        one(i, steps)
    return rows / (time.perf_counter() - started)


def bare_in_subprocess(folder: Path, who: Contender, rows: int, side: int, steps: int) -> float:
    """Each measurement in its own process, as the daemon is: no state carried between them."""
    args = [sys.executable, __file__, "--bare-only", str(folder), "--scheduler", who.scheduler]
    args += ["--guidance", str(who.guidance), "--rows", str(rows), "--side", str(side), "--steps", str(steps)]
    out = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode:
        raise RuntimeError(f"bare {who.label} failed: {out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["images_per_second"])


@contextlib.contextmanager
def family_daemon(db: str, folders: dict[str, Path], workdir: Path) -> Iterator[Path]:
    log_path = workdir / "daemon.log"
    env = {
        "IMAGEND_BACKEND": "local",
        "IMAGEND_BACKENDS": "local",
        "IMAGEND_MODEL": str(folders["sdxl"]),
        "IMAGEND_MODELS": ",".join(f"{c.key}={folders[c.key]}" for c in FAMILIES),
        "IMAGEND_MODEL_CACHE": "4",
        "IMAGEND_MAX_BATCH": "1",
        "IMAGEND_LOCK_DIR": str(workdir / "locks"),
        "IMAGEND_DATA_DIR": str(workdir / "data"),
        "HF_HUB_OFFLINE": "1",
    }
    with daemon(db, log_path, **env):
        yield log_path


def insert(conn: psycopg.Connection, who: Contender, first_seed: int, rows: int, side: int, steps: int) -> list[int]:
    model = None if who.key == "sdxl" else who.key
    cur = conn.execute(
        "INSERT INTO images (prompt, width, height, steps, guidance, model, seed) "
        "SELECT 'bench prompt ' || g, %s, %s, %s, %s, %s, g FROM generate_series(%s, %s - 1) g RETURNING id",
        [side, side, steps, who.guidance, model, first_seed, first_seed + rows],
    )
    return [row[0] for row in cur.fetchall()]


def drain(conn: psycopg.Connection, ids: list[int], who: Contender) -> None:
    def done() -> bool:
        row = conn.execute(
            "SELECT count(*) FROM images WHERE id = ANY(%s) AND status IN ('ReadyToPublish', 'Failed')", [ids]
        ).fetchone()
        return row is not None and row[0] == len(ids)

    wait_until(done, timeout=900, interval=0.05)
    failed = conn.execute(
        "SELECT count(*), max(error) FROM images WHERE id = ANY(%s) AND status = 'Failed'", [ids]
    ).fetchone()
    if failed and failed[0]:
        raise RuntimeError(f"{who.label}: {failed[0]} rows failed: {failed[1]}")


def through_daemon(conn: psycopg.Connection, who: Contender, rows: int, side: int, steps: int) -> float:
    drain(conn, insert(conn, who, 0, 1, side, steps), who)  # warm-up: the family's model loaded and used
    ids = insert(conn, who, 0, rows, side, steps)
    drain(conn, ids, who)
    row = conn.execute(
        "SELECT extract(epoch FROM max(finished_at) - min(created_at)) FROM images WHERE id = ANY(%s)", [ids]
    ).fetchone()
    assert row is not None
    return rows / float(row[0])


def main() -> None:
    p = parser(__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--rows", type=int, default=24)
    p.add_argument("--side", type=int, default=64, help="a multiple of 64 (Kandinsky 3's MoVQ)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bare-only", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--scheduler", help=argparse.SUPPRESS)
    p.add_argument("--guidance", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bare_only:
        rate = bare_loop(args.bare_only, args.scheduler, args.rows, args.side, args.steps, args.guidance)
        print(json.dumps({"images_per_second": rate}))
        return
    if args.side % 64:
        p.error("--side: a multiple of 64 (Kandinsky 3; FLUX.1 and SD3 take multiples of 16)")

    from imagend.backends.local.miniature.families import write_tiny_pipeline
    from imagend.backends.local.miniature.sdxl import write_tiny_model

    with tempfile.TemporaryDirectory(prefix="imagend-bench-family-") as tmp, postgres(args.database_url) as server:
        workdir = Path(tmp)
        folders = {c.key: write_tiny_pipeline(workdir / f"tiny-{c.key}", c.key) for c in FAMILIES}
        folders["sdxl"] = write_tiny_model(workdir / "tiny-sdxl")
        print(
            f"miniature random-weights models (they make noise); {args.rows} rows of {args.side}x{args.side}, "
            f"{args.steps} steps, CPU ({os.cpu_count()} cores); median of {args.rounds} rounds"
        )
        db = fresh_database(server, "bench_family")
        apply_schema(db)
        bare: dict[str, list[float]] = {c.key: [] for c in CONTENDERS}
        ours: dict[str, list[float]] = {c.key: [] for c in CONTENDERS}
        with family_daemon(db, folders, workdir), psycopg.connect(db, autocommit=True) as conn:
            for _ in range(args.rounds):  # interleaved, so a noisy minute hurts every contender alike
                for who in CONTENDERS:
                    bare[who.key].append(bare_in_subprocess(folders[who.key], who, args.rows, args.side, args.steps))
                    ours[who.key].append(through_daemon(conn, who, args.rows, args.side, args.steps))
        print(f"  {'':18} {'bare img/s':>10} {'imagend rows/s':>14} {'ratio':>6}   rounds (bare | imagend)")
        for who in CONTENDERS:
            b, o = statistics.median(bare[who.key]), statistics.median(ours[who.key])
            print(f"  {who.label:18} {b:10.2f} {o:14.2f} {o / b:6.2f}   {_fmt(bare[who.key])} | {_fmt(ours[who.key])}")
        bare_time = sum(args.rows / statistics.median(bare[c.key]) for c in FAMILIES)
        our_time = sum(args.rows / statistics.median(ours[c.key]) for c in FAMILIES)
        total = args.rows * len(FAMILIES)
        ratios = [statistics.median(ours[c.key]) / statistics.median(bare[c.key]) for c in FAMILIES]
        geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        print(
            f"  {'overall (3 fam.)':18} {total / bare_time:10.2f} {total / our_time:14.2f} "
            f"{bare_time / our_time:6.2f}   geometric mean of the ratios {geomean:.2f}"
        )


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
