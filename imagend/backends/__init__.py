"""Backends by name (see registry.py); each is imported only when served."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from imagend.backends.base import Backend
from imagend.backends.registry import BACKENDS

if TYPE_CHECKING:  # config reads the registry; importing it here at run time would be circular
    from imagend.config import Settings


def create_backend(name: str, settings: Settings) -> Backend:
    spec = BACKENDS.get(name)
    if spec is None:
        raise ValueError(f"no backend named {name!r}")
    backend: Backend = getattr(importlib.import_module(spec.module), spec.cls).from_settings(settings)
    return backend


def create_backends(settings: Settings) -> dict[str, Backend]:
    """Every backend this daemon serves, loaded once for the daemon's life."""
    return {name: create_backend(name, settings) for name in settings.served_backends}
