"""The local backend on the miniature model, in process, no database: validation, compel,
seeds, PNG metadata, the device lock. The model has random weights: images are noise."""

from __future__ import annotations

import gc
import io
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from imagend.backends.local.png_metadata import read_parameters
from imagend.errors import BadInput, Cancelled

from support.db import fetch_image, insert_image
from support.local import SIDE_PX, STEPS, TORCH_NUMPY_COPY_WARNING, RecordingHeartbeat, in_process_generator, request

pytestmark = TORCH_NUMPY_COPY_WARNING

# Plenty of characters past the tokenizer's 77 tokens (the miniature tokenizer is one token per character).
LONG_PROMPT = "a lighthouse on a rocky cliff at dusk with waves crashing below, " * 3


def pixels(png: bytes) -> np.ndarray[Any, Any]:
    with PILImage.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture
def backend(make_backend: Callable[..., Any]) -> Any:
    return make_backend(IMAGEND_MAX_BATCH="4")


def test_validate_fills_defaults_and_normalises(backend: Any) -> None:
    checked = backend.validate(request(steps=None, guidance=None, scheduler="Euler_A", style="anime"))
    assert (checked.steps, checked.guidance, checked.scheduler, checked.style) == (3, 5.0, "euler_a", "ANIME")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"width": 100}, "width must be a multiple of 8 for SDXL, got 100 (try 96)"),
        ({"height": 4096}, "height 4096 is above this daemon's limit of 2048 (IMAGEND_MAX_SIDE)"),
        ({"scheduler": "plms"},
         "unknown scheduler 'plms'; SDXL takes one of: euler, euler_a, dpmpp_2m, dpmpp_2m_karras"),
        ({"style": "cubism"}, "unknown style 'cubism'; use one of: DEFAULT, KANDINSKY, UHD, ANIME (or NULL)"),
        ({"prompt": '("a cat", "a dog").blend(0.7)'}, "prompt: compel cannot parse it (while parsing Blend"),
        ({"negative_prompt": '("x", "y").blend(1, 2, 3)'}, "negative_prompt: compel cannot parse it (while parsing"),
    ],
)
def test_validate_rejects_with_a_readable_message(backend: Any, fields: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInput) as raised:
        backend.validate(request(**fields))
    assert str(raised.value).startswith(message)


def test_prompt_past_77_tokens_is_encoded_in_chunks_not_truncated(backend: Any) -> None:
    tokenizer = backend.pipe.tokenizer
    assert tokenizer.model_max_length == 77
    assert len(tokenizer(LONG_PROMPT).input_ids) > 77
    changed_tail = LONG_PROMPT[:-20] + "purple elephants now"
    one = backend.encoder.encode(LONG_PROMPT, None)
    two = backend.encoder.encode(changed_tail, None)
    assert one.tokens > 77 and one.tokens % 77 == 0  # compel's chunks of 75 tokens + BOS/EOS
    # Only the words past token 77 differ: the first chunk is identical, the later ones are not.
    assert torch.equal(one.embeds[:, :77], two.embeds[:, :77])
    assert not torch.allclose(one.embeds[:, 77:], two.embeds[:, 77:])
    # The images differ too: the text past token 77 reaches the UNet.
    images = backend.generate(
        [backend.validate(request(1, LONG_PROMPT, seed=5)), backend.validate(request(2, changed_tail, seed=5))],
        RecordingHeartbeat(),
    )
    assert not np.array_equal(pixels(images[0].png), pixels(images[1].png))


def test_compel_weighting_changes_the_conditioning(backend: Any) -> None:
    plain = backend.encoder.encode("a red fox", None)
    weighted = backend.encoder.encode("a (red)1.8 fox", None)
    assert plain.embeds.shape == weighted.embeds.shape
    assert not torch.allclose(plain.embeds, weighted.embeds)


