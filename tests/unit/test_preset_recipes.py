"""Presets without a database: the CLI's key=value values checked as the row's columns are, a row taking a
preset (its own values win, the template takes its prompt, what was filled is what is written back), the
post steps' JSON, and the token's geometry on a picture of known colours."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image as PILImage

from imagend.db.rows import ClaimedRow, PresetRow
from imagend.errors import BadInput
from imagend.images.post import PostStep, apply_post, parse_post
from imagend.presets.recipes import parse_preset_values, resolve


def row(**fields: object) -> ClaimedRow:
    values: dict[str, object] = {"id": 1, "attempt": 1, "prompt": "an elf", "negative_prompt": None, "style": None,
                                 "width": None, "height": None, "seed": None, "steps": None, "guidance": None,
                                 "scheduler": None, "backend": "local", "params": None, "max_attempts": None}
    return ClaimedRow(**{**values, **fields})  # type: ignore[arg-type]


PRESET = PresetRow(name="token", prompt="a token of {prompt}, painted", negative_prompt="text", width=512,
                   height=512, model="sdxl-b", loras='[{"name": "pixel", "weight": 0.5}]', steps=20, guidance=6.0,
                   scheduler="euler_a", n=2, post='[{"step": "token", "color": "#112233"}]')


def test_values_are_checked_as_the_rows_columns_and_none_clears() -> None:
    values = parse_preset_values(["prompt=x {prompt}", "n=4", "guidance=7.5", "style=anime", "model=none",
                                  "loras=[{\"name\": \"pixel\"}]", "post=token"])
    assert values == {"prompt": "x {prompt}", "n": 4, "guidance": 7.5, "style": "ANIME", "model": None,
                      "loras": '[{"name": "pixel"}]', "post": '[{"step": "token", "color": "#3b2a1a"}]'}
    for pair, message in (("n=0", "n must be between 1 and 8, got 0"), ("width=abc", "width must be a number"),
                          ("steps=500", "steps must be between 1 and 200"), ("style=PHOTO", "unknown style"),
                          ("loras={}", "loras is a JSON array"), ("prompt=plain", "template with {prompt}"),
                          ("size=512", "key among")):
        with pytest.raises(BadInput, match=message):
            parse_preset_values([pair])


def test_the_rows_values_win_and_the_preset_fills_the_rest() -> None:
    mine = row(preset="token", negative_prompt="blurry", n=1, width=768)
    resolved = resolve(mine, {"token": PRESET})
    applied = resolved.row
    assert applied.prompt == "a token of an elf, painted"
    assert (applied.negative_prompt, applied.n, applied.width) == ("blurry", 1, 768)  # the row's own
    assert (applied.height, applied.model, applied.steps, applied.guidance, applied.scheduler) == (
        512, "sdxl-b", 20, 6.0, "euler_a")  # the preset's
    assert json.loads(applied.loras or "") == [{"name": "pixel", "weight": 0.5}]
    assert resolved.post == (PostStep("token", None, "#112233"),)
    assert resolved.written is not None and resolved.written["effective_prompt"] == "a token of an elf, painted"
    assert resolved.written["model"] == "sdxl-b" and resolved.written["negative_prompt"] == "blurry"
    plain = resolve(row(), {})
    assert plain.row == row() and plain.written is None and plain.post == ()


def test_unknown_presets_and_bad_post_steps_are_readable() -> None:
    with pytest.raises(BadInput, match="unknown preset 'nope'"):
        resolve(row(preset="nope"), {})
    for value, message in (({"step": "token", "border": -1}, "border must be whole pixels"),
                           ({"step": "token", "color": "red"}, "color must be #rrggbb"),
                           ({"step": "token", "size": 3}, "takes border and color"), (["blur"], "unknown post step")):
        with pytest.raises(BadInput, match=message):
            parse_post(value if isinstance(value, list) else [value])


def test_a_token_is_the_centre_square_in_a_ring_on_transparency() -> None:
    picture = PILImage.new("RGB", (120, 80), (0, 200, 0))
    picture.paste((200, 0, 0), (0, 0, 20, 80))  # a red band on the left, cropped away
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    token = PILImage.open(io.BytesIO(apply_post(buffer.getvalue(), parse_post([{"step": "token", "border": 8,
                                                                                  "color": "#0000ff"}]))))
    assert token.format == "PNG" and token.mode == "RGBA" and token.size == (80, 80)
    assert token.getpixel((0, 0))[3] == 0 and token.getpixel((79, 0))[3] == 0  # corners transparent
    assert token.getpixel((40, 40)) == (0, 200, 0, 255)  # the centre: the picture
    assert token.getpixel((40, 3)) == (0, 0, 255, 255)  # the ring, 8 pixels wide
    assert token.getpixel((3, 40)) == (0, 0, 255, 255)
    assert all(token.getpixel((x, 40))[:3] != (200, 0, 0) for x in range(80))  # the band was off-centre
