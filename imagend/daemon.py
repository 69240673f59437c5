"""The daemon: APScheduler interval jobs for the generator and the processor, LISTEN
wake-ups, and a clean stop on SIGTERM.

- The generator and processor of one daemon never run at the same time (one lock),
  as the Go service guaranteed; while the generator works through a long queue it
  runs a processor pass in between batches whenever one falls due.
- An INSERT NOTIFYs `imagend_new`; the listener pulls the generator's next run to
  now, so an idle daemon claims a new row within milliseconds. The interval runs
  stay as the safety net.
- Passes report when rows they put back or handed on fall due (backoff, first poll,
  lease expiry), and the daemon schedules the right job for then.
- First SIGTERM/SIGINT: stop claiming, let in-flight work finish for up to
  IMAGEND_DRAIN_SECONDS, then interrupt it and release what is left (attempt not
  counted). A second signal exits at once; leases recover the rows.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from types import FrameType

import psycopg
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.executors.pool import ThreadPoolExecutor as SchedulerThreadPool
from apscheduler.schedulers.background import BackgroundScheduler

from imagend.backends.base import Backend
from imagend.config import Settings
from imagend.errors import DatabaseUnavailable
from imagend.generator import Generator
from imagend.logs import get_logger
from imagend.outcomes import PassCounts
from imagend.processor import Processor
from imagend.repository import Repository

log = get_logger()

GENERATOR, PROCESSOR = "generator", "processor"
IO_THREADS = 32  # concurrent remote submissions / polls
MIN_RESCHEDULE_SECONDS = 0.25  # floor for "run again at <due>" so a due-now row cannot spin a loop
SKIPPED_RUN_RETRY_SECONDS = 0.02
LISTEN_CHANNEL = "imagend_new"
INTERRUPT_GRACE_SECONDS = 5.0


class _HandledSkipFilter(logging.Filter):
    """APScheduler warns when a run is skipped because the job is still running; the daemon
    handles that case itself (see _on_run_skipped), so the warning would only alarm."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


