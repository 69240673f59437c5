"""Issue 21, the pure parts: `-plan NAME key=value` words, owner strings, the shape of owner keys."""

from __future__ import annotations

import pytest

from imagend.db.owners import key_hash, key_prefix, new_key, owner_problem, parse_plan_values
from imagend.errors import BadInput


def test_plan_values_are_read_with_their_types_and_none_clears_a_limit():
    values = parse_plan_values(["max_running=2", "weight=1.5", "max_waiting=none", "rate=30", "budget=100",
                                "period=month", "default=true"])
    assert values == {"max_running": 2, "weight": 1.5, "max_waiting": None, "rate_per_minute": 30.0,
                      "budget": 100.0, "budget_period": "month", "is_default": True}


@pytest.mark.parametrize("word", ["max_running=0", "max_running=-1", "max_running=1.5", "weight=0", "weight=-2",
                                  "weight=nan", "weight=inf", "weight=none", "rate=0", "budget=-1",
                                  "period=year", "default=maybe", "colour=blue", "max_running"])
def test_bad_plan_values_are_refused_naming_the_word(word):
    with pytest.raises(BadInput) as caught:
        parse_plan_values([word])
    assert word.split("=")[0] in str(caught.value) or "key=value" in str(caught.value)


def test_owner_strings():
    assert owner_problem("alice") is None
    assert owner_problem("x" * 10_000) == "owner must be 1 to 200 characters, got 10000"
    assert owner_problem("") is not None and owner_problem("a\x00b") is not None and owner_problem("a\nb")


def test_keys_are_random_prefixed_and_stored_as_digests():
    key, prefix, digest = new_key()
    assert key.startswith(prefix + "_") and key_prefix(key) == prefix and digest == key_hash(key)
    assert key not in digest and new_key()[0] != key
    assert key_prefix("not-a-key") is None and key_prefix("imk_12") is None
