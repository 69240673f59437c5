-- Named queries of operations (operations_repository.py): pause and resume, what /metrics,
-- `imagend -status` and the dashboard read, and the JSON API's producer statements. Every one
-- reads indexes or a bounded number of rows: finished rows are never scanned whole.

-- name: paused_add
-- Pause `backends` ('*': all). Already paused: kept as it was.
INSERT INTO imagend_paused (backend, paused_by)
SELECT unnest(%(backends)b::text[]), %(by)s
ON CONFLICT (backend) DO NOTHING;

-- name: paused_remove
-- Resume `backends` (NULL: every pause, '*' included); the delete wakes the daemons.
DELETE FROM imagend_paused
WHERE %(backends)b::text[] IS NULL OR backend = ANY (%(backends)b::text[])
RETURNING backend;

-- name: paused_list
SELECT backend, paused_at, paused_by FROM imagend_paused ORDER BY backend;

-- name: images_queue_counts
-- Exact rows per (status, backend) without scanning images (see imagend_queue_counts()).
SELECT status, backend, rows FROM imagend_queue_counts();

-- name: images_oldest_waiting
-- Per backend (NULL: the daemon's default), seconds the oldest waiting row has waited since it fell due
-- (created, or its run_after: a row scheduled for later, or backing off, waits for nobody before its
-- time); read on the claim's partial index, which holds waiting rows only.
SELECT backend, (extract(epoch FROM now())
                 - extract(epoch FROM min(greatest(created_at, run_after))
                                      FILTER (WHERE isfinite(greatest(created_at, run_after)))))::float8 AS seconds
FROM images
WHERE status = 'ReadyToGenerate' AND run_after <= now()
GROUP BY backend;

-- name: daemons_list
-- The fleet: every daemon with a heartbeat within %(dead_after)s seconds. `working`: the rows of its last
-- batch (imagend_daemons.working, left as it was when the batch ended) that it still generates now, read
-- on the primary key; a batch finished long ago counts none.
SELECT d.owner, d.host, d.pid, d.version, d.backends, d.device, d.model, d.started_at, d.heartbeat_at, d.rows_held,
       (SELECT count(*) FROM images AS i
        WHERE i.id = ANY (d.working) AND i.status = 'Generate' AND i.locked_by = d.owner)::int AS working
FROM imagend_daemons AS d
WHERE d.heartbeat_at > now() - make_interval(secs => %(dead_after)s)
ORDER BY d.host, d.pid, d.owner;

-- name: images_in_flight
-- Rows being generated now, with their progress (the lease index holds Generate rows only) and a tag
-- of their step preview (local backend), which changes with it: the dashboard's <img> URL carries it.
SELECT id, prompt, backend, locked_by, progress, attempts, started_at, left(md5(preview), 12) AS preview_tag
FROM images
WHERE status = 'Generate'
ORDER BY id
LIMIT %(limit)s;

-- name: images_recent_done
-- The newest finished images, read backwards on the primary key.
SELECT id, prompt, negative_prompt, seed, width, height, steps, guidance, scheduler, backend,
       COALESCE(model, params ->> 'model') AS model, format, finished_at, generation_seconds, output_url, thumbnail_url,
       base64 IS NOT NULL OR output_url IS NOT NULL OR output_path IS NOT NULL AS has_image
FROM images
WHERE status = 'ReadyToPublish'
ORDER BY id DESC
LIMIT %(limit)s;

-- name: images_recent_failed
SELECT id, prompt, backend, error, attempts, finished_at
FROM images
WHERE status = 'Failed'
ORDER BY id DESC
LIMIT %(limit)s;

-- name: images_get
-- One row as the API and the dashboard's detail page show it (no image bytes), with its place
-- in the queue while it waits (imagend_position). The model is the column's, else the one a producer
-- noted in params. Input images are never read, only whether they are set; loras as text (shown raw
-- when Python cannot decode it, as params).
SELECT i.id, i.status, i.progress, i.error, i.warning, i.prompt, i.negative_prompt, i.style,
       i.width, i.height, i.seed, i.steps, i.guidance, i.scheduler, i.backend, i.priority,
       COALESCE(i.model, i.params ->> 'model') AS model, i.format, i.quality, i.attempts, i.max_attempts,
       i.loras::text AS loras, i.task, i.init_image IS NOT NULL AS init_image, i.init_image_id, i.strength,
       i.mask_image IS NOT NULL AS mask_image, i.reference_image IS NOT NULL AS reference_image,
       i.reference_image_id, i.reference_scale, i.upscale, left(md5(i.preview), 12) AS preview_tag,
       i.cancel_requested, i.created_at, i.run_after, i.started_at, i.finished_at,
       i.generation_seconds, i.output_url, i.thumbnail_url,
       i.base64 IS NOT NULL OR i.output_url IS NOT NULL OR i.output_path IS NOT NULL AS has_image,
       -- Several images per row, presets: each image's index, seed, format and locations (never its bytes).
       i.n, i.preset, i.effective_prompt,
       CASE WHEN jsonb_typeof(i.images) = 'array'
            THEN (SELECT jsonb_agg(e - 'base64' - 'thumbnail' - 'path') FROM jsonb_array_elements(i.images) AS e)
       END AS images,
       p.ahead AS position, CASE WHEN w.source IS NULL THEN p.estimated_start END AS estimated_start,
       w.source AS waiting_for
FROM images AS i
LEFT JOIN LATERAL imagend_position(i.id) AS p ON true
-- A chained row waits for its source, not for its place: which source, while it has not ended.
LEFT JOIN LATERAL (SELECT s.id AS source FROM images AS s
                   WHERE i.status = 'ReadyToGenerate' AND s.id IN (i.init_image_id, i.reference_image_id)
                     AND s.id <> i.id AND s.status IN ('ReadyToGenerate', 'Generate')
                   ORDER BY s.id LIMIT 1) AS w ON true
WHERE i.id = %(id)s;

-- name: images_image
-- Where a finished row's image is: inline, in a file, or in the storage target.
SELECT status, format, base64, output_path, output_url FROM images WHERE id = %(id)s;

-- name: images_listed
-- Image %(index)s (1..n) of a finished row of n > 1 images: its entry of `images` (base64 only where no
-- store holds it), and the row's status.
SELECT status, format, CASE WHEN jsonb_typeof(images) = 'array' THEN images -> (%(index)s - 1) END AS entry
FROM images WHERE id = %(id)s;

-- name: images_thumbnail
SELECT thumbnail, thumbnail_url FROM images WHERE id = %(id)s;

-- name: images_preview
-- The step preview of a row in Generate (local backend; NULL otherwise).
SELECT status, preview FROM images WHERE id = %(id)s;

-- name: images_insert
-- The API's INSERT: the columns a producer may write (NULL: the daemon's default, as in SQL).
-- Its columns and values come from the one table of producer columns (db/columns.py: insert_columns).
INSERT INTO images ({{insert_columns}})
VALUES ({{insert_values}})
RETURNING id;

