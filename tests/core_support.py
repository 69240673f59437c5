"""Helpers for the core suite: in-process generator/processor, daemons in subprocesses, waiting.

Kept out of conftest.py so that other suites' conftests are untouched; tests import it
as `core_support` (pytest puts tests/ on sys.path, see pyproject.toml).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from imagend.backends.base import Backend
from imagend.backends.placeholder import PlaceholderBackend
from imagend.config import Settings
from imagend.daemon import Daemon
from imagend.repository import Repository

TERMINAL = ("ReadyToPublish", "Failed")


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class InProcess:
    """A generator and a processor wired as the daemon wires them, without the scheduler."""

    def __init__(self, repo: Repository, settings: Settings, backends: Mapping[str, Backend] | None = None) -> None:
        if backends is None:
            backends = {"placeholder": PlaceholderBackend(settings.placeholder_delay_seconds, settings.max_batch)}
        self.daemon = Daemon(settings, repo, backends, listen_url="unused")
        self.generator = self.daemon.generator
        self.processor = self.daemon.processor

    def close(self) -> None:
        self.daemon.io_pool.shutdown(wait=True)


class DaemonProcess:
    """`python -m imagend …` as a user runs it, with stderr going to a file (a pipe nobody reads
    fills up and blocks a long-running daemon)."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_dir: Path | None = None) -> None:
        full_env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **env}
        log_dir = log_dir or Path(tempfile.mkdtemp(prefix="imagend-daemon-log-"))
        self.log_path = Path(tempfile.mkstemp(prefix="imagend-", suffix=".log", dir=log_dir)[1])
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imagend", *args],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tempfile.gettempdir(),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def owner_pattern(self) -> str:
        """A LIKE pattern matching the `locked_by` of rows this process owns (host:pid:random)."""
        return f"%:{self.pid}:%"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not go."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


AUDIT_SQL = """
CREATE TABLE IF NOT EXISTS images_audit (
    image_id     INTEGER NOT NULL,
    old_status   TEXT,
    new_status   TEXT NOT NULL,
    old_owner    TEXT,
    old_lease    TIMESTAMPTZ,
    error        TEXT,
    at           TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION images_audit_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO images_audit (image_id, old_status, new_status, old_owner, old_lease, error)
    VALUES (NEW.id, OLD.status, NEW.status, OLD.locked_by, OLD.lease_until, NEW.error);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER images_audit_status
    AFTER UPDATE ON images
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.status IN ('ReadyToPublish', 'Failed')
          OR NEW.status IN ('ReadyToPublish', 'Failed'))
    EXECUTE FUNCTION images_audit_record();
"""


def install_audit(conn: Any) -> None:
    """Record every status change, and every write to a finished row, in `images_audit`."""
    conn.execute(AUDIT_SQL)


def terminal_writes(conn: Any) -> dict[int, int]:
    """{image id: how many times an UPDATE left it (or found it) ReadyToPublish / Failed}."""
    rows = conn.execute(
        "SELECT image_id, count(*) FROM images_audit WHERE new_status IN ('ReadyToPublish', 'Failed') "
        "OR old_status IN ('ReadyToPublish', 'Failed') GROUP BY image_id"
    ).fetchall()
    return {row[0] if isinstance(row, tuple) else row["image_id"]: row[1] if isinstance(row, tuple) else row["count"]
            for row in rows}
