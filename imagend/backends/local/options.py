"""The local backend's settings, schedulers and styles: plain data, no torch.

Every setting is an `IMAGEND_*` variable read with the core's `Env`, so a bad value
stops the daemon at start with an error naming the variable. docs/local.md lists them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from imagend.config.settings import Settings
from imagend.db.columns import STYLE_NAMES
from imagend.errors import ConfigError

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_FP16_VAE = "madebyollin/sdxl-vae-fp16-fix"  # SDXL's own VAE overflows in fp16
VAE_FROM_MODEL = "model"  # IMAGEND_VAE=model keeps the checkpoint's own VAE
DEFAULT_MAX_SIDE_PX = 2048
DEFAULT_STEPS = 30
DEFAULT_GUIDANCE = 5.0  # diffusers' SDXL default
DEFAULT_SCHEDULER = "euler"  # SDXL base ships EulerDiscreteScheduler
OOM_RETRIES = 3
OOM_RETRY_SECONDS = 10.0
IMAGE_TIMEOUT_SECONDS = 600.0
SIDE_MULTIPLE_PX = 8  # the VAE downscales by 8
OFFLOAD_MODES = ("none", "model", "sequential")
DTYPES = ("auto", "float16", "bfloat16", "float32")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEFAULT_MODEL_CACHE = 1  # pipelines kept on the device; an SDXL checkpoint takes ~7 GB of VRAM in fp16
DEFAULT_MODEL_SWITCH_SECONDS = 60.0
DEFAULT_LORA_CACHE = 8
DEFAULT_STRENGTH = 0.6  # image-to-image, as the issue and A1111's img2img tab (0.75) roughly agree
DEFAULT_INPAINT_STRENGTH = 1.0  # inpainting repaints the masked region from noise
DEFAULT_REFERENCE_SCALE = 0.6
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# imagend.backends.local.miniature.sdxl writes this file, containing these words, into a miniature model's folder.
TINY_MODEL_MARKER_FILE = "README.txt"
TINY_MODEL_MARKER_TEXT = "RANDOM WEIGHTS"

# name -> (diffusers scheduler class, config overrides, the A1111 sampler name for PNG metadata)
SCHEDULERS: dict[str, tuple[str, dict[str, object], str]] = {
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, "DPM++ 2M"),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        "DPM++ 2M Karras",
    ),
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    # Kandinsky 3's own.
    "ddpm": ("DDPMScheduler", {}, "DDPM"),
    # Flow matching (FLUX.1, SD3): built from the checkpoint's FlowMatchEuler config.
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}, "Euler"),
    "flow_dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "algorithm_type": "dpmsolver++",
         "solver_order": 2},
        "DPM++ 2M",
    ),
    "flow_unipc": ("UniPCMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}, "UniPC"),
}

# One template per name of imagend.db.styles (Fusion Brain's names, so producers moving between
# backends keep working): a prompt template ({prompt}) and words added to the negative prompt.
# DEFAULT (or NULL) leaves the prompt as written.
STYLE_TEMPLATES: dict[str, tuple[str, str]] = {
    "DEFAULT": ("{prompt}", ""),
    "UHD": (
        "{prompt}, ultra detailed, 8k, sharp focus, high dynamic range, professional photograph",
        "blurry, lowres, jpeg artifacts",
    ),
    "ANIME": ("anime artwork, {prompt}, anime style, key visual, vibrant, studio anime", "photo, photorealistic"),
    "KANDINSKY": ("{prompt}, abstract painting in the style of Wassily Kandinsky, bold geometric shapes", "photo"),
}
assert set(STYLE_TEMPLATES) == set(STYLE_NAMES), "a template for every style name, and no other"


@dataclass(frozen=True)
class LocalSettings:
    model: str
    vae: str | None  # None: the checkpoint's own VAE
    device: str
    dtype: str  # "float16", "bfloat16" or "float32"
    offload: str
    vae_slicing: bool
    vae_tiling: bool
    compile_unet: bool
    compile_mode: str
    model_variant: str | None
    max_side: int
    default_steps: int
    default_guidance: float
    default_scheduler: str
    oom_retries: int
    oom_retry_seconds: float
    image_timeout_seconds: float
    lock_dir: Path
    warmup_size: tuple[int, int]  # (width, height) of the compile warm-up: the daemon's default size
    # Several models (IMAGEND_MODELS), the cache of loaded ones, and affinity.
    models: dict[str, str] = field(default_factory=dict)  # name -> hub id or folder; "" is IMAGEND_MODEL
    model_cache: int = DEFAULT_MODEL_CACHE
    model_cache_cpu: int = 0  # evicted pipelines kept in CPU memory (a faster reload), beyond model_cache
    model_switch_seconds: float = DEFAULT_MODEL_SWITCH_SECONDS
    lora_dir: Path | None = None
    lora_cache: int = DEFAULT_LORA_CACHE
    ip_adapter: str | None = None  # folder or hub id [":" subfolder/weight file]
    upscaler: str | None = None  # a diffusers upscaler pipeline (folder or hub id)
    controlnets: dict[str, str] = field(default_factory=dict)  # IMAGEND_CONTROLNETS: name -> hub id or folder
    previews: bool = True
    sd3_t5: bool = True  # SD3's T5 text encoder (about 9 GB in fp16); without it, T5's part of the prompt is zeros
    model_set: bool = True  # IMAGEND_MODEL was set; False: DEFAULT_MODEL, never downloaded unasked (hub.py)
    # Single-file checkpoints (single_file.py): what completes them, and where -import-model writes folders.
    single_file_config: str = DEFAULT_MODEL  # a folder or hub id: SDXL base's configs and tokenizers
    models_dir: Path | None = None  # $IMAGEND_DATA_DIR/models

    @classmethod
    def from_settings(cls, settings: Settings, cuda_available: bool) -> LocalSettings:
        env = settings.env
        device = env.str("IMAGEND_DEVICE") or ("cuda" if cuda_available else "cpu")
        if not (device == "cpu" or device == "cuda" or device.startswith("cuda:") or device == "mps"):
            raise ConfigError(f"IMAGEND_DEVICE={device!r} is not cpu, cuda, cuda:N or mps")
        if device.startswith("cuda") and not cuda_available:
            raise ConfigError(f"IMAGEND_DEVICE={device!r} but torch sees no CUDA device; set IMAGEND_DEVICE=cpu")
        on_gpu = device != "cpu"
        dtype = env.choice("IMAGEND_DTYPE", "auto", DTYPES)
        if dtype == "auto":
            dtype = "float16" if on_gpu else "float32"
        vae = env.str("IMAGEND_VAE")
        if vae is None:
            vae = DEFAULT_FP16_VAE if dtype == "float16" else VAE_FROM_MODEL
        scheduler = env.choice("IMAGEND_DEFAULT_SCHEDULER", DEFAULT_SCHEDULER, tuple(SCHEDULERS))
        max_side = env.int("IMAGEND_MAX_SIDE", DEFAULT_MAX_SIDE_PX, minimum=SIDE_MULTIPLE_PX, maximum=8192)
        models = parse_models(env.str("IMAGEND_MODELS"))
        named = env.str("IMAGEND_MODEL")
        return cls(
            # IMAGEND_MODEL may name an entry of IMAGEND_MODELS (`IMAGEND_MODEL=sdxl`): that entry's checkpoint.
            model=models.get(named, named) if named else DEFAULT_MODEL,
            model_set=named is not None,
            vae=None if vae.lower() == VAE_FROM_MODEL else vae,
            device=device,
            dtype=dtype,
            offload=env.choice("IMAGEND_CPU_OFFLOAD", "none", OFFLOAD_MODES),
            vae_slicing=env.bool("IMAGEND_VAE_SLICING", True),
            vae_tiling=env.bool("IMAGEND_VAE_TILING", False),
            compile_unet=env.bool("IMAGEND_COMPILE", False),
            compile_mode=env.choice("IMAGEND_COMPILE_MODE", "default", COMPILE_MODES),
            model_variant=env.str("IMAGEND_MODEL_VARIANT"),
            max_side=max_side,
            default_steps=env.int("IMAGEND_DEFAULT_STEPS", DEFAULT_STEPS, minimum=1, maximum=200),
            default_guidance=env.float("IMAGEND_DEFAULT_GUIDANCE", DEFAULT_GUIDANCE, minimum=0.0),
            default_scheduler=scheduler,
            oom_retries=env.int("IMAGEND_OOM_RETRIES", OOM_RETRIES, minimum=0, maximum=20),
            oom_retry_seconds=env.seconds("IMAGEND_OOM_RETRY_SECONDS", OOM_RETRY_SECONDS),
            image_timeout_seconds=env.seconds("IMAGEND_IMAGE_TIMEOUT", IMAGE_TIMEOUT_SECONDS, minimum=0.001),
            lock_dir=Path(env.str("IMAGEND_LOCK_DIR") or settings.data_dir / "locks").expanduser(),
            warmup_size=(_round_side(settings.default_width, max_side), _round_side(settings.default_height, max_side)),
            models=models,
            model_cache=env.int("IMAGEND_MODEL_CACHE", DEFAULT_MODEL_CACHE, minimum=1, maximum=16),
            model_cache_cpu=env.int("IMAGEND_MODEL_CACHE_CPU", 0, minimum=0, maximum=16),
            model_switch_seconds=env.seconds("IMAGEND_MODEL_SWITCH_SECONDS", DEFAULT_MODEL_SWITCH_SECONDS),
            lora_dir=_folder(env.str("IMAGEND_LORA_DIR"), "IMAGEND_LORA_DIR"),
            lora_cache=env.int("IMAGEND_LORA_CACHE", DEFAULT_LORA_CACHE, minimum=1, maximum=64),
            ip_adapter=env.str("IMAGEND_IP_ADAPTER"),
            upscaler=env.str("IMAGEND_UPSCALER"),
            controlnets=parse_models(env.str("IMAGEND_CONTROLNETS"), "IMAGEND_CONTROLNETS"),
            previews=env.bool("IMAGEND_PREVIEWS", True),
            sd3_t5=env.bool("IMAGEND_SD3_T5", True),
            single_file_config=env.str("IMAGEND_SINGLE_FILE_CONFIG") or DEFAULT_MODEL,
            models_dir=settings.data_dir / "models",
        )

    def source_of(self, name: str | None) -> str:
        """The hub id or folder of a row's `model` (None or '': IMAGEND_MODEL)."""
        return self.models[name] if name else self.model


