"""What the producer's table (docs/producers.md, moved there from the README) says about `seed`, `params`
and `run_after` is what the daemon does: the CLI run on rows a producer wrote, and the table's own words
checked against the outcome."""

from __future__ import annotations

import re
from pathlib import Path

from support.daemons import run_imagend
from support.db import base_env, fetch_image, insert_image
from support.fusionbrain import drive, fake_server, rig

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "producers.md"


def column_row(name: str) -> tuple[str, str]:
    """(written by, meaning) of the producer's table row for `name`."""
    match = re.search(rf"^\| `{name}` \| ([^|]+) \| (.+) \|$", GUIDE.read_text(), re.MULTILINE)
    assert match, f"no row of its own for {name} in the producer's table"
    return match.group(1).strip(), match.group(2).strip()


def test_seed_only_the_local_backend_writes_one_back(db_url, conn):
    written_by, meaning = column_row("seed")
    assert "local backend" in written_by and "the local backend writes back" in meaning
    assert "placeholder" in meaning and "Fusion Brain" in meaning
    left_null = insert_image(conn, "no seed given")
    given = insert_image(conn, "seed given", seed=42)
    assert run_imagend(["-generator"], base_env(db_url)).returncode == 0
    assert fetch_image(conn, left_null)["status"] == fetch_image(conn, given)["status"] == "ReadyToPublish"
    assert fetch_image(conn, left_null)["seed"] is None  # the placeholder writes no seed back
    assert fetch_image(conn, given)["seed"] == 42


def test_run_after_a_producer_schedules_a_row_with_it(db_url, conn):
    written_by, meaning = column_row("run_after")
    assert "producer" in written_by and "schedules a row for later" in meaning
    later = insert_image(conn, "not before an hour from now")
    conn.execute("UPDATE images SET run_after = now() + interval '1 hour' WHERE id = %s", [later])
    assert run_imagend(["-generator"], base_env(db_url)).returncode == 0
    assert fetch_image(conn, later)["status"] == "ReadyToGenerate"  # not claimed before its time
    conn.execute("UPDATE images SET run_after = now() WHERE id = %s", [later])
    assert run_imagend(["-generator"], base_env(db_url)).returncode == 0
    assert fetch_image(conn, later)["status"] == "ReadyToPublish"


def test_params_no_backend_reads_them(db_url, conn, make_settings, make_repo):
    _, meaning = column_row("params")
    assert "no backend reads it" in meaning
    kept = insert_image(conn, "with my own metadata", params={"order": 1234, "anything": "at all"})
    assert run_imagend(["-generator"], base_env(db_url)).returncode == 0
    row = fetch_image(conn, kept)
    assert (row["status"], row["params"]) == ("ReadyToPublish", {"order": 1234, "anything": "at all"})
    remote = insert_image(conn, "to Fusion Brain", params={"order": 99})
    with fake_server() as fake, rig(make_settings, make_repo, fake) as r:
        drive(r, conn, fake, [remote])
        [sent] = fake.submitted
    assert fetch_image(conn, remote)["status"] == "ReadyToPublish"
    assert "order" not in sent.params  # nothing of the row's params reaches the API
