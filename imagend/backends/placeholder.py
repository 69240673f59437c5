"""The placeholder backend: a tiny PNG whose colours derive from the prompt and seed.

For tests, benchmarks and trying the daemon out; never the default. With no delay it
costs next to nothing, so the claim size is large and the database is the only cost.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Sequence

from PIL import Image as PILImage
from PIL import ImageDraw

from imagend.backends.base import Heartbeat, Image, Request
from imagend.config import Settings
from imagend.errors import BadInput

PLACEHOLDER_SIDE_PX = 16
STYLES = ("DEFAULT", "KANDINSKY", "UHD", "ANIME")  # Fusion Brain's, so producers can test style handling
CLAIM_BATCH_WITHOUT_DELAY = 500


def placeholder_png(prompt: str, seed: int | None = None) -> bytes:
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    image = PILImage.new("RGB", (PLACEHOLDER_SIDE_PX, PLACEHOLDER_SIDE_PX), tuple(digest[:3]))
    ImageDraw.Draw(image).line((0, 0, PLACEHOLDER_SIDE_PX, PLACEHOLDER_SIDE_PX), fill=tuple(digest[3:6]), width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class PlaceholderBackend:
    name = "placeholder"

    def __init__(self, delay_seconds: float = 0.0, max_batch: int = 1) -> None:
        self.delay_seconds = delay_seconds
        # A delay stands for a GPU: rows then go through in the configured batch size.
        self.max_batch = max_batch if delay_seconds > 0 else CLAIM_BATCH_WITHOUT_DELAY

    @classmethod
    def from_settings(cls, settings: Settings) -> PlaceholderBackend:
        return cls(settings.placeholder_delay_seconds, settings.max_batch)

    def validate(self, request: Request) -> Request:
        if request.style is not None and request.style.upper() not in STYLES:
            raise BadInput(f"unknown style {request.style!r}; use one of: {', '.join(STYLES)}")
        return request

    def generate(self, batch: Sequence[Request], heartbeat: Heartbeat) -> list[Image]:
        images = []
        for done, request in enumerate(batch, start=1):
            started = time.monotonic()
            if self.delay_seconds:
                time.sleep(self.delay_seconds)
            images.append(
                Image(placeholder_png(request.prompt, request.seed), request.seed, time.monotonic() - started)
            )
            if self.delay_seconds:
                heartbeat(done / len(batch))
        return images

    def close(self) -> None:
        pass
