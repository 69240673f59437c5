"""The miniature add-ons (imagend.backends.local.miniature.extras) through diffusers' own loaders: a second
checkpoint, LoRAs in kohya and diffusers format, an IP-Adapter, the x4 upscaler, and
`imagend -make-tiny-models`. Random weights: every image is noise, only the pixels' equality counts."""

from __future__ import annotations

import base64
import importlib
import io
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from safetensors.torch import load_file

from imagend.backends.local.miniature import extras as tiny_extras
from imagend.backends.local.miniature.extras import IP_ADAPTER_SUBFOLDER, IP_ADAPTER_WEIGHT_NAME
from imagend.backends.local.options import is_tiny_model

from support.daemons import run_imagend
from support.db import fetch_image, insert_image
from support.local import SIDE_PX, STEPS, TORCH_NUMPY_COPY_WARNING

pytestmark = TORCH_NUMPY_COPY_WARNING

diffusers: Any = importlib.import_module("diffusers")
PROMPT = "a red fox in the snow"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_extras.write_tiny_models(tmp_path_factory.mktemp("tiny-models"))


def sdxl(path: Path) -> Any:
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pipe(models: dict[str, Path]) -> Any:
    return sdxl(models["sdxl"])


def image(pipe: Any, **kwargs: Any) -> np.ndarray[Any, Any]:
    generator = torch.Generator("cpu").manual_seed(7)
    result = pipe(PROMPT, width=SIDE_PX, height=SIDE_PX, num_inference_steps=STEPS, generator=generator, **kwargs)
    return np.asarray(result.images[0], dtype=np.int16)


def test_the_two_checkpoints_give_different_pixels_for_the_same_seed(models: dict[str, Path], pipe: Any) -> None:
    other = sdxl(models["sdxl-b"])

    def architecture(config: Any) -> dict[str, Any]:
        return {key: value for key, value in config.items() if not key.startswith("_")}  # not _name_or_path

    assert architecture(other.unet.config) == architecture(pipe.unet.config)  # the same shape, other weights
    assert architecture(other.vae.config) == architecture(pipe.vae.config)
    assert np.abs(image(pipe) - image(other)).mean() > 10


def test_the_lora_files_are_in_their_formats(models: dict[str, Path]) -> None:
    kohya = load_file(models["lora-kohya"])
    unet_modules = {key.split(".")[0] for key in kohya if key.startswith("lora_unet_")}
    # SGM block names, as kohya's SDXL LoRAs: input_blocks.3 = down_blocks.1, middle_block.1, output_blocks.0/1
    assert "lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k" in unet_modules
    assert "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_out_0" in unet_modules
    assert "lora_unet_output_blocks_1_1_transformer_blocks_0_attn1_to_q" in unet_modules
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in kohya
    assert "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in kohya
    assert all(f"{module}.{part}" in kohya for module in unet_modules for part in ("lora_up.weight", "alpha"))
    peft = load_file(models["lora-diffusers"])
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in peft
    assert "text_encoder_2.text_model.encoder.layers.0.self_attn.v_proj.lora_B.weight" in peft
    for tensors, up in ((kohya, ".lora_up.weight"), (peft, ".lora_B.weight")):
        assert all(tensor.abs().max() > 0 for key, tensor in tensors.items() if key.endswith(up))  # not a fresh LoRA


@pytest.mark.parametrize("form", ["kohya", "diffusers"])
def test_a_lora_changes_the_pixels_and_disabling_it_gives_the_plain_image_bitwise(
    models: dict[str, Path], pipe: Any, form: str
) -> None:
    plain = image(pipe)
    pipe.load_lora_weights(str(models[f"lora-{form}"]), adapter_name="pixel")
    adapted = [name for name, _ in pipe.unet.named_modules() if name.endswith("lora_A.pixel")]
    adapted_text = [name for name, _ in pipe.text_encoder_2.named_modules() if name.endswith("lora_A.pixel")]
    assert len(adapted) == 32 and len(adapted_text) == 12  # every target of the file found its module
    pipe.set_adapters(["pixel"], adapter_weights=[1.0])
    with_lora = image(pipe)
    assert np.abs(with_lora - plain).mean() > 5
    pipe.disable_lora()
    assert np.array_equal(image(pipe), plain)
    pipe.enable_lora()
    assert np.array_equal(image(pipe), with_lora)
    pipe.set_adapters(["pixel"], adapter_weights=[0.0])
    assert np.array_equal(image(pipe), plain)
    pipe.unload_lora_weights()
    assert np.array_equal(image(pipe), plain)


