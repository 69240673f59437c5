"""/metrics scrape time with 1,000,000 rows in the table (target: under 50 ms). Each timed scrape
comes after the queue cache expired, so each one reads the database (counts, oldest waiting row,
pauses, fleet); a second scrape right after shows the cached cost.

    .venv/bin/python bench/metrics_scrape.py [--rows 1000000] [--scrapes 20]
"""

from __future__ import annotations

import time

import httpx
import psycopg

from _common import daemon, fresh_database, parser, percentile, postgres

PORT = 9472


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--waiting", type=int, default=1_000, help="of them, rows still waiting (the rest finished)")
    p.add_argument("--scrapes", type=int, default=20)
    args = p.parse_args()
    from imagend.db.connect import apply_schema
    from imagend.operations.metrics import QUEUE_CACHE_SECONDS

    with postgres(args.database_url) as server:
        db = fresh_database(server, "bench_metrics")
        apply_schema(db)
        with psycopg.connect(db, autocommit=True) as conn:
            started = time.monotonic()
            finished = args.rows - args.waiting
            for first in range(0, finished, 100_000):  # statements of 100,000: one change row each
                conn.execute(
                    "INSERT INTO images (prompt, status, backend, base64, generation_seconds, finished_at) "
                    "SELECT 'finished ' || g, CASE WHEN g %% 10 = 0 THEN 'Failed' ELSE 'ReadyToPublish' END, "
                    "'placeholder', 'iVBORw0KGgo=', 1.5, now() FROM generate_series(%s, %s) g",
                    [first, min(first + 100_000, finished) - 1])
            conn.execute("INSERT INTO images (prompt, backend) SELECT 'waiting ' || g, 'local' "
                         "FROM generate_series(1, %s) g", [args.waiting])
            conn.execute("VACUUM ANALYZE images")
            print(f"{args.rows:,} rows ({args.waiting:,} waiting) loaded in {time.monotonic() - started:.0f} s")
            naive = []  # what the status view did before: count the table
            for _ in range(5):
                t0 = time.perf_counter()
                conn.execute("SELECT status, backend, count(*) FROM images GROUP BY 1, 2").fetchall()
                naive.append((time.perf_counter() - t0) * 1000)
        cold, cached = [], []
        # The daemon serves placeholder only: the 'local' rows wait, as a backlog for a GPU host would.
        with daemon(db, IMAGEND_HTTP=f"127.0.0.1:{PORT}", IMAGEND_BACKENDS="placeholder"), httpx.Client() as client:
            url = f"http://127.0.0.1:{PORT}/metrics"
            client.get(url).raise_for_status()
            for _ in range(args.scrapes):
                time.sleep(QUEUE_CACHE_SECONDS + 0.1)
                response = client.get(url)
                response.raise_for_status()
                assert "imagend_queue_stale 0.0" in response.text
                cold.append(response.elapsed.total_seconds() * 1000)
                cached.append(client.get(url).elapsed.total_seconds() * 1000)
            rows_line = [line for line in response.text.splitlines() if line.startswith("imagend_queue_rows")]
    print("\n".join(f"  {line}" for line in rows_line))
    print(f"/metrics with {args.rows:,} rows, {args.scrapes} scrapes: reading the database "
          f"p50 {percentile(cold, 50):.1f} ms, max {max(cold):.1f} ms; cached p50 {percentile(cached, 50):.1f} ms "
          f"(target < 50 ms); counting the table instead: p50 {percentile(naive, 50):.0f} ms "
          f"({percentile(naive, 50) / percentile(cold, 50):.0f}x)")


if __name__ == "__main__":
    main()
