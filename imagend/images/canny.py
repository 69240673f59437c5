"""Canny edges with numpy and Pillow: the one ControlNet preprocessor that needs no downloaded weights.

The steps are Canny's (and OpenCV's `cv2.Canny` on a blurred image, which A1111's and ComfyUI's canny
preprocessors call): a Gaussian blur, Sobel gradients, non-maximum suppression along the gradient's
direction (four sectors), two thresholds, and hysteresis (weak edges kept where they touch a strong one,
8-connected). Thresholds are on the Sobel magnitude of 0-255 luminance, as OpenCV's with its L1 norm
off (A1111's defaults: 100 and 200). What comes out is white edges on black, RGB, the input's size.

OpenCV would do this in C; it is not among imagend's dependencies (a 60 MB wheel for one function), and
at the sizes a ControlNet takes (1024 px a side) this takes tens of milliseconds on a CPU
(bench/controlnet_hires.py).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

CANNY_LOW = 100  # A1111's and ComfyUI's defaults
CANNY_HIGH = 200
THRESHOLD_RANGE = (1, 1020)  # the Sobel magnitude of 0-255 pixels stays below about 4 x 255 x sqrt(2)
BLUR_RADIUS = 1.0  # OpenCV's callers blur 3x3 or 5x5 first; Pillow's radius is the Gaussian's sigma
_TAN_22_5 = 0.41421356
_TAN_67_5 = 2.41421356


def canny(image: Image.Image, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> Image.Image:
    """White edges on black (RGB, the same size). `low` <= `high`, both on the 0-1020 Sobel scale."""
    if low > high:
        raise ValueError(f"the low threshold {low:g} is above the high one {high:g}")
    gray = np.asarray(image.convert("L").filter(ImageFilter.GaussianBlur(BLUR_RADIUS)), dtype=np.float32)
    padded = np.pad(gray, 1, mode="edge")
    # Sobel: [-1 0 1; -2 0 2; -1 0 1] and its transpose, as slices of the padded image.
    left, right = padded[:, :-2], padded[:, 2:]
    gx = (left[:-2] - right[:-2]) * -1 + (left[1:-1] - right[1:-1]) * -2 + (left[2:] - right[2:]) * -1
    top, bottom = padded[:-2], padded[2:]
    gy = (top[:, :-2] - bottom[:, :-2]) * -1 + (top[:, 1:-1] - bottom[:, 1:-1]) * -2 + (top[:, 2:] - bottom[:, 2:]) * -1
    magnitude = np.hypot(gx, gy)
    thin = _non_maximum(magnitude, gx, gy)
    strong = thin >= high
    weak = thin >= low
    edges = _hysteresis(strong, weak)
    out = np.where(edges, 255, 0).astype(np.uint8)
    return Image.fromarray(out, "L").convert("RGB")


def _non_maximum(magnitude: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """The magnitude where it is a maximum along the gradient's direction (else 0)."""
    m = np.pad(magnitude, 1)
    h, w = magnitude.shape

    def shifted(dy: int, dx: int) -> np.ndarray:
        return m[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    ax, ay = np.abs(gx), np.abs(gy)
    horizontal = ay <= ax * _TAN_22_5  # the gradient points along x: compare left and right
    vertical = ay >= ax * _TAN_67_5
    same_sign = (gx * gy) > 0
    diagonal_down = ~horizontal & ~vertical & same_sign  # +x+y: down-right and up-left (rows grow downwards)
    diagonal_up = ~horizontal & ~vertical & ~same_sign
    keep = (
        (horizontal & (magnitude >= shifted(0, -1)) & (magnitude > shifted(0, 1)))
        | (vertical & (magnitude >= shifted(-1, 0)) & (magnitude > shifted(1, 0)))
        | (diagonal_down & (magnitude >= shifted(-1, -1)) & (magnitude > shifted(1, 1)))
        | (diagonal_up & (magnitude >= shifted(-1, 1)) & (magnitude > shifted(1, -1)))
    )
    return np.where(keep, magnitude, 0.0)


def _hysteresis(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """The weak pixels 8-connected to a strong one: grown a ring at a time until nothing changes."""
    edges = strong.copy()
    while True:
        grown = np.pad(edges, 1)
        h, w = edges.shape
        neighbours = np.zeros_like(edges)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                neighbours |= grown[dy : dy + h, dx : dx + w]
        added = neighbours & weak & ~edges
        if not added.any():
            return edges
        edges |= added
