"""Owners, plans and per-owner API keys (queries_owners.sql, schema_owners.sql; docs/owners.md): what
`imagend -plan/-assign/-plans/-key-create/-key-revoke` and the HTTP API's owner keys run.

Words: an *owner* here is a customer (the producer column images.owner). A daemon's identity is the
loops' Repository.owner (images.locked_by): nothing here touches it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from imagend.db.columns import OWNER_MAX_CHARS
from imagend.db.statements import Statements
from imagend.errors import BadInput, clip

SCOPES: tuple[str, ...] = ("submit", "read", "cancel", "delete")
KEY_PREFIX = "imk_"  # every owner key starts so: told apart from the operator's token at a glance
_PREFIX_CHARS = 8  # hex after KEY_PREFIX: the key's public name (imk_1a2b3c4d)
_PLAN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
PERIODS = ("day", "week", "month")
# `-plan NAME key=value`: the keys, the column each sets, and how its value is read ('none': no limit).
PLAN_KEYS: dict[str, str] = {
    "max_running": "max_running", "weight": "weight", "max_waiting": "max_waiting",
    "rate": "rate_per_minute", "rate_per_minute": "rate_per_minute", "budget": "budget",
    "period": "budget_period", "budget_period": "budget_period", "default": "is_default", "is_default": "is_default",
}
_INTEGER_KEYS = frozenset({"max_running", "max_waiting"})
_NUMBER_KEYS = frozenset({"weight", "rate_per_minute", "budget"})
_NULLABLE = frozenset({"max_running", "max_waiting", "rate_per_minute", "budget"})
NUMBER_MAX = 1e6  # weight and rate, as the CHECKs bound them


def owner_problem(owner: str) -> str | None:
    """The sentence an owner string gets when imagend does not take it (schema_owners.sql's
    imagend_owner_problem says the same to a SQL insert)."""
    if not 1 <= len(owner) <= OWNER_MAX_CHARS:
        return f"owner must be 1 to {OWNER_MAX_CHARS} characters, got {len(owner)}"
    if _CONTROL.search(owner):
        return "owner must not contain control characters"
    return None


def parse_plan_values(pairs: Sequence[str]) -> dict[str, Any]:
    """`-plan NAME`'s `key=value` words as column values; BadInput names the word it cannot read."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        column = PLAN_KEYS.get(key.strip().lower())
        if not sep or column is None:
            raise BadInput(f"cannot read {clip(pair, 60)!r}: use key=value with a key among "
                           f"{', '.join(sorted(PLAN_KEYS))}")
        text = text.strip()
        if text.lower() in ("none", "null", "") and column in _NULLABLE:
            values[column] = None
        elif column in _INTEGER_KEYS:
            if not text.isdigit() or int(text) < 1 or int(text) > 2**31 - 1:
                raise BadInput(f"{key} must be a whole number of at least 1 (or none), got {clip(text, 40)!r}")
            values[column] = int(text)
        elif column in _NUMBER_KEYS:
            try:
                number = float(text)
            except ValueError:
                raise BadInput(f"{key} must be a number above 0, got {clip(text, 40)!r}") from None
            if not math.isfinite(number) or number <= 0 or (column != "budget" and number > NUMBER_MAX):
                raise BadInput(f"{key} must be a number above 0 (and at most {NUMBER_MAX:g}), got {clip(text, 40)!r}")
            values[column] = number
        elif column == "budget_period":
            if text not in PERIODS:
                raise BadInput(f"period must be one of {', '.join(PERIODS)}, got {clip(text, 40)!r}")
            values[column] = text
        else:  # is_default
            if text.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise BadInput(f"default must be true or false, got {clip(text, 40)!r}")
            values[column] = text.lower() in ("true", "yes", "1")
    return values


@dataclass(frozen=True, slots=True)
class OwnerKey:
    """An owner's API key as a request presents it, found and checked."""

    owner: str
    scopes: tuple[str, ...]


