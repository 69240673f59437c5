"""Owners (issue 21, docs/owners.md): what fair share and caps cost the claim, and the fairness figures.

1. Claim cost: the median of one-row claims on a table of 100,000 waiting rows, anonymous (no owners in
   use) versus 1,000 owners, one of them holding 50,000 of the rows (the others ~50 each); and the same
   with that big owner saturated (at its cap) and its rows one priority above everyone's (the head-of-line
   case: the claim walks past them). Asked: owners <= 2x no owners.
2. The claim's plan: the rows' choice (CTE picked) the same with and without owners, on images_ready_idx,
   no sort (EXPLAIN).
3. Fairness, as the tests assert it: A inserts 300 rows, then B and C 10 each, 3 claimers taking one row
   each in turn: where B's and C's last rows start against A's 40th; and weights 3 and 1, both waiting:
   the ratio of their starts.

    .venv/bin/python bench/owners.py [--waiting 100000] [--owners 1000] [--claims 500] [--database-url URL]
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Any

import psycopg
from psycopg.rows import dict_row

from imagend.config.settings import load_settings
from imagend.db.connect import apply_schema, open_pool
from imagend.db.repository import Repository

from _common import fresh_database, parser, percentile, postgres
from support.claim_plan import claim_plan

CLAIM_PARAMS = {"now": None, "backend": "placeholder", "default_backend": "placeholder",
                "skip_backends": ["local", "fusionbrain"], "limit": 1, "owner": "explainer", "lease_seconds": 30.0,
                "loaded_models": None, "switch_seconds": 0, "mark_idle": False}


def prepare(server: str, name: str, waiting: int, owners: int, saturated: bool) -> str:
    db = fresh_database(server, name)
    apply_schema(db)
    with psycopg.connect(db, autocommit=True) as conn:
        if owners == 0:
            conn.execute("INSERT INTO images (prompt) SELECT 'waiting ' || g FROM generate_series(1, %s) g", [waiting])
        else:
            big = waiting // 2
            if saturated:
                conn.execute("INSERT INTO imagend_plans (name, max_running) VALUES ('CAPPED', 1)")
                conn.execute("INSERT INTO imagend_owners (owner, plan, running) VALUES ('big', 'CAPPED', 1)")
            conn.execute("INSERT INTO images (prompt, owner, priority) SELECT 'big ' || g, 'big', %s "
                         "FROM generate_series(1, %s) g", [1 if saturated else 0, big])
            conn.execute("INSERT INTO images (prompt, owner) SELECT 'small ' || g, 'o' || (g %% %s) "
                         "FROM generate_series(1, %s) g", [owners - 1, waiting - big])
        conn.execute("VACUUM ANALYZE images")
    return db


def claim_ms(db: str, claims: int) -> list[float]:
    settings = load_settings(environ={"DATABASE_URL": db, "IMAGEND_BACKEND": "placeholder"}, env_file=None)
    with open_pool(db, settings) as pool:
        repo = Repository(pool, "bench", lease_seconds=600, default_backend="placeholder", default_max_attempts=3)
        for _ in range(20):
            repo.extend_lease([0])
        latencies = []
        for _ in range(claims):
            started = time.perf_counter()
            rows = repo.claim_batch("placeholder", 1, mark_idle=False)
            latencies.append((time.perf_counter() - started) * 1000)
            assert len(rows) == 1
    return latencies


def picking_plan(db: str) -> list[str]:
    with psycopg.connect(db, autocommit=True) as conn:
        plan = claim_plan(conn, CLAIM_PARAMS)  # the plan imagend_claim_batch caches
    picking = plan[plan.index("CTE picked"):plan.index("CTE counters")]
    assert "images_ready_idx" in picking and "Sort" not in picking and "Seq Scan on images" not in picking, plan
    return [line.split("(cost")[0].rstrip() for line in picking.splitlines() if "->" in line]


def fairness(server: str) -> dict[str, Any]:
    db = fresh_database(server, "bench_owners_fair")
    apply_schema(db)
    settings = load_settings(environ={"DATABASE_URL": db, "IMAGEND_BACKEND": "placeholder"}, env_file=None)
    with psycopg.connect(db, autocommit=True, row_factory=dict_row) as conn, open_pool(db, settings) as pool:
        claimers = [Repository(pool, f"d{n}", lease_seconds=600, default_backend="placeholder",
                               default_max_attempts=3) for n in range(3)]

        def owner_order(count: int) -> list[str]:
            ids = []
            while len(ids) < count:
                for claimer in claimers:
                    ids += [row.id for row in claimer.claim_batch("placeholder", 1, mark_idle=False)]
            owners = {r["id"]: r["owner"] for r in conn.execute("SELECT id, owner FROM images WHERE id = ANY(%s)",
                                                                [ids])}
            return [owners[i] for i in ids]

        conn.execute("INSERT INTO images (prompt, owner) SELECT 'a', 'A' FROM generate_series(1, 300)")
        conn.execute("INSERT INTO images (prompt, owner) SELECT 'b', 'B' FROM generate_series(1, 10)")
        conn.execute("INSERT INTO images (prompt, owner) SELECT 'c', 'C' FROM generate_series(1, 10)")
        order = owner_order(60)
        a40 = [n for n, owner in enumerate(order) if owner == "A"][39] + 1
        last_bc = max(n for n, owner in enumerate(order) if owner in ("B", "C")) + 1
        conn.execute("DELETE FROM images")
        conn.execute("INSERT INTO imagend_plans (name, weight) VALUES ('W3', 3), ('W1', 1)")
        conn.execute("INSERT INTO imagend_owners (owner, plan) VALUES ('gold', 'W3'), ('basic', 'W1')")
        conn.execute("INSERT INTO images (prompt, owner) SELECT 'g', 'gold' FROM generate_series(1, 300)")
        conn.execute("INSERT INTO images (prompt, owner) SELECT 'b', 'basic' FROM generate_series(1, 300)")
        counts = Counter(owner_order(200))
    return {"a40": a40, "last_bc": last_bc, "gold": counts["gold"], "basic": counts["basic"]}


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--waiting", type=int, default=100_000)
    p.add_argument("--owners", type=int, default=1_000)
    p.add_argument("--claims", type=int, default=500)
    args = p.parse_args()
    with postgres(args.database_url) as server:
        plain = prepare(server, "bench_owners_none", args.waiting, 0, saturated=False)
        owned = prepare(server, "bench_owners_many", args.waiting, args.owners, saturated=False)
        blocked = prepare(server, "bench_owners_hol", args.waiting, args.owners, saturated=True)
        shapes = {name: picking_plan(db) for name, db in (("none", plain), ("owners", owned), ("hol", blocked))}
        # ABBA: each meets the machine in the same state on average.
        runs: dict[str, list[float]] = {"none": [], "owners": [], "hol": []}
        half = args.claims // 2
        for name, db in (("none", plain), ("owners", owned), ("hol", blocked), ("hol", blocked),
                         ("owners", owned), ("none", plain)):
            runs[name] += claim_ms(db, half)
        fair = fairness(server)
    where = "the given server" if args.database_url else "embedded Postgres"
    print(f"claim latency (one row, {args.claims} claims each), {args.waiting:,} waiting rows, {where}")
    labels = {"none": "no owners (anonymous rows)",
              "owners": f"{args.owners:,} owners, one with {args.waiting // 2:,}",
              "hol": "the same, big owner at its cap, a priority above"}
    for name, values in runs.items():
        print(f"  {labels[name]:<50} median {statistics.median(values):.3f} ms   p99 {percentile(values, 99):.3f} ms")
    for name in ("owners", "hol"):
        ratio = statistics.median(runs[name]) / statistics.median(runs["none"])
        print(f"  ratio {name}/none: {ratio:.2f} (asked: <= 2)")
    same = shapes["none"] == shapes["owners"] == shapes["hol"]
    print(f"plan of the rows' choice: {'the same' if same else 'DIFFERENT'} with and without owners "
          f"(images_ready_idx, no sort): {' / '.join(s.strip().lstrip('-> ') for s in shapes['none'])}")
    print(f"fairness: A 300 rows then B, C 10 each, 3 claimers: B's and C's last row started "
          f"{fair['last_bc']}th, A's 40th row {fair['a40']}th (asked: before)")
    print(f"fairness: weights 3:1, 200 starts while both wait: {fair['gold']}:{fair['basic']} = "
          f"{fair['gold'] / fair['basic']:.2f} (asked: 3 +/- 20 %)")


if __name__ == "__main__":
    main()
