"""An output folder that cannot be written: refused at start (exit 2 naming IMAGEND_OUTPUT_DIR); at
run time a write error spends no attempt and loses nothing: the image is spooled into its row (base64,
the OS error in `warning`, nothing stuck in Generate), claiming pauses until the store takes writes,
and the spool writes the image to the folder once it is back. A fetched remote result is spooled the
same way."""

from __future__ import annotations

import os
import subprocess

import pytest

from support.daemons import InProcess, run_imagend
from support.db import base_env, fetch_image, insert_image
from support.fusionbrain import drive, fake_server, make_due, rig


def test_an_output_dir_that_is_a_file_stops_the_start(db_url, tmp_path):
    blocker = tmp_path / "images"
    blocker.write_text("not a folder")
    result = run_imagend(["-generator"], base_env(db_url, IMAGEND_OUTPUT_DIR=str(blocker)))
    assert result.returncode == 2, result.stderr
    assert f"IMAGEND_OUTPUT_DIR={blocker}: cannot write there" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_write_error_at_run_time_spools_the_image_and_pauses_claiming(conn, make_settings, make_repo, tmp_path):
    out = tmp_path / "images"
    image_id = insert_image(conn, "written once the folder is back")
    settings = make_settings(IMAGEND_OUTPUT_DIR=str(out), IMAGEND_STORE_BASE64="false")
    run = InProcess(make_repo(settings), settings)
    try:
        out.write_text("the folder went away and a file took its place")
        counts = run.generator.run_once()
        row = fetch_image(conn, image_id)
        assert (counts.done, counts.retried, row["status"], row["locked_by"]) == (1, 0, "ReadyToPublish", None)
        assert (row["attempts"], row["error"], row["output_path"]) == (1, None, None)
        assert row["base64"] and row["spooled_at"] is not None
        assert row["warning"].startswith(f"cannot write the image to IMAGEND_OUTPUT_DIR={out}: [Errno")
        later = insert_image(conn, "waits while the store is down")
        assert run.generator.run_once().claimed == 0  # an image made now could only be spooled
        assert run.processor.run_once().spooled_written == 0  # still down: the spool keeps it
        out.unlink()
        assert run.processor.run_once().spooled_written == 1
        assert run.generator.run_once().done == 1  # claiming resumed
    finally:
        run.close()
    row = fetch_image(conn, image_id)
    assert (row["status"], row["output_path"]) == ("ReadyToPublish", str((out / f"{image_id}.png").resolve()))
    assert (row["base64"], row["spooled_at"]) == (None, None)  # IMAGEND_STORE_BASE64=false: dropped once stored
    assert (out / f"{image_id}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fetch_image(conn, later)["status"] == "ReadyToPublish"


def test_a_remote_result_is_kept_in_the_row_when_its_file_cannot_be_written(conn, make_settings, make_repo, tmp_path):
    out = tmp_path / "images"
    image_id = insert_image(conn, "fetched once, never lost")
    with fake_server() as fake, rig(make_settings, make_repo, fake, IMAGEND_OUTPUT_DIR=str(out)) as r:
        r.generate()  # submitted; the result will be fetched once
        out.write_text("a file where the folder should be")
        make_due(conn)
        drive(r, conn, fake, [image_id])
        fetched = fake.count("status")
    row = fetch_image(conn, image_id)
    assert (row["status"], row["output_path"], row["attempts"]) == ("ReadyToPublish", None, 1)
    assert row["base64"]
    assert "cannot write the image to IMAGEND_OUTPUT_DIR" in row["warning"]
    assert "kept in the row until the store takes it" in row["warning"] and row["spooled_at"] is not None
    assert fetched >= 1


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")
def test_a_full_output_folder_spools_every_row_and_leaves_none_in_generate(conn, make_settings, make_repo,
                                                                           tmp_path):
    out = tmp_path / "full"
    out.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(out)], check=True)
    try:
        settings = make_settings(IMAGEND_OUTPUT_DIR=str(out), IMAGEND_MAX_BATCH="4")
        run = InProcess(make_repo(settings), settings)
        try:
            (out / "filler").write_bytes(b"x" * (64 * 1024 - 1024))  # the folder is full but for a few bytes
            ids = [insert_image(conn, f"into a full folder {n}") for n in range(12)]
            run.generator.run_once()
            rows = [fetch_image(conn, i) for i in ids]
            assert {row["status"] for row in rows} <= {"ReadyToPublish", "ReadyToGenerate"}
            assert not [row for row in rows if row["status"] == "Generate"]
            spooled = [row for row in rows if row["spooled_at"] is not None]
            assert spooled and all("No space left on device" in row["warning"] for row in spooled)
            (out / "filler").unlink()
            run.processor.run_once()
            for _ in range(3):
                run.generator.run_once()
        finally:
            run.close()
        rows = [fetch_image(conn, i) for i in ids]
        assert {(row["status"], row["spooled_at"]) for row in rows} == {("ReadyToPublish", None)}
        assert all(row["output_path"] for row in rows)
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)
