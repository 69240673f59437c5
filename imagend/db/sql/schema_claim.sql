-- The claim as a function (its statement: claim.sql). PL/pgSQL keeps a plan of each statement it runs
-- for the rest of the session, on the server: a claim is planned once per connection instead of at every
-- call (the statement's planning cost more than its execution: about 0.9 against 0.5 ms for one row), and
-- that holds behind a transaction pooler too, where the client's prepared statements would reach another
-- server connection. Two statements, one per order (claim.sql): the cached plan of the ready index's order
-- reads images_ready_idx and stops at the batch whatever the values; model affinity's order has no index
-- and is sorted per call, as before.
-- force_generic_plan: the plan made once, at the first call, not after five planned ones and then only if the
-- planner rates it no dearer than those (they know the values, so it may not: then every call is planned, and
-- a mostly idle daemon's connection never gets past its first five). tests/support/claim_plan.py reads
-- this very plan: the ready index's order, no sort.
-- enable_sort off: the claim must read the waiting rows' index in its order and stop at the batch. Planned
-- on statistics stale after a burst of inserts, it took a bitmap of every waiting row and sorted them all
-- (on disk): a claim's cost grew with the backlog.
-- lock_timeout (statements.py's LOCK_TIMEOUT: db/sql may not import it, a cycle): the claim waits on nothing
-- but its rows' owners' counters (docs/owners.md), which other claims hold for milliseconds; an operator's
-- transaction left open on imagend_owners fails the pass (retried later) instead of stalling the daemon.
-- synchronous_commit off, for the rest of the caller's transaction (set_config(…, true) in the body: a SET
-- clause would end with the function): a claim's WAL flush was a third of a row's pickup. Only a crash of
-- the Postgres server can lose a claim, and it loses nothing with it: its rows wait again and are claimed
-- again, and the daemon that began them finds them no longer its own at its next (guarded) write. The same
-- reasoning makes begin_work non-durable (statements.py).
-- Its result is ClaimedRow (db/columns.py: claimed_types): a new producer column changes it, which CREATE OR
-- REPLACE cannot do, so the function is made again whenever the schema changes.
BEGIN;

SELECT pg_advisory_xact_lock(hashtext('imagend.schema'));

DROP FUNCTION IF EXISTS imagend_claim_batch;
CREATE FUNCTION imagend_claim_batch(
    p_now TIMESTAMPTZ,               -- NULL: the database clock (a fixed time in tests)
    p_backend TEXT,                  -- the backend claiming
    p_default_backend TEXT,          -- what a row with no backend gets (this daemon's IMAGEND_BACKEND)
    p_skip_backends TEXT[],          -- the backends it does not serve
    p_limit INTEGER,                 -- rows at most
    p_owner TEXT,                    -- this daemon (imagend_daemons.owner)
    p_lease_seconds DOUBLE PRECISION,
    p_loaded_models TEXT[],          -- model affinity (claim.sql); NULL: none
    p_switch_seconds DOUBLE PRECISION,
    p_mark_idle BOOLEAN              -- finding nothing makes this daemon idle (one to wake)
) RETURNS TABLE (id INTEGER, attempt INTEGER, {{claimed_types}}, cancel_requested BOOLEAN,
                 waited_seconds DOUBLE PRECISION)
LANGUAGE plpgsql SET enable_sort = off SET lock_timeout = '2s' SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    IF p_loaded_models IS NULL THEN
        RETURN QUERY {{claim_by_index}};
    ELSE
        RETURN QUERY {{claim_by_affinity}};
    END IF;
END $$;

COMMIT;
