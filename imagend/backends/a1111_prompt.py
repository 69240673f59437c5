"""AUTOMATIC1111's prompt syntax, read the way A1111 reads it: attention (`(red:1.5)`, `(red)` x1.1,
`[red]` /1.1, nested, `\\(` escapes) and extra networks (`<lora:pixel:0.8>`), turned into what imagend's
backends take: compel's weighting (`(red)1.5`) or plain text, and the row's `loras`.

A prompt is read as A1111's only when it says so: a `(text:weight)` or an `<lora:…>`-style tag. Any other
prompt is left alone (compel's own `(red)1.5`, `red++`, blends), so nothing changes for those who write
compel. What cannot be honoured gets a note for the row's `warning` (other extra networks, prompt editing
`[a:b:0.5]` and alternation `[a|b]`, weights where the backend has no weighting). No torch.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from imagend.backends.base import Lora, Request
from imagend.db.columns import LORA_WEIGHT_RANGE, LORAS_MAX
from imagend.errors import BadInput, clip

ATTENTION_UP = 1.1  # A1111: `(text)` multiplies by 1.1, `[text]` divides by it
# `<kind:name>` or `<kind:name:weight>` (A1111's extra networks: lora, lyco, hypernet, ...).
EXTRA_NETWORK = re.compile(r"<([A-Za-z_]+):([^:<>]+?)(?::\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*)?>")
PROMPT_EDITING = re.compile(r"\[[^\[\]]*(?::[^\[\]]*:\s*[\d.]+|\|)[^\[\]]*\]")
# A1111's own tokenizer (modules/prompt_parser.py re_attention), escapes first.
_TOKENS = re.compile(r"\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:")
LORA_NAME = re.compile(r"[\w][\w .-]{0,63}")  # as validation.py holds a row's `loras`: a file name, never a path
WEIGHT_DIGITS = 4


@dataclass(frozen=True, slots=True)
class Translated:
    prompt: str
    loras: tuple[Lora, ...]  # from the prompt's <lora:…> tags, in order
    notes: tuple[str, ...]  # for the row's warning


def is_a1111(text: str) -> bool:
    """The prompt uses A1111's own syntax: an explicit `(text:weight)` (nested or not) or an extra network tag."""
    if EXTRA_NETWORK.search(text):
        return True
    if ":" not in text:
        return False
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group(0)
        if match.group(1) is not None and depth:
            return True
        depth += 1 if token == "(" else -1 if token == ")" and depth else 0
    return False


def translate(text: str, column: str = "prompt", *, weighting: bool) -> Translated | None:
    """`text` in what a backend takes (compel's weighting where `weighting`, else plain text), with the
    LoRAs its tags name; None when `text` has no A1111 syntax (it is then left as it is)."""
    if not is_a1111(text):
        return None
    notes: list[str] = []
    loras: list[Lora] = []
    dropped: list[str] = []

    def network(match: re.Match[str]) -> str:
        kind, name, weight = match.group(1).lower(), match.group(2).strip(), match.group(3)
        if kind == "lora":
            loras.append(_lora(name, weight, match.group(0)))
        else:
            dropped.append(match.group(0))
        return " "

    text = EXTRA_NETWORK.sub(network, text)
    if dropped:
        notes.append(f"{column}: {', '.join(clip(d, 60) for d in dropped)}: only <lora:…> tags are read here; "
                     f"{'it was' if len(dropped) == 1 else 'they were'} removed")
    editing = PROMPT_EDITING.search(text)
    if editing:
        notes.append(f"{column}: A1111's prompt editing/alternation {clip(editing.group(0), 60)} is not "
                     "supported here; its words are read as they stand")
    segments = parse_attention(text)
    weighted = any(weight != 1.0 for _, weight in segments)
    out = _compel(segments) if weighting else "".join(part for part, _ in segments)
    out = re.sub(r"\s+([,.;])", r"\1", re.sub(r"\s+", " ", out)).strip(" ,")
    if weighted and weighting:
        notes.append(f"{column}: A1111 attention syntax read as compel's weighting")
    elif weighted:
        notes.append(f"{column}: this backend has no prompt weighting; A1111 weights were dropped, the words kept")
    if loras:
        names = ", ".join(f"{lora.name} {lora.weight:g}" for lora in loras)
        notes.append(f"{column}: <lora:…> tags read as loras ({names})")
    return Translated(out, tuple(loras), tuple(notes))


