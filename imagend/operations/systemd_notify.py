"""systemd's notify protocol (sd_notify(3)): tell the service manager when the daemon is ready,
what it is doing, that its loops are alive, and that it is stopping.

One datagram per message to the AF_UNIX socket named by NOTIFY_SOCKET (a path, or `@name` for
an abstract socket), opened afresh for each message as libsystemd's sd_notify() does, so a
re-executed systemd is reached too. Without NOTIFY_SOCKET (a terminal, cron, tests, Type=exec)
every call does nothing. Nothing here raises into the caller: a message that cannot be sent is
logged once at warning and the daemon goes on.

Not the `sdnotify` package: it leaks its socket when the address cannot be reached (a
ResourceWarning, an error under `pytest -W error`), encodes in Latin-1 where the protocol is
UTF-8, connects once at start and never again, and has had no release since 2019. The protocol
is a single `sendto`.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Mapping

from imagend.logs import get_logger, redact

log = get_logger()

SEND_TIMEOUT_SECONDS = 1.0  # a stuck service manager must not hold up the loops
STATUS_MAX_CHARS = 200  # `systemctl status` shows one line
WATCHDOG_PING_FRACTION = 0.5  # ping at half of WatchdogSec=, as sd_watchdog_enabled(3) advises
_NOT_ONE_LINE = re.compile(r"[\x00-\x1f\x7f]+")  # a newline would start another assignment (READY=1…)


def _socket_address(value: str | None) -> str | None:
    """NOTIFY_SOCKET as an address for `sendto`: a path, or `@name` → the abstract name `\\0name`."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock:… (systemd 254+) and anything else: not something this daemon can reach


def _watchdog_seconds(environ: Mapping[str, str]) -> float | None:
    """WatchdogSec= as systemd passes it (WATCHDOG_USEC, for WATCHDOG_PID when that is set)."""
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were started by one that was watched)
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


def one_line(text: str) -> str:
    """`text` fit for STATUS=: configured secrets starred, control characters folded, shortened."""
    text = _NOT_ONE_LINE.sub(" ", redact(text)).strip()
    return text if len(text) <= STATUS_MAX_CHARS else text[: STATUS_MAX_CHARS - 1] + "…"


class Notifier:
    """Messages to systemd. Build one in the daemon's process (it reads the environment once);
    every method is safe from any thread and does nothing when NOTIFY_SOCKET is unset."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.socket_name = env.get("NOTIFY_SOCKET") or None
        self._address = _socket_address(self.socket_name)
        self._watchdog = _watchdog_seconds(env) if self._address is not None else None
        self._warned = False
        self._lock = threading.Lock()
        if self.socket_name and self._address is None:
            self._warn_once("NOTIFY_SOCKET is neither a path nor an @abstract name")

    @property
    def enabled(self) -> bool:
        """systemd listens (NOTIFY_SOCKET names a socket we can send to)."""
        return self._address is not None

    @property
    def watchdog_seconds(self) -> float | None:
        """WatchdogSec= (from WATCHDOG_USEC); None without a watchdog or without a socket to ping."""
        return self._watchdog

    @property
    def watchdog_interval_seconds(self) -> float | None:
        """How often to call watchdog(): half of WatchdogSec=; None when there is no watchdog."""
        return None if self._watchdog is None else self._watchdog * WATCHDOG_PING_FRACTION

    def ready(self, status: str | None = None) -> None:
        """READY=1: the schema is applied and every backend is loaded (systemctl start returns now)."""
        self._send("READY=1" if status is None else f"READY=1\nSTATUS={one_line(status)}")

    def status(self, text: str) -> None:
        """STATUS=…, what `systemctl status` shows: "waiting for work", "generating 3 rows on local"."""
        self._send(f"STATUS={one_line(text)}")

    def watchdog(self) -> None:
        """WATCHDOG=1: the loops are alive. Call it every watchdog_interval_seconds."""
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        """STOPPING=1: the drain has begun."""
        self._send("STOPPING=1")

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT_SECONDS)
                sock.sendto(message.encode("utf-8"), self._address)
        except Exception as exc:  # never into the caller: systemd missing must not stop the daemon
            self._warn_once(f"{type(exc).__name__}: {exc}")

    def _warn_once(self, error: str) -> None:
        with self._lock:
            if self._warned:
                return
            self._warned = True
        log.warning("systemd_notify_failed", socket=self.socket_name, error=error,
                    action="going on without telling systemd; further failures are not logged")
