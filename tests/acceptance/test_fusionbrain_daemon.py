"""`imagend -cron` as a user runs it (a subprocess), with IMAGEND_BACKEND=fusionbrain and
FUSION_BRAIN_URL pointing at the fake: rows finish, a killed daemon's tasks are resumed by
uuid without resubmission, and the keys never reach a log line or a row."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imagend.testing.fusionbrain_fake import DEFAULT_API_KEY, DEFAULT_SECRET_KEY, FusionBrainFake

from support.daemons import process_env
from support.db import TERMINAL, base_env, insert_image
from support.fusionbrain import fake_server, fb_env

WAIT_SECONDS = 60.0


@pytest.fixture
def fake() -> Iterator[FusionBrainFake]:
    # Real time here (the daemon runs on its own): tasks finish 1 s after submission.
    with fake_server(generation_seconds=1.0, status_time=1) as server:
        yield server


def daemon_env(db_url: str, fake: FusionBrainFake, **overrides: str) -> dict[str, str]:
    return base_env(db_url, **fb_env(fake, DEFAULT_CHECK_INTERVAL="0.2", **overrides))


def start_daemon(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """The daemon with its output going to a file (a full pipe would block a verbose daemon)."""
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "imagend", "-cron", *args], env=process_env(env), stdout=log,
                                stderr=subprocess.STDOUT, cwd=tempfile.gettempdir())


def stop_daemon(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def wait_for(condition: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited ({proc.returncode}) before {what}:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}:\n{log_path.read_text()[-3000:]}")


def rows(conn: Any) -> list[dict[str, Any]]:
    return list(conn.execute("SELECT * FROM images ORDER BY id").fetchall())


def test_rows_end_ready_to_publish(db_url, conn, fake, tmp_path):
    ids = [insert_image(conn, f"a paper boat on a river, take {i}") for i in range(6)]
    log_path = tmp_path / "daemon.log"
    proc = start_daemon(daemon_env(db_url, fake), log_path)
    try:
        wait_for(lambda: all(r["status"] == "ReadyToPublish" for r in rows(conn)), "all rows published", proc,
                 log_path)
    finally:
        assert stop_daemon(proc) == 0
    assert [r["id"] for r in rows(conn)] == ids
    assert all(r["base64"].startswith("iVBORw0KGgo") and r["attempts"] == 1 for r in rows(conn))
    assert fake.count("run") == 6
    assert fake.count("status") <= 2 * 6  # first poll after status_time: no hot polling


def test_a_killed_daemon_resumes_tasks_by_uuid_without_resubmitting(db_url, conn, fake, tmp_path):
    fake.generation_seconds = 3600.0  # nothing finishes while the first daemon lives
    fake.status_time = 0
    ids = [insert_image(conn, f"a glass city, view {i}") for i in range(8)]
    env = daemon_env(db_url, fake, IMAGEND_LEASE_SECONDS="2")
    log_path = tmp_path / "daemon.log"
    first = start_daemon(env, log_path)
    try:
        wait_for(lambda: fake.count("run") == 8 and all(r["uuid"] for r in rows(conn)) and fake.count("status") >= 8,
                 "all tasks submitted and polled", first, log_path)
    finally:
        first.kill()  # SIGKILL: no drain, no release; some rows may be mid-poll
        first.wait()
    tasks = {r["id"]: r["uuid"] for r in rows(conn)}
    assert all(r["status"] == "Generate" for r in rows(conn))
    fake.advance(3600.0)  # the tasks finish on the server while no daemon runs
    second = start_daemon(env, log_path)
    try:
        wait_for(lambda: all(r["status"] == "ReadyToPublish" for r in rows(conn)), "all rows published", second,
                 log_path)
    finally:
        assert stop_daemon(second) == 0
    assert fake.count("run") == 8  # nothing resubmitted
    assert {r["id"]: r["uuid"] for r in rows(conn)} == tasks
    assert [r["attempts"] for r in rows(conn)] == [1] * len(ids)


def test_keys_never_reach_logs_or_rows_in_a_run_with_faults(db_url, conn, fake, tmp_path):
    for endpoint, kind, times in [("run", 503, 2), ("status", "reset", 2), ("run", "malformed_json", 1),
                                  ("status", "truncated_base64", 1), ("pipelines", 500, 1), ("run", 401, 1)]:
        fake.inject(endpoint, kind, times)
    prompts = ["a calm sea", "a forest", "a desert road", "a night market", "a storm #fail", "a statue #censor"]
    for prompt in prompts:
        insert_image(conn, prompt)
    log_path = tmp_path / "daemon.log"
    proc = start_daemon(daemon_env(db_url, fake, DEFAULT_MAX_ATTEMPTS="2"), log_path, "-verbose")
    try:
        wait_for(lambda: all(r["status"] in TERMINAL for r in rows(conn)), "all rows terminal", proc, log_path)
    finally:
        assert stop_daemon(proc) == 0
    logs = log_path.read_text()
    finished = rows(conn)
    # The run really went through the faults, with the keys accepted by the fake.
    assert "fusionbrain_http_retry" in logs and "image_retry_later" in logs
    assert sum(r["status"] == "ReadyToPublish" for r in finished) >= 3
    assert {r["status"] for r in finished if "#" in r["prompt"]} == {"Failed"}
    everything = logs + "".join(str(conn.execute("SELECT row_to_json(i)::text AS j FROM images i WHERE id = %s",
                                                 [r["id"]]).fetchone()["j"]) for r in finished)
    for secret in (DEFAULT_API_KEY, DEFAULT_SECRET_KEY):
        assert secret not in everything
