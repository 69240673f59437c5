"""One runner for the daemon's passes.

The generator and processor passes run on the pacer's one thread, one at a time, so
"the generator and the processor of one daemon never run at the same time" (the Go
service's promise) holds by construction. Everything else only *requests* a run: the
APScheduler interval jobs, LISTEN wake-ups, the liveness thread (a dead peer's rows to
rescue), and the passes themselves (the next backoff, lease expiry or poll, read from
the database after each pass). A request for a time already requested earlier is a no-op.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping

GENERATOR, PROCESSOR = "generator", "processor"


class Pacer:
    def __init__(self, passes: Mapping[str, Callable[[], None]], stopping: threading.Event) -> None:
        self.passes = passes
        self.stopping = stopping
        self._due = dict.fromkeys(passes, math.inf)  # time.monotonic() each pass is next due
        self._changed = threading.Condition()

    def request(self, job: str, delay_seconds: float = 0.0) -> None:
        """Run `job` in `delay_seconds` (now if <= 0), unless it is due sooner already."""
        at = time.monotonic() + max(delay_seconds, 0.0)
        with self._changed:
            if at < self._due[job]:
                self._due[job] = at
                self._changed.notify()

    def overdue_seconds(self) -> float:
        """How long the most overdue pass has waited to start (0: none is overdue)."""
        return max(0.0, time.monotonic() - min(self._due.values()))

    def is_due(self, job: str) -> bool:
        return self._due[job] <= time.monotonic()

    def interrupt(self) -> None:
        """Wake the runner so it sees `stopping`."""
        with self._changed:
            self._changed.notify()

    def run(self) -> None:
        """The runner: until `stopping`, run whichever pass is due first, then wait for the next."""
        while True:
            with self._changed:
                while True:
                    if self.stopping.is_set():
                        return
                    job, at = min(self._due.items(), key=lambda item: item[1])
                    wait = at - time.monotonic()
                    if wait <= 0:
                        break
                    self._changed.wait(None if math.isinf(wait) else wait)
                self._due[job] = math.inf
            self.passes[job]()
