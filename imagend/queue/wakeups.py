"""Wake-ups per host (docs/fleet.md): one LISTEN connection per host, not per daemon, and one daemon
woken per new row, not the fleet.

Postgres signals every listening backend at every NOTIFY commit, so each LISTEN taxes every producer;
and a broadcast woke every idle daemon to run a claim that, for all but one, found nothing. Instead:

- the database chooses whom to wake (imagend_wake in schema.sql): up to one idle daemon per row that
  became claimable, and NOTIFYs that daemon's *host* channel naming the daemons (owners) to wake;
- on each host the daemons elect a relay by a lock file (the kernel frees it when its holder dies, and
  the next daemon, blocked on it, takes over at once); the relay holds the host's one LISTEN
  connection (listener.py: probes, reconnects, the pooler check) and passes each wake-up on to the
  daemons it names, over Unix datagram sockets in the runtime folder;
- each daemon has a mailbox (a datagram socket) and tells the relay when it is idle or busy, again
  every second while idle (so a new relay learns at once). Its idle state in the database is kept by
  its own claims (images_claim_batch); a wake-up lost in a race is made up for by its heartbeat.

The host is `socket.gethostname()` and the database the listen URL's address: daemons on one machine
under different hostnames (UTS namespaces) or for different databases never share a relay.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from imagend.logs import get_logger

log = get_logger()

IDLE_REPEAT_SECONDS = 1.0  # an idle daemon says so again this often (a new relay learns it)
MESSAGE_BYTES = 512
WAKE, DEAF = b"wake", b"deaf"


def runtime_folder(env: Mapping[str, str] | None = None) -> Path:
    """IMAGEND_RUNTIME_DIR, else systemd's RuntimeDirectory=, else the user's runtime folder, else /tmp."""
    values = os.environ if env is None else env
    for name in ("IMAGEND_RUNTIME_DIR", "RUNTIME_DIRECTORY"):
        if values.get(name):
            return Path(values[name].split(":")[0])
    if values.get("XDG_RUNTIME_DIR"):
        return Path(values["XDG_RUNTIME_DIR"]) / "imagend"
    return Path(tempfile.gettempdir()) / f"imagend-{os.getuid()}"


def host_key(listen_url: str, hostname: str | None = None) -> str:
    """One per (host, database): the relay's lock, its socket and its channel are named by it."""
    try:
        parts = conninfo_to_dict(listen_url)
    except Exception:  # a URL libpq cannot parse fails the connection itself, with its own message
        parts = {}
    where = f"{parts.get('host', '')}:{parts.get('port', '')}/{parts.get('dbname', '')}"
    return hashlib.sha256(f"{hostname or socket.gethostname()}|{where}".encode()).hexdigest()[:16]


def channel_of(key: str) -> str:
    return f"imagend_wake_{key}"


