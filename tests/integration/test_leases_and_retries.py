"""Leases, rescue, retries with backoff, and guarded transitions, on a real Postgres.

Time is injected (`now=`) instead of slept through: the claim stamps the lease from `now`,
the rescue compares against `now`.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from imagend.db.rows import Claim, DaemonInfo, Finished
from imagend.errors import LostOwnership

from support.db import fetch_image, insert_image


def db_now(conn):
    return conn.execute("SELECT now() AS t").fetchone()["t"]


def done(image_id: int, attempt: int = 1) -> Finished:
    return Finished(Claim(image_id, attempt), base64="iVBORw0KGgo=", seed=1, output_path=None, generation_seconds=0.1)


def rescued(repo, now):
    """(id, status) of each row repo.rescue took back (no heartbeat rows here: owners are unknown)."""
    return [(r.id, r.status) for r in repo.rescue([1.0], now=now)]


@pytest.fixture
def repo(make_settings, make_repo):
    return make_repo(make_settings(IMAGEND_LEASE_SECONDS="30", DEFAULT_MAX_ATTEMPTS="3"), owner="daemon-a")


@pytest.fixture
def other(make_settings, make_repo):
    return make_repo(make_settings(IMAGEND_LEASE_SECONDS="30", DEFAULT_MAX_ATTEMPTS="3"), owner="daemon-b")


def test_claim_stamps_owner_lease_and_attempt(conn, repo):
    image_id = insert_image(conn)
    t = db_now(conn) + timedelta(seconds=1)
    [row] = repo.claim_batch("placeholder", 10, now=t)
    assert (row.id, row.attempt, row.backend) == (image_id, 1, "placeholder")
    stored = fetch_image(conn, image_id)
    assert stored["status"] == "Generate"
    assert stored["locked_by"] == "daemon-a"
    assert stored["lease_until"] == t + timedelta(seconds=30)
    assert stored["started_at"] == t


def test_an_expired_lease_is_rescued_while_attempts_remain(conn, repo, other):
    image_id = insert_image(conn)
    t = db_now(conn) + timedelta(seconds=1)
    repo.claim_batch("placeholder", 1, now=t)
    repo.begin_work([image_id])
    assert rescued(repo, t + timedelta(seconds=29)) == []  # lease still running
    assert fetch_image(conn, image_id)["status"] == "Generate"
    assert rescued(other, t + timedelta(seconds=31)) == [(image_id, "ReadyToGenerate")]
    row = fetch_image(conn, image_id)
    assert (row["status"], row["locked_by"], row["lease_until"], row["attempts"]) == ("ReadyToGenerate", None, None, 1)
    assert "lease expired: owner daemon-a" in row["error"]
    # Another daemon takes it; the first one's late result is dropped, not written.
    [again] = other.claim_batch("placeholder", 1, now=t + timedelta(seconds=32))
    assert again.attempt == 2
    assert repo.mark_done([done(image_id, 1)]) == set()
    assert fetch_image(conn, image_id)["locked_by"] == "daemon-b"
    assert other.mark_done([done(image_id, 2)]) == {image_id}
    assert fetch_image(conn, image_id)["status"] == "ReadyToPublish"


def test_an_expired_lease_with_attempts_spent_fails_the_row(conn, repo):
    image_id = insert_image(conn, max_attempts=1)
    t = db_now(conn) + timedelta(seconds=1)
    repo.claim_batch("placeholder", 1, now=t)
    repo.begin_work([image_id])
    assert rescued(repo, t + timedelta(seconds=31)) == [(image_id, "Failed")]
    row = fetch_image(conn, image_id)
    assert row["status"] == "Failed"
    assert row["finished_at"] is not None
    assert "lease expired" in row["error"]


def test_a_claimed_row_whose_work_had_not_begun_goes_back_uncharged(conn, repo, other):
    repo.heartbeat(DaemonInfo("host", 1, "test", ["placeholder"]))  # a known daemon, alive
    image_id = insert_image(conn)
    t = db_now(conn) + timedelta(seconds=1)
    repo.claim_batch("placeholder", 1, now=t)  # claimed ahead: never begun
    conn.execute("UPDATE imagend_daemons SET heartbeat_at = now() + interval '40 s'")  # it beat after the lease
    assert rescued(other, t + timedelta(seconds=31)) == [(image_id, "ReadyToGenerate")]
    row = fetch_image(conn, image_id)
    assert (row["attempts"], row["crashes"], row["error"], row["locked_by"]) == (0, 0, None, None)


def test_a_row_inserted_as_generate_with_no_owner_is_rescued_after_a_lease(conn, repo):
    image_id = insert_image(conn, status="Generate")
    t = db_now(conn)
    assert rescued(repo, t + timedelta(seconds=29)) == []
    assert rescued(repo, t + timedelta(seconds=31)) == [(image_id, "ReadyToGenerate")]
    row = fetch_image(conn, image_id)
    assert row["error"] == "lease expired: owner (none) stopped working on it"
    [claimed] = repo.claim_batch("placeholder", 1)
    assert claimed.id == image_id


def test_a_retryable_failure_backs_off_and_keeps_the_error(conn, repo):
    image_id = insert_image(conn)
    [row] = repo.claim_batch("placeholder", 1)
    assert repo.fail_attempt(row.claim, "GPU out of memory", retryable=True, backoff_seconds=60) == "ReadyToGenerate"
    stored = fetch_image(conn, image_id)
    assert stored["status"] == "ReadyToGenerate"
    assert stored["error"] == "GPU out of memory"
    assert stored["locked_by"] is None and stored["finished_at"] is None
    now = db_now(conn)
    assert now + timedelta(seconds=55) < stored["run_after"] <= now + timedelta(seconds=60)
    assert repo.claim_batch("placeholder", 1) == []  # not before its backoff
    [again] = repo.claim_batch("placeholder", 1, now=now + timedelta(seconds=61))
    assert again.attempt == row.attempt + 1 == 2


def test_a_retryable_failure_with_attempts_spent_ends_failed(conn, repo):
    image_id = insert_image(conn, max_attempts=2)
    t = db_now(conn)
    for attempt in (1, 2):
        [row] = repo.claim_batch("placeholder", 1, now=t + timedelta(hours=attempt))
        assert row.attempt == attempt
        status = repo.fail_attempt(row.claim, f"timeout on attempt {attempt}", retryable=True, backoff_seconds=5)
        assert status == ("ReadyToGenerate" if attempt == 1 else "Failed")
    stored = fetch_image(conn, image_id)
    assert (stored["status"], stored["error"], stored["attempts"]) == ("Failed", "timeout on attempt 2", 2)
    assert stored["finished_at"] is not None


def test_a_permanent_failure_ends_failed_with_attempts_left(conn, repo):
    image_id = insert_image(conn)
    [row] = repo.claim_batch("placeholder", 1)
    assert repo.fail_attempt(row.claim, "refused by the API", retryable=False, backoff_seconds=0) == "Failed"
    assert fetch_image(conn, image_id)["attempts"] == 1


@pytest.mark.parametrize("flip_to", ["ReadyToGenerate", "Failed", "ReadyToPublish"])
def test_a_producer_flipping_the_status_wins_over_the_daemon(conn, repo, flip_to):
    image_id = insert_image(conn)
    repo.claim_batch("placeholder", 1)
    conn.execute("UPDATE images SET status = %s, error = 'producer changed its mind' WHERE id = %s",
                 [flip_to, image_id])
    before = fetch_image(conn, image_id)
    assert repo.mark_done([done(image_id)]) == set()
    with pytest.raises(LostOwnership) as caught:
        repo.fail_attempt(Claim(image_id, 1), "boom", retryable=True, backoff_seconds=1)
    assert caught.value.image_id == image_id
    assert repo.extend_lease([image_id]) == {}
    assert repo.release([image_id]) == []
    after = fetch_image(conn, image_id)
    assert after == before  # nothing the daemon did overwrote the producer's write
    assert after["base64"] is None


def test_a_lost_guard_on_another_owner_matches_nothing(conn, repo, other):
    image_id = insert_image(conn)
    repo.claim_batch("placeholder", 1)
    assert other.mark_done([done(image_id)]) == set()
    with pytest.raises(LostOwnership):
        other.fail_attempt(Claim(image_id, 1), "not mine", retryable=False, backoff_seconds=0)
    assert other.release(None) == []
    assert fetch_image(conn, image_id)["locked_by"] == "daemon-a"


def test_release_gives_rows_back_without_counting_the_attempt(conn, repo):
    ids = [insert_image(conn, f"p{n}") for n in range(3)]
    repo.claim_batch("placeholder", 3)
    assert sorted(repo.release(None)) == ids
    for image_id in ids:
        row = fetch_image(conn, image_id)
        assert (row["status"], row["attempts"], row["locked_by"]) == ("ReadyToGenerate", 0, None)


def test_extend_lease_pushes_the_lease_and_reports_cancellation(conn, repo):
    keep, cancel = insert_image(conn, "keep"), insert_image(conn, "cancel")
    repo.claim_batch("placeholder", 2)
    conn.execute("UPDATE images SET cancel_requested = true WHERE id = %s", [cancel])
    before = fetch_image(conn, keep)["lease_until"]
    assert repo.extend_lease([keep, cancel], progress=0.5) == {keep: False, cancel: True}
    row = fetch_image(conn, keep)
    assert row["lease_until"] >= before and row["progress"] == 0.5
