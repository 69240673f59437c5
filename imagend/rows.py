"""What the repository hands out: rows as the daemon sees them after a claim."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """A row this daemon now owns in `Generate`, exactly as the producer wrote it."""

    id: int
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
    params: Any
    attempts: int
    max_attempts: int | None
    cancel_requested: bool = False


@dataclass(frozen=True, slots=True)
class RemoteTask:
    """A row in `Generate` whose remote task (uuid) is due for a poll, now owned by this daemon."""

    id: int
    uuid: str
    submitted_at: datetime | None
    backend: str
    attempts: int
    max_attempts: int | None