class Relay:
    """The host's relay: a datagram socket its daemons tell their state to, and the LISTEN connection
    (started by `listen`, given the relay's on_notify and on_deaf) whose wake-ups it hands out."""

    def __init__(self, folder: Path, key: str, listen: Callable[[Callable[[str | None], None], Callable[[], None]],
                                                                  None]) -> None:
        self.path = folder / f"{key}.relay"
        self.listen = listen
        self.members: dict[str, float | None] = {}  # mailbox path -> idle since (monotonic), None: busy
        self.mailboxes: dict[str, str] = {}  # owner (images.locked_by) -> mailbox path
        # The relay's own daemon is woken by a call, not a datagram: a single daemon's pickup pays no hop.
        self.local: dict[str, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a dead relay's: the lock is ours, so the path is too
        self._socket.bind(str(self.path))
        self._socket.settimeout(0.5)
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="imagend-relay", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.listen(self.on_notify, self.on_deaf)

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)  # its receiving thread returns now, not at its timeout
        self._socket.close()
        self.thread.join(0.5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                data = self._socket.recv(MESSAGE_BYTES)
            except TimeoutError:
                continue
            except OSError:
                return
            state, _, rest = data.decode(errors="replace").partition(" ")
            member, _, owner = rest.partition(" ")
            with self._lock:
                if owner:
                    self.mailboxes[owner] = member
                if state == "idle":
                    if self.members.get(member) is None:
                        self.members[member] = time.monotonic()
                elif state == "busy":
                    self.members[member] = None
                elif state == "bye":
                    self.members.pop(member, None)
                    self.mailboxes.pop(owner, None)

    def on_notify(self, payload: str | None) -> None:
        """`payload`: the owners of this host's daemons to wake (the database chose them, and notes
        them woken); None (the LISTEN (re)connected, so wake-ups may have been missed): every idle
        one. A daemon it does not know yet (it has not said it is idle here) is made up for by
        another idle one."""
        with self._lock:
            idle = sorted((since, member) for member, since in self.members.items() if since is not None)
            if payload is None:
                chosen = [member for _, member in idle]
            else:
                named = [self.mailboxes.get(owner) for owner in payload.split()]
                chosen = [member for member in named if member is not None]
                spare = [member for _, member in idle if member not in chosen]
                chosen += spare[: len(named) - len(chosen)]
            for member in chosen:
                self.members[member] = None  # busy until it says otherwise
        for member in chosen:
            wake = self.local.get(member)
            if wake is not None:
                wake()
            else:
                self._send(member, WAKE)

    def on_deaf(self) -> None:
        """The LISTEN connection hears nothing (a transaction pooler between): every daemon polls."""
        with self._lock:
            members = list(self.members)
        for member in members:
            self._send(member, DEAF)

    def _send(self, member: str, message: bytes) -> None:
        try:
            self._socket.sendto(message, member)
        except OSError:  # its daemon is gone: forget it (it says `idle` again if it is not)
            with self._lock:
                self.members.pop(member, None)


class HostWakeups:
    """This daemon's part: its mailbox, its state told to the relay, and the election (the daemon
    holding the host's lock runs the Relay in a thread of its own)."""

    def __init__(
        self,
        folder: Path,
        key: str,
        owner: str,
        *,
        listen: Callable[[Callable[[str | None], None], Callable[[], None]], None],
        on_wake: Callable[[], None],
        on_deaf: Callable[[], None],
        stopping: threading.Event,
    ) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder = folder
        self.key = key
        self.owner = owner
        self.channel = channel_of(key)
        self.listen = listen
        self.on_wake = on_wake
        self.on_deaf = on_deaf
        self.stopping = stopping
        self.relay: Relay | None = None
        self.deaf = False
        self._idle = False
        self.mailbox = folder / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(self.mailbox))
        self._socket.settimeout(IDLE_REPEAT_SECONDS)
        self._lock_file = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._threads = [
            threading.Thread(target=self._receive, name="imagend-mailbox", daemon=True),
            threading.Thread(target=self._elect, name="imagend-relay-election", daemon=True),
        ]

    @property
    def idle(self) -> bool:
        return self._idle

    @property
    def hearing(self) -> bool:
        """Wake-ups reach this daemon (said in imagend_daemons.wake_channel; not when deaf: it polls)."""
        return not self.deaf

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """At once: the daemon's stop waits for nothing here (its threads are daemon threads)."""
        self._tell("bye")
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)  # the mailbox thread returns now
        self._socket.close()
        if self.relay is not None:
            self.relay.stop()
        os.close(self._lock_file)  # frees the lock: another daemon of the host becomes the relay
        with contextlib.suppress(FileNotFoundError):
            self.mailbox.unlink()

    def set_idle(self, idle: bool) -> None:
        if idle != self._idle:
            self._idle = idle
            self._tell("idle" if idle else "busy")

    def _tell(self, state: str) -> None:
        with contextlib.suppress(OSError):  # no relay yet (or it is changing hands): said again soon
            self._socket.sendto(f"{state} {self.mailbox} {self.owner}".encode(),
                                str(self.folder / f"{self.key}.relay"))

    def _receive(self) -> None:
        while not self.stopping.is_set():
            try:
                message = self._socket.recv(MESSAGE_BYTES)
            except TimeoutError:
                if self._idle:
                    self._tell("idle")
                continue
            except OSError:
                return
            if message == WAKE:
                self._woken()
            elif message == DEAF and not self.deaf:
                self.deaf = True
                self.on_deaf()

    def _woken(self) -> None:
        self._idle = False
        self.on_wake()

    def _elect(self) -> None:
        """Block on the host's lock (in the kernel: no polling) until the relay before dies or stops."""
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        except OSError:
            return  # closed at stop
        if self.stopping.is_set():
            return  # the stop closes the file, which frees the lock
        log.info("wake_relay_started", channel=self.channel, folder=str(self.folder))
        self.relay = Relay(self.folder, self.key, self.listen)
        self.relay.local[str(self.mailbox)] = self._woken
        self.relay.start()
