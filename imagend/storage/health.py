"""Is the store taking writes? Set by every write of a finished image and by the spool's retries:
while it is down the daemon claims nothing (an image made now could only be spooled), /readyz says
so (a load balancer or a fleet stops sending work here), and the spool retries every few seconds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from imagend.logs import get_logger

log = get_logger()


class StoreHealth:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._error: str | None = None
        self._down_since: float | None = None

    @property
    def ok(self) -> bool:
        return self._error is None

    @property
    def error(self) -> str | None:
        return self._error

    def problem(self) -> str | None:
        """None while the store takes writes, else why not (what /readyz says)."""
        return self._error

    def down_seconds(self) -> float:
        since = self._down_since
        return 0.0 if since is None else self.clock() - since

    def failed(self, error: str) -> None:
        with self._lock:
            if self._error is None:
                self._down_since = self.clock()
                log.warning("store_down", error=error, action="finished images are spooled into their rows; "
                            "claiming paused until the store takes writes again")
            self._error = error

    def succeeded(self) -> None:
        with self._lock:
            if self._error is not None:
                log.info("store_back", down_seconds=round(self.down_seconds(), 1))
            self._error = None
            self._down_since = None
