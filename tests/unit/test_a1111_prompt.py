"""AUTOMATIC1111's prompt syntax read as A1111 reads it (issue 25, item 8): attention into compel's
weighting or plain text, <lora:…> tags into the row's loras, a note for what cannot be honoured, and
prompts without A1111 syntax left exactly as they are."""

from __future__ import annotations

import pytest

from imagend.backends import a1111_prompt
from imagend.backends.base import ImageInputs, Lora, Request
from imagend.db.columns import LORAS_MAX
from imagend.errors import BadInput


def compel(text: str) -> str:
    found = a1111_prompt.translate(text, weighting=True)
    assert found is not None
    return found.prompt


@pytest.mark.parametrize(
    ("a1111", "expected"),
    [
        ("a (red:1.5) fox", "a (red)1.5 fox"),
        ("a ((red:1.2) fox:1.1) in [snow] (x:1)", "a (red)1.32 (fox)1.1 in (snow)0.9091 x"),  # nesting multiplies
        ("(a (red) fox:1.5)", "(a)1.5 (red)1.65 (fox)1.5"),  # (x) is x1.1 inside an A1111 prompt
        (r"a \(literal\) (red:1.5)", r"a \(literal\) (red)1.5"),  # escapes stay text
        ("(blurry:0.5), bad", "(blurry)0.5, bad"),
        ("a fox <lora:pixel:0.8>", "a fox"),
    ],
)
def test_attention_becomes_compels_weighting(a1111, expected):
    assert compel(a1111) == expected


@pytest.mark.parametrize("text", ["a red fox", "a (dramatic lighting)1.3 sky", "a red++ fox", "(a) (b)",
                                  '("a red fox", "a blue fox").blend(1, 1)', "sci-fi city, 16:9"])
def test_a_prompt_without_a1111_syntax_is_left_alone(text):
    assert a1111_prompt.translate(text, weighting=True) is None


def test_lora_tags_become_loras_with_their_weights():
    found = a1111_prompt.translate("a fox <lora:pixel:0.8>, <LORA:ink> snow", weighting=True)
    assert found is not None
    assert found.loras == (Lora("pixel", 0.8), Lora("ink", 1.0))
    assert found.prompt == "a fox, snow"
    assert any("read as loras (pixel 0.8, ink 1)" in note for note in found.notes)


def test_what_cannot_be_honoured_is_noted():
    found = a1111_prompt.translate("<hypernet:moody:1> a [cat:dog:0.5] (fox:1.2)", weighting=True)
    assert found is not None and found.loras == ()
    assert "<hypernet" not in found.prompt
    notes = " ".join(found.notes)
    assert "<hypernet:moody:1>: only <lora:…> tags are read here; it was removed" in notes
    assert "prompt editing/alternation [cat:dog:0.5] is not supported here" in notes


def test_without_weighting_the_words_are_kept_plain():
    found = a1111_prompt.translate("a ((red:1.2) fox:1.1), [snow]", "negative_prompt", weighting=False)
    assert found is not None
    assert found.prompt == "a red fox, snow"
    assert any(note.startswith("negative_prompt: this backend has no prompt weighting") for note in found.notes)


@pytest.mark.parametrize(("tag", "error"), [("<lora:../../etc/passwd:1>", "names no LoRA file"),
                                            ("<lora:pixel:9>", "weight must be between -4 and 4")])
def test_a_bad_lora_tag_fails_the_row(tag, error):
    with pytest.raises(BadInput, match=error):
        a1111_prompt.translate(f"a fox {tag}", weighting=True)


def request(prompt: str, negative: str | None = None, loras: tuple[Lora, ...] = ()) -> Request:
    return Request(id=1, prompt=prompt, negative_prompt=negative, style=None, width=64, height=64, seed=None,
                   steps=None, guidance=None, scheduler=None, inputs=ImageInputs(loras=loras))


def test_apply_adds_the_tagged_loras_to_the_rows_and_the_column_wins():
    done = a1111_prompt.apply(request("a (red:1.5) fox <lora:pixel:0.8> <lora:ink:0.3>", "(blurry:1.3)",
                                      loras=(Lora("pixel", 0.5),)), weighting=True, takes_loras=True)
    assert (done.prompt, done.negative_prompt) == ("a (red)1.5 fox", "(blurry)1.3")
    assert done.inputs.loras == (Lora("pixel", 0.5), Lora("ink", 0.3))
    assert any("also in the row's loras, whose weight is used" in note for note in done.notes)
    untouched = request("a (red)1.5 fox")
    assert a1111_prompt.apply(untouched, weighting=True, takes_loras=True) is untouched


def test_apply_for_a_backend_without_loras_removes_the_tags_and_says_so():
    done = a1111_prompt.apply(request("a (red:1.5) fox, <lora:pixel:0.8>"), weighting=False, takes_loras=False)
    assert done.prompt == "a red fox" and done.inputs.loras == ()
    assert "prompt: this backend takes no LoRA; <lora:pixel:0.8> was removed" in done.notes


def test_apply_refuses_too_many_loras_and_a_prompt_of_tags_only():
    tags = " ".join(f"<lora:l{n}>" for n in range(LORAS_MAX + 1))
    with pytest.raises(BadInput, match=f"at most {LORAS_MAX}"):
        a1111_prompt.apply(request(f"a fox {tags}"), weighting=True, takes_loras=True)
    with pytest.raises(BadInput, match="prompt is empty once its A1111 tags are taken out"):
        a1111_prompt.apply(request("<lora:pixel:1>"), weighting=True, takes_loras=True)
