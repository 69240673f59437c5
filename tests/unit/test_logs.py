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
    assert second["headers"] == {"X-Key": "Key ***"}  # still an object, not its repr


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


def test_redaction_keeps_the_json_types_of_lists_and_objects(capsys, restore_logging):
    # Any configured secret (a DATABASE_URL with a password counts) used to turn every list
    # and dict field into its Python repr: "backends": "['placeholder']".
    logs.configure(secrets=[SECRET], json=True)
    logs.get_logger().info(
        "daemon_started", backends=["placeholder", "local"], counts={"done": 3, "failed": 0},
        ids=(1, 2), nested={"urls": [f"postgresql://app:{SECRET}@db/images"], "ok": True}, nothing=None,
    )
    line = lines(capsys.readouterr().err)[0]
    assert line["backends"] == ["placeholder", "local"]
    assert line["counts"] == {"done": 3, "failed": 0}
    assert line["ids"] == [1, 2]
    assert line["nested"] == {"urls": ["postgresql://app:***@db/images"], "ok": True}
    assert line["nothing"] is None
