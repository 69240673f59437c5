"""Video tests' helpers: a video row's INSERT, a chat-completions fake (the script endpoint), and what an
MP4 holds, read with PyAV (FFmpeg's own libraries: codec, pixel format, size, rate, duration, audio) and by
its top-level boxes (moov before mdat)."""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


# -- the script endpoint --------------------------------------------------------------------------------

STORYBOARD = {"scenes": [{"prompt": "a fox wakes in its den", "seconds": 1.5, "motion": "zoom_in"},
                         {"prompt": "the fox runs through snow", "seconds": 1.5, "transition": "dissolve"}]}


class FakeChat:
    """A chat-completions endpoint on 127.0.0.1 whose next answer the test chooses (`answer`)."""

    def __init__(self) -> None:
        self.answer: Callable[[], tuple[int, str]] = lambda: (200, completion(json.dumps(STORYBOARD)))
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "body": body})
                status, text = fake.answer()
                data = text.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def completion(content: str) -> str:
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": "tiny",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
