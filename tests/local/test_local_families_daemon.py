"""FLUX.1, SD3 and Kandinsky 3 end to end: one `imagend -cron` daemon (a subprocess) serving the
three miniatures by name beside the miniature SDXL, rows INSERTed as a producer writes them."""

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

SIDES = {"flux": 32, "sd3": 32, "kandinsky3": 64}


def pixels(row: dict[str, Any]) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(base64.b64decode(row["base64"]))).convert("RGB"))


def test_each_family_from_an_insert_with_progress_cancel_and_seeds(
    conn: psycopg.Connection[Any], db_url: str, local_env: Callable[..., dict[str, str]],
    tiny_families: dict[str, Path], tmp_path: Path,
) -> None:
    models = ",".join(f"{family}={path}" for family, path in tiny_families.items())
    env = base_env(db_url, **local_env(IMAGEND_MODELS=models, IMAGEND_MODEL_CACHE="3"))
    rows: dict[str, list[int]] = {}
    for family, side in SIDES.items():
        size = {"width": side, "height": side, "steps": 3, "model": family}
        rows[family] = [
            insert_image(conn, "a red fox", seed=11, **size),
            insert_image(conn, "a red fox", seed=11, **size),
            insert_image(conn, "a red fox", seed=12, **size),
        ]
    # Long enough on any machine to be seen running and cancelled: 200 steps at 512 px.
    slow = insert_image(conn, "a long one", model="flux", width=512, height=512, steps=200, seed=1)
    daemon = DaemonProcess(["-cron"], env, log_dir=tmp_path)
    try:
        def progress() -> float:
            assert daemon.alive(), daemon.output()[-3000:]
            return fetch_image(conn, slow)["progress"] or 0.0

        first = wait_until(lambda: (p := progress()) > 0 and p, 60, interval=0.05, what="progress in the slow row")
        wait_until(lambda: progress() > first, 30, interval=0.05, what="progress to rise")
        conn.execute("UPDATE images SET cancel_requested = true WHERE id = %s", [slow])
        assert fetch_image(conn, slow)["status"] == "Generate", "the slow row ended before the cancel"

        cancelled = wait_until(lambda: (row := fetch_image(conn, slow))["status"] == "Failed" and row, 30,
                               what="the cancel")
        assert cancelled["error"] == "cancelled" and cancelled["progress"] is None

        ids = [image_id for family_rows in rows.values() for image_id in family_rows]
        wait_until(lambda: all(fetch_image(conn, i)["status"] in ("ReadyToPublish", "Failed") for i in ids), 120,
                   interval=0.2, what="every family's rows")
        for family, (same, again, other) in rows.items():
            done = [fetch_image(conn, image_id) for image_id in (same, again, other)]
            assert [row["status"] for row in done] == ["ReadyToPublish"] * 3, [row["error"] for row in done]
            assert pixels(done[0]).shape == (SIDES[family], SIDES[family], 3)
            assert np.array_equal(pixels(done[0]), pixels(done[1]))  # a seed reproduces its pixels
            assert not np.array_equal(pixels(done[0]), pixels(done[2]))
            parameters = read_parameters(base64.b64decode(done[0]["base64"])) or ""
            assert f"Model: {family}" in parameters and "Seed: 11," in parameters
        assert daemon.alive()
    finally:
        daemon.stop()


def test_a_model_of_an_unsupported_family_stops_the_start(
    db_url: str, local_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    sd15 = tmp_path / "sd15"
    sd15.mkdir()
    (sd15 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    result = run_imagend(["-generator"], base_env(db_url, **local_env(IMAGEND_MODEL=str(sd15))), timeout=60)
    assert result.returncode == 2
    assert (f"IMAGEND_MODEL={sd15}: a StableDiffusionPipeline pipeline, which the local backend does not drive; "
            "supported families: SDXL (StableDiffusionXLPipeline), FLUX.1 (FluxPipeline), "
            "SD3 (StableDiffusion3Pipeline), Kandinsky 3 (Kandinsky3Pipeline)") in result.stderr


def test_a_checkpoint_of_an_unsupported_family_in_imagend_models_is_refused(
    local_env: Callable[..., dict[str, str]], tiny_model: Path, tmp_path: Path
) -> None:
    from imagend.backends.local import LocalBackend
    from imagend.config.settings import load_settings
    from imagend.errors import ConfigError

    sd15 = tmp_path / "sd15"
    sd15.mkdir()
    (sd15 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    env = {"IMAGEND_DATA_DIR": str(tmp_path / "data"), **local_env(IMAGEND_MODELS=f"old={sd15}")}
    with pytest.raises(ConfigError, match=r"IMAGEND_MODELS \(old\)=.*: a StableDiffusionPipeline pipeline"):
        LocalBackend.from_settings(load_settings(environ=env, env_file=None))
