"""The daemon: the passes on one pacer, the timers and wake-ups that request them, the
liveness heartbeat, and a clean stop on SIGTERM.

- The generator and processor passes run on the pacer's one thread (pacer.py). APScheduler
  interval jobs (the Go service's -cron promise), LISTEN wake-ups (listener.py), the
  liveness thread (liveness.py: a dead peer's rows to rescue) and the passes' own next
  wake-ups, read from the database after each pass, only request runs.
- A pass that fails (database unavailable, or an unexpected error) is requested again
  after a growing wait (retry.py), never left to the interval run.
- First SIGTERM/SIGINT: stop claiming, let in-flight work finish for up to
  IMAGEND_DRAIN_SECONDS, then interrupt it and release what is left (attempt not
  counted). A second signal exits at once; liveness and leases recover the rows.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler

from imagend import __version__
from imagend.backends.base import Backend
from imagend.config.settings import Settings
from imagend.db.repository import Repository
from imagend.db.rows import DaemonInfo
from imagend.errors import DatabaseUnavailable, RowLocked, first_line
from imagend.logs import get_logger, redact
from imagend.maintenance.liveness import Liveness
from imagend.maintenance.spool import SPOOL_RETRY_SECONDS
from imagend.maintenance.unserved import REPORT_EVERY_SECONDS, UnservedReport
from imagend.operations.health import LoopHealth, stuck_after
from imagend.operations.metrics import Metrics
from imagend.operations.systemd_notify import Notifier
from imagend.queue.generator import Generator
from imagend.queue.listener import Listener
from imagend.queue.pacer import GENERATOR, PROCESSOR, Pacer
from imagend.queue.pass_counts import PassCounts
from imagend.queue.processor import Processor
from imagend.queue.wakeups import HostWakeups, channel_of, host_key, runtime_folder
from imagend.retry import pass_retry_seconds
from imagend.storage import Store
from imagend.storage.health import StoreHealth

log = get_logger()

IO_THREADS = 32  # concurrent remote submissions / polls
# A daemon gone idle looks once more this long after (images_claimable): a row whose producer saw it
# still busy, committed just after its last claim, is picked up now rather than at a heartbeat.
IDLE_RECHECK_SECONDS = 0.05
MIN_RESCHEDULE_SECONDS = 0.25  # floor for a wake-up read from the database: a due row we cannot claim must not spin
INTERRUPT_GRACE_SECONDS = 5.0
LISTEN_FALLBACK_JOB = "listen-fallback-poll"
STATUS_EVERY_SECONDS = 5.0  # systemd STATUS= lines, when there is no watchdog to ping more often


class PassLog:
    """One INFO line per pass that did something, but at most one per job every SUMMARY_SECONDS:
    a busy daemon (a pass per row at 50 rows/s) sums its passes instead of writing 50 lines a second."""

    SUMMARY_SECONDS = 10.0

    def __init__(self) -> None:
        self._pending: dict[str, tuple[PassCounts, int]] = {}
        self._last: dict[str, float] = {}

    def add(self, job: str, counts: PassCounts) -> None:
        if not (counts.claimed or counts.polled or counts.rescued or counts.lost):
            return
        summed, passes = self._pending.get(job, (PassCounts(), 0))
        summed.merge(counts)
        self._pending[job] = (summed, passes + 1)
        if time.monotonic() - self._last.get(job, -math.inf) >= self.SUMMARY_SECONDS:
            self._write(job)

    def flush(self) -> None:
        for job in list(self._pending):
            self._write(job)

    def _write(self, job: str) -> None:
        summed, passes = self._pending.pop(job)
        self._last[job] = time.monotonic()
        log.info(f"{job}_pass", **({"passes": passes} if passes > 1 else {}), **summed.summary())


def daemon_identity() -> str:
    """What `locked_by` shows: which host and process owns a row."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def describe(backends: Mapping[str, Backend]) -> DaemonInfo:
    device, model = next(
        ((d, m) for d, m in (b.device_and_model() for b in backends.values()) if (d, m) != (None, None)), (None, None)
    )
    return DaemonInfo(
        host=socket.gethostname(),
        pid=os.getpid(),
        version=__version__,
        backends=list(backends),
        device=device,
        model=model,
    )


