"""When the database cannot be used, the CLI says what libpq said and where it tried, never the
password: exit 1 when the server cannot be reached or refuses us, exit 2 naming the setting when
the connection string itself is bad."""

from __future__ import annotations

import socket

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from support.daemons import run_imagend
from support.db import base_env

PASSWORD = "Hunter2-db-Secret"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_clean(stderr: str) -> None:
    assert PASSWORD not in stderr
    assert "Traceback" not in stderr


def test_a_wrong_port_says_connection_refused_and_where(db_url):
    port = closed_port()
    url = f"postgresql://imagend:{PASSWORD}@127.0.0.1:{port}/images_prod"
    result = run_imagend(["-generator"], base_env(db_url, DATABASE_URL=url), timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Connection refused" in result.stderr
    for where in ("host 127.0.0.1", f"port {port}", "database images_prod", "user imagend", "DATABASE_URL"):
        assert where in result.stderr
    assert_clean(result.stderr)


def test_a_database_that_does_not_exist_is_named(db_url):
    params = conninfo_to_dict(db_url)
    params.update(dbname="no_such_database_here", password=PASSWORD)
    result = run_imagend(["-status"], base_env(db_url, DATABASE_URL=make_conninfo(**params)), timeout=60)
    assert result.returncode == 1, result.stderr
    assert 'database \\"no_such_database_here\\" does not exist' in result.stderr  # libpq's words, in a JSON line
    assert "database no_such_database_here" in result.stderr
    assert_clean(result.stderr)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{PASSWORD}@[::1:5432/db",  # unclosed IPv6 bracket
        f"postgresql://u:{PASSWORD}%zz@db.example/images",  # a bad percent-escape in the password
        f"postgresql://u:{PASSWORD}@db.example/images?sslmod=require",  # a misspelt parameter
        f"host='db.example password={PASSWORD}",  # an unterminated quote
    ],
)
def test_a_malformed_database_url_exits_2_naming_it_without_the_password(db_url, url):
    result = run_imagend(["-generator"], base_env(db_url, DATABASE_URL=url))
    assert result.returncode == 2, result.stderr
    assert "DATABASE_URL" in result.stderr and "not a valid libpq URL" in result.stderr
    assert_clean(result.stderr)


@pytest.mark.parametrize(
    ("name", "setting"),
    [("DATABASE_URL", "sslmode='bogus'"), ("DATABASE_URL", "port='fivefourthreetwo'"),
     ("IMAGEND_LISTEN_URL", "sslmode='bogus'")],
)
def test_a_bad_sslmode_or_port_inside_a_url_exits_2_naming_the_setting(db_url, name, setting):
    key, value = setting.split("=")
    url = f"postgresql://u:{PASSWORD}@127.0.0.1:5432/images?{key}={value.strip(chr(39))}"
    if key == "port":
        url = f"postgresql://u:{PASSWORD}@127.0.0.1:{value.strip(chr(39))}/images"
    result = run_imagend(["-generator"], base_env(db_url, **{name: url}))
    assert result.returncode == 2, result.stderr
    assert name in result.stderr and setting in result.stderr
    assert_clean(result.stderr)
