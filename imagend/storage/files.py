"""A folder as the store (`file:///srv/images`, or the older IMAGEND_OUTPUT_DIR): each object is written
atomically (a reader never sees half a file)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from imagend.errors import ConfigError
from imagend.storage import StoredObject, StoreUnavailable
from imagend.storage.target import StorageTarget


class FileStore:
    def __init__(self, target: StorageTarget) -> None:
        assert target.folder is not None
        self.target = target
        self.folder = target.folder

    def check(self) -> None:
        probe = self.folder / f".imagend-write-check.{os.getpid()}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"{self.target.setting}={self.target.url}: cannot write there: {exc}") from None

    def put_all(self, objects: Sequence[StoredObject]) -> list[str | StoreUnavailable]:
        return [self._put(obj) for obj in objects]  # local writes: threads would buy nothing

    def _put(self, obj: StoredObject) -> str | StoreUnavailable:
        path = self.folder / obj.name
        partial = path.with_name(f"{path.name}.{os.getpid()}.part")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(obj.data)
            partial.replace(path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            return StoreUnavailable(f"cannot write the image to {self.target.describe()}: {exc}")
        return path.resolve().as_uri()

    def delete_urls(self, urls: Sequence[str]) -> int:
        deleted = 0
        root = self.folder.resolve()
        for url in urls:
            path = Path(unquote(urlsplit(url).path)) if url.startswith("file:") else Path(url)
            if not path.is_absolute() or root not in path.resolve().parents:
                continue  # not ours
            try:
                path.unlink()
                deleted += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StoreUnavailable(f"cannot delete {path} in {self.target.describe()}: {exc}") from None
        return deleted

    def read_url(self, url: str) -> bytes:
        # Only files of this store: a chained row's source URL is a column a producer can write.
        path = Path(unquote(urlsplit(url).path)).resolve()
        if self.folder.resolve() not in path.parents:
            raise ValueError(f"{url} is not in {self.target.describe()}")
        return path.read_bytes()

    def presign(self, url: str, seconds: float) -> str | None:
        return None  # a folder has no URL of its own: the listener signs links to itself (storage/links.py)

    def close(self) -> None:
        pass
