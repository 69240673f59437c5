"""Presets (queries_presets.sql, schema.sql's imagend_presets; docs/presets.md): what `imagend -preset`,
`-presets` and `-preset-delete` run. The daemon's two reads and writes of presets are the loops'
Repository's (presets, apply_preset)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.rows import dict_row

from imagend.db.statements import Statements
from imagend.errors import BadInput, clip

PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # schema.sql's CHECK says the same
# The preset's columns, in queries_presets.sql's presets_upsert.
PRESET_COLUMNS = ("prompt", "negative_prompt", "style", "width", "height", "model", "loras", "steps", "guidance",
                  "scheduler", "n", "post")


class PresetRepository(Statements):
    def set_preset(self, name: str, values: Mapping[str, Any]) -> None:
        """Create preset `name`, or change the values given (None clears one); values as
        presets.recipes.parse_preset_values checked them."""
        if not PRESET_NAME.fullmatch(name):
            raise BadInput(f"preset name {clip(name, 60)!r}: 1 to 64 letters, digits, and . _ - (not first)")
        params: dict[str, Any] = {"name": name}
        for column in PRESET_COLUMNS:
            params[column] = values.get(column)
            params[f"set_{column}"] = column in values
        try:
            self._rows("presets_upsert", params)
        except psycopg.errors.CheckViolation as exc:
            raise BadInput(f"preset {name}: a value is refused ({exc.diag.constraint_name})") from None

    def delete_preset(self, name: str) -> bool:
        return bool(self._rows("presets_delete", {"name": name}))

    def presets(self) -> list[dict[str, Any]]:
        return self._rows("presets_list", {}, dict_row)
