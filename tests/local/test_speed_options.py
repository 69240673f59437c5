"""The GPU speed options (imagend.backends.local.speed) on the CPU, on the miniature SDXL model: the
settings and their errors, the exact options giving the same image, the CUDA-only parts reported
skipped, the fast presets' LoRA, scheduler and defaults, and the step cache's UNet calls.

Random weights: every image is noise, only the pixels' equality (or not) counts. Images are compared
as diffusers' float output in [0, 1]."""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from imagend.backends.local.speed import apply as speed_module
from imagend.backends.local.speed.apply import SKIPPED, apply_speed
from imagend.backends.local.speed.settings import PRESETS, SpeedSettings
from imagend.backends.local.speed.step_cache import StepCache, step_cache_of
from imagend.config.env import Env
from imagend.errors import ConfigError

from support.local import SIDE_PX, TORCH_NUMPY_COPY_WARNING

pytestmark = TORCH_NUMPY_COPY_WARNING

diffusers: Any = importlib.import_module("diffusers")
PROMPT = "a lighthouse at dusk"
STEPS = 6
# Exact options: the same image up to float rounding. Fused QKV and channels-last give other
# kernels the same math; on this CPU the largest difference seen is 2e-6 of the [0, 1] range.
EXACT_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagend.backends.local.miniature.sdxl import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-sdxl-speed"))


@pytest.fixture(scope="module")
def tiny_lora(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagend.backends.local.miniature.extras import write_tiny_lora

    return write_tiny_lora(
        tmp_path_factory.mktemp("fast-lora") / "tiny_4step_lora.safetensors", tiny, format="diffusers", seed=7
    )


@pytest.fixture
def compile_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What apply_speed's compile step changes for the whole process, put back after the test."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    dynamo_limit = torch._dynamo.config.recompile_limit
    flags = {flag: getattr(inductor_config, flag) for flag in ("fx_graph_cache", "autotune_local_cache",
                                                               *speed_module.INDUCTOR_GPU_FLAGS)}
    yield
    torch._dynamo.config.recompile_limit = dynamo_limit
    for flag, value in flags.items():
        setattr(inductor_config, flag, value)


def load(path: Path) -> Any:
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(path, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image(pipe: Any, seed: int = 0, steps: int = STEPS, side: int = SIDE_PX, **kwargs: Any) -> np.ndarray:
    out = pipe(
        prompt=PROMPT,
        width=side,
        height=side,
        num_inference_steps=steps,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
        **kwargs,
    )
    return np.asarray(out.images)


def settings(**env: str) -> SpeedSettings:
    return SpeedSettings.from_env(Env(env))


@pytest.fixture(scope="module")
def plain_image(tiny: Path) -> np.ndarray:
    return image(load(tiny))


# -- settings ---------------------------------------------------------------------------------------


def test_every_option_is_off_by_default() -> None:
    speed = settings()
    assert speed == SpeedSettings()
    assert speed.exact and not speed.compiles and speed.preset is None
    assert speed.warmup_shapes(4, (1024, 1024)) == []


def test_settings_are_read(tmp_path: Path, tiny_lora: Path) -> None:
    speed = SpeedSettings.from_env(
        Env(
            {
                "IMAGEND_FUSE_QKV": "true",
                "IMAGEND_CHANNELS_LAST": "yes",
                "IMAGEND_COMPILE": "1",
                "IMAGEND_COMPILE_MODE": "max-autotune",
                "IMAGEND_COMPILE_REGIONAL": "on",
                "IMAGEND_COMPILE_VAE": "true",
                "IMAGEND_COMPILE_SIZES": "832x1216, 1216x832",
                "IMAGEND_STEP_CACHE": "DeepCache",
                "IMAGEND_STEP_CACHE_INTERVAL": "4",
                "IMAGEND_FAST_PRESET": "lightning",
                "IMAGEND_FAST_LORA": str(tiny_lora),
                "IMAGEND_FAST_GUIDANCE": "1.5",
            }
        ),
        data_dir=tmp_path,
    )
    assert (speed.fuse_qkv, speed.channels_last, speed.compile_unet, speed.compile_regional, speed.compile_vae) == (
        True, True, True, True, True,
    )
    assert speed.compile_mode == "max-autotune"
    assert speed.compile_cache_dir == tmp_path / "compile-cache"  # under IMAGEND_DATA_DIR when compiling
    assert speed.compile_sizes == ((832, 1216), (1216, 832))
    assert (speed.step_cache, speed.step_cache_interval) == ("deepcache", 4)
    assert not speed.exact and speed.compiles
    preset = speed.preset
    assert preset is not None
    assert (preset.lora, preset.weight_name) == (str(tiny_lora), None)
    assert preset.steps == 4  # from the file's name: tiny_4step_lora
    assert preset.guidance == 1.5  # IMAGEND_FAST_GUIDANCE over the preset's 0
    assert preset.scheduler == ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}, "Euler")
    # Every batch size up to the largest (a partial batch is a shape too), at each size.
    assert speed.warmup_shapes(2, (1024, 1024)) == [
        (1, 1024, 1024), (2, 1024, 1024), (1, 832, 1216), (2, 832, 1216), (1, 1216, 832), (2, 1216, 832),
    ]


