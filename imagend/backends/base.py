"""The backend protocol. Two shapes, one per way of generating:

- `GeneratingBackend` makes images in this process (`local`, `placeholder`): the
  generator claims rows, calls `generate` on a batch, and writes the results.
- `RemoteBackend` hands work to a service (`fusionbrain`): the generator `submit`s,
  the processor `poll`s until the image is ready.

Both `validate` a request first; a `BadInput` there fails the row before any work.
Every backend passes the conformance suite in tests/conformance.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from imagend.db.rows import Claim, ModelPreference
from imagend.errors import BadInput
from imagend.images.formats import OutputFormat
from imagend.images.post import PostStep


@dataclass(frozen=True, slots=True)
class Lora:
    """One entry of a row's `loras`: a file name in IMAGEND_LORA_DIR (no extension) and its weight."""

    name: str
    weight: float


@dataclass(frozen=True, slots=True)
class Control:
    """One entry of a row's `controls` (ControlNet): the control image, decoded and preprocessed (a canny
    row's edges already drawn), the IMAGEND_CONTROLNETS name that reads it, its conditioning scale and
    the fraction of the steps it acts over."""

    image: Any
    type: str
    model: str | None  # None: the one ControlNet of IMAGEND_CONTROLNETS (the backend checks there is one)
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0


@dataclass(frozen=True, slots=True)
class Hires:
    """A row's hires fix (A1111's two passes): generate, upscale by `scale`, image-to-image at `strength`."""

    scale: float
    steps: int | None  # None: the row's steps
    strength: float
    upscaler: str  # db/columns.py's HR_UPSCALERS


@dataclass(frozen=True, slots=True)
class ImageInputs:
    """What a row asks beyond text-to-image (local backend; docs/local.md). Images arrive decoded
    and checked (image_inputs.py): RGB PIL images, the mask in mode L (white = repaint)."""

    model: str | None = None  # a name of IMAGEND_MODELS; None: IMAGEND_MODEL
    loras: tuple[Lora, ...] = ()
    task: str | None = None  # None (inferred from the images) or "upscale"
    init_image: Any = None
    strength: float | None = None
    mask_image: Any = None
    reference_image: Any = None
    reference_scale: float | None = None
    upscale: float | None = None
    size_from_init: bool = False  # width and height were NULL: the init image's size decides
    controls: tuple[Control, ...] = ()  # ControlNet (addons/controlnet.py)
    hires: Hires | None = None  # the hires fix's second pass (addons/hires.py)

    @property
    def used(self) -> list[str]:
        """The columns set beyond text-to-image, for a backend that takes none of them."""
        names = ["model", "loras", "task", "init_image", "strength", "mask_image", "reference_image",
                 "reference_scale", "upscale", "controls", "hires"]
        return [name for name in names if getattr(self, name) not in (None, ())]

    def batch_key(self, image_id: int) -> Hashable:
        """Rows share a pipeline call only with the same model, LoRAs and settings; a row with an
        image input is a call of its own."""
        alone = self.init_image is not None or self.reference_image is not None or self.controls
        own = image_id if alone else None
        return (self.model, self.loras, self.task, self.strength, self.reference_scale, self.upscale, self.hires, own)


NO_INPUTS = ImageInputs()


def refuse_image_inputs(request: Request, backend: str) -> None:
    """For the backends that make text-to-image only: a row that asks more fails, naming the columns."""
    used = request.inputs.used
    if used:
        raise BadInput(f"backend {backend} does not take {', '.join(used)} (the local backend does; docs/local.md)")


@dataclass(frozen=True, slots=True)
class Request:
    """One image to make: a claimed row, validated, with the daemon's defaults applied."""

    id: int
    prompt: str
    negative_prompt: str | None
    style: str | None
    width: int
    height: int
    seed: int | None
    steps: int | None
    guidance: float | None
    scheduler: str | None
    params: dict[str, Any] = field(default_factory=dict)
    attempt: int = 1
    output: OutputFormat | None = None  # the row's format and quality (None: PNG, or as the backend made it)
    inputs: ImageInputs = NO_INPUTS
    notes: tuple[str, ...] = ()  # the backend's warnings for the row (what it ignored or used as written)
    n: int = 1  # images to make for the row: seeds seed, seed + 1, … (A1111's all_seeds), one batch
    post: tuple[PostStep, ...] = ()  # a preset's post-processing steps, applied to each image when it is finished

    @property
    def claim(self) -> Claim:
        """The token the write that ends this request's claim is fenced by (with what the finish needs)."""
        return Claim(self.id, self.attempt, self.output, self.post)

    def seeds(self, first: int) -> list[int]:
        """The seeds of the row's n images: `first`, `first` + 1, … (each image is that seed's image alone)."""
        return [first + k for k in range(self.n)]


@dataclass(frozen=True, slots=True)
class Image:
    """A finished image. `seed` is the seed really used; `width` and `height` are the image's pixels, and
    `steps`, `guidance` and `scheduler` what made it, where the backend has them (None: it has not). Each is
    written back to a row that left it NULL (images_mark_done), so that nobody decodes an image to learn them."""

    png: bytes
    seed: int | None = None
    generation_seconds: float | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    # A row of n > 1 images: images 2..n (this is image 1), each with its own seed, in seed order.
    others: tuple[Image, ...] = ()


@dataclass(frozen=True, slots=True)
class Submission:
    """A remote task was accepted: poll it after `poll_after_seconds`."""

    task_id: str
    poll_after_seconds: float


@dataclass(frozen=True, slots=True)
class Pending:
    """The remote task is still running: poll again after `poll_after_seconds`."""

    poll_after_seconds: float


# Previews of the images forming, by row id (base64 WebP): called only when one is to be written.
PreviewSource = Callable[[], Mapping[int, str]]


class Heartbeat(Protocol):
    """Called by a generating backend whenever work really advances (each diffusion step).

    It extends the batch's leases and writes progress (throttled), and the previews when given
    (at most every IMAGEND_PREVIEW_SECONDS: `preview` is only called then), and raises
    `Cancelled` when a producer asked to cancel, or `Interrupted` when the daemon is
    stopping or the rows are no longer ours. Backends let both propagate.
    """

    def __call__(self, progress: float | None = None, preview: PreviewSource | None = None) -> None: ...


@runtime_checkable
class Backend(Protocol):
    name: str
    # How many rows one claim takes for this backend (one `generate` call, or one
    # round of concurrent submissions).
    max_batch: int

    def validate(self, request: Request) -> Request:
        """Raise BadInput for what this backend cannot make; may normalise (e.g. round sizes)."""
        ...

    def claim_preference(self) -> ModelPreference | None:
        """Which rows the claim should prefer (the models held loaded: model affinity); None: none."""
        ...

    def device_and_model(self) -> tuple[str | None, str | None]:
        """What imagend_daemons shows of this backend: the device it generates on and its default
        model; (None, None) for a backend that has neither (remote, placeholder)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class GeneratingBackend(Backend, Protocol):
    def generate(self, batch: Sequence[Request], heartbeat: Heartbeat) -> list[Image]:
        """One image per request, in order. Raise a RowError subclass for the whole batch."""
        ...


@runtime_checkable
class RemoteBackend(Backend, Protocol):
    def submit(self, request: Request) -> Submission:
        """Start a task. Raise QueueClosed (not the row's fault), RetryableError or PermanentError."""
        ...

    def poll(self, task_id: str) -> Image | Pending:
        """Check a task once (the id `submit` returned). Never re-poll a task after it returned
        an Image (results are one-shot)."""
        ...
