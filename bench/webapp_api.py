"""Issue 23's figures: webhook delivery latency after a row ends (p50/p95) and throughput with 1,000
rows ending in a burst; 500 concurrent live streams (SSE) on one daemon (its memory and CPU, and how
fast their `end` events arrive); a 10 MB photo uploaded end to end.

    .venv/bin/python bench/webapp_api.py [--part webhooks|sse|upload|all] [--burst 1000] [--streams 500]

The placeholder backend (no GPU), one daemon with IMAGEND_HTTP on a loopback port, a local webhook
receiver (tests/support/webhook_receiver.py: a real http.server checking every signature).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from PIL import Image

from _common import daemon, fresh_database, parser, percentile, postgres
from support.http_daemon import free_port
from support.webhook_receiver import Receiver

TOKEN = "bench-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def env(port: int, **extra: str) -> dict[str, str]:
    return {"IMAGEND_HTTP": f"127.0.0.1:{port}", "IMAGEND_HTTP_TOKEN": TOKEN, "IMAGEND_WEBHOOK_SECRET": SECRET,
            "IMAGEND_WEBHOOK_ALLOW_HOSTS": "127.0.0.1", "IMAGEND_MAX_BATCH": "64", **extra}


def wait_answering(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError("the listener did not get ready")


def finished_at(db_url: str, ids: list[int]) -> dict[int, float]:
    with psycopg.connect(db_url) as conn:
        return {int(i): float(t) for i, t in conn.execute(
            "SELECT id, extract(epoch FROM finished_at) FROM images WHERE id = ANY(%s)", [ids]).fetchall()}


def webhooks(server: str, burst: int) -> None:
    db_url = fresh_database(server, "imagend_bench_webhooks")
    port = free_port()
    received_at: dict[str, float] = {}
    with Receiver(SECRET) as receiver:
        original = receiver.received

        class Stamped(list[Any]):
            def append(self, item: Any) -> None:
                received_at[item.headers["webhook-id"]] = time.time()
                super().append(item)

        receiver.received = Stamped(original)
        with daemon(db_url, **env(port)):
            url = f"http://127.0.0.1:{port}"
            wait_answering(url)
            with httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
                # Latency: one row at a time, each ending while nothing else happens.
                single = []
                for n in range(40):
                    image_id = client.post("/v1/images", json={"prompt": f"latency {n}",
                                                              "callback_url": receiver.url}).json()["id"]
                    got = receiver.wait_for(n + 1, timeout=30)[n]
                    assert got.signed and got.event["data"]["id"] == image_id
                    single.append(received_at[got.event_id] - finished_at(db_url, [image_id])[image_id])
                # Throughput: `burst` rows inserted in one statement, ending as fast as the placeholder goes.
                seen = len(receiver.received)
                with psycopg.connect(db_url, autocommit=True) as conn:
                    conn.execute("INSERT INTO images (prompt, callback_url) SELECT 'burst ' || g, %s "
                                 "FROM generate_series(1, %s) g", [receiver.url, burst])
                got_all = receiver.wait_for(seen + burst, timeout=300)[seen:]
                ids = [int(g.event["data"]["id"]) for g in got_all]
                ends = finished_at(db_url, ids)
                lat = [received_at[g.event_id] - ends[int(g.event["data"]["id"])] for g in got_all]
                first_end, last_arrival = min(ends.values()), max(received_at[g.event_id] for g in got_all)
                last_end = max(ends.values())
                assert all(g.signed for g in got_all) and len({g.event_id for g in got_all}) == burst
    ms = lambda v: f"{v * 1000:.0f} ms"  # noqa: E731
    print(json.dumps({
        "webhook_latency_single": {"rows": len(single), "p50": ms(percentile(single, 50)),
                                   "p95": ms(percentile(single, 95))},
        "webhook_burst": {"rows": burst, "rows_ended_over": f"{last_end - first_end:.3f} s",
                          "all_delivered_after_first_end": f"{last_arrival - first_end:.2f} s",
                          "delivered_per_second": round(burst / (last_arrival - first_end)),
                          "latency_p50": ms(percentile(lat, 50)), "latency_p95": ms(percentile(lat, 95))},
    }, indent=2))


def proc_stats(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and resident bytes of `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


async def open_streams(url: str, ids: list[int], ready: asyncio.Event, ended: list[float]) -> None:
    limits = httpx.Limits(max_connections=len(ids) + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=None, limits=limits) as client:
        opened = 0

        async def one(image_id: int) -> None:
            nonlocal opened
            async with client.stream("GET", f"/v1/images/{image_id}/events") as answer:
                assert answer.status_code == 200, answer.status_code
                opened += 1
                if opened == len(ids):
                    ready.set()
                async for line in answer.aiter_lines():
                    if line == "event: end":
                        ended.append(time.time())
                        return

        await asyncio.gather(*(one(i) for i in ids))


def sse(server: str, streams: int) -> None:
    db_url = fresh_database(server, "imagend_bench_sse")
    port = free_port()
    with daemon(db_url, **env(port, IMAGEND_SSE_MAX_STREAMS=str(streams + 10),
                              IMAGEND_SSE_MAX_PER_CLIENT=str(streams + 10))) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_answering(url)
        with psycopg.connect(db_url, autocommit=True) as conn:
            ids = [int(r[0]) for r in conn.execute(
                "INSERT INTO images (prompt, run_after) SELECT 'watched ' || g, 'infinity' "
                "FROM generate_series(1, %s) g RETURNING id", [streams]).fetchall()]
        cpu0, rss0 = proc_stats(proc.pid)
        ready, ended = asyncio.Event(), []

        async def run() -> dict[str, Any]:
            task = asyncio.create_task(open_streams(url, ids, ready, ended))
            started = time.monotonic()
            await asyncio.wait_for(ready.wait(), 120)
            opened_in = time.monotonic() - started
            cpu1, rss1 = proc_stats(proc.pid)
            await asyncio.sleep(10)  # idle streams: what they cost while nothing changes
            cpu2, rss2 = proc_stats(proc.pid)
            released = time.time()
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("UPDATE images SET run_after = now() WHERE id = ANY(%s)", [ids])
            await asyncio.wait_for(task, 120)
            cpu3, rss3 = proc_stats(proc.pid)
            lat = [t - released for t in ended]
            return {"streams": streams, "opened_in": f"{opened_in:.2f} s",
                    "rss_before_mb": round(rss0 / 2**20), "rss_just_opened_mb": round(rss1 / 2**20),
                    "rss_with_streams_mb": round(rss2 / 2**20),
                    "rss_per_stream_kb": round((rss2 - rss0) / streams / 1024, 1),
                    "cpu_opening_s": round(cpu1 - cpu0, 2), "cpu_idle_10s_with_streams": round(cpu2 - cpu1, 2),
                    "all_end_events_after_release": f"{max(lat):.2f} s", "end_p50": f"{percentile(lat, 50):.2f} s",
                    "cpu_generating_and_ending_s": round(cpu3 - cpu2, 2), "rss_after_mb": round(rss3 / 2**20)}

        print(json.dumps({"sse": asyncio.run(run())}, indent=2))


def photo(target_bytes: int) -> bytes:
    """A JPEG of about `target_bytes` (noise over a gradient: a photo's worst case for compression)."""
    side = 2000
    while True:
        base = Image.radial_gradient("L").resize((side, side)).convert("RGB")
        noise = Image.effect_noise((side, side), 60).convert("RGB")
        buffer = io.BytesIO()
        Image.blend(base, noise, 0.5).save(buffer, format="JPEG", quality=97)
        if buffer.tell() >= target_bytes:
            return buffer.getvalue()
        side = int(side * (target_bytes / buffer.tell()) ** 0.5) + 64


def upload(server: str, tmp: Path) -> None:
    data = photo(10 * 1000 * 1000)
    results = {}
    for store in ("database", "folder"):
        db_url = fresh_database(server, f"imagend_bench_upload_{store}")
        port = free_port()
        extra = {"IMAGEND_STORAGE_URL": f"file://{tmp}/store"} if store == "folder" else {}
        with daemon(db_url, **env(port, **extra)):
            url = f"http://127.0.0.1:{port}"
            wait_answering(url)
            times, fetch = [], []
            with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
                for _ in range(5):
                    started = time.perf_counter()
                    answer = client.post("/v1/uploads", content=data, headers={"Content-Type": "image/jpeg"})
                    times.append(time.perf_counter() - started)
                    assert answer.status_code == 201, answer.text
                    started = time.perf_counter()
                    back = client.get(answer.json()["image_url"])
                    fetch.append(time.perf_counter() - started)
                    assert back.content == data
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
        results[store] = {"bytes": len(data), "pixels": f"{size[0]}x{size[1]}",
                          "upload_median": f"{sorted(times)[2] * 1000:.0f} ms",
                          "upload_max": f"{max(times) * 1000:.0f} ms",
                          "fetch_back_median": f"{sorted(fetch)[2] * 1000:.0f} ms"}
    print(json.dumps({"upload_10mb": results}, indent=2))


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--part", choices=("webhooks", "sse", "upload", "all"), default="all")
    p.add_argument("--burst", type=int, default=1000)
    p.add_argument("--streams", type=int, default=500)
    args = p.parse_args()
    with postgres(args.database_url) as server, tempfile.TemporaryDirectory(prefix="imagend-bench-") as tmp:
        if args.part in ("webhooks", "all"):
            webhooks(server, args.burst)
        if args.part in ("sse", "all"):
            sse(server, args.streams)
        if args.part in ("upload", "all"):
            upload(server, Path(tmp))


if __name__ == "__main__":
    main()
