"""The GPU speed options' settings: `SpeedSettings.from_env`, the fast presets' published recipes
(`PRESETS`, `FastPreset`) and `parse_sizes` (IMAGEND_COMPILE_SIZES). Plain data, no torch: apply.py
applies them to a pipeline, step_cache.py is the step cache.

Every option is off by default, and each says whether it is exact (the same image, up to float
rounding) or not (a different image, by design). docs/gpu_speed.md has each option's published
figures and how to measure them with bench/gpu_sdxl.py.

- IMAGEND_FAST_PRESET (none|lcm|lightning|hyper), IMAGEND_FAST_LORA, IMAGEND_FAST_STEPS,
  IMAGEND_FAST_GUIDANCE: a step-reduction LoRA fused into the weights, with its scheduler, steps and
  guidance. NOT exact: another model (4-8 steps instead of 30).
- IMAGEND_FUSE_QKV: one matmul for the attention's query, key and value projections. Exact.
- IMAGEND_CHANNELS_LAST: NHWC memory format for the UNet's and the VAE's convolutions. Exact.
- IMAGEND_STEP_CACHE (none|deepcache), IMAGEND_STEP_CACHE_INTERVAL: DeepCache-style reuse of the
  UNet's deep features between steps. NOT exact.
- IMAGEND_COMPILE, IMAGEND_COMPILE_MODE (also read by options.py), IMAGEND_COMPILE_REGIONAL,
  IMAGEND_COMPILE_VAE, IMAGEND_COMPILE_CACHE_DIR, IMAGEND_COMPILE_SIZES: torch.compile of the UNet
  (whole, or its repeated transformer blocks) and of the VAE decoder, static shapes, the compiled
  code kept on disk. Exact up to float rounding (other kernels, the same math).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from imagend.backends.local.options import COMPILE_MODES, SIDE_MULTIPLE_PX
from imagend.config.env import Env
from imagend.errors import ConfigError

STEP_CACHES = ("none", "deepcache")
DEFAULT_STEP_CACHE_INTERVAL = 3  # DeepCache's own SDXL example: one full UNet pass in three
FAST_PRESETS = ("none", "lcm", "lightning", "hyper")
COMPILE_CACHE_FOLDER = "compile-cache"  # under IMAGEND_DATA_DIR unless IMAGEND_COMPILE_CACHE_DIR says
_STEPS_IN_NAME = re.compile(r"(?<![0-9])(\d+)[-_]?steps?(?![a-z])", re.IGNORECASE)
_SIZE = re.compile(r"(\d+)x(\d+)")


@dataclass(frozen=True)
class FastPreset:
    """A step-reduction LoRA and the sampling it was distilled for."""

    name: str
    lora: str  # a .safetensors file, a folder, or a hub id
    weight_name: str | None  # the file in a hub repo or folder (None: diffusers' default name)
    scheduler_class: str
    scheduler_overrides: dict[str, object]
    sampler: str  # the A1111 sampler name, for the PNG metadata
    steps: int
    guidance: float  # <= 1: no classifier-free guidance (one UNet pass per step instead of two)

    @property
    def scheduler(self) -> tuple[str, dict[str, object], str]:
        """In the shape of options.SCHEDULERS' values."""
        return self.scheduler_class, self.scheduler_overrides, self.sampler


# The published recipes (model cards of latent-consistency/lcm-lora-sdxl, ByteDance/SDXL-Lightning,
# ByteDance/Hyper-SD): LoRA, scheduler, steps, guidance.
PRESETS: dict[str, FastPreset] = {
    "lcm": FastPreset("lcm", "latent-consistency/lcm-lora-sdxl", None, "LCMScheduler", {}, "LCM", 4, 1.0),
    "lightning": FastPreset(
        "lightning", "ByteDance/SDXL-Lightning", "sdxl_lightning_4step_lora.safetensors",
        "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}, "Euler", 4, 0.0,
    ),
    "hyper": FastPreset(
        "hyper", "ByteDance/Hyper-SD", "Hyper-SDXL-8steps-lora.safetensors",
        "DDIMScheduler", {"timestep_spacing": "trailing"}, "DDIM", 8, 0.0,
    ),
}


