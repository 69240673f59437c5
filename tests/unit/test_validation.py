"""validate_row: every bad value a producer can write raises BadInput with a sentence the producer
can act on; a long prompt is cut at 999 code points (never mid-character) with a warning."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from imagend.backends.placeholder import PlaceholderBackend
from imagend.config.settings import load_settings
from imagend.db.columns import PROMPT_MAX_CHARS
from imagend.db.rows import ClaimedRow
from imagend.errors import BadInput
from imagend.queue.validation import truncate_prompt, validate_row

SETTINGS = load_settings(
    environ={"IMAGEND_BACKEND": "placeholder", "DEFAULT_IMAGE_WIDTH": "640", "DEFAULT_IMAGE_HEIGHT": "480",
             "DEFAULT_NEGATIVE_PROMPT": "blurry", "DEFAULT_STYLE": "UHD"},
    env_file=None,
)
ROW = ClaimedRow(
    id=1, prompt="a beautiful sunset over mountains", negative_prompt=None, style=None, width=None, height=None,
    seed=None, steps=None, guidance=None, scheduler=None, backend="placeholder", params=None, attempt=1,
    max_attempts=None,
)


def test_a_plain_ancestor_row_gets_the_defaults():
    validated = validate_row(ROW, SETTINGS)
    request = validated.request
    assert validated.warning is None
    assert request.prompt == ROW.prompt
    assert (request.width, request.height) == (640, 480)
    assert request.negative_prompt == "blurry"
    assert request.style == "UHD"
    assert request.params == {}
    assert request.attempt == 1


def test_the_producers_values_win_over_the_defaults():
    row = replace(ROW, width=256, height=128, negative_prompt="text", style="ANIME", seed=42, steps=30,
                  guidance=7.5, params='{"sampler": "x"}')
    request = validate_row(row, SETTINGS).request
    assert (request.width, request.height, request.seed, request.steps, request.guidance) == (256, 128, 42, 30, 7.5)
    assert (request.negative_prompt, request.style, request.params) == ("text", "ANIME", {"sampler": "x"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt": None}, "prompt is empty"),
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "  \t\n "}, "prompt is empty"),
        ({"backend": "dalle"}, "unknown backend 'dalle'"),
        ({"width": 0}, "width must be between 1 and"),
        ({"width": -512}, "width must be between 1 and"),
        ({"height": 2**31 - 1}, "height must be between 1 and"),
        ({"height": 0}, "height must be between 1 and"),
        ({"steps": 0}, "steps must be between 1 and 200, got 0"),
        ({"steps": 10_000}, "steps must be between 1 and 200, got 10000"),
        ({"guidance": -1.0}, "guidance must be between 0 and 50, got -1"),
        ({"guidance": 1e9}, "guidance must be between 0 and 50"),
        ({"guidance": math.nan}, "guidance must be between 0 and 50, got nan"),
        ({"seed": -1}, "seed must be between 0 and"),
        ({"params": "[1, 2, 3]"}, "params must be a JSON object, got list"),
        ({"params": '"a string"'}, "params must be a JSON object, got str"),
        ({"params": "42"}, "params must be a JSON object, got int"),
        ({"params": "[" * 10_000 + "]" * 10_000}, "params cannot be read: RecursionError"),
        ({"params": '{"n": ' + "7" * 5_000 + "}"}, "params cannot be read: ValueError: Exceeds the limit"),
        ({"max_attempts": 0}, "max_attempts must be at least 1, got 0"),
        ({"max_attempts": -3}, "max_attempts must be at least 1, got -3"),
    ],
)
def test_bad_input_raises_a_readable_error(change, message):
    with pytest.raises(BadInput) as caught:
        validate_row(replace(ROW, **change), SETTINGS)
    assert message in str(caught.value)


def test_unknown_style_is_refused_by_the_backend():
    request = validate_row(replace(ROW, style="Impressionist"), SETTINGS).request
    with pytest.raises(BadInput, match="unknown style 'Impressionist'; use one of: DEFAULT"):
        PlaceholderBackend().validate(request)
    assert PlaceholderBackend().validate(replace(request, style="anime")).style == "anime"


@pytest.mark.parametrize(
    "prompt",
    [
        "a" * 998 + "🌅🌅🌅",  # emoji outside the BMP: four UTF-8 bytes, two UTF-16 units each
        "закат над горами " * 80,  # Cyrillic: two UTF-8 bytes each
        "ж" * 1500,
        "🏔" * 1000,
    ],
)
def test_long_prompt_is_cut_at_999_characters_without_splitting_one(prompt):
    assert len(prompt) > PROMPT_MAX_CHARS
    validated = validate_row(replace(ROW, prompt=prompt), SETTINGS)
    cut = validated.request.prompt
    assert len(cut) == PROMPT_MAX_CHARS
    assert prompt.startswith(cut)
    assert cut.encode("utf-8").decode("utf-8") == cut  # whole characters only: encodes cleanly
    assert not any(0xD800 <= ord(ch) <= 0xDFFF for ch in cut)  # no half of a surrogate pair
    assert validated.warning == f"prompt truncated from {len(prompt)} to 999 characters"


def test_emoji_straddling_the_limit_is_kept_whole():
    prompt = "a" * 998 + "🌅" + "b"
    cut = truncate_prompt(prompt)
    assert cut == "a" * 998 + "🌅"
    assert len(cut.encode("utf-8")) == 998 + 4


def test_a_prompt_of_exactly_999_characters_is_left_alone():
    prompt = "ё" * PROMPT_MAX_CHARS
    validated = validate_row(replace(ROW, prompt=prompt), SETTINGS)
    assert validated.request.prompt == prompt
    assert validated.warning is None


def test_every_producer_text_is_bounded_and_errors_stay_short():
    huge = "x" * 100_000
    validated = validate_row(replace(ROW, negative_prompt=huge), SETTINGS)
    assert len(validated.request.negative_prompt) == 1000
    assert validated.warning == "negative_prompt truncated from 100000 to 1000 characters"
    for name in ("style", "scheduler"):
        with pytest.raises(BadInput) as caught:
            validate_row(replace(ROW, **{name: "y" * 10_000}), SETTINGS)
        assert str(caught.value).startswith(f"{name} is 10000 characters long, at most 64")
        assert len(str(caught.value)) < 200
