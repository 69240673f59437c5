"""The oldest PostgreSQL the README claims (14) really runs imagend: the schema applies (twice: the
upgrade path is idempotent), and the CLI makes rows, re-queues and rescues on it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from imagend.db.connect import apply_schema

from support.daemons import run_imagend
from support.db import base_env, fetch_image, insert_image
from support.oldest_postgres import PG14_DIR, OldestPostgres

README = Path(__file__).resolve().parents[2] / "README.md"


def claimed_minimum() -> int:
    match = re.search(r"PostgreSQL (\d+) or later", README.read_text())
    assert match, "the README names no minimum PostgreSQL version"
    return int(match.group(1))


@pytest.fixture(scope="module")
def oldest_url() -> Iterator[str]:
    if not (PG14_DIR / "bin" / "postgres").exists():
        pytest.skip(f"no PostgreSQL 14 binaries in {PG14_DIR}: `make test` installs them (x86-64 Linux)")
    with OldestPostgres(PG14_DIR) as server:
        yield server.url


def test_the_readme_claims_the_version_tested_here(oldest_url):
    with psycopg.connect(oldest_url) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    assert int(row[0]) // 10000 == claimed_minimum() == 14


def test_imagend_runs_on_the_oldest_claimed_postgres(oldest_url):
    apply_schema(oldest_url)
    with psycopg.connect(oldest_url, autocommit=True) as conn:
        conn.execute("COMMENT ON TABLE images IS 'force the schema to be applied again'")
        apply_schema(oldest_url)  # the in-place upgrade path, on an existing table
        ids = [insert_image(conn, f"on PostgreSQL 14, number {n}") for n in range(3)]
        orphan = insert_image(conn, "held by a dead daemon", status="Generate", locked_by="gone:1:x", attempts=1,
                              lease_until="2000-01-01T00:00:00Z")
        env = base_env(oldest_url)
        assert run_imagend(["-generator", "-processor"], env).returncode == 0
        assert [fetch_image(conn, i)["status"] for i in ids] == ["ReadyToPublish"] * 3
        assert fetch_image(conn, orphan)["locked_by"] is None  # rescued
        # The README's retry: the requeue trigger clears the row for another attempt.
        conn.execute("UPDATE images SET status = 'Failed', error = 'x' WHERE id = %s", [ids[0]])
        conn.execute("UPDATE images SET status = 'ReadyToGenerate', attempts = 0, error = NULL WHERE id = %s",
                     [ids[0]])
        assert run_imagend(["-generator"], env).returncode == 0
        assert fetch_image(conn, ids[0])["status"] == "ReadyToPublish"
        status = run_imagend(["-status"], env)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)
