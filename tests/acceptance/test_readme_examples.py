"""The producer's guide's examples (docs/producers.md, moved there from the README) run as written: the
producer's LISTEN example, the notification payload it shows, and the queue status it describes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from support.daemons import DaemonProcess, process_env, run_imagend
from support.db import base_env, insert_image, wait_until

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "producers.md"


def guide_section(heading: str) -> str:
    """The guide's text from the bold paragraph `heading` to the next bold paragraph or heading."""
    text = GUIDE.read_text()
    start = text.index(heading)
    end = re.compile(r"^(\*\*|#)", re.MULTILINE).search(text, start + len(heading))
    return text[start : end.start() if end else len(text)]


def python_block(section: str) -> str:
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "no python block in the section"
    return match.group(1)


def test_the_listen_example_runs_as_written_and_sees_its_row_finish(db_url, tmp_path):
    code = python_block(guide_section("**Waiting without polling.**"))
    daemon = DaemonProcess(["-cron"], base_env(db_url), tmp_path)
    try:
        wait_until(lambda: "daemon_started" in daemon.output(), 30, what="the daemon to start")
        result = subprocess.run([sys.executable, "-c", code], env=process_env({"DATABASE_URL": db_url}),
                                capture_output=True, text=True, timeout=30, cwd=tmp_path)
    finally:
        daemon.stop()
    assert result.returncode == 0, result.stderr
    image_id, status = result.stdout.split()
    assert int(image_id) > 0 and status == "ReadyToPublish"


def test_the_payload_the_readme_shows_is_the_one_sent(db_url, conn):
    shown = re.search(r"`(\{\"id\".*?\})`", guide_section("**Waiting without polling.**"))
    assert shown, "the producer's guide shows no imagend_done payload"
    conn.execute("LISTEN imagend_done")
    image_id = insert_image(conn, "a red fox")
    assert run_imagend(["-generator"], base_env(db_url)).returncode == 0
    notes = list(conn.notifies(timeout=10, stop_after=1))
    assert notes, "no notification on imagend_done"
    assert notes[0].payload == shown.group(1).replace("42", str(image_id))
    assert json.loads(notes[0].payload) == {"id": image_id, "status": "ReadyToPublish"}
