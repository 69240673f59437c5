"""Local-backend test helpers (its fixtures are in tests/local/conftest.py): the miniature sizes
(`SIDE_PX`, `STEPS`), a backend `request`, a `RecordingHeartbeat`, the generator wired in process
(`in_process_generator`), and the mark that ignores torch's numpy-copy warning."""

from __future__ import annotations

from typing import Any

import pytest

from imagend.backends.base import Request

from support.daemons import InProcess

# diffusers' schedulers call np.array(torch_tensor) and torch's Tensor.__array__ lacks numpy 2's `copy`
# keyword. A mark, because `pytest -W error` on the command line outranks pyproject's filterwarnings.
TORCH_NUMPY_COPY_WARNING = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
SIDE_PX = 64  # tiny sizes keep each image at tens of milliseconds on a CPU
STEPS = 3


def request(image_id: int = 1, prompt: str = "a red fox in the snow", **fields: Any) -> Request:
    values: dict[str, Any] = {
        "negative_prompt": None,
        "style": None,
        "width": SIDE_PX,
        "height": SIDE_PX,
        "seed": None,
        "steps": STEPS,
        "guidance": None,
        "scheduler": None,
    }
    values.update(fields)
    return Request(id=image_id, prompt=prompt, **values)


class RecordingHeartbeat:
    """A Heartbeat for backend-only tests: records progress, optionally raises at a given call."""

    def __init__(self, raise_at: int | None = None, error: BaseException | None = None) -> None:
        self.progress: list[float | None] = []
        self.previews: list[dict[int, str]] = []  # every preview offered (the daemon's keeper throttles them)
        self.raise_at = raise_at
        self.error = error

    def __call__(self, progress: float | None = None, preview: Any = None) -> None:
        self.progress.append(progress)
        if preview is not None:
            self.previews.append(dict(preview()))
        if self.raise_at is not None and len(self.progress) >= self.raise_at and self.error is not None:
            raise self.error


def in_process_generator(repo: Any, backend: Any, settings: Any) -> Any:
    """The daemon's generator pass wired as the daemon wires it, for one backend."""
    return InProcess(repo, settings, {backend.name: backend}).generator
