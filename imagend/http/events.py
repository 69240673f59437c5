"""The live stream, GET /v1/images/{id}/events (Server-Sent Events): a row's status, progress and preview
as they change, then its end, so a browser shows an image forming without polling.

One reader per listener (`EventHub`), never one per client: while streams are open it reads the
watched rows' state in one statement every POLL_SECONDS (the rows' own columns, which the daemon
writes as it works: a lease renewal carries the progress, a preview is written every 2 s or so) and
hands each stream what changed. 500 streams cost the database one small read twice a second.

Bounded: at most IMAGEND_SSE_MAX_STREAMS streams at once (503 past it, with Retry-After) and
IMAGEND_SSE_MAX_PER_CLIENT per client address (429). A stream stops counting against the listener's
admission once it is set up (it only waits), ends with its row (an `end` event), and otherwise after
MAX_STREAM_SECONDS (the browser's EventSource reconnects by itself). A client that reads too slowly
loses intermediate states, never the last: each stream keeps only the newest state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from imagend.errors import DatabaseUnavailable
from imagend.logs import get_logger

log = get_logger()

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0  # a comment line, so proxies and browsers keep the connection
MAX_STREAM_SECONDS = 3600.0
RECONNECT_MS = 2000  # the EventSource's `retry:`
ENDED = frozenset({"ReadyToPublish", "Failed"})
STATE_FIELDS = ("status", "progress", "error", "warning", "attempts", "cancel_requested")


class TooMany(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass(eq=False)
class Subscription:
    image_id: int
    client: str
    state: dict[str, Any] | None = None  # the newest state read, None until the first read
    gone: bool = False  # the row does not exist (any more)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class EventHub:
    """The listener's one reader for every stream (module docstring). Lives on the event loop."""

    def __init__(self, read_state: Callable[[Sequence[int]], list[dict[str, Any]]], max_streams: int,
                 max_per_client: int, poll_seconds: float = POLL_SECONDS) -> None:
        self.read_state = read_state
        self.max_streams = max_streams
        self.max_per_client = max_per_client
        self.poll_seconds = poll_seconds
        self.subscriptions: set[Subscription] = set()
        self.per_client: dict[str, int] = {}
        self._poller: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def streams(self) -> int:
        return len(self.subscriptions)

    def subscribe(self, image_id: int, client: str) -> Subscription:
        if len(self.subscriptions) >= self.max_streams:
            raise TooMany(503, f"busy: {len(self.subscriptions)} live streams are open (IMAGEND_SSE_MAX_STREAMS="
                               f"{self.max_streams}); poll GET /v1/images/{image_id} or try again later")
        if self.per_client.get(client, 0) >= self.max_per_client:
            raise TooMany(429, f"this client has {self.max_per_client} live streams open "
                               "(IMAGEND_SSE_MAX_PER_CLIENT); close one first")
        sub = Subscription(image_id, client)
        self.subscriptions.add(sub)
        self.per_client[client] = self.per_client.get(client, 0) + 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        self._wake.set()  # a new stream is read at once, not at the next tick
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self.subscriptions:
            self.subscriptions.discard(sub)
            left = self.per_client.get(sub.client, 1) - 1
            if left:
                self.per_client[sub.client] = left
            else:
                self.per_client.pop(sub.client, None)

    async def _poll(self) -> None:
        while self.subscriptions:
            ids = sorted({sub.image_id for sub in self.subscriptions})
            try:
                rows = await run_in_threadpool(self.read_state, ids)
            except DatabaseUnavailable as exc:
                log.warning("sse_read_failed", error=str(exc))
                rows = None
            if rows is not None:
                by_id = {int(row["id"]): row for row in rows}
                for sub in list(self.subscriptions):
                    row = by_id.get(sub.image_id)
                    if row is None:
                        sub.gone = True
                        sub.changed.set()
                    elif row != sub.state:
                        sub.state = row
                        sub.changed.set()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    async def stream(self, sub: Subscription, describe_end: Callable[[dict[str, Any]], dict[str, Any]],
                     preview_url: Callable[[str], str]) -> AsyncIterator[bytes]:
        """The stream's bytes: `retry:`, then `status` / `preview` events as they change, then `end`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MAX_STREAM_SECONDS
        sent: dict[str, Any] | None = None
        sent_preview: str | None = None
        try:
            yield f"retry: {RECONNECT_MS}\n\n".encode()
            while loop.time() < deadline:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sub.changed.wait(), KEEPALIVE_SECONDS)
                if not sub.changed.is_set():
                    yield b": keep-alive\n\n"
                    continue
                sub.changed.clear()
                if sub.gone:
                    yield sse("gone", {"id": sub.image_id, "error": f"no image with id {sub.image_id}"})
                    return
                state = sub.state
                if state is None:
                    continue
                shown = {name: state[name] for name in STATE_FIELDS}
                if shown != sent:
                    sent = shown
                    yield sse("status", {"id": sub.image_id, **shown})
                tag = state["preview_tag"]
                if tag is not None and tag != sent_preview and state["status"] not in ENDED:
                    sent_preview = tag
                    yield sse("preview", {"id": sub.image_id, "url": preview_url(tag)})
                if state["status"] in ENDED:
                    yield sse("end", describe_end(state))
                    return
        finally:
            self.unsubscribe(sub)
