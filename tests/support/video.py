"""Video tests' helpers: a video row's INSERT, and what an MP4 holds, read with PyAV (FFmpeg's own
libraries: codec, pixel format, size, rate, duration, audio) and by its top-level boxes (moov before mdat)."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

FAST = {"IMAGEND_VIDEO_X264_PRESET": "ultrafast"}  # what the tests assert does not depend on x264's effort

THREE_SCENES = [
    {"prompt": "a lighthouse at dawn", "seconds": 2, "narration": "A lighthouse wakes.", "motion": "zoom_in"},
    {"prompt": "waves on rocks", "seconds": 2, "motion": "pan_left", "transition": "crossfade"},
    {"prompt": "gulls over the sea", "seconds": 2, "narration": "The gulls leave.", "motion": "zoom_out",
     "transition": "crossfade"},
]


def insert_video(conn: Any, scenes: Any = THREE_SCENES, prompt: str = "a video", **columns: Any) -> int:
    values = {"prompt": prompt, "task": "video", "scenes": None if scenes is None else json.dumps(scenes), **columns}
    names = ", ".join(values)
    marks = ", ".join("%s::jsonb" if name == "scenes" else "%s" for name in values)
    row = conn.execute(f"INSERT INTO images ({names}) VALUES ({marks}) RETURNING id", list(values.values())).fetchone()
    return int(row["id"] if isinstance(row, dict) else row[0])


@dataclass(frozen=True)
class Probe:
    codec: str
    pix_fmt: str | None
    width: int
    height: int
    fps: float
    seconds: float
    audio: str | None  # the audio codec, None: no audio stream
    sample_rate: int | None
    codec_tag: str | None
    boxes: list[str]


def top_boxes(path: Path) -> list[str]:
    data = path.read_bytes()
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        boxes.append(kind.decode("latin-1"))
        if size < 8:
            break
        offset += size
    return boxes


def probe(path: Path) -> Probe:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        tag = video.codec_context.codec_tag if hasattr(video.codec_context, "codec_tag") else None
        return Probe(
            codec=video.codec_context.name,
            pix_fmt=video.codec_context.pix_fmt,
            width=video.codec_context.width,
            height=video.codec_context.height,
            fps=float(video.average_rate or 0),
            seconds=(container.duration or 0) / 1e6,
            audio=audio.codec_context.name if audio else None,
            sample_rate=audio.codec_context.sample_rate if audio else None,
            codec_tag=tag,
            boxes=top_boxes(path),
        )
