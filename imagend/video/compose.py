"""Composition: each scene's still animated (Ken Burns), joined with xfade transitions, narration and
background audio laid on, encoded at a preset; one ffmpeg process, its progress read from `-progress`.

Timing is kept in frames so that the video lasts what the storyboard says: a transition of T frames
overlaps two clips, so each clip runs half a transition longer on each side it shares, and the
scene boundaries fall where the scenes' seconds put them (plan_timeline)."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from imagend.errors import BadInput, Cancelled, RetryableError
from imagend.video.presets import Preset
from imagend.video.storyboard import TRANSITIONS, Scene

TRANSITION_SECONDS = 0.5  # each transition's length, cut to 40 % of the shorter scene it joins
TRANSITION_SHARE = 0.4
MOTION_ZOOM = 0.15  # how far a zoom goes over its clip (1.0 -> 1.15)
PAN_ZOOM = 1.12  # a pan runs across a still zoomed this much
NARRATION_LEAD_SECONDS = 0.25  # narration starts this long into its scene
BACKGROUND_VOLUME = 0.25  # background audio under the narration
CANCEL_CHECK_SECONDS = 0.1
STDERR_TAIL_CHARS = 600
# Upscaled before zoompan so its whole-pixel crop steps are small against the frame (no jitter).
UPSCALE = 2.0
UPSCALE_MAX_SIDE_PX = 7680


@dataclass(frozen=True, slots=True)
class Timeline:
    frames: list[int]  # each clip's frames (its scene plus half of each transition it shares)
    transitions: list[int]  # frames of the transition into clip i (0 for the first and for cuts)
    boundaries: list[int]  # frame at which each scene starts on the final timeline
    total_frames: int
    fps: int

    @property
    def seconds(self) -> float:
        return self.total_frames / self.fps


def plan_timeline(scenes: Sequence[Scene], fps: int) -> Timeline:
    ends, total = [], 0.0
    for scene in scenes:
        total += scene.seconds
        ends.append(round(total * fps))
    starts = [0, *ends[:-1]]
    transitions = [0]
    for before, scene, after in zip(scenes, scenes[1:], range(1, len(scenes)), strict=False):
        del after
        if TRANSITIONS[scene.transition] is None:
            transitions.append(0)
            continue
        seconds = min(TRANSITION_SECONDS, TRANSITION_SHARE * min(before.seconds, scene.seconds))
        transitions.append(2 * max(1, round(seconds * fps / 2)))
    outgoing = [*transitions[1:], 0]
    frames = [end - start + t_in // 2 + t_out // 2
              for start, end, t_in, t_out in zip(starts, ends, transitions, outgoing, strict=True)]
    return Timeline(frames, transitions, starts, ends[-1], fps)


def _motion(motion: str, frames: int) -> tuple[str, str, str]:
    """zoompan's z, x and y for a motion over `frames` output frames (`on`: the output frame)."""
    t = f"(on/{max(frames - 1, 1)})"
    centre_x, centre_y = "iw/2-(iw/zoom/2)", "ih/2-(ih/zoom/2)"
    if motion == "zoom_in":
        return f"1+{MOTION_ZOOM}*{t}", centre_x, centre_y
    if motion == "zoom_out":
        return f"{1 + MOTION_ZOOM}-{MOTION_ZOOM}*{t}", centre_x, centre_y
    if motion == "pan_left":
        return f"{PAN_ZOOM}", f"(iw-iw/zoom)*(1-{t})", centre_y
    if motion == "pan_right":
        return f"{PAN_ZOOM}", f"(iw-iw/zoom)*{t}", centre_y
    if motion == "pan_up":
        return f"{PAN_ZOOM}", centre_x, f"(ih-ih/zoom)*(1-{t})"
    if motion == "pan_down":
        return f"{PAN_ZOOM}", centre_x, f"(ih-ih/zoom)*{t}"
    return "1", "0", "0"


