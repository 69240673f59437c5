"""The local backend: diffusers pipelines (SDXL, FLUX.1, SD3, Kandinsky 3) on this host's GPU (or CPU).

- `backend`: LocalBackend, the Backend protocol over warm pipelines (batching, heartbeat, OOM fallback).
- `models`: the cache of loaded checkpoints and their task pipelines.
- `families/`: one module per family (its rules and prompt encoder: compel for SDXL), and their registry.
- `pipelines`: loading and driving a pipeline of any family (placement, VAE, schedulers, memory).
- `addons/`: LoRAs, the IP-Adapter and the x4 upscaler, loaded onto a pipeline per batch.
- `speed/`: the GPU speed options (settings, applying them, the step cache).
- `previews`: step previews from the latents.
- `options`: the IMAGEND_* settings, schedulers and styles, plain data with no torch.
- `gpu_lock`: one generation at a time per device, across threads and processes on one host.
- `png_metadata`: PNG encoding with an A1111-style `parameters` chunk.
- `miniature/`: random-weights miniature models for tests, benchmarks, demos and `imagend -make-tiny-model(s)`.

`LocalBackend` is imported on first use, so `imagend.backends.local.options`, `gpu_lock` and
`families` load without torch.
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
