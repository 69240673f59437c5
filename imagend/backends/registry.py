"""Every backend imagend knows: its class and libraries, by the names of db/columns.py (the one list
that config, validation, the repository and the API read; a test holds the two equal).

`remote` backends hand work to a service (submit, then poll); the others generate in
this process. Modules are imported only when a backend is served, so a daemon without
the local backend never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from imagend.db.columns import BACKEND_NAMES, REMOTE_BACKENDS


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
assert tuple(BACKENDS) == BACKEND_NAMES, "a spec for every backend name, in db/columns.py's order"
assert tuple(n for n, spec in BACKENDS.items() if spec.remote) == REMOTE_BACKENDS, "remote as db/columns.py says"
__all__ = ["BACKENDS", "BACKEND_NAMES", "REMOTE_BACKENDS", "BackendSpec"]
