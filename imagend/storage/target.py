"""Where finished images go: IMAGEND_STORAGE_URL (`file:///srv/images` or `s3://bucket/prefix`), or
the older IMAGEND_OUTPUT_DIR (a folder, the same as `file://` that folder). Parsing only; the
stores themselves are in files.py and s3.py."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from imagend.errors import ConfigError

# S3's own rule for bucket names (3-63 lower-case letters, digits, dots, hyphens).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class StorageTarget:
    """A parsed storage setting. `setting` is the variable that named it, for messages."""

    scheme: str  # "file" or "s3"
    setting: str
    url: str  # as configured (never carries a secret: credentials come from the AWS chain)
    folder: Path | None = None  # file
    bucket: str | None = None  # s3
    prefix: str = ""  # s3 key prefix, no leading or trailing slash
    endpoint_url: str | None = None  # s3: IMAGEND_S3_ENDPOINT_URL (MinIO, R2, Ceph, moto)

    def key(self, name: str) -> str:
        """The object key of `name` (`<prefix>/<id>.<ext>`)."""
        return f"{self.prefix}/{name}" if self.prefix else name

    def describe(self) -> str:
        return f"{self.setting}={self.url}"


def parse_storage_target(
    storage_url: str | None, output_dir: str | None, endpoint_url: str | None
) -> StorageTarget | None:
    if storage_url is None:
        if output_dir is None:
            return None
        return StorageTarget("file", "IMAGEND_OUTPUT_DIR", output_dir, folder=Path(output_dir).expanduser())
    name = "IMAGEND_STORAGE_URL"
    if output_dir is not None:
        raise ConfigError(f"{name} and IMAGEND_OUTPUT_DIR are both set: keep one (IMAGEND_STORAGE_URL=file://DIR "
                          "is what IMAGEND_OUTPUT_DIR=DIR does)")
    parts = urlsplit(storage_url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"{name}={storage_url!r}: a file URL names an absolute folder: file:///srv/images")
        return StorageTarget("file", name, storage_url, folder=Path(unquote(parts.path)))
    if parts.scheme == "s3":
        bucket = parts.netloc
        if "@" in bucket:  # never echoed: what is before the @ may be a key
            raise ConfigError(f"{name}: write s3://bucket/prefix only; credentials come from the AWS variables "
                              "or profile, never the URL")
        if not _BUCKET.fullmatch(bucket):
            raise ConfigError(f"{name}={storage_url!r}: {bucket!r} is not an S3 bucket name (3-63 characters: "
                              "a-z, 0-9, '.', '-')")
        if parts.query or parts.fragment:
            raise ConfigError(f"{name}={storage_url!r}: write s3://bucket/prefix only; credentials come from the "
                              "AWS variables or profile, the endpoint from IMAGEND_S3_ENDPOINT_URL")
        if endpoint_url is not None and urlsplit(endpoint_url).scheme not in ("http", "https"):
            raise ConfigError(f"IMAGEND_S3_ENDPOINT_URL={endpoint_url!r} is not an http(s) URL")
        return StorageTarget("s3", name, storage_url, bucket=bucket, prefix=parts.path.strip("/"),
                             endpoint_url=endpoint_url)
    raise ConfigError(f"{name}={storage_url!r}: use file:///folder or s3://bucket/prefix")