def daemon_identity() -> str:
    """What `locked_by` shows: which host and process owns a row."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Daemon:
    def __init__(self, settings: Settings, repo: Repository, backends: Mapping[str, Backend], listen_url: str) -> None:
        self.settings = settings
        self.repo = repo
        self.backends = backends
        self.listen_url = listen_url
        self.stopping = threading.Event()  # stop claiming
        self.aborting = threading.Event()  # interrupt work in flight
        self.wake = threading.Event()  # a NOTIFY arrived
        self.stop_requested = threading.Event()
        self.job_lock = threading.Lock()
        self.io_pool = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="imagend-io")
        self.scheduler: BackgroundScheduler | None = None
        self._schedule_lock = threading.Lock()
        self._running: dict[str, bool] = {GENERATOR: False, PROCESSOR: False}
        self._pending: dict[str, datetime] = {}
        self._db_failures = 0
        # time.monotonic() when the processor is next due. Tracked here, not read from APScheduler:
        # while the generator holds the job lock the processor job sits blocked on it, and
        # APScheduler skips its later runs and moves next_run_time on, so that never looks due.
        self._processor_due = time.monotonic()
        self.generator = Generator(
            repo,
            backends,
            settings,
            stopping=self.stopping,
            aborting=self.aborting,
            wake=self.wake,
            io_pool=self.io_pool,
            between_batches=self._processor_if_due,
        )
        self.processor = Processor(repo, backends, settings, stopping=self.stopping, io_pool=self.io_pool)

    # -- one-shot (-generator / -processor) ---------------------------------------------

    def run_generator_once(self) -> PassCounts:
        with self.job_lock:
            counts = self.generator.run_once()
        log.info("generator_pass", **counts.summary())
        return counts

    def run_processor_once(self) -> PassCounts:
        with self.job_lock:
            counts = self.processor.run_once()
        log.info("processor_pass", **counts.summary())
        return counts

    # -- the long-running daemon (-cron) --------------------------------------------------

    def run_forever(self) -> int:
        self._install_signal_handlers()
        scheduler = BackgroundScheduler(
            executors={"default": SchedulerThreadPool(2)},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
            timezone=UTC,
        )
        now = datetime.now(UTC)
        scheduler.add_job(
            self._generator_job,
            "interval",
            id=GENERATOR,
            next_run_time=now,
            seconds=self.settings.generator_interval_seconds,
        )
        scheduler.add_job(
            self._processor_job,
            "interval",
            id=PROCESSOR,
            next_run_time=now,
            seconds=self.settings.processor_interval_seconds,
        )
        scheduler.add_listener(self._on_run_skipped, EVENT_JOB_MAX_INSTANCES)
        logging.getLogger("apscheduler.scheduler").addFilter(_HandledSkipFilter())
        self.scheduler = scheduler
        scheduler.start()
        listener = threading.Thread(target=self._listen, name="imagend-listen", daemon=True)
        listener.start()
        log.info(
            "daemon_started",
            owner=self.repo.owner,
            backends=list(self.backends),
            generator_interval=self.settings.generator_interval_seconds,
            processor_interval=self.settings.processor_interval_seconds,
        )
        while not self.stop_requested.wait(1.0):
            pass
        return self._drain(scheduler)

    def _install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: FrameType | None) -> None:
            if self.stop_requested.is_set():
                os._exit(128 + signum)  # second signal: now; leases recover the rows
            self.stop_requested.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def _drain(self, scheduler: BackgroundScheduler) -> int:
        log.info("daemon_stopping", drain_seconds=self.settings.drain_seconds)
        self.stopping.set()
        scheduler.pause()
        idle = self.job_lock.acquire(timeout=self.settings.drain_seconds)
        if not idle:
            log.warning("drain_timeout", action="interrupting work in flight")
            self.aborting.set()
            idle = self.job_lock.acquire(timeout=INTERRUPT_GRACE_SECONDS)
        self.release_owned_rows()
        scheduler.shutdown(wait=False)
        self.io_pool.shutdown(wait=False, cancel_futures=True)
        if not idle:
            # A backend call that ignores interruption (a hung CUDA kernel) would keep the
            # interpreter from exiting; its rows are released and its late write is guarded.
            log.error("daemon_stopped", outcome="work did not stop; exiting without it")
            os._exit(0)
        self.job_lock.release()  # jobs still waiting for the lock see `stopping` and return
        log.info("daemon_stopped")
        return 0

    def release_owned_rows(self) -> None:
        """Give back every row this daemon still holds (attempt not counted)."""
        try:
            released = self.repo.release(None)
        except DatabaseUnavailable:
            log.warning("rows_not_released", reason="database unavailable; their leases will expire")
            return
        if released:
            log.info("rows_released", ids=released, status="ReadyToGenerate")

    # -- jobs -----------------------------------------------------------------------------

    def _generator_job(self) -> None:
        self._job(GENERATOR, self._generator_pass_locked)

    def _generator_pass_locked(self) -> PassCounts:
        counts = self.generator.run_once()
        self._schedule_generator_for_next_retry()
        return counts

    def _processor_job(self) -> None:
        self._job(PROCESSOR, self._processor_pass_locked)

    def _processor_pass_locked(self) -> PassCounts:
        counts = self.processor.run_once()
        self._processor_due = time.monotonic() + self.settings.processor_interval_seconds
        self._schedule_processor_for_next_due()
        return counts

    def _job(self, job_id: str, body: Callable[[], PassCounts]) -> None:
        with self._schedule_lock:
            self._running[job_id] = True
        try:
            with self.job_lock:
                if self.stopping.is_set():
                    return
                counts = body()
            self._db_failures = 0
            self._after_pass(counts)
            if counts.claimed or counts.polled or counts.rescued or counts.lost:
                log.info(f"{job_id}_pass", **counts.summary())
        except DatabaseUnavailable as exc:
            self._db_failures += 1
            retry_in = min(30.0, 0.5 * 2 ** min(self._db_failures, 6))
            log.warning("database_unavailable", job=job_id, error=str(exc), retry_in_seconds=retry_in)
            self._request_run(job_id, retry_in)
        except Exception:
            log.exception("pass_failed", job=job_id)
        finally:
            with self._schedule_lock:
                self._running[job_id] = False
                pending = self._pending.pop(job_id, None)
            if job_id == GENERATOR and self.wake.is_set():
                pending = datetime.now(UTC)
            if pending is not None:
                self._move_earlier(job_id, pending)

    def _processor_if_due(self) -> None:
        """Between generator batches (job lock held): run the processor if it is due."""
        job = self.scheduler.get_job(PROCESSOR) if self.scheduler else None
        due = job is not None and job.next_run_time is not None and job.next_run_time <= datetime.now(UTC)
        if job is not None and (due or time.monotonic() >= self._processor_due):  # -cron only, not -generator
            counts = self._processor_pass_locked()
            self._after_pass(counts)

    def _after_pass(self, counts: PassCounts) -> None:
        now = time.monotonic()
        if counts.retry_due is not None:
            self._request_run(GENERATOR, counts.retry_due - now)
        if counts.poll_due is not None:
            self._request_run(PROCESSOR, counts.poll_due - now)

    def _schedule_processor_for_next_due(self) -> None:
        due = self.repo.next_due()
        if due is not None:
            self._request_run(PROCESSOR, due)

    def _schedule_generator_for_next_retry(self) -> None:
        """A pass reports only its earliest backoff; rows backed off later (or by a daemon that
        died since) are found here, so no row waits for the interval run."""
        due = self.repo.next_retry()
        if due is not None:
            self._request_run(GENERATOR, due)

    # -- scheduling -------------------------------------------------------------------------

    def request_generator(self) -> None:
        """A NOTIFY arrived (or the listener reconnected): claim now."""
        self.wake.set()
        self._request_run(GENERATOR, 0.0)

    def _request_run(self, job_id: str, seconds_from_now: float) -> None:
        if self.scheduler is None:
            return
        at = datetime.now(UTC) + timedelta(seconds=max(seconds_from_now, 0.0))
        if job_id == PROCESSOR:
            soonest = time.monotonic() + max(seconds_from_now, MIN_RESCHEDULE_SECONDS)
            self._processor_due = min(self._processor_due, soonest)
        with self._schedule_lock:
            if self._running[job_id]:
                # APScheduler would skip a run of a job still running and fall back to the
                # interval; the job's own `finally` applies this instead.
                current = self._pending.get(job_id)
                self._pending[job_id] = at if current is None else min(current, at)
                return
        floor = 0.0 if job_id == GENERATOR and seconds_from_now <= 0 else MIN_RESCHEDULE_SECONDS
        self._move_earlier(job_id, max(at, datetime.now(UTC) + timedelta(seconds=floor)))

    def _move_earlier(self, job_id: str, at: datetime) -> None:
        assert self.scheduler is not None
        job = self.scheduler.get_job(job_id)
        if job is not None and (job.next_run_time is None or at < job.next_run_time):
            job.modify(next_run_time=at)

    def _on_run_skipped(self, event: JobSubmissionEvent) -> None:
        # The run fell in the instant between our job returning and APScheduler counting it
        # finished: try again a moment later instead of losing the wake-up to the interval.
        if not self._running.get(event.job_id, True) and not self.stopping.is_set():
            self._move_earlier(event.job_id, datetime.now(UTC) + timedelta(seconds=SKIPPED_RUN_RETRY_SECONDS))

    # -- LISTEN ---------------------------------------------------------------------------

    def _listen(self) -> None:
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.listen_url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {LISTEN_CHANNEL}")
                    backoff = 0.5
                    self.request_generator()  # rows inserted while we were not listening
                    while not self.stopping.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.request_generator()
            except psycopg.OperationalError as exc:
                log.warning("listen_connection_lost", error=type(exc).__name__, retry_in_seconds=backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
