"""The generator and processor passes in-process, with backends that misbehave on purpose."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

import psycopg
import pytest
import structlog

from imagend.backends.base import Heartbeat, Image, Request
from imagend.backends.placeholder import placeholder_png
from imagend.db.rows import ModelPreference
from imagend.errors import PermanentError, RetryableError
from imagend.logs import configure

from support.daemons import InProcess
from support.db import fetch_image, insert_image


class ScriptedBackend:
    """A generating backend whose `generate` runs a test's callback first."""

    name = "placeholder"

    def __init__(self, before: Callable[[Sequence[Request], Heartbeat], None], max_batch: int = 1) -> None:
        self.before = before
        self.max_batch = max_batch
        self.batches: list[list[int]] = []

    def validate(self, request: Request) -> Request:
        return request

    def generate(self, batch: Sequence[Request], heartbeat: Heartbeat) -> list[Image]:
        self.batches.append([r.id for r in batch])
        self.before(batch, heartbeat)
        return [Image(placeholder_png(r.prompt, r.seed), r.seed, 0.01) for r in batch]

    def claim_preference(self) -> ModelPreference | None:
        return None

    def device_and_model(self) -> tuple[str | None, str | None]:
        return None, None

    def close(self) -> None:
        pass


@pytest.fixture
def settings(make_settings):
    return make_settings()


def wire(make_repo, settings, backend) -> InProcess:
    return InProcess(make_repo(settings), settings, {"placeholder": backend})


def test_a_plain_row_is_generated(conn, make_repo, settings):
    image_id = insert_image(conn, "a beautiful sunset over mountains", seed=99)
    run = InProcess(make_repo(settings), settings)
    counts = run.generator.run_once()
    run.close()
    assert (counts.claimed, counts.done) == (1, 1)
    row = fetch_image(conn, image_id)
    assert row["status"] == "ReadyToPublish"
    assert row["base64"] and row["seed"] == 99 and row["progress"] == 1
    assert row["finished_at"] is not None and row["generation_seconds"] is not None
    assert row["locked_by"] is None and row["lease_until"] is None


def test_a_producer_flip_during_generation_drops_the_result(conn, db_url, make_repo, settings):
    image_id = insert_image(conn, "flip me")
    other_id = insert_image(conn, "finish me")

    flips = []

    def flip(batch, _heartbeat):
        if batch[0].id == image_id and not flips:
            flips.append(1)
            with psycopg.connect(db_url, autocommit=True) as producer:
                producer.execute("UPDATE images SET status = 'ReadyToGenerate', prompt = 'changed' WHERE id = %s",
                                 [image_id])

    backend = ScriptedBackend(flip)
    run = wire(make_repo, settings, backend)
    counts = run.generator.run_once()
    run.close()
    assert counts.lost == 1  # the first result was dropped...
    assert counts.done == 2
    row = fetch_image(conn, image_id)
    # ...the producer's write stood, and the row, ready again, was made anew from the new prompt.
    assert backend.batches.count([image_id]) == 2
    assert (row["status"], row["prompt"], row["attempts"]) == ("ReadyToPublish", "changed", 2)
    assert row["base64"] == base64.b64encode(placeholder_png("changed", None)).decode()
    assert fetch_image(conn, other_id)["status"] == "ReadyToPublish"


def test_a_producer_failing_the_row_during_generation_keeps_its_error(conn, db_url, make_repo, settings):
    image_id = insert_image(conn, "cancel by hand")

    def fail_it(_batch, _heartbeat):
        with psycopg.connect(db_url, autocommit=True) as producer:
            producer.execute("UPDATE images SET status = 'Failed', error = 'withdrawn by the producer' WHERE id = %s",
                             [image_id])

    run = wire(make_repo, settings, ScriptedBackend(fail_it))
    counts = run.generator.run_once()
    run.close()
    assert counts.lost == 1 and counts.done == 0
    row = fetch_image(conn, image_id)
    assert (row["status"], row["error"], row["base64"]) == ("Failed", "withdrawn by the producer", None)


