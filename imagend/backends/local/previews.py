"""Step previews: the image forming, as A1111 and ComfyUI show it, without a VAE decode per step.

SDXL's four latent channels map almost linearly to RGB: a 4x3 projection (the factors ComfyUI uses
for its "latent2rgb" previews, fitted on SDXL's VAE) gives a recognisable picture at 1/8 of the size
for a few microseconds of work. Encoded as a small WebP, in base64 for the row's `preview` column.
"""

from __future__ import annotations

import base64
import io

import torch
from PIL import Image as PILImage

# ComfyUI's latent_formats.SDXL.latent_rgb_factors and latent_rgb_factors_bias.
SDXL_LATENT_RGB = torch.tensor(
    [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ]
)
SDXL_LATENT_RGB_BIAS = torch.tensor([0.1084, -0.0175, -0.0011])
PREVIEW_MAX_SIDE = 256
WEBP_QUALITY = 60


def latent_previews(latents: torch.Tensor) -> list[str] | None:
    """One base64 WebP per image of a [batch, 4, h, w] latent batch; None for latents of another shape
    (an upscaler's, another family's), which have no projection here."""
    if latents.ndim != 4 or latents.shape[1] != SDXL_LATENT_RGB.shape[0]:
        return None
    with torch.no_grad():
        rgb = torch.einsum("bchw,cr->bhwr", latents.detach().float().cpu(), SDXL_LATENT_RGB) + SDXL_LATENT_RGB_BIAS
        pixels = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    return [_webp(PILImage.fromarray(image, "RGB")) for image in pixels]


def _webp(image: PILImage.Image) -> str:
    if max(image.size) > PREVIEW_MAX_SIDE:
        image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=WEBP_QUALITY)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
