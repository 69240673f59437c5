"""Table health (docs/storage.md): autovacuum thresholds and fillfactor set on `images`, an older lease
index on lease_until replaced by one on id, so that lease renewals (the most frequent write) can be HOT."""

from __future__ import annotations

from imagend.db.connect import apply_schema

from support.db import insert_image


def reloptions(conn) -> set[str]:
    return set(conn.execute("SELECT reloptions FROM pg_class WHERE relname = 'images'").fetchone()["reloptions"])


def lease_index(conn) -> str:
    return conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'images_lease_idx'").fetchone()["indexdef"]


def test_the_schema_sets_autovacuum_and_fillfactor_and_keys_the_lease_index_on_id(conn, db_url):
    assert {"fillfactor=90", "autovacuum_vacuum_scale_factor=0.02", "autovacuum_vacuum_threshold=1000",
            "autovacuum_analyze_scale_factor=0.02", "autovacuum_vacuum_insert_scale_factor=0.05"} <= reloptions(conn)
    assert "(id) WHERE (status = 'Generate'::text)" in lease_index(conn)
    # An older table: the lease index on lease_until and default options; the next start fixes both.
    insert_image(conn, "kept through the upgrade")
    conn.execute("DROP INDEX images_lease_idx")
    conn.execute("CREATE INDEX images_lease_idx ON images (lease_until) WHERE status = 'Generate'")
    conn.execute("ALTER TABLE images RESET (fillfactor, autovacuum_vacuum_scale_factor)")
    conn.execute("COMMENT ON TABLE images IS 'an older schema'")
    apply_schema(db_url)
    assert "(id) WHERE" in lease_index(conn)
    assert {"fillfactor=90", "autovacuum_vacuum_scale_factor=0.02"} <= reloptions(conn)
    assert conn.execute("SELECT count(*) AS n FROM images").fetchone()["n"] == 1