def new_key() -> tuple[str, str, str]:
    """A new key: (the key, shown once; its prefix, its public name; its SHA-256, what is stored)."""
    prefix = KEY_PREFIX + secrets.token_hex(_PREFIX_CHARS // 2)
    key = f"{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, key_hash(key)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str | None:
    """The prefix of something shaped as an owner key (None: not one)."""
    head = key[: len(KEY_PREFIX) + _PREFIX_CHARS]
    return head if key.startswith(KEY_PREFIX) and len(head) == len(KEY_PREFIX) + _PREFIX_CHARS else None


class OwnersRepository(Statements):
    """The operator's and the API's statements about owners (queries_owners.sql)."""

    # -- plans and owners ------------------------------------------------------------

    def set_plan(self, name: str, values: Mapping[str, Any]) -> None:
        if not _PLAN_NAME.fullmatch(name):
            raise BadInput(f"plan name {clip(name, 60)!r}: 1 to 64 letters, digits, and . _ + - (not first)")
        params: dict[str, Any] = {"name": name}
        for column in ("max_running", "weight", "max_waiting", "rate_per_minute", "budget", "budget_period",
                       "is_default"):
            params[column] = values.get(column)
            params[f"set_{column}"] = column in values
        try:
            with self._cursor() as cur, cur.connection.transaction():
                if values.get("is_default"):  # one default plan: the flag leaves the others first
                    cur.execute(self._sql["plans_clear_default"], {"name": name})
                cur.execute(self._sql["plans_upsert"], params)
        except psycopg.errors.CheckViolation as exc:
            raise BadInput(f"plan {name}: a value is out of range ({exc.diag.constraint_name})") from None

    def delete_plan(self, name: str) -> bool:
        return bool(self._rows("plans_delete", {"name": name}))

    def plans(self) -> list[dict[str, Any]]:
        return self._rows("plans_list", {}, dict_row)

    def assign(self, owner: str, plan: str | None) -> None:
        """Put `owner` on `plan` (None: the default plan). BadInput for an unknown plan or a bad owner."""
        problem = owner_problem(owner)
        if problem is not None:
            raise BadInput(problem)
        try:
            self._rows("owners_assign", {"owner": owner, "plan": plan})
        except psycopg.errors.ForeignKeyViolation:
            known = ", ".join(p["name"] for p in self.plans()) or "none yet: create one with -plan NAME …"
            raise BadInput(f"unknown plan {clip(plan or '', 60)!r}; the plans are: {known}") from None

    def top_owners(self, limit: int = 10) -> list[dict[str, Any]]:
        return self._rows("owners_top", {"limit": limit}, dict_row)

    def usage(self, owner: str, days: int = 31) -> list[dict[str, Any]]:
        return self._rows("owners_usage", {"owner": owner, "days": days}, dict_row)

    # -- keys --------------------------------------------------------------------------

    def create_key(self, owner: str, scopes: Sequence[str] = SCOPES) -> str:
        """A new key for `owner` with `scopes`: returned once, stored hashed."""
        problem = owner_problem(owner)
        if problem is not None:
            raise BadInput(problem)
        unknown = [scope for scope in scopes if scope not in SCOPES]
        if unknown or not scopes:
            raise BadInput(f"scopes must be among {', '.join(SCOPES)}, got {', '.join(scopes) or 'none'}")
        key, prefix, digest = new_key()
        self._rows("keys_create", {"prefix": prefix, "hash": digest, "owner": owner, "scopes": list(scopes)})
        return key

    def revoke_key(self, key_or_prefix: str) -> list[dict[str, Any]]:
        """Revoke by the whole key or its prefix (imk_1a2b3c4d); returns what was revoked (prefix, owner)."""
        text = key_or_prefix.strip()
        rows: list[dict[str, Any]] = self._rows(
            "keys_revoke", {"hash": key_hash(text), "prefix": key_prefix(text) if len(text) > 12 else text}, dict_row)
        return rows

    def find_key(self, key: str) -> OwnerKey | None:
        """The owner and scopes of a live key (None: unknown, revoked, or not a key)."""
        prefix = key_prefix(key)
        if prefix is None:
            return None
        rows = self._rows("keys_lookup", {"prefix": prefix}, dict_row)
        if not rows or not hmac.compare_digest(rows[0]["hash"], key_hash(key)):
            return None
        return OwnerKey(owner=rows[0]["owner"], scopes=tuple(rows[0]["scopes"]))

    # -- an owner's rows ---------------------------------------------------------------

    def owner_of(self, image_id: int) -> tuple[bool, str | None]:
        """(the row exists, its owner)."""
        rows = self._rows("images_owner_of", {"id": image_id})
        return (True, rows[0][0]) if rows else (False, None)

    def list_owned(self, owner: str, status: str | None, before: int | None, limit: int) -> list[dict[str, Any]]:
        return self._rows("images_list_owned", {"owner": owner, "status": status, "before": before, "limit": limit},
                          dict_row)

    def refused_at_insert(self, image_id: int) -> tuple[str, bool] | None:
        """(the reason, whether max_waiting) when the owner's plan refused the row just inserted (deleted
        then); None when it was taken."""
        rows = self._rows("images_refused_at_insert", {"id": image_id})
        return (rows[0][0], rows[0][1]) if rows else None

    def delete(self, image_id: int, owner: str | None) -> dict[str, Any] | None:
        """Delete the row (only `owner`'s when given); its stored objects' locations, or None."""
        rows = self._rows("images_delete", {"id": image_id, "owner": owner}, dict_row)
        return rows[0] if rows else None
