"""CPU per 1,000 rows drained, along the history: one `imagend -cron` (placeholder backend) drains 20,000
rows for each checkout given, in ABBA rounds on one embedded Postgres, and the daemon's and the server's CPU
milliseconds per 1,000 rows are printed with rows/s (bench/queue_drain.py's `cpu=`). On a machine shared with
other work rows/s wanders; CPU per row holds still, so a commit that makes the drain dearer shows here.

    for c in 3025551 af778e9 HEAD; do git worktree add --detach /tmp/wt-$c $c; done
    .venv/bin/python bench/drain_cpu_history.py [--rounds 2] /tmp/wt-3025551 /tmp/wt-af778e9 this
(`this`: this checkout)
"""

from __future__ import annotations

import statistics

from queue_drain import drain_imagend

from _common import parser, postgres


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("checkouts", nargs="+", help="folders holding an imagend checkout, or `this`")
    args = p.parse_args()
    figures: dict[str, list[tuple[float, float, float]]] = {src: [] for src in args.checkouts}
    with postgres(args.database_url) as server:
        for n in range(args.rounds):
            for src in args.checkouts if n % 2 == 0 else args.checkouts[::-1]:
                cost: dict[str, float] = {}
                rate = drain_imagend(server, args.rows, src=None if src == "this" else src, cpu=cost)
                figures[src].append((cost["daemon"], cost["postgres"], rate))
    print(f"CPU ms per 1,000 rows drained (median of {args.rounds} rounds, {args.rows:,} rows each)")
    for src, values in figures.items():
        daemon = statistics.median(v[0] for v in values)
        server = statistics.median(v[1] for v in values)
        rate = statistics.median(v[2] for v in values)
        total = daemon + server
        print(f"  {src:28} daemon {daemon:5.1f} + Postgres {server:5.1f} = {total:6.1f}   {rate:8,.0f} rows/s")


if __name__ == "__main__":
    main()
