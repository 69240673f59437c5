"""Pickup latency: `imagend -cron` idle, single-row INSERTs 50 ms apart; time from the
INSERT to the claim, both read off the database clock (created_at is the inserting
statement's start, so the figure slightly overstates the time from commit).

    .venv/bin/python bench/pickup_latency.py [--inserts 200] [--gap-ms 50] [--database-url URL]
                                             [--pgbouncer]

The interval jobs are set to the Go service's defaults (generator every 5 minutes), so
only the LISTEN wake-up can explain a fast pickup; the ancestor took up to 5 minutes.

--pgbouncer adds two runs through a real PgBouncer (Debian's, transaction pooling): with
IMAGEND_LISTEN_URL pointing straight at Postgres, and without it (the daemon finds that
its LISTEN hears nothing and polls every IMAGEND_POLL_SECONDS, default 2 s).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import psycopg

from imagend.db.connect import apply_schema

from _common import daemon, fresh_database, parser, percentile, postgres, wait_until


def measure(server: str, inserts: int, gap_ms: float, src: str | None = None,
            through_pgbouncer: bool = False, listen_direct: bool = False, **env: str) -> list[float]:
    """Pickup latencies in ms. `through_pgbouncer`: the daemon's DATABASE_URL goes through a real
    PgBouncer (tests/support/pgbouncer.py), and with `listen_direct` its IMAGEND_LISTEN_URL goes
    straight to Postgres; `src`: an earlier checkout's imagend."""
    db = fresh_database(server, "bench_pickup")
    if src is None:
        apply_schema(db)
    with contextlib.ExitStack() as stack:
        daemon_url = db
        if through_pgbouncer:
            daemon_url = stack.enter_context(_bouncer(server)).url_for(db)
            if listen_direct:
                env["IMAGEND_LISTEN_URL"] = db
        stack.enter_context(
            daemon(daemon_url, src=src, IMAGEND_GENERATOR_INTERVAL="300", IMAGEND_PROCESSOR_INTERVAL="600", **env)
        )
        conn = stack.enter_context(psycopg.connect(db, autocommit=True))
        time.sleep(4.0)  # idle, listening (or found that it cannot, and polling)
        for n in range(inserts):
            conn.execute("INSERT INTO images (prompt) VALUES (%s)", [f"pickup {n}"])
            time.sleep(gap_ms / 1000)

        def all_claimed() -> bool:
            row = conn.execute("SELECT count(*) FROM images WHERE started_at IS NOT NULL").fetchone()
            return row is not None and row[0] == inserts

        wait_until(all_claimed, timeout=60)
        return [
            float(r[0]) * 1000
            for r in conn.execute("SELECT extract(epoch FROM started_at - created_at) FROM images").fetchall()
        ]


@contextlib.contextmanager
def _bouncer(server: str) -> Iterator[Any]:
    from support.pgbouncer import PgBouncer

    with PgBouncer(server) as bouncer:
        yield bouncer


def report(name: str, latencies: list[float], target: str) -> tuple[float, float]:
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    print(f"  {name:<44} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms   max {max(latencies):8.2f} ms   ({target})")
    return p50, p99


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--inserts", type=int, default=200)
    p.add_argument("--gap-ms", type=float, default=50.0)
    p.add_argument("--pgbouncer", action="store_true", help="also measure through a real PgBouncer")
    args = p.parse_args()
    print(f"pickup latency, {args.inserts} single-row inserts {args.gap_ms:g} ms apart, idle imagend -cron")
    with postgres(args.database_url) as server:
        direct = measure(server, args.inserts, args.gap_ms)
        _, p99 = report("direct", direct, "target p50 <= 5, p99 <= 25")
        if args.pgbouncer:
            listen = measure(server, args.inserts, args.gap_ms, through_pgbouncer=True, listen_direct=True)
            report("PgBouncer, IMAGEND_LISTEN_URL direct", listen, "target p50 <= 5")
            polled = measure(server, args.inserts, args.gap_ms, through_pgbouncer=True)
            report("PgBouncer, no IMAGEND_LISTEN_URL (polling)", polled, "target p50 <= IMAGEND_POLL_SECONDS")
    print(f"  Go service (interval poll, 5 min): up to 300,000 ms -> direct p99 is {300_000 / p99:,.0f}x shorter")


if __name__ == "__main__":
    main()
