"""GPU speed options for the local backend's pipelines: their settings and `apply_speed`.

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

`apply_speed(pipe, speed, device)` applies them to a loaded pipeline in this order, and returns
what it did (and what it skipped, and why) for the start log:

1. the fast preset: the LoRA is loaded, fused into the weights and its adapter dropped (so rows'
   own LoRAs load on top as usual, and nothing is left to compute per layer), then its scheduler;
2. fused QKV: after the preset's LoRA (which targets to_q/to_k/to_v), before compile traces;
3. channels-last: before compile, which specialises its kernels on the memory format;
4. the step cache: its hooks wrap the UNet's blocks, so the UNet is then compiled by region (its
   transformer blocks, inside the hooks) and never whole;
5. torch.compile, with static shapes (`dynamic=False`): max-autotune and CUDA graphs specialise
   on each (batch, size), and a symbolic shape would cost speed at every step. A new shape
   compiles once; the backend compiles every batch size and IMAGEND_COMPILE_SIZES at start
   (`SpeedSettings.warmup_shapes`), the recompile limit is raised so that no shape falls back to
   eager, and inductor's caches live in IMAGEND_COMPILE_CACHE_DIR (by default under
   IMAGEND_DATA_DIR, not /tmp: the systemd units have PrivateTmp), so a restart reads the
   compiled code instead of compiling again.

CUDA-only parts (CUDA graphs, inductor's GPU kernel tuning) are skipped on other devices, with
the reason in the returned list, never an error.
"""

from __future__ import annotations

import importlib
import os
import re
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imagend.backends.local.options import COMPILE_MODES, SIDE_MULTIPLE_PX
from imagend.config.settings import Env
from imagend.errors import ConfigError

STEP_CACHES = ("none", "deepcache")
DEFAULT_STEP_CACHE_INTERVAL = 3  # DeepCache's own SDXL example: one full UNet pass in three
FAST_PRESETS = ("none", "lcm", "lightning", "hyper")
FAST_ADAPTER = "imagend-fast-preset"
COMPILE_CACHE_FOLDER = "compile-cache"  # under IMAGEND_DATA_DIR unless IMAGEND_COMPILE_CACHE_DIR says
RECOMPILE_LIMIT = 64  # graphs per compiled function: batch sizes x sizes, with room (torch's default: 8)
CUDA_GRAPH_MODES = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}
# diffusers' SDXL recipe (docs: "Accelerate inference of text-to-image diffusion models"), GPU kernels only.
INDUCTOR_GPU_FLAGS: dict[str, bool] = {
    "conv_1x1_as_mm": True,
    "coordinate_descent_tuning": True,
    "coordinate_descent_check_all_directions": True,
    "epilogue_fusion": False,
}
SKIPPED = "skipped "  # the prefix of a returned entry that names an option not applied, and why
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


# -- applying them ----------------------------------------------------------------------------------


def apply_speed(pipe: Any, speed: SpeedSettings, device: str) -> list[str]:
    """Apply `speed` to a loaded pipeline already on `device` (see the module's docstring for the
    order); return what was applied, and each option skipped with `skipped <what>: <why>`."""
    applied: list[str] = []
    on_cuda = device.startswith("cuda")
    unet = getattr(pipe, "unet", None)
    preset = speed.preset
    if preset is not None:
        applied.append(apply_fast_preset(pipe, preset))
    if speed.fuse_qkv:
        applied.append(_fuse_qkv(pipe))
    compiled_vae = speed.compile_vae and getattr(pipe, "vae", None) is not None
    layouts = [name for name in ("unet", "vae") if getattr(pipe, name, None) is not None and (
        speed.channels_last or (name == "unet" and speed.compile_unet) or (name == "vae" and compiled_vae))]
    for name in layouts:
        getattr(pipe, name).to(memory_format=torch.channels_last)
    if layouts:
        applied.append(f"channels_last ({', '.join(layouts)})")
    regional = speed.compile_regional
    if speed.step_cache == "deepcache":
        if not _is_sdxl_unet(unet):
            applied.append(f"{SKIPPED}step_cache: DeepCache needs SDXL's UNet, {type(pipe).__name__} has none")
        else:
            StepCache(unet, speed.step_cache_interval).attach()
            applied.append(f"step_cache=deepcache (interval {speed.step_cache_interval})")
            if speed.compile_unet and not regional:
                regional = True
                applied.append("compile_unet by region: the step cache wraps the UNet's blocks")
    if speed.compiles:
        applied += _compile(pipe, speed, on_cuda, regional)
    vae = getattr(pipe, "vae", None)
    upcasts = hasattr(pipe, "upcast_vae") and getattr(getattr(vae, "config", None), "force_upcast", False)
    if upcasts and vae is not None and vae.dtype == torch.float16:  # SDXL then decodes in float32, every image
        applied.append(
            "note vae_upcast: this VAE decodes in float32 (force_upcast); IMAGEND_VAE's fp16-fix VAE does not"
        )
    return applied


