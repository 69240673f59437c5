"""The two statements on the path of every request of the OpenAI and AUTOMATIC1111 routes, run on the
listener's event loop with psycopg's async connections: a request's rows inserted, and read back once
they ended. Run in the thread pool, each cost two hand-overs (event loop → thread → event loop, about
0.4 ms each while the daemon works beside the listener): about 1 ms of the 5 these routes may add
(docs/compatible-apis.md). Every other statement of the listener stays on the blocking
OperationsRepository."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from imagend.db.columns import INSERTABLE, insert_values
from imagend.db.connect import check_unless_fresh_async
from imagend.db.sql import queries
from imagend.db.statements import UNAVAILABLE
from imagend.errors import DatabaseUnavailable, first_line

ROWS_MARKER = "/*rows*/"  # images_api_insert's place for its rows' VALUES lists
ROW_VALUES = f"({insert_values()})"  # one row's, as images_insert's
PLAIN_INSERT_SETTINGS = "SET LOCAL synchronous_commit = 'off'; "  # as insert_request's and begin_work's


class AsyncOperations:
    """A small pool of async connections, opened at the first request (in the listener's event loop, the
    only one that uses it) and closed with the listener."""

    def __init__(self, conninfo: str, *, max_size: int, wait_seconds: float, application_name: str) -> None:
        self._pool = AsyncConnectionPool(
            conninfo, min_size=0, max_size=max_size, timeout=wait_seconds, open=False, check=check_unless_fresh_async,
            kwargs={"autocommit": True, "prepare_threshold": None, "application_name": application_name},
            name="imagend-http-async",
        )
        self._open = False
        self._sql = queries()

    async def close(self) -> None:
        await self._pool.close()  # nothing to do for a pool never opened

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection of the pool; database faults become DatabaseUnavailable (as Statements._cursor)."""
        if not self._open:
            await self._pool.open()  # psycopg_pool opens once under its own lock: two first requests may both ask
            self._open = True
        try:
            async with self._pool.connection() as conn:
                try:
                    yield conn
                except UNAVAILABLE:
                    await conn.close()  # its session may carry the cause: the pool replaces it
                    raise
        except (*UNAVAILABLE, PoolTimeout) as exc:
            raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}: {first_line(exc)}") from exc

    async def insert_plain(self, rows: Sequence[dict[str, Any]], key: str | None = None) -> list[int]:
        """INSERT a request's rows (no Earlier, no owner) and note them under `key` when given, in one
        statement sent as one message (images_api_insert: one round trip, committed when it returns,
        synchronous_commit off as insert_request). What a retry under `key` finds is insert_request's."""
        async with self._connection() as conn, psycopg.AsyncClientCursor(conn) as bound:
            values = ", ".join(bound.mogrify(ROW_VALUES, {**dict.fromkeys(INSERTABLE), **row}) for row in rows)
            # The key bound first: the rows' text may hold a '%' that a second binding would misread.
            text = bound.mogrify(self._sql["images_api_insert"], {"key": key}).replace(ROWS_MARKER, values, 1)
            await bound.execute(PLAIN_INSERT_SETTINGS + text)
            while bound.nextset():  # past the SET's result: the statement's is the last
                pass
            return [int(row[0]) for row in await bound.fetchall()]

    async def results(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """A request's rows as its answer needs them (images_api_results), in id order."""
        async with self._connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(self._sql["images_api_results"], {"ids": list(ids)})
            return await cur.fetchall()
