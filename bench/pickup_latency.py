"""Pickup latency: `imagend -cron` idle, single-row INSERTs 50 ms apart; time from the
INSERT to the claim, both read off the database clock (created_at is the inserting
statement's start, so the figure slightly overstates the time from commit).

    .venv/bin/python bench/pickup_latency.py [--inserts 200] [--gap-ms 50] [--database-url URL]

The interval jobs are set to the Go service's defaults (generator every 5 minutes), so
only the LISTEN wake-up can explain a fast pickup; the ancestor took up to 5 minutes.
"""

from __future__ import annotations

import time

import psycopg

from imagend.db import apply_schema

from _common import daemon, fresh_database, parser, percentile, postgres, wait_until


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--inserts", type=int, default=200)
    p.add_argument("--gap-ms", type=float, default=50.0)
    args = p.parse_args()
    with postgres(args.database_url) as server:
        db = fresh_database(server, "bench_pickup")
        apply_schema(db)
        with (
            daemon(db, IMAGEND_GENERATOR_INTERVAL="300", IMAGEND_PROCESSOR_INTERVAL="600"),
            psycopg.connect(db, autocommit=True) as conn,
        ):
            time.sleep(2.0)  # idle, listening
            for n in range(args.inserts):
                conn.execute("INSERT INTO images (prompt) VALUES (%s)", [f"pickup {n}"])
                time.sleep(args.gap_ms / 1000)

            def all_claimed() -> bool:
                row = conn.execute("SELECT count(*) FROM images WHERE started_at IS NOT NULL").fetchone()
                return row is not None and row[0] == args.inserts

            wait_until(all_claimed, timeout=60)
            latencies = [
                float(r[0]) * 1000
                for r in conn.execute("SELECT extract(epoch FROM started_at - created_at) FROM images").fetchall()
            ]
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    print(f"pickup latency, {args.inserts} single-row inserts {args.gap_ms:g} ms apart, idle imagend -cron")
    print(f"  p50 {p50:.2f} ms (target <= 5)   p99 {p99:.2f} ms (target <= 25)   max {max(latencies):.2f} ms")
    print(f"  Go service (interval poll, 5 min): up to 300,000 ms -> p99 is {300_000 / p99:,.0f}x shorter")


if __name__ == "__main__":
    main()
