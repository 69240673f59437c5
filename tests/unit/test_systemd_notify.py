"""The systemd notifier against a real AF_UNIX datagram socket, as systemd binds it: every message
arrives exactly; no NOTIFY_SOCKET is a silent no-op; a socket that is gone is one warning, never
an exception into the daemon."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from imagend import logs
from imagend.operations.systemd_notify import STATUS_MAX_CHARS, Notifier


class FakeManager:
    """The service manager's end: a bound datagram socket, read as systemd reads it."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5.0)

    def receive(self) -> str:
        return self.sock.recv(65536).decode("utf-8")

    def nothing_more(self) -> bool:
        self.sock.settimeout(0.05)
        try:
            self.sock.recv(65536)
        except TimeoutError:
            return True
        return False


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes: pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="imagend-notify-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def manager(short_dir: Path) -> Iterator[tuple[FakeManager, str]]:
    path = str(short_dir / "notify")
    fake = FakeManager(path)
    yield fake, path
    fake.sock.close()


def test_each_message_arrives_exactly(manager):
    fake, path = manager
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.status("loading backends: local")
    notifier.ready()
    notifier.status("generating 3 rows on placeholder")
    notifier.watchdog()
    notifier.status("waiting for work")
    notifier.stopping()
    assert [fake.receive() for _ in range(6)] == [
        "STATUS=loading backends: local",
        "READY=1",
        "STATUS=generating 3 rows on placeholder",
        "WATCHDOG=1",
        "STATUS=waiting for work",
        "STOPPING=1",
    ]
    assert fake.nothing_more()


def test_ready_with_a_status_is_one_datagram(manager):
    fake, path = manager
    Notifier({"NOTIFY_SOCKET": path}).ready(status="waiting for work")
    assert fake.receive() == "READY=1\nSTATUS=waiting for work"


def test_the_environment_is_read_by_default(manager, monkeypatch):
    fake, path = manager
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    Notifier().watchdog()
    assert fake.receive() == "WATCHDOG=1"


def test_an_abstract_socket_name_works():
    name = f"imagend-test-{uuid.uuid4().hex}"
    fake = FakeManager("\0" + name)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready()
        notifier.status("waiting for work")
        assert [fake.receive(), fake.receive()] == ["READY=1", "STATUS=waiting for work"]
    finally:
        fake.sock.close()


def test_a_status_is_one_line_utf8_short_and_without_secrets(manager, monkeypatch):
    fake, path = manager
    secret = "sk-live-0123456789abcdef"
    monkeypatch.setattr(logs, "_secrets", (secret,))
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.status("waiting\nREADY=1\r\nSTOPPING=1")  # a newline would be a second assignment
    notifier.status("ждём работу — 3 rows")
    notifier.status(f"backend failed: key {secret}")
    notifier.status("x" * 1000)
    assert fake.receive() == "STATUS=waiting READY=1 STOPPING=1"
    assert fake.receive() == "STATUS=ждём работу — 3 rows"
    assert fake.receive() == "STATUS=backend failed: key ***"
    long = fake.receive()
    assert len(long) == len("STATUS=") + STATUS_MAX_CHARS and long.endswith("…")


def test_without_notify_socket_nothing_is_sent_or_logged():
    with capture_logs() as logged:
        notifier = Notifier({})
        notifier.ready()
        notifier.status("waiting for work")
        notifier.watchdog()
        notifier.stopping()
    assert not notifier.enabled
    assert notifier.watchdog_interval_seconds is None
    assert logged == []


def test_a_socket_that_is_gone_is_one_warning_and_no_exception(short_dir):
    path = str(short_dir / "gone")
    with capture_logs() as logged:
        notifier = Notifier({"NOTIFY_SOCKET": path})
        for _ in range(3):
            notifier.ready()
            notifier.status("waiting for work")
            notifier.watchdog()
            notifier.stopping()
    assert notifier.enabled
    assert [entry["event"] for entry in logged] == ["systemd_notify_failed"]
    assert logged[0]["log_level"] == "warning"
    assert logged[0]["socket"] == path
    assert "FileNotFoundError" in logged[0]["error"]


def test_a_socket_nobody_reads_any_more_is_one_warning(short_dir):
    path = str(short_dir / "notify")
    fake = FakeManager(path)
    fake.sock.close()  # bound, then closed: the file stays, nobody listens (ECONNREFUSED)
    with capture_logs() as logged:
        notifier = Notifier({"NOTIFY_SOCKET": path})
        notifier.ready()
        notifier.watchdog()
    assert [entry["event"] for entry in logged] == ["systemd_notify_failed"]


def test_an_address_that_is_no_socket_name_is_one_warning():
    with capture_logs() as logged:
        notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234", "WATCHDOG_USEC": "60000000"})
        notifier.ready()
        notifier.watchdog()
    assert not notifier.enabled
    assert notifier.watchdog_interval_seconds is None
    assert [entry["event"] for entry in logged] == ["systemd_notify_failed"]


@pytest.mark.parametrize(
    ("extra", "watchdog", "interval"),
    [
        ({"WATCHDOG_USEC": "60000000"}, 60.0, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}, 60.0, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None, None),  # another process's
        ({"WATCHDOG_USEC": "500000"}, 0.5, 0.25),
        ({}, None, None),
        ({"WATCHDOG_USEC": "0"}, None, None),
        ({"WATCHDOG_USEC": "sixty"}, None, None),
    ],
)
def test_the_watchdog_interval_is_half_of_watchdog_usec(manager, extra, watchdog, interval):
    _, path = manager
    notifier = Notifier({"NOTIFY_SOCKET": path, **extra})
    assert notifier.watchdog_seconds == watchdog
    assert notifier.watchdog_interval_seconds == interval


def test_no_watchdog_without_a_socket_to_ping():
    assert Notifier({"WATCHDOG_USEC": "60000000"}).watchdog_interval_seconds is None
