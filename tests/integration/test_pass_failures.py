"""A pass that fails is run again soon: an unexpected exception (a bug) or an unavailable
database leads to a retry with backoff, never to silence until the next interval run."""

from __future__ import annotations

from imagend.queue.pacer import GENERATOR
from imagend.retry import pass_retry_seconds

from support.daemons import InProcess
from support.db import insert_image, wait_until


def test_a_pass_that_raises_is_requested_again_after_a_short_backoff(conn, make_settings, make_repo):
    image_id = insert_image(conn, "waits behind a bug")
    settings = make_settings(IMAGEND_GENERATOR_INTERVAL="300")
    run = InProcess(make_repo(settings), settings)
    daemon = run.daemon
    real_pass = daemon.generator.run_once
    calls = []

    def buggy_once():  # a test-only fault: the first pass raises what no handler expects
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in a pass")
        return real_pass()

    daemon.generator.run_once = buggy_once
    try:
        daemon._generator_pass()
        assert not daemon.pacer.is_due(GENERATOR)  # not hammered at once...
        wait_until(lambda: daemon.pacer.is_due(GENERATOR), 2 * pass_retry_seconds(1) + 0.5,
                   what="the failed pass to be requested again")  # ...but soon, not in 5 minutes
        daemon._generator_pass()
    finally:
        run.close()
    assert len(calls) == 2
    assert conn.execute("SELECT status FROM images WHERE id = %s", [image_id]).fetchone()["status"] == "ReadyToPublish"