@pytest.mark.parametrize(
    ("prompt", "negative"),
    [("a red fox", None), ("a high-quality photo, 4.5 stars", "blurry"), ("a cat. a dog", "low-res, ugly")],
)
def test_plain_prompts_take_the_short_way_to_exactly_compels_result(
    backend: Any, prompt: str, negative: str | None
) -> None:
    assert backend.encoder.is_plain(prompt)
    short = backend.encoder.encode(prompt, negative)
    compel = backend.encoder.encode_with_compel(prompt, negative)
    for name in ("embeds", "pooled", "negative_embeds", "negative_pooled"):
        assert torch.equal(getattr(short, name), getattr(compel, name)), name


@pytest.mark.parametrize("prompt", ["a red+ fox", "a (red)1.2 fox", '("a", "b").blend(1, 1)', LONG_PROMPT])
def test_weighted_or_long_prompts_are_not_plain(backend: Any, prompt: str) -> None:
    assert not backend.encoder.is_plain(prompt)


def test_no_negative_prompt_means_zero_unconditional_embeddings(backend: Any) -> None:
    none = backend.encoder.encode("a fox", None)
    some = backend.encoder.encode("a fox", "blurry")
    assert not none.negative_embeds.any() and not none.negative_pooled.any()
    assert some.negative_embeds.abs().sum() > 0


def test_same_seed_same_pixels_and_the_seed_comes_back(backend: Any) -> None:
    heartbeat = RecordingHeartbeat()
    first = backend.generate([backend.validate(request(seed=1234))], heartbeat)[0]
    again = backend.generate([backend.validate(request(seed=1234))], heartbeat)[0]
    other = backend.generate([backend.validate(request(seed=1235))], heartbeat)[0]
    assert first.seed == again.seed == 1234
    assert np.array_equal(pixels(first.png), pixels(again.png))
    assert not np.array_equal(pixels(first.png), pixels(other.png))


def test_a_random_seed_is_returned_and_reproduces_the_image(backend: Any) -> None:
    heartbeat = RecordingHeartbeat()
    first = backend.generate([backend.validate(request(seed=None))], heartbeat)[0]
    assert first.seed is not None and 0 <= first.seed < 2**32
    again = backend.generate([backend.validate(request(seed=first.seed))], heartbeat)[0]
    assert np.array_equal(pixels(first.png), pixels(again.png))


@pytest.mark.parametrize("scheduler", ["euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim"])
def test_every_scheduler_reproduces_its_seed(backend: Any, scheduler: str) -> None:
    def make() -> bytes:
        row = backend.validate(request(seed=9, scheduler=scheduler))
        return bytes(backend.generate([row], RecordingHeartbeat())[0].png)

    assert np.array_equal(pixels(make()), pixels(make()))


def test_a_batch_matches_the_same_rows_alone_up_to_rounding(backend: Any) -> None:
    rows = [backend.validate(request(i, f"prompt number {i}", seed=100 + i, scheduler="euler_a")) for i in range(3)]
    batched = backend.generate(rows, RecordingHeartbeat())
    alone = [backend.generate([row], RecordingHeartbeat())[0] for row in rows]
    for together, single in zip(batched, alone, strict=True):
        assert together.seed == single.seed
        diff = np.abs(pixels(together.png) - pixels(single.png))
        # Same noise, same conditioning; batched kernels may round differently (see docs/local.md).
        assert diff.max() <= 4 and diff.mean() < 0.5


def test_png_has_size_and_a1111_parameters(backend: Any) -> None:
    row = backend.validate(request(prompt="a cat", negative_prompt="blurry", seed=77, width=96, scheduler="euler_a"))
    image = backend.generate([row], RecordingHeartbeat())[0]
    with PILImage.open(io.BytesIO(image.png)) as png:
        assert png.format == "PNG" and png.size == (96, SIDE_PX)
    text = read_parameters(image.png)
    assert text is not None
    prompt, negative, fields = text.splitlines()
    assert (prompt, negative) == ("a cat", "Negative prompt: blurry")
    assert fields.startswith("Steps: 3, Sampler: Euler a, CFG scale: 5, Seed: 77, Size: 96x64, Model: ")
    assert "miniature random weights" in fields


def test_style_template_reaches_the_prompt(backend: Any) -> None:
    image = backend.generate([backend.validate(request(prompt="a cat", style="ANIME", seed=1))], RecordingHeartbeat())
    text = read_parameters(image[0].png)
    assert text is not None and text.startswith("anime artwork, a cat, anime style")


