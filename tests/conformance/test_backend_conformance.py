"""Every backend passes the same contract (house style: one Protocol, one conformance suite).

Each backend is built from settings exactly as the daemon builds it: the placeholder as is,
fusionbrain against the local fake over real HTTP, local on the miniature random-weights
SDXL pipeline (it makes noise) on the CPU.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from imagend.backends import create_backend
from imagend.backends.base import Backend, GeneratingBackend, Image, Pending, RemoteBackend, Request
from imagend.config.settings import load_settings
from imagend.db.columns import BACKEND_NAMES
from imagend.errors import BadInput

SIDE_PX = 64
pytestmark = pytest.mark.filterwarnings(
    # diffusers' schedulers call np.array(tensor); torch's __array__ lacks numpy 2's `copy` keyword.
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagend.backends.local.miniature.sdxl import write_tiny_model

    return Path(write_tiny_model(tmp_path_factory.mktemp("conformance-tiny-sdxl")))


@pytest.fixture(scope="module")
def fake() -> Iterator[Any]:
    from imagend.testing.fusionbrain_fake import FusionBrainFake

    server = FusionBrainFake(generation_seconds=1.0, status_time=0).start()
    yield server
    server.stop()


def _env(name: str, tmp: Path, tiny_model: Path, fake: Any) -> dict[str, str]:
    env = {
        "IMAGEND_BACKEND": name,
        "IMAGEND_DATA_DIR": str(tmp),
        "DEFAULT_IMAGE_WIDTH": str(SIDE_PX),
        "DEFAULT_IMAGE_HEIGHT": str(SIDE_PX),
    }
    if name == "fusionbrain":
        env.update(fake.client_env())
    if name == "local":
        env.update(
            {
                "IMAGEND_MODEL": str(tiny_model),
                "IMAGEND_LOCK_DIR": str(tmp / "locks"),
                "IMAGEND_DEFAULT_STEPS": "2",
                "HF_HUB_OFFLINE": "1",
            }
        )
    return env


@pytest.fixture(params=BACKEND_NAMES)
def backend(request: pytest.FixtureRequest, tmp_path: Path, tiny_model: Path, fake: Any) -> Iterator[Backend]:
    settings = load_settings(environ=_env(request.param, tmp_path, tiny_model, fake), env_file=None)
    made = create_backend(request.param, settings)
    yield made
    made.close()


def _request(**fields: Any) -> Request:
    values: dict[str, Any] = {
        "negative_prompt": None,
        "style": None,
        "width": SIDE_PX,
        "height": SIDE_PX,
        "seed": 7,
        "steps": 2,
        "guidance": None,
        "scheduler": None,
    }
    values.update(fields)
    return Request(id=1, prompt="a lighthouse at dusk", **values)


def _one_image(backend: Backend, request: Request, fake: Any) -> Image:
    if isinstance(backend, RemoteBackend):
        submission = backend.submit(request)
        for _ in range(5):
            fake.advance(1.0)
            outcome = backend.poll(submission.task_id)
            if not isinstance(outcome, Pending):
                return outcome
        raise AssertionError("the remote task never finished")
    assert isinstance(backend, GeneratingBackend)
    images = backend.generate([request], lambda progress=None, preview=None: None)
    assert len(images) == 1
    return images[0]


def test_names_itself_and_has_one_shape(backend: Backend) -> None:
    assert backend.name in BACKEND_NAMES
    assert backend.max_batch >= 1
    assert isinstance(backend, GeneratingBackend) != isinstance(backend, RemoteBackend)


def test_makes_an_image_that_decodes(backend: Backend, fake: Any) -> None:
    image = _one_image(backend, backend.validate(_request()), fake)
    decoded = PILImage.open(io.BytesIO(image.png))
    decoded.load()
    assert decoded.width > 0 and decoded.height > 0


def test_refuses_a_size_it_cannot_make_and_says_which(backend: Backend) -> None:
    with pytest.raises(BadInput, match="width"):
        backend.validate(_request(width=8000))


def test_refuses_an_unknown_style(backend: Backend) -> None:
    with pytest.raises(BadInput, match="style"):
        backend.validate(_request(style="NO_SUCH_STYLE"))


def test_makes_n_images_with_consecutive_seeds_or_refuses_n_readably(backend: Backend, fake: Any) -> None:
    """A row's n (issue 26): n different images, seeds seed, seed + 1, … (image 1 the request's Image, the
    others in `others`), or BadInput at validation naming n."""
    try:
        request = backend.validate(_request(n=3))
    except BadInput as exc:
        assert "n = 3" in str(exc)
        return
    image = _one_image(backend, request, fake)
    pictures = [image, *image.others]
    assert [picture.seed for picture in pictures] == [7, 8, 9]
    assert len({picture.png for picture in pictures}) == 3
    alone = _one_image(backend, backend.validate(_request(seed=8)), fake)
    assert PILImage.open(io.BytesIO(alone.png)).size == PILImage.open(io.BytesIO(pictures[1].png)).size
