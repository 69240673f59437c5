"""Loading and driving the diffusers SDXL pipeline: torch lives here and in backend.py only.

- `load_pipeline`: from_pretrained once (hub id or folder; the HF cache, HF_HUB_OFFLINE
  and HF_HOME are honoured by huggingface_hub), the fp16-fix VAE on CUDA, placement or
  CPU offload, VAE slicing/tiling, optional torch.compile of the UNet.
- `PromptEncoder`: compel's CompelForSDXL, one row at a time, so a row's conditioning is
  the same whatever else is in its batch (see docs/local.md, reproducibility).
- `Schedulers`: a fresh scheduler per job, from the checkpoint's own scheduler config.
"""

from __future__ import annotations

import copy
import functools
import gc
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imagend.backends.local.families.catalog import SD3, SDXL, Family, family_of
from imagend.backends.local.options import SCHEDULERS, LocalSettings
from imagend.errors import ConfigError
from imagend.logs import get_logger

log = get_logger()

PARSED_PROMPTS_KEPT = 256
# Characters compel's syntax needs (weights, groups, blends, escapes): a prompt with none of
# them is plain text and need not be parsed.
MAYBE_SYNTAX = re.compile(r'[()\[\]+\-"\\]')
TINY_MODEL_HINT = "for a trial without weights, `imagend -make-tiny-model DIR` writes a miniature (noise-making) model"


@dataclass(frozen=True)
class Conditioning:
    """One row's compel output: [1, tokens, dim] embeddings and [1, dim] pooled, for both sides."""

    embeds: torch.Tensor
    pooled: torch.Tensor
    negative_embeds: torch.Tensor
    negative_pooled: torch.Tensor

    @property
    def tokens(self) -> int:
        return int(self.embeds.shape[1])


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
    try:
        return diffusers.AutoencoderKL.from_pretrained(
            str(Path(options.vae).expanduser()) if _looks_like_folder(options.vae) else options.vae,
            dtype=getattr(torch, options.dtype),
        )
    except Exception as exc:  # any failure to load is a start-up configuration problem
        raise ConfigError(
            f"IMAGEND_VAE={options.vae}: cannot load this VAE ({type(exc).__name__}: {_first_line(exc)}). "
            f"Set IMAGEND_VAE to a folder or a cached hub id, or IMAGEND_VAE=model to keep the model's own"
        ) from exc


def check_model_source(source: str, setting: str) -> None:
    """At start, before any load: a folder named as a model must hold a pipeline."""
    if _looks_like_folder(source) and not (Path(source).expanduser() / "model_index.json").is_file():
        raise ConfigError(
            f"{setting}={source}: no diffusers pipeline there (no model_index.json). Set {setting} to a folder "
            f"written by save_pretrained or to a hub id such as stabilityai/stable-diffusion-xl-base-1.0; "
            f"{TINY_MODEL_HINT}"
        )