def test_kohya_and_diffusers_files_of_one_seed_give_the_same_image(
    models: dict[str, Path], pipe: Any, tmp_path: Path
) -> None:
    """The SGM names of the kohya file land on the very modules the diffusers names do."""
    images = []
    for form in ("kohya", "diffusers"):
        path = tiny_extras.write_tiny_lora(tmp_path / f"{form}.safetensors", models["sdxl"], format=form, seed=11)
        pipe.load_lora_weights(str(path), adapter_name=form)
        pipe.set_adapters([form])
        images.append(image(pipe))
        pipe.unload_lora_weights()
    assert np.array_equal(images[0], images[1])


def test_load_lora_weights_takes_a_state_dict_and_leaves_it_intact(models: dict[str, Path], pipe: Any) -> None:
    """A caller may keep a LoRA's tensors in memory and load them again for each row."""
    cached = load_file(models["lora-kohya"])
    before = {key: tensor.clone() for key, tensor in cached.items()}
    pipe.load_lora_weights(cached, adapter_name="first")
    first = image(pipe)
    pipe.unload_lora_weights()
    assert cached.keys() == before.keys() and all(torch.equal(cached[key], before[key]) for key in before)
    pipe.load_lora_weights(cached, adapter_name="second")
    assert np.array_equal(image(pipe), first)


def test_a_mismatched_lora_raises_on_load_and_leaves_the_pipeline_plain(
    pipe: Any, models: dict[str, Path], tmp_path: Path
) -> None:
    plain = image(pipe)
    bad = tiny_extras.write_mismatched_lora(tmp_path / "bad.safetensors", models["sdxl"])
    with pytest.raises(RuntimeError, match="size mismatch"):
        pipe.load_lora_weights(str(bad), adapter_name="bad")
    assert not getattr(pipe.unet, "peft_config", {})  # diffusers took the half-injected adapter out again
    assert np.array_equal(image(pipe), plain)


def test_the_ip_adapter_steers_the_image_by_its_scale_and_unloads_cleanly(models: dict[str, Path], pipe: Any) -> None:
    folder = models["ip-adapter"]
    assert (folder / IP_ADAPTER_SUBFOLDER / IP_ADAPTER_WEIGHT_NAME).is_file()
    assert (folder / IP_ADAPTER_SUBFOLDER / "image_encoder" / "config.json").is_file()
    plain = image(pipe)
    pipe.load_ip_adapter(str(folder), subfolder=IP_ADAPTER_SUBFOLDER, weight_name=IP_ADAPTER_WEIGHT_NAME)
    assert pipe.image_encoder.config.image_size == 32
    style = PILImage.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    pipe.set_ip_adapter_scale(1.0)
    styled = image(pipe, ip_adapter_image=style)
    pipe.set_ip_adapter_scale(0.0)
    unstyled = image(pipe, ip_adapter_image=style)
    assert np.abs(styled - unstyled).mean() > 5
    assert np.array_equal(unstyled, plain)  # scale 0 adds exactly nothing
    pipe.unload_ip_adapter()
    assert pipe.image_encoder is None
    assert np.array_equal(image(pipe), plain)  # unloading restores the plain attention processors


