"""The typed environment reader: each setting read by name with its type, default and range, an
error naming the variable; Secret keeps a value out of reprs and logs."""

from __future__ import annotations

import builtins
import re
from collections.abc import Mapping

from imagend.config.durations import NANOSECONDS_PER_SECOND, DurationSyntaxError, parse_go_duration
from imagend.errors import ConfigError

SECONDS_PER_DAY = 86400
_DECIMAL_SECONDS = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
# Retention ages may start with whole days, which Go's durations lack ('30d', '1d12h').
_DAYS = re.compile(r"([0-9]+)d(.*)")
# `VALUE # a note`: godotenv (the Go service) drops the note, systemd's EnvironmentFile keeps it in the value.
INLINE_COMMENT = re.compile(r"\s#")


class Secret:
    """A value that must never be printed: repr and str show stars."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Env:
    """Typed reads of one environment mapping; every error names the variable."""

    def __init__(self, values: Mapping[builtins.str, builtins.str]) -> None:
        self.values = values

    def str(self, name: builtins.str, default: builtins.str | None = None) -> builtins.str | None:
        value = self.values.get(name, "").strip()
        return value if value else default

    def choice(self, name: builtins.str, default: builtins.str, choices: tuple[builtins.str, ...]) -> builtins.str:
        value = (self.str(name) or default).lower()
        if value not in choices:
            raise ConfigError(f"{name}={value!r} is not one of: {', '.join(choices)}{inline_comment_hint(value)}")
        return value

    def int(
        self,
        name: builtins.str,
        default: builtins.int,
        minimum: builtins.int | None = None,
        maximum: builtins.int | None = None,
    ) -> builtins.int:
        raw = self.str(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a whole number{inline_comment_hint(raw)}") from None
        _check_range(name, value, minimum, maximum)
        return value

    def float(
        self, name: builtins.str, default: builtins.float, minimum: builtins.float | None = None
    ) -> builtins.float:
        raw = self.str(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number{inline_comment_hint(raw)}") from None
        _check_range(name, value, minimum, None)
        return value

    def seconds(self, name: builtins.str, default: builtins.float, minimum: builtins.float = 0.0) -> builtins.float:
        """Seconds as a decimal number ('300', '0.5') or a Go duration ('5m', '1h30m', '500ms', '.5s',
        '1μs'); never negative (a wait, a timeout or an interval below zero means nothing)."""
        raw = self.str(name)
        if raw is None:
            return default
        if _DECIMAL_SECONDS.fullmatch(raw):
            value = float(raw)
        else:
            try:
                value = parse_go_duration(raw) / NANOSECONDS_PER_SECOND
            except DurationSyntaxError as exc:
                raise ConfigError(
                    f"{name}={raw!r} is not a duration: {exc} "
                    "(write seconds, like 30 or 0.5, or a Go duration, like 30s, 5m, 1h30m, 500ms)"
                    + inline_comment_hint(raw)
                ) from None
        if value < 0:
            raise ConfigError(f"{name}={raw!r} is negative; a duration here must be 0 or more")
        _check_range(name, value, minimum, None)
        return value

    def age(self, name: builtins.str) -> builtins.float | None:
        """An age for retention: a Go duration, optionally led by whole days ('30d', '1d12h', '24h');
        unset or 0 means off (None)."""
        raw = self.str(name)
        if raw is None:
            return None
        match = _DAYS.fullmatch(raw)
        try:
            days = int(match.group(1)) if match else 0
            rest = match.group(2) if match else raw
            seconds = days * SECONDS_PER_DAY + (parse_go_duration(rest) / NANOSECONDS_PER_SECOND if rest else 0.0)
        except DurationSyntaxError as exc:
            raise ConfigError(
                f"{name}={raw!r} is not an age: {exc} (write a Go duration, like 24h or 90m, or days, like 30d)"
            ) from None
        if seconds < 0:
            raise ConfigError(f"{name}={raw!r} is negative; an age must be 0 (off) or more")
        return seconds or None

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
        raw = self.str(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={raw!r} is not a boolean (true/false){inline_comment_hint(raw)}")

    def secret(self, name: builtins.str) -> Secret | None:
        value = self.str(name)
        return Secret(value) if value else None


def inline_comment_hint(raw: str) -> str:
    """What to add to an error about a value that carries an inline comment (nothing otherwise)."""
    if not INLINE_COMMENT.search(raw):
        return ""
    return (" (it ends in an inline comment, which systemd's EnvironmentFile keeps as part of the value: "
            "put the comment on a line of its own)")


def _check_range(name: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={value} is above the maximum {maximum}")


