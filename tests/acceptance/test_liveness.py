"""Daemon liveness: a dead daemon's rows are rescued within seconds with default settings; a
daemon that is merely slow (stopped with SIGSTOP for less than IMAGEND_DEAD_AFTER) keeps its
rows; one stopped for longer loses them, and its late writes are refused."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator

import pytest

from support.daemons import DaemonProcess
from support.db import base_env, fetch_image, insert_image, install_audit, terminal_writes, wait_until

RESCUE_TARGET_SECONDS = 10.0
RESCUE_SLACK_SECONDS = 1.0  # the survivor's claim, a busy 2-core CI machine


# What a daemon logs when it finds a row it worked on taken: its heartbeat's lease renewal
# matched nothing (the batch is interrupted), or its guarded finishing write matched nothing.
LOST_ROW_EVENTS = ("batch_interrupted", "result_dropped", "failure_dropped")


def holder(conn, image_id: int) -> str | None:
    """Who works on the row now (a row claimed ahead does not count)."""
    row = conn.execute("SELECT owner FROM imagend_working WHERE id = %s", [image_id]).fetchone()
    return None if row is None else row["owner"]


def slow_env(db_url, **overrides):
    return base_env(db_url, IMAGEND_PLACEHOLDER_DELAY="30", **overrides)


@contextlib.contextmanager
def two_daemons_one_row_begun(conn, env, tmp_path, prompt: str) -> Iterator[tuple[DaemonProcess, int, str]]:
    """A daemon that has begun the one row (yielded with the row's id and the daemon's owner id),
    a second daemon up and idle beside it; both killed at the end (the first one SIGCONTed first)."""
    image_id = insert_image(conn, prompt)
    first = DaemonProcess(["-cron"], env, tmp_path)
    second = None
    try:
        wait_until(lambda: holder(conn, image_id), 30, what="the row to begin")
        owner = holder(conn, image_id)
        second = DaemonProcess(["-cron"], env, tmp_path)
        wait_until(lambda: "daemon_started" in second.output(), 30, what="the second daemon to start")
        yield first, image_id, owner
    finally:
        first.signal(signal.SIGCONT)
        first.kill()
        if second is not None:
            second.kill()


def finished(conn, image_id: int) -> bool:
    return fetch_image(conn, image_id)["status"] == "ReadyToPublish"


@pytest.mark.slow
def test_a_killed_daemons_row_is_taken_within_ten_seconds_with_default_settings(db_url, conn, tmp_path):
    env = slow_env(db_url)
    env.pop("IMAGEND_LEASE_SECONDS")  # the default lease (60 s): only liveness can explain a fast rescue
    with two_daemons_one_row_begun(conn, env, tmp_path, "held by the victim") as (victim, image_id, owner):
        time.sleep(1.0)
        victim.kill()
        killed = time.monotonic()
        wait_until(lambda: holder(conn, image_id) not in (None, owner), 30, interval=0.02, what="the rescue")
        took = time.monotonic() - killed
    assert took <= RESCUE_TARGET_SECONDS + RESCUE_SLACK_SECONDS, took
    row = fetch_image(conn, image_id)
    assert (row["attempts"], row["crashes"]) == (1, 1)  # the death was charged as a crash, not an attempt


@pytest.mark.slow
def test_a_daemon_stopped_for_less_than_dead_after_keeps_its_row(db_url, conn, tmp_path):
    env = base_env(db_url, IMAGEND_PLACEHOLDER_DELAY="6", IMAGEND_DEAD_AFTER="5")
    with two_daemons_one_row_begun(conn, env, tmp_path, "slow but alive") as (slow, image_id, owner):
        slow.signal(signal.SIGSTOP)
        time.sleep(3.5)  # well past a few heartbeats, short of IMAGEND_DEAD_AFTER
        assert holder(conn, image_id) == owner
        slow.signal(signal.SIGCONT)
        wait_until(lambda: finished(conn, image_id), 30, what="the row to finish")
    row = fetch_image(conn, image_id)
    assert (row["attempts"], row["crashes"]) == (1, 0)


@pytest.mark.slow
def test_a_daemon_stopped_for_longer_loses_its_row_and_its_late_write_is_refused(db_url, conn, tmp_path):
    install_audit(conn)
    env = base_env(db_url, IMAGEND_PLACEHOLDER_DELAY="4", IMAGEND_DEAD_AFTER="2")
    with two_daemons_one_row_begun(conn, env, tmp_path, "taken from a frozen daemon") as (frozen, image_id, owner):
        frozen.signal(signal.SIGSTOP)
        wait_until(lambda: holder(conn, image_id) not in (None, owner), 15, what="the rescue")
        frozen.signal(signal.SIGCONT)  # wakes mid-image; its next lease renewal or its write finds the row gone
        wait_until(lambda: any(event in frozen.output() for event in LOST_ROW_EVENTS), 20,
                   what="the frozen daemon to find its row gone")
        wait_until(lambda: finished(conn, image_id), 30, what="the row to finish")
    assert terminal_writes(conn) == {image_id: 1}
    finished_by = conn.execute("SELECT old_owner FROM images_audit WHERE new_status = 'ReadyToPublish'").fetchone()
    assert finished_by["old_owner"] != owner
