"""Timestamps Python cannot hold, read anyway. A producer may write `'infinity'`, `'-infinity'`, a
year BC or past 9999 into any timestamp column; psycopg refuses to load those into `datetime` and
the whole statement's result is lost (every claim, /metrics, `-status`). Loaded leniently instead:
the latest or earliest `datetime` there is, so one odd row reads as "far future / far past"."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg.adapt import AdaptersMap
from psycopg.types.datetime import DateLoader, TimestampLoader, TimestamptzLoader

LATEST = datetime.max.replace(tzinfo=UTC)
EARLIEST = datetime.min.replace(tzinfo=UTC)


def _far(data: Any) -> bool:
    """True for the far past (-infinity, a year BC), False for the far future (infinity, year > 9999)."""
    text = bytes(data)
    return text.startswith(b"-") or text.endswith(b" BC")


class LenientTimestamptzLoader(TimestamptzLoader):
    def load(self, data: Any) -> datetime:
        try:
            return super().load(data)
        except psycopg.DataError:
            return EARLIEST if _far(data) else LATEST


class LenientTimestampLoader(TimestampLoader):
    def load(self, data: Any) -> datetime:
        try:
            return super().load(data)
        except psycopg.DataError:
            return (EARLIEST if _far(data) else LATEST).replace(tzinfo=None)


class LenientDateLoader(DateLoader):
    def load(self, data: Any) -> date:
        try:
            return super().load(data)
        except psycopg.DataError:
            return date.min if _far(data) else date.max


def register_lenient_timestamps(adapters: AdaptersMap | None = None) -> None:
    """On `adapters` (default: psycopg's global map, which every new connection copies)."""
    target = adapters if adapters is not None else psycopg.adapters
    target.register_loader("timestamptz", LenientTimestamptzLoader)
    target.register_loader("timestamp", LenientTimestampLoader)
    target.register_loader("date", LenientDateLoader)
