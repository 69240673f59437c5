"""Who may write and read over HTTP (auth.py), against real daemons: writes need IMAGEND_HTTP_TOKEN
set (403 otherwise) and carried as `Authorization: Bearer …` (401 missing, wrong, or wrong only in
its last character); reads are open on a loopback address and need the token elsewhere; the probes
answer anyone. A refused write changes nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from support.db import insert_image
from support.http_daemon import TOKEN, HttpDaemon, own_database

WRITES = ["/v1/images", "/v1/images/{id}/cancel", "/v1/images/{id}/retry", "/v1/backends/placeholder/pause",
          "/v1/backends/*/pause", "/v1/backends/placeholder/resume"]
READS = ["/v1/images/{id}", "/v1/images/{id}/image", "/v1/backends", "/openapi.json", "/metrics"]
BAD_HEADERS = [
    {},
    {"Authorization": "Bearer wrong-token-0123456789"},
    {"Authorization": f"Bearer {TOKEN[:-1]}{chr(ord(TOKEN[-1]) + 1)}"},  # differs in the last character only
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
    {"Authorization": "Bearer"},
    {"Authorization": f"bearer  x{TOKEN}"},
    {"X-Token": TOKEN},
]


@pytest.fixture(scope="module")
def module_db(server_url: str, template_db: str) -> Iterator[str]:
    with own_database(server_url, template_db) as url:
        yield url


@pytest.fixture(scope="module")
def db(module_db: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(module_db, autocommit=True, row_factory=dict_row) as connection:
        yield connection


@pytest.fixture(scope="module")
def failed_id(db: Any) -> int:
    """A Failed row that a retry would change, and a waiting one a cancel would."""
    return insert_image(db, "failed already", status="Failed", error="boom")


def state(db: Any) -> tuple[Any, ...]:
    rows = db.execute("SELECT id, status, cancel_requested, attempts, error FROM images ORDER BY id").fetchall()
    pauses = db.execute("SELECT backend FROM imagend_paused").fetchall()
    return tuple(tuple(r.values()) for r in rows), tuple(p["backend"] for p in pauses)


def test_writes_without_the_right_token_are_401_and_change_nothing(module_db, db, failed_id):
    with HttpDaemon(module_db) as daemon:
        before = state(db)
        for headers in BAD_HEADERS:
            for path in WRITES:
                answer = daemon.post(path.format(id=failed_id), auth=False, headers=headers,
                                     json={"prompt": "not allowed"})
                assert answer.status_code == 401, (path, headers, answer.text)
                assert answer.headers["www-authenticate"] == "Bearer"
                assert "Authorization: Bearer" in answer.json()["error"]
        assert state(db) == before
        # The right token works (and the token is never echoed back).
        answer = daemon.post("/v1/images", json={"prompt": "allowed"})
        assert answer.status_code == 201
        assert TOKEN not in daemon.process.output()
        # Reads are open on a loopback address.
        for path in READS:
            assert daemon.get(path.format(id=failed_id)).status_code in (200, 404), path


def test_a_50_mb_write_without_the_token_is_refused_before_its_body_is_read(module_db, db):
    with HttpDaemon(module_db) as daemon:
        before = state(db)
        started = time.monotonic()
        answer = daemon.post("/v1/images", auth=False, content=b"x" * (50 * 1024 * 1024))
        assert answer.status_code == 401
        assert time.monotonic() - started < 5.0
        assert state(db) == before


def test_without_a_token_configured_writes_are_off(module_db, db, failed_id):
    with HttpDaemon(module_db, token=None) as daemon:
        before = state(db)
        for headers in [{}, {"Authorization": f"Bearer {TOKEN}"}]:
            for path in WRITES:
                answer = daemon.post(path.format(id=failed_id), auth=False, headers=headers, json={"prompt": "x"})
                assert answer.status_code == 403, (path, answer.text)
                assert answer.json()["error"] == "writes over HTTP are off: set IMAGEND_HTTP_TOKEN to allow them"
        assert state(db) == before
        assert daemon.get(f"/v1/images/{failed_id}").status_code == 200


def test_reads_on_a_non_loopback_address_need_the_token(module_db, failed_id):
    with HttpDaemon(module_db, host="0.0.0.0") as daemon:
        for path in READS:
            url = path.format(id=failed_id)
            for headers in BAD_HEADERS:
                answer = daemon.get(url, headers=headers)
                assert answer.status_code == 401, (url, headers)
                assert "need the token" in answer.json()["error"]
            assert daemon.get(url, headers=daemon.auth).status_code in (200, 404), url
        # The probes answer anyone: load balancers and systemd ask them.
        assert daemon.get("/healthz").status_code == 200
        assert daemon.get("/readyz").status_code == 200


def test_a_browser_gets_a_read_cookie_for_the_token_that_never_writes(module_db, db, failed_id):
    with HttpDaemon(module_db, host="0.0.0.0") as daemon:
        assert daemon.post("/session", auth=False).status_code == 401  # no token, no cookie
        answer = daemon.post("/session")
        assert answer.status_code == 204
        daemon.client.cookies.clear()  # sent by hand below
        cookie = answer.cookies.get("imagend_read")
        assert cookie and TOKEN not in cookie  # a value derived from the token, not the token
        assert "httponly" in answer.headers["set-cookie"].lower()
        assert "samesite=strict" in answer.headers["set-cookie"].lower()

        def with_cookie(value: str) -> dict[str, str]:
            return {"Cookie": f"imagend_read={value}"}

        assert daemon.get(f"/images/{failed_id}", headers=with_cookie(cookie)).status_code == 200
        assert daemon.get(f"/images/{failed_id}", headers=with_cookie(cookie[:-1] + "0")).status_code == 401
        before = state(db)
        refused = daemon.post(f"/v1/images/{failed_id}/retry", auth=False, headers=with_cookie(cookie))
        assert refused.status_code == 401
        assert state(db) == before
