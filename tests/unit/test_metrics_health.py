"""Metrics the loops count (a batch at a time) and the health the probes and the watchdog read."""

from __future__ import annotations

import time

from prometheus_client import generate_latest

from imagend.errors import BadInput, Cancelled, PermanentError, RetryableError, unexpected
from imagend.operations.health import LoopHealth
from imagend.operations.metrics import BatchHistogram, Metrics, error_kind


def sample(metrics: Metrics, line_start: str) -> float:
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {line_start} in the exposition")


def test_the_fixed_names_are_exposed_with_their_labels():
    metrics = Metrics()
    metrics.count("local", "done", 3)
    metrics.generation_seconds.observe("local", [0.2, 3.0, 700.0])
    assert sample(metrics, 'imagend_images_total{backend="local",outcome="done"}') == 3
    assert sample(metrics, 'imagend_generation_seconds_bucket{backend="local",le="0.25"}') == 1
    assert sample(metrics, 'imagend_generation_seconds_bucket{backend="local",le="4.0"}') == 2
    assert sample(metrics, 'imagend_generation_seconds_bucket{backend="local",le="+Inf"}') == 3
    assert sample(metrics, 'imagend_generation_seconds_count{backend="local"}') == 3
    assert sample(metrics, 'imagend_generation_seconds_sum{backend="local"}') == 703.2
    assert sample(metrics, "imagend_build_info{") == 1


def test_a_batch_histogram_skips_missing_values_and_keeps_series_apart():
    histogram = BatchHistogram("x_seconds", "x", "backend", [1, 10])
    histogram.observe("a", [0.5, None, 20.0])
    histogram.observe("b", [])
    assert histogram.count("a") == 2
    assert histogram.count("b") == 0


def test_failures_are_counted_by_a_small_fixed_set_of_kinds_never_the_text():
    metrics = Metrics()
    metrics.failed("local", BadInput("width must be between 1 and 8192 pixels, got -5"), final=True)
    metrics.failed("local", RetryableError("CUDA out of memory"), final=False)
    assert sample(metrics, 'imagend_failures_total{backend="local",kind="bad_input"}') == 1
    assert sample(metrics, 'imagend_failures_total{backend="local",kind="transient"}') == 1
    assert sample(metrics, 'imagend_images_total{backend="local",outcome="retried"}') == 1
    assert "8192" not in generate_latest(metrics.registry).decode()


def test_error_kinds():
    assert error_kind(Cancelled()) == "cancelled"
    assert error_kind(PermanentError("400")) == "refused"
    assert error_kind(unexpected("local", KeyError("x"))) == "unexpected"
    assert error_kind(RetryableError("timeout")) == "transient"
    assert error_kind("crashed") == "crashed"
    assert error_kind("some free text") == "other"


def test_health_busy_needs_progress_idle_needs_no_overdue_pass():
    health = LoopHealth(stuck_after_seconds=0.05)
    assert health.alive()
    health.pass_started()
    assert health.alive()
    time.sleep(0.08)
    assert not health.alive()  # busy, no progress
    health.progressed()
    assert health.alive()
    health.pass_ended()
    time.sleep(0.08)
    assert health.alive()  # idle and nothing overdue: waiting for work is healthy
    health.overdue = lambda: 1.0
    assert not health.alive()  # a requested pass never started
