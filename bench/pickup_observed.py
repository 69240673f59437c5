"""Pickup as a producer sees it, before/after in one run (issue 20's measure): one idle `imagend -cron`
(placeholder backend), single-row INSERTs --gap-ms apart; each pickup is the time from just before the
producer's INSERT to the moment another session hears the row turn `Generate` (a trigger of the bench's own
on the table NOTIFYs it), both read off this process's clock. Two checkouts alternate round by round (ABBA),
each round on a fresh database, so both meet the same machine.

    git worktree add --detach /tmp/wt-3025551 3025551
    .venv/bin/python bench/pickup_observed.py --baseline-src /tmp/wt-3025551 [--rounds 4] [--inserts 200]
"""

from __future__ import annotations

import statistics
import threading
import time

import psycopg

from imagend.db.connect import apply_schema

from _common import abba, daemon, fresh_database, parser, percentile, postgres

OBSERVER = """
CREATE OR REPLACE FUNCTION bench_observed_pickup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('bench_observed', NEW.id::text); RETURN NULL; END $$;
CREATE OR REPLACE TRIGGER bench_observed_pickup AFTER UPDATE OF status ON images FOR EACH ROW
    WHEN (NEW.status = 'Generate' AND OLD.status = 'ReadyToGenerate') EXECUTE FUNCTION bench_observed_pickup();
"""


def one_round(server: str, src: str | None, inserts: int, gap_ms: float) -> tuple[list[float], list[float]]:
    """Pickup latencies in ms of one idle daemon of `src` (None: this checkout), and the producer's INSERT
    round trips (the part of each pickup spent before the INSERT returned)."""
    db = fresh_database(server, "bench_pickup_observed")
    if src is None:
        apply_schema(db)
    seen: dict[int, float] = {}
    with daemon(db, src=src) as _proc, psycopg.connect(db, autocommit=True) as conn:
        conn.execute(OBSERVER)  # after the daemon made (or upgraded) its schema
        ready = threading.Event()

        def observe() -> None:
            with psycopg.connect(db, autocommit=True) as listener:
                listener.execute("LISTEN bench_observed")
                ready.set()
                for note in listener.notifies(timeout=inserts * gap_ms / 1000 + 30):
                    seen[int(note.payload)] = time.perf_counter()
                    if len(seen) >= inserts:
                        return

        thread = threading.Thread(target=observe, daemon=True)
        thread.start()
        ready.wait(10)
        time.sleep(1.0)  # the daemon idle again after its start
        started: dict[int, float] = {}
        insert_ms: list[float] = []
        for _ in range(inserts):
            before = time.perf_counter()
            row = conn.execute("INSERT INTO images (prompt) VALUES ('observed pickup') RETURNING id").fetchone()
            insert_ms.append((time.perf_counter() - before) * 1000)
            assert row is not None
            started[int(row[0])] = before
            time.sleep(gap_ms / 1000)
        thread.join(30)
    missing = [image_id for image_id in started if image_id not in seen]
    assert not missing, f"{len(missing)} pickups never seen"
    return [(seen[i] - started[i]) * 1000 for i in started], insert_ms


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--baseline-src", required=True)
    p.add_argument("--after-src", default=None, help="another checkout as the 'after' (default: this one)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--inserts", type=int, default=200)
    p.add_argument("--gap-ms", type=float, default=50.0)
    args = p.parse_args()
    latencies: dict[str, list[float]] = {"before": [], "after": []}
    medians: dict[str, list[float]] = {"before": [], "after": []}
    inserts_ms: dict[str, list[float]] = {"before": [], "after": []}
    with postgres(args.database_url) as server:
        for name, src in abba(args.rounds, [("before", args.baseline_src), ("after", args.after_src)]):
            values, insert_ms = one_round(server, src, args.inserts, args.gap_ms)
            latencies[name] += values
            inserts_ms[name] += insert_ms
            medians[name].append(statistics.median(values))
    print(f"pickup as a producer sees it ({args.baseline_src} vs {args.after_src or 'this checkout'}), "
          f"{args.rounds} ABBA rounds of {args.inserts} inserts {args.gap_ms:g} ms apart, ms:")
    for name in ("before", "after"):
        values = sorted(latencies[name])
        rounds = ", ".join(f"{m:.2f}" for m in medians[name])
        print(f"  {name:6} p50 {statistics.median(values):5.2f}  p95 {percentile(values, 95):6.2f}  "
              f"p99 {percentile(values, 99):6.2f}   round medians {rounds}   "
              f"of which the INSERT's round trip p50 {statistics.median(inserts_ms[name]):.2f}")
    ratio = statistics.median(latencies["after"]) / statistics.median(latencies["before"])
    print(f"  after / before p50: {ratio:.3f}x (issue 20: after <= before)")


if __name__ == "__main__":
    main()
