"""Prometheus metrics (prometheus_client), every name prefixed `imagend_`; docs/operations.md
lists them. Three names are fixed, dashboards outside the project use them:
`imagend_queue_rows{status,backend}`, `imagend_images_total{backend,outcome}` and
`imagend_generation_seconds{backend}`.

The loops count in `Metrics` (a batch at a time: one lock per batch, never per row, as the drain
is sensitive to per-row work); the queue's gauges are read from the database by `QueueCollector`
at most once per QUEUE_CACHE_SECONDS whatever the number of scrapers, and say when they are stale.
"""

from __future__ import annotations

import bisect
import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from imagend import __version__
from imagend.db.operations import OperationsRepository
from imagend.db.owners import OwnersRepository
from imagend.db.rows import QueueSnapshot
from imagend.errors import BadInput, Cancelled, DatabaseUnavailable, PermanentError, RetryableError, UnexpectedError
from imagend.logs import get_logger

log = get_logger()

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series beside every counter: nobody graphs them

QUEUE_CACHE_SECONDS = 2.0
# A failure's kind: a small fixed set, never the raw error text (unbounded label values).
ERROR_KINDS = ("bad_input", "cancelled", "refused", "transient", "unexpected", "crashed", "lease_expired",
               "other")
GENERATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


def error_kind(error: BaseException | str) -> str:
    """The label of a failure: what an operator acts on differently (a str: a kind already)."""
    if isinstance(error, str):
        return error if error in ERROR_KINDS else "other"
    for kind, cls in (("cancelled", Cancelled), ("bad_input", BadInput), ("refused", PermanentError),
                      ("unexpected", UnexpectedError), ("transient", RetryableError)):
        if isinstance(error, cls):
            return kind
    return "other"


