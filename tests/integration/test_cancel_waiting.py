"""A row cancelled while it still waits is failed at its claim, without being generated."""

from __future__ import annotations

from support.daemons import InProcess
from support.db import fetch_image, insert_image


def test_a_row_cancelled_before_its_claim_fails_without_being_generated(conn, make_settings, make_repo):
    cancelled = insert_image(conn, "never mind", cancel_requested=True)
    wanted = insert_image(conn, "still wanted")
    settings = make_settings()
    run = InProcess(make_repo(settings), settings)
    counts = run.generator.run_once()
    run.close()
    row = fetch_image(conn, cancelled)
    assert (row["status"], row["error"], row["base64"], row["attempts"]) == ("Failed", "cancelled", None, 1)
    assert fetch_image(conn, wanted)["status"] == "ReadyToPublish"
    assert (counts.failed, counts.done) == (1, 1)
