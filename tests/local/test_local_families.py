"""FLUX.1, SD3 and Kandinsky 3 through the local backend, in process on their miniatures (noise):
each family's call, its validation, and what it ignores with a warning."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

from imagend.backends.local.png_metadata import read_parameters
from imagend.config.settings import load_settings
from imagend.db.rows import ClaimedRow
from imagend.errors import BadInput, Cancelled
from imagend.queue.validation import validate_row

from support.local import TORCH_NUMPY_COPY_WARNING, RecordingHeartbeat

pytestmark = TORCH_NUMPY_COPY_WARNING

SIZES = {"flux": 32, "sd3": 32, "kandinsky3": 64}  # the smallest valid side of each miniature
NAMES = {"flux": "FLUX.1", "sd3": "SD3", "kandinsky3": "Kandinsky 3"}


@pytest.fixture
def family_backend(
    tiny_families: dict[str, Path], local_env: Callable[..., dict[str, str]], tmp_path: Path
) -> Iterator[Callable[[str], Any]]:
    from imagend.backends.local import LocalBackend

    made: list[Any] = []

    def make(family: str, **overrides: str) -> Any:
        env = {"IMAGEND_DATA_DIR": str(tmp_path / "data"),
               **local_env(IMAGEND_MODEL=str(tiny_families[family]), **overrides)}
        settings = load_settings(environ=env, env_file=None)
        backend = LocalBackend.from_settings(settings)
        backend.test_settings = settings
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def request(backend: Any, family: str, prompt: str = "a red fox", image_id: int = 1, **columns: Any) -> Any:
    side = SIZES[family]
    values: dict[str, Any] = {"width": side, "height": side, "steps": 2, "seed": 3, **columns}
    fields = {name: values.pop(name, None) for name in ("negative_prompt", "style", "guidance", "scheduler",
                                                         "params", "max_attempts")}
    row = ClaimedRow(id=image_id, attempt=1, prompt=prompt, backend="local", **fields, **values)
    return backend.validate(validate_row(row, backend.test_settings).request)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(png)).convert("RGB"))


@pytest.mark.parametrize("family", ["flux", "sd3", "kandinsky3"])
def test_each_family_makes_its_image_with_progress_and_a_reproducible_seed(family_backend: Any, family: str) -> None:
    backend = family_backend(family)
    heartbeat = RecordingHeartbeat()
    first = backend.generate([request(backend, family, steps=3)], heartbeat)[0]
    again = backend.generate([request(backend, family, steps=3)], RecordingHeartbeat())[0]
    other = backend.generate([request(backend, family, steps=3, seed=4)], RecordingHeartbeat())[0]
    image = PILImage.open(io.BytesIO(first.png))
    assert image.size == (SIZES[family], SIZES[family]) and first.seed == 3
    assert np.array_equal(pixels(first.png), pixels(again.png))
    assert not np.array_equal(pixels(first.png), pixels(other.png))
    progress = [p for p in heartbeat.progress if p is not None]
    assert len(progress) == 3 and progress == sorted(progress)
    parameters = read_parameters(first.png) or ""
    assert f"Model: {family}" in parameters and "Seed: 3," in parameters


@pytest.mark.parametrize("family", ["flux", "sd3", "kandinsky3"])
def test_a_cancel_stops_each_family_at_the_next_step(family_backend: Any, family: str) -> None:
    backend = family_backend(family)
    heartbeat = RecordingHeartbeat(raise_at=4, error=Cancelled())  # model, encoding (flux), then steps
    with pytest.raises(Cancelled):
        backend.generate([request(backend, family, steps=50)], heartbeat)
    assert len(heartbeat.progress) <= 4
    assert not backend.lock.is_held_elsewhere()


@pytest.mark.parametrize(
    ("family", "columns", "error"),
    [
        ("flux", {"width": 40}, "width must be a multiple of 16 for FLUX.1, got 40 (try 32)"),
        ("sd3", {"height": 24}, "height must be a multiple of 16 for SD3, got 24 (try 16)"),
        ("kandinsky3", {"width": 96}, "width must be a multiple of 64 for Kandinsky 3, got 96 (try 64)"),
        ("flux", {"scheduler": "euler"},
         "FLUX.1 cannot use scheduler 'euler'; FLUX.1 takes one of: flow_euler, flow_dpmpp_2m, flow_unipc"),
        ("kandinsky3", {"scheduler": "flow_euler"}, "Kandinsky 3 cannot use scheduler 'flow_euler'"),
        ("sd3", {"scheduler": "k_lms"}, "unknown scheduler 'k_lms'; SD3 takes one of"),
        ("flux", {"init_image": "aGVsbG8="}, "init_image: "),
        ("flux", {"prompt": '("a cat", "a dog").blend(0.7, 0.3, 0.5)'}, "prompt: compel cannot parse it"),
    ],
)
def test_each_family_checks_its_own_rules(
    family_backend: Any, family: str, columns: dict[str, Any], error: str
) -> None:
    backend = family_backend(family)
    prompt = columns.pop("prompt", "a red fox")
    with pytest.raises(BadInput, match=error.replace("(", r"\(").replace(")", r"\)")):
        request(backend, family, prompt, **columns)


def test_image_inputs_need_an_sdxl_model(family_backend: Any, tiny_families: dict[str, Path]) -> None:
    backend = family_backend("flux")
    png = io.BytesIO()
    PILImage.new("RGB", (32, 32), "white").save(png, format="PNG")
    import base64

    with pytest.raises(BadInput, match=r"is FLUX.1, which takes text only here; init_image need an SDXL model"):
        request(backend, "flux", init_image=base64.b64encode(png.getvalue()).decode())


@pytest.mark.parametrize(
    ("family", "columns", "note"),
    [
        ("flux", {"negative_prompt": "blurry"}, "negative_prompt: FLUX.1 takes no negative prompt; it was ignored"),
        ("sd3", {"prompt": "a (red)1.4 fox"}, "prompt: SD3 has no prompt weighting here; the text is used as written"),
        ("kandinsky3", {"prompt": "a red++ fox"}, "prompt: Kandinsky 3 has no prompt weighting here"),
    ],
)
def test_what_a_family_cannot_honour_is_a_warning_not_a_failure(
    family_backend: Any, family: str, columns: dict[str, Any], note: str
) -> None:
    backend = family_backend(family)
    prompt = columns.pop("prompt", "a red fox")
    validated = request(backend, family, prompt, **columns)
    assert any(n.startswith(note) for n in validated.notes), validated.notes
    assert backend.generate([validated], RecordingHeartbeat())[0].png


def test_flux_takes_compel_weighting_and_it_changes_the_image(family_backend: Any) -> None:
    backend = family_backend("flux")
    plain = backend.generate([request(backend, "flux", "a red fox")], RecordingHeartbeat())[0]
    weighted = backend.generate([request(backend, "flux", "a (red)1.5 fox")], RecordingHeartbeat())[0]
    assert not np.array_equal(pixels(plain.png), pixels(weighted.png))
    assert request(backend, "flux", "a (red)1.5 fox").notes == ()


def test_flow_schedulers_run_on_flux_and_sd3(family_backend: Any) -> None:
    for family in ("flux", "sd3"):
        backend = family_backend(family)
        for scheduler in ("flow_dpmpp_2m", "flow_unipc"):
            image = backend.generate([request(backend, family, scheduler=scheduler)], RecordingHeartbeat())[0]
            assert PILImage.open(io.BytesIO(image.png)).size == (SIZES[family], SIZES[family])


def test_sd3_without_t5(family_backend: Any) -> None:
    backend = family_backend("sd3", IMAGEND_SD3_T5="false")
    assert backend.pipe.text_encoder_3 is None
    assert backend.generate([request(backend, "sd3")], RecordingHeartbeat())[0].png
