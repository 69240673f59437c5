"""Hardening III, item 7: a burst of bad rows is failed in one statement per batch, not one per row,
so good rows behind it are not kept waiting; each bad row keeps its own error."""

from __future__ import annotations

from support.daemons import InProcess
from support.db import fetch_image, insert_image

STATEMENT_COUNTER = """
CREATE TABLE update_statements (n int NOT NULL);
INSERT INTO update_statements VALUES (0);
CREATE FUNCTION count_update_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN UPDATE update_statements SET n = n + 1; RETURN NULL; END $$;
CREATE TRIGGER count_updates AFTER UPDATE ON images FOR EACH STATEMENT EXECUTE FUNCTION count_update_statement();
"""


def test_a_burst_of_bad_rows_is_failed_in_one_statement(conn, make_settings, make_repo):
    bad = [insert_image(conn, f"bad {n}", backend=f"dalle{n}") for n in range(60)]
    cancelled = insert_image(conn, "cancelled while waiting", cancel_requested=True)
    too_wide = insert_image(conn, "too wide", width=100_000)
    good = insert_image(conn, "a good row behind them")
    conn.execute(STATEMENT_COUNTER)
    settings = make_settings()
    run = InProcess(make_repo(settings), settings)
    try:
        counts = run.generator.run_once()
    finally:
        run.close()
    assert counts.failed == 62 and counts.done == 1
    statements = conn.execute("SELECT n FROM update_statements").fetchone()["n"]
    # The claim, the failures, begin_work, the finishing write (and a warning or two at most): not 62.
    assert statements <= 6, statements
    assert fetch_image(conn, bad[7])["error"] == "unknown backend 'dalle7'; use one of: local, fusionbrain, placeholder"
    assert fetch_image(conn, cancelled)["error"] == "cancelled"
    assert "width must be between 1 and 8192 pixels" in fetch_image(conn, too_wide)["error"]
    assert {fetch_image(conn, i)["status"] for i in (*bad, cancelled, too_wide)} == {"Failed"}
    assert fetch_image(conn, good)["status"] == "ReadyToPublish"
