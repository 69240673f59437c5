"""Several images per row (a row's `n`, docs/local.md): the row's images are jobs of one pipeline call, each
with its own CPU generator, seeded seed, seed + 1, … (A1111's `all_seeds`), so image k is the image a row of
n = 1 with seed + k - 1 makes (bit for bit with the same batch composition; docs/local.md says how close
across batch sizes). This module says which jobs a row becomes and gathers their images back into the
row's one `Image` (image 1, the others in `others`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from imagend.backends.base import Image, Request


class _RowJob(Protocol):
    @property
    def request(self) -> Request: ...

    @property
    def index(self) -> int: ...


Job = TypeVar("Job", bound=_RowJob)


def row_seeds(request: Request, random_seed: Callable[[], int]) -> list[int]:
    """The seeds of the row's images: its seed (or a random one), then the next n - 1."""
    return request.seeds(request.seed if request.seed is not None else random_seed())


def job_key(job: _RowJob) -> tuple[int, int]:
    """A job's key among a batch's: its row and its image's place in the row (0-based)."""
    return job.request.id, job.index


def gather(batch: Sequence[Request], jobs: Sequence[Job], image_of: Callable[[Job], Image]) -> list[Image]:
    """One Image per request, in order: its first job's, with the others' in `others`."""
    by_row: dict[int, list[Job]] = {}
    for job in jobs:
        by_row.setdefault(job.request.id, []).append(job)
    images = []
    for request in batch:
        made = [image_of(job) for job in sorted(by_row[request.id], key=lambda job: job.index)]
        images.append(dataclasses.replace(made[0], others=tuple(made[1:])) if len(made) > 1 else made[0])
    return images


def first_of_each_row(jobs: Sequence[Job]) -> list[int | None]:
    """For a call's previews: the row id of each image that is its row's first (None for the others)."""
    return [job.request.id if job.index == 0 else None for job in jobs]
