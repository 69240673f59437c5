"""The README's quick start, as a newcomer pastes it (issue 25, item 10): on their own (empty) database,
the placeholder path creates the table, finishes a row and shows it; the Fusion Brain fake path finishes
one as fusionbrain with nothing but the lines shown. Run in bash in a folder standing for the checkout
(its .venv), with only `make install` left out (the test's environment is that installation) and the
placeholder URL replaced by the test's database. The quick start stays short: 30 lines."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from support.daemons import process_env
from support.db import wait_until

README = Path(__file__).resolve().parents[2] / "README.md"
FAKE_PORT = 8765  # the README's


def quick_start() -> str:
    text = README.read_text()
    return text[text.index("## Quick start") : text.index("\n## ", text.index("## Quick start") + 1)]


def bash_block_after(marker: str) -> list[str]:
    section = quick_start()
    match = re.search(r"```bash\n(.*?)```", section[section.index(marker) :], re.DOTALL)
    assert match, f"no bash block after {marker!r}"
    return match.group(1).splitlines()


def run_script(lines: list[str], folder: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`lines` in bash -e (each must succeed), then every job it left in the background stopped."""
    script = "set -e\n" + "\n".join(lines) + "\nkill $(jobs -p) 2>/dev/null || true\nwait\n"
    proc = subprocess.Popen(["bash", "-c", script], env=process_env({}), cwd=folder, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    return tmp_path


def test_the_quick_start_is_30_lines_and_keeps_make_demo_and_make_test():
    lines = [line for line in quick_start().splitlines() if line.strip()]
    assert len(lines) <= 30, len(lines)
    assert any(line.startswith("make demo") for line in lines) and any(line.startswith("make test") for line in lines)


def test_your_database_with_the_placeholder_as_written(bare_db_url, checkout):
    lines = bash_block_after("**Your database, no GPU yet**")
    assert lines[0].startswith("make install")
    export = [n for n, line in enumerate(lines) if line.startswith("export DATABASE_URL=")]
    assert len(export) == 1
    lines[export[0]] = f"export DATABASE_URL='{bare_db_url}'"
    result = run_script(lines[1:], checkout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"database": "DATABASE_URL: ' in result.stdout  # -status says where it looked
    last_row = result.stdout.strip().splitlines()[-2]  # psql's table: the row, then "(1 row)"
    assert re.fullmatch(r"\s*1 \| ReadyToPublish \|\s+16 \|\s+16", last_row), result.stdout


def test_your_database_with_the_fusion_brain_fake_as_written(bare_db_url, checkout):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", FAKE_PORT)) == 0:
            pytest.skip(f"something listens on 127.0.0.1:{FAKE_PORT}, the README's port for the fake")
    lines = bash_block_after("or try it on its fake first")
    assert lines[-1].startswith(".venv/bin/imagend -cron &")
    insert = "psql \"$DATABASE_URL\" -qc \"INSERT INTO images (prompt) VALUES ('a lighthouse')\""
    setup = [f"export DATABASE_URL='{bare_db_url}'", ".venv/bin/imagend -status > /dev/null"]
    # The fake and the daemon as shown, then a producer's row; the script waits for it, then stops them.
    wait = ("for _ in $(seq 120); do s=$(psql \"$DATABASE_URL\" -Atc 'SELECT status, backend FROM images'); "
            "[ \"$s\" = 'ReadyToPublish|fusionbrain' ] && break; sleep 0.25; done; echo \"row: $s\"")
    result = run_script([*setup, *lines, insert, wait], checkout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "row: ReadyToPublish|fusionbrain" in result.stdout, result.stdout + result.stderr
    with psycopg.connect(bare_db_url) as conn:
        wait_until(lambda: conn.execute("SELECT count(*) FROM images").fetchone() == (1,), 5, what="one row")
