"""The daemon's loops' queries: one typed function per named query (db/sql/queries.sql).

Every status change is guarded by the status, owner and attempt it expects. A guarded
write that matches nothing raises LostOwnership: another daemon owns the row now, and
the caller drops its result instead of writing over theirs. Database faults surface as
DatabaseUnavailable (statements.py) so loops can back off without knowing psycopg. Rows come
back bound by column name (statements.by_name) into the types of rows.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from imagend.db.columns import BACKEND_NAMES, REMOTE_BACKENDS
from imagend.db.rows import (
    ENDED,
    Beat,
    Claim,
    ClaimedRow,
    DaemonInfo,
    Expired,
    Exportable,
    Finished,
    ModelPreference,
    PresetRow,
    RemoteTask,
    Rescued,
    SourceRow,
    Spooled,
    UnservedRows,
    Wakeups,
)
from imagend.db.statements import Statements, by_name
from imagend.errors import LostOwnership

# An idle daemon's heartbeat looks for rows due this long ago and still waiting: a wake-up takes
# milliseconds, so such a row's wake-up was lost (a race, a relay changing hands).
WAKE_GRACE_SECONDS = 0.5


class Repository(Statements):
    def __init__(
        self,
        pool: ConnectionPool,
        owner: str,
        *,
        lease_seconds: float,
        default_backend: str,
        default_max_attempts: int,
        dead_after_seconds: float = 10.0,
        max_crashes: int = 3,
    ) -> None:
        super().__init__(pool)
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.default_backend = default_backend
        self.default_max_attempts = default_max_attempts
        self.dead_after_seconds = dead_after_seconds
        self.max_crashes = max_crashes
        # Rows with a callback_url ended here, or the heartbeat saw webhook events due: the daemon's
        # webhook thread (webhooks/delivery.py) sets this to its poke.
        self.on_webhook_events: Callable[[], None] = lambda: None

    @property
    def heartbeat_seconds(self) -> float:
        """How often the liveness thread beats: ten beats before a daemon counts as dead."""
        return self.dead_after_seconds / 10

    # -- the generator's side ---------------------------------------------------------

    def claim_batch(
        self, backend: str, limit: int, now: datetime | None = None, prefer: ModelPreference | None = None,
        *, mark_idle: bool = True,
    ) -> list[ClaimedRow]:
        """Claim up to `limit` waiting rows for `backend`. Rows naming an unknown backend are
        claimed too (by whichever backend asks first) so that they fail instead of waiting forever.
        `prefer`: the models loaded, whose rows come first within a priority (model affinity).
        `mark_idle`: finding nothing makes this daemon idle (one to wake); false for a claim made
        ahead while it generates."""
        skip = [name for name in BACKEND_NAMES if name != backend]
        rows: list[ClaimedRow] = self._rows(
            "images_claim_batch",
            {
                "now": now,
                "backend": backend,
                "default_backend": self.default_backend,
                "skip_backends": skip,
                "limit": limit,
                "owner": self.owner,
                "lease_seconds": self.lease_seconds,
                "loaded_models": list(prefer.loaded) if prefer else None,
                "switch_seconds": prefer.switch_seconds if prefer else 0.0,
                "mark_idle": mark_idle,
            },
            by_name(ClaimedRow),
        )
        return sorted(rows, key=lambda r: r.id)

    def source_rows(self, ids: Sequence[int]) -> dict[int, SourceRow]:
        """The rows chained rows take their input image from (source_images.py)."""
        rows: list[SourceRow] = self._rows("images_source_images", {"ids": list(ids)}, by_name(SourceRow))
        return {row.id: row for row in rows}

    def set_previews(self, previews: Mapping[int, str]) -> None:
        """Step previews of rows this daemon generates (a row locked by someone else is skipped)."""
        if previews:
            self._rows("images_set_previews",
                       {"ids": list(previews), "previews": list(previews.values()), "owner": self.owner})

    def begin_work(self, ids: Sequence[int]) -> None:
        """Work on `ids` begins: from now on a death of this daemon counts as a crash of theirs."""
        self._rows("images_begin_work", {"ids": list(ids), "owner": self.owner})

    def mark_done(self, results: Sequence[Finished]) -> set[int]:
        """End rows ReadyToPublish with their image in one statement; returns the ids still ours."""
        return set(self.mark_done_or_cancelled(results))

    def mark_done_or_cancelled(self, results: Sequence[Finished]) -> dict[int, str]:
        """End rows ReadyToPublish with their image in one statement, or Failed 'cancelled' where a producer
        cancelled meanwhile; returns the status of each row still ours."""
        if not results:
            return {}
        rows = self._rows(
            "images_mark_done",
            {
                "ids": [r.claim.id for r in results],
                "attempts": [r.claim.attempt for r in results],
                "base64s": [r.base64 for r in results],
                "seeds": [r.seed for r in results],
                "output_paths": [r.output_path for r in results],
                "output_urls": [r.output_url for r in results],
                "thumbnail_urls": [r.thumbnail_url for r in results],
                "thumbnails": [r.thumbnail for r in results],
                "formats": [r.format for r in results],
                "generation_seconds": [r.generation_seconds for r in results],
                "warnings": [r.warning for r in results],
                "spooled": [r.spooled for r in results],
                "widths": [r.width for r in results],
                "heights": [r.height for r in results],
                "steps": [r.steps for r in results],
                "guidances": [r.guidance for r in results],
                "schedulers": [r.scheduler for r in results],
                "images": [r.images for r in results],
                "owner": self.owner,
            },
        )
        if rows:
            self._rows("images_wake_chained", {"ids": [row[0] for row in rows]})
        if any(row[2] for row in rows):
            self.on_webhook_events()
        return {row[0]: row[1] for row in rows}

    def fail_attempt(self, claim: Claim, error: str, *, retryable: bool, backoff_seconds: float) -> str:
        """Record a failed attempt; returns the new status (ReadyToGenerate to retry, or Failed)."""
        rows = self._rows(
            "images_fail_attempt",
            {
                "id": claim.id,
                "attempt": claim.attempt,
                "error": error,
                "retryable": retryable,
                "backoff_seconds": backoff_seconds,
                "default_max_attempts": self.default_max_attempts,
                "owner": self.owner,
            },
        )
        if not rows:
            raise LostOwnership(claim.id, "fail_attempt")
        return str(rows[0][0])

    def input_image(self, image_id: int, column: str) -> str | None:
        """A row's base64 image column (init_image, mask_image, reference_image), read on its own."""
        rows = self._rows("images_input_image", {"id": image_id, "column": column})
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    def spooled_batch(self, after_id: int, limit: int) -> list[Spooled]:
        return self._rows("images_spooled_batch", {"after_id": after_id, "limit": limit}, by_name(Spooled))

    def spool_mark(self, stored: Sequence[tuple[int, str, str | None, str | None]], *, keep_base64: bool) -> list[int]:
        """`stored`: (id, output_url, output_path, thumbnail_url) of rows whose objects are written."""
        rows = self._rows("images_spool_mark", {
            "ids": [s[0] for s in stored], "output_urls": [s[1] for s in stored],
            "output_paths": [s[2] for s in stored], "thumbnail_urls": [s[3] for s in stored],
            "keep_base64": keep_base64,
        })
        return [row[0] for row in rows]

    def fail_batch(self, failures: Sequence[tuple[Claim, str]]) -> list[int]:
        """End rows Failed for good, each with its error, in one statement; returns the ids still ours."""
        rows = self._rows(
            "images_fail_batch",
            {
                "ids": [claim.id for claim, _ in failures],
                "attempts": [claim.attempt for claim, _ in failures],
                "errors": [error for _, error in failures],
                "owner": self.owner,
            },
        )
        return [row[0] for row in rows]

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
        self._rows("images_set_warning", {"id": image_id, "warning": warning, "owner": self.owner})

    def presets(self, names: Sequence[str]) -> dict[str, PresetRow]:
        """The presets a claimed batch's rows name (presets/recipes.py applies them)."""
        rows: list[PresetRow] = self._rows("presets_get", {"names": list(names)}, by_name(PresetRow))
        return {row.name: row for row in rows}

    def apply_preset(self, claim: Claim, written: Mapping[str, Any]) -> bool:
        """Write back what a row's preset filled (where the row left NULL) and its expanded prompt; False when
        the row is no longer this claim's."""
        return bool(self._rows("images_apply_preset",
                               {**written, "id": claim.id, "attempt": claim.attempt, "owner": self.owner}))

    # -- the processor's side ---------------------------------------------------------

    def fold_queue_counts(self) -> None:
        self._rows("images_fold_queue_counts", {})

    def fail_over_budget(self) -> int:
        """Waiting rows of owners over their plan's budget end Failed (docs/owners.md); how many."""
        return len(self._rows("images_fail_over_budget", {}))

    def rescue(self, crash_backoffs: Sequence[float], now: datetime | None = None) -> list[Rescued]:
        """Take back rows of dead daemons, and rows whose lease ran out (see images_rescue)."""
        return self._rows(
            "images_rescue",
            {
                "now": now,
                "lease_seconds": self.lease_seconds,
                "dead_after": self.dead_after_seconds,
                "max_crashes": self.max_crashes,
                "crash_backoff": list(crash_backoffs),
                "default_max_attempts": self.default_max_attempts,
                "remote_backends": list(REMOTE_BACKENDS),
            },
            by_name(Rescued),
        )

    def claim_polls(self, backends: Sequence[str], limit: int, now: datetime | None = None) -> list[RemoteTask]:
        return self._rows(
            "images_claim_polls",
            {
                "now": now,
                "backends": list(backends),
                "limit": limit,
                "owner": self.owner,
                "lease_seconds": self.lease_seconds,
                "dead_after": self.dead_after_seconds,
            },
            by_name(RemoteTask),
        )

    def mark_submitted(self, claim: Claim, task_id: str, poll_after_seconds: float) -> None:
        rows = self._rows(
            "images_mark_submitted",
            {
                "id": claim.id,
                "attempt": claim.attempt,
                "uuid": task_id,
                "poll_after_seconds": poll_after_seconds,
                "owner": self.owner,
            },
        )
        if not rows:
            raise LostOwnership(claim.id, "mark_submitted")

    def poll_later(self, claim: Claim, poll_after_seconds: float) -> None:
        rows = self._rows(
            "images_poll_later",
            {"id": claim.id, "attempt": claim.attempt, "poll_after_seconds": poll_after_seconds, "owner": self.owner},
        )
        if not rows:
            raise LostOwnership(claim.id, "poll_later")

    def next_wakeups(self, served: Sequence[str]) -> Wakeups:
        """When this daemon's generator and processor next have work, by the database's clock
        (so host clock skew cannot shift wake-ups)."""
        rows: list[Wakeups] = self._rows(
            "images_next_wakeups",
            {
                "default_backend": self.default_backend,
                "served": list(served),
                "known": list(BACKEND_NAMES),
                "lease_seconds": self.lease_seconds,
            },
            by_name(Wakeups),
        )
        return rows[0]

    # -- liveness ---------------------------------------------------------------------

    @property
    def alive_within_seconds(self) -> float:
        """A peer silent for longer may be dead: the liveness thread schedules a rescue for the moment
        it will count as dead (dead_after)."""
        return 3 * self.heartbeat_seconds

    def heartbeat(self, me: DaemonInfo, *, wake_channel: str | None = None, idle: bool = False,
                  served: Sequence[str] = ()) -> Beat:
        """Say this daemon is alive (and on which channel its host hears wake-ups); returns in how many
        seconds a rescue is due (None: none in sight) and, when it is `idle`, whether a row it could
        claim has been waiting longer than a wake-up takes."""
        rows = self._rows(
            "daemons_heartbeat",
            {
                "owner": self.owner,
                "host": me.host,
                "pid": me.pid,
                "version": me.version,
                "backends": me.backends,
                "device": me.device,
                "model": me.model,
                "dead_after": self.dead_after_seconds,
                "alive_within": self.alive_within_seconds,
                "wake_channel": wake_channel,
                "idle": idle,
                "wake_grace": WAKE_GRACE_SECONDS,
                "default_backend": self.default_backend,
                "skip_backends": _not_served(served),
            },
        )
        rescue_in, _, work_waiting, fleet_default, webhooks_due = rows[0]
        return Beat(None if rescue_in is None else float(rescue_in), bool(work_waiting), fleet_default,
                    bool(webhooks_due))

    def claimable(self, served: Sequence[str]) -> bool:
        """A row this daemon (serving `served`) could claim is waiting."""
        rows = self._rows("images_claimable", {
            "owner": self.owner,
            "default_backend": self.default_backend,
            "skip_backends": _not_served(served),
        })
        return bool(rows[0][0])

    def remove_daemon(self) -> None:
        """This daemon stopped cleanly (its rows released); long-dead daemons holding nothing go too."""
        self._rows("daemons_remove", {"owner": self.owner})

    def listen_probe(self, channel: str) -> None:
        self._rows("listen_probe", {"channel": channel})

    def queue_status(self) -> list[dict[str, Any]]:
        with self._cursor(dict_row) as cur:
            cur.execute(self._sql["images_queue_status"])
            return cur.fetchall()

    def unserved(self, served: Sequence[str]) -> list[UnservedRows]:
        """Waiting rows for the known backends not in `served`, per backend, with how many running
        daemons serve each (0: nobody will ever claim them)."""
        rows: list[UnservedRows] = self._rows(
            "images_unserved",
            {
                "default_backend": self.default_backend,
                "served": list(served),
                "known": list(BACKEND_NAMES),
                "dead_after": self.dead_after_seconds,
            },
            by_name(UnservedRows),
        )
        return rows

    # -- retention and export (retention.py, export.py) -------------------------------------

    def expire(self, status: str, age_seconds: float, limit: int) -> list[Expired]:
        """Delete up to `limit` rows of a terminal `status` finished more than `age_seconds` ago."""
        if status not in ENDED:
            raise ValueError(f"retention deletes terminal rows only, not {status!r}")
        rows: list[Expired] = self._rows(
            "images_expire", {"status": status, "age_seconds": age_seconds, "limit": limit}, by_name(Expired)
        )
        return rows

    def drop_base64(self, age_seconds: float, limit: int) -> int:
        """Drop the base64 of up to `limit` stored rows finished more than `age_seconds` ago; how many."""
        return len(self._rows("images_drop_inline", {"age_seconds": age_seconds, "limit": limit}))

    def build_index(self, name: str) -> None:
        """images_retention_index_finished / _base64: CREATE INDEX CONCURRENTLY IF NOT EXISTS."""
        if name not in ("images_retention_index_finished", "images_retention_index_inline"):
            raise ValueError(name)
        self._rows(name, {})

    def invalid_indexes(self) -> list[str]:
        return [row[0] for row in self._rows("images_invalid_indexes", {})]

    def export_batch(self, after_id: int, limit: int) -> list[Exportable]:
        rows: list[Exportable] = self._rows(
            "images_export_batch", {"after_id": after_id, "limit": limit}, by_name(Exportable)
        )
        return rows

    def export_mark(self, ids: Sequence[int], output_urls: Sequence[str], formats: Sequence[str], *,
                    keep_base64: bool) -> set[int]:
        rows = self._rows(
            "images_export_mark",
            {"ids": list(ids), "output_urls": list(output_urls), "formats": list(formats), "keep_base64": keep_base64},
        )
        return {row[0] for row in rows}


def _not_served(served: Sequence[str]) -> list[str]:
    """The backend names a daemon serving `served` leaves to others (its idle checks skip their rows)."""
    return [name for name in BACKEND_NAMES if name not in served]
