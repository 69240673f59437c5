"""SQL text, kept out of Python: the schema and the named queries."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


# The tables and triggers of the queue, then those of operations (pause, counts, position), then video rows',
# then the claim (a function of all of them).
SCHEMA_FILES = ("schema.sql", "schema_owners.sql", "schema_operations.sql", "schema_video.sql", "schema_claim.sql")
CLAIM_FILE = "claim.sql"  # the claim's statement and its two orders, which schema_claim.sql wraps
VIDEO_QUERY_FILES = ("queries_video.sql",)
QUERY_FILES = ("queries.sql", "queries_operations.sql", "queries_webapp.sql", "queries_owners.sql",
               "queries_presets.sql")
CLAIM_ORDERS = ("by_index", "by_affinity")


def _templates() -> dict[str, str]:
    """What `{{name}}` stands for in a query: column lists derived from the producer columns' table."""
    from imagend.db.columns import claimed_columns, insert_columns, insert_values

    return {"claimed_columns": claimed_columns(), "insert_columns": insert_columns(), "insert_values": insert_values()}


def _read(name: str) -> str:
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


def _named(text: str) -> dict[str, str]:
    """A file's `-- name:` blocks as {name: text}; text before its first name is a preamble."""
    parts = _NAME.split(text)
    return {name: body.strip().rstrip(";") for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def _fill(text: str, templates: dict[str, str]) -> str:
    for key, value in templates.items():
        text = text.replace("{{" + key + "}}", value)
    return text


@cache
def claim_statement(order: str) -> str:
    """The claim (claim.sql) in one of CLAIM_ORDERS, its arguments named p_* as imagend_claim_batch's."""
    blocks = _named(_read(CLAIM_FILE))
    return _fill(blocks["claim_statement"], {**_templates(), "claim_order": blocks[f"claim_order_{order}"]})


def schema() -> str:
    from imagend.db.columns import claimed_types

    templates = {"claimed_types": claimed_types(),
                 **{f"claim_{order}": claim_statement(order) for order in CLAIM_ORDERS}}
    return "\n".join(_fill(_read(name), templates) for name in SCHEMA_FILES)


@cache
def queries() -> dict[str, str]:
    """Parse the query files into {name: statement}; text before a file's first name is a preamble."""
    named: dict[str, str] = {}
    templates = _templates()
    for file in (*QUERY_FILES, *VIDEO_QUERY_FILES):
        for name, body in _named(_read(file)).items():
            if name in named:
                raise ValueError(f"query {name} is named twice")
            named[name] = _fill(body, templates)
    return named