@dataclass(frozen=True, slots=True)
class Encoder:
    """How the video stream is encoded: on the CPU (libx264/libx265 at `speed`) or NVENC."""

    kind: str = "cpu"  # "cpu" or "nvenc"
    speed: str = "medium"  # x264/x265 -preset (IMAGEND_VIDEO_X264_PRESET)

    def args(self, preset: Preset) -> list[str]:
        gop = str(preset.gop)
        if self.kind == "nvenc":
            codec = "hevc_nvenc" if preset.codec == "libx265" else "h264_nvenc"
            out = ["-c:v", codec, "-preset", "p5", "-rc", "vbr", "-cq", str(preset.crf), "-b:v", "0",
                   "-g", gop, "-bf", "2"]
        elif preset.codec == "libx265":
            out = ["-c:v", "libx265", "-preset", self.speed, "-crf", str(preset.crf),
                   "-x265-params", f"keyint={gop}:min-keyint={gop}:scenecut=0:log-level=error"]
        else:
            out = ["-c:v", "libx264", "-preset", self.speed, "-crf", str(preset.crf), "-profile:v", "high",
                   "-g", gop, "-keyint_min", gop, "-sc_threshold", "0", "-bf", "2"]
        if preset.tag:
            out += ["-tag:v", preset.tag]
        return [*out, "-pix_fmt", "yuv420p"]


@dataclass(frozen=True, slots=True)
class Render:
    """Everything one ffmpeg run needs."""

    stills: Sequence[Path]
    scenes: Sequence[Scene]
    narration: Sequence[Path | None]  # a WAV per scene, or None
    preset: Preset
    size: tuple[int, int]
    output: Path
    background: Path | None = None
    subtitles: Path | None = None  # an SRT burnt in
    encoder: Encoder = Encoder()


def build_command(ffmpeg: str, render: Render) -> tuple[list[str], Timeline]:
    preset, (width, height) = render.preset, render.size
    timeline = plan_timeline(render.scenes, preset.fps)
    scale = min(UPSCALE, UPSCALE_MAX_SIDE_PX / max(width, height))
    up_w, up_h = 2 * round(width * scale / 2), 2 * round(height * scale / 2)
    args = [ffmpeg, "-hide_banner", "-nostdin", "-y", "-loglevel", "error", "-progress", "pipe:1", "-nostats"]
    graph: list[str] = []
    for index, still in enumerate(render.stills):
        args += ["-i", str(still)]
        frames = timeline.frames[index]
        z, x, y = _motion(render.scenes[index].motion, frames)
        graph.append(
            f"[{index}:v]scale={up_w}:{up_h}:force_original_aspect_ratio=increase:flags=lanczos,"
            f"crop={up_w}:{up_h},setsar=1,"
            f"zoompan=z='{z}':x='{x}':y='{y}':d={frames}:s={width}x{height}:fps={preset.fps},"
            f"setsar=1,format=yuv420p,settb=1/{preset.fps}[v{index}]")
    last, length = "v0", timeline.frames[0]
    for index in range(1, len(render.stills)):
        overlap = timeline.transitions[index]
        name = TRANSITIONS[render.scenes[index].transition]
        out = f"x{index}"
        if overlap == 0 or name is None:
            graph.append(f"[{last}][v{index}]concat=n=2:v=1:a=0,settb=1/{preset.fps}[{out}]")
        else:
            offset = (length - overlap) / preset.fps
            graph.append(f"[{last}][v{index}]xfade=transition={name}:duration={overlap / preset.fps:.6f}:"
                         f"offset={offset:.6f}[{out}]")
        last, length = out, length + timeline.frames[index] - overlap
    if render.subtitles is not None:
        path = str(render.subtitles).replace("\\", "\\\\").replace(":", "\\:").replace("'", "\\'")
        graph.append(f"[{last}]subtitles=filename='{path}':force_style='FontSize=20,Outline=2'[subs]")
        last = "subs"
    total = timeline.seconds
    audio: list[str] = []
    next_input = len(render.stills)
    for index, wav in enumerate(render.narration):
        if wav is None:
            continue
        args += ["-i", str(wav)]
        delay = round((timeline.boundaries[index] / preset.fps + NARRATION_LEAD_SECONDS) * 1000)
        graph.append(f"[{next_input}:a]aresample=48000,aformat=sample_fmts=fltp:channel_layouts=stereo,"
                     f"adelay={delay}|{delay}[n{next_input}]")
        audio.append(f"[n{next_input}]")
        next_input += 1
    if render.background is not None:
        args += ["-stream_loop", "-1", "-i", str(render.background)]
        graph.append(f"[{next_input}:a]aresample=48000,aformat=sample_fmts=fltp:channel_layouts=stereo,"
                     f"volume={BACKGROUND_VOLUME}[bg]")
        audio.append("[bg]")
    maps = ["-map", f"[{last}]"]
    if audio:
        mix = (f"{''.join(audio)}amix=inputs={len(audio)}:normalize=0:duration=longest,"
               if len(audio) > 1 else f"{audio[0]}anull,")
        graph.append(f"{mix}apad,atrim=0:{total:.6f},asetpts=N/SR/TB[aout]")
        maps += ["-map", "[aout]", "-c:a", "aac", "-b:a", f"{preset.audio_kbps}k", "-ar", "48000", "-ac", "2"]
    args += ["-filter_complex", ";".join(graph), *maps, *render.encoder.args(preset), "-r", str(preset.fps),
             "-frames:v", str(timeline.total_frames), "-t", f"{total:.6f}", "-movflags", "+faststart",
             "-f", "mp4", str(render.output)]
    return args, timeline


