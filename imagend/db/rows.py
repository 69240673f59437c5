"""What the repository hands out, bound by column name (psycopg's class_row), and the
claim token that travels with a row from its claim to the write that ends it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from imagend.errors import BadInput
from imagend.images.formats import OutputFormat, parse_output_format
from imagend.images.post import PostStep


class Status(StrEnum):
    """A row's status (schema.sql's CHECK; docs/state_machine.md draws the machine). StrEnum: each
    member is its text, so it reaches Postgres and JSON by value and compares equal to a row's text."""

    # Waiting: a daemon's claim (images_claim_batch) moves it to Generate; a producer's cancel, a
    # failed chained source, or retention's bad-row pass to Failed.
    READY_TO_GENERATE = "ReadyToGenerate"
    # Owned by one daemon under a lease: that daemon finishes it (ReadyToPublish or Failed) or hands it
    # back (ReadyToGenerate); if it dies, the rescue (maintenance) takes it back.
    GENERATE = "Generate"
    # Done, image written: final. Only the producer (or retention, deleting it) moves it on.
    READY_TO_PUBLISH = "ReadyToPublish"
    # Ended without an image (`error` says why): final, until a producer retries it (docs/producers.md's "Trying
    # again", `POST /v1/images/{id}/retry`: back to ReadyToGenerate) or retention deletes it.
    FAILED = "Failed"


ENDED = (Status.READY_TO_PUBLISH, Status.FAILED)


