"""Each capability of the local backend end to end: rows INSERTed as a producer writes them, one
`imagend -cron` daemon as a user runs it (a subprocess), against a real Postgres, on the miniature
models (noise). Chained rows, model affinity and its bound, and previews in the row."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from PIL import Image as PILImage

from imagend.backends.local.png_metadata import read_parameters

from support.daemons import DaemonProcess
from support.db import base_env, fetch_image, insert_image, wait_until
from support.local import TORCH_NUMPY_COPY_WARNING

pytestmark = [TORCH_NUMPY_COPY_WARNING, pytest.mark.slow]

SMALL = {"width": 64, "height": 64, "steps": 3}
FINISHED = ("ReadyToPublish", "Failed")


def png_b64(image: PILImage.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def picture(width: int = 64, height: int = 64) -> PILImage.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    return PILImage.fromarray(np.stack([x, x[:, ::-1], np.full_like(x, 90)], axis=-1), "RGB")


def right_half_mask() -> PILImage.Image:
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 32:] = 255
    return PILImage.fromarray(mask, "L")


def image_of(row: dict[str, Any]) -> PILImage.Image:
    return PILImage.open(io.BytesIO(base64.b64decode(row["base64"])))


def parameters_of(row: dict[str, Any]) -> str:
    return read_parameters(base64.b64decode(row["base64"])) or ""


@pytest.fixture
def start_daemon(
    db_url: str, extras_env: Callable[..., dict[str, str]], tmp_path: Path
) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(**overrides: str) -> DaemonProcess:
        daemon = DaemonProcess(["-cron"], base_env(db_url, **extras_env(**overrides)), log_dir=tmp_path)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def wait_finished(conn: psycopg.Connection[Any], ids: list[int], daemon: DaemonProcess, timeout: float = 120) -> None:
    def done() -> bool:
        assert daemon.alive(), daemon.output()[-3000:]
        statuses = conn.execute("SELECT status FROM images WHERE id = ANY(%s)", [ids]).fetchall()
        return all(row["status"] in FINISHED for row in statuses)

    wait_until(done, timeout, interval=0.2, what=f"rows {ids} to finish")


def events(daemon: DaemonProcess, event: str) -> list[dict[str, Any]]:
    found = []
    for line in daemon.output().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == event:
                found.append(record)
    return found


def test_every_capability_from_an_insert(
    conn: psycopg.Connection[Any], start_daemon: Callable[..., DaemonProcess]
) -> None:
    source = insert_image(conn, "a lighthouse", model="sdxl-b", seed=5, **SMALL,
                          loras=json.dumps([{"name": "pixel-kohya", "weight": 0.7}]))
    refined = insert_image(conn, "a lighthouse, refined", init_image_id=source, strength=0.5, seed=6, steps=4,
                           width=None, height=None)
    inpainted = insert_image(conn, "a red door", init_image=png_b64(picture()), seed=7,
                             mask_image=png_b64(right_half_mask()), **SMALL)
    styled = insert_image(conn, "a cat", reference_image_id=source, reference_scale=0.9, seed=8, **SMALL)
    upscaled = insert_image(conn, "sharp", task="upscale", upscale=2, init_image_id=source, steps=2)
    broken_source = insert_image(conn, "bad size", width=100, height=64)
    orphan = insert_image(conn, "refine a failure", init_image_id=broken_source, **SMALL)
    no_such = insert_image(conn, "refine nothing", init_image_id=999_999, **SMALL)
    unknown_model = insert_image(conn, "a cat", model="juggernaut", **SMALL)
    not_image = insert_image(conn, "a cat", init_image=base64.b64encode(b"GIF89a? no").decode(), **SMALL)
    unknown_lora = insert_image(conn, "a cat", loras=json.dumps([{"name": "no-such"}]), **SMALL)
    ids = [source, refined, inpainted, styled, upscaled, broken_source, orphan, no_such, unknown_model, not_image,
           unknown_lora]

    daemon = start_daemon()
    wait_finished(conn, ids, daemon)

    rows = {image_id: fetch_image(conn, image_id) for image_id in ids}
    for image_id in (source, refined, inpainted, styled, upscaled):
        assert (rows[image_id]["status"], rows[image_id]["error"]) == ("ReadyToPublish", None), rows[image_id]
        assert rows[image_id]["preview"] is None  # cleared when the image is written
    assert "<lora:pixel-kohya:0.7>" in parameters_of(rows[source]) and "Model: sdxl-b" in parameters_of(rows[source])
    # A chained row starts only after its source ends, and takes its size from it.
    assert rows[refined]["started_at"] >= rows[source]["finished_at"]
    assert image_of(rows[refined]).size == (64, 64)
    assert "Denoising strength: 0.5" in parameters_of(rows[refined])
    kept = np.asarray(image_of(rows[inpainted]).convert("RGB"))[:, :32].astype(int)
    assert np.abs(kept - np.asarray(picture())[:, :32].astype(int)).max() <= 2
    assert "IP-Adapter scale: 0.9" in parameters_of(rows[styled])
    assert image_of(rows[upscaled]).size == (128, 128)
    expected_errors = {
        broken_source: "width must be a multiple of 8 for SDXL, got 100 (try 96)",
        orphan: f"init_image_id {broken_source} failed (width must be a multiple of 8 for SDXL, got 100 (try 96)), "
                "so there is no image to start from",
        no_such: "init_image_id 999999: no such row",
        unknown_model: "unknown model 'juggernaut'; this daemon serves: sdxl, sdxl-b",
        not_image: "init_image: GIF is not accepted (PNG, JPEG or WebP expected)",
    }
    for image_id, error in expected_errors.items():
        assert (rows[image_id]["status"], rows[image_id]["error"]) == ("Failed", error)
    assert rows[unknown_lora]["status"] == "Failed"
    assert rows[unknown_lora]["error"].startswith("unknown LoRA 'no-such'; ")
    assert daemon.alive()


def test_a_chained_row_waits_for_its_source_and_wakes_when_it_ends(
    conn: psycopg.Connection[Any], start_daemon: Callable[..., DaemonProcess]
) -> None:
    # The source is scheduled later, so the chained row is the only one the daemon could claim now.
    source = insert_image(conn, "later", **SMALL)
    conn.execute("UPDATE images SET run_after = now() + interval '3 seconds' WHERE id = %s", [source])
    chained = insert_image(conn, "after it", init_image_id=source, **SMALL)
    daemon = start_daemon()
    wait_until(lambda: events(daemon, "local_backend_loaded"), 60, what="the daemon to start")
    assert fetch_image(conn, chained)["status"] == "ReadyToGenerate"  # waits, is not failed
    wait_finished(conn, [source, chained], daemon, timeout=60)
    rows = fetch_image(conn, source), fetch_image(conn, chained)
    assert [row["status"] for row in rows] == ["ReadyToPublish", "ReadyToPublish"]
    # Woken by the source's end (a NOTIFY), not by the next poll minutes later.
    assert (rows[1]["started_at"] - rows[0]["finished_at"]).total_seconds() < 5
    assert rows[1]["attempts"] == 1


def test_affinity_groups_rows_by_loaded_model_within_its_bound(
    conn: psycopg.Connection[Any], start_daemon: Callable[..., DaemonProcess]
) -> None:
    daemon = start_daemon(IMAGEND_MODEL_CACHE="1", IMAGEND_MODEL_SWITCH_SECONDS="2")
    wait_until(lambda: events(daemon, "local_backend_loaded"), 60, what="the daemon to start")
    with conn.transaction():  # all at once: the daemon sees them together
        other = insert_image(conn, "the other model, first in line", model="sdxl-b", **SMALL)
        mine = [insert_image(conn, f"the loaded model {n}", **SMALL) for n in range(12)]
    wait_finished(conn, [other, *mine], daemon)
    started = {row["id"]: row["started_at"] for row in conn.execute("SELECT id, started_at FROM images").fetchall()}
    waited = (started[other] - fetch_image(conn, other)["run_after"]).total_seconds()
    before_it = [image_id for image_id in mine if started[image_id] < started[other]]
    # Affinity: rows of the loaded model went first although inserted after it ...
    assert before_it, "the other model's row went first: no affinity"
    # ... and it waited no longer than the bound (2 s), plus a row in progress and a claimed-ahead one
    # (whether the loaded rows outlast the bound depends on the machine's speed: the order at the
    # bound is tested at the SQL, with a fixed clock, in tests/integration/test_claims.py).
    assert waited < 2 + 3, waited
    assert len(events(daemon, "model_loaded")) <= 2  # sdxl-b once, the default back once at most


def test_a_row_shows_previews_while_it_generates(
    conn: psycopg.Connection[Any], start_daemon: Callable[..., DaemonProcess]
) -> None:
    # Long enough on any machine for a preview (the first is written 2 s into the batch): 512 px, 200 steps.
    image_id = insert_image(conn, "a slow one", width=512, height=512, steps=200)
    daemon = start_daemon()
    preview = wait_until(lambda: fetch_image(conn, image_id)["preview"], 60, what="a preview in the row")
    with PILImage.open(io.BytesIO(base64.b64decode(preview))) as image:
        assert image.format == "WEBP" and image.size == (64, 64)
    conn.execute("UPDATE images SET cancel_requested = true WHERE id = %s", [image_id])  # seen: no need to wait
    wait_finished(conn, [image_id], daemon)
    row = fetch_image(conn, image_id)
    assert (row["status"], row["error"], row["preview"]) == ("Failed", "cancelled", None)  # cleared at the end
