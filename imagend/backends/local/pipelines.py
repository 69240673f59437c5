"""Loading and driving a diffusers pipeline of any family the local backend drives (families/). It
imports torch (options.py, gpu_lock.py and families/ do not).

- `check_model_source`, `load_pipeline`: from_pretrained once as the family's pipeline class (hub id
  or folder; the HF cache, HF_HUB_OFFLINE and HF_HOME are honoured by huggingface_hub), SDXL's
  fp16-fix VAE (`load_vae`, shared by every SDXL checkpoint), SD3 without T5 if asked, placement or
  CPU offload (`place`), VAE slicing/tiling (`decoder_option` on `image_decoder`: the VAE, or
  Kandinsky's MoVQ), SDXL's speed options (speed/) or torch.compile of its UNet (`compile_unet`).
- `Schedulers`: a fresh scheduler per job, from the checkpoint's own scheduler config.
- `free_memory` after an abort or an OOM; `device_generator`, the CPU generator a seed drives;
  `quiet_libraries`, no progress bars in the JSON logs.

Each family's prompt encoder is in its module of families/ (SDXL's compel: families/sdxl.py).
"""

from __future__ import annotations

import copy
import gc
import importlib
from pathlib import Path
from typing import Any

import torch

from imagend.backends.local import single_file
from imagend.backends.local.families import SD3, SDXL, Family, family_of
from imagend.backends.local.hub import cached_file, hub_unreachable, load_offline
from imagend.backends.local.options import SCHEDULERS, LocalSettings
from imagend.errors import ConfigError, first_line
from imagend.logs import get_logger

log = get_logger()

LIBRARY_MESSAGE_MAX_CHARS = 300  # of a library's message (its first line) in a load error
TINY_MODEL_HINT = "for a trial without weights, `imagend -make-tiny-model DIR` writes a miniature (noise-making) model"


def _looks_like_folder(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().exists()


def quiet_libraries() -> None:
    """tqdm bars would break the JSON log lines; transformers warns on every prompt compel chunks past 77 tokens."""
    diffusers_logging: Any = importlib.import_module("diffusers.utils.logging")
    transformers_logging: Any = importlib.import_module("transformers.utils.logging")
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


def load_vae(options: LocalSettings) -> Any:
    """IMAGEND_VAE (the fp16-fix VAE by default on a GPU), loaded once and shared by every model; None: each
    model keeps its own."""
    if options.vae is None:
        return None
    diffusers: Any = importlib.import_module("diffusers")
    kwargs: dict[str, Any] = {"dtype": getattr(torch, options.dtype)}
    if not _looks_like_folder(options.vae):
        reason = hub_unreachable()
        if reason is not None and cached_file(options.vae, "config.json") is None:
            raise ConfigError(
                f"IMAGEND_VAE={options.vae}: not in the Hugging Face cache, and it cannot be downloaded: {reason}. "
                f"Set IMAGEND_VAE to a folder or a cached hub id, or IMAGEND_VAE=model to keep the model's own"
            )
        kwargs["local_files_only"] = reason is not None
    try:
        return diffusers.AutoencoderKL.from_pretrained(
            str(Path(options.vae).expanduser()) if _looks_like_folder(options.vae) else options.vae, **kwargs
        )
    except Exception as exc:  # any failure to load is a start-up configuration problem
        raise ConfigError(
            f"IMAGEND_VAE={options.vae}: cannot load this VAE "
            f"({type(exc).__name__}: {first_line(exc, LIBRARY_MESSAGE_MAX_CHARS)}). "
            f"Set IMAGEND_VAE to a folder or a cached hub id, or IMAGEND_VAE=model to keep the model's own"
        ) from exc


def check_model_source(source: str, setting: str) -> None:
    """At start, before any load: a folder named as a model must hold a pipeline; a single file must be a
    checkpoint of a family loaded from files (single_file.py)."""
    if single_file.parse(source) is not None:
        single_file.check_file(source, setting)
        return
    if _looks_like_folder(source) and not (Path(source).expanduser() / "model_index.json").is_file():
        raise ConfigError(
            f"{setting}={source}: no diffusers pipeline there (no model_index.json). Set {setting} to a folder "
            f"written by save_pretrained or to a hub id such as stabilityai/stable-diffusion-xl-base-1.0; "
            f"{TINY_MODEL_HINT}"
        )


def load_pipeline(options: LocalSettings, source: str | None = None, setting: str = "IMAGEND_MODEL",
                  vae: Any = None, family: Family | None = None, speed: Any = None) -> Any:
    """The pipeline of `source` (default IMAGEND_MODEL), of its family (families/), ready on its device.
    Any failure is a ConfigError naming `setting`."""
    quiet_libraries()
    diffusers: Any = importlib.import_module("diffusers")  # untyped from_pretrained: keep mypy out of it
    model = options.model if source is None else source
    check_model_source(model, setting)
    family = family or family_of(model, setting, asked=source is not None or options.model_set)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, options.dtype)}
    if options.model_variant:
        kwargs["variant"] = options.model_variant  # e.g. fp16: the half-size weight files of a hub repo
    if family is SDXL:
        vae = load_vae(options) if vae is None else vae
        if vae is not None:
            kwargs["vae"] = vae  # the fp16-fix VAE is SDXL's
    if family is SD3 and not options.sd3_t5:
        kwargs.update(text_encoder_3=None, tokenizer_3=None)
    single = single_file.parse(model) is not None  # one .safetensors/.ckpt file: from_single_file
    if not single and load_offline(model):  # cached, and the hub does not answer: no retries asking it for updates
        kwargs["local_files_only"] = True
    try:
        if single:
            pipe = single_file.load(getattr(diffusers, family.pipeline_class), model, family, options, setting, kwargs)
        else:
            pipe = getattr(diffusers, family.pipeline_class).from_pretrained(
                str(Path(model).expanduser()) if _looks_like_folder(model) else model, **kwargs
            )
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"{setting}={model}: cannot load a {family.name} pipeline "
            f"({type(exc).__name__}: {first_line(exc, LIBRARY_MESSAGE_MAX_CHARS)}). "
            f"Set {setting} to a local folder with model_index.json or a hub id already in the Hugging Face "
            f"cache (or reachable); {TINY_MODEL_HINT}"
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    place(pipe, options)
    if options.vae_slicing:
        decoder_option(pipe, "enable_slicing")
    if options.vae_tiling:
        decoder_option(pipe, "enable_tiling")
    if speed is not None and family is SDXL:  # speed/'s options (compile among them): docs/gpu_speed.md
        from imagend.backends.local.speed.apply import apply_speed

        applied = apply_speed(pipe, speed, options.device)
        if applied:
            log.info("speed_options", model=model, applied=applied, exact=speed.exact)
    elif options.compile_unet and family is SDXL:
        compile_unet(pipe, options.compile_mode)
    return pipe