def load_pipeline(options: LocalSettings, source: str | None = None, setting: str = "IMAGEND_MODEL",
                  vae: Any = None, family: Family | None = None, speed: Any = None) -> Any:
    """The pipeline of `source` (default IMAGEND_MODEL), of its family (families.py), ready on its device.
    Any failure is a ConfigError naming `setting`."""
    quiet_libraries()
    diffusers: Any = importlib.import_module("diffusers")  # untyped from_pretrained: keep mypy out of it
    model = options.model if source is None else source
    check_model_source(model, setting)
    family = family or family_of(model, setting)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, options.dtype)}
    if options.model_variant:
        kwargs["variant"] = options.model_variant  # e.g. fp16: the half-size weight files of a hub repo
    if family is SDXL:
        vae = load_vae(options) if vae is None else vae
        if vae is not None:
            kwargs["vae"] = vae  # the fp16-fix VAE is SDXL's
    if family is SD3 and not options.sd3_t5:
        kwargs.update(text_encoder_3=None, tokenizer_3=None)
    try:
        pipe = getattr(diffusers, family.pipeline_class).from_pretrained(
            str(Path(model).expanduser()) if _looks_like_folder(model) else model, **kwargs
        )
    except Exception as exc:
        raise ConfigError(
            f"{setting}={model}: cannot load a {family.name} pipeline ({type(exc).__name__}: {_first_line(exc)}). "
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


@functools.lru_cache(maxsize=1)
def _prompt_parser() -> Any:
    from compel.prompt_parser import PromptParser

    return PromptParser()


@functools.lru_cache(maxsize=PARSED_PROMPTS_KEPT)
def parse_prompt(text: str) -> Any:
    """compel's parse of `text`. compel builds its pyparsing grammar anew for every string it parses,
    and validation and every encoder (both of SDXL's, FLUX's) parse the same strings: one parser built
    once, and its (read-only) results remembered, parse the same way for a fraction of the time."""
    return _prompt_parser().parse_conjunction(text)


def syntax_error(text: str) -> str | None:
    """Why compel cannot parse `text` (e.g. a blend with more weights than prompts), or None."""
    if not MAYBE_SYNTAX.search(text):
        return None
    from compel.prompt_parser import PromptParser

    try:
        parse_prompt(text)
    except PromptParser.ParsingException as exc:
        return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return None


class PromptEncoder:
    """compel for SDXL's two text encoders: weighting syntax, and no 77-token truncation."""

    def __init__(self, pipe: Any) -> None:
        from compel import CompelForSDXL

        self.pipe = pipe
        # Read once: the property walks every module of the pipeline (milliseconds per call).
        self.device = pipe._execution_device
        self.compel = CompelForSDXL(pipe, device=str(self.device))
        for compel in (self.compel.compel_1, self.compel.compel_2):
            compel.parse_prompt_string = parse_prompt  # only the lock holder encodes
        # diffusers' own rule: with no negative prompt, the unconditional side is zeros.
        self.zero_empty_negative = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))

    def is_plain(self, text: str) -> bool:
        """No weighting (compel parses it to one fragment of weight 1) and within one 77-token window."""
        if MAYBE_SYNTAX.search(text):
            conjunction = parse_prompt(text)
            prompts = conjunction.prompts
            if len(prompts) != 1 or getattr(conjunction, "loras", None):
                return False
            fragments = getattr(prompts[0], "children", None)
            if not fragments or len(fragments) != 1 or fragments[0].weight != 1.0:
                return False
        return all(
            len(tokenizer(text).input_ids) <= tokenizer.model_max_length
            for tokenizer in (self.pipe.tokenizer, self.pipe.tokenizer_2)
        )

    @torch.no_grad()
    def encode(self, prompt: str, negative: str | None) -> Conditioning:
        zero_negative = not negative and self.zero_empty_negative
        if self.is_plain(prompt) and (zero_negative or self.is_plain(negative or "")):
            # What compel computes for a plain prompt is exactly diffusers' own encoding (the
            # tests hold them bitwise equal), which runs each text encoder once instead of
            # compel's three passes: the common case, taken the short way.
            embeds, pooled = self._encode_plain(prompt)
            if zero_negative:
                return Conditioning(embeds, pooled, torch.zeros_like(embeds), torch.zeros_like(pooled))
            return Conditioning(embeds, pooled, *self._encode_plain(negative or ""))
        return self.encode_with_compel(prompt, negative)

    def encode_with_compel(self, prompt: str, negative: str | None) -> Conditioning:
        if not negative and self.zero_empty_negative:
            out = self.compel(main_prompt=prompt)  # no need to encode a negative that becomes zeros
            return Conditioning(
                out.embeds, out.pooled_embeds, torch.zeros_like(out.embeds), torch.zeros_like(out.pooled_embeds)
            )
        out = self.compel(main_prompt=prompt, negative_prompt=negative or "")
        return Conditioning(out.embeds, out.pooled_embeds, out.negative_embeds, out.negative_pooled_embeds)

    def arguments(self, conditionings: list[Any]) -> dict[str, torch.Tensor]:
        return stack(conditionings)

    def _encode_plain(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            text, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return embeds, pooled


def stack(conditionings: list[Conditioning]) -> dict[str, torch.Tensor]:
    """The pipeline's embedding arguments for a batch whose rows all have the same token length."""
    return {
        "prompt_embeds": torch.cat([c.embeds for c in conditionings]),
        "pooled_prompt_embeds": torch.cat([c.pooled for c in conditionings]),
        "negative_prompt_embeds": torch.cat([c.negative_embeds for c in conditionings]),
        "negative_pooled_prompt_embeds": torch.cat([c.negative_pooled for c in conditionings]),
    }


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
