"""The operator's and the API's side of the database (queries_operations.sql): pause and resume,
the fleet, the queue counts /metrics and `-status` read, what the dashboard shows, and the
producer statements of the JSON API. Nothing here is on the loops' path."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from psycopg.rows import dict_row

from imagend.db.columns import BACKEND_NAMES, INSERTABLE
from imagend.db.rows import FleetDaemon, Pause, QueueSnapshot
from imagend.db.statements import Statements, by_name
from imagend.db.webapp import KeyReused

ALL_BACKENDS = "*"
# A producer may write any text into `backend`: names imagend does not know fold into this one value
# wherever they would become a label, a line or a row of a page (10,000 distinct names must not make
# 10,000 series). Rows naming them are failed by the first daemon that claims them.
UNKNOWN_BACKEND = "unknown"


def known_or_unknown(backend: str | None) -> str | None:
    """The backend as a label: a known name, None (the daemon's default), or UNKNOWN_BACKEND."""
    return backend if backend is None or backend in BACKEND_NAMES else UNKNOWN_BACKEND


def fold_counts(counts: Iterable[tuple[str, str | None, int]]) -> list[tuple[str, str | None, int]]:
    folded: dict[tuple[str, str | None], int] = {}
    for status, backend, rows in counts:
        key = (status, known_or_unknown(backend))
        folded[key] = folded.get(key, 0) + rows
    return [(status, backend, rows) for (status, backend), rows in folded.items()]


def fold_oldest(oldest: Iterable[tuple[str | None, float]]) -> dict[str | None, float]:
    folded: dict[str | None, float] = {}
    for backend, seconds in oldest:
        label = known_or_unknown(backend)
        folded[label] = max(seconds, folded.get(label, seconds))
    return folded


class OperationsRepository(Statements):
    def __init__(self, pool: Any, *, dead_after_seconds: float) -> None:
        super().__init__(pool)
        self.dead_after_seconds = dead_after_seconds

    def ping(self) -> None:
        self._rows("database_ping", {})

    # -- pause ------------------------------------------------------------------------

    def pause(self, backends: Sequence[str], by: str) -> None:
        """Pause `backends` (empty: all of them)."""
        self._rows("paused_add", {"backends": list(backends) or [ALL_BACKENDS], "by": by})

    def resume(self, backends: Sequence[str]) -> list[str]:
        """Resume `backends` (empty: every pause); returns the pauses lifted."""
        return [row[0] for row in self._rows("paused_remove", {"backends": list(backends) or None})]

    def paused(self) -> list[Pause]:
        return self._rows("paused_list", {}, by_name(Pause))

    # -- what the scrape, -status and the dashboard read ----------------------------------

    def snapshot(self) -> QueueSnapshot:
        """Counts, oldest waiting rows, pauses and the fleet: four small reads, one round trip."""
        with self._cursor() as cur:
            conn = cur.connection
            paused_cur = conn.cursor(row_factory=by_name(Pause))
            fleet_cur = conn.cursor(row_factory=by_name(FleetDaemon))
            oldest_cur = conn.cursor()
            with conn.pipeline():  # all four sent before any result is read
                cur.execute(self._sql["images_queue_counts"])
                oldest_cur.execute(self._sql["images_oldest_waiting"])
                paused_cur.execute(self._sql["paused_list"])
                fleet_cur.execute(self._sql["daemons_list"], {"dead_after": self.dead_after_seconds})
            counts, oldest = cur.fetchall(), oldest_cur.fetchall()
            paused, daemons = paused_cur.fetchall(), fleet_cur.fetchall()
        return QueueSnapshot(
            counts=fold_counts((status, backend, int(rows)) for status, backend, rows in counts),
            oldest_waiting=fold_oldest((backend, float(seconds)) for backend, seconds in oldest if seconds is not None),
            paused=paused,
            daemons=daemons,
        )

    def daemons(self) -> list[FleetDaemon]:
        return self._rows("daemons_list", {"dead_after": self.dead_after_seconds}, by_name(FleetDaemon))

    def in_flight(self, limit: int = 50) -> list[dict[str, Any]]:
        return self._rows("images_in_flight", {"limit": limit}, dict_row)

    def recent_done(self, limit: int = 24) -> list[dict[str, Any]]:
        return self._rows("images_recent_done", {"limit": limit}, dict_row)

    def recent_failed(self, limit: int = 20) -> list[dict[str, Any]]:
        return self._rows("images_recent_failed", {"limit": limit}, dict_row)

    def get(self, image_id: int) -> dict[str, Any] | None:
        rows = self._rows("images_get", {"id": image_id}, dict_row)
        return rows[0] if rows else None

    def image(self, image_id: int) -> dict[str, Any] | None:
        rows = self._rows("images_image", {"id": image_id}, dict_row)
        return rows[0] if rows else None

    def listed_image(self, image_id: int, index: int) -> dict[str, Any] | None:
        """Image `index` (1..n) of a row of n > 1 images: {status, format, entry} (entry None: no such image)."""
        rows = self._rows("images_listed", {"id": image_id, "index": index}, dict_row)
        return rows[0] if rows else None

    def thumbnail(self, image_id: int) -> dict[str, Any] | None:
        rows = self._rows("images_thumbnail", {"id": image_id}, dict_row)
        return rows[0] if rows else None

    def preview(self, image_id: int) -> dict[str, Any] | None:
        """The row's step preview (base64 WebP, None when there is none); None when there is no row."""
        rows = self._rows("images_preview", {"id": image_id}, dict_row)
        return rows[0] if rows else None

    # -- the JSON API's producer statements --------------------------------------------

    def insert(self, columns: dict[str, Any]) -> int:
        """INSERT one row; `columns` holds the producer's columns (missing ones: NULL, the default)."""
        params = dict.fromkeys(INSERTABLE)
        params.update(columns)
        return int(self._rows("images_insert", params)[0][0])

    def cancel(self, image_id: int) -> str | None:
        """Ask a waiting or running row to stop; returns its status, or None if it is not cancellable."""
        rows = self._rows("images_cancel", {"id": image_id})
        return str(rows[0][1]) if rows else None

    def retry(self, image_id: int) -> bool:
        return bool(self._rows("images_retry", {"id": image_id}))

    def status_of(self, image_id: int) -> str | None:
        rows = self._rows("images_status_of", {"id": image_id})
        return str(rows[0][0]) if rows else None

    def waiting(self, limit: int = 20) -> list[dict[str, Any]]:
        """The next waiting rows, in the claim's order (the dashboard's queue)."""
        return self._rows("images_waiting", {"limit": limit}, dict_row)

    def params(self, image_id: int, max_chars: int) -> str | None:
        """A row's params as JSON text, its first `max_chars` characters (None: no row or no params);
        text, so JSON Postgres accepts but Python cannot decode is still shown."""
        rows = self._rows("images_params", {"id": image_id, "max_chars": max_chars})
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    # -- the OpenAI and AUTOMATIC1111 routes (http/compat.py) ----------------------------

    def insert_request(self, rows: Sequence[dict[str, Any]], key: str | None = None, *, attach: bool = False,
                       window_seconds: float = 0.0,
                       before_commit: Callable[[list[int]], None] | None = None,
                       body_hash: str | None = None, refuse_owned: bool = False) -> tuple[list[int], bool]:
        """INSERT a request's rows in one transaction; returns their ids and False. A value `Earlier(i)`
        is the id of the request's row i (a chained row, inserted after the others). With `key`, the
        request is noted under it; with `attach` too, a request noted under `key` within `window_seconds`
        is a retry: nothing is inserted and its ids come back with True. `before_commit(ids)` runs before
        the rows are committed (so that a waiter registered there cannot miss their end); what it raises
        rolls the request back. `body_hash`: the request body's, noted with the key; a retry under the key
        with another body raises KeyReused. `refuse_owned`: a row its owner's plan refused at the insert
        raises OwnerRefused, the request rolled back (without it, the row is committed Failed with the
        reason, as a producer's INSERT is)."""
        first_chained = next((index for index, row in enumerate(rows)
                              if any(isinstance(value, Earlier) for value in row.values())), len(rows))
        plain, chained = rows[:first_chained], rows[first_chained:]  # Earlier(i) names a plain row
        with self._cursor() as cur, cur.connection.pipeline(), cur.connection.transaction():
            # As the loops' begin_work (statements.py): the commit does not wait for the WAL flush. Only a
            # crash of the Postgres server in the next moment can lose the rows, and then the request that
            # waits for them answers at its bound (the openai SDK retries it: queued again).
            cur.connection.execute("SELECT set_config('synchronous_commit', 'off', true)")  # a cursor of its own
            if key is not None:
                cur.execute(self._sql["images_api_request_find"], {"key": key, "window": window_seconds})
                found = cur.fetchone()
                if attach and found is not None and found[1] and found[0]:
                    if body_hash is not None and found[2] != body_hash:  # POST /v1/images's Idempotency-Key
                        raise KeyReused(key)
                    return [int(image_id) for image_id in found[0]], True
            ids = self._insert_rows(cur, plain, [])
            ids += self._insert_rows(cur, chained, ids)
            if refuse_owned and any(row.get("owner") is not None for row in rows):
                cur.execute(self._sql["images_api_refused"], {"ids": ids})
                refused = cur.fetchone()
                if refused is not None:  # raised inside the transaction: rolled back, nothing queued
                    raise OwnerRefused(str(refused[0]), bool(refused[1]))
            if key is not None:
                cur.execute(self._sql["images_api_request_record"], {"key": key, "ids": ids, "body_hash": body_hash})
            if before_commit is not None:
                before_commit(ids)
        return ids, False

    def _insert_rows(self, cur: Any, rows: Sequence[dict[str, Any]], earlier: list[int]) -> list[int]:
        """images_insert for each row (pipelined: one round trip), Earlier(i) as earlier[i]; their ids."""
        if not rows:
            return []
        params = []
        for row in rows:
            values = dict.fromkeys(INSERTABLE)
            values.update({name: earlier[value.index] if isinstance(value, Earlier) else value
                           for name, value in row.items()})
            params.append(values)
        cur.executemany(self._sql["images_insert"], params, returning=True)
        ids = []
        while True:
            ids.append(int(cur.fetchone()[0]))
            if not cur.nextset():
                return ids

    def expire_requests(self, window_seconds: float) -> int:
        """Forget the retry keys older than `window_seconds`; returns how many went."""
        with self._cursor() as cur:
            cur.execute(self._sql["images_api_requests_expire"], {"window": window_seconds})
            return cur.rowcount

    def progress_of(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Each row's status, progress and preview tag (id order); rows that are gone are missing."""
        return self._rows("images_api_progress", {"ids": list(ids)}, dict_row)

    def cancel_rows(self, ids: Sequence[int], statuses: Sequence[str]) -> list[int]:
        """Ask the rows among `ids` whose status is one of `statuses` to stop; returns their ids."""
        return [int(row[0]) for row in self._rows("images_api_cancel", {"ids": list(ids), "statuses": list(statuses)})]

    def waiting_rows(self) -> int:
        """Rows waiting (ReadyToGenerate), every backend: the exact counts, without counting the table."""
        return sum(int(rows) for status, _backend, rows in self._rows("images_queue_counts", {})
                   if status == "ReadyToGenerate")


class OwnerRefused(Exception):
    """An owner's plan refused a request's row at its insert (insert_request rolled the request back):
    `waiting_full` for its max_waiting (try again later), else its budget."""

    def __init__(self, reason: str, waiting_full: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.waiting_full = waiting_full


class Earlier:
    """In insert_request's rows: the id of the request's row `index` (inserted before this one)."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index
