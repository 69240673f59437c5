"""Issue 24's benchmark: how fast video rows are made on this host.

1. Render speed, stills ready: a 10-scene, 30-second storyboard (3 s scenes, crossfades, motions in turn,
   narration on every other scene) composed by one ffmpeg run at `standard` and at `ultra`, with the
   daemon's defaults (x264/x265 `medium`, IMAGEND_VIDEO_X264_PRESET); printed as seconds of video per
   second of wall time. A render that would pass --cap seconds is stopped there and its rate read from
   ffmpeg's own progress (said so: "partial").
2. End to end: a 60-second `standard` video (20 scenes of 3 s) INSERTed into a fresh database and made by
   one `imagend -cron` daemon with the placeholder backend: INSERT to ReadyToPublish, and its phases.

    .venv/bin/python bench/video_render.py [--only render|e2e] [--cap 170] [--speed medium]
                                           [--presets standard,ultra] [--database-url URL]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg
import psycopg
from PIL import Image, ImageDraw, ImageFilter

from imagend.errors import Cancelled
from imagend.video.compose import Encoder, Render, build_command, run_ffmpeg
from imagend.video.narration import espeak_path, synthesise
from imagend.video.presets import PRESETS, frame_size
from imagend.video.storyboard import MOTIONS, check_storyboard

from _common import daemon, fresh_database, parser, postgres, wait_until

MOVES = [m for m in MOTIONS if m != "none"]


def still(path: Path, n: int) -> Path:
    """A 1024x576 still with what a model's picture has: gradients, shapes, edges, a little grain."""
    image = Image.linear_gradient("L").resize((1024, 576)).convert("RGB")
    draw = ImageDraw.Draw(image)
    for k in range(12):
        x, y = (97 * (n + 1) * (k + 3)) % 1024, (61 * (n + 2) * (k + 1)) % 576
        colour = ((40 * k + 30 * n) % 256, (90 * n) % 256, 200 - 10 * k)
        draw.ellipse((x, y, x + 80 + 9 * k, y + 60 + 7 * k), fill=colour)
    noise = Image.effect_noise((1024, 576), 18).convert("RGB")
    Image.blend(image.filter(ImageFilter.GaussianBlur(1.5)), noise, 0.08).save(path)
    return path


def storyboard(scenes: int, seconds: float) -> list[dict[str, object]]:
    return [{"prompt": f"scene {n}", "seconds": seconds, "motion": MOVES[n % len(MOVES)], "transition": "crossfade",
             **({"narration": f"This is scene {n + 1}, a slow look across the picture."} if n % 2 == 0 else {})}
            for n in range(scenes)]


def render_speed(preset_name: str, cap: float, speed: str) -> None:
    preset = PRESETS[preset_name]
    scenes = check_storyboard(storyboard(10, 3.0), max_seconds=600)
    with tempfile.TemporaryDirectory(prefix="imagend-bench-video-") as tmp:
        folder = Path(tmp)
        stills = [still(folder / f"s{n}.png", n) for n in range(len(scenes))]
        narration = [synthesise(s.narration, folder / f"n{n}.wav") if s.narration and espeak_path() else None
                     for n, s in enumerate(scenes)]
        render = Render(stills, scenes, narration, preset, frame_size(preset, "16:9"), folder / "out.mp4",
                        encoder=Encoder(speed=speed))
        args, timeline = build_command(imageio_ffmpeg.get_ffmpeg_exe(), render)
        done = [0.0]
        started = time.monotonic()
        partial = False
        try:
            run_ffmpeg(args, timeline.seconds, progress=lambda p: done.__setitem__(0, p),
                       cancelled=lambda: time.monotonic() - started > cap)
        except Cancelled:
            partial = True
        wall = time.monotonic() - started
        rendered = done[0] * timeline.seconds
        size = (folder / "out.mp4").stat().st_size if not partial else 0
    note = (f"partial: {rendered:.1f} of {timeline.seconds:g} s rendered in the {cap:g} s cap" if partial
            else f"{size / 1e6:.1f} MB")
    print(f"render  {preset_name:8s} {preset.width}x{preset.height}@{preset.fps} {preset.codec} {speed:9s} "
          f"{timeline.seconds:g} s of video in {wall:6.1f} s wall: {rendered / wall:.3f} s of video per s ({note})",
          flush=True)


def end_to_end(admin_url: str | None, cap: float) -> None:
    with postgres(admin_url) as server, tempfile.TemporaryDirectory(prefix="imagend-bench-e2e-") as tmp:
        url = fresh_database(server, "imagend_bench_video")
        with daemon(url, IMAGEND_VIDEO_DIR=str(Path(tmp) / "videos"), IMAGEND_LEASE_SECONDS="30"):
            report = made_once(url, cap)
    print(report, flush=True)


def made_once(url: str, cap: float) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.monotonic()
        row = conn.execute("INSERT INTO images (task, prompt, scenes) VALUES ('video', 'a minute', %s::jsonb) "
                           "RETURNING id", [json.dumps(storyboard(20, 3.0))]).fetchone()
        assert row is not None
        video_id = row[0]
        phases: dict[str, float] = {}

        def finished() -> bool:
            status, phase = conn.execute("SELECT status, phase FROM images WHERE id = %s", [video_id]).fetchone()
            if phase is not None and phase not in phases:
                phases[phase] = time.monotonic() - started
            return status in ("ReadyToPublish", "Failed")

        try:
            wait_until(finished, cap, 0.05)
        except TimeoutError:
            return f"e2e     standard 60 s video: not finished within the {cap:g} s cap; phases so far {phases}"
        wall = time.monotonic() - started
        status, error, seconds = conn.execute("SELECT status, error, video_seconds FROM images WHERE id = %s",
                                              [video_id]).fetchone()
    shown = ", ".join(f"{name} at {at:.1f} s" for name, at in phases.items())
    return (f"e2e     standard {seconds or 0:g} s video, 20 scenes, placeholder backend: {status} in {wall:.1f} s "
            f"(INSERT to ReadyToPublish; {shown}){' ' + error if error else ''}")


def main() -> int:
    p = parser(__doc__ or "")
    p.add_argument("--only", choices=("render", "e2e"))
    p.add_argument("--cap", type=float, default=170.0, help="seconds a single render or the e2e run may take")
    p.add_argument("--speed", default="medium", help="x264/x265 preset (IMAGEND_VIDEO_X264_PRESET; default medium)")
    p.add_argument("--presets", default="standard,ultra", help="which presets to render (comma list)")
    args = p.parse_args()
    print(f"host: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; ffmpeg {imageio_ffmpeg.get_ffmpeg_version()}; "
          f"espeak-ng {'yes' if shutil.which('espeak-ng') else 'no'}", flush=True)
    if args.only in (None, "render"):
        for name in args.presets.split(","):
            render_speed(name.strip(), args.cap, args.speed)
    if args.only in (None, "e2e"):
        end_to_end(args.database_url, args.cap)
    return 0


if __name__ == "__main__":
    sys.exit(main())
