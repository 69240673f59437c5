"""Hardening III, item 8: one diffusion step longer than the lease (a x4 upscale on a CPU took 150 s
in one call) keeps its row's lease and the loop's health alive while the process lives, and a cancel
during that step ends the row at once, not when the step returns."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from imagend.backends.base import Heartbeat, Image, Request
from imagend.backends.placeholder import placeholder_png
from imagend.db.rows import ModelPreference

from support.daemons import InProcess
from support.db import fetch_image, insert_image, wait_until

LEASE_SECONDS = 2.0
STEP_SECONDS = 3 * LEASE_SECONDS


class OneLongStep:
    """A generating backend whose single step runs past the lease without calling back."""

    name = "placeholder"
    max_batch = 1

    def __init__(self) -> None:
        self.release = threading.Event()

    def validate(self, request: Request) -> Request:
        return request

    def generate(self, batch: Sequence[Request], heartbeat: Heartbeat) -> list[Image]:
        heartbeat(0.0)
        self.release.wait(STEP_SECONDS)
        heartbeat(1.0)
        return [Image(placeholder_png(r.prompt, r.seed), r.seed, STEP_SECONDS) for r in batch]

    def claim_preference(self) -> ModelPreference | None:
        return None

    def device_and_model(self) -> tuple[str | None, str | None]:
        return None, None

    def close(self) -> None:
        pass


def run_in_thread(run: InProcess) -> threading.Thread:
    thread = threading.Thread(target=run.generator.run_once, daemon=True)
    thread.start()
    return thread


def test_a_step_longer_than_the_lease_keeps_the_lease_and_health(conn, make_settings, make_repo):
    image_id = insert_image(conn, "one long step")
    settings = make_settings(IMAGEND_LEASE_SECONDS=str(LEASE_SECONDS))
    backend = OneLongStep()
    run = InProcess(make_repo(settings), settings, {"placeholder": backend})
    other = make_repo(settings, owner="another-daemon")
    try:
        thread = run_in_thread(run)
        wait_until(lambda: fetch_image(conn, image_id)["status"] == "Generate", 5)
        time.sleep(2 * LEASE_SECONDS)  # well past the lease the claim gave
        row = conn.execute("SELECT lease_until > now() AS leased, locked_by FROM images WHERE id = %s",
                           [image_id]).fetchone()
        assert row["leased"], "the lease lapsed during the step"
        assert [r.id for r in other.rescue([1.0])] == []  # nothing for another daemon to rescue
        assert run.daemon.health.seconds_since_progress() < LEASE_SECONDS
        thread.join(STEP_SECONDS + 5)
    finally:
        backend.release.set()
        run.close()
    assert fetch_image(conn, image_id)["status"] == "ReadyToPublish"


def test_a_cancel_during_a_long_step_ends_the_row_at_once(conn, make_settings, make_repo):
    image_id = insert_image(conn, "cancelled mid-step")
    settings = make_settings(IMAGEND_LEASE_SECONDS=str(LEASE_SECONDS))
    backend = OneLongStep()
    run = InProcess(make_repo(settings), settings, {"placeholder": backend})
    try:
        thread = run_in_thread(run)
        wait_until(lambda: fetch_image(conn, image_id)["status"] == "Generate", 5)
        conn.execute("UPDATE images SET cancel_requested = true WHERE id = %s", [image_id])
        asked = time.monotonic()
        wait_until(lambda: fetch_image(conn, image_id)["status"] == "Failed", LEASE_SECONDS,
                   what="the cancel to end the row while the step still runs")
        assert time.monotonic() - asked < LEASE_SECONDS
        assert not backend.release.is_set() and thread.is_alive()  # the step still runs
        backend.release.set()
        thread.join(10)
    finally:
        backend.release.set()
        run.close()
    row = fetch_image(conn, image_id)
    assert (row["status"], row["error"], row["base64"]) == ("Failed", "cancelled", None)
