"""Waiting for rows to end, for the routes that answer with the image (the OpenAI and AUTOMATIC1111
APIs): one LISTEN connection per listener, never one per request.

The schema notifies channel `imagend_done` with `{"id": …, "status": …}` at every row's end. One thread
here LISTENs on a connection of its own (IMAGEND_LISTEN_URL, else the listener's pool's URL: a LISTEN
through a transaction pooler hears nothing) and hands each notification to the requests waiting for
that id, on their event loop. A request registers its ids first, then reads their statuses once
(`ended`): a row that ended before it registered is not missed, and one that ends after is heard.

- Bounded: at most MAX_WAITING_ROWS rows waited for at once (past it `Full`: the route answers 429);
  each wait is bounded by the route (IMAGEND_HTTP_MAX_WAIT).
- Not a poll loop. After a (re)connection, and when no notification at all came for RECHECK_SECONDS
  while requests wait (a half-open connection, a pooler in the way), the waited rows' statuses are
  read again, in one query: a notification missed then costs at most RECHECK_SECONDS.
- The thread and its connection start with the first wait and go after IDLE_CLOSE_SECONDS without
  one: a daemon whose clients never use these APIs holds no connection for them.
- A request whose rows went in as one statement (one round trip: compat.py) registers once they are
  committed, so an end may be heard before anyone waits for it: the ends heard in the last
  RECENT_SECONDS (RECENT_MAX of them) are kept, and a registration takes those of its rows. A row that
  ended while no connection listened is read by the (re)connection's recheck, which a registration
  starting the thread also gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from imagend.db.rows import Status
from imagend.errors import DatabaseUnavailable
from imagend.logs import get_logger

log = get_logger()

CHANNEL = "imagend_done"
APPLICATION_NAME = "imagend-http-completions"
MAX_WAITING_ROWS = 4096  # rows waited for at once, all requests together (a wait costs a few hundred bytes)
RECHECK_SECONDS = 30.0
IDLE_CLOSE_SECONDS = 60.0
NOTIFY_WAIT_SECONDS = 1.0  # how often the thread looks at its stop, idle and recheck clocks
RECONNECT_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
RECENT_SECONDS = 30.0  # ends kept for a registration that comes after its rows' commit
RECENT_MAX = 16384  # at most this many (the oldest forgotten first): ~2 MB
ENDED = frozenset({Status.READY_TO_PUBLISH, Status.FAILED})
# libpq's TCP keepalives (ignored on a Unix socket), as the daemon's own listener: a dead peer is
# noticed within about a minute.
KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


class Full(Exception):
    """MAX_WAITING_ROWS rows are waited for already."""


class Waiter:
    """One request's rows: which have ended (id → status), woken on its own event loop. Once all have
    ended it leaves the registry by itself (`on_done`), so a waiter its request never released (a
    stream whose client went before it began) does not stay."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ids: Sequence[int],
                 on_done: Callable[[Waiter], None] = lambda waiter: None) -> None:
        self.loop = loop
        self.ids = tuple(ids)
        self.pending = set(ids)
        self.ended: dict[int, str] = {}
        self.event = asyncio.Event()
        self.registered = False
        self.on_done = on_done

    @property
    def done(self) -> bool:
        return not self.pending

    def end(self, image_id: int, status: str) -> None:
        """On the waiter's loop."""
        if image_id in self.pending:
            self.pending.discard(image_id)
            self.ended[image_id] = status
            self.event.set()
            if not self.pending:
                self.on_done(self)

    async def changed(self, timeout: float) -> bool:
        """Until a row ends (True) or `timeout` seconds pass (False)."""
        if not self.event.is_set():
            try:
                async with asyncio.timeout(timeout):  # not wait_for: no task of its own per wait
                    await self.event.wait()
            except TimeoutError:
                return False
        self.event.clear()
        return True


