"""Issue 24, the OpenAI Videos API's shape on the listener: the real openai SDK creates a video from an idea
(the script endpoint a local fake), follows it queued → in_progress → completed, downloads the MP4 and the
poster; a browser's HTTP Range gets 206 with the bytes asked; a JSON body with imagend's own scenes works
too; bad bodies are refused with a readable error and write no row."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from support.http_daemon import TOKEN, HttpDaemon
from support.video import FAST, FakeChat, probe

# The SDK marks its videos resource deprecated (OpenAI's Sora API shut down on 2026-09-24); the shape is
# what matters here, and the SDK still speaks it.
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API is scheduled:DeprecationWarning")


@pytest.fixture
def fake_chat() -> Iterator[FakeChat]:
    fake = FakeChat()
    yield fake
    fake.close()


@pytest.fixture
def daemon(db_url: str, fake_chat: FakeChat, tmp_path: Path) -> Iterator[HttpDaemon]:
    with HttpDaemon(db_url, IMAGEND_VIDEO_DIR=str(tmp_path / "videos"), IMAGEND_SCRIPT_URL=fake_chat.url,
                    IMAGEND_SCRIPT_MODEL="tiny", **FAST) as running:
        yield running


def test_the_openai_sdk_makes_follows_and_downloads_a_video(daemon: HttpDaemon, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=TOKEN, max_retries=0)
    video = client.videos.create(prompt="a fox's winter morning", size="1280x720")
    assert video.id.startswith("video_") and video.status in ("queued", "in_progress") and video.object == "video"
    seen = {video.status}
    deadline = time.monotonic() + 60
    while video.status not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.1)
        video = client.videos.retrieve(video.id)
        seen.add(video.status)
    assert video.status == "completed", video.error
    assert video.progress == 100 and video.size == "1920x1080" and video.seconds == "3"
    assert "in_progress" in seen
    content = client.videos.download_content(video.id)
    mp4 = tmp_path / "sdk.mp4"
    mp4.write_bytes(content.read())
    info = probe(mp4)
    assert (info.codec, info.width, info.height) == ("h264", 1920, 1080) and info.seconds == pytest.approx(3, abs=0.1)
    poster = client.videos.download_content(video.id, variant="thumbnail").read()
    assert poster[:3] == b"\xff\xd8\xff"

    ranged = daemon.get(f"/v1/videos/{video.id}/content", headers={"Range": "bytes=0-99"})
    assert ranged.status_code == 206 and len(ranged.content) == 100
    assert ranged.headers["content-range"] == f"bytes 0-99/{mp4.stat().st_size}"
    assert ranged.content == mp4.read_bytes()[:100]


def test_a_json_body_with_scenes_and_bad_bodies(daemon: HttpDaemon, conn: Any) -> None:
    scenes = [{"prompt": "a", "seconds": 1}, {"prompt": "b", "seconds": 1, "transition": "cut"}]
    made = daemon.post("/v1/videos", json={"scenes": scenes, "video_preset": "standard", "aspect": "1:1"})
    assert made.status_code == 200, made.text
    video = made.json()
    # A daemon may claim it before the answer is written (a pickup takes a few milliseconds).
    assert video["status"] in ("queued", "in_progress") and video["size"] == "1080x1080"
    for body, status, expected in [
        ({"prompt": "x", "size": "640x480"}, 422, "size '640x480' is not one of"),
        ({"prompt": "x", "colour": "red"}, 400, "unknown field 'colour'"),
        ({}, 422, "give a prompt"),
        ({"scenes": scenes, "video_preset": "imax"}, 422, "video_preset"),
    ]:
        answer = daemon.post("/v1/videos", json=body)
        assert answer.status_code == status and expected in answer.json()["error"], answer.text
    assert daemon.post("/v1/videos", auth=False, json={"prompt": "x"}).status_code == 401
    assert conn.execute("SELECT count(*) AS n FROM images WHERE task = 'video'").fetchone()["n"] == 1
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and daemon.get(f"/v1/videos/{video['id']}").json()["status"] != "completed":
        time.sleep(0.1)
    done = daemon.get(f"/v1/videos/{video['id']}").json()
    assert done["status"] == "completed" and done["scenes"] == {"done": 2, "total": 2}
    row_id = int(video["id"].removeprefix("video_"))
    page = daemon.get(f"/images/{row_id}")  # the dashboard plays it, with its poster, and lists its scenes
    assert page.status_code == 200
    assert f'src="/v1/videos/video_{row_id}/content"' in page.text and "variant=thumbnail" in page.text
    assert "phase <span class=\"tag\">done</span>" in page.text and "scenes 2 of 2 made" in page.text
    scene_ids = [r["id"] for r in conn.execute("SELECT id FROM images WHERE parent_id = %s", [row_id]).fetchall()]
    assert all(f'href="/images/{scene}"' in page.text for scene in scene_ids)
    assert daemon.get("/v1/videos/video_999999").status_code == 404
    image_id = json.loads(daemon.post("/v1/images", json={"prompt": "an image"}).text)["id"]
    assert daemon.get(f"/v1/videos/video_{image_id}").status_code == 404  # an image is no video
