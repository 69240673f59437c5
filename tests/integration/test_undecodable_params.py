"""`params` that Postgres accepts but Python cannot decode (JSON nested 10,000 deep, an integer
of 5,000 digits) fails its own row with a readable error; its batch-mates go on, in the same
batch and in the batches after it."""

from __future__ import annotations

import pytest

from support.daemons import InProcess
from support.db import fetch_image, insert_image

DEEP = "[" * 10_000 + "]" * 10_000
HUGE_INT = '{"n": ' + "7" * 5_000 + "}"


@pytest.mark.parametrize("max_batch", ["1", "50"])
def test_an_undecodable_row_fails_alone_and_its_batch_goes_on(conn, make_settings, make_repo, max_batch):
    before = [insert_image(conn, f"before {n}") for n in range(5)]
    deep = conn.execute("INSERT INTO images (prompt, params) VALUES ('deep', %s::jsonb) RETURNING id",
                        [DEEP]).fetchone()["id"]
    huge = conn.execute("INSERT INTO images (prompt, params) VALUES ('huge', %s::jsonb) RETURNING id",
                        [HUGE_INT]).fetchone()["id"]
    after = [insert_image(conn, f"after {n}") for n in range(25)]
    settings = make_settings(IMAGEND_MAX_BATCH=max_batch, IMAGEND_PLACEHOLDER_DELAY="0.001")
    run = InProcess(make_repo(settings), settings)
    try:
        counts = run.generator.run_once()
    finally:
        run.close()
    assert (counts.done, counts.failed) == (30, 2)
    for image_id, kind in ((deep, "RecursionError"), (huge, "ValueError")):
        # Not fetch_image (SELECT *): psycopg would fail to decode these params just as the daemon did.
        row = conn.execute("SELECT status, error FROM images WHERE id = %s", [image_id]).fetchone()
        assert row["status"] == "Failed"
        assert row["error"].startswith(f"params cannot be read: {kind}")
        assert len(row["error"]) < 200
    assert {fetch_image(conn, i)["status"] for i in before + after} == {"ReadyToPublish"}
