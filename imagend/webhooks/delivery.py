"""The webhook thread: delivers the outbox (imagend_webhooks), at least once.

- Durable: the event is written by a trigger in the transaction that ends the row, so no end is
  missed, whatever happens to a daemon afterwards.
- Shared: a pass claims due events with FOR UPDATE SKIP LOCKED and pushes their `next_at` past the
  delivery's bound (a lease). Several daemons share one outbox; one killed mid-delivery leaves its
  events to be claimed again once the lease passes (the same `webhook-id`: receivers deduplicate on it).
- Never in the way: a thread of its own with its own connections (a pool of 4, none kept at rest); it
  claims as many events as it has idle workers (WORKERS) and each worker delivers one and records its
  outcome, bounded by IMAGEND_WEBHOOK_TIMEOUT per phase (connect, send, first byte; the body is never
  read): a receiver that hangs holds one worker, never the others. The generator never waits for it.
- Retried: a receiver that is down, answers anything but 2xx, redirects (never followed) or hangs is
  tried again after IMAGEND_WEBHOOK_BACKOFF x 2^(attempt-1) (at most an hour, ±20 %), until
  IMAGEND_WEBHOOK_EXPIRE after the event; then the event is abandoned (`gave_up_at`, `last_error`).
  A target the SSRF guard refuses (targets.py) is abandoned at once.
- Woken (poke) when this daemon ends a row with a callback_url, by the heartbeat when events are due
  (rows another daemon or a producer ended: within a beat), and at the next retry's due time; idle, it
  runs no statement and holds no connection, and it has no LISTEN of its own: every LISTEN in a
  database is signalled by every NOTIFY's commit, and a fleet's producers pay for each (docs/fleet.md).
- Every FORGET_EVERY_SECONDS it drops delivered and abandoned events past IMAGEND_WEBHOOK_KEEP
  and Idempotency-Keys past IMAGEND_HTTP_RETRY_WINDOW.
"""

from __future__ import annotations

import contextlib
import json
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import httpx
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from imagend import __version__
from imagend.config.settings import WebAppSettings
from imagend.db.statements import Statements
from imagend.errors import DatabaseUnavailable, clip
from imagend.logs import get_logger, redact
from imagend.storage.links import Links
from imagend.webhooks import signing, targets

log = get_logger()

BATCH = 32  # events claimed at most per claim
WORKERS = 16  # deliveries at once per daemon (a receiver that hangs holds one of them)
RECHECK_SECONDS = 60.0  # the longest sleep without a poke (the heartbeat pokes within a beat anyway)
POOL_IDLE_SECONDS = 2.0  # a connection unused this long is closed: an idle daemon holds none of these
BACKOFF_MAX_SECONDS = 3600.0
JITTER = 0.2
LEASE_MARGIN_SECONDS = 2.0  # beyond the three timed phases of a delivery
FORGET_EVERY_SECONDS = 600.0
POOL_MAX = 4  # the claim, and the workers' one-row records
ERROR_CHARS = 300
USER_AGENT = f"imagend/{__version__} (webhooks)"


@dataclass(frozen=True)
class Event:
    id: int
    event_id: str
    image_id: int
    url: str
    status: str
    attempts: int
    created_at: datetime
    age_seconds: float


@dataclass
class DeliveryCounts:
    claimed: int = 0
    delivered: int = 0
    retried: int = 0
    abandoned: int = 0


class Outbox(Statements):
    """The outbox's statements (queries_webapp.sql)."""

    def claim(self, limit: int, lease_seconds: float) -> list[Event]:
        return [Event(**row) for row in self._rows("webhooks_claim", {"limit": limit, "lease": lease_seconds},
                                                    dict_row)]

    def images(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        return {int(row["id"]): row for row in self._rows("webhooks_images", {"ids": list(ids)}, dict_row)}

    def delivered(self, event: Event) -> None:
        self._rows("webhooks_delivered", {"id": event.id})

    def retry_later(self, event: Event, delay: float, error: str) -> None:
        self._rows("webhooks_retry_later", {"id": event.id, "delay": delay, "error": error})

    def give_up(self, event: Event, error: str) -> None:
        self._rows("webhooks_give_up", {"id": event.id, "error": error})

    def next_due(self) -> float | None:
        rows = self._rows("webhooks_next_due", {})
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def forget(self, keep_seconds: float) -> int:
        with self._cursor() as cur:
            cur.execute(self._sql["webhooks_forget"], {"keep": keep_seconds})
            return cur.rowcount

    def expire_keys(self, window_seconds: float) -> int:
        """Idempotency-Keys past their window (the compatible APIs expire theirs as they go; a daemon whose
        clients only send Idempotency-Key would otherwise keep them all)."""
        with self._cursor() as cur:
            cur.execute(self._sql["images_api_requests_expire"], {"window": window_seconds})
            return cur.rowcount


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime | date) else value


