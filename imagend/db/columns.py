"""The one table of producer columns: each column a producer may write, declared once (its SQL type,
its JSON type, its range or choices, who writes it, its one-line doc).

Derived from it: the claim's column list (queries.sql's `{claimed_columns}`), validation's type and
range checks, the HTTP API's body checks and INSERTABLE, and the OpenAPI properties. Adding a
producer column is: schema.sql, a line here, and the code that uses the value. The choices shared by
several subsystems live here too (style names; backend names from config/backends.py), so that no
subsystem imports another to learn them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from imagend.config.backends import BACKEND_NAMES, REMOTE_BACKENDS
from imagend.errors import BadInput
from imagend.images.formats import FORMAT_ALIASES, FORMATS, QUALITY_RANGE

# -- choices ---------------------------------------------------------------------------------------

# A row's `backend`: one of config/backends.py's names (settings read them too).
# Fusion Brain's style names, which the Go service passed on, so producers moving between backends
# keep working. Fusion Brain sends the name; the local backend applies a prompt template (its
# options.STYLE_TEMPLATES, one per name); the placeholder only checks it.
STYLE_NAMES: tuple[str, ...] = ("DEFAULT", "KANDINSKY", "UHD", "ANIME")
TASKS: tuple[str, ...] = ("upscale", "video")  # the others are inferred: text-to-image, image-to-image, inpainting
# Video rows (docs/video.md): video/presets.py's names, which db may not import; tests/unit/test_video.py holds
# them equal.
VIDEO_PRESETS: tuple[str, ...] = ("standard", "hd", "ultra")
VIDEO_ASPECTS: tuple[str, ...] = ("16:9", "9:16", "1:1")
BACKGROUND_AUDIO_MAX_CHARS = 70_000_000  # base64 of IMAGEND_VIDEO_BACKGROUND_MAX_BYTES's default, 50 MiB

# -- limits ----------------------------------------------------------------------------------------

PROMPT_MAX_CHARS = 999  # the Go service's cut; longer prompts are cut with a warning
MAX_SIDE_PX = 8192  # beyond any backend; each backend narrows this further
STEPS_RANGE = (1, 200)
GUIDANCE_RANGE = (0.0, 50.0)
SEED_MAX = 2**63 - 1
INT4_MAX = 2**31 - 1  # INTEGER columns: ids, priority, max_attempts
# Every text a producer writes is bounded. The negative prompt as Fusion Brain bounds it; names
# (style, scheduler, model) are short words.
NEGATIVE_PROMPT_MAX_CHARS = 1000
NAME_MAX_CHARS = 64
UPSCALE_FACTORS = (2.0, 4.0)
REFERENCE_SCALE_RANGE = (0.0, 2.0)
LORA_WEIGHT_RANGE = (-4.0, 4.0)
LORAS_MAX = 8
ECHO_MAX_CHARS = 80  # what an error quotes of a producer's value
OWNER_MAX_CHARS = 200  # schema_owners.sql's imagend_owner_problem says the same
CALLBACK_URL_MAX_CHARS = 2048
# ControlNet and the hires fix (docs/local.md).
CONTROLS_MAX = 8
CONTROL_STRENGTH_RANGE = (0.0, 2.0)  # controlnet_conditioning_scale, as A1111's "Control Weight" slider
CONTROL_TYPES: tuple[str, ...] = ("canny", "depth", "pose", "lineart", "softedge", "scribble", "normal", "seg",
                                  "mlsd", "tile", "none")  # canny is drawn here; the others come drawn
HR_SCALE_RANGE = (1.0, 4.0)  # above 1: A1111's slider goes to 4
HR_UPSCALERS: tuple[str, ...] = ("latent", "lanczos", "nearest", "upscaler")  # upscaler: IMAGEND_UPSCALER
HR_DEFAULT_STRENGTH = 0.7  # A1111's denoising strength for the hires pass
HR_DEFAULT_UPSCALER = "latent"  # A1111's default hr_upscaler ("Latent")
IMAGES_PER_ROW_MAX = 8  # a row's `n`: as A1111's batch_size in its UI


def shown(number: float | None) -> str:
    """A limit or value as an error writes it: integers whole, other numbers short (0.5, 1e+03)."""
    return str(number) if isinstance(number, int) else f"{number:g}"


class Kind(StrEnum):
    """The JSON type a column takes over HTTP (and the Python type it is read as)."""

    TEXT = "string"
    INTEGER = "integer"
    NUMBER = "number"
    OBJECT = "object"
    ARRAY = "array"
    TIME = "date-time"
    IMAGE = "base64"  # a base64 image in a text column


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    sql_type: str
    kind: Kind
    doc: str
    low: float | None = None
    high: float | None = None
    low_exclusive: bool = False
    max_chars: int | None = None
    choices: tuple[Any, ...] | None = None
    local: bool = False  # the local backend's inputs: the other backends refuse them by name
    claimed: bool = True  # read by the claim (images_claim_batch's RETURNING)
    default_sql: str | None = None  # NULL from the API means this (a NOT NULL column's default)
    openapi: dict[str, Any] = field(default_factory=dict)  # what OpenAPI says beyond type, range, choices

    @property
    def select(self) -> str:
        """The claim's expression: JSON as text, decoded per row in validation.py, so JSON that
        Postgres accepts but Python cannot read fails its own row, not the batch. An image column
        as its length only (`<name>_chars`): the text (up to megabytes a row) is fetched per row when
        it is decoded, after the length was checked, never for a whole batch at once."""
        if self.kind is Kind.IMAGE:
            return f"NULL::text AS {self.name}, octet_length(i.{self.name}) AS {self.name}_chars"
        return f"i.{self.name}::text AS {self.name}" if self.sql_type == "JSONB" else f"i.{self.name}"

    @property
    def claimed_fields(self) -> tuple[str, ...]:
        """ClaimedRow's fields for this column."""
        return (self.name, f"{self.name}_chars") if self.kind is Kind.IMAGE else (self.name,)

    @property
    def insert_value(self) -> str:
        value = f"%({self.name})s::{self.sql_type.lower()}"
        return f"COALESCE({value}, {self.default_sql})" if self.default_sql else value

    def in_range(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        above = self.low is None or (value > self.low if self.low_exclusive else value >= self.low)
        return above and (self.high is None or value <= self.high)

    def range_text(self) -> str:
        if self.low_exclusive:
            return f"above {shown(self.low)} and at most {shown(self.high)}"
        return f"between {shown(self.low)} and {shown(self.high)}"

    def range_error(self, value: float, unit: str = "") -> str | None:
        """The sentence a value out of this column's range gets (None: in range)."""
        return None if self.in_range(value) else f"{self.name} must be {self.range_text()}{unit}, got {shown(value)}"


    def json_schema(self) -> dict[str, Any]:
        """This column's OpenAPI property (nullable: JSON null means the daemon's default)."""
        kind = {Kind.TIME: "string", Kind.IMAGE: "string"}.get(self.kind, self.kind.value)
        schema: dict[str, Any] = {"type": [kind, "null"]}
        if self.kind is Kind.TIME:
            schema["format"] = "date-time"
        if self.kind is Kind.IMAGE:
            schema |= {"minLength": 1, "contentEncoding": "base64"}
        if self.choices is not None:
            schema["enum"] = list(self.choices)
        elif self.low is not None:
            schema["exclusiveMinimum" if self.low_exclusive else "minimum"] = self.low
        if self.high is not None and self.choices is None:
            schema["maximum"] = self.high
        if self.max_chars is not None and self.kind is Kind.TEXT and self.choices is None:
            schema["maxLength"] = self.max_chars
        return schema | self.openapi | {"description": self.doc}


def _int(low: int, high: int) -> dict[str, Any]:
    return {"low": low, "high": high}


PRODUCER_COLUMNS: tuple[Column, ...] = (
    Column("prompt", "TEXT", Kind.TEXT, f"Required. Cut at {PROMPT_MAX_CHARS} characters by the daemon "
           "(`warning` says so)", max_chars=10 * PROMPT_MAX_CHARS, openapi={"type": "string", "minLength": 1}),
    Column("negative_prompt", "TEXT", Kind.TEXT, "What to avoid", max_chars=10 * NEGATIVE_PROMPT_MAX_CHARS),
    Column("style", "TEXT", Kind.TEXT, "Case-insensitive", choices=STYLE_NAMES, max_chars=NAME_MAX_CHARS),
    Column("width", "INTEGER", Kind.INTEGER, "Pixels (default DEFAULT_IMAGE_WIDTH)", **_int(1, MAX_SIDE_PX)),
    Column("height", "INTEGER", Kind.INTEGER, "Pixels (default DEFAULT_IMAGE_HEIGHT)", **_int(1, MAX_SIDE_PX)),
    Column("seed", "BIGINT", Kind.INTEGER, "A fixed seed; null: random (the local backend writes it back)",
           **_int(0, SEED_MAX)),
    Column("steps", "INTEGER", Kind.INTEGER, "Diffusion steps", **_int(*STEPS_RANGE)),
    Column("guidance", "DOUBLE PRECISION", Kind.NUMBER, "Classifier-free guidance", low=GUIDANCE_RANGE[0],
           high=GUIDANCE_RANGE[1]),
    Column("scheduler", "TEXT", Kind.TEXT, "The sampler (docs/local.md)", max_chars=NAME_MAX_CHARS),
    Column("backend", "TEXT", Kind.TEXT, "null: the daemon's IMAGEND_BACKEND", choices=BACKEND_NAMES,
           max_chars=NAME_MAX_CHARS),
    Column("priority", "INTEGER", Kind.INTEGER, "Higher first (default 0)", claimed=False, default_sql="0",
           **_int(-INT4_MAX - 1, INT4_MAX)),
    Column("params", "JSONB", Kind.OBJECT, "Yours: kept with the row"),
    # The customer (docs/owners.md): plans, fair share, usage. Read by the owners' triggers, not the claim.
    Column("owner", "TEXT", Kind.TEXT, "The customer this row is for (docs/owners.md); null: the shared "
           "anonymous owner. Set by the API itself with an owner's key", max_chars=OWNER_MAX_CHARS, claimed=False,
           openapi={"minLength": 1, "pattern": "^[^\\x00-\\x1f\\x7f]*$"}),
    Column("max_attempts", "INTEGER", Kind.INTEGER, "Attempts before Failed (default DEFAULT_MAX_ATTEMPTS)",
           **_int(1, INT4_MAX)),
    Column("run_after", "TIMESTAMPTZ", Kind.TIME, "Not before this time (with a time zone); default now",
           max_chars=NAME_MAX_CHARS, claimed=False, default_sql="now()"),
    Column("format", "TEXT", Kind.TEXT, "png, webp or jpeg; null: as the backend made it",
           choices=(*FORMATS, *FORMAT_ALIASES), max_chars=NAME_MAX_CHARS),
    Column("quality", "INTEGER", Kind.INTEGER, "1-100 for webp and jpeg", **_int(*QUALITY_RANGE)),
    # Several images per row and presets (docs/local.md, docs/presets.md): every backend reads them.
    Column("n", "INTEGER", Kind.INTEGER, f"How many images (1-{IMAGES_PER_ROW_MAX}; default 1): one batch with "
           "consecutive seeds, listed in `images`", **_int(1, IMAGES_PER_ROW_MAX)),
    Column("preset", "TEXT", Kind.TEXT, "A preset's name (imagend -presets): its recipe fills what the row "
           "leaves NULL", max_chars=NAME_MAX_CHARS, openapi={"minLength": 1}),
    # The local backend's inputs (docs/local.md); the other backends fail a row that sets them.
    Column("model", "TEXT", Kind.TEXT, "A checkpoint named in IMAGEND_MODELS; null: IMAGEND_MODEL",
           max_chars=NAME_MAX_CHARS, local=True, openapi={"minLength": 1}),
    Column("loras", "JSONB", Kind.ARRAY, "LoRAs applied to this row, each name once", local=True,
           openapi={"maxItems": LORAS_MAX, "items": {
               "type": "object", "required": ["name"], "additionalProperties": False, "properties": {
                   "name": {"type": "string", "maxLength": NAME_MAX_CHARS, "description": "A file in "
                            "IMAGEND_LORA_DIR, without its extension (letters, digits, . _ - space)"},
                   "weight": {"type": "number", "minimum": LORA_WEIGHT_RANGE[0], "maximum": LORA_WEIGHT_RANGE[1],
                              "description": "Default 1"}}}}),
    Column("task", "TEXT", Kind.TEXT, "null: inferred (text-to-image, image-to-image with an init image, "
           "inpainting with a mask too)", choices=TASKS, max_chars=NAME_MAX_CHARS, local=True),
    Column("init_image", "TEXT", Kind.IMAGE, "Image-to-image (or inpainting, or upscale) source: a base64 PNG, "
           "JPEG or WebP", local=True),
    Column("init_image_id", "INTEGER", Kind.INTEGER, "Another row whose finished image is the init image; "
           "this row waits until that row ends", local=True, **_int(1, INT4_MAX)),
    Column("strength", "REAL", Kind.NUMBER, "How much of the init image is repainted (needs an init image)",
           low=0.0, high=1.0, low_exclusive=True, local=True),
    Column("mask_image", "TEXT", Kind.IMAGE, "Inpainting: white is repainted; the init image's size "
           "(needs an init image)", local=True),
    Column("reference_image", "TEXT", Kind.IMAGE, "IP-Adapter reference: a base64 PNG, JPEG or WebP", local=True),
    Column("reference_image_id", "INTEGER", Kind.INTEGER, "Another row whose finished image is the reference; "
           "this row waits until that row ends", local=True, **_int(1, INT4_MAX)),
    Column("reference_scale", "REAL", Kind.NUMBER, "How strongly the reference steers (needs a reference image)",
           low=REFERENCE_SCALE_RANGE[0], high=REFERENCE_SCALE_RANGE[1], local=True),
    Column("upscale", "REAL", Kind.NUMBER, "The factor, with task 'upscale' only", choices=UPSCALE_FACTORS,
           local=True),
    Column("controls", "JSONB", Kind.ARRAY, "ControlNet: the control images, each with its type, ControlNet "
           "(IMAGEND_CONTROLNETS), strength and start/end", local=True,
           openapi={"maxItems": CONTROLS_MAX, "items": {
               "type": "object", "required": ["type"], "additionalProperties": False, "properties": {
                   "image": {"type": "string", "description": "A base64 PNG, JPEG or WebP"},
                   "image_id": {"type": "integer", "minimum": 1, "description": "A finished row's (an upload's) "
                                "image instead"},
                   "type": {"type": "string", "enum": list(CONTROL_TYPES), "description": "canny: edges drawn "
                            "from the image here; the others: the image is already the map"},
                   "model": {"type": "string", "maxLength": NAME_MAX_CHARS, "description": "A name of "
                             "IMAGEND_CONTROLNETS; default: the only one"},
                   "strength": {"type": "number", "minimum": CONTROL_STRENGTH_RANGE[0],
                                "maximum": CONTROL_STRENGTH_RANGE[1], "description": "Default 1"},
                   "start": {"type": "number", "minimum": 0, "maximum": 1, "description": "Default 0"},
                   "end": {"type": "number", "minimum": 0, "maximum": 1, "description": "Default 1"},
                   "low": {"type": "number", "description": "canny's low threshold (default 100)"},
                   "high": {"type": "number", "description": "canny's high threshold (default 200)"}}}}),
    Column("hr_scale", "REAL", Kind.NUMBER, "Hires fix: generate at width x height, upscale by this, then "
           "image-to-image", low=HR_SCALE_RANGE[0], high=HR_SCALE_RANGE[1], low_exclusive=True, local=True),
    Column("hr_steps", "INTEGER", Kind.INTEGER, "Hires fix's second pass steps (default: steps; needs hr_scale)",
           local=True, **_int(*STEPS_RANGE)),
    Column("hr_strength", "REAL", Kind.NUMBER, "Hires fix's denoising strength (default 0.7; needs hr_scale)",
           low=0.0, high=1.0, low_exclusive=True, local=True),
    Column("hr_upscaler", "TEXT", Kind.TEXT, "Hires fix's upscaler (default latent; needs hr_scale)",
           choices=HR_UPSCALERS, max_chars=NAME_MAX_CHARS, local=True),
    # A video row's (task 'video', docs/video.md): read by queue/videos.py, never by the claim.
    Column("scenes", "JSONB", Kind.ARRAY, "A video's storyboard: [{prompt, seconds, narration?, motion?, "
           "transition?}]; null with task 'video': written from the prompt by IMAGEND_SCRIPT_URL", claimed=False,
           openapi={"maxItems": 200, "items": {"type": "object", "required": ["prompt", "seconds"]}}),
    Column("video_preset", "TEXT", Kind.TEXT, "standard (1080p30 H.264), hd (1080p60 H.264) or ultra (2160p60 "
           "H.265); default standard", choices=VIDEO_PRESETS, max_chars=NAME_MAX_CHARS, claimed=False),
    Column("aspect", "TEXT", Kind.TEXT, "A video's aspect: 16:9 (default), 9:16 or 1:1", choices=VIDEO_ASPECTS,
           max_chars=NAME_MAX_CHARS, claimed=False),
    Column("background_audio", "TEXT", Kind.TEXT, "A video's background audio, base64 (MP3, WAV, AAC, Ogg), "
           "mixed under the narration", max_chars=BACKGROUND_AUDIO_MAX_CHARS, claimed=False),
    # A web app's (docs/operations.md, "Webhooks"): read by the outbox trigger, never by the claim.
    Column("callback_url", "TEXT", Kind.TEXT, "An http(s) URL the daemon POSTs the row's end to (a signed "
           "webhook); private, loopback and link-local addresses only when IMAGEND_WEBHOOK_ALLOW_HOSTS lists them",
           max_chars=CALLBACK_URL_MAX_CHARS, claimed=False, openapi={"format": "uri"}),
)
COLUMNS: dict[str, Column] = {column.name: column for column in PRODUCER_COLUMNS}

# The columns images_insert takes: what a producer may INSERT (docs/producers.md).
INSERTABLE: tuple[str, ...] = tuple(COLUMNS)
# Local-backend columns: what validation's image_inputs_of reads and the other backends refuse.
LOCAL_COLUMNS: tuple[str, ...] = tuple(c.name for c in PRODUCER_COLUMNS if c.local)
# Base64 images a producer hands in (images/inputs.py decodes them when the row is claimed).
IMAGE_COLUMNS: tuple[str, ...] = tuple(c.name for c in PRODUCER_COLUMNS if c.kind is Kind.IMAGE)
# Columns the daemon writes: a producer never sets them (docs/producers.md).
DAEMON_COLUMNS = frozenset({
    "id", "status", "base64", "error", "warning", "progress", "attempts", "crashes", "locked_by",
    "lease_until", "uuid", "submitted_at", "started_at", "finished_at", "generation_seconds",
    "output_path", "output_url", "thumbnail_url", "thumbnail", "created_at", "updated_at", "preview",
    "parent_id", "scene_index", "phase", "video_seconds", "cost",  # video rows and their scenes (docs/video.md)
    "images", "effective_prompt",  # several images per row, presets
})


def claimed_columns() -> str:
    """The producer's columns as images_claim_batch returns them (ClaimedRow's fields, by name)."""
    return ", ".join(column.select for column in PRODUCER_COLUMNS if column.claimed)


def claimed_types() -> str:
    """claimed_columns with their SQL types: imagend_claim_batch's result (schema_claim.sql)."""
    def typed(column: Column) -> str:
        if column.kind is Kind.IMAGE:
            return f"{column.name} TEXT, {column.name}_chars INTEGER"
        return f"{column.name} {'TEXT' if column.sql_type == 'JSONB' else column.sql_type}"

    return ", ".join(typed(column) for column in PRODUCER_COLUMNS if column.claimed)


def insert_columns() -> str:
    return ", ".join(COLUMNS)


def insert_values() -> str:
    """images_insert's VALUES: each column cast to its SQL type, NULL taking a NOT NULL column's default."""
    return ", ".join(column.insert_value for column in PRODUCER_COLUMNS)


def check_style(style: str | None) -> str | None:
    """The style's canonical name (case-insensitive), or None for none; BadInput names the choices.
    The one check of imagend's style names: the API, the placeholder and the local backend call it
    (Fusion Brain checks the list its API publishes)."""
    if style is None:
        return None
    name = style.strip().upper()
    if name not in STYLE_NAMES:
        shown = style if len(style) <= ECHO_MAX_CHARS else style[:ECHO_MAX_CHARS] + "…"
        raise BadInput(f"unknown style {shown!r}; use one of: {', '.join(STYLE_NAMES)} (or NULL)")
    return name


__all__ = ["BACKEND_NAMES", "REMOTE_BACKENDS"]  # re-exported: a row's backend choices
