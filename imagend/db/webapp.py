"""The statements of a web app's side of the API (queries_webapp.sql): uploads and the live stream's
reads. The webhook outbox's are in webhooks/delivery.py (the thread that runs them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from imagend.db.statements import Statements


class KeyReused(Exception):
    """An Idempotency-Key seen within the window with another body."""


class WebAppRepository(Statements):
    def upload(self, *, fmt: str, width: int, height: int, params: dict[str, Any], base64: str | None,
               owner: str | None = None,
               key: str | None = None, body_hash: str | None = None, window_seconds: float = 0.0,
               store: Callable[[int], str] | None = None) -> tuple[int, bool]:
        """INSERT an upload (a finished row, task 'upload'); returns its id and whether it is a replay of
        the request noted under `key` (then nothing is inserted). `store(id)` writes the image to the
        store and returns its URL, before the row is committed (so no row names an object that is not
        there); what it raises rolls the upload back."""
        with self._cursor() as cur, cur.connection.transaction():
            if key is not None:
                cur.execute(self._sql["images_api_request_find"], {"key": key, "window": window_seconds})
                found = cur.fetchone()
                if found is not None and found[1] and found[0]:
                    if found[2] != body_hash:
                        raise KeyReused(key)
                    return int(found[0][0]), True
            cur.execute(self._sql["uploads_insert"], {"format": fmt, "width": width, "height": height,
                                                       "params": Jsonb(params), "base64": base64,
                                                       "owner": owner})
            inserted = cur.fetchone()
            assert inserted is not None
            image_id = int(inserted[0])
            if store is not None:
                cur.execute(self._sql["uploads_stored"], {"id": image_id, "url": store(image_id)})
            if key is not None:
                cur.execute(self._sql["images_api_request_record"],
                            {"key": key, "ids": [image_id], "body_hash": body_hash})
        return image_id, False

    def find_key(self, key: str, window_seconds: float) -> tuple[list[int], str | None] | None:
        """The rows and body hash noted under `key` within the window (None: none). Read only."""
        rows = self._rows("images_api_request_peek", {"key": key, "window": window_seconds})
        if not rows or not rows[0][0]:
            return None
        return [int(i) for i in rows[0][0]], rows[0][1]

    def events_state(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        return self._rows("images_events_state", {"ids": list(ids)}, dict_row)
