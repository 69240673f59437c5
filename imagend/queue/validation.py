"""Turn a claimed row into a Request: check what the producer wrote, apply defaults.

Anything wrong raises BadInput with a sentence the producer can act on; the row then
ends Failed with that sentence in `error`, and the daemon goes on.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from imagend.backends.base import Control, Hires, ImageInputs, Lora, Request
from imagend.config.settings import Settings
from imagend.db.columns import (
    BACKEND_NAMES,
    COLUMNS,
    CONTROL_STRENGTH_RANGE,
    CONTROL_TYPES,
    CONTROLS_MAX,
    ECHO_MAX_CHARS,
    HR_DEFAULT_STRENGTH,
    HR_DEFAULT_UPSCALER,
    HR_UPSCALERS,
    LORA_WEIGHT_RANGE,
    LORAS_MAX,
    NAME_MAX_CHARS,
    NEGATIVE_PROMPT_MAX_CHARS,
    PROMPT_MAX_CHARS,
    TASKS,
    UPSCALE_FACTORS,
)
from imagend.db.rows import ClaimedRow, SourceRow
from imagend.errors import BadInput, clip
from imagend.images.canny import CANNY_HIGH, CANNY_LOW, THRESHOLD_RANGE, canny
from imagend.images.formats import parse_output_format
from imagend.images.inputs import check_base64_length, decode_base64_image, decode_base64_mask, decode_image_bytes
from imagend.queue.source_images import source_image_bytes

LORA_NAME = re.compile(r"[\w][\w .-]{0,63}")  # a file name in IMAGEND_LORA_DIR, never a path


@dataclass(frozen=True, slots=True)
class Validated:
    request: Request
    warning: str | None  # normalisation the producer should know about (written to `warning`)


def truncate_prompt(prompt: str, limit: int = PROMPT_MAX_CHARS) -> str:
    """Cut to `limit` characters (code points, as the Go service cut runes), never mid-character."""
    return prompt[:limit]


def _check_range(name: str, value: float | None, unit: str = "") -> None:
    """The column's range, from the one table of producer columns (db/columns.py)."""
    message = None if value is None else COLUMNS[name].range_error(value, unit)
    if message is not None:
        raise BadInput(message)


