"""Running imagend in tests: `process_env` (the one builder of a daemon subprocess's environment),
the CLI in a subprocess (`run_imagend`, `start_imagend`, `DaemonProcess`), and a generator and
processor wired in this process (`InProcess`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from imagend.backends.base import Backend
from imagend.backends.placeholder import PlaceholderBackend
from imagend.config.settings import Settings
from imagend.db.repository import Repository
from imagend.queue.daemon import Daemon
from imagend.storage import open_store


def process_env(env: Mapping[str, str]) -> dict[str, str]:
    """The whole environment of an `imagend` subprocess: PATH and HOME from ours, then `env`
    (nothing else leaks in from the test runner's environment)."""
    return {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **env}


def run_imagend(args: list[str], env: Mapping[str, str], timeout: float = 60.0,
                cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user runs it: a subprocess, its own environment, no .env in cwd."""
    return subprocess.run([sys.executable, "-m", "imagend", *args], env=process_env(env), capture_output=True,
                          text=True, timeout=timeout, cwd=cwd or tempfile.gettempdir())


def start_imagend(args: list[str], env: Mapping[str, str], cwd: Path | None = None) -> subprocess.Popen[str]:
    """Start the CLI in a subprocess with its stdout and stderr on pipes (for short runs: read them)."""
    return subprocess.Popen([sys.executable, "-m", "imagend", *args], env=process_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd or tempfile.gettempdir())


class InProcess:
    """A generator and a processor wired as the daemon wires them, without the scheduler."""

    def __init__(self, repo: Repository, settings: Settings, backends: Mapping[str, Backend] | None = None) -> None:
        if backends is None:
            backends = {"placeholder": PlaceholderBackend(settings.placeholder_delay_seconds, settings.max_batch)}
        self.daemon = Daemon(settings, repo, backends, listen_url="unused",
                             store=open_store(settings.storage, settings.env.values) if settings.storage else None)
        self.generator = self.daemon.generator
        self.processor = self.daemon.processor

    def close(self) -> None:
        self.daemon.io_pool.shutdown(wait=True)


class DaemonProcess:
    """`python -m imagend …` as a user runs it, with stderr going to a file (a pipe nobody reads
    fills up and blocks a long-running daemon)."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_dir: Path | None = None,
                 host: str | None = None) -> None:
        """`host`: run it as a daemon of another host, in a UTS namespace of its own with that
        hostname (`unshare --uts`, as root: the fleet tests' simulated hosts)."""
        log_dir = log_dir or Path(tempfile.mkdtemp(prefix="imagend-daemon-log-"))
        self.log_path = Path(tempfile.mkstemp(prefix="imagend-", suffix=".log", dir=log_dir)[1])
        self._log = self.log_path.open("w")
        prefix = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host] if host else []
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "imagend", *args],
            env=process_env(env),
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
