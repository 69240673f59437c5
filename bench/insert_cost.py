"""What a producer's single-row INSERT costs the database, before/after in one run (issue 20: the pickup's
part before the INSERT returns). One idle `imagend -cron` (placeholder backend) to wake; single-row INSERTs
--gap-ms apart for --seconds; the INSERT's mean execution time, its triggers included, from
pg_stat_statements (track = top for the producer's session) on a PostgreSQL 15 cluster of the benchmark's
own (bench/fleet.py's: run as root), and its round trip p50 on this process's clock. Checkouts alternate
round by round (ABBA), each round on a fresh database.

    git worktree add --detach /tmp/wt-3025551 3025551
    sudo .venv/bin/python bench/insert_cost.py --baseline-src /tmp/wt-3025551 [--rounds 4] [--seconds 6]
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg

from imagend.db.connect import apply_schema

from _common import abba, daemon, fresh_database
from fleet import own_postgres


def one_round(server: str, src: str | None, seconds: float, gap_ms: float) -> tuple[float, float, int]:
    """The INSERT's mean server time in us, its round trip p50 in ms, and the rows left waiting (0: the
    daemon kept up, so each INSERT had an idle daemon to wake)."""
    db = fresh_database(server, "bench_insert_cost")
    if src is None:
        apply_schema(db)
    with daemon(db, src=src) as _proc, psycopg.connect(
        db, autocommit=True, options="-c pg_stat_statements.track=top"
    ) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        time.sleep(1.5)  # the daemon idle after its start
        conn.execute("SELECT pg_stat_statements_reset()")
        round_trips = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            before = time.perf_counter()
            conn.execute("INSERT INTO images (prompt) VALUES ('insert cost') RETURNING id").fetchone()
            round_trips.append((time.perf_counter() - before) * 1000)
            time.sleep(gap_ms / 1000)
        row = conn.execute("SELECT mean_exec_time FROM pg_stat_statements "
                           "WHERE query LIKE 'INSERT INTO images (prompt) VALUES%'").fetchone()
        time.sleep(1.0)
        waiting = conn.execute("SELECT count(*) FROM images WHERE status = 'ReadyToGenerate'").fetchone()
    assert row is not None and waiting is not None
    return float(row[0]) * 1000, statistics.median(round_trips), int(waiting[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--baseline-src", required=True)
    p.add_argument("--after-src", default=None, help="another checkout as the 'after' (default: this one)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--gap-ms", type=float, default=20.0)
    args = p.parse_args()
    server_us: dict[str, list[float]] = {"before": [], "after": []}
    round_trip_ms: dict[str, list[float]] = {"before": [], "after": []}
    with own_postgres() as server:
        for name, src in abba(args.rounds, [("before", args.baseline_src), ("after", args.after_src)]):
            us, ms, waiting = one_round(server, src, args.seconds, args.gap_ms)
            server_us[name].append(us)
            round_trip_ms[name].append(ms)
            if waiting:
                print(f"  ({name}, round {len(server_us[name])}: {waiting} rows still waiting: the daemon fell behind)")
    print(f"a producer's single-row INSERT ({args.baseline_src} vs {args.after_src or 'this checkout'}), "
          f"{args.rounds} ABBA rounds of {args.seconds:g} s, one idle daemon, PostgreSQL 15:")
    for name in ("before", "after"):
        rounds = ", ".join(f"{us:.0f}" for us in server_us[name])
        print(f"  {name:6} database time {statistics.median(server_us[name]):6.0f} us (rounds {rounds})   "
              f"round trip p50 {statistics.median(round_trip_ms[name]):.3f} ms")
    ratio = statistics.median(server_us["after"]) / statistics.median(server_us["before"])
    print(f"  after / before database time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
