"""`python -m imagend.demo` as a user meets it (issue 25, item 5): --help says what it does and runs
nothing; a taken dashboard port (9464, on 127.0.0.1 or on localhost's IPv6) moves the dashboard to a free
port, named; and once the demo has ended, its last lines say the dashboard went with the daemon and give
a command that shows the demo's rows on a dashboard again, which works as written."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from imagend import demo
from imagend.db.connect import embedded_database_url

from support.daemons import process_env

DEMO_ROWS = """
import psycopg
from psycopg.rows import dict_row
from imagend import demo
from imagend.db.connect import embedded_database_url
with psycopg.connect(demo.start_database(), autocommit=True, row_factory=dict_row) as conn:
    demo.insert_rows(conn)
    conn.execute("UPDATE images SET status = 'ReadyToPublish', backend = 'local'")
"""


def test_help_says_what_the_demo_does_and_runs_nothing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "imagend.demo", "--help"], env=process_env({}), cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m imagend.demo")
    assert "random-weights" in result.stdout and "--port" in result.stdout
    assert list(tmp_path.iterdir()) == []  # no database, no models, no output
    wrong = subprocess.run([sys.executable, "-m", "imagend.demo", "--no-such-option"], env=process_env({}),
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "unrecognized arguments: --no-such-option" in wrong.stderr
    assert list(tmp_path.iterdir()) == []


@contextlib.contextmanager
def holding(family: socket.AddressFamily, host: str, port: int) -> Iterator[bool]:
    """Listen on (host, port) while inside; False when someone else holds it already (as good for the test)."""
    with socket.socket(family) as server:
        try:
            server.bind((host, port))
        except OSError:
            yield False
            return
        server.listen()
        yield True


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "0.0.0.0"),
                                              (socket.AF_INET6, "::1")])
def test_a_taken_dashboard_port_moves_the_dashboard_and_says_where(family, host):
    port = demo.free_port()
    with holding(family, host, port):
        address, moved = demo.dashboard_address(port)
    assert address.startswith("127.0.0.1:") and address != f"127.0.0.1:{port}"
    assert moved is not None and f"port {port}:" in moved and f"uses {address.rsplit(':', 1)[1]} instead" in moved
    free = demo.free_port()
    assert demo.dashboard_address(free) == (f"127.0.0.1:{free}", None)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A folder standing for the checkout after `make demo`: .venv, the demo's database with finished rows."""
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    result = subprocess.run([sys.executable, "-c", DEMO_ROWS], env=process_env({}), cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp_path


def test_after_the_demo_its_last_lines_say_the_dashboard_is_gone_and_how_to_open_it_again(checkout):
    gone, again = f"127.0.0.1:{demo.free_port()}", f"127.0.0.1:{demo.free_port()}"
    lines = demo.closing_lines(gone, again)
    assert lines[0] == f"The daemon has stopped, and its dashboard with it: http://{gone}/ no longer answers."
    command = lines[2].strip()
    assert lines[3].strip() == f"then open http://{again}/"
    # As a user pastes it, in a shell of its own (a process group: SIGTERM reaches the daemon).
    daemon = subprocess.Popen(["bash", "-c", command], env=process_env({}), cwd=checkout, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        page = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and daemon.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                page = httpx.get(f"http://{again}/", timeout=2)
                if page.status_code == 200:
                    break
            time.sleep(0.2)
        assert page is not None and page.status_code == 200, daemon.stderr.read() if daemon.poll() else "no answer"
        recent = httpx.get(f"http://{again}/fragments/recent", timeout=5)
        assert recent.status_code == 200 and "a bowl of ramen, studio photo" in recent.text  # the demo's rows
        url = embedded_database_url(checkout / demo.DEMO_DIR)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            statuses = {row["status"] for row in conn.execute("SELECT status FROM images")}
        assert statuses == {"ReadyToPublish"}  # the look-again daemon generated nothing anew
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.communicate(timeout=30)
