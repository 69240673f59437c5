"""Video presets (`video_preset`), aspects (`aspect`) and the cost formula.

The presets follow the usual upload recommendations (YouTube's, Vimeo's): H.264 High (H.265 for 4K,
tagged `hvc1` so Apple players open it), `yuv420p`, a closed GOP of half the frame rate (two keyframes
a second), CRF rather than a bitrate, AAC-LC 48 kHz stereo, and the `moov` atom first (`+faststart`)
so a browser starts playing before the whole file has arrived."""

from __future__ import annotations

from dataclasses import dataclass

from imagend.errors import BadInput


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    width: int  # for 16:9; other aspects keep the long side (aspect_size)
    height: int
    fps: int
    codec: str  # the ffmpeg encoder on the CPU
    crf: int
    tag: str | None  # the MP4 codec tag ("hvc1" for H.265)
    multiplier: float  # the cost's quality multiplier (IMAGEND_VIDEO_COST_MULTIPLIERS overrides)
    audio_kbps: int = 192

    @property
    def gop(self) -> int:
        return self.fps // 2


PRESETS: dict[str, Preset] = {
    "standard": Preset("standard", 1920, 1080, 30, "libx264", 21, None, 1.0),
    "hd": Preset("hd", 1920, 1080, 60, "libx264", 21, None, 2.0),
    "ultra": Preset("ultra", 3840, 2160, 60, "libx265", 24, "hvc1", 5.0, audio_kbps=256),
}
DEFAULT_PRESET = "standard"
ASPECTS: tuple[str, ...] = ("16:9", "9:16", "1:1")
DEFAULT_ASPECT = "16:9"
# The scene stills' size when the video row leaves width and height NULL: a size every backend makes
# (multiples of 64), upscaled by compose.py before the motion.
STILL_SIZES: dict[str, tuple[int, int]] = {"16:9": (1024, 576), "9:16": (576, 1024), "1:1": (768, 768)}


def preset_of(name: str | None) -> Preset:
    key = (name or DEFAULT_PRESET).strip().lower()
    preset = PRESETS.get(key)
    if preset is None:
        raise BadInput(f"unknown video_preset {key[:40]!r}; use one of: {', '.join(PRESETS)}")
    return preset


def aspect_of(aspect: str | None) -> str:
    value = (aspect or DEFAULT_ASPECT).strip()
    if value not in ASPECTS:
        raise BadInput(f"unknown aspect {value[:40]!r}; use one of: {', '.join(ASPECTS)}")
    return value


def frame_size(preset: Preset, aspect: str) -> tuple[int, int]:
    """The encoded frame: the preset's long side kept, the short side from the aspect (even numbers)."""
    long_side, short_side = preset.width, preset.height
    if aspect == "16:9":
        return long_side, short_side
    if aspect == "9:16":
        return short_side, long_side
    return short_side, short_side


def video_cost(seconds: float, preset: Preset, base_per_second: float, multipliers: dict[str, float]) -> float:
    """The module's formula: duration x base cost per second x the preset's quality multiplier."""
    return round(seconds * base_per_second * multipliers.get(preset.name, preset.multiplier), 6)