@dataclass(frozen=True)
class SpeedSettings:
    fuse_qkv: bool = False
    channels_last: bool = False
    compile_unet: bool = False
    compile_mode: str = "default"
    compile_regional: bool = False
    compile_vae: bool = False
    compile_cache_dir: Path | None = None
    compile_sizes: tuple[tuple[int, int], ...] = ()  # (width, height) compiled at start besides the default size
    step_cache: str = "none"
    step_cache_interval: int = DEFAULT_STEP_CACHE_INTERVAL
    fast_preset: str = "none"
    fast_lora: str | None = None  # IMAGEND_FAST_LORA as written (None: the preset's own)
    fast_steps: int | None = None
    fast_guidance: float | None = None
    # Not a setting: the torch.compile backend. The dry run and the tests use "eager" (dynamo traces,
    # no code generation) to run the compile code path on a CPU in seconds.
    compile_backend: str = "inductor"

    @classmethod
    def from_env(cls, env: Env, data_dir: Path | None = None) -> SpeedSettings:
        """Read the IMAGEND_* speed settings; a bad value raises ConfigError naming its variable.
        `data_dir` (IMAGEND_DATA_DIR) holds the compile cache unless IMAGEND_COMPILE_CACHE_DIR says."""
        compile_unet = env.bool("IMAGEND_COMPILE", False)
        compile_vae = env.bool("IMAGEND_COMPILE_VAE", False)
        compile_regional = env.bool("IMAGEND_COMPILE_REGIONAL", False)
        if compile_regional and not compile_unet:
            raise ConfigError(
                "IMAGEND_COMPILE_REGIONAL=true compiles the UNet's blocks, which needs IMAGEND_COMPILE=true"
            )
        fuse_qkv = env.bool("IMAGEND_FUSE_QKV", False)
        if fuse_qkv and env.str("IMAGEND_LORA_DIR"):
            raise ConfigError(
                "IMAGEND_FUSE_QKV=true cannot be combined with IMAGEND_LORA_DIR: a row's LoRA loads into the "
                "separate to_q/to_k/to_v projections, which fused attention no longer reads, so it would be "
                "silently half applied. Unset IMAGEND_FUSE_QKV (it gains about 1%) or IMAGEND_LORA_DIR"
            )
        preset = env.choice("IMAGEND_FAST_PRESET", "none", FAST_PRESETS)
        fast_lora = env.str("IMAGEND_FAST_LORA")
        fast_steps_set, fast_guidance_set = env.str("IMAGEND_FAST_STEPS"), env.str("IMAGEND_FAST_GUIDANCE")
        if preset == "none":
            for name, value in (
                ("IMAGEND_FAST_LORA", fast_lora),
                ("IMAGEND_FAST_STEPS", fast_steps_set),
                ("IMAGEND_FAST_GUIDANCE", fast_guidance_set),
            ):
                if value:
                    raise ConfigError(f"{name}={value} needs IMAGEND_FAST_PRESET (lcm, lightning or hyper)")
        if fast_lora and _looks_like_path(fast_lora) and not Path(fast_lora).expanduser().exists():
            raise ConfigError(f"IMAGEND_FAST_LORA={fast_lora}: no such file or folder")
        cache_dir_text = env.str("IMAGEND_COMPILE_CACHE_DIR")
        cache_dir = Path(cache_dir_text).expanduser() if cache_dir_text else None
        if cache_dir is not None and cache_dir.exists() and not cache_dir.is_dir():
            raise ConfigError(f"IMAGEND_COMPILE_CACHE_DIR={cache_dir_text}: not a folder")
        if cache_dir is None and data_dir is not None and (compile_unet or compile_vae):
            cache_dir = Path(data_dir).expanduser() / COMPILE_CACHE_FOLDER
        return cls(
            fuse_qkv=fuse_qkv,
            channels_last=env.bool("IMAGEND_CHANNELS_LAST", False),
            compile_unet=compile_unet,
            compile_mode=env.choice("IMAGEND_COMPILE_MODE", "default", COMPILE_MODES),
            compile_regional=compile_regional,
            compile_vae=compile_vae,
            compile_cache_dir=cache_dir,
            compile_sizes=parse_sizes(env.str("IMAGEND_COMPILE_SIZES"), "IMAGEND_COMPILE_SIZES"),
            step_cache=env.choice("IMAGEND_STEP_CACHE", "none", STEP_CACHES),
            step_cache_interval=env.int(
                "IMAGEND_STEP_CACHE_INTERVAL", DEFAULT_STEP_CACHE_INTERVAL, minimum=2, maximum=10
            ),
            fast_preset=preset,
            fast_lora=fast_lora,
            fast_steps=env.int("IMAGEND_FAST_STEPS", 0, minimum=1, maximum=50) if fast_steps_set else None,
            fast_guidance=env.float("IMAGEND_FAST_GUIDANCE", 0.0, minimum=0.0) if fast_guidance_set else None,
        )

    @property
    def preset(self) -> FastPreset | None:
        """The fast preset with IMAGEND_FAST_LORA/STEPS/GUIDANCE applied (None: no preset). Without
        IMAGEND_FAST_STEPS, a LoRA named `…_2step_…` or `…-8steps-…` gets that many steps."""
        if self.fast_preset == "none":
            return None
        base = PRESETS[self.fast_preset]
        lora, weight_name = base.lora, base.weight_name
        if self.fast_lora:
            lora, weight_name = _split_lora(self.fast_lora)
        steps = self.fast_steps
        if steps is None:
            named = _STEPS_IN_NAME.search(Path(weight_name or lora).name)
            steps = int(named.group(1)) if named and 0 < int(named.group(1)) <= 50 else base.steps
        guidance = base.guidance if self.fast_guidance is None else self.fast_guidance
        return FastPreset(base.name, lora, weight_name, base.scheduler_class, dict(base.scheduler_overrides),
                          base.sampler, steps, guidance)

    @property
    def compiles(self) -> bool:
        return self.compile_unet or self.compile_vae

    @property
    def exact(self) -> bool:
        """True when every option chosen gives the same image (up to float rounding) as none."""
        return self.step_cache == "none" and self.fast_preset == "none"

    def warmup_shapes(self, max_batch: int, default_size: tuple[int, int]) -> list[tuple[int, int, int]]:
        """(batch, width, height) to generate once at start when something is compiled, so that serving
        never compiles: every batch size up to max_batch (a partial batch is a new shape too) at the
        default size and each of IMAGEND_COMPILE_SIZES. Empty when nothing is compiled."""
        if not self.compiles:
            return []
        sizes = list(dict.fromkeys([default_size, *self.compile_sizes]))
        return [(batch, width, height) for width, height in sizes for batch in range(1, max_batch + 1)]