def image_decoder(pipe: Any) -> Any:
    """The model that turns latents into pixels: `vae`, or Kandinsky's `movq`."""
    return getattr(pipe, "vae", None) or getattr(pipe, "movq", None)


def decoder_option(pipe: Any, method: str) -> bool:
    """Turn on VAE slicing or tiling where the decoder has it (Kandinsky's MoVQ has neither)."""
    try:
        getattr(image_decoder(pipe), method)()
    except (AttributeError, NotImplementedError):
        return False
    return True


def compile_unet(pipe: Any, mode: str) -> None:
    """torch.compile the UNet (channels-last). Compiles on the first call: see LocalBackend.warm_up."""
    # fullgraph=False: diffusers' UNet has a few graph breaks across versions; compile still wins.
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.unet = torch.compile(pipe.unet, mode=mode, dynamic=False)  # one static graph per shape, made at warm-up


def place(pipe: Any, options: LocalSettings, offload: str | None = None) -> None:
    """Move the pipeline to its device, or hand placement to accelerate's CPU offload hooks."""
    offload = options.offload if offload is None else offload
    if offload != "none" and not options.device.startswith("cuda"):
        log.warning("cpu_offload_ignored", device=options.device, reason="offload only applies to CUDA devices")
        offload = "none"
    if offload == "model":
        pipe.enable_model_cpu_offload(device=options.device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=options.device)
    else:
        pipe.to(options.device)


class Schedulers:
    """A fresh scheduler per job, of the named kind, from the checkpoint's scheduler config.

    from_config inspects signatures (milliseconds); a deep copy of a pristine instance made
    once per kind is the same fresh object, no state shared between jobs, for much less.
    """

    def __init__(self, config: Any) -> None:
        self.config = config
        self.pristine: dict[str, Any] = {}

    def fresh(self, name: str) -> Any:
        if name not in self.pristine:
            diffusers: Any = importlib.import_module("diffusers")
            class_name, overrides, _ = SCHEDULERS[name]
            self.pristine[name] = getattr(diffusers, class_name).from_config(self.config, **overrides)
        return copy.deepcopy(self.pristine[name])


def free_memory(device: str) -> None:
    """After an abort or an OOM: drop unreachable tensors and return cached blocks to the driver."""
    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()  # type: ignore[no-untyped-call]


def device_generator(seed: int) -> torch.Generator:
    """A CPU generator: diffusers draws the initial noise on it, so a seed gives the same noise on any GPU."""
    return torch.Generator("cpu").manual_seed(seed)
