"""The `imagend -status` report: the queue by status and backend, the running daemons and the pauses,
as one JSON object an operator's script can read."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from imagend.db.operations import ALL_BACKENDS, UNKNOWN_BACKEND, known_or_unknown
from imagend.db.rows import FleetDaemon, Pause, Status


def status_report(queue: Sequence[dict[str, Any]], daemons: Sequence[FleetDaemon], paused: Sequence[Pause],
                  default_backend: str, serving: dict[str, int], database: str) -> dict[str, Any]:
    """`serving`: running daemons per backend (Repository.unserved); `database`: where it was read, in
    words (never a password), first, so that an empty queue is never mistaken for a dead fleet."""
    return {
        "database": database,
        "queue": [_status_line(row, serving) for row in _fold(queue, default_backend)],
        "daemons": [_daemon_line(d, paused) for d in daemons],
        "paused": [dataclasses.asdict(p) for p in paused],
    }


def _fold(queue: Sequence[dict[str, Any]], default_backend: str) -> list[dict[str, Any]]:
    """One line per (status, backend) as /metrics labels them: a NULL backend under IMAGEND_BACKEND's name
    (the claim fills it in so), and backends imagend does not know folded into one (10,000 producer-written
    names make one line, not 10,000); rows summed, the oldest wait kept."""
    lines: dict[tuple[str, str], dict[str, Any]] = {}
    for row in queue:
        backend = known_or_unknown(row["backend"]) or default_backend
        key = (row["status"], backend)
        line = lines.get(key)
        if line is None:
            lines[key] = {**row, "backend": backend}
            continue
        line["rows"] += row["rows"]
        if backend == UNKNOWN_BACKEND:
            line["avg_generation_seconds"] = None
        elif line["avg_generation_seconds"] is None:
            line["avg_generation_seconds"] = row["avg_generation_seconds"]
        if row["oldest_waiting"] is not None and (line["oldest_waiting"] is None
                                                  or row["oldest_waiting"] > line["oldest_waiting"]):
            line["oldest_waiting"] = row["oldest_waiting"]
    return list(lines.values())


def _daemon_line(daemon: FleetDaemon, paused: Sequence[Pause]) -> dict[str, Any]:
    """One running daemon for -status: what its heartbeat says, and whether all it serves is paused."""
    line = dataclasses.asdict(daemon)
    names = {p.backend for p in paused}
    line["paused"] = ALL_BACKENDS in names or set(daemon.backends) <= names
    return line


def _status_line(row: dict[str, Any], serving: dict[str, int]) -> dict[str, Any]:
    """One line of images_queue_status for JSON: the oldest waiting row's age in seconds (a number,
    not an interval's text), the average generation time as a number; on waiting lines, how many
    running daemons serve their backend and `unserved` when none does."""
    line = dict(row)
    oldest = line.pop("oldest_waiting", None)
    line["oldest_waiting_seconds"] = round(oldest.total_seconds(), 3) if isinstance(oldest, timedelta) else None
    average = line.get("avg_generation_seconds")
    if average is not None:
        line["avg_generation_seconds"] = round(float(average), 3)
    if line["status"] == Status.READY_TO_GENERATE:
        count = serving.get(line["backend"])  # None: no such backend; any daemon fails them
        line["daemons_serving"] = count
        line["unserved"] = count == 0
    return line
