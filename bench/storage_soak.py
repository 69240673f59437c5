"""Soak: many rows through one `imagend -cron` (placeholder backend) with images in S3 (moto's server on
127.0.0.1), IMAGEND_STORE_BASE64=false and retention of done rows at a short age. A producer keeps a
bounded backlog; at checkpoints the script reads the table's size, its TOAST's, its dead tuples and
the claim statement's latency. Healthy: none of them grows with the number of rows processed.

    .venv/bin/python bench/storage_soak.py [--rows 200000] [--checkpoint 20000] [--database-url URL]
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg

from imagend.db.connect import apply_schema
from imagend.db.sql import queries

from _common import daemon, fresh_database, parser, postgres
from support.s3 import MotoServer

BACKLOG_ROWS = 4000  # the producer tops the queue up to this many waiting rows
INSERT_CHUNK = 2000
CLAIM_PROBES = 30


def claim_latency_ms(conn: psycopg.Connection[Any]) -> float:
    """The median of the real claim statement (one row) run in a transaction that is rolled back."""
    statement = queries()["images_claim_batch"]
    params = {"now": None, "backend": "placeholder", "default_backend": "placeholder",
              "skip_backends": ["local", "fusionbrain"],
              "limit": 1, "owner": "soak-probe", "lease_seconds": 60, "loaded_models": None, "switch_seconds": 0,
              "mark_idle": False}
    samples = []
    for _ in range(CLAIM_PROBES):
        with conn.transaction(force_rollback=True):
            started = time.perf_counter()
            conn.execute(statement, params).fetchall()
            samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def health(conn: psycopg.Connection[Any]) -> dict[str, float]:
    row = conn.execute(
        """SELECT pg_relation_size('images') AS heap,
                  COALESCE(pg_relation_size(reltoastrelid), 0) AS toast,
                  pg_indexes_size('images') AS indexes,
                  (SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = 'images') AS live,
                  (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'images') AS dead,
                  (SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'images') AS autovacuums,
                  (SELECT n_tup_hot_upd::float8 / greatest(n_tup_upd, 1) FROM pg_stat_user_tables
                   WHERE relname = 'images') AS hot_ratio
           FROM pg_class WHERE oid = 'images'::regclass"""
    ).fetchone()
    assert row is not None
    heap, toast, indexes, live, dead, autovacuums, hot = row
    return {"heap_kb": heap / 1024, "toast_kb": toast / 1024, "indexes_kb": indexes / 1024, "live": live,
            "dead": dead, "autovacuums": autovacuums, "hot_ratio": round(hot, 3), "claim_ms": claim_latency_ms(conn)}


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--checkpoint", type=int, default=20_000)
    p.add_argument("--retention", default="20s", help="IMAGEND_RETENTION_DONE")
    args = p.parse_args()
    with postgres(args.database_url) as server_url, MotoServer() as s3:
        db = fresh_database(server_url, "bench_storage_soak")
        apply_schema(db)
        bucket = s3.create_bucket("imagend-soak")
        env = s3.env(bucket, "soak", IMAGEND_STORE_BASE64="false", IMAGEND_RETENTION_DONE=args.retention,
                     IMAGEND_RETENTION_DELETE_OBJECTS="true", IMAGEND_PROCESSOR_INTERVAL="5")
        with daemon(db, **env), psycopg.connect(db, autocommit=True) as conn:
            inserted = 0
            started = time.monotonic()
            next_checkpoint = 0
            print(f"{'processed':>10} {'rows/s':>7} {'heap kB':>8} {'toast kB':>8} {'index kB':>8} {'live':>7} "
                  f"{'dead':>7} {'autovac':>7} {'HOT':>5} {'claim ms':>8}", flush=True)
            while True:
                row = conn.execute("SELECT count(*) FROM images WHERE status IN ('ReadyToGenerate', 'Generate')"
                                   ).fetchone()
                assert row is not None
                waiting = int(row[0])
                processed = inserted - waiting
                if processed >= next_checkpoint:
                    h = health(conn)
                    rate = processed / max(time.monotonic() - started, 1e-9)
                    print(f"{processed:>10} {rate:>7.0f} {h['heap_kb']:>8.0f} {h['toast_kb']:>8.0f} "
                          f"{h['indexes_kb']:>8.0f} {h['live']:>7.0f} {h['dead']:>7.0f} {h['autovacuums']:>7.0f} "
                          f"{h['hot_ratio']:>5} {h['claim_ms']:>8.3f}", flush=True)
                    next_checkpoint += args.checkpoint
                if processed >= args.rows:
                    break
                if waiting < BACKLOG_ROWS and inserted < args.rows:
                    chunk = min(INSERT_CHUNK, args.rows - inserted)
                    conn.execute("INSERT INTO images (prompt) SELECT 'soak ' || g FROM generate_series(1, %s) g",
                                 [chunk])
                    inserted += chunk
                else:
                    time.sleep(0.2)
            failed = conn.execute("SELECT count(*) FROM images WHERE status = 'Failed'").fetchone()
            kept = conn.execute("SELECT count(*) FROM images").fetchone()
            print(f"done: {args.rows} rows in {time.monotonic() - started:.0f} s; failed rows "
                  f"{failed[0] if failed else 0}; rows kept {kept[0] if kept else 0}; objects left in the bucket "
                  f"{len(s3.keys(bucket))}", flush=True)


if __name__ == "__main__":
    main()
