"""Issue 21, owners and plans in the database: the fair-share order, caps under concurrent claims and
across releases and rescues, rates, budgets, max_waiting, cost and usage, bad input. The claims are
made by repositories in this process (each one a daemon as far as the database knows); the daemons as
subprocesses are tests/acceptance/test_owners_fleet.py's."""

from __future__ import annotations

import threading
from collections import Counter

import psycopg
import pytest

from support.claim_plan import claim_plan
from support.db import insert_image


def add_rows(conn, owner: str | None, count: int, priority: int = 0) -> list[int]:
    rows = conn.execute(
        "INSERT INTO images (prompt, owner, priority) SELECT 'row ' || g, %s, %s FROM generate_series(1, %s) g "
        "RETURNING id", [owner, priority, count]).fetchall()
    return [row["id"] for row in rows]


def owner_of(conn, ids: list[int]) -> list[str | None]:
    rows = {r["id"]: r["owner"] for r in conn.execute("SELECT id, owner FROM images WHERE id = ANY(%s)", [ids])}
    return [rows[i] for i in ids]


def plan(conn, name: str, **values: object) -> None:
    columns = "".join(f", {column}" for column in values)
    marks = ", %s" * len(values)
    conn.execute(f"INSERT INTO imagend_plans (name{columns}) VALUES (%s{marks})", [name, *values.values()])


def running(conn, owner: str) -> int:
    row = conn.execute("SELECT running FROM imagend_owners_now WHERE owner = %s", [owner]).fetchone()
    return row["running"] if row else 0


def test_late_owners_are_served_round_robin_not_behind_a_backlog(conn, make_settings, make_repo):
    add_rows(conn, "A", 300)
    settings = make_settings()
    daemons = [make_repo(settings, owner=f"d{n}") for n in range(3)]
    started: list[int] = []
    for daemon in daemons:  # the fleet is busy with A when B and C arrive
        started += [row.id for row in daemon.claim_batch("placeholder", 1)]
    b = add_rows(conn, "B", 10)
    c = add_rows(conn, "C", 10)
    while len(started) < 100:
        for daemon in daemons:
            started += [row.id for row in daemon.claim_batch("placeholder", 1)]
    owners = owner_of(conn, started)
    a_40th = [n for n, owner in enumerate(owners) if owner == "A"][39]
    assert max(started.index(i) for i in b + c) < a_40th, owners[:60]


def test_weights_share_the_fleet_three_to_one(conn, make_settings, make_repo):
    plan(conn, "GOLD", weight=3)
    plan(conn, "BASIC", weight=1)
    conn.execute("INSERT INTO imagend_owners (owner, plan) VALUES ('gold', 'GOLD'), ('basic', 'BASIC')")
    add_rows(conn, "gold", 300)
    add_rows(conn, "basic", 300)
    repo = make_repo(make_settings())
    started = [row.id for _ in range(200) for row in repo.claim_batch("placeholder", 1)]
    counts = Counter(owner_of(conn, started))
    assert 3 * 0.8 <= counts["gold"] / counts["basic"] <= 3 * 1.2, counts


def test_priority_still_wins_across_owners(conn, make_settings, make_repo):
    add_rows(conn, "A", 50)
    urgent = add_rows(conn, "B", 1, priority=5)
    repo = make_repo(make_settings())
    assert [row.id for row in repo.claim_batch("placeholder", 1)] == urgent


