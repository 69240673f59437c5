"""The attempt number fences every write that ends a claim: when a producer re-queues a row
and the same daemon claims it again, the late result of the first claim is never written."""

from __future__ import annotations

import pytest

from imagend.db.rows import Claim, Finished
from imagend.errors import LostOwnership

from support.db import fetch_image, insert_image


def _finished(image_id: int, attempt: int, base64: str) -> Finished:
    return Finished(Claim(image_id, attempt), base64=base64, seed=None, output_path=None, generation_seconds=0.1)


def test_a_late_result_of_an_earlier_claim_by_the_same_daemon_is_not_written(conn, make_settings, make_repo):
    repo = make_repo(make_settings(), owner="same-daemon")
    image_id = insert_image(conn, "first prompt")
    (first,) = repo.claim_batch("placeholder", 1)
    conn.execute("UPDATE images SET status = 'ReadyToGenerate', prompt = 'second prompt' WHERE id = %s", [image_id])
    (second,) = repo.claim_batch("placeholder", 1)
    assert (first.attempt, second.attempt, second.prompt) == (1, 2, "second prompt")

    assert repo.mark_done([_finished(image_id, first.attempt, "c3RhbGU=")]) == set()
    with pytest.raises(LostOwnership):
        repo.fail_attempt(first.claim, "stale failure", retryable=False, backoff_seconds=0)
    assert fetch_image(conn, image_id)["status"] == "Generate"

    assert repo.mark_done([_finished(image_id, second.attempt, "ZnJlc2g=")]) == {image_id}
    row = fetch_image(conn, image_id)
    assert (row["status"], row["base64"]) == ("ReadyToPublish", "ZnJlc2g=")
