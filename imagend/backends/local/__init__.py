"""The local backend: SDXL with diffusers and compel on this host's GPU (or CPU).

- `backend`: LocalBackend, the Backend protocol over one warm pipeline (batching, heartbeat, OOM fallback).
- `sdxl`: loading and driving the diffusers pipeline (prompt encoding, schedulers); torch lives here and in backend.
- `options`: the IMAGEND_* settings, schedulers and styles, plain data with no torch.
- `gpu_lock`: one generation at a time per device, across threads and processes on one host.
- `png_metadata`: PNG encoding with an A1111-style `parameters` chunk.

`LocalBackend` is imported on first use, so `imagend.backends.local.options` and `gpu_lock`
load without torch. The miniature random-weights model for tests and demos is
`imagend.backends.local.miniature.sdxl`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagend.backends.local.backend import LocalBackend

__all__ = ["LocalBackend"]


def __getattr__(name: str) -> Any:
    if name == "LocalBackend":
        from imagend.backends.local.backend import LocalBackend

        return LocalBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
