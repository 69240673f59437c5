"""/healthz, /readyz and /metrics against real daemons: the metric values against the database
(N rows inserted and generated, the counters and gauges say N), and Postgres going away (the
daemon reaches it through tests/support/tcp_proxy.py, then the proxy closes): /readyz says 503 with
a JSON reason, /metrics still answers with `imagend_queue_stale 1`, the API says 503."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.db import TERMINAL, insert_image, wait_until
from support.http_daemon import HttpDaemon, own_database
from support.tcp_proxy import TcpProxy


@pytest.fixture
def own_db(server_url: str, template_db: str) -> Iterator[str]:
    with own_database(server_url, template_db) as url:
        yield url


def samples(daemon: HttpDaemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = daemon.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def test_the_probes_answer_and_the_metrics_count_the_rows(own_db):
    rows = 7
    with HttpDaemon(own_db) as daemon:
        health = daemon.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        ready = daemon.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready", "backends": ["placeholder"]}

        with psycopg.connect(own_db, autocommit=True) as conn:
            ids = [insert_image(conn, f"counted {n}") for n in range(rows)]
            wait_until(lambda: conn.execute("SELECT count(*) FROM images WHERE id = ANY(%s) AND status = ANY(%s)",
                                            [ids, list(TERMINAL)]).fetchone()[0] == rows, 20, what="rows to finish")
            assert conn.execute("SELECT count(*) FROM images WHERE status = 'ReadyToPublish'").fetchone()[0] == rows

        queue_done = ("imagend_queue_rows", (("backend", "placeholder"), ("status", "ReadyToPublish")))
        # The queue gauges are cached for 2 s: wait for a read after the rows finished.
        found = wait_until(lambda: (s := samples(daemon)).get(queue_done) == rows and s, 10,
                           what="the queue gauge to count the finished rows")
        assert found[("imagend_images_total", (("backend", "placeholder"), ("outcome", "done")))] == rows
        assert found[("imagend_queue_stale", ())] == 0
        assert not any(name == "imagend_queue_rows" and dict(labels)["status"] != "ReadyToPublish" and value
                       for (name, labels), value in found.items())


def test_with_postgres_down_readyz_is_503_and_metrics_say_stale(own_db):
    with psycopg.connect(own_db, autocommit=True) as conn:
        insert_image(conn, "waits for later", run_after="2999-01-01")
    with TcpProxy(own_db) as proxy, HttpDaemon(proxy.url_for(own_db)) as daemon:
        assert daemon.get("/readyz").status_code == 200
        waiting = ("imagend_queue_rows", (("backend", "placeholder"), ("status", "ReadyToGenerate")))
        assert wait_until(lambda: samples(daemon).get(waiting) == 1, 10, what="fresh gauges")
        proxy.close()  # every connection dropped, new ones refused

        def not_ready():
            answer = daemon.get("/readyz")
            return answer if answer.status_code == 503 else None

        answer = wait_until(not_ready, 20, interval=0.2, what="/readyz to say 503")
        assert answer.json()["status"] == "not ready"
        assert "database unavailable" in answer.json()["reason"]

        stale = wait_until(lambda: samples(daemon).get(("imagend_queue_stale", ())) == 1, 20, interval=0.2,
                           what="the queue gauges to be marked stale")
        assert stale
        # The last values read are still served beside the stale flag.
        assert samples(daemon)[waiting] == 1

        down = daemon.get("/v1/images/1")
        assert down.status_code == 503
        assert down.json()["error"].startswith("the database is not answering")
        assert daemon.get("/healthz").status_code in (200, 503)  # answers either way
        daemon.process.kill()  # a drain with the database gone only waits out its timeout
