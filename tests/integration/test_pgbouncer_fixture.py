"""The `pgbouncer` fixture is a real PgBouncer in transaction pooling mode.

What these tests pin down is what a client behind it must live with: server backends are shared
between clients transaction by transaction, so session state does not follow a client. In
particular a LISTEN made through the bouncer never hears a NOTIFY, which is why the daemon takes a
separate, direct LISTEN URL; and psycopg's automatic prepared statements (prepare_threshold) collide
across clients on PgBouncer 1.18 (Debian 12), so clients behind it need prepare_threshold=None.
"""

from __future__ import annotations

import pwd
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from support.pgbouncer import PgBouncer


def _one(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def test_query_reaches_the_test_database_through_the_bouncer(pgbouncer: PgBouncer, db_url: str) -> None:
    url = pgbouncer.url_for(db_url)
    params = conninfo_to_dict(url)
    assert (params["host"], params["port"]) == ("127.0.0.1", str(pgbouncer.port))
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.info.port == pgbouncer.port
        assert _one(conn, "SELECT current_database()") == conninfo_to_dict(db_url)["dbname"]
        assert _one(conn, "SELECT current_user") == pgbouncer.user
        assert _one(conn, "SELECT count(*) FROM images") == 0  # the test's schema, not some other database


def test_bouncer_runs_as_an_unprivileged_user(pgbouncer: PgBouncer) -> None:
    """PgBouncer refuses root; under root the fixture drops to another user (see support.pgbouncer)."""
    assert pgbouncer.process is not None and pgbouncer.process.poll() is None
    assert Path(f"/proc/{pgbouncer.process.pid}").stat().st_uid == pwd.getpwnam(pgbouncer.run_as).pw_uid != 0


def test_admin_console_reports_transaction_pooling(pgbouncer: PgBouncer, db_url: str) -> None:
    with psycopg.connect(pgbouncer.url_for(db_url), autocommit=True) as conn:
        conn.execute("SELECT 1")
    dbname = conninfo_to_dict(db_url)["dbname"]
    with psycopg.connect(pgbouncer.admin_url, autocommit=True) as admin:
        config = {row[0]: row[1] for row in admin.execute("SHOW CONFIG").fetchall()}
        cur = admin.execute("SHOW POOLS")
        assert cur.description is not None
        pools = [dict(zip([c.name for c in cur.description], row, strict=True)) for row in cur.fetchall()]
    assert config["pool_mode"] == "transaction"
    assert config["listen_addr"] == "127.0.0.1"
    assert int(config["listen_port"]) == pgbouncer.port
    (pool,) = [p for p in pools if p["database"] == dbname and p["user"] == pgbouncer.user]
    assert pool["pool_mode"] == "transaction"


def test_clients_share_a_server_backend_between_transactions(pgbouncer: PgBouncer, db_url: str) -> None:
    url = pgbouncer.url_for(db_url)
    with psycopg.connect(url, autocommit=True) as a, psycopg.connect(url, autocommit=True) as b:
        pid_a = _one(a, "SELECT pg_backend_pid()")
        # a's backend went back to the pool when its statement ended; b, taking turns, is given it.
        assert _one(b, "SELECT pg_backend_pid()") == pid_a
        assert _one(a, "SELECT pg_backend_pid()") == pid_a
        # A session setting made through one client is seen by the other: it lives on the backend.
        # (Not application_name and the like: PgBouncer tracks those per client and re-sets them.)
        a.execute("SET imagend.marker = 'set-by-a'")
        assert _one(b, "SELECT current_setting('imagend.marker', true)") == "set-by-a"

    with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as other:
        # While a transaction is open its backend is the holder's alone: the other client gets another.
        held = _one(holder, "SELECT pg_backend_pid()")
        assert holder.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert _one(other, "SELECT pg_backend_pid()") != held
        holder.rollback()


def test_listen_through_the_bouncer_misses_notify(pgbouncer: PgBouncer, db_url: str) -> None:
    """Why the daemon needs a direct LISTEN URL: through transaction pooling the LISTEN lands on
    a backend that returns to the pool, and the listening client is never told of the NOTIFY."""
    channel = "imagend_pgbouncer_test"
    with psycopg.connect(db_url, autocommit=True) as direct_listener, \
            psycopg.connect(pgbouncer.url_for(db_url), autocommit=True) as bounced_listener:
        direct_listener.execute(f"LISTEN {channel}")
        bounced_listener.execute(f"LISTEN {channel}")
        with psycopg.connect(db_url, autocommit=True) as producer:
            producer.execute(f"NOTIFY {channel}, 'hello'")

        # The control: a direct LISTEN hears it.
        assert [n.payload for n in direct_listener.notifies(timeout=5.0, stop_after=1)] == ["hello"]
        # Through the bouncer: nothing, not even once the client runs another statement.
        assert list(bounced_listener.notifies(timeout=1.0, stop_after=1)) == []
        bounced_listener.execute("SELECT 1")
        assert list(bounced_listener.notifies(timeout=0.5, stop_after=1)) == []


def test_clients_behind_the_bouncer_need_prepare_threshold_none(pgbouncer: PgBouncer, db_url: str) -> None:
    """psycopg prepares a query after its 5th run (prepare_threshold=5) under a name unique per
    connection, not per backend: two clients sharing a backend both PREPARE "_pg3_0"."""
    url = pgbouncer.url_for(db_url)
    query = "SELECT %s::int + 1"
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as a, \
            psycopg.connect(url, autocommit=True, prepare_threshold=None) as b:
        for i in range(20):
            for conn in (a, b):
                assert conn.execute(query, [i]).fetchone() == (i + 1,)

    with psycopg.connect(url, autocommit=True) as a, psycopg.connect(url, autocommit=True) as b, \
            pytest.raises(psycopg.errors.DuplicatePreparedStatement):
        for i in range(20):
            for conn in (a, b):
                conn.execute(query, [i]).fetchone()
