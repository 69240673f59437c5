"""Drain with images stored in S3 (moto's server on 127.0.0.1, IMAGEND_STORE_BASE64=false) against the
drain with base64 in the row only, side by side on the same Postgres, in ABBA order (neither side always
meets the other's checkpoint and autovacuum): rows per second and the ratio.

    .venv/bin/python bench/storage_drain.py [--rows 20000] [--rounds 2] [--database-url URL]

moto is a test server written in Python, on the same 2 cores as Postgres and the daemon: against a real
S3 or MinIO the store's latency, not its CPU, is the cost, and PUT_THREADS requests run at once.
"""

from __future__ import annotations

import statistics

from queue_drain import drain_imagend

from _common import parser, postgres
from support.s3 import MotoServer


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=2, help="ABBA rounds (each runs both sides twice)")
    args = p.parse_args()
    results: dict[str, list[float]] = {"base64": [], "s3": []}
    with postgres(args.database_url) as server_url, MotoServer() as s3:
        for round_number in range(args.rounds):
            for side in ("base64", "s3", "s3", "base64"):
                env = {}
                if side == "s3":
                    bucket = s3.create_bucket(f"imagend-drain-{round_number}-{len(results['s3'])}")
                    env = s3.env(bucket, "drain", IMAGEND_STORE_BASE64="false")
                rate = drain_imagend(server_url, args.rows, **env)
                results[side].append(rate)
                print(f"round {round_number + 1} {side:>6}: {rate:,.0f} rows/s", flush=True)
    base64_rate, s3_rate = statistics.median(results["base64"]), statistics.median(results["s3"])
    print(f"median base64 only {base64_rate:,.0f} rows/s; S3 (moto, base64 off) {s3_rate:,.0f} rows/s "
          f"-> S3/base64 {s3_rate / base64_rate:.2f}x")


if __name__ == "__main__":
    main()
