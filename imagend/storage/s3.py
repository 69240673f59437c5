"""An S3-compatible bucket as the store (AWS, MinIO, R2, Ceph): `s3://bucket/prefix`, the endpoint from
IMAGEND_S3_ENDPOINT_URL, credentials and region from the standard AWS chain.

boto3, for the whole AWS credential chain (variables, shared profile, SSO, container and instance
roles) as every AWS tool reads it. The AWS variables are taken from the settings' environment, so a
value in imagend's `.env` works as one in the process environment. No credential is ever part of a
message: botocore's errors carry codes, not keys, and its loggers are kept at WARNING (logs.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from imagend.errors import ConfigError
from imagend.storage import PUT_THREADS, StoredObject, StoreUnavailable
from imagend.storage.target import StorageTarget

# Read from the settings' environment (process environment over .env).
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 30
# botocore's own retries: a blip is absorbed here; a store that stays down fails the attempt (retried later).
REQUEST_ATTEMPTS = 3
DELETE_BATCH_KEYS = 1000  # S3's DeleteObjects limit
DEFAULT_REGION = "us-east-1"
_REFUSED = frozenset({"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                      "ExpiredToken", "InvalidClientTokenId"})
_MISSING = frozenset({"404", "NoSuchBucket", "NotFound"})


class S3Store:
    def __init__(self, target: StorageTarget, env: Mapping[str, str]) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ConfigError(f"{target.describe()} needs boto3: install imagend[s3]") from None
        assert target.bucket is not None
        self.target = target
        self.bucket = target.bucket
        session = boto3.session.Session(
            aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
            region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            profile_name=env.get("AWS_PROFILE") or None,
        )
        self.client: Any = session.client(
            "s3",
            endpoint_url=target.endpoint_url,
            region_name=session.region_name or DEFAULT_REGION,
            config=Config(
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                read_timeout=READ_TIMEOUT_SECONDS,
                retries={"max_attempts": REQUEST_ATTEMPTS, "mode": "standard"},
                max_pool_connections=PUT_THREADS,
                # SigV4 everywhere: botocore presigns with the legacy SigV2 otherwise, which AWS regions
                # opened since 2014 (and many S3-compatible stores) refuse.
                signature_version="s3v4",
            ),
        )
        self._pool = ThreadPoolExecutor(max_workers=PUT_THREADS, thread_name_prefix="imagend-s3")

    def _where(self) -> str:
        endpoint = self.target.endpoint_url
        return f"{self.target.describe()}" + (f" (IMAGEND_S3_ENDPOINT_URL={endpoint})" if endpoint else "")

    def check(self) -> None:
        """The bucket exists and these credentials may write to it: a probe object is written and deleted."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        probe = self.target.key(".imagend-write-check")
        try:
            self.client.head_bucket(Bucket=self.bucket)
            self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"")
            self.client.delete_object(Bucket=self.bucket, Key=probe)
        except NoCredentialsError:
            raise ConfigError(f"{self._where()}: no AWS credentials found: set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE") from None
        except ClientError as exc:
            code = _code(exc)
            if code in _MISSING:
                raise ConfigError(f"{self._where()}: the bucket {self.bucket!r} does not exist") from None
            if code in _REFUSED:
                raise ConfigError(
                    f"{self._where()}: the store refused these credentials ({code}): check AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and that they may write to the bucket"
                ) from None
            raise ConfigError(f"{self._where()}: the store refused the write check ({code})") from None
        except BotoCoreError as exc:
            raise ConfigError(f"{self._where()}: cannot reach the store: {type(exc).__name__}") from None

    def put_all(self, objects: Sequence[StoredObject]) -> list[str | StoreUnavailable]:
        if len(objects) == 1:
            return [self._put(objects[0])]
        return list(self._pool.map(self._put, objects))

    def _put(self, obj: StoredObject) -> str | StoreUnavailable:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.target.key(obj.name)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=obj.data, ContentType=obj.content_type)
        except ClientError as exc:
            return StoreUnavailable(f"{self.target.describe()} refused the image ({_code(exc)})")
        except BotoCoreError as exc:
            return StoreUnavailable(f"cannot store the image in {self.target.describe()}: {type(exc).__name__}")
        return f"s3://{self.bucket}/{key}"

    def _key_of(self, url: str) -> str | None:
        """The key of `url` if it lies in this bucket (and prefix), else None: never delete what is not ours."""
        head = f"s3://{self.bucket}/" + (f"{self.target.prefix}/" if self.target.prefix else "")
        return url[len(f"s3://{self.bucket}/") :] if url.startswith(head) else None

    def delete_urls(self, urls: Sequence[str]) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        keys = [key for key in map(self._key_of, urls) if key is not None]
        deleted = 0
        for start in range(0, len(keys), DELETE_BATCH_KEYS):
            chunk = keys[start : start + DELETE_BATCH_KEYS]
            try:
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True}
                )
            except ClientError as exc:
                raise StoreUnavailable(f"{self.target.describe()} refused a delete ({_code(exc)})") from None
            except BotoCoreError as exc:
                raise StoreUnavailable(f"cannot reach {self.target.describe()}: {type(exc).__name__}") from None
            deleted += len(chunk) - len(answer.get("Errors", []))
        return deleted

    def read_url(self, url: str) -> bytes:
        key = self._key_of(url)
        if key is None:
            raise ValueError(f"{url} is not in {self.target.url}")
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def presign(self, url: str, seconds: float) -> str | None:
        """A presigned GET (SigV4, computed locally: no request to the store), None for a URL not ours."""
        key = self._key_of(url)
        if key is None:
            return None
        presigned: str = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=max(1, int(seconds)))
        return presigned

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        with contextlib.suppress(Exception):
            self.client.close()


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code") or type(exc).__name__)
