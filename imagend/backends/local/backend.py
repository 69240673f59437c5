"""The local backend: SDXL with diffusers and compel on this host's GPU (or CPU).

One pipeline is loaded at start and kept warm for the daemon's life. A `generate` call
takes a batch of compatible rows (same size, steps, guidance, scheduler), holds the
device lock (gpu_lock.py) while the GPU works, and returns one PNG per row.

- Each row's prompt is encoded alone with compel; rows whose conditioning has the same
  token length run as one pipeline call with one CPU generator per image.
- The step callback is the heartbeat: leases and progress advance only while steps
  do; a cancel or a stop raises from it and aborts the call; so does the timeout.
- CUDA out-of-memory: free memory, wait, retry with VAE tiling, then CPU offload.

docs/local.md describes the settings and what a producer sees.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from imagend.backends.base import Heartbeat, Image, Request
from imagend.backends.local.gpu_lock import DeviceLock
from imagend.backends.local.options import (
    SCHEDULERS,
    SIDE_MULTIPLE_PX,
    LocalSettings,
    is_tiny_model,
    style_prompts,
)
from imagend.backends.local.png_metadata import GenerationParameters, encode_png
from imagend.backends.local.sdxl import (
    Conditioning,
    PromptEncoder,
    Schedulers,
    device_generator,
    free_memory,
    load_pipeline,
    place,
    stack,
)
from imagend.config import Settings
from imagend.errors import BadInput, Cancelled, Interrupted, RetryableError
from imagend.logs import get_logger
from imagend.styles import STYLE_NAMES

log = get_logger()

RANDOM_SEED_BITS = 32  # random seeds stay in the range other SD tools accept
PROGRESS_BEFORE_WRITE = 0.99  # the row shows 1.0 only once the image is written
WARMUP_STEPS = 2


def _progress_scale(done_before: int, size: int, total: int) -> Callable[[float], float]:
    """Map one call's fraction of steps to the whole batch's progress."""
    return lambda fraction: (done_before + fraction * size) / total


class ImageTimeout(Exception):
    """Raised from the step callback when a call ran past IMAGEND_IMAGE_TIMEOUT (per image)."""


@dataclasses.dataclass
class _Job:
    request: Request
    seed: int
    prompt: str
    negative: str | None
    conditioning: Conditioning | None = None


class LocalBackend:
    name = "local"

    def __init__(
        self,
        options: LocalSettings,
        pipe: Any,
        max_batch: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.options = options
        self.pipe = pipe
        self.max_batch = max_batch
        self.clock = clock
        self.sleep = sleep
        self.lock = DeviceLock(options.lock_dir, options.device)
        self.encoder = PromptEncoder(pipe)
        self.schedulers = Schedulers(pipe.scheduler.config)  # the checkpoint's, before any job replaced it
        self.model_label = Path(options.model).name if Path(options.model).expanduser().exists() else options.model
        self.oom_fallback = 0  # 0 none; 1 VAE tiling; 2 model CPU offload; 3 sequential offload (CUDA only)
        self.tiny = is_tiny_model(options.model)

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalBackend:
        options = LocalSettings.from_settings(settings, cuda_available=torch.cuda.is_available())
        started = time.monotonic()
        pipe = load_pipeline(options)
        backend = cls(options, pipe, max_batch=settings.max_batch)
        log.info(
            "local_backend_loaded",
            model=options.model,
            device=options.device,
            dtype=options.dtype,
            vae=options.vae or "model",
            offload=options.offload,
            compile=options.compile_unet,
            max_batch=backend.max_batch,
            seconds=round(time.monotonic() - started, 2),
        )
        if backend.tiny:
            log.warning(
                "miniature_model",
                model=options.model,
                note="random-weights miniature SDXL: every image it makes is noise (tests and demos only)",
            )
        if options.compile_unet:
            backend.warm_up()
        return backend

    # -- the protocol ------------------------------------------------------------------------

    def validate(self, request: Request) -> Request:
        opts = self.options
        for side_name, side in (("width", request.width), ("height", request.height)):
            if side % SIDE_MULTIPLE_PX:
                lower = max(SIDE_MULTIPLE_PX, side // SIDE_MULTIPLE_PX * SIDE_MULTIPLE_PX)
                raise BadInput(
                    f"{side_name} must be a multiple of {SIDE_MULTIPLE_PX} for SDXL, got {side} (try {lower})"
                )
            if side > opts.max_side:
                raise BadInput(f"{side_name} {side} is above this daemon's limit of {opts.max_side} (IMAGEND_MAX_SIDE)")
        scheduler = (request.scheduler or opts.default_scheduler).strip().lower()
        if scheduler not in SCHEDULERS:
            raise BadInput(f"unknown scheduler {request.scheduler!r}; use one of: {', '.join(SCHEDULERS)}")
        style = (request.style or "DEFAULT").strip().upper()
        if style not in STYLE_NAMES:
            raise BadInput(f"unknown style {request.style!r}; use one of: {', '.join(STYLE_NAMES)} (or NULL)")
        prompt, negative = style_prompts(style, request.prompt, request.negative_prompt)
        for column, text in (("prompt", prompt), ("negative_prompt", negative)):
            error = self.encoder.syntax_error(text) if text else None
            if error:
                raise BadInput(f"{column}: compel cannot parse it ({error}); see the weighting syntax in docs/local.md")
        return dataclasses.replace(
            request,
            steps=request.steps if request.steps is not None else opts.default_steps,
            guidance=request.guidance if request.guidance is not None else opts.default_guidance,
            scheduler=scheduler,
            style=style,
        )

    def generate(self, batch: Sequence[Request], heartbeat: Heartbeat) -> list[Image]:
        jobs = [self._job(request) for request in batch]
        remaining = list(jobs)
        seconds: dict[int, float] = {}
        images: dict[int, Any] = {}
        retries = 0
        while remaining:
            try:
                with self.lock.hold(waiting=lambda: heartbeat(None)):
                    self._run(remaining, len(jobs), heartbeat, images, seconds)
                remaining = []
            except torch.OutOfMemoryError as exc:
                remaining = [job for job in remaining if job.request.id not in images]
                exc_text = str(exc).splitlines()[0][:200] if str(exc) else "CUDA out of memory"
                exc.__traceback__ = None  # it holds the failed call's frames, and so its tensors
                if self.pipe is not None and hasattr(self.pipe, "maybe_free_model_hooks"):
                    self.pipe.maybe_free_model_hooks()
                free_memory(self.options.device)
                retries += 1
                if retries > self.options.oom_retries:
                    raise RetryableError(
                        f"out of GPU memory after {self.options.oom_retries} retries: {exc_text}"
                    ) from None
                self._fall_back_after_oom(retries)
                log.warning(
                    "out_of_memory",
                    ids=[j.request.id for j in remaining],
                    retry=retries,
                    fallback=self.oom_fallback,
                    wait_seconds=self.options.oom_retry_seconds,
                )
                self._wait(self.options.oom_retry_seconds, heartbeat)
        return [self._png(job, images[job.request.id], seconds[job.request.id]) for job in jobs]

    def close(self) -> None:
        self.pipe = None
        free_memory(self.options.device)

    # -- one pass over the batch, device held -------------------------------------------------

    def _run(
        self,
        jobs: list[_Job],
        total: int,
        heartbeat: Heartbeat,
        images: dict[int, Any],
        seconds: dict[int, float],
    ) -> None:
        wall_started = time.time()
        for job in jobs:
            if job.conditioning is None:
                # Encoding long prompts takes a while: the lease (and cancel, and a stop) must not wait
                # for the whole batch's encoding. Parsing already happened at validation, off the device.
                heartbeat(None)
                job.conditioning = self.encoder.encode(job.prompt, job.negative)
        # Rows are grouped by token length so each row's conditioning is what it would be alone;
        # after an OOM, one image per call.
        groups: dict[int, list[_Job]] = {}
        for job in jobs:
            assert job.conditioning is not None
            groups.setdefault(job.conditioning.tokens, []).append(job)
        calls = [[j] for j in jobs] if self.oom_fallback else list(groups.values())
        for group in calls:
            done_before = len(images)
            started = self.clock()
            pictures = self._call(group, heartbeat, _progress_scale(done_before, len(group), total))
            per_image = (self.clock() - started) / len(group)
            for job, picture in zip(group, pictures, strict=True):
                images[job.request.id] = picture
                seconds[job.request.id] = per_image
        log.info(
            "batch_generated",
            ids=[j.request.id for j in jobs],
            device=self.options.device,
            size=f"{jobs[0].request.width}x{jobs[0].request.height}",
            steps=jobs[0].request.steps,
            calls=len(calls),
            device_started=wall_started,
            device_finished=time.time(),
        )

    def _call(self, group: list[_Job], heartbeat: Heartbeat, progress_of: Callable[[float], float]) -> list[Any]:
        """One pipeline call for rows with equal conditioning length; aborts from the step callback."""
        first = group[0].request
        steps = int(first.steps or self.options.default_steps)
        deadline = self.clock() + self.options.image_timeout_seconds * len(group)

        def on_step_end(_pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            heartbeat(min(progress_of((step + 1) / steps), PROGRESS_BEFORE_WRITE))
            if self.clock() > deadline:
                raise ImageTimeout()
            return tensors

        assert first.scheduler is not None
        self.pipe.scheduler = self.schedulers.fresh(first.scheduler)
        conditionings = [job.conditioning for job in group if job.conditioning is not None]
        aborted: BaseException | None = None
        try:
            output = self.pipe(
                **stack(conditionings),
                width=first.width,
                height=first.height,
                num_inference_steps=steps,
                guidance_scale=first.guidance if first.guidance is not None else self.options.default_guidance,
                generator=[device_generator(job.seed) for job in group],
                callback_on_step_end=on_step_end,
            )
        except ImageTimeout as exc:
            exc.__traceback__ = None
            aborted = RetryableError(
                f"image timed out after {self.options.image_timeout_seconds:g} s per image (IMAGEND_IMAGE_TIMEOUT)"
            )
        except (Cancelled, Interrupted) as exc:
            aborted = exc.with_traceback(None)
        if aborted is not None:
            # An abort's traceback holds the pipeline's frames and so its tensors: dropped above,
            # so that this frees them before the device is handed on.
            self._after_abort()
            raise aborted from None
        return list(output.images)

    def _after_abort(self) -> None:
        if self.pipe is not None and hasattr(self.pipe, "maybe_free_model_hooks"):
            self.pipe.maybe_free_model_hooks()
        free_memory(self.options.device)

    # -- helpers ------------------------------------------------------------------------------

    def _job(self, request: Request) -> _Job:
        seed = request.seed if request.seed is not None else secrets.randbits(RANDOM_SEED_BITS)
        prompt, negative = style_prompts(request.style, request.prompt, request.negative_prompt)
        return _Job(request, seed, prompt, negative)

    def _png(self, job: _Job, picture: Any, seconds: float) -> Image:
        request = job.request
        assert request.scheduler is not None and request.steps is not None and request.guidance is not None
        parameters = GenerationParameters(
            prompt=job.prompt,
            negative_prompt=job.negative,
            steps=request.steps,
            sampler=SCHEDULERS[request.scheduler][2],
            guidance=request.guidance,
            seed=job.seed,
            width=request.width,
            height=request.height,
            model=self.model_label + (" (miniature random weights: noise)" if self.tiny else ""),
            style=request.style,
        )
        return Image(encode_png(picture, parameters), job.seed, seconds)

    def _fall_back_after_oom(self, retry: int) -> None:
        """Retry 1: VAE slicing + tiling, one image per call. Retry 2: model CPU offload. 3+: sequential."""
        level = min(retry, 3)
        if level <= self.oom_fallback:
            return
        self.oom_fallback = level
        self.pipe.vae.enable_slicing()
        self.pipe.vae.enable_tiling()
        on_cuda = self.options.device.startswith("cuda")
        if level >= 2 and on_cuda and self.options.offload == "none":
            self.pipe.remove_all_hooks()
            place(self.pipe, self.options, offload="model" if level == 2 else "sequential")
        log.warning(
            "oom_fallback_enabled",
            level=level,
            device=self.options.device,
            note="kept for the daemon's life: VAE tiling, then CPU offload",
        )

    def _wait(self, seconds: float, heartbeat: Heartbeat) -> None:
        """Sleep in small steps, heartbeating so a cancel or a stop still ends the wait."""
        until = self.clock() + seconds
        while (left := until - self.clock()) > 0:
            heartbeat(None)
            self.sleep(min(left, 0.25))

    def warm_up(self) -> None:
        """With torch.compile: compile now (minutes on a big GPU) instead of inside the first row."""
        width, height = self.options.warmup_size
        started = time.monotonic()
        sizes = sorted({1, self.max_batch})
        for size in sizes:
            request = Request(
                id=0,
                prompt="warm-up",
                negative_prompt=None,
                style="DEFAULT",
                width=width,
                height=height,
                seed=0,
                steps=WARMUP_STEPS,
                guidance=self.options.default_guidance,
                scheduler=self.options.default_scheduler,
            )
            jobs = [self._job(dataclasses.replace(request, id=-i)) for i in range(size)]
            with self.lock.hold():
                self._run(jobs, len(jobs), lambda progress=None: None, {}, {})
        log.info(
            "compile_warmed_up",
            size=f"{width}x{height}",
            batch_sizes=sizes,
            seconds=round(time.monotonic() - started, 1),
        )
