"""Issue 24 on the local backend: a 3-scene video whose stills the miniature SDXL model makes (noise), through
an `imagend -cron` daemon as a user runs it: the scenes are ordinary local rows (model, steps, seed), the MP4 is
checked as the placeholder's is (tests/integration/test_video_rows.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from support.daemons import DaemonProcess
from support.db import base_env, wait_until
from support.local import TORCH_NUMPY_COPY_WARNING
from support.video import FAST, THREE_SCENES, insert_video, probe

pytestmark = TORCH_NUMPY_COPY_WARNING


def finished(conn: psycopg.Connection[Any], video_id: int) -> Any:
    row = conn.execute("SELECT * FROM images WHERE id = %s", [video_id]).fetchone()
    return row if row["status"] in ("ReadyToPublish", "Failed") else None


def test_a_video_of_miniature_model_stills(conn: psycopg.Connection[Any], db_url: str,
                                           local_env: Callable[..., dict[str, str]], tmp_path: Path) -> None:
    video_id = insert_video(conn, THREE_SCENES, width=64, height=64, steps=2, seed=5)
    env = base_env(db_url, **local_env(IMAGEND_VIDEO_DIR=str(tmp_path / "videos"), **FAST))

    daemon = DaemonProcess(["-cron"], env, tmp_path)  # the model is loaded once; the scenes' end wakes it
    try:
        row = wait_until(lambda: finished(conn, video_id), 100, 0.1, "the video")
    finally:
        code = daemon.stop()
    assert code == 0, daemon.output()[-3000:]
    assert row["status"] == "ReadyToPublish", row["error"]
    scenes = conn.execute("SELECT backend, steps, seed, width, height, status FROM images WHERE parent_id = %s "
                          "ORDER BY scene_index", [video_id]).fetchall()
    assert [(s["backend"], s["steps"], s["seed"], s["status"]) for s in scenes] == [
        ("local", 2, 5, "ReadyToPublish"), ("local", 2, 6, "ReadyToPublish"), ("local", 2, 7, "ReadyToPublish")]
    info = probe(Path(row["output_url"].removeprefix("file://")))
    assert (info.codec, info.pix_fmt, info.width, info.height, info.fps) == ("h264", "yuv420p", 1920, 1080, 30.0)
    assert info.seconds == pytest.approx(6.0, abs=0.1) and info.audio == "aac"
    assert info.boxes.index("moov") < info.boxes.index("mdat")
    assert Path(row["thumbnail_url"].removeprefix("file://")).stat().st_size > 0
