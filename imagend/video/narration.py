"""Offline narration: each scene's text spoken by espeak-ng (Debian's `espeak-ng`; `make system-deps`
installs it) into a WAV that compose.py places on its scene. Robotic, but real, and it needs no network
and no model download. A row that asks for narration on a host without it fails saying what to install."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from imagend.errors import BadInput, RetryableError

ESPEAK = "espeak-ng"
WORDS_PER_MINUTE = 160
SYNTH_TIMEOUT_SECONDS = 60.0


def espeak_path() -> str | None:
    return shutil.which(ESPEAK)


def require_espeak() -> str:
    path = espeak_path()
    if path is None:
        raise BadInput("narration needs espeak-ng, which this daemon's host lacks: install Debian's espeak-ng "
                       "(make system-deps, or apt-get install espeak-ng), or leave narration out")
    return path


def synthesise(text: str, path: Path, *, voice: str = "en", espeak: str | None = None) -> Path:
    """Speak `text` into the WAV at `path` (the text goes on stdin: no option can hide in it)."""
    program = espeak or require_espeak()
    try:
        result = subprocess.run([program, "-v", voice, "-s", str(WORDS_PER_MINUTE), "-w", str(path), "--stdin"],
                                input=text, capture_output=True, text=True, timeout=SYNTH_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise RetryableError(f"espeak-ng took more than {SYNTH_TIMEOUT_SECONDS:g} s") from None
    if result.returncode != 0 or not path.exists() or path.stat().st_size <= 44:
        raise RetryableError(f"espeak-ng failed (exit {result.returncode}): {result.stderr.strip()[:200]}")
    return path
