"""`imagend -cron` under a service manager's notify socket (what systemd gives a Type=notify unit):
READY=1 once it can work, WATCHDOG=1 while its loops are alive, STATUS= lines, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import signal
import socket
import tempfile
import time
from pathlib import Path

from support.daemons import DaemonProcess
from support.db import base_env, insert_image, wait_until


def receive_all(sock: socket.socket, seconds: float, until: str | None = None) -> list[str]:
    messages: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until and messages and messages[-1].startswith(until)):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return messages


def test_ready_watchdog_status_and_stopping(db_url, conn):
    with tempfile.TemporaryDirectory(prefix="sd-") as tmp:  # short: AF_UNIX paths are at most 107 bytes
        path = str(Path(tmp) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            env = base_env(db_url, NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000")  # WatchdogSec=1s
            daemon = DaemonProcess(["-cron"], env)
            try:
                first = receive_all(sock, 30.0, until="READY=1")
                assert first and first[0].startswith("READY=1"), first  # before any other message
                wait_until(lambda: "daemon_started" in daemon.output(), 10, what="the start to be logged")
                image_id = insert_image(conn, "made under systemd")
                wait_until(lambda: conn.execute("SELECT status FROM images WHERE id = %s", [image_id])
                           .fetchone()["status"] == "ReadyToPublish", 10, what="the row to be generated")
                later = receive_all(sock, 2.0)
                assert later.count("WATCHDOG=1") >= 2, later  # every half WatchdogSec
                assert any(m.startswith("STATUS=") for m in later), later
                daemon.signal(signal.SIGTERM)
                wait_until(lambda: not daemon.alive(), 15, what="the daemon to stop")
                assert "STOPPING=1" in receive_all(sock, 1.0)
            finally:
                daemon.stop()
