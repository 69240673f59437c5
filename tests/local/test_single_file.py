"""Single-file checkpoints (imagend/backends/local/single_file.py) on a miniature SDXL written back to the
A1111 layout (miniature/single_file.py): the file loads with every weight of its folder, the family is read
from the keys or said after the colon, bad files and a missing config name the setting at start, and
-import-model's folder stands in for the file while the file is unchanged. No database here; the daemon end
to end is test_single_file_daemon.py."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from imagend.backends.local import single_file
from imagend.backends.local.families import SDXL, family_of
from imagend.backends.local.hub import hub_unreachable
from imagend.backends.local.options import LocalSettings, is_tiny_model
from imagend.backends.local.pipelines import check_model_source, load_pipeline
from imagend.backends.local.startup import check as startup_check
from imagend.backends.local.startup import check_single_files
from imagend.config.settings import load_settings
from imagend.errors import ConfigError

from support.local import TORCH_NUMPY_COPY_WARNING

pytestmark = TORCH_NUMPY_COPY_WARNING
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture
def options_for(single_file_models: dict[str, Path], tmp_path: Path) -> Callable[..., LocalSettings]:
    def make(**env: str) -> LocalSettings:
        values = {
            "IMAGEND_BACKEND": "local",
            "IMAGEND_MODEL": str(single_file_models["folder"]),
            "IMAGEND_SINGLE_FILE_CONFIG": str(single_file_models["config"]),
            "IMAGEND_DATA_DIR": str(tmp_path / "data"),
            "IMAGEND_LOCK_DIR": str(tmp_path / "locks"),
            "HF_HUB_OFFLINE": "1",
            **env,
        }
        return LocalSettings.from_settings(load_settings(environ=values, env_file=None), cuda_available=False)

    return make


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """HF_HUB_OFFLINE in this process's environment, where huggingface_hub and hub.py read it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_unreachable.cache_clear()
    yield
    hub_unreachable.cache_clear()


def weights(pipe: Any) -> dict[str, dict[str, torch.Tensor]]:
    return {name: getattr(pipe, name).state_dict() for name in COMPONENTS}


def assert_same_weights(left: Any, right: Any) -> None:
    ours, theirs = weights(left), weights(right)
    for name in COMPONENTS:
        assert set(ours[name]) == set(theirs[name]), name
        differ = [k for k, value in ours[name].items() if value.is_meta or not torch.equal(value, theirs[name][k])]
        assert differ == [], f"{name}: {differ[:5]}"


@pytest.mark.parametrize("kind", ["safetensors", "ckpt"])
def test_the_file_loads_with_every_weight_of_its_folder(
    single_file_models: dict[str, Path], options_for: Callable[..., LocalSettings], kind: str
) -> None:
    source = str(single_file_models[kind])
    options = options_for(IMAGEND_MODEL=source)
    from_file = load_pipeline(options)
    from_folder = load_pipeline(options_for())
    assert type(from_file).__name__ == "StableDiffusionXLPipeline"
    assert_same_weights(from_file, from_folder)
    assert from_file.scheduler.config == from_folder.scheduler.config
    assert from_file.tokenizer_2("a fox").input_ids == from_folder.tokenizer_2("a fox").input_ids
    # The conversion moved every tensor: the file holds the folder's weights, OpenCLIP's q, k and v fused in one
    # in_proj weight and bias per layer.
    header = single_file.read_header(single_file_models[kind])
    fused = 4 * from_folder.text_encoder_2.config.num_hidden_layers
    assert len(header.shapes) == sum(len(w) for w in weights(from_folder).values()) - fused


def test_the_family_is_read_from_the_keys_or_said_after_the_colon(single_file_models: dict[str, Path]) -> None:
    file = single_file_models["safetensors"]
    assert single_file.parse(str(file)) == single_file.SingleFile(file, None)
    assert single_file.parse(f"{file}:SDXL") == single_file.SingleFile(file, "sdxl")
    assert single_file.parse("stabilityai/stable-diffusion-xl-base-1.0") is None
    assert single_file.parse(str(single_file_models["folder"])) is None
    assert family_of(str(file), "IMAGEND_MODEL") is SDXL
    assert family_of(f"{single_file_models['ckpt']}:sdxl", "IMAGEND_MODEL") is SDXL
    with pytest.raises(ConfigError, match=r"IMAGEND_MODELS \(x\)=.*:flux: single files of family 'flux' are not "
                                          r"loaded; families: sdxl"):
        family_of(f"{file}:flux", "IMAGEND_MODELS (x)")
    assert single_file.is_miniature(str(file)) and single_file.is_miniature(f"{single_file_models['ckpt']}:sdxl")
    assert not single_file.is_miniature(str(single_file_models["config"] / "x.safetensors"))  # no such file


