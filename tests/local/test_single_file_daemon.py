"""Single-file checkpoints through the daemon as a user runs it (subprocesses), against a real Postgres, on
the miniature SDXL (noise) written back as one A1111-layout file: `imagend -cron` makes the same pixels from
the .safetensors file, the .ckpt file and their diffusers folder; a bad file stops the start naming the
variable and leaves the rows alone; `imagend -import-model` writes the folder that later starts load."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
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

ROW = {"width": 64, "height": 64, "steps": 3, "seed": 1234}
FINISHED = ("ReadyToPublish", "Failed")


def pixels(row: dict[str, Any]) -> np.ndarray[Any, Any]:
    return np.asarray(PILImage.open(io.BytesIO(base64.b64decode(row["base64"]))).convert("RGB"))


def events(output: str, event: str) -> list[dict[str, Any]]:
    records = (json.loads(line) for line in output.splitlines() if line.startswith("{"))
    return [record for record in records if record.get("event") == event]


@pytest.fixture
def file_env(
    single_file_models: dict[str, Path], local_env: Callable[..., dict[str, str]], tmp_path: Path
) -> Callable[..., dict[str, str]]:
    def make(**overrides: str) -> dict[str, str]:
        return local_env(**{
            "IMAGEND_MODEL": str(single_file_models["safetensors"]),
            "IMAGEND_MODELS": (f"folder={single_file_models['folder']},file={single_file_models['safetensors']},"
                               f"ckpt={single_file_models['ckpt']}:sdxl"),
            "IMAGEND_SINGLE_FILE_CONFIG": str(single_file_models["config"]),
            "IMAGEND_DATA_DIR": str(tmp_path / "data"),
            **overrides,
        })

    return make


def test_a_single_file_makes_the_pixels_of_its_folder_through_imagend_cron(
    conn: psycopg.Connection[Any], db_url: str, file_env: Callable[..., dict[str, str]],
    single_file_models: dict[str, Path], tmp_path: Path,
) -> None:
    ids = {model: insert_image(conn, "a lighthouse at dusk", model=model, **ROW)
           for model in ("folder", "file", "ckpt", None)}
    other_seed = insert_image(conn, "a lighthouse at dusk", model="file", **{**ROW, "seed": 99})
    daemon = DaemonProcess(["-cron"], base_env(db_url, **file_env()), log_dir=tmp_path)
    try:
        def finished() -> bool:
            assert daemon.alive(), daemon.output()[-3000:]
            rows = conn.execute("SELECT status FROM images WHERE id = ANY(%s)", [[*ids.values(), other_seed]])
            return all(row["status"] in FINISHED for row in rows.fetchall())

        wait_until(finished, 180, interval=0.2, what="the rows to finish")
    finally:
        daemon.stop()
    rows = {model: fetch_image(conn, image_id) for model, image_id in ids.items()}
    for model, row in rows.items():
        assert (row["status"], row["error"]) == ("ReadyToPublish", None), (model, row["error"])
    folder = pixels(rows["folder"])
    assert folder.shape == (64, 64, 3) and folder.std() > 0
    file = pixels(rows["file"])
    for model in ("ckpt", None):
        assert np.array_equal(pixels(rows[model]), file), f"{model} differs from the .safetensors file"
    # The same weights bit for bit (test_single_file.py), but on the CPU not always the same last bit: the folder's
    # tensors are memory-mapped at save_pretrained's 8-byte offsets, and the CPU's matrix products round
    # differently for a weight that is not 16-byte aligned (measured: 2.4e-7 out of SDXL's pooled projection).
    # On a GPU the weights are copied into aligned device memory. At most one level in a few pixels here.
    difference = np.abs(file.astype(int) - folder.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01, (difference.max(), (difference > 0).mean())
    assert not np.array_equal(pixels(fetch_image(conn, other_seed)), folder)  # the comparison can fail
    # The PNG names the checkpoint as A1111 does, by its file (without the :family said after it).
    for model, name in (("file", "tiny-sdxl.safetensors"), ("ckpt", "tiny-sdxl.ckpt")):
        assert f"Model: {name} (miniature" in (read_parameters(base64.b64decode(rows[model]["base64"])) or "")
    # IMAGEND_MODEL and the entry `file` are one checkpoint (the cache's key is the source): loaded once at least.
    loads = events(daemon.output(), "single_file_loaded")
    assert {record["how"] for record in loads} == {"from_single_file"}
    assert {record["source"] for record in loads} == {str(single_file_models["safetensors"]),
                                                      f"{single_file_models['ckpt']}:sdxl"}
    assert events(daemon.output(), "miniature_model")  # the file says it is a miniature: noise


def test_a_bad_file_stops_the_start_naming_the_variable(
    conn: psycopg.Connection[Any], db_url: str, file_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    image_id = insert_image(conn, "a cat", **ROW)
    bad = tmp_path / "downloaded.safetensors"
    bad.write_text("<html>404 Not Found</html>")
    result = run_imagend(["-generator"], base_env(db_url, **file_env(IMAGEND_MODELS=f"bad={bad}")), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"imagend: configuration error: IMAGEND_MODELS (bad)={bad}: not a safetensors file" in result.stderr
    row = fetch_image(conn, image_id)
    assert (row["status"], row["attempts"], row["error"]) == ("ReadyToGenerate", 0, None)


def test_import_model_writes_the_folder_later_starts_load(
    conn: psycopg.Connection[Any], db_url: str, file_env: Callable[..., dict[str, str]],
    single_file_models: dict[str, Path], tmp_path: Path,
) -> None:
    file = tmp_path / "mine.safetensors"
    file.write_bytes(single_file_models["safetensors"].read_bytes())
    env = base_env(db_url, **file_env(IMAGEND_MODEL=str(file), IMAGEND_MODELS=""))
    result = run_imagend(["-import-model", str(file), "mine"], env, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "data" / "models" / "mine"
    assert "as a diffusers folder in" in result.stdout and f"IMAGEND_MODELS=mine={folder}" in result.stdout
    assert (folder / "model_index.json").is_file()
    image_id = insert_image(conn, "a lighthouse at dusk", **ROW)
    reference = insert_image(conn, "a lighthouse at dusk", model="folder", **ROW)
    env = base_env(db_url, **file_env(IMAGEND_MODEL=str(file), IMAGEND_MODELS=f"folder={single_file_models['folder']}"))
    result = run_imagend(["-generator"], {**env, "IMAGEND_MAX_BATCH": "2"}, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    loads = events(result.stdout + result.stderr, "single_file_loaded")
    assert {(record["how"], record["folder"]) for record in loads} == {("imported folder", str(folder))}
    imported, own = fetch_image(conn, image_id), fetch_image(conn, reference)
    assert imported["status"] == own["status"] == "ReadyToPublish", (imported["error"], own["error"])
    assert np.array_equal(pixels(imported), pixels(own))
    bad = run_imagend(["-import-model", str(tmp_path / "none.ckpt"), "x"], env, timeout=120)
    assert bad.returncode == 2 and "-import-model=" in bad.stderr and "none.ckpt: no such file" in bad.stderr
