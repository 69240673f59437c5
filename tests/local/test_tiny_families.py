"""The miniature FLUX.1, SD3 and Kandinsky 3 pipelines (imagend.backends.local.miniature.families): each loads with
DiffusionPipeline.from_pretrained to its family's class and makes an image of the asked size in 2 steps,
seeded. Random weights: the images are noise."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from imagend.backends.local.miniature.families import FAMILIES, write_tiny_pipeline
from imagend.backends.local.options import is_tiny_model

STEPS = 2
# (width, height): the smallest each family makes as asked. FLUX packs 2x2 latents of an 8x VAE (multiples
# of 16, others are resized); SD3 patches 2x2 (multiples of 16, others raise); Kandinsky 3 rounds up to 64.
SIZES = {"flux": (32, 16), "sd3": (32, 16), "kandinsky3": (128, 64)}
PROMPT = "a red fox in the snow"


def diffusers() -> Any:
    return importlib.import_module("diffusers")  # untyped from_pretrained: keep mypy out of it


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Any]:
    """(family, folder, the pipeline loaded from it): each family written and loaded once per module."""
    family: str = request.param
    folder = write_tiny_pipeline(tmp_path_factory.mktemp(f"tiny-{family}"), family)
    pipe: Any = diffusers().DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return family, folder, pipe


def generate(family: str, pipe: Any, seed: int, **kwargs: Any) -> np.ndarray[Any, Any]:
    width, height = SIZES[family]
    image = pipe(
        PROMPT,
        width=width,
        height=height,
        num_inference_steps=STEPS,
        generator=torch.Generator("cpu").manual_seed(seed),
        **kwargs,
    ).images[0]
    assert image.size == (width, height)
    return np.asarray(image.convert("RGB"))


def test_the_folder_loads_to_the_family_class_and_is_marked_tiny(built: tuple[str, Path, Any]) -> None:
    family, folder, pipe = built
    assert type(pipe).__name__ == FAMILIES[family][0]
    assert is_tiny_model(str(folder))


def test_two_steps_make_an_image_of_the_asked_size_calling_back_each_step(built: tuple[str, Path, Any]) -> None:
    family, _, pipe = built
    steps: list[int] = []

    def on_step_end(_pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        steps.append(step)
        assert set(tensors) == {"latents"}
        return tensors

    generate(family, pipe, seed=1, callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"])
    assert steps == list(range(STEPS))


def test_the_same_seed_gives_the_same_pixels_and_another_seed_others(built: tuple[str, Path, Any]) -> None:
    family, _, pipe = built
    first = generate(family, pipe, seed=7)
    assert np.array_equal(first, generate(family, pipe, seed=7))
    assert not np.array_equal(first, generate(family, pipe, seed=8))


def test_an_unknown_family_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown family 'kandinsky5'"):
        write_tiny_pipeline(tmp_path, "kandinsky5")


@pytest.mark.parametrize("built", ["sd3"], indirect=True)
def test_sd3_loads_and_runs_without_its_t5_encoder(built: tuple[str, Path, Any]) -> None:
    family, folder, _ = built
    pipe: Any = diffusers().DiffusionPipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    generate(family, pipe, seed=7)
