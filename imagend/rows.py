"""What the repository hands out, bound by column name (psycopg's class_row), and the
claim token that travels with a row from its claim to the write that ends it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Claim:
    """One claim of one row: its id and the attempt number the claim stamped. Every write
    that ends a claim is fenced by both (see queries.sql), so a late result of an earlier
    claim of the same row can never land on a later one."""

    id: int
    attempt: int


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """A row this daemon now owns in `Generate`, exactly as the producer wrote it
    (the columns of images_claim_batch's RETURNING, by name)."""

    id: int
    attempt: int
    prompt: str | None
    negative_prompt: str | None
    style: str | None
    width: int | None
    height: int | None
    seed: int | None
    steps: int | None
    guidance: float | None
    scheduler: str | None
    backend: str
    params: str | None  # JSON text, decoded by validation.decode_params
    max_attempts: int | None
    cancel_requested: bool = False

    @property
    def claim(self) -> Claim:
        return Claim(self.id, self.attempt)


@dataclass(frozen=True, slots=True)
class RemoteTask:
    """A row in `Generate` whose remote task is due for a poll, now owned by this daemon."""

    id: int
    attempt: int
    task_id: str
    submitted_at: datetime | None
    backend: str

    @property
    def claim(self) -> Claim:
        return Claim(self.id, self.attempt)
