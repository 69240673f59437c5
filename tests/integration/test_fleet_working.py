"""The fleet's "working" figure (dashboard, -status): the rows a daemon generates now, not the rows of
a batch it finished long ago (issue 25, item 11: the dashboard showed "0 (51 working)")."""

from __future__ import annotations

from imagend.db.operations import OperationsRepository

from support.daemons import InProcess
from support.db import fetch_image, insert_image


def test_a_finished_batch_counts_as_no_work(conn, make_settings, make_repo):
    settings = make_settings()
    repo = make_repo(settings)
    conn.execute("INSERT INTO imagend_daemons (owner, host, pid, version, backends) "
                 "VALUES (%s, 'here', 1, 'test', '{placeholder}')", [repo.owner])
    ids = [insert_image(conn, f"row {n}") for n in range(3)]
    run = InProcess(repo, settings)
    run.generator.run_once()
    run.close()
    assert {fetch_image(conn, i)["status"] for i in ids} == {"ReadyToPublish"}
    ops = OperationsRepository(repo.pool, dead_after_seconds=60)
    [me] = [d for d in ops.daemons() if d.owner == repo.owner]
    assert me.working == 0
    # A row of that batch still in Generate under this owner (a long step) counts, others do not.
    conn.execute("UPDATE images SET status = 'Generate', locked_by = %s WHERE id = %s", [repo.owner, ids[0]])
    conn.execute("UPDATE imagend_daemons SET working = %s WHERE owner = %s", [ids, repo.owner])
    [me] = [d for d in ops.daemons() if d.owner == repo.owner]
    assert me.working == 1
