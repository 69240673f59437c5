"""Where a checkpoint named by a hub id comes from, decided before anything is loaded: the Hugging Face
cache (read without the network), else a download, but only of a model someone named and only when the
hub answers. No torch.

Offline, huggingface_hub retries every request five times (about 25 s), and a checkpoint already in the
cache is still checked against the hub by `from_pretrained`; one quick connection decides instead
(`hub_unreachable`), and `HF_HUB_OFFLINE=1` skips even that. The local backend's default checkpoint is
never downloaded unasked: a host that set no `IMAGEND_MODEL` is told what to set (`IMAGEND_MODEL`, or
`IMAGEND_BACKEND` where it should not generate locally) at once.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from imagend.errors import ConfigError
from imagend.logs import get_logger

log = get_logger()

HUB_URL = "https://huggingface.co"
HUB_CONNECT_SECONDS = 3.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
TRUE_WORDS = ("1", "true", "yes", "on")


def cached_file(repo_id: str, filename: str) -> str | None:
    """The path of `filename` of hub repo `repo_id` in the Hugging Face cache (HF_HOME), or None; no network."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # a name that is no repo id (huggingface_hub validates it): not in the cache
        return None
    return found if isinstance(found, str) else None


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE_WORDS


@functools.lru_cache(maxsize=1)
def hub_unreachable() -> str | None:
    """Why the hub cannot be reached (HF_HUB_OFFLINE, a name that does not resolve, a refused or silent
    connection), or None when it can, or when a proxy stands between (then huggingface_hub decides)."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None
    url = urlsplit(os.environ.get("HF_ENDPOINT") or HUB_URL)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_CONNECT_SECONDS).close()
    except OSError as exc:
        return f"{host}:{port} cannot be reached ({exc.strerror or type(exc).__name__})"
    return None


def model_index_text(source: str, setting: str, *, asked: bool = True) -> str:
    """The model_index.json of the checkpoint `source` (a folder, or a hub id). `asked`: `setting` names
    it (False: the backend's default, which is never downloaded). ConfigError naming what to set."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        return (folder / "model_index.json").read_text(encoding="utf-8")
    cached = cached_file(source, "model_index.json")
    if cached is not None:
        return Path(cached).read_text(encoding="utf-8")
    if not asked:
        raise ConfigError(
            f"{setting} is not set, and the local backend's default checkpoint, {source}, is not in the Hugging "
            f"Face cache ({cache_home()}); nothing is downloaded unasked. Set {setting} to a model folder or a "
            f"hub id (a hub id not in the cache is downloaded: about 7 GB for SDXL), or, where this host should "
            f"not generate images itself, IMAGEND_BACKEND=fusionbrain (or placeholder): the local backend runs "
            f"because IMAGEND_BACKEND is local or unset"
        )
    reason = hub_unreachable()
    if reason is not None:
        raise ConfigError(
            f"{setting}={source}: not in the Hugging Face cache ({cache_home()}), and it cannot be downloaded: "
            f"{reason}. Set {setting} to a model folder or a cached hub id, or IMAGEND_BACKEND to a backend "
            f"other than local"
        )
    from huggingface_hub import hf_hub_download

    log.warning("model_download", setting=setting, model=source,
                note="not in the Hugging Face cache: downloading it (gigabytes for a real checkpoint)")
    return Path(hf_hub_download(source, "model_index.json")).read_text(encoding="utf-8")


def cache_home() -> str:
    """Where the Hugging Face cache is, for messages."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def load_offline(source: str) -> bool:
    """Load `source` from the cache alone (`local_files_only`): a cached hub id while the hub cannot be
    reached, so that from_pretrained does not spend its retries asking the hub for updates."""
    return not Path(source).expanduser().exists() and cached_file(source, "model_index.json") is not None \
        and hub_unreachable() is not None
