"""Claim cost at scale: the latency of one claim (one row) with 10,000 versus 1,000,000
finished rows in the table. The partial index on waiting rows should make them equal.

    .venv/bin/python bench/claim_scale.py [--small 10000] [--large 1000000] [--claims 500] [--database-url URL]
"""

from __future__ import annotations

import statistics
import time

import psycopg

from imagend.config.settings import load_settings
from imagend.db.connect import apply_schema, open_pool
from imagend.db.repository import Repository

from _common import fresh_database, parser, percentile, postgres


def claim_latencies_ms(server: str, finished: int, claims: int) -> list[float]:
    db = fresh_database(server, f"bench_claim_{finished}")
    apply_schema(db)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO images (prompt, status, base64, backend, finished_at, attempts) "
            "SELECT 'done ' || g, 'ReadyToPublish', 'iVBORw0KGgo=', 'placeholder', now(), 1 "
            "FROM generate_series(1, %s) g",
            [finished],
        )
        conn.execute("INSERT INTO images (prompt) SELECT 'waiting ' || g FROM generate_series(1, %s) g", [claims])
        conn.execute("VACUUM ANALYZE images")
    settings = load_settings(environ={"DATABASE_URL": db, "IMAGEND_BACKEND": "placeholder"}, env_file=None)
    with open_pool(db, settings) as pool:
        repo = Repository(pool, "bench", lease_seconds=60, default_backend="placeholder", default_max_attempts=3)
        for _ in range(20):  # warm the pool, the plan cache and the buffers
            repo.extend_lease([0])
        latencies = []
        for _ in range(claims):
            started = time.perf_counter()
            rows = repo.claim_batch("placeholder", 1)
            latencies.append((time.perf_counter() - started) * 1000)
            assert len(rows) == 1
    return latencies


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--small", type=int, default=10_000)
    p.add_argument("--large", type=int, default=1_000_000)
    p.add_argument("--claims", type=int, default=500)
    args = p.parse_args()
    with postgres(args.database_url) as server:
        small = claim_latencies_ms(server, args.small, args.claims)
        large = claim_latencies_ms(server, args.large, args.claims)
    where = "the given server" if args.database_url else "embedded Postgres"
    print(f"claim latency (one row, {args.claims} claims each), {where}")
    for name, values in ((f"{args.small:,} finished rows", small), (f"{args.large:,} finished rows", large)):
        print(f"  {name:<26} median {statistics.median(values):.3f} ms   p99 {percentile(values, 99):.3f} ms")
    ratio = statistics.median(large) / statistics.median(small)
    print(f"  ratio large/small (median) = {ratio:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
