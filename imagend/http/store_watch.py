"""Does the store take writes? What /readyz asks when the loops do not say (server.py's
`store_problem`): the store's own start check (a probe object written and deleted), run in a thread
of its own at most every CHECK_EVERY_SECONDS while /readyz is asked, so a probe never waits for a
store that does not answer; until the first check ends, the start's check (cli.py) stands."""

from __future__ import annotations

import threading
import time

from imagend.errors import first_line
from imagend.storage import Store

CHECK_EVERY_SECONDS = 10.0


class StoreWatch:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._problem: str | None = None
        self._checked_at = time.monotonic()  # cli.py checked it just before the listener started
        self._checking = False

    def problem(self) -> str | None:
        """None while the store took the last probe write, else why not; starts a new check when due."""
        with self._lock:
            if not self._checking and time.monotonic() - self._checked_at >= CHECK_EVERY_SECONDS:
                self._checking = True
                threading.Thread(target=self._check, name="imagend-http-store-check", daemon=True).start()
            return self._problem

    def _check(self) -> None:
        problem: str | None = None
        try:
            self.store.check()
        except Exception as exc:  # ConfigError naming the setting, or whatever the client raised
            problem = f"the store does not take writes: {first_line(exc)}" if str(exc) else (
                f"the store does not take writes ({self.store.target.describe()}): {type(exc).__name__}")
        with self._lock:
            self._problem = problem
            self._checked_at = time.monotonic()
            self._checking = False
