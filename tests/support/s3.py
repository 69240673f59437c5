"""A real S3-protocol server for tests: moto in server mode (`moto_server`), a subprocess on 127.0.0.1, so
objects travel over HTTP through the same boto3 code as in production.

`MotoServer()` accepts any credentials; `MotoServer(check_credentials=True)` checks them as AWS does
(moto's IAM: the first requests create a user and its keys, every later one must be signed with them).
`stop()` and `start()` take the store away and bring it back on the same port (moto keeps its state in
memory: a restarted server is empty, `create_bucket` again)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3

REGION = "us-east-1"
ANY_KEY_ID, ANY_SECRET = "imagend-test-key", "imagend-test-secret"
# With check_credentials: these first requests (create the user, allow it everything, make its keys)
# are the unauthenticated ones moto lets through.
_SETUP_REQUESTS = 3
_ALLOW_ALL = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoServer:
    def __init__(self, check_credentials: bool = False) -> None:
        self.check_credentials = check_credentials
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.key_id, self.secret = ANY_KEY_ID, ANY_SECRET

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        env = dict(os.environ)
        if self.check_credentials:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(_SETUP_REQUESTS)
        server = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(self.port)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {self.url}") from None
                time.sleep(0.05)
        if self.check_credentials:
            iam = self.client("iam")
            iam.create_user(UserName="imagend")
            iam.put_user_policy(UserName="imagend", PolicyName="all", PolicyDocument=_ALLOW_ALL)
            key = iam.create_access_key(UserName="imagend")["AccessKey"]
            self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:  # a server holding many objects can be slow to let go
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def client(self, service: str = "s3") -> Any:
        return boto3.client(service, endpoint_url=self.url, region_name=REGION, aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret)

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, bucket: str, prefix: str = "images", **overrides: str) -> dict[str, str]:
        """What a daemon needs to store in `s3://bucket/prefix` on this server."""
        return {
            "IMAGEND_STORAGE_URL": f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}",
            "IMAGEND_S3_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": REGION,
            **overrides,
        }

    def get(self, url: str) -> tuple[bytes, str]:
        """The object at `s3://bucket/key`: its bytes and Content-Type."""
        assert url.startswith("s3://"), url
        bucket, _, key = url[len("s3://") :].partition("/")
        answer = self.client().get_object(Bucket=bucket, Key=key)
        return answer["Body"].read(), answer["ContentType"]

    def keys(self, bucket: str) -> set[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {item["Key"] for page in pages for item in page.get("Contents", [])}
