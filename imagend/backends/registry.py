"""Every backend imagend knows, by name: the one list that config (IMAGEND_BACKEND(S)),
validation (a row's `backend`), the repository (claims, rescue) and the factory read.

`remote` backends hand work to a service (submit, then poll); the others generate in
this process. Modules are imported only when a backend is served, so a daemon without
the local backend never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackendSpec:
    name: str
    module: str  # where its class lives, imported on demand
    cls: str
    remote: bool
    extra: str | None = None  # the pip extra that installs its libraries: imagend[<extra>]
    libraries: tuple[str, ...] = ()  # what that extra installs, checked before the backend loads


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            "local",
            "imagend.backends.local",
            "LocalBackend",
            remote=False,
            extra="local",
            libraries=("torch", "diffusers", "transformers", "compel", "accelerate"),
        ),
        BackendSpec("fusionbrain", "imagend.backends.fusionbrain", "FusionBrainBackend", remote=True),
        BackendSpec("placeholder", "imagend.backends.placeholder", "PlaceholderBackend", remote=False),
    )
}
BACKEND_NAMES: tuple[str, ...] = tuple(BACKENDS)
REMOTE_BACKENDS: tuple[str, ...] = tuple(name for name, spec in BACKENDS.items() if spec.remote)
