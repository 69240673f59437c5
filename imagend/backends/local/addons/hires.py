"""The hires fix (A1111's two passes): generate at the row's size, upscale by `hr_scale`, then run
image-to-image over the upscaled image at `hr_strength` for `hr_steps` — one row, one image.

`hr_upscaler` says how the first pass's image is made bigger:
- `latent` (the default, A1111's "Latent"): the first pass's latents, never decoded, scaled bilinearly;
  the second pass starts from them (diffusers' image-to-image takes 4-channel latents as they are);
- `lanczos`, `nearest`: the decoded image resized with Pillow;
- `upscaler`: IMAGEND_UPSCALER's x4 model (addons/upscaler.py) as a pass of its own (hr_steps steps),
  its 4x brought to the scale with Lanczos.

Progress runs over every pass: each pass's share is its steps' share of all the steps (the second pass runs
hr_strength x hr_steps of them, as any image-to-image). The final size is width x hr_scale by
height x hr_scale, each rounded down to a multiple of 8, at most IMAGEND_MAX_SIDE.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image as PILImage

from imagend.backends.base import Hires
from imagend.backends.local.options import SIDE_MULTIPLE_PX
from imagend.errors import BadInput

LATENT_PX = 8  # SDXL's VAE: one latent per 8x8 pixels
A1111_NAMES = {"latent": "Latent", "lanczos": "Lanczos", "nearest": "Nearest"}  # the PNG's `Hires upscaler`
RESAMPLING = {"lanczos": PILImage.Resampling.LANCZOS, "nearest": PILImage.Resampling.NEAREST}


def final_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return (max(SIDE_MULTIPLE_PX, int(width * scale) // SIDE_MULTIPLE_PX * SIDE_MULTIPLE_PX),
            max(SIDE_MULTIPLE_PX, int(height * scale) // SIDE_MULTIPLE_PX * SIDE_MULTIPLE_PX))


def check(hires: Hires, width: int, height: int, steps: int, max_side: int, has_upscaler: bool) -> None:
    """At validation: the final size fits IMAGEND_MAX_SIDE, the second pass runs a step, and `upscaler`
    has a model to run."""
    second = hires.steps or steps
    if int(second * hires.strength) < 1:
        raise BadInput(f"hr_strength {hires.strength:g} of {second} hires steps runs no step (it runs "
                       "hr_strength x hr_steps); raise hr_steps or hr_strength")
    out_w, out_h = final_size(width, height, hires.scale)
    if max(out_w, out_h) > max_side:
        raise BadInput(f"hr_scale {hires.scale:g} makes {width}x{height} into {out_w}x{out_h}, above this daemon's "
                       f"limit of {max_side} a side (IMAGEND_MAX_SIDE)")
    if hires.upscaler == "upscaler" and not has_upscaler:
        raise BadInput("hr_upscaler 'upscaler' needs an upscaling model, and this daemon has none (IMAGEND_UPSCALER); "
                       "use latent, lanczos or nearest")


@dataclass(frozen=True)
class Passes:
    """The passes of one hires call and each one's share of the progress."""

    hires: Hires
    steps: int  # the first pass's
    width: int
    height: int

    @property
    def second_steps(self) -> int:
        return self.hires.steps or self.steps

    @property
    def size(self) -> tuple[int, int]:
        return final_size(self.width, self.height, self.hires.scale)

    def shares(self) -> list[int]:
        """Steps run by each pass: the first, the upscaler's (if any), the second (strength x steps)."""
        second = max(1, min(int(self.second_steps * self.hires.strength), self.second_steps))
        return [self.steps, *([self.second_steps] if self.hires.upscaler == "upscaler" else []), second]

    def progress(self, index: int, overall: Callable[[float], float]) -> Callable[[float], float]:
        """Pass `index`'s fraction of its steps as the call's progress."""
        shares = self.shares()
        before, total = sum(shares[:index]), sum(shares)
        return lambda fraction: overall((before + fraction * shares[index]) / total)

    def upscale_latents(self, latents: list[Any]) -> Any:
        """The first pass's latents (one tensor per image) scaled bilinearly to the final size's."""
        import torch

        width, height = self.size
        batch = torch.stack(latents)
        return torch.nn.functional.interpolate(
            batch, size=(height // LATENT_PX, width // LATENT_PX), mode="bilinear", antialias=False
        )

    def resize(self, pictures: list[Any], method: str = "lanczos") -> list[Any]:
        size = self.size
        return [p if p.size == size else p.resize(size, RESAMPLING[method]) for p in pictures]


def png_fields(hires: Hires, second_steps: int, upscaler_label: str) -> list[tuple[str, str]]:
    """A1111's fields of a hires image (its `Size` is the first pass's)."""
    name = upscaler_label if hires.upscaler == "upscaler" else A1111_NAMES[hires.upscaler]
    return [("Denoising strength", f"{hires.strength:g}"), ("Hires upscale", f"{hires.scale:g}"),
            ("Hires steps", str(second_steps)), ("Hires upscaler", name)]
