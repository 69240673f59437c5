"""The only place that talks to the `images` table: one typed function per named query.

Every status change is guarded by the status and owner it expects. A guarded write
that matches nothing raises LostOwnership: another daemon owns the row now, and the
caller drops its result instead of writing over theirs. Database faults surface as
DatabaseUnavailable so loops can back off without knowing psycopg.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from imagend.config import BACKEND_NAMES, REMOTE_BACKENDS
from imagend.errors import DatabaseUnavailable, LostOwnership
from imagend.rows import ClaimedRow, RemoteTask
from imagend.sql import queries


@dataclass(frozen=True, slots=True)
class Finished:
    """One result for images_mark_done."""

    id: int
    base64: str
    seed: int | None
    output_path: str | None
    generation_seconds: float | None
    attempt: int | None = None  # the claim's attempt: see the fence in queries.sql


class Repository:
    def __init__(
        self,
        pool: ConnectionPool,
        owner: str,
        *,
        lease_seconds: float,
        default_backend: str,
        default_max_attempts: int,
    ) -> None:
        self.pool = pool
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.default_backend = default_backend
        self.default_max_attempts = default_max_attempts
        self._sql = queries()

    @contextmanager
    def _cursor(self) -> Iterator[psycopg.Cursor[Any]]:
        try:
            with self.pool.connection() as conn, conn.cursor() as cur:
                yield cur
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}") from exc

    def _rows(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with self._cursor() as cur:
            cur.execute(self._sql[name], params)
            return cur.fetchall() if cur.description else []

    # -- the generator's side ---------------------------------------------------------

    def claim_batch(self, backend: str, limit: int, now: datetime | None = None) -> list[ClaimedRow]:
        """Claim up to `limit` waiting rows for `backend`. Rows naming an unknown backend are
        claimed too (by whichever backend asks first) so that they fail instead of waiting forever."""
        skip = [name for name in BACKEND_NAMES if name != backend]
        rows = self._rows(
            "images_claim_batch",
            {
                "now": now,
                "default_backend": self.default_backend,
                "skip_backends": skip,
                "limit": limit,
                "owner": self.owner,
                "lease_seconds": self.lease_seconds,
            },
        )
        return sorted((ClaimedRow(*row) for row in rows), key=lambda r: r.id)

    def mark_done(self, results: Sequence[Finished]) -> set[int]:
        """End rows ReadyToPublish with their image in one statement; returns the ids still ours."""
        if not results:
            return set()
        rows = self._rows(
            "images_mark_done",
            {
                "ids": [r.id for r in results],
                "attempts": [r.attempt for r in results],
                "base64s": [r.base64 for r in results],
                "seeds": [r.seed for r in results],
                "output_paths": [r.output_path for r in results],
                "generation_seconds": [r.generation_seconds for r in results],
                "owner": self.owner,
            },
        )
        return {row[0] for row in rows}

    def fail_attempt(
        self, image_id: int, error: str, *, retryable: bool, backoff_seconds: float, attempt: int | None = None
    ) -> str:
        """Record a failed attempt; returns the new status (ReadyToGenerate to retry, or Failed).
        `attempt` fences the write to that claim of the row (see queries.sql)."""
        rows = self._rows(
            "images_fail_attempt",
            {
                "id": image_id,
                "error": error,
                "retryable": retryable,
                "backoff_seconds": backoff_seconds,
                "attempt": attempt,
                "default_max_attempts": self.default_max_attempts,
                "owner": self.owner,
            },
        )
        if not rows:
            raise LostOwnership(image_id, "fail_attempt")
        return str(rows[0][0])

    def release(self, ids: Sequence[int] | None, *, delay_seconds: float = 0.0, reason: str | None = None) -> list[int]:
        """Give rows back without counting the attempt. ids=None: every row this daemon holds."""
        rows = self._rows(
            "images_release",
            {
                "ids": None if ids is None else list(ids),
                "delay_seconds": delay_seconds,
                "reason": reason,
                "owner": self.owner,
            },
        )
        return [row[0] for row in rows]

    def extend_lease(
        self, ids: Sequence[int], progress: float | None = None, progress_ids: Sequence[int] | None = None
    ) -> dict[int, bool]:
        """Renew leases, and the progress of `progress_ids` (default: all of `ids`);
        returns {id: cancel_requested} for the rows still ours."""
        rows = self._rows(
            "images_extend_lease",
            {
                "ids": list(ids),
                "progress": progress,
                "progress_ids": list(ids if progress_ids is None else progress_ids),
                "lease_seconds": self.lease_seconds,
                "owner": self.owner,
            },
        )
        return {row[0]: bool(row[1]) for row in rows}

    def set_warning(self, image_id: int, warning: str) -> None:
        with self._cursor() as cur:
            cur.execute(self._sql["images_set_warning"], {"id": image_id, "warning": warning, "owner": self.owner})

    # -- the processor's side ---------------------------------------------------------

    def rescue_expired(self, now: datetime | None = None) -> list[tuple[int, str]]:
        """Rows whose lease ran out go back to the queue (or Failed, attempts spent): [(id, status)]."""
        rows = self._rows(
            "images_rescue_expired",
            {
                "now": now,
                "lease_seconds": self.lease_seconds,
                "default_max_attempts": self.default_max_attempts,
                "remote_backends": list(REMOTE_BACKENDS),
            },
        )
        return [(row[0], row[1]) for row in rows]

    def claim_polls(self, backends: Sequence[str], limit: int, now: datetime | None = None) -> list[RemoteTask]:
        rows = self._rows(
            "images_claim_polls",
            {
                "now": now,
                "backends": list(backends),
                "limit": limit,
                "owner": self.owner,
                "lease_seconds": self.lease_seconds,
            },
        )
        return [RemoteTask(*row) for row in rows]

    def mark_submitted(self, image_id: int, attempt: int, task_id: str, poll_after_seconds: float) -> None:
        rows = self._rows(
            "images_mark_submitted",
            {
                "id": image_id,
                "attempt": attempt,
                "uuid": task_id,
                "poll_after_seconds": poll_after_seconds,
                "owner": self.owner,
            },
        )
        if not rows:
            raise LostOwnership(image_id, "mark_submitted")

    def poll_later(self, image_id: int, poll_after_seconds: float) -> None:
        rows = self._rows(
            "images_poll_later", {"id": image_id, "poll_after_seconds": poll_after_seconds, "owner": self.owner}
        )
        if not rows:
            raise LostOwnership(image_id, "poll_later")

    def next_due(self) -> float | None:
        """Seconds until the earliest lease runs out or remote poll falls due; None if nothing is in Generate."""
        return self._seconds("images_next_due", {"lease_seconds": self.lease_seconds})

    def next_retry(self) -> float | None:
        """Seconds until the earliest backed-off row may be claimed; None if none waits."""
        return self._seconds("images_next_retry", {})

    def _seconds(self, name: str, params: dict[str, Any]) -> float | None:
        # Computed by the database against its own clock, so host clock skew cannot shift wake-ups.
        rows = self._rows(name, params)
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def queue_status(self) -> list[dict[str, Any]]:
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(self._sql["images_queue_status"])
            return cur.fetchall()
