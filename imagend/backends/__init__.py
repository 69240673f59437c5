"""Backends by name (see registry.py); each is imported only when served."""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

from imagend.backends.base import Backend
from imagend.backends.registry import BACKENDS
from imagend.errors import ConfigError

if TYPE_CHECKING:  # config reads the registry; importing it here at run time would be circular
    from imagend.config.settings import Settings


class _NotTheirTorchvision(logging.Filter):
    """transformers warns, at every start, that two image processors fall back from torchvision (which
    imagend never installs) to PIL: nothing for an operator to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


def _quiet_libraries() -> None:
    logger = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _NotTheirTorchvision) for f in logger.filters):
        logger.addFilter(_NotTheirTorchvision())


def missing_libraries(name: str) -> str | None:
    """None when the libraries backend `name` needs import; else which one does not, and why."""
    _quiet_libraries()
    for library in BACKENDS[name].libraries:
        try:
            importlib.import_module(library)
        except ImportError as exc:  # not installed, or installed and broken (a CUDA library missing)
            return f"{library} cannot be imported ({type(exc).__name__}: {exc})"
    return None


def _check_libraries(name: str, settings: Settings) -> None:
    missing = missing_libraries(name)
    if missing is not None:
        # IMAGEND_BACKEND picks the default (and so a served) backend; IMAGEND_BACKENDS lists the rest.
        setting = "IMAGEND_BACKEND" if name == settings.default_backend else "IMAGEND_BACKENDS"
        others = ", ".join(n for n in BACKENDS if n != name)
        raise ConfigError(
            f"{setting} asks for the {name} backend, but {missing}: install imagend[{BACKENDS[name].extra}] "
            f"or set {setting} to a backend this host has ({others})"
        )


def create_backend(name: str, settings: Settings) -> Backend:
    spec = BACKENDS.get(name)
    if spec is None:
        raise ValueError(f"no backend named {name!r}")
    _check_libraries(name, settings)
    backend: Backend = getattr(importlib.import_module(spec.module), spec.cls).from_settings(settings)
    return backend


# Checks a backend runs before the daemon touches the database: module -> its check(settings).
STARTUP_CHECKS = {"local": "imagend.backends.local.startup"}


def check_backends(settings: Settings) -> None:
    """What would stop a served backend's start and can be known without loading it (libraries, the local
    model's folder or cache): ConfigError before the database is touched, so a failed start upgrades no
    table. A local backend that runs only because IMAGEND_BACKEND is unset says so."""
    for name in settings.served_backends:
        _check_libraries(name, settings)
        module = STARTUP_CHECKS.get(name)
        if module is not None:
            importlib.import_module(module).check(settings)


def create_backends(settings: Settings) -> dict[str, Backend]:
    """Every backend this daemon serves, loaded once for the daemon's life."""
    return {name: create_backend(name, settings) for name in settings.served_backends}
