"""Queue drain: rows per second, imagend (one `imagend -cron` process, placeholder backend,
no delay) against pgqueuer 1.6 draining no-op jobs with its asyncpg and psycopg drivers,
on the same Postgres in the same run.

    .venv/bin/python bench/queue_drain.py [--rows 20000] [--database-url URL]

pgqueuer runs as its own benchmark tool does: 5 queue managers in one process, dequeue
batch size 10 (`--pgq-workers`, `--pgq-batch` to change).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import psutil
import psycopg
from psycopg.conninfo import conninfo_to_dict

from imagend.db.connect import apply_schema

from _common import daemon, fresh_database, parser, postgres, wait_until


def drain_imagend(server_url: str, rows: int, src: str | None = None, cpu: dict[str, float] | None = None,
                  **env: str) -> float:
    """Rows/s of one `imagend -cron`; `src`: an earlier checkout's imagend (it applies its own schema).
    `cpu`: filled with the CPU milliseconds per 1,000 rows the drain took in the daemon (`daemon`) and in
    every process of the Postgres server (`postgres`): unlike rows/s, a figure that other work on the
    machine barely moves."""
    db = fresh_database(server_url, "bench_drain_imagend")
    if src is None:
        apply_schema(db)
    with daemon(db, src=src, **env) as proc, psycopg.connect(db, autocommit=True) as conn:
        time.sleep(2.0)  # the daemon is up, listening, idle
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert backend is not None
        server_root = psutil.Process(int(backend[0])).parent()
        daemon_process = psutil.Process(proc.pid)
        cpu_before = (_cpu_seconds([daemon_process]), _cpu_seconds([server_root, *server_root.children()]))
        conn.execute("INSERT INTO images (prompt) SELECT 'bench prompt ' || g FROM generate_series(1, %s) g", [rows])

        # Asked on the partial indexes of waiting and generating rows: a count(*) of the whole table
        # ten times a second would take CPU from the drain it measures (and more so on a wider table).
        def drained() -> bool:
            row = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM images WHERE status = 'ReadyToGenerate') "
                               "AND NOT EXISTS (SELECT 1 FROM images WHERE status = 'Generate')").fetchone()
            return row is not None and bool(row[0])

        wait_until(drained, timeout=600, interval=0.1)
        done = conn.execute("SELECT count(*) FROM images WHERE status = 'ReadyToPublish'").fetchone()
        assert done is not None and done[0] == rows, f"{done} of {rows} rows done"
        if cpu is not None:
            cpu["daemon"] = (_cpu_seconds([daemon_process]) - cpu_before[0]) * 1e6 / rows
            cpu["postgres"] = (_cpu_seconds([server_root, *server_root.children()]) - cpu_before[1]) * 1e6 / rows
        row = conn.execute("SELECT extract(epoch FROM max(finished_at) - min(created_at)) FROM images").fetchone()
        assert row is not None
        return rows / float(row[0])


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    """User and system CPU time of these processes (a process gone meanwhile counts nothing)."""
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


async def _drain_pgqueuer(db: str, driver: str, rows: int, workers: int, batch: int) -> float:
    import asyncpg
    from pgqueuer import AsyncpgDriver, PsycopgDriver, Queries, QueueManager
    from pgqueuer.domain.types import QueueExecutionMode

    async def connect() -> object:
        if driver == "asyncpg":
            params = conninfo_to_dict(db)
            return AsyncpgDriver(
                await asyncpg.connect(
                    host=params.get("host"),
                    port=params.get("port"),
                    user=params.get("user"),
                    password=params.get("password"),
                    database=params.get("dbname"),
                )
            )
        return PsycopgDriver(await psycopg.AsyncConnection.connect(db, autocommit=True))

    setup = Queries(await connect())  # type: ignore[arg-type]
    await setup.install()
    for start in range(0, rows, 1000):
        n = min(1000, rows - start)
        await setup.enqueue(["noop"] * n, [None] * n, [0] * n)

    done = 0
    managers = []
    for _ in range(workers):
        qm = QueueManager(Queries(await connect()))  # type: ignore[arg-type]

        @qm.entrypoint("noop")
        async def noop(_job: object) -> None:
            nonlocal done
            done += 1

        managers.append(qm)
    started = time.perf_counter()
    await asyncio.gather(*(qm.run(batch_size=batch, mode=QueueExecutionMode.drain) for qm in managers))
    elapsed = time.perf_counter() - started
    assert done == rows, f"pgqueuer ran {done} of {rows} jobs"
    return rows / elapsed


def drain_pgqueuer(server_url: str, driver: str, rows: int, workers: int, batch: int) -> float:
    db = fresh_database(server_url, f"bench_drain_pgq_{driver}")
    return asyncio.run(_drain_pgqueuer(db, driver, rows, workers, batch))


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--pgq-workers", type=int, default=5)
    p.add_argument("--pgq-batch", type=int, default=10)
    args = p.parse_args()
    with postgres(args.database_url) as server:
        figures = {
            "pgqueuer 1.6 (asyncpg)": drain_pgqueuer(server, "asyncpg", args.rows, args.pgq_workers, args.pgq_batch),
            "pgqueuer 1.6 (psycopg)": drain_pgqueuer(server, "psycopg", args.rows, args.pgq_workers, args.pgq_batch),
            "imagend -cron (placeholder)": drain_imagend(server, args.rows),
        }
    print(f"queue drain, {args.rows} rows, {'embedded Postgres' if not args.database_url else 'the given server'}")
    for name, rate in figures.items():
        print(f"  {name:<30} {rate:>10,.0f} rows/s")
    best_pgq = max(figures["pgqueuer 1.6 (asyncpg)"], figures["pgqueuer 1.6 (psycopg)"])
    ratio = figures["imagend -cron (placeholder)"] / best_pgq
    print(f"  imagend / pgqueuer's faster driver = {ratio:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
