"""What the local backend checks before it loads anything, and says once it has (no torch at import):
the checks run before the daemon touches the database (`check`: settings, model folders, the default
checkpoint's presence), so a start that cannot succeed leaves the table as it was; and the warning for a
real checkpoint on the CPU (`cpu_warning`), minutes per image where a GPU takes seconds.
"""

from __future__ import annotations

from imagend.backends.local import single_file
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
    check_single_files(options)


def check_single_files(options: LocalSettings) -> None:
    """Every single-file entry (single_file.py) is a checkpoint we load, and what completes it is there:
    IMAGEND_SINGLE_FILE_CONFIG, unless -import-model's folder stands in for the file."""
    entries = [("IMAGEND_MODEL", options.model), *((f"IMAGEND_MODELS ({n})", s) for n, s in options.models.items())]
    for setting, source in entries:
        if single_file.parse(source) is not None and single_file.imported_folder(source, options) is None:
            single_file.config_folder(options, family_of(source, setting), source, setting)


def cpu_warning(options: LocalSettings, tiny: bool) -> str | None:
    """Why a start on the CPU deserves a loud line (None: a GPU, or a miniature model, which is meant for it)."""
    if options.device != "cpu" or tiny:
        return None
    return (f"{options.model} runs on the CPU: a real checkpoint takes minutes per image there (seconds on a GPU). "
            "Set IMAGEND_DEVICE=cuda on a GPU host, or IMAGEND_BACKEND=fusionbrain (or placeholder) where this host "
            "should not generate images itself")
