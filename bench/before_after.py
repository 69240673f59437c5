"""Before and after, in one run: queue drain and pickup latency of this checkout's imagend
beside an earlier checkout's (the commit before a change: the pacer, the house by concern),
interleaved in ABBA order so that both meet the same machine, and neither always runs right
after the other's writes.

    git worktree add /tmp/imagend-before <commit>
    .venv/bin/python bench/before_after.py --baseline-src /tmp/imagend-before [--rounds 4] [--tolerance 0.03]
"""

from __future__ import annotations

import statistics

from pickup_latency import measure
from queue_drain import drain_imagend

from _common import abba, parser, percentile, postgres


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--baseline-src", required=True)
    p.add_argument("--after-src", default=None, help="another checkout as the 'after' (default: this one)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--inserts", type=int, default=200)
    p.add_argument("--tolerance", type=float, default=0.05, help="the change allowed (0.03: within 3 %%)")
    args = p.parse_args()
    drains: dict[str, list[float]] = {"before": [], "after": []}
    pickups: dict[str, list[float]] = {"before": [], "after": []}
    # CPU ms per 1,000 rows drained, in the daemon and in Postgres: on a machine that is doing other
    # work too, rows/s wanders with it, CPU time much less.
    costs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    with postgres(args.database_url) as server:
        for name, src in abba(args.rounds, [("before", args.baseline_src), ("after", args.after_src)]):
            cost: dict[str, float] = {}
            drains[name].append(drain_imagend(server, args.rows, src=src, cpu=cost))
            costs[name].append(cost)
            pickups[name] += measure(server, args.inserts, 50.0, src=src)
    after = args.after_src or "this checkout"
    print(f"before/after ({args.baseline_src} vs {after}), {args.rounds} interleaved rounds, "
          f"{args.rows} rows drained, {args.inserts} pickups per round")
    for name in ("before", "after"):
        rates = ", ".join(f"{r:,.0f}" for r in drains[name])
        print(f"  {name:<7} drain median {statistics.median(drains[name]):>8,.0f} rows/s ({rates})   "
              f"pickup p50 {percentile(pickups[name], 50):.2f} ms p99 {percentile(pickups[name], 99):.2f} ms")
        daemon_ms = statistics.median(c["daemon"] for c in costs[name])
        postgres_ms = statistics.median(c["postgres"] for c in costs[name])
        print(f"          CPU per 1,000 rows drained (median): daemon {daemon_ms:.0f} ms, "
              f"Postgres {postgres_ms:.0f} ms, both {daemon_ms + postgres_ms:.0f} ms")
    ratio = statistics.median(drains["after"]) / statistics.median(drains["before"])
    p50 = percentile(pickups["after"], 50) / percentile(pickups["before"], 50)
    both = {name: statistics.median(c["daemon"] + c["postgres"] for c in costs[name]) for name in costs}
    print(f"  after / before: CPU per row drained {both['after'] / both['before']:.3f}x (lower is better)")
    print(f"  after / before: drain {ratio:.3f}x (target >= {1 - args.tolerance:.2f}), "
          f"pickup p50 {p50:.3f}x (target <= {1 + args.tolerance:.2f})")


if __name__ == "__main__":
    main()
