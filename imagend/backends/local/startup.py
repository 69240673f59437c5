"""What the local backend checks before it loads anything, and says once it has (no torch at import):
the checks run before the daemon touches the database (`check`: settings, model folders, the default
checkpoint's presence), so a start that cannot succeed leaves the table as it was; and the warning for a
real checkpoint on the CPU (`cpu_warning`), minutes per image where a GPU takes seconds.
"""

from __future__ import annotations

from imagend.backends.local.families import family_of
from imagend.backends.local.options import LocalSettings
from imagend.config.settings import Settings


def check(settings: Settings) -> None:
    """ConfigError naming the variable for what would stop the backend's start: without loading a model."""
    import torch

    from imagend.backends.local.pipelines import check_model_source

    options = LocalSettings.from_settings(settings, cuda_available=torch.cuda.is_available())
    check_model_source(options.model, "IMAGEND_MODEL")
    for name, source in options.models.items():
        check_model_source(source, f"IMAGEND_MODELS ({name})")
    family_of(options.model, "IMAGEND_MODEL", asked=options.model_set)


def cpu_warning(options: LocalSettings, tiny: bool) -> str | None:
    """Why a start on the CPU deserves a loud line (None: a GPU, or a miniature model, which is meant for it)."""
    if options.device != "cpu" or tiny:
        return None
    return (f"{options.model} runs on the CPU: a real checkpoint takes minutes per image there (seconds on a GPU). "
            "Set IMAGEND_DEVICE=cuda on a GPU host, or IMAGEND_BACKEND=fusionbrain (or placeholder) where this host "
            "should not generate images itself")
