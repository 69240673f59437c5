"""The database roles docs/running.md describes ("Database roles and privileges"), created with exactly the
grants it shows (issue 25, item 10): once the owner has applied the schema, a daemons' role with data rights
only runs the daemon, and a producer's role with rights on `images` and its sequence inserts, reads, waits
for, cancels and retries rows. A daemons' role facing a schema to upgrade stops at start saying the owner
is needed."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from support.daemons import run_imagend
from support.db import base_env, fetch_image, wait_until

RUNNING = Path(__file__).resolve().parents[2] / "docs" / "running.md"


def documented_grants() -> tuple[list[str], list[str]]:
    """The daemons' and the producer's GRANT statements, as docs/running.md shows them."""
    text = RUNNING.read_text()
    start = text.index("## Database roles and privileges")
    section = text[start : text.index("\n## ", start + 1)]
    blocks = re.findall(r"```sql\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 2, "the section shows the daemons' grants, then the producer's"
    daemon, producer = ([line for line in block.splitlines() if line.strip()] for block in blocks)
    assert all(line.startswith("GRANT ") for line in daemon + producer)
    return daemon, producer


@dataclass
class Roles:
    daemon_url: str
    producer_url: str


def url_as(db_url: str, user: str, password: str) -> str:
    params = conninfo_to_dict(db_url)
    params.update(user=user, password=password)
    return make_conninfo(**params)


@pytest.fixture
def roles(db_url: str) -> Iterator[Roles]:
    """Two login roles, each with exactly the documented grants on this test's database (its schema applied
    by the server's admin, the owner); dropped afterwards."""
    tag = uuid.uuid4().hex[:8]
    daemon, producer = f"imagend_daemon_{tag}", f"app_{tag}"
    dbname = conninfo_to_dict(db_url)["dbname"]
    daemon_grants, producer_grants = documented_grants()
    with psycopg.connect(db_url, autocommit=True) as admin:
        for role in (daemon, producer):
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(tag)))
        for line in daemon_grants:
            admin.execute(line.replace("imagend_daemon", daemon).replace("DATABASE app", f'DATABASE "{dbname}"'))
        for line in producer_grants:
            admin.execute(re.sub(r"\bTO app;", f"TO {producer};", line))
        # PUBLIC's default rights on the schema (PostgreSQL 14 gives CREATE to all) stay as the server has them;
        # what the roles may do beyond the grants is what any role may do there.
    try:
        yield Roles(url_as(db_url, daemon, tag), url_as(db_url, producer, tag))
    finally:
        with psycopg.connect(db_url, autocommit=True) as admin:
            for role in (daemon, producer):
                admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_data_only_daemon_role_and_a_producer_role_run_imagend(db_url, roles, tmp_path):
    env = base_env(roles.daemon_url)
    with psycopg.connect(roles.producer_url, autocommit=True) as app:
        app.execute("LISTEN imagend_done")
        [(image_id,)] = app.execute("INSERT INTO images (prompt) VALUES ('a red fox') RETURNING id").fetchall()
        [(ahead,)] = app.execute("SELECT ahead FROM imagend_position(%s)", [image_id]).fetchall()
        assert ahead == 0
        result = run_imagend(["-generator"], env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        notes = list(app.notifies(timeout=10, stop_after=1))
        assert [json.loads(n.payload) for n in notes] == [{"id": image_id, "status": "ReadyToPublish"}]
        [(status, has_image)] = app.execute("SELECT status, base64 IS NOT NULL FROM images WHERE id = %s",
                                            [image_id]).fetchall()
        assert (status, has_image) == ("ReadyToPublish", True)
        # Cancel a waiting row, then retry it (the README's statements), with the producer's rights only.
        [(later,)] = app.execute("INSERT INTO images (prompt, run_after) VALUES ('later', now() + interval '1 hour') "
                                 "RETURNING id").fetchall()
        app.execute("UPDATE images SET cancel_requested = true WHERE id = %s", [later])
        app.execute("UPDATE images SET status = 'ReadyToGenerate', attempts = 0, error = NULL, run_after = now() "
                    "WHERE id = %s", [later])
    assert run_imagend(["-generator"], env, cwd=tmp_path).returncode == 0
    with psycopg.connect(db_url, autocommit=True) as admin:
        assert fetch_image(admin, later)["status"] == "ReadyToPublish"
    status = run_imagend(["-status"], env, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["queue"]
    pause = run_imagend(["-pause", "placeholder"], env, cwd=tmp_path)
    assert pause.returncode == 0 and json.loads(pause.stdout) == {"paused": ["placeholder"]}


def test_the_data_only_role_runs_the_daemon_and_a_schema_upgrade_asks_for_the_owner(db_url, roles, tmp_path):
    from support.daemons import DaemonProcess

    daemon = DaemonProcess(["-cron"], base_env(roles.daemon_url), tmp_path)
    try:
        wait_until(lambda: "daemon_started" in daemon.output(), 30, what="the daemon to start")
        with psycopg.connect(roles.producer_url, autocommit=True) as app:
            [(image_id,)] = app.execute("INSERT INTO images (prompt) VALUES ('now') RETURNING id").fetchall()
            wait_until(lambda: app.execute("SELECT status FROM images WHERE id = %s",
                                           [image_id]).fetchone() == ("ReadyToPublish",), 15, what="the row")
    finally:
        assert daemon.stop() == 0, daemon.output()
    with psycopg.connect(db_url, autocommit=True) as admin:  # as if the code were newer than the schema
        admin.execute("COMMENT ON TABLE images IS 'imagend schema sha256:an-older-one'")
    result = run_imagend(["-generator"], base_env(roles.daemon_url), cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot apply the schema" in result.stderr and "the schema needs its owner" in result.stderr
    assert "imagend -status" in result.stderr and "permission denied" in result.stderr
