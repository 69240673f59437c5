"""The OpenAI and AUTOMATIC1111 routes (issue 22): what they add to a request, and a burst of clients.

1. Added latency (one daemon, placeholder backend, no delay): the same image asked, one request at a
   time, as (a) a direct INSERT and a wait for the row's imagend_done notification, then its base64
   read, as a producer does in SQL; (b) POST /v1/images/generations; (c) POST /sdapi/v1/txt2img
   (both over one keep-alive connection, as a client does). One of each per round, in a rotating
   order, --requests rounds, each request --gap-ms apart (back to back, a request can land while the
   daemon is not yet idle again, and the wake-up then waits for its heartbeat, whichever path it came
   by); p50 and p95, the routes' p50 over the direct path's and the median of the rounds' differences
   (target: <= 5 ms added at p50); and, for scale, the listener's HTTP round trip alone (GET sd-models).
2. A burst: --clients concurrent `openai` SDK requests (n=1 each, the SDK's own retries on) spread over
   two daemons on one database (placeholder, 50 ms an image): every request answered, no image queued
   twice (one row per request), the SDK's retries counted, each daemon's memory before, after one burst
   and after a second.

    .venv/bin/python bench/compatible_apis.py [--requests 500] [--clients 200] [--burst-only] [--src DIR]
    .venv/bin/python bench/compatible_apis.py --baseline DIR [--requests 500] [--gap-ms 20] [--sdk-headers]
                                              [--raw-client]
    (part 1 only: this checkout or --src against DIR, A/B; the routes over a raw socket with --raw-client)
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import psycopg

from _common import daemon, fresh_database, parser, percentile, postgres

TOKEN = "bench-token-0123456789abcdef"
PORTS = (9481, 9482)


@contextlib.contextmanager
def listening_daemon(db_url: str, port: int, src: str | None = None, **env: str) -> Iterator[int]:
    """A daemon with its listener on `port`, once /readyz answers 200; yields its pid. `src`: the imagend
    package found in that folder instead of this checkout's (a patched copy)."""
    with daemon(db_url, src=src, IMAGEND_HTTP=f"127.0.0.1:{port}", IMAGEND_HTTP_TOKEN=TOKEN, **env) as proc:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("the listener did not get ready")
            time.sleep(0.05)
        yield proc.pid


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def direct(db_url: str) -> Callable[[int], float]:
    conn = psycopg.connect(db_url, autocommit=True)
    conn.execute("LISTEN imagend_done")

    def one(index: int) -> float:
        started = time.perf_counter()
        row = conn.execute("INSERT INTO images (prompt, width, height) VALUES (%s, 64, 64) RETURNING id",
                           [f"direct {index}"]).fetchone()
        assert row is not None
        for note in conn.notifies(timeout=10):
            if json.loads(note.payload)["id"] == row[0]:
                break
        image = conn.execute("SELECT base64 FROM images WHERE id = %s", [row[0]]).fetchone()
        assert image is not None and image[0]
        return (time.perf_counter() - started) * 1000

    return one


def route(port: int, path: str, body: Callable[[int], dict[str, object]],
          headers: dict[str, str]) -> Callable[[int], float]:
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=headers)

    def one(index: int) -> float:
        started = time.perf_counter()
        answer = client.post(path, json=body(index))
        if answer.status_code != 200:
            raise RuntimeError(f"{path} answered {answer.status_code}: {answer.text[:300]}")
        return (time.perf_counter() - started) * 1000

    return one


