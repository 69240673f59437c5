"""Issue 24, video rows through `imagend -cron` daemons (subprocesses) on a real Postgres: scenes made by
two daemons in parallel and the video composed once; a daemon SIGKILLed while it renders, the video
finished by another without a scene made again; a cancel during the render ends the row Failed
'cancelled' within a second with nothing left in storage. Outputs read with PyAV (support/video.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from support.daemons import DaemonProcess
from support.db import base_env, wait_until
from support.video import FAST, THREE_SCENES, insert_video, probe

CLAIMS = """
CREATE TABLE video_claims (id int, owner text);
CREATE FUNCTION video_note_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO video_claims VALUES (NEW.id, NEW.locked_by); RETURN NULL; END $$;
CREATE TRIGGER video_note_claims AFTER UPDATE OF status ON images FOR EACH ROW
    WHEN (NEW.status = 'Generate') EXECUTE FUNCTION video_note_claim();
"""
# Long enough to be caught rendering on a loaded 2-core machine: 4 scenes, 6 s at 30 fps, x264 medium.
LONG = [{"prompt": f"scene {n}", "seconds": 1.5, "motion": motion}
        for n, motion in enumerate(("zoom_in", "pan_left", "zoom_out", "pan_right"))]


def env_for(db_url: str, tmp_path: Path, **overrides: str) -> dict[str, str]:
    return base_env(db_url, IMAGEND_VIDEO_DIR=str(tmp_path / "videos"), IMAGEND_DEAD_AFTER="2",
                    IMAGEND_PROCESSOR_INTERVAL="0.5", **{**FAST, **overrides})


def row_of(conn: Any, video_id: int) -> dict[str, Any]:
    return dict(conn.execute("SELECT * FROM images WHERE id = %s", [video_id]).fetchone())


def rendering(conn: Any, video_id: int) -> bool:
    row = row_of(conn, video_id)
    return bool(row["phase"] == "render" and row["status"] == "Generate")


def finished(conn: Any, video_id: int) -> dict[str, Any] | None:
    row = row_of(conn, video_id)
    return row if row["status"] in ("ReadyToPublish", "Failed") else None


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_daemons_make_the_scenes_in_parallel_and_compose_once(db_url: str, conn: Any, tmp_path: Path) -> None:
    conn.execute(CLAIMS)
    env = env_for(db_url, tmp_path, IMAGEND_PLACEHOLDER_DELAY="1")
    daemons = [DaemonProcess(["-cron"], env, tmp_path) for _ in range(2)]
    try:
        video_id = insert_video(conn, [*THREE_SCENES, {"prompt": "the end", "seconds": 1}])
        row = wait_until(lambda: finished(conn, video_id), 90, 0.1, "the video")
    finally:
        codes = [daemon.stop() for daemon in daemons]
    assert row["status"] == "ReadyToPublish", (row["error"], [d.output()[-2000:] for d in daemons])
    assert codes == [0, 0]
    scenes = [r["id"] for r in conn.execute("SELECT id FROM images WHERE parent_id = %s", [video_id]).fetchall()]
    makers = conn.execute("SELECT DISTINCT split_part(owner, ':', 2) AS pid FROM video_claims WHERE id = ANY(%s)",
                          [scenes]).fetchall()
    assert len(makers) == 2  # both daemons made scenes
    claims = conn.execute("SELECT count(*) AS n FROM video_claims WHERE id = %s", [video_id]).fetchone()["n"]
    assert claims == 2  # once to queue the scenes, once to compose
    assert sum(d.output().count("video_done") for d in daemons) == 1
    info = probe(Path(row["output_url"].removeprefix("file://")))
    assert (info.codec, info.pix_fmt, info.width, info.height, info.fps) == ("h264", "yuv420p", 1920, 1080, 30.0)
    assert info.seconds == pytest.approx(7.0, abs=0.1) and info.audio == "aac"
    assert info.boxes.index("moov") < info.boxes.index("mdat")
    assert Path(row["thumbnail_url"].removeprefix("file://")).stat().st_size > 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigkill_while_rendering_another_daemon_finishes_without_making_scenes_again(
        db_url: str, conn: Any, tmp_path: Path) -> None:
    conn.execute(CLAIMS)
    env = env_for(db_url, tmp_path, IMAGEND_VIDEO_X264_PRESET="medium")
    victim = DaemonProcess(["-cron"], env, tmp_path)
    heir = None
    try:
        video_id = insert_video(conn, LONG)
        wait_until(lambda: rendering(conn, video_id), 60, 0.05, "the render")
        scenes_before = conn.execute("SELECT id, attempts, finished_at FROM images WHERE parent_id = %s ORDER BY id",
                                     [video_id]).fetchall()
        victim.kill()
        heir = DaemonProcess(["-cron"], {**env, **FAST}, tmp_path)  # x264 at its fastest: the test's time
        row = wait_until(lambda: finished(conn, video_id), 150, 0.1, "the video, finished by the heir")
    finally:
        victim.kill()
        if heir is not None:
            heir.stop()
    assert row["status"] == "ReadyToPublish", row["error"]
    assert row["crashes"] == 1
    scenes_after = conn.execute("SELECT id, attempts, finished_at FROM images WHERE parent_id = %s ORDER BY id",
                                [video_id]).fetchall()
    assert scenes_after == scenes_before  # not one scene made again
    scene_claims = conn.execute("SELECT count(*) AS n FROM video_claims WHERE id = ANY(%s)",
                                [[s["id"] for s in scenes_before]]).fetchone()["n"]
    assert scene_claims == len(LONG)
    info = probe(Path(row["output_url"].removeprefix("file://")))
    assert (info.width, info.height, info.fps, info.audio) == (1920, 1080, 30.0, None)
    assert info.seconds == pytest.approx(6.0, abs=0.1)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_cancel_while_rendering_ends_failed_within_a_second_leaving_nothing(
        db_url: str, conn: Any, tmp_path: Path) -> None:
    env = env_for(db_url, tmp_path, IMAGEND_VIDEO_X264_PRESET="medium")
    daemon = DaemonProcess(["-cron"], env, tmp_path)
    try:
        video_id = insert_video(conn, LONG, video_preset="hd")
        wait_until(lambda: rendering(conn, video_id), 60, 0.05, "the render")
        time.sleep(0.5)  # ffmpeg is at work
        asked = time.monotonic()
        conn.execute("UPDATE images SET cancel_requested = true WHERE id = %s", [video_id])
        row = wait_until(lambda: finished(conn, video_id), 5, 0.02, "the cancel")
        took = time.monotonic() - asked
    finally:
        code = daemon.stop()
    assert (row["status"], row["error"]) == ("Failed", "cancelled")
    assert took < 1.0, took
    assert code == 0
    folder = tmp_path / "videos"
    assert not folder.exists() or list(folder.iterdir()) == []
    assert "video_error" not in daemon.output()
