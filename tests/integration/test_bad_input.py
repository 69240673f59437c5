"""Every bad value a producer can write ends its row Failed with a readable error, in the same
pass that finishes the good rows: never a crash, never a stuck row, never a delay for others."""

from __future__ import annotations

import base64

import psycopg
import pytest

from imagend.backends.placeholder import placeholder_png

from support.daemons import InProcess
from support.db import fetch_image, insert_image

BAD_ROWS = [
    ({"prompt": ""}, "prompt is empty"),
    ({"prompt": "   \n\t  "}, "prompt is empty"),
    ({"width": 0}, "width must be between 1 and 8192 pixels, got 0"),
    ({"width": -64}, "width must be between 1 and 8192 pixels, got -64"),
    ({"width": 2_000_000_000}, "width must be between 1 and 8192 pixels, got 2000000000"),
    ({"height": 0}, "height must be between 1 and 8192 pixels, got 0"),
    ({"height": -1}, "height must be between 1 and 8192 pixels, got -1"),
    ({"height": 100_000}, "height must be between 1 and 8192 pixels, got 100000"),
    ({"backend": "dalle"}, "unknown backend 'dalle'"),
    ({"style": "Impressionist"}, "unknown style 'Impressionist'"),
    ({"style": "s" * 10_000}, "style is 10000 characters long, at most 64: 'sssss"),
    ({"scheduler": "k" * 10_000}, "scheduler is 10000 characters long, at most 64: 'kkkkk"),
    ({"steps": 0}, "steps must be between 1 and 200, got 0"),
    ({"steps": 5000}, "steps must be between 1 and 200, got 5000"),
    ({"guidance": -0.5}, "guidance must be between 0 and 50, got -0.5"),
    ({"guidance": 1000.0}, "guidance must be between 0 and 50, got 1000"),
    ({"guidance": float("nan")}, "guidance must be between 0 and 50, got nan"),
    ({"seed": -7}, "seed must be between 0 and"),
    ({"params": [1, 2, 3]}, "params must be a JSON object, got list"),
    ({"params": "just a string"}, "params must be a JSON object, got str"),
    ({"params": 12.5}, "params must be a JSON object, got float"),
    ({"params": True}, "params must be a JSON object, got bool"),
    ({"max_attempts": 0}, "max_attempts must be at least 1, got 0"),
]


@pytest.fixture
def run(make_settings, make_repo):
    settings = make_settings()
    wired = InProcess(make_repo(settings), settings)
    yield wired
    wired.close()


def test_null_prompt_is_refused_at_insert(conn):
    with pytest.raises(psycopg.errors.NotNullViolation) as caught:
        insert_image(conn, None)
    assert "prompt" in str(caught.value)
    assert conn.execute("SELECT count(*) AS n FROM images").fetchone()["n"] == 0


def test_every_bad_input_fails_its_row_and_the_good_rows_still_finish(conn, run):
    # Bad rows first in claim order (higher priority), so they are in the way if anything stalls.
    bad = {insert_image(conn, **{"prompt": "a bad row", "priority": 10, **columns}): message
           for columns, message in BAD_ROWS}
    good = [insert_image(conn, f"good row {n}") for n in range(5)]
    counts = run.generator.run_once()
    assert counts.claimed == len(bad) + len(good)
    assert counts.failed == len(bad)
    assert counts.done == len(good)
    assert counts.retried == 0 and counts.lost == 0
    for image_id, message in bad.items():
        row = fetch_image(conn, image_id)
        assert row["status"] == "Failed", (message, row)
        assert message in row["error"], (message, row["error"])
        assert row["attempts"] == 1  # bad input is never retried
        assert row["locked_by"] is None and row["lease_until"] is None
        assert row["finished_at"] is not None
        assert row["base64"] is None
    for image_id in good:
        row = fetch_image(conn, image_id)
        assert row["status"] == "ReadyToPublish" and row["error"] is None
    assert conn.execute("SELECT count(*) AS n FROM images WHERE status = 'Generate'").fetchone()["n"] == 0
    assert run.generator.run_once().claimed == 0  # nothing left behind to claim again


def test_a_long_prompt_is_truncated_and_the_row_says_so(conn, run):
    prompt = "закат над горами 🌅 " * 60  # 1140 characters of Cyrillic and emoji
    assert len(prompt) > 999
    image_id = insert_image(conn, prompt)
    run.generator.run_once()
    row = fetch_image(conn, image_id)
    assert row["status"] == "ReadyToPublish"
    assert row["warning"] == f"prompt truncated from {len(prompt)} to 999 characters"
    assert row["prompt"] == prompt  # the producer's text is kept as written
    # The backend saw exactly the first 999 characters.
    assert base64.b64decode(row["base64"]) == placeholder_png(prompt[:999], None)


def test_a_check_constraint_refuses_an_unknown_status(conn):
    with pytest.raises(psycopg.errors.CheckViolation):
        insert_image(conn, status="Publish")
