"""Post-processing steps a preset names (docs/presets.md), applied to each finished image before it is
encoded and stored: for now the round token of a tabletop game (a circular crop with a border on a
transparent background, an RGBA PNG), as virtual tabletops (Roll20, Foundry, Owlbear Rodeo) take them.

A step is written in the preset's `post` as its name (`"token"`) or an object with options
(`{"step": "token", "border": 6, "color": "#c9a227"}`). The image's A1111 `parameters` text is kept,
with `Postprocessing: token` added, so a token still says what made it.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from imagend.errors import BadInput, RetryableError, clip

STEPS = ("token",)
TOKEN_BORDER_FRACTION = 1 / 24  # the ring's width when the preset names none: 4 % of the side
TOKEN_BORDER_MAX_PX = 256
TOKEN_COLOR = "#3b2a1a"  # a dark wood brown
SUPERSAMPLE = 4  # the circle's edges are drawn at 4x and scaled down: smooth, not stair-stepped
PNG_COMPRESS_LEVEL = 4
_HEX_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
ECHO_MAX_CHARS = 80


@dataclass(frozen=True, slots=True)
class PostStep:
    """One step: its name, and for a token the ring's width in pixels (None: 4 % of the side) and colour."""

    name: str
    border_px: int | None = None
    color: str = TOKEN_COLOR

    def describe(self) -> dict[str, Any]:
        """As the preset's JSON writes it back (imagend -presets)."""
        described: dict[str, Any] = {"step": self.name, "color": self.color}
        if self.border_px is not None:
            described["border"] = self.border_px
        return described


def parse_post(value: Any) -> tuple[PostStep, ...]:
    """A preset's `post` (decoded JSON: a list of names or objects) as steps; BadInput says what is wrong."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        shown = clip(json.dumps(value), ECHO_MAX_CHARS)
        raise BadInput(f'post must be a JSON array of steps like ["token"], got {shown}')
    steps = []
    for entry in value:
        if isinstance(entry, str):
            entry = {"step": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("step"), str):
            shown = clip(json.dumps(entry), ECHO_MAX_CHARS)
            raise BadInput(f'each post step is a name or {{"step": name, …}}, got {shown}')
        name = entry["step"].strip().lower()
        if name not in STEPS:
            raise BadInput(f"unknown post step {clip(entry['step'], ECHO_MAX_CHARS)!r}; use one of: {', '.join(STEPS)}")
        unknown = set(entry) - {"step", "border", "color"}
        if unknown:
            raise BadInput(f"post step {name!r} takes border and color, not {', '.join(sorted(unknown))}")
        border = entry.get("border")
        if border is not None and (isinstance(border, bool) or not isinstance(border, int)
                                   or not 0 <= border <= TOKEN_BORDER_MAX_PX):
            raise BadInput(f"post step {name!r}: border must be whole pixels from 0 to {TOKEN_BORDER_MAX_PX}, "
                           f"got {clip(json.dumps(border), ECHO_MAX_CHARS)}")
        color = entry.get("color", TOKEN_COLOR)
        if not isinstance(color, str) or not _HEX_COLOR.fullmatch(color):
            raise BadInput(f"post step {name!r}: color must be #rrggbb, got {clip(json.dumps(color), ECHO_MAX_CHARS)}")
        steps.append(PostStep(name, border, color.lower()))
    return tuple(steps)


def makes_transparency(steps: Sequence[PostStep]) -> bool:
    """Whether the steps' image has transparent pixels (JPEG has no alpha: a row then keeps PNG or WebP)."""
    return any(step.name == "token" for step in steps)


def apply_post(data: bytes, steps: Sequence[PostStep]) -> bytes:
    """The encoded image `data` after `steps`, as a PNG (its parameters kept); `data` itself without steps."""
    if not steps:
        return data
    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(data)) as image:
            image.load()
            parameters = image.info.get("parameters")
            picture = image.convert("RGBA")
    except (OSError, SyntaxError, ValueError) as exc:
        raise RetryableError(f"the backend's image does not decode ({type(exc).__name__}: {exc})") from None
    for step in steps:
        picture = token(picture, step)
    names = ", ".join(step.name for step in steps)
    text = f"{parameters}, Postprocessing: {names}" if isinstance(parameters, str) else None
    return _png(picture, text)


def token(picture: Any, step: PostStep) -> Any:
    """A round token: the centre square of `picture` in a circle, a ring of `step.color` around it, the
    corners transparent (RGBA, the square's side)."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    width, height = picture.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = picture.crop((left, top, left + side, top + side)).convert("RGBA")
    border = step.border_px if step.border_px is not None else max(1, round(side * TOKEN_BORDER_FRACTION))
    border = min(border, side // 2)
    big = side * SUPERSAMPLE

    def disc(inset: int) -> Any:
        mask = PILImage.new("L", (big, big), 0)
        ImageDraw.Draw(mask).ellipse((inset, inset, big - 1 - inset, big - 1 - inset), fill=255)
        return mask.resize((side, side), PILImage.Resampling.LANCZOS)

    outer, inner = disc(0), disc(border * SUPERSAMPLE)
    ring = PILImage.new("RGBA", (side, side), step.color)
    out = PILImage.new("RGBA", (side, side), (0, 0, 0, 0))
    out.paste(ring, (0, 0), outer)
    out.paste(square, (0, 0), inner)
    return out


def _png(picture: Any, parameters: str | None) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
