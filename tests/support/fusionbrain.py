"""FusionBrain test helpers: a fake with test timings (`fake_server`), the environment that points
a daemon at it (`fb_env`), an in-process daemon driven pass by pass (`rig`, `Rig`, `drive`), and a
way to make waiting rows due without sleeping (`make_due`, `statuses`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from imagend.backends import create_backends
from imagend.config.settings import Settings
from imagend.queue.daemon import Daemon
from imagend.queue.pass_counts import PassCounts
from imagend.storage import open_store
from imagend.testing.fusionbrain_fake import DEFAULT_API_KEY, DEFAULT_SECRET_KEY, FusionBrainFake

from support.db import TERMINAL


def fake_server(**options: Any) -> FusionBrainFake:
    """A fake with test timings: tasks finish 1 s after submission (tests advance its clock), first poll at once."""
    defaults: dict[str, Any] = {"generation_seconds": 1.0, "status_time": 0, "hang_seconds": 3.0}
    return FusionBrainFake(**{**defaults, **options})


def fb_env(fake: FusionBrainFake, **overrides: str) -> dict[str, str]:
    """Settings that point the fusionbrain backend at the fake, with quick HTTP retries."""
    env = {
        "IMAGEND_BACKEND": "fusionbrain",
        "IMAGEND_BACKENDS": "fusionbrain",
        **fake.client_env(),
        # The client keeps the default keys even when a test changes the ones the fake expects.
        "FUSION_BRAIN_API_KEY": DEFAULT_API_KEY,
        "FUSION_BRAIN_SECRET_KEY": DEFAULT_SECRET_KEY,
        "IMAGEND_FUSIONBRAIN_TIMEOUT": "1",
        "IMAGEND_FUSIONBRAIN_HTTP_ATTEMPTS": "3",
        "IMAGEND_FUSIONBRAIN_RETRY_WAIT": "0.01",
    }
    env.update(overrides)
    return env


@dataclasses.dataclass
class Rig:
    """One daemon in this process, driven one pass at a time."""

    settings: Settings
    daemon: Daemon

    def generate(self) -> PassCounts:
        return self.daemon.run_generator_once()

    def process(self) -> PassCounts:
        return self.daemon.run_processor_once()


@contextmanager
def rig(
    make_settings: Any, make_repo: Any, fake: FusionBrainFake, owner: str = "daemon-a", **overrides: str
) -> Iterator[Rig]:
    settings = make_settings(**fb_env(fake, **overrides))
    repo = make_repo(settings, owner=owner)
    backends = create_backends(settings)
    daemon = Daemon(settings, repo, backends, listen_url="unused",
                             store=open_store(settings.storage, settings.env.values) if settings.storage else None)
    try:
        yield Rig(settings, daemon)
    finally:
        daemon.io_pool.shutdown(wait=True)
        for backend in backends.values():
            backend.close()


def make_due(conn: psycopg.Connection[Any]) -> None:
    """What waiting does, without the wait: backoffs and next polls fall due now."""
    conn.execute("UPDATE images SET run_after = now() WHERE status = 'ReadyToGenerate'")
    conn.execute("UPDATE images SET lease_until = now() WHERE status = 'Generate' AND locked_by IS NULL")


def statuses(conn: psycopg.Connection[Any], ids: Sequence[int]) -> list[str]:
    rows = conn.execute("SELECT status FROM images WHERE id = ANY(%s) ORDER BY id", [list(ids)]).fetchall()
    return [row["status"] if isinstance(row, dict) else row[0] for row in rows]


def drive(
    the_rig: Rig, conn: psycopg.Connection[Any], fake: FusionBrainFake, ids: Sequence[int], rounds: int = 12
) -> None:
    """Generator pass, let the fake's tasks finish, processor pass; repeat until every row is terminal."""
    for _ in range(rounds):
        the_rig.generate()
        fake.advance(fake.generation_seconds + 0.01)
        the_rig.process()
        if all(status in TERMINAL for status in statuses(conn, ids)):
            return
        make_due(conn)
    raise AssertionError(f"rows not terminal after {rounds} rounds: {statuses(conn, ids)}")
