"""Fusion Brain throughput: one `imagend -cron` daemon against the fake API, versus the
ancestor's sequential submit-then-poll loop, in the same run on the same fake.

    .venv/bin/python bench/fusionbrain_bench.py [--rows 1000] [--sample 20] [--database-url URL]

The fake adds 100 ms to every HTTP call and finishes each task 1 s after submission
(status_time 1 s). The daemon's figure is the time from the fake's first accepted
submission to the moment every row is ReadyToPublish. The sequential loop (submit one
task, poll it every --poll-every seconds until done, then the next) would take 20+
minutes on 1,000 rows, so it is measured on --sample rows and its per-image time
extrapolated; the output says so.
"""

from __future__ import annotations

import time

import psycopg

from imagend.backends.base import Image, Request
from imagend.backends.fusionbrain import FusionBrainBackend, FusionBrainConfig
from imagend.db.connect import apply_schema
from imagend.logs import configure
from imagend.testing.fusionbrain_fake import DEFAULT_API_KEY, DEFAULT_SECRET_KEY, FusionBrainFake

from _common import daemon, fresh_database, parser, postgres, wait_until


def run_daemon(server_url: str, fake: FusionBrainFake, rows: int) -> tuple[float, dict[str, int]]:
    db = fresh_database(server_url, "bench_fusionbrain")
    apply_schema(db)
    env = {
        "IMAGEND_BACKEND": "fusionbrain",
        "IMAGEND_BACKENDS": "fusionbrain",
        **fake.client_env(),
    }
    before = fake.calls()
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO images (prompt) SELECT 'bench prompt ' || g FROM generate_series(1, %s) g", [rows])

        def published() -> bool:
            row = conn.execute("SELECT count(*) FROM images WHERE status = 'ReadyToPublish'").fetchone()
            return row is not None and row[0] == rows

        with daemon(db, **env):
            wait_until(published, timeout=900, interval=0.02)
            finished = time.monotonic()
        row = conn.execute("SELECT count(*) FROM images WHERE status = 'Failed'").fetchone()
        failed = row[0] if row is not None else None
        assert failed == 0, f"{failed} rows failed"
    assert fake.first_run_at is not None
    after = fake.calls()
    return finished - fake.first_run_at, {k: after.get(k, 0) - before.get(k, 0) for k in after}


def run_sequential(fake: FusionBrainFake, sample: int, poll_every: float) -> tuple[float, dict[str, int]]:
    """The ancestor's way: submit one task, poll it every `poll_every` s until done, then the next."""
    backend = FusionBrainBackend(
        FusionBrainConfig(base_url=fake.url, styles_url=None), DEFAULT_API_KEY, DEFAULT_SECRET_KEY
    )
    before = fake.calls()
    started = time.monotonic()
    try:
        for i in range(sample):
            request = Request(i, f"sequential prompt {i}", None, None, 1024, 1024, None, None, None, None)
            submission = backend.submit(request)
            while True:
                time.sleep(poll_every)
                if isinstance(backend.poll(submission.task_id), Image):
                    break
    finally:
        backend.close()
    after = fake.calls()
    return time.monotonic() - started, {k: after.get(k, 0) - before.get(k, 0) for k in after}


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--sample", type=int, default=20, help="rows for the sequential baseline (extrapolated)")
    p.add_argument("--latency", type=float, default=0.1, help="seconds the fake adds to every HTTP call")
    p.add_argument("--generation", type=float, default=1.0, help="seconds from submission to DONE")
    p.add_argument("--poll-every", type=float, default=1.0, help="the sequential loop's poll interval")
    args = p.parse_args()
    configure(verbose=False, json=False)  # the in-process baseline's debug lines would drown the figures
    fake = FusionBrainFake(
        latency_seconds=args.latency, generation_seconds=args.generation, status_time=round(args.generation)
    )
    with fake, postgres(args.database_url) as server_url:
        daemon_seconds, daemon_calls = run_daemon(server_url, fake, args.rows)
        sequential_seconds, sequential_calls = run_sequential(fake, args.sample, args.poll_every)
    per_image = sequential_seconds / args.sample
    extrapolated = per_image * args.rows
    calls_per_image = daemon_calls["total"] / args.rows
    print(
        f"fusionbrain bench: {args.rows} rows; fake: {args.latency * 1000:.0f} ms per HTTP call, "
        f"tasks DONE {args.generation:g} s after submission, status_time {round(args.generation)} s"
    )
    print(
        f"  daemon (one `imagend -cron`): {daemon_seconds:.2f} s from first submission to all ReadyToPublish "
        f"({args.rows / daemon_seconds:.0f} images/s)"
    )
    print(
        f"  daemon HTTP calls: {calls_per_image:.2f} per image "
        f"(run {daemon_calls.get('run', 0)}, status {daemon_calls.get('status', 0)}, "
        f"pipelines {daemon_calls.get('pipelines', 0)})"
    )
    print(
        f"  sequential submit-then-poll (poll every {args.poll_every:g} s): measured on {args.sample} rows, "
        f"{sequential_seconds:.2f} s = {per_image:.2f} s per image "
        f"({sequential_calls.get('total', 0) / args.sample:.2f} calls per image)"
    )
    print(f"  sequential, extrapolated to {args.rows} rows: {extrapolated:.0f} s ({extrapolated / 60:.1f} min)")
    print(
        f"  speed-up: {extrapolated / daemon_seconds:.0f}x (target >= 20x); "
        f"calls per image {calls_per_image:.2f} (target <= 4)"
    )


if __name__ == "__main__":
    main()
