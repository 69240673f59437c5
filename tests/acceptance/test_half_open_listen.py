"""A LISTEN connection left half-open (the network dropped without a FIN: nothing arrives and
nothing fails) is found deaf by the listener's periodic probe and replaced, so an idle daemon
whose interval is 5 minutes still claims a new row within seconds."""

from __future__ import annotations

from support.daemons import DaemonProcess
from support.db import base_env, insert_image, wait_until
from support.tcp_proxy import TcpProxy

CHECK_SECONDS = 1.0
PROBE_SECONDS = 3.0  # imagend.queue.listener.PROBE_SECONDS


def test_a_half_open_listen_connection_is_noticed_and_replaced(db_url, conn, tmp_path):
    with TcpProxy(db_url) as proxy:
        env = base_env(db_url, IMAGEND_LISTEN_URL=proxy.url_for(db_url), IMAGEND_LISTEN_CHECK=str(CHECK_SECONDS),
                       IMAGEND_GENERATOR_INTERVAL="300", IMAGEND_PROCESSOR_INTERVAL="600")
        daemon = DaemonProcess(["-cron"], env, tmp_path)
        try:
            wait_until(lambda: "daemon_started" in daemon.output(), 30, what="the daemon to start")
            first = insert_image(conn, "heard through the proxy")
            wait_until(lambda: claimed(conn, first), 5, what="a pickup through the proxy")
            proxy.freeze()
            image_id = insert_image(conn, "sent while the LISTEN connection is half-open")
            wait_until(lambda: claimed(conn, image_id), CHECK_SECONDS + PROBE_SECONDS + 5,
                       what="the row, once the deaf connection is replaced (or by the idle heartbeat's look)")
            wait_until(lambda: "listen_connection_deaf" in daemon.output(), CHECK_SECONDS + PROBE_SECONDS + 5,
                       what="the listener to find its connection deaf")
        finally:
            code = daemon.stop()
    assert code == 0, daemon.output()
    assert "listen_connection_deaf" in daemon.output()


def claimed(conn, image_id: int) -> bool:
    return conn.execute("SELECT started_at IS NOT NULL AS c FROM images WHERE id = %s", [image_id]).fetchone()["c"]
