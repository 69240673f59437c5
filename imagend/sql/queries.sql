-- Every statement the daemon runs. Blocks are named `-- name: <noun>_<verb>` and
-- loaded once into a dict by imagend/sql/__init__.py; imagend/repository.py gives each
-- one a typed function. Every status change is guarded by the status and owner it
-- expects, so a write for a row someone else owns now matches nothing. Writes that end
-- a claim also carry its attempt number: a fence, so that the late result of an earlier
-- claim of the same row by this same daemon (the producer re-queued it meanwhile) can
-- never overwrite the current one.
-- %(now)s is NULL in production (the database clock) and a fixed time in tests.

-- name: images_claim_batch
-- One statement: pick waiting rows, stamp owner, lease and attempt, commit.
WITH picked AS (
    SELECT id
    FROM images
    WHERE status = 'ReadyToGenerate'
      AND run_after <= COALESCE(%(now)s::timestamptz, now())
      AND COALESCE(backend, %(default_backend)s) <> ALL (%(skip_backends)s::text[])
    ORDER BY priority DESC, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE images AS i
SET status       = 'Generate',
    backend      = COALESCE(i.backend, %(default_backend)s),
    locked_by    = %(owner)s,
    lease_until  = COALESCE(%(now)s::timestamptz, now()) + make_interval(secs => %(lease_seconds)s),
    attempts     = i.attempts + 1,
    started_at   = COALESCE(%(now)s::timestamptz, now()),
    progress     = 0,
    uuid         = NULL,
    submitted_at = NULL
FROM picked
WHERE i.id = picked.id
RETURNING i.id, i.prompt, i.negative_prompt, i.style, i.width, i.height, i.seed, i.steps,
          i.guidance, i.scheduler, i.backend, i.params, i.attempts, i.max_attempts, i.cancel_requested;

-- name: images_mark_done
-- Ends a whole batch in one statement; returns the ids that were still ours.
UPDATE images AS i
SET status             = 'ReadyToPublish',
    base64             = d.base64,
    seed               = COALESCE(d.seed, i.seed),
    output_path        = d.output_path,
    generation_seconds = d.generation_seconds,
    progress           = 1,
    error              = NULL,
    finished_at        = now(),
    locked_by          = NULL,
    lease_until        = NULL
FROM unnest(%(ids)s::int[], %(attempts)s::int[], %(base64s)s::text[], %(seeds)s::bigint[],
            %(output_paths)s::text[], %(generation_seconds)s::float8[])
     AS d(id, attempt, base64, seed, output_path, generation_seconds)
WHERE i.id = d.id
  AND i.status = 'Generate'
  AND i.locked_by = %(owner)s
  AND (d.attempt IS NULL OR i.attempts = d.attempt)
RETURNING i.id;

-- name: images_fail_attempt
-- A failed attempt: back to the queue after a backoff while attempts are left
-- (and the error is retryable), otherwise Failed. Returns the new status.
UPDATE images
SET status       = next.status,
    run_after    = now() + make_interval(secs => %(backoff_seconds)s),
    error        = %(error)s,
    finished_at  = CASE WHEN next.status = 'Failed' THEN now() END,
    progress     = NULL,
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
  AND (%(attempt)s::int IS NULL OR images.attempts = %(attempt)s::int)
RETURNING images.status;

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
    locked_by   = NULL
WHERE (%(ids)s::int[] IS NULL OR id = ANY (%(ids)s::int[]))
  AND status = 'Generate'
  AND locked_by = %(owner)s
RETURNING id;

-- name: images_extend_lease
-- Called while work really advances (a diffusion step, a remote poll). Rows not
-- returned are no longer ours; cancel_requested tells the worker to stop.
UPDATE images
SET lease_until = now() + make_interval(secs => %(lease_seconds)s),
    progress    = CASE WHEN id = ANY (%(progress_ids)s::int[]) THEN COALESCE(%(progress)s, progress) ELSE progress END
WHERE id = ANY (%(ids)s::int[])
  AND status = 'Generate'
  AND locked_by = %(owner)s
RETURNING id, cancel_requested;

-- name: images_set_warning
UPDATE images
SET warning = %(warning)s
WHERE id = %(id)s
  AND status = 'Generate'
  AND locked_by = %(owner)s;

-- name: images_rescue_expired
-- Rows whose owner stopped renewing the lease (crash, kill -9, hung GPU call), and
-- rows a producer inserted as Generate with no lease. Remote rows with a task are
-- not rescued here: the processor resumes them by polling their uuid.
UPDATE images
SET status      = CASE WHEN attempts < COALESCE(max_attempts, %(default_max_attempts)s)
                       THEN 'ReadyToGenerate' ELSE 'Failed' END,
    finished_at = CASE WHEN attempts < COALESCE(max_attempts, %(default_max_attempts)s)
                       THEN NULL ELSE now() END,
    error       = 'lease expired: owner ' || COALESCE(locked_by, '(none)') || ' stopped working on it',
    run_after   = now(),
    progress    = NULL,
    locked_by   = NULL,
    lease_until = NULL
WHERE status = 'Generate'
  AND (lease_until < COALESCE(%(now)s::timestamptz, now())
       OR (lease_until IS NULL
           AND updated_at < COALESCE(%(now)s::timestamptz, now()) - make_interval(secs => %(lease_seconds)s)))
  AND NOT (uuid IS NOT NULL AND COALESCE(backend, '') = ANY (%(remote_backends)s::text[]))
RETURNING id, status;

-- name: images_claim_polls
-- Remote rows whose next poll is due (or whose poller died): SKIP LOCKED plus the
-- lease stamp means two daemons never poll the same task.
WITH picked AS (
    SELECT id
    FROM images
    WHERE status = 'Generate'
      AND uuid IS NOT NULL
      AND backend = ANY (%(backends)s::text[])
      AND (lease_until IS NULL OR lease_until <= COALESCE(%(now)s::timestamptz, now()))
    ORDER BY lease_until NULLS FIRST
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE images AS i
SET locked_by   = %(owner)s,
    lease_until = COALESCE(%(now)s::timestamptz, now()) + make_interval(secs => %(lease_seconds)s)
FROM picked
WHERE i.id = picked.id
RETURNING i.id, i.uuid, i.submitted_at, i.backend, i.attempts, i.max_attempts;

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
RETURNING id;

-- name: images_next_due
-- Seconds (by the database's clock) until the earliest lease runs out or remote poll
-- falls due: the processor wakes then. NULL when no row is in Generate.
SELECT extract(epoch FROM min(COALESCE(lease_until, updated_at + make_interval(secs => %(lease_seconds)s))) - now())
FROM images
WHERE status = 'Generate';

-- name: images_next_retry
-- Seconds until the earliest backed-off row may be claimed: the generator wakes then.
SELECT extract(epoch FROM min(run_after) - now())
FROM images
WHERE status = 'ReadyToGenerate'
  AND run_after > now();

-- name: images_queue_status
SELECT status, backend, rows, oldest_waiting, avg_generation_seconds
FROM images_queue_status;
