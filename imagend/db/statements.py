"""The statement runner: named queries (db/sql/) on a pool, with the settings some of them run
under; database faults become DatabaseUnavailable, a row held locked past LOCK_TIMEOUT becomes
RowLocked, and rows come back as tuples or bound by column name (by_name). Shared by the loops'
Repository and the operator's OperationsRepository."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.rows import RowFactory, RowMaker
from psycopg_pool import ConnectionPool, PoolTimeout

from imagend.db.sql import queries
from imagend.errors import DatabaseUnavailable, RowLocked, first_line

T = TypeVar("T")

# "The database cannot do this for now": back off and try again on a fresh connection. Operational
# errors cover a lost connection, an admin shutdown, a statement or lock timeout, too many clients.
UNAVAILABLE = (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction)


# Settings some statements run under, each in a transaction of its own (SET LOCAL: pooler-safe, no
# session state outlives it). Constants, written into the text of the set_config statement that precedes it.
# - lock_timeout: statements that change a row a producer may hold locked (SELECT … FOR UPDATE from
#   an admin tool or an ORM) wait at most this long, then raise RowLocked: one locked row must delay
#   only itself. The others never wait: the claim, the rescue and lease renewals skip locked rows.
# - synchronous_commit off: begin_work is on the path of every batch, and its WAL flush cost a drain
#   ~10 %. Only a crash of the Postgres server can lose it, and then the batch counts as not begun
#   (handed back uncharged): a daemon's death, the case it is written for, cannot. (The claim is not
#   durable either, for the same reason: schema_claim.sql.)
# - enable_nestloop off: the finishing write joins the batch's arrays to its rows. Misled by statistics
#   stale after a burst of inserts (it took the rows' side for one row), the planner looped over the
#   arrays once per row: 1,000 x 1,000 comparisons, 0.3 s a batch. A hash join costs the same whatever the statistics.
# - imagend.wake_dependents off: the finishing write wakes its rows' chained rows itself, once per batch;
#   the row trigger images_wake_dependents (schema.sql) stands aside for it.
LOCK_TIMEOUT = "2s"  # schema_claim.sql's imagend_claim_batch says the same
LOCK_BOUNDED = {"lock_timeout": LOCK_TIMEOUT}
TRANSACTION_SETTINGS: dict[str, dict[str, str]] = {
    **dict.fromkeys(
        ("images_fail_attempt", "images_fail_batch", "images_release", "images_set_warning", "images_mark_submitted",
         "images_poll_later", "images_set_previews"),
        LOCK_BOUNDED,
    ),
    "images_mark_done": {**LOCK_BOUNDED, "enable_nestloop": "off", "imagend.wake_dependents": "off"},
    "images_begin_work": {"synchronous_commit": "off"},
}


def by_name(cls: type[T]) -> RowFactory[T]:
    """psycopg's class_row, built positionally: the columns are matched to the fields by name once
    per statement (a missing or extra column fails there), then each row is one positional call.
    The claim makes thousands of rows a second; class_row's dict-per-row showed in the drain."""
    fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    make: Callable[..., T] = cls

    def factory(cursor: psycopg.Cursor[Any]) -> RowMaker[T]:
        names = [column.name for column in cursor.description or ()]
        if sorted(names) != sorted(fields):
            raise TypeError(f"{cls.__name__} expects columns {fields}, the query returns {names}")
        order = [names.index(name) for name in fields]
        if order == list(range(len(fields))):  # the query returns the fields in order: no reshuffle
            return lambda values: make(*values)
        if len(order) == 1:
            return lambda values: make(values[order[0]])
        pick = operator.itemgetter(*order)
        return lambda values: make(*pick(values))

    return factory


class Statements:
    """Runs the named queries on a pool: database faults become DatabaseUnavailable, a row held
    locked past LOCK_TIMEOUT becomes RowLocked, rows come back as tuples or through a row factory.
    Shared by Repository (the loops) and OperationsRepository (the operator's and API's side)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self._sql = queries()
        self._settings_sql = {
            name: "SELECT " + ", ".join(f"set_config('{k}', '{v}', true)" for k, v in settings.items())
            for name, settings in TRANSACTION_SETTINGS.items()
        }

    @contextmanager
    def _cursor(self, row_factory: RowFactory[Any] | None = None) -> Iterator[psycopg.Cursor[Any]]:
        try:
            with self.pool.connection() as conn:
                try:
                    with conn.cursor(row_factory=row_factory or conn.row_factory) as cur:
                        yield cur
                except psycopg.errors.LockNotAvailable:
                    raise
                except UNAVAILABLE:
                    # Its session may carry what caused this (default_transaction_read_only, a 1 ms
                    # statement_timeout set on the database when it connected): the pool replaces it.
                    conn.close()
                    raise
        except psycopg.errors.LockNotAvailable:
            raise RowLocked(f"a row is locked by another session (waited {LOCK_TIMEOUT})") from None
        except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction, PoolTimeout) as exc:
            raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}: {first_line(exc)}") from exc

    def _rows(self, name: str, params: dict[str, Any], row_factory: RowFactory[Any] | None = None) -> list[Any]:
        with self._cursor(row_factory) as cur:
            settings = TRANSACTION_SETTINGS.get(name)
            if settings is None:
                cur.execute(self._sql[name], params)
                return cur.fetchall() if cur.description else []
            # Pipelined without a transaction of our own: the SETs and the statement travel before one
            # Sync, so they share its implicit transaction (the settings end with it, error or not) and
            # cost one round trip and two statements, no BEGIN or COMMIT (a fleet counts its statements
            # per row: docs/fleet.md). Parameters stay bound on the server, arrays in binary.
            with cur.connection.pipeline():
                cur.connection.execute(self._settings_sql[name])  # a cursor of its own, not the row factory's
                cur.execute(self._sql[name], params)
            return cur.fetchall() if cur.description else []
