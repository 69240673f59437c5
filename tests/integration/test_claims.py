"""Claiming: many owners at once never share a row, and the claim uses the partial index."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC

from support.claim_plan import claim_plan
from support.db import insert_image

ROWS = 2000
OWNERS = 8


def test_concurrent_claims_never_hand_one_row_to_two_owners(conn, make_settings, make_repo):
    conn.execute("INSERT INTO images (prompt) SELECT 'prompt ' || n FROM generate_series(1, %s) AS n", [ROWS])
    settings = make_settings(DB_MAX_OPEN_CONNS="2", DB_MAX_IDLE_CONNS="1")
    repos = [make_repo(settings, owner=f"owner-{n}") for n in range(OWNERS)]
    claimed: dict[str, list[int]] = {repo.owner: [] for repo in repos}
    start = threading.Barrier(OWNERS)
    errors: list[BaseException] = []

    def worker(repo) -> None:
        try:
            start.wait()
            batch = 1
            while rows := repo.claim_batch("placeholder", batch):
                claimed[repo.owner].extend(row.id for row in rows)
                batch = batch % 7 + 1  # vary the batch size: 1..7
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(repo,)) for repo in repos]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    everything = [image_id for ids in claimed.values() for image_id in ids]
    counts = Counter(everything)
    assert [image_id for image_id, n in counts.items() if n > 1] == []  # no row handed out twice
    table = conn.execute("SELECT id, status, locked_by, attempts, lease_until FROM images").fetchall()
    assert set(counts) == {row["id"] for row in table}  # every row claimed exactly once
    assert len(everything) == ROWS
    owner_of = {image_id: owner for owner, ids in claimed.items() for image_id in ids}
    for row in table:
        assert row["status"] == "Generate"
        assert row["locked_by"] == owner_of[row["id"]]  # the row records the owner that got it
        assert row["attempts"] == 1
        assert row["lease_until"] is not None
    # Real contention: more than one owner got work.
    assert sum(1 for ids in claimed.values() if ids) > 1


def test_claim_takes_priority_then_age(conn, make_settings, make_repo):
    low = insert_image(conn, "low", priority=0)
    high = insert_image(conn, "high", priority=5)
    later_high = insert_image(conn, "later high", priority=5)
    repo = make_repo(make_settings())
    assert [r.id for r in repo.claim_batch("placeholder", 1)] == [high]
    assert [r.id for r in repo.claim_batch("placeholder", 1)] == [later_high]
    assert [r.id for r in repo.claim_batch("placeholder", 1)] == [low]
    assert repo.claim_batch("placeholder", 1) == []


def test_claim_leaves_rows_for_other_backends_and_future_rows(conn, make_settings, make_repo):
    mine = insert_image(conn, "null backend: the default")
    explicit = insert_image(conn, "explicit", backend="placeholder")
    insert_image(conn, "for the gpu", backend="local")
    insert_image(conn, "for the api", backend="fusionbrain")
    insert_image(conn, "later", run_after="2999-01-01T00:00:00Z")
    unknown = insert_image(conn, "unknown backend: claimed so that it fails", backend="dalle")
    repo = make_repo(make_settings())
    rows = repo.claim_batch("placeholder", 100)
    assert sorted(r.id for r in rows) == sorted([mine, explicit, unknown])
    assert {r.id: r.backend for r in rows}[mine] == "placeholder"  # the default is stamped on the row


def test_claim_uses_the_partial_index_on_a_table_of_finished_rows(conn):
    conn.execute(
        """INSERT INTO images (prompt, status, base64, finished_at)
           SELECT 'done ' || n, CASE WHEN n % 10 = 0 THEN 'Failed' ELSE 'ReadyToPublish' END, 'iVBOR', now()
           FROM generate_series(1, 100000) AS n"""
    )
    conn.execute("INSERT INTO images (prompt) SELECT 'waiting ' || n FROM generate_series(1, 20) AS n")
    conn.execute("ANALYZE images")
    params = {"now": None, "backend": "placeholder", "default_backend": "placeholder",
              "skip_backends": ["local", "fusionbrain"],
              "limit": 10, "owner": "explainer", "lease_seconds": 30.0, "loaded_models": None, "switch_seconds": 0,
              "mark_idle": True}
    plan = claim_plan(conn, params)
    assert "images_ready_idx" in plan, plan
    assert "Seq Scan on images" not in plan, plan  # imagend_daemons (a row per daemon) may be read whole
    # Without model affinity the claim's plan, cached for every call, reads the index in its order: no sort
    # of images (the picked rows' owners are locked in order after it: a sort of at most a batch, where any).
    assert "Sort" not in picking(plan), plan
    # And it is a plan, not a dry claim: nothing changed.
    assert conn.execute("SELECT count(*) AS n FROM images WHERE status = 'Generate'").fetchone()["n"] == 0


def picking(plan: str) -> str:
    """The part of the claim's plan that chooses the rows (CTE picked, up to the owners' counters)."""
    return plan[plan.index("CTE picked"):plan.index("CTE counters")]


def test_model_affinity_orders_within_a_priority_and_lets_a_row_go_after_its_bound(conn, make_settings, make_repo):
    from datetime import datetime, timedelta

    from imagend.db.repository import ModelPreference

    now = datetime(2030, 1, 1, tzinfo=UTC)
    other_old = insert_image(conn, "other, waited 90 s", model="b", run_after=now - timedelta(seconds=90))
    other_new = insert_image(conn, "other, waited 5 s", model="b", run_after=now - timedelta(seconds=5))
    loaded = insert_image(conn, "loaded", model="a", run_after=now - timedelta(seconds=1))
    default = insert_image(conn, "the default model", run_after=now - timedelta(seconds=1))
    urgent = insert_image(conn, "other, higher priority", model="b", priority=5, run_after=now)
    repo = make_repo(make_settings())
    prefer = ModelPreference(loaded=("a", ""), switch_seconds=60)
    order = [repo.claim_batch("placeholder", 1, now=now, prefer=prefer)[0].id for _ in range(5)]
    # Priority first; then the loaded models and the row past its 60 s; then the rest, each in id order.
    assert order == [urgent, other_old, loaded, default, other_new]


def test_a_chained_row_is_claimed_only_once_its_source_has_ended(conn, make_settings, make_repo):
    source = insert_image(conn, "the source")
    chained = insert_image(conn, "chained", init_image_id=source)
    itself = insert_image(conn, "its own source")
    conn.execute("UPDATE images SET reference_image_id = id WHERE id = %s", [itself])
    repo = make_repo(make_settings())
    first = repo.claim_batch("placeholder", 10)
    # The source, and the row naming itself (claimed so that it fails, not left waiting forever).
    assert sorted(row.id for row in first) == sorted([source, itself])
    assert repo.claim_batch("placeholder", 10) == []  # the source is in Generate: still waiting
    conn.execute("UPDATE images SET status = 'Failed', locked_by = NULL WHERE id = %s", [source])
    assert [row.id for row in repo.claim_batch("placeholder", 10)] == [chained]