def parse_models(text: str | None, setting: str = "IMAGEND_MODELS") -> dict[str, str]:
    """IMAGEND_MODELS (or IMAGEND_CONTROLNETS): `name=hub-id-or-folder,name2=…`."""
    models: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, source = (part.strip() for part in item.partition("="))
        if not sep or not source or not MODEL_NAME.fullmatch(name):
            example = (CONTROLNETS_EXAMPLE if setting == "IMAGEND_CONTROLNETS" else
                       "IMAGEND_MODELS=sdxl=stabilityai/stable-diffusion-xl-base-1.0,juggernaut=/srv/models/juggernaut-xl")
            raise ConfigError(
                f"{setting}: {item.strip()!r} is not name=hub-id-or-folder (names: letters, digits, . _ -), "
                f"e.g. {example}"
            )
        if name in models:
            raise ConfigError(f"{setting} names {name!r} twice")
        models[name] = source
    return models


CONTROLNETS_EXAMPLE = "IMAGEND_CONTROLNETS=canny-xl=diffusers/controlnet-canny-sdxl-1.0,depth-xl=/srv/controlnets/depth"


def _folder(text: str | None, setting: str) -> Path | None:
    if not text:
        return None
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{setting}={text}: no such folder")
    return folder.resolve()


def _round_side(side: int, max_side: int) -> int:
    return max(SIDE_MULTIPLE_PX, min(side, max_side) // SIDE_MULTIPLE_PX * SIDE_MULTIPLE_PX)


def style_prompts(style: str | None, prompt: str, negative: str | None) -> tuple[str, str | None]:
    """Apply a style template; the style must already be validated (one of imagend.db.styles.STYLE_NAMES)."""
    template, extra_negative = STYLE_TEMPLATES[style or "DEFAULT"]
    styled = template.replace("{prompt}", prompt)
    if extra_negative:
        negative = f"{negative}, {extra_negative}" if negative else extra_negative
    return styled, negative


def is_tiny_model(model: str) -> bool:
    """True when IMAGEND_MODEL points at a folder written by imagend.backends.local.miniature.sdxl (it makes noise);
    a single file written from one: single_file.is_miniature."""
    marker = Path(model).expanduser() / TINY_MODEL_MARKER_FILE
    try:
        return marker.is_file() and TINY_MODEL_MARKER_TEXT in marker.read_text(encoding="utf-8")
    except OSError:
        return False
