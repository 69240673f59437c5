"""Turning a finished Image into what the row stores: base64, and optionally a file."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from imagend.backends.base import Image
from imagend.repository import Finished
from imagend.rows import Claim

JPEG_MAGIC = b"\xff\xd8\xff"


def write_output_file(output_dir: Path, image_id: int, data: bytes) -> str:
    """Write `<id>.png` (or `.jpg`: the legacy Fusion Brain API returns JPEG) atomically,
    so a reader never sees half a file; returns the path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".jpg" if data.startswith(JPEG_MAGIC) else ".png"
    path = output_dir / f"{image_id}{suffix}"
    partial = path.with_suffix(f"{suffix}.{os.getpid()}.part")
    partial.write_bytes(data)
    partial.replace(path)
    return str(path.resolve())


def finished(claim: Claim, image: Image, output_dir: Path | None) -> Finished:
    return Finished(
        claim=claim,
        base64=base64.b64encode(image.png).decode("ascii"),
        seed=image.seed,
        output_path=write_output_file(output_dir, claim.id, image.png) if output_dir else None,
        generation_seconds=image.generation_seconds,
    )