def test_a_capped_owner_never_exceeds_its_cap_under_concurrent_claims(conn, make_settings, make_repo):
    plan(conn, "ONE", max_running=1)
    conn.execute("INSERT INTO imagend_owners (owner, plan) VALUES ('capped', 'ONE')")
    add_rows(conn, "capped", 50)
    add_rows(conn, "other", 50)
    settings = make_settings(DB_MAX_OPEN_CONNS="2", DB_MAX_IDLE_CONNS="1")
    repos = [make_repo(settings, owner=f"d{n}") for n in range(6)]
    barrier = threading.Barrier(len(repos))
    got: dict[str, list] = {repo.owner: [] for repo in repos}

    def claim(repo) -> None:
        barrier.wait()
        for _ in range(5):
            got[repo.owner] += repo.claim_batch("placeholder", 3)

    threads = [threading.Thread(target=claim, args=(repo,)) for repo in repos]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    generating = conn.execute("SELECT owner, count(*) AS n FROM images WHERE status = 'Generate' GROUP BY 1"
                              ).fetchall()
    by_owner = {row["owner"]: row["n"] for row in generating}
    assert by_owner.get("capped") == 1, by_owner
    assert by_owner.get("other") == 50  # the others filled the daemons meanwhile
    assert running(conn, "capped") == 1 and running(conn, "other") == 50


def test_the_counter_follows_every_way_out_of_generate(conn, make_settings, make_repo):
    plan(conn, "TWO", max_running=2)
    conn.execute("INSERT INTO imagend_owners (owner, plan) VALUES ('o', 'TWO')")
    add_rows(conn, "o", 10)
    repo = make_repo(make_settings())
    first = repo.claim_batch("placeholder", 5)
    assert len(first) == 2 and running(conn, "o") == 2
    assert repo.claim_batch("placeholder", 5) == []  # at its cap: nothing, and no row touched
    repo.fail_attempt(first[0].claim, "boom", retryable=True, backoff_seconds=0)  # back to the queue
    assert running(conn, "o") == 1
    conn.execute("UPDATE images SET cancel_requested = true WHERE id = %s", [first[1].id])
    repo.release([first[1].id])  # a cancel heard, then given back: Failed 'cancelled' or waiting, not running
    assert running(conn, "o") == 0
    again = repo.claim_batch("placeholder", 5)
    assert len(again) == 2
    conn.execute("DELETE FROM images WHERE id = %s", [again[0].id])
    assert running(conn, "o") == 1
    conn.execute("UPDATE images SET status = 'ReadyToGenerate', locked_by = NULL WHERE id = %s", [again[1].id])
    assert running(conn, "o") == 0


def test_a_saturated_owner_at_the_highest_priority_blocks_nobody(conn, make_settings, make_repo):
    plan(conn, "ONE", max_running=1)
    conn.execute("INSERT INTO imagend_owners (owner, plan) VALUES ('hog', 'ONE')")
    add_rows(conn, "hog", 10_000, priority=9)
    repo = make_repo(make_settings())
    assert len(repo.claim_batch("placeholder", 1)) == 1  # the hog at its cap now
    other = add_rows(conn, "other", 1)
    assert [row.id for row in repo.claim_batch("placeholder", 1)] == other  # the very next pass


def test_max_waiting_fails_the_insert_beyond_it(conn):
    plan(conn, "SMALL", max_waiting=3)
    conn.execute("INSERT INTO imagend_owners (owner, plan) VALUES ('o', 'SMALL')")
    ids = add_rows(conn, "o", 5)
    rows = conn.execute("SELECT status, error FROM images WHERE id = ANY(%s) ORDER BY id", [ids]).fetchall()
    assert [row["status"] for row in rows] == ["ReadyToGenerate"] * 3 + ["Failed"] * 2
    assert "already has 3 rows waiting" in rows[3]["error"] and "SMALL" in rows[3]["error"]


def test_a_default_plan_applies_to_unassigned_owners_and_a_deleted_plan_falls_back_to_it(conn, make_settings,
                                                                                         make_repo):
    plan(conn, "FREE", max_running=1, is_default=True)
    plan(conn, "VIP", max_running=5)
    conn.execute("INSERT INTO imagend_owners (owner, plan) VALUES ('vip', 'VIP')")
    add_rows(conn, "new", 5)
    add_rows(conn, "vip", 5)
    repo = make_repo(make_settings())
    rows = repo.claim_batch("placeholder", 10)
    assert Counter(owner_of(conn, [r.id for r in rows])) == {"new": 1, "vip": 5}
    conn.execute("DELETE FROM imagend_plans WHERE name = 'VIP'")  # its owners now have the default plan
    assert conn.execute("SELECT plan FROM imagend_owners WHERE owner = 'vip'").fetchone()["plan"] is None
    assert repo.claim_batch("placeholder", 10) == []  # both at FREE's cap of 1 (vip runs 5 already)


