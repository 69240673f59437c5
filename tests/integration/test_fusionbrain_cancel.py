"""Cancelling a row whose Fusion Brain task runs (issue 25, item 2): the cancel wins. Fusion Brain has no
cancel (its task runs to its end on its side), so imagend drops the result: the row ends Failed
'cancelled', never ReadyToPublish with cancel_requested ignored, and nothing stays in the store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from imagend.testing.fusionbrain_fake import FusionBrainFake

from support.db import fetch_image, insert_image
from support.fusionbrain import fake_server, make_due, rig


@pytest.fixture
def fake() -> Iterator[FusionBrainFake]:
    with fake_server() as server:
        yield server


def assert_cancelled(row: dict[str, Any]) -> None:
    assert (row["status"], row["error"], row["cancel_requested"]) == ("Failed", "cancelled", True)
    assert row["base64"] is None and row["output_url"] is None and row["thumbnail"] is None
    assert row["finished_at"] is not None and row["lease_until"] is None


def test_a_cancel_between_two_polls_ends_the_row_at_once(conn, make_settings, make_repo, fake):
    image_id = insert_image(conn, "a lighthouse at dusk")
    with rig(make_settings, make_repo, fake) as r:
        r.generate()
        assert fetch_image(conn, image_id)["uuid"] is not None  # submitted: its task runs on Fusion Brain
        conn.execute("UPDATE images SET cancel_requested = true WHERE id = %s", [image_id])
        assert_cancelled(fetch_image(conn, image_id))
        fake.advance(fake.generation_seconds + 0.01)  # the task is done on Fusion Brain's side
        make_due(conn)
        counts = r.process()
    assert counts.polled == 0 and counts.done == 0  # its result is never fetched
    assert_cancelled(fetch_image(conn, image_id))


def test_a_cancel_during_the_poll_that_fetches_the_image_drops_it(conn, db_url, make_settings, make_repo, fake,
                                                                  tmp_path: Path):
    """The race the trigger cannot see (the poller holds the row): the finishing write lets the cancel win,
    and the image and thumbnail already stored for it are deleted."""
    image_id = insert_image(conn, "a red fox")
    store = tmp_path / "images"
    store.mkdir()
    with rig(make_settings, make_repo, fake, IMAGEND_STORAGE_URL=f"file://{store}", IMAGEND_THUMBNAIL="64") as r:
        r.generate()
        fake.advance(fake.generation_seconds + 0.01)
        backend = r.daemon.processor.remote["fusionbrain"]
        poll = backend.poll

        def cancel_then_poll(task_id: str) -> Any:
            with psycopg.connect(db_url, autocommit=True) as producer:
                producer.execute("UPDATE images SET cancel_requested = true WHERE id = %s", [image_id])
            return poll(task_id)

        backend.poll = cancel_then_poll  # type: ignore[method-assign]
        make_due(conn)
        counts = r.process()
    assert (counts.polled, counts.done, counts.failed, counts.lost) == (1, 0, 1, 0)
    assert_cancelled(fetch_image(conn, image_id))
    assert list(store.iterdir()) == []  # nothing of it is left in the store


def test_a_row_not_cancelled_still_finishes(conn, make_settings, make_repo, fake):
    kept, cancelled = insert_image(conn, "keep me"), insert_image(conn, "not me")
    with rig(make_settings, make_repo, fake) as r:
        r.generate()
        conn.execute("UPDATE images SET cancel_requested = true WHERE id = %s", [cancelled])
        fake.advance(fake.generation_seconds + 0.01)
        make_due(conn)
        r.process()
    assert fetch_image(conn, kept)["status"] == "ReadyToPublish"
    assert_cancelled(fetch_image(conn, cancelled))
