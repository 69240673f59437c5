"""The listener's connections, so that slow and silent clients cannot take it down.

uvicorn times out an idle keep-alive connection (`timeout_keep_alive`) and nothing else: a
connection that sends nothing, half a request's headers or half its body stays open for ever, and
its `limit_concurrency` counts open connections, so 64 such sockets made it answer 503 to everything,
the probes included (issue 19). Here, below the ASGI app (which only sees whole request heads):

- A deadline per request: a whole request (line, headers and body) must arrive within
  REQUEST_SECONDS of the connection opening or of the previous answer on it, trickled or not;
  otherwise the connection is closed. An answer being written is never cut.
- At most MAX_CONNECTIONS open connections: past it, the oldest one that is not in a request
  (nothing or part of a head received, no answer pending) is closed to make room, so a flood of
  silent sockets can neither exhaust the file descriptors nor keep a new client out.
- The few requests the app may run at once are counted by app.py's admission (JSON 503 past it),
  never the probes, which answer whatever the load.
- A request that is not HTTP gets uvicorn's 400 as the API's JSON error.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

REQUEST_SECONDS = 10.0  # a body is at most 64 KiB (checks.py): plenty on any link that serves the dashboard
KEEP_ALIVE_SECONDS = 5.0  # uvicorn's own timer: an idle connection between requests
MAX_CONNECTIONS = 512  # well under the default 1024 descriptors, beside the pools and the model files

_RECEIVED = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)  # the client's side of the request is complete


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the request deadline and the connection cap (module docstring)."""

    _deadline: asyncio.TimerHandle | None = None
    _opened = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._opened = time.monotonic()
        self._arm()
        if len(self.connections) > MAX_CONNECTIONS:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state in _RECEIVED:
            self._disarm()  # the request is in: the app's answer takes as long as it takes

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection has its own deadline

    def shutdown(self) -> None:
        """At stop: a request still arriving is not waited for (the app reads a disconnect and ends);
        an answer being written is finished, as uvicorn does."""
        if self.conn.their_state not in _RECEIVED and (self.cycle is None or not self.cycle.response_started):
            self.transport.close()
            return
        super().shutdown()

    def send_400_response(self, msg: str) -> None:
        """Not HTTP (or a head past h11's size limit): the API's JSON error, then close."""
        body = json.dumps({"error": f"not an HTTP/1.1 request: {msg}"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            pass  # an answer had started: nothing more can be said on this connection
        self.transport.close()

    # -- the deadline ----------------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(REQUEST_SECONDS, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.conn.their_state in _RECEIVED or self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete:
            return  # answering (the app may answer before reading the whole body): let it finish
        self.transport.close()  # the app, if it waits for the body, reads a disconnect

    # -- the cap -----------------------------------------------------------------------------

    def _idle(self) -> bool:
        """Not in a request: no head received yet (or none since the last answer), nothing pending."""
        return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    def _make_room(self) -> None:
        others: list[Any] = [c for c in self.connections if c is not self and isinstance(c, GuardedH11Protocol)]
        idle = [c for c in others if c._idle() and not c.transport.is_closing()]
        if idle:
            oldest = min(idle, key=lambda c: c._opened)
            oldest.transport.close()
