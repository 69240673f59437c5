"""Model switching, CPU, two miniature checkpoints (random weights: they make noise): rows
alternating between two models through one `imagend -cron`, with and without model affinity.

    .venv/bin/python bench/model_switching.py [--rows 40] [--side 64] [--steps 3] [--rounds 3] [--no-cache2]

The rows (`model` = sdxl, sdxl-b, sdxl, …, the pair imagend.backends.local.miniature.extras.write_tiny_models
writes) are inserted before the daemon starts, then one daemon (IMAGEND_BACKEND=local,
IMAGEND_MODEL = the sdxl folder, IMAGEND_MODELS=sdxl=…,sdxl-b=…, max batch 1) drains them:

- affinity: IMAGEND_MODEL_CACHE=1, IMAGEND_MODEL_SWITCH_SECONDS=600 (the loaded model's rows first);
- no affinity: IMAGEND_MODEL_CACHE=1, IMAGEND_MODEL_SWITCH_SECONDS=0 (every row has waited long
  enough: plain priority/id order, a load per row);
- cache 2: IMAGEND_MODEL_CACHE=2, IMAGEND_MODEL_SWITCH_SECONDS=0 (both stay loaded; --no-cache2 skips it).

Figures per run: loads = the checkpoint loaded at start plus the daemon's `model_loaded` events
(each a read from disk), cross-checked against the model changes in the order rows finished
(ORDER BY finished_at, starting from the start model; with cache 1 the two must agree); wall =
daemon launch until every row is ReadyToPublish (start-up and the first load included); rows/s =
rows / (last finished_at - first started_at), Postgres' clock; max wait = the longest
started_at - created_at (a claim; the daemon's start-up counts for every row alike); overtaken =
the longest a row stayed unclaimed after a later row (higher id) was claimed: what affinity costs
a row, bounded by IMAGEND_MODEL_SWITCH_SECONDS. Each figure is the median of --rounds runs,
configurations interleaved (ABAB); the switch cost is the median `seconds` of the `model_loaded` events.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from imagend.db.connect import apply_schema

from _common import daemon, fresh_database, parser, postgres, wait_until

MODELS = ("sdxl", "sdxl-b")
START_MODEL = "sdxl"  # IMAGEND_MODEL: loaded at start (`local_backend_loaded`), no `model_loaded` event


@dataclass(frozen=True)
class Config:
    name: str
    cache: int
    switch_seconds: float


@dataclass(frozen=True)
class Run:
    loads: int
    changes: int
    wall: float
    rows_per_second: float
    max_wait: float
    overtaken: float
    load_seconds: list[float]


def events(log_path: Path, event: str) -> list[dict[str, Any]]:
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == event:
                found.append(record)
    return found


def one_run(server: str, config: Config, models: dict[str, Path], args: Any, workdir: Path, index: int) -> Run:
    db = fresh_database(server, f"bench_models_{index}")
    apply_schema(db)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO images (prompt, width, height, steps, seed, model) "
            "SELECT 'bench prompt ' || g, %s, %s, %s, g, (%s::text[])[g %% 2 + 1] FROM generate_series(0, %s - 1) g",
            [args.side, args.side, args.steps, list(MODELS), args.rows],
        )
    log_path = workdir / f"daemon-{index}.log"
    env = {
        "IMAGEND_BACKEND": "local",
        "IMAGEND_BACKENDS": "local",
        "IMAGEND_MODEL": str(models["sdxl"]),
        "IMAGEND_MODELS": ",".join(f"{name}={models[name]}" for name in MODELS),
        "IMAGEND_MODEL_CACHE": str(config.cache),
        "IMAGEND_MODEL_SWITCH_SECONDS": str(config.switch_seconds),
        "IMAGEND_MAX_BATCH": "1",
        "IMAGEND_LOCK_DIR": str(workdir / "locks"),
        "IMAGEND_DATA_DIR": str(workdir / "data"),
        "HF_HUB_OFFLINE": "1",
    }
    started = time.monotonic()
    with daemon(db, log_path, **env), psycopg.connect(db, autocommit=True) as conn:

        def drained() -> bool:
            row = conn.execute("SELECT count(*) FROM images WHERE status IN ('ReadyToPublish', 'Failed')").fetchone()
            return row is not None and row[0] == args.rows

        wait_until(drained, timeout=1200, interval=0.05)
        wall = time.monotonic() - started
    with psycopg.connect(db, autocommit=True) as conn:
        failed = conn.execute("SELECT count(*), max(error) FROM images WHERE status = 'Failed'").fetchone()
        if failed and failed[0]:
            raise RuntimeError(f"{failed[0]} rows failed: {failed[1]}")
        order = [m for (m,) in conn.execute("SELECT model FROM images ORDER BY finished_at, id").fetchall()]
        row = conn.execute(
            "SELECT extract(epoch FROM max(finished_at) - min(started_at)),"
            "       extract(epoch FROM max(started_at - created_at)) FROM images"
        ).fetchone()
        assert row is not None
        drain, max_wait = float(row[0]), float(row[1])
        over = conn.execute(
            "SELECT extract(epoch FROM max(GREATEST(a.started_at - later.first_claim, interval '0')))"
            "  FROM images a"
            "  CROSS JOIN LATERAL (SELECT min(b.started_at) AS first_claim FROM images b WHERE b.id > a.id) later"
        ).fetchone()
        overtaken = float(over[0]) if over and over[0] is not None else 0.0
    loaded = events(log_path, "model_loaded")
    changes = sum(1 for before, after in zip([START_MODEL, *order], order, strict=False) if before != after)
    loads = 1 + len(loaded)
    return Run(loads, changes, wall, args.rows / drain, max_wait, overtaken, [float(e["seconds"]) for e in loaded])


def main() -> None:
    p = parser(__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--rows", type=int, default=40)
    p.add_argument("--side", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-cache2", action="store_true", help="skip the IMAGEND_MODEL_CACHE=2 configuration")
    args = p.parse_args()

    from imagend.backends.local.miniature.parts import TINY_MODEL_SEED
    from imagend.backends.local.miniature.sdxl import write_tiny_model

    configs = [Config("affinity, cache 1", 1, 600), Config("no affinity, cache 1", 1, 0)]
    if not args.no_cache2:
        configs.append(Config("no affinity, cache 2", 2, 0))
    with tempfile.TemporaryDirectory(prefix="imagend-bench-models-") as tmp, postgres(args.database_url) as server:
        workdir = Path(tmp)
        # The pair miniature.extras.write_tiny_models writes, without its LoRAs, IP-Adapter and upscaler.
        models = {
            "sdxl": write_tiny_model(workdir / "sdxl"),
            "sdxl-b": write_tiny_model(workdir / "sdxl-b", seed=TINY_MODEL_SEED + 1),
        }
        print(
            f"two miniature random-weights SDXL checkpoints (they make noise); {args.rows} rows alternating "
            f"{'/'.join(MODELS)}, {args.side}x{args.side}, {args.steps} steps, max batch 1, "
            f"CPU ({os.cpu_count()} cores); median of {args.rounds} rounds"
        )
        results: dict[str, list[Run]] = {c.name: [] for c in configs}
        index = 0
        for _ in range(args.rounds):  # interleaved, so a noisy minute hurts every configuration alike
            for config in configs:
                results[config.name].append(one_run(server, config, models, args, workdir, index))
                index += 1

    def med(name: str, field: str) -> float:
        return statistics.median(getattr(run, field) for run in results[name])

    print(f"  {'':22} {'loads':>6} {'changes':>8} {'wall s':>7} {'rows/s':>7} {'max wait s':>11} {'overtaken s':>12}")
    for config in configs:
        name = config.name
        print(
            f"  {name:22} {med(name, 'loads'):6.0f} {med(name, 'changes'):8.0f} {med(name, 'wall'):7.2f} "
            f"{med(name, 'rows_per_second'):7.2f} {med(name, 'max_wait'):11.2f} {med(name, 'overtaken'):12.2f}"
            f"   rows/s: {', '.join(f'{r.rows_per_second:.2f}' for r in results[name])}"
        )
    with_, without = configs[0].name, configs[1].name
    print(
        f"  affinity vs none (cache 1): rows/s {med(with_, 'rows_per_second') / med(without, 'rows_per_second'):.2f}x, "
        f"loads {med(without, 'loads') / med(with_, 'loads'):.1f}x fewer, "
        f"wall {med(without, 'wall') / med(with_, 'wall'):.2f}x shorter"
    )
    for config in configs:  # with one checkpoint loaded at a time, every load is a change of model, and back
        counts = [(len(run.load_seconds), run.changes) for run in results[config.name]]
        mismatched = [(events, changes) for events, changes in counts if events != changes]
        if config.cache == 1 and mismatched:
            print(
                f"  ! {config.name}: model_loaded events vs model changes in finishing order: "
                f"{', '.join(f'{events} vs {changes}' for events, changes in mismatched)} "
                "(loads the row order does not explain)"
            )
    load_seconds = [s for runs in results.values() for run in runs for s in run.load_seconds]
    if load_seconds:
        print(
            f"  switch cost: median {statistics.median(load_seconds):.2f} s per load from disk "
            f"({len(load_seconds)} model_loaded events)"
        )


if __name__ == "__main__":
    main()