def apply_fast_preset(pipe: Any, preset: FastPreset) -> str:
    """Load the preset's LoRA, fuse it into the weights, drop its adapter, and set its scheduler."""
    if not _is_sdxl_unet(getattr(pipe, "unet", None)) or not hasattr(pipe, "load_lora_weights"):
        raise ConfigError(f"IMAGEND_FAST_PRESET={preset.name}: its LoRAs are for SDXL, not {type(pipe).__name__}")
    try:
        if preset.weight_name is None:
            pipe.load_lora_weights(preset.lora, adapter_name=FAST_ADAPTER)
        else:
            pipe.load_lora_weights(preset.lora, weight_name=preset.weight_name, adapter_name=FAST_ADAPTER)
        pipe.fuse_lora(adapter_names=[FAST_ADAPTER], lora_scale=1.0)
        pipe.unload_lora_weights()  # the fused weights stay; no adapter left for rows' LoRAs to meet
    except Exception as exc:
        where = f"{preset.lora}:{preset.weight_name}" if preset.weight_name else preset.lora
        raise ConfigError(
            f"IMAGEND_FAST_LORA={where}: cannot load the {preset.name} LoRA ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}). Set IMAGEND_FAST_LORA to "
            f"the .safetensors file, or a hub id already in the Hugging Face cache"
        ) from exc
    pipe.scheduler = preset_scheduler(pipe.scheduler.config, preset)
    spacing = preset.scheduler_overrides.get("timestep_spacing")
    return (
        f"fast_preset={preset.name} ({preset.lora}{':' + preset.weight_name if preset.weight_name else ''} fused; "
        f"{preset.scheduler_class}{' ' + str(spacing) if spacing else ''}; {preset.steps} steps, "
        f"guidance {preset.guidance:g})"
    )


def _is_sdxl_unet(unet: Any) -> bool:
    return type(getattr(unet, "_orig_mod", unet)).__name__ == "UNet2DConditionModel"


def preset_scheduler(config: Any, preset: FastPreset) -> Any:
    """A fresh scheduler of the preset's kind from a checkpoint's scheduler config."""
    diffusers: Any = importlib.import_module("diffusers")
    return getattr(diffusers, preset.scheduler_class).from_config(config, **preset.scheduler_overrides)


def _fuse_qkv(pipe: Any) -> str:
    fused = []
    for name in ("unet", "transformer", "vae"):
        module = getattr(pipe, name, None)
        if module is not None and hasattr(module, "fuse_qkv_projections"):
            module.fuse_qkv_projections()
            fused.append(name)
    return f"fuse_qkv ({', '.join(fused)})" if fused else f"{SKIPPED}fuse_qkv: nothing to fuse in {type(pipe).__name__}"


def _compile(pipe: Any, speed: SpeedSettings, on_cuda: bool, regional: bool) -> list[str]:
    import torch._dynamo
    import torch._inductor.config as inductor_config

    done: list[str] = []
    inductor = speed.compile_backend == "inductor"
    if speed.compile_cache_dir is not None and inductor:
        done.append(_use_compile_cache(speed.compile_cache_dir))
    dynamo_config: Any = torch._dynamo.config
    dynamo_config.recompile_limit = max(int(dynamo_config.recompile_limit), RECOMPILE_LIMIT)
    mode: str | None = speed.compile_mode
    if inductor and on_cuda:
        for flag, value in INDUCTOR_GPU_FLAGS.items():
            setattr(inductor_config, flag, value)
        done.append("inductor_tuning (" + ", ".join(f"{k}={v}" for k, v in INDUCTOR_GPU_FLAGS.items()) + ")")
    elif inductor:
        done.append(f"{SKIPPED}inductor_tuning: GPU kernel tuning, not on this device")
    if not on_cuda and mode in CUDA_GRAPH_MODES:
        done.append(f"{SKIPPED}cuda_graphs: IMAGEND_COMPILE_MODE={mode} records CUDA graphs, which need CUDA; "
                    f"{CUDA_GRAPH_MODES[mode]} instead")
        mode = CUDA_GRAPH_MODES[mode]
    options: dict[str, Any] = {"dynamic": False, "backend": speed.compile_backend}
    if inductor:
        options["mode"] = mode
    label = f"mode={mode if inductor else 'none, backend=' + speed.compile_backend}, dynamic=False"
    with warnings.catch_warnings():
        # torch's own modules, imported by the first torch.compile, deprecate torch.jit.script_method.
        warnings.filterwarnings(
            "ignore", message=".*torch.jit.script_method. is deprecated", category=DeprecationWarning
        )
        done += _compile_modules(pipe, speed, options, label, regional)
    return done


def _compile_modules(pipe: Any, speed: SpeedSettings, options: dict[str, Any], label: str, regional: bool) -> list[str]:
    done: list[str] = []
    denoiser_name = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    denoiser = getattr(pipe, denoiser_name, None)
    if speed.compile_unet and denoiser is not None:
        if regional and getattr(denoiser, "_repeated_blocks", None):
            denoiser.compile_repeated_blocks(**options)
            blocks = ", ".join(denoiser._repeated_blocks)
            done.append(f"compile_{denoiser_name} by region ({blocks}; {label})")
        else:
            setattr(pipe, denoiser_name, torch.compile(denoiser, **options))
            done.append(f"compile_{denoiser_name} ({label})")
    vae = getattr(pipe, "vae", None)
    if speed.compile_vae and vae is not None:
        vae.decode = torch.compile(vae.decode, **options)
        done.append(f"compile_vae_decode ({label})")
    return done


def _use_compile_cache(folder: Path) -> str:
    """Inductor's FX graph, autotuning and Triton caches in `folder`, kept across restarts. Set once
    per process, before the first compile; a TORCHINDUCTOR_CACHE_DIR set by hand wins."""
    import torch._inductor.config as inductor_config

    folder = folder.expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"IMAGEND_COMPILE_CACHE_DIR={folder}: cannot create it ({exc.strerror})") from exc
    chosen = os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    os.environ.setdefault("TRITON_CACHE_DIR", str(Path(chosen) / "triton"))
    inductor_config.fx_graph_cache = True
    inductor_config.autotune_local_cache = True
    return f"compile_cache_dir={chosen}"


# -- the step cache ---------------------------------------------------------------------------------


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