class BatchHistogram(Collector):
    """A histogram with one label, observed a batch of values at a time."""

    def __init__(self, name: str, documentation: str, label: str, buckets: Sequence[float]) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.bounds = [float(b) for b in buckets]
        self._lock = threading.Lock()
        self._series: dict[str, tuple[list[int], list[float]]] = {}  # label -> (bucket counts, [sum])

    def observe(self, label_value: str, values: Iterable[float | None]) -> None:
        found = [v for v in values if v is not None]
        if not found:
            return
        slots = [bisect.bisect_left(self.bounds, v) for v in found]
        total = sum(found)
        with self._lock:
            counts, sums = self._series.setdefault(label_value, ([0] * (len(self.bounds) + 1), [0.0]))
            for slot in slots:
                counts[slot] += 1
            sums[0] += total

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        with self._lock:
            series = {key: (list(counts), sums[0]) for key, (counts, sums) in self._series.items()}
        for key, (counts, total) in sorted(series.items()):
            cumulative, buckets = 0, []
            for bound, count in zip([*self.bounds, float("inf")], counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            family.add_metric([key], buckets, sum_value=total)
        yield family

    def count(self, label_value: str) -> int:
        with self._lock:
            return sum(self._series.get(label_value, ([0], [0.0]))[0])


class Metrics:
    """What the daemon's loops count. One per daemon (tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.images = Counter("imagend_images", "Rows ended or handed back, by outcome", ["backend", "outcome"],
                              registry=r)
        self.failures = Counter("imagend_failures", "Failed attempts (retried or final), by kind of error",
                                ["backend", "kind"], registry=r)
        self.claimed = Counter("imagend_claimed_rows", "Rows claimed", ["backend"], registry=r)
        self.retention = Counter("imagend_retention", "What retention removed (docs/storage.md), by what: "
                                 "failed_deleted, done_deleted, base64_dropped, objects_deleted, objects_left",
                                 ["what"], registry=r)
        self.lost = Counter("imagend_lost_results", "Results dropped: the row was no longer ours", ["backend"],
                            registry=r)
        self.in_flight = Gauge("imagend_rows_in_flight", "Rows this daemon generates or submits right now",
                               ["backend"], registry=r)
        self.model_load_seconds = Gauge("imagend_model_load_seconds", "Seconds the backend took to load",
                                        ["backend"], registry=r)
        self.last_pass = Gauge("imagend_last_pass_timestamp_seconds", "When each loop last ended a pass",
                               ["job"], registry=r)
        self.generation_seconds = BatchHistogram("imagend_generation_seconds", "Seconds to generate one image",
                                                 "backend", GENERATION_BUCKETS)
        self.queue_wait_seconds = BatchHistogram("imagend_queue_wait_seconds", "Seconds from INSERT to claim",
                                                 "backend", WAIT_BUCKETS)
        r.register(self.generation_seconds)
        r.register(self.queue_wait_seconds)
        Info("imagend_build", "The running imagend", registry=r).info(
            {"version": __version__, "python": platform.python_version()})

    # -- what the loops call, a batch at a time ---------------------------------------

    def count(self, backend: str, outcome: str, rows: int = 1) -> None:
        if rows:
            self.images.labels(backend, outcome).inc(rows)

    def failed(self, backend: str, error: BaseException | str, *, final: bool) -> None:
        self.count(backend, "failed" if final else "retried")
        self.failures.labels(backend, error_kind(error)).inc()

    def claimed_rows(self, backend: str, waited_seconds: Iterable[float | None]) -> None:
        waits = list(waited_seconds)
        if waits:
            self.claimed.labels(backend).inc(len(waits))
            self.queue_wait_seconds.observe(backend, waits)

    def pass_ended(self, job: str) -> None:
        self.last_pass.labels(job).set(time.time())


class QueueCollector(Collector):
    """The queue's gauges, read from the database once per QUEUE_CACHE_SECONDS (ten scrapers cost
    one read). While Postgres cannot be read, the last values are served and
    `imagend_queue_stale` says 1."""

    def __init__(self, ops: OperationsRepository, default_backend: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ops = ops
        self.default_backend = default_backend
        self.clock = clock
        self._lock = threading.Lock()
        self._snapshot: QueueSnapshot | None = None
        self._read_at = -float("inf")
        self._read_wall = 0.0
        self._stale = True
        # Per plan, never per owner (10,000 owners must not make 10,000 series): read with the queue.
        self.owners = OwnersRepository(ops.pool)
        self._plans: list[dict[str, Any]] = []

    def snapshot(self) -> tuple[QueueSnapshot | None, bool]:
        """The cached snapshot (read again when older than QUEUE_CACHE_SECONDS) and whether it is stale."""
        with self._lock:
            if self.clock() - self._read_at >= QUEUE_CACHE_SECONDS:
                self._read_at = self.clock()
                try:
                    self._snapshot = self.ops.snapshot()
                    self._plans = self.owners.plans()
                    self._read_wall, self._stale = time.time(), False
                except DatabaseUnavailable as exc:
                    if not self._stale:
                        log.warning("metrics_queue_stale", reason=str(exc))
                    self._stale = True
            return self._snapshot, self._stale

    def collect(self) -> Iterator[Metric]:
        snap, stale = self.snapshot()
        yield GaugeMetricFamily("imagend_queue_stale", "1 when the queue gauges could not be read from the "
                                "database and show the last values read", value=1 if stale else 0)
        yield GaugeMetricFamily("imagend_queue_read_timestamp_seconds", "When the queue gauges were read",
                                value=self._read_wall)
        if snap is None:
            return
        rows = GaugeMetricFamily("imagend_queue_rows", "Rows in the images table by status and backend",
                                 labels=["status", "backend"])
        for status, backend, count in snap.counts:
            rows.add_metric([status, backend or self.default_backend], count)
        yield rows
        oldest = GaugeMetricFamily("imagend_queue_oldest_waiting_seconds", "Age of the oldest waiting row",
                                   labels=["backend"])
        for backend, seconds in sorted(snap.oldest_waiting.items(), key=lambda item: item[0] or ""):
            oldest.add_metric([backend or self.default_backend], seconds)
        yield oldest
        paused = GaugeMetricFamily("imagend_backend_paused", "1 while a backend is paused ('*': all)",
                                   labels=["backend"])
        for pause in snap.paused:
            paused.add_metric([pause.backend], 1)
        yield paused
        yield GaugeMetricFamily("imagend_daemons", "Daemons with a recent heartbeat", value=len(snap.daemons))
        for name, what in (("running", "Rows in Generate"), ("waiting", "Rows waiting"), ("owners", "Owners")):
            family = GaugeMetricFamily(f"imagend_plan_{name}", f"{what} per plan (docs/owners.md)", labels=["plan"])
            for plan in self._plans:
                family.add_metric([plan["name"]], plan[name])
            yield family


class GpuCollector(Collector):
    """GPU memory per device (torch, when it is loaded and sees CUDA) and utilisation (NVML, when
    nvidia-ml-py is importable)."""

    def collect(self) -> Iterator[Metric]:
        import sys

        torch = sys.modules.get("torch")  # only if a backend loaded it: a scrape must not import torch
        if torch is not None and torch.cuda.is_available():
            allocated = GaugeMetricFamily("imagend_gpu_memory_allocated_bytes", "torch.cuda.memory_allocated",
                                          labels=["device"])
            reserved = GaugeMetricFamily("imagend_gpu_memory_reserved_bytes", "torch.cuda.memory_reserved",
                                         labels=["device"])
            for index in range(torch.cuda.device_count()):
                allocated.add_metric([f"cuda:{index}"], torch.cuda.memory_allocated(index))
                reserved.add_metric([f"cuda:{index}"], torch.cuda.memory_reserved(index))
            yield allocated
            yield reserved
        try:
            import pynvml
        except ImportError:
            return
        try:
            pynvml.nvmlInit()
            utilisation = GaugeMetricFamily("imagend_gpu_utilization_ratio", "NVML GPU utilisation, 0 to 1",
                                            labels=["device"])
            for index in range(pynvml.nvmlDeviceGetCount()):
                rates = pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(index))
                utilisation.add_metric([f"cuda:{index}"], rates.gpu / 100)
            yield utilisation
        except pynvml.NVMLError:
            return
