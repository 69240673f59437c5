"""Dead-worker rescue: SIGKILL a daemon that holds a row in flight; how long until another
daemon has claimed that row? Default settings (IMAGEND_DEAD_AFTER=10s, lease 60 s,
processor every 10 minutes), placeholder backend with a 30 s image so the row is
certainly in flight when the victim dies. Two scenarios, as an operator meets them:

  idle survivor:  two daemons running, the survivor idle, the victim killed;
  fresh survivor: the victim killed while a second daemon is starting.

    .venv/bin/python bench/rescue_time.py [--runs 3] [--database-url URL] [--baseline-src DIR]

--baseline-src runs the same with an earlier checkout's imagend (e.g. a `git worktree` of the
commit before daemon liveness), capped at --baseline-cap seconds.
Published: pgqueuer 30-60 s, pg-boss 1-2 min, River 1 h (their default rescue settings).
"""

from __future__ import annotations

import contextlib
import signal
import statistics
import time

import psycopg

from _common import daemon, fresh_database, parser, postgres, wait_until

SLOW_IMAGE = {"IMAGEND_PLACEHOLDER_DELAY": "30", "IMAGEND_DRAIN_SECONDS": "1"}


def holder(conn: psycopg.Connection[tuple[object, ...]], image_id: int, src_is_baseline: bool) -> str | None:
    if src_is_baseline:  # before daemon liveness: no imagend_working view; a claimed row was being worked on
        row = conn.execute("SELECT locked_by FROM images WHERE id = %s AND status = 'Generate'", [image_id]).fetchone()
    else:
        row = conn.execute("SELECT owner FROM imagend_working WHERE id = %s", [image_id]).fetchone()
    return None if row is None else row[0]


def one_run(server: str, fresh_survivor: bool, src: str | None, cap: float) -> float | None:
    """Seconds from SIGKILL to the row claimed by the survivor; None if not within `cap`."""
    db = fresh_database(server, "bench_rescue")
    with contextlib.ExitStack() as stack:
        victim = stack.enter_context(daemon(db, src=src, **SLOW_IMAGE))
        conn = stack.enter_context(psycopg.connect(db, autocommit=True))
        image_id = conn.execute("INSERT INTO images (prompt) VALUES ('held by the victim') RETURNING id").fetchone()[0]
        wait_until(lambda: holder(conn, image_id, src is not None) is not None, timeout=30)
        victim_owner = holder(conn, image_id, src is not None)
        if not fresh_survivor:
            stack.enter_context(daemon(db, src=src, **SLOW_IMAGE))
            time.sleep(2.0)  # idle, its interval runs far away
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        if fresh_survivor:
            stack.enter_context(daemon(db, src=src, **SLOW_IMAGE))
        try:
            wait_until(lambda: holder(conn, image_id, src is not None) not in (None, victim_owner),
                       timeout=cap, interval=0.02)
        except TimeoutError:
            return None
        return time.monotonic() - killed


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--baseline-src", help="an earlier checkout's folder holding the imagend package")
    p.add_argument("--baseline-cap", type=float, default=90.0)
    p.add_argument("--baseline-runs", type=int, default=1)
    args = p.parse_args()
    rows = []
    with postgres(args.database_url) as server:
        for name, src, cap in (("imagend", None, 120.0), ("imagend (baseline)", args.baseline_src, args.baseline_cap)):
            if name.endswith("(baseline)") and not src:
                continue
            runs = args.baseline_runs if src else args.runs
            for fresh in (False, True):
                times = [one_run(server, fresh, src, cap) for _ in range(runs)]
                rows.append((name, "fresh survivor" if fresh else "idle survivor", times, cap))
    print("dead-worker rescue, SIGKILL -> row claimed by another daemon, default settings (target <= 10 s)")
    for name, scenario, times, cap in rows:
        shown = ", ".join(f"not within {cap:.0f} s" if t is None else f"{t:.2f} s" for t in times)
        done = [t for t in times if t is not None]
        med = f"median {statistics.median(done):.2f} s" if len(done) == len(times) else "median n/a"
        print(f"  {name:<20} {scenario:<15} {med:<16} runs: {shown}")
    print("  published defaults: pgqueuer 30-60 s, pg-boss 1-2 min, River 1 h")


if __name__ == "__main__":
    main()