def raw_route(port: int, path: str, body: Callable[[int], dict[str, object]],
              headers: dict[str, str]) -> Callable[[int], float]:
    """`route` without an HTTP library: the request written on a keep-alive socket, the answer read to
    its Content-Length. httpx (the openai SDK's) costs about 1.3 ms of Python per request here, which
    is the client's, not the listener's."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())

    def one(index: int) -> float:
        data = json.dumps(body(index)).encode()
        started = time.perf_counter()
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{head}"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        status_line, _, rest = answer.partition(b"\r\n")
        fields, _, content = rest.partition(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in fields.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(content) < length:
            content += sock.recv(65536)
        if b" 200 " not in status_line:
            raise RuntimeError(f"{path} answered {status_line!r}: {content[:300]!r}")
        return (time.perf_counter() - started) * 1000

    return one


FLOOR = "GET /sdapi/v1/sd-models"  # the listener's HTTP round trip alone: no database, no image


def http_floor(port: int, headers: dict[str, str]) -> Callable[[int], float]:
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=headers)

    def one(_index: int) -> float:
        started = time.perf_counter()
        client.get("/sdapi/v1/sd-models").raise_for_status()
        return (time.perf_counter() - started) * 1000

    return one


def compare(server: str, requests: int, gap_ms: float, baseline: str, src: str | None = None,
            sdk_headers: dict[str, str] | None = None, raw: bool = False) -> None:
    """Part 1 for two builds at once: this checkout (or `src`) and `baseline` (an earlier commit's
    package), each a daemon on a database of its own on the same server, every round one request of each
    path of both, in a rotating order (the load's drift is shared); each build's routes against its own
    direct path."""
    builds = {"this": src, "baseline": baseline}
    sdk_headers = sdk_headers or {}
    client = raw_route if raw else route
    with contextlib.ExitStack() as stack:
        paths: dict[str, Callable[[int], float]] = {}
        for number, (label, build_src) in enumerate(builds.items()):
            db_url = fresh_database(server, f"imagend_bench_compat_{label}")
            stack.enter_context(listening_daemon(db_url, PORTS[number], build_src))
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            basic = "Basic " + base64.b64encode(f"bench:{TOKEN}".encode()).decode()
            paths[f"{label}: direct"] = direct(db_url)
            paths[f"{label}: openai"] = client(
                PORTS[number], "/v1/images/generations",
                lambda i: {"prompt": f"openai {i}", "size": "64x64", "response_format": "b64_json"},
                {**bearer, **sdk_headers})
            paths[f"{label}: a1111"] = client(
                PORTS[number], "/sdapi/v1/txt2img", lambda i: {"prompt": f"a1111 {i}", "width": 64, "height": 64},
                {"Authorization": basic})
        for one in paths.values():
            for index in range(10):
                one(-1 - index)
        times: dict[str, list[float]] = {name: [] for name in paths}
        order = list(paths)
        for index in range(requests):
            for name in order[index % len(order):] + order[: index % len(order)]:
                times[name].append(paths[name](index))
                time.sleep(gap_ms / 1000)
    print(f"1. Added latency, this build against the baseline {baseline}, one request at a time ({gap_ms:g} ms "
          f"apart), {requests} rounds (placeholder backend, no delay), OpenAI requests with {sdk_headers or 'no'} "
          f"headers of the SDK, {'a raw socket' if raw else 'httpx'} as the client, ms:")
    for label in builds:
        base = times[f"{label}: direct"]
        for kind in ("direct", "openai", "a1111"):
            values = times[f"{label}: {kind}"]
            paired = [value - direct_value for value, direct_value in zip(values, base, strict=True)]
            added = "" if kind == "direct" else (
                f"   added: p50 {percentile(values, 50) - percentile(base, 50):+.2f}, p95 "
                f"{percentile(values, 95) - percentile(base, 95):+.2f}, median of the rounds' differences "
                f"{statistics.median(paired):+.2f}")
            print(f"   {label + ': ' + kind:<20} p50 {percentile(values, 50):6.2f}  p95 {percentile(values, 95):6.2f}  "
                  f"mean {statistics.fmean(values):6.2f}{added}")


def latency(server: str, requests: int, gap_ms: float, src: str | None = None) -> None:
    db_url = fresh_database(server, "imagend_bench_compat_latency")
    with listening_daemon(db_url, PORTS[0], src):
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        basic = "Basic " + base64.b64encode(f"bench:{TOKEN}".encode()).decode()
        paths = {
            "direct INSERT + LISTEN": direct(db_url),
            "POST /v1/images/generations": route(
                PORTS[0], "/v1/images/generations",
                lambda i: {"prompt": f"openai {i}", "size": "64x64", "response_format": "b64_json"}, bearer),
            "POST /sdapi/v1/txt2img": route(
                PORTS[0], "/sdapi/v1/txt2img", lambda i: {"prompt": f"a1111 {i}", "width": 64, "height": 64},
                {"Authorization": basic}),
            FLOOR: http_floor(PORTS[0], {"Authorization": basic}),
        }
        for one in paths.values():  # warm: the listener's LISTEN connection, the pools, the imports
            for index in range(10):
                one(-1 - index)
        times: dict[str, list[float]] = {name: [] for name in paths}
        order = list(paths)
        for index in range(requests):  # one of each per round, in a rotating order: the load's drift is shared
            for name in order[index % len(order):] + order[: index % len(order)]:
                times[name].append(paths[name](index))
                time.sleep(gap_ms / 1000)
    base = times["direct INSERT + LISTEN"]
    print(f"1. Added latency, one request at a time ({gap_ms:g} ms apart: the daemon idle again), {requests} each "
          "(placeholder backend, no delay), ms:")
    for name, values in times.items():
        paired = [value - direct_value for value, direct_value in zip(values, base, strict=True)]
        added = "" if name.startswith("direct") or name == FLOOR else (
            f"   added: p50 {percentile(values, 50) - percentile(base, 50):+.2f}, "
            f"median of the rounds' differences {statistics.median(paired):+.2f}")
        print(f"   {name:<30} p50 {percentile(values, 50):6.2f}  p95 {percentile(values, 95):6.2f}  "
              f"mean {statistics.fmean(values):6.2f}{added}")


class Retries(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "Retrying request" in record.getMessage():
            self.count += 1


def burst(server: str, clients: int, src: str | None) -> None:
    db_url = fresh_database(server, "imagend_bench_compat_burst")
    retries = Retries()
    logger = logging.getLogger("openai")
    logger.addHandler(retries)
    logger.setLevel(logging.INFO)
    env = {"IMAGEND_PLACEHOLDER_DELAY": "0.05"}
    with listening_daemon(db_url, PORTS[0], src, **env) as first, \
            listening_daemon(db_url, PORTS[1], src, **env) as second:
        pids = (first, second)
        memory = [[rss_mib(pid) for pid in pids]]
        sdks = [openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=TOKEN, timeout=120,
                              http_client=openai.DefaultHttpxClient(limits=httpx.Limits(max_connections=clients)))
                for port in PORTS]
        for round_number in (1, 2):
            outcomes: list[object] = [None] * clients

            def ask(index: int, round_number: int = round_number, outcomes: list[object] = outcomes) -> None:
                try:
                    answer = sdks[index % 2].images.generate(prompt=f"burst {round_number} {index}", n=1,
                                                             model="gpt-image-1")
                    outcomes[index] = len(answer.data or [])
                except openai.OpenAIError as exc:
                    outcomes[index] = exc

            before_retries = retries.count
            started = time.monotonic()
            threads = [threading.Thread(target=ask, args=(index,)) for index in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            seconds = time.monotonic() - started
            memory.append([rss_mib(pid) for pid in pids])
            answered = sum(outcome == 1 for outcome in outcomes)
            errors = [outcome for outcome in outcomes if not isinstance(outcome, int)]
            with psycopg.connect(db_url) as conn:
                rows, prompts = conn.execute(
                    "SELECT count(*), count(DISTINCT prompt) FROM images WHERE prompt LIKE %s",
                    [f"burst {round_number} %"]).fetchone() or (0, 0)
            print(f"2. Burst {round_number}: {clients} concurrent openai SDK requests over 2 daemons "
                  f"(placeholder, 50 ms an image): {answered} answered with their image in {seconds:.1f} s, "
                  f"{len(errors)} errors{(': ' + repr(errors[0])[:200]) if errors else ''}; rows {rows} for "
                  f"{prompts} distinct requests (duplicates: {rows - prompts}); SDK retries "
                  f"{retries.count - before_retries} (503 busy past 64 requests in flight, or 429)")
        for sdk in sdks:
            sdk.close()
        print("   daemons' RSS, MiB (before, after burst 1, after burst 2): "
              + "; ".join(f"daemon {n + 1}: " + " -> ".join(f"{m[n]:.0f}" for m in memory) for n in range(2)))


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--gap-ms", type=float, default=50.0, help="between two requests of part 1")
    p.add_argument("--src", help="run the imagend package in this folder (a patched copy, an earlier commit)")
    p.add_argument("--burst-only", action="store_true")
    p.add_argument("--baseline", help="part 1 only, against the imagend package in this folder too (before/after)")
    p.add_argument("--sdk-headers", action="store_true",
                   help="with --baseline: the OpenAI requests carry the SDK's x-stainless-retry-count: 0 (a first "
                        "try, noted under its key for the retries)")
    p.add_argument("--raw-client", action="store_true",
                   help="with --baseline: the routes asked over a raw socket, not httpx (the listener's share alone)")
    args = p.parse_args()
    with postgres(args.database_url) as server:
        if args.baseline:
            compare(server, args.requests, args.gap_ms, args.baseline, args.src,
                    {"x-stainless-retry-count": "0"} if args.sdk_headers else None, args.raw_client)
            return
        if not args.burst_only:
            latency(server, args.requests, args.gap_ms, args.src)
        burst(server, args.clients, args.src)


if __name__ == "__main__":
    main()
