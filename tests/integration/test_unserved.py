"""Rows nobody serves: images_unserved on a real Postgres, and the report that says so in the log at
start and then at most every few minutes."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from imagend import logs
from imagend.maintenance.unserved import UnservedReport

from support.db import insert_image


def add_daemon(conn, owner: str, backends: list[str], silent_seconds: float = 0.0) -> None:
    conn.execute(
        "INSERT INTO imagend_daemons (owner, host, pid, version, backends, heartbeat_at) "
        "VALUES (%s, 'h', 1, 'test', %s, now() - make_interval(secs => %s))",
        [owner, backends, silent_seconds],
    )


@pytest.fixture
def repo(make_settings, make_repo):
    return make_repo(make_settings(IMAGEND_BACKEND="placeholder", IMAGEND_BACKENDS="placeholder"))


def test_waiting_rows_for_backends_not_served_are_found_per_backend(conn, repo):
    insert_image(conn, "a", backend="fusionbrain")
    insert_image(conn, "b", backend="fusionbrain")
    insert_image(conn, "c", backend="local")
    insert_image(conn, "NULL: the default backend's, served here")
    insert_image(conn, "served here", backend="placeholder")
    insert_image(conn, "unknown: any daemon claims it to fail it", backend="dalle")
    insert_image(conn, "finished", backend="local", status="ReadyToPublish")
    # Waiting since it fell due: created two minutes ago, and due since then.
    conn.execute("UPDATE images SET created_at = now() - interval '2 minutes', "
                 "run_after = now() - interval '2 minutes' WHERE prompt = 'a'")
    found = {entry.backend: entry for entry in repo.unserved(["placeholder"])}
    assert set(found) == {"fusionbrain", "local"}
    assert (found["fusionbrain"].rows, found["local"].rows) == (2, 1)
    assert 115 < found["fusionbrain"].oldest_waiting_seconds < 600
    assert found["fusionbrain"].daemons_serving == found["local"].daemons_serving == 0


def test_running_daemons_that_serve_the_backend_are_counted_dead_ones_are_not(conn, repo):
    insert_image(conn, "for the remote API", backend="fusionbrain")
    add_daemon(conn, "alive:1:a", ["fusionbrain", "placeholder"])
    add_daemon(conn, "alive:2:b", ["local"])
    add_daemon(conn, "dead:3:c", ["fusionbrain"], silent_seconds=600)
    [entry] = repo.unserved(["placeholder"])
    assert (entry.backend, entry.daemons_serving) == ("fusionbrain", 1)


def test_status_asks_about_every_waiting_backend(conn, repo):
    insert_image(conn, "default backend")
    insert_image(conn, "remote", backend="fusionbrain")
    assert {entry.backend for entry in repo.unserved([])} == {"placeholder", "fusionbrain"}


@pytest.fixture
def captured_logs(capsys):
    """A function returning the JSON log lines written since its last call (logs configured on the
    first call: capsys's stream is in place only once the test runs)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configured = []

    def read() -> list[dict]:
        if not configured:
            logs.configure(json=True)
            configured.append(True)
            capsys.readouterr()
        return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]

    yield read
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_report_logs_at_once_then_at_most_every_few_minutes(conn, repo, captured_logs):
    insert_image(conn, "nobody serves me", backend="local")
    captured_logs()
    clock = [1000.0]
    report = UnservedReport(repo, ["placeholder"], every_seconds=300, clock=lambda: clock[0])
    assert [entry.backend for entry in report.run_once()] == ["local"]
    [line] = [line for line in captured_logs() if line["event"] == "rows_unserved"]
    assert line["level"] == "warning"
    assert (line["backend"], line["rows"], line["daemons_serving"]) == ("local", 1, 0)
    assert line["served_here"] == ["placeholder"]
    clock[0] += 299
    assert report.run_once() == []  # not yet
    assert not [line for line in captured_logs() if line["event"] == "rows_unserved"]
    clock[0] += 2
    assert report.run_once()
    assert [line for line in captured_logs() if line["event"] == "rows_unserved"]


def test_rows_another_running_daemon_serves_are_mentioned_without_a_warning(conn, repo, captured_logs):
    insert_image(conn, "the GPU host's", backend="local")
    add_daemon(conn, "gpu-host:1:a", ["local"])
    captured_logs()
    UnservedReport(repo, ["placeholder"]).run_once()
    [line] = [line for line in captured_logs() if line.get("backend") == "local"]
    assert (line["event"], line["level"], line["daemons_serving"]) == ("rows_for_other_backends", "info", 1)

