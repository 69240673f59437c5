"""A webhook receiver for the tests: a real http.server in a thread on 127.0.0.1 that records every
POST (headers, body, the signature checked) and answers what the test says: 200, 500, a redirect,
or nothing for a while (`hang`); `down()` closes its socket so deliveries are refused, `up()` opens
it again on the same port."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from imagend.webhooks import signing


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    signed: bool  # the Standard Webhooks signature checked out

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    @property
    def event_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    secret: str
    status: int = 200
    hang_seconds: float = 0.0  # the next request waits this long before answering (then back to 0)
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    released: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                sent = {name.lower(): value for name, value in self.headers.items()}
                signed = all(name in sent for name in ("webhook-id", "webhook-timestamp", "webhook-signature")) \
                    and signing.verify(signing.secret_key(receiver.secret), sent, body)
                with receiver._lock:
                    receiver.received.append(Received(sent, body, signed))
                    hang, receiver.hang_seconds = receiver.hang_seconds, 0.0
                    status = receiver.status
                if hang:
                    receiver.released.wait(hang)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        raise AssertionError(f"{len(self.received)} webhooks received in {timeout} s, expected {count}")

    def __enter__(self) -> Receiver:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self.down()