def parse_sizes(text: str | None, setting: str) -> tuple[tuple[int, int], ...]:
    """`1024x1024,832x1216`: (width, height) pairs, each side a multiple of 8."""
    sizes: list[tuple[int, int]] = []
    for item in (text or "").replace(" ", "").split(","):
        if not item:
            continue
        match = _SIZE.fullmatch(item.lower())
        if not match:
            raise ConfigError(f"{setting}: {item!r} is not WIDTHxHEIGHT, e.g. {setting}=1024x1024,832x1216")
        width, height = int(match.group(1)), int(match.group(2))
        if not (SIDE_MULTIPLE_PX <= width <= 8192 and SIDE_MULTIPLE_PX <= height <= 8192) or (
            width % SIDE_MULTIPLE_PX or height % SIDE_MULTIPLE_PX
        ):
            raise ConfigError(f"{setting}: {item} needs sides that are multiples of {SIDE_MULTIPLE_PX}, 8 to 8192")
        sizes.append((width, height))
    return tuple(dict.fromkeys(sizes))


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or (text.endswith(".safetensors") and ":" not in text)


def _split_lora(text: str) -> tuple[str, str | None]:
    """IMAGEND_FAST_LORA: a file or folder, or `hub/id` or `hub/id:weight-file.safetensors`."""
    if Path(text).expanduser().exists():
        return str(Path(text).expanduser()), None
    repo, sep, weight_name = text.partition(":")
    return repo, (weight_name or None) if sep else None
