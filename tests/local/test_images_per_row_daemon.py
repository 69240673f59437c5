"""Several images per row and presets on the local backend, end to end: rows INSERTed as a producer writes
them, one `imagend -cron` daemon as a user runs it (a subprocess), a real Postgres, the miniature SDXL
model (noise). n = 4 makes four different images with consecutive seeds in one pipeline call, each the
image of its seed (bit for bit beside rows of the same batch composition; within a level or so of a
row alone, as docs/local.md says of every batch); a preset's template, values and round token."""

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

from support.daemons import DaemonProcess, run_imagend
from support.db import base_env, fetch_image, insert_image, wait_until
from support.local import TORCH_NUMPY_COPY_WARNING

pytestmark = [TORCH_NUMPY_COPY_WARNING, pytest.mark.slow]

SMALL = {"width": 64, "height": 64, "steps": 3, "scheduler": "euler"}
FINISHED = ("ReadyToPublish", "Failed")


def pixels(text: str) -> np.ndarray:
    with PILImage.open(io.BytesIO(base64.b64decode(text))) as image:
        return np.asarray(image.convert("RGBA" if image.mode == "RGBA" else "RGB")).astype(int)


@pytest.fixture
def start_daemon(
    db_url: str, local_env: Callable[..., dict[str, str]], tmp_path: Path
) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(**overrides: str) -> DaemonProcess:
        daemon = DaemonProcess(["-cron"], base_env(db_url, **local_env(**overrides)), log_dir=tmp_path)
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


def test_n_images_with_consecutive_seeds_each_the_image_of_its_seed(
    conn: psycopg.Connection[Any], start_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    # Four rows of one image, seeds 200-203, claimed together (IMAGEND_MAX_BATCH=4: one call of four images),
    # then the row of four images, seeds 200-203 (a call of its four).
    singles = [insert_image(conn, "a lighthouse on a cliff", seed=200 + k, **SMALL) for k in range(4)]
    several = insert_image(conn, "a lighthouse on a cliff", seed=200, n=4, **SMALL)
    bad = insert_image(conn, "a lighthouse on a cliff", n=12, **SMALL)
    daemon = start_daemon(IMAGEND_MAX_BATCH="4", IMAGEND_OUTPUT_DIR=str(out), IMAGEND_THUMBNAIL="32")
    wait_finished(conn, [*singles, several, bad], daemon)

    row = fetch_image(conn, several)
    assert (row["status"], row["error"], row["seed"]) == ("ReadyToPublish", None, 200)
    listed = row["images"]
    assert [entry["seed"] for entry in listed] == [200, 201, 202, 203]
    images = [np.asarray(PILImage.open(out / f"{several}-{k}.png")).astype(int) for k in range(1, 5)]
    assert all((out / f"{several}-{k}.thumb.webp").is_file() for k in range(1, 5))
    for k in range(4):  # four different images
        for j in range(k):
            assert np.abs(images[k] - images[j]).mean() > 1
    for k, entry in enumerate(listed):
        parameters = read_parameters((out / f"{several}-{k + 1}.png").read_bytes()) or ""
        assert f"Seed: {200 + k}," in parameters  # each says its own seed
        assert entry["path"] == str((out / f"{several}-{k + 1}.png").resolve())
    assert np.array_equal(pixels(row["base64"]), images[0])
    # Each is the image of its seed, bit for bit, beside a batch of the same composition.
    for k, single in enumerate(singles):
        assert np.array_equal(pixels(fetch_image(conn, single)["base64"]), images[k]), f"seed {200 + k}"
    bad_row = fetch_image(conn, bad)
    assert (bad_row["status"], bad_row["error"]) == ("Failed", "n must be between 1 and 8, got 12")

    # A row of one image alone (a call of one): the same image within batched kernels' rounding.
    alone = insert_image(conn, "a lighthouse on a cliff", seed=202, **SMALL)
    wait_finished(conn, [alone], daemon)
    difference = np.abs(pixels(fetch_image(conn, alone)["base64"]) - images[2])
    print(f"n=4 image 3 against seed 202 alone: max {difference.max()}, mean {difference.mean():.4f} levels")
    assert difference.max() <= 4 and difference.mean() < 0.5


def test_a_preset_token_through_the_local_daemon(
    conn: psycopg.Connection[Any], db_url: str, local_env: Callable[..., dict[str, str]],
    start_daemon: Callable[..., DaemonProcess]
) -> None:
    made = run_imagend(["-preset", "token", "prompt=a round portrait token of {prompt}, fantasy, painterly",
                        "negative_prompt=text, frame", "width=64", "height=64", "steps=2", "guidance=4",
                        "scheduler=euler", "post=[{\"step\": \"token\", \"border\": 4, \"color\": \"#aa2200\"}]"],
                       base_env(db_url, **local_env()))
    assert made.returncode == 0, made.stderr[-2000:]
    token = insert_image(conn, "an elf ranger", preset="token", seed=7)
    pair = insert_image(conn, "a goblin", preset="token", seed=9, n=2, steps=3)
    unknown = insert_image(conn, "an orc", preset="tokne")
    daemon = start_daemon()
    wait_finished(conn, [token, pair, unknown], daemon)

    row = fetch_image(conn, token)
    assert (row["status"], row["error"]) == ("ReadyToPublish", None)
    assert row["effective_prompt"] == "a round portrait token of an elf ranger, fantasy, painterly"
    assert (row["negative_prompt"], row["width"], row["height"], row["steps"], row["guidance"], row["scheduler"]) == (
        "text, frame", 64, 64, 2, 4.0, "euler")
    image = pixels(row["base64"])
    assert image.shape == (64, 64, 4)  # RGBA
    assert image[0, 0, 3] == 0 and image[63, 63, 3] == 0 and image[32, 32, 3] == 255
    assert abs(image[1, 32, 0] - 0xAA) < 8 and image[1, 32, 3] > 200  # the red ring at the top
    parameters = read_parameters(base64.b64decode(row["base64"])) or ""
    assert parameters.startswith("a round portrait token of an elf ranger") and "Steps: 2" in parameters
    assert "Negative prompt: text, frame" in parameters and "Postprocessing: token" in parameters

    two = fetch_image(conn, pair)
    assert two["status"] == "ReadyToPublish", two["error"]
    assert two["steps"] == 3  # the row's own
    assert [entry["seed"] for entry in two["images"]] == [9, 10]
    assert all(pixels(entry["base64"]).shape == (64, 64, 4) for entry in two["images"])
    failed = fetch_image(conn, unknown)
    assert failed["status"] == "Failed" and failed["error"].startswith("unknown preset 'tokne'")
    assert json.loads(run_imagend(["-presets"], base_env(db_url, **local_env())).stdout)["presets"][0]["steps"] == 2
