"""The step cache (IMAGEND_STEP_CACHE=deepcache): `StepCache`, DeepCache's reuse of the UNet's deep
features between steps, as hooks on an SDXL UNet's blocks, and `step_cache_of` a pipeline. NOT exact.
apply.py attaches it."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch


class StepCache:
    """DeepCache (Ma, Fang, Wang 2023: "DeepCache: Accelerating Diffusion Models for Free") on a diffusers
    UNet2DConditionModel, with the paper's shallowest branch: one UNet call in `interval` runs the whole
    UNet; the others run only its first convolution, the time embedding, the last layer of the last
    up block (fed the fresh shallow skip connection) and the output convolution, and reuse every
    deeper block's output from the last full call. NOT exact: the deep features lag by up to
    interval - 1 steps.

    A pipeline call is told apart from the next by the identity of the `time_ids` tensor SDXL's
    pipelines make afresh for each call (or of the text embeddings), and by the latents' shape: no
    device synchronisation, and a call never reuses another call's features, even after an abort.
    `full_calls` and `cached_calls` count the UNet calls of each kind."""

    ATTRIBUTE = "_imagend_step_cache"

    def __init__(self, unet: Any, interval: int) -> None:
        if interval < 2:
            raise ValueError("a step cache interval below 2 caches nothing")
        self.unet = unet
        self.interval = interval
        self.step = 0
        self.skip = False
        self.full_calls = 0
        self.cached_calls = 0
        self._run: weakref.ref[Any] | None = None
        self._shape: tuple[int, ...] | None = None
        self._outputs: dict[int, Any] = {}
        self._patched: list[tuple[Any, Any]] = []  # (module, its own `forward` attribute or None)
        self._handle: Any = None

    def cached_modules(self) -> list[Any]:
        """What a cached call reuses: every down block, the mid block, every up block but the last,
        and the last one's layers but its final resnet (and attention)."""
        unet = self.unet
        last = unet.up_blocks[-1]
        modules = [*unet.down_blocks, unet.mid_block, *unet.up_blocks[:-1]]
        modules += list(last.resnets[:-1])
        attentions = getattr(last, "attentions", None)
        if attentions:
            modules += list(attentions[:-1])
        return [module for module in modules if module is not None]

    def attach(self) -> StepCache:
        if getattr(self.unet, self.ATTRIBUTE, None) is not None:
            raise ValueError("this UNet already has a step cache")
        for key, module in enumerate(self.cached_modules()):
            self._patched.append((module, module.__dict__.get("forward")))
            module.forward = self._wrap(key, module.forward)
        self._handle = self.unet.register_forward_pre_hook(self._before_call, with_kwargs=True)
        setattr(self.unet, self.ATTRIBUTE, self)
        return self

    def detach(self) -> None:
        """Put the UNet back as it was: exact again."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        for module, own_forward in reversed(self._patched):
            if own_forward is None:
                del module.forward
            else:
                module.forward = own_forward
        self._patched.clear()
        self.reset()
        if getattr(self.unet, self.ATTRIBUTE, None) is self:
            delattr(self.unet, self.ATTRIBUTE)

    def reset(self) -> None:
        """Forget the cached features: the next call runs the whole UNet."""
        self._run, self._shape, self.step, self.skip = None, None, 0, False
        self._outputs.clear()

    def _before_call(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        sample = args[0] if args else kwargs.get("sample")
        added = kwargs.get("added_cond_kwargs") or (args[7] if len(args) > 7 else None) or {}
        key = added.get("time_ids") if isinstance(added, dict) else None
        if key is None:
            key = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else None
        same_call = key is not None and self._run is not None and self._run() is key and shape == self._shape
        if same_call:
            self.step += 1
        else:
            self.reset()
            self._run = weakref.ref(key) if key is not None else None
            self._shape = shape
        self.skip = (
            same_call and self.step % self.interval != 0 and len(self._outputs) == len(self._patched)
        )
        if self.skip:
            self.cached_calls += 1
        else:
            self.full_calls += 1

    def _wrap(self, key: int, forward: Callable[..., Any]) -> Callable[..., Any]:
        def cached_forward(*args: Any, **kwargs: Any) -> Any:
            if self.skip:
                return self._outputs[key]
            output = forward(*args, **kwargs)
            self._outputs[key] = output
            return output

        return cached_forward


def step_cache_of(pipe: Any) -> StepCache | None:
    """The step cache attached to a pipeline's UNet by apply_speed, if any."""
    unet = getattr(pipe, "unet", None)
    unet = getattr(unet, "_orig_mod", unet)  # through a torch.compile wrapper
    cache = getattr(unet, StepCache.ATTRIBUTE, None)
    return cache if isinstance(cache, StepCache) else None
