"""What one generator or processor pass did: counts the daemon sums into its pass log lines, and
tests assert on."""

from __future__ import annotations

from dataclasses import dataclass

COUNT_FIELDS = (
    "claimed", "done", "failed", "retried", "released", "submitted", "polled", "rescued", "lost", "expired",
    "spooled_written",
)


@dataclass
class PassCounts:
    """What one generator or processor pass did; tests assert on it."""

    claimed: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    released: int = 0
    submitted: int = 0
    polled: int = 0
    rescued: int = 0
    lost: int = 0
    expired: int = 0  # rows deleted or base64 dropped by retention (retention.py logs the detail)
    spooled_written: int = 0  # spooled images the store took at last (maintenance/spool.py)
    # The pass stopped early, with work left, because the other pass fell due.
    more: bool = False

    def merge(self, other: PassCounts) -> None:
        for name in COUNT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.more = self.more or other.more

    def summary(self) -> dict[str, int]:
        """The non-zero counts, for a log line."""
        return {name: getattr(self, name) for name in COUNT_FIELDS if getattr(self, name)}