def decode_params(text: str | None) -> dict[str, Any]:
    """The row's `params` (JSON text) as a dict; BadInput for anything Python cannot read or that is
    not an object. json.loads raises RecursionError on deep nesting and ValueError on an integer
    past Python's int-string limit, both of which Postgres accepts."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except (RecursionError, ValueError) as exc:
        raise BadInput(f"params cannot be read: {type(exc).__name__}: {clip(str(exc), ECHO_MAX_CHARS)}") from None
    if not isinstance(value, dict):
        raise BadInput(f"params must be a JSON object, got {type(value).__name__}: {clip(text, ECHO_MAX_CHARS)!r}")
    return value


def validate_row(
    row: ClaimedRow,
    settings: Settings,
    sources: Mapping[int, SourceRow] | None = None,
    read_stored: Callable[[str], bytes] | None = None,
    read_input: Callable[[int, str], str | None] | None = None,
) -> Validated:
    """`sources`: the rows named by the row's *_image_id (images_source_images); `read_stored` reads a
    stored image by URL (the daemon's storage), for a source whose image is not in its row;
    `read_input` reads one of the row's own image columns (the claim gives only their lengths)."""
    if row.backend not in BACKEND_NAMES:
        raise BadInput(f"unknown backend {row.backend!r}; use one of: {', '.join(BACKEND_NAMES)}")
    prompt = row.prompt or ""
    if not prompt.strip():
        raise BadInput("prompt is empty")
    warnings = []
    if len(prompt) > PROMPT_MAX_CHARS:
        warnings.append(f"prompt truncated from {len(prompt)} to {PROMPT_MAX_CHARS} characters")
        prompt = truncate_prompt(prompt)
    params = decode_params(row.params)
    if row.max_attempts is not None and row.max_attempts < 1:
        raise BadInput(f"max_attempts must be at least 1, got {row.max_attempts}")
    width = settings.default_width if row.width is None else row.width
    height = settings.default_height if row.height is None else row.height
    _check_range("width", width, " pixels")
    _check_range("height", height, " pixels")
    _check_range("steps", row.steps)
    _check_range("guidance", row.guidance)
    _check_range("seed", row.seed)
    _check_range("n", row.n)  # several images per row: 1-8
    negative = row.negative_prompt if row.negative_prompt is not None else settings.default_negative_prompt
    if negative is not None and len(negative) > NEGATIVE_PROMPT_MAX_CHARS:
        # Unbounded, it held a GPU for minutes of prompt parsing and encoding.
        warnings.append(f"negative_prompt truncated from {len(negative)} to {NEGATIVE_PROMPT_MAX_CHARS} characters")
        negative = truncate_prompt(negative, NEGATIVE_PROMPT_MAX_CHARS)
    for name, value in (("style", row.style), ("scheduler", row.scheduler)):
        if value is not None and len(value) > NAME_MAX_CHARS:
            echoed = clip(value, ECHO_MAX_CHARS)
            raise BadInput(f"{name} is {len(value)} characters long, at most {NAME_MAX_CHARS}: {echoed!r}")
    output = parse_output_format(row.format, row.quality)
    inputs = image_inputs_of(row, sources or {}, read_stored, read_input)
    if inputs.size_from_init and inputs.init_image is not None:
        width, height = inputs.init_image.size  # the backend rounds it (image_inputs.fit_size)
    request = Request(
        id=row.id,
        prompt=prompt,
        negative_prompt=negative or None,
        style=(row.style or settings.default_style or None),
        width=width,
        height=height,
        seed=row.seed,
        steps=row.steps,
        guidance=row.guidance,
        scheduler=row.scheduler or None,
        params=params,
        attempt=row.attempt,
        output=output,
        inputs=inputs,
        n=row.n or 1,
    )
    return Validated(request, "; ".join(warnings) or None)


def image_inputs_of(
    row: ClaimedRow,
    sources: Mapping[int, SourceRow],
    read_stored: Callable[[str], bytes] | None,
    read_input: Callable[[int, str], str | None] | None = None,
) -> ImageInputs:
    """The row's model, LoRAs, images and their settings, checked; images decoded (image_inputs.py)."""
    if row.model is not None and not 0 < len(row.model) <= NAME_MAX_CHARS:
        raise BadInput(
            f"model must be a name of 1 to {NAME_MAX_CHARS} characters, got {clip(row.model, ECHO_MAX_CHARS)!r}"
        )
    task = row.task.strip().lower() if row.task is not None else None
    if task is not None and task not in TASKS:
        raise BadInput(
            f"unknown task {clip(row.task or '', ECHO_MAX_CHARS)!r}; use NULL (inferred) or one of: {', '.join(TASKS)}"
        )
    def own(column: str, text: str | None, chars: int | None) -> str | None:
        """The row's own image text: as carried, or read now that its length passed the check."""
        if text is not None or chars is None:
            return text
        check_base64_length(chars, column)
        return read_input(row.id, column) if read_input is not None else None

    init_set = row.init_image is not None or row.init_image_chars is not None
    reference_set = row.reference_image is not None or row.reference_image_chars is not None
    for column, images in (
        ("init_image", (init_set, row.init_image_id)),
        ("reference_image", (reference_set, row.reference_image_id)),
    ):
        if images[0] and images[1] is not None:
            raise BadInput(f"{column} and {column}_id are both set; set one")
    init_text = own("init_image", row.init_image, row.init_image_chars)
    init = _image(init_text, row.init_image_id, "init_image", row.id, sources, read_stored)
    reference_text = own("reference_image", row.reference_image, row.reference_image_chars)
    reference = _image(reference_text, row.reference_image_id, "reference_image", row.id, sources, read_stored)
    mask_text = own("mask_image", row.mask_image, row.mask_image_chars)
    mask = decode_base64_mask(mask_text, "mask_image") if mask_text is not None else None
    if mask is not None and init is None:
        raise BadInput("mask_image needs an init image (init_image or init_image_id) to paint into")
    if mask is not None and init is not None and mask.size != init.size:
        raise BadInput(
            f"mask_image is {mask.size[0]}x{mask.size[1]} but the init image is "
            f"{init.size[0]}x{init.size[1]}; they must match"
        )
    _check_range("strength", row.strength)
    if row.strength is not None and init is None:
        raise BadInput("strength needs an init image (init_image or init_image_id)")
    _check_range("reference_scale", row.reference_scale)
    if row.reference_scale is not None and reference is None:
        raise BadInput("reference_scale needs a reference image (reference_image or reference_image_id)")
    if task == "upscale":
        if init is None:
            raise BadInput("task 'upscale' needs an init image (init_image or init_image_id) to upscale")
        if row.upscale not in UPSCALE_FACTORS:
            raise BadInput(
                f"upscale must be {' or '.join(f'{f:g}' for f in UPSCALE_FACTORS)} for task 'upscale', "
                f"got {row.upscale}"
            )
        if (row.n or 1) > 1:  # the x4 model has nothing to vary but its noise: one image, as A1111's extras tab
            raise BadInput(f"task 'upscale' makes one image per row (n = 1), got n = {row.n}")
    elif row.upscale is not None:
        raise BadInput("upscale is only read with task 'upscale'")

    def control_image(index: int, text: str | None, source_id: int | None) -> Any:
        column = f"controls[{index}].image"
        return _image(text, source_id, column, row.id, sources, read_stored)

    controls = parse_controls(row.controls, control_image)
    if controls and (init is not None or reference is not None or task is not None):
        raise BadInput("controls take text-to-image rows only here (no init_image, mask_image, reference_image or "
                       "task)")
    hires = _hires(row)
    if hires is not None and (init is not None or reference is not None or task is not None):
        raise BadInput("hr_scale (the hires fix) is for text-to-image rows (no init_image, reference_image or task)")
    return ImageInputs(
        model=row.model,
        loras=parse_loras(row.loras),
        task=task,
        init_image=init,
        strength=row.strength,
        mask_image=mask,
        reference_image=reference,
        reference_scale=row.reference_scale,
        upscale=row.upscale,
        size_from_init=init is not None and row.width is None and row.height is None,
        controls=controls,
        hires=hires,
    )


def _hires(row: ClaimedRow) -> Hires | None:
    """The hires fix's columns, checked (the final size against IMAGEND_MAX_SIDE: the backend's)."""
    if row.hr_scale is None and row.hr_steps is None and row.hr_strength is None and row.hr_upscaler is None:
        return None  # most rows: nothing to check
    _check_range("hr_scale", row.hr_scale)
    _check_range("hr_steps", row.hr_steps)
    _check_range("hr_strength", row.hr_strength)
    if row.hr_scale is None:
        given = [name for name in ("hr_steps", "hr_strength", "hr_upscaler") if getattr(row, name) is not None]
        if given:
            raise BadInput(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} hr_scale (the hires fix)")
        return None
    upscaler = (row.hr_upscaler or HR_DEFAULT_UPSCALER).strip().lower()
    if upscaler not in HR_UPSCALERS:
        raise BadInput(f"unknown hr_upscaler {clip(row.hr_upscaler or '', ECHO_MAX_CHARS)!r}; "
                       f"use NULL ({HR_DEFAULT_UPSCALER}) or one of: {', '.join(HR_UPSCALERS)}")
    strength = HR_DEFAULT_STRENGTH if row.hr_strength is None else row.hr_strength
    return Hires(scale=row.hr_scale, steps=row.hr_steps, strength=strength, upscaler=upscaler)


CONTROL_KEYS = frozenset({"image", "image_id", "type", "model", "strength", "start", "end", "low", "high"})
CONTROL_EXAMPLE = '[{"image": "<base64>", "type": "canny", "model": "canny-xl", "strength": 0.8}]'


def parse_controls(
    text: str | None, image: Callable[[int, str | None, int | None], Any] | None = None
) -> tuple[Control, ...]:
    """The row's `controls` (JSON text) as Control values. `image(index, base64, row_id)` decodes an
    entry's image (None: only the shape is checked, as the HTTP API does); a canny entry's edges are drawn
    here (images/canny.py), off the device."""
    if text is None:
        return ()
    try:
        value = json.loads(text)
    except (RecursionError, ValueError) as exc:
        raise BadInput(f"controls cannot be read: {type(exc).__name__}") from None
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadInput(f"controls must be a JSON array like {CONTROL_EXAMPLE}, got {clip(text, ECHO_MAX_CHARS)}")
    if len(value) > CONTROLS_MAX:
        raise BadInput(f"controls lists {len(value)} control images; at most {CONTROLS_MAX}")
    controls = []
    for index, entry in enumerate(value):
        where = f"controls[{index}]"
        if not isinstance(entry, dict):
            raise BadInput(f"{where} must be an object like {CONTROL_EXAMPLE[1:-1]}, "
                           f"got {clip(json.dumps(entry), ECHO_MAX_CHARS)}")
        unknown = sorted(set(entry) - CONTROL_KEYS)
        if unknown:
            raise BadInput(f"{where}: unknown key {clip(unknown[0], ECHO_MAX_CHARS)!r}; "
                           f"a control takes: {', '.join(sorted(CONTROL_KEYS))}")
        kind = entry.get("type")
        if not isinstance(kind, str) or kind.strip().lower() not in CONTROL_TYPES:
            raise BadInput(f"{where}: unknown type {clip(json.dumps(kind), ECHO_MAX_CHARS)}; use one of: "
                           f"{', '.join(CONTROL_TYPES)} (canny is drawn from the image; bring the others drawn)")
        kind = kind.strip().lower()
        text_image, image_id = entry.get("image"), entry.get("image_id")
        if (text_image is None) == (image_id is None):
            raise BadInput(f"{where}: set one of image (base64) and image_id (a finished row or an upload)")
        if text_image is not None and not isinstance(text_image, str):
            raise BadInput(f"{where}.image must be base64 text, got a JSON {type(text_image).__name__}")
        if image_id is not None and (isinstance(image_id, bool) or not isinstance(image_id, int)
                                     or not 0 < image_id < 2**31):
            raise BadInput(f"{where}.image_id must be a row id, got {clip(json.dumps(image_id), ECHO_MAX_CHARS)}")
        model = entry.get("model")
        if model is not None and (not isinstance(model, str) or not LORA_NAME.fullmatch(model.strip())):
            raise BadInput(f"{where}.model must be a name of IMAGEND_CONTROLNETS, got "
                           f"{clip(json.dumps(model), ECHO_MAX_CHARS)}")
        strength = _control_number(entry, "strength", 1.0, where)
        start, end = _control_number(entry, "start", 0.0, where), _control_number(entry, "end", 1.0, where)
        if not CONTROL_STRENGTH_RANGE[0] <= strength <= CONTROL_STRENGTH_RANGE[1]:
            raise BadInput(f"{where}.strength must be between {CONTROL_STRENGTH_RANGE[0]:g} and "
                           f"{CONTROL_STRENGTH_RANGE[1]:g}, got {strength:g}")
        if not 0 <= start < end <= 1:
            raise BadInput(f"{where}: start and end are fractions of the steps, 0 <= start < end <= 1; "
                           f"got start {start:g}, end {end:g}")
        low, high = _control_number(entry, "low", CANNY_LOW, where), _control_number(entry, "high", CANNY_HIGH, where)
        if kind != "canny" and ("low" in entry or "high" in entry):
            raise BadInput(f"{where}: low and high are canny's thresholds; type {kind} takes its image as drawn")
        if not THRESHOLD_RANGE[0] <= low <= high <= THRESHOLD_RANGE[1]:
            raise BadInput(f"{where}: canny's thresholds must be {THRESHOLD_RANGE[0]} <= low <= high <= "
                           f"{THRESHOLD_RANGE[1]}, got low {low:g}, high {high:g}")
        picture = image(index, text_image, image_id) if image is not None else None
        if picture is not None and kind == "canny":
            picture = canny(picture, low, high)
        controls.append(Control(picture, kind, model.strip() if model else None, strength, start, end))
    return tuple(controls)


def _control_number(entry: dict[str, Any], key: str, default: float, where: str) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadInput(f"{where}.{key} must be a number, got {clip(json.dumps(value), ECHO_MAX_CHARS)}")
    return float(value)


def parse_loras(text: str | None) -> tuple[Lora, ...]:
    """`[{"name": "pixel-art", "weight": 0.8}, …]` (weight defaults to 1) as Lora values."""
    if text is None:
        return ()
    try:
        value = json.loads(text)
    except (RecursionError, ValueError) as exc:
        raise BadInput(f"loras cannot be read: {type(exc).__name__}") from None
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadInput(
            'loras must be a JSON array like [{"name": "pixel-art", "weight": 0.8}], '
            f"got {clip(text, ECHO_MAX_CHARS)}"
        )
    if len(value) > LORAS_MAX:
        raise BadInput(f"loras lists {len(value)} LoRAs; at most {LORAS_MAX}")
    loras = []
    for entry in value:
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or set(entry) - {"name", "weight"}:
            raise BadInput(
                'each LoRA is {"name": "<file name>", "weight": <number>}, '
                f"got {clip(json.dumps(entry), ECHO_MAX_CHARS)}"
            )
        name = entry["name"].strip()
        if not LORA_NAME.fullmatch(name):
            raise BadInput(
                f"LoRA name {clip(name, ECHO_MAX_CHARS)!r} is not a file name (letters, digits, . _ - and spaces)"
            )
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise BadInput(f"LoRA {name!r}: weight must be a number, got {clip(json.dumps(weight), ECHO_MAX_CHARS)}")
        if not LORA_WEIGHT_RANGE[0] <= weight <= LORA_WEIGHT_RANGE[1]:
            raise BadInput(
                f"LoRA {name!r}: weight must be between {LORA_WEIGHT_RANGE[0]:g} and "
                f"{LORA_WEIGHT_RANGE[1]:g}, got {weight:g}"
            )
        loras.append(Lora(name, float(weight)))
    if len({lora.name for lora in loras}) != len(loras):
        raise BadInput("loras names the same LoRA twice")
    return tuple(loras)


def _image(
    text: str | None,
    source_id: int | None,
    column: str,
    own_id: int,
    sources: Mapping[int, SourceRow],
    read_stored: Callable[[str], bytes] | None,
) -> Any:
    if text is not None:
        return decode_base64_image(text, column)
    if source_id is None:
        return None
    return decode_image_bytes(source_image_bytes(source_id, f"{column}_id", own_id, sources, read_stored), column)