def test_bad_plans_are_refused_with_the_constraint_named(conn):
    for values in ({"max_running": 0}, {"max_running": -1}, {"weight": 0}, {"weight": float("nan")},
                   {"max_waiting": 0}, {"rate_per_minute": -1}, {"budget": 0}, {"budget_period": "year"}):
        with pytest.raises(psycopg.errors.CheckViolation):
            plan(conn, "BAD", **values)
    with pytest.raises(psycopg.errors.CheckViolation):
        plan(conn, "has space")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute("INSERT INTO imagend_owners (owner, plan) VALUES ('o', 'NO_SUCH_PLAN')")
    plan(conn, "D1", is_default=True)
    with pytest.raises(psycopg.errors.UniqueViolation):
        plan(conn, "D2", is_default=True)


def test_bad_owner_strings_end_failed_at_insert(conn):
    long = insert_image(conn, "long owner", owner="x" * 10_000)
    control = insert_image(conn, "control", owner="evil\nowner")
    rows = conn.execute("SELECT id, status, error FROM images WHERE id IN (%s, %s) ORDER BY id",
                        [long, control]).fetchall()
    assert [row["status"] for row in rows] == ["Failed", "Failed"]
    assert "1 to 200 characters, got 10000" in rows[0]["error"]
    assert "control characters" in rows[1]["error"]
    assert conn.execute("SELECT count(*) AS n FROM imagend_owners").fetchone()["n"] == 0


def test_cost_usage_and_budget(conn, make_settings, make_repo):
    conn.execute("INSERT INTO imagend_costs (backend, per_second, multiplier) VALUES ('placeholder', 2, 1.5)")
    plan(conn, "METERED", budget=5)
    conn.execute("INSERT INTO imagend_owners (owner, plan) VALUES ('m', 'METERED')")
    add_rows(conn, "m", 3)
    repo = make_repo(make_settings())
    first = repo.claim_batch("placeholder", 1)[0]
    conn.execute("UPDATE images SET status = 'ReadyToPublish', generation_seconds = 2, locked_by = NULL, "
                 "finished_at = now() WHERE id = %s", [first.id])
    # duration x base x multiplier: 2 s x 2 x 1.5
    assert conn.execute("SELECT cost FROM images WHERE id = %s", [first.id]).fetchone()["cost"] == 6.0
    usage = conn.execute("SELECT * FROM imagend_usage WHERE owner = 'm'").fetchone()
    assert (usage["done"], usage["gpu_seconds"], usage["cost"]) == (1, 2.0, 6.0)
    assert repo.claim_batch("placeholder", 1) == []  # over budget: not claimed (never half-charged)
    assert repo.fail_over_budget() == 2  # the processor pass ends the waiting ones Failed, with the reason
    errors = [r["error"] for r in conn.execute("SELECT error FROM images WHERE owner = 'm' AND status = 'Failed'")]
    assert len(errors) == 2 and all("over its plan METERED's budget: 6.00 of 5" in e for e in errors), errors
    late = insert_image(conn, "after the budget", owner="m")
    row = conn.execute("SELECT status, error FROM images WHERE id = %s", [late]).fetchone()
    assert row["status"] == "Failed" and "over its plan METERED's budget" in row["error"]