def test_a_hub_lora_and_its_file_name_give_the_steps() -> None:
    lora = "ByteDance/SDXL-Lightning:sdxl_lightning_8step_lora.safetensors"
    preset = settings(IMAGEND_FAST_PRESET="lightning", IMAGEND_FAST_LORA=lora).preset
    assert preset is not None
    assert (preset.lora, preset.weight_name, preset.steps) == (
        "ByteDance/SDXL-Lightning", "sdxl_lightning_8step_lora.safetensors", 8,
    )
    hyper = settings(IMAGEND_FAST_PRESET="hyper", IMAGEND_FAST_STEPS="6").preset
    assert hyper is not None
    assert (hyper.lora, hyper.weight_name, hyper.steps, hyper.guidance) == (
        "ByteDance/Hyper-SD", "Hyper-SDXL-8steps-lora.safetensors", 6, 0.0,
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"IMAGEND_FUSE_QKV": "maybe"}, "IMAGEND_FUSE_QKV"),
        ({"IMAGEND_CHANNELS_LAST": "2"}, "IMAGEND_CHANNELS_LAST"),
        ({"IMAGEND_COMPILE_VAE": "sometimes"}, "IMAGEND_COMPILE_VAE"),
        ({"IMAGEND_COMPILE_MODE": "fastest"}, "IMAGEND_COMPILE_MODE"),
        ({"IMAGEND_COMPILE_REGIONAL": "true"}, "IMAGEND_COMPILE_REGIONAL"),  # without IMAGEND_COMPILE
        ({"IMAGEND_COMPILE_SIZES": "1024"}, "IMAGEND_COMPILE_SIZES"),
        ({"IMAGEND_COMPILE_SIZES": "1024x1020"}, "IMAGEND_COMPILE_SIZES"),
        ({"IMAGEND_STEP_CACHE": "teacache"}, "IMAGEND_STEP_CACHE"),
        ({"IMAGEND_STEP_CACHE_INTERVAL": "1"}, "IMAGEND_STEP_CACHE_INTERVAL"),
        ({"IMAGEND_FAST_PRESET": "turbo"}, "IMAGEND_FAST_PRESET"),
        ({"IMAGEND_FAST_PRESET": "lcm", "IMAGEND_FAST_STEPS": "0"}, "IMAGEND_FAST_STEPS"),
        ({"IMAGEND_FAST_PRESET": "lcm", "IMAGEND_FAST_GUIDANCE": "-1"}, "IMAGEND_FAST_GUIDANCE"),
        ({"IMAGEND_FAST_PRESET": "lcm", "IMAGEND_FAST_LORA": "/no/such/lcm.safetensors"}, "IMAGEND_FAST_LORA"),
        ({"IMAGEND_FAST_LORA": "latent-consistency/lcm-lora-sdxl"}, "IMAGEND_FAST_LORA"),  # no preset
        ({"IMAGEND_FAST_STEPS": "4"}, "IMAGEND_FAST_STEPS"),  # no preset
        ({"IMAGEND_FUSE_QKV": "1", "IMAGEND_LORA_DIR": "/srv/loras"}, "IMAGEND_FUSE_QKV"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        settings(**env)


def test_a_compile_cache_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="IMAGEND_COMPILE_CACHE_DIR"):
        settings(IMAGEND_COMPILE="1", IMAGEND_COMPILE_CACHE_DIR=str(tmp_path / "file"))


# -- exact options: the same image -------------------------------------------------------------------


