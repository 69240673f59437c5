"""Log redaction: a configured secret never reaches a log line, whatever the field or the logger."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from imagend import logs

SECRET = "sk-live-0123456789abcdef"


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    logs.configure(secrets=[])
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_secret_in_any_field_is_starred(capsys, restore_logging):
    logs.configure(secrets=[SECRET], json=True)
    log = logs.get_logger()
    log.info("connecting", url=f"postgresql://app:{SECRET}@db/images", id=7, status="Generate", attempt=1)
    log.warning(f"event text with {SECRET} in it", headers={"X-Key": f"Key {SECRET}"})
    out = capsys.readouterr().err
    assert SECRET not in out
    first, second = lines(out)
    assert first["url"] == "postgresql://app:***@db/images"
    assert (first["id"], first["status"], first["attempt"]) == (7, "Generate", 1)  # numbers kept as numbers
    assert second["event"] == "event text with *** in it"
    assert "Key ***" in second["headers"]


def test_a_secret_in_a_traceback_is_starred(capsys, restore_logging):
    logs.configure(secrets=[SECRET], json=True)
    try:
        raise RuntimeError(f"auth failed for key {SECRET}")
    except RuntimeError:
        logs.get_logger().exception("backend_error", id=3)
    out = capsys.readouterr().err
    assert SECRET not in out
    assert "auth failed for key ***" in out


def test_standard_library_loggers_are_redacted_too(capsys, restore_logging):
    logs.configure(secrets=[SECRET], json=True)
    logging.getLogger("httpx").warning("HTTP Request: GET https://api.example/?key=%s", SECRET)
    out = capsys.readouterr().err
    assert SECRET not in out
    assert "key=***" in out


def test_console_lines_are_redacted(capsys, restore_logging):
    logs.configure(secrets=[SECRET], json=False)
    logs.get_logger().info("hello", token=SECRET)
    out = capsys.readouterr().err
    assert SECRET not in out and "token=***" in out


def test_redact_replaces_the_longest_secret_first(restore_logging):
    logs.configure(secrets=["abcd", "abcdefgh"])
    assert logs.redact("x abcdefgh y abcd") == "x *** y ***"


def test_without_secrets_lines_are_untouched(capsys, restore_logging):
    logs.configure(secrets=[], json=True)
    logs.get_logger().info("plain", value="nothing to hide")
    assert lines(capsys.readouterr().err)[0]["value"] == "nothing to hide"
