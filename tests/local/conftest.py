"""Fixtures for the local backend's tests: the miniature random-weights SDXL model (built once per
session, it makes noise), and backends loaded from it on the CPU."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imagend.config import load_settings

from support.local import SIDE_PX, STEPS


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagend.testing.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-sdxl"))


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