-- name: images_cancel
-- What a producer's `UPDATE images SET cancel_requested = true` does; finished rows are left alone.
UPDATE images SET cancel_requested = true
WHERE id = %(id)s AND status IN ('ReadyToGenerate', 'Generate')
RETURNING id, status;

-- name: images_retry
-- The producer's guide's "Trying again" statement (docs/producers.md), for a Failed row only.
UPDATE images SET status = 'ReadyToGenerate', attempts = 0, error = NULL
WHERE id = %(id)s AND status = 'Failed'
RETURNING id, status;

-- name: images_status_of
SELECT status FROM images WHERE id = %(id)s;

-- name: database_ping
-- /readyz: the database answers.
SELECT 1;

-- name: images_waiting
-- The dashboard's next rows to start, in the claim's order, on the claim's partial index.
SELECT id, prompt, backend, priority, created_at, run_after, cancel_requested
FROM images
WHERE status = 'ReadyToGenerate'
ORDER BY priority DESC, vtime NULLS FIRST, id
LIMIT %(limit)s;

-- name: images_params
-- The API and the row page: the producer's params as text (decoded, or shown raw, in Python), at most
-- %(max_chars)s characters of it: a producer may store 50 MB there, which is never read whole.
SELECT left(params::text, %(max_chars)s) FROM images WHERE id = %(id)s;

