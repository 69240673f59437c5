"""Every fault the fake can inject ends each row in the right status with a readable error,
and DEFAULT_MAX_ATTEMPTS / DEFAULT_GENERATION_TIMEOUT behave as documented."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from imagend.backends.fusionbrain import EXPIRED_MESSAGE
from imagend.testing.fusionbrain_fake import DEFAULT_API_KEY, DEFAULT_SECRET_KEY, FusionBrainFake

from support.db import fetch_image, insert_image
from support.fusionbrain import drive, fake_server, make_due, rig


@pytest.fixture
def fake() -> Iterator[FusionBrainFake]:
    with fake_server() as server:
        yield server


RETRIED_IN_CALL = [(endpoint, fault) for endpoint in ("status", "pipelines")
                   for fault in (500, 502, 503, 429, "reset", "timeout")]
# The submit creates a paid task: resent at once only when the server said it did not take it.
RETRIED_IN_CALL += [("run", 503), ("run", 429)]


@pytest.mark.parametrize(("endpoint", "fault"), RETRIED_IN_CALL)
def test_a_passing_fault_is_retried_within_the_call(conn, make_settings, make_repo, fake, endpoint, fault):
    fake.hang_seconds = 1.5  # longer than the client's timeout below
    image_id = insert_image(conn)
    fake.inject(endpoint, fault, times=1)
    with rig(make_settings, make_repo, fake, IMAGEND_FUSIONBRAIN_TIMEOUT="0.3") as r:
        drive(r, conn, fake, [image_id])
    row = fetch_image(conn, image_id)
    assert row["status"] == "ReadyToPublish", row["error"]
    assert row["attempts"] == 1  # the row never noticed
    assert fake.count(endpoint) == 2


@pytest.mark.parametrize("fault", [500, 502, "reset", "timeout", "reset_after"])
def test_a_submit_that_may_have_reached_the_server_is_not_resent_in_the_call(
    conn, make_settings, make_repo, fake, fault
):
    """After a timeout, a dropped connection or a 5xx other than 503 the task may exist already
    (reset_after: it does): resending at once would create a second paid task. The attempt fails
    instead, and the row is submitted again after its backoff."""
    fake.hang_seconds = 1.5
    image_id = insert_image(conn)
    fake.inject("run", fault, times=1)
    with rig(make_settings, make_repo, fake, IMAGEND_FUSIONBRAIN_TIMEOUT="0.3") as r:
        r.generate()
        assert fake.count("run") == 1  # not resent within the call
        row = fetch_image(conn, image_id)
        assert (row["status"], row["attempts"]) == ("ReadyToGenerate", 1)
        assert row["error"].startswith("Fusion Brain run call")
        make_due(conn)
        drive(r, conn, fake, [image_id])
    row = fetch_image(conn, image_id)
    assert (row["status"], row["attempts"]) == ("ReadyToPublish", 2)
    assert fake.count("run") == 2


def test_a_lasting_outage_spends_the_attempts_then_fails_readably(conn, make_settings, make_repo, fake):
    image_id = insert_image(conn)
    fake.inject("run", 503, times=float("inf"))
    with rig(make_settings, make_repo, fake, DEFAULT_MAX_ATTEMPTS="2") as r:
        drive(r, conn, fake, [image_id])
    row = fetch_image(conn, image_id)
    assert row["status"] == "Failed"
    assert row["attempts"] == 2
    assert row["error"] == "Fusion Brain run call failed: HTTP 503: injected fault 503 (3 tries)"
    assert fake.count("run") == 2 * 3  # DEFAULT_MAX_ATTEMPTS x IMAGEND_FUSIONBRAIN_HTTP_ATTEMPTS


def test_an_outage_that_ends_costs_an_attempt_not_the_row(conn, make_settings, make_repo, fake):
    image_id = insert_image(conn)
    fake.inject("status", "reset", times=3)  # one whole poll's tries
    with rig(make_settings, make_repo, fake) as r:
        r.generate()
        fake.advance(2)
        r.process()
        row = fetch_image(conn, image_id)
        assert row["status"] == "ReadyToGenerate"
        assert row["error"] == "Fusion Brain status call failed: ReadError (3 tries)"
        make_due(conn)
        drive(r, conn, fake, [image_id])
    row = fetch_image(conn, image_id)
    assert (row["status"], row["attempts"], row["error"]) == ("ReadyToPublish", 2, None)


@pytest.mark.parametrize(
    ("code", "reason"),
    [(400, "HTTP 400, bad parameters: injected fault 400"),
     (401, "HTTP 401, the API key or secret was not accepted (check FUSION_BRAIN_API_KEY and FUSION_BRAIN_SECRET_KEY)"),
     (415, "HTTP 415, the request's params part was not taken as application/json"),
     (403, "HTTP 403: injected fault 403")],
)
def test_a_refusal_on_submit_is_permanent_and_says_why(conn, make_settings, make_repo, fake, code, reason):
    image_id = insert_image(conn)
    fake.inject("run", code)
    with rig(make_settings, make_repo, fake) as r:
        r.generate()
    row = fetch_image(conn, image_id)
    assert (row["status"], row["attempts"]) == ("Failed", 1)
    assert row["error"].startswith(f"Fusion Brain run call refused: {reason}")
    assert fake.count("run") == 1  # never retried


def test_wrong_keys_fail_the_row_without_revealing_them(conn, make_settings, make_repo, fake):
    image_id = insert_image(conn)
    fake.api_key = "the-key-the-server-expects"
    with rig(make_settings, make_repo, fake) as r:
        r.generate()
    row = fetch_image(conn, image_id)
    assert row["status"] == "Failed" and "HTTP 401" in row["error"]
    assert DEFAULT_API_KEY not in row["error"] and DEFAULT_SECRET_KEY not in row["error"]


def test_malformed_json_on_submit_is_a_new_attempt(conn, make_settings, make_repo, fake):
    image_id = insert_image(conn)
    fake.inject("run", "malformed_json")
    with rig(make_settings, make_repo, fake) as r:
        r.generate()
        row = fetch_image(conn, image_id)
        assert row["status"] == "ReadyToGenerate"
        assert row["error"].startswith("Fusion Brain run reply is not valid JSON (HTTP 201")
        make_due(conn)
        drive(r, conn, fake, [image_id])
    assert fetch_image(conn, image_id)["status"] == "ReadyToPublish"


@pytest.mark.parametrize(
    ("fault", "error"),
    [("malformed_json", "Fusion Brain status reply is not valid JSON (HTTP 200"),
     ("truncated_base64", "Fusion Brain returned")],
)
def test_a_result_spoiled_in_transit_is_resubmitted(conn, make_settings, make_repo, fake, fault, error):
    image_id = insert_image(conn)
    with rig(make_settings, make_repo, fake) as r:
        r.generate()
        fake.advance(2)
        fake.inject("status", fault)
        r.process()
        row = fetch_image(conn, image_id)
        assert row["status"] == "ReadyToGenerate" and row["error"].startswith(error)
        make_due(conn)
        drive(r, conn, fake, [image_id])
    row = fetch_image(conn, image_id)
    assert (row["status"], row["attempts"]) == ("ReadyToPublish", 2)
    assert fake.count("run") == 2  # the spoiled result was consumed on the server: a new task


def test_a_failed_task_is_retried_then_fails_with_the_api_description(conn, make_settings, make_repo, fake):
    image_id = insert_image(conn, "a storm #fail")
    fake.fail_description = "GPU worker crashed"
    with rig(make_settings, make_repo, fake, DEFAULT_MAX_ATTEMPTS="3") as r:
        drive(r, conn, fake, [image_id])
    row = fetch_image(conn, image_id)
    assert (row["status"], row["attempts"]) == ("Failed", 3)
    assert row["error"] == "Fusion Brain task failed: GPU worker crashed"
    assert fake.count("run") == 3


def test_a_row_max_attempts_overrides_the_default(conn, make_settings, make_repo, fake):
    image_id = insert_image(conn, "a storm #fail", max_attempts=1)
    with rig(make_settings, make_repo, fake, DEFAULT_MAX_ATTEMPTS="5") as r:
        drive(r, conn, fake, [image_id])
    assert (fetch_image(conn, image_id)["status"], fake.count("run")) == ("Failed", 1)


def test_a_censored_result_fails_the_row_clearly(conn, make_settings, make_repo, fake):
    image_id = insert_image(conn, "something #censor")
    with rig(make_settings, make_repo, fake) as r:
        drive(r, conn, fake, [image_id])
    row = fetch_image(conn, image_id)
    assert (row["status"], row["attempts"], row["base64"]) == ("Failed", 1, None)
    assert row["error"].startswith("Fusion Brain censored this prompt")
    assert "IMAGEND_KEEP_CENSORED=true" in row["error"]
    assert fake.count("run") == 1  # never resubmitted


def test_a_censored_placeholder_is_kept_when_asked(conn, make_settings, make_repo, fake):
    image_id = insert_image(conn, "something #censor")
    with rig(make_settings, make_repo, fake, IMAGEND_KEEP_CENSORED="true") as r:
        drive(r, conn, fake, [image_id])
    row = fetch_image(conn, image_id)
    assert row["status"] == "ReadyToPublish"
    assert row["base64"] == fake.images["CENSORED_PNG"]


def test_an_expired_result_is_resubmitted_never_lost(conn, make_settings, make_repo, fake):
    image_id = insert_image(conn)
    with rig(make_settings, make_repo, fake) as r:
        r.generate()
        first_task = fetch_image(conn, image_id)["uuid"]
        fake.advance(fake.generation_seconds + fake.expiry_seconds + 1)  # nobody fetched it in time
        r.process()
        row = fetch_image(conn, image_id)
        assert (row["status"], row["error"], row["uuid"]) == ("ReadyToGenerate", EXPIRED_MESSAGE, None)
        make_due(conn)
        drive(r, conn, fake, [image_id])
    row = fetch_image(conn, image_id)
    assert (row["status"], row["attempts"]) == ("ReadyToPublish", 2)
    assert row["uuid"] != first_task


def test_a_row_failed_by_an_expired_result_says_what_happened_not_what_would_happen(
    conn, make_settings, make_repo, fake
):
    image_id = insert_image(conn, max_attempts=1)
    with rig(make_settings, make_repo, fake) as r:
        r.generate()
        fake.advance(fake.generation_seconds + fake.expiry_seconds + 1)
        r.process()
    row = fetch_image(conn, image_id)
    assert (row["status"], row["error"]) == ("Failed", EXPIRED_MESSAGE)
    assert "resubmit" not in row["error"]


@pytest.mark.parametrize("key", ["model_status", "pipeline_status", "status"])
def test_a_closed_queue_leaves_rows_waiting_without_counting_attempts(conn, make_settings, make_repo, fake, key):
    ids = [insert_image(conn) for _ in range(3)]
    fake.queue, fake.queue_key = "DISABLED_BY_QUEUE", key
    with rig(make_settings, make_repo, fake, IMAGEND_FUSIONBRAIN_PIPELINE_ID="6e4fb56e-5d6b-4f6e-9c1d-2a0b8f3c7d11",
             IMAGEND_FUSIONBRAIN_QUEUE_BACKOFF="45") as r:
        r.generate()
        for image_id in ids:
            row = fetch_image(conn, image_id)
            assert (row["status"], row["attempts"]) == ("ReadyToGenerate", 0)
            assert row["error"] == "Fusion Brain queue is DISABLED_BY_QUEUE; will submit again later"
        assert conn.execute("SELECT count(*) AS n FROM images WHERE run_after > now() + interval '40 s'"
                            ).fetchone()["n"] == 3
        assert r.generate().claimed == 0  # they wait out the backoff
        fake.queue = "ACTIVE"
        make_due(conn)
        drive(r, conn, fake, ids)
    assert [fetch_image(conn, i)["attempts"] for i in ids] == [1, 1, 1]
    assert all(fetch_image(conn, i)["status"] == "ReadyToPublish" for i in ids)


def test_no_active_pipeline_is_a_closed_queue(conn, make_settings, make_repo, fake):
    image_id = insert_image(conn)
    fake.queue = "DISABLED_BY_QUEUE"  # the discovery list shows it too
    with rig(make_settings, make_repo, fake) as r:
        r.generate()
    row = fetch_image(conn, image_id)
    assert (row["status"], row["attempts"]) == ("ReadyToGenerate", 0)
    assert "no ACTIVE TEXT2IMAGE pipeline" in row["error"]
    assert fake.count("run") == 0


def test_generation_timeout_gives_a_new_attempt_then_fails(conn, make_settings, make_repo, fake):
    image_id = insert_image(conn)
    fake.generation_seconds = 10_000  # never finishes
    with rig(make_settings, make_repo, fake, DEFAULT_GENERATION_TIMEOUT="5m", DEFAULT_MAX_ATTEMPTS="2") as r:
        for attempt in (1, 2):
            r.generate()
            make_due(conn)
            r.process()
            assert fetch_image(conn, image_id)["status"] == "Generate"  # pending, within the timeout
            conn.execute("UPDATE images SET submitted_at = now() - interval '301 s', lease_until = now()")
            r.process()
            row = fetch_image(conn, image_id)
            assert row["attempts"] == attempt
            assert row["error"].startswith("no result after 301 s (DEFAULT_GENERATION_TIMEOUT=300 s)")
            make_due(conn)
    assert fetch_image(conn, image_id)["status"] == "Failed"
    assert fake.count("run") == 2
