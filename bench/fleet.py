"""A fleet on one Postgres (issue 20): daemons spread over simulated hosts (each host a UTS namespace
with its own hostname, `unshare --uts`, as root), the placeholder backend standing in for a GPU.

    sudo .venv/bin/python bench/fleet.py [--sizes 1:1,3:1,10:3,60:15,120:30] [--rate 1] [--seconds 30]

Runs its own PostgreSQL 15 (Debian's binaries, as the postgres user, on a free port) with
pg_stat_statements (track = all: the triggers' statements count) and max_connections 1000. Per fleet
size (daemons:hosts), printed side by side:

- idle background: statements per second per daemon, with nothing to do;
- a producer inserting single rows at --rate rows/s for --seconds, each row taking --delay s:
  claim statements per row, all statements per row and database time per row (the idle background
  subtracted), pickup p50/p95 (INSERT to the row's change to Generate, as another session sees it),
  LISTEN connections, connections at idle and at peak;
- the producer's single-row insert rate while every daemon is busy on a long row, against the same
  producer with no daemon (--busy);
- a burst of --burst rows at --burst-delay s each: drain rows/s against the ideal (daemons / delay), and
  a row's claim to its end (p50, mean): the delay and what a daemon does around it. --seconds 0: the
  burst only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from imagend.db.connect import apply_schema

from _common import percentile

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PICKUP_TRIGGER = """
CREATE OR REPLACE FUNCTION bench_note_pickup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('bench_pickup', NEW.id || ' ' || extract(epoch FROM clock_timestamp())); RETURN NULL; END $$;
CREATE OR REPLACE TRIGGER bench_pickup AFTER UPDATE OF status ON images FOR EACH ROW
    WHEN (NEW.status = 'Generate' AND OLD.status = 'ReadyToGenerate') EXECUTE FUNCTION bench_note_pickup();
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def own_postgres() -> Iterator[str]:
    """A PostgreSQL 15 cluster of its own: pg_stat_statements, 1,000 connections."""
    folder = Path(tempfile.mkdtemp(prefix="imagend-fleet-pg-"))
    shutil.chown(folder, "postgres")
    port = free_port()
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_pg, str(PG_BIN / "initdb"), "-D", str(folder / "data"), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    options = (f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=1000 "
               "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all "
               "-c shared_buffers=256MB -c fsync=off -c synchronous_commit=off")
    subprocess.run([*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(folder / "data"), "-o", options, "-w", "-l",
                    str(folder / "log"), "start"], check=True, capture_output=True)
    try:
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE fleet")
        yield f"postgresql://postgres@127.0.0.1:{port}/fleet"
    finally:
        subprocess.run([*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


class Fleet:
    def __init__(self, db: str, daemons: int, hosts: int, delay: float, folder: Path, nice: int = 0) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "DATABASE_URL": db,
               "IMAGEND_BACKEND": "placeholder", "IMAGEND_PLACEHOLDER_DELAY": str(delay), "IMAGEND_MAX_BATCH": "1",
               "IMAGEND_GENERATOR_INTERVAL": "300", "IMAGEND_PROCESSOR_INTERVAL": "600",
               "IMAGEND_RUNTIME_DIR": str(folder / "run"),
               "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
        for n in range(daemons):
            host = f"fleet-host-{n % hosts}"
            self.procs.append(subprocess.Popen(
                ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host,
                 "nice", "-n", str(nice), sys.executable, "-m", "imagend", "-cron", "-env-file", os.devnull],
                env=env, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_until(check, timeout: float, interval: float = 0.2) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


def scalar(conn: psycopg.Connection[tuple[object, ...]], query: str, *params: object) -> float:
    row = conn.execute(query, params).fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0


# The fleet's and its producer's statements, not the benchmark's own (its pickup trigger, its polls).
FLEET_STATEMENTS = ("dbid = (SELECT oid FROM pg_database WHERE datname = 'fleet') AND query NOT LIKE '%%bench%%' "
                    "AND query NOT LIKE '%%pg_stat_statements%%' AND query NOT LIKE 'SELECT count(*) FROM images%%'")


# A daemon's claim as it is sent: the call of imagend_claim_batch, or (a checkout from before it) the statement
# itself. Not 'WITH picked AS%': imagend_wake's statement starts so too, and the claim's text starts with its
# comment (this benchmark counted the wake-ups as claims until 1dada5f).
CLAIMS = ("toplevel AND (query LIKE '%%imagend_claim_batch(%%' OR (query LIKE '%%FOR UPDATE SKIP LOCKED%%' "
          r"AND query ~ 'attempts\s+=\s+i\.attempts \+'))")  # (+ 1: a constant, shown as $n)


def statements(admin: psycopg.Connection[tuple[object, ...]]) -> tuple[float, float, float]:
    """All calls (a trigger's and a function's statements too), claim calls, and execution time (ms) since
    the last reset. The time of top-level statements only: a nested statement's is in its caller's already."""
    return (scalar(admin, f"SELECT sum(calls) FROM pg_stat_statements WHERE {FLEET_STATEMENTS}"),
            scalar(admin, f"SELECT sum(calls) FROM pg_stat_statements WHERE {FLEET_STATEMENTS} AND {CLAIMS}"),
            scalar(admin, f"SELECT sum(total_exec_time) FROM pg_stat_statements WHERE {FLEET_STATEMENTS} "
                          "AND toplevel"))


def sessions(conn: psycopg.Connection[tuple[object, ...]], name: str = "imagend%") -> int:
    return int(scalar(conn, "SELECT count(*) FROM pg_stat_activity WHERE datname = 'fleet' "
                            "AND application_name LIKE %s", name))


def insert_rate(db: str, seconds: float) -> float:
    with psycopg.connect(db, autocommit=True) as conn:
        started, n = time.monotonic(), 0
        while time.monotonic() - started < seconds:
            conn.execute("INSERT INTO images (prompt) VALUES ('rate') RETURNING id")
            n += 1
        rate = n / (time.monotonic() - started)
        conn.execute("DELETE FROM images WHERE prompt = 'rate'")
    return rate


def measure(db: str, daemons: int, hosts: int, args: argparse.Namespace, *, trickle: bool = True) -> dict[str, float]:
    """`db`'s server also has a database `postgres`, where the benchmark watches from (admin)."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("TRUNCATE images")
        conn.execute(PICKUP_TRIGGER)
    admin_url = db.rsplit("/", 1)[0] + "/postgres"
    folder = Path(tempfile.mkdtemp(prefix="imagend-fleet-"))
    figures: dict[str, float] = {"daemons": daemons, "hosts": hosts}
    fleet = Fleet(db, daemons, hosts, args.delay, folder)
    peak = 0
    try:
        with psycopg.connect(db, autocommit=True) as conn, psycopg.connect(admin_url, autocommit=True) as admin:
            wait_until(lambda: scalar(conn, "SELECT count(*) FROM imagend_daemons WHERE idle_since IS NOT NULL "
                                            "AND wake_channel IS NOT NULL AND heartbeat_at > now() - interval '5 s'")
                       >= daemons, 120 + daemons)
            time.sleep(3)
            figures["listen_connections"] = sessions(admin, "imagend-listen")
            figures["connections_idle"] = sessions(admin)
            admin.execute("SELECT pg_stat_statements_reset()")
            time.sleep(args.idle_seconds)
            idle_calls, _, idle_ms = statements(admin)
            figures["idle_statements_per_s_per_daemon"] = idle_calls / args.idle_seconds / daemons
            admin.execute("SELECT pg_stat_statements_reset()")
            if not trickle:
                total = 0
                args = argparse.Namespace(**{**vars(args), "seconds": 0.0})
            pickups: dict[int, float] = {}
            inserted: dict[int, float] = {}

            def listen() -> None:
                with psycopg.connect(db, autocommit=True) as listener:
                    listener.execute("LISTEN bench_pickup")
                    for note in listener.notifies(timeout=args.seconds + 60):
                        image_id, at = note.payload.split()
                        pickups[int(image_id)] = float(at)
                        if len(pickups) >= total:
                            return

            total = int(args.rate * args.seconds)
            if not total:
                return figures | burst(conn, daemons, args) if args.burst else figures
            thread = threading.Thread(target=listen, daemon=True)
            thread.start()
            time.sleep(0.5)
            started = time.monotonic()
            for n in range(total):
                row = conn.execute("INSERT INTO images (prompt) VALUES ('fleet') "
                                   "RETURNING id, extract(epoch FROM clock_timestamp())").fetchone()
                assert row is not None
                inserted[int(row[0])] = float(row[1])
                peak = max(peak, sessions(admin))
                time.sleep(max(0.0, started + (n + 1) / args.rate - time.monotonic()))
            wait_until(lambda: scalar(conn, "SELECT count(*) FROM images WHERE status = 'ReadyToPublish'") >= total,
                       60 + args.delay * total)
            elapsed = time.monotonic() - started
            thread.join(10)
            calls, claims, ms = statements(admin)
            if args.top:
                for row in admin.execute(f"SELECT calls, round(total_exec_time::numeric, 1), left(regexp_replace(query, "  # noqa: E501
                                         f"'\\s+', ' ', 'g'), 90) FROM pg_stat_statements WHERE {FLEET_STATEMENTS} "
                                         "ORDER BY total_exec_time DESC LIMIT %s", [args.top]).fetchall():
                    print("  top:", *row)
            background = idle_calls / args.idle_seconds * elapsed
            figures["claims_per_row"] = claims / total
            figures["statements_per_row"] = max(0.0, calls - background) / total
            figures["db_ms_per_row"] = max(0.0, ms - idle_ms / args.idle_seconds * elapsed) / total
            latencies = [(pickups[i] - inserted[i]) * 1000 for i in inserted if i in pickups]
            figures["pickup_p50_ms"] = percentile(latencies, 50) if latencies else float("nan")
            figures["pickup_p95_ms"] = percentile(latencies, 95) if latencies else float("nan")
            figures["connections_peak"] = max(peak, sessions(admin))
            time.sleep(10)
            figures["connections_10s_after"] = sessions(admin)
    finally:
        fleet.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return figures


def burst(conn: psycopg.Connection[tuple[object, ...]], daemons: int, args: argparse.Namespace) -> dict[str, float]:
    conn.execute("TRUNCATE images")
    started = time.monotonic()
    conn.execute("INSERT INTO images (prompt) SELECT 'burst' FROM generate_series(1, %s)", [args.burst])
    wait_until(lambda: scalar(conn, "SELECT count(*) FROM images WHERE status = 'ReadyToPublish'") >= args.burst,
               60 + args.burst * args.delay / max(1, daemons) * 3, interval=0.5)
    elapsed = time.monotonic() - started
    rate = args.burst / elapsed
    # Where the ideal went: a row's claim to its end, the placeholder's --burst-delay and what a daemon does
    # around it (its finishing write overlaps the next row's claim).
    spans = conn.execute("""
        SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)),
               avg(extract(epoch FROM finished_at - started_at)) FROM images WHERE status = 'ReadyToPublish'
        """).fetchone()
    assert spans is not None
    time.sleep(10)  # what the fleet still holds 10 s after the drain (a burst opened up to DB_MAX_OPEN_CONNS each)
    return {"burst_rows_per_s": rate, "burst_ideal_rows_per_s": daemons / args.delay,
            "burst_connections_10s_after": sessions(conn),
            "burst_claim_to_end_p50_ms": float(spans[0]) * 1000,  # type: ignore[arg-type]
            "burst_claim_to_end_mean_ms": float(spans[1]) * 1000}  # type: ignore[arg-type]


def busy_insert_rate(db: str, daemons: int, hosts: int, args: argparse.Namespace) -> tuple[float, float]:
    """The producer's single-row insert rate with no daemon, then with every daemon busy on a long row."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("TRUNCATE images")
    alone = statistics.median(insert_rate(db, 5) for _ in range(3))
    folder = Path(tempfile.mkdtemp(prefix="imagend-fleet-"))
    fleet = Fleet(db, daemons, hosts, 600.0, folder, nice=args.busy_nice)
    try:
        with psycopg.connect(db, autocommit=True) as conn:
            wait_until(lambda: scalar(conn, "SELECT count(*) FROM imagend_daemons WHERE idle_since IS NOT NULL "
                                            "AND heartbeat_at > now() - interval '5 s'") >= daemons, 120 + daemons)
            conn.execute("INSERT INTO images (prompt) SELECT 'long' FROM generate_series(1, %s)", [daemons])
            wait_until(lambda: scalar(conn, "SELECT count(*) FROM images WHERE status = 'Generate'") >= daemons, 60)
        busy = statistics.median(insert_rate(db, 5) for _ in range(3))
    finally:
        fleet.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return alone, busy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="1:1,3:1,10:3,60:15,120:30", help="daemons:hosts, comma-separated")
    p.add_argument("--rate", type=float, default=1.0, help="rows per second the producer inserts")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--delay", type=float, default=2.0, help="seconds per image (the placeholder's delay)")
    p.add_argument("--idle-seconds", type=float, default=10.0)
    p.add_argument("--burst", type=int, default=0, help="rows of the burst (0: none)")
    p.add_argument("--burst-delay", type=float, default=0.5)
    p.add_argument("--top", type=int, default=0, help="print the N statements that took longest")
    p.add_argument("--busy-nice", type=int, default=0,
                   help="the busy fleet's niceness (19: its daemons' own CPU does not compete with the producer, "
                        "as on a real fleet, whose daemons run on other machines; the database's cost remains)")
    p.add_argument("--busy", default="", help="daemons:hosts for the busy-fleet insert rate (e.g. 100:25)")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the simulated hosts are UTS namespaces (unshare --uts)")
    with own_postgres() as db:
        apply_schema(db)
        for url in (db, db.rsplit("/", 1)[0] + "/postgres"):  # the view where the benchmark watches from too
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        rows = []
        for size in filter(None, args.sizes.split(",")):  # --sizes '': the busy fleet only
            daemons, hosts = (int(x) for x in size.split(":"))
            figures = measure(db, daemons, hosts, argparse.Namespace(**{**vars(args), "burst": 0}))
            if args.burst:
                burst_args = argparse.Namespace(**{**vars(args), "delay": args.burst_delay})
                figures.update(measure(db, daemons, hosts, burst_args, trickle=False))
            rows.append(figures)
            print(", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()),
                  flush=True)
        print(f"\nfleet, a producer at {args.rate:g} rows/s for {args.seconds:g} s, {args.delay:g} s per image")
        head = ("daemons/hosts", "claims/row", "stmts/row", "db ms/row", "idle stmt/s/d", "pickup p50/p95 ms",
                "LISTEN", "conns idle/peak/+10s", "burst rows/s (ideal; conns 10 s after)")
        print(" | ".join(head))
        nan = float("nan")
        for f in rows:
            f = {"claims_per_row": nan, "statements_per_row": nan, "db_ms_per_row": nan, "pickup_p50_ms": nan,
                 "pickup_p95_ms": nan, "connections_peak": nan, "connections_10s_after": nan} | f  # --seconds 0
            burst = "-" if "burst_rows_per_s" not in f else (
                     f"{f.get('burst_rows_per_s', nan):.1f} ({f.get('burst_ideal_rows_per_s', nan):.0f}; "
                     f"{f.get('burst_connections_10s_after', nan):.0f} conns 10 s after; a row's claim to its end "
                     f"p50 {f.get('burst_claim_to_end_p50_ms', nan):.0f} ms, mean "
                     f"{f.get('burst_claim_to_end_mean_ms', nan):.0f} ms)")
            print(" | ".join([
                f"{f['daemons']:.0f}/{f['hosts']:.0f}", f"{f['claims_per_row']:.2f}", f"{f['statements_per_row']:.1f}",
                f"{f['db_ms_per_row']:.2f}", f"{f['idle_statements_per_s_per_daemon']:.2f}",
                f"{f['pickup_p50_ms']:.1f}/{f['pickup_p95_ms']:.1f}", f"{f['listen_connections']:.0f}",
                f"{f['connections_idle']:.0f}/{f['connections_peak']:.0f}/{f['connections_10s_after']:.0f}", burst]))
        if len(rows) > 1 and args.seconds:
            # Against the 3-daemon fleet (issue 20's reference; the first size without one): one daemon cannot
            # keep up with a row a second at 2 s a row, so its line measures a queue, not an idle fleet.
            small = next((f for f in rows if f["daemons"] == 3), rows[0])
            ratios = ", ".join(f"{f['daemons']:.0f}/{f['hosts']:.0f} {f['statements_per_row']:.1f} = "
                               f"{f['statements_per_row'] / max(small['statements_per_row'], 1e-9):.2f}x"
                               for f in rows if f is not small)
            print(f"statements per row against {small['daemons']:.0f}/{small['hosts']:.0f}'s "
                  f"{small['statements_per_row']:.1f}: {ratios} (target: 60/15 <= 1.5x and <= 30)")
        if args.busy:
            daemons, hosts = (int(x) for x in args.busy.split(":"))
            alone, busy = busy_insert_rate(db, daemons, hosts, args)
            print(f"producer single-row inserts: {alone:,.0f}/s alone, {busy:,.0f}/s with {daemons} daemons on "
                  f"{hosts} hosts busy (nice {args.busy_nice}): {busy / alone:.2f}x (target >= 0.7x)")


if __name__ == "__main__":
    main()