@dataclass(frozen=True, slots=True)
class Claim:
    """One claim of one row: its id and the attempt number the claim stamped. Every write
    that ends a claim is fenced by both (see queries.sql), so a late result of an earlier
    claim of the same row can never land on a later one."""

    id: int
    attempt: int
    # What the finishing write needs of the row (its `format` and `quality`), carried from the claim
    # so that finishing costs no read; not part of the fence.
    output: OutputFormat | None = field(default=None, compare=False)
    # A preset's post-processing steps (presets/), applied to each image before it is stored; not part of the fence.
    post: tuple[PostStep, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """A row this daemon now owns in `Generate`, exactly as the producer wrote it (the columns of
    images_claim_batch's RETURNING, by name: id and attempt, then db/columns.py's claimed producer
    columns in its order, then the claim's own; tests/unit/test_columns.py holds them equal)."""

    id: int
    attempt: int
    prompt: str | None
    negative_prompt: str | None
    style: str | None
    width: int | None
    height: int | None
    seed: int | None
    steps: int | None
    guidance: float | None
    scheduler: str | None
    backend: str
    params: str | None  # JSON text, decoded by validation.decode_params
    max_attempts: int | None
    format: str | None = None  # checked in validation.py (images.formats.parse_output_format)
    quality: int | None = None
    n: int | None = None  # images in the row (NULL: 1), checked in validation.py
    preset: str | None = None  # a name of imagend_presets, applied before validation (presets/)
    # The local backend's inputs (docs/local.md), checked in validation.py and image_inputs.py.
    model: str | None = None
    loras: str | None = None  # JSON text, as params
    task: str | None = None
    # Image columns: the claim gives their length (`*_chars`, checked before any read) and no text;
    # validation fetches the text per row (Repository.input_image). A row built in process may carry it.
    init_image: str | None = None  # base64
    init_image_chars: int | None = None
    init_image_id: int | None = None
    strength: float | None = None
    mask_image: str | None = None
    mask_image_chars: int | None = None
    reference_image: str | None = None
    reference_image_chars: int | None = None
    reference_image_id: int | None = None
    reference_scale: float | None = None
    upscale: float | None = None
    controls: str | None = None  # JSON text, as loras (ControlNet)
    hr_scale: float | None = None  # the hires fix
    hr_steps: int | None = None
    hr_strength: float | None = None
    hr_upscaler: str | None = None
    # Not producer columns: the claim's own.
    cancel_requested: bool = False
    waited_seconds: float | None = None  # from INSERT to this claim (the queue-wait metric)

    @property
    def claim(self) -> Claim:
        return Claim(self.id, self.attempt)

    @property
    def source_ids(self) -> list[int]:
        """The rows whose finished image this row takes as an input."""
        ids = [i for i in (self.init_image_id, self.reference_image_id) if i is not None]
        return ids + [i for i in control_image_ids(self.controls) if i not in ids]


def control_image_ids(controls: str | None) -> list[int]:
    """The row ids a row's `controls` names (`image_id`), read leniently: what is malformed here is left
    to validation's sentence (queue/validation.py)."""
    if not controls:
        return []
    try:
        entries = json.loads(controls)
    except (RecursionError, ValueError):
        return []
    if not isinstance(entries, list):
        return []
    ids = [entry.get("image_id") for entry in entries[:CONTROLS_READ_MAX] if isinstance(entry, dict)]
    return list(dict.fromkeys(i for i in ids if isinstance(i, int) and not isinstance(i, bool) and 0 < i < 2**31))


CONTROLS_READ_MAX = 8  # db/columns.py's CONTROLS_MAX; more is refused by validation


@dataclass(frozen=True, slots=True)
class SourceRow:
    """A row named by another row's init_image_id or reference_image_id (images_source_images)."""

    id: int
    status: str
    base64: str | None
    output_path: str | None
    output_url: str | None
    error: str | None


@dataclass(frozen=True, slots=True)
class RemoteTask:
    """A row in `Generate` whose remote task is due for a poll, now owned by this daemon."""

    id: int
    attempt: int
    task_id: str
    submitted_at: datetime | None
    backend: str
    format: str | None = None
    quality: int | None = None

    @property
    def claim(self) -> Claim:
        """format and quality were checked before the submit; made wrong since, they are ignored (the image
        is kept as the backend made it) rather than failing a result that cannot be fetched again."""
        try:
            output = parse_output_format(self.format, self.quality)
        except BadInput:
            output = None
        return Claim(self.id, self.attempt, output)


@dataclass(frozen=True, slots=True)
class ModelPreference:
    """For the claim's model affinity: the models loaded ('' is the default model), and how long a
    row of another model may be passed over (IMAGEND_MODEL_SWITCH_SECONDS)."""

    loaded: tuple[str, ...]
    switch_seconds: float


@dataclass(frozen=True, slots=True)
class Finished:
    """One result for images_mark_done."""

    claim: Claim
    base64: str | None  # None: kept only in storage (IMAGEND_STORE_BASE64=false)
    seed: int | None
    output_path: str | None
    generation_seconds: float | None
    warning: str | None = None
    output_url: str | None = None
    thumbnail_url: str | None = None
    thumbnail: str | None = None  # base64 WebP, when there is no storage target
    format: str | None = None
    # What made the image (backends.base.Image), written where the row left the column NULL.
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    spooled: bool = False  # the store refused it: kept in the row until the spool writes it there
    # A row of n > 1 images: each one's index, seed and where it is (JSON text for the `images` column), and
    # the URLs stored for images 2..n (deleted with the rest when the row was cancelled meanwhile).
    images: str | None = None
    other_urls: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Beat:
    """What a heartbeat answers (daemons_heartbeat)."""

    rescue_in: float | None  # seconds until a rescue is due (None: none in sight; <= 0: now)
    work_waiting: bool  # idle, and a row it could claim waits past a wake-up's time: claim now
    fleet_default: str | None = None  # the oldest live daemon's IMAGEND_BACKEND: what a NULL backend means
    webhooks_due: bool = False  # webhook events wait in the outbox (the webhook thread is poked)


@dataclass(frozen=True, slots=True)
class Spooled:
    """A finished row whose image waits in the row for the store (images_spooled_batch)."""

    id: int
    base64: str
    format: str | None
    thumbnail: str | None


@dataclass(frozen=True, slots=True)
class Expired:
    """One row retention deleted, with where its objects were (images_expire)."""

    id: int
    output_url: str | None
    thumbnail_url: str | None
    output_path: str | None
    image_urls: list[str] | None = None  # a row of n > 1 images: every image's and thumbnail's URL


@dataclass(frozen=True, slots=True)
class PresetRow:
    """A named recipe of imagend_presets (docs/presets.md), as stored: loras and post as JSON text."""

    name: str
    prompt: str | None = None  # a template with {prompt}
    negative_prompt: str | None = None
    style: str | None = None
    width: int | None = None
    height: int | None = None
    model: str | None = None
    loras: str | None = None
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    n: int | None = None
    post: str | None = None


@dataclass(frozen=True, slots=True)
class Exportable:
    """A finished row whose image is only in its base64 (images_export_batch)."""

    id: int
    base64: str
    format: str | None


@dataclass(frozen=True, slots=True)
class Rescued:
    """One row images_rescue took back from a dead or stuck owner."""

    id: int
    status: str
    backend: str | None
    old_owner: str | None
    begun: bool  # work on it had begun (otherwise nothing was charged)
    crashed: bool  # its owner died while generating it: a crash, not an attempt
    crashes: int
    error: str | None


@dataclass(frozen=True, slots=True)
class Wakeups:
    """Seconds from now until the next generator / processor work (negative: due already)."""

    generator: float | None
    processor: float | None


@dataclass(frozen=True, slots=True)
class UnservedRows:
    """Waiting rows for one backend a daemon does not serve (images_unserved)."""

    backend: str
    rows: int
    oldest_waiting_seconds: float
    daemons_serving: int  # running daemons (a heartbeat within dead_after) that serve this backend


@dataclass(frozen=True, slots=True)
class DaemonInfo:
    """What a daemon says of itself in imagend_daemons."""

    host: str
    pid: int
    version: str
    backends: list[str]
    device: str | None = None
    model: str | None = None


# -- the operator's side (db/operations.py) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pause:
    backend: str  # '*': every backend
    paused_at: datetime
    paused_by: str | None


@dataclass(frozen=True, slots=True)
class FleetDaemon:
    """A running daemon, as its liveness heartbeat describes it."""

    owner: str
    host: str
    pid: int
    version: str
    backends: list[str]
    device: str | None
    model: str | None
    started_at: datetime
    heartbeat_at: datetime
    rows_held: int
    working: int


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """What one scrape reads, in one round trip."""

    counts: list[tuple[str, str | None, int]]  # (status, backend (None: the default), rows)
    oldest_waiting: dict[str | None, float]  # backend -> seconds
    paused: list[Pause]
    daemons: list[FleetDaemon]