def test_rate_per_minute_spaces_the_starts(conn, make_settings, make_repo):
    plan(conn, "SLOW", rate_per_minute=2)
    conn.execute("INSERT INTO imagend_owners (owner, plan) VALUES ('s', 'SLOW')")
    add_rows(conn, "s", 5)
    repo = make_repo(make_settings())
    assert len(repo.claim_batch("placeholder", 5)) == 2  # the bucket's minute
    assert repo.claim_batch("placeholder", 5) == []
    blocked = conn.execute("SELECT blocked_until > now() AS b FROM imagend_owners WHERE owner = 's'").fetchone()
    assert blocked["b"]


def test_the_claim_plan_is_unchanged_without_owners_and_stays_on_the_index_with_them(conn):
    conn.execute("INSERT INTO images (prompt, status, finished_at) SELECT 'done', 'ReadyToPublish', now() "
                 "FROM generate_series(1, 50000)")
    add_rows(conn, None, 20)
    conn.execute("ANALYZE images")
    params = {"now": None, "backend": "placeholder", "default_backend": "placeholder",
              "skip_backends": ["local", "fusionbrain"], "limit": 10, "owner": "explainer", "lease_seconds": 30.0,
              "loaded_models": None, "switch_seconds": 0, "mark_idle": True}

    def plan_text() -> str:
        return claim_plan(conn, params)

    without = plan_text()
    for n in range(300):
        conn.execute("INSERT INTO imagend_owners (owner) VALUES (%s)", [f"o{n}"])
    conn.execute("INSERT INTO images (prompt, owner) SELECT 'w', 'o' || (g % 300) FROM generate_series(1, 20000) g")
    conn.execute("ANALYZE images")
    with_owners = plan_text()
    for text in (without, with_owners):
        assert "images_ready_idx" in text and "Seq Scan on images" not in text, text
        assert "Sort" not in picking(text), text
    # The same plan for the rows' choice, owners or not (the statistics aside).
    assert shape(picking(without)) == shape(picking(with_owners))


def picking(plan: str) -> str:
    """The part of the claim's plan that chooses the rows (as test_claims.py reads it)."""
    return plan[plan.index("CTE picked"):plan.index("CTE counters")]


def shape(plan: str) -> list[str]:
    return [line.split("(cost")[0].rstrip() for line in plan.splitlines() if "->" in line]


def test_a_finished_row_put_back_takes_a_new_place_in_the_fair_share(conn, make_settings, make_repo):
    first = add_rows(conn, "A", 1)[0]
    conn.execute("UPDATE images SET status = 'Failed', finished_at = now() WHERE id = %s", [first])
    add_rows(conn, "B", 3)
    conn.execute("UPDATE images SET status = 'ReadyToGenerate' WHERE id = %s", [first])  # after B's first, not first
    repo = make_repo(make_settings())
    order = owner_of(conn, [row.id for _ in range(4) for row in repo.claim_batch("placeholder", 1)])
    assert order[0] == "B" and "A" in order, order


def test_position_follows_the_fair_share(conn):
    add_rows(conn, "A", 50)
    late = add_rows(conn, "B", 1)[0]  # second in the fair share, not 51st
    ahead = conn.execute("SELECT ahead FROM imagend_position(%s)", [late]).fetchone()["ahead"]
    assert ahead <= 2, ahead


def test_a_claim_does_not_wait_long_on_an_owner_row_held_open(conn, db_url, make_settings, make_repo):
    import time

    from imagend.errors import RowLocked

    add_rows(conn, "held", 1)
    with psycopg.connect(db_url) as holder:  # an operator's transaction left open on the owner's row
        holder.execute("SELECT 1 FROM imagend_owners WHERE owner = 'held' FOR UPDATE")
        repo = make_repo(make_settings())
        started = time.monotonic()
        with pytest.raises(RowLocked):
            repo.claim_batch("placeholder", 1)
        assert time.monotonic() - started < 5  # the claim's lock_timeout (2 s): the pass fails and is retried
    assert len(repo.claim_batch("placeholder", 1)) == 1
