"""Turning a finished Image into what the row stores: base64, and optionally a file."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from imagend.backends.base import Image
from imagend.repository import Finished


def write_output_file(output_dir: Path, image_id: int, png: bytes) -> str:
    """Write `<id>.png` atomically (a reader never sees half a file); returns the path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{image_id}.png"
    partial = path.with_suffix(f".png.{os.getpid()}.part")
    partial.write_bytes(png)
    partial.replace(path)
    return str(path.resolve())


def finished(image_id: int, image: Image, output_dir: Path | None) -> Finished:
    return Finished(
        id=image_id,
        base64=base64.b64encode(image.png).decode("ascii"),
        seed=image.seed,
        output_path=write_output_file(output_dir, image_id, image.png) if output_dir else None,
        generation_seconds=image.generation_seconds,
    )
