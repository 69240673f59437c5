"""A daemon with its HTTP listener on (IMAGEND_HTTP on a free loopback port), for the API, auth and
probe tests: `HttpDaemon` starts `imagend -cron` in a subprocess and waits until it answers;
`own_database` gives a test module its own database cloned from the session's template (one
daemon per module keeps those tests fast)."""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import psycopg
from psycopg import sql

from support.daemons import DaemonProcess
from support.db import base_env, with_dbname

TOKEN = "test-token-0123456789abcdef"  # IMAGEND_HTTP_TOKEN wants at least 16 characters
START_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def own_database(server_url: str, template_db: str) -> Iterator[str]:
    """A new database with the schema (a clone of the template), dropped afterwards."""
    name = f"imagend_h_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name),
                                                                      sql.Identifier(template_db)))
    try:
        yield with_dbname(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class HttpDaemon:
    """`imagend -cron` with IMAGEND_HTTP=<host>:<free port> (and the token unless told otherwise)."""

    def __init__(self, db_url: str, *, token: str | None = TOKEN, host: str = "127.0.0.1",
                 wait_ready: bool = True, **env: str) -> None:
        self.port = free_port()
        self.token = token
        self.url = f"http://127.0.0.1:{self.port}"
        overrides = {"IMAGEND_HTTP": f"{host}:{self.port}", **env}
        if token is not None:
            overrides["IMAGEND_HTTP_TOKEN"] = token
        self.process = DaemonProcess(["-cron"], base_env(db_url, **overrides))
        self.client = httpx.Client(base_url=self.url, timeout=10.0)
        self.wait_answering(ready=wait_ready)

    @property
    def auth(self) -> dict[str, str]:
        """The header writes need."""
        assert self.token is not None
        return {"Authorization": f"Bearer {self.token}"}

    def wait_answering(self, ready: bool) -> None:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if not self.process.alive():
                raise AssertionError(f"the daemon exited:\n{self.process.output()}")
            with contextlib.suppress(httpx.TransportError):
                answer = self.client.get("/readyz")
                if answer.status_code == 200 or not ready:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"the daemon did not get ready in {START_SECONDS} s:\n{self.process.output()}")
            time.sleep(0.05)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def post(self, path: str, *, auth: bool = True, headers: Mapping[str, str] | None = None,
             **kwargs: Any) -> httpx.Response:
        """POST with the token (auth=False: without it, or with `headers` as given)."""
        sent = {**(self.auth if auth and self.token else {}), **(headers or {})}
        return self.client.post(path, headers=sent, **kwargs)

    def stop(self) -> None:
        self.client.close()
        self.process.stop()

    def __enter__(self) -> HttpDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
