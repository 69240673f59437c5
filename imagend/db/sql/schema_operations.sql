-- imagend schema, operations part (applied right after schema.sql, idempotent as it is):
-- pause state, exact queue counts that a scrape reads without scanning `images`, and
-- queue position.
BEGIN;

SELECT pg_advisory_xact_lock(hashtext('imagend.schema'));

-- Paused backends ('*': all of them). Daemons claim nothing for a paused backend (the claim
-- reads this table in the same statement, so a pause reaches the fleet at its next claim) and
-- finish what they hold. `imagend -pause/-resume` write it; deleting a row wakes the daemons.
CREATE TABLE IF NOT EXISTS imagend_paused (
    backend   TEXT PRIMARY KEY,
    paused_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    paused_by TEXT
);

CREATE OR REPLACE TRIGGER imagend_paused_resumed
    AFTER DELETE ON imagend_paused
    FOR EACH STATEMENT EXECUTE FUNCTION imagend_wake_all();

-- What the broadcast wake-ups (channel imagend_new, every daemon at every insert) were, gone with them.
DROP FUNCTION IF EXISTS imagend_notify_new();
DROP FUNCTION IF EXISTS imagend_notify_sources_done();

-- Rows per (status, backend), exact, without counting `images` on every scrape: each statement
-- that changes `images` appends its net change here (statement triggers over transition tables:
-- one insert per statement, not per row, and no counter row that two daemons would queue on).
-- An INSERT's is appended by images_inserted (below), the trigger that also wakes daemons for its rows.
-- imagend_queue_counts folds the changes into imagend_queue_totals now and then (a scrape does).
-- backend '' stands for NULL (the daemon's default backend, filled in at the claim).
-- The trigger functions run as their owner (SECURITY DEFINER, with the owner's search_path), so that a
-- producer's role needs no rights on these tables (docs/running.md, "Database roles and privileges").
CREATE TABLE IF NOT EXISTS imagend_queue_totals (
    status  TEXT NOT NULL,
    backend TEXT NOT NULL,
    rows    BIGINT NOT NULL,
    PRIMARY KEY (status, backend)
);
CREATE TABLE IF NOT EXISTS imagend_queue_changes (
    status  TEXT NOT NULL,
    backend TEXT NOT NULL,
    rows    BIGINT NOT NULL
);

-- Every INSERT into images runs this one statement trigger: it appends the statement's queue-count change
-- and wakes daemons for its rows (imagend_wake, schema.sql). One trigger, not one per concern: each trigger's
-- call, its settings and its own pass over the transition table cost a producer's single-row INSERT ~60 us
-- of the database's time (bench/insert_cost.py). Here, not in schema.sql, so that it is made in the same
-- transaction as imagend_queue_changes, and replaces an earlier version's two triggers in one step: no row
-- is counted twice or missed, none inserted meanwhile goes without a wake-up.
-- Rows due now: one idle daemon each, per backend. Rows scheduled for later: one idle daemon, which reads
-- when they fall due after its (empty) claim and sets its timer (images_next_wakeups).
CREATE OR REPLACE FUNCTION imagend_rows_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET jit = off AS $$
BEGIN
    INSERT INTO imagend_queue_changes
    SELECT status, COALESCE(backend, ''), count(*) FROM inserted GROUP BY 1, 2;
    PERFORM imagend_wake(w.backend, greatest(w.due, least(w.later, 1)))
    FROM (SELECT backend, count(*) FILTER (WHERE run_after <= now()) AS due,
                 count(*) FILTER (WHERE run_after > now()) AS later
          FROM inserted
          WHERE status = 'ReadyToGenerate'
          GROUP BY backend) AS w;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS images_count_inserted ON images;  -- an earlier version's two INSERT triggers
DROP FUNCTION IF EXISTS imagend_count_inserted();
DROP TRIGGER IF EXISTS images_wake_inserted ON images;
DROP FUNCTION IF EXISTS imagend_wake_inserted();
CREATE OR REPLACE TRIGGER images_inserted
    AFTER INSERT ON images
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION imagend_rows_inserted();

CREATE OR REPLACE FUNCTION imagend_count_deleted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO imagend_queue_changes
    SELECT status, COALESCE(backend, ''), -count(*) FROM old_rows GROUP BY 1, 2;
    RETURN NULL;
END $$;

-- Net change per (status, backend): what the new rows count minus what the old rows counted. No
-- join of the two transition tables (unindexed: a nested loop over a 1,000-row claim cost the drain
-- over half its speed); updates that change neither status nor backend (lease renewals, progress)
-- cancel out and add nothing.
CREATE OR REPLACE FUNCTION imagend_count_updated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO imagend_queue_changes
    SELECT d.status, d.backend, sum(d.rows)
    FROM (SELECT n.status, COALESCE(n.backend, '') AS backend, count(*) AS rows FROM new_rows AS n GROUP BY 1, 2
          UNION ALL
          SELECT o.status, COALESCE(o.backend, ''), -count(*) FROM old_rows AS o GROUP BY 1, 2) AS d
    GROUP BY 1, 2
    HAVING sum(d.rows) <> 0;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION imagend_count_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM imagend_queue_changes;
    DELETE FROM imagend_queue_totals;
    RETURN NULL;
END $$;

-- The first time only: count what is there (an ancestor's table, or one of an earlier version),
-- with writers held off for that moment so that no row is counted twice or missed.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'images_count_updated') THEN
        LOCK TABLE images IN SHARE ROW EXCLUSIVE MODE;
        DELETE FROM imagend_queue_changes;
        DELETE FROM imagend_queue_totals;
        INSERT INTO imagend_queue_totals
        SELECT status, COALESCE(backend, ''), count(*) FROM images GROUP BY 1, 2;
        CREATE TRIGGER images_count_updated AFTER UPDATE ON images
            REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION imagend_count_updated();
        CREATE TRIGGER images_count_deleted AFTER DELETE ON images
            REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION imagend_count_deleted();
        CREATE TRIGGER images_count_truncated AFTER TRUNCATE ON images
            FOR EACH STATEMENT EXECUTE FUNCTION imagend_count_truncated();
    END IF;
END $$;

-- Folds the appended changes into the totals once there are many (one caller at a time; the
-- others skip). Called by every read of the counts and by every processor pass, so the changes
-- stay a few thousand rows whether or not anybody scrapes.
CREATE OR REPLACE FUNCTION imagend_fold_queue_changes() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT count(*) FROM (SELECT 1 FROM imagend_queue_changes LIMIT 1000) AS c) >= 1000
       AND pg_try_advisory_xact_lock(hashtext('imagend.queue_counts')) THEN
        WITH moved AS (DELETE FROM imagend_queue_changes RETURNING *),
             summed AS (SELECT m.status, m.backend, sum(m.rows) AS rows FROM moved AS m GROUP BY 1, 2)
        INSERT INTO imagend_queue_totals AS t
        SELECT * FROM summed
        ON CONFLICT ON CONSTRAINT imagend_queue_totals_pkey DO UPDATE SET rows = t.rows + EXCLUDED.rows;
        DELETE FROM imagend_queue_totals AS t WHERE t.rows = 0;
    END IF;
END $$;

-- The rows per (status, backend) now: the totals plus the changes not folded yet (as exact).
CREATE OR REPLACE FUNCTION imagend_queue_counts()
RETURNS TABLE (status TEXT, backend TEXT, rows BIGINT)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM imagend_fold_queue_changes();
    RETURN QUERY
    SELECT a.status, NULLIF(a.backend, ''), sum(a.rows)::bigint
    FROM (SELECT t.status, t.backend, t.rows FROM imagend_queue_totals AS t
          UNION ALL
          SELECT c.status, c.backend, c.rows FROM imagend_queue_changes AS c) AS a
    GROUP BY 1, 2
    HAVING sum(a.rows) <> 0
    ORDER BY 1, 2;
END $$;

-- Operators' view of the queue (imagend -status): one line per (status, backend). Counts from
-- imagend_queue_counts(); the oldest waiting row from the claim's partial index; the mean
-- generation time per backend among the newest 1,000 finished rows (read backwards on the primary
-- key: finished rows are never scanned whole, and no index on finished_at slows every finishing write).
-- One grouped read of the waiting rows and one of the recent ones, joined to the counts (hash joins on
-- the backend, '' for NULL): linear in the lines, where a subquery per line was quadratic with many
-- distinct backends (10,000 producer-written names took -status 21 s).
CREATE OR REPLACE VIEW images_queue_status AS
WITH recent AS (
    SELECT i.backend, i.generation_seconds FROM images AS i
    WHERE i.status = 'ReadyToPublish'
    ORDER BY i.id DESC
    LIMIT 1000
), oldest AS (
    -- Waiting since it fell due: a row scheduled for later (run_after, a retry's backoff) waits for nobody
    -- before its time.
    SELECT COALESCE(i.backend, '') AS backend,
           min(greatest(i.created_at, i.run_after)) FILTER (WHERE isfinite(greatest(i.created_at, i.run_after)))
               AS oldest
    FROM images AS i
    WHERE i.status = 'ReadyToGenerate' AND i.run_after <= now()
    GROUP BY 1
), pace AS (
    SELECT COALESCE(r.backend, '') AS backend, avg(r.generation_seconds) AS seconds FROM recent AS r GROUP BY 1
)
SELECT c.status,
       c.backend,
       c.rows,
       CASE WHEN c.status = 'ReadyToGenerate' THEN now() - o.oldest END AS oldest_waiting,
       CASE WHEN c.status = 'ReadyToPublish' THEN p.seconds END AS avg_generation_seconds
FROM imagend_queue_counts() AS c
LEFT JOIN oldest AS o ON o.backend = COALESCE(c.backend, '') AND c.status = 'ReadyToGenerate'
LEFT JOIN pace AS p ON p.backend = COALESCE(c.backend, '') AND c.status = 'ReadyToPublish';

-- Where a waiting row stands: how many rows a daemon will claim before it (same backend, higher
-- priority, or equal priority and first in the fair share or older — the claim's order — and due by the
-- time it is), and when it should start: not before its run_after, and not before the rows ahead are
-- done, from the generation times of its backend's rows among the newest 1,000 finished and the daemons
-- serving it.
-- NULL for a row that is not waiting. It runs as its owner: a producer's role reads imagend_daemons so.
CREATE OR REPLACE FUNCTION imagend_position(image_id INTEGER)
RETURNS TABLE (ahead BIGINT, estimated_start TIMESTAMPTZ)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
    WITH me AS (
        SELECT id, priority, COALESCE(vtime, '-infinity') AS vtime, backend, greatest(run_after, now()) AS due
        FROM images WHERE id = image_id AND status = 'ReadyToGenerate'
    ), ahead AS (
        -- Due before it (claimed first, whatever their priority), or due with it and first in the claim's order.
        SELECT count(*) AS n
        FROM images AS i, me
        WHERE i.status = 'ReadyToGenerate'
          AND i.backend IS NOT DISTINCT FROM me.backend
          AND (greatest(i.run_after, now()) < me.due
               OR greatest(i.run_after, now()) = me.due
                  AND (i.priority > me.priority
                       -- Within a priority, the ready index's order: owners' fair share (vtime; anonymous
                       -- rows first), then age.
                       OR (i.priority = me.priority
                           AND (COALESCE(i.vtime, '-infinity'), i.id) < (me.vtime, me.id))))
    ), pace AS (
        SELECT avg(r.generation_seconds) AS seconds
        FROM (SELECT i.backend, i.generation_seconds FROM images AS i
              WHERE i.status = 'ReadyToPublish'
              ORDER BY i.id DESC LIMIT 1000) AS r, me
        WHERE r.backend IS NOT DISTINCT FROM me.backend
    ), serving AS (
        SELECT greatest(count(*), 1) AS n FROM imagend_daemons AS d, me
        WHERE d.heartbeat_at > now() - interval '1 minute'
          AND (me.backend IS NULL OR me.backend = ANY (d.backends))
    )
    SELECT ahead.n,
           greatest(me.due, now() + make_interval(secs => COALESCE(pace.seconds, 0) * ahead.n / serving.n))
    FROM me, ahead, pace, serving
$$;

-- A waiting row a producer cancels (`UPDATE images SET cancel_requested = true`, the API's cancel) ends
-- Failed 'cancelled' in that very statement: no daemon need claim it first, so a row scheduled for
-- later (run_after) does not stay "cancelling" until its time, nor one whose backend no daemon serves.
-- So does a remote row between two polls (Generate, a task `uuid`, no owner): its result is never
-- fetched (Fusion Brain has no cancel: the task runs to its end on its side). A row a daemon holds is
-- that daemon's to stop: its next lease renewal hears the cancel, and the finishing write
-- (images_mark_done) ends it Failed 'cancelled' if the image came first. A row inserted already
-- cancelled is failed at its claim. The queue counts follow the status change; the terminal NOTIFY is
-- sent here (images_notify_done fires only for an UPDATE that sets `status` itself), at commit.
CREATE OR REPLACE FUNCTION imagend_cancel_waiting() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('imagend_done', json_build_object('id', NEW.id, 'status', 'Failed')::text);
    NEW.status := 'Failed';
    NEW.error := 'cancelled';
    NEW.finished_at := now();
    NEW.progress := NULL;
    NEW.preview := NULL;
    NEW.lease_until := NULL;
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER images_cancel_waiting
    BEFORE UPDATE OF cancel_requested ON images
    FOR EACH ROW
    WHEN (NEW.cancel_requested AND NOT OLD.cancel_requested AND NEW.status = OLD.status
          AND (OLD.status = 'ReadyToGenerate'
               OR OLD.status = 'Generate' AND OLD.uuid IS NOT NULL AND OLD.locked_by IS NULL))
    EXECUTE FUNCTION imagend_cancel_waiting();

COMMIT;

-- The OpenAI and AUTOMATIC1111 routes of the listener (http/compat.py, docs/compatible-apis.md): the
-- openai SDK retries a request that timed out or got a 408/409/429/5xx, with no idempotency key, only
-- `x-stainless-retry-count`. A retry is recognised by its key (a hash of the route, the credentials and
-- the body as parsed) and attached to the rows the first try queued, within IMAGEND_HTTP_RETRY_WINDOW;
-- kept here, so that a listener restarted between the tries still recognises it. The listener deletes
-- the keys older than the window (a minute apart at most, on the next request).
BEGIN;

SELECT pg_advisory_xact_lock(hashtext('imagend.schema'));

CREATE TABLE IF NOT EXISTS imagend_api_requests (
    key        TEXT PRIMARY KEY,
    image_ids  INTEGER[] NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS imagend_api_requests_created_idx ON imagend_api_requests (created_at);
-- POST /v1/images's Idempotency-Key (issue 23): the request body's SHA-256, so the same key with
-- another body is refused (422) rather than answered with the first body's rows. NULL: the
-- compatible APIs' keys, which name their request by its body already.
ALTER TABLE imagend_api_requests ADD COLUMN IF NOT EXISTS body_hash TEXT;

-- The rows the daemon `claimant` (default backend `fallback_backend`, not serving `skipped`) could
-- claim that are due by `due_before`: the claim's conditions but model affinity. What an idle daemon
-- asks, as EXISTS, when a wake-up may have been lost (daemons_heartbeat, images_claimable). A set-returning
-- SQL function (STABLE, no SET): the planner inlines it into its caller, so asking costs one statement,
-- not two (pg_stat_statements counts a function's own statement; a fleet's idle background is counted).
CREATE OR REPLACE FUNCTION imagend_claimable_rows(claimant TEXT, fallback_backend TEXT, skipped TEXT[],
                                                  due_before TIMESTAMPTZ) RETURNS SETOF INTEGER
LANGUAGE sql STABLE AS $$
    SELECT w.id FROM images AS w
    WHERE w.status = 'ReadyToGenerate'
      AND w.run_after <= due_before
      AND COALESCE(w.backend, fallback_backend) <> ALL (skipped)
      -- A row with no backend is the fleet's default's (claim.sql says why).
      AND (w.backend IS NOT NULL OR NOT EXISTS (
               SELECT 1 FROM imagend_daemons AS elder
               WHERE elder.owner <> claimant
                 AND elder.default_backend <> fallback_backend
                 AND elder.heartbeat_at > now() - interval '10 seconds'
                 AND elder.started_at < COALESCE((SELECT mine.started_at FROM imagend_daemons AS mine
                                                 WHERE mine.owner = claimant), now())))
      AND NOT EXISTS (SELECT 1 FROM imagend_paused AS p
                      WHERE p.backend IN (COALESCE(w.backend, fallback_backend), '*'))
      -- An owner at its cap, out of rate or over budget (schema_owners.sql): not claimable.
      AND (w.owner IS NULL OR w.owner <> ALL (ARRAY(SELECT blocked FROM imagend_owners_blocked() AS blocked)))
      AND (w.init_image_id IS NULL AND w.reference_image_id IS NULL
           OR NOT EXISTS (SELECT 1 FROM images AS source
                          WHERE source.id IN (w.init_image_id, w.reference_image_id) AND source.id <> w.id
                            AND source.status IN ('ReadyToGenerate', 'Generate')))
$$;

-- The same, as a boolean: what daemons of the previous version call, until they are all upgraded.
CREATE OR REPLACE FUNCTION imagend_claimable(claimant TEXT, fallback_backend TEXT, skipped TEXT[],
                                             due_before TIMESTAMPTZ) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM imagend_claimable_rows(claimant, fallback_backend, skipped, due_before))
$$;

COMMIT;
