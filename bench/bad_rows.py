"""Bad rows in a burst (issue 19, item 7): 5,000 rows naming an unknown backend and 5,000 good ones,
one `imagend -cron` (placeholder, no delay), this checkout and, with --baseline-src, an earlier one
in the same run. Prints rows failed per second and good rows per second.

    .venv/bin/python bench/bad_rows.py [--rows 5000] [--baseline-src /tmp/imagend-before]
"""

from __future__ import annotations

import statistics
import time

import psycopg

from imagend.db.connect import apply_schema

from _common import abba, daemon, fresh_database, parser, postgres, wait_until


def run(server: str, rows: int, src: str | None) -> tuple[float, float]:
    db = fresh_database(server, "bench_bad_rows")
    apply_schema(db)
    with daemon(db, src=src), psycopg.connect(db, autocommit=True) as conn:
        time.sleep(1)
        started = time.monotonic()
        conn.execute("INSERT INTO images (prompt, backend) SELECT 'bad', 'dalle' || n FROM generate_series(1, %s) n",
                     [rows])
        wait_until(lambda: conn.execute("SELECT count(*) FROM images WHERE status = 'Failed'").fetchone()[0] >= rows,
                   timeout=600, interval=0.1)
        bad = rows / (time.monotonic() - started)
        started = time.monotonic()
        conn.execute("INSERT INTO images (prompt) SELECT 'good' FROM generate_series(1, %s)", [rows])
        wait_until(lambda: conn.execute("SELECT count(*) FROM images WHERE status = 'ReadyToPublish'").fetchone()[0]
                   >= rows, timeout=600, interval=0.1)
        good = rows / (time.monotonic() - started)
    return bad, good


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--rows", type=int, default=5000)
    p.add_argument("--baseline-src")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    runs: dict[str, list[tuple[float, float]]] = {}
    order = [("this checkout", None)] + ([(args.baseline_src, args.baseline_src)] if args.baseline_src else [])
    with postgres(args.database_url) as server:
        for name, src in abba(args.rounds, order):
            runs.setdefault(name, []).append(run(server, args.rows, src))
    print(f"bad rows, {args.rows} naming an unknown backend, then {args.rows} good ones, one daemon, "
          f"median of {args.rounds}")
    for name, figures in runs.items():
        bad, good = statistics.median(f[0] for f in figures), statistics.median(f[1] for f in figures)
        print(f"  {name:<28} {bad:>8,.0f} bad rows failed/s   {good:>8,.0f} good rows/s")


if __name__ == "__main__":
    main()
