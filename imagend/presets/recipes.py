"""What a preset is and how a row takes it.

A preset (imagend_presets; `imagend -preset NAME key=value …`) holds a prompt template with `{prompt}`,
a negative prompt, size, model, LoRAs, steps, guidance, scheduler, style, n, and post-processing steps.
A row naming it (`preset = 'token'`) gets, for each of those columns it left NULL, the preset's value:
**what the row says wins**, the preset fills the rest, the daemon's defaults what is left. The prompt
is the exception: the template takes the row's prompt in place of `{prompt}` (a template without a row
prompt would make every row the same image). What the preset filled is written back to the row
(images_apply_preset), the expanded prompt in `effective_prompt`, so a row says how it was made.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from imagend.db.columns import COLUMNS, ECHO_MAX_CHARS, NAME_MAX_CHARS, NEGATIVE_PROMPT_MAX_CHARS, check_style
from imagend.db.rows import ClaimedRow, PresetRow
from imagend.errors import BadInput, clip
from imagend.images.formats import FORMAT_ALIASES
from imagend.images.post import PostStep, makes_transparency, parse_post

PLACEHOLDER = "{prompt}"
TEMPLATE_MAX_CHARS = 2000
# The keys a preset holds, as `imagend -preset NAME key=value` takes them (the row's columns of the same name).
PRESET_KEYS = ("prompt", "negative_prompt", "style", "width", "height", "model", "loras", "steps", "guidance",
               "scheduler", "n", "post")
# The row columns a preset fills where the row left them NULL (prompt and post are not columns of the row's own).
FILLED = ("negative_prompt", "style", "width", "height", "model", "loras", "steps", "guidance", "scheduler", "n")
CLEAR = ("none", "null", "")  # `key=none`: the preset leaves that column to the row and the daemon


@dataclass(frozen=True, slots=True)
class Resolved:
    """A claimed row with its preset applied (or as it was, with none)."""

    row: ClaimedRow
    post: tuple[PostStep, ...] = ()
    # images_apply_preset's values (None: the row names no preset, nothing to write back).
    written: dict[str, Any] | None = None


def parse_preset_values(pairs: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs of `imagend -preset` as the preset's column values (None: cleared). BadInput names
    the key and what it takes."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().lower()
        if not sep or key not in PRESET_KEYS:
            raise BadInput(f"preset values are key=value with a key among: {', '.join(PRESET_KEYS)}; got {pair!r}")
        values[key] = None if text.strip().lower() in CLEAR else check_value(key, text)
    return values


def check_value(key: str, text: str) -> Any:
    """One preset value from its text, checked as the row's column of the same name is."""
    if key == "prompt":
        if PLACEHOLDER not in text or len(text) > TEMPLATE_MAX_CHARS:
            raise BadInput(f"prompt is a template with {PLACEHOLDER} where the row's prompt goes (at most "
                           f"{TEMPLATE_MAX_CHARS} characters), got {clip(text, ECHO_MAX_CHARS)!r}")
        return text
    if key == "negative_prompt":
        if len(text) > NEGATIVE_PROMPT_MAX_CHARS:
            raise BadInput(f"negative_prompt is at most {NEGATIVE_PROMPT_MAX_CHARS} characters, got {len(text)}")
        return text
    if key == "style":
        return check_style(text)
    if key in ("model", "scheduler"):
        if not 0 < len(text.strip()) <= NAME_MAX_CHARS:
            raise BadInput(f"{key} is a name of 1 to {NAME_MAX_CHARS} characters, got {clip(text, ECHO_MAX_CHARS)!r}")
        return text.strip()
    if key in ("width", "height", "steps", "n", "guidance"):
        try:
            number: float = float(text) if key == "guidance" else int(text)
        except ValueError:
            raise BadInput(f"{key} must be a number, got {clip(text, ECHO_MAX_CHARS)!r}") from None
        problem = COLUMNS[key].range_error(number)
        if problem is not None:
            raise BadInput(problem)
        return number
    decoded = _json(key, text)
    if key == "loras":
        if not isinstance(decoded, list):
            raise BadInput(f'loras is a JSON array like [{{"name": "pixel-art", "weight": 0.8}}], got {text!r}')
        return json.dumps(decoded)
    return json.dumps([step.describe() for step in parse_post(decoded)])  # post


def _json(key: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        if key == "post":  # `post=token`: a name alone
            return [name.strip() for name in text.split(",")]
        raise BadInput(f"{key} must be JSON, got {clip(text, ECHO_MAX_CHARS)!r}") from None


def preset_names(rows: Sequence[ClaimedRow]) -> list[str]:
    """The presets a batch's rows name (one read for them all)."""
    return sorted({row.preset for row in rows if row.preset is not None})


def resolve(row: ClaimedRow, presets: Mapping[str, PresetRow]) -> Resolved:
    """`row` with its preset applied; BadInput for an unknown preset or one whose values cannot be read."""
    if row.preset is None:
        return Resolved(row)
    preset = presets.get(row.preset)
    if preset is None:
        raise BadInput(f"unknown preset {clip(row.preset, ECHO_MAX_CHARS)!r}: imagend -presets lists the presets "
                       "(an operator makes one with imagend -preset NAME key=value …)")
    try:
        post = parse_post(json.loads(preset.post) if preset.post else None)
    except (ValueError, RecursionError):
        raise BadInput(f"preset {preset.name!r}: its post cannot be read") from None
    fmt = (row.format or "").strip().lower()
    if makes_transparency(post) and FORMAT_ALIASES.get(fmt, fmt) == "jpeg":
        raise BadInput(f"preset {preset.name!r} makes a transparent image ({', '.join(s.name for s in post)}); "
                       "format jpeg has no transparency: use png or webp (or NULL)")
    filled = {name: getattr(row, name) if getattr(row, name) is not None else getattr(preset, name)
              for name in FILLED}
    prompt = row.prompt or ""
    effective = preset.prompt.replace(PLACEHOLDER, prompt) if preset.prompt else prompt
    applied = dataclasses.replace(row, prompt=effective, **filled)
    return Resolved(applied, post, {**filled, "effective_prompt": effective})