class Daemon:
    def __init__(self, settings: Settings, repo: Repository, backends: Mapping[str, Backend], listen_url: str,
                 *, metrics: Metrics | None = None, health: LoopHealth | None = None,
                 store: Store | None = None, store_health: StoreHealth | None = None) -> None:
        self.settings = settings
        self.repo = repo
        self.backends = backends
        self.listen_url = listen_url
        self.stopping = threading.Event()  # stop claiming
        self.aborting = threading.Event()  # interrupt work in flight
        self.wake = threading.Event()  # a NOTIFY arrived: the generator looks again
        self.stop_requested = threading.Event()
        self.io_pool = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="imagend-io")
        self.pacer = Pacer({GENERATOR: self._generator_pass, PROCESSOR: self._processor_pass}, self.stopping)
        self.metrics = metrics or Metrics()
        self.health = health or LoopHealth(stuck_after(settings))
        self.health.overdue = self.pacer.overdue_seconds
        self.notifier = Notifier()
        self._done_total = 0
        self.scheduler: BackgroundScheduler | None = None
        self._failures = {GENERATOR: 0, PROCESSOR: 0}
        self.pass_log = PassLog()
        self.store_health = store_health or StoreHealth()
        self.generator = Generator(
            repo,
            backends,
            settings,
            stopping=self.stopping,
            aborting=self.aborting,
            wake=self.wake,
            io_pool=self.io_pool,
            processor_due=lambda: self.pacer.is_due(PROCESSOR),
            metrics=self.metrics,
            progressed=self.health.progressed,
            store=store,
            store_health=self.store_health,
        )
        self.processor = Processor(repo, backends, settings, stopping=self.stopping, io_pool=self.io_pool,
                                   metrics=self.metrics, store=store, store_health=self.store_health)
        # Rows waiting for a backend this daemon does not serve (nobody's, perhaps): said at start,
        # then at most every REPORT_EVERY_SECONDS.
        self.unserved_report = UnservedReport(repo, list(backends))
        # Wake-ups: one LISTEN per host, one daemon woken per row (wakeups.py); -cron only.
        self.wakeups: HostWakeups | None = None
        self.liveness = Liveness(
            repo, describe(backends), on_rescue_due=lambda delay: self.pacer.request(PROCESSOR, delay),
            wake_channel=lambda: self.wakeups.channel if self.wakeups is not None and self.wakeups.hearing else None,
            idle=lambda: self.wakeups is not None and self.wakeups.idle,
            on_work_waiting=self.request_generator,
        )

    # -- one-shot (-generator / -processor) ---------------------------------------------

    def run_once(self, generator: bool, processor: bool) -> None:
        """One generator pass and/or one processor pass, with this daemon alive for their length."""
        self.unserved_report.run_once()
        self.liveness.start()
        try:
            if generator:
                self.run_generator_once()
            if processor:
                self.run_processor_once()
        except BaseException:
            self.release_owned_rows()
            raise
        finally:
            self.liveness.stop()

    def run_generator_once(self) -> PassCounts:
        counts = self.generator.run_once()
        log.info("generator_pass", **counts.summary())
        return counts

    def run_processor_once(self) -> PassCounts:
        counts = self.processor.run_once()
        log.info("processor_pass", **counts.summary())
        return counts

    # -- the long-running daemon (-cron) --------------------------------------------------

    def run_forever(self) -> int:
        self._install_signal_handlers()
        self.unserved_report.run_once()
        self.wakeups = self._start_wakeups()  # before the first heartbeat, which says its channel
        self.liveness.start()
        scheduler = BackgroundScheduler(
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None}, timezone=UTC
        )
        # The Go service's interval runs, as requests to the pacer (never blocked, never skipped).
        scheduler.add_job(self._requester(GENERATOR), "interval", id=GENERATOR,
                          seconds=self.settings.generator_interval_seconds)
        scheduler.add_job(self._requester(PROCESSOR), "interval", id=PROCESSOR,
                          seconds=self.settings.processor_interval_seconds)
        # Cheap between reports: check() itself keeps to one report per REPORT_EVERY_SECONDS.
        scheduler.add_job(
            self.unserved_report.run_once, "interval", id="unserved-report", seconds=REPORT_EVERY_SECONDS / 5
        )
        if self.notifier.enabled:
            scheduler.add_job(self._tell_systemd, "interval", id="systemd-notify",
                              seconds=self.notifier.watchdog_interval_seconds or STATUS_EVERY_SECONDS)
        self.scheduler = scheduler
        # The schema is applied and every backend loaded (the model too) before a Daemon exists;
        # READY=1 goes before the first watchdog ping can.
        self.notifier.ready(status=f"serving {', '.join(self.backends)}")
        scheduler.start()
        self.pacer.request(PROCESSOR)  # rescue first: a dead peer's rows wait longest
        self.pacer.request(GENERATOR)
        runner = threading.Thread(target=self.pacer.run, name="imagend-pacer", daemon=True)
        runner.start()
        log.info(
            "daemon_started",
            owner=self.repo.owner,
            backends=list(self.backends),
            generator_interval=self.settings.generator_interval_seconds,
            processor_interval=self.settings.processor_interval_seconds,
            dead_after=self.settings.dead_after_seconds,
        )
        while not self.stop_requested.wait(1.0):
            pass
        return self._drain(scheduler, runner)

    def _tell_systemd(self) -> None:
        """WATCHDOG=1 only while the loops progress (health.py): a hung daemon is restarted by
        systemd (WatchdogSec=); and a STATUS= line saying what it does."""
        if self.health.alive():
            self.notifier.watchdog()
        state = "working" if self.health.busy else "waiting for work"
        self.notifier.status(f"{state}; {self._done_total} images done since start")

    def _start_wakeups(self) -> HostWakeups:
        key = host_key(self.listen_url)

        def listen(on_notify: Callable[[str | None], None], on_deaf: Callable[[], None]) -> None:
            Listener(
                self.listen_url, self.repo, channel=channel_of(key), on_notify=on_notify, on_deaf=on_deaf,
                stopping=self.stopping, check_seconds=self.settings.listen_check_seconds,
            ).start()

        wakeups = HostWakeups(runtime_folder(self.settings.env.values), key, self.repo.owner, listen=listen,
                              on_wake=self.request_generator, on_deaf=self._poll_instead, stopping=self.stopping)
        wakeups.start()
        return wakeups

    def _recheck_idle(self) -> None:
        """Still idle a moment after going idle: did a row slip between its last claim and its wake-up?"""
        if self.wakeups is None or not self.wakeups.idle or self.stopping.is_set():
            return
        with contextlib.suppress(DatabaseUnavailable, RowLocked):
            if self.repo.claimable(list(self.backends)):
                self.request_generator()

    def _requester(self, job: str) -> Callable[[], None]:
        return lambda: self.pacer.request(job)

    def _poll_instead(self) -> None:
        """The LISTEN connection hears nothing: look for new rows every IMAGEND_POLL_SECONDS."""
        if self.scheduler is not None and not self.stopping.is_set():
            self.scheduler.add_job(self.request_generator, "interval", id=LISTEN_FALLBACK_JOB,
                                   seconds=self.settings.poll_seconds, replace_existing=True)

    def _install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: FrameType | None) -> None:
            if self.stop_requested.is_set():
                os._exit(128 + signum)  # second signal: now; liveness and leases recover the rows
            self.stop_requested.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def _drain(self, scheduler: BackgroundScheduler, runner: threading.Thread) -> int:
        log.info("daemon_stopping", drain_seconds=self.settings.drain_seconds)
        self.notifier.stopping()
        self.notifier.status(f"stopping: finishing work in flight (up to {self.settings.drain_seconds:g} s)")
        self.stopping.set()
        scheduler.shutdown(wait=False)
        self.pacer.interrupt()
        runner.join(self.settings.drain_seconds)
        if runner.is_alive():
            log.warning("drain_timeout", action="interrupting work in flight")
            self.aborting.set()
            runner.join(INTERRUPT_GRACE_SECONDS)
        self.pass_log.flush()
        self.release_owned_rows()
        self.liveness.stop(remove=not runner.is_alive())
        if self.wakeups is not None:
            self.wakeups.stop()
        self.io_pool.shutdown(wait=False, cancel_futures=True)
        if runner.is_alive():
            # A backend call that ignores interruption (a hung CUDA kernel) would keep the
            # interpreter from exiting; its rows are released and its late write is guarded.
            log.error("daemon_stopped", outcome="work did not stop; exiting without it")
            os._exit(0)
        log.info("daemon_stopped")
        return 0

    def release_owned_rows(self) -> None:
        """Give back every row this daemon still holds (attempt not counted)."""
        try:
            released = self.repo.release(None)
        except (DatabaseUnavailable, RowLocked) as exc:
            log.warning("rows_not_released", reason=f"{exc}; other daemons will rescue them")
            return
        if released:
            log.info("rows_released", ids=released)

    # -- the passes, run by the pacer -------------------------------------------------

    def _generator_pass(self) -> None:
        if self.wakeups is not None:
            self.wakeups.set_idle(False)
        self._run_pass(GENERATOR, self.generator.run_once)
        if self.wakeups is not None:
            # It claimed until nothing was left (its last claim marked it idle in the database), unless
            # it stopped early for the processor: then it comes back at once.
            idle = not self.pacer.is_due(GENERATOR) and not self.stopping.is_set()
            self.wakeups.set_idle(idle)
            if idle:
                timer = threading.Timer(IDLE_RECHECK_SECONDS, self._recheck_idle)
                timer.daemon = True
                timer.start()

    def _processor_pass(self) -> None:
        self._run_pass(PROCESSOR, self.processor.run_once)

    def _run_pass(self, job: str, body: Callable[[], PassCounts]) -> None:
        self.health.pass_started()
        try:
            counts = body()
            self._schedule_next()
        except DatabaseUnavailable as exc:
            self._retry_later(job, "database_unavailable", error=str(exc))
            return
        except Exception as exc:
            log.exception("pass_failed", job=job)
            self.health.pass_failed(redact(f"{type(exc).__name__}: {first_line(exc)}"))
            self._retry_later(job, "pass_failed")
            return
        finally:
            self.health.pass_ended()
        self.metrics.pass_ended(job)
        self.health.pass_succeeded()
        self._failures[job] = 0
        self._done_total += counts.done
        if counts.more:
            self.pacer.request(job)
        self.pass_log.add(job, counts)

    def _retry_later(self, job: str, event: str, **fields: str) -> None:
        self._failures[job] += 1
        retry_in = pass_retry_seconds(self._failures[job])
        log.warning(event, job=job, retry_in_seconds=retry_in, **fields)
        self.pacer.request(job, retry_in)

    def _schedule_next(self) -> None:
        """Backoffs, scheduled rows, lease expiries and remote polls: one query after each pass; while
        the store refuses writes, a processor pass (the spool) every SPOOL_RETRY_SECONDS."""
        if not self.store_health.ok:
            self.pacer.request(PROCESSOR, SPOOL_RETRY_SECONDS)
        wakeups = self.repo.next_wakeups(list(self.backends))
        if wakeups.generator is not None:
            self.pacer.request(GENERATOR, max(wakeups.generator, MIN_RESCHEDULE_SECONDS))
        if wakeups.processor is not None:
            self.pacer.request(PROCESSOR, max(wakeups.processor, MIN_RESCHEDULE_SECONDS))

    def request_generator(self) -> None:
        """A NOTIFY arrived (or the listener (re)connected, or the fallback poll ticked): claim now."""
        self.wake.set()
        self.pacer.request(GENERATOR)
