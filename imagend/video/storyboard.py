"""A video row's storyboard (`scenes`): parsed and checked before any scene is made, every fault a
readable sentence naming the scene. What the fields mean is in docs/video.md."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from imagend.errors import BadInput

MAX_SCENES = 200
SCENE_MAX_SECONDS = 60.0
SCENE_MIN_SECONDS = 0.5
PROMPT_MAX_CHARS = 999  # as an image row's prompt
NARRATION_MAX_CHARS = 2000  # about two minutes of speech: more than any scene holds
STORYBOARD_MAX_CHARS = 1_000_000  # the JSON text itself, checked before it is parsed
ECHO_CHARS = 40
SCENE_KEYS = ("prompt", "seconds", "narration", "motion", "transition")

# Ken Burns moves (compose.py draws each): a slow zoom or a pan across the upscaled still.
MOTIONS: tuple[str, ...] = ("zoom_in", "zoom_out", "pan_left", "pan_right", "pan_up", "pan_down", "none")
DEFAULT_MOTION = "zoom_in"
# How a scene follows the one before: ffmpeg's xfade transitions by a name of ours ("cut": none).
TRANSITIONS: dict[str, str | None] = {
    "crossfade": "fade", "dissolve": "dissolve", "fade_black": "fadeblack", "fade_white": "fadewhite",
    "wipe_left": "wipeleft", "wipe_right": "wiperight", "slide_left": "slideleft", "slide_right": "slideright",
    "circle_open": "circleopen", "cut": None,
}
DEFAULT_TRANSITION = "crossfade"


@dataclass(frozen=True, slots=True)
class Scene:
    prompt: str
    seconds: float
    narration: str | None = None
    motion: str = DEFAULT_MOTION
    transition: str = DEFAULT_TRANSITION  # into this scene from the one before (ignored on the first)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt": self.prompt, "seconds": self.seconds, "motion": self.motion,
                               "transition": self.transition}
        if self.narration:
            out["narration"] = self.narration
        return out


def _echo(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return repr(text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "…")


def parse_storyboard(text: str | None, *, max_seconds: float) -> list[Scene]:
    """The scenes of a `scenes` column's JSON text; BadInput says what is wrong and where."""
    if text is None:
        raise BadInput("scenes is empty: give a list of scenes, or leave scenes NULL and set IMAGEND_SCRIPT_URL")
    if len(text) > STORYBOARD_MAX_CHARS:
        raise BadInput(f"scenes is {len(text):,} characters of JSON; at most {STORYBOARD_MAX_CHARS:,}")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise BadInput(f"scenes is not JSON: {_echo(text)}") from None
    return check_storyboard(value, max_seconds=max_seconds)


def check_storyboard(value: Any, *, max_seconds: float) -> list[Scene]:
    if isinstance(value, dict) and set(value) == {"scenes"}:
        value = value["scenes"]
    if not isinstance(value, list):
        raise BadInput(f"scenes must be a JSON list of scenes, got {type(value).__name__}: {_echo(value)}")
    if not value:
        raise BadInput("scenes is an empty list: a video needs at least one scene")
    if len(value) > MAX_SCENES:
        raise BadInput(f"scenes has {len(value):,} scenes; at most {MAX_SCENES}")
    scenes = [_scene(index, item) for index, item in enumerate(value, start=1)]
    total = sum(scene.seconds for scene in scenes)
    if total > max_seconds + 1e-9:
        raise BadInput(f"the scenes last {total:g} s in all; at most {max_seconds:g} s (IMAGEND_VIDEO_MAX_SECONDS)")
    return scenes


def _scene(index: int, item: Any) -> Scene:
    where = f"scene {index}"
    if not isinstance(item, dict):
        raise BadInput(f"{where} must be an object with prompt and seconds, got {type(item).__name__}: {_echo(item)}")
    unknown = sorted(set(item) - set(SCENE_KEYS))
    if unknown:
        raise BadInput(f"{where}: unknown field {_echo(unknown[0])}; a scene has: {', '.join(SCENE_KEYS)}")
    prompt = item.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadInput(f"{where}: prompt must be a non-empty string, got {_echo(prompt)}")
    if len(prompt) > PROMPT_MAX_CHARS:
        raise BadInput(f"{where}: prompt is {len(prompt):,} characters; at most {PROMPT_MAX_CHARS}")
    given = item.get("seconds")
    if isinstance(given, bool) or not isinstance(given, int | float):
        raise BadInput(f"{where}: seconds must be a number, got {_echo(given)}")
    try:
        seconds = float(given)
    except OverflowError:  # an integer of hundreds of digits
        seconds = math.inf
    if not math.isfinite(seconds):
        raise BadInput(f"{where}: seconds must be a finite number, got {_echo(given)}")
    if not SCENE_MIN_SECONDS <= seconds <= SCENE_MAX_SECONDS:
        raise BadInput(f"{where}: seconds must be between {SCENE_MIN_SECONDS:g} and {SCENE_MAX_SECONDS:g}, "
                       f"got {seconds:g}")
    narration = item.get("narration")
    if narration is not None:
        if not isinstance(narration, str):
            raise BadInput(f"{where}: narration must be a string, got {_echo(narration)}")
        if len(narration) > NARRATION_MAX_CHARS:
            raise BadInput(f"{where}: narration is {len(narration):,} characters; at most {NARRATION_MAX_CHARS:,}")
        narration = narration.strip() or None
    motion = item.get("motion", DEFAULT_MOTION)
    if motion is None:
        motion = DEFAULT_MOTION
    if not isinstance(motion, str) or motion.strip().lower() not in MOTIONS:
        raise BadInput(f"{where}: unknown motion {_echo(motion)}; use one of: {', '.join(MOTIONS)}")
    transition = item.get("transition", DEFAULT_TRANSITION)
    if transition is None:
        transition = DEFAULT_TRANSITION
    if not isinstance(transition, str) or transition.strip().lower() not in TRANSITIONS:
        raise BadInput(f"{where}: unknown transition {_echo(transition)}; use one of: {', '.join(TRANSITIONS)}")
    return Scene(prompt.strip(), seconds, narration, motion.strip().lower(), transition.strip().lower())


def storyboard_json(scenes: list[Scene]) -> str:
    return json.dumps([scene.as_json() for scene in scenes])
