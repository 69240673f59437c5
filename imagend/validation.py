"""Turn a claimed row into a Request: check what the producer wrote, apply defaults.

Anything wrong raises BadInput with a sentence the producer can act on; the row then
ends Failed with that sentence in `error`, and the daemon goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from imagend.backends.base import Request
from imagend.backends.registry import BACKEND_NAMES
from imagend.config import PROMPT_MAX_CHARS, Settings
from imagend.errors import BadInput, clip
from imagend.image_formats import parse_output_format
from imagend.rows import ClaimedRow

MAX_SIDE_PX = 8192  # beyond any backend; each backend narrows this further
STEPS_RANGE = (1, 200)
GUIDANCE_RANGE = (0.0, 50.0)
SEED_MAX = 2**63 - 1
ECHO_MAX_CHARS = 80
# Every text a producer writes is bounded. The negative prompt as Fusion Brain bounds it; names
# (style, scheduler) are short words.
NEGATIVE_PROMPT_MAX_CHARS = 1000
NAME_MAX_CHARS = 64


@dataclass(frozen=True, slots=True)
class Validated:
    request: Request
    warning: str | None  # normalisation the producer should know about (written to `warning`)


def truncate_prompt(prompt: str, limit: int = PROMPT_MAX_CHARS) -> str:
    """Cut to `limit` characters (code points, as the Go service cut runes), never mid-character."""
    return prompt[:limit]


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


def validate_row(row: ClaimedRow, settings: Settings) -> Validated:
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
    for name, side in (("width", width), ("height", height)):
        if not 0 < side <= MAX_SIDE_PX:
            raise BadInput(f"{name} must be between 1 and {MAX_SIDE_PX} pixels, got {side}")
    if row.steps is not None and not STEPS_RANGE[0] <= row.steps <= STEPS_RANGE[1]:
        raise BadInput(f"steps must be between {STEPS_RANGE[0]} and {STEPS_RANGE[1]}, got {row.steps}")
    if row.guidance is not None and not GUIDANCE_RANGE[0] <= row.guidance <= GUIDANCE_RANGE[1]:
        raise BadInput(
            f"guidance must be between {GUIDANCE_RANGE[0]:g} and {GUIDANCE_RANGE[1]:g}, got {row.guidance:g}"
        )
    if row.seed is not None and not 0 <= row.seed <= SEED_MAX:
        raise BadInput(f"seed must be between 0 and {SEED_MAX}, got {row.seed}")
    negative = row.negative_prompt if row.negative_prompt is not None else settings.default_negative_prompt
    if negative is not None and len(negative) > NEGATIVE_PROMPT_MAX_CHARS:
        # Unbounded, it held a GPU for minutes of prompt parsing and encoding.
        warnings.append(
            f"negative_prompt truncated from {len(negative)} to {NEGATIVE_PROMPT_MAX_CHARS} characters"
        )
        negative = truncate_prompt(negative, NEGATIVE_PROMPT_MAX_CHARS)
    for name, value in (("style", row.style), ("scheduler", row.scheduler)):
        if value is not None and len(value) > NAME_MAX_CHARS:
            echoed = clip(value, ECHO_MAX_CHARS)
            raise BadInput(f"{name} is {len(value)} characters long, at most {NAME_MAX_CHARS}: {echoed!r}")
    output = parse_output_format(row.format, row.quality)
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
    )
    return Validated(request, "; ".join(warnings) or None)
