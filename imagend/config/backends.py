"""The names of the backends imagend knows: what IMAGEND_BACKEND(S) may name, what a row's `backend`
may hold (db/columns.py) and what backends/registry.py maps to classes (it asserts the same list)."""

from __future__ import annotations

BACKEND_NAMES: tuple[str, ...] = ("local", "fusionbrain", "placeholder")
# Remote backends hand work to a service (submit, then poll); the others generate in this process.
REMOTE_BACKENDS: tuple[str, ...] = ("fusionbrain",)
