"""Object storage for finished images: a folder (files.py) or an S3-compatible bucket (s3.py), behind one
small interface. target.py parses the setting; open_store() builds a store (the daemon builds one, at start)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from imagend.errors import RetryableError
from imagend.storage.target import StorageTarget

# Objects of one finishing batch are written this many at a time (S3 latency is per request).
PUT_THREADS = 16


class StoreUnavailable(RetryableError):
    """The store is down or refused a write: the attempt fails and is retried with backoff."""


# What the daemon names what it stores, under the target's prefix (or in its folder): `<id>.<ext>` and
# the thumbnail `<id>.thumb.webp`. The one home of these names: publishing, the spool, the listener.
THUMBNAIL_SUFFIX = ".thumb.webp"


def object_names(image_id: int, extension: str, index: int | None = None) -> tuple[str, str]:
    """The image's and its thumbnail's names (`<id>.<ext>`, `<id>.thumb.webp`); image `index` (1..n) of a
    row of n > 1 images: `<id>-<index>.<ext>`, `<id>-<index>.thumb.webp`."""
    stem = f"{image_id}" if index is None else f"{image_id}-{index}"
    return f"{stem}.{extension}", f"{stem}{THUMBNAIL_SUFFIX}"


@dataclass(frozen=True, slots=True)
class StoredObject:
    name: str  # `<id>.<ext>`: the key under the target's prefix (or the file name in its folder)
    data: bytes
    content_type: str


class Store(Protocol):
    target: StorageTarget

    def check(self) -> None:
        """At start: the target exists and takes a write; ConfigError naming the variable otherwise."""
        ...

    def put_all(self, objects: Sequence[StoredObject]) -> list[str | StoreUnavailable]:
        """Write every object (concurrently); for each, its URL or why it could not be written."""
        ...

    def delete_urls(self, urls: Sequence[str]) -> int:
        """Delete the objects at `urls` that lie in this target (others are left alone); returns how many
        went. Raises StoreUnavailable when the store cannot be reached."""
        ...

    def read_url(self, url: str) -> bytes:
        """The bytes at `url` (tools and tests)."""
        ...

    def presign(self, url: str, seconds: float) -> str | None:
        """A URL a browser can GET `url` from without credentials for `seconds` (an S3 presigned URL);
        None when the store has none (a folder: the listener signs links to itself, storage/links.py)."""
        ...

    def close(self) -> None: ...


def open_store(target: StorageTarget, env: Mapping[str, str]) -> Store:
    """A new store for `target`; `env` is the settings' environment (.env included), for the AWS
    variables. The daemon builds one at start (cli.py) and hands it to the generator, the processor,
    retention and the HTTP listener, which share its connection pool."""
    if target.scheme == "file":
        from imagend.storage.files import FileStore

        return FileStore(target)
    from imagend.storage.s3 import S3Store

    return S3Store(target, env)
