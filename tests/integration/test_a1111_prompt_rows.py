"""A1111 prompt syntax on a row is never silently ignored (issue 25, item 8): a backend without weighting
or LoRAs (the placeholder, Fusion Brain) gets the plain words and the row a warning saying what was
dropped; tests/local/test_local_capabilities.py shows the local backend honouring both."""

from __future__ import annotations

from support.daemons import InProcess
from support.db import fetch_image, insert_image
from support.fusionbrain import drive, fake_server, rig

PROMPT = "a (red:1.5) fox, <lora:pixel:0.8>"


def test_the_placeholder_row_says_what_it_could_not_honour(conn, make_settings, make_repo):
    image_id = insert_image(conn, PROMPT)
    plain = insert_image(conn, "a (red)1.5 fox")  # compel's syntax: no A1111, nothing to say
    settings = make_settings()
    run = InProcess(make_repo(settings), settings)
    run.generator.run_once()
    run.close()
    row = fetch_image(conn, image_id)
    assert row["status"] == "ReadyToPublish"
    assert "prompt: this backend has no prompt weighting; A1111 weights were dropped" in row["warning"]
    assert "prompt: this backend takes no LoRA; <lora:pixel:0.8> was removed" in row["warning"]
    assert row["prompt"] == PROMPT  # the producer's text stays as written
    assert fetch_image(conn, plain)["warning"] is None


def test_fusion_brain_gets_the_plain_words_and_the_row_a_warning(conn, make_settings, make_repo):
    image_id = insert_image(conn, PROMPT, negative_prompt="(blurry:1.4), text")
    with fake_server() as fake, rig(make_settings, make_repo, fake) as r:
        drive(r, conn, fake, [image_id])
        [sent] = fake.submitted
    assert sent.params["generateParams"]["query"] == "a red fox"
    assert sent.params["negativePromptDecoder"] == "blurry, text"
    row = fetch_image(conn, image_id)
    assert row["status"] == "ReadyToPublish"
    assert "<lora:pixel:0.8> was removed" in row["warning"] and "negative_prompt: this backend has no" in row["warning"]
