"""Backends by name (see registry.py); each is imported only when served."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from imagend.backends.base import Backend
from imagend.backends.registry import BACKENDS
from imagend.errors import ConfigError

if TYPE_CHECKING:  # config reads the registry; importing it here at run time would be circular
    from imagend.config.settings import Settings


def missing_libraries(name: str) -> str | None:
    """None when the libraries backend `name` needs import; else which one does not, and why."""
    for library in BACKENDS[name].libraries:
        try:
            importlib.import_module(library)
        except ImportError as exc:  # not installed, or installed and broken (a CUDA library missing)
            return f"{library} cannot be imported ({type(exc).__name__}: {exc})"
    return None


def create_backend(name: str, settings: Settings) -> Backend:
    spec = BACKENDS.get(name)
    if spec is None:
        raise ValueError(f"no backend named {name!r}")
    missing = missing_libraries(name)
    if missing is not None:
        # IMAGEND_BACKEND picks the default (and so a served) backend; IMAGEND_BACKENDS lists the rest.
        setting = "IMAGEND_BACKEND" if name == settings.default_backend else "IMAGEND_BACKENDS"
        others = ", ".join(n for n in BACKENDS if n != name)
        raise ConfigError(
            f"{setting} asks for the {name} backend, but {missing}: install imagend[{spec.extra}] "
            f"or set {setting} to a backend this host has ({others})"
        )
    backend: Backend = getattr(importlib.import_module(spec.module), spec.cls).from_settings(settings)
    return backend


def create_backends(settings: Settings) -> dict[str, Backend]:
    """Every backend this daemon serves, loaded once for the daemon's life."""
    return {name: create_backend(name, settings) for name in settings.served_backends}