def test_a_retryable_backend_error_backs_off_and_a_permanent_one_fails(conn, make_repo, settings):
    retry_id = insert_image(conn, "retry me")
    fail_id = insert_image(conn, "fail me")

    def explode(batch, _heartbeat):
        if batch[0].id == retry_id:
            raise RetryableError("CUDA out of memory")
        raise PermanentError("the model refused this prompt")

    run = wire(make_repo, settings, ScriptedBackend(explode))
    counts = run.generator.run_once()
    run.close()
    assert (counts.retried, counts.failed) == (1, 1)
    retry_row, fail_row = fetch_image(conn, retry_id), fetch_image(conn, fail_id)
    assert (retry_row["status"], retry_row["error"]) == ("ReadyToGenerate", "CUDA out of memory")
    assert retry_row["run_after"] > retry_row["updated_at"] + timedelta(seconds=2)  # backoff >= 0.5 * 5 s
    assert (fail_row["status"], fail_row["error"]) == ("Failed", "the model refused this prompt")


def test_a_backend_bug_is_retried_not_fatal(conn, make_repo, settings):
    image_id = insert_image(conn, "bug")

    def bug(_batch, _heartbeat):
        raise KeyError("oops")

    run = wire(make_repo, settings, ScriptedBackend(bug))
    counts = run.generator.run_once()
    run.close()
    assert counts.retried == 1
    row = fetch_image(conn, image_id)
    assert row["status"] == "ReadyToGenerate"
    assert "internal error in placeholder: KeyError" in row["error"]


def test_a_secret_in_a_backend_error_never_reaches_the_row(conn, make_repo, settings, capsys):
    secret = "fb-secret-key-0123456789"
    image_id = insert_image(conn, "leaky")

    def leak(_batch, _heartbeat):
        raise PermanentError(f"401 Unauthorized for X-Secret: Secret {secret}")

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure(secrets=[secret], json=True)
    try:
        run = wire(make_repo, settings, ScriptedBackend(leak))
        run.generator.run_once()
        run.close()
    finally:
        configure(secrets=[])
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)
    row = fetch_image(conn, image_id)
    assert row["status"] == "Failed"
    assert secret not in row["error"] and "Secret ***" in row["error"]
    assert secret not in capsys.readouterr().err


def test_a_producer_cancel_ends_the_row_failed(conn, db_url, make_repo, make_settings):
    settings = make_settings(IMAGEND_LEASE_SECONDS="1")  # heartbeat writes at most every 0.25 s
    image_id = insert_image(conn, "cancel me")

    def cancel_then_beat(_batch, heartbeat):
        with psycopg.connect(db_url, autocommit=True) as producer:
            producer.execute("UPDATE images SET cancel_requested = true WHERE id = %s", [image_id])
        time.sleep(0.3)
        heartbeat(0.5)

    run = wire(make_repo, settings, ScriptedBackend(cancel_then_beat))
    run.generator.run_once()
    run.close()
    row = fetch_image(conn, image_id)
    assert (row["status"], row["error"]) == ("Failed", "cancelled")


def test_the_processor_rescues_and_the_generator_reclaims(conn, make_repo, settings):
    image_id = insert_image(conn, "orphan", status="Generate", locked_by="dead-daemon", attempts=1, progress=0.4,
                            lease_until="2000-01-01T00:00:00Z")
    run = InProcess(make_repo(settings), settings)
    counts = run.processor.run_once()
    assert counts.rescued == 1
    assert fetch_image(conn, image_id)["status"] == "ReadyToGenerate"
    assert run.generator.run_once().done == 1
    run.close()
    row = fetch_image(conn, image_id)
    assert (row["status"], row["attempts"]) == ("ReadyToPublish", 2)
    assert row["error"] is None  # a successful attempt clears the previous attempt's error