def test_fused_qkv_gives_the_same_image(tiny: Path, plain_image: np.ndarray) -> None:
    pipe = load(tiny)
    applied = apply_speed(pipe, settings(IMAGEND_FUSE_QKV="1"), "cpu")
    assert applied == ["fuse_qkv (unet, vae)"]
    processors = {type(p).__name__ for p in [*pipe.unet.attn_processors.values(), *pipe.vae.attn_processors.values()]}
    assert processors == {"FusedAttnProcessor2_0"}  # the fused path really runs
    np.testing.assert_allclose(image(pipe), plain_image, atol=EXACT_TOLERANCE, rtol=0)


def test_channels_last_gives_the_same_image(tiny: Path, plain_image: np.ndarray) -> None:
    pipe = load(tiny)
    assert apply_speed(pipe, settings(IMAGEND_CHANNELS_LAST="1"), "cpu") == ["channels_last (unet, vae)"]
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(image(pipe), plain_image, atol=EXACT_TOLERANCE, rtol=0)


def test_compiled_unet_and_decoder_give_the_same_image(
    tiny: Path, plain_image: np.ndarray, compile_state: None
) -> None:
    """The compile code path, traced by dynamo with the eager backend (inductor's code generation takes
    minutes on this CPU; bench/gpu_sdxl.py measures it on a GPU)."""
    pipe = load(tiny)
    speed = dataclasses.replace(settings(IMAGEND_COMPILE="1", IMAGEND_COMPILE_VAE="1"), compile_backend="eager")
    applied = apply_speed(pipe, speed, "cpu")
    assert "compile_unet (mode=none, backend=eager, dynamic=False)" in applied
    assert "compile_vae_decode (mode=none, backend=eager, dynamic=False)" in applied
    assert type(pipe.unet).__name__ == "OptimizedModule"
    np.testing.assert_allclose(image(pipe, steps=2), image(load(tiny), steps=2), atol=EXACT_TOLERANCE, rtol=0)


def test_on_the_cpu_the_cuda_only_parts_are_reported_skipped(
    tiny: Path, tmp_path: Path, compile_state: None
) -> None:
    import torch._dynamo
    import torch._inductor.config as inductor_config

    pipe = load(tiny)
    speed = SpeedSettings.from_env(
        Env({"IMAGEND_COMPILE": "1", "IMAGEND_COMPILE_VAE": "1", "IMAGEND_COMPILE_MODE": "max-autotune"}),
        data_dir=tmp_path,
    )
    applied = apply_speed(pipe, speed, "cpu")  # torch.compile compiles at the first call: none here
    skipped = [entry for entry in applied if entry.startswith(SKIPPED)]
    assert [entry.split(":")[0] for entry in skipped] == ["skipped inductor_tuning", "skipped cuda_graphs"]
    assert "compile_unet (mode=max-autotune-no-cudagraphs, dynamic=False)" in applied
    assert "compile_vae_decode (mode=max-autotune-no-cudagraphs, dynamic=False)" in applied
    assert inductor_config.coordinate_descent_tuning is False  # the GPU flags left alone
    # What a restart needs to find the compiled code again, and room for a graph per shape.
    cache = tmp_path / "compile-cache"
    assert f"compile_cache_dir={cache}" in applied and cache.is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache)
    assert torch._dynamo.config.recompile_limit >= speed_module.RECOMPILE_LIMIT


def test_a_half_precision_vae_that_upcasts_is_noted(tiny: Path) -> None:
    pipe = load(tiny)
    pipe.vae.to(torch.float16)  # the miniature VAE's config says force_upcast, as SDXL's own VAE
    assert apply_speed(pipe, SpeedSettings(), "cpu") == [
        "note vae_upcast: this VAE decodes in float32 (force_upcast); IMAGEND_VAE's fp16-fix VAE does not"
    ]


