"""Turning a finished Image into what the row stores: base64, and optionally a file."""

from __future__ import annotations

import base64
import contextlib
import os
from pathlib import Path

from imagend.backends.base import Image
from imagend.errors import ConfigError, RetryableError
from imagend.repository import Finished
from imagend.rows import Claim

JPEG_MAGIC = b"\xff\xd8\xff"


class OutputUnwritable(RetryableError):
    """IMAGEND_OUTPUT_DIR could not take an image (read-only, full, not a folder): the attempt
    fails and is retried, unless the image cannot be had again (see Outcomes.done)."""


def check_output_dir(output_dir: Path) -> None:
    """At start: IMAGEND_OUTPUT_DIR must be a folder we can write to (created if missing)."""
    probe = output_dir / f".imagend-write-check.{os.getpid()}"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"IMAGEND_OUTPUT_DIR={output_dir}: cannot write there: {exc}") from None


def write_output_file(output_dir: Path, image_id: int, data: bytes) -> str:
    """Write `<id>.png` (or `.jpg`: the legacy Fusion Brain API returns JPEG) atomically,
    so a reader never sees half a file; returns the path."""
    suffix = ".jpg" if data.startswith(JPEG_MAGIC) else ".png"
    path = output_dir / f"{image_id}{suffix}"
    partial = path.with_suffix(f"{suffix}.{os.getpid()}.part")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(data)
        partial.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise OutputUnwritable(f"cannot write the image to IMAGEND_OUTPUT_DIR={output_dir}: {exc}") from None
    return str(path.resolve())


def finished(claim: Claim, image: Image, output_dir: Path | None, warning: str | None = None) -> Finished:
    return Finished(
        claim=claim,
        base64=base64.b64encode(image.png).decode("ascii"),
        seed=image.seed,
        output_path=write_output_file(output_dir, claim.id, image.png) if output_dir else None,
        generation_seconds=image.generation_seconds,
        warning=warning,
    )
