"""SQL text, kept out of Python: the schema and the named queries."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def schema() -> str:
    return files(__package__).joinpath("schema.sql").read_text(encoding="utf-8")


@cache
def queries() -> dict[str, str]:
    """Parse queries.sql into {name: statement}; text before the first name is a preamble."""
    text = files(__package__).joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    return {name: body.strip().rstrip(";") for name, body in zip(parts[1::2], parts[2::2], strict=True)}
