"""SQL text, kept out of Python: the schema and the named queries."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


# The tables and triggers of the queue, then those of operations (pause, counts, position), then video rows'.
SCHEMA_FILES = ("schema.sql", "schema_owners.sql", "schema_operations.sql", "schema_video.sql")
VIDEO_QUERY_FILES = ("queries_video.sql",)
QUERY_FILES = ("queries.sql", "queries_operations.sql", "queries_webapp.sql", "queries_owners.sql",
               "queries_presets.sql")


def _templates() -> dict[str, str]:
    """What `{{name}}` stands for in a query: column lists derived from the producer columns' table."""
    from imagend.db.columns import claimed_columns, insert_columns, insert_values

    return {"claimed_columns": claimed_columns(), "insert_columns": insert_columns(), "insert_values": insert_values()}


def _read(name: str) -> str:
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


def schema() -> str:
    return "\n".join(_read(name) for name in SCHEMA_FILES)


@cache
def queries() -> dict[str, str]:
    """Parse the query files into {name: statement}; text before a file's first name is a preamble."""
    named: dict[str, str] = {}
    templates = _templates()
    for file in (*QUERY_FILES, *VIDEO_QUERY_FILES):
        parts = _NAME.split(_read(file))
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in named:
                raise ValueError(f"query {name} is named twice")
            for key, text in templates.items():
                body = body.replace("{{" + key + "}}", text)
            named[name] = body.strip().rstrip(";")
    return named
