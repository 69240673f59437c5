-- Every statement the daemon runs. Blocks are named `-- name: <noun>_<verb>` and
-- loaded once into a dict by imagend/db/sql/__init__.py; imagend/db/repository.py gives each
-- one a typed function. Every status change is guarded by the status and owner it
-- expects, so a write for a row someone else owns now matches nothing. Writes that end
-- a claim also carry its attempt number: a fence, so that the late result of an earlier
-- claim of the same row by this same daemon (the producer re-queued it meanwhile) can
-- never overwrite the current one.
-- %(now)s is NULL in production (the database clock) and a fixed time in tests.
-- Arrays travel in binary (%(name)b): psycopg dumps a 1,000-element list in text at about a
-- microsecond an element, in binary at a quarter of that, and a batch sends a dozen of them.

-- name: images_claim_batch
-- Pick waiting rows, stamp owner, lease and attempt, commit: imagend_claim_batch (schema_claim.sql; its
-- statement in claim.sql), planned once per connection. It returns ClaimedRow's columns.
SELECT * FROM imagend_claim_batch(%(now)s::timestamptz, %(backend)s::text, %(default_backend)s::text,
                                  %(skip_backends)b::text[], %(limit)s::integer, %(owner)s::text,
                                  %(lease_seconds)s::float8, %(loaded_models)b::text[], %(switch_seconds)s::float8,
                                  %(mark_idle)s::boolean);

-- name: images_input_image
-- One image column's text of one row (init_image, mask_image or reference_image), read when validation
-- decodes it: the claim returns their lengths only, so a batch never holds every row's images at once.
SELECT CASE %(column)s WHEN 'init_image' THEN init_image
                       WHEN 'mask_image' THEN mask_image
                       WHEN 'reference_image' THEN reference_image END
FROM images
WHERE id = %(id)s;

-- name: images_source_images
-- The rows named by *_image_id of claimed rows: their state, and their image where the row holds it
-- (base64) or where storage does (output_path, output_url).
SELECT id, status, base64, output_path, output_url, error
FROM images
WHERE id = ANY (%(ids)b::int[]);

