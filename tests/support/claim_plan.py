"""The claim's plan as imagend_claim_batch runs it (schema_claim.sql): its statement (claim.sql) prepared
with the function's argument types, its generic plan (the one PL/pgSQL caches, the values unknown),
enable_sort off as the function sets it. EXPLAIN only: nothing is claimed."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from imagend.db.sql import claim_statement

# imagend_claim_batch's arguments, in order, with their types (schema_claim.sql).
ARGUMENTS = (("now", "timestamptz"), ("backend", "text"), ("default_backend", "text"), ("skip_backends", "text[]"),
             ("limit", "integer"), ("owner", "text"), ("lease_seconds", "float8"), ("loaded_models", "text[]"),
             ("switch_seconds", "float8"), ("mark_idle", "boolean"))


def claim_plan(conn: psycopg.Connection[Any], params: Mapping[str, Any], order: str = "by_index") -> str:
    text = claim_statement(order)
    for number, (name, _kind) in enumerate(ARGUMENTS, 1):
        text = re.sub(rf"\bp_{name}\b", f"${number}", text)
    conn.execute(f"PREPARE imagend_claim_probe ({', '.join(kind for _, kind in ARGUMENTS)}) AS {text}")
    try:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute("SET enable_sort = off")
        values = ", ".join(f"%({name})s::{kind}" for name, kind in ARGUMENTS)
        # Bound here: a utility statement (EXPLAIN) takes no server-side parameters.
        with psycopg.ClientCursor(conn, row_factory=tuple_row) as cur:
            rows = cur.execute(f"EXPLAIN EXECUTE imagend_claim_probe({values})", dict(params)).fetchall()
        return "\n".join(str(row[0]) for row in rows)
    finally:
        conn.execute("DEALLOCATE imagend_claim_probe")
        conn.execute("RESET plan_cache_mode")
        conn.execute("RESET enable_sort")
