-- The claim: one statement picks waiting rows, stamps owner, lease and attempt, and returns them
-- (ClaimedRow). schema_claim.sql makes it the body of imagend_claim_batch, once for each order below;
-- p_* are that function's arguments (images_claim_batch in queries.sql passes them).

-- name: claim_statement
WITH picked AS (
    SELECT w.id, w.owner
    FROM images AS w
    WHERE w.status = 'ReadyToGenerate'
      AND w.run_after <= COALESCE(p_now, now())
      AND COALESCE(w.backend, p_default_backend) <> ALL (p_skip_backends)
      AND (w.backend IS NOT NULL OR NOT EXISTS (
               -- A row with no backend is the fleet's default's: the oldest live daemon's IMAGEND_BACKEND.
               -- A daemon started with another default claims none of them (it says so in its log).
               SELECT 1 FROM imagend_daemons AS elder
               WHERE elder.owner <> p_owner
                 AND elder.default_backend <> p_default_backend
                 AND elder.heartbeat_at > now() - interval '10 seconds'
                 AND elder.started_at < COALESCE((SELECT me.started_at FROM imagend_daemons AS me
                                                 WHERE me.owner = p_owner), now())))
      -- Paused (imagend -pause): claim nothing. Read once per claim, so a pause reaches every daemon at once.
      AND NOT EXISTS (SELECT 1 FROM imagend_paused WHERE imagend_paused.backend IN (p_backend, '*'))
      -- Chained on another row's image: wait until that row has ended (a failed source fails it then).
      AND (w.init_image_id IS NULL AND w.reference_image_id IS NULL
           OR NOT EXISTS (SELECT 1 FROM images AS source
                          WHERE source.id IN (w.init_image_id, w.reference_image_id) AND source.id <> w.id
                            AND source.status IN ('ReadyToGenerate', 'Generate')))
      -- Owners (schema_owners.sql): an owner at its plan's cap, out of rate or over budget is left out
      -- before the batch is chosen, so its backlog never blocks anyone. Read once per claim (the owners
      -- running something: a few per daemon); the row trigger images_owner_moved has the last word.
      AND (w.owner IS NULL OR w.owner <> ALL (ARRAY(SELECT blocked FROM imagend_owners_blocked() AS blocked)))
    -- Within a priority, owned rows in their fair-share order (vtime; anonymous rows first), as the
    -- ready index holds them.
    ORDER BY {{claim_order}}
    LIMIT p_limit
    FOR UPDATE SKIP LOCKED
), counters AS (
    -- The picked rows' owners' counters, locked in one order (by owner) before any row is admitted
    -- (images_owner_moved): two daemons claiming rows of the same owners never wait on each other in a
    -- cycle. Anonymous rows: nothing to lock. has_room is read from the row as locked (the latest
    -- committed), so a claim whose rows another daemon's claim just took the room for knows it.
    SELECT o.owner,
           p.max_running IS NULL
           OR o.running - COALESCE((SELECT sum(r.running) FROM imagend_owner_releases AS r
                                    WHERE r.owner = o.owner), 0) < p.max_running AS has_room
    FROM imagend_owners AS o
    LEFT JOIN imagend_plans AS p ON p.name = o.plan OR (o.plan IS NULL AND p.is_default)
    WHERE o.owner IN (SELECT picked.owner FROM picked)
    ORDER BY o.owner
    FOR UPDATE OF o
), found AS (
    -- Rows this claim takes: anonymous ones, or owned ones whose owner has room.
    SELECT EXISTS (SELECT 1 FROM picked WHERE picked.owner IS NULL)
           OR EXISTS (SELECT 1 FROM counters WHERE counters.has_room) AS rows
), idle AS (
    -- The daemon is idle (images_wake may wake it) from its first claim that finds nothing (when it
    -- holds nothing else: mark_idle), busy again from one that finds rows. Written on a change only.
    UPDATE imagend_daemons
    SET idle_since = CASE WHEN (SELECT rows FROM found) THEN NULL ELSE now() END
    WHERE owner = p_owner
      AND (idle_since IS NULL) = NOT (SELECT rows FROM found)
      AND (p_mark_idle OR (SELECT rows FROM found))
)
UPDATE images AS i
SET status       = 'Generate',
    backend      = COALESCE(i.backend, p_default_backend),
    locked_by    = p_owner,
    lease_until  = COALESCE(p_now, now()) + make_interval(secs => p_lease_seconds),
    attempts     = i.attempts + 1,
    started_at   = COALESCE(p_now, now()),
    progress     = 0,
    preview      = NULL,
    uuid         = NULL,
    submitted_at = NULL
FROM picked
WHERE i.id = picked.id
  AND NOT EXISTS (SELECT 1 FROM counters WHERE counters.owner IS NULL)  -- the counters first (never true)
-- The producer's columns come from their one table (db/columns.py: claimed_columns), in ClaimedRow's
-- order; params and loras as text, decoded per row in validation.py, so JSON that Postgres accepts but
-- Python cannot read (nested 10,000 deep, an integer of 5,000 digits) fails its own row, not the batch.
RETURNING i.id, i.attempts AS attempt, {{claimed_columns}}, i.cancel_requested,
          -- Epochs, not an interval: arithmetic on an infinite created_at fails on PostgreSQL 15 (the
          -- whole claim with it); NULL then, as for a year BC, so the wait metric stays finite.
          -- From when it fell due (a row scheduled for later did not wait before its time).
          CASE WHEN isfinite(greatest(i.created_at, i.run_after))
                    AND greatest(i.created_at, i.run_after) > '0001-01-01 00:00:00+00'
               THEN (extract(epoch FROM COALESCE(p_now, now()))
                     - extract(epoch FROM greatest(i.created_at, i.run_after)))::float8
          END AS waited_seconds;

-- name: claim_order_by_index
-- No model affinity (one model, or another backend): the ready index's order (images_ready_idx), which
-- a plan cached for every call reads from its start and stops at the batch.
w.priority DESC, w.vtime NULLS FIRST, w.id

-- name: claim_order_by_affinity
-- Model affinity (local backend, several models): p_loaded_models lists the models this daemon holds
-- loaded ('' for the default model); within a priority, their rows come first, and so do rows that
-- have waited p_switch_seconds or more, so affinity delays no row longer than that. No index holds this
-- order: the waiting rows of the top priority are sorted at each claim.
w.priority DESC,
CASE WHEN COALESCE(w.model, '') = ANY (p_loaded_models) THEN 0
     WHEN w.run_after <= COALESCE(p_now, now()) - make_interval(secs => p_switch_seconds) THEN 0
     ELSE 1 END,
w.vtime NULLS FIRST,
w.id
