"""Out of memory (fault injected into the UNet's forward pass) and the per-image timeout, on the
miniature model in process. Time is injected: no test waits for a real backoff or timeout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from imagend.errors import Cancelled, RetryableError

from support.local import TORCH_NUMPY_COPY_WARNING, RecordingHeartbeat, request

pytestmark = TORCH_NUMPY_COPY_WARNING


class FakeClock:
    """monotonic() that advances `step` seconds per reading; sleep() just moves it on."""

    def __init__(self, step: float = 0.0) -> None:
        self.now = 1000.0
        self.step = step
        self.slept: list[float] = []

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def inject_oom(backend: Any, times: int) -> list[int]:
    """The UNet's forward raises CUDA OOM on its first `times` calls; returns the call log."""
    calls: list[int] = []
    original = backend.pipe.unet.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(calls))
        if len(calls) <= times:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (injected)")
        return original(*args, **kwargs)

    backend.pipe.unet.forward = forward
    return calls


def test_oom_once_frees_waits_falls_back_and_succeeds(make_backend: Callable[..., Any]) -> None:
    backend = make_backend(IMAGEND_OOM_RETRY_SECONDS="10", IMAGEND_MAX_BATCH="2")
    clock = FakeClock()
    backend.clock, backend.sleep = clock, clock.sleep
    calls = inject_oom(backend, times=1)
    heartbeat = RecordingHeartbeat()
    images = backend.generate([backend.validate(request(1, seed=1)), backend.validate(request(2, seed=2))], heartbeat)
    assert [image.seed for image in images] == [1, 2]
    assert sum(clock.slept) == pytest.approx(10.0)  # IMAGEND_OOM_RETRY_SECONDS, in heartbeat-sized slices
    assert heartbeat.progress.count(None) >= 2  # leases kept (and cancels seen) while waiting
    assert backend.oom_fallback == 1 and backend.pipe.vae.use_tiling and backend.pipe.vae.use_slicing
    assert len(calls) == 1 + 2 * 3  # the failed call, then one call per image (3 steps each)
    assert not backend.lock.is_held_elsewhere()


def test_oom_every_time_gives_up_with_a_retryable_error(make_backend: Callable[..., Any]) -> None:
    backend = make_backend(IMAGEND_OOM_RETRIES="2", IMAGEND_OOM_RETRY_SECONDS="1")
    clock = FakeClock()
    backend.clock, backend.sleep = clock, clock.sleep
    calls = inject_oom(backend, times=1000)
    with pytest.raises(RetryableError, match=r"^out of GPU memory after 2 retries: CUDA out of memory"):
        backend.generate([backend.validate(request())], RecordingHeartbeat())
    assert len(calls) == 3
    assert not backend.lock.is_held_elsewhere()


def test_a_cancel_during_the_oom_wait_ends_the_wait(make_backend: Callable[..., Any]) -> None:
    backend = make_backend(IMAGEND_OOM_RETRY_SECONDS="600")
    clock = FakeClock()
    backend.clock, backend.sleep = clock, clock.sleep
    inject_oom(backend, times=1)
    with pytest.raises(Cancelled):
        backend.generate([backend.validate(request())], RecordingHeartbeat(raise_at=3, error=Cancelled()))
    assert sum(clock.slept) < 600


def test_timeout_aborts_at_the_next_step_and_is_retryable(make_backend: Callable[..., Any]) -> None:
    backend = make_backend(IMAGEND_IMAGE_TIMEOUT="10")
    backend.clock = FakeClock(step=4.0)  # each reading is 4 s later: past 10 s within a few steps
    heartbeat = RecordingHeartbeat()
    with pytest.raises(RetryableError, match=r"^image timed out after 10 s per image \(IMAGEND_IMAGE_TIMEOUT\)$"):
        backend.generate([backend.validate(request(steps=50))], heartbeat)
    assert 0 < len(heartbeat.progress) < 50
    assert not backend.lock.is_held_elsewhere()
    backend.clock = FakeClock()
    assert backend.generate([backend.validate(request(seed=4))], RecordingHeartbeat())[0].seed == 4


def test_the_timeout_scales_with_the_batch(make_backend: Callable[..., Any]) -> None:
    backend = make_backend(IMAGEND_IMAGE_TIMEOUT="10", IMAGEND_MAX_BATCH="4")
    backend.clock = FakeClock(step=4.0)
    rows = [backend.validate(request(i, seed=i, steps=3)) for i in range(4)]  # 40 s allowed, ~16 s used
    assert len(backend.generate(rows, RecordingHeartbeat())) == 4
