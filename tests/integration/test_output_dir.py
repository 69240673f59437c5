"""An output folder that cannot be written: refused at start (exit 2 naming IMAGEND_OUTPUT_DIR);
at run time a write error fails the attempt as retryable with the OS error on the row (nothing
stuck in Generate), and a fetched remote result, which cannot be fetched again, is kept in the
row's base64 with a warning rather than thrown away."""

from __future__ import annotations

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


def test_a_write_error_at_run_time_is_a_retryable_attempt_with_the_os_error(conn, make_settings, make_repo, tmp_path):
    out = tmp_path / "images"
    image_id = insert_image(conn, "written once the folder is back")
    settings = make_settings(IMAGEND_OUTPUT_DIR=str(out), IMAGEND_RETRY_BACKOFF="0.1")
    run = InProcess(make_repo(settings), settings)
    try:
        out.write_text("the folder went away and a file took its place")
        counts = run.generator.run_once()
        row = fetch_image(conn, image_id)
        assert (counts.retried, row["status"], row["locked_by"]) == (1, "ReadyToGenerate", None)
        assert row["error"].startswith(f"cannot write the image to IMAGEND_OUTPUT_DIR={out}: [Errno")
        out.unlink()
        conn.execute("UPDATE images SET run_after = now() WHERE id = %s", [image_id])
        assert run.generator.run_once().done == 1
    finally:
        run.close()
    row = fetch_image(conn, image_id)
    assert (row["status"], row["output_path"]) == ("ReadyToPublish", str((out / f"{image_id}.png").resolve()))


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
    assert "the image is in base64 only" in row["warning"]
    assert fetched >= 1