def run_ffmpeg(args: Sequence[str], total_seconds: float, *, progress: Callable[[float], None],
               cancelled: Callable[[], bool], timeout_seconds: float | None = None) -> None:
    """Run ffmpeg, reporting 0..1 from its `-progress` lines; `cancelled()` (checked ten times a second)
    kills it at once and raises Cancelled. A failure raises RetryableError with ffmpeg's last words."""
    proc = subprocess.Popen(list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    done = [0.0]
    errors: list[str] = []

    def read_progress() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            key, _, value = line.strip().partition("=")
            if key == "out_time_us" and value.lstrip("-").isdigit():
                done[0] = max(done[0], int(value) / 1e6 / max(total_seconds, 1e-6))

    def read_errors() -> None:
        assert proc.stderr is not None
        errors.append(proc.stderr.read())

    readers = [threading.Thread(target=read_progress, daemon=True), threading.Thread(target=read_errors, daemon=True)]
    for reader in readers:
        reader.start()
    started = time.monotonic()
    try:
        while proc.poll() is None:
            if cancelled():
                proc.kill()
                proc.wait()
                raise Cancelled()
            if timeout_seconds is not None and time.monotonic() - started > timeout_seconds:
                proc.kill()
                proc.wait()
                raise RetryableError(f"ffmpeg ran past {timeout_seconds:g} s and was stopped")
            progress(min(done[0], 1.0))
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(CANCEL_CHECK_SECONDS)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for reader in readers:
            reader.join(1.0)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    if proc.returncode != 0:
        tail = "".join(errors).strip()[-STDERR_TAIL_CHARS:]
        raise RetryableError(f"ffmpeg failed (exit {proc.returncode}): {tail or 'no message'}")
    progress(1.0)


def probe_audio(ffmpeg: str, path: Path, *, max_seconds: float = 3600.0) -> float:
    """The duration of an audio file, by decoding it (ffmpeg -i … -f null); BadInput when it holds no audio."""
    result = subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-v", "error", "-t", str(max_seconds), "-i",
                             str(path), "-map", "0:a:0", "-f", "null", "-progress", "pipe:1", "-"],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise BadInput("background_audio is not an audio file ffmpeg can read: "
                       f"{result.stderr.strip().splitlines()[-1][:160] if result.stderr.strip() else 'no audio'}")
    seconds = 0.0
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        if key == "out_time_us" and value.isdigit():
            seconds = max(seconds, int(value) / 1e6)
    if seconds <= 0:
        raise BadInput("background_audio holds no audio")
    return seconds


def write_srt(scenes: Sequence[Scene], timeline: Timeline, path: Path) -> bool:
    """An SRT of the narration, each on its scene; False when no scene has narration."""
    def stamp(seconds: float) -> str:
        ms = round(seconds * 1000)
        return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    blocks: list[str] = []
    for index, scene in enumerate(scenes):
        if not scene.narration:
            continue
        start = timeline.boundaries[index] / timeline.fps
        blocks.append(f"{len(blocks) + 1}\n{stamp(start)} --> {stamp(start + scene.seconds)}\n{scene.narration}\n")
    if not blocks:
        return False
    path.write_text("\n".join(blocks), encoding="utf-8")
    return True