def test_progress_rises_to_just_below_one_over_the_batch(backend: Any) -> None:
    heartbeat = RecordingHeartbeat()
    rows = [backend.validate(request(i, "short", seed=i)) for i in (1, 2)] + [
        backend.validate(request(3, LONG_PROMPT, seed=3))
    ]
    backend.generate(rows, heartbeat)
    progress = [p for p in heartbeat.progress if p is not None]
    assert len(progress) == 2 * 3  # two calls (two token lengths), three steps each
    assert progress == sorted(progress) and progress[-1] == 0.99 and progress[0] > 0


def test_cancel_from_the_heartbeat_aborts_and_frees_the_device(backend: Any) -> None:
    latents: list[weakref.ref[torch.Tensor]] = []
    original = backend.pipe.unet.forward

    def counting(sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        latents.append(weakref.ref(sample))
        return original(sample, *args, **kwargs)

    backend.pipe.unet.forward = counting
    # One beat before the model is fetched from the cache, one while encoding, then one a step.
    heartbeat = RecordingHeartbeat(raise_at=4, error=Cancelled())
    with pytest.raises(Cancelled) as raised:
        backend.generate([backend.validate(request(steps=20))], heartbeat)
    assert len(latents) == 2  # stopped at the step after the cancel, not after 20
    assert not backend.lock.is_held_elsewhere()
    # The aborted call's tensors are gone even while its exception is still held (on a GPU: its memory).
    assert raised.value is not None
    gc.collect()
    assert all(ref() is None for ref in latents)
    del backend.pipe.unet.forward
    assert backend.generate([backend.validate(request(seed=3))], RecordingHeartbeat())[0].seed == 3


def test_encoding_keeps_the_lease_and_hears_a_cancel_before_the_first_step(backend: Any) -> None:
    """Each row's prompt encoding is preceded by a heartbeat: a long batch of long prompts renews
    its leases while it encodes, and a cancel (or a stop) is heard before any diffusion step."""
    rows = [backend.validate(request(n, LONG_PROMPT + f" variant {n}", negative_prompt="x" * 1000, seed=n))
            for n in range(1, 4)]
    heartbeat = RecordingHeartbeat()
    backend.generate(rows, heartbeat)
    first_step = next(i for i, progress in enumerate(heartbeat.progress) if progress is not None)
    assert heartbeat.progress[:first_step].count(None) >= len(rows)
    cancelling = RecordingHeartbeat(raise_at=2, error=Cancelled())
    with pytest.raises(Cancelled):
        backend.generate([backend.validate(request(9, LONG_PROMPT + " again", seed=9)),
                          backend.validate(request(10, LONG_PROMPT + " and again", seed=10))], cancelling)
    assert all(progress is None for progress in cancelling.progress)  # stopped while encoding


def test_the_defaults_that_made_an_image_are_written_back_to_its_row(conn, make_settings, make_repo, local_env):
    """Issue 25, item 9: a row that left size, steps, guidance and scheduler NULL gets the values that made
    its image; the producer's own values stay."""
    from imagend.backends.local import LocalBackend

    settings = make_settings(**local_env(IMAGEND_DEFAULT_GUIDANCE="4.5", IMAGEND_DEFAULT_SCHEDULER="euler_a"))
    backend = LocalBackend.from_settings(settings)
    defaulted = insert_image(conn, "all left to the daemon")
    asked = insert_image(conn, "asked", width=48, height=56, steps=2, guidance=3.0, scheduler="ddim")
    in_process_generator(make_repo(settings), backend, settings).run_once()
    row = fetch_image(conn, defaulted)
    assert row["status"] == "ReadyToPublish", row["error"]
    assert (row["width"], row["height"], row["steps"], row["guidance"], row["scheduler"]) == (
        SIDE_PX, SIDE_PX, STEPS, 4.5, "euler_a")
    row = fetch_image(conn, asked)
    assert (row["width"], row["height"], row["steps"], row["guidance"], row["scheduler"]) == (48, 56, 2, 3.0, "ddim")
