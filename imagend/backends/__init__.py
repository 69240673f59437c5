"""Backends by name. `local` (torch) and `fusionbrain` (httpx) are imported only when served,
so a daemon without the local backend never imports torch."""

from __future__ import annotations

from imagend.backends.base import Backend
from imagend.config import Settings


def create_backend(name: str, settings: Settings) -> Backend:
    if name == "placeholder":
        from imagend.backends.placeholder import PlaceholderBackend

        return PlaceholderBackend.from_settings(settings)
    if name == "fusionbrain":
        from imagend.backends.fusionbrain import FusionBrainBackend

        remote: Backend = FusionBrainBackend.from_settings(settings)
        return remote
    if name == "local":
        from imagend.backends.local import LocalBackend

        local: Backend = LocalBackend.from_settings(settings)
        return local
    raise ValueError(f"no backend named {name!r}")


def create_backends(settings: Settings) -> dict[str, Backend]:
    """Every backend this daemon serves, loaded once for the daemon's life."""
    return {name: create_backend(name, settings) for name in settings.served_backends}
