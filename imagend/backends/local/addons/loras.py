"""LoRAs per row: files in IMAGEND_LORA_DIR (A1111/kohya or diffusers format, `.safetensors`).

A LoRA's tensors are read from disk once and kept in memory (the `IMAGEND_LORA_CACHE` most recently
used), as long as its file is unchanged (size and modification time, looked at on each use: a file
replaced on disk is read again, its adapters reloaded and `lora_changed` logged, never its old weights
under its new hash); on each checkpoint they are loaded as peft adapters once and then only switched: a batch
activates its set with its weights (`set_adapters`), and a batch without LoRAs runs with every adapter
disabled, which is the clean model exactly (peft's disabled layer calls its base layer alone). The
generator never batches rows with different LoRA sets together (Request.inputs.batch_key).
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagend.backends.base import Lora
from imagend.backends.local.models import LoadedModel
from imagend.errors import BadInput, clip
from imagend.logs import get_logger

log = get_logger()

LORA_SUFFIX = ".safetensors"
HASH_CHARS = 10  # A1111's short hash ("AutoV2"): the file's sha256, first 10 hex digits
EXTRAS_KEY = "loras"  # LoadedModel.extras: adapter names loaded on that checkpoint, by LoRA name
HASHES_KEY = "lora_hashes"  # LoadedModel.extras: the short hash of the file each adapter was loaded from


@dataclass(frozen=True)
class LoraFile:
    name: str
    path: Path
    state_dict: dict[str, Any]
    short_hash: str
    stamp: tuple[int, int]  # the file's (st_mtime_ns, st_size) when it was read


def _stamp(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_mtime_ns, info.st_size


class LoraLibrary:
    def __init__(self, folder: Path | None, cache_size: int) -> None:
        self.folder = folder
        self.cache_size = cache_size
        self.files: OrderedDict[str, LoraFile] = OrderedDict()  # most recently used last
        self.disk_reads = 0

    def available(self) -> list[str]:
        if self.folder is None:
            return []
        return sorted(path.stem for path in self.folder.glob(f"*{LORA_SUFFIX}") if path.is_file())

    def check(self, loras: Sequence[Lora]) -> None:
        """At validation, off the device: every name is a file of the folder."""
        for lora in loras:
            self._path(lora.name)

    def _path(self, name: str) -> Path:
        if self.folder is None:
            raise BadInput(f"LoRA {name!r}: this daemon has no IMAGEND_LORA_DIR, so it serves no LoRAs")
        path = (self.folder / f"{name}{LORA_SUFFIX}").resolve()
        if path.parent != self.folder or not path.is_file():
            known = ", ".join(self.available()) or "none"
            raise BadInput(f"unknown LoRA {name!r}; {self.folder} holds: {clip(known, 500)}")
        return path

    def file(self, name: str) -> LoraFile:
        cached = self.files.get(name)
        path = self._path(name)
        if cached is not None:
            if cached.stamp == _stamp(path):
                self.files.move_to_end(name)
                return cached
            del self.files[name]
            log.info("lora_changed", lora=name, action="read again from disk")
        from safetensors.torch import load as load_bytes

        stamp = _stamp(path)
        data = path.read_bytes()  # once: the hash and the tensors come from the same read
        try:
            state_dict = load_bytes(data)
        except Exception as exc:  # a file that is not safetensors: the row's error says so
            raise BadInput(
                f"LoRA {name!r}: {path.name} is not a readable .safetensors file ({type(exc).__name__})"
            ) from None
        self.disk_reads += 1
        entry = LoraFile(name, path, state_dict, hashlib.sha256(data).hexdigest()[:HASH_CHARS], stamp)
        self.files[name] = entry
        while len(self.files) > self.cache_size:
            self.files.popitem(last=False)
        return entry

    def activate(self, model: LoadedModel, loras: Sequence[Lora]) -> None:
        """Make `loras` (with their weights) the active set on `model`'s pipelines; none: the clean model."""
        pipe = model.pipe
        adapters: OrderedDict[str, str] = model.extras.setdefault(EXTRAS_KEY, OrderedDict())
        loaded_hashes: dict[str, str] = model.extras.setdefault(HASHES_KEY, {})
        if not loras:
            if adapters:
                pipe.disable_lora()
            return
        for lora in loras:
            entry = self.file(lora.name)
            if lora.name in adapters and loaded_hashes.get(lora.name) == entry.short_hash:
                adapters.move_to_end(lora.name)
                continue
            if lora.name in adapters:  # the file changed since this checkpoint loaded it
                _forget(pipe, adapters.pop(lora.name))
            adapter = _adapter_name(lora.name)
            try:
                pipe.load_lora_weights(dict(entry.state_dict), adapter_name=adapter)
            except Exception as exc:  # shapes or keys that do not fit this checkpoint
                _forget(pipe, adapter)
                raise BadInput(
                    f"LoRA {lora.name!r} does not fit model {model.label!r}: "
                    f"{type(exc).__name__}: {clip(str(exc), 200)}"
                ) from None
            adapters[lora.name] = adapter
            loaded_hashes[lora.name] = entry.short_hash
            log.info("lora_loaded", lora=lora.name, model=model.label)
        while len(adapters) > self.cache_size:
            name, adapter = adapters.popitem(last=False)
            if name not in {lora.name for lora in loras}:
                _forget(pipe, adapter)
            else:
                adapters[name] = adapter
                break
        pipe.enable_lora()
        pipe.set_adapters([adapters[lora.name] for lora in loras], adapter_weights=[lora.weight for lora in loras])

    def hashes(self, loras: Sequence[Lora]) -> str:
        """A1111's `Lora hashes` value: `name: hash, name: hash`."""
        return ", ".join(f"{lora.name}: {self.file(lora.name).short_hash}" for lora in loras)


def _adapter_name(name: str) -> str:
    # peft adapter names become module attribute keys: no dots.
    return "lora_" + re.sub(r"\W", "_", name)


def _forget(pipe: Any, adapter: str) -> None:
    try:
        pipe.delete_adapters(adapter)
    except Exception:  # never loaded (it failed part-way), or already gone
        log.debug("lora_not_deleted", adapter=adapter)
