"""The local backend: diffusers pipelines (SDXL, FLUX.1, SD3, Kandinsky 3) on this host's GPU (or CPU).

Checkpoints are loaded into a cache (models.py: IMAGEND_MODEL, and a row's `model` from
IMAGEND_MODELS); the claim prefers rows of the loaded ones (claim_preference). A `generate` call
takes a batch of compatible rows (same model, LoRAs, size, steps, guidance, scheduler; a row with an
image input is alone), holds the device lock (gpu_lock.py) while the GPU works, and returns one PNG
per row.

- Each row's prompt is encoded alone by its family's encoder (families/: compel for SDXL); rows
  whose conditioning has the same token length run as one pipeline call with one CPU generator per
  image.
- The task follows from the inputs: text-to-image; an init image, image-to-image; with a mask,
  inpainting; a reference image adds the IP-Adapter (addons/ip_adapter.py); task 'upscale' runs the
  upscaler (addons/upscaler.py). LoRAs are switched per batch (addons/loras.py).
- The step callback is the heartbeat: leases and progress advance only while steps
  do; a cancel or a stop raises from it and aborts the call; so does the timeout. It also
  hands the heartbeat a preview of the latents (previews.py), written every 2 s or so.
- CUDA out-of-memory: free memory, wait, retry with VAE tiling, then CPU offload.

docs/local.md describes the settings and what a producer sees.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image as PILImage

from imagend.backends import a1111_prompt
from imagend.backends.base import Heartbeat, Image, Request
from imagend.backends.local.addons import hires as hires_fix
from imagend.backends.local.addons.controlnet import ControlNets
from imagend.backends.local.addons.ip_adapter import IpAdapter
from imagend.backends.local.addons.loras import LoraLibrary
from imagend.backends.local.addons.upscaler import Upscaler
from imagend.backends.local.batching import first_of_each_row, gather, job_key, row_seeds
from imagend.backends.local.families import FAMILIES, SDXL, Family
from imagend.backends.local.families.sdxl import Conditioning, is_weighted, syntax_error
from imagend.backends.local.gpu_lock import DeviceLock
from imagend.backends.local.models import LoadedModel, ModelCache
from imagend.backends.local.options import (
    DEFAULT_INPAINT_STRENGTH,
    DEFAULT_REFERENCE_SCALE,
    DEFAULT_STRENGTH,
    SCHEDULERS,
    SIDE_MULTIPLE_PX,
    LocalSettings,
    style_prompts,
)
from imagend.backends.local.pipelines import (
    check_model_source,
    decoder_option,
    device_generator,
    free_memory,
    load_pipeline,
    place,
)
from imagend.backends.local.png_metadata import GenerationParameters, encode_png
from imagend.backends.local.previews import latent_previews
from imagend.backends.local.speed.apply import preset_scheduler
from imagend.backends.local.speed.settings import SpeedSettings
from imagend.backends.local.startup import cpu_warning
from imagend.config.settings import Settings
from imagend.db.columns import check_style
from imagend.db.rows import ModelPreference
from imagend.errors import BadInput, Cancelled, Interrupted, RetryableError
from imagend.images.inputs import fit_size
from imagend.logs import get_logger

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
    model_label: str = ""
    tiny: bool = False
    index: int = 0  # the image's place in its row (a row of n images is n jobs: batching.py)


def default_strength(task: str) -> float:
    return DEFAULT_INPAINT_STRENGTH if task == "inpaint" else DEFAULT_STRENGTH


def effective_steps(steps: int, strength: float | None) -> int:
    """The steps an image-to-image call really runs: diffusers skips the first (1 - strength) of them."""
    return steps if strength is None else max(1, min(int(steps * strength), steps))


def _floor(side: int) -> int:
    return max(SIDE_MULTIPLE_PX, side // SIDE_MULTIPLE_PX * SIDE_MULTIPLE_PX)


PRESET_SCHEDULER = "preset"  # a row sampled by IMAGEND_FAST_PRESET's scheduler


def task_of(request: Request) -> str:
    inputs = request.inputs
    if inputs.task == "upscale":
        return "upscale"
    if inputs.mask_image is not None:
        return "inpaint"
    return "img2img" if inputs.init_image is not None else "txt2img"


class LocalBackend:
    name = "local"

    def __init__(
        self,
        options: LocalSettings,
        pipe: Any,
        max_batch: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        speed: SpeedSettings | None = None,
    ) -> None:
        """`pipe`: IMAGEND_MODEL's pipeline, loaded (the others load when a row asks for them), with
        `speed` applied (speed/)."""
        self.options = options
        self.speed = speed or SpeedSettings()
        self.preset = self.speed.preset  # a step-reduction preset samples every SDXL row its own way
        self.max_batch = max_batch
        self.clock = clock
        self.sleep = sleep
        self.lock = DeviceLock(options.lock_dir, options.device)
        self.oom_fallback = 0  # 0 none; 1 VAE tiling; 2 model CPU offload; 3 sequential offload (CUDA only)
        self.models = ModelCache(options, prepare=self._prepare_model, speed=speed)
        family = FAMILIES.get(type(pipe).__name__, SDXL)
        self.models.families[options.model] = family
        self.models.loaded[options.model] = LoadedModel("", options.model, pipe, family)
        self.current = self.models.loaded[options.model]
        self.loras = LoraLibrary(options.lora_dir, options.lora_cache)
        self.ip_adapter = IpAdapter(options.ip_adapter, options.device, getattr(torch, options.dtype))
        self.upscaler = Upscaler(options)
        self.controlnets = ControlNets(options)

    # For tests and tools: IMAGEND_MODEL's pipeline while loaded, else the one in use. Never a load
    # (a load outside the device lock, and one more each time the cache had dropped it).
    @property
    def pipe(self) -> Any:
        return self.models.loaded.get(self.options.model, self.current).pipe

    @property
    def encoder(self) -> Any:
        return self.models.loaded.get(self.options.model, self.current).encoder

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalBackend:
        options = LocalSettings.from_settings(settings, cuda_available=torch.cuda.is_available())
        for name, source in options.models.items():
            check_model_source(source, f"IMAGEND_MODELS ({name})")  # a typo stops the start, not a row
        speed = SpeedSettings.from_env(settings.env, settings.data_dir)
        started = time.monotonic()
        pipe = load_pipeline(options, speed=speed)
        backend = cls(options, pipe, max_batch=settings.max_batch, speed=speed)
        for name in options.models:
            backend.models.family(name)  # an unsupported family stops the start, not a row
        log.info(
            "local_backend_loaded",
            model=options.model,
            device=options.device,
            dtype=options.dtype,
            vae=options.vae or "model",
            offload=options.offload,
            compile=options.compile_unet,
            max_batch=backend.max_batch,
            models=sorted(options.models) or None,
            model_cache=options.model_cache,
            seconds=round(time.monotonic() - started, 2),
        )
        if backend.current.tiny:
            log.warning(
                "miniature_model",
                model=options.model,
                note="random-weights miniature SDXL: every image it makes is noise (tests and demos only)",
            )
        on_cpu = cpu_warning(options, backend.current.tiny)
        if on_cpu is not None:
            log.warning("local_model_on_cpu", model=options.model, device=options.device, note=on_cpu)
        if speed.compiles and backend.current.family is SDXL:
            backend.warm_up()
        return backend

    # -- the protocol ------------------------------------------------------------------------

    def claim_preference(self) -> ModelPreference | None:
        """Model affinity for the claim: the loaded checkpoints' names (None with one model)."""
        if not self.options.models:
            return None
        return ModelPreference(self.models.loaded_names(), self.options.model_switch_seconds)

    def device_and_model(self) -> tuple[str | None, str | None]:
        return self.options.device, self.options.model

    def validate(self, request: Request) -> Request:
        opts = self.options
        family = self.models.family(request.inputs.model)
        # A1111's `(red:1.5)` and `<lora:pixel:0.8>`: compel's weighting and the row's loras (SDXL's).
        request = a1111_prompt.apply(request, weighting=family.weighting, takes_loras=family.image_inputs)
        request = self._validate_inputs(request, family)
        notes: list[str] = []
        sides = () if request.inputs.task == "upscale" else (("width", request.width), ("height", request.height))
        multiple = family.side_multiple
        for side_name, side in sides:
            if side % multiple:
                lower = max(multiple, side // multiple * multiple)
                raise BadInput(
                    f"{side_name} must be a multiple of {multiple} for {family.name}, got {side} (try {lower})"
                )
            if side > opts.max_side:
                raise BadInput(f"{side_name} {side} is above this daemon's limit of {opts.max_side} (IMAGEND_MAX_SIDE)")
        default = opts.default_scheduler if opts.default_scheduler in family.schedulers else family.default_scheduler
        scheduler = (request.scheduler or default).strip().lower()
        preset = self.preset if family is SDXL else None
        if preset is not None:
            if request.scheduler:
                notes.append(f"scheduler: IMAGEND_FAST_PRESET={preset.name} samples with its own ({preset.sampler}); "
                             f"{request.scheduler!r} was not used")
            scheduler = PRESET_SCHEDULER
        elif scheduler not in family.schedulers:
            known = "unknown" if scheduler not in SCHEDULERS else f"{family.name} cannot use"
            raise BadInput(
                f"{known} scheduler {request.scheduler!r}; {family.name} takes one of: {', '.join(family.schedulers)}"
            )
        style = check_style(request.style) or "DEFAULT"
        prompt, negative = style_prompts(style, request.prompt, request.negative_prompt)
        for column, text in (("prompt", prompt), ("negative_prompt", negative)):
            if not text:
                continue
            if family.weighting:
                error = syntax_error(text)
                if error:
                    raise BadInput(
                        f"{column}: compel cannot parse it ({error}); see the weighting syntax in docs/local.md"
                    )
            elif is_weighted(text):
                notes.append(f"{column}: {family.name} has no prompt weighting here; the text is used as written")
        if negative and not family.negative_prompt:
            notes.append(f"negative_prompt: {family.name} takes no negative prompt; it was ignored")
        steps = request.steps if request.steps is not None else preset.steps if preset else opts.default_steps
        task = task_of(request)
        if task in ("img2img", "inpaint"):
            strength = request.inputs.strength if request.inputs.strength is not None else default_strength(task)
            if int(steps * strength) < 1:
                raise BadInput(
                    f"strength {strength:g} of {steps} steps runs no step (it runs strength x steps); "
                    f"raise steps or strength"
                )
        if request.inputs.hires is not None:  # the hires fix (addons/hires.py): its size and passes
            hires_fix.check(request.inputs.hires, request.width, request.height, steps, opts.max_side,
                            opts.upscaler is not None)
        guidance = opts.default_guidance if family is SDXL else family.default_guidance
        guidance = preset.guidance if preset else guidance
        return dataclasses.replace(
            request,
            steps=steps,
            guidance=request.guidance if request.guidance is not None else guidance,
            scheduler=scheduler,
            style=style,
            notes=(*request.notes, *notes),
        )

    def _validate_inputs(self, request: Request, family: Family) -> Request:
        """The model, LoRAs, adapters and image sizes, off the device."""
        inputs = request.inputs
        if not family.image_inputs and inputs.task != "upscale":
            used = [name for name in inputs.used if name not in ("model", "task", "upscale")]
            if used:
                raise BadInput(
                    f"model {inputs.model or '(IMAGEND_MODEL)'!s} is {family.name}, which takes text only here; "
                    f"{', '.join(used)} need an SDXL model"
                )
        self.loras.check(inputs.loras)
        if inputs.reference_image is not None:
            self.ip_adapter.check()
        if inputs.task == "upscale":
            if inputs.loras or inputs.reference_image is not None or inputs.mask_image is not None:
                raise BadInput("task 'upscale' takes an init image and a prompt only (no loras, mask or reference)")
            assert inputs.upscale is not None
            width, height = inputs.init_image.size
            self.upscaler.check(width, height, inputs.upscale)
            return dataclasses.replace(request, width=width, height=height)
        if inputs.size_from_init:
            width, height = fit_size(request.width, request.height, SIDE_MULTIPLE_PX, self.options.max_side)
            return dataclasses.replace(request, width=width, height=height)
        if inputs.controls:  # ControlNet (addons/controlnet.py): each control's ControlNet named
            request = dataclasses.replace(request, inputs=dataclasses.replace(
                inputs, controls=self.controlnets.resolve(inputs.controls)))
        return request

    def generate(self, batch: Sequence[Request], heartbeat: Heartbeat) -> list[Image]:
        jobs = [job for request in batch for job in self._jobs(request)]
        remaining = list(jobs)
        seconds: dict[tuple[int, int], float] = {}
        images: dict[tuple[int, int], Any] = {}
        retries = 0
        while remaining:
            try:
                with self.lock.hold(waiting=lambda: heartbeat(None)):
                    self._run(remaining, len(jobs), heartbeat, images, seconds)
                remaining = []
            except torch.OutOfMemoryError as exc:
                remaining = [job for job in remaining if job_key(job) not in images]
                exc_text = str(exc).splitlines()[0][:200] if str(exc) else "CUDA out of memory"
                exc.__traceback__ = None  # it holds the failed call's frames, and so its tensors
                pipe = self.current.pipe
                if pipe is not None and hasattr(pipe, "maybe_free_model_hooks"):
                    pipe.maybe_free_model_hooks()
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
        return gather(batch, jobs, lambda job: self._png(job, images[job_key(job)], seconds[job_key(job)]))

    def close(self) -> None:
        self.models.close()
        self.upscaler.close()
        self.controlnets.close()
        free_memory(self.options.device)

    # -- one pass over the batch, device held -------------------------------------------------

    def _run(
        self,
        jobs: list[_Job],
        total: int,
        heartbeat: Heartbeat,
        images: dict[tuple[int, int], Any],
        seconds: dict[tuple[int, int], float],
    ) -> None:
        wall_started = time.time()
        first = jobs[0].request
        task = task_of(first)
        heartbeat(None)  # a model load may take a while: the lease first
        model = self.current = self.models.get(first.inputs.model)
        for job in jobs:
            job.model_label, job.tiny = model.label, model.tiny
        if task == "upscale":
            pipe = self.upscaler.pipeline()
        else:
            pipe = model.pipeline(task)
            if model.family.image_inputs:
                self.loras.activate(model, first.inputs.loras)
                reference = first.inputs.reference_image is not None
                scale = first.inputs.reference_scale
                scale = (DEFAULT_REFERENCE_SCALE if scale is None else scale) if reference else None
                self.ip_adapter.prepare(model, pipe, scale)
                if first.inputs.controls:  # this batch's pipeline with its ControlNets (from_pipe, dropped after)
                    pipe = self.controlnets.pipeline(model, first.inputs.controls)
            encoded: dict[int, Conditioning] = {}  # a row of n images is encoded once (batching.py)
            for job in jobs:
                if job.conditioning is None and job.request.id in encoded:
                    job.conditioning = encoded[job.request.id]
                elif job.conditioning is None:
                    # Encoding long prompts takes a while: the lease (and cancel, and a stop) must not wait
                    # for the whole batch's encoding. Parsing already happened at validation, off the device.
                    heartbeat(None)
                    job.conditioning = encoded[job.request.id] = model.encoder.encode(job.prompt, job.negative)
        # Rows are grouped by token length so each row's conditioning is what it would be alone;
        # after an OOM, one image per call.
        groups: dict[int, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(job.conditioning.tokens if job.conditioning is not None else 0, []).append(job)
        calls = [[j] for j in jobs] if self.oom_fallback else list(groups.values())
        for group in calls:
            done_before = len(images)
            started = self.clock()
            call = self._hires_call if first.inputs.hires is not None else self._call
            pictures = call(model, pipe, task, group, heartbeat, _progress_scale(done_before, len(group), total))
            per_image = (self.clock() - started) / len(group)
            for job, picture in zip(group, pictures, strict=True):
                images[job_key(job)] = picture
                seconds[job_key(job)] = per_image
        log.info(
            "batch_generated",
            ids=[j.request.id for j in jobs],
            device=self.options.device,
            model=model.label,
            task=task,
            size=f"{first.width}x{first.height}",
            steps=first.steps,
            calls=len(calls),
            device_started=wall_started,
            device_finished=time.time(),
        )

    def _arguments(self, task: str, group: list[_Job]) -> dict[str, Any]:
        """The pipeline call's arguments beyond the prompt, seeds and steps, by task."""
        first = group[0].request
        inputs = first.inputs
        if task == "upscale":
            init = inputs.init_image
            width, height = _floor(init.width), _floor(init.height)  # the x4 UNet halves the size three times
            return {
                "prompt": group[0].prompt,
                "negative_prompt": group[0].negative,
                **self.upscaler.call_arguments(init.resize((width, height)) if init.size != (width, height) else init),
            }
        assert all(job.conditioning is not None for job in group)
        arguments: dict[str, Any] = self.current.encoder.arguments([job.conditioning for job in group])
        size = (first.width, first.height)
        if task in ("img2img", "inpaint"):
            init = inputs.init_image
            arguments["image"] = init.resize(size, PILImage.Resampling.LANCZOS) if init.size != size else init
            arguments["strength"] = inputs.strength if inputs.strength is not None else default_strength(task)
        if task == "inpaint":
            mask = inputs.mask_image
            arguments["mask_image"] = mask.resize(size, PILImage.Resampling.LANCZOS) if mask.size != size else mask
            # One copy per image: diffusers' inpainting encodes the image with generator[i] for each image it is
            # given, so one image for n generators would draw on the first alone and move image k's noise off
            # the noise a row of seed + k - 1 makes (image-to-image repeats the image itself).
            arguments["image"] = [arguments["image"]] * len(group)
            arguments["mask_image"] = [arguments["mask_image"]] * len(group)
        if task != "img2img":  # the image-to-image pipeline takes its size from the image
            arguments.update(width=first.width, height=first.height)
        if inputs.reference_image is not None:
            arguments["ip_adapter_image"] = inputs.reference_image
        if inputs.controls:
            arguments.update(ControlNets.call_arguments(inputs.controls, size))
        return arguments

    def _call(
        self,
        model: LoadedModel,
        pipe: Any,
        task: str,
        group: list[_Job],
        heartbeat: Heartbeat,
        progress_of: Callable[[float], float],
        arguments: dict[str, Any] | None = None,
        steps: int | None = None,
    ) -> list[Any]:
        """One pipeline call for rows with equal conditioning length; aborts from the step callback.
        `arguments` and `steps`: a hires pass's own (else the task's and the row's)."""
        first = group[0].request
        steps = steps or int(first.steps or self.options.default_steps)
        arguments = self._arguments(task, group) if arguments is None else arguments
        runs = effective_steps(steps, arguments.get("strength"))
        deadline = self.clock() + self.options.image_timeout_seconds * len(group)
        ids = first_of_each_row(group)  # a row of n images previews its first

        def step_done(step: int, latents: Any) -> None:
            preview = None
            if self.options.previews and latents is not None and model.family is SDXL:
                preview = lambda: {i: p for i, p in zip(ids, latent_previews(latents) or [], strict=False)  # noqa: E731
                                   if i is not None}
            heartbeat(min(progress_of((step + 1) / runs), PROGRESS_BEFORE_WRITE), preview)
            if self.clock() > deadline:
                raise ImageTimeout()

        def on_step_end(_pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            step_done(step, tensors.get("latents"))
            return tensors

        if task == "upscale":
            callbacks: dict[str, Any] = {
                "callback": lambda step, _t, _latents: step_done(step, None),
                "callback_steps": 1,
            }
        else:
            assert first.scheduler is not None
            if first.scheduler == PRESET_SCHEDULER and self.preset is not None:
                pipe.scheduler = preset_scheduler(model.schedulers.config, self.preset)
            else:
                pipe.scheduler = model.schedulers.fresh(first.scheduler)
            callbacks = {"callback_on_step_end": on_step_end}
        aborted: BaseException | None = None
        try:
            output = pipe(
                **arguments,
                num_inference_steps=steps,
                guidance_scale=first.guidance if first.guidance is not None else self.options.default_guidance,
                generator=[device_generator(job.seed) for job in group],
                **callbacks,
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
            self._after_abort(pipe)
            raise aborted from None
        pictures = list(output.images)
        if task == "inpaint":
            # As A1111 does: the unmasked pixels are the input's own, not their trip through the VAE.
            pictures = [PILImage.composite(p, image, mask)
                        for p, image, mask in zip(pictures, arguments["image"], arguments["mask_image"], strict=True)]
        if task == "upscale" and first.inputs.task == "upscale":
            inputs = first.inputs
            pictures = [Upscaler.finish(p, inputs.init_image.size, inputs.upscale or 4.0) for p in pictures]
        return pictures

    def _hires_call(
        self,
        model: LoadedModel,
        pipe: Any,
        task: str,
        group: list[_Job],
        heartbeat: Heartbeat,
        progress_of: Callable[[float], float],
    ) -> list[Any]:
        """The hires fix (addons/hires.py): the row's pass, the upscale, image-to-image at hr_strength."""
        first = group[0].request
        hires = first.inputs.hires
        assert hires is not None and task == "txt2img"
        passes = hires_fix.Passes(hires, int(first.steps or self.options.default_steps), first.width, first.height)
        arguments = self._arguments(task, group)
        if hires.upscaler == "latent":
            arguments["output_type"] = "latent"
        small = self._call(model, pipe, task, group, heartbeat, passes.progress(0, progress_of), arguments)
        if hires.upscaler == "latent":
            big: Any = passes.upscale_latents(small)
        elif hires.upscaler == "upscaler":
            four_x = self._call(model, self.upscaler.pipeline(), "upscale", group, heartbeat,
                                passes.progress(1, progress_of), steps=passes.second_steps, arguments={
                                    "prompt": [job.prompt for job in group],
                                    "negative_prompt": [job.negative or "" for job in group],
                                    **self.upscaler.call_arguments(small)})
            big = passes.resize(four_x)
        else:
            big = passes.resize(small, hires.upscaler)
        second = {name: value for name, value in self._arguments(task, group).items()
                  if name not in ("width", "height", "image", "controlnet_conditioning_scale",
                                  "control_guidance_start", "control_guidance_end")}
        second.update(image=big, strength=hires.strength)
        return self._call(model, model.pipeline("img2img"), "img2img", group, heartbeat,
                          passes.progress(len(passes.shares()) - 1, progress_of), second, passes.second_steps)

    def _after_abort(self, pipe: Any) -> None:
        if pipe is not None and hasattr(pipe, "maybe_free_model_hooks"):
            pipe.maybe_free_model_hooks()
        free_memory(self.options.device)

    # -- helpers ------------------------------------------------------------------------------

    def _jobs(self, request: Request) -> list[_Job]:
        """The row's images as jobs: n of them, seeds seed, seed + 1, … (batching.py)."""
        first = self._job(request)
        seeds = row_seeds(dataclasses.replace(request, seed=first.seed), lambda: first.seed)
        return [dataclasses.replace(first, seed=seed, index=k) for k, seed in enumerate(seeds)]

    def _job(self, request: Request) -> _Job:
        seed = request.seed if request.seed is not None else secrets.randbits(RANDOM_SEED_BITS)
        prompt, negative = style_prompts(request.style, request.prompt, request.negative_prompt)
        return _Job(request, seed, prompt, negative)

    def _png(self, job: _Job, picture: Any, seconds: float) -> Image:
        request = job.request
        inputs = request.inputs
        assert request.scheduler is not None and request.steps is not None and request.guidance is not None
        task = task_of(request)
        label, tiny = (self.upscaler.label, self.upscaler.tiny) if task == "upscale" else (job.model_label, job.tiny)
        extra: list[tuple[str, str]] = []
        if task in ("img2img", "inpaint"):
            extra.append(
                (
                    "Denoising strength",
                    f"{inputs.strength if inputs.strength is not None else default_strength(task):g}",
                )
            )
        if task == "inpaint":
            extra.append(("Inpaint", "mask_image"))
        if inputs.reference_image is not None:
            scale = inputs.reference_scale if inputs.reference_scale is not None else DEFAULT_REFERENCE_SCALE
            extra.append(("IP-Adapter scale", f"{scale:g}"))
        if inputs.loras:
            extra.append(("Lora hashes", f'"{self.loras.hashes(inputs.loras)}"'))
        if inputs.controls:
            extra += ControlNets.png_fields(inputs.controls)
        if inputs.hires is not None:  # A1111's Size is the first pass's
            extra += hires_fix.png_fields(inputs.hires, inputs.hires.steps or request.steps, self.upscaler.label)
        if task == "upscale":
            extra += [("Postprocess upscale by", f"{inputs.upscale or 4:g}"), ("Postprocess upscaler", label)]
        width, height = picture.size
        parameters = GenerationParameters(
            prompt=job.prompt + "".join(f" <lora:{lora.name}:{lora.weight:g}>" for lora in inputs.loras),
            negative_prompt=job.negative,
            steps=request.steps,
            sampler=self.preset.sampler if request.scheduler == PRESET_SCHEDULER and self.preset
            else SCHEDULERS[request.scheduler][2],
            guidance=request.guidance,
            seed=job.seed,
            width=request.width if inputs.hires is not None else width,
            height=request.height if inputs.hires is not None else height,
            model=label + (" (miniature random weights: noise)" if tiny else ""),
            style=request.style,
            extra=tuple(extra),
        )
        return Image(encode_png(picture, parameters), job.seed, seconds, width=width, height=height,
                     steps=request.steps, guidance=request.guidance,
                     scheduler=request.scheduler if request.scheduler in SCHEDULERS else None)

    def _prepare_model(self, model: LoadedModel) -> None:
        """A checkpoint loaded after an out-of-memory fallback gets the same fallback."""
        if self.oom_fallback:
            self._apply_fallback(model.pipe, self.oom_fallback)

    def _apply_fallback(self, pipe: Any, level: int) -> None:
        decoder_option(pipe, "enable_slicing")
        decoder_option(pipe, "enable_tiling")
        if level >= 2 and self.options.device.startswith("cuda") and self.options.offload == "none":
            pipe.remove_all_hooks()
            place(pipe, self.options, offload="model" if level == 2 else "sequential")

    def _fall_back_after_oom(self, retry: int) -> None:
        """Retry 1: VAE slicing + tiling, one image per call. Retry 2: model CPU offload. 3+: sequential."""
        level = min(retry, 3)
        if level <= self.oom_fallback:
            return
        self.oom_fallback = level
        for model in self.models.loaded.values():
            if model.on_device:
                self._apply_fallback(model.pipe, level)
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
        """With torch.compile: compile every shape serving will see now (minutes on a big GPU, or a read
        of IMAGEND_COMPILE_CACHE_DIR) instead of inside the first rows: each batch size up to
        IMAGEND_MAX_BATCH at the default size and at each of IMAGEND_COMPILE_SIZES."""
        started = time.monotonic()
        shapes = self.speed.warmup_shapes(self.max_batch, self.options.warmup_size)
        for batch, width, height in shapes:
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
                scheduler=PRESET_SCHEDULER if self.preset else self.options.default_scheduler,
            )
            jobs = [self._job(dataclasses.replace(request, id=-i)) for i in range(batch)]
            with self.lock.hold():
                self._run(jobs, len(jobs), lambda progress=None, preview=None: None, {}, {})
        log.info("compile_warmed_up", shapes=[f"{b}x{w}x{h}" for b, w, h in shapes],
                 seconds=round(time.monotonic() - started, 1))