# -- fast presets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "scheduler", "spacing", "steps", "guidance"),
    [
        ("lcm", "LCMScheduler", None, 4, 1.0),
        ("lightning", "EulerDiscreteScheduler", "trailing", 4, 0.0),
        ("hyper", "DDIMScheduler", "trailing", 4, 0.0),  # 4: the miniature LoRA's name says 4step
    ],
)
def test_a_fast_preset_fuses_its_lora_and_sets_its_scheduler(
    tiny: Path, tiny_lora: Path, preset: str, scheduler: str, spacing: str | None, steps: int, guidance: float
) -> None:
    speed = settings(IMAGEND_FAST_PRESET=preset, IMAGEND_FAST_LORA=str(tiny_lora))
    resolved = speed.preset
    assert resolved is not None
    assert (resolved.scheduler_class, resolved.steps, resolved.guidance) == (scheduler, steps, guidance)
    pipe = load(tiny)
    applied = apply_speed(pipe, speed, "cpu")
    assert len(applied) == 1 and applied[0].startswith(f"fast_preset={preset} ")
    assert type(pipe.scheduler).__name__ == scheduler
    if spacing:
        assert pipe.scheduler.config.timestep_spacing == spacing
    assert not speed.exact
    # The LoRA is in the weights, and no adapter is left: rows' own LoRAs load as on a plain model.
    assert not any("lora" in name for name, _ in pipe.unet.named_modules())
    with_adapter = load(tiny)
    with_adapter.load_lora_weights(str(tiny_lora), adapter_name="fast")
    with_adapter.scheduler = speed_module.preset_scheduler(with_adapter.scheduler.config, resolved)
    call = {"steps": resolved.steps, "guidance_scale": resolved.guidance}
    fused = image(pipe, **call)
    np.testing.assert_allclose(fused, image(with_adapter, **call), atol=1e-4, rtol=0)
    assert np.abs(fused - image(load(tiny), **call)).max() > 0.05  # and it changes the picture
    pipe.load_lora_weights(str(tiny_lora), adapter_name="a-row-lora")


def test_the_published_presets_name_their_hub_lora() -> None:
    assert {name: (p.lora, p.weight_name, p.steps, p.guidance) for name, p in PRESETS.items()} == {
        "lcm": ("latent-consistency/lcm-lora-sdxl", None, 4, 1.0),
        "lightning": ("ByteDance/SDXL-Lightning", "sdxl_lightning_4step_lora.safetensors", 4, 0.0),
        "hyper": ("ByteDance/Hyper-SD", "Hyper-SDXL-8steps-lora.safetensors", 8, 0.0),
    }


def test_a_fast_lora_that_does_not_load_names_the_variable(tiny: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="IMAGEND_FAST_LORA"):
        apply_speed(load(tiny), settings(IMAGEND_FAST_PRESET="lcm", IMAGEND_FAST_LORA=str(bad)), "cpu")


# -- the step cache -----------------------------------------------------------------------------------


def count_deep_passes(pipe: Any) -> list[int]:
    """A counter of the UNet calls that really computed the mid block (a cached call skips it)."""
    calls = [0]
    pipe.unet.mid_block.resnets[0].register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_the_step_cache_runs_the_deep_unet_once_per_interval(tiny: Path, plain_image: np.ndarray) -> None:
    pipe = load(tiny)
    deep = count_deep_passes(pipe)
    image(pipe)
    assert deep[0] == STEPS  # one UNet call per step (guidance's two halves are one batch)

    applied = apply_speed(pipe, settings(IMAGEND_STEP_CACHE="deepcache", IMAGEND_STEP_CACHE_INTERVAL="3"), "cpu")
    assert applied == ["step_cache=deepcache (interval 3)"]
    cache = step_cache_of(pipe)
    assert isinstance(cache, StepCache)
    deep[0] = 0
    cached = image(pipe)
    assert deep[0] == 2  # steps 0 and 3 of 6
    assert (cache.full_calls, cache.cached_calls) == (2, 4)
    assert np.isfinite(cached).all() and cached.shape == plain_image.shape
    assert np.abs(cached - plain_image).max() > 0  # not exact, by design

    # Each pipeline call starts with a full pass: nothing leaks from the call before.
    deep[0] = 0
    np.testing.assert_array_equal(image(pipe), cached)
    assert deep[0] == 2
    deep[0] = 0
    image(pipe, side=2 * SIDE_PX)  # another size, another call
    assert deep[0] == 2

    # The image-to-image pipeline shares the UNet, so its hooks.
    img2img = diffusers.StableDiffusionXLImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    deep[0] = 0
    init = (plain_image[0] * 255).astype(np.uint8)
    from PIL import Image as PILImage

    image(img2img, image=PILImage.fromarray(init), strength=1.0)
    assert deep[0] == 2

    cache.detach()
    assert step_cache_of(pipe) is None
    np.testing.assert_array_equal(image(pipe), plain_image)  # exact again
