"""Issue 25, item 12: a fleet whose daemons disagree on IMAGEND_BACKEND. A row with no backend is the
fleet's default's, the oldest live daemon's; a daemon started with another default claims none of them
(a placeholder daemon started by mistake against a production table makes no placeholder images for real
requests) and says so in its log."""

from __future__ import annotations

import structlog

from imagend.db.rows import DaemonInfo
from imagend.maintenance.liveness import Liveness

from support.db import fetch_image, insert_image


def test_a_daemon_with_another_default_claims_no_null_backend_row(conn, make_settings, make_repo):
    elder = make_repo(make_settings(IMAGEND_BACKEND="placeholder"), owner="elder:1:a")
    elder.heartbeat(DaemonInfo("host-a", 1, "test", ["placeholder"]), served=["placeholder"])
    newcomer = make_repo(make_settings(IMAGEND_BACKEND="fusionbrain", IMAGEND_BACKENDS="placeholder,fusionbrain",
                                       FUSION_BRAIN_API_KEY="k", FUSION_BRAIN_SECRET_KEY="s"), owner="new:2:b")
    beat = newcomer.heartbeat(DaemonInfo("host-b", 2, "test", ["placeholder", "fusionbrain"]),
                              served=["placeholder", "fusionbrain"])
    assert beat.fleet_default == "placeholder"
    null_row = insert_image(conn, "no backend: the fleet's default's")
    named = insert_image(conn, "named", backend="placeholder")
    claimed = {row.id for name in ("fusionbrain", "placeholder") for row in newcomer.claim_batch(name, 10)}
    assert claimed == {named}  # the named row, not the NULL one
    assert [row.id for row in elder.claim_batch("placeholder", 10)] == [null_row]
    assert fetch_image(conn, null_row)["backend"] == "placeholder"

    with structlog.testing.capture_logs() as logs:
        Liveness(newcomer, DaemonInfo("host-b", 2, "test", ["fusionbrain"]), on_rescue_due=lambda _: None).run_once()
    disagreements = [entry for entry in logs if entry["event"] == "default_backend_disagrees"]
    assert [entry["fleet_default"] for entry in disagreements] == ["placeholder"]


def test_agreeing_daemons_share_null_backend_rows(conn, make_settings, make_repo):
    first = make_repo(make_settings(), owner="one:1:a")
    second = make_repo(make_settings(), owner="two:2:b")
    for n, repo in enumerate((first, second)):
        repo.heartbeat(DaemonInfo(f"host-{n}", n, "test", ["placeholder"]), served=["placeholder"])
    rows = [insert_image(conn, f"row {n}") for n in range(2)]
    got = [row.id for repo in (second, first) for row in repo.claim_batch("placeholder", 1)]
    assert sorted(got) == rows
