"""A TCP proxy in front of Postgres whose open connections can be frozen: bytes stop flowing
both ways while the sockets stay open, as when a network drops without a FIN (a half-open
connection). Connections made after a freeze are forwarded as usual."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

from psycopg.conninfo import conninfo_to_dict, make_conninfo


class TcpProxy:
    def __init__(self, upstream_url: str) -> None:
        params = conninfo_to_dict(upstream_url)
        host, port = str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)
        self.upstream: tuple[int, str | tuple[str, int]] = (
            (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}") if host.startswith("/") else (socket.AF_INET, (host, port))
        )
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen: list[threading.Event] = []  # one per connection, set to freeze it
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url_for(self, db_url: str) -> str:
        params = conninfo_to_dict(db_url)
        params.update(host="127.0.0.1", port=str(self.port))
        return make_conninfo(**params)

    def freeze(self) -> None:
        """Every connection open now goes silent; its sockets stay open."""
        for frozen in self.frozen:
            frozen.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            family, address = self.upstream
            server = socket.socket(family, socket.SOCK_STREAM)
            server.connect(address)
            frozen = threading.Event()
            self.frozen.append(frozen)
            self._sockets += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target, frozen), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket, frozen: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not frozen.is_set():
                    target.sendall(data)

    def close(self) -> None:
        self.listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()
