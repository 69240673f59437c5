"""The Status enum is the SQL CHECK's list, and reaches Postgres by value (not by member name)."""

from __future__ import annotations

import re
from typing import Any

import psycopg

from imagend.db.rows import Status


def test_status_members_are_the_checks_values(conn: psycopg.Connection[dict[str, Any]]):
    row = conn.execute(
        "SELECT pg_get_constraintdef(oid) AS definition FROM pg_constraint WHERE conname = 'images_status_known'"
    ).fetchone()
    assert row is not None
    assert set(re.findall(r"'(\w+)'", row["definition"])) == {status.value for status in Status}


def test_a_status_reaches_postgres_by_value(conn: psycopg.Connection[dict[str, Any]]):
    image_id = conn.execute("INSERT INTO images (prompt) VALUES ('x') RETURNING id").fetchone()["id"]  # type: ignore[index]
    conn.execute("UPDATE images SET status = %s WHERE id = %s", [Status.READY_TO_PUBLISH, image_id])
    found = conn.execute("SELECT status FROM images WHERE id = ANY(%s) AND status = ANY(%s)",
                         [[image_id], [Status.READY_TO_PUBLISH, Status.FAILED]]).fetchone()
    assert found is not None and found["status"] == "ReadyToPublish" == Status.READY_TO_PUBLISH
