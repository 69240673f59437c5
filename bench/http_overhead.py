"""The HTTP listener must never slow the loops: queue drain and pickup latency with IMAGEND_HTTP on
and a scraper GETting /metrics every second, beside the same runs with it off, interleaved in
ABBA order on one Postgres.

    .venv/bin/python bench/http_overhead.py [--rounds 4] [--rows 20000] [--inserts 200]
"""

from __future__ import annotations

import contextlib
import statistics
import threading
from collections.abc import Iterator

import httpx
from pickup_latency import measure
from queue_drain import drain_imagend

from _common import parser, percentile, postgres

PORT = 9471


@contextlib.contextmanager
def scraper(url: str, every_seconds: float = 1.0) -> Iterator[list[float]]:
    """GET `url` every second in a thread (connection errors while the daemon starts are skipped);
    yields the list of scrape times in ms, filled as it goes."""
    stop, times = threading.Event(), []

    def run() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.wait(every_seconds):
                try:
                    response = client.get(url)
                except httpx.TransportError:
                    continue
                response.raise_for_status()
                times.append(response.elapsed.total_seconds() * 1000)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield times
    finally:
        stop.set()
        thread.join()


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--inserts", type=int, default=200)
    args = p.parse_args()
    drains: dict[str, list[float]] = {"off": [], "on": []}
    pickups: dict[str, list[float]] = {"off": [], "on": []}
    scrapes: list[float] = []
    with postgres(args.database_url) as server:
        for n in range(args.rounds):
            for name in ("off", "on") if n % 2 == 0 else ("on", "off"):
                env = {"IMAGEND_HTTP": f"127.0.0.1:{PORT}"} if name == "on" else {}
                with scraper(f"http://127.0.0.1:{PORT}/metrics") if name == "on" else contextlib.nullcontext([]) as t:
                    drains[name].append(drain_imagend(server, args.rows, **env))
                    pickups[name] += measure(server, args.inserts, 50.0, **env)
                scrapes += t
    print(f"HTTP listener off/on, {args.rounds} interleaved rounds, {args.rows} rows drained, "
          f"{args.inserts} pickups per round; with it on, /metrics scraped every second")
    for name in ("off", "on"):
        rates = ", ".join(f"{r:,.0f}" for r in drains[name])
        print(f"  {name:<4} drain median {statistics.median(drains[name]):>8,.0f} rows/s ({rates})   "
              f"pickup p50 {percentile(pickups[name], 50):.2f} ms p99 {percentile(pickups[name], 99):.2f} ms")
    print(f"  scrapes: {len(scrapes)}, p50 {percentile(scrapes, 50):.1f} ms, max {max(scrapes):.1f} ms")
    ratio = statistics.median(drains["on"]) / statistics.median(drains["off"])
    p50 = percentile(pickups["on"], 50) / percentile(pickups["off"], 50)
    print(f"  on / off: drain {ratio:.2f}x (target >= 0.95), pickup p50 {p50:.2f}x (target <= 1.05)")


if __name__ == "__main__":
    main()