-- name: images_api_request_find
-- images_api_*: the OpenAI and AUTOMATIC1111 routes (http/compat.py): a retried request's key, the rows
-- of a request read back, its rows' progress, the caller's interrupt.
-- The key's entry, locked until the transaction ends (a try arriving meanwhile waits for it); a new key
-- gets an empty entry, filled by images_api_request_record in the same transaction. `fresh`: within the
-- retry window.
INSERT INTO imagend_api_requests AS r (key, image_ids) VALUES (%(key)s, '{}')
ON CONFLICT (key) DO UPDATE SET key = r.key
RETURNING r.image_ids, r.created_at > now() - make_interval(secs => %(window)s) AS fresh, r.body_hash;

-- name: images_api_request_record
UPDATE imagend_api_requests SET image_ids = %(ids)s, body_hash = %(body_hash)s, created_at = now()
WHERE key = %(key)s;

-- name: images_api_insert
-- A request's rows in one statement, with its retry key when it has one (the openai SDK's first try):
-- sent as one simple query after a SET LOCAL synchronous_commit (operations.py, insert_plain), bound on
-- the client, so the two share the implicit transaction of a multi-statement message (no BEGIN or
-- COMMIT of our own) and the request costs one round trip. The comment after VALUES stands for the
-- rows' VALUES lists, each as images_insert's (db/columns.py: insert_values); ids are given in the
-- order of the list within one INSERT. The route registers its waiter after this commits:
-- completions.py keeps the ends it heard lately for that.
WITH inserted AS (
    INSERT INTO images ({{insert_columns}})
    VALUES /*rows*/
    RETURNING id
), noted AS (
    INSERT INTO imagend_api_requests AS r (key, image_ids)
    SELECT %(key)s, array_agg(id ORDER BY id) FROM inserted HAVING %(key)s::text IS NOT NULL
    ON CONFLICT (key) DO UPDATE SET image_ids = excluded.image_ids, body_hash = NULL, created_at = now()
)
SELECT id FROM inserted ORDER BY id;

-- name: images_api_refused
-- An owner's request, before its commit: the first of its rows its plan refused at the insert
-- (max_waiting, budget: the insert trigger ended it Failed with the reason, as images_refused_at_insert
-- reads it); the request is then rolled back, nothing queued, and answered 429.
SELECT error, error ~ '^owner .* already has [0-9]+ rows waiting' AS waiting_full
FROM images
WHERE id = ANY (%(ids)s) AND status = 'Failed' AND owner IS NOT NULL
  AND error ~ '^owner .* (already has [0-9]+ rows waiting|is over its plan)'
ORDER BY id
LIMIT 1;

-- name: images_api_requests_expire
-- Keys past the retry window, on their index.
DELETE FROM imagend_api_requests WHERE created_at < now() - make_interval(secs => %(window)s);

-- name: images_api_results
-- A request's rows as its answer needs them (the image inline when the row holds it; images.py reads
-- a stored one), in id order.
SELECT id, status, error, warning, prompt, negative_prompt, seed, width, height, steps, guidance, scheduler,
       backend, model, strength, format, base64
FROM images
WHERE id = ANY (%(ids)s)
ORDER BY id;

-- name: images_api_progress
-- A request's rows while they run: status, progress and a tag of their step preview (local backend).
SELECT id, status, progress, left(md5(preview), 12) AS preview_tag
FROM images
WHERE id = ANY (%(ids)s)
ORDER BY id;

-- name: images_api_cancel
-- A1111's interrupt (every status given) and skip (Generate only): what a producer's cancel does.
UPDATE images SET cancel_requested = true
WHERE id = ANY (%(ids)s) AND status = ANY (%(statuses)s)
RETURNING id;
