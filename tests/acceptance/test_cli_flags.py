"""Flags as the Go service's users wrote them (Go's `flag` package: `-cron=true`, `-verbose=false`,
`--cron`), and a `-env-file` that must exist."""

from __future__ import annotations

import json

import pytest

from support.daemons import DaemonProcess, run_imagend
from support.db import base_env, fetch_image, insert_image, wait_until


def debug_lines(stderr: str) -> list[dict]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("level") == "debug"]


@pytest.mark.parametrize("flags", [["-generator=true"], ["--generator"], ["--generator=1"], ["-generator=T"],
                                   ["-generator", "-cron=false"], ["-generator=True", "-processor=false"]])
def test_go_boolean_spellings_run_the_pass(db_url, conn, flags):
    image_id = insert_image(conn, "an old script's flags")
    result = run_imagend(flags, base_env(db_url))
    assert result.returncode == 0, result.stderr
    assert fetch_image(conn, image_id)["status"] == "ReadyToPublish"


def test_verbose_false_is_not_verbose(db_url, conn):
    insert_image(conn, "quiet")
    verbose = run_imagend(["-generator", "-verbose=true"], base_env(db_url))
    quiet = run_imagend(["-generator", "-verbose=false"], base_env(db_url))
    assert verbose.returncode == quiet.returncode == 0, verbose.stderr + quiet.stderr
    assert debug_lines(verbose.stderr)
    assert not debug_lines(quiet.stderr)


def test_an_old_unit_files_cron_equals_true_runs_the_daemon(db_url, conn, tmp_path):
    daemon = DaemonProcess(["-cron=true", "-verbose=false"], base_env(db_url), tmp_path)
    try:
        image_id = insert_image(conn, "picked up by -cron=true")
        wait_until(lambda: fetch_image(conn, image_id)["status"] == "ReadyToPublish", 30,
                   what=f"the row to be made\n{daemon.output()}")
    finally:
        rc = daemon.stop()
    assert rc == 0, daemon.output()


def test_a_boolean_value_go_would_refuse_exits_2_naming_the_flag(db_url, conn):
    image_id = insert_image(conn, "must not be touched")
    result = run_imagend(["-generator=yes"], base_env(db_url))
    assert result.returncode == 2
    assert "-generator" in result.stderr and "'yes'" in result.stderr
    assert "Traceback" not in result.stderr
    assert fetch_image(conn, image_id)["status"] == "ReadyToGenerate"


def test_a_missing_env_file_named_explicitly_exits_2_naming_it(db_url, conn, tmp_path):
    image_id = insert_image(conn, "must not be touched")
    missing = tmp_path / "imagend.env"
    for flags in (["-env-file", str(missing)], [f"-env-file={missing}"], ["--env-file", str(missing)]):
        result = run_imagend(["-generator", *flags], base_env(db_url))
        assert result.returncode == 2, result.stderr
        assert str(missing) in result.stderr and "no such file" in result.stderr
        assert "Traceback" not in result.stderr
    assert fetch_image(conn, image_id)["status"] == "ReadyToGenerate"


def test_an_env_file_named_explicitly_is_read(db_url, conn, tmp_path):
    env_file = tmp_path / "imagend.env"
    env_file.write_text(f"DATABASE_URL={db_url}\nIMAGEND_BACKEND=placeholder\n")
    image_id = insert_image(conn, "configured by the file")
    env = {k: v for k, v in base_env(db_url).items() if k not in ("DATABASE_URL", "IMAGEND_BACKEND")}
    result = run_imagend(["-generator", f"-env-file={env_file}"], env)
    assert result.returncode == 0, result.stderr
    assert fetch_image(conn, image_id)["status"] == "ReadyToPublish"


def test_the_default_env_file_may_be_absent(db_url, conn, tmp_path):
    image_id = insert_image(conn, "no .env here")
    result = run_imagend(["-generator"], base_env(db_url), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert fetch_image(conn, image_id)["status"] == "ReadyToPublish"
