"""A daemon restart does not queue behind a producer's open transaction on `images`."""

from __future__ import annotations

import threading

import psycopg

from imagend.db.connect import apply_schema, schema_marker


def test_applied_schema_is_marked_and_not_reapplied_while_a_producer_holds_the_table(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT obj_description('images'::regclass, 'pg_class')").fetchone()
    assert row is not None and row[0] == schema_marker()

    with psycopg.connect(db_url) as producer:
        producer.execute("INSERT INTO images (prompt) VALUES ('held in an open transaction')")
        # ALTER TABLE would wait for this transaction; the marked schema must not try.
        finished = threading.Event()
        worker = threading.Thread(target=lambda: (apply_schema(db_url), finished.set()))
        worker.start()
        worker.join(timeout=10)
        assert finished.is_set(), "apply_schema waited for the producer's transaction"
        producer.rollback()