class Completions:
    """The listener's one LISTEN on `imagend_done` and the requests waiting on it (module docstring).

    `conninfo`: where to LISTEN. `statuses(ids)`: the rows' current statuses (id → status), read
    through the listener's pool."""

    def __init__(self, conninfo: str, statuses: Callable[[Sequence[int]], dict[int, str]],
                 max_waiting_rows: int = MAX_WAITING_ROWS, idle_close_seconds: float = IDLE_CLOSE_SECONDS,
                 recheck_seconds: float = RECHECK_SECONDS) -> None:
        self.conninfo = conninfo
        self.statuses = statuses
        self.max_waiting_rows = max_waiting_rows
        self.idle_close_seconds = idle_close_seconds
        self.recheck_seconds = recheck_seconds
        self._lock = threading.Lock()
        self._by_id: dict[int, list[Waiter]] = {}
        self._waiting_rows = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._idle_since = time.monotonic()
        self._recent: OrderedDict[int, tuple[float, str]] = OrderedDict()  # id → (heard at, status)
        self.connections = 0  # LISTEN connections opened so far (for tests and the benchmark)

    # -- the requests' side ----------------------------------------------------------------

    @property
    def waiting_rows(self) -> int:
        return self._waiting_rows

    def register(self, ids: Sequence[int], loop: asyncio.AbstractEventLoop) -> Waiter:
        """A waiter for `ids` on `loop` (Full past the bound); thread-safe. Registered before the rows
        are committed, it hears their end; registered after (a retry attached to rows queued earlier),
        `catch_up` reads what already ended."""
        waiter = Waiter(loop, ids, on_done=self.release)
        with self._lock:
            if self._waiting_rows + len(waiter.ids) > self.max_waiting_rows:
                raise Full(f"{self._waiting_rows} rows are waited for by requests already, at most "
                           f"{self.max_waiting_rows}")
            for image_id in waiter.ids:
                self._by_id.setdefault(image_id, []).append(waiter)
            self._waiting_rows += len(waiter.ids)
            waiter.registered = True
            heard = [(image_id, self._recent[image_id][1]) for image_id in waiter.ids if image_id in self._recent]
        self._deliver((waiter, image_id, status) for image_id, status in heard)  # ended before this registration
        self._ensure_thread()
        return waiter

    def release(self, waiter: Waiter) -> None:
        """Unregister `waiter` (again: nothing)."""
        with self._lock:
            if not waiter.registered:
                return
            waiter.registered = False
            for image_id in waiter.ids:
                waiters = self._by_id.get(image_id)
                if waiters is None:
                    continue
                with contextlib.suppress(ValueError):
                    waiters.remove(waiter)
                if not waiters:
                    del self._by_id[image_id]
            self._waiting_rows -= len(waiter.ids)
            if not self._waiting_rows:
                self._idle_since = time.monotonic()

    async def catch_up(self, waiter: Waiter) -> None:
        """End the waiter's rows that have ended already (one query)."""
        found = await asyncio.to_thread(self._ended_of, list(waiter.pending))
        for image_id, status in found.items():
            waiter.end(image_id, status)

    @contextlib.asynccontextmanager
    async def watching(self, ids: Sequence[int]) -> AsyncIterator[Waiter]:
        """Register `ids`, read their statuses once, yield the waiter; released on leaving."""
        waiter = self.register(ids, asyncio.get_running_loop())
        try:
            await self.catch_up(waiter)
            yield waiter
        finally:
            self.release(waiter)

    def _ended_of(self, ids: list[int], missing_ended: bool = True) -> dict[int, str]:
        """The rows among `ids` that have ended; with `missing_ended`, those gone too (deleted: 'Failed').
        The recheck leaves missing rows alone: a request registers its rows before it commits them, so
        a row it cannot see yet may be one still being inserted."""
        current = self.statuses(ids)
        if missing_ended:
            current = {image_id: current.get(image_id, Status.FAILED) for image_id in ids}
        return {image_id: status for image_id, status in current.items() if status in ENDED}

    # -- the LISTEN thread ---------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="imagend-http-completions", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    def _idle(self) -> bool:
        with self._lock:
            if self._waiting_rows or time.monotonic() - self._idle_since < self.idle_close_seconds:
                return False
            self._thread = None  # the next wait starts a new thread
            return True

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                conninfo = make_conninfo(self.conninfo, application_name=APPLICATION_NAME, **KEEPALIVES)
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    self.connections += 1
                    conn.execute(f"LISTEN {CHANNEL}")
                    failures = 0
                    self._recheck()  # what ended while no connection listened
                    if self._listen(conn):
                        return  # idle: the connection closes with the block
            except (psycopg.Error, DatabaseUnavailable, OSError) as exc:
                wait = RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)]
                failures += 1
                log.warning("http_completions_reconnect", reason=type(exc).__name__, seconds=wait)
                if self._stop.wait(wait):
                    return
                with self._lock:
                    if not self._waiting_rows and time.monotonic() - self._idle_since >= self.idle_close_seconds:
                        self._thread = None
                        return

    def _listen(self, conn: psycopg.Connection[Any]) -> bool:
        """Route notifications until stopped (False) or idle (True)."""
        heard_at = time.monotonic()
        while not self._stop.is_set():
            for note in conn.notifies(timeout=NOTIFY_WAIT_SECONDS, stop_after=256):
                heard_at = time.monotonic()
                self._route(note.payload)
            if self._idle():
                return True
            if self._waiting_rows and time.monotonic() - heard_at >= self.recheck_seconds:
                heard_at = time.monotonic()
                self._recheck()
        return False

    def _route(self, payload: str) -> None:
        try:
            done = json.loads(payload)
            image_id, status = int(done["id"]), str(done["status"])
        except (ValueError, KeyError, TypeError):
            return
        now = time.monotonic()
        with self._lock:
            waiters = list(self._by_id.get(image_id, ()))
            recent = self._recent
            recent[image_id] = (now, status)
            recent.move_to_end(image_id)
            while recent and (len(recent) > RECENT_MAX or next(iter(recent.values()))[0] < now - RECENT_SECONDS):
                recent.popitem(last=False)
        self._deliver((waiter, image_id, status) for waiter in waiters)

    def _recheck(self) -> None:
        with self._lock:
            ids = list(self._by_id)
        if not ids:
            return
        try:
            ended = self._ended_of(ids, missing_ended=False)
        except DatabaseUnavailable as exc:
            log.warning("http_completions_recheck_failed", reason=str(exc))
            return
        with self._lock:
            found = [(waiter, image_id, status) for image_id, status in ended.items()
                     for waiter in self._by_id.get(image_id, ())]
        self._deliver(found)

    @staticmethod
    def _deliver(ends: Iterable[tuple[Waiter, int, str]]) -> None:
        for waiter, image_id, status in ends:
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits any more
                waiter.loop.call_soon_threadsafe(waiter.end, image_id, status)
