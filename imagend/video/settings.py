"""The video settings (docs/settings.md, "Video"), read from the daemon's one Env when it starts, as a
backend reads its own: a bad value stops the start naming the variable."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from imagend.config.env import Env, Secret
from imagend.errors import ConfigError
from imagend.video.compose import Encoder
from imagend.video.presets import PRESETS

VIDEO_MAX_SECONDS = 600.0  # VIP+'s limit in the module imagend serves; plans narrow it
COST_PER_SECOND = 0.01
SCRIPT_TIMEOUT_SECONDS = 60.0
RENDER_TIMEOUT_SECONDS = 3600.0
BACKGROUND_AUDIO_MAX_BYTES = 50 * 1024 * 1024
X264_SPEEDS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


@dataclass(frozen=True)
class VideoSettings:
    max_seconds: float = VIDEO_MAX_SECONDS
    encoder: Encoder = field(default_factory=Encoder)
    cost_per_second: float = COST_PER_SECOND
    cost_multipliers: dict[str, float] = field(default_factory=lambda: {n: p.multiplier for n, p in PRESETS.items()})
    script_url: str | None = None
    script_model: str | None = None
    script_api_key: Secret | None = None
    script_timeout_seconds: float = SCRIPT_TIMEOUT_SECONDS
    render_timeout_seconds: float = RENDER_TIMEOUT_SECONDS
    background_max_bytes: int = BACKGROUND_AUDIO_MAX_BYTES
    subtitles: bool = False
    ffmpeg: str | None = None  # None: imageio-ffmpeg's static binary
    folder: Path | None = None  # where videos go when IMAGEND_STORAGE_URL is unset

    def ffmpeg_path(self) -> str:
        if self.ffmpeg:
            return self.ffmpeg
        try:
            import imageio_ffmpeg
        except ImportError:
            found = shutil.which("ffmpeg")
            if found is None:
                raise ConfigError("video rows need ffmpeg: pip install imageio-ffmpeg, or set IMAGEND_FFMPEG") from None
            return found
        return str(imageio_ffmpeg.get_ffmpeg_exe())


def _multipliers(env: Env) -> dict[str, float]:
    out = {name: preset.multiplier for name, preset in PRESETS.items()}
    raw = env.str("IMAGEND_VIDEO_COST_MULTIPLIERS")
    if raw is None:
        return out
    for part in raw.split(","):
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not sep or name not in PRESETS or not number >= 0:
            raise ConfigError(f"IMAGEND_VIDEO_COST_MULTIPLIERS={raw!r}: write preset=number pairs separated by "
                              f"commas, e.g. standard=1,hd=2,ultra=5 (presets: {', '.join(PRESETS)})")
        out[name] = number
    return out


def load_video_settings(env: Env, data_dir: Path) -> VideoSettings:
    url = env.str("IMAGEND_SCRIPT_URL")
    model = env.str("IMAGEND_SCRIPT_MODEL")
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(f"IMAGEND_SCRIPT_URL={url!r} is not an http(s) URL (an OpenAI-compatible base, e.g. "
                          "http://127.0.0.1:11434/v1)")
    if url is not None and model is None:
        raise ConfigError("IMAGEND_SCRIPT_URL is set but IMAGEND_SCRIPT_MODEL is not: name the chat model")
    return VideoSettings(
        max_seconds=env.float("IMAGEND_VIDEO_MAX_SECONDS", VIDEO_MAX_SECONDS, minimum=1.0),
        encoder=Encoder(kind=env.choice("IMAGEND_VIDEO_ENCODER", "cpu", ("cpu", "nvenc")),
                        speed=env.choice("IMAGEND_VIDEO_X264_PRESET", "medium", X264_SPEEDS)),
        cost_per_second=env.float("IMAGEND_VIDEO_COST_PER_SECOND", COST_PER_SECOND, minimum=0.0),
        cost_multipliers=_multipliers(env),
        script_url=url.rstrip("/") if url else None,
        script_model=model,
        script_api_key=env.secret("IMAGEND_SCRIPT_API_KEY"),
        script_timeout_seconds=env.seconds("IMAGEND_SCRIPT_TIMEOUT", SCRIPT_TIMEOUT_SECONDS, minimum=0.1),
        render_timeout_seconds=env.seconds("IMAGEND_VIDEO_RENDER_TIMEOUT", RENDER_TIMEOUT_SECONDS, minimum=1.0),
        background_max_bytes=env.int("IMAGEND_VIDEO_BACKGROUND_MAX_BYTES", BACKGROUND_AUDIO_MAX_BYTES, minimum=1),
        subtitles=env.bool("IMAGEND_VIDEO_SUBTITLES", False),
        ffmpeg=env.str("IMAGEND_FFMPEG"),
        folder=Path(env.str("IMAGEND_VIDEO_DIR") or data_dir / "videos").expanduser(),
    )