def event_body(event: Event, row: dict[str, Any] | None, links: Links) -> dict[str, Any]:
    """The JSON an event carries: the row's end, with links to its image (never the bytes)."""
    kind = "image.ready" if event.status == "ReadyToPublish" else "image.failed"
    data: dict[str, Any] = {"id": event.image_id, "status": event.status}
    if row is not None:
        finished = event.status == "ReadyToPublish"
        has_image = finished and (bool(row["has_base64"]) or row["output_url"] is not None)
        has_thumb = finished and (bool(row["has_thumbnail"]) or row["thumbnail_url"] is not None or has_image)
        params: Any = row["params"]
        with contextlib.suppress(ValueError, RecursionError):
            params = json.loads(params) if params is not None else None
        data |= {
            "error": row["error"],
            "warning": row["warning"],
            "image_url": links.link(event.image_id, "image", row["output_url"], has_image),
            "thumbnail_url": links.link(event.image_id, "thumbnail", row["thumbnail_url"] or row["output_url"],
                                        has_thumb),
            "seed": row["seed"], "width": row["width"], "height": row["height"], "format": row["format"],
            "params": params,
            "timings": {name: _iso(row[name]) for name in ("created_at", "started_at", "finished_at",
                                                           "generation_seconds")},
        }
    return {"type": kind, "timestamp": _iso(event.created_at.astimezone(UTC)), "data": data}


def backoff(attempt: int, base_seconds: float, rng: Callable[[], float] = random.random) -> float:
    delay = min(base_seconds * 2.0 ** max(attempt - 1, 0), BACKOFF_MAX_SECONDS)
    return float(delay * (1 + JITTER * (2 * rng() - 1)))