-- name: images_mark_done
-- Ends a whole batch in one statement; returns the ids that were still ours, each with the status it
-- ended in. The image is already in storage (when there is a target) before this runs: a finished row
-- always has its image. A row a producer cancelled meanwhile (a remote task runs to its end on the
-- service's side; a local one may finish between two steps) ends Failed 'cancelled' instead, without
-- its image: the cancel wins, and the caller deletes what it stored for it.
-- Waiting rows chained on the rows it ended are woken by images_wake_chained, next, in one probe for the
-- batch: the row trigger images_wake_dependents, which does it for every other end, stands aside for
-- this statement (imagend.wake_dependents = off, statements.py): its plpgsql call and probe per row
-- cost a 1,000-row finish 8 of its 18 ms.
UPDATE images AS i
SET status             = CASE WHEN i.cancel_requested THEN 'Failed' ELSE 'ReadyToPublish' END,
    base64             = CASE WHEN i.cancel_requested THEN NULL ELSE d.base64 END,
    seed               = COALESCE(d.seed, i.seed),
    output_path        = CASE WHEN i.cancel_requested THEN i.output_path ELSE d.output_path END,
    output_url         = CASE WHEN i.cancel_requested THEN i.output_url ELSE d.output_url END,
    thumbnail_url      = CASE WHEN i.cancel_requested THEN i.thumbnail_url ELSE d.thumbnail_url END,
    thumbnail          = CASE WHEN i.cancel_requested THEN i.thumbnail ELSE d.thumbnail END,
    format             = CASE WHEN i.cancel_requested THEN i.format ELSE d.format END,
    generation_seconds = d.generation_seconds,
    warning            = COALESCE(d.warning, i.warning),
    progress           = CASE WHEN i.cancel_requested THEN NULL ELSE 1 END,
    preview            = NULL,
    error              = CASE WHEN i.cancel_requested THEN 'cancelled' END,
    finished_at        = now(),
    locked_by          = NULL,
    lease_until        = NULL,
    spooled_at         = CASE WHEN d.spooled AND NOT i.cancel_requested THEN now() END,
    -- What made the image, where the producer left it to the daemon (NULL: a default, or the source
    -- image's size): an application lays out its thumbnails without decoding a single image.
    width              = COALESCE(i.width, d.width),
    height             = COALESCE(i.height, d.height),
    steps              = COALESCE(i.steps, d.steps),
    guidance           = COALESCE(i.guidance, d.guidance),
    scheduler          = COALESCE(i.scheduler, d.scheduler),
    images             = CASE WHEN i.cancel_requested THEN i.images ELSE d.images::jsonb END
FROM unnest(%(ids)b::int[], %(attempts)b::int[], %(base64s)b::text[], %(seeds)b::bigint[],
            %(output_paths)b::text[], %(output_urls)b::text[], %(thumbnail_urls)b::text[],
            %(thumbnails)b::text[], %(formats)b::text[], %(generation_seconds)b::float8[], %(warnings)b::text[],
            %(spooled)b::bool[], %(widths)b::int[], %(heights)b::int[], %(steps)b::int[],
            %(guidances)b::float8[], %(schedulers)b::text[], %(images)b::text[])
     AS d(id, attempt, base64, seed, output_path, output_url, thumbnail_url, thumbnail, format,
          generation_seconds, warning, spooled, width, height, steps, guidance, scheduler, images)
WHERE i.id = d.id
  -- Said again as an index condition: with statistics stale after a burst of inserts, the planner
  -- otherwise drove the join from every Generate row (a bitmap over the lease index, dead entries
  -- and all) and rescanned the arrays for each one: 0.5 s for 1,000 rows 70,000 rows into a drain.
  AND i.id = ANY (%(ids)b::int[])
  AND i.status = 'Generate'
  AND i.locked_by = %(owner)s
  AND i.attempts = d.attempt
RETURNING i.id, i.status, i.callback_url IS NOT NULL AS callback;

-- name: images_wake_chained
-- After images_mark_done: one idle daemon for each waiting row chained on a row it ended (the chained
-- index is almost always empty: one probe per batch).
SELECT imagend_wake(w.backend, count(*))
FROM images AS w
WHERE w.status = 'ReadyToGenerate'
  AND (w.init_image_id IS NOT NULL OR w.reference_image_id IS NOT NULL)
  AND (w.init_image_id = ANY (%(ids)b::int[]) OR w.reference_image_id = ANY (%(ids)b::int[]))
GROUP BY w.backend;

-- name: images_fail_attempt
-- A failed attempt: back to the queue after a backoff while attempts are left
-- (and the error is retryable), otherwise Failed. Returns the new status.
UPDATE images
SET status       = next.status,
    run_after    = now() + make_interval(secs => %(backoff_seconds)s),
    error        = %(error)s,
    finished_at  = CASE WHEN next.status = 'Failed' THEN now() END,
    progress     = NULL,
    preview      = NULL,
    locked_by    = NULL,
    lease_until  = NULL,
    uuid         = NULL,
    submitted_at = NULL
FROM (SELECT CASE
                 WHEN %(retryable)s AND attempts < COALESCE(max_attempts, %(default_max_attempts)s)
                 THEN 'ReadyToGenerate' ELSE 'Failed'
             END AS status
      FROM images
      WHERE id = %(id)s) AS next
WHERE images.id = %(id)s
  AND images.status = 'Generate'
  AND images.locked_by = %(owner)s
  AND images.attempts = %(attempt)s
RETURNING images.status;

-- name: images_fail_batch
-- Rows that cannot succeed (bad input, cancelled before they began) end Failed in one statement, each
-- with its own error: a burst of bad rows costs one write per batch, not one per row. Fenced by
-- owner and attempt as every finishing write; returns the ids that were still ours.
UPDATE images AS i
SET status       = 'Failed',
    error        = f.error,
    finished_at  = now(),
    progress     = NULL,
    preview      = NULL,
    locked_by    = NULL,
    lease_until  = NULL,
    uuid         = NULL,
    submitted_at = NULL
FROM unnest(%(ids)b::int[], %(attempts)b::int[], %(errors)b::text[]) AS f(id, attempt, error)
WHERE i.id = f.id
  AND i.status = 'Generate'
  AND i.locked_by = %(owner)s
  AND i.attempts = f.attempt
RETURNING i.id;

-- name: images_release
-- Give rows back without counting the attempt: shutdown, or a remote queue that is
-- closed for now. ids NULL means every row this owner holds. A remote row that
-- already has a task is handed to the next poller instead of being resubmitted.
UPDATE images
SET status      = CASE WHEN uuid IS NULL THEN 'ReadyToGenerate' ELSE 'Generate' END,
    attempts    = CASE WHEN uuid IS NULL THEN greatest(attempts - 1, 0) ELSE attempts END,
    run_after   = now() + make_interval(secs => %(delay_seconds)s),
    lease_until = CASE WHEN uuid IS NULL THEN NULL ELSE now() END,
    error       = COALESCE(%(reason)s, error),
    progress    = NULL,
    preview     = NULL,
    locked_by   = NULL
WHERE (%(ids)b::int[] IS NULL OR id = ANY (%(ids)b::int[]))
  AND status = 'Generate'
  AND locked_by = %(owner)s
RETURNING id;

-- name: images_extend_lease
-- Called while work really advances (a diffusion step, a remote poll). Returns every row
-- still ours (with cancel_requested, which tells the worker to stop); renews those not
-- locked by another session right now (SKIP LOCKED: a producer's lock never stalls a GPU).
WITH mine AS (
    SELECT id, cancel_requested
    FROM images
    WHERE id = ANY (%(ids)b::int[])
      AND status = 'Generate'
      AND locked_by = %(owner)s
),
free AS (
    SELECT id
    FROM images
    WHERE id IN (SELECT id FROM mine) AND status = 'Generate' AND locked_by = %(owner)s
    FOR UPDATE SKIP LOCKED
),
renewed AS (
    UPDATE images
    SET lease_until = now() + make_interval(secs => %(lease_seconds)s),
        progress    = CASE WHEN id = ANY (%(progress_ids)b::int[]) THEN COALESCE(%(progress)s, progress)
                           ELSE progress END
    WHERE id IN (SELECT id FROM free) AND status = 'Generate' AND locked_by = %(owner)s
)
SELECT id, cancel_requested FROM mine;

-- name: images_begin_work
-- Work on `ids` begins now: the daemon's row says so (imagend_daemons.working), so from
-- here a death of this daemon counts as a crash of theirs (images_rescue), while rows it
-- only claimed ahead go back uncharged. One small write per batch, not one per row; a
-- cancel or a loss since the claim is heard at the batch's first lease renewal.
UPDATE imagend_daemons SET working = %(ids)b::int[] WHERE owner = %(owner)s;

-- name: images_set_previews
-- Step previews (local backend, every 2 s or so): rows still ours, not locked by anyone right now.
UPDATE images AS i
SET preview = d.preview
FROM unnest(%(ids)b::int[], %(previews)b::text[]) AS d(id, preview)
WHERE i.id = d.id
  AND i.id IN (SELECT id FROM images
               WHERE id = ANY (%(ids)b::int[]) AND status = 'Generate' AND locked_by = %(owner)s
               FOR UPDATE SKIP LOCKED);

-- name: images_set_warning
UPDATE images
SET warning = %(warning)s
WHERE id = %(id)s
  AND status = 'Generate'
  AND locked_by = %(owner)s;

-- name: images_rescue
-- Rows whose owner is gone or stuck go back to the queue. Rescued: every row of a
-- dead daemon (heartbeat older than dead_after), at once; a row whose lease ran out
-- while its owner is alive (it beat after the lease ran out: hung work) or unknown (no
-- heartbeat: a producer inserted it as Generate, or an older daemon). An owner silent
-- since before its lease ran out but not yet dead is waited for. What it charges:
--   not begun (not in its owner's imagend_daemons.working: claimed ahead, waiting its
--   turn in a batch) -> nothing; a row with no heartbeat row for its owner counts as begun;
--   begun, owner dead     -> a crash, not an attempt; Failed after max_crashes, and a
--                            growing backoff (crash_backoff[crashes]) against poison pills;
--   begun, owner alive or unknown -> an attempt, as any failure.
-- Remote rows with a task are not rescued here: images_claim_polls resumes them.
WITH owners AS (
    SELECT owner, heartbeat_at, working, heartbeat_at < now() - make_interval(secs => %(dead_after)s) AS dead
    FROM imagend_daemons
),
picked AS (
    SELECT i.id,
           o.owner IS NULL OR i.id = ANY (o.working) AS begun,
           COALESCE(o.dead, false)                 AS owner_dead
    FROM images AS i
    LEFT JOIN owners AS o ON o.owner = i.locked_by
    WHERE i.status = 'Generate'
      AND NOT (i.uuid IS NOT NULL AND COALESCE(i.backend, '') = ANY (%(remote_backends)b::text[]))
      AND (o.dead
           OR ((o.owner IS NULL OR o.heartbeat_at > i.lease_until)
               AND (i.lease_until < COALESCE(%(now)s::timestamptz, now())
                    OR (i.lease_until IS NULL
                        AND i.updated_at < COALESCE(%(now)s::timestamptz, now())
                                           - make_interval(secs => %(lease_seconds)s)))))
    FOR UPDATE OF i SKIP LOCKED
),
judged AS (
    SELECT p.id, p.begun, p.owner_dead, i.locked_by AS old_owner,
           CASE WHEN NOT p.begun THEN i.attempts - 1 ELSE i.attempts - p.owner_dead::int END AS attempts,
           i.crashes + (p.begun AND p.owner_dead)::int AS crashes,
           COALESCE(i.max_attempts, %(default_max_attempts)s) AS max_attempts
    FROM picked AS p JOIN images AS i ON i.id = p.id
)
UPDATE images AS i
SET status      = CASE WHEN j.crashes >= %(max_crashes)s OR (j.begun AND NOT j.owner_dead
                                                              AND j.attempts >= j.max_attempts)
                       THEN 'Failed' ELSE 'ReadyToGenerate' END,
    attempts    = greatest(j.attempts, 0),
    crashes     = j.crashes,
    error       = CASE
                      WHEN NOT j.begun THEN i.error
                      WHEN j.owner_dead AND j.crashes >= %(max_crashes)s
                      THEN 'the daemon died ' || j.crashes || ' times while generating this row'
                           || ' (IMAGEND_MAX_CRASHES=' || %(max_crashes)s || ')'
                      WHEN j.owner_dead
                      THEN 'the daemon ' || COALESCE(j.old_owner, '(none)') || ' died while generating this row'
                           || ' (crash ' || j.crashes || ' of ' || %(max_crashes)s || ')'
                      ELSE 'lease expired: owner ' || COALESCE(j.old_owner, '(none)') || ' stopped working on it'
                  END,
    run_after   = CASE WHEN j.begun AND j.owner_dead
                       THEN now() + make_interval(secs => (%(crash_backoff)b::float8[])[
                                least(greatest(j.crashes, 1), cardinality(%(crash_backoff)b::float8[]))])
                       ELSE now() END,
    finished_at = CASE WHEN j.crashes >= %(max_crashes)s OR (j.begun AND NOT j.owner_dead
                                                             AND j.attempts >= j.max_attempts)
                       THEN now() END,
    progress    = NULL,
    preview     = NULL,
    locked_by   = NULL,
    lease_until = NULL
FROM judged AS j
WHERE i.id = j.id
RETURNING i.id, i.status, i.backend, j.old_owner, j.begun, j.owner_dead AS crashed, i.crashes, i.error;

-- name: images_claim_polls
-- Remote rows whose next poll is due (or whose poller died): SKIP LOCKED plus the
-- lease stamp means two daemons never poll the same task.
WITH picked AS (
    SELECT id
    FROM images
    WHERE status = 'Generate'
      AND uuid IS NOT NULL
      AND backend = ANY (%(backends)b::text[])
      AND (lease_until IS NULL OR lease_until <= COALESCE(%(now)s::timestamptz, now())
           OR locked_by IN (SELECT owner FROM imagend_daemons
                            WHERE heartbeat_at < now() - make_interval(secs => %(dead_after)s)))
    ORDER BY lease_until NULLS FIRST
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE images AS i
SET locked_by   = %(owner)s,
    lease_until = COALESCE(%(now)s::timestamptz, now()) + make_interval(secs => %(lease_seconds)s)
FROM picked
WHERE i.id = picked.id
RETURNING i.id, i.attempts AS attempt, i.uuid AS task_id, i.submitted_at, i.backend, i.format, i.quality;

-- name: images_mark_submitted
-- The remote task exists: keep the row in Generate, drop the owner, and set the
-- lease to the time of the first poll so any daemon's processor picks it up.
UPDATE images
SET uuid         = %(uuid)s,
    submitted_at = now(),
    locked_by    = NULL,
    lease_until  = now() + make_interval(secs => %(poll_after_seconds)s)
WHERE id = %(id)s
  AND status = 'Generate'
  AND locked_by = %(owner)s
  AND attempts = %(attempt)s
RETURNING id;

-- name: images_poll_later
UPDATE images
SET locked_by   = NULL,
    lease_until = now() + make_interval(secs => %(poll_after_seconds)s)
WHERE id = %(id)s
  AND status = 'Generate'
  AND locked_by = %(owner)s
  AND attempts = %(attempt)s
RETURNING id;

-- name: images_next_wakeups
-- After every pass, in seconds from now by the database's clock (NULL: nothing to wait
-- for; negative: due already): when the earliest row this daemon could claim falls due
-- (backoff, scheduled rows), and when the earliest lease runs out or remote poll falls due.
-- 'infinity' and far-future times count as "nothing to wait for"; epochs, not intervals: a run_after of
-- '-infinity' must not fail the statement (PostgreSQL 15), and reads as due (-Infinity seconds).
SELECT least(
       (SELECT extract(epoch FROM min(run_after)) - extract(epoch FROM now())
        FROM images
        WHERE status = 'ReadyToGenerate'
          AND run_after < now() + interval '1 day'
          AND (owner IS NULL OR owner <> ALL (ARRAY(SELECT blocked FROM imagend_owners_blocked() AS blocked)))  -- they wait for a finish
          AND (COALESCE(backend, %(default_backend)s) = ANY (%(served)b::text[])
               OR COALESCE(backend, %(default_backend)s) <> ALL (%(known)b::text[]))),
       -- An owner out of rate with rows waiting: when its next row may start (docs/owners.md).
       (SELECT extract(epoch FROM min(o.blocked_until)) - extract(epoch FROM now())
        FROM imagend_owners AS o
        WHERE (o.running > 0 OR o.blocked_until IS NOT NULL)
          AND o.blocked_until > now() AND o.blocked_reason = 'rate'
          AND EXISTS (SELECT 1 FROM images AS w WHERE w.status = 'ReadyToGenerate' AND w.owner = o.owner))
       )::float8 AS generator,
       (SELECT extract(epoch FROM min(COALESCE(lease_until, updated_at + make_interval(secs => %(lease_seconds)s))))
               - extract(epoch FROM now())
        FROM images
        WHERE status = 'Generate'
          AND COALESCE(lease_until, updated_at) < now() + interval '1 day'
          AND NOT (uuid IS NOT NULL AND COALESCE(backend, '') <> ALL (%(served)b::text[])))::float8 AS processor;

-- name: images_claimable
-- Is a row this daemon could claim waiting? Asked once, RECHECK_SECONDS after it went idle: a producer
-- that chose whom to wake while this daemon's last claim ran (it still looked busy) and committed just
-- after that claim's snapshot would otherwise wait for a heartbeat.
SELECT EXISTS (SELECT 1 FROM imagend_claimable_rows(%(owner)s, %(default_backend)s, %(skip_backends)b::text[], now()));

-- name: daemons_heartbeat
-- This daemon is alive (upsert); and in how many seconds is a rescue due (NULL: none in
-- sight; <= 0: now)? Due now: a row whose lease ran out. Due later: the moment a silent peer
-- that holds rows will count as dead. The liveness thread runs it every tenth of dead_after,
-- so an idle daemon rescues a dead peer's rows the moment they count as dead. And, for an idle daemon
-- only, is a row it could claim waiting (due for over WAKE_GRACE)? A wake-up lost in a race (the
-- daemon went idle as the row's producer chose whom to wake) or while its host's relay changed hands
-- is made up for within a beat; in the normal case nothing waits that long, and this reads nothing.
WITH forget AS (
    DELETE FROM imagend_wakes WHERE owner = %(owner)s AND woken_at < now() - interval '10 seconds'
), beat AS (
    INSERT INTO imagend_daemons AS d (owner, host, pid, version, backends, device, model, rows_held, wake_channel,
                                      default_backend)
    VALUES (%(owner)s, %(host)s, %(pid)s, %(version)s, %(backends)s, %(device)s, %(model)s,
            (SELECT count(*) FROM images WHERE status = 'Generate' AND locked_by = %(owner)s), %(wake_channel)s,
            %(default_backend)s)
    ON CONFLICT (owner) DO UPDATE
        SET heartbeat_at = now(), rows_held = EXCLUDED.rows_held, wake_channel = EXCLUDED.wake_channel,
            default_backend = EXCLUDED.default_backend
    RETURNING d.owner
)
SELECT least(
           (SELECT 0.0::float8
            WHERE EXISTS (SELECT 1 FROM images
                          WHERE status = 'Generate' AND uuid IS NULL AND lease_until < now())),
           (SELECT extract(epoch FROM min(d.heartbeat_at) + make_interval(secs => %(dead_after)s) - now())::float8
            FROM imagend_daemons AS d
            WHERE d.owner <> %(owner)s
              AND d.heartbeat_at < now() - make_interval(secs => %(alive_within)s)
              AND EXISTS (SELECT 1 FROM images WHERE status = 'Generate' AND locked_by = d.owner))
       ) AS rescue_in,
       (SELECT count(*) FROM beat) AS beats,
       CASE WHEN %(idle)s THEN EXISTS (SELECT 1 FROM imagend_claimable_rows(
                                   %(owner)s, %(default_backend)s, %(skip_backends)b::text[],
                                   now() - make_interval(secs => %(wake_grace)s)))
       END AS work_waiting,
       (SELECT d.default_backend FROM imagend_daemons AS d
        WHERE d.heartbeat_at > now() - interval '10 seconds' AND d.default_backend IS NOT NULL
        ORDER BY d.started_at, d.owner LIMIT 1) AS fleet_default,
       -- Webhook events due (the outbox's due index): the webhook thread is woken by this, not by a
       -- LISTEN of its own (docs/fleet.md: every LISTEN taxes every NOTIFY's commit).
       EXISTS (SELECT 1 FROM imagend_webhooks
               WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_at <= now()) AS webhooks_due;

-- name: daemons_remove
-- A clean stop, after the daemon released its rows; and daemons long dead that hold nothing (and the
-- wake-ups noted for either).
WITH forget AS (
    DELETE FROM imagend_wakes AS w
    WHERE w.owner = %(owner)s OR w.woken_at < now() - interval '1 day'
)
DELETE FROM imagend_daemons AS d
WHERE d.owner = %(owner)s
   OR (d.heartbeat_at < now() - interval '1 day'
       AND NOT EXISTS (SELECT 1 FROM images WHERE status = 'Generate' AND locked_by = d.owner));

-- name: listen_probe
-- Sent through the pool to check that the LISTEN connection really hears NOTIFYs.
SELECT pg_notify(%(channel)s, '');

-- name: images_queue_status
SELECT status, backend, rows, oldest_waiting, avg_generation_seconds
FROM images_queue_status;

-- name: images_unserved
-- Waiting rows for the backends a daemon does not serve (`served`; empty for `-status`), per
-- backend (a NULL backend is %(default_backend)s's, as the claim reads it): how many, how long the
-- oldest has waited, and how many running daemons (a heartbeat within dead_after) serve that
-- backend. Rows naming no known backend are left out: any daemon claims them, to fail them.
WITH waiting AS (
    -- Waiting since it fell due (created, or its run_after), as images_oldest_waiting counts it.
    SELECT COALESCE(backend, %(default_backend)s) AS backend, count(*) AS rows,
           min(greatest(created_at, run_after)) FILTER (WHERE isfinite(greatest(created_at, run_after))
                                                          AND run_after <= now()) AS oldest
    FROM images
    WHERE status = 'ReadyToGenerate'
    GROUP BY 1
)
SELECT w.backend,
       w.rows::int AS rows,
       COALESCE(extract(epoch FROM now()) - extract(epoch FROM w.oldest), 0)::float8 AS oldest_waiting_seconds,
       (SELECT count(*)
        FROM imagend_daemons AS d
        WHERE w.backend = ANY (d.backends)
          AND d.heartbeat_at > now() - make_interval(secs => %(dead_after)s))::int AS daemons_serving
FROM waiting AS w
WHERE w.backend = ANY (%(known)b::text[])
  AND w.backend <> ALL (%(served)b::text[])
ORDER BY w.backend;

-- name: images_expire
-- Retention (retention.py): delete up to %(limit)s rows of one terminal status finished longer than
-- %(age_seconds)s ago, oldest first. Terminal rows only, whatever is asked; SKIP LOCKED, so a producer
-- holding a row (or another daemon's retention) is never waited for. Returns the locations of the
-- rows' objects, for IMAGEND_RETENTION_DELETE_OBJECTS. Served by images_finished_idx.
WITH picked AS (
    SELECT id
    FROM images
    WHERE status IN ('ReadyToPublish', 'Failed')
      AND status = %(status)s
      AND finished_at < now() - make_interval(secs => %(age_seconds)s)
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM images AS i
USING picked
WHERE i.id = picked.id
RETURNING i.id, i.output_url, i.thumbnail_url, i.output_path,
          -- A row of n images (images_mark_done): images 2..n and their thumbnails are objects too.
          ARRAY(SELECT u FROM jsonb_array_elements(CASE WHEN jsonb_typeof(i.images) = 'array' THEN i.images
                                                        ELSE '[]' END) AS e,
                       unnest(ARRAY[e ->> 'url', e ->> 'thumbnail_url']) AS u
                WHERE u IS NOT NULL) AS image_urls;

-- name: images_drop_inline
-- Retention: keep the row, drop its base64 once it is older than %(age_seconds)s and a stored copy
-- exists (output_url). Served by images_inline_kept_idx, which a row leaves once its base64 is gone.
WITH picked AS (
    SELECT id
    FROM images
    WHERE status = 'ReadyToPublish'
      AND base64 IS NOT NULL
      AND output_url IS NOT NULL
      AND finished_at < now() - make_interval(secs => %(age_seconds)s)
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE images AS i
SET base64 = NULL
FROM picked
WHERE i.id = picked.id
RETURNING i.id;

-- name: images_retention_index_finished
-- Built when a daemon starts with IMAGEND_RETENTION_FAILED or _DONE (not in schema.sql: without
-- retention no row should pay for an index insert). CONCURRENTLY: producers and daemons keep writing.
CREATE INDEX CONCURRENTLY IF NOT EXISTS images_finished_idx
    ON images (finished_at) WHERE status IN ('ReadyToPublish', 'Failed');

-- name: images_retention_index_inline
-- Built when a daemon starts with IMAGEND_RETENTION_BASE64 (or -export-images runs).
CREATE INDEX CONCURRENTLY IF NOT EXISTS images_inline_kept_idx
    ON images (finished_at) WHERE status = 'ReadyToPublish' AND base64 IS NOT NULL AND output_url IS NOT NULL;

-- name: images_invalid_indexes
-- Indexes left invalid by a CREATE INDEX CONCURRENTLY that was interrupted (a daemon killed while
-- building): IF NOT EXISTS skips them, so they are reported for an operator to drop.
SELECT c.relname AS name
FROM pg_index AS x
JOIN pg_class AS c ON c.oid = x.indexrelid
WHERE x.indrelid = 'images'::regclass AND NOT x.indisvalid;

-- name: images_export_batch
-- -export-images: finished rows with base64 and no stored copy, after %(after_id)s in id order (a
-- cursor, so an interrupted export resumes where it stopped and never rescans what it did). No lock
-- is held while their objects are written.
SELECT id, base64, format
FROM images
WHERE id > %(after_id)s
  AND status = 'ReadyToPublish'
  AND base64 IS NOT NULL
  AND output_url IS NULL
ORDER BY id
LIMIT %(limit)s;

-- name: images_export_mark
-- The objects are written: record where, and (with IMAGEND_STORE_BASE64=false) drop the base64. Guarded:
-- a row a producer put back (or someone else exported) since the read is left alone.
UPDATE images AS i
SET output_url = d.output_url,
    format     = COALESCE(i.format, d.format),
    base64     = CASE WHEN %(keep_base64)s THEN i.base64 END
FROM unnest(%(ids)b::int[], %(output_urls)b::text[], %(formats)b::text[]) AS d(id, output_url, format)
WHERE i.id = d.id
  AND i.status = 'ReadyToPublish'
  AND i.output_url IS NULL
  AND i.base64 IS NOT NULL
RETURNING i.id;

-- name: images_spooled_batch
-- The spool: finished rows whose image waits in the row for the store, in id order after a cursor (a
-- row whose base64 cannot be written is passed over, not read again and again).
SELECT id, base64, format, thumbnail
FROM images
WHERE spooled_at IS NOT NULL
  AND id > %(after_id)s
  AND status = 'ReadyToPublish'
  AND base64 IS NOT NULL
ORDER BY id
LIMIT %(limit)s;

-- name: images_spool_mark
-- Their objects are written: record where, drop the thumbnail's and (IMAGEND_STORE_BASE64=false) the
-- image's base64, and leave the spool. Guarded: a row a producer put back since is left alone.
UPDATE images AS i
SET output_url    = d.output_url,
    output_path   = d.output_path,
    thumbnail_url = COALESCE(d.thumbnail_url, i.thumbnail_url),
    thumbnail     = CASE WHEN d.thumbnail_url IS NULL THEN i.thumbnail END,
    base64        = CASE WHEN %(keep_base64)s THEN i.base64 END,
    spooled_at    = NULL
FROM unnest(%(ids)b::int[], %(output_urls)b::text[], %(output_paths)b::text[], %(thumbnail_urls)b::text[])
     AS d(id, output_url, output_path, thumbnail_url)
WHERE i.id = d.id
  AND i.status = 'ReadyToPublish'
  AND i.spooled_at IS NOT NULL
RETURNING i.id;

-- name: images_fold_queue_counts
-- Every processor pass: the queue counts' appended changes folded into their totals once there
-- are many (schema_operations.sql), so that table stays small when nobody reads the counts.
SELECT imagend_fold_queue_changes();
