"""The placeholder backend: a tiny PNG whose colours derive from the prompt and seed.

For tests, benchmarks and trying the daemon out; never the default. With no delay it
costs next to nothing, so the claim size is large and the database is the only cost.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import signal
import struct
import time
import zlib
from collections.abc import Sequence

from imagend import __version__
from imagend.backends import a1111_prompt
from imagend.backends.base import Heartbeat, Image, Request, refuse_image_inputs
from imagend.config.settings import Settings
from imagend.db.columns import check_style
from imagend.db.rows import ModelPreference
from imagend.errors import BadInput

PLACEHOLDER_SIDE_PX = 16
CLAIM_BATCH_WITHOUT_DELAY = 1000
MAX_SIDE_PX = 2048  # the placeholder stands in for real backends, so it keeps a real-looking limit


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# A two-colour palette image: a diagonal stripe over a background. The pixels never
# change, only the palette does, so all but one chunk is built once. Written by hand
# rather than with Pillow because it runs once per row in the drain benchmark, where
# Pillow's encoder was over half the daemon's CPU time.
_HEAD = b"\x89PNG\r\n\x1a\n" + _chunk(
    b"IHDR", struct.pack(">IIBBBBB", PLACEHOLDER_SIDE_PX, PLACEHOLDER_SIDE_PX, 8, 3, 0, 0, 0)
)
_PIXELS = b"".join(
    b"\x00" + bytes(1 if abs(x - y) <= 1 else 0 for x in range(PLACEHOLDER_SIDE_PX)) for y in range(PLACEHOLDER_SIDE_PX)
)
_TAIL = _chunk(b"IDAT", zlib.compress(_PIXELS, 9)) + _chunk(b"IEND", b"")


def placeholder_png(
    prompt: str, seed: int | None = None, negative_prompt: str | None = None, parameters: bool = False
) -> bytes:
    """A valid 16x16 PNG whose two colours derive from the prompt and seed. With `parameters`, it carries
    the A1111-style `parameters` chunk (image_formats.py keeps it across formats): the generator asks for
    it when the row names a format, so the drain's default rows stay the bytes they always were (the
    chunk would double a 16x16 image's base64; on a real image it is nothing)."""
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    if not parameters:
        return _HEAD + _chunk(b"PLTE", digest[:6]) + _TAIL
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    size = f"{PLACEHOLDER_SIDE_PX}x{PLACEHOLDER_SIDE_PX}"
    text = f"{prompt}{negative}\nSeed: {seed}, Size: {size}, Model: placeholder, Version: imagend {__version__}"
    # tEXt is Latin-1; a prompt beyond it goes in iTXt (UTF-8), which Pillow and A1111 read alike.
    try:
        chunk = _chunk(b"tEXt", b"parameters\0" + text.encode("latin-1"))
    except UnicodeEncodeError:
        chunk = _chunk(b"iTXt", b"parameters\0\0\0\0\0" + text.encode("utf-8"))
    return _HEAD + _chunk(b"PLTE", digest[:6]) + chunk + _TAIL


class PlaceholderBackend:
    name = "placeholder"

    def __init__(self, delay_seconds: float = 0.0, max_batch: int = 1, kill_on_prompt: str | None = None) -> None:
        self.delay_seconds = delay_seconds
        # Test-only (IMAGEND_PLACEHOLDER_KILL_ON): generating this exact prompt SIGKILLs the daemon,
        # as an image that gets its process OOM-killed would: a poison pill for the crash tests.
        self.kill_on_prompt = kill_on_prompt
        # A delay stands for a GPU: rows then go through in the configured batch size.
        self.max_batch = max_batch if delay_seconds > 0 else CLAIM_BATCH_WITHOUT_DELAY

    @classmethod
    def from_settings(cls, settings: Settings) -> PlaceholderBackend:
        return cls(
            settings.placeholder_delay_seconds,
            settings.max_batch,
            kill_on_prompt=settings.env.str("IMAGEND_PLACEHOLDER_KILL_ON"),
        )

    def validate(self, request: Request) -> Request:
        request = a1111_prompt.apply(request, weighting=False, takes_loras=False)  # as Fusion Brain reads it
        refuse_image_inputs(request, self.name)
        for name, side in (("width", request.width), ("height", request.height)):
            if side > MAX_SIDE_PX:
                raise BadInput(f"{name} must be at most {MAX_SIDE_PX} pixels for the placeholder backend, got {side}")
        check_style(request.style)
        return request

    def generate(self, batch: Sequence[Request], heartbeat: Heartbeat) -> list[Image]:
        images = []
        for done, request in enumerate(batch, start=1):
            if self.kill_on_prompt is not None and request.prompt == self.kill_on_prompt:
                os.kill(os.getpid(), signal.SIGKILL)
            started = time.monotonic()
            if self.delay_seconds:
                time.sleep(self.delay_seconds)
            # n > 1: seeds seed, seed + 1, … (a random first one when the row has none), so each image differs
            # and is the one a row of n = 1 with its seed makes.
            first = request.seed if request.seed is not None or request.n == 1 else secrets.randbits(32)
            seeds = [request.seed] if request.n == 1 else request.seeds(first or 0)
            made = [
                Image(
                    placeholder_png(request.prompt, seed, request.negative_prompt,
                                    parameters=request.output is not None or bool(request.post)),
                    seed,
                    time.monotonic() - started,
                    width=PLACEHOLDER_SIDE_PX,
                    height=PLACEHOLDER_SIDE_PX,
                )
                for seed in seeds
            ]
            images.append(dataclasses.replace(made[0], others=tuple(made[1:])) if len(made) > 1 else made[0])
            if self.delay_seconds:
                heartbeat(done / len(batch))
        return images

    def claim_preference(self) -> ModelPreference | None:
        return None

    def device_and_model(self) -> tuple[str | None, str | None]:
        return None, None

    def close(self) -> None:
        pass
