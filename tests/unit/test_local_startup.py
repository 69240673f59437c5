"""The local backend's start-up sayings, without torch: a real checkpoint on the CPU is warned about
loudly; a miniature or a GPU is not (issue 25, item 1)."""

from __future__ import annotations

import dataclasses

from imagend.backends.local.options import LocalSettings
from imagend.backends.local.startup import cpu_warning
from imagend.config.settings import load_settings


def options(**env: str) -> LocalSettings:
    return LocalSettings.from_settings(load_settings(environ=env, env_file=None), cuda_available=True)


def test_a_real_model_on_the_cpu_gets_a_warning_naming_what_to_set():
    on_cpu = options(IMAGEND_DEVICE="cpu", IMAGEND_MODEL="/srv/models/juggernaut-xl")
    warning = cpu_warning(on_cpu, tiny=False)
    assert warning is not None
    assert "minutes per image" in warning and "IMAGEND_DEVICE=cuda" in warning and "IMAGEND_BACKEND" in warning
    assert cpu_warning(on_cpu, tiny=True) is None  # the miniature is made for the CPU
    assert cpu_warning(dataclasses.replace(on_cpu, device="cuda:0"), tiny=False) is None


def test_imagend_model_may_name_an_entry_of_imagend_models():
    both = options(IMAGEND_MODELS="sdxl=/srv/models/sdxl,other=/srv/models/other", IMAGEND_MODEL="sdxl")
    assert both.model == "/srv/models/sdxl"
    assert both.source_of(None) == both.source_of("sdxl")  # one checkpoint, loaded once
    assert options(IMAGEND_MODEL="/srv/models/x").model == "/srv/models/x" and options().model_set is False
