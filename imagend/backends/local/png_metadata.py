"""PNG encoding with the generation parameters in an A1111-style `parameters` tEXt chunk.

AUTOMATIC1111's web UI, ComfyUI's loaders, Civitai and most image viewers read this
chunk, laid out as:

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 30, Sampler: Euler a, CFG scale: 5.0, Seed: 42, Size: 1024x1024, Model: ..., Version: imagend 0.1.0
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image as PILImage
from PIL.PngImagePlugin import PngInfo

from imagend import __version__

PNG_COMPRESS_LEVEL = 4  # zlib level: close to level 6's size at about half the encode time


@dataclass(frozen=True, slots=True)
class GenerationParameters:
    prompt: str
    negative_prompt: str | None
    steps: int
    sampler: str
    guidance: float
    seed: int
    width: int
    height: int
    model: str
    style: str | None = None
    extra: tuple[tuple[str, str], ...] = ()  # A1111's further fields: Denoising strength, Lora hashes, …

    def a1111(self) -> str:
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        fields = [
            ("Steps", str(self.steps)),
            ("Sampler", self.sampler),
            ("CFG scale", f"{self.guidance:g}"),
            ("Seed", str(self.seed)),
            ("Size", f"{self.width}x{self.height}"),
            ("Model", _one_line(self.model)),
        ]
        if self.style and self.style != "DEFAULT":
            fields.append(("Style", self.style))
        fields += [(key, value if value.startswith('"') else _one_line(value)) for key, value in self.extra]
        fields.append(("Version", f"imagend {__version__}"))
        lines.append(", ".join(f"{key}: {value}" for key, value in fields))
        return "\n".join(lines)


def _one_line(text: str) -> str:
    return text.replace("\n", " ").replace(",", " ")


def encode_png(image: PILImage.Image, parameters: GenerationParameters) -> bytes:
    info = PngInfo()
    info.add_text("parameters", parameters.a1111())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def read_parameters(png: bytes) -> str | None:
    """The `parameters` text of a PNG, or None (for tests and tools)."""
    with PILImage.open(io.BytesIO(png)) as image:
        text = image.info.get("parameters")
    return text if isinstance(text, str) else None