class WebhookSender:
    """The daemon's webhook thread (started in cli.py with `-cron`)."""

    def __init__(self, database_url: str, settings: WebAppSettings, links: Links) -> None:
        self.settings = settings
        self.links = links
        self.backoff_seconds = settings.webhook_backoff_seconds
        self.pool = ConnectionPool(database_url, min_size=0, max_size=POOL_MAX, timeout=5.0, open=False,
                                   max_idle=POOL_IDLE_SECONDS,
                                   kwargs={"autocommit": True, "prepare_threshold": None,
                                           "application_name": "imagend-webhooks"},
                                   check=ConnectionPool.check_connection, name="imagend-webhooks")
        self.outbox = Outbox(self.pool)
        self.key = signing.secret_key(settings.webhook_secret.reveal()) if settings.webhook_secret else None
        timeout = settings.webhook_timeout_seconds
        self.client = httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False,
                                   headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
                                   limits=httpx.Limits(max_connections=WORKERS, max_keepalive_connections=WORKERS))
        self.lease_seconds = 3 * timeout + LEASE_MARGIN_SECONDS  # connect, send, first byte, and the bookkeeping
        # Daemon threads, not an executor: a delivery in flight at exit (its event is leased) never holds
        # the process up, as an executor's threads, joined at exit, would for up to three timeouts.
        self._jobs: queue.SimpleQueue[tuple[Event, dict[str, Any] | None] | None] = queue.SimpleQueue()
        self.workers = [threading.Thread(target=self._worker, name=f"imagend-webhook-{n}", daemon=True)
                        for n in range(WORKERS)]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="imagend-webhooks", daemon=True)
        self._forgot_at = 0.0
        self.resolver: targets.Resolver = targets.resolve
        self.totals = DeliveryCounts()  # outcomes since start (the workers add to it)
        self._busy = 0  # events handed to workers and not yet recorded
        self._slots_lock = threading.Lock()
        self._poked = threading.Event()  # a poke, a worker's end, the stop: the loop looks again

    # -- one pass ------------------------------------------------------------------------

    def run_once(self) -> DeliveryCounts:
        """Claim as many due events as there are idle workers and hand each to one; a worker records
        its event's outcome itself, so a receiver that hangs holds one worker, never the others."""
        counts = DeliveryCounts()
        with self._slots_lock:
            free = WORKERS - self._busy
        if free <= 0:
            return counts
        events = self.outbox.claim(min(free, BATCH), self.lease_seconds)
        counts.claimed = len(events)
        if not events:
            return counts
        rows = self.outbox.images([event.image_id for event in events])
        with self._slots_lock:
            self._busy += len(events)
        for event in events:
            self._jobs.put((event, rows.get(event.image_id)))
        return counts

    def _worker(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._work(*job)

    def _work(self, event: Event, row: dict[str, Any] | None) -> None:
        try:
            outcome, error = self._deliver(event, row)
            counts = DeliveryCounts()
            self._record(event, outcome, error, counts)
            with self._slots_lock:
                for name, value in vars(counts).items():
                    setattr(self.totals, name, getattr(self.totals, name) + value)
        except Exception:  # the database went away mid-record: the lease brings the event back
            log.exception("webhook_not_recorded", image_id=event.image_id, event_id=event.event_id)
        finally:
            with self._slots_lock:
                self._busy -= 1
            self._poked.set()  # a worker is free: the loop may claim again

    def _deliver(self, event: Event, row: dict[str, Any] | None) -> tuple[str, str | None]:
        """('delivered' | 'retry' | 'abandon', error)."""
        if self.key is None:
            return "retry", "IMAGEND_WEBHOOK_SECRET is not set: events wait, unsigned events are never sent"
        try:
            where = targets.target(event.url, self.settings.webhook_allow_hosts, self.resolver)
        except targets.Refused as exc:
            return "abandon", str(exc)
        except OSError as exc:
            return "retry", f"cannot resolve the callback_url's host: {exc}"
        body = json.dumps(event_body(event, row, self.links), separators=(",", ":")).encode()
        headers = signing.headers(self.key, event.event_id, int(time.time()), body)
        headers["Host"] = where.host_header
        extensions = {"sni_hostname": where.host} if event.url.startswith("https:") else {}
        try:
            request = self.client.build_request("POST", where.connect_url, content=body, headers=headers,
                                                extensions=extensions)
            response = self.client.send(request, stream=True)
            response.close()  # the status is all that counts: a body is never read (nor waited for)
        except httpx.HTTPError as exc:
            return "retry", f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return "delivered", None
        if 300 <= response.status_code < 400:
            return "retry", f"answered {response.status_code} (a redirect, not followed: name the final URL)"
        return "retry", f"answered {response.status_code}"

    def _record(self, event: Event, outcome: str, error: str | None, counts: DeliveryCounts) -> None:
        text = clip(redact(error or ""), ERROR_CHARS)
        if outcome == "delivered":
            self.outbox.delivered(event)
            counts.delivered += 1
            log.debug("webhook_delivered", image_id=event.image_id, event_id=event.event_id, attempt=event.attempts)
            return
        delay = backoff(event.attempts, self.backoff_seconds)
        if outcome == "abandon" or event.age_seconds + delay > self.settings.webhook_expire_seconds:
            self.outbox.give_up(event, text)
            counts.abandoned += 1
            log.warning("webhook_abandoned", image_id=event.image_id, event_id=event.event_id,
                        attempts=event.attempts, error=text)
            return
        self.outbox.retry_later(event, delay, text)
        counts.retried += 1
        log.info("webhook_retry", image_id=event.image_id, event_id=event.event_id, attempt=event.attempts,
                 in_seconds=round(delay, 1), error=text)

    # -- the thread ---------------------------------------------------------------------

    def start(self) -> None:
        self.pool.open(wait=False)
        for worker in self.workers:
            worker.start()
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self._poked.set()
        self.thread.join(timeout=5)
        for _ in self.workers:
            self._jobs.put(None)  # each idle worker ends; a busy one ends with its delivery (or the process)
        self.client.close()
        self.pool.close()

    def poke(self) -> None:
        """Events may be due: look now (from the finishing write's thread, or the heartbeat's)."""
        self._poked.set()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._poked.clear()
                with self._slots_lock:
                    free = WORKERS - self._busy
                counts = self.run_once()
                if free > 0 and counts.claimed >= min(free, BATCH):
                    continue  # more may be due: claim again as soon as a worker is free
                if free <= 0:
                    self._poked.wait(RECHECK_SECONDS)  # every worker busy: until one ends
                    continue
                self._forget()
                due = self.outbox.next_due()
                # One wait, no ticking: a fleet of idle daemons wakes nobody's CPU.
                self._poked.wait(RECHECK_SECONDS if due is None else min(max(due, 0.0), RECHECK_SECONDS))
            except DatabaseUnavailable as exc:
                log.warning("webhooks_database_unavailable", error=clip(redact(str(exc)), ERROR_CHARS))
                self.stopping.wait(1.0)
            except Exception:
                log.exception("webhooks_pass_failed")
                self.stopping.wait(1.0)

    def _forget(self) -> None:
        if time.monotonic() - self._forgot_at < FORGET_EVERY_SECONDS:
            return
        self._forgot_at = time.monotonic()
        gone = self.outbox.forget(self.settings.webhook_keep_seconds)
        keys = self.outbox.expire_keys(self.settings.retry_window_seconds)
        if gone or keys:
            log.info("webhooks_forgotten", events=gone, idempotency_keys=keys)