def apply(request: Request, *, weighting: bool, takes_loras: bool) -> Request:
    """`request` with its prompt and negative prompt in the backend's syntax, the LoRAs their tags name added
    to its inputs (`takes_loras`; otherwise dropped, with a note), and notes saying what was read."""
    notes: list[str] = []
    changes: dict[str, object] = {}
    tagged: tuple[Lora, ...] = ()
    for column, text in (("prompt", request.prompt), ("negative_prompt", request.negative_prompt)):
        found = translate(text, column, weighting=weighting) if text else None
        if found is None:
            continue
        changes[column] = found.prompt if found.prompt or column == "prompt" else None
        notes.extend(found.notes)
        tagged += found.loras
    if not changes:
        return request
    if not changes.get("prompt", request.prompt):
        raise BadInput("prompt is empty once its A1111 tags are taken out")
    if tagged and takes_loras:
        loras, more = merge_loras(request.inputs.loras, tagged)
        notes.extend(more)
        changes["inputs"] = dataclasses.replace(request.inputs, loras=loras)
    elif tagged:
        notes = [note for note in notes if "read as loras" not in note]
        tags = ", ".join(f"<lora:{lora.name}:{lora.weight:g}>" for lora in tagged)
        notes.append(f"prompt: this backend takes no LoRA; {tags} {'was' if len(tagged) == 1 else 'were'} removed")
    return dataclasses.replace(request, notes=(*request.notes, *notes), **changes)  # type: ignore[arg-type]


def merge_loras(column: tuple[Lora, ...], tagged: tuple[Lora, ...]) -> tuple[tuple[Lora, ...], list[str]]:
    """The row's `loras` and its prompt's tags together: the column wins for a name in both."""
    names = {lora.name for lora in column}
    kept = [lora for lora in tagged if lora.name not in names]
    notes = [f"prompt: <lora:{lora.name}:…> is also in the row's loras, whose weight is used"
             for lora in tagged if lora.name in names]
    merged = (*column, *dict((lora.name, lora) for lora in kept).values())
    if len(merged) > LORAS_MAX:
        raise BadInput(f"loras and the prompt's <lora:…> tags name {len(merged)} LoRAs; at most {LORAS_MAX}")
    return merged, notes


def _lora(name: str, weight_text: str | None, tag: str) -> Lora:
    if not LORA_NAME.fullmatch(name):
        raise BadInput(f"prompt: {clip(tag, 80)} names no LoRA file (letters, digits, . _ - and spaces)")
    weight = 1.0 if weight_text is None else float(weight_text)
    if not (math.isfinite(weight) and LORA_WEIGHT_RANGE[0] <= weight <= LORA_WEIGHT_RANGE[1]):
        raise BadInput(f"prompt: {clip(tag, 80)}: a LoRA's weight must be between {LORA_WEIGHT_RANGE[0]:g} and "
                       f"{LORA_WEIGHT_RANGE[1]:g}")
    return Lora(name, weight)


def parse_attention(text: str) -> list[tuple[str, float]]:
    """A1111's parse_prompt_attention: the text in runs of one weight each (escapes resolved)."""
    result: list[list[str | float]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for run in result[start:]:
            run[1] = float(run[1]) * factor

    for match in _TOKENS.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            result.append([token[1], 1.0])
        elif token == "(":
            round_open.append(len(result))
        elif token == "[":
            square_open.append(len(result))
        elif weight is not None and round_open:
            try:
                multiply(round_open.pop(), float(weight))
            except ValueError:  # `:..)`: not a number after all
                result.append([token, 1.0])
        elif token == ")" and round_open:
            multiply(round_open.pop(), ATTENTION_UP)
        elif token == "]" and square_open:
            multiply(square_open.pop(), 1 / ATTENTION_UP)
        else:
            result.append([token, 1.0])
    for start in round_open:
        multiply(start, ATTENTION_UP)
    for start in square_open:
        multiply(start, 1 / ATTENTION_UP)
    merged: list[tuple[str, float]] = []
    for part, factor in result:
        if merged and merged[-1][1] == factor:
            merged[-1] = (merged[-1][0] + str(part), float(factor))
        else:
            merged.append((str(part), float(factor)))
    return merged


def _compel(segments: list[tuple[str, float]]) -> str:
    """Runs of one weight as compel writes them: `(words)1.5`; parentheses in the words escaped."""
    out = []
    for part, weight in segments:
        escaped = part.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        if weight == 1.0 or not escaped.strip():
            out.append(escaped)
            continue
        lead = escaped[: len(escaped) - len(escaped.lstrip())]
        trail = escaped[len(escaped.rstrip()):]
        out.append(f"{lead}({escaped.strip()}){round(weight, WEIGHT_DIGITS):g}{trail}")
    return "".join(out)
