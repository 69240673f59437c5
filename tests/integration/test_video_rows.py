"""Issue 24, video rows in process on a real Postgres: a storyboard becomes scene rows and an MP4; every
bad input fails the video before a scene is made (no scene row left waiting); a failed scene fails its
video naming it; a cancelled video cancels its scenes; the script endpoint (a local fake speaking the
chat-completions protocol, checked with the openai SDK as its client) with good and bad answers."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from imagend.db.rows import Status
from imagend.queue.pass_counts import PassCounts

from support.daemons import InProcess
from support.video import FAST, STORYBOARD, FakeChat, completion, insert_video, probe


def run_until(process: InProcess, conn: Any, video_id: int, statuses: tuple[str, ...] = ("ReadyToPublish", "Failed"),
              passes: int = 12) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for _ in range(passes):
        process.generator.run_once()
        row = conn.execute("SELECT * FROM images WHERE id = %s", [video_id]).fetchone()
        if row["status"] in statuses:
            return row
    return row


def scene_rows(conn: Any, video_id: int) -> list[dict[str, Any]]:
    return list(conn.execute("SELECT id, status, error, scene_index FROM images WHERE parent_id = %s "
                             "ORDER BY scene_index", [video_id]).fetchall())


@pytest.fixture
def video_daemon(make_settings: Any, make_repo: Any, tmp_path: Path) -> Iterator[Callable[..., InProcess]]:
    made: list[InProcess] = []

    def make(**env: str) -> InProcess:
        settings = make_settings(IMAGEND_VIDEO_DIR=str(tmp_path / "videos"), **{**FAST, **env})
        process = InProcess(make_repo(settings, owner=f"test:{len(made)}:video"), settings)
        made.append(process)
        return process

    yield make
    for process in made:
        process.close()


def test_three_scenes_become_an_mp4_with_narration_and_a_poster(conn: Any, video_daemon: Any, tmp_path: Path) -> None:
    daemon = video_daemon()
    video_id = insert_video(conn, seed=7)

    row = run_until(daemon, conn, video_id)

    assert row["status"] == "ReadyToPublish", row["error"]
    assert row["base64"] is None and row["format"] == "mp4" and row["phase"] == "done"
    assert row["video_seconds"] == pytest.approx(6.0) and row["cost"] == pytest.approx(6.0 * 0.01 * 1)
    scenes = conn.execute("SELECT status, seed, width, height, backend FROM images WHERE parent_id = %s "
                          "ORDER BY scene_index", [video_id]).fetchall()
    assert [s["status"] for s in scenes] == ["ReadyToPublish"] * 3
    assert [s["seed"] for s in scenes] == [7, 8, 9] and {(s["width"], s["height"]) for s in scenes} == {(1024, 576)}
    mp4 = Path(row["output_url"].removeprefix("file://"))
    assert row["output_path"] == str(mp4) and mp4.parent == tmp_path / "videos"
    info = probe(mp4)
    assert (info.codec, info.pix_fmt, info.width, info.height, info.fps) == ("h264", "yuv420p", 1920, 1080, 30.0)
    assert info.seconds == pytest.approx(6.0, abs=0.1)
    assert (info.audio, info.sample_rate) == ("aac", 48000)
    assert info.boxes.index("moov") < info.boxes.index("mdat")
    poster = Path(row["thumbnail_url"].removeprefix("file://"))
    assert poster.read_bytes()[:3] == b"\xff\xd8\xff"


def test_a_video_without_narration_has_no_audio_and_keeps_its_length_through_cuts(conn: Any, video_daemon: Any) -> None:
    scenes = [{"prompt": "one", "seconds": 1.5}, {"prompt": "two", "seconds": 1, "transition": "cut"},
              {"prompt": "three", "seconds": 1, "transition": "wipe_left", "motion": "pan_up"}]
    video_id = insert_video(conn, scenes, aspect="9:16")

    row = run_until(video_daemon(), conn, video_id)

    assert row["status"] == "ReadyToPublish", row["error"]
    info = probe(Path(row["output_url"].removeprefix("file://")))
    assert (info.width, info.height, info.audio) == (1080, 1920, None)
    assert info.seconds == pytest.approx(3.5, abs=0.1)


BAD = [
    ([], "scenes is an empty list"),
    ([{"prompt": "x", "seconds": 1}] * 1000, "scenes has 1,000 scenes; at most 200"),
    ([{"prompt": "x", "seconds": 0}], "scene 1: seconds must be between 0.5 and 60, got 0"),
    ([{"prompt": "x", "seconds": -3}], "scene 1: seconds must be between 0.5 and 60, got -3"),
    ([{"prompt": "x", "seconds": 61}], "scene 1: seconds must be between 0.5 and 60, got 61"),
    ([{"prompt": "x", "seconds": 60}] * 11, "the scenes last 660 s in all; at most 600 s"),
    ([{"prompt": "x", "seconds": 1}, {"prompt": "y", "seconds": 1, "motion": "spin"}],
     "scene 2: unknown motion 'spin'"),
    ([{"prompt": "x", "seconds": 1, "transition": "star_wipe"}], "scene 1: unknown transition 'star_wipe'"),
    ([{"prompt": "x", "seconds": 1, "narration": "a" * 100_000}], "scene 1: narration is 100,000 characters"),
    ([{"seconds": 1}], "scene 1: prompt must be a non-empty string"),
    ({"story": "no"}, "scenes must be a JSON list of scenes, got dict"),
    ([{"prompt": "x", "seconds": "2"}], "scene 1: seconds must be a number, got '2'"),
    ([{"prompt": "x", "seconds": 1, "colour": "red"}], "scene 1: unknown field 'colour'"),
]


def test_bad_storyboards_fail_before_any_scene_row(conn: Any, video_daemon: Any) -> None:
    daemon = video_daemon()
    ids = [(insert_video(conn, scenes), expected) for scenes, expected in BAD]
    preset_id = insert_video(conn, video_preset="imax")  # the API's CHECK is the column's choices; SQL takes it
    no_script_id = insert_video(conn, None, prompt="a fox's day")
    for _ in range(3):
        daemon.generator.run_once()
    for video_id, expected in ids:
        row = conn.execute("SELECT status, error FROM images WHERE id = %s", [video_id]).fetchone()
        assert row["status"] == "Failed" and expected in row["error"], (expected, row)
        assert scene_rows(conn, video_id) == []
    preset = conn.execute("SELECT status, error FROM images WHERE id = %s", [preset_id]).fetchone()
    assert preset["status"] == "Failed"
    assert "unknown video_preset 'imax'; use one of: standard, hd, ultra" in preset["error"]
    no_script = conn.execute("SELECT status, error FROM images WHERE id = %s", [no_script_id]).fetchone()
    assert no_script["status"] == "Failed" and "set IMAGEND_SCRIPT_URL and IMAGEND_SCRIPT_MODEL" in no_script["error"]
    assert conn.execute("SELECT count(*) AS n FROM images WHERE parent_id IS NOT NULL").fetchone()["n"] == 0


def test_bad_background_audio_fails_before_any_scene_row(conn: Any, video_daemon: Any) -> None:
    daemon = video_daemon(IMAGEND_VIDEO_BACKGROUND_MAX_BYTES="1000")
    not_audio = insert_video(conn, background_audio=base64.b64encode(b"this is no audio at all" * 10).decode())
    too_big = insert_video(conn, background_audio=base64.b64encode(bytes(3000)).decode())
    for _ in range(2):
        daemon.generator.run_once()
    rows = {r["id"]: r for r in conn.execute("SELECT id, status, error FROM images WHERE id = ANY(%s)",
                                              [[not_audio, too_big]]).fetchall()}
    assert rows[not_audio]["status"] == "Failed" and "background_audio is not an audio file" in rows[not_audio]["error"]
    assert rows[too_big]["status"] == "Failed"
    assert "background_audio is about 3,000 bytes; at most 1,000" in rows[too_big]["error"]
    assert scene_rows(conn, not_audio) == [] and scene_rows(conn, too_big) == []


def test_background_audio_is_mixed_in(conn: Any, video_daemon: Any, tmp_path: Path) -> None:
    import subprocess

    import imageio_ffmpeg

    wav = tmp_path / "tone.wav"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=1", str(wav)], check=True)
    video_id = insert_video(conn, [{"prompt": "a", "seconds": 1}, {"prompt": "b", "seconds": 1}],
                            background_audio=base64.b64encode(wav.read_bytes()).decode())

    row = run_until(video_daemon(), conn, video_id)

    assert row["status"] == "ReadyToPublish", row["error"]
    info = probe(Path(row["output_url"].removeprefix("file://")))
    assert info.audio == "aac" and info.seconds == pytest.approx(2.0, abs=0.1)  # a 1 s loop, looped to the end


def test_a_failed_scene_fails_its_video_naming_it_and_cancels_the_rest(conn: Any, video_daemon: Any) -> None:
    daemon = video_daemon()
    video_id = insert_video(conn)
    # The video's first claim only queues its scenes; then one scene fails while the others wait.
    rows = daemon.generator.repo.claim_batch("placeholder", 1)
    assert [r.id for r in rows] == [video_id]
    daemon.generator.videos.run("placeholder", rows[0], PassCounts())
    scenes = scene_rows(conn, video_id)
    assert [s["status"] for s in scenes] == [Status.READY_TO_GENERATE] * 3
    conn.execute("UPDATE images SET run_after = now() + interval '1 hour' WHERE parent_id = %s", [video_id])
    conn.execute("UPDATE images SET status = 'Failed', error = 'the GPU caught fire' WHERE id = %s", [scenes[1]["id"]])

    row = run_until(daemon, conn, video_id, passes=2)

    assert row["status"] == "Failed"
    assert row["error"] == f"scene 2 (row {scenes[1]['id']}) failed: the GPU caught fire"
    assert [(s["status"], s["error"]) for s in scene_rows(conn, video_id)] == [
        ("Failed", "cancelled"), ("Failed", "the GPU caught fire"), ("Failed", "cancelled")]


def test_cancelling_a_waiting_video_cancels_its_scenes(conn: Any, video_daemon: Any) -> None:
    daemon = video_daemon()
    video_id = insert_video(conn)
    rows = daemon.generator.repo.claim_batch("placeholder", 1)
    daemon.generator.videos.run("placeholder", rows[0], PassCounts())
    conn.execute("UPDATE images SET cancel_requested = true WHERE id = %s", [video_id])

    row = conn.execute("SELECT status, error FROM images WHERE id = %s", [video_id]).fetchone()
    assert (row["status"], row["error"]) == ("Failed", "cancelled")
    assert {(s["status"], s["error"]) for s in scene_rows(conn, video_id)} == {("Failed", "cancelled")}


def test_retrying_a_failed_video_retries_its_failed_scenes(conn: Any, video_daemon: Any) -> None:
    daemon = video_daemon()
    video_id = insert_video(conn, [{"prompt": "a", "seconds": 1}, {"prompt": "b", "seconds": 1}])
    daemon.generator.videos.run("placeholder", daemon.generator.repo.claim_batch("placeholder", 1)[0], PassCounts())
    conn.execute("UPDATE images SET cancel_requested = true WHERE id = %s", [video_id])
    conn.execute("UPDATE images SET status = 'ReadyToGenerate', error = NULL WHERE id = %s", [video_id])

    row = run_until(daemon, conn, video_id)

    assert row["status"] == "ReadyToPublish", row["error"]
    assert {s["status"] for s in scene_rows(conn, video_id)} == {"ReadyToPublish"}


# -- the script endpoint -------------------------------------------------------------------------------------------

@pytest.fixture
def fake_chat() -> Iterator[FakeChat]:
    fake = FakeChat()
    yield fake
    fake.close()


def test_the_fake_speaks_chat_completions_as_the_openai_sdk_reads_them(fake_chat: FakeChat) -> None:
    client = openai.OpenAI(base_url=fake_chat.url, api_key="unused", max_retries=0)
    answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "a fox"}],
                                            response_format={"type": "json_object"})
    assert json.loads(answer.choices[0].message.content or "") == STORYBOARD
    assert fake_chat.requests[0]["path"] == "/v1/chat/completions"


def test_an_idea_becomes_a_storyboard_then_a_video(conn: Any, video_daemon: Any, fake_chat: FakeChat) -> None:
    daemon = video_daemon(IMAGEND_SCRIPT_URL=fake_chat.url, IMAGEND_SCRIPT_MODEL="tiny")
    video_id = insert_video(conn, None, prompt="a fox's winter morning")

    row = run_until(daemon, conn, video_id)

    assert row["status"] == "ReadyToPublish", row["error"]
    assert [s["prompt"] for s in row["scenes"]] == [s["prompt"] for s in STORYBOARD["scenes"]]
    asked = fake_chat.requests[0]["body"]
    assert asked["model"] == "tiny" and asked["response_format"] == {"type": "json_object"}
    assert "a fox's winter morning" in asked["messages"][-1]["content"]
    assert probe(Path(row["output_url"].removeprefix("file://"))).seconds == pytest.approx(3.0, abs=0.1)


@pytest.mark.parametrize(("answer", "expected"), [
    ((200, "<html>garbage</html>"), "the script endpoint's answer is not a chat completion"),
    ((200, completion("Sure! Here is your storyboard: scene one, a fox")),
     "the script endpoint's storyboard is not JSON"),
    ((200, completion(json.dumps({"scenes": [{"prompt": "a fox", "seconds": "long"}]}))),
     "the script endpoint's storyboard is wrong: scene 1: seconds must be a number"),
    ((200, completion(json.dumps({"title": "no scenes"}))),
     "the script endpoint's storyboard is wrong: scenes must be a JSON list of scenes, got dict"),
    ((404, '{"error": {"message": "model tiny not found"}}'), "the script endpoint (IMAGEND_SCRIPT_URL) refused"),
])
def test_bad_script_answers_fail_the_video(conn: Any, video_daemon: Any, fake_chat: FakeChat,
                                           answer: tuple[int, str], expected: str) -> None:
    fake_chat.answer = lambda: answer
    daemon = video_daemon(IMAGEND_SCRIPT_URL=fake_chat.url, IMAGEND_SCRIPT_MODEL="tiny")
    video_id = insert_video(conn, None, prompt="a fox")

    row = run_until(daemon, conn, video_id, passes=2)

    assert row["status"] == "Failed" and expected in row["error"], row["error"]
    assert row["scenes"] is None and scene_rows(conn, video_id) == []


def test_a_script_endpoint_that_times_out_fails_the_video(conn: Any, video_daemon: Any, fake_chat: FakeChat) -> None:
    def slow() -> tuple[int, str]:
        time.sleep(1.5)
        return 200, completion(json.dumps(STORYBOARD))

    fake_chat.answer = slow
    daemon = video_daemon(IMAGEND_SCRIPT_URL=fake_chat.url, IMAGEND_SCRIPT_MODEL="tiny", IMAGEND_SCRIPT_TIMEOUT="0.3")
    video_id = insert_video(conn, None, prompt="a fox", max_attempts=1)

    row = run_until(daemon, conn, video_id, passes=2)

    assert row["status"] == "Failed"
    assert "the script endpoint (IMAGEND_SCRIPT_URL) did not answer within 0.3 s" in row["error"]
    assert scene_rows(conn, video_id) == []


@pytest.mark.parametrize(("preset", "expected"), [
    ("hd", ("h264", "yuv420p", 1920, 1080, 60.0, "avc1")),
    ("ultra", ("hevc", "yuv420p", 3840, 2160, 60.0, "hvc1")),
])
def test_hd_and_ultra_give_their_sizes_rates_and_codecs(conn: Any, video_daemon: Any, preset: str,
                                                        expected: tuple[Any, ...]) -> None:
    video_id = insert_video(conn, [{"prompt": "a short clip", "seconds": 0.5, "narration": "Hi."}],
                            video_preset=preset, width=64, height=64)

    row = run_until(video_daemon(), conn, video_id)

    assert row["status"] == "ReadyToPublish", row["error"]
    info = probe(Path(row["output_url"].removeprefix("file://")))
    assert (info.codec, info.pix_fmt, info.width, info.height, info.fps, info.codec_tag) == expected
    assert info.seconds == pytest.approx(0.5, abs=0.1) and (info.audio, info.sample_rate) == ("aac", 48000)
    assert info.boxes.index("moov") < info.boxes.index("mdat")
    multiplier = {"hd": 2, "ultra": 5}[preset]
    assert (row["width"], row["height"]) == expected[2:4] and row["cost"] == pytest.approx(0.5 * 0.01 * multiplier)


def test_an_owners_plan_limits_its_videos_length_and_preset(conn: Any, video_daemon: Any) -> None:
    conn.execute("INSERT INTO imagend_plans (name, max_video_seconds, max_video_preset) "
                 "VALUES ('FREE', 5, 'standard')")
    conn.execute("INSERT INTO imagend_owners (owner, plan) VALUES ('alice', 'FREE')")
    too_long = insert_video(conn, owner="alice")  # 6 s
    too_fine = insert_video(conn, [{"prompt": "a", "seconds": 0.5}], owner="alice", video_preset="hd")
    fine = insert_video(conn, [{"prompt": "a", "seconds": 0.5}], owner="alice", width=64, height=64)
    anonymous = insert_video(conn, [{"prompt": "a", "seconds": 0.5}], video_preset="hd", width=64, height=64)
    daemon = video_daemon()
    for _ in range(6):
        daemon.generator.run_once()
    rows = {r["id"]: r for r in conn.execute("SELECT id, status, error FROM images WHERE id = ANY(%s)",
                                              [[too_long, too_fine, fine, anonymous]]).fetchall()}
    assert rows[too_long]["status"] == "Failed"
    assert rows[too_long]["error"] == "the scenes last 6 s; the owner's plan FREE allows videos of at most 5 s"
    assert rows[too_fine]["status"] == "Failed"
    assert rows[too_fine]["error"] == "video_preset hd is above what the owner's plan FREE allows: at most standard"
    assert rows[fine]["status"] == "ReadyToPublish" and rows[anonymous]["status"] == "ReadyToPublish"
    assert scene_rows(conn, too_long) == [] and scene_rows(conn, too_fine) == []
    owners = conn.execute("SELECT DISTINCT owner FROM images WHERE parent_id = %s", [fine]).fetchall()
    assert owners == [{"owner": "alice"}]  # the scenes are the owner's rows too


def test_narration_on_a_host_without_espeak_fails_saying_what_to_install(conn: Any, video_daemon: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from imagend.video import narration

    monkeypatch.setattr(narration, "espeak_path", lambda: None)
    video_id = insert_video(conn)

    row = run_until(video_daemon(), conn, video_id, passes=2)

    assert row["status"] == "Failed" and "narration needs espeak-ng" in row["error"]
    assert "apt-get install espeak-ng" in row["error"] and scene_rows(conn, video_id) == []


def test_subtitles_burn_the_narration_in(conn: Any, video_daemon: Any) -> None:
    video_id = insert_video(conn, [{"prompt": "a", "seconds": 1, "narration": "Hello there."},
                                   {"prompt": "b", "seconds": 1}], width=64, height=64)

    row = run_until(video_daemon(IMAGEND_VIDEO_SUBTITLES="true"), conn, video_id)

    assert row["status"] == "ReadyToPublish", row["error"]
    info = probe(Path(row["output_url"].removeprefix("file://")))
    assert info.seconds == pytest.approx(2.0, abs=0.1) and info.audio == "aac"


def test_a_daemon_stopping_mid_render_hands_the_video_back_uncharged(conn: Any, video_daemon: Any) -> None:
    import threading

    daemon = video_daemon(IMAGEND_VIDEO_X264_PRESET="medium")
    video_id = insert_video(conn, [{"prompt": "a", "seconds": 3}, {"prompt": "b", "seconds": 3}])
    passes = threading.Thread(target=lambda: [daemon.generator.run_once() for _ in range(3)])
    passes.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = conn.execute("SELECT status, phase FROM images WHERE id = %s", [video_id]).fetchone()
        if row["status"] == "Generate" and row["phase"] == "render":
            break
        time.sleep(0.05)
    daemon.daemon.aborting.set()  # what the drain's end (or a second SIGTERM) does
    daemon.daemon.stopping.set()
    passes.join(10)
    assert not passes.is_alive()
    row = conn.execute("SELECT status, error, attempts, locked_by FROM images WHERE id = %s", [video_id]).fetchone()
    assert (row["status"], row["attempts"], row["locked_by"]) == ("ReadyToGenerate", 0, None), row