def write_keys(path: Path, keys: list[str]) -> Path:
    save_file({key: torch.zeros(2, 2) for key in keys}, str(path))
    return path


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("garbage.safetensors", b"this is no safetensors file at all", "not a safetensors file (no header)"),
        ("garbage.ckpt", b"PK\x03\x04 not a zip", "not a torch checkpoint"),
        ("lora.safetensors", ["lora_unet_input_blocks_4_1_proj_in.lora_down.weight"], "a LoRA, not a checkpoint"),
        ("sd15.safetensors", ["model.diffusion_model.out.2.weight",
                              "cond_stage_model.transformer.text_model.final_layer_norm.weight"],
         "a Stable Diffusion 1.x checkpoint, a family the local backend does not drive"),
        ("flux.safetensors", ["double_blocks.0.img_attn.qkv.weight"], "a FLUX.1 transformer"),
        ("unet-only.safetensors", ["model.diffusion_model.label_emb.0.0.weight", "model.diffusion_model.out.2.weight"],
         "an SDXL checkpoint without its CLIP ViT-L text encoder, OpenCLIP ViT-bigG text encoder, VAE"),
        ("other.safetensors", ["encoder.weight", "decoder.weight"],
         "no checkpoint layout the local backend knows (its first keys: decoder.weight, encoder.weight)"),
    ],
)
def test_a_bad_file_is_refused_at_start_naming_the_setting(
    tmp_path: Path, name: str, content: bytes | list[str], reason: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_keys(path, content)
    with pytest.raises(ConfigError) as error:
        check_model_source(str(path), "IMAGEND_MODELS (bad)")
    message = str(error.value)
    assert message.startswith(f"IMAGEND_MODELS (bad)={path}: {reason}"), message
    assert "write `:sdxl` after the file name" in message


def test_a_missing_file_and_an_inpainting_unet_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"IMAGEND_MODEL=.*none.safetensors: no such file"):
        check_model_source(str(tmp_path / "none.safetensors"), "IMAGEND_MODEL")
    inpaint = tmp_path / "inpaint.safetensors"
    keys = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 9, 3, 3),
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.zeros(2),
        "conditioner.embedders.1.model.positional_embedding": torch.zeros(2, 2),
        "first_stage_model.decoder.conv_out.weight": torch.zeros(2),
    }
    save_file(keys, str(inpaint))
    with pytest.raises(ConfigError, match="an SDXL checkpoint whose UNet takes 9 channels"):
        check_model_source(str(inpaint), "IMAGEND_MODEL")


def test_what_completes_the_file_must_be_there(
    single_file_models: dict[str, Path], options_for: Callable[..., LocalSettings], tmp_path: Path,
    offline_hub: None,
) -> None:
    file = str(single_file_models["safetensors"])
    settings_env = {"IMAGEND_MODELS": f"mine={file}"}
    # The default, SDXL base from the Hugging Face cache: not cached here, and HF_HUB_OFFLINE.
    options = options_for(**settings_env, IMAGEND_SINGLE_FILE_CONFIG="stabilityai/stable-diffusion-xl-base-1.0")
    with pytest.raises(ConfigError) as error:
        check_single_files(options)
    assert str(error.value).startswith("IMAGEND_SINGLE_FILE_CONFIG=stabilityai/stable-diffusion-xl-base-1.0: not in "
                                       "the Hugging Face cache, and it cannot be downloaded: HF_HUB_OFFLINE is set")
    assert f"which completes IMAGEND_MODELS (mine)={file}" in str(error.value)
    flux = tmp_path / "flux-config"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ConfigError, match=r"IMAGEND_SINGLE_FILE_CONFIG=.*flux-config: a FluxPipeline pipeline, not "
                                          r"SDXL's StableDiffusionXLPipeline"):
        check_single_files(options_for(**settings_env, IMAGEND_SINGLE_FILE_CONFIG=str(flux)))
    with pytest.raises(ConfigError, match=r"IMAGEND_SINGLE_FILE_CONFIG=/no/such/folder: no model_index\.json there"):
        check_single_files(options_for(**settings_env, IMAGEND_SINGLE_FILE_CONFIG="/no/such/folder"))
    check_single_files(options_for(**settings_env))  # the config folder given: fine


def test_the_start_check_reads_every_entry(single_file_models: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    env = {
        "IMAGEND_BACKEND": "local", "IMAGEND_MODEL": str(single_file_models["folder"]), "HF_HUB_OFFLINE": "1",
        "IMAGEND_MODELS": f"good={single_file_models['safetensors']},bad={bad}",
        "IMAGEND_SINGLE_FILE_CONFIG": str(single_file_models["config"]), "IMAGEND_DATA_DIR": str(tmp_path / "d"),
    }
    with pytest.raises(ConfigError, match=rf"IMAGEND_MODELS \(bad\)={bad}: not a safetensors file"):
        startup_check(load_settings(environ=env, env_file=None))
    startup_check(load_settings(environ={**env, "IMAGEND_MODELS": f"good={single_file_models['safetensors']}"},
                                env_file=None))


def test_an_imported_folder_stands_in_for_the_file_while_it_is_unchanged(
    single_file_models: dict[str, Path], options_for: Callable[..., LocalSettings], tmp_path: Path
) -> None:
    file = tmp_path / "copy.safetensors"
    file.write_bytes(single_file_models["safetensors"].read_bytes())
    options = options_for(IMAGEND_MODEL=f"{file}:sdxl")
    assert single_file.imported_folder(str(file), options) is None
    folder, seconds = single_file.import_model(f"{file}:sdxl", "mine", SDXL, options)
    assert folder == tmp_path / "data" / "models" / "mine" and seconds > 0
    record = json.loads((folder / single_file.IMPORT_RECORD).read_text())
    assert record["source"] == str(file.resolve()) and record["family"] == "sdxl" and record["dtype"] == "torch.float32"
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file() and is_tiny_model(str(folder))
    assert single_file.imported_folder(str(file), options) == folder
    from_import = load_pipeline(options)
    assert_same_weights(from_import, load_pipeline(options_for()))
    # The file changes: the folder no longer stands for it; the file is read again.
    stat = file.stat()
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert single_file.imported_folder(str(file), options) is None
    # A NAME taken by another folder is refused; an import's own folder is replaced.
    (tmp_path / "data" / "models" / "taken").mkdir(parents=True)
    with pytest.raises(ConfigError, match="exists and is not a folder -import-model wrote"):
        single_file.import_model(str(file), "taken", SDXL, options)
    assert single_file.import_model(str(file), "mine", SDXL, options)[0] == folder
    assert single_file.imported_folder(str(file), options) == folder
