"""Fixtures for the local backend's tests: the miniature random-weights SDXL model (built once per
session, it makes noise), and backends loaded from it on the CPU."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imagend.config.settings import load_settings

from support.local import SIDE_PX, STEPS


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagend.backends.local.miniature.sdxl import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two checkpoints, two LoRAs (kohya, diffusers), an IP-Adapter and an x4 upscaler (miniature.extras)."""
    from imagend.backends.local.miniature.extras import write_mismatched_lora, write_tiny_models

    models = write_tiny_models(tmp_path_factory.mktemp("tiny-models"))
    write_mismatched_lora(models["loras"] / "misfit.safetensors", models["sdxl"])
    (models["loras"] / "not-a-lora.safetensors").write_bytes(b"this is no safetensors file")
    return models


@pytest.fixture(scope="session")
def single_file_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A miniature SDXL folder whose second text encoder is wider than the first (as SDXL's: diffusers'
    single-file loader tells them apart by width), written back as one A1111-layout file (.safetensors and
    .ckpt), and the config folder (its .json and .txt files) that completes the file
    (imagend.backends.local.miniature.single_file)."""
    from imagend.backends.local.miniature.sdxl import write_tiny_model
    from imagend.backends.local.miniature.single_file import write_config_folder, write_single_file

    root = tmp_path_factory.mktemp("single-file")
    folder = write_tiny_model(root / "sdxl", clip_g_width=48)
    return {
        "folder": folder,
        "safetensors": write_single_file(folder, root / "files" / "tiny-sdxl.safetensors"),
        "ckpt": write_single_file(folder, root / "files" / "tiny-sdxl.ckpt"),
        "config": write_config_folder(folder, root / "sdxl-config"),
    }


@pytest.fixture(scope="session")
def tiny_families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Miniature FLUX.1, SD3 and Kandinsky 3 pipelines (imagend.backends.local.miniature.families), by family key."""
    from imagend.backends.local.miniature.families import FAMILIES, write_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-families")
    return {family: write_tiny_pipeline(root / family, family) for family in FAMILIES}


@pytest.fixture
def extras_env(tiny_models: dict[str, Path], local_env: Callable[..., dict[str, str]]) -> Callable[..., dict[str, str]]:
    """local_env with IMAGEND_MODELS (sdxl, sdxl-b), IMAGEND_LORA_DIR, IMAGEND_IP_ADAPTER and IMAGEND_UPSCALER."""

    def make(**overrides: str) -> dict[str, str]:
        extras = {
            "IMAGEND_MODEL": str(tiny_models["sdxl"]),
            "IMAGEND_MODELS": f"sdxl={tiny_models['sdxl']},sdxl-b={tiny_models['sdxl-b']}",
            "IMAGEND_LORA_DIR": str(tiny_models["loras"]),
            "IMAGEND_IP_ADAPTER": str(tiny_models["ip-adapter"]),
            "IMAGEND_UPSCALER": str(tiny_models["upscaler"]),
        }
        return local_env(**{**extras, **overrides})

    return make


@pytest.fixture
def local_env(tiny_model: Path, tmp_path: Path) -> Callable[..., dict[str, str]]:
    """IMAGEND_* for the local backend on the miniature model; each test gets its own lock dir."""

    def make(**overrides: str) -> dict[str, str]:
        env = {
            "IMAGEND_BACKEND": "local",
            "IMAGEND_MODEL": str(tiny_model),
            "IMAGEND_LOCK_DIR": str(tmp_path / "locks"),
            "IMAGEND_DEFAULT_STEPS": str(STEPS),
            "DEFAULT_IMAGE_WIDTH": str(SIDE_PX),
            "DEFAULT_IMAGE_HEIGHT": str(SIDE_PX),
            "HF_HUB_OFFLINE": "1",
        }
        env.update(overrides)
        return env

    return make


@pytest.fixture
def make_backend(local_env: Callable[..., dict[str, str]], tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """make_backend(**env) -> a LocalBackend on the miniature model (no database needed)."""
    from imagend.backends.local import LocalBackend

    made: list[LocalBackend] = []

    def make(**overrides: str) -> LocalBackend:
        env = {"IMAGEND_DATA_DIR": str(tmp_path / "data"), **local_env(**overrides)}
        backend = LocalBackend.from_settings(load_settings(environ=env, env_file=None))
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()
