"""Video rows' statements (db/sql/queries_video.sql), one typed function each; guarded as the loops'
Repository's are (status, owner, attempt), a write that matched nothing raising LostOwnership."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from imagend.db.rows import Claim
from imagend.db.statements import Statements, by_name
from imagend.errors import LostOwnership


@dataclass(frozen=True, slots=True)
class VideoRow:
    id: int
    prompt: str | None
    scenes: str | None  # JSON text, checked by video/storyboard.py
    video_preset: str | None
    aspect: str | None
    background_audio_chars: int | None
    negative_prompt: str | None
    style: str | None
    model: str | None
    loras: str | None
    seed: int | None
    width: int | None
    height: int | None
    steps: int | None
    guidance: float | None
    scheduler: str | None
    backend: str | None
    priority: int
    max_attempts: int | None
    cost: object | None
    phase: str | None


@dataclass(frozen=True, slots=True)
class SceneRow:
    id: int
    scene_index: int | None
    status: str
    error: str | None
    base64: str | None
    output_path: str | None
    output_url: str | None


class VideoRepository(Statements):
    def __init__(self, pool: ConnectionPool, owner: str, *, lease_seconds: float) -> None:
        super().__init__(pool)
        self.owner = owner
        self.lease_seconds = lease_seconds

    def _guard(self, claim: Claim) -> dict[str, object]:
        return {"id": claim.id, "attempt": claim.attempt, "owner": self.owner}

    def row(self, video_id: int) -> VideoRow | None:
        rows: list[VideoRow] = self._rows("videos_row", {"id": video_id}, by_name(VideoRow))
        return rows[0] if rows else None

    def plan_limits(self, video_id: int) -> tuple[str, float | None, str | None] | None:
        """(plan, max_video_seconds, max_video_preset) of the row's owner's plan; None: no plan."""
        rows = self._rows("videos_plan_limits", {"id": video_id})
        return (str(rows[0][0]), rows[0][1], rows[0][2]) if rows else None

    def background_audio(self, video_id: int) -> str | None:
        rows = self._rows("videos_background_audio", {"id": video_id})
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    def set_scenes(self, claim: Claim, scenes_json: str) -> None:
        if not self._rows("videos_set_scenes", {**self._guard(claim), "scenes": scenes_json}):
            raise LostOwnership(claim.id, "videos_set_scenes")

    def expand(self, claim: Claim, prompts: Sequence[str], size: tuple[int, int], *, seconds: float,
               cost: float) -> list[int]:
        """Park the video and insert its scene rows (one statement); returns the scenes' ids."""
        rows = self._rows("videos_expand", {**self._guard(claim), "prompts": list(prompts), "width": size[0],
                                            "height": size[1], "seconds": seconds, "cost": cost})
        if not rows:
            raise LostOwnership(claim.id, "videos_expand")
        return [row[0] for row in rows]

    def scenes(self, video_id: int) -> list[SceneRow]:
        rows: list[SceneRow] = self._rows("videos_scenes", {"id": video_id}, by_name(SceneRow))
        return rows

    def park(self, claim: Claim) -> None:
        if not self._rows("videos_park", self._guard(claim)):
            raise LostOwnership(claim.id, "videos_park")

    def set_phase(self, claim: Claim, phase: str, progress: float | None = None) -> bool:
        """Renew the lease and say the phase; returns whether a producer asked to cancel."""
        rows = self._rows("videos_set_phase", {**self._guard(claim), "phase": phase, "progress": progress,
                                               "lease_seconds": self.lease_seconds})
        if not rows:
            raise LostOwnership(claim.id, "videos_set_phase")
        return bool(rows[0][0])

    def mark_done(self, claim: Claim, *, output_url: str | None, output_path: str | None, thumbnail_url: str | None,
                  seconds: float, cost: float, size: tuple[int, int], warning: str | None,
                  generation_seconds: float) -> str:
        """End the video with its objects' URLs; returns its status (Failed: cancelled meanwhile)."""
        rows = self._rows("videos_mark_done", {
            **self._guard(claim), "output_url": output_url, "output_path": output_path,
            "thumbnail_url": thumbnail_url, "seconds": seconds, "cost": cost, "width": size[0], "height": size[1],
            "warning": warning, "generation_seconds": generation_seconds})
        if not rows:
            raise LostOwnership(claim.id, "videos_mark_done")
        return str(rows[0][0])


class VideoReads(Statements):
    """What the listener reads of video rows (http/videos.py)."""

    def get(self, video_id: int) -> dict[str, Any] | None:
        rows: list[dict[str, Any]] = self._rows("videos_api_get", {"id": video_id}, dict_row)
        return rows[0] if rows else None

    def scenes(self, video_id: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._rows("videos_scene_list", {"id": video_id}, dict_row)
        return rows
