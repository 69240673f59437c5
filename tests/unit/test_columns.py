"""The one table of producer columns (imagend/db/columns.py) agrees with what derives from it and
with what cannot: the schema's column types, ClaimedRow's fields, the claim and the API's INSERT."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from imagend.db.columns import BACKEND_NAMES, COLUMNS, INSERTABLE, PRODUCER_COLUMNS, check_style
from imagend.db.rows import ClaimedRow
from imagend.db.sql import CLAIM_ORDERS, SCHEMA_FILES, claim_statement, queries, schema

SCHEMA = "\n".join((Path(__file__).resolve().parents[2] / "imagend/db/sql" / name).read_text() for name in SCHEMA_FILES)


def schema_types() -> dict[str, str]:
    column = r"^\s*(?:ALTER TABLE images ADD COLUMN IF NOT EXISTS\s+)?(\w+)\s+([A-Z][A-Z ]*?)(?:\s+NOT NULL.*)?[,;]?$"
    found = re.findall(column, SCHEMA, re.M)
    return {name: kind.strip() for name, kind in found}


def test_every_producer_column_has_the_schemas_type():
    types = schema_types()
    assert {c.name: c.sql_type for c in PRODUCER_COLUMNS} == {c.name: types[c.name] for c in PRODUCER_COLUMNS}


def test_claimed_row_fields_are_the_claims_columns_in_order():
    claimed = [name for c in PRODUCER_COLUMNS if c.claimed for name in c.claimed_fields]
    assert [f.name for f in dataclasses.fields(ClaimedRow)] == ["id", "attempt", *claimed, "cancel_requested",
                                                               "waited_seconds"]
    for order in CLAIM_ORDERS:
        claim = claim_statement(order)
        assert "{{" not in claim and all(re.search(rf"\b{name}\b", claim) for name in claimed)
        assert "i.init_image," not in claim  # image texts are never read by the claim, only their length
    # The function's result declares them in the same order (schema_claim.sql's RETURNS TABLE).
    declared = re.search(r"imagend_claim_batch\(.*?RETURNS TABLE \((.*?)\)\s*LANGUAGE", schema(), re.S)
    assert declared is not None and "{{" not in schema()
    assert [part.split()[0] for part in declared.group(1).split(",")] == ["id", "attempt", *claimed,
                                                                          "cancel_requested", "waited_seconds"]


def test_the_apis_insert_writes_every_insertable_column():
    insert = queries()["images_insert"]
    assert tuple(COLUMNS) == INSERTABLE
    for name in INSERTABLE:
        assert f"%({name})s" in insert
    assert "COALESCE(%(priority)s::integer, 0)" in insert  # NULL from the API: the column's default


def test_backend_names_are_the_registrys():
    from imagend.backends.registry import BACKENDS

    assert tuple(BACKENDS) == BACKEND_NAMES


def test_the_style_check_is_case_insensitive_and_names_the_choices():
    assert check_style("anime") == "ANIME" and check_style(None) is None
    try:
        check_style("cubism")
    except ValueError as exc:
        raise AssertionError from exc
    except Exception as exc:  # BadInput
        assert "unknown style 'cubism'; use one of: DEFAULT, KANDINSKY, UHD, ANIME" in str(exc)
    else:
        raise AssertionError("cubism passed")


def test_ranges_keep_their_wording():
    assert COLUMNS["width"].range_error(0, " pixels") == "width must be between 1 and 8192 pixels, got 0"
    assert COLUMNS["seed"].range_error(-1) == "seed must be between 0 and 9223372036854775807, got -1"
    assert COLUMNS["strength"].range_error(1.5) == "strength must be above 0 and at most 1, got 1.5"
    assert COLUMNS["guidance"].range_error(float("nan")) == "guidance must be between 0 and 50, got nan"
    assert COLUMNS["steps"].range_error(30) is None