def test_the_upscaler_returns_four_times_the_input(models: dict[str, Path]) -> None:
    assert is_tiny_model(str(models["upscaler"]))
    upscaler = diffusers.StableDiffusionUpscalePipeline.from_pretrained(models["upscaler"])
    upscaler.set_progress_bar_config(disable=True)
    small = PILImage.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    generator = torch.Generator("cpu").manual_seed(3)
    result = upscaler(PROMPT, image=small, num_inference_steps=2, generator=generator).images[0]
    assert result.size == (64, 64)


def test_make_tiny_models_flag_prints_the_env_lines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], models: dict[str, Path]
) -> None:
    from imagend.cli import main

    written: list[Path] = []

    def write(directory: str | Path) -> dict[str, Path]:  # the written models, not written again
        written.append(Path(directory))
        return models

    monkeypatch.setattr(tiny_extras, "write_tiny_models", write)
    assert main(["-make-tiny-models", "somewhere"]) == 0
    assert main([f"--make-tiny-models={models['sdxl'].parent}"]) == 0
    assert written == [Path("somewhere"), models["sdxl"].parent]
    out = capsys.readouterr().out
    assert f"IMAGEND_MODELS=sdxl={models['sdxl']},sdxl-b={models['sdxl-b']}\n" in out
    assert f"IMAGEND_LORA_DIR={models['loras']}\n" in out
    assert f"IMAGEND_IP_ADAPTER={models['ip-adapter']}\n" in out
    assert f"IMAGEND_UPSCALER={models['upscaler']}\n" in out
    assert "IMAGEND_MODEL=sdxl\n" in out  # an entry of IMAGEND_MODELS, not the hub's SDXL


def env_lines(out: str) -> dict[str, str]:
    """The VARIABLE=value lines of the CLI's output, as a user pastes them into .env."""
    return dict(line.split("=", 1) for line in out.splitlines() if re.fullmatch(r"[A-Z][A-Z0-9_]*=.*", line))


def test_the_lines_make_tiny_models_prints_start_a_daemon_that_finishes_a_row_quickly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], models: dict[str, Path],
    db_url: str, conn: Any, tmp_path: Path,
) -> None:
    """Pasted as they are into .env, the printed lines start the local backend (IMAGEND_MODEL included, not
    the hub's SDXL) at sizes a CPU makes in well under a minute (issue 25, items 6 and 11)."""
    from imagend.cli import main

    monkeypatch.setattr(tiny_extras, "write_tiny_models", lambda directory: models)
    assert main(["-make-tiny-models", str(models["sdxl"].parent)]) == 0
    lines = env_lines(capsys.readouterr().out)
    assert lines["IMAGEND_MODEL"] == "sdxl" and lines["IMAGEND_BACKEND"] == "local"
    (tmp_path / ".env").write_text(
        "".join(f"{k}={v}\n" for k, v in {**lines, "DATABASE_URL": db_url, "HF_HUB_OFFLINE": "1",
                                             "IMAGEND_LOCK_DIR": str(tmp_path / "locks")}.items()))
    image_id = insert_image(conn, "a red fox")
    started = time.monotonic()
    result = run_imagend(["-generator"], {}, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    row = fetch_image(conn, image_id)
    assert row["status"] == "ReadyToPublish", row["error"]
    assert PILImage.open(io.BytesIO(base64.b64decode(row["base64"]))).size == (128, 128)
    assert time.monotonic() - started < 60
    assert "torchvision" not in result.stderr  # transformers' fallback notice: nothing to act on


def test_make_tiny_model_of_another_family_says_where_and_how_to_use_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from imagend.cli import main

    assert main(["-make-tiny-model", str(tmp_path / "flux"), "-family", "flux"]) == 0
    out = capsys.readouterr().out
    assert f"FLUX.1 (black-forest-labs/FLUX.1-dev) pipeline (it makes noise) to {tmp_path / 'flux'}\n" in out
    lines = env_lines(out)
    assert lines["IMAGEND_MODEL"] == str(tmp_path / "flux") and lines["IMAGEND_BACKEND"] == "local"
    assert int(lines["DEFAULT_IMAGE_WIDTH"]) % 16 == 0  # FLUX.1's sides are multiples of 16
