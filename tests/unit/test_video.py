"""Issue 24's pure parts: the storyboard's checks, the timeline that keeps a video as long as its scenes
with transitions overlapping, presets and aspects (equal to the producer columns' choices), the cost,
the video settings' errors."""

from __future__ import annotations

import pytest

from imagend.config.env import Env
from imagend.db.columns import COLUMNS, TASKS, VIDEO_ASPECTS, VIDEO_PRESETS
from imagend.errors import BadInput, ConfigError
from imagend.video.compose import plan_timeline
from imagend.video.presets import ASPECTS, PRESETS, aspect_of, frame_size, preset_of, video_cost
from imagend.video.settings import load_video_settings
from imagend.video.storyboard import check_storyboard, parse_storyboard


def scenes(*seconds: float, transition: str = "crossfade") -> list:
    return check_storyboard([{"prompt": f"s{i}", "seconds": s, "transition": transition}
                             for i, s in enumerate(seconds)], max_seconds=600)


def test_the_columns_choices_are_the_presets_and_aspects():
    assert tuple(PRESETS) == VIDEO_PRESETS and VIDEO_ASPECTS == ASPECTS and "video" in TASKS
    assert COLUMNS["video_preset"].choices == VIDEO_PRESETS and not COLUMNS["scenes"].claimed


@pytest.mark.parametrize("fps", [30, 60])
@pytest.mark.parametrize("seconds", [(2, 2, 2), (1.5, 0.5, 3.25), (0.5, 0.5), (7,)])
def test_transitions_overlap_so_the_video_lasts_what_its_scenes_say(fps, seconds):
    timeline = plan_timeline(scenes(*seconds), fps)
    assert timeline.total_frames == round(sum(seconds) * fps)
    assert sum(timeline.frames) - sum(timeline.transitions) == timeline.total_frames
    assert all(t % 2 == 0 and t <= 0.4 * min(seconds) * fps + 2 for t in timeline.transitions)
    assert timeline.boundaries[0] == 0 and timeline.transitions[0] == 0


def test_cuts_have_no_overlap():
    timeline = plan_timeline(scenes(1, 1, 1, transition="cut"), 30)
    assert timeline.transitions == [0, 0, 0] and timeline.frames == [30, 30, 30]


def test_presets_aspects_and_cost():
    assert preset_of(None).name == "standard" and preset_of(" HD ").name == "hd"
    with pytest.raises(BadInput, match="unknown video_preset '8k'; use one of: standard, hd, ultra"):
        preset_of("8k")
    with pytest.raises(BadInput, match="unknown aspect '4:3'"):
        aspect_of("4:3")
    assert frame_size(PRESETS["ultra"], "9:16") == (2160, 3840) and frame_size(PRESETS["hd"], "1:1") == (1080, 1080)
    assert PRESETS["ultra"].tag == "hvc1" and PRESETS["hd"].gop == 30
    assert video_cost(30, PRESETS["ultra"], 0.01, {"ultra": 5}) == pytest.approx(1.5)
    assert video_cost(30, PRESETS["hd"], 0.02, {}) == pytest.approx(1.2)


def test_a_storyboard_that_is_not_json_or_too_long():
    with pytest.raises(BadInput, match="scenes is not JSON"):
        parse_storyboard("[{", max_seconds=600)
    with pytest.raises(BadInput, match="at most 10 s"):
        parse_storyboard('[{"prompt": "a", "seconds": 11}]', max_seconds=10)
    wrapped = parse_storyboard('{"scenes": [{"prompt": " a ", "seconds": 1, "motion": null}]}', max_seconds=10)
    assert (wrapped[0].prompt, wrapped[0].motion) == ("a", "zoom_in")


def test_video_settings_name_the_variable(tmp_path):
    def load(**values: str):
        return load_video_settings(Env(values), tmp_path)

    assert load().cost_multipliers == {"standard": 1.0, "hd": 2.0, "ultra": 5.0}
    assert load(IMAGEND_VIDEO_COST_MULTIPLIERS="hd=3").cost_multipliers["hd"] == 3.0
    assert load().folder == tmp_path / "videos"
    with pytest.raises(ConfigError, match="IMAGEND_VIDEO_COST_MULTIPLIERS"):
        load(IMAGEND_VIDEO_COST_MULTIPLIERS="imax=9")
    with pytest.raises(ConfigError, match="IMAGEND_SCRIPT_MODEL"):
        load(IMAGEND_SCRIPT_URL="http://127.0.0.1:11434/v1")
    with pytest.raises(ConfigError, match="IMAGEND_SCRIPT_URL='ollama'"):
        load(IMAGEND_SCRIPT_URL="ollama", IMAGEND_SCRIPT_MODEL="m")
    with pytest.raises(ConfigError, match="IMAGEND_VIDEO_ENCODER"):
        load(IMAGEND_VIDEO_ENCODER="quicksync")


@pytest.mark.parametrize(("seconds", "expected"), [
    (10**400, "seconds must be a finite number"), (float("nan"), "seconds must be a finite number"),
    (True, "seconds must be a number"), (0.25, "got 0.25"),
])
def test_seconds_that_are_no_usable_number(seconds, expected):
    with pytest.raises(BadInput, match=expected):
        check_storyboard([{"prompt": "a", "seconds": seconds}], max_seconds=600)
