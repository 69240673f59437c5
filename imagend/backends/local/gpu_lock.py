"""One generation at a time per device, across threads and across processes on one host.

Two layers: a `threading.Lock` per device for this process (flock is per open file, so
two threads holding two descriptors would otherwise both ask the kernel), then an
exclusive `fcntl.flock` on `<lock dir>/imagend-<device>.lock`, which every imagend
daemon on the host opens. The kernel drops a flock when its process dies, even on
kill -9, so a crashed daemon never leaves the GPU locked.

While it waits, the holder-to-be calls `waiting()` (the batch's heartbeat): its leases
stay fresh while another daemon works, and a cancel or a stop still interrupts the wait.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from imagend.errors import ConfigError
from imagend.logs import get_logger

log = get_logger()

POLL_SECONDS = 0.05
_process_locks: dict[str, threading.Lock] = {}
_registry_lock = threading.Lock()


def _process_lock(device: str) -> threading.Lock:
    with _registry_lock:
        return _process_locks.setdefault(device, threading.Lock())


def lock_path(lock_dir: Path, device: str) -> Path:
    """`cuda` and `cuda:0` are the same GPU; each name maps to one file."""
    name = "cuda:0" if device == "cuda" else device
    return lock_dir / f"imagend-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.lock"


class DeviceLock:
    def __init__(self, lock_dir: Path, device: str) -> None:
        self.device = device
        self.path = lock_path(lock_dir, device)
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
            # Opened (and closed) once here so a bad directory fails the start, not every row.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666))
        except OSError as exc:
            raise ConfigError(f"IMAGEND_LOCK_DIR={lock_dir}: cannot create the device lock file there: {exc}") from exc
        self.thread_lock = _process_lock(str(self.path))

    @contextmanager
    def hold(self, waiting: Callable[[], None] = lambda: None) -> Iterator[float]:
        """Hold the device; yields how many seconds the wait took."""
        started = time.monotonic()
        while not self.thread_lock.acquire(timeout=POLL_SECONDS):
            waiting()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        waiting()
                        time.sleep(POLL_SECONDS)
                waited = time.monotonic() - started
                if waited > 1.0:
                    log.info("device_lock_waited", device=self.device, seconds=round(waited, 2))
                try:
                    yield waited
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        finally:
            self.thread_lock.release()

    def is_held_elsewhere(self) -> bool:
        """True when another process (or thread) holds the device now; for tests and status."""
        if self.thread_lock.locked():
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)
