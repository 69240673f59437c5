"""Every error imagend raises on purpose, and what the daemon does with each.

The message of a row-level error is written to the row's `error` column as is: it
is for the producer to read, so it says what was wrong and never carries a secret.
"""

from __future__ import annotations


class ImagendError(Exception):
    """Base of all imagend errors."""


class ConfigError(ImagendError):
    """A setting is missing or bad; the message names the variable. Stops the daemon at start."""


class DatabaseUnavailable(ImagendError):
    """Postgres could not be reached or dropped the connection; the daemon backs off and retries."""


class RowLocked(ImagendError):
    """A row stayed locked by another session (a producer's SELECT … FOR UPDATE) past the lock
    timeout: the write is dropped for that row only; its lease brings it back later."""


class LostOwnership(ImagendError):
    """A guarded transition matched no row: someone else owns the row now, drop the result."""

    def __init__(self, image_id: int, transition: str) -> None:
        super().__init__(f"row {image_id}: {transition} matched no row we own; result dropped")
        self.image_id = image_id
        self.transition = transition


class RowError(ImagendError):
    """Something went wrong with one row; the message is written to its `error` column."""

    retryable = False


class BadInput(RowError):
    """The producer's row cannot be generated as written. Never retried."""


class PermanentError(RowError):
    """The backend refused the row for good (e.g. 400 from the API). Never retried."""


class RetryableError(RowError):
    """A passing fault (network, 5xx, out of memory, lost task): another attempt may succeed."""

    retryable = True


class Cancelled(RowError):
    """A producer set cancel_requested; the row ends Failed with error 'cancelled'."""

    def __init__(self) -> None:
        super().__init__("cancelled")


class Interrupted(ImagendError):
    """The daemon is stopping (or lost the row) while the work ran; the row is released, not failed."""


class QueueClosed(ImagendError):
    """The remote service is not taking work now; the rows wait, their attempt not counted."""

    def __init__(self, reason: str, retry_after_seconds: float) -> None:
        super().__init__(reason)
        self.retry_after_seconds = retry_after_seconds


UNEXPECTED_TEXT_MAX_CHARS = 300
FIRST_LINE_MAX_CHARS = 200


def clip(text: str, limit: int) -> str:
    """Text echoed in an error (producer input, a library's message) is cut, so an error never
    grows with what it quotes."""
    return text if len(text) <= limit else text[:limit] + "…"


def first_line(exc: BaseException, limit: int = FIRST_LINE_MAX_CHARS) -> str:
    """A library's message (libpq's, diffusers'), first line only (the rest repeats the statement or
    a traceback), cut short; empty when it says nothing."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else ""


class UnexpectedError(RetryableError):
    """What unexpected() makes: a bug or a library error, retried (its own kind in the metrics)."""


def unexpected(backend: str, exc: BaseException) -> RetryableError:
    """The one way a backend's unexpected exception (a bug, a library error) reaches a row:
    another attempt, with the exception's type and (cut, and redacted on the way to the row)
    text, so the producer and the operator see the same thing."""
    text = clip(str(exc), UNEXPECTED_TEXT_MAX_CHARS)
    return UnexpectedError(f"internal error in {backend}: {type(exc).__name__}" + (f": {text}" if text else ""))
