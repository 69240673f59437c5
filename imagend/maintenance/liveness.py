"""The daemon's heartbeat: a row in `imagend_daemons`, renewed about ten times per
IMAGEND_DEAD_AFTER by a thread of its own (so a long GPU call or a busy pass never
delays it). A daemon whose heartbeat is older than IMAGEND_DEAD_AFTER is dead: others
rescue its rows at once. The same statement tells when a rescue falls due (a lease ran
out, or a silent peer holding rows will count as dead), so an idle daemon rescues at that
moment instead of at its next interval run."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from imagend.db.repository import Repository
from imagend.db.rows import DaemonInfo
from imagend.errors import DatabaseUnavailable
from imagend.logs import get_logger

log = get_logger()

DEATH_SLACK_SECONDS = 0.05  # a peer counts as dead strictly after dead_after: look just past it


class Liveness:
    def __init__(
        self,
        repo: Repository,
        me: DaemonInfo,
        on_rescue_due: Callable[[float], None],
        *,
        wake_channel: Callable[[], str | None] = lambda: None,
        idle: Callable[[], bool] = lambda: False,
        on_work_waiting: Callable[[], None] = lambda: None,
    ) -> None:
        """`wake_channel`: where this host hears wake-ups (said in imagend_daemons); `idle`: whether the
        daemon waits for work; `on_work_waiting`: an idle daemon's wake-up was lost, claim now."""
        self.repo = repo
        self.me = me
        self.on_rescue_due = on_rescue_due
        self.wake_channel = wake_channel
        self.idle = idle
        self.on_work_waiting = on_work_waiting
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self.fleet_default: str | None = None  # the fleet's default backend as last heard

    def start(self) -> None:
        """Beat once now (so this daemon is known before it claims anything), then keep beating."""
        self.run_once()
        self._thread = threading.Thread(target=self._run, name="imagend-liveness", daemon=True)
        self._thread.start()

    def stop(self, remove: bool = True) -> None:
        """Stop beating; `remove` the daemon's row (a clean stop, its rows already released)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if remove:  # if the database is away, its heartbeat goes stale instead; it holds no rows
            with contextlib.suppress(DatabaseUnavailable):
                self.repo.remove_daemon()

    def _run(self) -> None:
        while not self._stop.wait(self.repo.heartbeat_seconds):
            self.run_once()

    def run_once(self) -> None:
        """One heartbeat; asks for a rescue pass when one falls due (on_rescue_due)."""
        try:
            beat = self.repo.heartbeat(self.me, wake_channel=self.wake_channel(), idle=self.idle(),
                                       served=self.me.backends)
        except DatabaseUnavailable as exc:
            if not self._failing:
                log.warning("heartbeat_failed", error=str(exc), dead_after_seconds=self.repo.dead_after_seconds)
            self._failing = True
            return
        except Exception:  # never let the thread die silently: others would think this daemon dead
            log.exception("heartbeat_failed")
            return
        if self._failing:
            log.info("heartbeat_resumed")
            self._failing = False
        if beat.rescue_in is not None:
            self.on_rescue_due(beat.rescue_in + DEATH_SLACK_SECONDS)
        if beat.fleet_default != self.fleet_default:
            self.fleet_default = beat.fleet_default
            mine = self.repo.default_backend
            if beat.fleet_default is not None and beat.fleet_default != mine:
                log.warning("default_backend_disagrees", fleet_default=beat.fleet_default, this_daemon=mine,
                            consequence="rows with no backend are the fleet's default's: this daemon claims none",
                            fix=f"start it with IMAGEND_BACKEND={beat.fleet_default}, or stop the daemons "
                            "whose default it should not be")
        if beat.webhooks_due:
            self.repo.on_webhook_events()
        if beat.work_waiting:
            log.debug("wake_up_made_up", reason="a row waited past a wake-up's time while this daemon was idle")
            self.on_work_waiting()
